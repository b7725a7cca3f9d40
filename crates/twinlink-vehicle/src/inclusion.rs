//! Which objects of a summary the twin link node sends up.
//!
//! An object goes up again only when the twin's prediction of it, from what it was last
//! sent, would now be off by more than `max_error_m`, its speed changed by more than
//! `speed_mps`, its class changed, or it was last sent `max_interval_s` ago. This is dead
//! reckoning, as distributed simulation (IEEE 1278, DIS) sends entity states: the sender
//! runs the receiver's predictor and speaks only when it is wrong. ETSI's Collective
//! Perception inclusion rules are the same idea judged against the last sent position; on
//! a highway, where everything moves 4 m in a seventh of a second, predicting first is what
//! keeps steady traffic from being repeated at the full rate.
//!
//! The twin's tracker coasts a track on its motion model between updates and deletes it only
//! after `max_coast` (1.5 s) without one, so `max_interval_s` (0.5 s) keeps every seen object
//! alive there. A new object is sent on its first `first_sends` sightings, enough for the
//! tracker to confirm it. A summary with nothing to send is skipped unless the sensor's
//! last summary went up `summary_interval_s` ago. An object with id 0 (no identity from its
//! summarizer) is always sent.
//!
//! The prediction is in base_link: the last sent position moved by the object's velocity
//! over ground minus the vehicle's own (straight driving; when the vehicle turns the error
//! grows and the object is sent sooner). An object without a measured velocity (a camera
//! detection) is predicted to keep its place relative to the vehicle.

use std::collections::HashMap;

use serde::Serialize;
use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary};

/// The thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InclusionConfig {
    /// Off: every object of every summary goes up.
    pub enabled: bool,
    /// Prediction error that sends an object again [m].
    pub max_error_m: f64,
    /// Speed change that sends an object again [m/s].
    pub speed_mps: f64,
    /// Longest time between two sends of a seen object [s].
    pub max_interval_s: f64,
    /// Sightings of a new object that are all sent.
    pub first_sends: u32,
    /// Longest time between two summaries of a sensor, sent even if empty [s].
    pub summary_interval_s: f64,
}

impl Default for InclusionConfig {
    fn default() -> Self {
        InclusionConfig {
            enabled: true,
            max_error_m: 1.0,
            speed_mps: 0.5,
            max_interval_s: 0.5,
            first_sends: 3,
            summary_interval_s: 0.5,
        }
    }
}

/// Counters of the selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InclusionStats {
    /// Objects in the summaries offered.
    pub objects_seen: u64,
    /// Objects sent.
    pub objects_sent: u64,
    /// Summaries offered.
    pub summaries_seen: u64,
    /// Summaries not sent (nothing had changed).
    pub summaries_skipped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    x: f64,
    y: f64,
    /// Velocity relative to the vehicle assumed for the prediction [m/s].
    vx: f64,
    vy: f64,
    speed: Option<f64>,
    class: u8,
    at_us: u64,
    sends: u32,
    seen_us: u64,
}

#[derive(Debug, Default)]
struct SensorMemory {
    objects: HashMap<u32, Sent>,
    last_sent_us: Option<u64>,
}

/// The selection's memory, per sensor and object.
#[derive(Debug, Default)]
pub struct ObjectInclusion {
    config: InclusionConfig,
    sensors: HashMap<String, SensorMemory>,
    stats: InclusionStats,
}

fn stamp_us(s: &PerceptionSummary) -> u64 {
    (s.header.stamp.sec.max(0) as u64) * 1_000_000 + s.header.stamp.nanosec as u64 / 1000
}

impl ObjectInclusion {
    /// A selection with `config`.
    pub fn new(config: InclusionConfig) -> Self {
        ObjectInclusion {
            config,
            ..ObjectInclusion::default()
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> InclusionStats {
        self.stats
    }

    /// What of `summary` goes up, with the vehicle driving at `ego_speed` [m/s] along its x:
    /// the summary with only the objects due, or `None` to skip it. Times are the summary's
    /// stamp.
    pub fn select(
        &mut self,
        summary: &PerceptionSummary,
        ego_speed: f64,
    ) -> Option<PerceptionSummary> {
        self.stats.summaries_seen += 1;
        self.stats.objects_seen += summary.objects.len() as u64;
        if !self.config.enabled {
            self.stats.objects_sent += summary.objects.len() as u64;
            return Some(summary.clone());
        }
        let now = stamp_us(summary);
        let ego = if ego_speed.is_finite() {
            ego_speed
        } else {
            0.0
        };
        let c = self.config;
        let memory = self.sensors.entry(summary.sensor_id.clone()).or_default();
        let mut chosen: Vec<DetectedObject> = Vec::new();
        for o in &summary.objects {
            let speed = o.has_velocity.then(|| o.velocity.x.hypot(o.velocity.y));
            let due = match memory.objects.get_mut(&o.id) {
                _ if o.id == 0 => true,
                None => true,
                Some(s) => {
                    s.seen_us = now;
                    let dt = now.saturating_sub(s.at_us) as f64 * 1e-6;
                    let (px, py) = (s.x + s.vx * dt, s.y + s.vy * dt);
                    let error = (o.position.x - px).hypot(o.position.y - py);
                    let speed_changed = match (speed, s.speed) {
                        (Some(a), Some(b)) => (a - b).abs() > c.speed_mps,
                        (None, None) => false,
                        _ => true,
                    };
                    s.sends < c.first_sends
                        || dt >= c.max_interval_s - 1e-6
                        || error > c.max_error_m
                        || speed_changed
                        || s.class != o.classification
                }
            };
            if !due {
                continue;
            }
            chosen.push(o.clone());
            if o.id != 0 {
                let (vx, vy) = if o.has_velocity {
                    (o.velocity.x - ego, o.velocity.y)
                } else {
                    (0.0, 0.0)
                };
                let sends = memory.objects.get(&o.id).map_or(0, |s| s.sends) + 1;
                memory.objects.insert(
                    o.id,
                    Sent {
                        x: o.position.x,
                        y: o.position.y,
                        vx,
                        vy,
                        speed,
                        class: o.classification,
                        at_us: now,
                        sends,
                        seen_us: now,
                    },
                );
            }
        }
        // Forget objects not seen for a while (their id may come back as a new object).
        let forget_us = (c.max_interval_s * 4.0 * 1e6) as u64;
        memory
            .objects
            .retain(|_, s| now.saturating_sub(s.seen_us) <= forget_us);
        let quiet = memory
            .last_sent_us
            .is_some_and(|t| (now.saturating_sub(t) as f64) * 1e-6 < c.summary_interval_s);
        if chosen.is_empty() && quiet {
            self.stats.summaries_skipped += 1;
            return None;
        }
        memory.last_sent_us = Some(now);
        self.stats.objects_sent += chosen.len() as u64;
        let mut out = summary.clone();
        out.objects = chosen;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_msgs::builtin_interfaces::msg::Time;

    fn object(id: u32, x: f64, y: f64, vx: Option<f64>) -> DetectedObject {
        let mut o = DetectedObject {
            id,
            classification: DetectedObject::CLASS_CAR,
            ..DetectedObject::default()
        };
        o.position.x = x;
        o.position.y = y;
        if let Some(v) = vx {
            o.has_velocity = true;
            o.velocity.x = v;
        }
        o
    }

    fn summary(t_ms: u64, objects: Vec<DetectedObject>) -> PerceptionSummary {
        let mut s = PerceptionSummary {
            sensor_id: "lidar_top".into(),
            objects,
            ..PerceptionSummary::default()
        };
        s.header.stamp = Time {
            sec: (t_ms / 1000) as i32,
            nanosec: ((t_ms % 1000) * 1_000_000) as u32,
        };
        s
    }

    #[test]
    fn steady_traffic_is_repeated_at_the_interval_and_changes_at_once() {
        let mut f = ObjectInclusion::new(InclusionConfig::default());
        // The vehicle at 30 m/s; a car ahead at 28 m/s closes in by 2 m/s, as predicted.
        let mut sent_ids = Vec::new();
        for k in 0..30u64 {
            let x = 40.0 - 2.0 * 0.1 * k as f64;
            let s = summary(1000 + 100 * k, vec![object(7, x, 0.0, Some(28.0))]);
            if let Some(out) = f.select(&s, 30.0) {
                sent_ids.push((k, out.objects.len()));
            }
        }
        let sent_objects: usize = sent_ids.iter().map(|(_, n)| n).sum();
        // First three sightings, then every 0.5 s: about 3 + 27 / 5.
        assert!((7..=9).contains(&sent_objects), "{sent_ids:?}");
        assert_eq!(f.stats().objects_seen, 30);
        assert!(f.stats().summaries_skipped > 15, "{:?}", f.stats());
        // A braking car (speed change) goes up at once.
        let s = summary(4100, vec![object(7, 34.0, 0.0, Some(26.0))]);
        assert_eq!(f.select(&s, 30.0).unwrap().objects.len(), 1);
        // A car that changes lane (prediction off by 3.5 m) too.
        let s = summary(4200, vec![object(7, 33.8, 3.5, Some(26.0))]);
        assert_eq!(f.select(&s, 30.0).unwrap().objects.len(), 1);
    }

    #[test]
    fn new_objects_are_sent_until_the_twin_can_confirm_them() {
        let mut f = ObjectInclusion::new(InclusionConfig::default());
        let mut counts = Vec::new();
        for k in 0..5u64 {
            let objects = if k < 2 {
                vec![object(1, 20.0, 0.0, Some(30.0))]
            } else {
                vec![
                    object(1, 20.0, 0.0, Some(30.0)),
                    object(2, 60.0, 3.5, Some(30.0)),
                ]
            };
            let out = f.select(&summary(100 * k, objects), 30.0);
            counts.push(out.map_or(0, |o| o.objects.len()));
        }
        // Object 1: sightings 0-2; object 2: sightings 2-4.
        assert_eq!(counts, [1, 1, 2, 1, 1]);
    }

    #[test]
    fn without_identity_or_when_off_everything_goes() {
        let mut f = ObjectInclusion::new(InclusionConfig::default());
        for k in 0..10u64 {
            let out = f.select(&summary(100 * k, vec![object(0, 20.0, 0.0, None)]), 0.0);
            assert_eq!(out.unwrap().objects.len(), 1);
        }
        let mut off = ObjectInclusion::new(InclusionConfig {
            enabled: false,
            ..InclusionConfig::default()
        });
        for k in 0..10u64 {
            let out = off.select(&summary(100 * k, vec![object(5, 20.0, 0.0, None)]), 0.0);
            assert_eq!(out.unwrap().objects.len(), 1);
        }
        assert_eq!(off.stats().objects_sent, 10);
    }

    #[test]
    fn an_empty_sensor_still_reports_at_the_summary_interval() {
        let mut f = ObjectInclusion::new(InclusionConfig::default());
        let sent: Vec<bool> = (0..10u64)
            .map(|k| f.select(&summary(100 * k, vec![]), 30.0).is_some())
            .collect();
        assert_eq!(
            sent,
            [true, false, false, false, false, true, false, false, false, false]
        );
    }
}
