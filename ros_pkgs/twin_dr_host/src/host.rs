//! The DR host: one process, one Zenoh session, one twin per provisioned vehicle.
//!
//! **Provisioning.** Every `<vehicle>.dr.key` in the keys directory (written by
//! `twinctl provision <vehicle> --out DIR`) is a twin to host; the directory is rescanned,
//! so a twin provisioned while the host runs is picked up within a rescan period.
//!
//! **Dormant and active twins.** A twin whose vehicle is not connected is *dormant*: only
//! its state in memory (a few kilobytes), no task, no Zenoh declaration. It still takes
//! regional traffic, and its estimate of the vehicle keeps predicting (it is computed when
//! asked). The host watches every vehicle's liveliness token and every handshake with two
//! wildcard declarations; when a provisioned vehicle appears, its twin becomes *active*:
//! a task of its own with its link end ([`twinlink_link::Link`] on the shared session),
//! its audit log open, fusing, planning and answering. A twin whose vehicle has been gone
//! for `idle_after` closes its link and its log and is dormant again.
//!
//! **Isolation.** Each active twin is its own tokio task; a bad message is refused and
//! counted inside that twin, and a panic ends only that task: the host counts it and
//! rebuilds the twin from its durable state.
//!
//! **Durability.** Links run with durable acknowledgements: every received message is
//! committed by the store's writer ([`crate::store`]) before the vehicle sees it
//! acknowledged, and the link resumes its incarnation and sequence after a restart, so a
//! host killed at any point loses nothing it acknowledged. Every exchange is also recorded
//! in the twin's hash-chained, signed audit log ([`crate::audit`]), written through to the
//! operating system before the acknowledgement.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use twinlink_link::hub::HubEvent;
use twinlink_link::keys::{self, Role, VehicleId};
use twinlink_link::link::{now_us, ResumeState};
use twinlink_link::minimal::{from_link, to_link};
use twinlink_link::{
    KeyMaterial, LinkConfig, LinkEnd, LinkEvent, LinkHub, Priority, ZenohSettings,
};
use twinlink_msgs::twin_msgs::msg::{
    Incident, PerceptionSummary, RegionalTraffic, SharingPolicy, VehicleState,
};
use twinlink_msgs::Message as _;
use twinlink_share::{
    DataName, Rotation, RotationConfig, SignedQuery, TileName, Verified, Verifier,
};

use crate::admin::{self, AdminRequest};
use crate::audit::{AuditConfig, AuditLog, Kind};
use crate::fleet::OwnershipEvent;
use crate::metrics::HostMetrics;
use crate::relay::{route_tiles, Outcome, ShareConfig, ROUTE_MARGIN_M};
use crate::store::{Store, StoredMessage, WriteOp, Writer, WriterHandle};
use crate::twin::{Twin, TwinSettings};

/// Stream of recommendations (DR → PE).
pub const STREAM_RECOMMENDATION: &str = "recommendation";
/// Stream of observations relayed from other twins (DR → PE, `SharedObservation`).
pub const STREAM_RELAYED: &str = "relayed";
/// The shared-data category the twins disclose and take.
pub const SHARE_CATEGORY: &str = "hazards";
/// Regional data category the host subscribes to.
pub const REGION_TRAFFIC: &str = "traffic";

/// Settings of a host.
#[derive(Clone)]
pub struct HostConfig {
    /// Directory of `<vehicle>.dr.key` files.
    pub keys_dir: PathBuf,
    /// Directory of durable state: `host.redb` (without a fleet database).
    pub data_dir: PathBuf,
    /// Directory of the twins' audit logs (one folder per twin). Hosts of one fleet share
    /// it (a network file system), so that a twin's history goes on where it moves.
    pub audit_dir: PathBuf,
    /// The fleet's shared database (`None`: this host keeps its own state and serves every
    /// provisioned vehicle).
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// How the host joins Zenoh.
    pub zenoh: ZenohSettings,
    /// What every twin is built with.
    pub settings: TwinSettings,
    /// A twin whose vehicle is gone this long goes dormant.
    pub idle_after: Duration,
    /// How often the keys directory is rescanned.
    pub rescan: Duration,
    /// Shortest horizon of a recommendation [s].
    pub min_horizon: f64,
    /// Messages kept per twin in the durable inbox.
    pub retention: u64,
    /// Page cache of the durable store [bytes].
    pub store_cache_bytes: usize,
    /// Longest silence of a twin's link before it sends a heartbeat (a twin answers every
    /// summary, so heartbeats only go while its vehicle sends little).
    pub link_heartbeat: Duration,
    /// Audit log settings.
    pub audit: AuditConfig,
    /// Where to serve `/metrics` and `/twins` (None: not served).
    pub admin: Option<SocketAddr>,
    /// Operators' tokens for the admin endpoint (`None`: reads open, changes refused).
    pub admin_tokens: Option<Arc<admin::Tokens>>,
    /// Resilience testing: a message on this stream makes its twin's task panic (the host
    /// must count it, rebuild the twin and keep every other twin running). `None` in
    /// production.
    pub chaos_panic_stream: Option<String>,
    /// Inter-twin sharing: the host's pseudonym issuer and the fleets it trusts. `None`:
    /// its twins neither disclose nor take other twins' disclosures.
    pub share: Option<ShareConfig>,
    /// The map frame's WGS84 origin: with it, every hazard a twin discloses to any twin
    /// also goes out as a standard DENM (UPER) on `twinlink/v1/cits/denm-out/<tile>`, for
    /// C-ITS gateways (`None`: no DENMs).
    pub cits_origin: Option<twinlink_cits::GeoOrigin>,
    /// The regional service's aggregation window: each active twin whose vehicle consents
    /// contributes a census sample every [`CENSUS_PERIOD`] (`None`: no census).
    pub census_window: Option<Duration>,
    /// The trust-zone deployment: a second Zenoh session for everything but the twins'
    /// links (`None`: one session, [`HostConfig::zenoh`], for all).
    pub outside: Option<crate::gate::OutsideSettings>,
    /// Rate limits of the outside inputs (disclosures, queries, regional tiles).
    pub gate: crate::gate::GateConfig,
}

/// Most bytes of other twins' disclosures waiting for verification.
const MAX_RELAY_QUEUED_BYTES: u64 = 16 << 20;

/// How often an active twin contributes its census sample.
pub const CENSUS_PERIOD: Duration = Duration::from_secs(1);

/// At most this many refusals a second are logged per twin; the rest are counted (and
/// always counted in the metrics).
const LOG_BUDGET: u32 = 5;

/// Rate limit of one twin's warnings.
struct LogBudget {
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    fn new() -> Self {
        LogBudget {
            window: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether to log one more line now.
    fn allow(&mut self, vehicle: &str) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                warn!(
                    vehicle,
                    suppressed = self.suppressed,
                    "refusals not logged in the last second (all counted)"
                );
            }
            *self = LogBudget::new();
        }
        if self.logged < LOG_BUDGET {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// What one active twin is told by the host.
enum DrCommand {
    Regional(Arc<RegionalTraffic>),
    Relayed(Arc<Verified>),
    Answer(Arc<QueryToAnswer>),
    /// Work on the twin and its audit log in the twin's own turn (operator requests).
    Run(TwinJob),
    Status(oneshot::Sender<Value>),
    /// The twin's state document (with the host's name in its fleet).
    State(Option<String>, oneshot::Sender<Option<Value>>),
    Shutdown,
}

enum SlotState {
    Dormant(Box<Twin>),
    Active(mpsc::UnboundedSender<DrCommand>),
}

struct Slot {
    material: KeyMaterial,
    state: SlotState,
    /// Not woken again before this (after an activation failed).
    backoff_until: Option<Instant>,
    /// The sequence number the twin's task is applying (`NOT_APPLYING` between messages):
    /// if the task panics, that message is the poison.
    applying: Arc<AtomicU64>,
    /// A message that made the twin panic: quarantined when it arrives again.
    poison: Option<u64>,
    /// Whether the twin shares any hazard now (set by its task): only those are asked to
    /// answer other twins' queries.
    sharing: Arc<AtomicBool>,
    /// Its shard is being given to another host: not woken again.
    leaving: bool,
}

/// Work on a twin and its audit log, run by whoever holds the twin (its task when
/// active, the host's loop when dormant).
type TwinJob = Box<dyn FnOnce(&mut Twin, &mut AuditLog) + Send>;

/// Another twin's verified query, passed to each active twin that shares hazards; the
/// query is answered (its final reply sent) when the last twin drops it.
struct QueryToAnswer {
    query: zenoh::query::Query,
    /// The host's count of queries being answered (this one leaves it when dropped).
    open: Arc<AtomicUsize>,
    /// What is asked for (the signed name, equal to the key asked).
    name: DataName,
    /// How the querier relates to this host's fleet.
    audience: twinlink_share::Audience,
    /// The querier's fleet and pseudonym (for the audit log).
    fleet: String,
    pseudonym: String,
    query_id: u64,
}

impl Drop for QueryToAnswer {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most queries being answered at once by a host's twins; more are refused (`busy`), so
/// that queries cannot pile up in the twins' queues.
const MAX_OPEN_QUERIES: usize = 64;

/// `Slot::applying` between messages.
const NOT_APPLYING: u64 = u64::MAX;

/// What every twin task shares.
struct Shared {
    config: HostConfig,
    /// The session of everything but the twins' links: the outside session in the
    /// trust-zone deployment, the links' own session otherwise.
    session: zenoh::Session,
    hub: LinkHub,
    store: Store,
    writer: WriterHandle,
    metrics: Arc<HostMetrics>,
    /// The tiles each active twin wants hazards from (its vehicle lets it fetch on its
    /// own): the host queries their union now and then.
    fetch: std::sync::Mutex<HashMap<Arc<str>, Vec<TileName>>>,
    /// Queries being answered by this host's twins now.
    queries_open: Arc<AtomicUsize>,
    /// Rate limits of the outside inputs.
    gate: Arc<crate::gate::Gate>,
}

/// Runs a host until `shutdown` resolves. Reports the admin endpoint's address through
/// `ready` once everything is up.
pub async fn run(
    config: HostConfig,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<oneshot::Sender<Option<SocketAddr>>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "creating the data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    std::fs::create_dir_all(&config.audit_dir).map_err(|e| {
        anyhow::anyhow!(
            "creating the audit directory {}: {e}",
            config.audit_dir.display()
        )
    })?;
    let metrics = HostMetrics::new();
    let (store, mut ownership) = match &config.fleet {
        None => (
            Store::open_with_cache(
                &config.data_dir.join("host.redb"),
                config.retention,
                config.store_cache_bytes,
            )?,
            None,
        ),
        Some(fleet) => {
            let fleet = fleet.clone();
            // The database client blocks: connect off the runtime's workers.
            let (store, events) =
                tokio::task::spawn_blocking(move || crate::fleet::SharedStore::join(fleet))
                    .await??;
            let shards = store.shards();
            (Store::Shared(store), Some(Ownership::new(events, shards)))
        }
    };
    let m = metrics.clone();
    let writer = Writer::start(store.clone(), move |n, took, ok| {
        let result = if ok { "ok" } else { "failed" };
        m.commits
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        m.commit_seconds.observe(took.as_secs_f64());
        m.batch_messages.observe(n as f64);
    });
    let link_session = zenoh::open(config.zenoh.to_config()?)
        .await
        .map_err(|e| anyhow::anyhow!("opening the zenoh session: {e}"))?;
    // In the trust zone, outside inputs come over a session of their own: nothing of the
    // twins' links is declared there.
    let session = match &config.outside {
        None => link_session.clone(),
        Some(outside) => zenoh::open(outside.zenoh.to_config()?)
            .await
            .map_err(|e| anyhow::anyhow!("opening the outside zenoh session: {e}"))?,
    };
    let gate = Arc::new(crate::gate::Gate::new(config.gate).map_err(|e| anyhow::anyhow!("{e}"))?);
    let z = |what: &str, e: zenoh::Error| anyhow::anyhow!("zenoh {what}: {e}");
    // One set of wildcard declarations for every twin's link: frames, the vehicles'
    // liveliness tokens and handshakes go to the twin of the key's vehicle, and what
    // arrives for a dormant twin is reported here, so that the host wakes it.
    let hub = LinkHub::declare(link_session.clone(), Role::Dr).await?;
    let mut hub_events = hub.watch();
    // Regional tiles pass the gate in Zenoh's callback, before they wait for the host's
    // loop in a bounded queue (a flood never blocks the session's receiving thread).
    let (regional_tx, mut regional_rx) = mpsc::channel::<(String, Vec<u8>)>(REGIONAL_QUEUE);
    let _regional = {
        let (gate, m) = (gate.clone(), metrics.clone());
        session
            .declare_subscriber(keys::any_region(REGION_TRAFFIC)?)
            .callback(move |sample| {
                let key = sample.key_expr().as_str();
                if let Err(reason) = gate.admit(crate::gate::Inbound::Regional, key) {
                    HostMetrics::count(&m.regional, "result", reason);
                } else if regional_tx
                    .try_send((key.to_string(), sample.payload().to_bytes().to_vec()))
                    .is_err()
                {
                    HostMetrics::count(&m.regional, "result", "overflow");
                }
            })
            .await
            .map_err(|e| z("regional subscriber", e))?
    };
    let (admin_tx, mut admin_rx) = mpsc::channel::<AdminRequest>(64);
    let admin_addr = match config.admin {
        Some(addr) => Some(
            admin::serve(addr, metrics.clone(), admin_tx, config.admin_tokens.clone())
                .await
                .map_err(|e| anyhow::anyhow!("serving the admin endpoint on {addr}: {e}"))?,
        ),
        None => None,
    };
    // Inter-twin sharing: one subscription per tile name along the host's route; each
    // disclosure is verified once here and offered to every active twin.
    let (relay_tx, mut relay_rx) = mpsc::channel::<(String, Vec<u8>)>(4096);
    // Bytes waiting in that queue: anyone may publish on the share keys, so what waits
    // for verification is bounded in bytes, not only in samples.
    let relay_queued = Arc::new(AtomicU64::new(0));
    let mut verifier: Option<Verifier> = None;
    let mut share_subscribers = Vec::new();
    let (query_tx, mut query_rx) = mpsc::channel::<zenoh::query::Query>(256);
    let mut queryable = None;
    if let Some(share) = &config.share {
        verifier = Some(
            share
                .verifier()
                .map_err(|e| anyhow::anyhow!("sharing: {e}"))?,
        );
        let tiles = route_tiles(&config.settings.road, &share.identity.grid, ROUTE_MARGIN_M);
        for tile in &tiles {
            let tile = keys::RegionTile::new(&tile.to_string())?;
            let key = keys::share(SHARE_CATEGORY, &tile)?;
            let (tx, m, queued) = (relay_tx.clone(), metrics.clone(), relay_queued.clone());
            let gate = gate.clone();
            let subscriber = session
                .declare_subscriber(key)
                .callback(move |sample| {
                    let key = sample.key_expr().as_str();
                    if let Err(reason) = gate.admit(crate::gate::Inbound::Disclosure, key) {
                        HostMetrics::count(&m.relay_received, "result", reason);
                        return;
                    }
                    enqueue_disclosure(
                        &tx,
                        &queued,
                        &m,
                        sample.key_expr().as_str(),
                        &sample.payload().to_bytes(),
                    )
                })
                .await
                .map_err(|e| z("share subscriber", e))?;
            share_subscribers.push(subscriber);
        }
        // Other twins' queries, for any tile: answered by this host's twins that share
        // hazards there, each for the querier's audience.
        let (tx, m) = (query_tx.clone(), metrics.clone());
        let gate = gate.clone();
        queryable = Some(
            session
                .declare_queryable(keys::any_share(SHARE_CATEGORY)?)
                .callback(move |query| {
                    let len = query.payload().map_or(0, |p| p.len());
                    if let Err(reason) =
                        gate.admit(crate::gate::Inbound::Query, query.key_expr().as_str())
                    {
                        HostMetrics::count(&m.queries_received, "result", reason);
                    } else if len > twinlink_share::disclosure::MAX_QUERY_BYTES {
                        HostMetrics::count(&m.queries_received, "result", "oversize");
                    } else if tx.try_send(query).is_err() {
                        HostMetrics::count(&m.queries_received, "result", "overflow");
                    }
                })
                .await
                .map_err(|e| z("share queryable", e))?,
        );
        info!(
            fleet = share.identity.issuer.fleet_id(),
            tiles = tiles.len(),
            "sharing hazards along the route"
        );
    }
    let shared = Arc::new(Shared {
        config: config.clone(),
        session: session.clone(),
        hub,
        store,
        writer: writer.handle(),
        metrics: metrics.clone(),
        fetch: std::sync::Mutex::new(HashMap::new()),
        queries_open: Arc::new(AtomicUsize::new(0)),
        gate: gate.clone(),
    });
    let mut fetching = Fetching::new(relay_tx.clone(), relay_queued.clone());
    let mut slots: HashMap<String, Slot> = HashMap::new();
    let mut tasks: JoinSet<(String, Box<Twin>)> = JoinSet::new();
    let mut task_vehicle: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut scan = ScanState::default();
    rescan(&shared, &mut slots, &mut scan, ownership.as_ref());
    info!(twins = slots.len(), admin = ?admin_addr, "DR host running");
    if let Some(ready) = ready {
        let _ = ready.send(admin_addr);
    }
    let mut rescan_tick = tokio::time::interval(config.rescan);
    // Vehicles whose liveliness token is present: a twin that stopped (a panic, a failed
    // activation) while its vehicle is still there is woken again.
    let mut present: HashSet<String> = HashSet::new();
    let mut retry_tick = tokio::time::interval(Duration::from_millis(500));
    let mut relay_log = LogBudget::new();
    let mut fetch_tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = rescan_tick.tick() => rescan(&shared, &mut slots, &mut scan, ownership.as_ref()),
            Some(event) = async { ownership.as_mut()?.events.recv().await }, if ownership.is_some() => {
                let own = ownership.as_mut().expect("guarded");
                own.on_event(&shared, &mut slots, &scan, event);
                for v in &present {
                    activate(&shared, &mut slots, &mut tasks, &mut task_vehicle, v);
                }
            }
            _ = retry_tick.tick() => {
                if let Some(own) = ownership.as_mut() {
                    own.finish_releases(&shared, &mut slots);
                }
                for v in &present {
                    activate(&shared, &mut slots, &mut tasks, &mut task_vehicle, v);
                }
                if let Some(verifier) = verifier.as_mut() {
                    verifier.purge(now_us());
                }
                shared.gate.forget_idle_keys();
            }
            _ = fetch_tick.tick() => fetching.query_due(&shared),
            Some(query) = query_rx.recv() => {
                if let Some(verifier) = verifier.as_mut() {
                    query_in(&shared, &slots, verifier, query, &mut relay_log);
                }
            }
            Some((key, bytes)) = relay_rx.recv() => {
                relay_queued.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
                if let Some(verifier) = verifier.as_mut() {
                    relay_in(&shared, &mut slots, verifier, &key, &bytes, &mut relay_log);
                }
            }
            event = hub_events.recv() => {
                let Some(event) = event else { break };
                match event {
                    HubEvent::Presence { vehicle, present: true } => {
                        present.insert(vehicle.to_string());
                        activate(&shared, &mut slots, &mut tasks, &mut task_vehicle, vehicle.as_str());
                    }
                    HubEvent::Presence { vehicle, present: false } => {
                        present.remove(vehicle.as_str());
                    }
                    // A handshake for a dormant twin: wake it (the vehicle retries its
                    // handshake and meets the twin's link).
                    HubEvent::Unrouted { vehicle } => {
                        activate(&shared, &mut slots, &mut tasks, &mut task_vehicle, vehicle.as_str());
                    }
                }
            }
            tile = regional_rx.recv() => {
                let Some((key, payload)) = tile else { break };
                apply_regional(&shared, &mut slots, &key, &payload);
            }
            request = admin_rx.recv() => {
                match request {
                    Some(AdminRequest::SetPolicy(change, reply)) => {
                        set_policy(&shared, &mut slots, change, reply);
                    }
                    Some(AdminRequest::Owner(vehicle, reply)) => {
                        owner_of(&shared, &slots, vehicle, reply);
                    }
                    Some(AdminRequest::Fleet(reply)) => fleet_document(&shared, reply),
                    Some(AdminRequest::SetDesired(change, reply)) => {
                        set_desired(&shared, &mut slots, change, reply);
                    }
                    Some(AdminRequest::History(query, reply)) => {
                        if !slots.contains_key(&query.vehicle) {
                            let _ = reply.send(None);
                        } else {
                            let dir = twin_dir(&shared.config.audit_dir, &query.vehicle);
                            tokio::task::spawn_blocking(move || {
                                let result = match crate::audit::tail(&dir, query.limit, query.kind.as_deref()) {
                                    Ok(records) => Ok(Value::from(records)),
                                    // Never active on a host of this audit directory: no history yet.
                                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!([])),
                                    Err(e) => Err(admin::AdminError::new(500, format!("reading the twin's history: {e}"))),
                                };
                                let _ = reply.send(Some(result));
                            });
                        }
                    }
                    Some(AdminRequest::GetState(vehicle, reply)) => {
                        get_state(&shared, &slots, vehicle, reply);
                    }
                    Some(AdminRequest::Drain(operator, reply)) => drain(&shared, operator, reply),
                    Some(AdminRequest::View(reply)) => view_document(&shared, &slots, reply),
                    Some(request) => answer(&mut slots, request),
                    None => {}
                }
            }
            done = tasks.join_next_with_id(), if !tasks.is_empty() => {
                match done {
                    Some(Ok((id, (vehicle, twin)))) => {
                        task_vehicle.remove(&id);
                        went_dormant(&shared, &slots, &vehicle);
                        if let Some(slot) = slots.get_mut(&vehicle) {
                            slot.state = SlotState::Dormant(twin);
                        }
                        metrics.active.dec();
                    }
                    Some(Err(e)) => {
                        let vehicle = task_vehicle.remove(&e.id()).unwrap_or_default();
                        metrics.active.dec();
                        went_dormant(&shared, &slots, &vehicle);
                        if let Some(slot) = slots.get_mut(&vehicle) {
                            if e.is_panic() {
                                metrics.panics.inc();
                                let seq = slot.applying.load(Ordering::Relaxed);
                                if seq != NOT_APPLYING {
                                    // Not durable, so the vehicle will resend it: quarantine it
                                    // then, or the twin would panic again and again.
                                    slot.poison = Some(seq);
                                }
                                error!(%vehicle, message = ?slot.poison, "twin task panicked; rebuilding it from its durable state");
                            }
                            slot.state = SlotState::Dormant(Box::new(restore(&shared, &vehicle)));
                        }
                    }
                    None => {}
                }
            }
        }
    }
    info!("DR host stopping");
    for slot in slots.values() {
        if let SlotState::Active(tx) = &slot.state {
            let _ = tx.send(DrCommand::Shutdown);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    // Twins that did not stop in time are ended (their acknowledged messages are durable
    // already); they hold the store writer's queue open until then.
    tasks.shutdown().await;
    drop(share_subscribers);
    drop(queryable);
    drop(shared);
    writer.stop();
    let _ = session.close().await;
    let _ = link_session.close().await;
    Ok(())
}

/// Answers which fleet host serves `vehicle`, when it is not this one.
fn owner_of(
    shared: &Shared,
    slots: &HashMap<String, Slot>,
    vehicle: String,
    reply: oneshot::Sender<Option<String>>,
) {
    let Store::Shared(store) = &shared.store else {
        let _ = reply.send(None);
        return;
    };
    if slots.contains_key(&vehicle) {
        let _ = reply.send(None);
        return;
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let me = store.view().host;
        let owner = store.owner_of(&vehicle).ok().flatten().filter(|h| *h != me);
        let addr = owner.and_then(|name| {
            store
                .hosts()
                .ok()?
                .into_iter()
                .find(|h| h.name == name && !h.admin.is_empty())
                .map(|h| h.admin)
        });
        let _ = reply.send(addr);
    });
}

/// The fleet's hosts and this host's ownership (`{"fleet": null}` outside a fleet).
fn fleet_document(shared: &Shared, reply: oneshot::Sender<Result<Value, admin::AdminError>>) {
    let Store::Shared(store) = &shared.store else {
        let _ = reply.send(Ok(json!({"fleet": null})));
        return;
    };
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let result = store
            .hosts()
            .map(|hosts| {
                json!({"fleet": {"shards": store.shards(), "hosts": hosts}, "this_host": store.view()})
            })
            .map_err(|e| admin::AdminError::new(503, format!("reading the fleet's database: {e}")));
        let _ = reply.send(result);
    });
}

/// Drains this host: it leaves the fleet's membership and gives every shard back, so that
/// its twins move to the other hosts.
fn drain(
    shared: &Shared,
    operator: String,
    reply: oneshot::Sender<Result<Value, admin::AdminError>>,
) {
    let Store::Shared(store) = &shared.store else {
        let _ = reply.send(Err(admin::AdminError::new(
            409,
            "this host is not in a fleet (start it with --fleet-db): there is no other host for its twins",
        )));
        return;
    };
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let result = store
            .drain()
            .map(|()| {
                let view = store.view();
                info!(%operator, shards = view.shards.len(), "draining: every shard goes back to the fleet");
                json!({"draining": true, "operator": operator, "shards_to_give_back": view.shards.len()})
            })
            .map_err(|e| admin::AdminError::new(503, format!("draining failed: {e}")));
        let _ = reply.send(result);
    });
}

/// A twin whose task ended (also by a panic) neither answers queries nor asks for tiles.
fn went_dormant(shared: &Shared, slots: &HashMap<String, Slot>, vehicle: &str) {
    if let Some(slot) = slots.get(vehicle) {
        slot.sharing.store(false, Ordering::Relaxed);
    }
    shared
        .fetch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(vehicle);
}

/// A twin rebuilt from the store: the newest vehicle state and the recommendation sequence.
fn restore(shared: &Shared, vehicle: &str) -> Twin {
    // One read transaction serves its record, its operator's policy and desired state.
    let restored = shared
        .store
        .restore_many(&[vehicle.to_string()])
        .pop()
        .expect("one vehicle asked, one answer");
    restore_from(shared, vehicle, restored)
}

/// Twins rebuilt from the store, read for all at once.
fn restore_many(shared: &Shared, vehicles: Vec<String>) -> Vec<Twin> {
    let records = shared.store.restore_many(&vehicles);
    vehicles
        .iter()
        .zip(records)
        .map(|(v, r)| restore_from(shared, v, r))
        .collect()
}

fn restore_from(shared: &Shared, vehicle: &str, restored: crate::store::Restored) -> Twin {
    let crate::store::Restored {
        record,
        operator,
        desired,
    } = restored;
    let mut twin = Twin::new(vehicle, &shared.config.settings);
    match desired {
        Ok(Some(d)) => {
            if let Err(e) = twin.set_desired(d) {
                warn!(%vehicle, error = %e, "the stored desired state is refused now");
            }
        }
        Ok(None) => {}
        Err(e) => warn!(%vehicle, error = %e, "reading the desired state failed"),
    }
    match record.map(Option::unwrap_or_default) {
        Ok(record) => {
            twin.resume_sequence(record.link.recommendation_seq);
            let latest = record.latest;
            // The vehicle's newest policy and the operator's: whichever the twin took last
            // holds (an operator's policy records the vehicle's policy it followed).
            let mut vehicle_policy = None;
            for m in latest {
                if m.type_name == VehicleState::TYPE_NAME {
                    if let Ok(state) = twinlink_msgs::codec::decode::<VehicleState>(&m.payload) {
                        let _ = twin.on_state(&state);
                    }
                } else if m.type_name == SharingPolicy::TYPE_NAME {
                    if let Ok(policy) = twinlink_msgs::codec::decode::<SharingPolicy>(&m.payload) {
                        vehicle_policy = Some((m.created_us, policy));
                    }
                }
            }
            let operator: Result<_, String> = match operator {
                Ok(None) => Ok(None),
                Ok(Some(set)) => twinlink_msgs::codec::decode::<SharingPolicy>(&set.policy)
                    .map(|policy| Some((set, policy)))
                    .map_err(|e| format!("the operator's stored policy does not decode: {e}")),
                Err(e) => Err(e.to_string()),
            };
            let mut policies = Vec::new();
            match operator {
                Ok(operator) => {
                    let operator_last = match (&vehicle_policy, &operator) {
                        (Some((created, _)), Some((set, _))) => {
                            *created <= set.after_vehicle_policy_us
                        }
                        _ => true,
                    };
                    let v = vehicle_policy.map(|(created, p)| {
                        (crate::relay::PolicyOrigin::vehicle(created, created), p)
                    });
                    let o = operator.map(|(set, p)| {
                        (
                            crate::relay::PolicyOrigin::operator(&set.operator, set.set_at_us),
                            p,
                        )
                    });
                    if operator_last {
                        policies.extend(v.into_iter().chain(o));
                    } else {
                        policies.extend(o.into_iter().chain(v));
                    }
                }
                // Not knowing what the operator set, share nothing (default deny).
                Err(e) => {
                    warn!(%vehicle, error = %e, "reading the operator's policy failed; sharing nothing")
                }
            }
            for (origin, policy) in policies {
                if let Err(e) = twin.on_policy_from(policy, origin, now_us()) {
                    warn!(%vehicle, error = %e, "the stored sharing policy is refused now");
                }
            }
        }
        Err(e) => warn!(%vehicle, error = %e, "reading the durable state failed; starting empty"),
    }
    twin
}

/// What the keys directory looked like at the last full scan.
#[derive(Default)]
struct ScanState {
    /// Key files refused, with the modification time they had (retried when it changes).
    refused: HashMap<PathBuf, std::time::SystemTime>,
    /// The directory's modification time and when it was last read in full.
    last: Option<(std::time::SystemTime, Instant)>,
    /// Every vehicle provisioned (a fleet's host serves those of the shards it owns).
    provisioned: HashMap<String, KeyMaterial>,
}

fn new_slot(material: KeyMaterial, twin: Twin) -> Slot {
    Slot {
        material,
        state: SlotState::Dormant(Box::new(twin)),
        backoff_until: None,
        applying: Arc::new(AtomicU64::new(NOT_APPLYING)),
        poison: None,
        sharing: Arc::new(AtomicBool::new(false)),
        leaving: false,
    }
}

/// What a host of a fleet owns, as its loop sees it.
struct Ownership {
    events: mpsc::UnboundedReceiver<OwnershipEvent>,
    shards: u32,
    owned: HashSet<u32>,
    /// Shards being given back: their twins are stopping.
    releasing: BTreeSet<u32>,
}

impl Ownership {
    fn new(events: mpsc::UnboundedReceiver<OwnershipEvent>, shards: u32) -> Self {
        Ownership {
            events,
            shards,
            owned: HashSet::new(),
            releasing: BTreeSet::new(),
        }
    }

    fn shard(&self, vehicle: &str) -> u32 {
        crate::fleet::shard_of(vehicle, self.shards)
    }

    /// Whether this host serves `vehicle` now.
    fn owns(&self, vehicle: &str) -> bool {
        let s = self.shard(vehicle);
        self.owned.contains(&s) && !self.releasing.contains(&s)
    }

    fn on_event(
        &mut self,
        shared: &Shared,
        slots: &mut HashMap<String, Slot>,
        scan: &ScanState,
        event: OwnershipEvent,
    ) {
        match event {
            OwnershipEvent::Gained(shards) => {
                shared.metrics.count_ownership("gained", shards.len());
                self.owned.extend(&shards);
                let mine: Vec<(String, KeyMaterial)> = scan
                    .provisioned
                    .iter()
                    .filter(|(v, _)| !slots.contains_key(*v) && self.owns(v))
                    .map(|(v, m)| (v.clone(), m.clone()))
                    .collect();
                let restored = restore_many(shared, mine.iter().map(|(v, _)| v.clone()).collect());
                for ((vehicle, material), twin) in mine.into_iter().zip(restored) {
                    slots.insert(vehicle, new_slot(material, twin));
                }
                info!(shards = ?shards, twins = slots.len(), "serving the twins of new shards");
            }
            OwnershipEvent::Lost(shards) => {
                shared.metrics.count_ownership("lost", shards.len());
                for s in &shards {
                    self.owned.remove(s);
                    self.releasing.remove(s);
                }
                // The writes of their twins are refused already: stop them now.
                let gone: Vec<String> = slots
                    .keys()
                    .filter(|v| shards.contains(&self.shard(v)))
                    .cloned()
                    .collect();
                for v in gone {
                    if let Some(Slot {
                        state: SlotState::Active(tx),
                        ..
                    }) = slots.remove(&v)
                    {
                        let _ = tx.send(DrCommand::Shutdown);
                    }
                }
                warn!(shards = ?shards, "shards lost; their twins stopped");
            }
            OwnershipEvent::Release(shards) => {
                shared.metrics.count_ownership("released", shards.len());
                self.releasing.extend(&shards);
                for (v, slot) in slots.iter_mut() {
                    if shards.contains(&crate::fleet::shard_of(v, self.shards)) {
                        slot.leaving = true;
                        if let SlotState::Active(tx) = &slot.state {
                            let _ = tx.send(DrCommand::Shutdown);
                        }
                    }
                }
            }
        }
        shared.metrics.provisioned.set(slots.len() as i64);
        shared.metrics.owned_shards.set(self.owned.len() as i64);
    }

    /// Gives back the shards being released whose twins have all stopped.
    fn finish_releases(&mut self, shared: &Shared, slots: &mut HashMap<String, Slot>) {
        if self.releasing.is_empty() {
            return;
        }
        let busy: HashSet<u32> = slots
            .iter()
            .filter(|(_, slot)| matches!(slot.state, SlotState::Active(_)))
            .map(|(v, _)| self.shard(v))
            .collect();
        let done: Vec<u32> = self
            .releasing
            .iter()
            .filter(|s| !busy.contains(s))
            .copied()
            .collect();
        if done.is_empty() {
            return;
        }
        slots.retain(|v, _| !done.contains(&crate::fleet::shard_of(v, self.shards)));
        for s in &done {
            self.releasing.remove(s);
            self.owned.remove(s);
        }
        if let Store::Shared(store) = &shared.store {
            store.released(done);
        }
        shared.metrics.provisioned.set(slots.len() as i64);
        shared.metrics.owned_shards.set(self.owned.len() as i64);
    }
}

/// Longest time between two full reads of the keys directory when its modification time
/// says nothing changed (a key file rewritten in place does not change it).
const FULL_SCAN_EVERY: Duration = Duration::from_secs(30);

fn rescan(
    shared: &Shared,
    slots: &mut HashMap<String, Slot>,
    scan: &mut ScanState,
    ownership: Option<&Ownership>,
) {
    let dir = &shared.config.keys_dir;
    // With tens of thousands of key files, reading the directory costs: skip it while the
    // directory is unchanged (a file added, removed or renamed changes its mtime).
    let dir_mtime = std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    if let (Some(now_mtime), Some((seen, at))) = (dir_mtime, scan.last) {
        if now_mtime == seen && at.elapsed() < FULL_SCAN_EVERY {
            return;
        }
    }
    if let Some(m) = dir_mtime {
        scan.last = Some((m, Instant::now()));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot read the keys directory");
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(vehicle) = name.strip_suffix(".dr.key") else {
            continue;
        };
        if scan.provisioned.contains_key(vehicle) {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        if modified.is_some() && scan.refused.get(&path) == modified.as_ref() {
            continue;
        }
        let loaded = VehicleId::new(vehicle)
            .map_err(anyhow::Error::from)
            .and_then(|id| KeyMaterial::load(&path, &id, Role::Dr).map_err(anyhow::Error::from));
        match loaded {
            Ok(material) => {
                scan.provisioned
                    .insert(vehicle.to_string(), material.clone());
                if ownership.is_none_or(|o| o.owns(vehicle)) {
                    let twin = restore(shared, vehicle);
                    slots.insert(vehicle.to_string(), new_slot(material, twin));
                    shared.metrics.provisioned.set(slots.len() as i64);
                }
            }
            Err(e) => {
                shared.metrics.reject("bad_key_file");
                warn!(file = %path.display(), error = %e, "key file refused");
                if let Some(m) = modified {
                    scan.refused.insert(path, m);
                }
            }
        }
    }
}

fn activate(
    shared: &Arc<Shared>,
    slots: &mut HashMap<String, Slot>,
    tasks: &mut JoinSet<(String, Box<Twin>)>,
    task_vehicle: &mut HashMap<tokio::task::Id, String>,
    vehicle: &str,
) {
    let Some(slot) = slots.get_mut(vehicle) else {
        return;
    };
    if slot.leaving || slot.backoff_until.is_some_and(|t| Instant::now() < t) {
        return;
    }
    if !matches!(slot.state, SlotState::Dormant(_)) {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let SlotState::Dormant(twin) = std::mem::replace(&mut slot.state, SlotState::Active(tx)) else {
        unreachable!("checked above");
    };
    slot.backoff_until = Some(Instant::now() + Duration::from_secs(2));
    shared.metrics.activations.inc();
    shared.metrics.active.inc();
    slot.applying.store(NOT_APPLYING, Ordering::Relaxed);
    let handle = tasks.spawn(run_twin(
        shared.clone(),
        slot.material.clone(),
        twin,
        rx,
        slot.applying.clone(),
        slot.sharing.clone(),
        slot.poison,
    ));
    task_vehicle.insert(handle.id(), vehicle.to_string());
}

fn apply_regional(shared: &Shared, slots: &mut HashMap<String, Slot>, key: &str, payload: &[u8]) {
    let tile: RegionalTraffic = match twinlink_msgs::codec::decode(payload) {
        Ok(t) => t,
        Err(e) => {
            shared
                .metrics
                .regional
                .get_or_create(&vec![("result", "undecodable".to_string())])
                .inc();
            shared.metrics.reject("undecodable_regional");
            warn!(error = %e, "regional tile refused");
            return;
        }
    };
    // The tile it names must be the one it was published for.
    let keyed = key
        .strip_prefix("twinlink/v1/region/")
        .and_then(|rest| rest.split('/').next());
    if keyed != Some(tile.tile_id.as_str()) {
        HostMetrics::count(&shared.metrics.regional, "result", "name_mismatch");
        shared.metrics.reject("invalid_regional");
        return;
    }
    shared
        .metrics
        .regional
        .get_or_create(&vec![("result", "received".to_string())])
        .inc();
    let tile = Arc::new(tile);
    let now = now_us() as f64 * 1e-6;
    for slot in slots.values_mut() {
        match &mut slot.state {
            SlotState::Dormant(twin) => {
                if let Err(e) = twin.on_regional(&tile, now) {
                    shared.metrics.reject(e.reason());
                }
            }
            SlotState::Active(tx) => {
                let _ = tx.send(DrCommand::Regional(tile.clone()));
            }
        }
    }
}

/// Queues one disclosure heard on the share key space (published, or a reply to the
/// host's query) for verification, within the byte bound; what does not fit is counted.
fn enqueue_disclosure(
    tx: &mpsc::Sender<(String, Vec<u8>)>,
    queued: &AtomicU64,
    metrics: &HostMetrics,
    key: &str,
    payload: &[u8],
) {
    let len = payload.len();
    if len > twinlink_share::disclosure::MAX_DISCLOSURE_BYTES {
        HostMetrics::count(&metrics.relay_received, "result", "oversize");
        return;
    }
    if queued.load(Ordering::Relaxed) + len as u64 > MAX_RELAY_QUEUED_BYTES {
        HostMetrics::count(&metrics.relay_received, "result", "overflow");
        return;
    }
    queued.fetch_add(len as u64, Ordering::Relaxed);
    if tx.try_send((key.to_string(), payload.to_vec())).is_err() {
        queued.fetch_sub(len as u64, Ordering::Relaxed);
        HostMetrics::count(&metrics.relay_received, "result", "overflow");
    }
}

/// How often a tile that a fetching twin wants is asked again.
const QUERY_PERIOD: Duration = Duration::from_secs(5);
/// Replies to one query taken at most (more are counted as `too_many` and dropped).
const MAX_REPLIES_PER_QUERY: usize = 32;
/// Regional tiles waiting for the host's loop at most (more are counted as `overflow`).
const REGIONAL_QUEUE: usize = 1024;
/// How long the host waits for the replies to one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an active twin tells the host which tiles it wants.
const INTEREST_PERIOD: Duration = Duration::from_secs(1);

/// An active twin's wish for hazards ahead, as last told to the host.
#[derive(Default)]
struct FetchInterest {
    last: Option<Instant>,
    told: Vec<TileName>,
}

impl FetchInterest {
    /// Every [`INTEREST_PERIOD`]: the tiles ahead of the vehicle if it lets its twin fetch
    /// on its own (none otherwise), recorded for the host when they changed.
    fn update(&mut self, shared: &Shared, twin: &Twin, vehicle: &Arc<str>) {
        let Some(share) = &shared.config.share else {
            return;
        };
        if self.last.is_some_and(|t| t.elapsed() < INTEREST_PERIOD) {
            return;
        }
        self.last = Some(Instant::now());
        let tiles = twin.fetch_tiles(now_us() as f64 * 1e-6, &share.identity.grid);
        if tiles == self.told {
            return;
        }
        let mut fetch = shared.fetch.lock().unwrap_or_else(|e| e.into_inner());
        if tiles.is_empty() {
            fetch.remove(vehicle);
        } else {
            fetch.insert(vehicle.clone(), tiles.clone());
        }
        self.told = tiles;
    }
}

/// The host's side of fetching: it asks, by name, for the hazards in the tiles its
/// fetching twins want, signed with a pseudonym of its own fleet (so that twins whose
/// rules allow `SAME_FLEET` answer it), and verifies the replies like any disclosure.
struct Fetching {
    rotation: Option<Rotation>,
    asked: HashMap<TileName, Instant>,
    tx: mpsc::Sender<(String, Vec<u8>)>,
    queued: Arc<AtomicU64>,
}

impl Fetching {
    fn new(tx: mpsc::Sender<(String, Vec<u8>)>, queued: Arc<AtomicU64>) -> Self {
        Fetching {
            rotation: Rotation::new(RotationConfig::default()).ok(),
            asked: HashMap::new(),
            tx,
            queued,
        }
    }

    /// Sends a query for every wanted tile not asked within [`QUERY_PERIOD`] (a tile a
    /// twin wants for the first time is asked at once: a twin that joins late learns what
    /// is already known).
    fn query_due(&mut self, shared: &Arc<Shared>) {
        let (Some(share), Some(rotation)) = (&shared.config.share, self.rotation.as_mut()) else {
            return;
        };
        let wanted: std::collections::BTreeSet<TileName> = shared
            .fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .copied()
            .collect();
        self.asked.retain(|t, _| wanted.contains(t));
        for tile in wanted {
            if self
                .asked
                .get(&tile)
                .is_some_and(|t| t.elapsed() < QUERY_PERIOD)
            {
                continue;
            }
            self.asked.insert(tile, Instant::now());
            let now = now_us();
            let name = DataName::new(twinlink_share::Category::Hazards, tile);
            let query = match rotation.current(&share.identity.issuer, now) {
                Ok(credential) => SignedQuery::new(name, credential, now),
                Err(e) => {
                    HostMetrics::count(&shared.metrics.queries_sent, "result", "signing_failed");
                    warn!(error = %e, "no pseudonym to sign a query with");
                    return;
                }
            };
            let Ok(key) = keys::RegionTile::new(&tile.to_string())
                .and_then(|t| keys::share(SHARE_CATEGORY, &t))
            else {
                continue;
            };
            let (shared, tx, queued) = (shared.clone(), self.tx.clone(), self.queued.clone());
            tokio::spawn(async move {
                let m = &shared.metrics;
                let replies = match shared
                    .session
                    .get(key)
                    .payload(query.to_bytes())
                    .target(zenoh::query::QueryTarget::All)
                    .consolidation(zenoh::query::ConsolidationMode::None)
                    .timeout(QUERY_TIMEOUT)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        HostMetrics::count(&m.queries_sent, "result", "failed");
                        warn!(error = %e, "sending a query failed");
                        return;
                    }
                };
                HostMetrics::count(&m.queries_sent, "result", "sent");
                let mut taken = 0;
                while let Ok(reply) = replies.recv_async().await {
                    match reply.result() {
                        Ok(sample) => {
                            // Any queryable may answer: at most so many replies per query,
                            // and replies pass the gate like publications.
                            if taken >= MAX_REPLIES_PER_QUERY {
                                HostMetrics::count(&m.query_replies, "result", "too_many");
                                continue;
                            }
                            let key = sample.key_expr().as_str();
                            if let Err(reason) = shared.gate.admit(crate::gate::Inbound::Reply, key)
                            {
                                HostMetrics::count(&m.query_replies, "result", reason);
                                continue;
                            }
                            taken += 1;
                            HostMetrics::count(&m.query_replies, "result", "received");
                            enqueue_disclosure(
                                &tx,
                                &queued,
                                m,
                                sample.key_expr().as_str(),
                                &sample.payload().to_bytes(),
                            );
                        }
                        Err(_) => HostMetrics::count(&m.query_replies, "result", "error"),
                    }
                }
            });
        }
    }
}

/// Another twin's query: verified once (signature, certificate chain, trust, freshness,
/// replay; the signed name must be the key asked), then passed to every active twin that
/// shares hazards, which answers for the querier's audience. Every refusal is counted.
fn query_in(
    shared: &Shared,
    slots: &HashMap<String, Slot>,
    verifier: &mut Verifier,
    query: zenoh::query::Query,
    log: &mut LogBudget,
) {
    let refuse = |log: &mut LogBudget, reason: &str, text: String| {
        HostMetrics::count(&shared.metrics.queries_received, "result", reason);
        if log.allow("(query)") {
            warn!(key = %query.key_expr(), reason, "query refused: {text}");
        }
    };
    let Some(bytes) = query
        .payload()
        .filter(|p| !p.is_empty())
        .map(|p| p.to_bytes().into_owned())
    else {
        return refuse(log, "unsigned", "a query without a signed payload".into());
    };
    // The name first: a copy asked under another key must not use up the query's id in
    // the replay guard before the original arrives.
    let signed = match twinlink_share::SignedQuery::from_bytes(&bytes) {
        Ok(q) => q,
        Err(e) => {
            let e = twinlink_share::Rejection::from(e);
            return refuse(log, e.as_str(), e.to_string());
        }
    };
    let signed_name = signed.query.name.clone();
    let name = match (
        signed_name.parse::<DataName>().ok(),
        keys::share_name_of(query.key_expr().as_str()),
    ) {
        (Some(name), Some((category, tile)))
            if name.category.name() == category && name.tile.to_string() == tile.as_str() =>
        {
            name
        }
        _ => {
            return refuse(
                log,
                "name_mismatch",
                format!(
                    "signed for {signed_name:?} but asked on {}",
                    query.key_expr()
                ),
            )
        }
    };
    if shared.queries_open.load(Ordering::Relaxed) >= MAX_OPEN_QUERIES {
        return refuse(
            log,
            "busy",
            format!("{MAX_OPEN_QUERIES} queries are being answered"),
        );
    }
    let (asked, origin) = match verifier.verify_signed_query(signed, now_us()) {
        Ok(v) => v,
        Err(e) => return refuse(log, e.as_str(), e.to_string()),
    };
    HostMetrics::count(&shared.metrics.queries_received, "result", "verified");
    shared.queries_open.fetch_add(1, Ordering::Relaxed);
    let job = Arc::new(QueryToAnswer {
        open: shared.queries_open.clone(),
        name,
        audience: origin.audience,
        fleet: origin.fleet_id,
        pseudonym: origin.pseudonym,
        query_id: asked.id,
        query,
    });
    for slot in slots.values() {
        if let SlotState::Active(tx) = &slot.state {
            if slot.sharing.load(Ordering::Relaxed) {
                let _ = tx.send(DrCommand::Answer(job.clone()));
            }
        }
    }
}

/// Answers another twin's query with what this twin may disclose to it: each disclosure
/// is replied to the querier alone and recorded in the audit log with the querier's
/// fleet, pseudonym and query id; a denial is recorded as for publications.
async fn answer_query(
    shared: &Shared,
    twin: &mut Twin,
    job: &QueryToAnswer,
    audit: &mut AuditLog,
) -> anyhow::Result<()> {
    let Some(share) = &shared.config.share else {
        return Ok(());
    };
    let now = now_us();
    for outcome in twin.answer(&job.name, job.audience, &share.identity.issuer, now) {
        match outcome {
            Outcome::Disclosed(d) => {
                let tile = keys::RegionTile::new(&d.name.tile.to_string())?;
                let key = keys::share(d.name.category.name(), &tile)?;
                audit.append(
                    Kind::Disclosure,
                    json!({"direction": "out", "name": d.name.to_string(), "audience": d.audience.as_str(),
                           "via": "query", "to_fleet": job.fleet, "to_pseudonym": job.pseudonym,
                           "query_id": job.query_id, "pseudonym": d.pseudonym,
                           "disclosure_id": d.disclosure_id, "hazard": d.hazard_id,
                           "disclosed_as": d.disclosed_id, "precision_m": d.precision_m.to_string(),
                           "at_us": now}),
                    &d.bytes,
                )?;
                let result = match job.query.reply(key, d.bytes).await {
                    Ok(()) => "answered",
                    Err(e) => {
                        warn!(vehicle = twin.vehicle(), error = %e, "replying to a query failed");
                        record_not_sent(audit, "reply_failed", &d.pseudonym, d.disclosure_id)?;
                        "reply_failed"
                    }
                };
                HostMetrics::count(&shared.metrics.disclosures, "result", result);
            }
            Outcome::Denied {
                hazard_id,
                reason,
                repeated,
            } => record_denial(
                shared,
                audit,
                &hazard_id,
                reason,
                repeated,
                Some(job.audience),
                now,
            )?,
        }
    }
    Ok(())
}

/// One disclosure from the share key space: verified once (signature, certificate chain,
/// trust, freshness, replay; its name must match what it says), then offered to every
/// active twin. Every refusal is counted by reason.
fn relay_in(
    shared: &Shared,
    slots: &mut HashMap<String, Slot>,
    verifier: &mut Verifier,
    key: &str,
    bytes: &[u8],
    log: &mut LogBudget,
) {
    let refuse = |log: &mut LogBudget, reason: &str, text: String| {
        HostMetrics::count(&shared.metrics.relay_received, "result", reason);
        if log.allow("(relay)") {
            warn!(key, reason, "disclosure refused: {text}");
        }
    };
    let disclosure = match twinlink_share::Disclosure::from_bytes(bytes) {
        Ok(d) => d,
        Err(e) => {
            let e = twinlink_share::Rejection::from(e);
            return refuse(log, e.as_str(), e.to_string());
        }
    };
    // The name first: a copy republished under another name must not use up the
    // disclosure's id in the replay guard before the original arrives.
    let said = (
        twinlink_share::category_name(disclosure.observation.category),
        disclosure.observation.region_tile.clone(),
    );
    match keys::share_name_of(key) {
        Some((category, tile)) if Some(category) == said.0 && tile.as_str() == said.1 => {}
        _ => {
            return refuse(
                log,
                "name_mismatch",
                format!(
                    "published under {key} but names {:?} in tile {:?}",
                    said.0, said.1
                ),
            )
        }
    }
    let verified = match verifier.verify_disclosure(disclosure, now_us()) {
        Ok(v) => v,
        Err(e) => return refuse(log, e.as_str(), e.to_string()),
    };
    HostMetrics::count(&shared.metrics.relay_received, "result", "verified");
    let verified = Arc::new(verified);
    for slot in slots.values() {
        if let SlotState::Active(tx) = &slot.state {
            let _ = tx.send(DrCommand::Relayed(verified.clone()));
        }
    }
}

fn answer(slots: &mut HashMap<String, Slot>, request: AdminRequest) {
    let now = now_us() as f64 * 1e-6;
    match request {
        AdminRequest::List(reply) => {
            let mut list: Vec<Value> = slots
                .iter()
                .map(|(v, slot)| match &slot.state {
                    SlotState::Dormant(twin) => {
                        let s = twin.status(now);
                        json!({"vehicle": v, "active": false, "states": s.states, "summaries": s.summaries,
                               "recommendations": s.recommendations, "refused": s.refused})
                    }
                    SlotState::Active(_) => json!({"vehicle": v, "active": true}),
                })
                .collect();
            list.sort_by(|a, b| a["vehicle"].as_str().cmp(&b["vehicle"].as_str()));
            let _ = reply.send(Value::Array(list));
        }
        AdminRequest::Get(vehicle, reply) => match slots.get(&vehicle).map(|s| &s.state) {
            None => {
                let _ = reply.send(None);
            }
            Some(SlotState::Dormant(twin)) => {
                let _ = reply.send(Some(document(twin, now, false, None)));
            }
            Some(SlotState::Active(tx)) => {
                let (tx2, rx2) = oneshot::channel();
                if tx.send(DrCommand::Status(tx2)).is_err() {
                    let _ = reply.send(Some(json!({"vehicle": vehicle, "active": true, "error": "twin task busy stopping"})));
                    return;
                }
                tokio::spawn(async move {
                    let v = tokio::time::timeout(Duration::from_secs(2), rx2)
                        .await
                        .ok()
                        .and_then(|r| r.ok());
                    let _ = reply.send(Some(v.unwrap_or_else(
                        || json!({"vehicle": vehicle, "active": true, "error": "no answer"}),
                    )));
                });
            }
        },
        AdminRequest::GetPolicy(vehicle, reply) => match slots.get(&vehicle).map(|s| &s.state) {
            None => {
                let _ = reply.send(None);
            }
            Some(SlotState::Dormant(twin)) => {
                let _ = reply.send(Some(policy_document(twin)));
            }
            Some(SlotState::Active(tx)) => {
                let job: TwinJob = Box::new(move |twin, _| {
                    let _ = reply.send(Some(policy_document(twin)));
                });
                // A twin stopping drops the job, and with it the reply: "host stopping".
                let _ = tx.send(DrCommand::Run(job));
            }
        },
        AdminRequest::SetPolicy(_, reply)
        | AdminRequest::Fleet(reply)
        | AdminRequest::Drain(_, reply) => {
            let _ = reply.send(Err(admin::AdminError::new(
                500,
                "handled by the host's loop",
            )));
        }
        AdminRequest::Owner(_, reply) => {
            let _ = reply.send(None);
        }
        AdminRequest::View(reply) => {
            let _ = reply.send(Value::Null);
        }
        AdminRequest::GetState(_, reply) => {
            let _ = reply.send(None);
        }
        AdminRequest::History(_, reply) => {
            let _ = reply.send(None);
        }
        AdminRequest::SetDesired(_, reply) => {
            let _ = reply.send(Err(admin::AdminError::new(
                500,
                "handled by the host's loop",
            )));
        }
    }
}

/// A twin's sharing policy as operators read it: the policy in force, its version and
/// where it came from.
fn policy_document(twin: &Twin) -> Value {
    let consent = twin.sharing().consent();
    json!({
        "vehicle": twin.vehicle(),
        "version": consent.version(),
        "origin": twin.sharing().policy_origin(),
        "policy": twinlink_share::PolicyDocument::from_policy(consent.policy()),
    })
}

/// An operator's new sharing policy for one twin: checked, made durable (it survives a
/// restart; the newer of it and the vehicle's own is in force), applied by the twin and
/// recorded in its audit log with the operator's name; the reply is the policy document.
fn set_policy(
    shared: &Shared,
    slots: &mut HashMap<String, Slot>,
    change: admin::PolicyChange,
    reply: oneshot::Sender<Result<Value, admin::AdminError>>,
) {
    use admin::AdminError;
    let admin::PolicyChange {
        vehicle,
        policy,
        operator,
    } = change;
    let Some(slot) = slots.get_mut(&vehicle) else {
        let _ = reply.send(Err(AdminError::new(
            404,
            format!("no twin {vehicle:?} on this host (`twinctl dr list` shows its twins)"),
        )));
        return;
    };
    let at = now_us();
    if let Err(e) = twinlink_share::Consent::new().set(policy.clone(), at) {
        let _ = reply.send(Err(AdminError::new(400, format!("policy refused: {e}"))));
        return;
    }
    let bytes = match twinlink_msgs::codec::encode(&policy) {
        Ok(b) => b,
        Err(e) => {
            let _ = reply.send(Err(AdminError::new(
                500,
                format!("encoding the policy: {e}"),
            )));
            return;
        }
    };
    let store = shared.store.clone();
    // Run by whoever holds the twin, in its turn: stored (durable before anything changes),
    // applied, audited; a twin that stops first drops the job, and nothing changed.
    let job: TwinJob = Box::new(move |twin, audit| {
        let result = (|| {
            let record = crate::store::OperatorPolicy {
                set_at_us: at,
                operator: operator.clone(),
                after_vehicle_policy_us: twin.sharing().newest_vehicle_policy_us(),
                policy: bytes.clone(),
            };
            store
                .set_operator_policy(twin.vehicle(), &record)
                .map_err(|e| AdminError::new(500, format!("the policy was not stored: {e}")))?;
            let rules = policy.rules.len();
            let fetch = policy.allow_autonomous_fetch;
            let origin = crate::relay::PolicyOrigin::operator(&operator, at);
            let version = twin
                .on_policy_from(policy, origin, now_us())
                .map_err(|e| AdminError::new(400, format!("policy refused: {e}")))?;
            audit
                .append(
                    Kind::Policy,
                    json!({"event": "policy_set", "source": "operator", "operator": operator,
                           "version": version, "rules": rules, "allow_autonomous_fetch": fetch}),
                    &bytes,
                )
                // On disk before the operator hears "set" (operator changes are rare).
                .and_then(|_| audit.sync())
                .map_err(|e| {
                    AdminError::new(
                        500,
                        format!("the policy is in force but the audit log refused its record: {e}"),
                    )
                })?;
            Ok(policy_document(twin))
        })();
        let _ = reply.send(result);
    });
    run_in_turn(shared, slot, job);
}

/// Runs `job` on a twin in its own turn: by its task when active, here (with its audit
/// log opened for it) when dormant. A job that cannot run is dropped, and with it its
/// reply ("try again").
fn run_in_turn(shared: &Shared, slot: &mut Slot, job: TwinJob) {
    match &mut slot.state {
        SlotState::Active(tx) => {
            let _ = tx.send(DrCommand::Run(job));
        }
        SlotState::Dormant(twin) => {
            let vehicle = slot.material.vehicle.to_string();
            let dir = twin_dir(&shared.config.audit_dir, &vehicle);
            match AuditLog::open(&dir, &slot.material.vehicle, shared.config.audit) {
                Ok(mut audit) => {
                    job(twin, &mut audit);
                    if let Err(e) = audit.close() {
                        warn!(%vehicle, error = %e, "closing the audit log failed");
                    }
                }
                Err(e) => {
                    warn!(%vehicle, error = %e, "opening the audit log for an operator's change failed; nothing changed")
                }
            }
        }
    }
}

/// An operator's new desired state for a twin: checked against the version they read,
/// stored durably, in force for the next recommendation, audited with their name.
fn set_desired(
    shared: &Shared,
    slots: &mut HashMap<String, Slot>,
    change: admin::DesiredChange,
    reply: oneshot::Sender<Result<Value, admin::AdminError>>,
) {
    use admin::AdminError;
    let Some(slot) = slots.get_mut(&change.vehicle) else {
        let _ = reply.send(Err(AdminError::new(
            404,
            format!(
                "no twin {:?} on this host (`twinctl dr list` shows its twins)",
                change.vehicle
            ),
        )));
        return;
    };
    let store = shared.store.clone();
    let host = host_name(shared);
    let job: TwinJob = Box::new(move |twin, audit| {
        let result = (|| {
            let current = twin.desired().version;
            if let Some(v) = change.if_version {
                if v != current {
                    return Err(AdminError::new(
                        409,
                        format!("the desired state is at version {current}, not {v}: read it again (`twinctl state get`) and retry"),
                    ));
                }
            }
            let desired = crate::twin::DesiredState {
                version: current + 1,
                set_at_us: now_us(),
                by: change.operator.clone(),
                max_speed_mps: change.max_speed_mps,
            };
            crate::twin::DesiredState::check(desired.max_speed_mps)
                .map_err(|e| AdminError::new(400, e))?;
            store.set_desired(twin.vehicle(), &desired).map_err(|e| {
                AdminError::new(500, format!("the desired state was not stored: {e}"))
            })?;
            twin.set_desired(desired.clone())
                .map_err(|e| AdminError::new(400, e))?;
            // Audit details hold integers and strings only.
            let cap = desired.max_speed_mps.map(|v| format!("{v}"));
            audit
                .append(
                    Kind::Policy,
                    json!({"event": "desired_set", "operator": change.operator,
                           "version": desired.version, "max_speed_mps": cap}),
                    b"",
                )
                .and_then(|_| audit.sync())
                .map_err(|e| {
                    AdminError::new(
                        500,
                        format!("the desired state is in force but the audit log refused its record: {e}"),
                    )
                })?;
            Ok(state_document(twin, host.as_deref(), None, now_us()))
        })();
        let _ = reply.send(result);
    });
    run_in_turn(shared, slot, job);
}

/// Answers a twin's state document: from its task when active (with its link), from the
/// dormant twin here.
fn get_state(
    shared: &Shared,
    slots: &HashMap<String, Slot>,
    vehicle: String,
    reply: oneshot::Sender<Option<Value>>,
) {
    match slots.get(&vehicle).map(|s| &s.state) {
        None => {
            let _ = reply.send(None);
        }
        Some(SlotState::Dormant(twin)) => {
            let _ = reply.send(Some(state_document(
                twin,
                host_name(shared).as_deref(),
                None,
                now_us(),
            )));
        }
        Some(SlotState::Active(tx)) => {
            // A twin stopping drops the request, and with it the reply: "try again".
            let _ = tx.send(DrCommand::State(host_name(shared), reply));
        }
    }
}

/// What the fleet view shows of this host: the road (each lane's centre line) and every
/// twin's state document, placed on the road where its vehicle's reported state (under the
/// vehicle's grant) says. Active twins answer from their tasks; one that does not answer
/// within a second is shown without its document.
fn view_document(shared: &Shared, slots: &HashMap<String, Slot>, reply: oneshot::Sender<Value>) {
    let host = host_name(shared);
    let road = shared.config.settings.road.clone();
    let now = now_us();
    let mut ready: Vec<Value> = Vec::new();
    let mut waiting: Vec<(String, oneshot::Receiver<Option<Value>>)> = Vec::new();
    for (vehicle, slot) in slots {
        match &slot.state {
            SlotState::Dormant(twin) => {
                let mut doc = state_document(twin, host.as_deref(), None, now);
                doc["active"] = false.into();
                ready.push(doc);
            }
            SlotState::Active(tx) => {
                let (tx2, rx2) = oneshot::channel();
                if tx.send(DrCommand::State(host.clone(), tx2)).is_ok() {
                    waiting.push((vehicle.clone(), rx2));
                }
            }
        }
    }
    tokio::spawn(async move {
        // One second for all of them together.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        for (vehicle, rx) in waiting {
            let doc = tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten();
            ready.push(match doc {
                Some(mut d) => {
                    d["active"] = true.into();
                    d
                }
                None => {
                    json!({"vehicle": vehicle, "host": host, "active": true, "error": "no answer"})
                }
            });
        }
        for doc in &mut ready {
            let place = doc["reported"]["state"]
                .as_object()
                .and_then(|s| Some((s.get("x")?.as_f64()?, s.get("y")?.as_f64()?)))
                .map(|(x, y)| {
                    let f = road.to_frenet(x, y);
                    json!({"s": f.s, "d": f.d, "lane": road.lane_of(f.d)})
                });
            doc["place"] = place.unwrap_or(Value::Null);
        }
        ready.sort_by(|a, b| a["vehicle"].as_str().cmp(&b["vehicle"].as_str()));
        let _ = reply.send(json!({"host": host, "road": road_lines(&road), "twins": ready}));
    });
}

/// The road for drawing: its length, lane count and width, and each lane's centre line in
/// the map frame (a point every 50 m at most).
fn road_lines(road: &crate::road::Road) -> Value {
    let steps = ((road.length() / 50.0).ceil() as usize).clamp(1, 2000);
    let lanes: Vec<Vec<[f64; 2]>> = (0..road.lanes() as i32)
        .map(|lane| {
            (0..=steps)
                .map(|i| {
                    let s = road.length() * i as f64 / steps as f64;
                    let (x, y, _) = road.to_map(s, road.lane_center(lane));
                    [(x * 10.0).round() / 10.0, (y * 10.0).round() / 10.0]
                })
                .collect()
        })
        .collect();
    json!({"length": road.length(), "lanes": road.lanes(), "lane_width": road.lane_width(), "centre_lines": lanes})
}

/// This host's name in its fleet, if it is in one.
fn host_name(shared: &Shared) -> Option<String> {
    match &shared.store {
        Store::Shared(s) => Some(s.view().host),
        Store::Embedded(_) => None,
    }
}

/// A twin's state as operators see it (after Eclipse Ditto's things and AWS IoT device
/// shadows): what the vehicle reported (only under its `traffic` grant to its fleet, at
/// that grant's precision), what the operator wants, both with versions, and the link.
fn state_document(
    twin: &Twin,
    host: Option<&str>,
    link: Option<&twinlink_link::LinkStats>,
    now_us: u64,
) -> Value {
    let reported = match twin.reported_for_fleet(now_us) {
        Ok(r) => json!({"version": twin.reported_version(), "state": r, "withheld": null}),
        Err(reason) => {
            json!({"version": twin.reported_version(), "state": null, "withheld": reason})
        }
    };
    let c = twin.connectivity();
    let advice = twin.last_plan().map(|p| {
        json!({"target_speed": p.target_speed, "target_lane": p.target_lane, "reason": p.reason})
    });
    json!({
        "vehicle": twin.vehicle(),
        "host": host,
        "reported": reported,
        "desired": twin.desired(),
        "advice": advice,
        "connectivity": {
            "connected": c.connected,
            "since_us": c.since_us,
            "until_us": c.until_us,
            "rtt_us": link.and_then(|l| l.rtt.smoothed_us),
            "uplink_bottleneck_bps": link.map(|l| l.peer_received.sender_bottleneck_bps),
            "downlink_bottleneck_bps": link.map(|l| l.path.bottleneck_bps),
            "last_sync_us": (twin.reported_version() > 0).then(|| twin.reported_version()),
        },
    })
}

/// A twin as a document: what the vehicle reported, what the twin estimates and advises.
fn document(twin: &Twin, now: f64, active: bool, link: Option<Value>) -> Value {
    let status = twin.status(now);
    let plan = twin.last_plan().map(|p| {
        json!({"target_speed": p.target_speed, "target_lane": p.target_lane, "lane_change": p.lane_change,
               "confidence": p.confidence, "reason_code": p.reason_code, "reason": p.reason,
               "horizon": p.horizon.iter().map(|h| json!([h.0, h.1, h.2])).collect::<Vec<_>>()})
    });
    json!({
        "vehicle": twin.vehicle(),
        "active": active,
        "reported": {"newest_state_stamp": twin.ego().newest_report()},
        "estimate": status.estimate,
        "desired": plan,
        "counters": {"states": status.states, "summaries": status.summaries,
                      "recommendations": status.recommendations, "regional_tiles": status.regional_tiles,
                      "refused": status.refused},
        "tracks": status.confirmed_tracks,
        "hazards": twin.world().hazards().iter().map(|h| json!({"id": h.id, "kind": h.kind, "s": h.s, "lane": h.lane, "source": format!("{:?}", h.source)})).collect::<Vec<_>>(),
        "sharing": {"policy_version": twin.sharing().consent().version(),
                    "fetch_allowed": twin.sharing().consent().may_fetch_autonomously(),
                    "shared_hazards": twin.sharing().active(),
                    "counters": twin.sharing().stats()},
        "link": link,
    })
}

/// One active twin: its link, its audit log, its loop. Returns the twin when it goes
/// dormant.
async fn run_twin(
    shared: Arc<Shared>,
    material: KeyMaterial,
    mut twin: Box<Twin>,
    mut commands: mpsc::UnboundedReceiver<DrCommand>,
    applying: Arc<AtomicU64>,
    sharing: Arc<AtomicBool>,
    poison: Option<u64>,
) -> (String, Box<Twin>) {
    let vehicle = material.vehicle.to_string();
    let run = twin_loop(
        &shared,
        material,
        &mut twin,
        &mut commands,
        &applying,
        &sharing,
        poison,
    );
    let result = run.await;
    // Its vehicle is not connected to this twin any more (gone, or the twin stopped).
    twin.set_connected(false, now_us());
    match result {
        Ok(()) => {}
        Err(e) => {
            shared.metrics.reject("activation_failed");
            error!(%vehicle, error = %e, "twin stopped");
        }
    }
    (vehicle, twin)
}

async fn twin_loop(
    shared: &Shared,
    material: KeyMaterial,
    twin: &mut Twin,
    commands: &mut mpsc::UnboundedReceiver<DrCommand>,
    applying: &AtomicU64,
    sharing: &AtomicBool,
    poison: Option<u64>,
) -> anyhow::Result<()> {
    let c = &shared.config;
    let vehicle_id = material.vehicle.clone();
    let vehicle: Arc<str> = Arc::from(vehicle_id.as_str());
    let resume = match shared.store.link(&vehicle)? {
        Some(r) if r.incarnation != 0 => ResumeState {
            incarnation: r.incarnation,
            rx_next: r.rx_next,
        },
        // A new incarnation is recorded with the first message made durable (every write
        // carries it): until then nothing was acknowledged as applied, and a restart may
        // as well start another incarnation. No fsync of its own at activation.
        _ => ResumeState::fresh(),
    };
    // A first activation creates the twin's signing key and log (fsyncs): off the runtime's
    // workers, so that other twins' messages do not wait behind it.
    let (dir, id, audit_settings) = (
        twin_dir(&c.audit_dir, &vehicle),
        vehicle_id.clone(),
        c.audit,
    );
    let mut audit =
        tokio::task::spawn_blocking(move || AuditLog::open(&dir, &id, audit_settings)).await??;
    let mut config = LinkConfig::new(material, c.zenoh.clone());
    config.durable_acks = true;
    // Thousands of links share the host's session: let Zenoh batch their frames.
    config.express = false;
    // Acknowledgements ride on the twin's answer (made on another task) and the durable
    // point on the next answer, rather than costing frames of their own.
    config.prompt_acks = false;
    config.ack_delay = Duration::from_millis(5);
    config.durable_ack_delay = Duration::from_millis(250);
    config.heartbeat = c.link_heartbeat;
    config.resume = Some(resume);
    let mut link = LinkEnd::open_in(&shared.hub, config).await?;
    audit.append(
        Kind::Lifecycle,
        json!({"event": "activated", "rx_next": resume.rx_next}),
        b"",
    )?;
    let (durable_tx, mut durable_rx) = mpsc::unbounded_channel::<u64>();
    // The store reports what it made durable; the twin takes those reports on its own turns
    // (with the next message, or on its tick) instead of being woken for each, and confirms
    // them at most every DURABLE_CONFIRM_EVERY, each confirmation riding on a frame.
    let mut durable = DurableConfirmations::default();
    let mut peer_alive = false;
    let mut gone_since = Instant::now();
    let mut last_advice = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut log_budget = LogBudget::new();
    let mut census = CensusState::default();
    let mut interest = FetchInterest::default();
    loop {
        tokio::select! {
            event = link.recv() => {
                let Some(event) = event else { break };
                match event {
                    LinkEvent::Message(d) => {
                        let received = Instant::now();
                        // Durable points reported since the last turn ride on this message's
                        // answer (or on the next frame).
                        durable.take(&mut durable_rx, &mut audit, &mut link, false)?;
                        let m = &d.message;
                        let quarantined = poison == Some(d.seq);
                        applying.store(d.seq, Ordering::Relaxed);
                        if !quarantined && c.chaos_panic_stream.as_deref() == Some(m.stream.as_str()) {
                            panic!("chaos: a message on stream {:?} asks this twin to panic", m.stream);
                        }
                        let mut detail = json!({"stream": m.stream, "type": m.type_name, "seq": d.seq, "bytes": m.payload.len()});
                        if quarantined {
                            detail["quarantined"] = true.into();
                        }
                        audit.append(Kind::ExchangeIn, detail, &m.payload)?;
                        shared.writer.submit(WriteOp {
                            vehicle: vehicle.clone(),
                            incarnation: resume.incarnation,
                            recommendation_seq: twin.sequence(),
                            message: StoredMessage::of(d.seq, m),
                            notify: durable_tx.clone(),
                        });
                        if quarantined {
                            // Kept (durable, audited) and counted, never applied again.
                            shared.metrics.reject("poison_message");
                            warn!(vehicle = %vehicle, seq = d.seq, stream = %m.stream, "a message that made this twin panic was quarantined");
                        } else if match apply(shared, twin, m, &mut log_budget) {
                            Applied::Recommend => true,
                            Applied::Nothing => false,
                            Applied::Policy(record) => {
                                audit.append(Kind::Policy, record, &m.payload)?;
                                false
                            }
                        } {
                            let now = now_us();
                            if let Some(r) = twin.recommend(now as f64 * 1e-6, c.min_horizon) {
                                let out = to_link(STREAM_RECOMMENDATION, Priority::OwnState, &r, now);
                                audit.append(
                                    Kind::ExchangeOut,
                                    json!({"stream": STREAM_RECOMMENDATION, "type": out.type_name, "sequence": r.sequence, "bytes": out.payload.len()}),
                                    &out.payload,
                                )?;
                                link.send(out);
                                shared.metrics.recommendations.inc();
                                shared.metrics.latency.observe(received.elapsed().as_secs_f64());
                                last_advice = Instant::now();
                            }
                        }
                        applying.store(NOT_APPLYING, Ordering::Relaxed);
                        share_out(shared, twin, &mut audit).await?;
                        sharing.store(twin.sharing().active() > 0, Ordering::Relaxed);
                        sync_deferred(shared, &mut audit)?;
                    }
                    LinkEvent::PeerUp { .. } => {
                        peer_alive = true;
                        twin.set_connected(true, now_us());
                        audit.append(Kind::Lifecycle, json!({"event": "vehicle_connected"}), b"")?;
                    }
                    LinkEvent::PeerDown { reason } => {
                        peer_alive = false;
                        twin.set_connected(false, now_us());
                        gone_since = Instant::now();
                        audit.append(Kind::Lifecycle, json!({"event": "vehicle_gone", "reason": reason}), b"")?;
                    }
                }
            }
            command = commands.recv() => {
                match command {
                    Some(DrCommand::Regional(tile)) => {
                        if let Err(e) = twin.on_regional(&tile, now_us() as f64 * 1e-6) {
                            shared.metrics.reject(e.reason());
                        }
                    }
                    Some(DrCommand::Relayed(verified)) => {
                        relay_to_vehicle(shared, twin, &verified, &mut audit, &mut link)?;
                    }
                    Some(DrCommand::Answer(query)) => {
                        answer_query(shared, twin, &query, &mut audit).await?;
                    }
                    Some(DrCommand::Run(job)) => job(twin, &mut audit),
                    Some(DrCommand::State(host, reply)) => {
                        let stats = link.stats();
                        let _ = reply.send(Some(state_document(twin, host.as_deref(), Some(&stats), now_us())));
                    }
                    Some(DrCommand::Status(reply)) => {
                        let stats = Some(serde_json::to_value(link.stats()).unwrap_or(Value::Null));
                        let _ = reply.send(document(twin, now_us() as f64 * 1e-6, true, stats));
                    }
                    Some(DrCommand::Shutdown) | None => break,
                }
            }
            _ = tick.tick() => {
                durable.take(&mut durable_rx, &mut audit, &mut link, true)?;
                share_out(shared, twin, &mut audit).await?;
                sharing.store(twin.sharing().active() > 0, Ordering::Relaxed);
                census.contribute(shared, twin, &mut audit).await?;
                interest.update(shared, twin, &vehicle);
                if !peer_alive && gone_since.elapsed() >= c.idle_after {
                    break;
                }
                // A vehicle that sends only its state still gets advice once a second.
                if peer_alive && last_advice.elapsed() >= Duration::from_secs(1) {
                    let now = now_us();
                    if let Some(r) = twin.recommend(now as f64 * 1e-6, c.min_horizon) {
                        let out = to_link(STREAM_RECOMMENDATION, Priority::OwnState, &r, now);
                        audit.append(Kind::ExchangeOut, json!({"stream": STREAM_RECOMMENDATION, "type": out.type_name, "sequence": r.sequence, "bytes": out.payload.len()}), &out.payload)?;
                        link.send(out);
                        shared.metrics.recommendations.inc();
                    }
                    last_advice = Instant::now();
                }
            }
        }
    }
    audit.append(Kind::Lifecycle, json!({"event": "deactivated"}), b"")?;
    audit.close()?;
    link.close().await;
    Ok(())
}

/// Runs the fsync of a checkpoint the audit log just wrote on a blocking thread (a failure
/// is logged and counted: the records are with the operating system already).
fn sync_deferred(shared: &Shared, audit: &mut AuditLog) -> anyhow::Result<()> {
    if let Some(job) = audit.take_deferred_sync()? {
        let metrics = shared.metrics.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = job() {
                metrics.reject("audit_sync_failed");
                error!(error = %e, "syncing an audit checkpoint failed");
            }
        });
    }
    Ok(())
}

/// Longest time between a durable point reported by the store and its confirmation to the
/// link while messages arrive (below the link's 250 ms `durable_ack_delay`, so that it
/// rides on an answer); when they stop, the twin's half-second tick confirms the rest.
const DURABLE_CONFIRM_EVERY: Duration = Duration::from_millis(200);

/// The durable points a twin's store writes reported, confirmed to its link in batches.
#[derive(Default)]
struct DurableConfirmations {
    newest: Option<u64>,
    last_confirmed: Option<Instant>,
}

impl DurableConfirmations {
    /// Takes the store's reports; confirms the newest to the link when `force`, or when the
    /// last confirmation is `DURABLE_CONFIRM_EVERY` old. The audit log reaches the operating
    /// system first, so that nothing acknowledged is missing from the history.
    fn take(
        &mut self,
        reports: &mut mpsc::UnboundedReceiver<u64>,
        audit: &mut AuditLog,
        link: &mut LinkEnd,
        force: bool,
    ) -> anyhow::Result<()> {
        while let Ok(seq) = reports.try_recv() {
            self.newest = Some(self.newest.map_or(seq, |n| n.max(seq)));
        }
        let due = force
            || self
                .last_confirmed
                .is_none_or(|t| t.elapsed() >= DURABLE_CONFIRM_EVERY);
        if let (Some(seq), true) = (self.newest, due) {
            audit.flush()?;
            link.confirm_durable(seq);
            self.newest = None;
            self.last_confirmed = Some(Instant::now());
        }
        Ok(())
    }
}

/// What applying one message calls for.
enum Applied {
    /// Nothing more.
    Nothing,
    /// A recommendation (after a summary).
    Recommend,
    /// An audit record of the policy now in force.
    Policy(Value),
}

/// Applies one message to the twin.
fn apply(
    shared: &Shared,
    twin: &mut Twin,
    m: &twinlink_link::Message,
    log: &mut LogBudget,
) -> Applied {
    let t = m.type_name.as_str();
    let result = if t == VehicleState::TYPE_NAME {
        from_link::<VehicleState>(m)
            .map_err(|e| ("undecodable", e.to_string()))
            .and_then(|s| twin.on_state(&s).map_err(|e| (e.reason(), e.to_string())))
            .map(|_| Applied::Nothing)
    } else if t == PerceptionSummary::TYPE_NAME {
        from_link::<PerceptionSummary>(m)
            .map_err(|e| ("undecodable", e.to_string()))
            .and_then(|s| twin.on_summary(&s).map_err(|e| (e.reason(), e.to_string())))
            .map(|_| Applied::Recommend)
    } else if t == Incident::TYPE_NAME {
        from_link::<Incident>(m)
            .map_err(|e| ("undecodable", e.to_string()))
            .and_then(|i| {
                twin.on_vehicle_incident(&i, now_us() as f64 * 1e-6)
                    .map_err(|e| ("invalid_incident", e.to_string()))
            })
            .map(|_| Applied::Nothing)
    } else if t == SharingPolicy::TYPE_NAME {
        // Kept durably as the stream's newest message (restored after a restart) and
        // enforced by the twin's consent from now on.
        from_link::<SharingPolicy>(m)
            .map_err(|e| ("undecodable", e.to_string()))
            .and_then(|p| {
                let rules = p.rules.len();
                let fetch = p.allow_autonomous_fetch;
                let now = now_us();
                twin.on_policy_from(
                    p,
                    crate::relay::PolicyOrigin::vehicle(now, m.created_us),
                    now,
                )
                .map(|version| {
                    Applied::Policy(
                        json!({"event": "policy_set", "source": "vehicle", "version": version,
                                               "rules": rules, "allow_autonomous_fetch": fetch}),
                    )
                })
                .map_err(|e| ("invalid_policy", e.to_string()))
            })
    } else {
        Err((
            "unknown_type",
            format!("no handler for {t} on stream {:?}", m.stream),
        ))
    };
    match result {
        Ok(applied) => {
            shared.metrics.applied(t);
            applied
        }
        Err((reason, text)) => {
            shared.metrics.reject(reason);
            if log.allow(twin.vehicle()) {
                warn!(vehicle = twin.vehicle(), reason, "{text}");
            }
            Applied::Nothing
        }
    }
}

/// Discloses what the twin learned (see [`crate::relay`]): each permitted hazard is
/// published under its name and recorded in the twin's audit log with the pseudonym and
/// disclosure id the receivers record; a denial is recorded with its reason (once per
/// hazard and reason) and nothing leaves.
async fn share_out(shared: &Shared, twin: &mut Twin, audit: &mut AuditLog) -> anyhow::Result<()> {
    let Some(share) = &shared.config.share else {
        // Nobody to share with: the changes are dropped (the twin bounds them anyway).
        let _ = twin.take_hazard_changes();
        return Ok(());
    };
    let now = now_us();
    for outcome in twin.share(&share.identity.issuer, now) {
        match outcome {
            Outcome::Disclosed(d) => {
                let tile = keys::RegionTile::new(&d.name.tile.to_string())?;
                let key = keys::share(d.name.category.name(), &tile)?;
                audit.append(
                    Kind::Disclosure,
                    json!({"direction": "out", "name": d.name.to_string(), "audience": "any_twin",
                           "pseudonym": d.pseudonym, "disclosure_id": d.disclosure_id,
                           "hazard": d.hazard_id, "disclosed_as": d.disclosed_id,
                           "withdrawal": d.withdrawal, "precision_m": d.precision_m.to_string(), "at_us": now}),
                    &d.bytes,
                )?;
                HostMetrics::count(&shared.metrics.disclosures, "result", "disclosed");
                if let Some(origin) = shared.config.cits_origin.filter(|_| !d.withdrawal) {
                    match hazard_denm(&d, origin, now) {
                        Ok(denm) => {
                            audit.append(
                                Kind::Disclosure,
                                json!({"direction": "out", "name": format!("cits/denm-out/{}", tile.as_str()),
                                       "audience": "any", "format": "denm", "pseudonym": d.pseudonym,
                                       "disclosure_id": d.disclosure_id, "at_us": now}),
                                &denm,
                            )?;
                            let result =
                                match shared.session.put(keys::cits_denm_out(&tile), denm).await {
                                    Ok(()) => "denm",
                                    Err(_) => "denm_publish_failed",
                                };
                            HostMetrics::count(&shared.metrics.disclosures, "result", result);
                        }
                        Err(e) => {
                            HostMetrics::count(
                                &shared.metrics.disclosures,
                                "result",
                                "denm_failed",
                            );
                            warn!(vehicle = twin.vehicle(), error = %e, "a disclosed hazard did not make a DENM");
                        }
                    }
                }
                if let Err(e) = shared.session.put(key, d.bytes).await {
                    HostMetrics::count(&shared.metrics.disclosures, "result", "publish_failed");
                    warn!(vehicle = twin.vehicle(), error = %e, "publishing a disclosure failed");
                    // The record above says what was decided; this one that it did not leave.
                    record_not_sent(audit, "publish_failed", &d.pseudonym, d.disclosure_id)?;
                }
            }
            Outcome::Denied {
                hazard_id,
                reason,
                repeated,
            } => record_denial(shared, audit, &hazard_id, reason, repeated, None, now)?,
        }
    }
    Ok(())
}

/// Counts a consent's denial and records it in the audit log unless it repeats the last
/// one of that hazard; `query_audience` for a denial in answer to a query.
fn record_denial(
    shared: &Shared,
    audit: &mut AuditLog,
    hazard_id: &str,
    reason: &str,
    repeated: bool,
    query_audience: Option<twinlink_share::Audience>,
    now: u64,
) -> anyhow::Result<()> {
    HostMetrics::count(&shared.metrics.disclosures, "result", reason);
    if !repeated {
        let mut detail = json!({"direction": "out", "decision": "denied", "reason": reason,
                                "category": SHARE_CATEGORY, "hazard": hazard_id, "at_us": now});
        if let Some(audience) = query_audience {
            detail["via"] = "query".into();
            detail["audience"] = audience.as_str().into();
        }
        audit.append(Kind::Disclosure, detail, b"")?;
    }
    Ok(())
}

/// Records that a disclosure already recorded as decided did not leave, and why.
fn record_not_sent(
    audit: &mut AuditLog,
    reason: &str,
    pseudonym: &str,
    disclosure_id: u64,
) -> anyhow::Result<()> {
    audit.append(
        Kind::Disclosure,
        json!({"direction": "out", "decision": "not_sent", "reason": reason,
               "pseudonym": pseudonym, "disclosure_id": disclosure_id, "at_us": now_us()}),
        b"",
    )?;
    Ok(())
}

/// An active twin's census contributions.
#[derive(Default)]
struct CensusState {
    last: Option<Instant>,
    /// The window of the last contribution recorded in the audit log.
    audited_window: Option<u64>,
}

impl CensusState {
    /// Every [`CENSUS_PERIOD`]: the twin's census sample, if its vehicle consents, put on
    /// `twinlink/v1/census/<tile>`; the first of each window is recorded in the audit log.
    async fn contribute(
        &mut self,
        shared: &Shared,
        twin: &Twin,
        audit: &mut AuditLog,
    ) -> anyhow::Result<()> {
        let Some(window) = shared.config.census_window else {
            return Ok(());
        };
        if self.last.is_some_and(|t| t.elapsed() < CENSUS_PERIOD) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let now = now_us();
        let windows = twinlink_share::census::Windows::new(window.as_micros() as u64);
        let grid = shared
            .config
            .share
            .as_ref()
            .map(|s| s.identity.grid)
            .unwrap_or_default();
        let report = match twin.census(now, &windows, &grid) {
            Ok(r) => r,
            Err(reason) => {
                HostMetrics::count(&shared.metrics.census, "result", reason);
                return Ok(());
            }
        };
        let tile = keys::RegionTile::new(&report.tile_id)?;
        let bytes = twinlink_msgs::codec::encode(&report)?;
        let index = windows.index_of(now);
        if self.audited_window != Some(index) {
            self.audited_window = Some(index);
            audit.append(
                Kind::Disclosure,
                json!({"direction": "out", "name": format!("census/{}", report.tile_id),
                       "audience": "regional_service", "window_start_us": windows.start_of(now),
                       "contributor": report.contributor, "at_us": now}),
                &bytes,
            )?;
        }
        match shared.session.put(keys::census(&tile), bytes).await {
            Ok(()) => HostMetrics::count(&shared.metrics.census, "result", "sent"),
            Err(e) => {
                HostMetrics::count(&shared.metrics.census, "result", "publish_failed");
                warn!(vehicle = twin.vehicle(), error = %e, "publishing a census sample failed");
            }
        }
        Ok(())
    }
}

/// A disclosed hazard as a standard DENM (EN 302 637-3, UPER): what the twin disclosed
/// (coarsened, its disclosed id), sent by the twin's pseudonym (its first 8 hex digits are
/// the station id) as one event per disclosed id.
fn hazard_denm(
    d: &crate::relay::Outgoing,
    origin: twinlink_cits::GeoOrigin,
    now_us: u64,
) -> Result<Vec<u8>, twinlink_cits::CitsError> {
    use twinlink_cits::denm::{encode_denm, incident_to_denm, DenmContext};
    let station_id = d
        .pseudonym
        .get(..8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    let mut ctx =
        DenmContext::road_side_unit(station_id, origin, twinlink_share::time::ros_time(now_us));
    // One action per hazard: a stable number from its disclosed id.
    ctx.sequence_number = d
        .disclosed_id
        .bytes()
        .fold(0u16, |h, b| h.wrapping_mul(31).wrapping_add(u16::from(b)));
    encode_denm(&incident_to_denm(&d.incident, &ctx)?)
}

/// Offers another twin's verified disclosure to this twin; what it takes (hazards on its
/// route) is recorded in its audit log and sent to its vehicle over the link.
fn relay_to_vehicle(
    shared: &Shared,
    twin: &mut Twin,
    verified: &Verified,
    audit: &mut AuditLog,
    link: &mut LinkEnd,
) -> anyhow::Result<()> {
    let now = now_us();
    let observation = match twin.on_relayed(verified, now as f64 * 1e-6) {
        Ok(o) if o.hazards.is_empty() => {
            HostMetrics::count(&shared.metrics.relay_ignored, "reason", "off_route");
            return Ok(());
        }
        Ok(o) => o,
        Err(why) => {
            HostMetrics::count(&shared.metrics.relay_ignored, "reason", why.as_str());
            return Ok(());
        }
    };
    let out = to_link(STREAM_RELAYED, Priority::Hazard, &observation, now);
    audit.append(
        Kind::Disclosure,
        json!({"direction": "in", "fleet": verified.fleet_id, "audience": verified.audience.as_str(),
               "pseudonym": verified.pseudonym, "disclosure_id": observation.disclosure_id,
               "name": format!("{SHARE_CATEGORY}/{}", observation.region_tile),
               "hazards": observation.hazards.len(), "at_us": now}),
        &out.payload,
    )?;
    audit.append(
        Kind::ExchangeOut,
        json!({"stream": STREAM_RELAYED, "type": out.type_name, "bytes": out.payload.len()}),
        &out.payload,
    )?;
    link.send(out);
    shared.metrics.relay_delivered.inc();
    Ok(())
}

/// The folder of one twin's files (its audit log).
pub fn twin_dir(data_dir: &Path, vehicle: &str) -> PathBuf {
    data_dir.join(vehicle)
}
