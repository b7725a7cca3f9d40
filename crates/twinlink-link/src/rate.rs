//! Measuring the path and adapting the send rate to it.
//!
//! Both ends measure: the sender its round trip, delivery rate (bytes acknowledged per
//! second) and losses (retransmissions); the receiver, with a [`PathMeter`], the goodput,
//! frame losses and queueing delay of what reaches it, reported back in a [`PathReport`].
//!
//! Three controllers ([`RateControl`]):
//!
//! - [`RateControl::Window`] (default): a delay-bounded window. Bytes in flight are capped at
//!   `1.25 x bottleneck rate x (min RTT + 50 ms)`, the bottleneck rate being the highest
//!   delivery rate of the last 2 s. When the queueing delay (RTT above its minimum) passes
//!   the 50 ms target the rate estimate is reset to what is delivered now, so a queue that
//!   built up drains at once. The window is self-clocking: a slow path returns
//!   acknowledgements slowly, so the sender never fills the bottleneck's queue, and what is
//!   not sent waits in the outbox, where newer data replaces older.
//! - [`RateControl::Aimd`]: the reference, in the style of Google Congestion Control: a
//!   paced rate that grows 8 % a second while the queueing delay is low, drops to 85 % of
//!   the delivery rate when the delay grows past 25 ms, and shrinks with loss above 10 %.
//! - [`RateControl::None`]: sends as fast as the application produces (baseline).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::protocol::PathReport;

/// Which controller a link end uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RateControl {
    /// No control: everything goes out at once.
    None,
    /// GCC-style AIMD on delay and loss, paced (the reference).
    Aimd,
    /// Delay-bounded, self-clocking window (default).
    #[default]
    Window,
}

impl std::str::FromStr for RateControl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(RateControl::None),
            "aimd" => Ok(RateControl::Aimd),
            "window" => Ok(RateControl::Window),
            other => Err(format!(
                "rate control must be none, aimd or window, not {other:?}"
            )),
        }
    }
}

/// Queueing delay the window controller aims to stay under.
pub const TARGET_QUEUE_DELAY: Duration = Duration::from_millis(50);
/// Smallest window: a small frame and a bit, so that a slow path stays busy while one is
/// acknowledged without a standing queue.
pub const MIN_WINDOW: usize = 1500;
/// Window before any measurement (about ten full-size packets, as TCP starts).
pub const INITIAL_WINDOW: usize = 16 << 10;
/// AIMD: starting rate [bit/s].
pub const AIMD_START_BPS: f64 = 300_000.0;
/// Lowest rate any controller goes to [bit/s].
pub const MIN_RATE_BPS: f64 = 16_000.0;
/// Highest rate [bit/s].
pub const MAX_RATE_BPS: f64 = 10e9;

const BUCKET: Duration = Duration::from_millis(100);
/// Delivery rates are averaged over this span.
const RATE_SPAN: Duration = Duration::from_millis(500);
const BTL_WINDOW: Duration = Duration::from_secs(2);
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

/// What the controller currently believes about the path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathEstimate {
    /// Bottleneck rate estimate (highest recent delivery rate) [bit/s]; 0 before any ack.
    pub bottleneck_bps: u64,
    /// Delivery rate over the last 100 ms [bit/s].
    pub delivery_bps: u64,
    /// Rate the sender may use now [bit/s] (paced rate for AIMD; window / RTT otherwise).
    pub allowed_bps: u64,
    /// Bytes allowed in flight.
    pub window_bytes: u64,
    /// Smallest RTT of the last 10 s [us].
    pub min_rtt_us: u64,
    /// Newest RTT minus the smallest [us].
    pub queue_delay_us: u64,
    /// Share of data frames retransmitted over the last report interval.
    pub loss: f64,
}

#[derive(Debug, Clone)]
struct Buckets {
    /// (start, bytes) per 100 ms.
    buckets: VecDeque<(Instant, u64)>,
}

impl Buckets {
    fn new() -> Self {
        Self {
            buckets: VecDeque::new(),
        }
    }

    fn add(&mut self, bytes: u64, now: Instant) {
        match self.buckets.back_mut() {
            Some((start, b)) if now.duration_since(*start) < BUCKET => *b += bytes,
            _ => self.buckets.push_back((now, bytes)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|(start, _)| now.duration_since(*start) > BTL_WINDOW)
        {
            self.buckets.pop_front();
        }
    }

    /// Average rate over the `RATE_SPAN` ending with the bucket at `end` (bursts of
    /// acknowledgements average out; a bucket-sized view would overestimate).
    fn span_bps(&self, end: Instant) -> f64 {
        let bytes: u64 = self
            .buckets
            .iter()
            .filter(|(start, _)| *start <= end && end.duration_since(*start) < RATE_SPAN)
            .map(|(_, b)| *b)
            .sum();
        bytes as f64 * 8.0 / RATE_SPAN.as_secs_f64()
    }

    /// Highest span rate in the window, over spans that are complete.
    fn max_bps(&self, now: Instant) -> f64 {
        let oldest = self.buckets.front().map(|(t, _)| *t);
        self.buckets
            .iter()
            .filter(|(start, _)| now.duration_since(*start) >= BUCKET)
            .filter(|(start, _)| {
                oldest.is_some_and(|o| start.duration_since(o) + BUCKET >= RATE_SPAN)
            })
            .map(|(start, _)| self.span_bps(*start))
            .fold(0.0, f64::max)
            .max(self.recent_bps(now))
    }

    /// Rate over the newest span.
    fn recent_bps(&self, now: Instant) -> f64 {
        match self.buckets.front() {
            None => 0.0,
            Some((oldest, _)) => {
                let covered = now.duration_since(*oldest).min(RATE_SPAN).max(BUCKET);
                let bytes: u64 = self
                    .buckets
                    .iter()
                    .filter(|(start, _)| now.duration_since(*start) < RATE_SPAN)
                    .map(|(_, b)| *b)
                    .sum();
                bytes as f64 * 8.0 / covered.as_secs_f64()
            }
        }
    }

    fn reset_to_recent(&mut self, now: Instant) {
        // Keep only the newest span: older, faster spans no longer count.
        self.buckets
            .retain(|(start, _)| now.duration_since(*start) < RATE_SPAN);
    }
}

/// A sender's rate controller.
#[derive(Debug, Clone)]
pub struct Controller {
    mode: RateControl,
    delivered: Buckets,
    min_rtt: VecDeque<(Instant, Duration)>,
    latest_rtt: Option<Duration>,
    previous_queue_delay: Duration,
    aimd_rate: f64,
    last_decrease: Option<Instant>,
    last_update: Option<Instant>,
    tokens: f64,
    last_refill: Option<Instant>,
    sent_frames: u64,
    lost_frames: u64,
    loss: f64,
    probe_until: Option<Instant>,
}

/// When the smallest RTT is this old, the window controller briefly shrinks to
/// [`MIN_WINDOW`] to drain any standing queue and measure the path's RTT afresh (a queue
/// that never drains would otherwise become the new "minimum").
const PROBE_AFTER: Duration = Duration::from_secs(8);
/// How long such a probe lasts at least.
const PROBE_FOR: Duration = Duration::from_millis(200);

impl Controller {
    /// A controller of kind `mode`.
    pub fn new(mode: RateControl) -> Self {
        Self {
            mode,
            delivered: Buckets::new(),
            min_rtt: VecDeque::new(),
            latest_rtt: None,
            previous_queue_delay: Duration::ZERO,
            aimd_rate: AIMD_START_BPS,
            last_decrease: None,
            last_update: None,
            tokens: 0.0,
            last_refill: None,
            sent_frames: 0,
            lost_frames: 0,
            loss: 0.0,
            probe_until: None,
        }
    }

    /// The kind of controller.
    pub fn mode(&self) -> RateControl {
        self.mode
    }

    fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.iter().map(|(_, r)| *r).min()
    }

    fn queue_delay(&self) -> Duration {
        match (self.latest_rtt, self.min_rtt()) {
            (Some(l), Some(m)) => l.saturating_sub(m),
            _ => Duration::ZERO,
        }
    }

    /// A data frame of `bytes` left.
    pub fn on_sent(&mut self, bytes: usize, now: Instant) {
        self.sent_frames += 1;
        if self.mode == RateControl::Aimd {
            self.refill(now);
            self.tokens -= bytes as f64;
        }
    }

    /// A data item had to be retransmitted.
    pub fn on_retransmit(&mut self) {
        self.lost_frames += 1;
    }

    /// `bytes` of data were acknowledged; `rtt` is the sample the ack gave, if any.
    pub fn on_ack(&mut self, bytes: usize, rtt: Option<Duration>, now: Instant) {
        if bytes > 0 {
            self.delivered.add(bytes as u64, now);
        }
        if let Some(rtt) = rtt {
            self.latest_rtt = Some(rtt);
            while self.min_rtt.back().is_some_and(|(_, r)| *r >= rtt) {
                self.min_rtt.pop_back();
            }
            self.min_rtt.push_back((now, rtt));
            while self
                .min_rtt
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > MIN_RTT_WINDOW)
            {
                self.min_rtt.pop_front();
            }
            if self.mode == RateControl::Window {
                let min_age = self
                    .min_rtt
                    .front()
                    .map_or(Duration::ZERO, |(t, _)| now.duration_since(*t));
                match self.probe_until {
                    Some(until) if now >= until => self.probe_until = None,
                    None if min_age > PROBE_AFTER => {
                        self.probe_until = Some(now + PROBE_FOR.max(rtt));
                    }
                    _ => {}
                }
            }
            if self.mode == RateControl::Window && self.queue_delay() > TARGET_QUEUE_DELAY {
                // A queue is building: believe only what is delivered now.
                let recently = self.last_decrease.is_some_and(|t| {
                    now.duration_since(t) < self.min_rtt().unwrap_or_default() + BUCKET
                });
                if !recently {
                    self.delivered.reset_to_recent(now);
                    self.last_decrease = Some(now);
                }
            }
        }
        self.update_aimd(now);
    }

    fn update_aimd(&mut self, now: Instant) {
        if self.mode != RateControl::Aimd {
            return;
        }
        let Some(last) = self.last_update else {
            self.last_update = Some(now);
            return;
        };
        let dt = now.duration_since(last);
        if dt < BUCKET {
            return;
        }
        self.last_update = Some(now);
        if self.sent_frames >= 10 {
            self.loss = self.lost_frames as f64 / self.sent_frames as f64;
            self.sent_frames = 0;
            self.lost_frames = 0;
        }
        let queue = self.queue_delay();
        let growing = queue > self.previous_queue_delay;
        self.previous_queue_delay = queue;
        let delivery = self.delivered.recent_bps(now);
        if queue > Duration::from_millis(25) && growing {
            // Overuse: back off to 85 % of what gets through.
            let can_decrease = self
                .last_decrease
                .is_none_or(|t| now.duration_since(t) > Duration::from_millis(200));
            if can_decrease {
                self.aimd_rate = (0.85 * delivery).max(MIN_RATE_BPS);
                self.last_decrease = Some(now);
            }
        } else if self.loss > 0.10 {
            self.aimd_rate *= 1.0 - 0.5 * self.loss;
        } else if queue <= Duration::from_millis(25) && self.loss < 0.02 {
            // Normal: multiplicative increase, 8 % a second.
            self.aimd_rate *= 1.08f64.powf(dt.as_secs_f64());
        }
        self.aimd_rate = self.aimd_rate.clamp(MIN_RATE_BPS, MAX_RATE_BPS);
    }

    /// Takes the peer's report of what it received (the AIMD reference uses its loss).
    pub fn on_report(&mut self, report: &PathReport) {
        if self.mode == RateControl::Aimd && report.frames + report.lost > 0 {
            let loss = report.lost as f64 / (report.frames + report.lost) as f64;
            self.loss = self.loss.max(loss);
        }
    }

    /// The bottleneck rate estimate: the highest delivery rate of the last 2 s [bit/s].
    pub fn bottleneck_bps(&self, now: Instant) -> f64 {
        self.delivered.max_bps(now)
    }

    /// Bytes allowed in flight.
    pub fn window_bytes(&self, now: Instant) -> usize {
        match self.mode {
            RateControl::None | RateControl::Aimd => usize::MAX,
            RateControl::Window => {
                if self.probe_until.is_some_and(|t| now < t) {
                    return MIN_WINDOW;
                }
                let btl = self.delivered.max_bps(now);
                if btl <= 0.0 {
                    return INITIAL_WINDOW;
                }
                let rtt = self.min_rtt().unwrap_or(Duration::from_millis(100));
                let bdp = btl / 8.0 * (rtt + TARGET_QUEUE_DELAY).as_secs_f64() * 1.25;
                (bdp as usize).max(MIN_WINDOW)
            }
        }
    }

    fn refill(&mut self, now: Instant) {
        let last = self.last_refill.replace(now).unwrap_or(now);
        let burst = self.aimd_rate / 8.0 * 0.02; // 20 ms of sending
        self.tokens = (self.tokens + now.duration_since(last).as_secs_f64() * self.aimd_rate / 8.0)
            .min(burst.max(1500.0));
    }

    /// When a data frame of `bytes` may leave (`None`: now).
    pub fn next_send_at(&mut self, bytes: usize, now: Instant) -> Option<Instant> {
        if self.mode != RateControl::Aimd {
            return None;
        }
        self.refill(now);
        if self.tokens >= 0.0 || self.tokens + 1500.0 >= bytes as f64 {
            return None;
        }
        let wait = -self.tokens / (self.aimd_rate / 8.0);
        Some(now + Duration::from_secs_f64(wait))
    }

    /// What the controller believes now.
    pub fn estimate(&self, now: Instant) -> PathEstimate {
        let window = self.window_bytes(now);
        let rtt = self.min_rtt().unwrap_or_default();
        let allowed = match self.mode {
            RateControl::None => 0.0,
            RateControl::Aimd => self.aimd_rate,
            RateControl::Window => window as f64 * 8.0 / (rtt + TARGET_QUEUE_DELAY).as_secs_f64(),
        };
        PathEstimate {
            bottleneck_bps: self.delivered.max_bps(now) as u64,
            delivery_bps: self.delivered.recent_bps(now) as u64,
            allowed_bps: allowed as u64,
            window_bytes: window.min(u64::MAX as usize) as u64,
            min_rtt_us: rtt.as_micros() as u64,
            queue_delay_us: self.queue_delay().as_micros() as u64,
            loss: self.loss,
        }
    }
}

/// Receiver-side measurement of what arrives from the peer.
#[derive(Debug, Clone)]
pub struct PathMeter {
    interval: Duration,
    started: Option<Instant>,
    bytes: u64,
    frames: u32,
    highest: Option<(u64, u64)>,
    first_in_interval: Option<u64>,
    min_owd: VecDeque<(Instant, i64)>,
    owd_sum: i64,
    previous_queue_delay: i64,
    latest: PathReport,
}

impl PathMeter {
    /// A meter reporting every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            started: None,
            bytes: 0,
            frames: 0,
            highest: None,
            first_in_interval: None,
            min_owd: VecDeque::new(),
            owd_sum: 0,
            previous_queue_delay: 0,
            latest: PathReport::default(),
        }
    }

    /// An authentic frame arrived: `bytes` long, sealed with `counter` in `session`, sent at
    /// the peer's `sent_us` and received at our `received_us`.
    pub fn on_frame(
        &mut self,
        bytes: usize,
        session: u64,
        counter: u64,
        sent_us: u64,
        received_us: u64,
        now: Instant,
    ) {
        self.started.get_or_insert(now);
        self.bytes += bytes as u64;
        self.frames += 1;
        match self.highest {
            Some((s, c)) if s == session && counter <= c => {}
            Some((s, _)) if s != session => {
                self.highest = Some((session, counter));
                self.first_in_interval = Some(counter);
            }
            _ => {
                self.highest = Some((session, counter));
                self.first_in_interval.get_or_insert(counter);
            }
        }
        // One-way delay with the clock offset in it; only its change matters.
        let owd = received_us as i64 - sent_us as i64;
        self.owd_sum += owd;
        while self.min_owd.back().is_some_and(|(_, d)| *d >= owd) {
            self.min_owd.pop_back();
        }
        self.min_owd.push_back((now, owd));
        while self
            .min_owd
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > MIN_RTT_WINDOW)
        {
            self.min_owd.pop_front();
        }
    }

    /// The report of the interval just ended, if an interval has passed.
    pub fn take_report(&mut self, now: Instant) -> Option<PathReport> {
        let started = self.started?;
        let elapsed = now.duration_since(started);
        if elapsed < self.interval {
            return None;
        }
        let expected = match (self.first_in_interval, self.highest) {
            (Some(first), Some((_, last))) => last.saturating_sub(first) + 1,
            _ => 0,
        };
        let lost = expected
            .saturating_sub(self.frames as u64)
            .min(u32::MAX as u64) as u32;
        let min = self.min_owd.front().map_or(0, |(_, d)| *d);
        let mean = if self.frames > 0 {
            self.owd_sum / self.frames as i64
        } else {
            min
        };
        let queue_delay = (mean - min).max(0);
        let report = PathReport {
            received_bps: (self.bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64,
            frames: self.frames,
            lost,
            delay_gradient_us: queue_delay - self.previous_queue_delay,
            queue_delay_us: queue_delay as u64,
            sender_bottleneck_bps: 0,
        };
        self.previous_queue_delay = queue_delay;
        self.started = Some(now);
        self.bytes = 0;
        self.frames = 0;
        self.owd_sum = 0;
        self.first_in_interval = self.highest.map(|(_, c)| c + 1);
        self.latest = report.clone();
        Some(report)
    }

    /// The newest report made.
    pub fn latest(&self) -> &PathReport {
        &self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a controller against a bottleneck of `bps` with a `base_rtt`, the sender
    /// always having data; returns the largest standing queue seen in the last half.
    fn simulate(mode: RateControl, bps: f64, base_rtt: Duration, seconds: u64) -> (f64, Duration) {
        let mut c = Controller::new(mode);
        let t0 = Instant::now();
        let frame = 1000usize;
        let mut link_free = t0;
        let mut in_flight: VecDeque<(Instant, Instant, usize)> = VecDeque::new(); // (sent, acked_at, len)
        let mut in_flight_bytes = 0usize;
        let mut now = t0;
        let mut delivered = 0u64;
        let mut worst_queue = Duration::ZERO;
        let end = t0 + Duration::from_secs(seconds);
        while now < end {
            while in_flight.front().is_some_and(|(_, at, _)| *at <= now) {
                let (sent, at, len) = in_flight.pop_front().unwrap();
                in_flight_bytes -= len;
                delivered += len as u64;
                c.on_ack(len, Some(at.duration_since(sent)), at);
            }
            let window_ok = in_flight_bytes == 0 || in_flight_bytes + frame <= c.window_bytes(now);
            let pace_ok = c.next_send_at(frame, now).is_none();
            if window_ok && pace_ok {
                let start = link_free.max(now);
                let done = start + Duration::from_secs_f64(frame as f64 * 8.0 / bps);
                link_free = done;
                let queue = start.duration_since(now);
                if now.duration_since(t0) > Duration::from_secs(seconds / 2) {
                    worst_queue = worst_queue.max(queue);
                }
                in_flight.push_back((now, done + base_rtt, frame));
                in_flight_bytes += frame;
                c.on_sent(frame, now);
            }
            now += Duration::from_micros(500);
        }
        let throughput = delivered as f64 * 8.0 / seconds as f64;
        (throughput / bps, worst_queue)
    }

    #[test]
    fn the_window_fills_a_slow_path_without_a_standing_queue() {
        for bps in [64_000.0, 1e6, 20e6] {
            let (utilization, queue) =
                simulate(RateControl::Window, bps, Duration::from_millis(20), 20);
            assert!(utilization > 0.6, "{bps} bit/s: utilization {utilization}");
            assert!(
                queue < Duration::from_millis(250),
                "{bps} bit/s: queue {queue:?}"
            );
        }
    }

    #[test]
    fn a_stale_minimum_rtt_triggers_a_short_probe_with_the_smallest_window() {
        let mut c = Controller::new(RateControl::Window);
        let t0 = Instant::now();
        c.on_ack(1000, Some(Duration::from_millis(20)), t0);
        // Then a queue stands: every sample is 40 ms above the minimum, for 8 s.
        let mut now = t0;
        for _ in 0..80 {
            now += Duration::from_millis(100);
            c.on_ack(4000, Some(Duration::from_millis(60)), now);
            assert!(
                c.window_bytes(now) > MIN_WINDOW,
                "no probe yet at {:?}",
                now - t0
            );
        }
        // Past 8 s the minimum is stale: the next ack starts a probe.
        now += Duration::from_millis(100);
        c.on_ack(4000, Some(Duration::from_millis(60)), now);
        assert_eq!(c.window_bytes(now + Duration::from_millis(10)), MIN_WINDOW);
        // The drained path shows its real RTT again; the probe ends.
        now += Duration::from_millis(250);
        c.on_ack(1000, Some(Duration::from_millis(21)), now);
        assert!(c.window_bytes(now + Duration::from_millis(1)) > MIN_WINDOW);
    }

    #[test]
    fn no_control_builds_an_unbounded_queue() {
        let (_, queue) = simulate(RateControl::None, 64_000.0, Duration::from_millis(20), 10);
        assert!(queue > Duration::from_secs(2), "{queue:?}");
    }

    #[test]
    fn aimd_converges_near_the_bottleneck() {
        let (utilization, queue) = simulate(RateControl::Aimd, 1e6, Duration::from_millis(20), 30);
        assert!(utilization > 0.5, "utilization {utilization}");
        assert!(queue < Duration::from_secs(1), "{queue:?}");
    }

    #[test]
    fn the_meter_reports_goodput_loss_and_queueing() {
        let mut m = PathMeter::new(Duration::from_millis(200));
        let t0 = Instant::now();
        for i in 0..20u64 {
            if i % 5 == 4 {
                continue; // lost
            }
            let now = t0 + Duration::from_millis(i * 10);
            // Delay grows by 1 ms per frame: a queue builds.
            m.on_frame(
                1000,
                1,
                i,
                1_000_000 + i * 10_000,
                1_000_000 + i * 11_000,
                now,
            );
        }
        let r = m.take_report(t0 + Duration::from_millis(200)).unwrap();
        assert_eq!(r.frames, 16);
        assert_eq!(
            r.lost, 3,
            "counters 4, 9, 14 missing (19 is beyond the highest seen)"
        );
        assert!((r.received_bps as f64 - 16_000.0 * 8.0 / 0.2).abs() < 1000.0);
        assert!(r.queue_delay_us > 5_000, "{r:?}");
        assert!(m.take_report(t0 + Duration::from_millis(250)).is_none());
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            "window".parse::<RateControl>().unwrap(),
            RateControl::Window
        );
        assert!("fast"
            .parse::<RateControl>()
            .unwrap_err()
            .contains("none, aimd or window"));
    }
}
