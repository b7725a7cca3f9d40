//! A vehicle's radio as the link sees it: link quality by position along the road (a
//! [`RadioMap`]), and a [`Radio`] that applies the quality where the vehicle is to its link
//! end's outbound and inbound fault layers, so that the real link, with its real frames,
//! crosses the coverage a simulator or a drive-test survey describes.
//!
//! Quality maps to the fault layers as a cellular link acts on packets: the bandwidth is a
//! bottleneck (bounded queue of 250 ms at that rate, at least 16 kB), the one-way latency a
//! delay on each frame, the loss a drop probability, and no coverage (zero bandwidth, or
//! all lost) cuts the path both ways, handshakes included, until coverage returns.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fault::{FaultControl, FaultPlan};

/// What the wireless link offers at a place (also a scenario's `coverage` quality, where
/// `latency_ms` defaults to 20 and `loss` to 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadioQuality {
    /// Bandwidth each way [bit/s]; 0 is no coverage.
    pub bandwidth_bps: f64,
    /// One-way latency [ms].
    #[serde(default = "default_latency_ms")]
    pub latency_ms: f64,
    /// Packet loss, 0 to 1.
    #[serde(default)]
    pub loss: f64,
}

fn default_latency_ms() -> f64 {
    20.0
}

/// 10 Mbit/s, 20 ms, no loss.
impl Default for RadioQuality {
    fn default() -> Self {
        RadioQuality {
            bandwidth_bps: 10e6,
            latency_ms: default_latency_ms(),
            loss: 0.0,
        }
    }
}

impl RadioQuality {
    /// No coverage.
    pub fn none() -> Self {
        RadioQuality {
            bandwidth_bps: 0.0,
            latency_ms: 0.0,
            loss: 1.0,
        }
    }

    /// Whether anything gets through.
    pub fn is_covered(&self) -> bool {
        self.bandwidth_bps > 0.0 && self.loss < 1.0
    }

    /// Why this quality is not usable, if it is not (`what` names it in the message).
    pub fn check(&self, what: &str) -> Result<(), RadioMapError> {
        let bad = |field: &str, value: f64, want: &str| {
            Err(RadioMapError::Invalid(format!(
                "{what}.{field}: {want}, got {value}"
            )))
        };
        if !(self.bandwidth_bps.is_finite() && self.bandwidth_bps >= 0.0) {
            return bad("bandwidth_bps", self.bandwidth_bps, "a bit rate >= 0");
        }
        if !(self.latency_ms.is_finite() && (0.0..=10_000.0).contains(&self.latency_ms)) {
            return bad("latency_ms", self.latency_ms, "0 to 10000 ms");
        }
        if !(self.loss.is_finite() && (0.0..=1.0).contains(&self.loss)) {
            return bad("loss", self.loss, "a probability from 0 to 1");
        }
        Ok(())
    }

    /// The fault plan that makes a link end's path act like this radio one way; `None`
    /// without coverage (the path is cut).
    pub fn fault_plan(&self) -> Option<FaultPlan> {
        if !self.is_covered() {
            return None;
        }
        let rate = self.bandwidth_bps.max(1.0) as u64;
        Some(FaultPlan {
            drop: self.loss,
            delay: Duration::from_secs_f64(self.latency_ms / 1e3),
            rate_bps: Some(rate),
            queue_bytes: ((rate / 8) / 4).max(16 << 10) as usize,
            ..FaultPlan::clean()
        })
    }
}

/// Why a radio map was refused.
#[derive(Debug, thiserror::Error)]
pub enum RadioMapError {
    /// The file could not be read.
    #[error("reading radio map {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a radio map.
    #[error("radio map {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (names the field).
        message: String,
    },
    /// A value is out of range.
    #[error("radio map: {0}")]
    Invalid(String),
}

/// Link quality sampled along the road (map x): sample `i` holds from
/// `start_m + i * step_m` to the next; before the first sample the first applies, after
/// the last the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadioMap {
    /// Where the first sample starts [m].
    pub start_m: f64,
    /// Distance between samples [m].
    pub step_m: f64,
    /// The quality of each stretch.
    pub samples: Vec<RadioQuality>,
}

/// The most samples a map may hold.
pub const MAX_SAMPLES: usize = 1_000_000;

impl RadioMap {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), RadioMapError> {
        if !self.start_m.is_finite() {
            return Err(RadioMapError::Invalid(format!(
                "start_m: a finite distance, got {}",
                self.start_m
            )));
        }
        if !(self.step_m.is_finite() && self.step_m > 0.0) {
            return Err(RadioMapError::Invalid(format!(
                "step_m: a distance > 0, got {}",
                self.step_m
            )));
        }
        if self.samples.is_empty() || self.samples.len() > MAX_SAMPLES {
            return Err(RadioMapError::Invalid(format!(
                "samples: 1 to {MAX_SAMPLES} qualities, got {}",
                self.samples.len()
            )));
        }
        for (i, q) in self.samples.iter().enumerate() {
            q.check(&format!("samples[{i}]"))?;
        }
        Ok(())
    }

    /// Reads and validates a map from a JSON file.
    pub fn load(path: &Path) -> Result<RadioMap, RadioMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| RadioMapError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let map: RadioMap = serde_json::from_str(&text).map_err(|e| RadioMapError::Syntax {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        map.validate()?;
        Ok(map)
    }

    /// The quality at `x` [m].
    pub fn at(&self, x: f64) -> RadioQuality {
        let Some(last) = self.samples.len().checked_sub(1) else {
            return RadioQuality::none();
        };
        let i = ((x - self.start_m) / self.step_m).floor();
        let i = if i.is_nan() || i < 0.0 {
            0
        } else {
            (i as usize).min(last)
        };
        self.samples[i]
    }
}

/// Applies a radio's quality to a link end's outbound and inbound fault layers, changing
/// them only when the quality changes.
#[derive(Debug)]
pub struct Radio {
    outbound: FaultControl,
    inbound: FaultControl,
    current: Option<RadioQuality>,
    changes: u64,
}

/// How long a cut lasts unless coverage returns first (it is healed then).
const CUT_HOLD: Duration = Duration::from_secs(24 * 3600);

impl Radio {
    /// A radio acting on the link end's `outbound` (`LinkConfig::faults`) and `inbound`
    /// (`LinkConfig::inbound_faults`) layers.
    pub fn new(outbound: FaultControl, inbound: FaultControl) -> Self {
        Radio {
            outbound,
            inbound,
            current: None,
            changes: 0,
        }
    }

    /// Sets the quality the vehicle has now.
    pub fn apply(&mut self, quality: RadioQuality) {
        if self.current == Some(quality) {
            return;
        }
        self.changes += 1;
        match quality.fault_plan() {
            Some(plan) => {
                for c in [&self.outbound, &self.inbound] {
                    c.set_plan(plan.clone());
                    c.heal();
                }
            }
            None => {
                for c in [&self.outbound, &self.inbound] {
                    c.cut_for(CUT_HOLD);
                }
            }
        }
        self.current = Some(quality);
    }

    /// The quality applied last.
    pub fn current(&self) -> Option<RadioQuality> {
        self.current
    }

    /// How often the quality changed.
    pub fn changes(&self) -> u64 {
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn q(bandwidth_bps: f64, latency_ms: f64, loss: f64) -> RadioQuality {
        RadioQuality {
            bandwidth_bps,
            latency_ms,
            loss,
        }
    }

    #[test]
    fn the_map_gives_each_stretch_its_sample_and_clamps_at_the_ends() {
        let map = RadioMap {
            start_m: 100.0,
            step_m: 50.0,
            samples: vec![q(1e6, 20.0, 0.0), RadioQuality::none(), q(2e6, 30.0, 0.1)],
        };
        map.validate().unwrap();
        assert_eq!(map.at(-1e9), map.samples[0]);
        assert_eq!(map.at(149.9), map.samples[0]);
        assert!(!map.at(150.0).is_covered());
        assert_eq!(map.at(200.0), map.samples[2]);
        assert_eq!(map.at(1e9), map.samples[2]);
        assert_eq!(map.at(f64::NAN), map.samples[0]);
    }

    #[test]
    fn bad_maps_are_refused_naming_the_field() {
        let good = RadioMap {
            start_m: 0.0,
            step_m: 10.0,
            samples: vec![q(1e6, 20.0, 0.0)],
        };
        let cases: Vec<(RadioMap, &str)> = vec![
            (
                RadioMap {
                    step_m: 0.0,
                    ..good.clone()
                },
                "step_m",
            ),
            (
                RadioMap {
                    samples: vec![],
                    ..good.clone()
                },
                "samples:",
            ),
            (
                RadioMap {
                    samples: vec![q(1e6, 20.0, 0.0), q(1e6, 20.0, 1.5)],
                    ..good.clone()
                },
                "samples[1].loss",
            ),
            (
                RadioMap {
                    samples: vec![q(f64::NAN, 20.0, 0.0)],
                    ..good.clone()
                },
                "samples[0].bandwidth_bps",
            ),
        ];
        for (map, field) in cases {
            let e = map.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e} should name {field}");
        }
        let dir = std::env::temp_dir().join(format!("radio_map_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("map.json");
        std::fs::write(
            &path,
            r#"{"start_m": 0, "step_m": 10, "samples": [{"bandwidth_bps": 1}], "x": 1}"#,
        )
        .unwrap();
        let e = RadioMap::load(&path).unwrap_err().to_string();
        assert!(e.contains("latency_ms") || e.contains("x"), "{e}");
        std::fs::write(&path, serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(RadioMap::load(&path).unwrap(), good);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_radio_shapes_both_ways_and_cuts_without_coverage() {
        let (out, inbound) = (
            FaultControl::new(FaultPlan::clean()),
            FaultControl::new(FaultPlan::clean()),
        );
        let mut radio = Radio::new(out.clone(), inbound.clone());
        radio.apply(q(64_000.0, 80.0, 0.05));
        for c in [&out, &inbound] {
            let plan = c.plan();
            assert_eq!(plan.rate_bps, Some(64_000));
            assert_eq!(plan.delay, Duration::from_millis(80));
            assert_eq!(plan.drop, 0.05);
            assert!(plan.queue_bytes >= 16 << 10);
            assert!(!c.is_cut(Instant::now()));
        }
        radio.apply(q(64_000.0, 80.0, 0.05));
        assert_eq!(radio.changes(), 1, "the same quality changes nothing");
        radio.apply(RadioQuality::none());
        assert!(out.is_cut(Instant::now()) && inbound.is_cut(Instant::now()));
        radio.apply(q(10e6, 20.0, 0.0));
        assert!(!out.is_cut(Instant::now()) && !inbound.is_cut(Instant::now()));
        assert_eq!(out.plan().rate_bps, Some(10_000_000));
        assert_eq!(radio.changes(), 3);
    }
}
