//! Drives a PE through varying coverage over a real link and scores the DR's bandwidth
//! prediction against what the link then measures (see `twinlink_link::scenario`).

use clap::Parser;
use twinlink_link::scenario::{coverage_drive, CoverageDriveConfig};

#[derive(Debug, Parser)]
#[command(about = "Bandwidth prediction against the link's own measurements")]
struct Args {
    /// Laps (the first teaches the coverage map).
    #[arg(long, default_value_t = 2)]
    laps: usize,
    /// Prediction distance [s].
    #[arg(long, default_value_t = 2.0)]
    ahead_s: f64,
    /// Print the samples too.
    #[arg(long)]
    samples: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.laps >= 2, "--laps must be at least 2");
    anyhow::ensure!(
        args.ahead_s.is_finite() && args.ahead_s > 0.0,
        "--ahead-s must be positive"
    );
    let config = CoverageDriveConfig {
        laps: args.laps,
        ahead_s: args.ahead_s,
        ..CoverageDriveConfig::default()
    };
    let mut report = tokio::spawn(coverage_drive(config)).await??;
    if !args.samples {
        report.samples.clear();
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
