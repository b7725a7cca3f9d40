//! A fault-injecting layer between the link and Zenoh, for tests, demos and benchmarks.
//!
//! It sits on a link end's outgoing path and can drop, duplicate, reorder, delay, cut the
//! path for a while, and throttle it to a bit rate behind a bounded queue (a bottleneck
//! like a cellular uplink). A [`FaultControl`] changes the plan while the link runs.
//!
//! The plan's text form, for command lines: comma-separated `key=value` pairs, e.g.
//! `drop=0.1,dup=0.05,reorder=0.2,delay_ms=20,jitter_ms=5,rate_kbps=64,queue_kb=256`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

/// What the layer does to each frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Probability a frame is lost.
    pub drop: f64,
    /// Probability a frame is delivered twice.
    pub duplicate: f64,
    /// Probability a frame is held back by `reorder_delay` so later ones overtake it.
    pub reorder: f64,
    /// How long a reordered frame is held.
    pub reorder_delay: Duration,
    /// Fixed one-way delay added to every frame.
    pub delay: Duration,
    /// Uniform random extra delay in `[0, jitter]`.
    pub jitter: Duration,
    /// Bottleneck rate in bits per second (`None`: unlimited).
    pub rate_bps: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops (tail drop).
    pub queue_bytes: usize,
}

impl FaultPlan {
    /// A plan that passes everything through untouched.
    pub fn clean() -> Self {
        Self {
            queue_bytes: usize::MAX,
            ..Default::default()
        }
    }

    /// True if the plan changes nothing.
    pub fn is_clean(&self) -> bool {
        self.drop == 0.0
            && self.duplicate == 0.0
            && self.reorder == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.rate_bps.is_none()
    }
}

/// Why a fault plan's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault plan {text:?}: {reason}")]
pub struct FaultPlanError {
    text: String,
    reason: String,
}

impl FromStr for FaultPlan {
    type Err = FaultPlanError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| FaultPlanError {
            text: text.to_string(),
            reason,
        };
        let mut plan = FaultPlan::clean();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err(format!("`{part}` is not key=value")))?;
            let prob = || -> Result<f64, FaultPlanError> {
                let p: f64 = value
                    .parse()
                    .map_err(|_| err(format!("`{key}` must be a number, got {value:?}")))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(err(format!("`{key}` must be within 0..=1, got {p}")));
                }
                Ok(p)
            };
            let int = || -> Result<u64, FaultPlanError> {
                value
                    .parse()
                    .map_err(|_| err(format!("`{key}` must be a whole number, got {value:?}")))
            };
            match key {
                "drop" => plan.drop = prob()?,
                "dup" | "duplicate" => plan.duplicate = prob()?,
                "reorder" => plan.reorder = prob()?,
                "reorder_ms" => plan.reorder_delay = Duration::from_millis(int()?),
                "delay_ms" => plan.delay = Duration::from_millis(int()?),
                "jitter_ms" => plan.jitter = Duration::from_millis(int()?),
                "rate_kbps" => {
                    let kbps = int()?;
                    if kbps == 0 {
                        return Err(err("`rate_kbps` must be positive".into()));
                    }
                    plan.rate_bps = Some(kbps * 1000);
                }
                "queue_kb" => plan.queue_bytes = int()? as usize * 1024,
                _ => return Err(err(format!("unknown key `{key}`; known: drop, dup, reorder, reorder_ms, delay_ms, jitter_ms, rate_kbps, queue_kb"))),
            }
        }
        if plan.reorder > 0.0 && plan.reorder_delay.is_zero() {
            plan.reorder_delay = Duration::from_millis(20);
        }
        Ok(plan)
    }
}

/// Counters of the fault layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStats {
    /// Frames offered.
    pub offered: u64,
    /// Frames passed on (duplicates included).
    pub delivered: u64,
    /// Frames dropped at random.
    pub dropped: u64,
    /// Frames dropped because the path was cut.
    pub cut: u64,
    /// Frames dropped because the bottleneck queue was full.
    pub queue_full: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Frames held back to be reordered.
    pub reordered: u64,
    /// Bytes waiting in the bottleneck queue now.
    pub queued_bytes: usize,
}

#[derive(Debug)]
struct State {
    plan: FaultPlan,
    cut_until: Option<Instant>,
    stats: FaultStats,
}

/// Shared handle to change a running layer's plan.
#[derive(Debug, Clone)]
pub struct FaultControl {
    state: Arc<Mutex<State>>,
}

impl FaultControl {
    /// A control with `plan`.
    pub fn new(plan: FaultPlan) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                plan,
                cut_until: None,
                stats: FaultStats::default(),
            })),
        }
    }

    /// Replaces the plan.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.state.lock().expect("fault state").plan = plan;
    }

    /// The current plan.
    pub fn plan(&self) -> FaultPlan {
        self.state.lock().expect("fault state").plan.clone()
    }

    /// Cuts the path: every frame is dropped for `duration` from now.
    pub fn cut_for(&self, duration: Duration) {
        self.state.lock().expect("fault state").cut_until = Some(Instant::now() + duration);
    }

    /// Ends a cut now.
    pub fn heal(&self) {
        self.state.lock().expect("fault state").cut_until = None;
    }

    /// True while the path is cut.
    pub fn is_cut(&self, now: Instant) -> bool {
        self.state
            .lock()
            .expect("fault state")
            .cut_until
            .is_some_and(|t| now < t)
    }

    /// Counters.
    pub fn stats(&self) -> FaultStats {
        self.state.lock().expect("fault state").stats.clone()
    }
}

/// The layer itself: frames go in with [`FaultLayer::submit`] and come out when due.
#[derive(Debug)]
pub struct FaultLayer {
    control: FaultControl,
    rng: SmallRng,
    pending: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    order: u64,
    bottleneck_free_at: Option<Instant>,
    queued: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl FaultLayer {
    /// A layer following `control`'s plan, with a seeded random source (reproducible).
    pub fn new(control: FaultControl, seed: u64) -> Self {
        Self {
            control,
            rng: SmallRng::seed_from_u64(seed),
            pending: BinaryHeap::new(),
            order: 0,
            bottleneck_free_at: None,
            queued: BinaryHeap::new(),
        }
    }

    /// The control of this layer.
    pub fn control(&self) -> &FaultControl {
        &self.control
    }

    /// True when frames pass straight through (fast path).
    pub fn is_transparent(&self, now: Instant) -> bool {
        let s = self.control.state.lock().expect("fault state");
        s.plan.is_clean() && s.cut_until.is_none_or(|t| now >= t) && self.pending.is_empty()
    }

    /// Offers a frame at `now`.
    pub fn submit(&mut self, frame: Vec<u8>, now: Instant) {
        let mut s = self.control.state.lock().expect("fault state");
        s.stats.offered += 1;
        if s.cut_until.is_some_and(|t| now < t) {
            s.stats.cut += 1;
            return;
        }
        let plan = s.plan.clone();
        if self.rng.random_bool(plan.drop) {
            s.stats.dropped += 1;
            return;
        }
        // Bottleneck: serialize at the plan's rate behind a bounded queue.
        while let Some(Reverse((done, len))) = self.queued.peek().cloned() {
            if done > now {
                break;
            }
            self.queued.pop();
            s.stats.queued_bytes -= len;
        }
        let mut at = now;
        if let Some(bps) = plan.rate_bps {
            if s.stats.queued_bytes + frame.len() > plan.queue_bytes {
                s.stats.queue_full += 1;
                return;
            }
            let start = self.bottleneck_free_at.map_or(now, |t| t.max(now));
            let bits = (frame.len() as u64 + 40) * 8;
            let done = start + Duration::from_nanos(bits * 1_000_000_000 / bps.max(1));
            self.bottleneck_free_at = Some(done);
            self.queued.push(Reverse((done, frame.len())));
            s.stats.queued_bytes += frame.len();
            at = done;
        }
        at += plan.delay;
        if !plan.jitter.is_zero() {
            at += plan.jitter.mul_f64(self.rng.random::<f64>());
        }
        if self.rng.random_bool(plan.reorder) {
            s.stats.reordered += 1;
            at += plan.reorder_delay;
        }
        if self.rng.random_bool(plan.duplicate) {
            s.stats.duplicated += 1;
            self.order += 1;
            self.pending.push(Reverse((at, self.order, frame.clone())));
        }
        self.order += 1;
        self.pending.push(Reverse((at, self.order, frame)));
    }

    /// When the next frame falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Frames due at `now`, in delivery order. Frames falling due while the path is cut
    /// are lost.
    pub fn take_due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = self.control.state.lock().expect("fault state");
        let cut = s.cut_until.is_some_and(|t| now < t);
        while let Some(Reverse((at, _, _))) = self.pending.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, _, frame)) = self.pending.pop().expect("peeked");
            if cut {
                s.stats.cut += 1;
            } else {
                s.stats.delivered += 1;
                out.push(frame);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_name_the_key() {
        let p: FaultPlan =
            "drop=0.1, dup=0.05,reorder=0.2,delay_ms=20,jitter_ms=5,rate_kbps=64,queue_kb=256"
                .parse()
                .unwrap();
        assert_eq!(p.drop, 0.1);
        assert_eq!(p.rate_bps, Some(64_000));
        assert_eq!(p.queue_bytes, 256 * 1024);
        assert_eq!(p.reorder_delay, Duration::from_millis(20));
        assert!("".parse::<FaultPlan>().unwrap().is_clean());
        for (bad, needle) in [
            ("drop=2", "`drop` must be within 0..=1"),
            ("rate_kbps=x", "`rate_kbps` must be a whole number"),
            ("loss=0.1", "unknown key `loss`"),
            ("drop", "not key=value"),
            ("rate_kbps=0", "must be positive"),
        ] {
            let e = bad.parse::<FaultPlan>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn clean_plan_passes_everything_in_order() {
        let mut l = FaultLayer::new(FaultControl::new(FaultPlan::clean()), 1);
        let now = Instant::now();
        for i in 0..10u8 {
            l.submit(vec![i], now);
        }
        let out = l.take_due(now);
        assert_eq!(out, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
    }

    #[test]
    fn throttle_paces_at_the_rate_and_tail_drops_when_the_queue_is_full() {
        let plan: FaultPlan = "rate_kbps=80,queue_kb=2".parse().unwrap();
        let control = FaultControl::new(plan);
        let mut l = FaultLayer::new(control.clone(), 1);
        let t0 = Instant::now();
        // 1000-byte frames (+40 overhead) at 80 kbit/s take 104 ms each.
        for _ in 0..3 {
            l.submit(vec![0; 1000], t0);
        }
        assert_eq!(
            control.stats().queue_full,
            1,
            "2 KiB queue holds two frames"
        );
        assert!(l.take_due(t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(l.take_due(t0 + Duration::from_millis(105)).len(), 1);
        assert_eq!(l.take_due(t0 + Duration::from_millis(209)).len(), 1);
    }

    #[test]
    fn cut_drops_everything_until_it_heals_and_faults_are_counted() {
        let control = FaultControl::new("drop=0.5,dup=0.5,reorder=0.5".parse().unwrap());
        let mut l = FaultLayer::new(control.clone(), 7);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            l.submit(i.to_le_bytes().to_vec(), t0);
        }
        let out = l.take_due(t0 + Duration::from_secs(1));
        let s = control.stats();
        assert_eq!(s.offered, 1000);
        assert!(s.dropped > 400 && s.dropped < 600, "{s:?}");
        assert_eq!(out.len() as u64, s.delivered);
        assert_eq!(s.delivered, 1000 - s.dropped + s.duplicated);
        control.set_plan(FaultPlan::clean());
        control.cut_for(Duration::from_secs(60));
        l.submit(vec![1], Instant::now());
        assert!(l.take_due(Instant::now()).is_empty());
        assert_eq!(control.stats().cut, 1);
        control.heal();
        l.submit(vec![2], Instant::now());
        assert_eq!(l.take_due(Instant::now()), vec![vec![2]]);
    }
}
