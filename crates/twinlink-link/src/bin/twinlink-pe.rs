//! The minimal PE: sends its state and a perception summary of N objects, receives
//! recommendations and checks they arrive exactly once and in order.
//!
//! `--rtt` measures round trips instead: one summary, wait for its recommendation, repeat.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tracing::info;
use twinlink_link::cli::{self, EndArgs};
use twinlink_link::link::now_us;
use twinlink_link::minimal::{self, from_link, to_link};
use twinlink_link::{Link, LinkEvent, Priority, Role};
use twinlink_msgs::twin_msgs::msg::Recommendation;

#[derive(Debug, Parser)]
#[command(about = "Minimal physical entity: streams state and summaries to its twin")]
struct Args {
    #[command(flatten)]
    end: EndArgs,
    /// Objects per summary.
    #[arg(long, default_value_t = 50)]
    objects: usize,
    /// Summaries (and states) per second in streaming mode.
    #[arg(long, default_value_t = 10.0)]
    rate_hz: f64,
    /// Summaries to send (streaming) or round trips to time (--rtt).
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Measure round trips (summary -> recommendation) instead of streaming.
    #[arg(long)]
    rtt: bool,
    /// Untimed round trips before measuring (--rtt).
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Give up waiting for the DR after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    timeout_s: f64,
    /// Write a JSON report here on exit.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Default)]
struct Received {
    last: Option<Recommendation>,
    recommendations: u64,
    last_sequence: u64,
    gaps: u64,
    repeats: u64,
    bad_messages: u64,
}

impl Received {
    /// Takes a recommendation; returns when the DR issued it [us since the epoch].
    fn take(&mut self, message: &twinlink_link::Message) -> Option<u64> {
        match from_link::<Recommendation>(message) {
            Ok(r) => {
                self.recommendations += 1;
                // A DR numbers its recommendations from its own start: the first one this
                // PE sees sets the baseline.
                if self.recommendations > 1 {
                    if r.sequence <= self.last_sequence {
                        self.repeats += 1;
                    } else if r.sequence != self.last_sequence + 1 {
                        self.gaps += 1;
                    }
                }
                self.last_sequence = r.sequence;
                let issued = minimal::time_us(&r.header.stamp);
                self.last = Some(r);
                Some(issued)
            }
            Err(e) => {
                self.bad_messages += 1;
                tracing::warn!(error = %e, "refused a message");
                None
            }
        }
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
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        anyhow::bail!(
            "--timeout-s must be a positive number, got {}",
            args.timeout_s
        );
    }
    if !(args.rate_hz.is_finite() && args.rate_hz > 0.0) {
        anyhow::bail!("--rate-hz must be a positive number, got {}", args.rate_hz);
    }
    let config = args.end.config(Role::Pe)?;
    let vehicle = args.end.vehicle.to_string();
    let mut link = Link::open(config).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout_s);
    link.wait_peer_up(Duration::from_secs_f64(args.timeout_s))
        .await?;
    info!(%vehicle, "DR reachable");
    let mut received = Received::default();
    let started = Instant::now();
    let mut rtts = Vec::new();
    let mut sent = 0u64;
    if args.rtt {
        for round in 0..args.warmup + args.count {
            let now = now_us();
            let t = started.elapsed().as_secs_f64();
            let summary = minimal::perception_summary(args.objects, t, now);
            let begin = Instant::now();
            link.send(to_link(
                minimal::STREAM_OBJECTS,
                Priority::Objects,
                &summary,
                now,
            ))?;
            sent += 1;
            loop {
                match tokio::time::timeout_at(
                    deadline.max(Instant::now() + Duration::from_secs(5)).into(),
                    link.recv(),
                )
                .await
                {
                    Ok(Some(LinkEvent::Message(d))) => {
                        // The answer to this summary, not an earlier recommendation (such as
                        // the latest one a DR hands a PE that just connected).
                        if received
                            .take(&d.message)
                            .is_some_and(|issued| issued >= now)
                        {
                            break;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => anyhow::bail!("the link stopped"),
                    Err(_) => anyhow::bail!("no recommendation for summary {sent}"),
                }
            }
            if round >= args.warmup {
                rtts.push(begin.elapsed().as_micros() as u64);
            }
        }
    } else {
        let period = Duration::from_secs_f64(1.0 / args.rate_hz);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while sent < args.count {
            tokio::select! {
                _ = tick.tick() => {
                    let now = now_us();
                    let t = started.elapsed().as_secs_f64();
                    link.send(to_link(minimal::STREAM_STATE, Priority::OwnState, &minimal::vehicle_state(&vehicle, t, now), now))?;
                    link.send(to_link(minimal::STREAM_OBJECTS, Priority::Objects, &minimal::perception_summary(args.objects, t, now), now))?;
                    sent += 1;
                }
                event = link.recv() => {
                    if let Some(LinkEvent::Message(d)) = event { received.take(&d.message); }
                }
            }
        }
    }
    // Drain: wait until everything sent is acknowledged.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = link.stats().await?;
        if s.sender.in_flight == 0 && s.outbox.queued == 0 {
            break;
        }
        if Instant::now() > drain_deadline {
            anyhow::bail!(
                "{} messages still unacknowledged after 10 s",
                s.sender.in_flight + s.outbox.queued
            );
        }
        while let Some(event) = link.try_recv() {
            if let LinkEvent::Message(d) = event {
                received.take(&d.message);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Take recommendations still on their way.
    let settle = Instant::now() + Duration::from_millis(300);
    while let Ok(Some(event)) = tokio::time::timeout_at(settle.into(), link.recv()).await {
        if let LinkEvent::Message(d) = event {
            received.take(&d.message);
        }
    }
    let stats = link.stats().await?;
    link.close().await;
    let (median, p99, max) = cli::percentiles(&mut rtts);
    let report = json!({
        "role": "pe",
        "summaries_sent": sent,
        "objects": args.objects,
        "recommendations": received.recommendations,
        "last_sequence": received.last_sequence,
        "sequence_gaps": received.gaps,
        "sequence_repeats": received.repeats,
        "bad_messages": received.bad_messages,
        "rtt_samples": rtts.len(),
        "rtt_median_us": median,
        "rtt_p99_us": p99,
        "rtt_max_us": max,
        "last_recommendation": received.last.as_ref().map(|r| json!({
            "target_speed": r.target_speed,
            "reason": r.reason,
            "horizon_s": r.horizon.last().map_or(0.0, |p| p.time_offset),
        })),
        "link": stats,
    });
    println!("{}", serde_json::to_string(&report)?);
    if let Some(path) = args.report {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
