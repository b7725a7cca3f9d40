//! The minimal DR: answers every perception summary from its PE with a recommendation and
//! reports what it applied. `twinlink-dr --help` lists the options.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tracing::{info, warn};
use twinlink_link::bandwidth::{
    horizon_to_cover, BandwidthPredictor, BandwidthSample, CoverageMap,
};
use twinlink_link::cli::{self, EndArgs};
use twinlink_link::link::now_us;
use twinlink_link::minimal::{self, from_link, to_link};
use twinlink_link::{Link, LinkEvent, Priority, Role};
use twinlink_msgs::twin_msgs::msg::{PerceptionSummary, VehicleState};

#[derive(Debug, Parser)]
#[command(about = "Minimal digital representative: answers each summary with a recommendation")]
struct Args {
    #[command(flatten)]
    end: EndArgs,
    /// Write a JSON report here on exit.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print a status line this often [ms]; 0 = never.
    #[arg(long, default_value_t = 0)]
    status_ms: u64,
    /// Coverage map (bandwidth by place) to start from and to save, learned from the
    /// fleet's measurements; JSON, created if missing.
    #[arg(long)]
    coverage_map: Option<PathBuf>,
    /// Below this predicted bandwidth the PE counts as out of coverage [kbit/s].
    #[arg(long, default_value_t = 64.0)]
    outage_kbps: f64,
}

/// Bandwidth samples are taken this often.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Applied {
    summaries: u64,
    states: u64,
    recommendations: u64,
    bad_messages: u64,
    out_of_order: u64,
    last_summary_stamp_us: u64,
    own_speed: f64,
    /// Position [m] and velocity [m/s] in the map frame, from the newest state.
    position: (f64, f64),
    velocity: (f64, f64),
    newest_state_created_us: u64,
    max_state_age_us: u64,
    /// Horizon the next recommendation needs [s].
    horizon_s: f64,
    longest_horizon_s: f64,
    samples: u64,
    /// When the newest state was applied.
    state_at: Option<Instant>,
    /// Where the twin believes the PE is while it is away: dead-reckoned from its newest
    /// state [m].
    predicted_position: Option<(f64, f64)>,
    predictions_while_away: u64,
}

fn load_map(path: &Option<PathBuf>) -> anyhow::Result<CoverageMap> {
    match path {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(p)?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("coverage map {}: {e}", p.display()))
        }
        _ => Ok(CoverageMap::new(50.0)),
    }
}

// One worker: the application and the link task share it, so handing a message between
// them is a task switch, not a thread wake-up (Zenoh's own threads do the I/O).
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    let args = Args::parse();
    // `main`'s own future runs on the main thread; the work runs on the worker.
    tokio::spawn(run(args)).await?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.end.config(Role::Dr)?;
    let vehicle = args.end.vehicle.to_string();
    let mut link = Link::open(config).await?;
    info!(%vehicle, "DR running");
    if !(args.outage_kbps.is_finite() && args.outage_kbps > 0.0) {
        anyhow::bail!(
            "--outage-kbps must be a positive number, got {}",
            args.outage_kbps
        );
    }
    let mut predictor = BandwidthPredictor::new(load_map(&args.coverage_map)?);
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    let mut applied = Applied {
        horizon_s: 5.0,
        ..Applied::default()
    };
    let shutdown = cli::shutdown_signal();
    tokio::pin!(shutdown);
    let mut status = tokio::time::interval(Duration::from_millis(args.status_ms.max(1)));
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = sample.tick() => {
                // The PE's uplink as the PE itself estimates it (its reports), or nothing
                // when it is gone: both teach the map where coverage is.
                let s = link.stats().await?;
                if !s.peer_alive {
                    if let Some(at) = applied.state_at {
                        // The PE is away: keep its twin moving with it.
                        let dt = at.elapsed().as_secs_f64();
                        let (x, y) = applied.position;
                        let (vx, vy) = applied.velocity;
                        applied.predicted_position = Some((x + vx * dt, y + vy * dt));
                        applied.predictions_while_away += 1;
                    }
                }
                if applied.states > 0 {
                    let bps = if s.peer_alive { s.peer_received.sender_bottleneck_bps as f64 } else { 0.0 };
                    if bps > 0.0 || !s.peer_alive {
                        predictor.observe(BandwidthSample {
                            t_s: started.elapsed().as_secs_f64(),
                            x: applied.position.0,
                            y: applied.position.1,
                            bps,
                        });
                        applied.samples += 1;
                    }
                    let (vx, vy) = applied.velocity;
                    let outage = predictor.predicted_outage(vx, vy, 60.0, args.outage_kbps * 1000.0, 0.5);
                    applied.horizon_s = horizon_to_cover(outage, 5.0, 2.0, 60.0);
                    applied.longest_horizon_s = applied.longest_horizon_s.max(applied.horizon_s);
                }
            }
            _ = status.tick(), if args.status_ms > 0 => {
                let s = link.stats().await?;
                println!("{}", json!({"t_s": started.elapsed().as_secs_f64(), "peer_alive": s.peer_alive,
                    "summaries": applied.summaries, "recommendations": applied.recommendations,
                    "rtt_us": s.rtt.smoothed_us, "rejected": s.rejected_total(),
                    "pe_uplink_bps": s.peer_received.sender_bottleneck_bps, "horizon_s": applied.horizon_s,
                    "predicted_position": applied.predicted_position}));
            }
            event = link.recv() => {
                let Some(event) = event else { break };
                match event {
                    LinkEvent::Message(d) => handle(&link, &vehicle, &mut applied, &d.message)?,
                    LinkEvent::PeerUp { .. } => info!("PE up"),
                    LinkEvent::PeerDown { reason } => info!(reason, "PE down; the twin keeps predicting"),
                }
            }
        }
    }
    let stats = link.stats().await?;
    link.close().await;
    if let Some(path) = &args.coverage_map {
        std::fs::write(path, serde_json::to_vec(predictor.map())?)
            .map_err(|e| anyhow::anyhow!("saving the coverage map to {}: {e}", path.display()))?;
    }
    let report = json!({
        "role": "dr",
        "summaries": applied.summaries,
        "states": applied.states,
        "recommendations": applied.recommendations,
        "bad_messages": applied.bad_messages,
        "out_of_order": applied.out_of_order,
        "max_state_age_us": applied.max_state_age_us,
        "bandwidth_samples": applied.samples,
        "longest_horizon_s": applied.longest_horizon_s,
        "predictions_while_away": applied.predictions_while_away,
        "predicted_position": applied.predicted_position,
        "link": stats,
    });
    if let Some(path) = args.report {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

fn handle(
    link: &Link,
    vehicle: &str,
    applied: &mut Applied,
    message: &twinlink_link::Message,
) -> anyhow::Result<()> {
    match message.type_name.as_str() {
        "twin_msgs/msg/PerceptionSummary" => match from_link::<PerceptionSummary>(message) {
            Ok(summary) => {
                let stamp = minimal::time_us(&summary.header.stamp);
                if stamp < applied.last_summary_stamp_us {
                    applied.out_of_order += 1;
                }
                applied.last_summary_stamp_us = stamp;
                applied.summaries += 1;
                let now = now_us();
                let advice = minimal::recommend(
                    vehicle,
                    applied.summaries,
                    applied.own_speed,
                    &summary,
                    now,
                    applied.horizon_s,
                );
                link.send(to_link(
                    minimal::STREAM_RECOMMENDATION,
                    Priority::OwnState,
                    &advice,
                    now,
                ))?;
                applied.recommendations += 1;
            }
            Err(e) => {
                applied.bad_messages += 1;
                warn!(error = %e, "refused a message");
            }
        },
        "twin_msgs/msg/VehicleState" => match from_link::<VehicleState>(message) {
            Ok(state) => {
                applied.states += 1;
                applied.own_speed = state.twist.linear.x;
                // twist is in base_link; rotate it into the map frame by the yaw.
                let q = &state.pose.orientation;
                let yaw =
                    (2.0 * (q.w * q.z + q.x * q.y)).atan2(1.0 - 2.0 * (q.y * q.y + q.z * q.z));
                let (vx, vy) = (state.twist.linear.x, state.twist.linear.y);
                applied.velocity = (
                    vx * yaw.cos() - vy * yaw.sin(),
                    vx * yaw.sin() + vy * yaw.cos(),
                );
                applied.position = (state.pose.position.x, state.pose.position.y);
                applied.state_at = Some(Instant::now());
                applied.newest_state_created_us =
                    applied.newest_state_created_us.max(message.created_us);
                let age = now_us().saturating_sub(message.created_us);
                applied.max_state_age_us = applied.max_state_age_us.max(age);
            }
            Err(e) => {
                applied.bad_messages += 1;
                warn!(error = %e, "refused a message");
            }
        },
        other => {
            applied.bad_messages += 1;
            warn!(type_name = other, stream = %message.stream, "no handler for this type; counted and skipped");
        }
    }
    Ok(())
}
