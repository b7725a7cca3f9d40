//! The soak (`make soak`): the fleet of `fleet_failover` (PostgreSQL, two Zenoh routers,
//! three DR hosts) under the demo scenario's traffic for 10 minutes, with one host killed
//! and one router restarted on the way.
//!
//! The demo scenario's world (`sim/scenarios/demo.yaml`: a 4 km three-lane highway, 2400
//! vehicles an hour, 30 % of them connected, a stalled vehicle) runs on the wall clock.
//! Each connected vehicle that enters is provisioned (its DR key into the hosts' keys
//! directory) and gets a real PE link end on one Zenoh session through the second router;
//! it sends its fused perception summary (the simulator's LiDAR, radar and camera models)
//! at 10 Hz, its state at 2 Hz, and every 5 s a log record on a stream of its own (these
//! are never superseded, so each must be stored exactly once). When it leaves the road it
//! waits until its link has nothing outstanding and closes.
//!
//! Events: at 1/3 of the run the host serving the most vehicles is killed with SIGKILL
//! (restarted 60 s later, as a supervisor would); at 2/3 the first router (the one two
//! hosts connect to first) is killed and restarted on its port 3 s later.
//!
//! Reported (stdout and `target/soak/report.json`): messages offered, sent and
//! acknowledged, lost (acknowledged but not in the database: must be 0), each log record
//! stored exactly once, summary-to-advice latency percentiles (each advice paired with the
//! newest summary the vehicle sent before the twin made it: while a link is down the
//! vehicle's summaries queue, so this understates how old the summary the twin used was),
//! the gaps between advices a vehicle received (what a disruption costs a vehicle), both
//! in steady times and within 30 s after a disruption (a kill, a restart), and each host's
//! resident memory after the warm-up and at the end. `TWINLINK_SOAK_SECONDS` shortens or lengthens
//! the run (default 600).

// Messages are built field by field from their defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, start_router, work_dir, Postgres};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use twin_dr_host::fleet::SharedStore;
use twinlink_launch::{workspace_root, Supervised};
use twinlink_link::cli::percentiles;
use twinlink_link::link::{now_us, zenoh_config};
use twinlink_link::minimal::{from_link, ros_time, time_us, to_link};
use twinlink_link::{KeyMaterial, LinkConfig, LinkEnd, LinkEvent, LinkHub, Priority, Role};
use twinlink_link::{VehicleId, ZenohSettings};
use twinlink_msgs::twin_msgs::msg::{PerceptionSummary, Recommendation};
use twinlink_sim::fast::{fuse, twin_road_spec};
use twinlink_sim::sensors::{observe, vehicle_state, SensorModel};
use twinlink_sim::{Scenario, World};

const SHARDS: &str = "16";
const TOKEN: &str = "soak-operator-token-0123456789";
/// Seconds of a host process's life before its memory baseline is read.
const WARMUP_S: f64 = 60.0;
/// Advice within this long after a disruption counts as disrupted, the rest as steady.
const DISRUPTION_WINDOW: Duration = Duration::from_secs(30);
/// How long a vehicle that left waits for its link to have nothing outstanding.
const DRAIN_WITHIN: Duration = Duration::from_secs(60);

struct Host {
    name: String,
    admin: String,
    connect: Vec<String>,
    process: Option<Supervised>,
    /// Resident memory after the warm-up [KiB] (of this process instance).
    rss_baseline_kib: Option<u64>,
    /// Twins provisioned then.
    provisioned_at_baseline: f64,
    /// When this instance started.
    started: Instant,
}

fn start_host(dir: &Path, name: &str, db: &str, connect: &[String]) -> Host {
    let road = dir.join("road.json").display().to_string();
    let (admin, process) = common::start_fleet_host(
        dir,
        name,
        db,
        SHARDS,
        connect,
        TOKEN,
        &[
            "--road",
            &road,
            "--rescan-ms",
            "500",
            "--idle-after-s",
            "10",
            "--retention",
            "100000000",
        ],
    );
    Host {
        name: name.into(),
        admin,
        connect: connect.to_vec(),
        process: Some(process),
        rss_baseline_kib: None,
        provisioned_at_baseline: 0.0,
        started: Instant::now(),
    }
}

impl Host {
    /// A gauge or counter (0 when the host does not answer).
    fn metric(&self, name: &str) -> f64 {
        common::metric(&self.admin, TOKEN, name, "")
    }

    fn rss_kib(&self) -> Option<u64> {
        let pid = self.process.as_ref()?.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// The world on the wall clock, shared by the vehicles' tasks.
struct Road {
    world: Mutex<World>,
}

/// What one vehicle did.
#[derive(Debug, Default)]
struct Outcome {
    name: String,
    offered: u64,
    sent: u64,
    acknowledged: u64,
    skips: u64,
    coalesced: u64,
    dropped: u64,
    /// Log records sent (streams `log/<k>`, k = 0..logs).
    logs: u64,
    /// The link had nothing outstanding when it closed.
    drained: bool,
    /// (arrival [µs since the epoch], summary-to-advice latency [µs]) of each advice.
    latencies_us: Vec<(u64, u64)>,
    /// (arrival [µs since the epoch], time since the previous advice [µs]) of each advice
    /// but the first: how long the vehicle went without fresh advice.
    gaps_us: Vec<(u64, u64)>,
    recommendations: u64,
}

async fn drive(
    hub: LinkHub,
    keys: KeyMaterial,
    id: u32,
    road: Arc<Road>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let name = keys.vehicle.to_string();
    let mut out = Outcome {
        name: name.clone(),
        ..Outcome::default()
    };
    let mut config = LinkConfig::new(keys, ZenohSettings::client_of("unused"));
    config.express = false;
    let Ok(mut link) = LinkEnd::open_in(&hub, config).await else {
        return out;
    };
    let sensors = SensorModel::suite();
    let mut rng = ChaCha8Rng::seed_from_u64(id as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sent_at: VecDeque<u64> = VecDeque::new();
    let mut ticks = 0u64;
    let mut last_advice: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if *stop.borrow() {
                    break;
                }
                let now = now_us();
                let stamp = ros_time(now);
                let (state, summary) = {
                    let world = road.world.lock().unwrap();
                    let state = vehicle_state(&world, id, &name, stamp.clone());
                    let reports: Vec<PerceptionSummary> = sensors
                        .iter()
                        .filter_map(|s| observe(&world, id, s, stamp.clone(), &mut rng))
                        .collect();
                    (state, fuse(reports))
                };
                // Off the road: done.
                let Some(state) = state else { break };
                if ticks % 5 == 0 {
                    link.queue(to_link("state", Priority::OwnState, &state, now));
                    out.offered += 1;
                }
                if ticks % 50 == 0 {
                    link.queue(to_link(&format!("log/{}", out.logs), Priority::Info, &state, now));
                    out.logs += 1;
                    out.offered += 1;
                }
                ticks += 1;
                link.send(to_link("objects/fused", Priority::Objects, &summary, now));
                out.offered += 1;
                sent_at.push_back(now);
                if sent_at.len() > 64 {
                    sent_at.pop_front();
                }
            }
            _ = stop.changed() => {}
            event = link.recv() => {
                let Some(event) = event else { break };
                if let LinkEvent::Message(d) = event {
                    let arrived = now_us();
                    let Ok(r) = from_link::<Recommendation>(&d.message) else { continue };
                    out.recommendations += 1;
                    if let Some(last) = last_advice.replace(arrived) {
                        out.gaps_us.push((arrived, arrived.saturating_sub(last)));
                    }
                    let made = time_us(&r.header.stamp);
                    // The summary it answers: the newest sent before the twin made it.
                    if let Some(&s) = sent_at.iter().rev().find(|&&s| s <= made) {
                        out.latencies_us.push((arrived, arrived.saturating_sub(s)));
                    }
                }
            }
        }
    }
    // Wait until everything sent is acknowledged (durable at the twin).
    let deadline = Instant::now() + DRAIN_WITHIN;
    while Instant::now() < deadline {
        let s = link.stats();
        if s.sender.in_flight == 0 && s.outbox.queued == 0 {
            out.drained = true;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            event = link.recv() => if event.is_none() { break },
        }
    }
    let s = link.stats();
    out.sent = s.sender.sent;
    out.acknowledged = s.sender.acknowledged;
    out.skips = s.sender.skips_sent;
    out.coalesced = s.outbox.coalesced;
    out.dropped = s.outbox.dropped.iter().sum();
    link.close().await;
    out
}

fn restart_router(dir: &Path, name: &str, listen: &str, connect: Option<&str>) -> Supervised {
    // The port was just freed; a moment for the kernel.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpListener::bind(listen.trim_start_matches("tcp/")).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "{listen} stayed busy");
        std::thread::sleep(Duration::from_millis(100));
    }
    start_router(dir, &format!("{name}-restarted"), listen, connect)
}

#[test]
#[ignore = "runs for 10 minutes: `make soak`"]
fn the_fleet_under_the_demo_scenario_for_ten_minutes() {
    let seconds: f64 = std::env::var("TWINLINK_SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("TWINLINK_SOAK_SECONDS: a number of seconds")
        })
        .unwrap_or(600.0);
    assert!(seconds >= 60.0, "TWINLINK_SOAK_SECONDS: at least 60");
    let dir = work_dir("soak");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("tokens"), format!("operator ops {TOKEN}\n")).unwrap();
    let mut scenario = Scenario::load(&workspace_root().join("sim/scenarios/demo.yaml")).unwrap();
    scenario.duration_s = seconds;
    std::fs::write(
        dir.join("road.json"),
        serde_json::to_string(&twin_road_spec(&scenario)).unwrap(),
    )
    .unwrap();
    let db = Postgres::start("soak");
    let r1 = format!("tcp/127.0.0.1:{}", free_port());
    let r2 = format!("tcp/127.0.0.1:{}", free_port());
    let mut router1 = start_router(&dir, "router1", &r1, None);
    let _router2 = start_router(&dir, "router2", &r2, Some(&r1));
    let mut hosts = vec![
        start_host(&dir, "host-a", &db.url, &[r1.clone(), r2.clone()]),
        start_host(&dir, "host-b", &db.url, &[r1.clone(), r2.clone()]),
        start_host(&dir, "host-c", &db.url, &[r2.clone(), r1.clone()]),
    ];
    let store = SharedStore::open_reader(&db.url).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let zenoh = zenoh_config("peer", &[], std::slice::from_ref(&r2)).unwrap();
    let session = rt.block_on(async { zenoh::open(zenoh).await }).unwrap();
    let hub = rt
        .block_on(LinkHub::declare(session.clone(), Role::Pe))
        .unwrap();
    let road = Arc::new(Road {
        world: Mutex::new(World::new(&scenario)),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks: BTreeMap<u32, tokio::task::JoinHandle<Outcome>> = BTreeMap::new();
    let mut events: Vec<String> = Vec::new();
    // When each disruption began [µs since the epoch].
    let mut disruptions: Vec<u64> = Vec::new();
    let kill_at = seconds / 3.0;
    let restart_host_at = kill_at + 60.0_f64.min(seconds / 6.0);
    let router_at = seconds * 2.0 / 3.0;
    let (mut killed, mut router_restarted): (Option<usize>, bool) = (None, false);
    let step = Duration::from_secs_f64(scenario.step_s);
    let start = Instant::now();
    let mut next_step = start;
    let mut peak_vehicles = 0usize;
    let mut rt_late_steps = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        // The world on the wall clock.
        next_step += step;
        match next_step.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => rt_late_steps += 1,
        }
        let entered: Vec<u32> = {
            let mut world = road.world.lock().unwrap();
            world.step();
            world
                .vehicles()
                .iter()
                .filter(|v| v.connected && !tasks.contains_key(&v.id))
                .map(|v| v.id)
                .collect()
        };
        for id in entered {
            let vehicle = VehicleId::new(&format!("soak-{id:05}")).unwrap();
            let (pe, dr) = KeyMaterial::generate_pair(&vehicle).unwrap();
            dr.save(&dir.join("keys").join(format!("{vehicle}.dr.key")), true)
                .unwrap();
            tasks.insert(
                id,
                rt.spawn(drive(hub.clone(), pe, id, road.clone(), stop_rx.clone())),
            );
        }
        peak_vehicles = peak_vehicles.max(tasks.values().filter(|t| !t.is_finished()).count());
        let t = start.elapsed().as_secs_f64();
        // Each host process's memory after its warm-up (a restarted one's after its own).
        for h in &mut hosts {
            if h.rss_baseline_kib.is_none()
                && h.process.is_some()
                && h.started.elapsed().as_secs_f64() >= WARMUP_S.min(seconds / 4.0)
            {
                h.rss_baseline_kib = h.rss_kib();
                h.provisioned_at_baseline = h.metric("twinlink_dr_provisioned");
            }
        }
        if killed.is_none() && t >= kill_at {
            let victim = (0..hosts.len())
                .max_by_key(|&i| hosts[i].metric("twinlink_dr_active") as u64)
                .unwrap();
            let active = hosts[victim].metric("twinlink_dr_active");
            hosts[victim].process.take().unwrap().kill();
            disruptions.push(now_us());
            events.push(format!(
                "{t:.0} s: {} killed (SIGKILL) serving {active} active twins",
                hosts[victim].name
            ));
            killed = Some(victim);
        }
        if let Some(victim) = killed {
            if hosts[victim].process.is_none() && t >= restart_host_at {
                let (name, connect) = (hosts[victim].name.clone(), hosts[victim].connect.clone());
                hosts[victim] = start_host(&dir, &name, &db.url, &connect);
                // Its return moves shards back: a disruption too.
                disruptions.push(now_us());
                events.push(format!("{t:.0} s: {name} restarted"));
            }
        }
        if !router_restarted && t >= router_at {
            router_restarted = true;
            router1.kill();
            disruptions.push(now_us());
            std::thread::sleep(Duration::from_secs(3));
            router1 = restart_router(&dir, "router1", &r1, None);
            events.push(format!("{t:.0} s: router1 killed and restarted 3 s later"));
            // The world went on meanwhile.
            next_step = Instant::now();
        }
    }
    // The run is over: the vehicles on the road stop, and every link drains.
    stop_tx.send_replace(true);
    let outcomes: Vec<Outcome> = tasks
        .into_values()
        .map(|t| rt.block_on(t).unwrap())
        .collect();
    let rss_end: Vec<Option<u64>> = hosts.iter().map(Host::rss_kib).collect();
    let provisioned_end: Vec<f64> = hosts
        .iter()
        .map(|h| h.metric("twinlink_dr_provisioned"))
        .collect();

    // What the database holds of each vehicle.
    let mut lost = 0u64;
    let mut logs_missing = 0u64;
    let mut logs_duplicated = 0u64;
    let (mut offered, mut sent, mut acknowledged, mut stored_total, mut undrained) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut coalesced, mut skips, mut dropped, mut recommendations) = (0u64, 0u64, 0u64, 0u64);
    let mut latencies: Vec<(u64, u64)> = Vec::new();
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for o in &outcomes {
        let stored = store.messages(&o.name, 0).unwrap();
        offered += o.offered;
        sent += o.sent;
        acknowledged += o.acknowledged;
        stored_total += stored.len() as u64;
        coalesced += o.coalesced;
        skips += o.skips;
        dropped += o.dropped;
        recommendations += o.recommendations;
        latencies.extend(o.latencies_us.iter().copied());
        gaps.extend(o.gaps_us.iter().copied());
        if !o.drained {
            undrained += 1;
        }
        // A skip stands for a message superseded in flight, acknowledged but not stored.
        let must_hold = o.acknowledged.saturating_sub(o.skips);
        if (stored.len() as u64) < must_hold {
            lost += must_hold - stored.len() as u64;
            problems.push(format!(
                "{}: {} stored, {} acknowledged ({} skips)",
                o.name,
                stored.len(),
                o.acknowledged,
                o.skips
            ));
        }
        if o.drained {
            let mut logs: BTreeMap<u64, u64> = BTreeMap::new();
            for m in &stored {
                if let Some(k) = m.stream.strip_prefix("log/") {
                    *logs.entry(k.parse().unwrap()).or_default() += 1;
                }
            }
            for k in 0..o.logs {
                match logs.get(&k) {
                    None => logs_missing += 1,
                    Some(&n) if n > 1 => logs_duplicated += n - 1,
                    _ => {}
                }
            }
        }
    }
    // The advice within 30 s of a disruption, and the rest (steady): the run's own baseline.
    let near = |t: u64| {
        disruptions
            .iter()
            .any(|&d| t >= d && t < d + DISRUPTION_WINDOW.as_micros() as u64)
    };
    let mut steady: Vec<u64> = latencies
        .iter()
        .filter(|l| !near(l.0))
        .map(|l| l.1)
        .collect();
    let mut disrupted: Vec<u64> = latencies
        .iter()
        .filter(|l| near(l.0))
        .map(|l| l.1)
        .collect();
    let mut all: Vec<u64> = latencies.iter().map(|l| l.1).collect();
    let (p50, p99, max) = percentiles(&mut all);
    let p999 = all
        .get(((all.len().max(1) - 1) as f64 * 0.999).round() as usize)
        .copied()
        .unwrap_or(0);
    let ms = |v: u64| v as f64 / 1e3;
    let (s50, s99, smax) = percentiles(&mut steady);
    let (d50, d99, dmax) = percentiles(&mut disrupted);
    // How long vehicles went without advice, ending in steady times or after disruptions.
    let mut steady_gaps: Vec<u64> = gaps.iter().filter(|g| !near(g.0)).map(|g| g.1).collect();
    let mut disrupted_gaps: Vec<u64> = gaps.iter().filter(|g| near(g.0)).map(|g| g.1).collect();
    let (_, sg99, sgmax) = percentiles(&mut steady_gaps);
    let (_, dg99, dgmax) = percentiles(&mut disrupted_gaps);
    let memory: Vec<serde_json::Value> = hosts
        .iter()
        .zip(rss_end.iter().zip(&provisioned_end))
        .map(|(h, (end, provisioned))| {
            json!({
                "host": h.name,
                "restarted": killed.is_some_and(|k| hosts[k].name == h.name),
                "uptime_s": h.started.elapsed().as_secs_f64().round(),
                "rss_after_warmup_mib": h.rss_baseline_kib.map(|k| k as f64 / 1024.0),
                "rss_end_mib": end.map(|k| k as f64 / 1024.0),
                "growth_mib": h.rss_baseline_kib.zip(*end).map(|(a, b)| (b as f64 - a as f64) / 1024.0),
                "twins_provisioned_at_baseline": h.provisioned_at_baseline,
                "twins_provisioned_at_end": provisioned,
            })
        })
        .collect();
    let report = json!({
        "seconds": seconds,
        "scenario": scenario.name,
        "vehicles": outcomes.len(),
        "peak_vehicles_on_road": peak_vehicles,
        "events": events,
        "messages_offered": offered,
        "messages_coalesced_before_sending": coalesced,
        "messages_dropped_for_room": dropped,
        "messages_sent": sent,
        "messages_acknowledged": acknowledged,
        "skips": skips,
        "messages_stored": stored_total,
        "lost_acknowledged": lost,
        "links_not_drained": undrained,
        "log_records_missing": logs_missing,
        "log_records_duplicated": logs_duplicated,
        "recommendations": recommendations,
        "advice_latency_ms": {
            "p50": ms(p50), "p99": ms(p99), "p99.9": ms(p999), "max": ms(max),
            "samples": all.len(),
        },
        "advice_latency_steady_ms": {"p50": ms(s50), "p99": ms(s99), "max": ms(smax), "samples": steady.len()},
        "advice_latency_within_30s_of_a_disruption_ms": {"p50": ms(d50), "p99": ms(d99), "max": ms(dmax), "samples": disrupted.len()},
        "advice_gap_steady_ms": {"p99": ms(sg99), "max": ms(sgmax)},
        "advice_gap_within_30s_of_a_disruption_ms": {"p99": ms(dg99), "max": ms(dgmax)},
        "host_memory": memory,
        "late_world_steps": rt_late_steps,
    });
    let out_dir: PathBuf = workspace_root().join("target/soak");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());

    drop(hub);
    let _ = rt.block_on(async { session.close().await });
    for h in &mut hosts {
        if let Some(mut p) = h.process.take() {
            p.terminate();
            let _ = p.wait_timeout(Duration::from_secs(10));
        }
    }
    assert!(outcomes.len() >= 10, "too few vehicles: {}", outcomes.len());
    assert!(killed.is_some() && router_restarted, "{events:?}");
    assert_eq!(lost, 0, "acknowledged messages lost: {problems:?}");
    assert_eq!(undrained, 0, "links with messages never acknowledged");
    assert_eq!(
        (logs_missing, logs_duplicated),
        (0, 0),
        "log records missing or stored twice"
    );
    assert!(recommendations > 0);
}
