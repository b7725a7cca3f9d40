//! Durable state of a DR host: in one embedded `redb` database ([`EmbeddedStore`]), or in
//! the fleet's shared PostgreSQL database ([`crate::fleet::SharedStore`]), behind one
//! [`Store`].
//!
//! What a twin must not lose when its host dies (`kill -9` included):
//!
//! - **every message it acknowledged**: the link acknowledges only what this store has
//!   committed (the link's durable acknowledgements), so a message the vehicle saw
//!   acknowledged is on disk, and anything else is still in the vehicle's outbox;
//! - **where the link stands**: its incarnation and the first sequence number not yet
//!   durable, so that a restarted twin resumes the same link instead of asking for a
//!   snapshot;
//! - **the newest message of every stream** (the vehicle's state, its sharing policy...),
//!   from which the twin is rebuilt at start;
//! - the sequence number of its recommendations.
//!
//! Writes go through one writer thread ([`Writer`]) that commits in groups: every message
//! queued while the previous commit was on disk goes into the next transaction, committed
//! with `Durability::Immediate` (fsync), after which each twin is told how far it is
//! durable. A commit serves the whole host, so thousands of twins share each fsync.
//!
//! Tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `twins` | vehicle | [`TwinRecord`] (postcard): the link record and the newest message of every stream |
//! | `journal` | host-wide entry number | [`JournalEntry`] (postcard): every message, the newest `retention` of the host |
//! | `operator_policies` | vehicle | [`OperatorPolicy`] (postcard): the sharing policy an operator set last |
//! | `desired_states` | vehicle | [`DesiredState`] (JSON): what an operator wants of the twin |
//!
//! The journal is append-only: a commit adds its messages at the end of one B-tree and
//! drops the oldest at its start, so it writes a few pages however many twins the batch
//! spans (a table keyed by vehicle and sequence number wrote about one page per message
//! once thousands of twins were active). Each twin's record is written once per commit.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use twinlink_link::Message;

pub use crate::twin::DesiredState;

/// What restoring a twin reads of it.
#[derive(Debug)]
pub struct Restored {
    /// Its record (`None`: it never received anything durable).
    pub record: Result<Option<TwinRecord>, StoreError>,
    /// The sharing policy an operator set for it.
    pub operator: Result<Option<OperatorPolicy>, StoreError>,
    /// What an operator wants of it.
    pub desired: Result<Option<DesiredState>, StoreError>,
}

const TWINS: TableDefinition<&str, &[u8]> = TableDefinition::new("twins");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const OPERATOR_POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("operator_policies");
const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired_states");

/// Page cache of the database unless configured otherwise (redb's own default is 1 GiB,
/// too much beside thousands of twins).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Messages kept in the host's journal unless configured otherwise (about 40 s of 2,000
/// twins sending 12 messages a second).
pub const DEFAULT_RETENTION: u64 = 1_000_000;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("durable store: {0}")]
    Db(#[from] redb::Error),
    /// A database could not be read, or a record in it does not decode (what and why).
    #[error("durable store: {0}")]
    Unreadable(String),
    /// The fleet's shared database failed or refused the request.
    #[error("fleet database: {0}")]
    Shared(String),
    /// A stored value did not decode (the file was damaged or written by another version).
    #[error("durable store: a {what} record of {vehicle:?} does not decode: {source}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Whose.
        vehicle: String,
        /// The decoder's error.
        source: postcard::Error,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// Where a twin's link stands, durably.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The DR end's incarnation id.
    pub incarnation: u64,
    /// First received sequence number not durable.
    pub rx_next: u64,
    /// Sequence number of the newest recommendation made for a durable message.
    pub recommendation_seq: u64,
}

/// A received message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Link sequence number.
    pub seq: u64,
    /// Stream.
    pub stream: String,
    /// ROS type name.
    pub type_name: String,
    /// When the vehicle created it [µs since the Unix epoch].
    pub created_us: u64,
    /// CDR payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl StoredMessage {
    /// The stored form of link message `m` received as `seq`.
    pub fn of(seq: u64, m: &Message) -> Self {
        StoredMessage {
            seq,
            stream: m.stream.clone(),
            type_name: m.type_name.clone(),
            created_us: m.created_us,
            payload: m.payload.clone(),
        }
    }
}

/// What the store keeps of one twin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinRecord {
    /// Where its link stands.
    pub link: LinkRecord,
    /// The newest message of every stream, oldest first.
    pub latest: Vec<StoredMessage>,
}

/// A sharing policy an operator set for a twin, kept until replaced (the vehicle's own
/// policies are the newest message of their stream; the newer of the two is in force).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorPolicy {
    /// When it was set [µs since the Unix epoch].
    pub set_at_us: u64,
    /// Who set it (the operator's name from the host's token file).
    pub operator: String,
    /// The stamp of the newest policy the vehicle had sent when this was set (0: none): a
    /// stored vehicle policy stamped later replaced this one.
    pub after_vehicle_policy_us: u64,
    /// The `twin_msgs/SharingPolicy`, CDR.
    #[serde(with = "serde_bytes")]
    pub policy: Vec<u8>,
}

/// One message in the host's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The twin that received it.
    pub vehicle: String,
    /// The message.
    pub message: StoredMessage,
}

/// Where a host keeps its twins' durable state: its own embedded database, or the
/// fleet's shared one (see [`crate::fleet`]). Cheap to clone.
#[derive(Clone)]
pub enum Store {
    /// One `redb` file of this host.
    Embedded(EmbeddedStore),
    /// The fleet's PostgreSQL database.
    Shared(crate::fleet::SharedStore),
}

impl Store {
    /// Opens (or creates) an embedded database at `path` (see [`EmbeddedStore::open`]).
    pub fn open(path: &Path, retention: u64) -> Result<Store, StoreError> {
        EmbeddedStore::open(path, retention).map(Store::Embedded)
    }

    /// Like [`Store::open`], with a page cache of `cache_bytes`.
    pub fn open_with_cache(
        path: &Path,
        retention: u64,
        cache_bytes: usize,
    ) -> Result<Store, StoreError> {
        EmbeddedStore::open_with_cache(path, retention, cache_bytes).map(Store::Embedded)
    }

    /// Everything kept of `vehicle`, if it ever received anything durable.
    pub fn twin(&self, vehicle: &str) -> Result<Option<TwinRecord>, StoreError> {
        match self {
            Store::Embedded(s) => s.twin(vehicle),
            Store::Shared(s) => s.twin(vehicle),
        }
    }

    /// The link record of `vehicle`, if it ever received anything durable.
    pub fn link(&self, vehicle: &str) -> Result<Option<LinkRecord>, StoreError> {
        match self {
            Store::Embedded(s) => s.link(vehicle),
            Store::Shared(s) => s.link(vehicle),
        }
    }

    /// The newest stored message of every stream of `vehicle`, oldest first.
    pub fn latest(&self, vehicle: &str) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.twin(vehicle)?.map(|t| t.latest).unwrap_or_default())
    }

    /// Commits a batch handed over and gives it back with the result (the writer's path;
    /// see [`Store::commit`]).
    pub fn commit_batch(
        &self,
        ops: Vec<WriteOp>,
    ) -> (Vec<WriteOp>, Result<crate::fleet::Durable, StoreError>) {
        match self {
            Store::Embedded(s) => {
                let result = s.commit(&ops);
                (ops, result)
            }
            Store::Shared(s) => s.commit_batch(ops),
        }
    }

    /// Records `policy` as the one an operator set for `vehicle`, durably.
    pub fn set_operator_policy(
        &self,
        vehicle: &str,
        policy: &OperatorPolicy,
    ) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.set_operator_policy(vehicle, policy),
            Store::Shared(s) => s.set_operator_policy(vehicle, policy),
        }
    }

    /// The policy an operator last set for `vehicle`, if any.
    pub fn operator_policy(&self, vehicle: &str) -> Result<Option<OperatorPolicy>, StoreError> {
        match self {
            Store::Embedded(s) => s.operator_policy(vehicle),
            Store::Shared(s) => s.operator_policy(vehicle),
        }
    }

    /// Records `desired` as what an operator wants of `vehicle`, durably.
    pub fn set_desired(&self, vehicle: &str, desired: &DesiredState) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.set_desired(vehicle, desired),
            Store::Shared(s) => s.set_desired(vehicle, desired),
        }
    }

    /// What an operator last wanted of `vehicle`, if anything.
    pub fn desired(&self, vehicle: &str) -> Result<Option<DesiredState>, StoreError> {
        match self {
            Store::Embedded(s) => s.desired(vehicle),
            Store::Shared(s) => Ok(s.desired_states(&[vehicle.to_string()])?.remove(vehicle)),
        }
    }

    /// What restoring each of `vehicles` needs (one query per table for all of them
    /// against the shared database).
    pub fn restore_many(&self, vehicles: &[String]) -> Vec<Restored> {
        match self {
            Store::Embedded(s) => vehicles.iter().map(|v| s.restored(v)).collect(),
            Store::Shared(s) => {
                let shared_err = |e: &StoreError| StoreError::Shared(e.to_string());
                let records = s.twins(vehicles);
                let policies = s.operator_policies(vehicles);
                let desired = s.desired_states(vehicles);
                vehicles
                    .iter()
                    .map(|v| Restored {
                        record: records
                            .as_ref()
                            .map(|r| r.get(v).cloned())
                            .map_err(shared_err),
                        operator: policies
                            .as_ref()
                            .map(|p| p.get(v).cloned())
                            .map_err(shared_err),
                        desired: desired
                            .as_ref()
                            .map(|d| d.get(v).cloned())
                            .map_err(shared_err),
                    })
                    .collect()
            }
        }
    }

    /// Messages of `vehicle` still in the journal from sequence number `from` on, in order.
    pub fn messages(&self, vehicle: &str, from: u64) -> Result<Vec<StoredMessage>, StoreError> {
        match self {
            Store::Embedded(s) => s.messages(vehicle, from),
            Store::Shared(s) => s.messages(vehicle, from),
        }
    }

    /// Commits `ops` in one transaction; returns, per twin, the newest durable sequence
    /// number (the shared store leaves out twins whose shard this host does not own).
    pub fn commit(&self, ops: &[WriteOp]) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        match self {
            Store::Embedded(s) => s.commit(ops),
            Store::Shared(s) => s.commit(ops),
        }
    }
}

/// A host's own embedded database.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    retention: u64,
    /// The next journal entry number and the number of entries, kept by the writer.
    journal: Arc<std::sync::Mutex<(u64, u64)>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`, keeping the newest `retention` messages
    /// of the host in its journal, with a page cache of [`DEFAULT_CACHE_BYTES`].
    pub fn open(path: &Path, retention: u64) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_cache(path, retention, DEFAULT_CACHE_BYTES)
    }

    /// Like [`EmbeddedStore::open`], with a page cache of `cache_bytes`.
    pub fn open_with_cache(
        path: &Path,
        retention: u64,
        cache_bytes: usize,
    ) -> Result<EmbeddedStore, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(TWINS).map_err(db_err)?;
        txn.open_table(OPERATOR_POLICIES).map_err(db_err)?;
        txn.open_table(DESIRED).map_err(db_err)?;
        let (next, len) = {
            let journal = txn.open_table(JOURNAL).map_err(db_err)?;
            let next = journal
                .last()
                .map_err(db_err)?
                .map_or(0, |(k, _)| k.value() + 1);
            (next, journal.len().map_err(db_err)?)
        };
        txn.commit().map_err(db_err)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            retention: retention.max(1),
            journal: Arc::new(std::sync::Mutex::new((next, len))),
        })
    }

    /// Everything kept of `vehicle`, if it ever received anything durable.
    pub fn twin(&self, vehicle: &str) -> Result<Option<TwinRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(TWINS).map_err(db_err)?;
        let Some(v) = table.get(vehicle).map_err(db_err)? else {
            return Ok(None);
        };
        decode_twin(vehicle, v.value()).map(Some)
    }

    /// The link record of `vehicle`, if it ever received anything durable.
    pub fn link(&self, vehicle: &str) -> Result<Option<LinkRecord>, StoreError> {
        Ok(self.twin(vehicle)?.map(|t| t.link))
    }

    /// The newest stored message of every stream of `vehicle`, oldest first.
    pub fn latest(&self, vehicle: &str) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.twin(vehicle)?.map(|t| t.latest).unwrap_or_default())
    }

    /// Records `policy` as the one an operator set for `vehicle`, durably (its own
    /// transaction, on disk when this returns).
    pub fn set_operator_policy(
        &self,
        vehicle: &str,
        policy: &OperatorPolicy,
    ) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(policy).expect("operator policies serialize");
        self.put(OPERATOR_POLICIES, vehicle, &bytes)
    }

    /// The policy an operator last set for `vehicle`, if any.
    pub fn operator_policy(&self, vehicle: &str) -> Result<Option<OperatorPolicy>, StoreError> {
        self.get(OPERATOR_POLICIES, vehicle)?
            .map(|bytes| decode_operator_policy(vehicle, &bytes))
            .transpose()
    }

    /// Writes one vehicle's value of a keyed table, durably (its own transaction).
    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        vehicle: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(table)
            .map_err(db_err)?
            .insert(vehicle, bytes)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// One vehicle's value of a keyed table.
    fn get(
        &self,
        table: TableDefinition<&str, &[u8]>,
        vehicle: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        let value = table.get(vehicle).map_err(db_err)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// What restoring `vehicle` needs, from one read transaction.
    pub fn restored(&self, vehicle: &str) -> Restored {
        let txn = match self.db.begin_read() {
            Ok(t) => t,
            Err(e) => {
                let e = db_err(e).to_string();
                return Restored {
                    record: Err(StoreError::Unreadable(e.clone())),
                    operator: Err(StoreError::Unreadable(e.clone())),
                    desired: Err(StoreError::Unreadable(e)),
                };
            }
        };
        let read = |table: TableDefinition<&str, &[u8]>| -> Result<Option<Vec<u8>>, StoreError> {
            let table = txn.open_table(table).map_err(db_err)?;
            let value = table.get(vehicle).map_err(db_err)?;
            Ok(value.map(|v| v.value().to_vec()))
        };
        Restored {
            record: read(TWINS).and_then(|b| b.map(|b| decode_twin(vehicle, &b)).transpose()),
            operator: read(OPERATOR_POLICIES)
                .and_then(|b| b.map(|b| decode_operator_policy(vehicle, &b)).transpose()),
            desired: read(DESIRED).and_then(|b| b.map(|b| decode_desired(vehicle, &b)).transpose()),
        }
    }

    /// Records `desired` for `vehicle`, durably (its own transaction).
    pub fn set_desired(&self, vehicle: &str, desired: &DesiredState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(desired).expect("desired states serialize");
        self.put(DESIRED, vehicle, &bytes)
    }

    /// What an operator last wanted of `vehicle`.
    pub fn desired(&self, vehicle: &str) -> Result<Option<DesiredState>, StoreError> {
        self.get(DESIRED, vehicle)?
            .map(|bytes| decode_desired(vehicle, &bytes))
            .transpose()
    }

    /// Messages of `vehicle` still in the journal with sequence numbers from `from` on, in
    /// order. Reads the whole journal (for inspection and tests, not for a twin's path).
    pub fn messages(&self, vehicle: &str, from: u64) -> Result<Vec<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(JOURNAL).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            let e: JournalEntry =
                postcard::from_bytes(v.value()).map_err(|source| StoreError::Corrupt {
                    what: "journal",
                    vehicle: vehicle.into(),
                    source,
                })?;
            if e.vehicle == vehicle && e.message.seq >= from {
                out.push(e.message);
            }
        }
        out.sort_by_key(|m| m.seq);
        out.dedup_by_key(|m| m.seq);
        Ok(out)
    }

    /// Commits `ops` in one transaction; returns, per twin, the newest durable sequence
    /// number.
    pub fn commit(&self, ops: &[WriteOp]) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        use std::collections::HashMap;
        // One writer at a time (the writer thread; tests may call this directly).
        let mut journal_state = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        let (mut next, mut len) = *journal_state;
        let txn = self.db.begin_write().map_err(db_err)?;
        // Per twin: its newest link record and the newest message of each stream of the
        // batch; each twin's record is then read, merged and written once.
        let mut touched: HashMap<&str, (Arc<str>, LinkRecord, Vec<&StoredMessage>)> =
            HashMap::new();
        {
            let mut journal = txn.open_table(JOURNAL).map_err(db_err)?;
            let mut buf = Vec::new();
            for op in ops {
                let v: &str = &op.vehicle;
                buf.clear();
                buf =
                    postcard::to_extend(&(v, &op.message), buf).expect("journal entries serialize");
                journal.insert(next, buf.as_slice()).map_err(db_err)?;
                next += 1;
                len += 1;
                let record = LinkRecord {
                    incarnation: op.incarnation,
                    rx_next: op.message.seq + 1,
                    recommendation_seq: op.recommendation_seq,
                };
                let (_, r, newest) = touched
                    .entry(v)
                    .or_insert_with(|| (op.vehicle.clone(), record, Vec::new()));
                if record.rx_next > r.rx_next {
                    *r = record;
                }
                match newest.iter_mut().find(|m| m.stream == op.message.stream) {
                    Some(m) if op.message.seq > m.seq => *m = &op.message,
                    Some(_) => {}
                    None => newest.push(&op.message),
                }
            }
            while len > self.retention {
                if journal.pop_first().map_err(db_err)?.is_none() {
                    len = 0;
                    break;
                }
                len -= 1;
            }
            let mut twins = txn.open_table(TWINS).map_err(db_err)?;
            for (v, (_, link, newest)) in &touched {
                let mut record = match twins.get(*v).map_err(db_err)? {
                    Some(old) => decode_twin(v, old.value())?,
                    None => TwinRecord::default(),
                };
                // A newer incarnation replaces the old record; within one, the link moves
                // forward only.
                if record.link.incarnation != link.incarnation || link.rx_next > record.link.rx_next
                {
                    record.link = *link;
                }
                for m in newest {
                    match record.latest.iter_mut().find(|o| o.stream == m.stream) {
                        Some(o) => *o = (*m).clone(),
                        None => record.latest.push((*m).clone()),
                    }
                }
                record.latest.sort_by_key(|m| m.seq);
                let bytes = postcard::to_stdvec(&record).expect("twin records serialize");
                twins.insert(*v, bytes.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        *journal_state = (next, len);
        Ok(touched
            .into_values()
            .map(|(v, r, _)| (v, r.rx_next - 1))
            .collect())
    }
}

fn decode_operator_policy(vehicle: &str, bytes: &[u8]) -> Result<OperatorPolicy, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt {
        what: "operator policy",
        vehicle: vehicle.into(),
        source,
    })
}

/// A desired state as stored (JSON, so that operators' tools can read the table).
pub fn decode_desired(vehicle: &str, bytes: &[u8]) -> Result<DesiredState, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Unreadable(format!(
            "the desired state of {vehicle:?} does not decode: {e}"
        ))
    })
}

fn decode_twin(vehicle: &str, bytes: &[u8]) -> Result<TwinRecord, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt {
        what: "twin",
        vehicle: vehicle.into(),
        source,
    })
}

/// One received message to make durable.
#[derive(Debug, Clone)]
pub struct WriteOp {
    /// The twin.
    pub vehicle: Arc<str>,
    /// Its link incarnation.
    pub incarnation: u64,
    /// Its newest recommendation's sequence number.
    pub recommendation_seq: u64,
    /// The message.
    pub message: StoredMessage,
    /// Where to report the newest durable sequence number of this twin.
    pub notify: mpsc::UnboundedSender<u64>,
}

/// Counters of the writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Messages committed.
    pub messages: u64,
    /// Failed commits (their messages stay unacknowledged; the vehicles resend them).
    pub failures: u64,
}

/// The group-commit writer thread.
pub struct Writer {
    tx: Option<std_mpsc::Sender<WriteOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Largest number of messages in one transaction.
pub const MAX_BATCH: usize = 8192;

/// How long the writer gathers messages after the first of a transaction. It delays only
/// the *durable* acknowledgement (the vehicle's window moves on the received one), and
/// makes each commit serve more messages.
pub const GATHER: Duration = Duration::from_millis(5);

impl Writer {
    /// Starts the writer on `store`; `observe` is called after each commit with the batch
    /// size and the commit's duration.
    pub fn start(store: Store, observe: impl Fn(usize, Duration, bool) + Send + 'static) -> Writer {
        let (tx, rx) = std_mpsc::channel::<WriteOp>();
        let thread = std::thread::Builder::new()
            .name("dr-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    // Group commit: gather what arrives within GATHER of the first message,
                    // so that one transaction (one fsync) serves many messages.
                    // Sleeping, then taking what is queued, costs the senders no wake-up
                    // per message (a receiver blocked in `recv_timeout` does).
                    std::thread::sleep(GATHER);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    let started = Instant::now();
                    let (batch, result) = store.commit_batch(batch);
                    match result {
                        Ok(durable) => {
                            observe(batch.len(), started.elapsed(), true);
                            let notify: std::collections::HashMap<&str, &mpsc::UnboundedSender<u64>> =
                                batch.iter().map(|op| (&*op.vehicle, &op.notify)).collect();
                            for (vehicle, seq) in durable {
                                if let Some(tx) = notify.get(&*vehicle) {
                                    let _ = tx.send(seq);
                                }
                            }
                        }
                        Err(e) => {
                            observe(batch.len(), started.elapsed(), false);
                            tracing::error!(error = %e, messages = batch.len(), "commit failed; the messages stay unacknowledged");
                        }
                    }
                }
            })
            .expect("spawning the store writer");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues `op`; false when the writer has stopped.
    pub fn submit(&self, op: WriteOp) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(op).is_ok())
    }

    /// A handle to queue from other tasks.
    pub fn handle(&self) -> WriterHandle {
        WriterHandle(self.tx.clone())
    }

    /// Commits what is queued and stops.
    pub fn stop(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A cloneable way to queue writes.
#[derive(Clone)]
pub struct WriterHandle(Option<std_mpsc::Sender<WriteOp>>);

impl WriterHandle {
    /// Queues `op`; false when the writer has stopped.
    pub fn submit(&self, op: WriteOp) -> bool {
        self.0.as_ref().is_some_and(|tx| tx.send(op).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, stream: &str) -> StoredMessage {
        StoredMessage {
            seq,
            stream: stream.into(),
            type_name: "twin_msgs/msg/VehicleState".into(),
            created_us: 1000 + seq,
            payload: vec![seq as u8; 8],
        }
    }

    #[test]
    fn commits_survive_reopening_and_keep_the_newest_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.redb");
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let store = Store::open(&path, 3).unwrap();
            let v: Arc<str> = Arc::from("veh-1");
            let ops: Vec<WriteOp> = (0..5)
                .map(|seq| WriteOp {
                    vehicle: v.clone(),
                    incarnation: 42,
                    recommendation_seq: seq * 2,
                    message: msg(seq, if seq % 2 == 0 { "state" } else { "objects" }),
                    notify: tx.clone(),
                })
                .collect();
            let durable = store.commit(&ops).unwrap();
            assert_eq!(durable, vec![(v, 4)]);
        }
        let store = Store::open(&path, 3).unwrap();
        assert_eq!(
            store.link("veh-1").unwrap(),
            Some(LinkRecord {
                incarnation: 42,
                rx_next: 5,
                recommendation_seq: 8
            })
        );
        assert_eq!(store.link("veh-2").unwrap(), None);
        let latest = store.latest("veh-1").unwrap();
        assert_eq!(latest.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4]);
        // Retention: the newest 3 messages.
        let kept: Vec<u64> = store
            .messages("veh-1", 0)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(kept, vec![2, 3, 4]);
        assert!(rx.try_recv().is_err(), "commit() alone notifies nobody");
    }

    #[test]
    fn operator_policies_survive_reopening_and_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.redb");
        let first = OperatorPolicy {
            set_at_us: 1,
            operator: "alice".into(),
            after_vehicle_policy_us: 0,
            policy: vec![1, 2, 3],
        };
        {
            let store = Store::open(&path, 100).unwrap();
            assert_eq!(store.operator_policy("veh-1").unwrap(), None);
            store.set_operator_policy("veh-1", &first).unwrap();
        }
        let store = Store::open(&path, 100).unwrap();
        assert_eq!(store.operator_policy("veh-1").unwrap(), Some(first));
        let second = OperatorPolicy {
            set_at_us: 2,
            operator: "bob".into(),
            after_vehicle_policy_us: 7,
            policy: vec![4],
        };
        store.set_operator_policy("veh-1", &second).unwrap();
        assert_eq!(store.operator_policy("veh-1").unwrap(), Some(second));
        assert_eq!(store.operator_policy("veh-2").unwrap(), None);
    }

    #[test]
    fn desired_states_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.redb");
        let desired = DesiredState {
            version: 2,
            set_at_us: 7,
            by: "alice".into(),
            max_speed_mps: Some(20.0),
        };
        {
            let store = Store::open(&path, 100).unwrap();
            assert_eq!(store.desired("veh-1").unwrap(), None);
            store.set_desired("veh-1", &desired).unwrap();
        }
        let store = Store::open(&path, 100).unwrap();
        assert_eq!(store.desired("veh-1").unwrap(), Some(desired.clone()));
        let restored = store.restore_many(&["veh-1".into(), "veh-2".into()]);
        assert_eq!(restored[0].desired.as_ref().unwrap(), &Some(desired));
        assert_eq!(restored[1].desired.as_ref().unwrap(), &None);
    }

    #[test]
    fn the_writer_groups_commits_and_reports_durability() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("host.redb"), 100).unwrap();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = commits.clone();
        let writer = Writer::start(store.clone(), move |_, _, ok| {
            assert!(ok);
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let (tx_a, mut rx_a) = mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = mpsc::unbounded_channel();
        for seq in 0..200u64 {
            for (v, tx) in [("a", &tx_a), ("b", &tx_b)] {
                assert!(writer.submit(WriteOp {
                    vehicle: Arc::from(v),
                    incarnation: 1,
                    recommendation_seq: 0,
                    message: msg(seq, "state"),
                    notify: tx.clone(),
                }));
            }
        }
        writer.stop();
        let last = |rx: &mut mpsc::UnboundedReceiver<u64>| {
            let mut last = None;
            while let Ok(s) = rx.try_recv() {
                assert!(last.is_none_or(|l| s > l), "notifications ascend");
                last = Some(s);
            }
            last
        };
        assert_eq!(last(&mut rx_a), Some(199));
        assert_eq!(last(&mut rx_b), Some(199));
        let n = commits.load(std::sync::atomic::Ordering::Relaxed);
        assert!((1..=400).contains(&n));
        assert_eq!(store.link("b").unwrap().unwrap().rx_next, 200);
    }
}
