//! A link end over Zenoh: the PE or the DR side of one twin's intra-twin link.
//!
//! [`Link::open`] joins Zenoh, declares this end's liveliness token, watches the peer's,
//! and runs one task that owns all protocol state ([`crate::sync`], [`crate::crypto`],
//! [`crate::fault`]). The application sends with [`Link::send`] (never blocks; the outbox
//! coalesces and bounds) and receives [`LinkEvent`]s in order with [`Link::recv`].
//!
//! Session life cycle (see ARCHITECTURE.md for the message flow):
//!
//! 1. The PE sends a Noise `KK` first message in a Zenoh query to `.../sync`, with its
//!    [`SyncState`]. It does so at start, when the DR's liveliness token appears, while the
//!    DR is silent, and when the current session is due for rotation.
//! 2. The DR answers with the second message and its own [`SyncState`]. The session is
//!    *pending* at the DR until a frame sealed under it arrives, which proves the PE holds
//!    the keys; only then does the DR switch to it and apply the PE's [`SyncState`].
//! 3. Both ends retransmit what the other has not applied and catch up.
//!
//! Presence: each end sends a frame at least every `heartbeat`; the peer is gone when no
//! authentic frame arrived for `peer_timeout` or its liveliness token disappears.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use zenoh::qos::{CongestionControl, Priority as ZPriority};
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::SampleKind;
use zenoh::Wait;

use crate::crypto::{self, KeyMaterial, Rejection, Session};
use crate::fault::{FaultControl, FaultLayer, FaultPlan, FaultStats};
use crate::hub::{inbound_queue, Inbound, LinkHub, Outlet, Registration};
use crate::keys::{Role, TwinKeys};
use crate::protocol::{self, Envelope, PathReport, SyncState};
use crate::rate::{Controller, PathEstimate, PathMeter, RateControl};
use crate::sync::{
    Ack, Delivered, Message, Outbox, OutboxStats, PushOutcome, Receiver, ReceiverStats, Sender,
    SenderStats, WireItem,
};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// How this end joins Zenoh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZenohSettings {
    /// `peer` (default) or `client` (through a router).
    pub mode: String,
    /// Endpoints to listen on, e.g. `tcp/127.0.0.1:7447`.
    pub listen: Vec<String>,
    /// Endpoints to connect to.
    pub connect: Vec<String>,
}

impl ZenohSettings {
    /// Peer mode listening on `listen` (the DR's usual setting).
    pub fn peer_listening(listen: &str) -> Self {
        Self {
            mode: "peer".into(),
            listen: vec![listen.into()],
            connect: vec![],
        }
    }

    /// Peer mode connecting to `connect` (the PE's usual setting).
    pub fn peer_connecting(connect: &str) -> Self {
        Self {
            mode: "peer".into(),
            listen: vec![],
            connect: vec![connect.into()],
        }
    }

    /// Client mode through the router at `router`.
    pub fn client_of(router: &str) -> Self {
        Self {
            mode: "client".into(),
            listen: vec![],
            connect: vec![router.into()],
        }
    }

    /// The Zenoh configuration: explicit endpoints, no multicast scouting, a 1 s link lease
    /// so that a dead link is noticed within a second.
    pub fn to_config(&self) -> anyhow::Result<zenoh::Config> {
        zenoh_config(&self.mode, &self.listen, &self.connect)
    }
}

/// A Zenoh configuration with explicit endpoints and no multicast scouting.
pub fn zenoh_config(
    mode: &str,
    listen: &[String],
    connect: &[String],
) -> anyhow::Result<zenoh::Config> {
    if !matches!(mode, "peer" | "client" | "router") {
        anyhow::bail!("zenoh mode must be peer, client or router, not {mode:?}");
    }
    let mut c = zenoh::Config::default();
    let set = |c: &mut zenoh::Config, key: &str, value: String| {
        c.insert_json5(key, &value)
            .map_err(|e| anyhow::anyhow!("zenoh config {key}={value}: {e}"))
    };
    set(&mut c, "mode", format!("{mode:?}"))?;
    set(&mut c, "listen/endpoints", serde_json::to_string(listen)?)?;
    set(&mut c, "connect/endpoints", serde_json::to_string(connect)?)?;
    set(&mut c, "scouting/multicast/enabled", "false".into())?;
    set(&mut c, "transport/link/tx/lease", "1000".into())?;
    set(&mut c, "transport/link/tx/keep_alive", "4".into())?;
    Ok(c)
}

/// Settings of a link end.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This end's keys (they also name the vehicle and the role).
    pub material: KeyMaterial,
    /// How to join Zenoh.
    pub zenoh: ZenohSettings,
    /// Longest silence before a frame (heartbeat) is sent anyway.
    pub heartbeat: Duration,
    /// Longest wait of an acknowledgement for outgoing data to ride on (with
    /// [`LinkConfig::prompt_acks`] it waits only for the application's next turn).
    pub ack_delay: Duration,
    /// Acknowledge received data as soon as the application had one turn to answer (on by
    /// default). Off, a standalone acknowledgement waits the whole `ack_delay` for an
    /// answer to ride on: a host whose answers come from another task sets it off.
    pub prompt_acks: bool,
    /// Longest wait of an acknowledgement that only moves the durable point
    /// ([`Link::confirm_durable`]) for a frame to ride on. It frees the peer's copies, it
    /// does not stop resending (the received point does that), so it can wait for the next
    /// answer.
    pub durable_ack_delay: Duration,
    /// Silence after which the peer counts as gone.
    pub peer_timeout: Duration,
    /// How often the PE retries a handshake while it has no answering DR.
    pub handshake_retry: Duration,
    /// Session age after which the PE rotates keys.
    pub rekey_after: Duration,
    /// Frames after which the PE rotates keys.
    pub rekey_after_frames: u64,
    /// How long an old session stays readable after a newer one took over.
    pub session_grace: Duration,
    /// Outbox bound, messages.
    pub outbox_messages: usize,
    /// Outbox bound, bytes.
    pub outbox_bytes: usize,
    /// Most bytes of messages put in one frame (a larger single message goes alone).
    pub frame_budget: usize,
    /// Most bytes in flight (sent, not acknowledged).
    pub max_in_flight_bytes: usize,
    /// Receiver reorder window, in sequence numbers.
    pub reorder_window: u64,
    /// How the sending rate adapts to the path.
    pub rate_control: RateControl,
    /// How often each end reports what it measured of the path from its peer.
    pub report_interval: Duration,
    /// Fault injection on this end's outgoing frames.
    pub faults: FaultControl,
    /// Fault injection on the frames this end receives, before it opens them (with
    /// `faults`, a radio between this end and the network that acts both ways; a
    /// simulator's coverage drives both).
    pub inbound_faults: FaultControl,
    /// Seed of the fault layer's random source.
    pub fault_seed: u64,
    /// Acknowledge only what the application confirmed durable with
    /// [`Link::confirm_durable`] (a DR that persists what it receives sets this, so that
    /// no acknowledged message is lost when its process dies).
    pub durable_acks: bool,
    /// Continue an earlier incarnation of this end (after a restart with durable state).
    pub resume: Option<ResumeState>,
    /// Compress frames (LZ4) when that makes them smaller: for an end whose sending path is
    /// scarce (a vehicle's uplink); the peer opens both kinds.
    pub compress: bool,
    /// Send each frame at once, outside Zenoh's batching (the lowest latency for one link;
    /// a host of many links on one session sets it off, so that Zenoh batches their frames
    /// into fewer writes).
    pub express: bool,
}

/// What a restarted link end needs to continue where it left off: its incarnation (so the
/// peer does not treat it as a new end that lost everything) and the first sequence number
/// it had not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeState {
    /// The incarnation id to keep.
    pub incarnation: u64,
    /// The first received sequence number not durable.
    pub rx_next: u64,
}

impl ResumeState {
    /// A new incarnation that has received nothing.
    pub fn fresh() -> Self {
        ResumeState {
            incarnation: rand::random(),
            rx_next: 0,
        }
    }
}

impl LinkConfig {
    /// Defaults for `material`'s end with the given Zenoh settings.
    pub fn new(material: KeyMaterial, zenoh: ZenohSettings) -> Self {
        Self {
            material,
            zenoh,
            heartbeat: Duration::from_millis(100),
            ack_delay: Duration::from_millis(1),
            prompt_acks: true,
            durable_ack_delay: Duration::from_millis(50),
            peer_timeout: Duration::from_millis(600),
            handshake_retry: Duration::from_millis(300),
            rekey_after: Duration::from_secs(600),
            rekey_after_frames: 1 << 24,
            session_grace: Duration::from_secs(5),
            outbox_messages: 4096,
            outbox_bytes: 64 << 20,
            frame_budget: 256 << 10,
            max_in_flight_bytes: 16 << 20,
            reorder_window: 1 << 16,
            rate_control: RateControl::default(),
            report_interval: Duration::from_millis(200),
            faults: FaultControl::new(FaultPlan::clean()),
            inbound_faults: FaultControl::new(FaultPlan::clean()),
            fault_seed: 0x7e1c,
            durable_acks: false,
            resume: None,
            compress: false,
            express: true,
        }
    }
}

/// What the link hands to the application.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// The next message from the peer, in order, exactly once.
    Message(Delivered),
    /// The peer is reachable (a session is up and it speaks).
    PeerUp {
        /// The session in use.
        session: u64,
    },
    /// The peer went silent or left.
    PeerDown {
        /// Why: `timeout` or `left`.
        reason: &'static str,
    },
}

/// Round-trip figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttStats {
    /// Smoothed RTT, microseconds.
    pub smoothed_us: Option<u64>,
    /// Smallest RTT seen, microseconds.
    pub min_us: Option<u64>,
    /// Newest sample, microseconds.
    pub latest_us: Option<u64>,
}

/// A snapshot of a link end's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStats {
    /// `pe` or `dr`.
    pub role: String,
    /// The vehicle.
    pub vehicle: String,
    /// Whether the peer is reachable now.
    pub peer_alive: bool,
    /// Times the peer became reachable.
    pub peer_ups: u64,
    /// Times the peer went away.
    pub peer_downs: u64,
    /// Sessions established (handshakes completed and, at the DR, confirmed).
    pub sessions_established: u64,
    /// Sessions established to replace a live one (key rotations).
    pub rekeys: u64,
    /// Frames sealed and handed to Zenoh (before fault injection).
    pub frames_sent: u64,
    /// Authentic frames received.
    pub frames_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes of authentic frames received.
    pub bytes_received: u64,
    /// Refused frames and handshakes, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Sender counters.
    pub sender: SenderStats,
    /// Receiver counters.
    pub receiver: ReceiverStats,
    /// Outbox counters.
    pub outbox: OutboxStats,
    /// Fault layer counters.
    pub faults: FaultStats,
    /// Round trip.
    pub rtt: RttStats,
    /// This end's estimate of its sending path.
    pub path: PathEstimate,
    /// What this end measured of the path from its peer (newest report).
    pub received: PathReport,
    /// What the peer measured of the path from this end (its newest report).
    pub peer_received: PathReport,
    /// Time from a message's `created_us` to the hand-over to Zenoh of the frame that first
    /// carries it, over the newest messages.
    #[serde(default)]
    pub egress: EgressStats,
    /// Frames dropped on arrival because this end had [`crate::hub::MAX_QUEUED_FRAMES`]
    /// waiting already (the peer resends them).
    #[serde(default)]
    pub inbound_dropped: u64,
}

/// Percentiles of the time messages spend in this end before leaving on Zenoh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressStats {
    /// Messages measured since the link started.
    pub messages: u64,
    /// Median over the newest (at most 4096) messages, microseconds.
    pub p50_us: u64,
    /// 99th percentile over the same, microseconds.
    pub p99_us: u64,
    /// Largest over the same, microseconds.
    pub max_us: u64,
}

/// Newest egress samples kept for percentiles.
const EGRESS_SAMPLES: usize = 4096;

impl LinkStats {
    /// Refusals counted under `reason`.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected.get(reason.as_str()).copied().unwrap_or(0)
    }

    /// All refusals.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

enum Command {
    Send(Message, Option<oneshot::Sender<PushOutcome>>),
    Stats(oneshot::Sender<LinkStats>),
    ConfirmDurable(u64),
    Close(oneshot::Sender<()>),
}

/// One end of a twin's intra-twin link, run by a task of its own: the application talks to
/// it through channels, from any task. [`LinkEnd`] is the same end driven by its owner's
/// task instead (no channel hop per message).
pub struct Link {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    role: Role,
    faults: FaultControl,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Link {
    /// Joins Zenoh and starts the link end described by `config`.
    pub async fn open(config: LinkConfig) -> anyhow::Result<Link> {
        let session = open_session(&config).await?;
        Self::spawn(session, config, Attach::Own { owns_session: true }).await
    }

    /// Starts the link end on an existing Zenoh session, shared with other link ends, with
    /// declarations of its own; closing the link leaves the session open.
    pub async fn open_on(session: zenoh::Session, config: LinkConfig) -> anyhow::Result<Link> {
        Self::spawn(
            session,
            config,
            Attach::Own {
                owns_session: false,
            },
        )
        .await
    }

    /// Starts the link end on `hub`'s session, receiving through the hub's declarations (a
    /// host of many link ends on one session: see [`crate::hub`]).
    pub async fn open_in(hub: &LinkHub, config: LinkConfig) -> anyhow::Result<Link> {
        Self::spawn(hub.session().clone(), config, Attach::Hub(hub.clone())).await
    }

    async fn spawn(
        session: zenoh::Session,
        config: LinkConfig,
        attach: Attach,
    ) -> anyhow::Result<Link> {
        let (event_tx, events) = mpsc::unbounded_channel();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let role = config.material.role;
        let faults = config.faults.clone();
        let end = LinkEnd::start(session, config, attach, event_tx).await?;
        let task = tokio::spawn(run_task(end, command_rx));
        Ok(Link {
            commands,
            events,
            role,
            faults,
            task: Some(task),
        })
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Queues `message` for the peer. Never blocks; see [`Link::send_confirmed`] for the
    /// outbox's verdict.
    pub fn send(&self, message: Message) -> anyhow::Result<()> {
        self.commands
            .send(Command::Send(message, None))
            .map_err(|_| anyhow::anyhow!("the link has stopped"))
    }

    /// Queues `message` and returns what the outbox did with it.
    pub async fn send_confirmed(&self, message: Message) -> anyhow::Result<PushOutcome> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Send(message, Some(tx)))
            .map_err(|_| anyhow::anyhow!("the link has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the link has stopped"))
    }

    /// Tells the link that everything received up to and including sequence number `seq`
    /// is durable; with [`LinkConfig::durable_acks`] only that is acknowledged.
    pub fn confirm_durable(&self, seq: u64) -> anyhow::Result<()> {
        self.commands
            .send(Command::ConfirmDurable(seq))
            .map_err(|_| anyhow::anyhow!("the link has stopped"))
    }

    /// The next event; `None` once the link has stopped.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }

    /// Waits until the peer is reachable (events before that are consumed), at most `within`.
    pub async fn wait_peer_up(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            if let Some(done) = peer_up_outcome(self.role, within, next) {
                return done;
            }
        }
    }

    /// An event if one is ready.
    pub fn try_recv(&mut self) -> Option<LinkEvent> {
        self.events.try_recv().ok()
    }

    /// A snapshot of the counters.
    pub async fn stats(&self) -> anyhow::Result<LinkStats> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stats(tx))
            .map_err(|_| anyhow::anyhow!("the link has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the link has stopped"))
    }

    /// The fault layer's control.
    pub fn faults(&self) -> &FaultControl {
        &self.faults
    }

    /// Stops the link: the liveliness token goes, the Zenoh session closes if the link
    /// opened it.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One step of waiting for the peer: `None` to keep waiting (an event other than
/// `PeerUp`), else how the wait ends.
fn peer_up_outcome(
    role: Role,
    within: Duration,
    next: Result<Option<LinkEvent>, tokio::time::error::Elapsed>,
) -> Option<anyhow::Result<()>> {
    match next {
        Ok(Some(LinkEvent::PeerUp { .. })) => Some(Ok(())),
        Ok(Some(_)) => None,
        Ok(None) => Some(Err(anyhow::anyhow!("the link stopped"))),
        Err(_) => Some(Err(anyhow::anyhow!(
            "no {} answered within {:.1} s",
            role.peer().as_str().to_uppercase(),
            within.as_secs_f64()
        ))),
    }
}

/// The longest heartbeat interval a link end may use: below the default 600 ms peer
/// timeout, so that an idle peer is not taken for gone.
pub const MAX_HEARTBEAT: Duration = Duration::from_millis(500);
/// The shortest heartbeat interval accepted from configuration.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

async fn open_session(config: &LinkConfig) -> anyhow::Result<zenoh::Session> {
    zenoh::open(config.zenoh.to_config()?)
        .await
        .map_err(|e| anyhow::anyhow!("opening the zenoh session: {e}"))
}

/// The task behind a [`Link`].
async fn run_task(mut end: LinkEnd, mut command_rx: mpsc::UnboundedReceiver<Command>) {
    let mut close_reply = None;
    'run: loop {
        tokio::select! {
            running = end.turn() => {
                if !running {
                    break;
                }
                if end.engine.ack_owed.is_some() && end.engine.config.prompt_acks {
                    // Give the application one turn to answer, so that the acknowledgement
                    // rides on its answer; then acknowledge in any case.
                    tokio::task::yield_now().await;
                    while let Ok(command) = command_rx.try_recv() {
                        if let Some(reply) = end.handle(command) {
                            close_reply = Some(reply);
                            break 'run;
                        }
                    }
                    end.engine.ack_now = true;
                }
            }
            command = command_rx.recv() => {
                let Some(command) = command else { break };
                let mut next = Some(command);
                // Take every command already queued, so that messages share frames.
                while let Some(command) = next {
                    if let Some(reply) = end.handle(command) {
                        close_reply = Some(reply);
                        break 'run;
                    }
                    next = command_rx.try_recv().ok();
                }
            }
        }
    }
    end.shut().await;
    if let Some(reply) = close_reply {
        let _ = reply.send(());
    }
}

/// How a link end receives: declarations of its own, or a hub's.
enum Attach {
    Own { owns_session: bool },
    Hub(LinkHub),
}

/// Declarations a link end made for itself (undeclared when dropped).
struct OwnDeclarations {
    _presence: zenoh::pubsub::Subscriber<()>,
    _queryable: Option<zenoh::query::Queryable<()>>,
}

struct Io {
    session: zenoh::Session,
    owns_session: bool,
    keys: TwinKeys,
    publisher: zenoh::pubsub::Publisher<'static>,
    inbound: Outlet,
    frames: Option<zenoh::pubsub::Subscriber<()>>,
    _own: Option<OwnDeclarations>,
    _registration: Option<Registration>,
    token: Option<zenoh::liveliness::LivelinessToken>,
    hs_tx: mpsc::UnboundedSender<HandshakeOutcome>,
    hs_rx: mpsc::UnboundedReceiver<HandshakeOutcome>,
}

impl Io {
    fn put(&self, frame: Vec<u8>) {
        if let Err(e) = self.publisher.put(frame).wait() {
            warn!(error = %e, "zenoh put failed");
        }
    }
}

/// One end of a twin's intra-twin link, driven by the task that owns it: [`LinkEnd::recv`]
/// runs the protocol (frames, handshakes, timers) until an event is ready, and
/// [`LinkEnd::send`] seals and hands frames to Zenoh at once. A host of thousands of
/// links saves the task switch and channel hop per message that a [`Link`] costs.
///
/// `recv` is cancel-safe: a `tokio::select!` that drops it loses nothing.
pub struct LinkEnd {
    engine: Engine,
    io: Io,
    /// Events for the owner (`None` when a [`Link`]'s task forwards them).
    events: Option<mpsc::UnboundedReceiver<LinkEvent>>,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Data arrived: the owner gets one turn to answer before the acknowledgement goes.
    turn_owed: bool,
    faults: FaultControl,
    closed: bool,
}

impl LinkEnd {
    /// Joins Zenoh and starts the link end described by `config`.
    pub async fn open(config: LinkConfig) -> anyhow::Result<LinkEnd> {
        let session = open_session(&config).await?;
        Self::start_owned(session, config, Attach::Own { owns_session: true }).await
    }

    /// Starts the link end on an existing Zenoh session, with declarations of its own.
    pub async fn open_on(session: zenoh::Session, config: LinkConfig) -> anyhow::Result<LinkEnd> {
        Self::start_owned(
            session,
            config,
            Attach::Own {
                owns_session: false,
            },
        )
        .await
    }

    /// Starts the link end on `hub`'s session, receiving through the hub.
    pub async fn open_in(hub: &LinkHub, config: LinkConfig) -> anyhow::Result<LinkEnd> {
        Self::start_owned(hub.session().clone(), config, Attach::Hub(hub.clone())).await
    }

    async fn start_owned(
        session: zenoh::Session,
        config: LinkConfig,
        attach: Attach,
    ) -> anyhow::Result<LinkEnd> {
        let (event_tx, events) = mpsc::unbounded_channel();
        let mut end = Self::start(session, config, attach, event_tx).await?;
        end.events = Some(events);
        Ok(end)
    }

    async fn start(
        session: zenoh::Session,
        config: LinkConfig,
        attach: Attach,
        event_tx: mpsc::UnboundedSender<LinkEvent>,
    ) -> anyhow::Result<LinkEnd> {
        let z = |what: &str, e: zenoh::Error| anyhow::anyhow!("zenoh {what}: {e}");
        let role = config.material.role;
        let vehicle = config.material.vehicle.clone();
        let keys = TwinKeys::new(vehicle.clone());
        if let Attach::Hub(hub) = &attach {
            anyhow::ensure!(
                hub.role() == role,
                "a {} link end cannot use a hub of {} link ends",
                role,
                hub.role()
            );
        }
        let (inlet, inbound) = inbound_queue();
        // Frames come through a subscriber of this link end's own exact key, also beside a
        // hub: Zenoh caches the route of a declared key, while each sample that reaches
        // only a wildcard subscriber has its route computed anew, at a cost that grows with
        // every key the session knows.
        let i = inlet.clone();
        let frames = session
            .declare_subscriber(keys.data_from(role.peer()))
            .callback(move |sample| i.frame(sample.payload().clone()))
            .await
            .map_err(|e| z("subscriber", e))?;
        let (own, registration, owns_session) = match attach {
            Attach::Own { owns_session } => {
                let i = inlet.clone();
                let presence = session
                    .liveliness()
                    .declare_subscriber(keys.alive(role.peer()))
                    .history(true)
                    .callback(move |sample| i.presence(sample.kind() == SampleKind::Put))
                    .await
                    .map_err(|e| z("liveliness subscriber", e))?;
                let queryable = if role == Role::Dr {
                    let i = inlet.clone();
                    Some(
                        session
                            .declare_queryable(keys.sync())
                            .callback(move |query| i.query(query))
                            .await
                            .map_err(|e| z("queryable", e))?,
                    )
                } else {
                    None
                };
                let own = OwnDeclarations {
                    _presence: presence,
                    _queryable: queryable,
                };
                (Some(own), None, owns_session)
            }
            Attach::Hub(hub) => (None, Some(hub.register(vehicle, inlet)), false),
        };
        // A publisher keeps the key's routes resolved: a put on an undeclared key matches it
        // against every key the session knows, each time.
        let publisher = session
            .declare_publisher(keys.data_from(role))
            .congestion_control(CongestionControl::Block)
            .priority(ZPriority::DataHigh)
            .express(config.express)
            .await
            .map_err(|e| z("publisher", e))?;
        let token = session
            .liveliness()
            .declare_token(keys.alive(role))
            .await
            .map_err(|e| z("liveliness token", e))?;
        let (hs_tx, hs_rx) = mpsc::unbounded_channel();
        let faults = config.faults.clone();
        let engine = Engine::new(config, event_tx);
        let io = Io {
            session,
            owns_session,
            keys,
            publisher,
            inbound,
            frames: Some(frames),
            _own: own,
            _registration: registration,
            token: Some(token),
            hs_tx,
            hs_rx,
        };
        Ok(LinkEnd {
            engine,
            io,
            events: None,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            turn_owed: false,
            faults,
            closed: false,
        })
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.engine.role
    }

    /// Queues `message` for the peer and sends what is due at once (an acknowledgement
    /// owed rides on it).
    pub fn send(&mut self, message: Message) -> PushOutcome {
        let outcome = self.engine.push(message);
        self.flush();
        outcome
    }

    /// Queues `message` without sending yet: it leaves with the next [`LinkEnd::send`], or
    /// when [`LinkEnd::recv`] next runs the protocol, in the same frame as whatever else is
    /// queued by then (two messages of one instant, one frame).
    pub fn queue(&mut self, message: Message) -> PushOutcome {
        self.engine.push(message)
    }

    /// Tells the link that everything received up to and including sequence number `seq`
    /// is durable; with [`LinkConfig::durable_acks`] only that is acknowledged. The
    /// acknowledgement rides on the next frame (at the latest after `durable_ack_delay`).
    pub fn confirm_durable(&mut self, seq: u64) {
        self.engine.confirm_durable(seq);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LinkStats {
        let mut s = self.engine.stats();
        s.inbound_dropped = self.io.inbound.dropped_frames();
        s
    }

    /// The fault layer's control.
    pub fn faults(&self) -> &FaultControl {
        &self.faults
    }

    /// The next event; `None` once the link has stopped.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        loop {
            if let Some(event) = self.events.as_mut().and_then(|e| e.try_recv().ok()) {
                return Some(event);
            }
            if self.closed {
                return None;
            }
            if std::mem::take(&mut self.turn_owed) && self.engine.config.prompt_acks {
                // The owner had its turn (it asked for the next event): acknowledge now.
                self.engine.ack_now = true;
            }
            if !self.turn().await {
                self.closed = true;
            }
        }
    }

    /// An event if one is ready (without running the protocol).
    pub fn try_recv(&mut self) -> Option<LinkEvent> {
        self.events.as_mut().and_then(|e| e.try_recv().ok())
    }

    /// Waits until the peer is reachable (events before that are consumed), at most `within`.
    pub async fn wait_peer_up(&mut self, within: Duration) -> anyhow::Result<()> {
        let role = self.role();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.recv()).await;
            if let Some(done) = peer_up_outcome(role, within, next) {
                return done;
            }
        }
    }

    /// Stops the link end: its liveliness token goes, its declarations or its place in the
    /// hub go, and the Zenoh session closes if the link end opened it.
    pub async fn close(mut self) {
        self.shut().await;
    }

    async fn shut(&mut self) {
        self.closed = true;
        self.io._registration = None;
        self.io.frames = None;
        self.io._own = None;
        self.io.token = None;
        if self.io.owns_session {
            let _ = self.io.session.close().await;
        }
    }

    fn handle(&mut self, command: Command) -> Option<oneshot::Sender<()>> {
        match command {
            Command::Send(message, reply) => {
                let outcome = self.engine.push(message);
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
                None
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
                None
            }
            Command::ConfirmDurable(seq) => {
                self.engine.confirm_durable(seq);
                None
            }
            Command::Close(reply) => Some(reply),
        }
    }

    /// Hands what is due to Zenoh and starts a handshake if one is due.
    fn flush(&mut self) {
        let now = Instant::now();
        for frame in self.engine.poll(now) {
            self.io.put(frame);
        }
        if !self.engine.egress_pending.is_empty() {
            self.engine.record_egress(now_us());
        }
        if let Some(session) = self.engine.wants_handshake(now) {
            start_handshake(&self.io, session);
        }
    }

    /// One turn of the protocol: send what is due, then wait for a frame, a presence
    /// change, a query, a handshake's outcome or the next timer, and take it (with whatever
    /// else is queued). False when Zenoh stopped delivering (the session closed).
    /// Cancel-safe: nothing is taken before the wait ends.
    async fn turn(&mut self) -> bool {
        self.flush();
        let now = Instant::now();
        let wake = tokio::time::Instant::from_std(self.engine.next_wakeup(now));
        if self.timer.deadline() != wake {
            self.timer.as_mut().reset(wake);
        }
        tokio::select! {
            item = self.io.inbound.recv() => {
                let Some(item) = item else { return false };
                self.take(item);
                // Take whatever else is already queued before answering.
                while let Some(item) = self.io.inbound.try_recv() {
                    self.take(item);
                }
            }
            outcome = self.io.hs_rx.recv() => {
                if let Some(outcome) = outcome {
                    self.engine.on_handshake_outcome(outcome, Instant::now());
                }
            }
            _ = &mut self.timer => {}
        }
        true
    }

    fn take(&mut self, item: Inbound) {
        match item {
            Inbound::Frame(payload) => {
                let bytes = payload.to_bytes();
                self.engine.receive_frame(&bytes, Instant::now());
                if self.engine.ack_owed.is_some() {
                    self.turn_owed = true;
                }
            }
            Inbound::Presence(present) => self.engine.on_peer_presence(present, Instant::now()),
            Inbound::Query(query) => {
                let payload = query
                    .payload()
                    .map(|p| p.to_bytes().into_owned())
                    .unwrap_or_default();
                if let Some(answer) = self.engine.on_handshake_query(&payload, Instant::now()) {
                    if let Err(e) = query.reply(self.io.keys.sync(), answer).wait() {
                        warn!(error = %e, "answering a handshake failed");
                    }
                }
            }
        }
    }
}

enum HandshakeOutcome {
    Answer(u64, Vec<u8>),
    NoAnswer(u64),
}

fn start_handshake(io: &Io, (session_id, first): (u64, Vec<u8>)) {
    let zsession = io.session.clone();
    let key = io.keys.sync();
    let tx = io.hs_tx.clone();
    tokio::spawn(async move {
        // Every queryable on the key answers (a rogue one too); each answer is tried until
        // one authenticates as the DR.
        let replies = zsession
            .get(key)
            .payload(first)
            .target(QueryTarget::All)
            .consolidation(ConsolidationMode::None)
            .timeout(Duration::from_millis(1000))
            .await;
        if let Ok(replies) = replies {
            while let Ok(reply) = replies.recv_async().await {
                if let Ok(sample) = reply.result() {
                    let answer = sample.payload().to_bytes().into_owned();
                    if tx
                        .send(HandshakeOutcome::Answer(session_id, answer))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(HandshakeOutcome::NoAnswer(session_id));
    });
}

struct SessionEntry {
    session: Session,
    /// At the DR: confirmed by an authentic frame. At the PE: always true.
    confirmed: bool,
    established: Instant,
    /// The PE's sync state, applied when a pending session is confirmed.
    peer_state: Option<SyncState>,
    retire_at: Option<Instant>,
}

/// The protocol state machine of one link end, without I/O.
struct Engine {
    role: Role,
    vehicle: String,
    material: KeyMaterial,
    config: LinkConfig,
    incarnation: u64,
    peer_incarnation: Option<u64>,
    sender: Sender,
    receiver: Receiver,
    sessions: HashMap<u64, SessionEntry>,
    /// The session frames are sealed under.
    current: Option<u64>,
    seen_session_ids: HashSet<u64>,
    seen_order: VecDeque<u64>,
    pending_handshake: Option<(crypto::PendingHandshake, Instant)>,
    completed_attempts: VecDeque<u64>,
    last_handshake_attempt: Option<Instant>,
    /// Handshakes started in a row while the DR's token was present and it was merely
    /// silent (each waits twice as long as the one before).
    silent_attempts: u32,
    rekey_due: bool,
    peer_alive: bool,
    peer_token_present: bool,
    last_heard: Option<Instant>,
    last_sent: Option<Instant>,
    ack_owed: Option<(u64, Instant)>,
    /// Since when the durable point moved without a frame telling the peer.
    durable_owed: Option<Instant>,
    /// The application had its turn: acknowledge now.
    ack_now: bool,
    fault: FaultLayer,
    /// Frames received, held or dropped by the inbound fault layer before they are opened.
    inbound_fault: FaultLayer,
    controller: Controller,
    meter: PathMeter,
    peer_report: PathReport,
    pacing_until: Option<Instant>,
    events: mpsc::UnboundedSender<LinkEvent>,
    stats: LinkStats,
    plaintext: Vec<u8>,
    log_budget: (Instant, u32, u64),
    /// created_us of messages sealed for the first time, not yet handed to Zenoh.
    egress_pending: Vec<u64>,
    /// Newest egress times, microseconds.
    egress_samples: VecDeque<u64>,
}

const MAX_SEEN_SESSIONS: usize = 4096;
const MAX_PENDING_SESSIONS: usize = 4;
/// Longest wait between handshakes while the DR's token is present and it is only silent.
const SILENT_HANDSHAKE_MAX: Duration = Duration::from_secs(5);
/// Wait between handshakes while no DR token has been seen (its appearance starts one at
/// once; these are a probe in case liveliness does not reach this end).
const NO_TOKEN_HANDSHAKE_RETRY: Duration = Duration::from_secs(2);

impl Engine {
    fn new(config: LinkConfig, events: mpsc::UnboundedSender<LinkEvent>) -> Self {
        let role = config.material.role;
        let stats = LinkStats {
            role: role.to_string(),
            vehicle: config.material.vehicle.to_string(),
            ..Default::default()
        };
        Engine {
            role,
            vehicle: config.material.vehicle.to_string(),
            material: config.material.clone(),
            incarnation: config
                .resume
                .map(|r| r.incarnation)
                .unwrap_or_else(rand::random),
            peer_incarnation: None,
            sender: Sender::new(
                Outbox::new(config.outbox_messages, config.outbox_bytes),
                config.max_in_flight_bytes,
            ),
            receiver: {
                let mut r = Receiver::new(config.reorder_window);
                if config.durable_acks {
                    r.gate_acks_on_durability();
                }
                if let Some(resume) = config.resume {
                    r.resume_at(resume.rx_next);
                }
                r
            },
            sessions: HashMap::new(),
            current: None,
            seen_session_ids: HashSet::new(),
            seen_order: VecDeque::new(),
            pending_handshake: None,
            completed_attempts: VecDeque::new(),
            last_handshake_attempt: None,
            silent_attempts: 0,
            rekey_due: false,
            peer_alive: false,
            peer_token_present: false,
            last_heard: None,
            last_sent: None,
            ack_owed: None,
            durable_owed: None,
            ack_now: false,
            fault: FaultLayer::new(config.faults.clone(), config.fault_seed),
            inbound_fault: FaultLayer::new(
                config.inbound_faults.clone(),
                config.fault_seed ^ 0x1b0d,
            ),
            controller: Controller::new(config.rate_control),
            meter: PathMeter::new(config.report_interval),
            peer_report: PathReport::default(),
            pacing_until: None,
            events,
            stats,
            plaintext: Vec::new(),
            log_budget: (Instant::now(), 0, 0),
            egress_pending: Vec::new(),
            egress_samples: VecDeque::new(),
            config,
        }
    }

    /// Everything received up to `seq` is durable: the acknowledgement moves, riding on
    /// the next frame or going alone after `durable_ack_delay`.
    fn confirm_durable(&mut self, seq: u64) {
        if self.receiver.confirm_durable(seq) && self.durable_owed.is_none() {
            self.durable_owed = Some(Instant::now());
        }
    }

    fn push(&mut self, message: Message) -> PushOutcome {
        let outcome = self.sender.push(message);
        match &outcome {
            PushOutcome::Dropped => {
                debug!(vehicle = %self.vehicle, "outbox full of more important messages: dropped the new one")
            }
            PushOutcome::QueuedAfterDropping(v) => {
                debug!(vehicle = %self.vehicle, dropped = v.len(), "outbox full: dropped older, less important messages")
            }
            _ => {}
        }
        outcome
    }

    fn reject(&mut self, reason: Rejection, what: &str) {
        *self
            .stats
            .rejected
            .entry(reason.as_str().to_string())
            .or_default() += 1;
        // Every refusal is counted; logging is limited to 20 lines a second so that a flood
        // cannot drown the log, and the lines say how many were not logged.
        let now = Instant::now();
        let (since, logged, suppressed) = &mut self.log_budget;
        if now.duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *logged = 0;
        }
        if *logged < 20 {
            *logged += 1;
            warn!(
                vehicle = %self.vehicle,
                role = %self.role,
                reason = reason.as_str(),
                suppressed_before = *suppressed,
                "refused {what}"
            );
            *suppressed = 0;
        } else {
            *suppressed += 1;
        }
    }

    fn stats(&self) -> LinkStats {
        let mut s = self.stats.clone();
        s.peer_alive = self.peer_alive;
        s.sender = self.sender.stats();
        s.receiver = self.receiver.stats();
        s.outbox = self.sender.outbox().stats();
        s.faults = self.fault.control().stats();
        let rtt = self.sender.rtt();
        let us = |d: Option<Duration>| d.map(|d| d.as_micros() as u64);
        s.path = self.controller.estimate(Instant::now());
        s.received = self.meter.latest().clone();
        s.peer_received = self.peer_report.clone();
        s.rtt = RttStats {
            smoothed_us: us(rtt.smoothed()),
            min_us: us(rtt.min()),
            latest_us: us(rtt.latest()),
        };
        let mut samples: Vec<u64> = self.egress_samples.iter().copied().collect();
        let (p50_us, p99_us, max_us) = crate::cli::percentiles(&mut samples);
        s.egress = EgressStats {
            messages: self.stats.egress.messages,
            p50_us,
            p99_us,
            max_us,
        };
        s
    }

    /// Frames sealed since the last call are on their way: time their first messages.
    fn record_egress(&mut self, now_us: u64) {
        for created in self.egress_pending.drain(..) {
            if self.egress_samples.len() == EGRESS_SAMPLES {
                self.egress_samples.pop_front();
            }
            self.egress_samples
                .push_back(now_us.saturating_sub(created));
            self.stats.egress.messages += 1;
        }
    }

    fn emit(&self, event: LinkEvent) {
        let _ = self.events.send(event);
    }

    fn set_peer_alive(&mut self, alive: bool, reason: &'static str, now: Instant) {
        if alive == self.peer_alive {
            return;
        }
        self.peer_alive = alive;
        if alive {
            self.silent_attempts = 0;
            self.stats.peer_ups += 1;
            let session = self.current.unwrap_or(0);
            info!(vehicle = %self.vehicle, role = %self.role, session = %format_args!("{session:016x}"), "peer up");
            // Catch up at once: whatever is unacknowledged goes out now.
            self.sender.retransmit_now(now);
            self.emit(LinkEvent::PeerUp { session });
        } else {
            self.stats.peer_downs += 1;
            info!(vehicle = %self.vehicle, role = %self.role, reason, "peer down");
            self.emit(LinkEvent::PeerDown { reason });
        }
    }

    fn on_peer_presence(&mut self, present: bool, now: Instant) {
        self.peer_token_present = present;
        if present {
            if self.role == Role::Pe {
                // A (re)started DR: handshake now rather than at the next retry.
                self.last_handshake_attempt = None;
                self.rekey_due = true;
            }
        } else {
            self.set_peer_alive(false, "left", now);
        }
    }

    fn remember_session_id(&mut self, id: u64) {
        self.seen_session_ids.insert(id);
        self.seen_order.push_back(id);
        while self.seen_order.len() > MAX_SEEN_SESSIONS {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen_session_ids.remove(&old);
            }
        }
    }

    fn sync_state(&self) -> SyncState {
        SyncState {
            rx_next: self.receiver.acked_next(),
            tx_base: self.sender.base(),
            incarnation: self.incarnation,
            max_ack_delay_us: self.config.ack_delay.as_micros() as u64,
        }
    }

    fn apply_peer_state(&mut self, peer: SyncState, now: Instant) {
        // A new incarnation of the peer lost what it had applied; so did a peer we meet for
        // the first time after talking to an earlier one of it.
        let lost = match self.peer_incarnation {
            Some(known) => known != peer.incarnation,
            None => peer.rx_next < self.sender.base(),
        };
        if lost {
            info!(vehicle = %self.vehicle, role = %self.role, "peer restarted: sending it the latest of every stream");
        }
        self.peer_incarnation = Some(peer.incarnation);
        self.sender
            .set_peer_ack_delay(Duration::from_micros(peer.max_ack_delay_us));
        self.sender.resync(peer.rx_next, lost, now);
        self.receiver.resync(peer.tx_base);
    }

    /// The PE: whether to start a handshake now; returns the session id and first message.
    fn wants_handshake(&mut self, now: Instant) -> Option<(u64, Vec<u8>)> {
        if self.role != Role::Pe {
            return None;
        }
        if let Some(current) = self.current.and_then(|c| self.sessions.get(&c)) {
            let old = now.duration_since(current.established) >= self.config.rekey_after
                || current.session.frames_sealed() >= self.config.rekey_after_frames;
            if old {
                self.rekey_due = true;
            }
        }
        let need = self.current.is_none() || self.rekey_due || !self.peer_alive;
        if !need {
            return None;
        }
        let silent = self.only_silent();
        if let Some(last) = self.handshake_clock() {
            if now.duration_since(last) < self.handshake_interval() {
                return None;
            }
        }
        if self
            .pending_handshake
            .as_ref()
            .is_some_and(|(_, started)| now.duration_since(*started) < Duration::from_secs(1))
        {
            // An attempt is under way; its answer (or its timeout) comes first.
            return None;
        }
        if !self.peer_token_present && self.current.is_some() && !self.rekey_due {
            // The DR is not there; frames under the current session resume when it is.
            return None;
        }
        self.last_handshake_attempt = Some(now);
        if silent {
            self.silent_attempts = self.silent_attempts.saturating_add(1);
        }
        if self.fault.control().is_cut(now) {
            // The fault layer's cut covers handshakes too: this attempt is lost.
            return None;
        }
        let id: u64 = rand::random();
        match crypto::initiate(&self.material, id, &self.sync_state()) {
            Ok((pending, first)) => {
                debug!(vehicle = %self.vehicle, session = %format_args!("{id:016x}"), "starting handshake");
                self.pending_handshake = Some((pending, now));
                Some((id, first))
            }
            Err(e) => {
                warn!(vehicle = %self.vehicle, error = %e, "could not start a handshake");
                None
            }
        }
    }

    /// The PE holds a session, the DR's token is present and no rotation is due: the DR is
    /// there and only silent (slow, or frames lost). Heartbeats resume the link as soon as it
    /// answers; handshakes would only add work to a DR that is already behind.
    fn only_silent(&self) -> bool {
        self.current.is_some() && self.peer_token_present && !self.rekey_due
    }

    /// When the wait for the next handshake started: the last attempt, or while the DR is
    /// only silent the last attempt or the last frame heard, whichever is later.
    fn handshake_clock(&self) -> Option<Instant> {
        if self.only_silent() {
            self.last_handshake_attempt.max(self.last_heard)
        } else {
            self.last_handshake_attempt
        }
    }

    /// The PE's wait between handshake attempts: `handshake_retry`; twice that, doubling
    /// with each attempt, while the DR is only silent (up to [`SILENT_HANDSHAKE_MAX`]); and
    /// [`NO_TOKEN_HANDSHAKE_RETRY`] while no DR token has been seen.
    fn handshake_interval(&self) -> Duration {
        let base = self.config.handshake_retry;
        if self.only_silent() {
            let doubled = base.saturating_mul(2u32 << self.silent_attempts.min(8));
            doubled.min(SILENT_HANDSHAKE_MAX.max(base))
        } else if !self.peer_token_present {
            base.max(NO_TOKEN_HANDSHAKE_RETRY)
        } else {
            base
        }
    }

    fn install_session(
        &mut self,
        session: Session,
        confirmed: bool,
        peer_state: Option<SyncState>,
        now: Instant,
    ) {
        let id = session.id();
        self.sessions.insert(
            id,
            SessionEntry {
                session,
                confirmed,
                established: now,
                peer_state,
                retire_at: None,
            },
        );
    }

    fn make_current(&mut self, id: u64, now: Instant) {
        if self.current == Some(id) {
            return;
        }
        if let Some(old) = self.current.and_then(|c| self.sessions.get_mut(&c)) {
            old.retire_at = Some(now + self.config.session_grace);
            self.stats.rekeys += 1;
        }
        self.current = Some(id);
        self.silent_attempts = 0;
        self.stats.sessions_established += 1;
        info!(vehicle = %self.vehicle, role = %self.role, session = %format_args!("{id:016x}"), "session established");
    }

    fn on_handshake_outcome(&mut self, outcome: HandshakeOutcome, now: Instant) {
        match outcome {
            HandshakeOutcome::NoAnswer(id) => {
                if self
                    .pending_handshake
                    .as_ref()
                    .is_some_and(|(p, _)| p.session_id() == id)
                {
                    self.pending_handshake = None;
                    debug!(vehicle = %self.vehicle, "no answer to handshake");
                }
            }
            HandshakeOutcome::Answer(id, answer) => {
                let pending_id = self.pending_handshake.as_ref().map(|(p, _)| p.session_id());
                if pending_id != Some(id) {
                    if self.completed_attempts.contains(&id) {
                        // The DR answers a handshake once; a second answer to one that
                        // completed came from someone else.
                        self.reject(
                            Rejection::HandshakeFailed,
                            "second answer to a completed handshake",
                        );
                    } else {
                        debug!(vehicle = %self.vehicle, "answer to a superseded handshake attempt");
                    }
                    return;
                }
                let (pending, started) = self.pending_handshake.take().expect("checked above");
                match crypto::complete::<SyncState>(pending, &answer) {
                    Ok((session, dr_state)) => {
                        self.completed_attempts.push_back(id);
                        if self.completed_attempts.len() > 16 {
                            self.completed_attempts.pop_front();
                        }
                        self.install_session(session, true, None, now);
                        self.make_current(id, now);
                        self.rekey_due = false;
                        self.apply_peer_state(dr_state, now);
                        self.last_heard = Some(now);
                        // Confirm the session to the DR right away.
                        self.last_sent = None;
                        self.set_peer_alive(true, "handshake", now);
                    }
                    Err((reason, pending)) => {
                        self.reject(reason, "handshake answer");
                        // Wait for the other answers (a rogue queryable may answer first).
                        self.pending_handshake = pending.map(|p| (p, started));
                    }
                }
            }
        }
    }

    /// The DR: answers a handshake query.
    fn on_handshake_query(&mut self, payload: &[u8], now: Instant) -> Option<Vec<u8>> {
        if self.role != Role::Dr {
            return None;
        }
        let my_state = self.sync_state();
        match crypto::respond::<SyncState, SyncState>(&self.material, payload, |_| my_state) {
            Ok((session, hello, answer)) => {
                if self.seen_session_ids.contains(&hello.session) {
                    self.reject(Rejection::HandshakeReplayed, "handshake");
                    return None;
                }
                self.remember_session_id(hello.session);
                // Bound unconfirmed sessions: a replayed first message makes one that will
                // never be confirmed.
                let mut pending: Vec<(Instant, u64)> = self
                    .sessions
                    .iter()
                    .filter(|(_, e)| !e.confirmed)
                    .map(|(id, e)| (e.established, *id))
                    .collect();
                pending.sort();
                while pending.len() >= MAX_PENDING_SESSIONS {
                    let (_, id) = pending.remove(0);
                    self.sessions.remove(&id);
                }
                self.install_session(session, false, Some(hello.body), now);
                Some(answer)
            }
            Err(reason) => {
                self.reject(reason, "handshake");
                None
            }
        }
    }

    /// A frame from Zenoh: through the inbound fault layer (at once when it is
    /// transparent), then opened.
    fn receive_frame(&mut self, frame: &[u8], now: Instant) {
        if self.inbound_fault.is_transparent(now) {
            self.on_frame(frame, now);
        } else {
            self.inbound_fault.submit(frame.to_vec(), now);
            self.take_inbound_due(now);
        }
    }

    /// Opens the frames the inbound fault layer releases now.
    fn take_inbound_due(&mut self, now: Instant) {
        for frame in self.inbound_fault.take_due(now) {
            self.on_frame(&frame, now);
        }
    }

    fn on_frame(&mut self, frame: &[u8], now: Instant) {
        let header = match crypto::peek_header(frame) {
            Ok(h) => h,
            Err(reason) => return self.reject(reason, "frame"),
        };
        let Some(entry) = self.sessions.get_mut(&header.session) else {
            return self.reject(Rejection::UnknownSession, "frame");
        };
        let mut plaintext = std::mem::take(&mut self.plaintext);
        if let Err(reason) = entry.session.open_into(frame, &mut plaintext) {
            self.plaintext = plaintext;
            return self.reject(reason, "frame");
        }
        let envelope = match protocol::decode(&plaintext) {
            Ok(e) => e,
            Err(_) => {
                self.plaintext = plaintext;
                return self.reject(Rejection::BadPayload, "frame");
            }
        };
        self.plaintext = plaintext;
        if !entry.confirmed {
            entry.confirmed = true;
            let peer_state = entry.peer_state.take();
            self.make_current(header.session, now);
            if let Some(state) = peer_state {
                self.apply_peer_state(state, now);
            }
        }
        self.stats.frames_received += 1;
        self.stats.bytes_received += frame.len() as u64;
        let received_us = now_us();
        self.meter.on_frame(
            frame.len(),
            header.session,
            header.counter,
            envelope.sent_us,
            received_us,
            now,
        );
        self.last_heard = Some(now);
        if !self.peer_alive {
            self.set_peer_alive(true, "frame", now);
        }
        if let Some(report) = &envelope.report {
            self.controller.on_report(report);
            self.peer_report = report.clone();
        }
        if let Some(ack) = &envelope.ack {
            let (bytes, rtt) = self.sender.on_ack_counting(ack, received_us);
            self.controller.on_ack(bytes, rtt, now);
            let bottleneck = self.controller.bottleneck_bps(now);
            if bottleneck > 0.0 {
                self.sender.set_transfer_rate(bottleneck);
            }
        }
        if !envelope.items.is_empty() {
            // Acknowledge data at once; echo its timestamp for the peer's RTT.
            self.ack_owed = Some((envelope.sent_us, now));
        }
        for delivered in self.receiver.on_items(envelope.items) {
            self.emit(LinkEvent::Message(delivered));
        }
    }

    /// Seals `envelope` under the current session and queues it; returns its size.
    fn seal_and_queue(
        &mut self,
        envelope: &Envelope,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> usize {
        let Some(id) = self.current else { return 0 };
        let Some(entry) = self.sessions.get_mut(&id) else {
            return 0;
        };
        let plaintext = protocol::encode_with(envelope, self.config.compress);
        let frame = match entry.session.seal(&plaintext) {
            Ok(f) => f,
            Err(e) => {
                warn!(vehicle = %self.vehicle, error = %e, "sealing failed; rotating keys");
                self.rekey_due = true;
                return 0;
            }
        };
        let len = frame.len();
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += len as u64;
        self.last_sent = Some(now);
        if self.fault.is_transparent(now) {
            out.push(frame);
        } else {
            self.fault.submit(frame, now);
        }
        len
    }

    /// Frames to hand to Zenoh now.
    fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.take_inbound_due(now);
        let mut out = Vec::new();
        out.extend(self.fault.take_due(now));
        // Expire retired sessions and stale pending handshakes.
        self.sessions.retain(|_, e| {
            e.retire_at.is_none_or(|t| now < t)
                && (e.confirmed || now.duration_since(e.established) < Duration::from_secs(30))
        });
        if let Some((_, started)) = &self.pending_handshake {
            if now.duration_since(*started) > Duration::from_secs(2) {
                self.pending_handshake = None;
            }
        }
        if self.peer_alive
            && self
                .last_heard
                .is_some_and(|t| now.duration_since(t) > self.config.peer_timeout)
        {
            self.set_peer_alive(false, "timeout", now);
        }
        if self.current.is_some() {
            loop {
                // While the peer is away, messages wait (and coalesce) in the outbox and only
                // heartbeats go out; when it is back, everything unacknowledged is resent.
                let paced = self.pacing_until.is_some_and(|t| now < t);
                let items = if self.peer_alive && !paced {
                    self.sender
                        .set_max_in_flight_bytes(self.controller.window_bytes(now));
                    let before = self.sender.stats();
                    let items = self.sender.next_items(now, self.config.frame_budget);
                    let after = self.sender.stats();
                    for _ in before.retransmitted..after.retransmitted {
                        self.controller.on_retransmit();
                    }
                    // First transmissions come last in the frame.
                    let first = (after.sent - before.sent) as usize;
                    for item in &items[items.len().saturating_sub(first)..] {
                        if let WireItem::Data { message, .. } = item {
                            self.egress_pending.push(message.created_us);
                        }
                    }
                    items
                } else {
                    Vec::new()
                };
                let idle = self
                    .last_sent
                    .is_none_or(|t| now.duration_since(t) >= self.config.heartbeat);
                // A standalone acknowledgement waits up to `ack_delay`, so that it usually
                // rides on the application's answer instead of costing a frame of its own.
                let ack_due = self.ack_owed.is_some_and(|(_, received)| {
                    self.ack_now || now.duration_since(received) >= self.config.ack_delay
                }) || self.durable_owed.is_some_and(|since| {
                    now.duration_since(since) >= self.config.durable_ack_delay
                });
                if items.is_empty() && !ack_due && !idle {
                    break;
                }
                self.ack_now = false;
                // Every frame carries the acknowledgement, the durable point included.
                self.durable_owed = None;
                let ack = self
                    .ack_owed
                    .take()
                    .map(|(sent_us, received)| {
                        self.receiver
                            .ack(sent_us, now.duration_since(received).as_micros() as u64)
                    })
                    .or_else(|| Some(self.receiver.ack(0, 0)));
                let done = items.is_empty();
                let report = self.meter.take_report(now).map(|mut r| {
                    r.sender_bottleneck_bps = self.controller.bottleneck_bps(now) as u64;
                    r
                });
                let envelope = Envelope {
                    sent_us: now_us(),
                    ack,
                    items,
                    report,
                };
                let sent_bytes = self.seal_and_queue(&envelope, now, &mut out);
                if !done {
                    self.controller.on_sent(sent_bytes, now);
                    self.pacing_until = self.controller.next_send_at(0, now);
                }
                if done || self.current.is_none() {
                    break;
                }
            }
        }
        out.extend(self.fault.take_due(now));
        out
    }

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut wake = now + self.config.heartbeat;
        if let Some(t) = self.last_sent {
            wake = wake.min(t + self.config.heartbeat);
        }
        if let Some(t) = self.sender.next_retransmit_at() {
            wake = wake.min(t);
        }
        if let Some(t) = self.fault.next_due() {
            wake = wake.min(t);
        }
        if let Some(t) = self.inbound_fault.next_due() {
            wake = wake.min(t);
        }
        if let Some((_, received)) = self.ack_owed {
            wake = wake.min(received + self.config.ack_delay);
        }
        if let Some(since) = self.durable_owed {
            wake = wake.min(since + self.config.durable_ack_delay);
        }
        if let Some(t) = self.pacing_until {
            wake = wake.min(t);
        }
        if self.peer_alive {
            if let Some(t) = self.last_heard {
                wake = wake.min(t + self.config.peer_timeout + Duration::from_millis(1));
            }
        }
        if self.role == Role::Pe && (self.current.is_none() || !self.peer_alive || self.rekey_due) {
            let retry = self
                .handshake_clock()
                .map_or(now, |t| t + self.handshake_interval());
            wake = wake.min(retry);
        }
        wake.max(now + Duration::from_micros(50))
    }
}

/// The DR's side of frame processing without Zenoh, for the ingest benchmark and tests:
/// open, decode and apply sealed frames exactly as a running DR does.
pub struct IngestPipeline {
    engine: Engine,
    events: mpsc::UnboundedReceiver<LinkEvent>,
}

impl IngestPipeline {
    /// Sets up a PE session and a DR engine that share keys; returns the pipeline and a
    /// sealer that makes frames as the PE would.
    pub fn new(pe: KeyMaterial, dr: KeyMaterial) -> anyhow::Result<(IngestPipeline, FrameSealer)> {
        let (tx, events) = mpsc::unbounded_channel();
        let config = LinkConfig::new(dr, ZenohSettings::peer_listening("tcp/127.0.0.1:0"));
        let mut engine = Engine::new(config, tx);
        let now = Instant::now();
        let (pending, first) = crypto::initiate(&pe, 1, &SyncState::default())?;
        let answer = engine
            .on_handshake_query(&first, now)
            .ok_or_else(|| anyhow::anyhow!("handshake refused"))?;
        let (session, _) = crypto::complete::<SyncState>(pending, &answer)
            .map_err(|(r, _)| anyhow::anyhow!("handshake failed: {r}"))?;
        Ok((
            IngestPipeline { engine, events },
            FrameSealer {
                session,
                sender: Sender::new(Outbox::new(1 << 16, 1 << 30), usize::MAX),
                compress: false,
            },
        ))
    }

    /// Opens, decodes and applies one frame; returns the messages it delivered.
    pub fn ingest(&mut self, frame: &[u8]) -> Vec<Delivered> {
        self.engine.on_frame(frame, Instant::now());
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let LinkEvent::Message(d) = event {
                out.push(d);
            }
        }
        out
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.engine.stats()
    }
}

/// Makes sealed frames as a PE would (for [`IngestPipeline`]).
pub struct FrameSealer {
    session: Session,
    sender: Sender,
    compress: bool,
}

impl FrameSealer {
    /// Compress frames as a vehicle's link end does ([`LinkConfig::compress`]).
    pub fn set_compress(&mut self, on: bool) {
        self.compress = on;
    }

    /// Seals `message` in a frame of its own.
    pub fn seal(&mut self, message: Message) -> Vec<u8> {
        self.sender.push(message);
        let items = self.sender.next_items(Instant::now(), usize::MAX);
        // Every frame counts as acknowledged, so the sender stays small.
        let acked = Ack {
            next_expected: items.last().map_or(0, |i| i.seq() + 1),
            ..Ack::default()
        };
        self.sender.on_ack(&acked, 0);
        let envelope = Envelope {
            sent_us: now_us(),
            ack: None,
            items,
            report: None,
        };
        self.session
            .seal(&protocol::encode_with(&envelope, self.compress))
            .expect("frames within limits seal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VehicleId;

    /// A PE engine and a DR engine for the same vehicle, without Zenoh.
    fn engines() -> (Engine, Engine) {
        let vehicle = VehicleId::new("veh-pace").unwrap();
        let (pe, dr) = KeyMaterial::generate_pair(&vehicle).unwrap();
        let zenoh = ZenohSettings::peer_listening("tcp/127.0.0.1:0");
        let (pe_events, _) = mpsc::unbounded_channel();
        let (dr_events, _) = mpsc::unbounded_channel();
        (
            Engine::new(LinkConfig::new(pe, zenoh.clone()), pe_events),
            Engine::new(LinkConfig::new(dr, zenoh), dr_events),
        )
    }

    /// Runs the PE's handshake against the DR at `now`; panics if none was due.
    fn handshake(pe: &mut Engine, dr: &mut Engine, now: Instant) {
        let (id, first) = pe.wants_handshake(now).expect("a handshake is due");
        let answer = dr.on_handshake_query(&first, now).expect("the DR answers");
        pe.on_handshake_outcome(HandshakeOutcome::Answer(id, answer), now);
        assert_eq!(pe.current, Some(id), "the session is established");
    }

    #[test]
    fn handshakes_wait_for_the_drs_token_and_back_off_while_it_is_only_silent() {
        let (mut pe, mut dr) = engines();
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);

        // No DR token yet: one attempt, then only a slow probe.
        let (id, _) = pe.wants_handshake(t0).expect("first attempt at once");
        pe.on_handshake_outcome(HandshakeOutcome::NoAnswer(id), t0 + ms(5));
        assert!(
            pe.wants_handshake(t0 + ms(400)).is_none(),
            "no token: no 300 ms retry"
        );
        assert!(
            pe.wants_handshake(t0 + ms(2_100)).is_some(),
            "no token: probe after 2 s"
        );

        // The token appears: a handshake at once, which succeeds.
        pe.pending_handshake = None;
        pe.on_peer_presence(true, t0 + ms(2_200));
        handshake(&mut pe, &mut dr, t0 + ms(2_200));
        pe.last_heard = Some(t0 + ms(2_300));

        // The DR goes silent with its token still there: no handshake while it is within
        // twice the retry of the last frame, then one; the next waits twice as long.
        let heard = t0 + ms(2_300);
        pe.poll(heard + ms(700));
        assert!(!pe.peer_alive, "silent longer than the peer timeout");
        assert!(pe.wants_handshake(heard + ms(500)).is_none());
        let first = heard + ms(700);
        let (id, _) = pe.wants_handshake(first).expect("after 600 ms of silence");
        pe.on_handshake_outcome(HandshakeOutcome::NoAnswer(id), first + ms(1_000));
        assert!(pe.wants_handshake(first + ms(1_100)).is_none(), "1.2 s now");
        let second = first + ms(1_250);
        let (id, _) = pe.wants_handshake(second).expect("after 1.2 s");
        pe.on_handshake_outcome(HandshakeOutcome::NoAnswer(id), second + ms(1_000));
        assert!(
            pe.wants_handshake(second + ms(2_300)).is_none(),
            "2.4 s now"
        );
        assert!(pe.wants_handshake(second + ms(2_450)).is_some());

        // The token goes and comes back (a restarted DR): a handshake at once.
        let later = second + ms(5_000);
        pe.pending_handshake = None;
        pe.on_peer_presence(false, later);
        pe.on_peer_presence(true, later);
        assert!(
            pe.wants_handshake(later).is_some(),
            "a restarted DR: at once"
        );
    }
}
