//! Loss-free, in-order, deduplicated delivery over a lossy path, without I/O.
//!
//! Each direction of the link is one ordered stream of sequence numbers:
//!
//! - The [`Outbox`] stores what the application sent and has not gone out yet, bounded,
//!   by priority (own state > hazards > objects > info) and coalesced by stream: a newer
//!   message on the same stream replaces the queued one. Whatever is dropped for lack of
//!   room is counted per priority, never silent.
//! - The [`Sender`] numbers messages when they first leave, keeps them until acknowledged,
//!   and retransmits on timeout. A message superseded while in flight is retransmitted as a
//!   small [`WireItem::Skip`], so the receiver's sequence has no holes and stale data is not
//!   re-sent.
//! - The [`Receiver`] delivers each sequence number once and in order, buffers what
//!   arrives early, counts duplicates, and acknowledges cumulatively with selective ranges.
//!
//! An acknowledgement means "applied": a sender forgets a message only when the receiver
//! has handed it (or its skip) to the application.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Importance of a message; lower values go first and are dropped last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    /// The sender's own state (vehicle state, recommendations).
    OwnState = 0,
    /// Hazards and incidents.
    Hazard = 1,
    /// Perceived objects.
    Objects = 2,
    /// Everything else (status, diagnostics).
    Info = 3,
}

impl Priority {
    /// Every priority, most important first.
    pub const ALL: [Priority; 4] = [
        Priority::OwnState,
        Priority::Hazard,
        Priority::Objects,
        Priority::Info,
    ];

    /// Snake-case name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::OwnState => "own_state",
            Priority::Hazard => "hazard",
            Priority::Objects => "objects",
            Priority::Info => "info",
        }
    }
}

/// One application message: a serialized ROS message on a coalescing stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Coalescing key: a newer message on the same stream supersedes an older one.
    pub stream: String,
    /// Importance.
    pub priority: Priority,
    /// ROS type name of the payload, e.g. `twin_msgs/msg/PerceptionSummary`.
    pub type_name: String,
    /// When the source made it, microseconds since the Unix epoch.
    pub created_us: u64,
    /// The CDR-encoded message.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Message {
    /// Bytes this message costs on the path, roughly (for budgets and the window): its
    /// fields plus a share of the frame around it (envelope, acknowledgement, report,
    /// sealing, Zenoh and transport headers).
    pub fn wire_len(&self) -> usize {
        self.stream.len() + self.type_name.len() + self.payload.len() + 24 + FRAMING_SHARE
    }
}

/// Framing bytes counted with each message (see [`Message::wire_len`]).
pub const FRAMING_SHARE: usize = 96;

/// An item in a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireItem {
    /// A message with its sequence number.
    Data {
        /// Sequence number in this direction.
        seq: u64,
        /// The message.
        message: Arc<Message>,
    },
    /// A sequence number whose message was superseded before it was acknowledged.
    Skip {
        /// The superseded sequence number.
        seq: u64,
    },
}

impl WireItem {
    /// The item's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            WireItem::Data { seq, .. } | WireItem::Skip { seq } => *seq,
        }
    }
}

/// Cumulative acknowledgement with selective ranges and a timestamp echo for RTT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Every sequence number below this was applied (with durable acknowledgements: made
    /// durable by the application); the sender forgets them.
    pub next_expected: u64,
    /// Every sequence number below this was received and delivered (at least
    /// `next_expected`): the sender stops counting them in flight and stops resending them,
    /// but keeps those not yet acknowledged by `next_expected` until they are (the receiver
    /// may still lose them if it dies before making them durable).
    pub received_next: u64,
    /// Inclusive ranges above `next_expected` that arrived (at most [`MAX_ACK_RANGES`]).
    pub ranges: Vec<(u64, u64)>,
    /// `sent_us` of the newest frame received, echoed back.
    pub echo_sent_us: u64,
    /// Microseconds between receiving that frame and sending this ack.
    pub echo_hold_us: u64,
}

/// Largest number of selective ranges in one ack.
pub const MAX_ACK_RANGES: usize = 16;

/// Counters of the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStats {
    /// Messages accepted.
    pub pushed: u64,
    /// Queued messages replaced by a newer one on the same stream.
    pub coalesced: u64,
    /// Messages dropped for lack of room, by priority (index = `Priority as usize`).
    pub dropped: [u64; 4],
    /// Messages queued now.
    pub queued: usize,
    /// Bytes queued now.
    pub queued_bytes: usize,
}

/// What happened to a pushed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// Replaced an older queued message on the same stream.
    Coalesced,
    /// Queued after dropping these less important, older messages (stream, priority).
    QueuedAfterDropping(Vec<(String, Priority)>),
    /// Not queued: the outbox is full of more important messages.
    Dropped,
}

/// Bounded store-and-forward buffer with priorities and coalescing.
#[derive(Debug)]
pub struct Outbox {
    queues: [VecDeque<String>; 4],
    messages: HashMap<String, Message>,
    bytes: usize,
    capacity_bytes: usize,
    capacity_messages: usize,
    stats: OutboxStats,
}

impl Outbox {
    /// An outbox holding at most `capacity_messages` messages and `capacity_bytes` bytes.
    pub fn new(capacity_messages: usize, capacity_bytes: usize) -> Self {
        Self {
            queues: Default::default(),
            messages: HashMap::new(),
            bytes: 0,
            capacity_bytes,
            capacity_messages: capacity_messages.max(1),
            stats: OutboxStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> OutboxStats {
        let mut s = self.stats.clone();
        s.queued = self.messages.len();
        s.queued_bytes = self.bytes;
        s
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Queues `message`, replacing a queued one on the same stream.
    pub fn push(&mut self, message: Message) -> PushOutcome {
        self.stats.pushed += 1;
        let size = message.wire_len();
        if let Some(old) = self.messages.get_mut(&message.stream) {
            // Keep the queue position (fairness), take the newest content and priority.
            let old_size = old.wire_len();
            let old_priority = old.priority;
            let new_priority = message.priority;
            *old = message;
            self.bytes = self.bytes + size - old_size;
            if old_priority != new_priority {
                let stream = old.stream.clone();
                self.queues[old_priority as usize].retain(|s| *s != stream);
                self.queues[new_priority as usize].push_back(stream);
            }
            self.stats.coalesced += 1;
            return PushOutcome::Coalesced;
        }
        let mut evicted = Vec::new();
        while self.messages.len() + 1 > self.capacity_messages
            || (self.bytes + size > self.capacity_bytes && !self.messages.is_empty())
        {
            // Evict the oldest of the least important queue that is not more important
            // than the newcomer.
            let victim_queue = (message.priority as usize..4)
                .rev()
                .find(|&p| !self.queues[p].is_empty());
            let Some(p) = victim_queue else {
                // Everything queued is more important: drop the newcomer, undo evictions'
                // accounting is not needed (none happened at lower priority).
                self.stats.dropped[message.priority as usize] += 1;
                return PushOutcome::Dropped;
            };
            let stream = self.queues[p].pop_front().expect("queue is not empty");
            let victim = self
                .messages
                .remove(&stream)
                .expect("queued streams have messages");
            self.bytes -= victim.wire_len();
            self.stats.dropped[p] += 1;
            evicted.push((stream, victim.priority));
        }
        self.bytes += size;
        self.queues[message.priority as usize].push_back(message.stream.clone());
        self.messages.insert(message.stream.clone(), message);
        if evicted.is_empty() {
            PushOutcome::Queued
        } else {
            PushOutcome::QueuedAfterDropping(evicted)
        }
    }

    /// The next message to send: most important first, oldest first within a priority.
    pub fn pop(&mut self) -> Option<Message> {
        for queue in &mut self.queues {
            if let Some(stream) = queue.pop_front() {
                let message = self
                    .messages
                    .remove(&stream)
                    .expect("queued streams have messages");
                self.bytes -= message.wire_len();
                return Some(message);
            }
        }
        None
    }

    /// Size of the next message [`Outbox::pop`] would return.
    pub fn peek_len(&self) -> Option<usize> {
        self.queues
            .iter()
            .find_map(|q| q.front())
            .map(|s| self.messages[s].wire_len())
    }
}

/// Round-trip time estimator (RFC 6298) with the minimum seen.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Option<Duration>,
    latest: Option<Duration>,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    /// An estimator whose timeout stays within `[min_rto, max_rto]`.
    pub fn new(min_rto: Duration, max_rto: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            min: None,
            latest: None,
            min_rto,
            max_rto,
        }
    }

    /// Adds a sample.
    pub fn sample(&mut self, rtt: Duration) {
        self.latest = Some(rtt);
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// Smoothed RTT, if any sample was taken.
    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }

    /// Smallest RTT seen.
    pub fn min(&self) -> Option<Duration> {
        self.min
    }

    /// Newest sample.
    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }

    /// Retransmission timeout.
    pub fn rto(&self) -> Duration {
        let rto = match self.srtt {
            None => Duration::from_millis(200),
            Some(srtt) => {
                srtt + (self.rttvar * 4)
                    .max(srtt / 4)
                    .max(Duration::from_millis(1))
            }
        };
        rto.clamp(self.min_rto, self.max_rto)
    }
}

#[derive(Debug)]
struct InFlight {
    /// `None` once superseded: only a skip is retransmitted.
    message: Option<Arc<Message>>,
    stream: String,
    len: usize,
    last_sent: Instant,
    transmissions: u32,
    /// The peer has it but has not acknowledged it durable: not counted in flight, not
    /// resent unless the peer restarts.
    received: bool,
}

/// Counters of a sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderStats {
    /// Messages sent the first time.
    pub sent: u64,
    /// Retransmissions of data.
    pub retransmitted: u64,
    /// Skips sent for messages superseded in flight.
    pub skips_sent: u64,
    /// Messages acknowledged.
    pub acknowledged: u64,
    /// Messages in flight (sent, not acknowledged; those received but not yet durable at
    /// the peer included).
    pub in_flight: usize,
    /// Of those, received by the peer and waiting for its durability.
    #[serde(default)]
    pub awaiting_durability: usize,
    /// Bytes in flight.
    pub in_flight_bytes: usize,
}

/// The sending half of one direction.
#[derive(Debug)]
pub struct Sender {
    outbox: Outbox,
    next_seq: u64,
    in_flight: BTreeMap<u64, InFlight>,
    in_flight_bytes: usize,
    newest_seq_of_stream: HashMap<String, u64>,
    latest_of_stream: HashMap<String, Arc<Message>>,
    rtt: RttEstimator,
    stats: SenderStats,
    max_in_flight_bytes: usize,
    /// The retransmission timer covers the round trip plus a message's own transfer time at
    /// this rate [bit/s], so that large messages are not resent while still in transit.
    transfer_bps: f64,
    /// How long the peer may hold an acknowledgement (added to the retransmission timeout).
    peer_ack_delay: Duration,
}

/// The longest acknowledgement delay a peer may announce: beyond it, a loss would go
/// unrepaired for too long.
pub const MAX_PEER_ACK_DELAY: Duration = Duration::from_millis(500);

/// Most distinct streams whose latest message is kept for catch-up.
pub const MAX_SNAPSHOT_STREAMS: usize = 4096;

impl Sender {
    /// A sender with the given outbox bounds and in-flight byte limit.
    pub fn new(outbox: Outbox, max_in_flight_bytes: usize) -> Self {
        Self {
            outbox,
            next_seq: 0,
            in_flight: BTreeMap::new(),
            in_flight_bytes: 0,
            newest_seq_of_stream: HashMap::new(),
            latest_of_stream: HashMap::new(),
            rtt: RttEstimator::new(Duration::from_millis(10), Duration::from_secs(1)),
            stats: SenderStats::default(),
            max_in_flight_bytes,
            transfer_bps: 16e6,
            peer_ack_delay: Duration::ZERO,
        }
    }

    /// The peer holds acknowledgements up to `delay` for data to ride on: retransmissions
    /// wait that much longer (capped at [`MAX_PEER_ACK_DELAY`]).
    pub fn set_peer_ack_delay(&mut self, delay: Duration) {
        self.peer_ack_delay = delay.min(MAX_PEER_ACK_DELAY);
    }

    /// The retransmission timeout: the RTT estimator's, plus the peer's acknowledgement
    /// delay.
    fn rto(&self) -> Duration {
        self.rtt.rto() + self.peer_ack_delay
    }

    /// Queues a message for sending.
    pub fn push(&mut self, message: Message) -> PushOutcome {
        self.outbox.push(message)
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The RTT estimator.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Changes the in-flight byte limit (the rate controller's window).
    pub fn set_max_in_flight_bytes(&mut self, bytes: usize) {
        self.max_in_flight_bytes = bytes.max(1);
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        let mut s = self.stats.clone();
        s.in_flight = self.in_flight.len();
        s.awaiting_durability = self.in_flight.values().filter(|f| f.received).count();
        s.in_flight_bytes = self.in_flight_bytes;
        s
    }

    /// The oldest unacknowledged sequence number (or the next one to be used).
    pub fn base(&self) -> u64 {
        self.in_flight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_seq)
    }

    /// True when something waits to be sent or acknowledged.
    pub fn has_pending(&self) -> bool {
        !self.outbox.is_empty() || !self.in_flight.is_empty()
    }

    /// When the earliest retransmission falls due.
    pub fn next_retransmit_at(&self) -> Option<Instant> {
        let rto = self.rto();
        // Everything in flight may sit in the bottleneck's queue ahead of a message.
        let queued_ahead = self.in_flight_bytes;
        self.in_flight
            .values()
            .filter(|f| !f.received)
            .map(|f| {
                f.last_sent
                    + backoff(rto, f.transmissions)
                    + self.transfer_allowance(f.len + queued_ahead)
            })
            .min()
    }

    /// Items to put in the next frame, at most about `budget` bytes (at least one item if
    /// any is due): retransmissions that are due first, then new messages while the
    /// in-flight limit allows.
    pub fn next_items(&mut self, now: Instant, budget: usize) -> Vec<WireItem> {
        let mut items = Vec::new();
        let mut used = 0usize;
        let rto = self.rto();
        let queued_ahead = self.in_flight_bytes;
        let due: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| {
                !f.received
                    && f.last_sent
                        + backoff(rto, f.transmissions)
                        + self.transfer_allowance(f.len + queued_ahead)
                        <= now
            })
            .map(|(&seq, _)| seq)
            .collect();
        for seq in due {
            let f = self.in_flight.get_mut(&seq).expect("due seq is in flight");
            let (item, len) = match &f.message {
                Some(message) => (
                    WireItem::Data {
                        seq,
                        message: message.clone(),
                    },
                    f.len,
                ),
                None => (WireItem::Skip { seq }, 16),
            };
            if used > 0 && used + len > budget {
                return items;
            }
            used += len;
            f.last_sent = now;
            f.transmissions += 1;
            if matches!(item, WireItem::Skip { .. }) {
                self.stats.skips_sent += 1;
            } else {
                self.stats.retransmitted += 1;
            }
            items.push(item);
        }
        while let Some(len) = self.outbox.peek_len() {
            if used > 0 && used + len > budget {
                break;
            }
            if self.in_flight_bytes > 0 && self.in_flight_bytes + len > self.max_in_flight_bytes {
                break;
            }
            let message = Arc::new(self.outbox.pop().expect("peeked"));
            let seq = self.next_seq;
            self.next_seq += 1;
            if let Some(older) = self
                .newest_seq_of_stream
                .insert(message.stream.clone(), seq)
            {
                if let Some(f) = self.in_flight.get_mut(&older) {
                    // Its bytes stay counted in flight: they are still on the path until
                    // acknowledged. Only a skip will be resent for it.
                    f.message.take();
                }
            }
            self.remember_latest(&message);
            used += len;
            self.in_flight.insert(
                seq,
                InFlight {
                    message: Some(message.clone()),
                    stream: message.stream.clone(),
                    len,
                    last_sent: now,
                    transmissions: 1,
                    received: false,
                },
            );
            self.in_flight_bytes += len;
            self.stats.sent += 1;
            items.push(WireItem::Data { seq, message });
        }
        items
    }

    fn remember_latest(&mut self, message: &Arc<Message>) {
        if self.latest_of_stream.len() >= MAX_SNAPSHOT_STREAMS
            && !self.latest_of_stream.contains_key(&message.stream)
        {
            // Forget the stalest stream to stay bounded.
            if let Some(stalest) = self
                .latest_of_stream
                .iter()
                .min_by_key(|(_, m)| m.created_us)
                .map(|(s, _)| s.clone())
            {
                self.latest_of_stream.remove(&stalest);
            }
        }
        self.latest_of_stream
            .insert(message.stream.clone(), message.clone());
    }

    /// Applies an acknowledgement; returns the RTT sample it gave, if any.
    pub fn on_ack(&mut self, ack: &Ack, now_us: u64) -> Option<Duration> {
        self.on_ack_counting(ack, now_us).1
    }

    /// Applies an acknowledgement; returns the bytes it acknowledged and its RTT sample.
    pub fn on_ack_counting(&mut self, ack: &Ack, now_us: u64) -> (usize, Option<Duration>) {
        let acked: Vec<u64> = self
            .in_flight
            .range(..ack.next_expected)
            .map(|(&s, _)| s)
            .chain(ack.ranges.iter().flat_map(|&(lo, hi)| {
                self.in_flight
                    .range(lo..=hi.max(lo))
                    .map(|(&s, _)| s)
                    .collect::<Vec<_>>()
            }))
            .collect();
        let mut bytes: usize = acked.into_iter().map(|seq| self.forget(seq)).sum();
        // Received, not yet durable: out of the window, kept for a peer restart.
        let received_next = ack.received_next.max(ack.next_expected);
        for f in self
            .in_flight
            .range_mut(ack.next_expected..received_next)
            .map(|(_, f)| f)
        {
            if !f.received {
                f.received = true;
                self.in_flight_bytes -= f.len;
                bytes += f.len;
            }
        }
        if ack.echo_sent_us > 0 && now_us >= ack.echo_sent_us + ack.echo_hold_us {
            let rtt = Duration::from_micros(now_us - ack.echo_sent_us - ack.echo_hold_us);
            self.rtt.sample(rtt);
            return (bytes, Some(rtt));
        }
        (bytes, None)
    }

    fn forget(&mut self, seq: u64) -> usize {
        if let Some(f) = self.in_flight.remove(&seq) {
            self.stats.acknowledged += 1;
            if self.newest_seq_of_stream.get(&f.stream) == Some(&seq) {
                self.newest_seq_of_stream.remove(&f.stream);
            }
            if f.received {
                // Already out of the window when it was received.
                0
            } else {
                self.in_flight_bytes -= f.len;
                f.len
            }
        } else {
            0
        }
    }

    /// Sets the rate at which a message's own transfer time is estimated for the
    /// retransmission timer [bit/s] (the path's bottleneck estimate).
    pub fn set_transfer_rate(&mut self, bps: f64) {
        self.transfer_bps = bps.max(8_000.0);
    }

    fn transfer_allowance(&self, len: usize) -> Duration {
        Duration::from_secs_f64(len as f64 * 8.0 / self.transfer_bps)
    }

    /// Makes everything in flight due for retransmission now (the peer is back).
    pub fn retransmit_now(&mut self, now: Instant) {
        let past = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        for f in self.in_flight.values_mut() {
            f.last_sent = past;
            f.transmissions = 1;
            if f.received {
                // The peer may have lost what it had not made durable: send it again.
                f.received = false;
                self.in_flight_bytes += f.len;
            }
        }
    }

    /// Aligns with a peer after a handshake. `peer_next_expected` is what the peer's
    /// receiver waits for. If the peer lost its state (a new incarnation of it), the latest
    /// message of every stream is queued again so that it catches up.
    pub fn resync(&mut self, peer_next_expected: u64, peer_lost_state: bool, now: Instant) {
        let acked: Vec<u64> = self
            .in_flight
            .range(..peer_next_expected)
            .map(|(&s, _)| s)
            .collect();
        for seq in acked {
            self.forget(seq);
        }
        if peer_next_expected > self.next_seq {
            // We restarted; the peer has seen our earlier incarnation's numbers.
            self.next_seq = peer_next_expected;
        } else if peer_lost_state {
            // The peer restarted and lost what we sent before: give it a snapshot.
            let mut latest: Vec<Arc<Message>> = self.latest_of_stream.values().cloned().collect();
            latest.sort_by_key(|m| m.created_us);
            for m in latest {
                let in_flight = self
                    .newest_seq_of_stream
                    .get(&m.stream)
                    .and_then(|s| self.in_flight.get(s))
                    .is_some_and(|f| f.message.is_some());
                if !in_flight {
                    self.outbox.push((*m).clone());
                }
            }
        }
        // Everything in flight goes out again now.
        self.retransmit_now(now);
    }
}

fn backoff(rto: Duration, transmissions: u32) -> Duration {
    let factor = 1u32 << transmissions.saturating_sub(1).min(6);
    (rto * factor).min(Duration::from_secs(2))
}

/// A message handed to the application, in order, exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its sequence number.
    pub seq: u64,
    /// The message.
    pub message: Arc<Message>,
}

/// Counters of a receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverStats {
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Skips applied (superseded messages).
    pub skipped: u64,
    /// Items received again after delivery or while buffered.
    pub duplicates: u64,
    /// Items beyond the reorder window, refused (the sender retransmits them).
    pub beyond_window: u64,
    /// Items buffered waiting for a gap to fill.
    pub buffered: usize,
}

/// The receiving half of one direction.
#[derive(Debug)]
pub struct Receiver {
    next_expected: u64,
    early: BTreeMap<u64, WireItem>,
    window: u64,
    stats: ReceiverStats,
    /// With durable acknowledgements: everything below this is durable at the application.
    durable_next: Option<u64>,
    /// The newest sequence number delivered to the application.
    last_delivered: Option<u64>,
}

impl Receiver {
    /// A receiver that buffers up to `window` sequence numbers ahead.
    pub fn new(window: u64) -> Self {
        Self {
            next_expected: 0,
            early: BTreeMap::new(),
            window: window.max(1),
            stats: ReceiverStats::default(),
            durable_next: None,
            last_delivered: None,
        }
    }

    /// Resumes a receiver after a restart: `next_expected` is the first sequence number
    /// that the application has not made durable.
    pub fn resume_at(&mut self, next_expected: u64) {
        self.next_expected = next_expected;
        self.early.clear();
        if let Some(d) = &mut self.durable_next {
            *d = (*d).max(next_expected);
        }
    }

    /// Acknowledges only what the application confirmed durable
    /// ([`Receiver::confirm_durable`]): a crash of the application then never loses an
    /// acknowledged message, because the sender keeps and resends everything else.
    pub fn gate_acks_on_durability(&mut self) {
        self.durable_next = Some(self.next_expected);
    }

    /// The application made everything up to and including `seq` durable. Returns whether
    /// the acknowledgement moved.
    pub fn confirm_durable(&mut self, seq: u64) -> bool {
        let before = self.acked_next();
        if let Some(d) = &mut self.durable_next {
            *d = (*d).max(seq.saturating_add(1)).min(self.next_expected);
        }
        self.acked_next() != before
    }

    /// The first sequence number not acknowledged: the next expected one, or with durable
    /// acknowledgements the first one not yet durable (skips after the last delivered
    /// message need no durability).
    pub fn acked_next(&self) -> u64 {
        match self.durable_next {
            None => self.next_expected,
            Some(d) => match self.last_delivered {
                Some(last) if last >= d => d,
                _ => self.next_expected,
            },
        }
    }

    /// The next sequence number to be applied.
    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        let mut s = self.stats.clone();
        s.buffered = self.early.len();
        s
    }

    /// Aligns with a sender whose oldest unacknowledged number is `sender_base`: numbers
    /// below it were acknowledged to an earlier incarnation of this receiver.
    pub fn resync(&mut self, sender_base: u64) {
        if sender_base > self.next_expected {
            self.next_expected = sender_base;
            self.early = self.early.split_off(&sender_base);
            self.drain_into(&mut Vec::new());
        }
    }

    /// Takes a frame's items; returns what can now be applied, in order.
    pub fn on_items(&mut self, items: impl IntoIterator<Item = WireItem>) -> Vec<Delivered> {
        let mut out = Vec::new();
        for item in items {
            let seq = item.seq();
            if seq < self.next_expected || self.early.contains_key(&seq) {
                self.stats.duplicates += 1;
                continue;
            }
            if seq >= self.next_expected + self.window {
                self.stats.beyond_window += 1;
                continue;
            }
            if seq == self.next_expected {
                self.apply(item, &mut out);
                self.drain_into(&mut out);
            } else {
                self.early.insert(seq, item);
            }
        }
        out
    }

    fn apply(&mut self, item: WireItem, out: &mut Vec<Delivered>) {
        match item {
            WireItem::Data { seq, message } => {
                self.stats.delivered += 1;
                self.last_delivered = Some(seq);
                out.push(Delivered { seq, message });
            }
            WireItem::Skip { .. } => {
                self.stats.skipped += 1;
                // A skip right after durable data is durable too (there is nothing in it).
                if let Some(d) = &mut self.durable_next {
                    if *d == self.next_expected {
                        *d += 1;
                    }
                }
            }
        }
        self.next_expected += 1;
    }

    fn drain_into(&mut self, out: &mut Vec<Delivered>) {
        while let Some(entry) = self.early.first_entry() {
            if *entry.key() != self.next_expected {
                break;
            }
            let item = entry.remove();
            self.apply(item, out);
        }
    }

    /// The acknowledgement to send now.
    pub fn ack(&self, echo_sent_us: u64, echo_hold_us: u64) -> Ack {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        // With durable acknowledgements, buffered items are not acknowledged (they are not
        // durable): the sender keeps them until the cumulative acknowledgement covers them.
        let early = if self.durable_next.is_some() {
            None
        } else {
            Some(self.early.keys())
        };
        for &seq in early.into_iter().flatten() {
            match ranges.last_mut() {
                Some((_, hi)) if *hi + 1 == seq => *hi = seq,
                _ => {
                    if ranges.len() == MAX_ACK_RANGES {
                        break;
                    }
                    ranges.push((seq, seq));
                }
            }
        }
        Ack {
            next_expected: self.acked_next(),
            received_next: self.next_expected,
            ranges,
            echo_sent_us,
            echo_hold_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durable_acks_cover_only_what_the_application_confirmed() {
        let data = |seq: u64| WireItem::Data {
            seq,
            message: Arc::new(msg("s", Priority::Objects, seq)),
        };
        let mut r = Receiver::new(1024);
        r.gate_acks_on_durability();
        let out = r.on_items([data(0), data(1), data(2), data(5)]);
        assert_eq!(out.len(), 3);
        let ack = r.ack(0, 0);
        assert_eq!(ack.next_expected, 0, "nothing durable yet");
        assert!(ack.ranges.is_empty(), "buffered items are not acknowledged");
        assert!(r.confirm_durable(1));
        assert_eq!(r.ack(0, 0).next_expected, 2);
        assert!(!r.confirm_durable(0), "confirmations never go back");
        r.confirm_durable(2);
        assert_eq!(r.ack(0, 0).next_expected, 3);
        // A skip after the last durable message needs no confirmation.
        r.on_items([WireItem::Skip { seq: 3 }]);
        assert_eq!(r.acked_next(), 4);
        // 4 and the buffered 5 are delivered, not durable: the acknowledgement stays.
        assert_eq!(r.on_items([data(4)]).len(), 2);
        assert_eq!(r.acked_next(), 4);
        r.confirm_durable(5);
        assert_eq!(r.acked_next(), 6);
    }

    #[test]
    fn received_items_leave_the_window_but_stay_until_durable() {
        let mut s = Sender::new(Outbox::new(64, 1 << 20), 1 << 20);
        let t0 = Instant::now();
        for k in 0..4 {
            s.push(msg(&format!("s{k}"), Priority::Objects, k));
        }
        assert_eq!(s.next_items(t0, 1 << 20).len(), 4);
        let before = s.stats().in_flight_bytes;
        assert!(before > 0);
        let ack = Ack {
            next_expected: 1,
            received_next: 4,
            ..Default::default()
        };
        let (bytes, _) = s.on_ack_counting(&ack, 0);
        assert_eq!(bytes, before, "all of it left the window");
        let st = s.stats();
        assert_eq!(
            (
                st.in_flight,
                st.awaiting_durability,
                st.in_flight_bytes,
                st.acknowledged
            ),
            (3, 3, 0, 1)
        );
        // Received items are not resent on a timer...
        assert!(s.next_retransmit_at().is_none());
        assert!(s
            .next_items(t0 + Duration::from_secs(30), 1 << 20)
            .is_empty());
        // ...but are when the peer restarted before making them durable.
        s.resync(1, false, t0);
        assert_eq!(s.next_items(t0, 1 << 20).len(), 3);
        let ack = Ack {
            next_expected: 4,
            received_next: 4,
            ..Default::default()
        };
        s.on_ack_counting(&ack, 0);
        let st = s.stats();
        assert_eq!(
            (st.in_flight, st.in_flight_bytes, st.acknowledged),
            (0, 0, 4)
        );
    }

    #[test]
    fn the_peers_acknowledgement_delay_postpones_retransmission_up_to_a_cap() {
        let sent_at = |delay: Duration| {
            let mut s = Sender::new(Outbox::new(64, 1 << 20), 1 << 20);
            s.set_peer_ack_delay(delay);
            let t0 = Instant::now();
            s.push(msg("s", Priority::Objects, 1));
            assert_eq!(s.next_items(t0, 1 << 20).len(), 1);
            let due = s.next_retransmit_at().unwrap() - t0;
            // Not resent a moment before it is due, resent when it is.
            assert!(s
                .next_items(t0 + due - Duration::from_millis(1), 1 << 20)
                .is_empty());
            assert_eq!(s.next_items(t0 + due, 1 << 20).len(), 1);
            due
        };
        let plain = sent_at(Duration::ZERO);
        assert_eq!(
            sent_at(Duration::from_millis(150)),
            plain + Duration::from_millis(150)
        );
        // A peer cannot stop retransmission by announcing a huge delay.
        assert_eq!(
            sent_at(Duration::from_secs(3600)),
            plain + MAX_PEER_ACK_DELAY
        );
    }
    #[test]
    fn a_resumed_receiver_continues_where_durability_ended() {
        let mut r = Receiver::new(1024);
        r.gate_acks_on_durability();
        r.resume_at(7);
        assert_eq!(r.acked_next(), 7);
        let data = WireItem::Data {
            seq: 6,
            message: Arc::new(msg("s", Priority::Objects, 6)),
        };
        assert!(
            r.on_items([data]).is_empty(),
            "below the resume point: a duplicate"
        );
        let data = WireItem::Data {
            seq: 7,
            message: Arc::new(msg("s", Priority::Objects, 7)),
        };
        assert_eq!(r.on_items([data]).len(), 1);
        assert_eq!(r.acked_next(), 7);
        r.confirm_durable(7);
        assert_eq!(r.acked_next(), 8);
    }

    fn msg(stream: &str, priority: Priority, n: u64) -> Message {
        Message {
            stream: stream.into(),
            priority,
            type_name: "t".into(),
            created_us: n,
            payload: n.to_le_bytes().to_vec(),
        }
    }

    #[test]
    fn outbox_orders_by_priority_and_coalesces_by_stream() {
        let mut o = Outbox::new(10, 1 << 20);
        o.push(msg("objects/lidar", Priority::Objects, 1));
        o.push(msg("hazard/7", Priority::Hazard, 2));
        o.push(msg("state", Priority::OwnState, 3));
        assert_eq!(
            o.push(msg("state", Priority::OwnState, 4)),
            PushOutcome::Coalesced
        );
        assert_eq!(o.pop().unwrap().created_us, 4);
        assert_eq!(o.pop().unwrap().stream, "hazard/7");
        assert_eq!(o.pop().unwrap().stream, "objects/lidar");
        assert!(o.pop().is_none());
        let s = o.stats();
        assert_eq!(
            (s.pushed, s.coalesced, s.queued, s.queued_bytes),
            (4, 1, 0, 0)
        );
    }

    #[test]
    fn a_full_outbox_drops_the_least_important_oldest_and_counts_it() {
        let mut o = Outbox::new(3, 1 << 20);
        o.push(msg("objects/a", Priority::Objects, 1));
        o.push(msg("objects/b", Priority::Objects, 2));
        o.push(msg("hazard/1", Priority::Hazard, 3));
        match o.push(msg("state", Priority::OwnState, 4)) {
            PushOutcome::QueuedAfterDropping(v) => {
                assert_eq!(v, vec![("objects/a".to_string(), Priority::Objects)])
            }
            other => panic!("{other:?}"),
        }
        // A hazard displaces the last object; then, full of more important messages, the
        // outbox refuses a new object. All three drops are counted.
        assert!(matches!(
            o.push(msg("hazard/2", Priority::Hazard, 5)),
            PushOutcome::QueuedAfterDropping(_)
        ));
        assert_eq!(
            o.push(msg("objects/c", Priority::Objects, 6)),
            PushOutcome::Dropped
        );
        let s = o.stats();
        assert_eq!(s.dropped, [0, 0, 3, 0]);
        assert_eq!(s.queued, 3);
        let order: Vec<_> = std::iter::from_fn(|| o.pop()).map(|m| m.stream).collect();
        assert_eq!(order, ["state", "hazard/1", "hazard/2"]);
    }

    #[test]
    fn byte_capacity_is_enforced() {
        let mut o = Outbox::new(100, 400);
        let mut big = msg("objects/a", Priority::Objects, 1);
        big.payload = vec![0; 200];
        o.push(big.clone());
        big.stream = "objects/b".into();
        assert!(matches!(o.push(big), PushOutcome::QueuedAfterDropping(_)));
        assert_eq!(o.len(), 1);
        assert!(o.stats().queued_bytes <= 400);
    }

    fn exchange(sender: &mut Sender, receiver: &mut Receiver, now: Instant) -> Vec<Delivered> {
        let items = sender.next_items(now, usize::MAX);
        let out = receiver.on_items(items);
        sender.on_ack(&receiver.ack(0, 0), 0);
        out
    }

    #[test]
    fn superseded_in_flight_messages_become_skips() {
        let mut s = Sender::new(Outbox::new(100, 1 << 20), usize::MAX);
        let mut r = Receiver::new(1024);
        let t0 = Instant::now();
        s.push(msg("state", Priority::OwnState, 1));
        let lost = s.next_items(t0, usize::MAX);
        assert_eq!(lost.len(), 1);
        s.push(msg("state", Priority::OwnState, 2));
        let newer = s.next_items(t0, usize::MAX);
        assert_eq!(newer[0].seq(), 1);
        assert!(r.on_items(newer).is_empty(), "waits for seq 0");
        s.on_ack(&r.ack(0, 0), 0);
        let later = t0 + Duration::from_secs(5);
        let retransmit = s.next_items(later, usize::MAX);
        assert_eq!(retransmit, vec![WireItem::Skip { seq: 0 }]);
        let delivered = r.on_items(retransmit);
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].message.created_us, 2);
        s.on_ack(&r.ack(0, 0), 0);
        assert!(!s.has_pending());
        assert_eq!(r.stats().skipped, 1);
    }

    #[test]
    fn a_restarted_receiver_gets_a_snapshot_and_a_restarted_sender_continues_numbering() {
        let t0 = Instant::now();
        let mut s = Sender::new(Outbox::new(100, 1 << 20), usize::MAX);
        let mut r = Receiver::new(1024);
        for i in 0..5 {
            s.push(msg("state", Priority::OwnState, i));
            s.push(msg(&format!("hazard/{i}"), Priority::Hazard, i));
            exchange(&mut s, &mut r, t0);
        }
        let mut fresh = Receiver::new(1024);
        s.resync(fresh.next_expected(), true, t0);
        fresh.resync(s.base());
        let got = exchange(&mut s, &mut fresh, t0);
        let mut streams: Vec<_> = got.iter().map(|d| d.message.stream.clone()).collect();
        streams.sort();
        assert_eq!(
            streams,
            ["hazard/0", "hazard/1", "hazard/2", "hazard/3", "hazard/4", "state"]
        );
        // A restarted sender learns where the receiver is and continues after it.
        let mut restarted = Sender::new(Outbox::new(100, 1 << 20), usize::MAX);
        restarted.resync(fresh.next_expected(), false, t0);
        fresh.resync(restarted.base());
        restarted.push(msg("state", Priority::OwnState, 99));
        let got = exchange(&mut restarted, &mut fresh, t0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.created_us, 99);
    }

    #[derive(Debug, Clone)]
    enum Fault {
        Deliver,
        Drop,
        Duplicate,
        Hold,
    }

    proptest! {
        /// Under any pattern of loss, duplication and reordering of frames and acks, every
        /// message is applied at most once, in order, and the newest message of every
        /// stream is applied once the path heals.
        #[test]
        fn delivery_is_exactly_once_in_order_and_converges(
            pushes in proptest::collection::vec((0u8..6, 0u8..4), 1..80),
            faults in proptest::collection::vec(
                prop_oneof![4 => Just(Fault::Deliver), 2 => Just(Fault::Drop),
                            1 => Just(Fault::Duplicate), 1 => Just(Fault::Hold)], 1..200),
        ) {
            let mut s = Sender::new(Outbox::new(1000, 1 << 24), usize::MAX);
            let mut r = Receiver::new(4096);
            let mut now = Instant::now();
            let mut held: Vec<Vec<WireItem>> = Vec::new();
            let mut applied: Vec<Delivered> = Vec::new();
            let mut newest: HashMap<String, u64> = HashMap::new();
            let mut fault_iter = faults.iter().cycle();
            for (n, (stream, prio)) in pushes.iter().enumerate() {
                let p = Priority::ALL[*prio as usize];
                let m = msg(&format!("s{stream}"), p, n as u64 + 1);
                newest.insert(m.stream.clone(), m.created_us);
                s.push(m);
                now += Duration::from_millis(50);
                let items = s.next_items(now, 4000);
                match fault_iter.next().unwrap() {
                    Fault::Deliver => applied.extend(r.on_items(items)),
                    Fault::Drop => {}
                    Fault::Duplicate => {
                        applied.extend(r.on_items(items.clone()));
                        applied.extend(r.on_items(items));
                    }
                    Fault::Hold => held.push(items),
                }
                if n % 3 == 0 {
                    if let Some(old) = held.pop() { applied.extend(r.on_items(old)); }
                }
                if matches!(fault_iter.next().unwrap(), Fault::Deliver | Fault::Duplicate) {
                    s.on_ack(&r.ack(0, 0), 0);
                }
            }
            for old in held.drain(..) { applied.extend(r.on_items(old)); }
            for _ in 0..200 {
                if !s.has_pending() { break; }
                now += Duration::from_secs(3);
                let items = s.next_items(now, 4000);
                applied.extend(r.on_items(items));
                s.on_ack(&r.ack(0, 0), 0);
            }
            prop_assert!(!s.has_pending(), "sender still has pending after healing");
            let seqs: Vec<u64> = applied.iter().map(|d| d.seq).collect();
            prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order or duplicates: {seqs:?}");
            // Per stream, applied content only moves forward, and ends at the newest.
            let mut last: HashMap<String, u64> = HashMap::new();
            for d in &applied {
                let prev = last.insert(d.message.stream.clone(), d.message.created_us);
                prop_assert!(prev.is_none_or(|p| p < d.message.created_us));
            }
            prop_assert_eq!(last, newest);
            let total = s.stats().sent;
            let rs = r.stats();
            prop_assert_eq!(rs.delivered + rs.skipped, total);
        }
    }

    #[test]
    fn rtt_estimator_follows_rfc6298() {
        let mut e = RttEstimator::new(Duration::from_millis(1), Duration::from_secs(1));
        assert_eq!(e.rto(), Duration::from_millis(200));
        e.sample(Duration::from_millis(100));
        assert_eq!(e.smoothed(), Some(Duration::from_millis(100)));
        assert_eq!(e.rto(), Duration::from_millis(300));
        e.sample(Duration::from_millis(20));
        assert_eq!(e.min(), Some(Duration::from_millis(20)));
        assert_eq!(e.smoothed(), Some(Duration::from_millis(90)));
    }
}
