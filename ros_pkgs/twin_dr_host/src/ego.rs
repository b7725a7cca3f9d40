//! The DR's estimate of its own vehicle (the PE): where it is, how fast it goes, and how
//! sure the twin is of that, also while the vehicle is offline.
//!
//! Each `VehicleState` the PE reports is a measurement of position and velocity for a
//! CTRV extended Kalman filter (the tracker's [`Filter`]). Between reports, and while the
//! link is down, the filter predicts: the state moves on along the last curvature and the
//! covariance grows with the process noise, so the uncertainty the DR reports widens the
//! longer the PE is away. When the PE returns, its next report pulls the estimate back.
//!
//! The poses of recent reports are also kept (a short history), so that a perception
//! summary stamped between two reports is placed in the map with the pose the vehicle had
//! when the sensor saw it.

use std::collections::VecDeque;

use nalgebra::{Matrix2, SMatrix, SVector, Vector2};
use twinlink_msgs::twin_msgs::msg::VehicleState;

use crate::tracker::{Filter, Measurement, TrackerConfig};

/// A reported pose: time [s], x, y [m], yaw [rad].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StampedPose {
    /// Stamp [s since the Unix epoch].
    pub t: f64,
    /// Position x [m].
    pub x: f64,
    /// Position y [m].
    pub y: f64,
    /// Heading [rad].
    pub yaw: f64,
}

/// The estimate at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EgoEstimate {
    /// Position [m].
    pub x: f64,
    /// Position [m].
    pub y: f64,
    /// Heading [rad].
    pub yaw: f64,
    /// Speed over ground [m/s].
    pub speed: f64,
    /// Standard deviation of the position (largest axis) [m].
    pub position_sigma: f64,
    /// Time since the newest report [s].
    pub age: f64,
}

/// Why a vehicle state was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    /// A field is not finite or out of range.
    #[error("VehicleState field `{0}` {1}")]
    Invalid(&'static str, &'static str),
    /// Older than the newest state applied.
    #[error("VehicleState stamped {0:.3} s before the newest one applied")]
    Stale(f64),
}

/// Reports kept for placing summaries in time.
const HISTORY: usize = 64;

/// The own-vehicle estimator.
#[derive(Debug, Clone)]
pub struct EgoEstimator {
    filter: Option<Filter>,
    /// Time of the filter's state [s].
    filter_t: f64,
    newest_report: f64,
    history: VecDeque<StampedPose>,
    length: f64,
    width: f64,
    noise: TrackerConfig,
}

fn yaw_of(state: &VehicleState) -> f64 {
    let q = &state.pose.orientation;
    (2.0 * (q.w * q.z + q.x * q.y)).atan2(1.0 - 2.0 * (q.y * q.y + q.z * q.z))
}

/// Seconds since the Unix epoch of a ROS time.
pub fn stamp_seconds(t: &twinlink_msgs::builtin_interfaces::msg::Time) -> f64 {
    t.sec as f64 + t.nanosec as f64 * 1e-9
}

fn wrap(a: f64) -> f64 {
    (a + std::f64::consts::PI).rem_euclid(std::f64::consts::TAU) - std::f64::consts::PI
}

impl Default for EgoEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl EgoEstimator {
    /// An estimator that has seen nothing yet. Process noise: 1.5 m/s² longitudinal,
    /// 0.3 rad/s² yaw (a passenger car in traffic).
    pub fn new() -> Self {
        let noise = TrackerConfig {
            acceleration_sigma: 1.5,
            yaw_acceleration_sigma: 0.3,
            ..TrackerConfig::default()
        };
        EgoEstimator {
            filter: None,
            filter_t: 0.0,
            newest_report: f64::NEG_INFINITY,
            history: VecDeque::new(),
            length: 4.5,
            width: 1.9,
            noise,
        }
    }

    /// Whether any state was applied.
    pub fn initialized(&self) -> bool {
        self.filter.is_some()
    }

    /// Body length and width [m].
    pub fn dimensions(&self) -> (f64, f64) {
        (self.length, self.width)
    }

    /// Stamp of the newest report [s].
    pub fn newest_report(&self) -> Option<f64> {
        self.filter.as_ref().map(|_| self.newest_report)
    }

    /// Applies a report; refuses non-finite fields and reports older than the newest.
    pub fn apply(&mut self, state: &VehicleState) -> Result<(), StateError> {
        let t = stamp_seconds(&state.header.stamp);
        let p = &state.pose.position;
        let q = &state.pose.orientation;
        let v = &state.twist.linear;
        if !(p.x.is_finite() && p.y.is_finite() && p.z.is_finite()) {
            return Err(StateError::Invalid("pose.position", "must be finite"));
        }
        let qn = (q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w).sqrt();
        if !(qn.is_finite() && (qn - 1.0).abs() < 0.01) {
            return Err(StateError::Invalid(
                "pose.orientation",
                "must be a unit quaternion",
            ));
        }
        if !(v.x.is_finite() && v.y.is_finite() && v.x.hypot(v.y) < 100.0) {
            return Err(StateError::Invalid(
                "twist.linear",
                "must be finite and below 100 m/s",
            ));
        }
        if !state.twist.angular.z.is_finite() {
            return Err(StateError::Invalid("twist.angular.z", "must be finite"));
        }
        if !(state.length.is_finite()
            && state.width.is_finite()
            && state.length >= 0.0
            && state.width >= 0.0
            && state.length < 30.0
            && state.width < 5.0)
        {
            return Err(StateError::Invalid(
                "length",
                "length and width must be in [0, 30) and [0, 5) m",
            ));
        }
        if t < self.newest_report {
            return Err(StateError::Stale(self.newest_report - t));
        }
        let yaw = yaw_of(state);
        let (s, c) = yaw.sin_cos();
        let velocity = Vector2::new(v.x * c - v.y * s, v.x * s + v.y * c);
        let pc = &state.pose_covariance;
        let floor = 0.05f64.powi(2);
        let mut cov = Matrix2::new(pc[0], pc[1], pc[6], pc[7]);
        if !cov.iter().all(|x| x.is_finite()) {
            cov = Matrix2::zeros();
        }
        cov[(0, 0)] = cov[(0, 0)].max(floor);
        cov[(1, 1)] = cov[(1, 1)].max(floor);
        let m = Measurement {
            position: Vector2::new(p.x, p.y),
            position_cov: cov,
            velocity: Some((velocity, Matrix2::identity() * 0.2f64.powi(2))),
            class: 1,
            class_confidence: 1.0,
            dimensions: [state.length, state.width, 1.5],
        };
        match &mut self.filter {
            Some(f) => {
                f.predict(t - self.filter_t, &self.noise);
                f.update(&m);
                // The heading is reported, not only inferred from the velocity.
                if let Filter::Ctrv { x, p } = f {
                    x[3] = wrap(yaw);
                    x[4] = state.twist.angular.z;
                    p[(3, 3)] = p[(3, 3)].min(0.01);
                }
            }
            None => {
                let mut pcov = SMatrix::<f64, 5, 5>::zeros();
                pcov.fixed_view_mut::<2, 2>(0, 0).copy_from(&cov);
                pcov[(2, 2)] = 0.04;
                pcov[(3, 3)] = 0.01;
                pcov[(4, 4)] = 0.01;
                let speed = if v.x < 0.0 {
                    -v.x.hypot(v.y)
                } else {
                    v.x.hypot(v.y)
                };
                self.filter = Some(Filter::Ctrv {
                    x: SVector::<f64, 5>::new(p.x, p.y, speed, wrap(yaw), state.twist.angular.z),
                    p: pcov,
                });
            }
        }
        self.filter_t = t;
        self.newest_report = t;
        if state.length > 0.0 {
            self.length = state.length;
        }
        if state.width > 0.0 {
            self.width = state.width;
        }
        self.history.push_back(StampedPose {
            t,
            x: p.x,
            y: p.y,
            yaw,
        });
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        Ok(())
    }

    /// The estimate at time `t` [s]: the filter predicted forward (never backward).
    pub fn estimate(&self, t: f64) -> Option<EgoEstimate> {
        let mut f = self.filter.clone()?;
        f.predict(t - self.filter_t, &self.noise);
        let (pos, cov) = f.position();
        let (yaw, speed) = match &f {
            Filter::Ctrv { x, .. } => (x[3], x[2]),
            Filter::ConstantVelocity { x, .. } => (x[3].atan2(x[2]), x[2].hypot(x[3])),
        };
        let sigma = cov.symmetric_eigenvalues().max().max(0.0).sqrt();
        Some(EgoEstimate {
            x: pos.x,
            y: pos.y,
            yaw,
            speed,
            position_sigma: sigma,
            age: (t - self.newest_report).max(0.0),
        })
    }

    /// The vehicle's pose at time `t` [s] (x, y, yaw): interpolated between the two
    /// reports around `t`, predicted by the filter after the newest, the oldest kept report
    /// before that. `None` before any report.
    pub fn pose_at(&self, t: f64) -> Option<(f64, f64, f64)> {
        let newest = self.history.back()?;
        if t >= newest.t {
            let e = self.estimate(t)?;
            return Some((e.x, e.y, e.yaw));
        }
        let i = self.history.partition_point(|p| p.t <= t);
        if i == 0 {
            let p = self.history.front()?;
            return Some((p.x, p.y, p.yaw));
        }
        let (a, b) = (self.history[i - 1], self.history[i]);
        let f = if b.t > a.t {
            (t - a.t) / (b.t - a.t)
        } else {
            1.0
        };
        Some((
            a.x + (b.x - a.x) * f,
            a.y + (b.y - a.y) * f,
            wrap(a.yaw + wrap(b.yaw - a.yaw) * f),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::ros_time;

    fn state(t: f64, x: f64, y: f64, yaw: f64, v: f64) -> VehicleState {
        let mut s = VehicleState::default();
        s.header.stamp = ros_time((t * 1e6) as u64);
        s.pose.position.x = x;
        s.pose.position.y = y;
        s.pose.orientation.z = (yaw / 2.0).sin();
        s.pose.orientation.w = (yaw / 2.0).cos();
        s.twist.linear.x = v;
        s.pose_covariance[0] = 0.01;
        s.pose_covariance[7] = 0.01;
        s.length = 4.6;
        s.width = 1.9;
        s
    }

    #[test]
    fn tracks_a_straight_drive_and_predicts_with_growing_uncertainty() {
        let mut e = EgoEstimator::new();
        let t0 = 1_700_000_000.0;
        for k in 0..50 {
            let t = t0 + k as f64 * 0.1;
            e.apply(&state(t, 20.0 * (t - t0), 0.0, 0.0, 20.0)).unwrap();
        }
        let last = t0 + 4.9;
        let now = e.estimate(last).unwrap();
        assert!((now.x - 98.0).abs() < 0.2 && now.y.abs() < 0.1, "{now:?}");
        assert!((now.speed - 20.0).abs() < 0.2);
        // Offline for 10 s: it keeps driving, and the twin grows less sure.
        let later = e.estimate(last + 10.0).unwrap();
        assert!((later.x - 298.0).abs() < 2.0, "{later:?}");
        assert!(
            later.position_sigma > 5.0 * now.position_sigma,
            "{later:?} vs {now:?}"
        );
        assert!((later.age - 10.0).abs() < 1e-6);
        // The PE returns 10 s later, elsewhere than predicted: the estimate follows.
        e.apply(&state(last + 10.0, 290.0, 1.0, 0.0, 18.0)).unwrap();
        let back = e.estimate(last + 10.0).unwrap();
        assert!(
            (back.x - 290.0).abs() < 0.5 && back.position_sigma < 0.3,
            "{back:?}"
        );
    }

    #[test]
    fn poses_between_reports_are_interpolated_and_bad_states_refused() {
        let mut e = EgoEstimator::new();
        e.apply(&state(100.0, 0.0, 0.0, 0.0, 10.0)).unwrap();
        e.apply(&state(101.0, 10.0, 0.0, 0.2, 10.0)).unwrap();
        let (x, _, yaw) = e.pose_at(100.5).unwrap();
        assert!((x - 5.0).abs() < 1e-9 && (yaw - 0.1).abs() < 1e-9);
        let (x, _, _) = e.pose_at(99.0).unwrap();
        assert_eq!(x, 0.0);
        let ahead = e.pose_at(101.5).unwrap();
        assert!(ahead.0 > 14.0, "{ahead:?}");
        assert!(matches!(
            e.apply(&state(100.5, 0.0, 0.0, 0.0, 1.0)),
            Err(StateError::Stale(_))
        ));
        let mut bad = state(102.0, f64::NAN, 0.0, 0.0, 1.0);
        assert!(e
            .apply(&bad)
            .unwrap_err()
            .to_string()
            .contains("pose.position"));
        bad = state(102.0, 0.0, 0.0, 0.0, 1.0);
        bad.pose.orientation.w = 3.0;
        assert!(e
            .apply(&bad)
            .unwrap_err()
            .to_string()
            .contains("pose.orientation"));
        bad = state(102.0, 0.0, 0.0, 0.0, 500.0);
        assert!(e
            .apply(&bad)
            .unwrap_err()
            .to_string()
            .contains("twist.linear"));
    }
}
