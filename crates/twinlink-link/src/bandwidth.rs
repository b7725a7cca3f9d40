//! Predicting a PE's link bandwidth from recent history and from where it is heading.
//!
//! - A [`CoverageMap`] learns, per grid cell of the road network, what bandwidth vehicles of
//!   the fleet measured there (mean in the log domain, so that 50 kbit/s and 5 Mbit/s
//!   average sensibly, with a sample count as its confidence).
//! - A [`BandwidthPredictor`] follows one PE: it keeps a smoothed recent level and, for a
//!   time `t` ahead, blends that level with the map's value at the position dead-reckoned
//!   from the PE's velocity. Near-term predictions trust the recent level; further out
//!   the map dominates (weight `exp(-t / tau)`).
//! - [`BandwidthPredictor::predicted_outage`] finds the first stretch ahead where the
//!   prediction falls below a threshold, so the DR can send a recommendation horizon that
//!   covers it before the PE loses its link ([`horizon_to_cover`]).
//! - A [`PredictionScore`] compares predictions with the measurements that later arrive.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// One bandwidth measurement of a PE at a place and time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BandwidthSample {
    /// Time [s] (any epoch, the same for all samples of a predictor).
    pub t_s: f64,
    /// Position in the map frame [m].
    pub x: f64,
    /// Position in the map frame [m].
    pub y: f64,
    /// Measured bandwidth [bit/s].
    pub bps: f64,
}

/// Floor used in the log domain, so that an outage (0 bit/s) stays finite [bit/s].
pub const FLOOR_BPS: f64 = 1_000.0;

fn to_log(bps: f64) -> f64 {
    bps.max(FLOOR_BPS).ln()
}

fn from_log(l: f64) -> f64 {
    l.exp()
}

#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    mean_log: f64,
    count: u32,
}

/// Bandwidth by place, learned from the fleet's measurements. Saved as JSON:
/// `{"cell_m": 50.0, "cells": [[ix, iy, mean_log_bps, count], ...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "CoverageFile", into = "CoverageFile")]
pub struct CoverageMap {
    cell_m: f64,
    cells: HashMap<(i64, i64), Cell>,
}

/// The saved form of a [`CoverageMap`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CoverageFile {
    cell_m: f64,
    cells: Vec<(i64, i64, f64, u32)>,
}

impl From<CoverageMap> for CoverageFile {
    fn from(m: CoverageMap) -> Self {
        let mut cells: Vec<_> = m
            .cells
            .iter()
            .map(|(&(x, y), c)| (x, y, c.mean_log, c.count))
            .collect();
        cells.sort_by_key(|c| (c.0, c.1));
        CoverageFile {
            cell_m: m.cell_m,
            cells,
        }
    }
}

impl TryFrom<CoverageFile> for CoverageMap {
    type Error = String;
    fn try_from(f: CoverageFile) -> Result<Self, Self::Error> {
        if !(f.cell_m.is_finite() && f.cell_m >= 1.0) {
            return Err(format!("`cell_m` must be at least 1 m, got {}", f.cell_m));
        }
        let mut cells = HashMap::new();
        for (i, (x, y, mean_log, count)) in f.cells.into_iter().enumerate() {
            if !mean_log.is_finite() || count == 0 {
                return Err(format!(
                    "`cells[{i}]` needs a finite mean and a positive count, got {mean_log} and {count}"
                ));
            }
            cells.insert((x, y), Cell { mean_log, count });
        }
        Ok(CoverageMap {
            cell_m: f.cell_m,
            cells,
        })
    }
}

impl CoverageMap {
    /// A map with square cells of `cell_m` metres.
    pub fn new(cell_m: f64) -> Self {
        Self {
            cell_m: cell_m.max(1.0),
            cells: HashMap::new(),
        }
    }

    fn key(&self, x: f64, y: f64) -> (i64, i64) {
        (
            (x / self.cell_m).floor() as i64,
            (y / self.cell_m).floor() as i64,
        )
    }

    /// Learns one measurement (running mean in the log domain; after 50 samples a cell
    /// follows changes with weight 1/50).
    pub fn learn(&mut self, s: &BandwidthSample) {
        if !(s.x.is_finite() && s.y.is_finite() && s.bps.is_finite() && s.bps >= 0.0) {
            return;
        }
        let key = self.key(s.x, s.y);
        let cell = self.cells.entry(key).or_default();
        cell.count = cell.count.saturating_add(1);
        let weight = 1.0 / f64::from(cell.count.min(50));
        cell.mean_log += (to_log(s.bps) - cell.mean_log) * weight;
    }

    /// The bandwidth learned at a place and how many samples back it; falls back to the
    /// eight neighbouring cells (weighted by their counts) when the cell is empty.
    pub fn lookup(&self, x: f64, y: f64) -> Option<(f64, u32)> {
        let (cx, cy) = self.key(x, y);
        if let Some(c) = self.cells.get(&(cx, cy)) {
            return Some((from_log(c.mean_log), c.count));
        }
        let (mut sum, mut n) = (0.0, 0u32);
        for dx in -1..=1 {
            for dy in -1..=1 {
                if let Some(c) = self.cells.get(&(cx + dx, cy + dy)) {
                    sum += c.mean_log * f64::from(c.count);
                    n += c.count;
                }
            }
        }
        (n > 0).then(|| (from_log(sum / f64::from(n)), n))
    }

    /// Cells learned.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// True when nothing was learned.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// Follows one PE and predicts its bandwidth ahead.
#[derive(Debug, Clone)]
pub struct BandwidthPredictor {
    map: CoverageMap,
    recent_log: Option<f64>,
    last: Option<BandwidthSample>,
    /// Smoothing of the recent level per second of samples (0..1).
    alpha_per_s: f64,
    /// How fast predictions move from the recent level to the map [s].
    tau_s: f64,
    /// Whether the PE's own measurements are learned into the map.
    learn: bool,
}

impl BandwidthPredictor {
    /// A predictor using (and learning into) `map`.
    pub fn new(map: CoverageMap) -> Self {
        Self {
            map,
            recent_log: None,
            last: None,
            alpha_per_s: 0.6,
            tau_s: 2.0,
            learn: true,
        }
    }

    /// The coverage map, with what this PE taught it.
    pub fn map(&self) -> &CoverageMap {
        &self.map
    }

    /// Takes a measurement.
    pub fn observe(&mut self, s: BandwidthSample) {
        if !(s.t_s.is_finite() && s.bps.is_finite() && s.bps >= 0.0) {
            return;
        }
        let dt = self.last.map_or(1.0, |l| (s.t_s - l.t_s).clamp(0.0, 10.0));
        let a = 1.0 - (1.0 - self.alpha_per_s).powf(dt.max(0.05));
        self.recent_log = Some(match self.recent_log {
            None => to_log(s.bps),
            Some(r) => r + (to_log(s.bps) - r) * a,
        });
        if self.learn {
            self.map.learn(&s);
        }
        self.last = Some(s);
    }

    /// The predicted bandwidth `ahead_s` seconds after the last measurement, the PE moving
    /// from its last position at velocity `(vx, vy)` [m/s].
    pub fn predict(&self, vx: f64, vy: f64, ahead_s: f64) -> Option<f64> {
        let last = self.last?;
        let recent = self.recent_log?;
        let (x, y) = (last.x + vx * ahead_s, last.y + vy * ahead_s);
        let w_recent = (-ahead_s.max(0.0) / self.tau_s).exp();
        let blended = match self.map.lookup(x, y) {
            Some((bps, count)) => {
                // A thinly backed cell counts less.
                let confidence = f64::from(count.min(5)) / 5.0;
                let w_map = (1.0 - w_recent) * confidence;
                (recent * (1.0 - w_map) + to_log(bps) * w_map).min(f64::MAX)
            }
            None => recent,
        };
        Some(from_log(blended))
    }

    /// The first stretch within `horizon_s` where the prediction falls below
    /// `threshold_bps`: `(starts_in_s, ends_in_s)` (the end is `horizon_s` if it lasts).
    pub fn predicted_outage(
        &self,
        vx: f64,
        vy: f64,
        horizon_s: f64,
        threshold_bps: f64,
        step_s: f64,
    ) -> Option<(f64, f64)> {
        let step = step_s.max(0.05);
        let mut start = None;
        let mut t = 0.0;
        while t <= horizon_s {
            let low = self.predict(vx, vy, t)? < threshold_bps;
            match (low, start) {
                (true, None) => start = Some(t),
                (false, Some(s)) => return Some((s, t)),
                _ => {}
            }
            t += step;
        }
        start.map(|s| (s, horizon_s))
    }
}

/// The horizon a recommendation needs: `default_s`, or long enough to cover a predicted
/// outage plus `margin_s`, at most `max_s`.
pub fn horizon_to_cover(
    outage: Option<(f64, f64)>,
    default_s: f64,
    margin_s: f64,
    max_s: f64,
) -> f64 {
    match outage {
        Some((_, end)) => (end + margin_s).max(default_s).min(max_s),
        None => default_s,
    }
}

/// Scores predictions against the measurements that arrive later.
#[derive(Debug, Clone, Default)]
pub struct PredictionScore {
    pending: VecDeque<(f64, f64)>,
    /// Absolute relative errors |pred - measured| / measured, measured floored at
    /// [`FLOOR_BPS`].
    pub relative_errors: Vec<f64>,
}

impl PredictionScore {
    /// Records that `predicted_bps` was predicted for time `at_s`.
    pub fn predicted(&mut self, at_s: f64, predicted_bps: f64) {
        self.pending.push_back((at_s, predicted_bps));
    }

    /// A measurement arrived; scores the predictions made for its time (within `tolerance_s`).
    pub fn measured(&mut self, s: &BandwidthSample, tolerance_s: f64) {
        while let Some(&(at, predicted)) = self.pending.front() {
            if at > s.t_s + tolerance_s {
                break;
            }
            self.pending.pop_front();
            if (at - s.t_s).abs() <= tolerance_s {
                let truth = s.bps.max(FLOOR_BPS);
                self.relative_errors.push((predicted - truth).abs() / truth);
            }
        }
    }

    /// Median absolute relative error.
    pub fn median(&self) -> f64 {
        let mut v = self.relative_errors.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// Mean absolute relative error (MAPE as a fraction).
    pub fn mean(&self) -> f64 {
        if self.relative_errors.is_empty() {
            return f64::NAN;
        }
        self.relative_errors.iter().sum::<f64>() / self.relative_errors.len() as f64
    }
}

/// A reproducible evaluation drive: a 3 km road whose coverage varies (good, fading, a
/// 300 m hole, recovering), measured every 0.5 s with log-normal noise as a link measures.
/// `laps` earlier vehicles teach the map, then one more is predicted `ahead_s` ahead.
/// Returns (predictor's score, persistence's score: "the future equals the last value").
pub fn evaluate_drive(
    laps: usize,
    ahead_s: f64,
    noise: f64,
    seed: u64,
) -> (PredictionScore, PredictionScore) {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let truth = |x: f64| -> f64 {
        match x {
            x if x < 800.0 => 4e6,
            x if x < 1200.0 => 4e6 - (x - 800.0) / 400.0 * 3.9e6,
            x if x < 1500.0 => 0.0,
            x if x < 1800.0 => 5e5 + (x - 1500.0) / 300.0 * 2.5e6,
            _ => 3e6,
        }
    };
    let speed = 20.0;
    let measure = |t: f64, rng: &mut rand::rngs::SmallRng| -> BandwidthSample {
        let x = speed * t;
        let jitter: f64 = rng.random_range(-1.0..1.0) * noise;
        BandwidthSample {
            t_s: t,
            x,
            y: 0.0,
            bps: truth(x) * jitter.exp(),
        }
    };
    let mut map = CoverageMap::new(50.0);
    for _ in 0..laps {
        let mut t = 0.0;
        while speed * t < 3000.0 {
            map.learn(&measure(t, &mut rng));
            t += 0.5;
        }
    }
    let mut predictor = BandwidthPredictor::new(map);
    let (mut ours, mut persistence) = (PredictionScore::default(), PredictionScore::default());
    let mut t = 0.0;
    while speed * t < 3000.0 {
        let s = measure(t, &mut rng);
        ours.measured(&s, 0.01);
        persistence.measured(&s, 0.01);
        predictor.observe(s);
        if let Some(p) = predictor.predict(speed, 0.0, ahead_s) {
            ours.predicted(t + ahead_s, p);
        }
        persistence.predicted(t + ahead_s, s.bps);
        t += 0.5;
    }
    (ours, persistence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, x: f64, bps: f64) -> BandwidthSample {
        BandwidthSample {
            t_s: t,
            x,
            y: 0.0,
            bps,
        }
    }

    #[test]
    fn the_map_learns_by_place_and_falls_back_to_neighbours() {
        let mut m = CoverageMap::new(50.0);
        for _ in 0..10 {
            m.learn(&sample(0.0, 10.0, 1e6));
            m.learn(&sample(0.0, 10.0, 4e6));
        }
        let (bps, n) = m.lookup(20.0, 5.0).unwrap();
        assert_eq!(n, 20);
        assert!(
            (bps - 2e6).abs() < 1e4,
            "geometric mean of 1 and 4 Mbit/s: {bps}"
        );
        assert!(m.lookup(60.0, 0.0).is_some(), "neighbour");
        assert!(m.lookup(500.0, 0.0).is_none());
        m.learn(&sample(0.0, f64::NAN, 1e6));
        assert_eq!(m.len(), 1, "bad samples are not learned");
        let json = serde_json::to_string(&m).unwrap();
        let back: CoverageMap = serde_json::from_str(&json).unwrap();
        assert_eq!(back.lookup(20.0, 5.0), m.lookup(20.0, 5.0));
        for (bad, needle) in [
            (
                r#"{"cell_m": 0.0, "cells": []}"#,
                "`cell_m` must be at least 1 m",
            ),
            (
                r#"{"cell_m": 50.0, "cells": [[0, 0, 1.0, 0]]}"#,
                "`cells[0]`",
            ),
        ] {
            let e = serde_json::from_str::<CoverageMap>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn an_outage_ahead_is_predicted_and_the_horizon_covers_it() {
        let mut map = CoverageMap::new(50.0);
        for _ in 0..5 {
            for x in (0..3000).step_by(10) {
                let x = x as f64;
                let bps = if (1000.0..1300.0).contains(&x) {
                    0.0
                } else {
                    3e6
                };
                map.learn(&sample(0.0, x, bps));
            }
        }
        let mut p = BandwidthPredictor::new(map);
        // At x = 800 m, 20 m/s: the hole starts in 10 s and lasts 15 s.
        p.observe(sample(0.0, 780.0, 3e6));
        p.observe(sample(1.0, 800.0, 3e6));
        let (start, end) = p.predicted_outage(20.0, 0.0, 40.0, 64e3, 0.5).unwrap();
        assert!((9.0..=11.0).contains(&start), "{start}");
        assert!((24.0..=26.5).contains(&end), "{end}");
        let horizon = horizon_to_cover(Some((start, end)), 5.0, 2.0, 60.0);
        assert!(horizon >= end, "{horizon}");
        assert_eq!(horizon_to_cover(None, 5.0, 2.0, 60.0), 5.0);
        // Near term, the recent level rules.
        assert!(p.predict(20.0, 0.0, 0.0).unwrap() > 2e6);
    }

    #[test]
    fn prediction_beats_persistence_on_the_evaluation_drive() {
        let (ours, persistence) = evaluate_drive(5, 5.0, 0.3, 7);
        assert!(ours.relative_errors.len() > 200);
        assert!(
            ours.mean() < persistence.mean() * 0.7,
            "ours {:.3}, persistence {:.3}",
            ours.mean(),
            persistence.mean()
        );
    }
}
