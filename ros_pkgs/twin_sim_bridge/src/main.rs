//! `twin_sim`: twinlink's highway simulator in real time on ROS 2.
//!
//! The world (`twinlink_sim::realtime`) steps on the wall clock; each driven vehicle's
//! LiDAR and radar point clouds, odometry and camera detections go out on its namespace's
//! topics, and the recommendations its twin link node publishes are applied to its driver.
//! A trace (JSON Lines: the road every `--snapshot-s`, every link status and every
//! recommendation) and a final report are written for the demo's table, plots and
//! recording. Topics and options: see the package README.

use std::cell::RefCell;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use twin_node_support::{now_us, qos, subscribe_cdr, CdrPublisher, Received, Shutdown};
use twinlink_msgs::nav_msgs::msg::Odometry;
use twinlink_msgs::sensor_msgs::msg::PointCloud2;
use twinlink_msgs::twin_msgs::msg::{PerceptionSummary, Recommendation, TwinStatus};
use twinlink_sim::realtime::{
    choose_driven, AdviceSample, LinkSample, RealtimeConfig, RealtimeReport, RealtimeSim,
    SensorOutput, TraceRecord,
};
use twinlink_sim::{Scenario, World};

/// Run a scenario in real time, publishing the driven vehicles' sensors on ROS 2.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The scenario (YAML, see sim/README.md).
    #[arg(long)]
    scenario: PathBuf,
    /// Names (ROS namespaces and vehicle ids) of the vehicles real nodes drive; they are
    /// given to the connected vehicles farthest upstream at the start. Repeat or separate
    /// with commas.
    #[arg(long = "vehicle", value_delimiter = ',', required = true)]
    vehicles: Vec<String>,
    /// Stop after this much simulated time instead of the scenario's duration [s].
    #[arg(long)]
    duration_s: Option<f64>,
    /// Seed instead of the scenario's.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the trace here (JSON Lines).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write the report here (JSON) at the end.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Road snapshots in the trace every this many simulated seconds.
    #[arg(long, default_value_t = 0.5)]
    snapshot_s: f64,
    /// Print `progress <t> <duration>` lines on stdout every simulated second.
    #[arg(long)]
    progress: bool,
    /// Wait this long after advertising before the world starts, so that the vehicles'
    /// nodes discover the topics [s].
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
}

struct Publishers {
    lidar: CdrPublisher<PointCloud2>,
    radar: CdrPublisher<PointCloud2>,
    odom: CdrPublisher<Odometry>,
    camera: CdrPublisher<PerceptionSummary>,
}

/// What arrived from the vehicles' link nodes since the last turn.
#[derive(Default)]
struct Inbox {
    advice: Vec<(usize, Received<Recommendation>)>,
    status: Vec<(usize, Received<TwinStatus>)>,
}

fn main() {
    twin_node_support::init_logging();
    if let Err(e) = run(Args::parse()) {
        eprintln!("twin_sim: {e:#}");
        std::process::exit(1);
    }
}

fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        bail!("--vehicle {name:?}: a vehicle name is a ROS namespace: a letter, then letters, digits or _ (at most 64)");
    }
    Ok(())
}

fn run(args: Args) -> Result<()> {
    for name in &args.vehicles {
        valid_name(name)?;
    }
    if !(args.snapshot_s > 0.0 && args.snapshot_s.is_finite()) {
        bail!("--snapshot-s must be a positive number of seconds");
    }
    let mut scenario = Scenario::load(&args.scenario)
        .with_context(|| format!("scenario {}", args.scenario.display()))?;
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(d) = args.duration_s {
        if !(d > 0.0 && d.is_finite()) {
            bail!("--duration-s must be a positive number of seconds");
        }
        scenario.duration_s = d;
    }
    let ids = choose_driven(&World::new(&scenario), args.vehicles.len());
    if ids.len() < args.vehicles.len() {
        bail!(
            "the scenario has {} connected vehicles on the road at the start; {} were named",
            ids.len(),
            args.vehicles.len()
        );
    }
    let driven: Vec<(String, u32)> = args.vehicles.iter().cloned().zip(ids).collect();

    let shutdown = Shutdown::install()?;
    let ctx = r2r::Context::create().map_err(|e| anyhow::anyhow!("ROS context: {e}"))?;
    let mut node = r2r::Node::create(ctx, "twin_sim", "")
        .map_err(|e| anyhow::anyhow!("creating node twin_sim: {e}"))?;
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    let inbox = Rc::new(RefCell::new(Inbox::default()));
    let mut publishers = Vec::new();
    for (k, (name, _)) in driven.iter().enumerate() {
        publishers.push(Publishers {
            lidar: CdrPublisher::new(
                &mut node,
                &format!("/{name}/lidar/points"),
                qos::sensor_data(),
            )?,
            radar: CdrPublisher::new(
                &mut node,
                &format!("/{name}/radar/points"),
                qos::sensor_data(),
            )?,
            odom: CdrPublisher::new(&mut node, &format!("/{name}/odom"), qos::sensor_data())?,
            camera: CdrPublisher::new(
                &mut node,
                &format!("/{name}/perception/objects/camera"),
                qos::reliable(10),
            )?,
        });
        let mut advice = subscribe_cdr::<Recommendation>(
            &mut node,
            &format!("/{name}/twin/recommendation"),
            qos::latched(1),
        )?;
        let into = inbox.clone();
        spawner.spawn_local(async move {
            while let Some(r) = advice.next().await {
                into.borrow_mut().advice.push((k, r));
            }
        })?;
        let mut status = subscribe_cdr::<TwinStatus>(
            &mut node,
            &format!("/{name}/twin/status"),
            qos::latched(1),
        )?;
        let into = inbox.clone();
        spawner.spawn_local(async move {
            while let Some(s) = status.next().await {
                into.borrow_mut().status.push((k, s));
            }
        })?;
    }
    let mut trace = match &args.trace {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut record = |r: &TraceRecord| -> Result<()> {
        if let Some(w) = trace.as_mut() {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    };

    // Let the vehicles' nodes discover the topics before the world moves.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64(args.warmup_s.max(0.0)) && !shutdown.requested()
    {
        node.spin_once(Duration::from_millis(20));
        pool.run_until_stalled();
    }
    let epoch_us = now_us();
    let started = Instant::now();
    let mut sim = RealtimeSim::new(&scenario, &driven, epoch_us, RealtimeConfig::default());
    let names = sim.driven_names();
    if args.progress {
        println!("epoch {epoch_us}");
        let _ = std::io::stdout().flush();
    }
    tracing::info!(
        scenario = %scenario.name,
        vehicles = ?driven,
        duration_s = scenario.duration_s,
        "world started"
    );
    record(&TraceRecord::Snapshot(sim.snapshot()))?;
    let step = scenario.step_s;
    let (mut next_snapshot, mut next_progress) = (args.snapshot_s, 1.0);
    let (mut late_steps, mut max_lag) = (0u64, 0.0f64);
    let mut refused_advice = 0u64;
    while !sim.world().finished() && !shutdown.requested() {
        let now = started.elapsed().as_secs_f64();
        let due = sim.world().time() + step;
        if due > now {
            node.spin_once(Duration::from_secs_f64((due - now).min(0.01)));
        } else {
            node.spin_once(Duration::ZERO);
        }
        pool.run_until_stalled();
        let arrived = std::mem::take(&mut *inbox.borrow_mut());
        for (k, r) in arrived.advice {
            let Ok(advice) = r.message else {
                refused_advice += 1;
                tracing::warn!(vehicle = %names[k], "undecodable recommendation");
                continue;
            };
            let refused = sim.apply(k, &advice, r.arrived_us).err();
            if let Some(e) = &refused {
                refused_advice += 1;
                tracing::warn!(vehicle = %names[k], error = %e, "recommendation not applied");
            }
            let issued_us = advice.header.stamp.sec as i64 * 1_000_000
                + advice.header.stamp.nanosec as i64 / 1000;
            record(&TraceRecord::Advice(AdviceSample {
                t: sim.sim_time(r.arrived_us),
                vehicle: names[k].clone(),
                target_speed: advice.target_speed,
                target_lane: advice.target_lane,
                reason_code: advice.reason_code,
                reason: advice.reason.clone(),
                latency_ms: (r.arrived_us as i64 - issued_us) as f64 / 1e3,
                refused: refused.map(|e| e.reason().to_string()),
            }))?;
        }
        for (k, s) in arrived.status {
            let Ok(status) = s.message else { continue };
            record(&TraceRecord::Link(LinkSample {
                t: sim.sim_time(s.arrived_us),
                vehicle: names[k].clone(),
                link_state: status.link_state,
                rtt_s: status.rtt as f64,
                measured_bandwidth_bps: status.measured_bandwidth as f64,
                uplink_bytes: status.uplink_bytes,
                downlink_bytes: status.downlink_bytes,
                buffered: status.buffered_messages,
            }))?;
        }
        let now = started.elapsed().as_secs_f64();
        let mut steps_now = 0;
        while sim.world().time() + step <= now + 1e-6 && !sim.world().finished() {
            let lag = now - (sim.world().time() + step);
            max_lag = max_lag.max(lag);
            if lag > step {
                late_steps += 1;
            }
            for (k, output) in sim.step() {
                let p = &publishers[k];
                let sent = match &output {
                    SensorOutput::Lidar(c) => p.lidar.publish(c),
                    SensorOutput::Radar(c) => p.radar.publish(c),
                    SensorOutput::Odometry(o) => p.odom.publish(o),
                    SensorOutput::Camera(s) => p.camera.publish(s),
                };
                if let Err(e) = sent {
                    tracing::warn!(vehicle = %names[k], error = %e, "publishing");
                }
            }
            let t = sim.world().time();
            if t + 1e-9 >= next_snapshot {
                next_snapshot += args.snapshot_s;
                record(&TraceRecord::Snapshot(sim.snapshot()))?;
            }
            if args.progress && t + 1e-9 >= next_progress {
                next_progress += 1.0;
                println!("progress {t:.1} {:.1}", scenario.duration_s);
                let _ = std::io::stdout().flush();
            }
            steps_now += 1;
            if steps_now >= 10 {
                // Far behind: let ROS deliver before catching up further.
                break;
            }
        }
    }
    let report = RealtimeReport {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        epoch_us,
        wall_s: started.elapsed().as_secs_f64(),
        late_steps,
        max_lag_s: max_lag,
        measures: sim.measures(),
        driven: sim.driven_stats(),
    };
    if let Some(w) = trace.as_mut() {
        w.flush().context("writing the trace")?;
    }
    if let Some(p) = &args.report {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    tracing::info!(
        simulated_s = report.measures.simulated_s,
        wall_s = report.wall_s,
        late_steps,
        refused_advice,
        "world stopped"
    );
    Ok(())
}
