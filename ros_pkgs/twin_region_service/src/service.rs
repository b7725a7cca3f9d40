//! The service on a Zenoh session: census in, regional tiles out, by name.
//!
//! | key | direction | what |
//! |---|---|---|
//! | `twinlink/v1/census/*` | subscribed | twins' `CensusReport`s |
//! | `twinlink/v1/region/<tile>/traffic` | put at each window's close | `RegionalTraffic` of a tile with at least k contributors |
//! | `twinlink/v1/region/*/traffic` | queryable | the newest traffic tile of each tile the query names |
//! | `twinlink/v1/region/<tile>/hazards` | put at each window's close | incidents from outside the census (no k) |
//! | `twinlink/v1/region/*/hazards` | queryable | the newest hazards tile of each tile the query names |
//!
//! One task owns the [`Aggregator`]: it takes census samples and outside incidents as they
//! arrive, closes windows when their grace is over and publishes what they gave. Queries
//! are answered from the newest tile published per key, as long as it is at most three
//! windows old (as long as a DR keeps regional data); older ones are forgotten.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use twinlink_link::keys::{self, RegionTile};
use twinlink_link::ZenohSettings;
use twinlink_msgs::twin_msgs::msg::{Incident, RegionalTraffic};
use zenoh::key_expr::OwnedKeyExpr;
use zenoh::query::Query;
use zenoh::sample::SampleKind;

use crate::aggregate::{Aggregator, AggregatorConfig, IncidentSource, TileOutcome, WindowReport};
use crate::census::{now_us, Micros};
use crate::http;
use crate::metrics::RegionMetrics;
use crate::refusal::LogLimiter;

/// Category of the k-anonymous traffic tiles.
pub const TRAFFIC: &str = "traffic";
/// Category of the hazards tiles (incidents from outside the census).
pub const HAZARDS: &str = "hazards";
/// Published tiles are served to queries for this many windows.
pub const SERVE_WINDOWS: u64 = 3;

/// Everything the service needs to run.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// How to join Zenoh.
    pub zenoh: ZenohSettings,
    /// The aggregation's parameters.
    pub aggregation: AggregatorConfig,
    /// Where to serve `/metrics`; `None` serves nothing.
    pub metrics: Option<SocketAddr>,
    /// The map frame's WGS84 origin: with it the service takes road-side units' DENMs on
    /// `twinlink/v1/cits/denm` ([`crate::denm`]); `None`: no DENM input.
    pub denm_origin: Option<twinlink_cits::GeoOrigin>,
}

/// An incident from outside the census (e.g. a road-side unit's DENM) for one tile.
#[derive(Debug, Clone)]
pub struct IncidentInput {
    /// The tile it lies in.
    pub tile: RegionTile,
    /// The incident, in the map frame.
    pub incident: Incident,
    /// Where it came from.
    pub source: IncidentSource,
}

/// What [`run`] reports once it serves.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The bound metrics address, if any.
    pub metrics: Option<SocketAddr>,
}

/// The newest tile published on a key.
struct Newest {
    published_us: Micros,
    payload: Vec<u8>,
}

/// Runs the service until `shutdown` resolves. Outside incidents arrive on `incidents`
/// (the channel may be closed from the start); `ready` learns the metrics address once
/// everything is declared.
pub async fn run(
    config: ServiceConfig,
    mut incidents: mpsc::Receiver<IncidentInput>,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<oneshot::Sender<Ready>>,
) -> anyhow::Result<()> {
    let mut agg = Aggregator::new(config.aggregation.clone(), now_us())?;
    let metrics = RegionMetrics::new();
    let session = zenoh::open(config.zenoh.to_config()?)
        .await
        .map_err(|e| anyhow::anyhow!("opening the zenoh session: {e}"))?;
    let z = |what: &str, e: zenoh::Error| anyhow::anyhow!("zenoh {what}: {e}");
    let census = session
        .declare_subscriber(keys::any_census())
        .await
        .map_err(|e| z("census subscriber", e))?;
    let traffic_queries = session
        .declare_queryable(keys::any_region(TRAFFIC)?)
        .await
        .map_err(|e| z("traffic queryable", e))?;
    let hazard_queries = session
        .declare_queryable(keys::any_region(HAZARDS)?)
        .await
        .map_err(|e| z("hazards queryable", e))?;
    let denm = match config.denm_origin {
        Some(_) => Some(
            session
                .declare_subscriber(keys::cits_denm())
                .await
                .map_err(|e| z("DENM subscriber", e))?,
        ),
        None => None,
    };
    let grid = twinlink_share::TileGrid::default();
    let metrics_addr = match config.metrics {
        Some(addr) => Some(
            http::serve(addr, metrics.clone())
                .await
                .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?,
        ),
        None => None,
    };
    let c = agg.config();
    info!(
        k = c.k,
        window_s = c.window.as_secs_f64(),
        stretch_m = c.stretch_m,
        min_stretch_contributors = c.min_stretch_contributors,
        metrics = ?metrics_addr,
        "regional service running"
    );
    if let Some(ready) = ready {
        let _ = ready.send(Ready {
            metrics: metrics_addr,
        });
    }

    let mut out = Publisher {
        session: session.clone(),
        metrics: metrics.clone(),
        newest: HashMap::new(),
        serve_us: SERVE_WINDOWS * agg.windows().length_us(),
    };
    let mut limiter = LogLimiter::new(Duration::from_secs(1));
    let mut feed_open = true;
    tokio::pin!(shutdown);
    loop {
        if now_us() >= agg.next_close_us() {
            for report in agg.close_due(now_us()) {
                out.publish(report).await;
            }
        }
        let wait = agg.next_close_us().saturating_sub(now_us()).min(1_000_000);
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_micros(wait)) => {}
            sample = census.recv_async() => {
                let Ok(sample) = sample else { break };
                if sample.kind() != SampleKind::Put {
                    continue;
                }
                let key = sample.key_expr().as_str();
                let payload = sample.payload().to_bytes();
                match agg.contribute_encoded(key, &payload, now_us()) {
                    Ok(_) => {
                        metrics.accepted.inc();
                    }
                    Err(refusal) => {
                        metrics.refuse(refusal.reason);
                        if let Some(held_back) = limiter.admit(refusal.reason.as_str(), Instant::now()) {
                            warn!(reason = %refusal.reason, key, detail = %refusal.detail, held_back,
                                "census report refused");
                        }
                    }
                }
            }
            sample = async { denm.as_ref().expect("guarded").recv_async().await }, if denm.is_some() => {
                let Ok(sample) = sample else { break };
                let origin = config.denm_origin.expect("a DENM subscriber has its origin");
                let input = match crate::denm::incident_from_denm(&sample.payload().to_bytes(), &origin, &grid) {
                    Ok(input) => input,
                    Err(refusal) => {
                        metrics.incidents_refused
                            .get_or_create(&vec![("reason", refusal.as_str().to_string())])
                            .inc();
                        if let Some(held_back) = limiter.admit(refusal.as_str(), Instant::now()) {
                            warn!(reason = refusal.as_str(), held_back, "{refusal}");
                        }
                        continue;
                    }
                };
                add_outside_incident(&mut agg, &metrics, &mut limiter, input);
            }
            input = incidents.recv(), if feed_open => {
                let Some(input) = input else {
                    feed_open = false;
                    continue;
                };
                add_outside_incident(&mut agg, &metrics, &mut limiter, input);
            }
            query = traffic_queries.recv_async() => {
                let Ok(query) = query else { break };
                out.answer(&query).await;
            }
            query = hazard_queries.recv_async() => {
                let Ok(query) = query else { break };
                out.answer(&query).await;
            }
        }
    }
    info!("regional service stopping");
    drop((census, traffic_queries, hazard_queries, denm));
    session
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("closing the zenoh session: {e}"))?;
    Ok(())
}

/// Adds an incident from outside the census (a DENM, the incident feed) to its tile,
/// counting it as added by source or refused by reason.
fn add_outside_incident(
    agg: &mut Aggregator,
    metrics: &RegionMetrics,
    limiter: &mut LogLimiter,
    input: IncidentInput,
) {
    let source = input.source.as_str();
    match agg.add_incident(&input.tile, input.incident, input.source, now_us()) {
        Ok(_) => {
            metrics
                .incidents_added
                .get_or_create(&vec![("source", source.to_string())])
                .inc();
        }
        Err(refusal) => {
            metrics
                .incidents_refused
                .get_or_create(&vec![("reason", refusal.reason.as_str().to_string())])
                .inc();
            if let Some(held_back) = limiter.admit("incident", Instant::now()) {
                warn!(source, tile = input.tile.as_str(), reason = %refusal.reason,
                    detail = %refusal.detail, held_back, "outside incident refused");
            }
        }
    }
}

/// Puts closed windows' tiles and keeps the newest per key for queries.
struct Publisher {
    session: zenoh::Session,
    metrics: Arc<RegionMetrics>,
    newest: HashMap<OwnedKeyExpr, Newest>,
    serve_us: Micros,
}

impl Publisher {
    async fn publish(&mut self, report: WindowReport) {
        let now = now_us();
        self.newest
            .retain(|_, n| now.saturating_sub(n.published_us) <= self.serve_us);
        self.metrics.windows_closed.inc();
        let (mut published, mut withheld) = (0u32, 0u32);
        for outcome in report.tiles {
            match outcome {
                TileOutcome::Published(tile) => {
                    self.metrics.stretches("sparse", tile.sparse_stretches);
                    self.metrics
                        .stretches("implausible", tile.implausible_stretches);
                    if self.put(TRAFFIC, &tile.traffic, now).await {
                        self.metrics.tiles_published.inc();
                        published += 1;
                    }
                }
                TileOutcome::Withheld {
                    tile,
                    contributors,
                    k,
                } => {
                    self.metrics.tiles_withheld.inc();
                    withheld += 1;
                    debug!(tile, contributors, k, "tile withheld below k");
                }
            }
        }
        for hazards in &report.hazards {
            if self.put(HAZARDS, hazards, now).await {
                self.metrics.hazard_tiles_published.inc();
            }
        }
        if published + withheld > 0 || !report.hazards.is_empty() {
            info!(
                window_start_us = report.window_start_us,
                published,
                withheld,
                hazards = report.hazards.len(),
                "window closed"
            );
        } else {
            debug!(
                window_start_us = report.window_start_us,
                "window closed empty"
            );
        }
    }

    /// Encodes and puts `tile` under `category`; whether it went out.
    async fn put(&mut self, category: &str, tile: &RegionalTraffic, now: Micros) -> bool {
        let key = RegionTile::new(&tile.tile_id).and_then(|t| keys::region(&t, category));
        let result = match (key, twinlink_msgs::codec::encode(tile)) {
            (Ok(key), Ok(payload)) => match self.session.put(&key, payload.clone()).await {
                Ok(()) => {
                    self.newest.insert(
                        key,
                        Newest {
                            published_us: now,
                            payload,
                        },
                    );
                    Ok(())
                }
                Err(e) => Err(format!("put: {e}")),
            },
            (Err(e), _) => Err(e.to_string()),
            (_, Err(e)) => Err(e.to_string()),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                self.metrics.publish_errors.inc();
                warn!(tile = tile.tile_id, category, error = %e, "tile not published");
                false
            }
        }
    }

    /// Replies with the newest tile of every key the query names.
    async fn answer(&self, query: &Query) {
        let now = now_us();
        for (key, newest) in &self.newest {
            if now.saturating_sub(newest.published_us) > self.serve_us
                || !query.key_expr().intersects(key)
            {
                continue;
            }
            match query.reply(key.clone(), newest.payload.clone()).await {
                Ok(()) => {
                    self.metrics.queries_answered.inc();
                }
                Err(e) => debug!(key = key.as_str(), error = %e, "query reply failed"),
            }
        }
    }
}
