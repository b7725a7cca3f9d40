//! A fleet of DR hosts over one PostgreSQL database: the twins' durable state where every
//! host can read it, and which host owns which twins.
//!
//! **Why PostgreSQL.** A twin must move to another host when its host dies, with nothing
//! lost that its vehicle saw acknowledged. That needs a store that survives the host,
//! acknowledges a write only once it is durable, and can fence a host that lost its
//! ownership. PostgreSQL (with `synchronous_commit = on`, its default) acknowledges a
//! commit after its WAL is flushed, is run by most operators already (with streaming
//! replication for the database's own failover), and its session advisory locks are
//! released the moment the session ends: a host killed with `kill -9` drops its TCP
//! connection, and its twins are free at once. Zenoh's storages were not chosen: their
//! puts are not acknowledged by the storage, replication is eventual and keeps the latest
//! value only, and their persistent back ends are plugins without fsync.
//!
//! **Ownership.** Vehicles fall into [`DEFAULT_SHARDS`] shards by a hash of their id
//! ([`shard_of`]). A host owns a shard while its *owner session* (one connection) holds
//! the shard's advisory lock, and it writes a twin's state only on that same session and
//! only while it holds the lock of the twin's shard: a host that lost a shard (its
//! connection broke, it was drained) cannot write to it any more, so two hosts never both
//! write one twin (fencing by construction). Each host also holds a membership lock of its
//! own name; every 500 ms it counts the live members and takes free shards up to its fair
//! share, or gives shards back above it (a host that joins gets its share, a host that
//! died leaves its shards free for the others).
//!
//! Tables (created when missing):
//!
//! | table | key | what |
//! |---|---|---|
//! | `twin_links` | vehicle | where its link stands ([`LinkRecord`]) |
//! | `twin_latest` | vehicle, stream | the newest message of each stream |
//! | `twin_journal` | entry id | every message, the newest `retention` of the fleet |
//! | `operator_policies` | vehicle | [`OperatorPolicy`] (postcard) |
//! | `desired_states` | vehicle | [`DesiredState`] (JSON): what an operator wants of the twin |
//! | `shard_owners` | shard | the host that took it last, its epoch (taken how often) and when |
//! | `dr_hosts` | host name | its admin address, when it started, whether it drains |

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::store::{
    DesiredState, LinkRecord, OperatorPolicy, StoreError, StoredMessage, TwinRecord, WriteOp,
};

/// Shards of a fleet unless configured otherwise (every host of a fleet must use the same
/// number; the database records it and refuses another).
pub const DEFAULT_SHARDS: u32 = 64;

/// How often a host looks at the fleet (free shards, live members).
pub const OWNERSHIP_TICK: Duration = Duration::from_millis(500);

/// First key of the advisory locks of shards (the second is the shard).
const SHARD_LOCK: i32 = 0x7477_0001;
/// First key of the advisory locks of hosts' membership (the second is [`host_key`]).
const MEMBER_LOCK: i32 = 0x7477_0002;
/// First key of the lock that serializes hosts preparing the tables.
const SCHEMA_LOCK: i32 = 0x7477_0003;

/// The shard of `vehicle` among `shards` (SHA-256 of the id: the same in every host and
/// every version).
pub fn shard_of(vehicle: &str, shards: u32) -> u32 {
    let d = Sha256::digest(vehicle.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % shards.max(1)
}

/// The membership lock key of host `name` (non-negative, so that `pg_locks` shows it as
/// it is).
pub fn host_key(name: &str) -> i32 {
    let d = Sha256::digest(name.as_bytes());
    (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) & 0x7fff_ffff) as i32
}

/// How many shards each of `live` hosts should own.
pub fn fair_share(shards: u32, live: u32) -> u32 {
    shards.div_ceil(live.max(1))
}

/// What one ownership step does: which free shards to try, how many owned ones to give
/// back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Free shards to try to lock, in order, at most `want` of them succeeding.
    pub try_free: Vec<u32>,
    /// How many more shards the host wants.
    pub want: u32,
    /// How many owned shards to give back.
    pub give_back: u32,
}

/// Decides a step: a host owning `owned` shards (of which `releasing` are being given
/// back) aims at `target`; `free` are the shards no host holds, tried from `start` on (a
/// per-host offset, so that hosts taking shards at once mostly try different ones).
pub fn step(owned: u32, releasing: u32, target: u32, free: &[u32], start: usize) -> Step {
    let keeping = owned.saturating_sub(releasing);
    let want = target.saturating_sub(keeping);
    let mut try_free = Vec::with_capacity(free.len());
    if want > 0 && !free.is_empty() {
        let n = free.len();
        try_free.extend((0..n).map(|i| free[(start + i) % n]));
    }
    Step {
        try_free,
        want,
        give_back: keeping.saturating_sub(target),
    }
}

/// A change of what this host owns, for the host's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipEvent {
    /// These shards are now this host's: serve their twins.
    Gained(Vec<u32>),
    /// These shards were lost (the owner session broke): stop their twins at once; their
    /// writes are refused already.
    Lost(Vec<u32>),
    /// Give these shards back: stop their twins, then call [`SharedStore::released`].
    Release(Vec<u32>),
}

/// One host of the fleet as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FleetHost {
    /// Its name (`--host-name`).
    pub name: String,
    /// Its admin endpoint.
    pub admin: String,
    /// Whether it holds its membership lock now (it is running and not drained).
    pub live: bool,
    /// Whether it was told to drain.
    pub draining: bool,
    /// When it started [µs since the Unix epoch].
    pub started_us: u64,
    /// Shards it owns now.
    pub shards: u32,
}

/// This host's own view of its ownership (for the admin endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OwnershipView {
    /// The host's name.
    pub host: String,
    /// Whether the owner session is connected.
    pub connected: bool,
    /// Whether the host is draining.
    pub draining: bool,
    /// Shards owned, with the epoch of each.
    pub shards: BTreeMap<u32, u64>,
    /// Live hosts at the last step.
    pub live_hosts: u32,
}

/// How a host joins a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `postgresql://` URL (or key=value connection string) of the database.
    pub url: String,
    /// This host's name, unique in the fleet.
    pub host_name: String,
    /// Its admin endpoint, recorded for `twinctl` (empty: none).
    pub admin: String,
    /// Shards of the fleet.
    pub shards: u32,
    /// Messages kept in the fleet's journal.
    pub retention: u64,
}

type ReaderJob = Box<dyn FnOnce(&mut Option<Client>, &str) + Send>;

/// Per twin, the newest sequence number a commit made durable.
pub type Durable = Vec<(Arc<str>, u64)>;

enum OwnerJob {
    /// The batch goes back with the result, so that the writer can notify its twins
    /// without a copy of every message.
    Commit(
        Vec<WriteOp>,
        std_mpsc::Sender<(Vec<WriteOp>, Result<Durable, StoreError>)>,
    ),
    SetOperatorPolicy(
        String,
        OperatorPolicy,
        std_mpsc::Sender<Result<(), StoreError>>,
    ),
    SetDesired(
        String,
        DesiredState,
        std_mpsc::Sender<Result<(), StoreError>>,
    ),
    Released(Vec<u32>),
    Drain(std_mpsc::Sender<()>),
}

/// The fleet's database as one host uses it: reads on a session of their own, writes and
/// ownership on the owner session. Cheap to clone.
#[derive(Clone)]
pub struct SharedStore {
    reader: std_mpsc::Sender<ReaderJob>,
    owner: Option<std_mpsc::Sender<OwnerJob>>,
    view: Arc<Mutex<OwnershipView>>,
    shards: u32,
}

fn pg(e: postgres::Error) -> StoreError {
    StoreError::Shared(e.to_string())
}

fn connect(url: &str) -> Result<Client, StoreError> {
    Client::connect(url, NoTls).map_err(pg)
}

const SCHEMA: &str = "
create table if not exists twinlink_meta (key text primary key, value text not null);
create table if not exists twin_links (vehicle text primary key, incarnation bigint not null,
  rx_next bigint not null, recommendation_seq bigint not null);
create table if not exists twin_latest (vehicle text not null, stream text not null,
  seq bigint not null, type_name text not null, created_us bigint not null,
  payload bytea not null, primary key (vehicle, stream));
create table if not exists twin_journal (id bigserial primary key, vehicle text not null,
  seq bigint not null, stream text not null, type_name text not null,
  created_us bigint not null, payload bytea not null);
create index if not exists twin_journal_vehicle on twin_journal (vehicle, seq);
create table if not exists operator_policies (vehicle text primary key, record bytea not null);
create table if not exists desired_states (vehicle text primary key, record jsonb not null);
create table if not exists shard_owners (shard int primary key, host text not null,
  epoch bigint not null, since_us bigint not null);
create table if not exists dr_hosts (name text primary key, lock_key int not null,
  admin text not null, started_us bigint not null, draining boolean not null);
";

/// Creates the tables if missing and checks the fleet's shard count (several hosts may
/// do this at once: a transaction-scoped advisory lock serializes them).
fn prepare(client: &mut Client, shards: u32) -> Result<(), StoreError> {
    let mut txn = client.transaction().map_err(pg)?;
    txn.execute("select pg_advisory_xact_lock($1, 0)", &[&SCHEMA_LOCK])
        .map_err(pg)?;
    txn.batch_execute(SCHEMA).map_err(pg)?;
    txn.execute(
        "insert into twinlink_meta values ('shards', $1) on conflict (key) do nothing",
        &[&shards.to_string()],
    )
    .map_err(pg)?;
    let stored: String = txn
        .query_one("select value from twinlink_meta where key = 'shards'", &[])
        .map_err(pg)?
        .get(0);
    if stored != shards.to_string() {
        return Err(StoreError::Shared(format!(
            "the fleet's database has {stored} shards and this host was started with {shards}; every host of a fleet must use the same --shards"
        )));
    }
    txn.commit().map_err(pg)
}

impl SharedStore {
    /// Connects to the database for reading only (`twinctl`, tests): commits are refused.
    pub fn open_reader(url: &str) -> Result<SharedStore, StoreError> {
        let mut client = connect(url)?;
        let shards: u32 = client
            .query_opt("select value from twinlink_meta where key = 'shards'", &[])
            .ok()
            .flatten()
            .and_then(|r| r.get::<_, String>(0).parse().ok())
            .unwrap_or(DEFAULT_SHARDS);
        Ok(SharedStore {
            reader: spawn_reader(url.to_string(), Some(client)),
            owner: None,
            view: Arc::default(),
            shards,
        })
    }

    /// Joins the fleet: prepares the database, starts the owner session (which takes
    /// shards from now on) and returns the store with the ownership events.
    pub fn join(
        config: FleetConfig,
    ) -> Result<(SharedStore, mpsc::UnboundedReceiver<OwnershipEvent>), StoreError> {
        if config.shards == 0 {
            return Err(StoreError::Shared("--shards must be at least 1".into()));
        }
        let mut client = connect(&config.url)?;
        prepare(&mut client, config.shards)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (owner_tx, owner_rx) = std_mpsc::channel();
        let view = Arc::new(Mutex::new(OwnershipView {
            host: config.host_name.clone(),
            ..OwnershipView::default()
        }));
        let mut session = OwnerSession {
            start: host_key(&config.host_name) as usize,
            config: config.clone(),
            client: None,
            owned: BTreeMap::new(),
            releasing: BTreeSet::new(),
            draining: false,
            events: events_tx,
            view: view.clone(),
            commits: 0,
        };
        // The first connection is made here, so that a wrong URL or a name in use fails
        // the start rather than a background thread.
        session.connect()?;
        std::thread::Builder::new()
            .name("dr-fleet-owner".into())
            .spawn(move || session.run(owner_rx))
            .expect("spawning the owner session");
        Ok((
            SharedStore {
                reader: spawn_reader(config.url.clone(), Some(client)),
                owner: Some(owner_tx),
                view,
                shards: config.shards,
            },
            events_rx,
        ))
    }

    /// Shards of the fleet.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// This host's ownership now.
    pub fn view(&self) -> OwnershipView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = std_mpsc::channel();
        let job: ReaderJob = Box::new(move |client, url| {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                *client = None;
                match connect(url) {
                    Ok(c) => *client = Some(c),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            let c = client.as_mut().expect("connected above");
            let _ = tx.send(f(c));
        });
        self.reader
            .send(job)
            .map_err(|_| StoreError::Shared("the reading session stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Shared("the reading session stopped".into()))?
    }

    /// Everything kept of each of `vehicles` (one query for all).
    pub fn twins(&self, vehicles: &[String]) -> Result<HashMap<String, TwinRecord>, StoreError> {
        let vehicles = vehicles.to_vec();
        self.read(move |c| {
            let mut out: HashMap<String, TwinRecord> = HashMap::new();
            for row in c
                .query(
                    "select vehicle, incarnation, rx_next, recommendation_seq from twin_links where vehicle = any($1)",
                    &[&vehicles],
                )
                .map_err(pg)?
            {
                out.entry(row.get(0)).or_default().link = LinkRecord {
                    incarnation: row.get::<_, i64>(1) as u64,
                    rx_next: row.get::<_, i64>(2) as u64,
                    recommendation_seq: row.get::<_, i64>(3) as u64,
                };
            }
            for row in c
                .query(
                    "select vehicle, seq, stream, type_name, created_us, payload from twin_latest where vehicle = any($1) order by seq",
                    &[&vehicles],
                )
                .map_err(pg)?
            {
                out.entry(row.get(0)).or_default().latest.push(message_of(&row, 1));
            }
            Ok(out)
        })
    }

    /// Everything kept of `vehicle`.
    pub fn twin(&self, vehicle: &str) -> Result<Option<TwinRecord>, StoreError> {
        Ok(self.twins(&[vehicle.to_string()])?.remove(vehicle))
    }

    /// The policies operators set for each of `vehicles`.
    pub fn operator_policies(
        &self,
        vehicles: &[String],
    ) -> Result<HashMap<String, OperatorPolicy>, StoreError> {
        let vehicles = vehicles.to_vec();
        self.read(move |c| {
            let mut out = HashMap::new();
            for row in c
                .query(
                    "select vehicle, record from operator_policies where vehicle = any($1)",
                    &[&vehicles],
                )
                .map_err(pg)?
            {
                let vehicle: String = row.get(0);
                let bytes: Vec<u8> = row.get(1);
                let policy =
                    postcard::from_bytes(&bytes).map_err(|source| StoreError::Corrupt {
                        what: "operator policy",
                        vehicle: vehicle.clone(),
                        source,
                    })?;
                out.insert(vehicle, policy);
            }
            Ok(out)
        })
    }

    /// What operators want of each of `vehicles`.
    pub fn desired_states(
        &self,
        vehicles: &[String],
    ) -> Result<HashMap<String, DesiredState>, StoreError> {
        let vehicles = vehicles.to_vec();
        self.read(move |c| {
            let mut out = HashMap::new();
            for row in c
                .query(
                    "select vehicle, record::text from desired_states where vehicle = any($1)",
                    &[&vehicles],
                )
                .map_err(pg)?
            {
                let vehicle: String = row.get(0);
                let text: String = row.get(1);
                let desired = crate::store::decode_desired(&vehicle, text.as_bytes())?;
                out.insert(vehicle, desired);
            }
            Ok(out)
        })
    }

    /// Records what an operator wants of `vehicle`, durably (refused unless this host owns
    /// the vehicle's shard).
    pub fn set_desired(&self, vehicle: &str, desired: &DesiredState) -> Result<(), StoreError> {
        let (tx, rx) = std_mpsc::channel();
        self.owner()?
            .send(OwnerJob::SetDesired(vehicle.into(), desired.clone(), tx))
            .map_err(|_| StoreError::Shared("the owner session stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Shared("the owner session stopped".into()))?
    }

    /// The policy an operator last set for `vehicle`.
    pub fn operator_policy(&self, vehicle: &str) -> Result<Option<OperatorPolicy>, StoreError> {
        Ok(self
            .operator_policies(&[vehicle.to_string()])?
            .remove(vehicle))
    }

    /// Messages of `vehicle` still in the journal from sequence number `from` on, in order.
    pub fn messages(&self, vehicle: &str, from: u64) -> Result<Vec<StoredMessage>, StoreError> {
        let vehicle = vehicle.to_string();
        self.read(move |c| {
            let rows = c
                .query(
                    "select distinct on (seq) seq, stream, type_name, created_us, payload from twin_journal where vehicle = $1 and seq >= $2 order by seq, id desc",
                    &[&vehicle, &(from as i64)],
                )
                .map_err(pg)?;
            Ok(rows.iter().map(|r| message_of(r, 0)).collect())
        })
    }

    /// The hosts of the fleet and the shards each owns.
    pub fn hosts(&self) -> Result<Vec<FleetHost>, StoreError> {
        self.read(|c| {
            let rows = c
                .query(
                    "select h.name, h.admin, h.started_us, h.draining,
                        exists (select 1 from pg_locks l where l.locktype = 'advisory'
                                and l.classid = $1::int::oid and l.objid = h.lock_key::oid
                                and l.objsubid = 2 and l.granted),
                        (select count(*) from shard_owners s where s.host = h.name
                           and exists (select 1 from pg_locks l where l.locktype = 'advisory'
                                and l.classid = $2::int::oid and l.objid = s.shard::oid
                                and l.objsubid = 2 and l.granted))
                     from dr_hosts h order by h.name",
                    &[&MEMBER_LOCK, &SHARD_LOCK],
                )
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| FleetHost {
                    name: r.get(0),
                    admin: r.get(1),
                    started_us: r.get::<_, i64>(2) as u64,
                    draining: r.get(3),
                    live: r.get(4),
                    shards: r.get::<_, i64>(5) as u32,
                })
                .collect())
        })
    }

    /// The host that owns `vehicle`'s shard now, if any.
    pub fn owner_of(&self, vehicle: &str) -> Result<Option<String>, StoreError> {
        let shard = shard_of(vehicle, self.shards) as i32;
        self.read(move |c| {
            let row = c
                .query_opt(
                    "select host from shard_owners s where shard = $1 and exists (
                        select 1 from pg_locks l where l.locktype = 'advisory'
                        and l.classid = $2::int::oid and l.objid = s.shard::oid
                        and l.objsubid = 2 and l.granted)",
                    &[&shard, &SHARD_LOCK],
                )
                .map_err(pg)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn owner(&self) -> Result<&std_mpsc::Sender<OwnerJob>, StoreError> {
        self.owner
            .as_ref()
            .ok_or_else(|| StoreError::Shared("this store was opened for reading only".into()))
    }

    /// Commits `ops` of the shards this host owns, in one transaction on the owner
    /// session; returns, per twin, the newest durable sequence number. Ops of shards it
    /// does not own are refused (not written, not reported): their vehicles resend them
    /// to the shard's owner.
    pub fn commit(&self, ops: &[WriteOp]) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        self.commit_batch(ops.to_vec()).1
    }

    /// [`SharedStore::commit`] of a batch handed over and given back (the writer's path:
    /// the messages cross to the owner session without being copied).
    pub fn commit_batch(&self, ops: Vec<WriteOp>) -> (Vec<WriteOp>, Result<Durable, StoreError>) {
        let stopped = || StoreError::Shared("the owner session stopped".into());
        let owner = match self.owner() {
            Ok(o) => o,
            Err(e) => return (ops, Err(e)),
        };
        let (tx, rx) = std_mpsc::channel();
        if let Err(std_mpsc::SendError(OwnerJob::Commit(ops, _))) =
            owner.send(OwnerJob::Commit(ops, tx))
        {
            return (ops, Err(stopped()));
        }
        rx.recv().unwrap_or_else(|_| (Vec::new(), Err(stopped())))
    }

    /// Where `vehicle`'s link stands (one read of its link record, not of its messages).
    pub fn link(&self, vehicle: &str) -> Result<Option<LinkRecord>, StoreError> {
        let vehicle = vehicle.to_string();
        self.read(move |c| {
            let row = c
                .query_opt(
                    "select incarnation, rx_next, recommendation_seq from twin_links where vehicle = $1",
                    &[&vehicle],
                )
                .map_err(pg)?;
            Ok(row.map(|r| LinkRecord {
                incarnation: r.get::<_, i64>(0) as u64,
                rx_next: r.get::<_, i64>(1) as u64,
                recommendation_seq: r.get::<_, i64>(2) as u64,
            }))
        })
    }

    /// Records the policy an operator set for `vehicle`, durably (refused unless this host
    /// owns the vehicle's shard).
    pub fn set_operator_policy(
        &self,
        vehicle: &str,
        policy: &OperatorPolicy,
    ) -> Result<(), StoreError> {
        let (tx, rx) = std_mpsc::channel();
        self.owner()?
            .send(OwnerJob::SetOperatorPolicy(
                vehicle.into(),
                policy.clone(),
                tx,
            ))
            .map_err(|_| StoreError::Shared("the owner session stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Shared("the owner session stopped".into()))?
    }

    /// The host's twins of `shards` have stopped: unlock them for other hosts.
    pub fn released(&self, shards: Vec<u32>) {
        if let Ok(owner) = self.owner() {
            let _ = owner.send(OwnerJob::Released(shards));
        }
    }

    /// Drains this host: it leaves the fleet's membership, gives back every shard and
    /// takes none again. Returns once the owner session took the request.
    pub fn drain(&self) -> Result<(), StoreError> {
        let (tx, rx) = std_mpsc::channel();
        self.owner()?
            .send(OwnerJob::Drain(tx))
            .map_err(|_| StoreError::Shared("the owner session stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Shared("the owner session stopped".into()))
    }
}

fn message_of(row: &postgres::Row, at: usize) -> StoredMessage {
    StoredMessage {
        seq: row.get::<_, i64>(at) as u64,
        stream: row.get(at + 1),
        type_name: row.get(at + 2),
        created_us: row.get::<_, i64>(at + 3) as u64,
        payload: row.get(at + 4),
    }
}

fn spawn_reader(url: String, client: Option<Client>) -> std_mpsc::Sender<ReaderJob> {
    let (tx, rx) = std_mpsc::channel::<ReaderJob>();
    std::thread::Builder::new()
        .name("dr-fleet-reader".into())
        .spawn(move || {
            let mut client = client;
            while let Ok(job) = rx.recv() {
                job(&mut client, &url);
            }
        })
        .expect("spawning the reading session");
    tx
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The owner session: the one connection whose advisory locks are the host's ownership,
/// and on which every write is made.
struct OwnerSession {
    config: FleetConfig,
    start: usize,
    client: Option<Client>,
    owned: BTreeMap<u32, u64>,
    releasing: BTreeSet<u32>,
    draining: bool,
    events: mpsc::UnboundedSender<OwnershipEvent>,
    view: Arc<Mutex<OwnershipView>>,
    commits: u64,
}

/// Commits between two trims of the journal.
const TRIM_EVERY: u64 = 64;

impl OwnerSession {
    /// Connects and takes the membership lock of the host's name.
    fn connect(&mut self) -> Result<(), StoreError> {
        let mut client = connect(&self.config.url)?;
        let key = host_key(&self.config.host_name);
        let got: bool = client
            .query_one("select pg_try_advisory_lock($1, $2)", &[&MEMBER_LOCK, &key])
            .map_err(pg)?
            .get(0);
        if !got {
            return Err(StoreError::Shared(format!(
                "host name {:?} is in use by a running host of this fleet (give each host its own --host-name)",
                self.config.host_name
            )));
        }
        client
            .execute(
                "insert into dr_hosts values ($1, $2, $3, $4, false) on conflict (name) do update
                 set lock_key = excluded.lock_key, admin = excluded.admin,
                     started_us = excluded.started_us, draining = false",
                &[&self.config.host_name, &key, &self.config.admin, &now_us()],
            )
            .map_err(pg)?;
        self.client = Some(client);
        self.draining = false;
        self.publish_view(None);
        info!(host = %self.config.host_name, "joined the fleet");
        Ok(())
    }

    fn publish_view(&self, live: Option<u32>) {
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        v.connected = self.client.is_some();
        v.draining = self.draining;
        v.shards = self.owned.clone();
        if let Some(live) = live {
            v.live_hosts = live;
        }
    }

    /// The session broke: every lock is gone with it.
    fn lose_everything(&mut self, why: &str) {
        warn!(host = %self.config.host_name, error = why, shards = self.owned.len(), "the owner session broke; the host's shards are lost");
        self.client = None;
        let lost: Vec<u32> = self.owned.keys().copied().collect();
        self.owned.clear();
        self.releasing.clear();
        if !lost.is_empty() {
            let _ = self.events.send(OwnershipEvent::Lost(lost));
        }
        self.publish_view(Some(0));
    }

    fn check(&mut self, result: Result<(), postgres::Error>) {
        if let Err(e) = result {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                self.lose_everything(&e.to_string());
            } else {
                warn!(error = %e, "fleet ownership step failed");
            }
        }
    }

    fn run(mut self, jobs: std_mpsc::Receiver<OwnerJob>) {
        let mut next_tick = Instant::now();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(wait) {
                Ok(job) => self.handle(job),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    next_tick = Instant::now() + OWNERSHIP_TICK;
                    if self.client.is_none() && !self.draining {
                        if let Err(e) = self.connect() {
                            warn!(error = %e, "joining the fleet failed; retrying");
                            continue;
                        }
                    }
                    let r = self.step();
                    self.check(r);
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn handle(&mut self, job: OwnerJob) {
        match job {
            OwnerJob::Commit(ops, reply) => {
                let result = self.commit(&ops);
                if let Err(StoreError::Shared(e)) = &result {
                    if self.client.as_ref().is_some_and(|c| c.is_closed()) {
                        self.lose_everything(e);
                    }
                }
                let _ = reply.send((ops, result));
            }
            OwnerJob::SetOperatorPolicy(vehicle, policy, reply) => {
                let result = self.set_operator_policy(&vehicle, &policy);
                let _ = reply.send(result);
            }
            OwnerJob::SetDesired(vehicle, desired, reply) => {
                let result = self.set_desired(&vehicle, &desired);
                let _ = reply.send(result);
            }
            OwnerJob::Released(shards) => {
                let r = self.unlock(&shards);
                self.check(r);
                self.publish_view(None);
            }
            OwnerJob::Drain(reply) => {
                self.draining = true;
                let r = self.leave_membership();
                self.check(r);
                let give: Vec<u32> = self
                    .owned
                    .keys()
                    .filter(|s| !self.releasing.contains(s))
                    .copied()
                    .collect();
                if !give.is_empty() {
                    self.releasing.extend(&give);
                    let _ = self.events.send(OwnershipEvent::Release(give));
                }
                self.publish_view(None);
                let _ = reply.send(());
            }
        }
    }

    fn leave_membership(&mut self) -> Result<(), postgres::Error> {
        let Some(c) = self.client.as_mut() else {
            return Ok(());
        };
        c.execute(
            "update dr_hosts set draining = true where name = $1",
            &[&self.config.host_name],
        )?;
        c.execute(
            "select pg_advisory_unlock($1, $2)",
            &[&MEMBER_LOCK, &host_key(&self.config.host_name)],
        )?;
        Ok(())
    }

    fn unlock(&mut self, shards: &[u32]) -> Result<(), postgres::Error> {
        for s in shards {
            self.releasing.remove(s);
            if self.owned.remove(s).is_none() {
                continue;
            }
            if let Some(c) = self.client.as_mut() {
                c.execute(
                    "select pg_advisory_unlock($1, $2)",
                    &[&SHARD_LOCK, &(*s as i32)],
                )?;
            }
        }
        info!(shards = ?shards, "shards given back");
        Ok(())
    }

    /// One look at the fleet: take free shards up to the fair share, or give some back.
    fn step(&mut self) -> Result<(), postgres::Error> {
        let Some(c) = self.client.as_mut() else {
            return Ok(());
        };
        let live: i64 = c
            .query_one(
                "select count(*) from pg_locks where locktype = 'advisory' and classid = $1::int::oid and objsubid = 2 and granted",
                &[&MEMBER_LOCK],
            )?
            .get(0);
        let target = if self.draining {
            0
        } else {
            fair_share(self.config.shards, live as u32)
        };
        let free: Vec<u32> = c
            .query(
                "select s from generate_series(0, $1 - 1) s where not exists (
                    select 1 from pg_locks l where l.locktype = 'advisory'
                    and l.classid = $2::int::oid and l.objid = s::oid and l.objsubid = 2 and l.granted)",
                &[&(self.config.shards as i32), &SHARD_LOCK],
            )?
            .iter()
            .map(|r| r.get::<_, i32>(0) as u32)
            .collect();
        let plan = step(
            self.owned.len() as u32,
            self.releasing.len() as u32,
            target,
            &free,
            self.start,
        );
        let mut gained = Vec::new();
        for s in plan.try_free {
            if gained.len() as u32 >= plan.want {
                break;
            }
            let got: bool = c
                .query_one(
                    "select pg_try_advisory_lock($1, $2)",
                    &[&SHARD_LOCK, &(s as i32)],
                )?
                .get(0);
            if !got {
                continue;
            }
            let epoch: i64 = c
                .query_one(
                    "insert into shard_owners values ($1, $2, 1, $3) on conflict (shard) do update
                     set host = excluded.host, epoch = shard_owners.epoch + 1, since_us = excluded.since_us
                     returning epoch",
                    &[&(s as i32), &self.config.host_name, &now_us()],
                )?
                .get(0);
            self.owned.insert(s, epoch as u64);
            gained.push(s);
        }
        if !gained.is_empty() {
            info!(shards = ?gained, live, "shards taken");
            let _ = self.events.send(OwnershipEvent::Gained(gained));
        }
        if plan.give_back > 0 {
            let give: Vec<u32> = self
                .owned
                .keys()
                .rev()
                .filter(|s| !self.releasing.contains(s))
                .take(plan.give_back as usize)
                .copied()
                .collect();
            self.releasing.extend(&give);
            info!(shards = ?give, live, "giving shards back for the fair share");
            let _ = self.events.send(OwnershipEvent::Release(give));
        }
        self.publish_view(Some(live as u32));
        Ok(())
    }

    fn owns(&self, vehicle: &str) -> bool {
        self.owned
            .contains_key(&shard_of(vehicle, self.config.shards))
    }

    fn set_operator_policy(
        &mut self,
        vehicle: &str,
        policy: &OperatorPolicy,
    ) -> Result<(), StoreError> {
        if !self.owns(vehicle) {
            return Err(StoreError::Shared(format!(
                "this host does not own {vehicle:?} now (it moved to another host)"
            )));
        }
        let c = self
            .client
            .as_mut()
            .ok_or_else(|| StoreError::Shared("not connected to the fleet's database".into()))?;
        let bytes = postcard::to_stdvec(policy).expect("operator policies serialize");
        c.execute(
            "insert into operator_policies values ($1, $2) on conflict (vehicle) do update set record = excluded.record",
            &[&vehicle, &bytes],
        )
        .map_err(pg)?;
        Ok(())
    }

    fn set_desired(&mut self, vehicle: &str, desired: &DesiredState) -> Result<(), StoreError> {
        let c = self.owned_client(vehicle)?;
        let text = serde_json::to_string(desired).expect("desired states serialize");
        c.execute(
            "insert into desired_states values ($1, $2::text::jsonb) on conflict (vehicle) do update set record = excluded.record",
            &[&vehicle, &text],
        )
        .map_err(pg)?;
        Ok(())
    }

    /// The owner session, if this host owns `vehicle`'s shard.
    fn owned_client(&mut self, vehicle: &str) -> Result<&mut Client, StoreError> {
        if !self.owns(vehicle) {
            return Err(StoreError::Shared(format!(
                "this host does not own {vehicle:?} now (it moved to another host)"
            )));
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Shared("not connected to the fleet's database".into()))
    }

    fn commit(&mut self, ops: &[WriteOp]) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        let shards = self.config.shards;
        let owned = &self.owned;
        let ops: Vec<&WriteOp> = ops
            .iter()
            .filter(|op| owned.contains_key(&shard_of(&op.vehicle, shards)))
            .collect();
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let c = self
            .client
            .as_mut()
            .ok_or_else(|| StoreError::Shared("not connected to the fleet's database".into()))?;
        // Per twin the newest link record, per twin and stream the newest message.
        let mut links: HashMap<&str, (Arc<str>, LinkRecord)> = HashMap::new();
        let mut newest: HashMap<(&str, &str), &StoredMessage> = HashMap::new();
        let (mut jv, mut js, mut jst, mut jt, mut jc, mut jp) = (
            Vec::with_capacity(ops.len()),
            Vec::with_capacity(ops.len()),
            Vec::with_capacity(ops.len()),
            Vec::with_capacity(ops.len()),
            Vec::with_capacity(ops.len()),
            Vec::with_capacity(ops.len()),
        );
        for op in &ops {
            let m = &op.message;
            jv.push(&*op.vehicle);
            js.push(m.seq as i64);
            jst.push(m.stream.as_str());
            jt.push(m.type_name.as_str());
            jc.push(m.created_us as i64);
            jp.push(m.payload.as_slice());
            let record = LinkRecord {
                incarnation: op.incarnation,
                rx_next: m.seq + 1,
                recommendation_seq: op.recommendation_seq,
            };
            let entry = links
                .entry(&*op.vehicle)
                .or_insert_with(|| (op.vehicle.clone(), record));
            if record.rx_next > entry.1.rx_next {
                entry.1 = record;
            }
            newest
                .entry((&*op.vehicle, m.stream.as_str()))
                .and_modify(|old| {
                    if m.seq > old.seq {
                        *old = m;
                    }
                })
                .or_insert(m);
        }
        let mut txn = c.transaction().map_err(pg)?;
        txn.execute(
            "insert into twin_journal (vehicle, seq, stream, type_name, created_us, payload)
             select * from unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::bytea[])",
            &[&jv, &js, &jst, &jt, &jc, &jp],
        )
        .map_err(pg)?;
        let (lv, li, lr, ls): (Vec<&str>, Vec<i64>, Vec<i64>, Vec<i64>) = {
            let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (v, (_, r)) in &links {
                out.0.push(*v);
                out.1.push(r.incarnation as i64);
                out.2.push(r.rx_next as i64);
                out.3.push(r.recommendation_seq as i64);
            }
            out
        };
        // A newer incarnation replaces the old record; within one, the link moves forward
        // only.
        txn.execute(
            "insert into twin_links select * from unnest($1::text[], $2::int8[], $3::int8[], $4::int8[])
             on conflict (vehicle) do update set incarnation = excluded.incarnation,
               rx_next = excluded.rx_next, recommendation_seq = excluded.recommendation_seq
             where twin_links.incarnation <> excluded.incarnation or excluded.rx_next > twin_links.rx_next",
            &[&lv, &li, &lr, &ls],
        )
        .map_err(pg)?;
        let (mut nv, mut ns, mut nst, mut nt, mut nc, mut np) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for ((v, stream), m) in &newest {
            nv.push(*v);
            ns.push(m.seq as i64);
            nst.push(*stream);
            nt.push(m.type_name.as_str());
            nc.push(m.created_us as i64);
            np.push(m.payload.as_slice());
        }
        txn.execute(
            "insert into twin_latest (vehicle, seq, stream, type_name, created_us, payload)
             select * from unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::bytea[])
             on conflict (vehicle, stream) do update set seq = excluded.seq,
               type_name = excluded.type_name, created_us = excluded.created_us, payload = excluded.payload",
            &[&nv, &ns, &nst, &nt, &nc, &np],
        )
        .map_err(pg)?;
        self.commits += 1;
        if self.commits % TRIM_EVERY == 0 {
            txn.execute(
                "delete from twin_journal where id <= (select max(id) from twin_journal) - $1",
                &[&(self.config.retention.min(i64::MAX as u64) as i64)],
            )
            .map_err(pg)?;
        }
        txn.commit().map_err(pg)?;
        Ok(links
            .into_values()
            .map(|(v, r)| (v, r.rx_next - 1))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("veh-1", 64), shard_of("veh-1", 64));
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("veh-{i}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        assert!(host_key("a") >= 0 && host_key("b") >= 0 && host_key("a") != host_key("b"));
    }

    #[test]
    fn a_host_takes_its_share_and_gives_back_above_it() {
        assert_eq!(fair_share(64, 0), 64);
        assert_eq!(fair_share(64, 1), 64);
        assert_eq!(fair_share(64, 3), 22);
        // Alone: take every free shard.
        let free: Vec<u32> = (0..4).collect();
        let s = step(0, 0, 4, &free, 1);
        assert_eq!((s.want, s.give_back), (4, 0));
        assert_eq!(s.try_free, vec![1, 2, 3, 0], "tried from the host's offset");
        // A second host joined: keep 2 of 4.
        let s = step(4, 0, 2, &[], 0);
        assert_eq!((s.want, s.give_back), (0, 2));
        // Those being given back are not given back twice.
        let s = step(4, 2, 2, &[], 0);
        assert_eq!((s.want, s.give_back), (0, 0));
        // A host died: the survivor takes its free shards up to the share.
        let s = step(2, 0, 4, &[2, 3], 0);
        assert_eq!((s.want, s.give_back, s.try_free), (2, 0, vec![2, 3]));
        // Draining: give everything back, take nothing.
        let s = step(3, 0, 0, &[5], 0);
        assert_eq!((s.want, s.give_back, s.try_free.len()), (0, 3, 0));
    }
}
