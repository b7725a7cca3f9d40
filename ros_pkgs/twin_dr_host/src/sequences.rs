//! Generated multi-sensor sequences with ground truth, for scoring the [`tracker`](crate::tracker).
//!
//! A [`Scenario`] (a name and a seed) is turned by [`generate`] into a [`Sequence`]: the ego
//! vehicle drives along a multi-lane road, other road users move along truth trajectories,
//! and three sensors like the vehicle's report what they can see as
//! [`PerceptionSummary`] messages in `base_link`, each at its own rate, stamped with the
//! acquisition time (no latency). Every [`Frame`] holds one summary, the ego pose in the
//! map frame at its stamp and the truth of every road user at that time.
//!
//! # World
//!
//! - **Road**: a centreline of straight and circular segments in the map frame (Frenet
//!   coordinates `s` along, `d` to the left), 3.5 m lanes. Vehicles follow it with a speed
//!   profile (piecewise constant acceleration) and smooth lane changes; pedestrians walk
//!   between timed waypoints given in road coordinates, starting, stopping and turning
//!   within [`WALK_SMOOTHING`] seconds. Every position and velocity of the truth is in the
//!   map frame (velocity by central differences of the exact trajectory).
//! - **Scenes** are built from the seed: hand-placed situations (a crosswalk, an oncoming
//!   truck hiding a car, an overtake) with seeded jitter, plus random traffic placed by
//!   rejection so that no road user ever comes closer to another one, pedestrians and the
//!   ego included, than 3 m along the road and 0.4 m across it.
//! - **Occlusion**: the sensors sit together at `base_link` in the ground plane (the roof
//!   and bumper offsets are small next to the ranges). Trucks (height over 2.5 m) block the
//!   line of sight: a road user whose centre is hidden behind a truck's box, seen from the
//!   ego, gets no detection from any sensor. Cars do not occlude (the roof sensors see over
//!   them), a simplification that keeps occlusion to the cases a tracker must coast over.
//!
//! # Sensors ([`SensorModel`])
//!
//! | sensor | rate | coverage | position noise (1 sigma) | velocity | misses, clutter |
//! | --- | --- | --- | --- | --- | --- |
//! | LiDAR | 10 Hz | 360 deg, 1-80 m | 0.08 m + 0.15 % of range, isotropic (0.08-0.2 m) | no | 5 % (+15 % at 80 m), 0.3 per frame |
//! | radar | 20 Hz | +-60 deg, 0.5-150 m | 0.25 m in range, 0.4 m + 0.4 % of range across | over ground, 0.1 m/s radial, 0.25 m/s across | 8 % (+10 % at 150 m), pedestrians and bicycles +25 %, 1 per frame |
//! | camera | 15 Hz | +-50 deg, 2-80 m | 0.2 m + 0.001 r^2 in range, 0.1 m + 1.5 % across | no | 8 % (+15 % at 80 m), 0.1 per frame |
//!
//! Detection errors are Gaussian with the covariance the summary reports in
//! `position_covariance` (range and cross-range sigmas rotated along the line of sight,
//! evaluated at the measured position as a summarizer would), so the tracker gets honest
//! uncertainties. LiDAR and camera classify (camera more reliably, with confusions
//! car/truck, pedestrian/bicycle); radar reports `CLASS_UNKNOWN` like the radar
//! summarizer. Clutter is uniform over the sensor's coverage and stands still.
//!
//! Each [`Frame`] also carries the truth of every road user ([`TruthObject`]: `in_view` of
//! some sensor, `occluded` by a truck, `visible` when both allow detection) and, for each
//! detection, the truth id it came from ([`Frame::sources`], `None` for clutter).
//!
//! [`run_tracker`] feeds a sequence through [`tracker::measurement`], [`tracker::noise_of`]
//! and [`Tracker::update`] exactly as a DR does with the summaries it receives, and records
//! the confirmed tracks after every frame.

use std::f64::consts::TAU;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson, StandardNormal};
use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::geometry_msgs::msg::{Point, Pose, Vector3};
use twinlink_msgs::std_msgs::msg::Header;
use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary};

use crate::tracker::{self, Tracker, TrackerConfig};

/// Lane width [m].
pub const LANE_WIDTH: f64 = 3.5;

/// Names of the scenarios [`Scenario::named`] knows.
pub const SCENARIOS: [&str; 4] = ["crossing", "occlusion", "highway_dense", "mixed_urban"];

/// A road user's class, as `DetectedObject::CLASS_*`.
pub type Class = u8;

/// Short name of a class, for files and reports.
pub fn class_name(class: Class) -> &'static str {
    match class {
        DetectedObject::CLASS_CAR => "car",
        DetectedObject::CLASS_TRUCK => "truck",
        DetectedObject::CLASS_MOTORCYCLE => "motorcycle",
        DetectedObject::CLASS_BICYCLE => "bicycle",
        DetectedObject::CLASS_PEDESTRIAN => "pedestrian",
        DetectedObject::CLASS_STATIC_OBSTACLE => "static",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------------------
// Road and trajectories

/// A road centreline: segments of `(length [m], curvature [1/m])` from an origin pose
/// `(x, y, heading)` in the map frame. Beyond its ends the first and last segments extend.
#[derive(Debug, Clone, PartialEq)]
pub struct Road {
    /// Pose of `s = 0` in the map frame `(x [m], y [m], heading [rad])`.
    pub origin: (f64, f64, f64),
    /// `(length, curvature)` of each segment.
    pub segments: Vec<(f64, f64)>,
}

fn advance(x: f64, y: f64, h: f64, ds: f64, k: f64) -> (f64, f64, f64) {
    if k.abs() < 1e-12 {
        (x + ds * h.cos(), y + ds * h.sin(), h)
    } else {
        let h2 = h + k * ds;
        (
            x + (h2.sin() - h.sin()) / k,
            y + (h.cos() - h2.cos()) / k,
            h2,
        )
    }
}

impl Road {
    /// Pose of the centreline at `s`: `(x, y, heading)`.
    pub fn pose(&self, s: f64) -> (f64, f64, f64) {
        let (mut x, mut y, mut h) = self.origin;
        let Some(&(_, k0)) = self.segments.first() else {
            return advance(x, y, h, s, 0.0);
        };
        if s <= 0.0 {
            return advance(x, y, h, s, k0);
        }
        let mut rest = s;
        for (i, &(len, k)) in self.segments.iter().enumerate() {
            if rest <= len || i + 1 == self.segments.len() {
                return advance(x, y, h, rest, k);
            }
            (x, y, h) = advance(x, y, h, len, k);
            rest -= len;
        }
        (x, y, h)
    }

    /// Map position of road coordinates `(s, d)` (`d` to the left of the centreline).
    pub fn point(&self, s: f64, d: f64) -> (f64, f64) {
        let (x, y, h) = self.pose(s);
        (x - d * h.sin(), y + d * h.cos())
    }
}

/// Speed along a path: `v0` at `t = 0`, then a constant acceleration from each phase's
/// start time `(t [s], a [m/s^2])` to the next; the speed never goes below zero.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedProfile {
    /// Speed at `t = 0` [m/s].
    pub v0: f64,
    /// `(start time, acceleration)`, sorted by time.
    pub phases: Vec<(f64, f64)>,
}

fn kinematic_step(s: f64, v: f64, a: f64, dt: f64) -> (f64, f64) {
    if dt <= 0.0 {
        (s, v)
    } else if a < 0.0 && v + a * dt < 0.0 {
        (s + v * v / (-2.0 * a), 0.0)
    } else {
        (s + v * dt + 0.5 * a * dt * dt, v + a * dt)
    }
}

impl SpeedProfile {
    /// Constant speed.
    pub fn constant(v: f64) -> Self {
        SpeedProfile {
            v0: v,
            phases: Vec::new(),
        }
    }

    /// Cruise at `v0`, brake at `decel` to stand still after `stop_distance` metres, wait
    /// until `t_go`, then accelerate at `accel` back to `v0`.
    pub fn stop_and_go(v0: f64, stop_distance: f64, decel: f64, t_go: f64, accel: f64) -> Self {
        let brake_at = ((stop_distance - v0 * v0 / (2.0 * decel)) / v0).max(0.0);
        let stopped_at = brake_at + v0 / decel;
        let t_go = t_go.max(stopped_at);
        SpeedProfile {
            v0,
            phases: vec![(brake_at, -decel), (t_go, accel), (t_go + v0 / accel, 0.0)],
        }
    }

    /// Cruise at `v0`, slow down to `v1` from `t1`, speed up again from `t2` (at 1.5 and
    /// 1 m/s^2).
    pub fn slow_down(v0: f64, v1: f64, t1: f64, t2: f64) -> Self {
        let dv = v0 - v1;
        SpeedProfile {
            v0,
            phases: vec![(t1, -1.5), (t1 + dv / 1.5, 0.0), (t2, 1.0), (t2 + dv, 0.0)],
        }
    }

    /// Distance travelled from `t = 0` to `t` (extrapolated at `v0` before 0).
    pub fn distance(&self, t: f64) -> f64 {
        if t < 0.0 {
            return self.v0 * t;
        }
        let (mut s, mut v, mut tc, mut a) = (0.0, self.v0, 0.0, 0.0);
        for &(tp, ap) in &self.phases {
            if tp >= t {
                break;
            }
            if tp > tc {
                (s, v) = kinematic_step(s, v, a, tp - tc);
                tc = tp;
            }
            a = ap;
        }
        kinematic_step(s, v, a, t - tc).0
    }
}

/// A lane change: from `start` for `duration` seconds to lateral offset `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneChange {
    /// Start [s].
    pub start: f64,
    /// Duration [s].
    pub duration: f64,
    /// Lateral offset at the end [m].
    pub to: f64,
}

/// How a road user moves, in road coordinates.
#[derive(Debug, Clone, PartialEq)]
pub enum Path {
    /// Along the road: `s = s0 + dir * distance(t)`, `d` from `d0` through lane changes.
    Road {
        /// Start [m].
        s0: f64,
        /// +1 with the road's direction, -1 against it.
        dir: f64,
        /// Speed.
        speed: SpeedProfile,
        /// Lateral offset at start [m].
        d0: f64,
        /// Lane changes, in time order and not overlapping.
        lane_changes: Vec<LaneChange>,
    },
    /// Between timed waypoints `(t, s, d)`, standing before the first and after the last.
    Walk {
        /// Waypoints in time order.
        keys: Vec<(f64, f64, f64)>,
    },
}

impl Path {
    /// Road coordinates `(s, d)` at `t`.
    pub fn frenet(&self, t: f64) -> (f64, f64) {
        match self {
            Path::Road {
                s0,
                dir,
                speed,
                d0,
                lane_changes,
            } => {
                let mut base = *d0;
                let mut d = *d0;
                for c in lane_changes {
                    let u = ((t - c.start) / c.duration).clamp(0.0, 1.0);
                    let w = 0.5 - 0.5 * (std::f64::consts::PI * u).cos();
                    d = base + (c.to - base) * w;
                    if u < 1.0 {
                        break;
                    }
                    base = c.to;
                }
                (s0 + dir * speed.distance(t), d)
            }
            Path::Walk { keys } => {
                // The polyline averaged over WALK_SMOOTHING seconds: walkers start, stop
                // and turn within that time (about 2 m/s^2 for a 90 deg turn at 1.3 m/s)
                // instead of at once.
                let h = WALK_SMOOTHING / 2.0;
                let (a, b) = (walk_integral(keys, t - h), walk_integral(keys, t + h));
                ((b.0 - a.0) / WALK_SMOOTHING, (b.1 - a.1) / WALK_SMOOTHING)
            }
        }
    }
}

/// Time over which walkers change velocity [s].
pub const WALK_SMOOTHING: f64 = 0.8;

/// `(s, d)` of the waypoint polyline at `t`, standing before the first and after the
/// last waypoint.
fn walk_point(keys: &[(f64, f64, f64)], t: f64) -> (f64, f64) {
    let Some(first) = keys.first() else {
        return (0.0, 0.0);
    };
    if t <= first.0 {
        return (first.1, first.2);
    }
    for w in keys.windows(2) {
        let (a, b) = (w[0], w[1]);
        if t <= b.0 {
            let u = if b.0 > a.0 {
                (t - a.0) / (b.0 - a.0)
            } else {
                1.0
            };
            return (a.1 + (b.1 - a.1) * u, a.2 + (b.2 - a.2) * u);
        }
    }
    let last = keys[keys.len() - 1];
    (last.1, last.2)
}

/// Integral of [`walk_point`] from the first waypoint's time to `t` (exact: the polyline
/// is linear between waypoints and constant outside them).
fn walk_integral(keys: &[(f64, f64, f64)], t: f64) -> (f64, f64) {
    let Some(first) = keys.first() else {
        return (0.0, 0.0);
    };
    let mut acc = (0.0, 0.0);
    let mut from = first.0;
    if t < from {
        return ((t - from) * first.1, (t - from) * first.2);
    }
    for w in keys.windows(2) {
        let to = w[1].0.min(t);
        if to > from {
            let (pa, pb) = (walk_point(keys, from), walk_point(keys, to));
            acc.0 += (to - from) * (pa.0 + pb.0) / 2.0;
            acc.1 += (to - from) * (pa.1 + pb.1) / 2.0;
            from = to;
        }
        if w[1].0 >= t {
            return acc;
        }
    }
    let last = keys[keys.len() - 1];
    (acc.0 + (t - from) * last.1, acc.1 + (t - from) * last.2)
}

/// Truth state of a road user in the map frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kinematics {
    /// Position [m].
    pub x: f64,
    /// Position [m].
    pub y: f64,
    /// Velocity [m/s].
    pub vx: f64,
    /// Velocity [m/s].
    pub vy: f64,
    /// Heading of the box's length axis [rad].
    pub yaw: f64,
}

/// A road user (or the ego vehicle).
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    /// Truth id (1, 2, ...; 0 is the ego).
    pub id: u32,
    /// One of `DetectedObject::CLASS_*`.
    pub class: Class,
    /// Box length, width, height [m].
    pub dims: [f64; 3],
    /// Trajectory.
    pub path: Path,
}

impl Actor {
    /// Map-frame state at `t`.
    pub fn state(&self, road: &Road, t: f64) -> Kinematics {
        let at = |t: f64| {
            let (s, d) = self.path.frenet(t);
            road.point(s, d)
        };
        const H: f64 = 1e-3;
        let (x, y) = at(t);
        let (x1, y1) = at(t + H);
        let (x0, y0) = at(t - H);
        let (vx, vy) = ((x1 - x0) / (2.0 * H), (y1 - y0) / (2.0 * H));
        let yaw = if vx.hypot(vy) > 0.2 {
            vy.atan2(vx)
        } else {
            let (s, _) = self.path.frenet(t);
            let heading = road.pose(s).2;
            match &self.path {
                Path::Road { dir, .. } if *dir < 0.0 => heading + std::f64::consts::PI,
                Path::Walk { .. } => heading + std::f64::consts::FRAC_PI_2,
                _ => heading,
            }
        };
        Kinematics { x, y, vx, vy, yaw }
    }
}

fn dims_of(class: Class) -> [f64; 3] {
    match class {
        DetectedObject::CLASS_TRUCK => [12.0, 2.55, 3.8],
        DetectedObject::CLASS_MOTORCYCLE => [2.2, 0.8, 1.5],
        DetectedObject::CLASS_BICYCLE => [1.8, 0.6, 1.7],
        DetectedObject::CLASS_PEDESTRIAN => [0.6, 0.6, 1.75],
        _ => [4.6, 1.85, 1.5],
    }
}

fn on_road(id: u32, class: Class, s0: f64, d0: f64, dir: f64, speed: SpeedProfile) -> Actor {
    Actor {
        id,
        class,
        dims: dims_of(class),
        path: Path::Road {
            s0,
            dir,
            speed,
            d0,
            lane_changes: Vec::new(),
        },
    }
}

fn walker(id: u32, keys: Vec<(f64, f64, f64)>) -> Actor {
    Actor {
        id,
        class: DetectedObject::CLASS_PEDESTRIAN,
        dims: dims_of(DetectedObject::CLASS_PEDESTRIAN),
        path: Path::Walk { keys },
    }
}

/// Waypoints of a walk at constant `speed` through `points` `(s, d)`, starting at `t0`.
fn walk_keys(t0: f64, speed: f64, points: &[(f64, f64)]) -> Vec<(f64, f64, f64)> {
    let mut t = t0;
    let mut keys = Vec::with_capacity(points.len());
    for (i, &(s, d)) in points.iter().enumerate() {
        if i > 0 {
            let (ps, pd) = points[i - 1];
            t += (s - ps).hypot(d - pd) / speed;
        }
        keys.push((t, s, d));
    }
    keys
}

// ---------------------------------------------------------------------------------------
// Sensors

/// One sensor of the vehicle and how it errs.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorModel {
    /// `sensor_id` of its summaries.
    pub id: &'static str,
    /// `PerceptionSummary::SENSOR_*`.
    pub kind: u8,
    /// Frames per second.
    pub rate_hz: f64,
    /// Time of the first frame [s].
    pub phase: f64,
    /// Closest range reported [m].
    pub min_range: f64,
    /// Farthest range reported [m].
    pub max_range: f64,
    /// Full horizontal field of view, centred on base_link's x axis [rad].
    pub horizontal_fov: f64,
    /// Full vertical field of view [rad] (reported only).
    pub vertical_fov: f64,
    /// Mounting height [m] (reported only).
    pub height: f64,
    /// Range standard deviation `a + b r + c r^2` [m].
    pub range_sigma: [f64; 3],
    /// Standard deviation across the line of sight `a + b r` [m].
    pub cross_sigma: [f64; 2],
    /// Standard deviations of the velocity over ground, `[radial, across]` [m/s], for a
    /// sensor that measures it.
    pub velocity_sigma: Option<[f64; 2]>,
    /// Miss probability of anything in view.
    pub miss: f64,
    /// Extra miss probability of pedestrians and bicycles.
    pub small_miss: f64,
    /// Extra miss probability growing as `(r / max_range)^2` up to this at `max_range`.
    pub far_miss: f64,
    /// Mean number of false detections per frame (Poisson).
    pub clutter_rate: f64,
    /// Probability of the right class and the range of its confidence, for a sensor that
    /// classifies; `None`: reports `CLASS_UNKNOWN`.
    pub classify: Option<(f64, f64, f64)>,
    /// Size of the raw data one summary replaces [bytes] (reported only).
    pub raw_bytes: u64,
}

impl SensorModel {
    /// The roof LiDAR: 10 Hz, 360 deg, 80 m.
    pub fn lidar() -> Self {
        SensorModel {
            id: "lidar_top",
            kind: PerceptionSummary::SENSOR_LIDAR,
            rate_hz: 10.0,
            phase: 0.0,
            min_range: 1.0,
            max_range: 80.0,
            horizontal_fov: TAU,
            vertical_fov: 0.52,
            height: 1.9,
            range_sigma: [0.08, 0.0015, 0.0],
            cross_sigma: [0.08, 0.0015],
            velocity_sigma: None,
            miss: 0.05,
            small_miss: 0.0,
            far_miss: 0.15,
            clutter_rate: 0.3,
            classify: Some((0.85, 0.55, 0.9)),
            raw_bytes: 64 * 1024 * 30,
        }
    }

    /// The front radar: 20 Hz, +-60 deg, 150 m, velocity over ground.
    pub fn radar() -> Self {
        SensorModel {
            id: "radar_front",
            kind: PerceptionSummary::SENSOR_RADAR,
            rate_hz: 20.0,
            phase: 0.013,
            min_range: 0.5,
            max_range: 150.0,
            horizontal_fov: 120f64.to_radians(),
            vertical_fov: 0.26,
            height: 0.5,
            range_sigma: [0.25, 0.0, 0.0],
            cross_sigma: [0.4, 0.004],
            velocity_sigma: Some([0.1, 0.25]),
            miss: 0.08,
            small_miss: 0.25,
            far_miss: 0.1,
            clutter_rate: 1.0,
            classify: None,
            raw_bytes: 256 * 32,
        }
    }

    /// The front camera: 15 Hz, +-50 deg, 80 m, range error growing with range^2.
    pub fn camera() -> Self {
        SensorModel {
            id: "camera_front",
            kind: PerceptionSummary::SENSOR_CAMERA,
            rate_hz: 15.0,
            phase: 0.027,
            min_range: 2.0,
            max_range: 80.0,
            horizontal_fov: 100f64.to_radians(),
            vertical_fov: 0.9,
            height: 1.5,
            range_sigma: [0.2, 0.0, 0.001],
            cross_sigma: [0.1, 0.015],
            velocity_sigma: None,
            miss: 0.08,
            small_miss: 0.02,
            far_miss: 0.15,
            clutter_rate: 0.1,
            classify: Some((0.92, 0.65, 0.98)),
            raw_bytes: 1920 * 1080 * 3,
        }
    }

    /// Whether a point at `(x, y)` in base_link is in range and field of view.
    pub fn covers(&self, x: f64, y: f64) -> bool {
        let r = x.hypot(y);
        r >= self.min_range
            && r <= self.max_range
            && (self.horizontal_fov >= TAU - 1e-9 || y.atan2(x).abs() <= self.horizontal_fov / 2.0)
    }

    fn sigmas(&self, r: f64) -> (f64, f64) {
        let [a, b, c] = self.range_sigma;
        let [e, f] = self.cross_sigma;
        (a + b * r + c * r * r, e + f * r)
    }

    /// A noisy detection of something at `(x, y)` in base_link with velocity over ground
    /// `v` (base_link axes), heading `yaw` and size `dims`.
    fn detect(
        &self,
        rng: &mut StdRng,
        (x, y): (f64, f64),
        v: (f64, f64),
        yaw: f64,
        dims: [f64; 3],
        (class, confidence): (Class, f64),
    ) -> DetectedObject {
        let r = x.hypot(y).max(0.1);
        let (ux, uy) = (x / r, y / r);
        let (sr, sc) = self.sigmas(r);
        let nr: f64 = StandardNormal.sample(rng);
        let nc: f64 = StandardNormal.sample(rng);
        let (mx, my) = (
            x + nr * sr * ux - nc * sc * uy,
            y + nr * sr * uy + nc * sc * ux,
        );
        // The summarizer knows only what it measured: its covariance is the model's at the
        // measured position.
        let mr = mx.hypot(my).max(0.1);
        let (ux, uy) = (mx / mr, my / mr);
        let (sr, sc) = self.sigmas(mr);
        let (sr2, sc2) = (sr * sr, sc * sc);
        let cxx = sr2 * ux * ux + sc2 * uy * uy;
        let cyy = sr2 * uy * uy + sc2 * ux * ux;
        let cxy = (sr2 - sc2) * ux * uy;
        let (has_velocity, velocity) = match self.velocity_sigma {
            Some([svr, svc]) => {
                let nr: f64 = StandardNormal.sample(rng);
                let nc: f64 = StandardNormal.sample(rng);
                (
                    true,
                    Vector3 {
                        x: v.0 + nr * svr * ux - nc * svc * uy,
                        y: v.1 + nr * svr * uy + nc * svc * ux,
                        z: 0.0,
                    },
                )
            }
            None => (false, Vector3::default()),
        };
        let size_noise = if self.kind == PerceptionSummary::SENSOR_RADAR {
            0.3
        } else {
            0.08
        };
        let mut size = [0.0; 3];
        for k in 0..3 {
            let n: f64 = StandardNormal.sample(rng);
            size[k] = (dims[k] * (1.0 + size_noise * n)).max(0.2);
        }
        let yaw_noise: f64 = StandardNormal.sample(rng);
        DetectedObject {
            id: 0,
            classification: class,
            class_confidence: confidence as f32,
            existence_probability: 0.9,
            position: Point {
                x: mx,
                y: my,
                z: size[2] / 2.0,
            },
            yaw: yaw + 0.05 * yaw_noise,
            dimensions: Vector3 {
                x: size[0],
                y: size[1],
                z: size[2],
            },
            has_velocity,
            velocity,
            position_covariance: [
                cxx as f32, cxy as f32, 0.0, cxy as f32, cyy as f32, 0.0, 0.0, 0.0, 0.04,
            ],
        }
    }

    /// The class and confidence this sensor reports for a `class`.
    fn classify(&self, rng: &mut StdRng, class: Class) -> (Class, f64) {
        let Some((accuracy, lo, hi)) = self.classify else {
            return (DetectedObject::CLASS_UNKNOWN, 0.0);
        };
        if rng.random::<f64>() < accuracy {
            return (class, rng.random_range(lo..hi));
        }
        let confused = match class {
            DetectedObject::CLASS_CAR => DetectedObject::CLASS_TRUCK,
            DetectedObject::CLASS_TRUCK => DetectedObject::CLASS_CAR,
            DetectedObject::CLASS_PEDESTRIAN => DetectedObject::CLASS_BICYCLE,
            DetectedObject::CLASS_BICYCLE => DetectedObject::CLASS_PEDESTRIAN,
            DetectedObject::CLASS_MOTORCYCLE => DetectedObject::CLASS_BICYCLE,
            c => c,
        };
        if self.kind == PerceptionSummary::SENSOR_LIDAR && rng.random::<bool>() {
            (DetectedObject::CLASS_UNKNOWN, rng.random_range(0.2..0.4))
        } else {
            (confused, rng.random_range(0.3..0.6))
        }
    }

    /// A false detection somewhere in coverage.
    fn clutter(&self, rng: &mut StdRng) -> DetectedObject {
        let far = self.max_range.min(70.0);
        let r = rng.random_range(self.min_range.max(5.0)..far);
        let half = self.horizontal_fov / 2.0;
        let az = rng.random_range(-half..half);
        let (class, confidence) = match self.kind {
            PerceptionSummary::SENSOR_LIDAR => (
                if rng.random::<bool>() {
                    DetectedObject::CLASS_UNKNOWN
                } else {
                    DetectedObject::CLASS_STATIC_OBSTACLE
                },
                rng.random_range(0.2..0.5),
            ),
            PerceptionSummary::SENSOR_CAMERA => (
                if rng.random::<bool>() {
                    DetectedObject::CLASS_CAR
                } else {
                    DetectedObject::CLASS_PEDESTRIAN
                },
                rng.random_range(0.3..0.5),
            ),
            _ => (DetectedObject::CLASS_UNKNOWN, 0.0),
        };
        let dims = [
            rng.random_range(0.3..2.0),
            rng.random_range(0.3..1.5),
            rng.random_range(0.3..1.5),
        ];
        // Clutter stands still over ground: in base_link axes its velocity is zero.
        let mut o = self.detect(
            rng,
            (r * az.cos(), r * az.sin()),
            (0.0, 0.0),
            0.0,
            dims,
            (class, confidence),
        );
        o.existence_probability = 0.4;
        o
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// Which scene a scenario builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SceneKind {
    /// Urban crosswalk: the ego stops, pedestrians cross in both directions and diagonally
    /// (their paths cross), two walk past each other on the sidewalk, oncoming cars wait.
    Crossing,
    /// Two-way road, two lanes each way: an oncoming truck hides the car 8 m behind it
    /// for about a second (id 2; a tracker must coast over it), a slow oncoming truck hides
    /// the car 26 m behind it for about 2.3 s (id 6; longer than a track coasts), a car
    /// pulls out from ahead of a slow truck into the ego's lane, random oncoming traffic.
    Occlusion,
    /// Four-lane motorway on a curve: trucks, cars at lane speeds, overtakes and lane
    /// changes (the ego too), vehicles entering and leaving the sensors' range.
    HighwayDense,
    /// Urban two-way road with a curve: a parked truck hiding a pedestrian on the
    /// sidewalk, a cyclist, a motorcycle, pedestrians crossing and passing each other,
    /// random traffic both ways, the ego slowing down.
    MixedUrban,
}

/// A named, seeded configuration of a generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name (one of [`SCENARIOS`] for the built-in ones).
    pub name: String,
    /// The scene.
    pub kind: SceneKind,
    /// Seed of the scene's random parts and of every sensor error.
    pub seed: u64,
    /// Length [s].
    pub duration: f64,
    /// The vehicle's sensors.
    pub sensors: Vec<SensorModel>,
}

impl Scenario {
    fn new(name: &str, kind: SceneKind, seed: u64, duration: f64) -> Self {
        Scenario {
            name: name.to_string(),
            kind,
            seed,
            duration,
            sensors: vec![
                SensorModel::lidar(),
                SensorModel::radar(),
                SensorModel::camera(),
            ],
        }
    }

    /// See [`SceneKind::Crossing`]; 20 s.
    pub fn crossing(seed: u64) -> Self {
        Self::new("crossing", SceneKind::Crossing, seed, 20.0)
    }

    /// See [`SceneKind::Occlusion`]; 25 s.
    pub fn occlusion(seed: u64) -> Self {
        Self::new("occlusion", SceneKind::Occlusion, seed, 25.0)
    }

    /// See [`SceneKind::HighwayDense`]; 30 s.
    pub fn highway_dense(seed: u64) -> Self {
        Self::new("highway_dense", SceneKind::HighwayDense, seed, 30.0)
    }

    /// See [`SceneKind::MixedUrban`]; 30 s.
    pub fn mixed_urban(seed: u64) -> Self {
        Self::new("mixed_urban", SceneKind::MixedUrban, seed, 30.0)
    }

    /// A built-in scenario by name (see [`SCENARIOS`]).
    pub fn named(name: &str, seed: u64) -> Option<Self> {
        match name {
            "crossing" => Some(Self::crossing(seed)),
            "occlusion" => Some(Self::occlusion(seed)),
            "highway_dense" => Some(Self::highway_dense(seed)),
            "mixed_urban" => Some(Self::mixed_urban(seed)),
            _ => None,
        }
    }
}

/// A scene: the road, the ego and every other road user.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The road.
    pub road: Road,
    /// The ego vehicle (id 0).
    pub ego: Actor,
    /// The others.
    pub actors: Vec<Actor>,
}

/// Whether two road users come closer than 3 m along the road and 0.4 m across it (box
/// edges) at any time of `0..duration`.
fn conflict(a: &Actor, b: &Actor, duration: f64) -> bool {
    let steps = (duration / 0.1).ceil() as usize;
    (0..=steps).any(|k| {
        let t = k as f64 * 0.1;
        let (sa, da) = a.path.frenet(t);
        let (sb, db) = b.path.frenet(t);
        (sa - sb).abs() < (a.dims[0] + b.dims[0]) / 2.0 + 3.0
            && (da - db).abs() < (a.dims[1] + b.dims[1]) / 2.0 + 0.4
    })
}

struct SceneBuilder {
    rng: StdRng,
    duration: f64,
    ego: Actor,
    actors: Vec<Actor>,
}

impl SceneBuilder {
    fn next_id(&self) -> u32 {
        self.actors.len() as u32 + 1
    }

    /// Adds a hand-placed actor (must not conflict: the scenes are designed so).
    fn add(&mut self, mut a: Actor) -> u32 {
        a.id = self.next_id();
        let id = a.id;
        self.actors.push(a);
        id
    }

    /// Tries `tries` candidates from `make` and adds the first that conflicts with nobody
    /// (pedestrians included) nor the ego.
    fn place(&mut self, tries: usize, mut make: impl FnMut(&mut StdRng) -> Actor) -> bool {
        for _ in 0..tries {
            let mut a = make(&mut self.rng);
            a.id = self.next_id();
            let clash = conflict(&a, &self.ego, self.duration)
                || self.actors.iter().any(|b| conflict(&a, b, self.duration));
            if !clash {
                self.actors.push(a);
                return true;
            }
        }
        false
    }
}

fn with_lane_changes(mut a: Actor, changes: Vec<LaneChange>) -> Actor {
    if let Path::Road { lane_changes, .. } = &mut a.path {
        *lane_changes = changes;
    }
    a
}

/// Builds the scene of a scenario (deterministic in its seed).
pub fn scene(sc: &Scenario) -> Scene {
    let rng = StdRng::seed_from_u64(sc.seed ^ 0x5CE4_E5EE_D000_0001);
    let ego = on_road(
        0,
        DetectedObject::CLASS_CAR,
        0.0,
        -LANE_WIDTH / 2.0,
        1.0,
        SpeedProfile::constant(0.0),
    );
    let mut b = SceneBuilder {
        rng,
        duration: sc.duration,
        ego,
        actors: Vec::new(),
    };
    let road = match sc.kind {
        SceneKind::Crossing => crossing_scene(&mut b),
        SceneKind::Occlusion => occlusion_scene(&mut b),
        SceneKind::HighwayDense => highway_scene(&mut b),
        SceneKind::MixedUrban => urban_scene(&mut b),
    };
    Scene {
        road,
        ego: b.ego,
        actors: b.actors,
    }
}

fn crossing_scene(b: &mut SceneBuilder) -> Road {
    use DetectedObject as D;
    let h = LANE_WIDTH / 2.0;
    let crosswalk = 50.0;
    let j = |rng: &mut StdRng, w: f64| rng.random_range(-w..w);
    // The ego brakes for the crosswalk, stands from about 6 s to 15 s, then goes.
    b.ego = on_road(
        0,
        D::CLASS_CAR,
        0.0,
        -h,
        1.0,
        SpeedProfile::stop_and_go(10.0, crosswalk - 8.0, 2.5, 15.0, 1.5),
    );
    // Oncoming cars wait on the other side.
    b.add(on_road(
        0,
        D::CLASS_CAR,
        130.0,
        h,
        -1.0,
        SpeedProfile::stop_and_go(11.0, 130.0 - (crosswalk + 8.0), 2.5, 15.5, 1.5),
    ));
    b.add(on_road(
        0,
        D::CLASS_CAR,
        150.0,
        h,
        -1.0,
        SpeedProfile::stop_and_go(11.0, 150.0 - (crosswalk + 17.0), 2.5, 16.3, 1.5),
    ));
    // A parked car past the crosswalk.
    b.add(on_road(
        0,
        D::CLASS_CAR,
        crosswalk + 22.0,
        -h - 3.6,
        1.0,
        SpeedProfile::constant(0.0),
    ));
    // Straight across in both directions, passing each other about 1 m apart.
    let (t1, v1) = (3.0 + j(&mut b.rng, 0.3), 1.4 + j(&mut b.rng, 0.1));
    b.add(walker(
        0,
        walk_keys(
            t1,
            v1,
            &[(crosswalk, -8.0), (crosswalk, 8.0), (crosswalk, 9.0)],
        ),
    ));
    let (t2, v2) = (4.0 + j(&mut b.rng, 0.3), 1.3 + j(&mut b.rng, 0.1));
    b.add(walker(
        0,
        walk_keys(
            t2,
            v2,
            &[
                (crosswalk + 1.0, 8.0),
                (crosswalk + 1.0, -8.0),
                (crosswalk - 20.0, -9.5),
            ],
        ),
    ));
    // Diagonally, their paths crossing in the middle of the road within half a second.
    let (t3, v3) = (5.0 + j(&mut b.rng, 0.2), 1.5 + j(&mut b.rng, 0.05));
    b.add(walker(
        0,
        walk_keys(
            t3,
            v3,
            &[
                (crosswalk - 4.0, -8.0),
                (crosswalk + 4.0, 8.0),
                (crosswalk + 5.0, 9.0),
            ],
        ),
    ));
    let t4 = t3 + 0.4 + j(&mut b.rng, 0.1);
    b.add(walker(
        0,
        walk_keys(
            t4,
            v3,
            &[
                (crosswalk + 4.0, -8.0),
                (crosswalk - 4.0, 8.0),
                (crosswalk - 5.0, 9.0),
            ],
        ),
    ));
    // Two walking past each other on the far sidewalk, 0.8 m apart.
    let v5 = 1.3 + j(&mut b.rng, 0.1);
    b.add(walker(0, walk_keys(0.0, v5, &[(20.0, 10.0), (95.0, 10.0)])));
    let v6 = 1.2 + j(&mut b.rng, 0.1);
    b.add(walker(0, walk_keys(0.0, v6, &[(75.0, 10.8), (0.0, 10.8)])));
    // Oncoming traffic before the pedestrians step out.
    let v7 = 12.0 + j(&mut b.rng, 1.0);
    b.place(20, |rng| {
        on_road(
            0,
            D::CLASS_CAR,
            90.0 + rng.random_range(0.0..30.0),
            h,
            -1.0,
            SpeedProfile::constant(v7),
        )
    });
    Road {
        origin: (120.0, -40.0, 0.35),
        segments: vec![(400.0, 0.0)],
    }
}

fn occlusion_scene(b: &mut SceneBuilder) -> Road {
    use DetectedObject as D;
    let h = LANE_WIDTH / 2.0;
    let j = |rng: &mut StdRng, w: f64| rng.random_range(-w..w);
    let v_ego = 22.0;
    b.ego = on_road(0, D::CLASS_CAR, 0.0, -h, 1.0, SpeedProfile::constant(v_ego));
    // An oncoming truck in the inner lane passes the ego at about 9 s; the car following
    // 8 m behind it in the outer lane is hidden by it for about a second.
    let meet = 9.0 + j(&mut b.rng, 0.5);
    let v_on = 20.0 + j(&mut b.rng, 1.0);
    let s_truck = v_ego * meet + v_on * meet;
    b.add(on_road(
        0,
        D::CLASS_TRUCK,
        s_truck,
        h,
        -1.0,
        SpeedProfile::constant(v_on),
    ));
    let behind = 8.0 + j(&mut b.rng, 1.0);
    b.add(on_road(
        0,
        D::CLASS_CAR,
        s_truck + behind,
        h + LANE_WIDTH,
        -1.0,
        SpeedProfile::constant(v_on),
    ));
    // A slow truck in the outer lane ahead, and a car ahead of it that pulls out into the
    // ego's lane and speeds up.
    let v_slow = 17.0 + j(&mut b.rng, 0.5);
    let s_slow = 70.0 + j(&mut b.rng, 3.0);
    b.add(on_road(
        0,
        D::CLASS_TRUCK,
        s_slow,
        -h - LANE_WIDTH,
        1.0,
        SpeedProfile::constant(v_slow),
    ));
    let pull_out = 6.0 + j(&mut b.rng, 0.5);
    let merging = on_road(
        0,
        D::CLASS_CAR,
        s_slow + 60.0,
        -h - LANE_WIDTH,
        1.0,
        SpeedProfile {
            v0: v_slow,
            phases: vec![
                (pull_out, 1.2),
                (pull_out + (v_ego + 1.0 - v_slow) / 1.2, 0.0),
            ],
        },
    );
    b.add(with_lane_changes(
        merging,
        vec![LaneChange {
            start: pull_out,
            duration: 4.0,
            to: -h,
        }],
    ));
    // A slow oncoming truck meets the ego at about 19 s; the car 26 m behind it in the
    // outer lane is hidden for longer than a track coasts (about 2.3 s).
    let meet = 19.0 + j(&mut b.rng, 0.5);
    let v_on = 9.0 + j(&mut b.rng, 0.5);
    let s_truck = v_ego * meet + v_on * meet;
    b.add(on_road(
        0,
        D::CLASS_TRUCK,
        s_truck,
        h,
        -1.0,
        SpeedProfile::constant(v_on),
    ));
    let behind = 26.0 + j(&mut b.rng, 1.5);
    b.add(on_road(
        0,
        D::CLASS_CAR,
        s_truck + behind,
        h + LANE_WIDTH,
        -1.0,
        SpeedProfile::constant(v_on),
    ));
    // Some oncoming traffic, and one car falling back behind the ego.
    for _ in 0..4 {
        b.place(30, |rng| {
            let lane = if rng.random::<bool>() {
                h
            } else {
                h + LANE_WIDTH
            };
            on_road(
                0,
                D::CLASS_CAR,
                rng.random_range(150.0..900.0),
                lane,
                -1.0,
                SpeedProfile::constant(rng.random_range(18.0..25.0)),
            )
        });
    }
    b.place(30, |rng| {
        on_road(
            0,
            D::CLASS_CAR,
            rng.random_range(-40.0..-15.0),
            -h - LANE_WIDTH,
            1.0,
            SpeedProfile::constant(rng.random_range(18.0..20.0)),
        )
    });
    Road {
        origin: (-500.0, 300.0, -0.8),
        segments: vec![(1200.0, 0.0)],
    }
}

fn highway_scene(b: &mut SceneBuilder) -> Road {
    use DetectedObject as D;
    let lanes = [-5.25, -1.75, 1.75, 5.25];
    let speeds = [(21.0, 24.0), (25.0, 28.5), (28.0, 32.0), (31.0, 36.0)];
    let ego_s = 100.0;
    let dur = b.duration;
    // The ego keeps 27 m/s and changes to the left lane and back.
    let t_left = 10.0 + b.rng.random_range(-1.0..1.0);
    b.ego = with_lane_changes(
        on_road(
            0,
            D::CLASS_CAR,
            ego_s,
            lanes[1],
            1.0,
            SpeedProfile::constant(27.0),
        ),
        vec![
            LaneChange {
                start: t_left,
                duration: 4.0,
                to: lanes[2],
            },
            LaneChange {
                start: t_left + 10.0,
                duration: 4.5,
                to: lanes[1],
            },
        ],
    );
    // A truck ahead in the right lane and a car overtaking it.
    let v_truck = b.rng.random_range(21.5..23.0);
    let s_truck = ego_s + 150.0;
    b.add(on_road(
        0,
        D::CLASS_TRUCK,
        s_truck,
        lanes[0],
        1.0,
        SpeedProfile::constant(v_truck),
    ));
    let v_fast = v_truck + 6.0;
    let gap0 = 55.0;
    let out_at = (gap0 - 28.0) / 6.0;
    let back_at = (gap0 + 22.0) / 6.0;
    b.add(with_lane_changes(
        on_road(
            0,
            D::CLASS_CAR,
            s_truck - gap0,
            lanes[0],
            1.0,
            SpeedProfile::constant(v_fast),
        ),
        vec![
            LaneChange {
                start: out_at,
                duration: 4.0,
                to: lanes[1],
            },
            LaneChange {
                start: back_at,
                duration: 4.0,
                to: lanes[0],
            },
        ],
    ));
    // More trucks, then cars at lane speeds with random overtakes, placed without
    // conflicts; whoever starts far ahead or behind enters or leaves the sensors' range.
    for _ in 0..3 {
        b.place(60, |rng| {
            on_road(
                0,
                D::CLASS_TRUCK,
                ego_s + rng.random_range(-70.0..220.0),
                lanes[0],
                1.0,
                SpeedProfile::constant(rng.random_range(21.0..24.0)),
            )
        });
    }
    for _ in 0..22 {
        b.place(80, |rng| {
            let lane = match rng.random_range(0..20) {
                0..=2 => 0,
                3..=8 => 1,
                9..=14 => 2,
                _ => 3,
            };
            let (lo, hi) = speeds[lane];
            let class = if rng.random_range(0..10) == 0 {
                D::CLASS_MOTORCYCLE
            } else {
                D::CLASS_CAR
            };
            let car = on_road(
                0,
                class,
                ego_s + rng.random_range(-110.0..230.0),
                lanes[lane],
                1.0,
                SpeedProfile::constant(rng.random_range(lo..hi)),
            );
            let mut changes = Vec::new();
            if rng.random::<f64>() < 0.5 {
                let start = rng.random_range(1.0..dur - 12.0);
                let duration = rng.random_range(3.5..5.5);
                let to = if lane < 3 { lane + 1 } else { lane - 1 };
                changes.push(LaneChange {
                    start,
                    duration,
                    to: lanes[to],
                });
                if rng.random::<f64>() < 0.7 {
                    changes.push(LaneChange {
                        start: start + duration + rng.random_range(3.0..8.0),
                        duration: rng.random_range(3.5..5.5),
                        to: lanes[lane],
                    });
                }
            }
            with_lane_changes(car, changes)
        });
    }
    Road {
        origin: (2000.0, -1500.0, 2.2),
        segments: vec![(250.0, 0.0), (700.0, 1.0 / 900.0), (1500.0, 0.0)],
    }
}

fn urban_scene(b: &mut SceneBuilder) -> Road {
    use DetectedObject as D;
    let h = LANE_WIDTH / 2.0;
    let (inner, outer) = (-h, -h - LANE_WIDTH);
    let (on_inner, on_outer) = (h, h + LANE_WIDTH);
    let parking = -8.6;
    let (walk_near, walk_far) = (-11.5, 11.5);
    let j = |rng: &mut StdRng, w: f64| rng.random_range(-w..w);
    let ego_s0 = 20.0;
    let ego_speed = SpeedProfile::slow_down(13.0, 7.0, 9.0, 15.0);
    // The crosswalk is where the ego arrives at 23 s; the pedestrians are clear by then.
    let crosswalk = ego_s0 + ego_speed.distance(23.0);
    b.ego = on_road(0, D::CLASS_CAR, ego_s0, inner, 1.0, ego_speed);
    // A delivery truck parked at the kerb, a pedestrian on the sidewalk behind it.
    let s_truck = 95.0 + j(&mut b.rng, 3.0);
    b.add(on_road(
        0,
        D::CLASS_TRUCK,
        s_truck,
        parking,
        1.0,
        SpeedProfile::constant(0.0),
    ));
    let v_walk = 1.4 + j(&mut b.rng, 0.1);
    b.add(walker(
        0,
        walk_keys(
            0.0,
            v_walk,
            &[(s_truck - 35.0, walk_near), (s_truck + 60.0, walk_near)],
        ),
    ));
    b.add(on_road(
        0,
        D::CLASS_CAR,
        s_truck + 35.0,
        parking,
        1.0,
        SpeedProfile::constant(0.0),
    ));
    // A cyclist at the right edge of the outer lane.
    let (s_bike, v_bike) = (60.0 + j(&mut b.rng, 5.0), 5.5 + j(&mut b.rng, 0.5));
    b.add(on_road(
        0,
        D::CLASS_BICYCLE,
        s_bike,
        outer - 0.9,
        1.0,
        SpeedProfile::constant(v_bike),
    ));
    // Two crossing at the crosswalk in opposite directions, 1 m apart.
    let t1 = 4.0 + j(&mut b.rng, 0.5);
    b.add(walker(
        0,
        walk_keys(
            t1,
            1.3,
            &[
                (crosswalk, walk_far),
                (crosswalk, walk_near),
                (crosswalk + 30.0, walk_near),
            ],
        ),
    ));
    let t2 = 6.0 + j(&mut b.rng, 0.5);
    b.add(walker(
        0,
        walk_keys(
            t2,
            1.5,
            &[
                (crosswalk + 1.0, walk_near - 0.8),
                (crosswalk + 1.0, walk_far + 0.8),
            ],
        ),
    ));
    // Two passing each other on the far sidewalk.
    let meet = crosswalk - 80.0 + j(&mut b.rng, 10.0);
    b.add(walker(
        0,
        walk_keys(
            0.0,
            1.3,
            &[(meet - 13.0, walk_far), (meet + 40.0, walk_far)],
        ),
    ));
    b.add(walker(
        0,
        walk_keys(
            0.0,
            1.2,
            &[(meet + 12.0, walk_far + 0.8), (meet - 40.0, walk_far + 0.8)],
        ),
    ));
    // An oncoming motorcycle and an oncoming truck.
    b.place(30, |rng| {
        on_road(
            0,
            D::CLASS_MOTORCYCLE,
            rng.random_range(250.0..450.0),
            on_inner,
            -1.0,
            SpeedProfile::constant(rng.random_range(14.0..17.0)),
        )
    });
    b.place(30, |rng| {
        on_road(
            0,
            D::CLASS_TRUCK,
            rng.random_range(200.0..450.0),
            on_outer,
            -1.0,
            SpeedProfile::constant(rng.random_range(10.0..13.0)),
        )
    });
    // Random traffic both ways; some change lanes.
    let dur = b.duration;
    for k in 0..10 {
        b.place(60, |rng| {
            let (dir, lanes, s0) = if k < 6 {
                (-1.0, [on_inner, on_outer], rng.random_range(100.0..550.0))
            } else {
                (1.0, [inner, outer], rng.random_range(-60.0..250.0))
            };
            let lane = rng.random_range(0..2);
            let car = on_road(
                0,
                D::CLASS_CAR,
                s0,
                lanes[lane],
                dir,
                SpeedProfile::constant(rng.random_range(10.0..15.0)),
            );
            let changes = if rng.random::<f64>() < 0.4 {
                vec![LaneChange {
                    start: rng.random_range(1.0..dur - 5.0),
                    duration: rng.random_range(3.0..4.5),
                    to: lanes[1 - lane],
                }]
            } else {
                Vec::new()
            };
            with_lane_changes(car, changes)
        });
    }
    Road {
        origin: (-30.0, 15.0, 1.2),
        segments: vec![(150.0, 0.0), (120.0, -1.0 / 150.0), (600.0, 0.0)],
    }
}

// ---------------------------------------------------------------------------------------
// Sequences

/// Truth of one road user at a frame's time, in the map frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthObject {
    /// Truth id (stable for the sequence).
    pub id: u32,
    /// One of `DetectedObject::CLASS_*`.
    pub class: Class,
    /// Position [m].
    pub x: f64,
    /// Position [m].
    pub y: f64,
    /// Velocity [m/s].
    pub vx: f64,
    /// Velocity [m/s].
    pub vy: f64,
    /// In range and field of view of at least one sensor (occluded or not).
    pub in_view: bool,
    /// In view and not occluded: what the sensors can detect.
    pub visible: bool,
    /// Line of sight from the ego blocked by a truck (whatever the range).
    pub occluded: bool,
}

/// One sensor's summary with the ego pose and the truth at its stamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Time [s] (the summary's stamp).
    pub t: f64,
    /// Ego pose in the map frame `(x [m], y [m], yaw [rad])`.
    pub ego_pose: (f64, f64, f64),
    /// What the sensor reported, in base_link.
    pub summary: PerceptionSummary,
    /// Every road user at `t` (the ego excluded).
    pub truth: Vec<TruthObject>,
    /// For each of `summary.objects`, the truth id it came from (`None`: clutter).
    pub sources: Vec<Option<u32>>,
}

/// A generated sequence: frames of every sensor in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Scenario name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// Frames in time order.
    pub frames: Vec<Frame>,
}

/// Whether the segment from `from` to `to` crosses the box of `k` (length `l`, width `w`).
fn blocks(k: &Kinematics, l: f64, w: f64, from: (f64, f64), to: (f64, f64)) -> bool {
    let (s, c) = k.yaw.sin_cos();
    let local = |p: (f64, f64)| {
        let (dx, dy) = (p.0 - k.x, p.1 - k.y);
        (c * dx + s * dy, -s * dx + c * dy)
    };
    let (p0, p1) = (local(from), local(to));
    let d = (p1.0 - p0.0, p1.1 - p0.1);
    // Liang-Barsky clipping of the segment against the box.
    let (mut u0, mut u1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-d.0, p0.0 + l / 2.0),
        (d.0, l / 2.0 - p0.0),
        (-d.1, p0.1 + w / 2.0),
        (d.1, w / 2.0 - p0.1),
    ] {
        if p.abs() < 1e-12 {
            if q < 0.0 {
                return false;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                u0 = u0.max(r);
            } else {
                u1 = u1.min(r);
            }
            if u0 > u1 {
                return false;
            }
        }
    }
    true
}

fn stamp(t: f64) -> Time {
    let sec = t.floor();
    let nanosec = (((t - sec) * 1e9).round() as u32).min(999_999_999);
    Time {
        sec: sec as i32,
        nanosec,
    }
}

/// Seconds of a stamp.
pub fn stamp_seconds(t: &Time) -> f64 {
    t.sec as f64 + t.nanosec as f64 * 1e-9
}

/// Generates the scenario's sequence (deterministic in its seed).
pub fn generate(sc: &Scenario) -> Sequence {
    let scene = scene(sc);
    let mut rng = StdRng::seed_from_u64(sc.seed ^ 0x5E05_0125_A11C_E5ED);
    let mut schedule: Vec<(f64, usize)> = Vec::new();
    for (i, s) in sc.sensors.iter().enumerate() {
        for k in 0.. {
            let t = s.phase + k as f64 / s.rate_hz;
            if t > sc.duration + 1e-9 {
                break;
            }
            schedule.push((t, i));
        }
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));

    let mut frames = Vec::with_capacity(schedule.len());
    for (t, si) in schedule {
        let sensor = &sc.sensors[si];
        let ego = scene.ego.state(&scene.road, t);
        let (sy, cy) = ego.yaw.sin_cos();
        let to_local = |x: f64, y: f64| {
            let (dx, dy) = (x - ego.x, y - ego.y);
            (cy * dx + sy * dy, -sy * dx + cy * dy)
        };
        let states: Vec<Kinematics> = scene
            .actors
            .iter()
            .map(|a| a.state(&scene.road, t))
            .collect();
        let mut truth = Vec::with_capacity(states.len());
        let mut objects = Vec::new();
        let mut sources = Vec::new();
        for (i, (a, k)) in scene.actors.iter().zip(&states).enumerate() {
            let occluded = scene
                .actors
                .iter()
                .zip(&states)
                .enumerate()
                .any(|(o, (b, kb))| {
                    o != i
                        && b.dims[2] > 2.5
                        && blocks(kb, b.dims[0], b.dims[1], (ego.x, ego.y), (k.x, k.y))
                });
            let local = to_local(k.x, k.y);
            let in_view = sc.sensors.iter().any(|s| s.covers(local.0, local.1));
            let visible = in_view && !occluded;
            truth.push(TruthObject {
                id: a.id,
                class: a.class,
                x: k.x,
                y: k.y,
                vx: k.vx,
                vy: k.vy,
                in_view,
                visible,
                occluded,
            });
            if occluded || !sensor.covers(local.0, local.1) {
                continue;
            }
            let r = local.0.hypot(local.1);
            let small = matches!(
                a.class,
                DetectedObject::CLASS_PEDESTRIAN | DetectedObject::CLASS_BICYCLE
            );
            let p_miss = sensor.miss
                + if small { sensor.small_miss } else { 0.0 }
                + sensor.far_miss * (r / sensor.max_range).powi(2);
            if rng.random::<f64>() < p_miss {
                continue;
            }
            let v = (cy * k.vx + sy * k.vy, -sy * k.vx + cy * k.vy);
            let class = sensor.classify(&mut rng, a.class);
            let o = sensor.detect(&mut rng, local, v, k.yaw - ego.yaw, a.dims, class);
            objects.push(o);
            sources.push(Some(a.id));
        }
        let clutter: f64 = Poisson::new(sensor.clutter_rate)
            .map(|p| p.sample(&mut rng))
            .unwrap_or(0.0);
        for _ in 0..clutter as usize {
            objects.push(sensor.clutter(&mut rng));
            sources.push(None);
        }
        // A summarizer's order says nothing.
        let mut order: Vec<usize> = (0..objects.len()).collect();
        order.shuffle(&mut rng);
        let objects: Vec<DetectedObject> = order.iter().map(|&k| objects[k].clone()).collect();
        let sources: Vec<Option<u32>> = order.iter().map(|&k| sources[k]).collect();
        let summary = PerceptionSummary {
            header: Header {
                stamp: stamp(t),
                frame_id: "base_link".into(),
            },
            sensor_id: sensor.id.into(),
            sensor_kind: sensor.kind,
            sensor_pose: Pose {
                position: Point {
                    x: 0.0,
                    y: 0.0,
                    z: sensor.height,
                },
                ..Default::default()
            },
            horizontal_fov: sensor.horizontal_fov as f32,
            vertical_fov: sensor.vertical_fov as f32,
            min_range: sensor.min_range as f32,
            max_range: sensor.max_range as f32,
            objects,
            raw_bytes: sensor.raw_bytes,
            processing_time: 0.0,
        };
        frames.push(Frame {
            t,
            ego_pose: (ego.x, ego.y, ego.yaw),
            summary,
            truth,
            sources,
        });
    }
    Sequence {
        scenario: sc.name.clone(),
        seed: sc.seed,
        frames,
    }
}

/// A confirmed track after one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackOutput {
    /// Index of the frame in the sequence.
    pub frame: usize,
    /// Time [s].
    pub t: f64,
    /// Track id.
    pub id: u64,
    /// Position in the map frame [m].
    pub x: f64,
    /// Position in the map frame [m].
    pub y: f64,
    /// Velocity [m/s].
    pub vx: f64,
    /// Velocity [m/s].
    pub vy: f64,
    /// Voted class, `DetectedObject::CLASS_*`.
    pub class: Class,
}

/// Runs the tracker over a sequence as a DR does (each summary at its stamp, moved into
/// the map frame by the ego pose, with its sensor kind's noise) and records the confirmed
/// tracks after every frame.
pub fn run_tracker(seq: &Sequence, config: TrackerConfig) -> Vec<TrackOutput> {
    let mut tracker = Tracker::new(config);
    let mut out = Vec::new();
    for (k, f) in seq.frames.iter().enumerate() {
        let t = stamp_seconds(&f.summary.header.stamp);
        let noise = tracker::noise_of(tracker.config(), &f.summary);
        let measurements: Vec<tracker::Measurement> = f
            .summary
            .objects
            .iter()
            .filter_map(|o| tracker::measurement(o, f.ego_pose, &noise))
            .collect();
        tracker.update(t, &measurements);
        for tr in tracker.confirmed() {
            let (p, _) = tr.filter.position();
            let v = tr.filter.velocity();
            out.push(TrackOutput {
                frame: k,
                t,
                id: tr.id,
                x: p.x,
                y: p.y,
                vx: v.x,
                vy: v.y,
                class: tr.class(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(seed: u64) -> Vec<Scenario> {
        SCENARIOS
            .iter()
            .map(|n| Scenario::named(n, seed).unwrap())
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        for sc in all(7) {
            let a = generate(&sc);
            let b = generate(&sc);
            assert!(a == b, "{} is not deterministic", sc.name);
            let mut other = sc.clone();
            other.seed = 8;
            assert!(
                generate(&other).frames != a.frames,
                "{}: the seed is ignored",
                sc.name
            );
        }
    }

    #[test]
    fn sensors_report_at_their_rates() {
        let sc = Scenario::crossing(1);
        let seq = generate(&sc);
        for s in &sc.sensors {
            let times: Vec<f64> = seq
                .frames
                .iter()
                .filter(|f| f.summary.sensor_kind == s.kind)
                .map(|f| stamp_seconds(&f.summary.header.stamp))
                .collect();
            let expected = (sc.duration * s.rate_hz).floor() as usize + 1;
            assert!(
                times.len().abs_diff(expected) <= 1,
                "{}: {} frames, expected {expected}",
                s.id,
                times.len()
            );
            for w in times.windows(2) {
                assert!(
                    ((w[1] - w[0]) - 1.0 / s.rate_hz).abs() < 1e-6,
                    "{}: {w:?}",
                    s.id
                );
            }
            let f = seq
                .frames
                .iter()
                .find(|f| f.summary.sensor_kind == s.kind)
                .unwrap();
            assert_eq!(f.summary.header.frame_id, "base_link");
            assert_eq!(f.summary.sensor_id, s.id);
        }
        assert!(
            seq.frames.windows(2).all(|w| w[0].t < w[1].t),
            "frames in time order"
        );
        // Only radar measures velocity.
        for f in &seq.frames {
            let radar = f.summary.sensor_kind == PerceptionSummary::SENSOR_RADAR;
            assert!(f.summary.objects.iter().all(|o| o.has_velocity == radar));
        }
    }

    /// Intervals `(start, end)` during which object `id` was in some sensor's coverage but
    /// occluded.
    fn hidden_intervals(seq: &Sequence, id: u32) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = Vec::new();
        let mut open: Option<f64> = None;
        let mut last = 0.0;
        for f in &seq.frames {
            let Some(o) = f.truth.iter().find(|o| o.id == id) else {
                continue;
            };
            if o.occluded && o.in_view {
                open.get_or_insert(f.t);
            } else if let Some(s) = open.take() {
                out.push((s, f.t));
            }
            last = f.t;
        }
        if let Some(s) = open {
            out.push((s, last));
        }
        out
    }

    #[test]
    fn occlusion_really_hides_the_object() {
        for seed in 1..=3 {
            let seq = generate(&Scenario::occlusion(seed));
            // Nothing occluded is ever detected, in any scenario or sensor.
            for f in &seq.frames {
                for src in f.sources.iter().flatten() {
                    let o = f.truth.iter().find(|o| o.id == *src).unwrap();
                    assert!(
                        !o.occluded && o.visible,
                        "seed {seed}: {o:?} detected at {}",
                        f.t
                    );
                }
            }
            // The car behind the oncoming truck (id 2) is hidden once, for 0.5-1.4 s, and
            // detected by every sensor before, by the LiDAR after.
            let short = hidden_intervals(&seq, 2);
            assert_eq!(short.len(), 1, "seed {seed}: {short:?}");
            let (a, b) = short[0];
            assert!((0.5..1.4).contains(&(b - a)), "seed {seed}: {short:?}");
            let detected_id = |id: u32, from: f64, to: f64| {
                seq.frames
                    .iter()
                    .filter(|f| f.t >= from && f.t <= to && f.sources.contains(&Some(id)))
                    .count()
            };
            let detected = |from: f64, to: f64| detected_id(2, from, to);
            assert!(detected(a - 1.0, a) > 10, "seed {seed}: seen before");
            assert!(detected(b, b + 1.0) >= 5, "seed {seed}: seen after");
            // The car behind the slow oncoming truck (id 6) is hidden once, for longer than
            // a track coasts, and seen before and after.
            let long = hidden_intervals(&seq, 6);
            assert_eq!(long.len(), 1, "seed {seed}: {long:?}");
            let (a, b) = long[0];
            assert!(
                b - a > TrackerConfig::default().max_coast + 0.5,
                "seed {seed}: {long:?}"
            );
            let (before, after) = (detected_id(6, a - 1.0, a), detected_id(6, b, b + 1.0));
            assert!(
                before > 10 && after >= 5,
                "seed {seed}: {before} detections before, {after} after {long:?}"
            );
        }
    }

    #[test]
    fn crossing_pedestrians_paths_really_cross() {
        for seed in 1..=3 {
            let sc = Scenario::crossing(seed);
            let scene = scene(&sc);
            let peds: Vec<&Actor> = scene
                .actors
                .iter()
                .filter(|a| a.class == DetectedObject::CLASS_PEDESTRIAN)
                .collect();
            let pos = |a: &Actor, t: f64| {
                let k = a.state(&scene.road, t);
                (k.x, k.y)
            };
            let samples: Vec<f64> = (0..=200).map(|k| k as f64 * 0.1).collect();
            // Pairs whose paths cross: the sign of the offset across the other's direction
            // of motion flips while they are close.
            let mut crossing_pairs = 0;
            for (i, a) in peds.iter().enumerate() {
                for b in &peds[i + 1..] {
                    let mut closest = f64::INFINITY;
                    let mut flips = false;
                    let mut prev_side = None;
                    for &t in &samples {
                        let (pa, pb) = (pos(a, t), pos(b, t));
                        let d = (pa.0 - pb.0).hypot(pa.1 - pb.1);
                        closest = closest.min(d);
                        let ka = a.state(&scene.road, t);
                        if ka.vx.hypot(ka.vy) < 0.5 || d > 4.0 {
                            prev_side = None;
                            continue;
                        }
                        let side = (ka.vx * (pb.1 - pa.1) - ka.vy * (pb.0 - pa.0)).signum();
                        if prev_side.is_some_and(|p: f64| p != side) {
                            flips = true;
                        }
                        prev_side = Some(side);
                    }
                    assert!(
                        closest > 0.3,
                        "seed {seed}: pedestrians {} and {} collide",
                        a.id,
                        b.id
                    );
                    if flips && closest < 2.0 {
                        crossing_pairs += 1;
                    }
                }
            }
            assert!(
                crossing_pairs >= 2,
                "seed {seed}: {crossing_pairs} crossing pairs"
            );
        }
    }

    #[test]
    fn road_users_never_overlap() {
        for sc in all(1).into_iter().chain(all(2)) {
            let scene = scene(&sc);
            let mut everyone = scene.actors.clone();
            everyone.push(scene.ego.clone());
            let steps = (sc.duration / 0.1) as usize;
            for (i, a) in everyone.iter().enumerate() {
                for b in &everyone[i + 1..] {
                    let both_walk =
                        matches!(a.path, Path::Walk { .. }) && matches!(b.path, Path::Walk { .. });
                    for k in 0..=steps {
                        let t = k as f64 * 0.1;
                        let (sa, da) = a.path.frenet(t);
                        let (sb, db) = b.path.frenet(t);
                        let overlap = if both_walk {
                            (sa - sb).hypot(da - db) < 0.3
                        } else {
                            (sa - sb).abs() < (a.dims[0] + b.dims[0]) / 2.0
                                && (da - db).abs() < (a.dims[1] + b.dims[1]) / 2.0
                        };
                        assert!(
                            !overlap,
                            "{}: {} and {} overlap at {t}",
                            sc.name, a.id, b.id
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn reported_covariances_match_the_errors() {
        // Normalized estimation error squared of the detections' positions: mean 2 for a
        // 2D Gaussian whose covariance is the one reported.
        let sc = Scenario::highway_dense(3);
        let seq = generate(&sc);
        for kind in [
            PerceptionSummary::SENSOR_LIDAR,
            PerceptionSummary::SENSOR_RADAR,
            PerceptionSummary::SENSOR_CAMERA,
        ] {
            let mut nees = Vec::new();
            for f in seq.frames.iter().filter(|f| f.summary.sensor_kind == kind) {
                let (ex, ey, eyaw) = f.ego_pose;
                let (s, c) = eyaw.sin_cos();
                for (o, src) in f.summary.objects.iter().zip(&f.sources) {
                    let Some(id) = src else { continue };
                    let tr = f.truth.iter().find(|t| t.id == *id).unwrap();
                    let (dx, dy) = (tr.x - ex, tr.y - ey);
                    let (lx, ly) = (c * dx + s * dy, -s * dx + c * dy);
                    let e = nalgebra::Vector2::new(o.position.x - lx, o.position.y - ly);
                    let p = &o.position_covariance;
                    let cov =
                        nalgebra::Matrix2::new(p[0] as f64, p[1] as f64, p[3] as f64, p[4] as f64);
                    nees.push((e.transpose() * cov.try_inverse().unwrap() * e)[(0, 0)]);
                }
            }
            let mean = nees.iter().sum::<f64>() / nees.len() as f64;
            assert!(nees.len() > 500, "{kind}: {} detections", nees.len());
            assert!(
                (1.7..2.4).contains(&mean),
                "sensor {kind}: mean NEES {mean}"
            );
        }
    }

    #[test]
    fn walkers_start_stop_and_turn_smoothly() {
        let sc = Scenario::crossing(1);
        let scene = scene(&sc);
        for a in scene
            .actors
            .iter()
            .filter(|a| matches!(a.path, Path::Walk { .. }))
        {
            let mut max_accel: f64 = 0.0;
            let mut prev = a.state(&scene.road, 0.0);
            for k in 1..=400 {
                let t = k as f64 * 0.05;
                let now = a.state(&scene.road, t);
                let accel = (now.vx - prev.vx).hypot(now.vy - prev.vy) / 0.05;
                max_accel = max_accel.max(accel);
                prev = now;
            }
            // A 90 deg turn at 1.5 m/s within 0.8 s is about 2.7 m/s^2.
            assert!(max_accel < 3.0, "walker {}: {max_accel} m/s^2", a.id);
        }
    }

    #[test]
    fn the_highway_is_dense_and_changes_lanes() {
        for seed in 1..=5 {
            let scene = scene(&Scenario::highway_dense(seed));
            let lane_changes: usize = scene
                .actors
                .iter()
                .map(|a| match &a.path {
                    Path::Road { lane_changes, .. } => lane_changes.len(),
                    Path::Walk { .. } => 0,
                })
                .sum();
            let trucks = scene
                .actors
                .iter()
                .filter(|a| a.class == DetectedObject::CLASS_TRUCK)
                .count();
            assert!(
                scene.actors.len() >= 18 && lane_changes >= 6 && trucks >= 2,
                "seed {seed}: {} road users, {lane_changes} lane changes, {trucks} trucks",
                scene.actors.len()
            );
        }
    }

    #[test]
    fn the_tracker_runs_over_a_sequence() {
        let seq = generate(&Scenario::crossing(1));
        let out = run_tracker(&seq, TrackerConfig::default());
        let last = seq.frames.len() - 1;
        let at_end = out.iter().filter(|o| o.frame == last).count();
        let truth_visible = seq.frames[last].truth.iter().filter(|o| o.visible).count();
        assert!(
            at_end > 0 && at_end.abs_diff(truth_visible) <= 3,
            "{at_end} tracks, {truth_visible} visible"
        );
    }
}
