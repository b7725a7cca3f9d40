//! Runs the freshness scenario (see `twinlink_link::scenario`) and prints its report as
//! JSON: `twinlink-freshness --mode adaptive|fixed --seconds 20 --rate-kbps 64`.

use clap::Parser;
use twinlink_link::rate::RateControl;
use twinlink_link::scenario::{freshness, FreshnessConfig};

#[derive(Debug, Parser)]
#[command(about = "Age of the DR's view of its PE over a throttled path")]
struct Args {
    /// adaptive (window rate control + object inclusion), aimd (the GCC-style reference
    /// with object inclusion) or fixed (no adaptation).
    #[arg(long, default_value = "adaptive", value_parser = ["adaptive", "aimd", "fixed"])]
    mode: String,
    /// Length of the run [s].
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Bottleneck rate [kbit/s].
    #[arg(long, default_value_t = 64)]
    rate_kbps: u64,
    /// Print the age samples too.
    #[arg(long)]
    samples: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.seconds.is_finite() && args.seconds >= 2.0) || args.rate_kbps == 0 {
        anyhow::bail!("--seconds must be at least 2 and --rate-kbps positive");
    }
    let mut config = match args.mode.as_str() {
        "fixed" => FreshnessConfig::fixed_64k(args.seconds),
        _ => FreshnessConfig::adaptive_64k(args.seconds),
    };
    if args.mode == "aimd" {
        config.rate_control = RateControl::Aimd;
    }
    config.rate_kbps = args.rate_kbps;
    let mut report = tokio::spawn(freshness(config)).await??;
    if !args.samples {
        report.ages_ms.clear();
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
