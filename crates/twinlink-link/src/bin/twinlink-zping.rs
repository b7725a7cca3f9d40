//! Raw Zenoh ping-pong, the baseline of the link's round trip: the same payload size as a
//! sealed 50-object summary, the same publisher settings, no link protocol, no crypto.
//!
//! `twinlink-zping --pong --listen tcp/127.0.0.1:7450` in one process,
//! `twinlink-zping --connect tcp/127.0.0.1:7450 --count 3000` in another.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use twinlink_link::cli::{self, ZenohArgs};
use twinlink_link::crypto::sealed_len;
use twinlink_link::minimal;
use zenoh::qos::{CongestionControl, Priority};

#[derive(Debug, Parser)]
#[command(about = "Raw Zenoh ping-pong with the payload size of a sealed perception summary")]
struct Args {
    /// Answer pings instead of sending them.
    #[arg(long)]
    pong: bool,
    /// Objects in the summary whose sealed size the payload takes.
    #[arg(long, default_value_t = 50)]
    objects: usize,
    /// Timed round trips.
    #[arg(long, default_value_t = 3000)]
    count: u64,
    /// Untimed round trips first.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    #[command(flatten)]
    zenoh: ZenohArgs,
}

const PING: &str = "twinlink/v1/bench/ping";
const PONG: &str = "twinlink/v1/bench/pong";

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    let args = Args::parse();
    let z = |e: zenoh::Error| anyhow::anyhow!("zenoh: {e}");
    let session = zenoh::open(args.zenoh.settings()?.to_config()?)
        .await
        .map_err(z)?;
    let (out_key, in_key) = if args.pong {
        (PONG, PING)
    } else {
        (PING, PONG)
    };
    let publisher = session
        .declare_publisher(out_key)
        .congestion_control(CongestionControl::Block)
        .priority(Priority::DataHigh)
        .express(true)
        .await
        .map_err(z)?;
    let subscriber = session.declare_subscriber(in_key).await.map_err(z)?;
    if args.pong {
        let shutdown = cli::shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                sample = subscriber.recv_async() => {
                    let Ok(sample) = sample else { break };
                    publisher.put(sample.payload().clone()).await.map_err(z)?;
                }
            }
        }
        return Ok(());
    }
    let summary = minimal::perception_summary(args.objects, 0.0, 0);
    let cdr = twinlink_msgs::codec::encode(&summary)?;
    let size = sealed_len(cdr.len() + 64);
    let payload = vec![0x5au8; size];
    // Wait for the pong side.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publisher.put(payload.clone()).await.map_err(z)?;
        if tokio::time::timeout(Duration::from_millis(200), subscriber.recv_async())
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no pong within 20 s");
    }
    let mut rtts = Vec::with_capacity(args.count as usize);
    for round in 0..args.warmup + args.count {
        let begin = Instant::now();
        publisher.put(payload.clone()).await.map_err(z)?;
        tokio::time::timeout(Duration::from_secs(5), subscriber.recv_async())
            .await
            .map_err(|_| anyhow::anyhow!("pong {round} lost"))?
            .map_err(|e| anyhow::anyhow!("subscriber: {e}"))?;
        if round >= args.warmup {
            rtts.push(begin.elapsed().as_micros() as u64);
        }
    }
    let (median, p99, max) = cli::percentiles(&mut rtts);
    println!(
        "{}",
        json!({"payload_bytes": size, "rtt_samples": rtts.len(), "rtt_median_us": median, "rtt_p99_us": p99, "rtt_max_us": max})
    );
    session.close().await.map_err(z)?;
    Ok(())
}
