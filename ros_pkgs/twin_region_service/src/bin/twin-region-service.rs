//! `twin-region-service`: the regional cloud service (census in, k-anonymous regional
//! traffic out). `twin-region-service --help` lists the options; the package README shows
//! a session.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use twin_region_service::aggregate::AggregatorConfig;
use twin_region_service::service::{self, ServiceConfig};
use twinlink_link::cli::{self, ZenohArgs};

#[derive(Debug, Parser)]
#[command(
    name = "twin-region-service",
    about = "Aggregates the twins' census into k-anonymous regional traffic per tile and serves it over Zenoh"
)]
struct Args {
    /// Distinct contributors a tile needs in a window to be published (at least 2; DR
    /// hosts refuse tiles with a k below 10).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    k: u32,
    /// Length of an aggregation window [s], 0.5 to 3600, whole milliseconds; windows are
    /// aligned to the Unix epoch.
    #[arg(long, default_value_t = 30.0, allow_negative_numbers = true)]
    window_s: f64,
    /// Length of a lane stretch along a segment [m].
    #[arg(long, default_value_t = 500.0, allow_negative_numbers = true)]
    stretch_m: f64,
    /// Distinct contributors a lane stretch needs to be published (at least 2).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    min_stretch_contributors: u32,
    /// Tolerance for clock differences and transit [s]: reports are accepted this long
    /// after their window ended, and windows close this late. Default: a tenth of the
    /// window, at most 1 s.
    #[arg(long, allow_negative_numbers = true)]
    grace_s: Option<f64>,
    /// Share of the vehicles on the road that contribute, in (0, 1]; scales density and
    /// flow (1: they count contributing vehicles only).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    penetration: f64,
    /// Lifetime of an incident reported without expiry, from its last report [s].
    /// Default: three windows.
    #[arg(long, allow_negative_numbers = true)]
    incident_ttl_s: Option<f64>,
    /// Most samples (distinct contributors over all tiles) held per window.
    #[arg(long, default_value_t = 1_000_000)]
    max_samples: usize,
    /// Most incidents held per tile (census and outside ones each).
    #[arg(long, default_value_t = 256)]
    max_incidents_per_tile: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9465); "off" to
    /// serve nothing.
    #[arg(long, default_value = "127.0.0.1:9465")]
    metrics: String,
    /// WGS84 origin of the map frame, LAT,LON[,ALT]: with it the service takes road-side
    /// units' DENMs (UPER) on twinlink/v1/cits/denm as incidents of their tiles.
    #[arg(long)]
    geo_origin: Option<String>,
    #[command(flatten)]
    zenoh: ZenohArgs,
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("--{flag} {value}: must be a non-negative number of seconds"))
}

fn config(args: &Args) -> anyhow::Result<ServiceConfig> {
    let mut aggregation = AggregatorConfig::for_window(seconds("window-s", args.window_s)?);
    aggregation.k = args.k;
    aggregation.stretch_m = args.stretch_m;
    aggregation.min_stretch_contributors = args.min_stretch_contributors;
    aggregation.penetration = args.penetration;
    aggregation.max_samples_per_window = args.max_samples;
    aggregation.max_incidents_per_tile = args.max_incidents_per_tile;
    if let Some(g) = args.grace_s {
        aggregation.grace = seconds("grace-s", g)?;
    }
    if let Some(t) = args.incident_ttl_s {
        aggregation.incident_ttl = seconds("incident-ttl-s", t)?;
    }
    aggregation.validate()?;
    let metrics = match args.metrics.as_str() {
        "off" => None,
        a => Some(a.parse::<SocketAddr>().map_err(|e| {
            anyhow::anyhow!("--metrics {a:?}: {e} (an address like 127.0.0.1:9465, or off)")
        })?),
    };
    let denm_origin = match &args.geo_origin {
        None => None,
        Some(text) => Some(
            twinlink_cits::GeoOrigin::parse(text)
                .map_err(|e| anyhow::anyhow!("--geo-origin {e}"))?,
        ),
    };
    Ok(ServiceConfig {
        zenoh: args.zenoh.settings()?,
        aggregation,
        metrics,
        denm_origin,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    let args = Args::parse();
    let config = config(&args)?;
    // No outside incident source is wired into the binary yet: the feed starts closed.
    let (_, incidents) = mpsc::channel(1);
    service::run(config, incidents, cli::shutdown_signal(), None).await
}
