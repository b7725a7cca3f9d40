//! Bandwidth prediction error on the evaluation drive (see
//! `twinlink_link::bandwidth::evaluate_drive`), against persistence ("the future equals the
//! last measurement"), as JSON.

use clap::Parser;
use serde_json::json;
use twinlink_link::bandwidth::evaluate_drive;

#[derive(Debug, Parser)]
#[command(about = "Bandwidth prediction error against persistence")]
struct Args {
    /// Earlier vehicles that teach the coverage map.
    #[arg(long, default_value_t = 5)]
    laps: usize,
    /// Prediction distance [s].
    #[arg(long, default_value_t = 5.0)]
    ahead_s: f64,
    /// Measurement noise (log-normal half-width).
    #[arg(long, default_value_t = 0.3)]
    noise: f64,
    /// Seeds to average over.
    #[arg(long, default_value_t = 10)]
    seeds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.ahead_s.is_finite() && args.ahead_s >= 0.0,
        "--ahead-s must be >= 0"
    );
    anyhow::ensure!(
        args.noise.is_finite() && args.noise >= 0.0,
        "--noise must be >= 0"
    );
    anyhow::ensure!(args.seeds > 0, "--seeds must be positive");
    let (mut ours, mut persistence, mut ours_median, mut persistence_median) = (0.0, 0.0, 0.0, 0.0);
    for seed in 0..args.seeds {
        let (o, p) = evaluate_drive(args.laps, args.ahead_s, args.noise, seed);
        ours += o.mean();
        persistence += p.mean();
        ours_median += o.median();
        persistence_median += p.median();
    }
    let n = args.seeds as f64;
    println!(
        "{}",
        json!({
            "ahead_s": args.ahead_s, "laps": args.laps, "noise": args.noise, "seeds": args.seeds,
            "mean_relative_error": ours / n, "persistence_mean_relative_error": persistence / n,
            "median_relative_error": ours_median / n, "persistence_median_relative_error": persistence_median / n,
        })
    );
    Ok(())
}
