//! The minimal DR: answers every perception summary from its PE with a recommendation and
//! reports what it applied. `twinlink-dr --help` lists the options.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tracing::{info, warn};
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
}

#[derive(Default)]
struct Applied {
    summaries: u64,
    states: u64,
    recommendations: u64,
    bad_messages: u64,
    out_of_order: u64,
    last_summary_stamp_us: u64,
    own_speed: f64,
    newest_state_created_us: u64,
    max_state_age_us: u64,
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
    let mut applied = Applied::default();
    let shutdown = cli::shutdown_signal();
    tokio::pin!(shutdown);
    let mut status = tokio::time::interval(Duration::from_millis(args.status_ms.max(1)));
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = status.tick(), if args.status_ms > 0 => {
                let s = link.stats().await?;
                println!("{}", json!({"t_s": started.elapsed().as_secs_f64(), "peer_alive": s.peer_alive,
                    "summaries": applied.summaries, "recommendations": applied.recommendations,
                    "rtt_us": s.rtt.smoothed_us, "rejected": s.rejected_total()}));
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
    let report = json!({
        "role": "dr",
        "summaries": applied.summaries,
        "states": applied.states,
        "recommendations": applied.recommendations,
        "bad_messages": applied.bad_messages,
        "out_of_order": applied.out_of_order,
        "max_state_age_us": applied.max_state_age_us,
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
