//! The radar summarizer: detections with radial velocity in, moving and standing objects
//! with velocity out.
//!
//! Two PointCloud2 layouts are read, by field name (offsets and types come from `fields`):
//! - **carla-ros-bridge**: float32 `x, y, z, Range, Velocity, AzimuthAngle, ElevationAngle`;
//!   when x, y, z are absent, positions are computed from range and angles.
//! - **plain**: `x, y, z` and a radial velocity named `velocity`, `radial_velocity`,
//!   `range_rate`, `doppler`, `vr` or `v_r`.
//!
//! The radial velocity is read as range rate (positive when the target moves away), the
//! convention of CARLA and of radar_msgs; `velocity_sign = -1` reads sensors that report
//! the speed of approach instead.
//!
//! Stages:
//! 1. **Ego-motion compensation**: with the vehicle's own velocity and yaw rate (from
//!    odometry), each detection's radial velocity over ground is
//!    `v_r + u . v_sensor`, with `u` the line of sight and `v_sensor` the sensor's velocity.
//! 2. **Clustering** (union-find over a spatial hash): detections closer than
//!    `cluster_distance` in the ground plane and
//!    `cluster_velocity` in radial velocity over ground form one target (union-find).
//! 3. **Velocity**: for a target seen along several lines of sight, the 2-D velocity that
//!    best explains all radial velocities (least squares, `u_i . v = v_r,i`); along one
//!    line of sight, the radial component only.
//! 4. Standing targets need `min_points_static` detections and some height above the
//!    ground (road surface and guard-rail clutter is standing too); moving targets need
//!    `min_points_moving`.

use std::time::Instant;

use nalgebra::{Matrix2, Vector2};
use petgraph::unionfind::UnionFind;
use twinlink_msgs::geometry_msgs::msg::{Point, Vector3};
use twinlink_msgs::sensor_msgs::msg::PointCloud2;
use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary};

use crate::cloud::{self, Accept, CloudError, FieldReader};
use crate::geometry::{fold_half_turn, Mounting};
use crate::identity::IdAssigner;
use crate::params::{ParamSpec, Params};

/// Names a radial-velocity field may have in the plain layout.
pub const RADIAL_VELOCITY_NAMES: &[&str] = &[
    "Velocity",
    "velocity",
    "radial_velocity",
    "range_rate",
    "doppler",
    "vr",
    "v_r",
];

/// Settings of the radar pipeline (the node's parameters; see the package README).
#[derive(Debug, Clone, PartialEq)]
pub struct RadarConfig {
    /// Name of the sensor in summaries.
    pub sensor_id: String,
    /// The sensor's pose in base_link.
    pub mounting: Mounting,
    /// +1 if the velocity field is range rate (CARLA, radar_msgs), -1 if speed of approach.
    pub velocity_sign: f32,
    /// Detections closer than this are ignored [m].
    pub min_range: f32,
    /// Detections farther than this are ignored [m].
    pub max_range: f32,
    /// Full horizontal field of view [rad].
    pub horizontal_fov: f32,
    /// Full vertical field of view [rad].
    pub vertical_fov: f32,
    /// Detections of one target are at most this far apart in the ground plane [m].
    pub cluster_distance: f32,
    /// ... and this far apart in radial velocity over ground [m/s].
    pub cluster_velocity: f32,
    /// Targets slower than this over ground are standing [m/s].
    pub static_speed: f32,
    /// Detections a moving target needs.
    pub min_points_moving: usize,
    /// Detections a standing target needs.
    pub min_points_static: usize,
    /// A standing target's highest detection must be this far above the ground [m].
    pub static_min_height: f32,
    /// Height of the ground at base_link's origin [m].
    pub ground_z: f32,
    /// When a target's velocity is observable along one line of sight only, take it to
    /// move parallel to base_link's x axis (along the road) rather than along the line of
    /// sight.
    pub assume_along_x: bool,
    /// Largest move between frames that keeps an id [m].
    pub association_gate: f32,
    /// Largest accepted cloud [detections].
    pub max_points: usize,
}

impl Default for RadarConfig {
    fn default() -> Self {
        RadarConfig {
            sensor_id: "radar_front".into(),
            mounting: Mounting {
                x: 3.7,
                z: 0.5,
                ..Default::default()
            },
            velocity_sign: 1.0,
            min_range: 0.5,
            max_range: 200.0,
            horizontal_fov: 30f32.to_radians(),
            vertical_fov: 10f32.to_radians(),
            cluster_distance: 2.5,
            cluster_velocity: 1.5,
            static_speed: 0.5,
            min_points_moving: 1,
            min_points_static: 2,
            static_min_height: 0.3,
            ground_z: 0.0,
            assume_along_x: true,
            association_gate: 4.0,
            max_points: 20_000,
        }
    }
}

/// The radar summarizer node's parameters, with defaults and ranges.
pub fn parameters() -> Vec<ParamSpec> {
    let d = RadarConfig::default();
    let mut specs = vec![
        ParamSpec::string(
            "sensor_id",
            &d.sensor_id,
            &[],
            "name of the sensor in summaries",
        ),
        ParamSpec::string(
            "velocity_convention",
            "range_rate",
            &["range_rate", "approach"],
            "range_rate: positive away (CARLA, radar_msgs); approach: positive towards",
        ),
        ParamSpec::double(
            "min_range",
            d.min_range as f64,
            0.0,
            50.0,
            "ignore detections closer [m]",
        ),
        ParamSpec::double(
            "max_range",
            d.max_range as f64,
            5.0,
            500.0,
            "ignore detections farther [m]",
        ),
        ParamSpec::double(
            "horizontal_fov",
            d.horizontal_fov as f64,
            0.01,
            std::f64::consts::TAU,
            "full horizontal field of view, for summaries [rad]",
        ),
        ParamSpec::double(
            "vertical_fov",
            d.vertical_fov as f64,
            0.0,
            std::f64::consts::PI,
            "full vertical field of view, for summaries [rad]",
        ),
        ParamSpec::double(
            "cluster_distance",
            d.cluster_distance as f64,
            0.1,
            10.0,
            "detections of one target are this close in the ground plane [m]",
        ),
        ParamSpec::double(
            "cluster_velocity",
            d.cluster_velocity as f64,
            0.05,
            10.0,
            "... and this close in radial velocity [m/s]",
        ),
        ParamSpec::double(
            "static_speed",
            d.static_speed as f64,
            0.0,
            5.0,
            "slower targets are standing [m/s]",
        ),
        ParamSpec::int(
            "min_points_moving",
            d.min_points_moving as i64,
            1,
            100,
            "detections a moving target needs",
        ),
        ParamSpec::int(
            "min_points_static",
            d.min_points_static as i64,
            1,
            100,
            "detections a standing target needs",
        ),
        ParamSpec::double(
            "static_min_height",
            d.static_min_height as f64,
            -1.0,
            3.0,
            "a standing target reaches this high above the ground [m]",
        ),
        ParamSpec::double(
            "ground_z",
            d.ground_z as f64,
            -3.0,
            3.0,
            "ground height at base_link's origin [m]",
        ),
        ParamSpec::bool(
            "assume_along_x",
            d.assume_along_x,
            "with one line of sight, targets move along base_link x",
        ),
        ParamSpec::double(
            "association_gate",
            d.association_gate as f64,
            0.1,
            20.0,
            "largest move between frames that keeps an id [m]",
        ),
        ParamSpec::int(
            "max_points",
            d.max_points as i64,
            1,
            10_000_000,
            "larger clouds are refused [detections]",
        ),
        ParamSpec::double(
            "odom_timeout",
            0.5,
            0.01,
            10.0,
            "older odometry cannot compensate ego motion; velocities are then not reported [s]",
        ),
        ParamSpec::bool("publish_debug_markers", true, "publish ~/debug/markers"),
    ];
    specs.extend(crate::params::mounting_specs(d.mounting));
    specs
}

impl RadarConfig {
    /// The configuration from validated parameters (see [`parameters`]).
    pub fn from_params(p: &Params) -> Self {
        RadarConfig {
            sensor_id: p.str("sensor_id").to_string(),
            mounting: crate::params::mounting_from(p),
            velocity_sign: if p.str("velocity_convention") == "approach" {
                -1.0
            } else {
                1.0
            },
            min_range: p.f32("min_range"),
            max_range: p.f32("max_range"),
            horizontal_fov: p.f32("horizontal_fov"),
            vertical_fov: p.f32("vertical_fov"),
            cluster_distance: p.f32("cluster_distance"),
            cluster_velocity: p.f32("cluster_velocity"),
            static_speed: p.f32("static_speed"),
            min_points_moving: p.usize("min_points_moving"),
            min_points_static: p.usize("min_points_static"),
            static_min_height: p.f32("static_min_height"),
            ground_z: p.f32("ground_z"),
            assume_along_x: p.bool("assume_along_x"),
            association_gate: p.f32("association_gate"),
            max_points: p.usize("max_points"),
        }
    }
}

/// The vehicle's own motion in base_link, from odometry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EgoMotion {
    /// Forward speed [m/s].
    pub vx: f64,
    /// Leftward speed [m/s].
    pub vy: f64,
    /// Yaw rate [rad/s].
    pub yaw_rate: f64,
}

/// One detection in base_link with its radial velocity over ground.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Position [m].
    pub position: [f64; 3],
    /// Unit line of sight from the sensor, in the ground plane.
    pub line_of_sight: [f64; 2],
    /// Radial velocity over ground (ego motion removed) [m/s].
    pub radial_velocity: f64,
}

/// Which layout a cloud had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// x, y, z plus a radial velocity field.
    Cartesian,
    /// Range, AzimuthAngle, ElevationAngle, Velocity (carla-ros-bridge without x, y, z).
    Spherical,
}

/// What one frame went through.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameStats {
    /// Detections in the cloud.
    pub input_points: usize,
    /// Detections with a NaN or infinite value.
    pub non_finite: usize,
    /// Detections outside the range limits.
    pub cropped: usize,
    /// Targets found before filtering.
    pub clusters: usize,
    /// Targets dropped as clutter.
    pub clutter: usize,
    /// Objects reported.
    pub objects: usize,
    /// Wall time [s].
    pub seconds: f64,
}

/// Reads every detection of a cloud into base_link, compensating ego motion.
pub fn read_detections(
    cloud: &PointCloud2,
    config: &RadarConfig,
    ego: EgoMotion,
    stats: &mut FrameStats,
) -> Result<(Vec<Detection>, Layout), CloudError> {
    let n = cloud::validate(cloud, config.max_points)?;
    stats.input_points = n;
    if n == 0 {
        return Ok((Vec::new(), Layout::Cartesian));
    }
    let velocity = FieldReader::find(cloud, RADIAL_VELOCITY_NAMES, Accept::Float)?;
    let cartesian = (
        FieldReader::find_optional(cloud, &["x"], Accept::Float)?,
        FieldReader::find_optional(cloud, &["y"], Accept::Float)?,
        FieldReader::find_optional(cloud, &["z"], Accept::Float)?,
    );
    enum Position {
        Cartesian(FieldReader, FieldReader, FieldReader),
        Spherical(FieldReader, FieldReader, FieldReader),
    }
    let position = match cartesian {
        (Some(x), Some(y), Some(z)) => Position::Cartesian(x, y, z),
        _ => Position::Spherical(
            FieldReader::find(cloud, &["Range", "range"], Accept::Float)?,
            FieldReader::find(cloud, &["AzimuthAngle", "azimuth"], Accept::Float)?,
            FieldReader::find(cloud, &["ElevationAngle", "elevation"], Accept::Float)?,
        ),
    };
    let layout = match position {
        Position::Cartesian(..) => Layout::Cartesian,
        Position::Spherical(..) => Layout::Spherical,
    };
    let iso = config.mounting.isometry();
    // The sensor's velocity over ground, in base_link.
    let (mx, my) = (config.mounting.x, config.mounting.y);
    let v_sensor = [ego.vx - ego.yaw_rate * my, ego.vy + ego.yaw_rate * mx];
    let mut out = Vec::with_capacity(n);
    cloud::for_each_point(cloud, |p| {
        let local = match &position {
            Position::Cartesian(x, y, z) => [x.read(p) as f64, y.read(p) as f64, z.read(p) as f64],
            Position::Spherical(r, az, el) => {
                let (r, az, el) = (r.read(p) as f64, az.read(p) as f64, el.read(p) as f64);
                [
                    r * el.cos() * az.cos(),
                    r * el.cos() * az.sin(),
                    r * el.sin(),
                ]
            }
        };
        let v_r = velocity.read(p) as f64 * config.velocity_sign as f64;
        if !local.iter().all(|c| c.is_finite()) || !v_r.is_finite() {
            stats.non_finite += 1;
            return;
        }
        let range = (local[0].powi(2) + local[1].powi(2) + local[2].powi(2)).sqrt();
        if range < config.min_range as f64 || range > config.max_range as f64 {
            stats.cropped += 1;
            return;
        }
        let b = iso * nalgebra::Point3::new(local[0], local[1], local[2]);
        let (dx, dy) = (b.x - mx, b.y - my);
        let planar = dx.hypot(dy).max(1e-9);
        let u = [dx / planar, dy / planar];
        // v_r is measured along the 3-D line of sight; its ground-plane part is v_r / cos(el).
        let cos_el =
            (planar / (planar.powi(2) + (b.z - config.mounting.z).powi(2)).sqrt()).max(0.1);
        out.push(Detection {
            position: [b.x, b.y, b.z],
            line_of_sight: u,
            radial_velocity: v_r / cos_el + u[0] * v_sensor[0] + u[1] * v_sensor[1],
        });
    });
    Ok((out, layout))
}

/// Least-squares 2-D velocity from radial velocities along several lines of sight. When the
/// lines of sight do not span the plane, only one component is observable: with
/// `along_x` the target is taken to move parallel to base_link's x axis (traffic along the
/// road, within 60 degrees of the line of sight), otherwise along the line of sight.
pub fn estimate_velocity(detections: &[&Detection], along_x: bool) -> [f64; 2] {
    let mut a = Matrix2::zeros();
    let mut b = Vector2::zeros();
    for d in detections {
        let u = Vector2::new(d.line_of_sight[0], d.line_of_sight[1]);
        a += u * u.transpose();
        b += u * d.radial_velocity;
    }
    let n = detections.len().max(1) as f64;
    let eig = (a / n).symmetric_eigenvalues();
    // Lines of sight spread by less than ~8 degrees: only the radial part is observable.
    if eig.min() > 0.02 {
        if let Some(inv) = a.try_inverse() {
            let v = inv * b;
            return [v.x, v.y];
        }
    }
    let (mut ux, mut uy, mut vr) = (0.0, 0.0, 0.0);
    for d in detections {
        ux += d.line_of_sight[0];
        uy += d.line_of_sight[1];
        vr += d.radial_velocity;
    }
    let norm = ux.hypot(uy).max(1e-9);
    let (ux, uy, vr) = (ux / norm, uy / norm, vr / n);
    if along_x && ux.abs() > 0.5 {
        [vr / ux, 0.0]
    } else {
        [vr * ux, vr * uy]
    }
}

/// The radar summarizer; keeps ids stable across frames.
pub struct RadarSummarizer {
    config: RadarConfig,
    ids: IdAssigner,
}

impl RadarSummarizer {
    /// A summarizer with these settings.
    pub fn new(config: RadarConfig) -> Self {
        RadarSummarizer {
            ids: IdAssigner::new(config.association_gate as f64),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &RadarConfig {
        &self.config
    }

    /// Summarizes one frame of detections, given the vehicle's motion at the time. Without
    /// it (no recent odometry) velocities over ground are unknown: targets are still
    /// reported, with `has_velocity` false.
    pub fn summarize(
        &mut self,
        cloud: &PointCloud2,
        ego: Option<EgoMotion>,
    ) -> Result<(PerceptionSummary, FrameStats, Layout), CloudError> {
        let started = Instant::now();
        let mut stats = FrameStats::default();
        let (detections, layout) =
            read_detections(cloud, &self.config, ego.unwrap_or_default(), &mut stats)?;
        let mut objects = self.cluster(&detections, &mut stats);
        if ego.is_none() {
            for o in &mut objects {
                o.has_velocity = false;
                o.velocity = Vector3::default();
            }
        }
        self.ids.assign(&mut objects);
        stats.objects = objects.len();
        stats.seconds = started.elapsed().as_secs_f64();
        let c = &self.config;
        let summary = PerceptionSummary {
            header: twinlink_msgs::std_msgs::msg::Header {
                stamp: cloud.header.stamp.clone(),
                frame_id: "base_link".into(),
            },
            sensor_id: c.sensor_id.clone(),
            sensor_kind: PerceptionSummary::SENSOR_RADAR,
            sensor_pose: c.mounting.pose(),
            horizontal_fov: c.horizontal_fov,
            vertical_fov: c.vertical_fov,
            min_range: c.min_range,
            max_range: c.max_range,
            objects,
            raw_bytes: cloud.data.len() as u64,
            processing_time: stats.seconds as f32,
        };
        Ok((summary, stats, layout))
    }

    fn cluster(&self, detections: &[Detection], stats: &mut FrameStats) -> Vec<DetectedObject> {
        let c = &self.config;
        let mut sets = UnionFind::<usize>::new(detections.len());
        let (d2max, dv) = (
            (c.cluster_distance as f64).powi(2),
            c.cluster_velocity as f64,
        );
        // Spatial hash with cells of cluster_distance: neighbours are in adjacent cells.
        let inv = 1.0 / c.cluster_distance as f64;
        let cell_of = |d: &Detection| {
            (
                (d.position[0] * inv).floor() as i64,
                (d.position[1] * inv).floor() as i64,
            )
        };
        let mut cells: rustc_hash::FxHashMap<(i64, i64), Vec<usize>> = Default::default();
        for (i, d) in detections.iter().enumerate() {
            cells.entry(cell_of(d)).or_default().push(i);
        }
        for (i, a) in detections.iter().enumerate() {
            let (cx, cy) = cell_of(a);
            for nx in cx - 1..=cx + 1 {
                for ny in cy - 1..=cy + 1 {
                    let Some(members) = cells.get(&(nx, ny)) else {
                        continue;
                    };
                    for &j in members.iter().filter(|&&j| j > i) {
                        let b = &detections[j];
                        let d2 = (a.position[0] - b.position[0]).powi(2)
                            + (a.position[1] - b.position[1]).powi(2);
                        if d2 <= d2max && (a.radial_velocity - b.radial_velocity).abs() <= dv {
                            sets.union(i, j);
                        }
                    }
                }
            }
        }
        let mut groups: std::collections::BTreeMap<usize, Vec<&Detection>> = Default::default();
        for (i, d) in detections.iter().enumerate() {
            groups.entry(sets.find_mut(i)).or_default().push(d);
        }
        stats.clusters = groups.len();
        let mut objects = Vec::new();
        for members in groups.into_values() {
            let v = estimate_velocity(&members, c.assume_along_x);
            let speed = v[0].hypot(v[1]);
            let moving = speed >= c.static_speed as f64;
            let top = members
                .iter()
                .map(|d| d.position[2])
                .fold(f64::NEG_INFINITY, f64::max);
            let enough = if moving {
                members.len() >= c.min_points_moving
            } else {
                members.len() >= c.min_points_static
                    && top >= (c.ground_z + c.static_min_height) as f64
            };
            if !enough {
                stats.clutter += 1;
                continue;
            }
            let n = members.len() as f64;
            let mean = |k: usize| members.iter().map(|d| d.position[k]).sum::<f64>() / n;
            let extent = |k: usize| {
                let (lo, hi) = members
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), d| {
                        (lo.min(d.position[k]), hi.max(d.position[k]))
                    });
                (hi - lo).max(0.5)
            };
            let (x, y) = (mean(0), mean(1));
            let range = (x - c.mounting.x).hypot(y - c.mounting.y);
            // Range is accurate, azimuth less so (about 1 degree): a loose, range-dependent
            // position uncertainty, smaller with more detections.
            let sigma = (0.25 + 0.015 * range) / n.sqrt().max(1.0) + 0.3;
            let var = (sigma * sigma) as f32;
            objects.push(DetectedObject {
                id: 0,
                classification: DetectedObject::CLASS_UNKNOWN,
                class_confidence: 0.0,
                existence_probability: (0.4 + 0.1 * n).min(0.9) as f32,
                position: Point { x, y, z: mean(2) },
                yaw: if moving {
                    fold_half_turn(v[1].atan2(v[0]))
                } else {
                    0.0
                },
                dimensions: Vector3 {
                    x: extent(0),
                    y: extent(1),
                    z: 1.0,
                },
                has_velocity: true,
                velocity: Vector3 {
                    x: v[0],
                    y: v[1],
                    z: 0.0,
                },
                position_covariance: [var, 0.0, 0.0, 0.0, var, 0.0, 0.0, 0.0, 1.0],
            });
        }
        objects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::build_f32_cloud;
    use crate::synth::{RadarModel, Scene, SceneObject};

    #[test]
    fn moving_targets_with_their_velocity_in_both_layouts() {
        let scene = Scene {
            objects: vec![
                SceneObject::car(40.0, 0.0, 0.0).moving(15.0, 0.0),
                SceneObject::car(25.0, 3.5, 0.0).moving(30.0, 0.0),
                SceneObject::car(60.0, -3.5, 0.0), // stalled
            ],
        };
        let ego = EgoMotion {
            vx: 20.0,
            ..Default::default()
        };
        let config = RadarConfig::default();
        for carla in [true, false] {
            let model = RadarModel {
                carla_layout: carla,
                ..RadarModel::default()
            };
            let cloud = model.scan(&scene, &config.mounting, ego, 5);
            let mut radar = RadarSummarizer::new(config.clone());
            let (summary, stats, layout) = radar.summarize(&cloud, Some(ego)).unwrap();
            assert_eq!(layout, Layout::Cartesian);
            assert_eq!(
                summary.objects.len(),
                3,
                "carla={carla} {stats:?} {:#?}",
                summary.objects
            );
            for truth in &scene.objects {
                let o = summary
                    .objects
                    .iter()
                    .min_by(|a, b| {
                        let da = (a.position.x - truth.x).hypot(a.position.y - truth.y);
                        let db = (b.position.x - truth.x).hypot(b.position.y - truth.y);
                        da.total_cmp(&db)
                    })
                    .unwrap();
                // Radar sees the near face: within half a length of the center.
                assert!(
                    (o.position.x - truth.x).abs() < 2.6 && (o.position.y - truth.y).abs() < 1.0,
                    "{truth:?} {o:?}"
                );
                assert!(
                    (o.velocity.x - truth.vx).abs() < 0.8,
                    "carla={carla} {truth:?} {:?}",
                    o.velocity
                );
            }
        }
    }

    #[test]
    fn spherical_carla_layout_and_sign_convention() {
        // One detection straight ahead 50 m, approaching at 5 m/s relative, ego at 20 m/s:
        // over ground it drives at 15 m/s.
        let cloud = build_f32_cloud(
            "radar",
            &["Range", "Velocity", "AzimuthAngle", "ElevationAngle"],
            &[vec![50.0, -5.0, 0.0, 0.0]],
        );
        let config = RadarConfig {
            min_points_moving: 1,
            mounting: Mounting::default(),
            ..Default::default()
        };
        let ego = EgoMotion {
            vx: 20.0,
            ..Default::default()
        };
        let mut radar = RadarSummarizer::new(config.clone());
        let (summary, _, layout) = radar.summarize(&cloud, Some(ego)).unwrap();
        assert_eq!(layout, Layout::Spherical);
        assert!((summary.objects[0].position.x - 50.0).abs() < 1e-3);
        assert!((summary.objects[0].velocity.x - 15.0).abs() < 1e-3);
        // The same sensor reporting speed of approach (+5).
        let cloud = build_f32_cloud(
            "radar",
            &["x", "y", "z", "doppler"],
            &[vec![50.0, 0.0, 0.0, 5.0]],
        );
        let mut radar = RadarSummarizer::new(RadarConfig {
            velocity_sign: -1.0,
            ..config
        });
        let (summary, _, _) = radar.summarize(&cloud, Some(ego)).unwrap();
        assert!((summary.objects[0].velocity.x - 15.0).abs() < 1e-3);
    }

    #[test]
    fn ground_clutter_is_not_an_object_and_bad_layouts_are_named() {
        // Standing detections on the road surface, one each.
        let cloud = build_f32_cloud(
            "radar",
            &["x", "y", "z", "velocity"],
            &[vec![20.0, 0.0, -0.5, -20.0], vec![30.0, 5.0, -0.5, -20.0]],
        );
        let ego = EgoMotion {
            vx: 20.0,
            ..Default::default()
        };
        let mut radar = RadarSummarizer::new(RadarConfig::default());
        let (summary, stats, _) = radar.summarize(&cloud, Some(ego)).unwrap();
        assert!(summary.objects.is_empty(), "{:?}", summary.objects);
        assert_eq!(stats.clutter, 2);
        let no_velocity = build_f32_cloud("radar", &["x", "y", "z"], &[vec![1.0, 2.0, 3.0]]);
        let e = radar.summarize(&no_velocity, Some(ego)).unwrap_err();
        assert!(e.to_string().contains("no field \"Velocity\""), "{e}");
    }

    #[test]
    fn parameters_round_trip_to_the_default_config() {
        let p = crate::params::resolve(&parameters(), &Default::default()).unwrap();
        assert_eq!(RadarConfig::from_params(&p), RadarConfig::default());
    }

    #[test]
    fn without_odometry_velocities_are_not_claimed() {
        let cloud = build_f32_cloud(
            "radar",
            &["x", "y", "z", "velocity"],
            &[vec![30.0, 0.0, 0.5, -5.0]],
        );
        let mut radar = RadarSummarizer::new(RadarConfig::default());
        let (summary, _, _) = radar.summarize(&cloud, None).unwrap();
        assert_eq!(summary.objects.len(), 1);
        assert!(!summary.objects[0].has_velocity);
    }

    #[test]
    fn velocity_from_several_lines_of_sight() {
        // A target moving at (10, 5) seen along three directions.
        let truth = [10.0, 5.0];
        let dets: Vec<Detection> = [0.0f64, 0.3, 0.6]
            .iter()
            .map(|a| {
                let u = [a.cos(), a.sin()];
                Detection {
                    position: [0.0; 3],
                    line_of_sight: u,
                    radial_velocity: u[0] * truth[0] + u[1] * truth[1],
                }
            })
            .collect();
        let refs: Vec<&Detection> = dets.iter().collect();
        let v = estimate_velocity(&refs, true);
        assert!(
            (v[0] - 10.0).abs() < 1e-9 && (v[1] - 5.0).abs() < 1e-9,
            "{v:?}"
        );
    }
}
