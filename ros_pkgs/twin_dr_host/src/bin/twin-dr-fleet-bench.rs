//! Fleet load for a DR host, from a process of its own.
//!
//! - `provision --active N --idle M --dir D`: DR keys of N + M vehicles in `D/keys` (the
//!   host's keys directory) and the PE keys of the N active ones in `D/pe`.
//! - `load --dir D --connect EP`: every PE key in `D/pe` becomes a vehicle on one shared
//!   Zenoh session, sending its state and a perception summary at `--rate-hz`; each
//!   recommendation that comes back is matched to the newest summary sent before the twin
//!   made it, and the time from sending that summary to receiving the advice is recorded.
//!   The vehicles first bring their links up (handshakes, the host waking their twins) and
//!   start sending together once all are up (or after `--up-within`); the time that took
//!   is reported as `links_up_s`. Prints percentiles as JSON.

// Messages are built field by field from defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;
use twinlink_link::cli::percentiles;
use twinlink_link::link::{now_us, zenoh_config};
use twinlink_link::minimal::{from_link, ros_time, time_us, to_link};
use twinlink_link::{
    KeyMaterial, LinkConfig, LinkEnd, LinkEvent, LinkHub, Priority, Role, VehicleId, ZenohSettings,
};
use twinlink_msgs::twin_msgs::msg::{
    DetectedObject, PerceptionSummary, Recommendation, VehicleState,
};

#[derive(Debug, Parser)]
#[command(about = "Fleet load for a DR host")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes the keys of a fleet.
    Provision {
        /// Vehicles that will connect.
        #[arg(long)]
        active: usize,
        /// Vehicles that stay away (idle twins).
        #[arg(long)]
        idle: usize,
        /// Output directory (`keys/` and `pe/` inside).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Drives the active vehicles against a host.
    Load {
        /// The directory given to `provision`.
        #[arg(long)]
        dir: PathBuf,
        /// The host's Zenoh endpoint.
        #[arg(long)]
        connect: String,
        /// Summaries per second per vehicle.
        #[arg(long, default_value_t = 10.0)]
        rate_hz: f64,
        /// Objects per summary.
        #[arg(long, default_value_t = 10)]
        objects: usize,
        /// The vehicle's state goes with every this-many summaries (5: 2 Hz at 10 Hz, as
        /// `twin_link_node`'s `state_rate` decimates odometry).
        #[arg(long, default_value_t = 5)]
        state_every: u64,
        /// Longest wait for every link to come up before the load starts anyway.
        #[arg(long, default_value_t = 120.0)]
        up_within: f64,
        /// Longest hold of a vehicle's acknowledgement of a recommendation, so that it rides
        /// on the next summary instead of costing a frame [ms] (announced to the twin, whose
        /// retransmission timer allows for it).
        #[arg(long, default_value_t = 150)]
        ack_delay_ms: u64,
        /// Longest silence of a vehicle's link before a heartbeat [ms] (below the twin's
        /// 600 ms peer timeout).
        #[arg(long, default_value_t = 250)]
        heartbeat_ms: u64,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 10.0)]
        warmup_s: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
    },
}

fn provision(active: usize, idle: usize, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("keys"))?;
    std::fs::create_dir_all(dir.join("pe"))?;
    for i in 0..active + idle {
        let (kind, n) = if i < active {
            ("active", i)
        } else {
            ("idle", i - active)
        };
        let vehicle = VehicleId::new(&format!("{kind}-{n:05}"))?;
        let (pe, dr) = KeyMaterial::generate_pair(&vehicle)?;
        dr.save(&dir.join("keys").join(format!("{vehicle}.dr.key")), true)?;
        if i < active {
            pe.save(&dir.join("pe").join(format!("{vehicle}.pe.key")), true)?;
        }
    }
    println!("{}", json!({"active": active, "idle": idle}));
    Ok(())
}

fn state(vehicle: &str, t_us: u64, x: f64) -> VehicleState {
    let mut s = VehicleState::default();
    s.header.stamp = ros_time(t_us);
    s.header.frame_id = "map".into();
    s.vehicle_id = vehicle.into();
    s.pose.position.x = x;
    s.pose.position.y = 3.5;
    s.pose.orientation.w = 1.0;
    s.twist.linear.x = 25.0;
    s.length = 4.5;
    s.width = 1.9;
    s
}

fn summary(t_us: u64, t: f64, objects: usize) -> PerceptionSummary {
    let mut s = PerceptionSummary::default();
    s.header.stamp = ros_time(t_us);
    s.header.frame_id = "base_link".into();
    s.sensor_id = "fused".into();
    s.sensor_kind = PerceptionSummary::SENSOR_FUSED;
    s.objects = (0..objects)
        .map(|i| {
            let speed = 18.0 + (i * 7 % 13) as f64;
            let x0 = -60.0 + i as f64 * 180.0 / objects as f64;
            let mut o = DetectedObject::default();
            o.classification = DetectedObject::CLASS_CAR;
            o.class_confidence = 0.9;
            o.position.x = (x0 + (speed - 25.0) * t + 60.0).rem_euclid(180.0) - 60.0;
            o.position.y = (i % 3) as f64 * 3.5 - 3.5;
            o.dimensions.x = 4.5;
            o.dimensions.y = 1.9;
            o.position_covariance = [0.04, 0.0, 0.0, 0.0, 0.04, 0.0, 0.0, 0.0, 0.1];
            o
        })
        .collect();
    s
}

/// When the load is measured, microseconds since the epoch.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from_us: u64,
    until_us: u64,
}

/// How the vehicles' link ends time acknowledgements and heartbeats.
#[derive(Debug, Clone, Copy)]
struct LinkTiming {
    ack_delay: Duration,
    heartbeat: Duration,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    summaries: u64,
    recommendations: u64,
    unmatched: u64,
    links_up: u64,
}

#[allow(clippy::too_many_arguments)]
async fn vehicle(
    hub: LinkHub,
    keys: KeyMaterial,
    endpoint: String,
    rate_hz: f64,
    objects: usize,
    state_every: u64,
    mut go: tokio::sync::watch::Receiver<Option<Window>>,
    give_up_after: Duration,
    timing: LinkTiming,
    tally: Arc<Mutex<Tally>>,
) -> anyhow::Result<()> {
    let name = keys.vehicle.to_string();
    let mut config = LinkConfig::new(keys, ZenohSettings::peer_connecting(&endpoint));
    // Thousands of vehicles on one session (one process here): Zenoh batches their frames,
    // and one hub's declarations serve them all.
    config.express = false;
    config.prompt_acks = false;
    config.ack_delay = timing.ack_delay;
    config.heartbeat = timing.heartbeat;
    let mut link = LinkEnd::open_in(&hub, config).await?;
    // A vehicle whose twin never answers gives up when the run ends (counted as failed).
    link.wait_peer_up(give_up_after).await?;
    tally.lock().unwrap().links_up += 1;
    // Wait for the others; answers to the heartbeats keep the link up meanwhile.
    let window = loop {
        tokio::select! {
            w = go.wait_for(Option::is_some) => break (*w?).expect("checked by wait_for"),
            event = link.recv() => if event.is_none() { anyhow::bail!("the link stopped") },
        }
    };
    let (measure_from_us, until_us) = (window.measure_from_us, window.until_us);
    let period = Duration::from_secs_f64(1.0 / rate_hz);
    // Spread the vehicles over the period.
    tokio::time::sleep(period.mul_f64(rand::random::<f64>())).await;
    let mut tick = tokio::time::interval(period);
    let mut sent: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut local = Tally::default();
    let t0 = now_us();
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = now_us();
                if now >= until_us {
                    break;
                }
                let t = (now - t0) as f64 * 1e-6;
                if ticks % state_every == 0 {
                    // The state and the summary of one instant share a frame.
                    link.queue(to_link("state", Priority::OwnState, &state(&name, now, 25.0 * t), now));
                }
                ticks += 1;
                link.send(to_link("objects/fused", Priority::Objects, &summary(now, t, objects), now));
                sent.push_back(now);
                if sent.len() > 64 {
                    sent.pop_front();
                }
                if now >= measure_from_us {
                    local.summaries += 1;
                }
            }
            event = link.recv() => {
                let Some(event) = event else { break };
                if let LinkEvent::Message(d) = event {
                    let arrived = now_us();
                    let Ok(r) = from_link::<Recommendation>(&d.message) else { continue };
                    let made = time_us(&r.header.stamp);
                    if made < measure_from_us {
                        continue;
                    }
                    local.recommendations += 1;
                    // The summary it answers: the newest sent before the twin made it.
                    match sent.iter().rev().find(|&&s| s <= made) {
                        Some(&s) => local.latencies_us.push(arrived.saturating_sub(s)),
                        None => local.unmatched += 1,
                    }
                }
            }
        }
    }
    link.close().await;
    let mut t = tally.lock().unwrap();
    t.latencies_us.extend(local.latencies_us);
    t.summaries += local.summaries;
    t.recommendations += local.recommendations;
    t.unmatched += local.unmatched;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn load(
    dir: &Path,
    connect: &str,
    rate_hz: f64,
    objects: usize,
    state_every: u64,
    up_within: f64,
    timing: LinkTiming,
    warmup_s: f64,
    seconds: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(state_every >= 1, "--state-every must be at least 1");
    anyhow::ensure!(
        timing.ack_delay <= twinlink_link::sync::MAX_PEER_ACK_DELAY,
        "--ack-delay-ms must be at most {} ms (the longest delay a twin allows for)",
        twinlink_link::sync::MAX_PEER_ACK_DELAY.as_millis()
    );
    anyhow::ensure!(
        (twinlink_link::link::MIN_HEARTBEAT..=twinlink_link::link::MAX_HEARTBEAT)
            .contains(&timing.heartbeat),
        "--heartbeat-ms must be within {}..={} (below the twin's 600 ms peer timeout)",
        twinlink_link::link::MIN_HEARTBEAT.as_millis(),
        twinlink_link::link::MAX_HEARTBEAT.as_millis()
    );
    anyhow::ensure!(
        up_within >= 0.0 && warmup_s >= 0.0 && seconds > 0.0,
        "--up-within and --warmup-s must be at least 0 and --seconds above 0"
    );
    anyhow::ensure!(
        rate_hz > 0.0 && rate_hz <= 100.0,
        "--rate-hz must be in (0, 100]"
    );
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(dir.join("pe"))? {
        let path = entry?.path();
        let Some(v) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pe.key"))
        else {
            continue;
        };
        keys.push(KeyMaterial::load(&path, &VehicleId::new(v)?, Role::Pe)?);
    }
    let session = zenoh::open(zenoh_config("peer", &[], &[connect.to_string()])?)
        .await
        .map_err(|e| anyhow::anyhow!("zenoh: {e}"))?;
    let hub = LinkHub::declare(session.clone(), Role::Pe).await?;
    let start = now_us();
    let (go_tx, go) = tokio::sync::watch::channel(None);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for k in keys.iter().cloned() {
        tasks.spawn(vehicle(
            hub.clone(),
            k,
            connect.to_string(),
            rate_hz,
            objects,
            state_every,
            go.clone(),
            Duration::from_secs_f64(up_within + warmup_s + seconds),
            timing,
            tally.clone(),
        ));
    }
    // Start the load once every link is up (or the wait is over).
    let up_deadline = start + (up_within * 1e6) as u64;
    while tally.lock().unwrap().links_up < keys.len() as u64 && now_us() < up_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load_from = now_us();
    let links_up_s = (load_from - start) as f64 * 1e-6;
    let links_up_at_start = tally.lock().unwrap().links_up;
    let measure_from_us = load_from + (warmup_s * 1e6) as u64;
    go_tx.send_replace(Some(Window {
        measure_from_us,
        until_us: measure_from_us + (seconds * 1e6) as u64,
    }));
    let mut failures = 0;
    while let Some(r) = tasks.join_next().await {
        if !matches!(r, Ok(Ok(()))) {
            failures += 1;
        }
    }
    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    let (p50, p99, max) = percentiles(&mut t.latencies_us);
    println!(
        "{}",
        json!({
            "vehicles": keys.len(), "links_up": t.links_up, "links_up_at_start": links_up_at_start,
            "links_up_s": links_up_s, "failed": failures,
            "rate_hz": rate_hz, "objects": objects, "state_every": state_every, "seconds": seconds,
            "summaries": t.summaries, "recommendations": t.recommendations, "unmatched": t.unmatched,
            "latency_p50_ms": p50 as f64 / 1e3, "latency_p99_ms": p99 as f64 / 1e3, "latency_max_ms": max as f64 / 1e3,
        })
    );
    drop(hub);
    let _ = session.close().await;
    Ok(())
}

/// Thousands of twins allocate and free small buffers per message from several threads;
/// mimalloc's thread-local pages serve that with less time in the allocator than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    twinlink_link::cli::init_tracing();
    match Args::parse().command {
        Cmd::Provision { active, idle, dir } => provision(active, idle, &dir),
        Cmd::Load {
            dir,
            connect,
            rate_hz,
            objects,
            state_every,
            up_within,
            ack_delay_ms,
            heartbeat_ms,
            warmup_s,
            seconds,
        } => tokio::runtime::Runtime::new()?.block_on(load(
            &dir,
            &connect,
            rate_hz,
            objects,
            state_every,
            up_within,
            LinkTiming {
                ack_delay: Duration::from_millis(ack_delay_ms),
                heartbeat: Duration::from_millis(heartbeat_ms),
            },
            warmup_s,
            seconds,
        )),
    }
}
