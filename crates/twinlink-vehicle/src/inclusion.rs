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
//! after `max_coast` (1.5 s) without one, so `max_interval_s` (1 s) keeps every seen object
//! alive there. A new object is sent on its first `first_sends` sightings, enough for the
//! tracker to confirm it. A summary with nothing to send is skipped unless the sensor's
//! last summary went up `summary_interval_s` ago. A summary that goes up anyway also takes
//! the objects whose refresh is half due, so refreshes gather in fewer summaries (each
//! summary has its own header and sensor description). A prediction error within three
//! standard deviations of the difference of two measurements (from the object's position
//! covariance) is noise, not news: a
//! radar's metre-level scatter at range does not resend the object every scan. An object with id 0 (no identity from its
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
            max_interval_s: 1.0,
            first_sends: 3,
            summary_interval_s: 1.0,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    Now,
    Soon,
    No,
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
        // Each object: due now (the twin's prediction is off, or it is new, or its refresh
        // is due), due soon (half its refresh interval passed), or not.
        let mut urgency = Vec::with_capacity(summary.objects.len());
        for o in &summary.objects {
            let speed = o.has_velocity.then(|| o.velocity.x.hypot(o.velocity.y));
            let u = match memory.objects.get_mut(&o.id) {
                _ if o.id == 0 => Urgency::Now,
                None => Urgency::Now,
                Some(s) => {
                    s.seen_us = now;
                    let dt = now.saturating_sub(s.at_us) as f64 * 1e-6;
                    let (px, py) = (s.x + s.vx * dt, s.y + s.vy * dt);
                    let error = (o.position.x - px).hypot(o.position.y - py);
                    // An error within the noise of two measurements (3 sigma of their
                    // difference) says nothing.
                    let sigma = (o.position_covariance[0].max(o.position_covariance[4]) as f64)
                        .max(0.0)
                        .sqrt();
                    let tolerance = if sigma.is_finite() {
                        c.max_error_m.max(3.0 * std::f64::consts::SQRT_2 * sigma)
                    } else {
                        c.max_error_m
                    };
                    let speed_changed = match (speed, s.speed) {
                        (Some(a), Some(b)) => (a - b).abs() > c.speed_mps,
                        (None, None) => false,
                        _ => true,
                    };
                    if s.sends < c.first_sends
                        || dt >= c.max_interval_s - 1e-6
                        || error.is_nan()
                        || error > tolerance
                        || speed_changed
                        || s.class != o.classification
                    {
                        Urgency::Now
                    } else if dt >= c.max_interval_s / 2.0 {
                        Urgency::Soon
                    } else {
                        Urgency::No
                    }
                }
            };
            urgency.push(u);
        }
        let quiet = memory
            .last_sent_us
            .is_some_and(|t| (now.saturating_sub(t) as f64) * 1e-6 < c.summary_interval_s);
        let any_now = urgency.contains(&Urgency::Now);
        if !any_now && quiet {
            self.stats.summaries_skipped += 1;
            return None;
        }
        // A summary that goes anyway takes the objects due soon too, so that refreshes
        // gather in fewer summaries.
        let mut chosen: Vec<DetectedObject> = Vec::new();
        for (o, u) in summary.objects.iter().zip(&urgency) {
            if *u == Urgency::No {
                continue;
            }
            chosen.push(o.clone());
            if o.id != 0 {
                let (vx, vy) = if o.has_velocity {
                    (o.velocity.x - ego, o.velocity.y)
                } else {
                    (0.0, 0.0)
                };
                let speed = o.has_velocity.then(|| o.velocity.x.hypot(o.velocity.y));
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
        memory.last_sent_us = Some(now);
        self.stats.objects_sent += chosen.len() as u64;
        let mut out = summary.clone();
        out.objects = chosen;
        Some(out)
    }
}

/// Thresholds of the vehicle's own state: it goes up again only when the twin's prediction
/// of it (the last sent pose moved at the last sent speed and yaw rate) is off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateInclusionConfig {
    /// Off: every state at the node's `state_rate`.
    pub enabled: bool,
    /// Position error that sends the state again [m].
    pub max_error_m: f64,
    /// Speed change that sends it again [m/s].
    pub speed_mps: f64,
    /// Heading error that sends it again [rad].
    pub yaw_rad: f64,
    /// Longest time between two states [s].
    pub max_interval_s: f64,
}

impl Default for StateInclusionConfig {
    fn default() -> Self {
        StateInclusionConfig {
            enabled: true,
            max_error_m: 0.25,
            speed_mps: 0.3,
            yaw_rad: 2f64.to_radians(),
            max_interval_s: 1.0,
        }
    }
}

/// Counters of the state selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateInclusionStats {
    /// States offered.
    pub seen: u64,
    /// States sent.
    pub sent: u64,
}

#[derive(Debug, Clone, Copy)]
struct SentState {
    x: f64,
    y: f64,
    yaw: f64,
    speed: f64,
    yaw_rate: f64,
    at_us: u64,
}

/// Dead reckoning of the vehicle's own state (`VehicleState` in `map`): the twin's
/// estimate between two states follows a constant speed and yaw rate, so a state goes up
/// only when that prediction is off by `max_error_m` in position, `speed_mps` in speed or
/// `yaw_rad` in heading, or `max_interval_s` passed. On a highway at steady speed that is
/// about once a second instead of the odometry's rate; braking, steering or a lane change
/// sends at once.
#[derive(Debug, Default)]
pub struct StateInclusion {
    config: StateInclusionConfig,
    last: Option<SentState>,
    stats: StateInclusionStats,
}

fn yaw_of(q: &twinlink_msgs::geometry_msgs::msg::Quaternion) -> f64 {
    (2.0 * (q.w * q.z + q.x * q.y)).atan2(1.0 - 2.0 * (q.y * q.y + q.z * q.z))
}

fn angle_diff(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(std::f64::consts::TAU);
    d.min(std::f64::consts::TAU - d)
}

impl StateInclusion {
    /// A selection with `config`.
    pub fn new(config: StateInclusionConfig) -> Self {
        StateInclusion {
            config,
            ..StateInclusion::default()
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> StateInclusionStats {
        self.stats
    }

    /// Whether `state` goes up (times are its stamp).
    pub fn select(&mut self, state: &twinlink_msgs::twin_msgs::msg::VehicleState) -> bool {
        self.stats.seen += 1;
        let now = (state.header.stamp.sec.max(0) as u64) * 1_000_000
            + state.header.stamp.nanosec as u64 / 1000;
        let (x, y) = (state.pose.position.x, state.pose.position.y);
        let yaw = yaw_of(&state.pose.orientation);
        let speed = state.twist.linear.x;
        let yaw_rate = state.twist.angular.z;
        let c = self.config;
        let due = match self.last {
            _ if !c.enabled => true,
            None => true,
            Some(l) => {
                let dt = now.saturating_sub(l.at_us) as f64 * 1e-6;
                // Constant speed and yaw rate from the last sent state (arc, or line).
                let (px, py, pyaw) = if l.yaw_rate.abs() < 1e-4 {
                    (
                        l.x + l.speed * dt * l.yaw.cos(),
                        l.y + l.speed * dt * l.yaw.sin(),
                        l.yaw,
                    )
                } else {
                    let yaw1 = l.yaw + l.yaw_rate * dt;
                    let r = l.speed / l.yaw_rate;
                    (
                        l.x + r * (yaw1.sin() - l.yaw.sin()),
                        l.y - r * (yaw1.cos() - l.yaw.cos()),
                        yaw1,
                    )
                };
                let error = (x - px).hypot(y - py);
                dt >= c.max_interval_s - 1e-6
                    || !error.is_finite()
                    || error > c.max_error_m
                    || (speed - l.speed).abs() > c.speed_mps
                    || angle_diff(yaw, pyaw) > c.yaw_rad
                    || dt < 0.0
            }
        };
        if due {
            self.stats.sent += 1;
            self.last = Some(SentState {
                x,
                y,
                yaw,
                speed,
                yaw_rate,
                at_us: now,
            });
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_msgs::builtin_interfaces::msg::Time;
    use twinlink_msgs::twin_msgs::msg::VehicleState;

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
        // First three sightings, then every second: about 3 + 27 / 10.
        assert!((5..=7).contains(&sent_objects), "{sent_ids:?}");
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
    fn scatter_within_the_measurement_noise_is_not_news() {
        let mut f = ObjectInclusion::new(InclusionConfig::default());
        // A radar object at 120 m with 0.5 m standard deviation, scattering by 1 m
        // around a steady track; the vehicle and it at the same speed.
        let mut sent = 0;
        for k in 0..40u64 {
            let scatter = if k % 2 == 0 { 1.0 } else { -1.0 };
            let mut o = object(9, 120.0 + scatter, 0.0, Some(30.0));
            o.position_covariance[0] = 0.25;
            o.position_covariance[4] = 0.25;
            if let Some(out) = f.select(&summary(50 * k, vec![o]), 30.0) {
                sent += out.objects.len();
            }
        }
        // First three sightings and one refresh a second: 3 + 2 in 2 s.
        assert!(sent <= 6, "{sent}");
        // Without the covariance, the same scatter is news every time.
        let mut g = ObjectInclusion::new(InclusionConfig::default());
        let sent: usize = (0..40u64)
            .filter_map(|k| {
                let scatter = if k % 2 == 0 { 1.0 } else { -1.0 };
                g.select(
                    &summary(50 * k, vec![object(9, 120.0 + scatter, 0.0, Some(30.0))]),
                    30.0,
                )
            })
            .map(|out| out.objects.len())
            .sum();
        assert!(sent > 30, "{sent}");
    }

    #[test]
    fn refreshes_gather_in_the_summaries_that_go_anyway() {
        let mut f = ObjectInclusion::new(InclusionConfig::default());
        // Object 1 from t = 0, object 2 from t = 0.4 s; both steady.
        let mut carried = Vec::new();
        for k in 0..30u64 {
            let mut objects = vec![object(1, 20.0, 0.0, Some(30.0))];
            if k >= 4 {
                objects.push(object(2, 50.0, 3.5, Some(30.0)));
            }
            if let Some(out) = f.select(&summary(100 * k, objects), 30.0) {
                carried.push((k, out.objects.iter().map(|o| o.id).collect::<Vec<_>>()));
            }
        }
        // After the first sightings, object 1's refreshes take object 2 along (and the
        // other way round): never a summary with only one of them once both are steady.
        let steady: Vec<_> = carried.iter().filter(|(k, _)| *k >= 10).collect();
        assert!(!steady.is_empty(), "{carried:?}");
        assert!(steady.iter().all(|(_, ids)| ids.len() == 2), "{carried:?}");
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

    fn state(t_ms: u64, x: f64, y: f64, yaw: f64, speed: f64, yaw_rate: f64) -> VehicleState {
        let mut s = VehicleState::default();
        s.header.stamp = Time {
            sec: (t_ms / 1000) as i32,
            nanosec: ((t_ms % 1000) * 1_000_000) as u32,
        };
        s.pose.position.x = x;
        s.pose.position.y = y;
        s.pose.orientation.z = (yaw / 2.0).sin();
        s.pose.orientation.w = (yaw / 2.0).cos();
        s.twist.linear.x = speed;
        s.twist.angular.z = yaw_rate;
        s
    }

    #[test]
    fn steady_driving_sends_the_state_once_a_second_and_changes_at_once() {
        let mut f = StateInclusion::new(StateInclusionConfig::default());
        // 30 m/s along x at 20 Hz for 5 s: exactly as predicted.
        let sent: usize = (0..100u64)
            .filter(|&k| f.select(&state(50 * k, 30.0 * 0.05 * k as f64, 0.0, 0.0, 30.0, 0.0)))
            .count();
        assert!((5..=6).contains(&sent), "{sent}");
        // Braking: the speed changes by more than 0.3 m/s.
        assert!(f.select(&state(5000, 150.0, 0.0, 0.0, 29.5, 0.0)));
        // A lane change: 0.5 m to the side of the prediction.
        assert!(!f.select(&state(5050, 151.475, 0.1, 0.0, 29.5, 0.0)));
        assert!(f.select(&state(5100, 152.95, 0.5, 0.0, 29.5, 0.0)));
        // Along a curve at a constant yaw rate, as predicted: quiet.
        let mut g = StateInclusion::new(StateInclusionConfig::default());
        let (v, w) = (20.0, 0.1);
        let sent: usize = (0..40u64)
            .filter(|&k| {
                let t = 0.05 * k as f64;
                let yaw = w * t;
                let (x, y) = ((v / w) * yaw.sin(), (v / w) * (1.0 - yaw.cos()));
                g.select(&state(50 * k, x, y, yaw, v, w))
            })
            .count();
        assert!(sent <= 3, "{sent}");
        assert_eq!(g.stats().seen, 40);
        // Off: everything.
        let mut off = StateInclusion::new(StateInclusionConfig {
            enabled: false,
            ..StateInclusionConfig::default()
        });
        assert!((0..10u64).all(|k| off.select(&state(50 * k, 0.0, 0.0, 0.0, 0.0, 0.0))));
    }

    #[test]
    fn an_empty_sensor_still_reports_at_the_summary_interval() {
        let mut f = ObjectInclusion::new(InclusionConfig::default());
        let sent: Vec<u64> = (0..25u64)
            .filter(|&k| f.select(&summary(100 * k, vec![]), 30.0).is_some())
            .collect();
        assert_eq!(sent, [0, 10, 20]);
    }
}
