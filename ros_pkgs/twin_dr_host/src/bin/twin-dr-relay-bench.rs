//! `twin-dr-relay-bench`: how long a hazard takes from the twin that learns it to another
//! vehicle, through real DR hosts and a Zenoh router (`make bench`, `relay_latency_p99_ms`).
//!
//! Two vehicles' links, as the twin link node runs them: `veh-2` permits hazards to any
//! twin and reports one new stalled vehicle after another ahead on the route; `veh-1`
//! lets its twin fetch from other twins. Their twins run on DR hosts started by the caller
//! (`scripts/bench.sh` puts them on two hosts behind one router). For each hazard, the time
//! from its first disclosure by veh-2's twin (the `at_us` of that disclosure in veh-2's
//! audit log: the moment the twin learned it and let it go) to veh-1 receiving it over its
//! link. Prints one JSON object.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use twinlink_link::link::now_us;
use twinlink_link::minimal::{from_link, ros_time, to_link};
use twinlink_link::{cli::ZenohArgs, ZenohSettings};
use twinlink_link::{KeyMaterial, Link, LinkConfig, LinkEvent, Priority, Role, VehicleId};
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::twin_msgs::msg::{
    Incident, SharedObservation, SharingPolicy, SharingRule, VehicleState,
};

#[derive(Debug, Parser)]
#[command(about = "Latency of a relayed hazard: learning twin -> router -> other vehicle")]
struct Args {
    /// Directory with veh-1.pe.key and veh-2.pe.key (`twinctl provision`).
    #[arg(long)]
    keys: PathBuf,
    /// veh-2's twin's audit log (`<data-dir>/veh-2/audit.log` of its host).
    #[arg(long)]
    discloser_audit: PathBuf,
    /// Hazards veh-2 reports.
    #[arg(long, default_value_t = 300)]
    hazards: u32,
    /// Hazards reported per second.
    #[arg(long, default_value_t = 10.0)]
    rate_hz: f64,
    #[command(flatten)]
    zenoh: ZenohArgs,
}

fn state(vehicle: &str, x: f64) -> VehicleState {
    let mut s = VehicleState {
        vehicle_id: vehicle.into(),
        length: 4.5,
        width: 1.9,
        lane_index: 1,
        ..Default::default()
    };
    s.header.stamp = ros_time(now_us());
    s.header.frame_id = "map".into();
    s.pose.position.x = x;
    s.pose.position.y = 3.5;
    s.pose.orientation.w = 1.0;
    s
}

fn policy(share: bool) -> SharingPolicy {
    SharingPolicy {
        rules: if share {
            vec![SharingRule {
                category: SharedObservation::CATEGORY_HAZARDS,
                audience: SharingRule::AUDIENCE_ANY_TWIN,
                spatial_precision: 10.0,
                max_age: 30.0,
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        allow_autonomous_fetch: !share,
        version: 0,
    }
}

async fn open(args: &Args, settings: &ZenohSettings, vehicle: &str) -> anyhow::Result<Link> {
    let id = VehicleId::new(vehicle)?;
    let keys = KeyMaterial::load(&args.keys.join(format!("{vehicle}.pe.key")), &id, Role::Pe)?;
    let mut link = Link::open(LinkConfig::new(keys, settings.clone())).await?;
    link.wait_peer_up(Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{vehicle}'s twin did not answer: {e}"))?;
    Ok(link)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.rate_hz > 0.0 && args.rate_hz.is_finite()) || args.hazards == 0 {
        anyhow::bail!("--rate-hz and --hazards must be positive");
    }
    let settings = args.zenoh.settings()?;
    let mut receiver = open(&args, &settings, "veh-1").await?;
    receiver.send(to_link(
        "policy",
        Priority::OwnState,
        &policy(false),
        now_us(),
    ))?;
    receiver.send(to_link(
        "state",
        Priority::OwnState,
        &state("veh-1", 500.0),
        now_us(),
    ))?;
    let mut discloser = open(&args, &settings, "veh-2").await?;
    discloser.send(to_link(
        "policy",
        Priority::OwnState,
        &policy(true),
        now_us(),
    ))?;
    discloser.send(to_link(
        "state",
        Priority::OwnState,
        &state("veh-2", 900.0),
        now_us(),
    ))?;
    // Both policies in force before the first hazard.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (pseudonym, disclosure id) -> arrival at veh-1.
    let mut arrivals: HashMap<(String, u64), u64> = HashMap::new();
    let period = Duration::from_secs_f64(1.0 / args.rate_hz);
    let mut next = tokio::time::Instant::now();
    let mut sent = 0;
    let mut keepalive = tokio::time::interval(Duration::from_millis(500));
    let end_of_sending = |sent| sent >= args.hazards;
    let mut drain_until: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next), if !end_of_sending(sent) => {
                let mut i = Incident {
                    incident_id: format!("bench-{sent}"),
                    incident_kind: Incident::INCIDENT_STALLED_VEHICLE,
                    position: Point { x: 1000.0 + 30.0 * f64::from(sent % 500), y: 0.0, z: 0.0 },
                    lane_index: 0,
                    extent: 5.0,
                    confidence: 0.9,
                    ..Default::default()
                };
                i.detected = ros_time(now_us());
                discloser.send(to_link("incident", Priority::Hazard, &i, now_us()))?;
                sent += 1;
                next += period;
                if end_of_sending(sent) {
                    drain_until = Some(Instant::now() + Duration::from_secs(3));
                }
            }
            _ = keepalive.tick() => {
                receiver.send(to_link("state", Priority::OwnState, &state("veh-1", 500.0), now_us()))?;
                discloser.send(to_link("state", Priority::OwnState, &state("veh-2", 900.0), now_us()))?;
                if drain_until.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
            }
            event = receiver.recv() => {
                let Some(LinkEvent::Message(d)) = event else { continue };
                if d.message.stream != "relayed" {
                    continue;
                }
                let at = now_us();
                let o = from_link::<SharedObservation>(&d.message)?;
                arrivals.entry((o.origin_pseudonym, o.disclosure_id)).or_insert(at);
            }
            _ = discloser.recv() => {}
        }
    }
    receiver.close().await;
    discloser.close().await;
    // The discloser's audit reaches the file within a second of its last message.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text = std::fs::read_to_string(&args.discloser_audit).map_err(|e| {
        anyhow::anyhow!("--discloser-audit {}: {e}", args.discloser_audit.display())
    })?;
    // The first disclosure of each hazard: when veh-2's twin learned it.
    let mut seen = HashSet::new();
    let mut latencies = Vec::new();
    let mut first_disclosures = 0;
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let d = &record["detail"];
        if record["kind"] != "disclosure" || d["direction"] != "out" || !d["decision"].is_null() {
            continue;
        }
        let hazard = d["hazard"].as_str().unwrap_or_default().to_string();
        if !seen.insert(hazard) {
            continue;
        }
        first_disclosures += 1;
        let key = (
            d["pseudonym"].as_str().unwrap_or_default().to_string(),
            d["disclosure_id"].as_u64().unwrap_or(u64::MAX),
        );
        if let (Some(arrived), Some(learned)) = (arrivals.get(&key), d["at_us"].as_u64()) {
            latencies.push((*arrived as f64 - learned as f64) / 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let out = json!({
        "hazards_sent": sent,
        "first_disclosures": first_disclosures,
        "delivered": latencies.len(),
        "relay_latency_p50_ms": percentile(&latencies, 0.5),
        "relay_latency_p99_ms": percentile(&latencies, 0.99),
        "relay_latency_max_ms": latencies.last().copied().unwrap_or(f64::NAN),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if latencies.len() < (sent as usize) * 9 / 10 {
        anyhow::bail!(
            "only {} of {} hazards reached veh-1 (first disclosures found: {first_disclosures})",
            latencies.len(),
            sent
        );
    }
    Ok(())
}
