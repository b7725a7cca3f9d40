//! `twin-dr-host`: hosts one digital representative per provisioned vehicle.
//! `twin-dr-host --help` lists the options; the package README shows a session.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use twin_dr_host::audit::AuditConfig;
use twin_dr_host::host::{self, HostConfig};
use twin_dr_host::model::SpeedModel;
use twin_dr_host::planner::Planner;
use twin_dr_host::relay::ShareConfig;
use twin_dr_host::road::{Road, RoadSpec};
use twin_dr_host::tracker::TrackerConfig;
use twin_dr_host::twin::TwinSettings;
use twinlink_link::cli::{self, ZenohArgs};

#[derive(Debug, Parser)]
#[command(about = "Hosts one digital representative (twin) per provisioned vehicle")]
struct Args {
    /// Directory of `<vehicle>.dr.key` files (from `twinctl provision <vehicle> --out DIR`);
    /// rescanned while running.
    #[arg(long)]
    keys: PathBuf,
    /// Directory of durable state (the host's own database, and the audit logs unless
    /// --audit-dir says otherwise), created if missing.
    #[arg(long, default_value = "dr-data")]
    data_dir: PathBuf,
    /// Directory of the twins' audit logs (default: the data directory). Hosts of one
    /// fleet share it (a network file system), so that a twin's history goes on where the
    /// twin moves.
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    /// Join a fleet of hosts: the PostgreSQL database (URL, e.g.
    /// postgresql://twin@127.0.0.1:5432/twin) holding every twin's durable state. The
    /// host then serves the provisioned vehicles of the shards it owns, and takes over
    /// those of a host that fails. Without it, the host keeps its own state and serves
    /// every provisioned vehicle. Also from TWINLINK_FLEET_DB (keeps a password out of
    /// the process list).
    #[arg(long, env = "TWINLINK_FLEET_DB", hide_env_values = true)]
    fleet_db: Option<String>,
    /// This host's name in the fleet (unique among its hosts; default: the machine's host
    /// name).
    #[arg(long, requires = "fleet_db")]
    host_name: Option<String>,
    /// Shards of the fleet (the same on every host of a fleet).
    #[arg(long, default_value_t = twin_dr_host::fleet::DEFAULT_SHARDS, requires = "fleet_db")]
    shards: u32,
    /// Route of the twins' vehicles (JSON road specification, see the package README);
    /// default: a straight 20 km road along x with 3 lanes and a 120 km/h limit.
    #[arg(long)]
    road: Option<PathBuf>,
    /// Serve /metrics and /twins here (e.g. 127.0.0.1:9464); "off" to serve nothing.
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin: String,
    /// Operators' tokens for the admin endpoint, one `<role> <name> <token>` per line
    /// (roles: viewer, operator). Without it reads are open and changes refused.
    #[arg(long)]
    admin_tokens: Option<PathBuf>,
    /// A twin whose vehicle is gone this long goes dormant [s].
    #[arg(long, default_value_t = 30.0)]
    idle_after_s: f64,
    /// How often the keys directory is rescanned [ms].
    #[arg(long, default_value_t = 2000)]
    rescan_ms: u64,
    /// Messages kept in the host's durable journal (the newest ones, all twins together).
    #[arg(long, default_value_t = twin_dr_host::store::DEFAULT_RETENTION)]
    retention: u64,
    /// Page cache of the durable store [MiB].
    #[arg(long, default_value_t = 64)]
    store_cache_mb: usize,
    /// Longest silence of a twin's link before it sends a heartbeat [ms] (the vehicles'
    /// peer timeout must be longer: 600 ms by default).
    #[arg(long, default_value_t = 250)]
    link_heartbeat_ms: u64,
    /// Audit checkpoint (signature) every this many records.
    #[arg(long, default_value_t = 256)]
    checkpoint_every: u64,
    /// ONNX speed advisor (contract speed_advisor/1, e.g.
    /// models/speed_advisor/speed_advisor.onnx) for approaching congestion known from
    /// regional data; checked at load. Without it the planner is the IDM/MOBIL baseline.
    #[arg(long)]
    speed_model: Option<PathBuf>,
    /// Inter-twin sharing: this host's pseudonym issuer file (from `twinctl fleet
    /// certify-host <host> --authority F --out DIR`). With it the twins disclose what their
    /// vehicles permit and take other twins' disclosures along the route; needs
    /// `--trust-anchor` of the host's own fleet.
    #[arg(long, requires = "trust_anchor")]
    issuer_key: Option<PathBuf>,
    /// A fleet authority whose twins' disclosures are believed (`<fleet>.authority.pub`
    /// from `twinctl fleet init`); repeat for several fleets. The host's own fleet must be
    /// one of them.
    #[arg(long, requires = "issuer_key")]
    trust_anchor: Vec<PathBuf>,
    /// WGS84 origin of the map frame, LAT,LON[,ALT]: with it every hazard a twin discloses
    /// to any twin also goes out as a standard DENM on twinlink/v1/cits/denm-out/<tile>.
    #[arg(long)]
    cits_origin: Option<String>,
    /// The regional service's aggregation window [s] (its `--window-s`): each active twin
    /// whose vehicle lets traffic data go to its fleet contributes a census sample every
    /// second under a per-window token; 0: no census.
    #[arg(long, default_value_t = 30.0)]
    census_window_s: f64,
    /// Trust-zone deployment: join a second, outside Zenoh network in this mode (peer or
    /// client). Other twins' disclosures and queries, the regional service, census and
    /// DENMs then go over it, and the first session (--mode, --listen, --connect) carries
    /// only the private links to the vehicles. Needs --outside-connect or
    /// --outside-listen.
    #[arg(long, value_parser = ["peer", "client"])]
    outside_mode: Option<String>,
    /// Outside endpoint to connect to (repeatable; see --outside-mode).
    #[arg(long, requires = "outside_mode")]
    outside_connect: Vec<String>,
    /// Outside endpoint to listen on (repeatable; see --outside-mode).
    #[arg(long, requires = "outside_mode")]
    outside_listen: Vec<String>,
    /// Outside inputs (disclosures, queries, regional tiles) allowed per second per key
    /// expression, each kind on its own; the excess is dropped and counted as
    /// `rate_limited`.
    #[arg(long, default_value_t = twin_dr_host::gate::DEFAULT_RATE_HZ)]
    outside_rate_hz: u32,
    /// Outside inputs a key may send at once above its rate.
    #[arg(long, default_value_t = twin_dr_host::gate::DEFAULT_BURST)]
    outside_burst: u32,
    /// Outside inputs per second of one kind, all keys together (so that inventing keys
    /// does not multiply the allowance).
    #[arg(long, default_value_t = twin_dr_host::gate::DEFAULT_TOTAL_HZ)]
    outside_total_hz: u32,
    /// Resilience testing only: a message on this stream makes its twin's task panic.
    #[arg(long, hide = true)]
    chaos_panic_on_stream: Option<String>,
    #[command(flatten)]
    zenoh: ZenohArgs,
}

fn road(path: &Option<PathBuf>) -> anyhow::Result<Road> {
    match path {
        None => Ok(Road::straight(20_000.0, 3, 120.0 / 3.6)?),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("--road {}: {e}", p.display()))?;
            let spec: RoadSpec = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--road {}: {e}", p.display()))?;
            Road::new(spec).map_err(|e| anyhow::anyhow!("--road {}: {e}", p.display()))
        }
    }
}

fn planner(model: &Option<PathBuf>) -> anyhow::Result<Planner> {
    let planner = Planner::default();
    match model {
        None => Ok(planner),
        Some(p) => {
            let model = SpeedModel::load(p).map_err(|e| anyhow::anyhow!("--speed-model: {e}"))?;
            planner
                .with_speed_model(Arc::new(model))
                .map_err(|e| anyhow::anyhow!("--speed-model {}: {e}", p.display()))
        }
    }
}

fn config(args: &Args) -> anyhow::Result<HostConfig> {
    if !(args.idle_after_s.is_finite() && args.idle_after_s > 0.0) {
        anyhow::bail!(
            "--idle-after-s must be a positive number of seconds, got {}",
            args.idle_after_s
        );
    }
    if args.rescan_ms == 0 {
        anyhow::bail!("--rescan-ms must be positive");
    }
    if args.checkpoint_every == 0 {
        anyhow::bail!("--checkpoint-every must be at least 1");
    }
    let (lo, hi) = (
        twinlink_link::link::MIN_HEARTBEAT.as_millis() as u64,
        twinlink_link::link::MAX_HEARTBEAT.as_millis() as u64,
    );
    if !(lo..=hi).contains(&args.link_heartbeat_ms) {
        anyhow::bail!(
            "--link-heartbeat-ms must be within {lo}..={hi} (below the vehicles' 600 ms peer timeout), got {}",
            args.link_heartbeat_ms
        );
    }
    if !args.keys.is_dir() {
        anyhow::bail!(
            "--keys {}: not a directory (create it with `twinctl provision <vehicle> --out {}`)",
            args.keys.display(),
            args.keys.display()
        );
    }
    let admin = match args.admin.as_str() {
        "off" => None,
        a => Some(a.parse::<SocketAddr>().map_err(|e| {
            anyhow::anyhow!("--admin {a:?}: {e} (an address like 127.0.0.1:9464, or off)")
        })?),
    };
    let fleet = match &args.fleet_db {
        None => None,
        Some(url) => {
            if !(1..=4096).contains(&args.shards) {
                anyhow::bail!("--shards must be within 1..=4096, got {}", args.shards);
            }
            let host_name = match &args.host_name {
                Some(n) => n.clone(),
                None => std::fs::read_to_string("/etc/hostname")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
            };
            if host_name.is_empty()
                || host_name.len() > 64
                || !host_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                anyhow::bail!(
                    "--host-name {host_name:?}: give 1 to 64 characters of A-Z a-z 0-9 - _ ."
                );
            }
            Some(twin_dr_host::fleet::FleetConfig {
                url: url.clone(),
                host_name,
                admin: match admin {
                    Some(a) => a.to_string(),
                    None => String::new(),
                },
                shards: args.shards,
                retention: args.retention.max(1),
            })
        }
    };
    Ok(HostConfig {
        keys_dir: args.keys.clone(),
        data_dir: args.data_dir.clone(),
        audit_dir: args.audit_dir.clone().unwrap_or_else(|| args.data_dir.clone()),
        fleet,
        zenoh: args.zenoh.settings()?,
        settings: TwinSettings {
            road: Arc::new(road(&args.road)?),
            tracker: TrackerConfig::default(),
            planner: planner(&args.speed_model)?,
        },
        idle_after: Duration::from_secs_f64(args.idle_after_s),
        rescan: Duration::from_millis(args.rescan_ms),
        min_horizon: 5.0,
        retention: args.retention.max(1),
        store_cache_bytes: args.store_cache_mb.max(1) << 20,
        link_heartbeat: Duration::from_millis(args.link_heartbeat_ms),
        audit: AuditConfig {
            checkpoint_every: args.checkpoint_every,
            // Twins run on the async workers: their checkpoints' fsyncs go to blocking
            // threads (the records reach the operating system before any acknowledgement).
            sync_at_checkpoint: false,
        },
        admin,
        admin_tokens: match &args.admin_tokens {
            None => None,
            Some(path) => Some(Arc::new(
                twin_dr_host::admin::Tokens::load(path)
                    .map_err(|e| anyhow::anyhow!("--admin-tokens {e}"))?,
            )),
        },
        chaos_panic_stream: args.chaos_panic_on_stream.clone(),
        cits_origin: match &args.cits_origin {
            None => None,
            Some(text) => Some(
                twinlink_cits::GeoOrigin::parse(text)
                    .map_err(|e| anyhow::anyhow!("--cits-origin {e}"))?,
            ),
        },
        census_window: match args.census_window_s {
            0.0 => None,
            w if (0.5..=3600.0).contains(&w) => Some(Duration::from_millis((w * 1000.0).round() as u64)),
            w => anyhow::bail!("--census-window-s must be 0 (off) or 0.5 to 3600 s like the regional service's window, got {w}"),
        },
        outside: match &args.outside_mode {
            None => None,
            Some(mode) => {
                if args.outside_connect.is_empty() && args.outside_listen.is_empty() {
                    anyhow::bail!("--outside-mode needs --outside-connect or --outside-listen (no multicast scouting is used)");
                }
                let zenoh = twinlink_link::ZenohSettings {
                    mode: mode.clone(),
                    listen: args.outside_listen.clone(),
                    connect: args.outside_connect.clone(),
                };
                if zenoh.listen.iter().any(|e| args.zenoh.listen.contains(e)) {
                    anyhow::bail!("--outside-listen and --listen name the same endpoint: the private links would be reachable from outside");
                }
                Some(twin_dr_host::gate::OutsideSettings { zenoh })
            }
        },
        gate: {
            let gate = twin_dr_host::gate::GateConfig {
                rate_hz: args.outside_rate_hz,
                burst: args.outside_burst,
                total_hz: args.outside_total_hz,
            };
            gate.check().map_err(|e| {
                anyhow::anyhow!("--outside-rate-hz/--outside-burst/--outside-total-hz: {e}")
            })?;
            gate
        },
        share: match &args.issuer_key {
            None => None,
            Some(issuer) => Some(
                ShareConfig::load(issuer, &args.trust_anchor)
                    .map_err(|e| anyhow::anyhow!("--issuer-key/--trust-anchor: {e}"))?,
            ),
        },
    })
}

/// Thousands of twins allocate and free small buffers per message from several threads;
/// mimalloc's thread-local pages serve that with less time in the allocator than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    let args = Args::parse();
    let config = config(&args)?;
    host::run(config, cli::shutdown_signal(), None).await
}
