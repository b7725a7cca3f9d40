//! Object-level sensor models: what a connected vehicle's LiDAR, radar and camera report,
//! as the `twin_msgs/PerceptionSummary` its on-board summarizers would publish.
//!
//! Each model has a range, a field of view, a detection probability, and position noise
//! that grows with distance; radar also measures velocity. An object is seen only if
//! enough of it is in view: the sensor's view is cut into the angular intervals that the
//! objects' boxes cover, nearest first, and an object less than
//! [`SensorModel::min_visible_fraction`] of whose interval is left uncovered by nearer
//! objects is hidden (a car behind a truck, a stalled vehicle behind the car in front).
//! A hazard behind a crest (`visible_within_m`) is seen by no sensor from farther than
//! that. This is the geometry the point-cloud mode ray-casts, without the points; the fast
//! mode uses it, and reports say so.
//!
//! Frames (REP-103/105): the road runs along map x from the origin, its reference line the
//! centre of lane 0 (the rightmost, at y = 0), lanes counting to the left (lane k centred
//! at y = k × lane width), as the twin's straight road (`twin_dr_host::road::Road::straight`)
//! lays them out. Objects are reported in `base_link` of
//! the observing vehicle (x forward, y left, origin at the body centre); velocities over
//! ground, in the same axes.

// Messages are built field by field from their defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

use std::f64::consts::PI;

use rand::Rng;
use rand_distr::{Distribution, Normal};
use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary, VehicleState};

use crate::scenario::HazardKind;
use crate::world::World;

/// One sensor of a connected vehicle.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorModel {
    /// `sensor_id` of its summaries (unique on the vehicle).
    pub id: &'static str,
    /// One of `PerceptionSummary::SENSOR_*`.
    pub kind: u8,
    /// Summaries per second.
    pub rate_hz: f64,
    /// Farthest reported distance [m].
    pub max_range: f64,
    /// Full horizontal field of view, centred forward [rad] (2π: all around).
    pub fov: f64,
    /// Probability that a visible object is reported.
    pub detection_probability: f64,
    /// Position noise (standard deviation) at distance 0 [m] ...
    pub sigma_base: f64,
    /// ... plus this much per metre of distance.
    pub sigma_per_m: f64,
    /// Velocity noise (standard deviation) [m/s]; `None`: the sensor measures no velocity.
    pub velocity_sigma: Option<f64>,
    /// Share of an object's angular extent that must be in view for it to be seen.
    pub min_visible_fraction: f64,
    /// Size of the raw data one summary stands for [bytes] (what the vehicle keeps on board).
    pub raw_bytes: u64,
}

impl SensorModel {
    /// A roof LiDAR: 10 Hz, 120 m, all around, 64 beams (about 120,000 points of 16 bytes
    /// per sweep), centimetre noise.
    pub fn lidar() -> SensorModel {
        SensorModel {
            id: "lidar_top",
            kind: PerceptionSummary::SENSOR_LIDAR,
            rate_hz: 10.0,
            max_range: 120.0,
            fov: 2.0 * PI,
            detection_probability: 0.97,
            sigma_base: 0.05,
            sigma_per_m: 0.002,
            velocity_sigma: None,
            min_visible_fraction: 0.2,
            raw_bytes: 120_000 * 16,
        }
    }

    /// A front radar: 20 Hz, 200 m, ±45°, Doppler velocity, about 1,000 detections of
    /// 32 bytes per scan.
    pub fn radar() -> SensorModel {
        SensorModel {
            id: "radar_front",
            kind: PerceptionSummary::SENSOR_RADAR,
            rate_hz: 20.0,
            max_range: 200.0,
            fov: PI / 2.0,
            detection_probability: 0.9,
            sigma_base: 0.3,
            sigma_per_m: 0.005,
            velocity_sigma: Some(0.1),
            min_visible_fraction: 0.3,
            raw_bytes: 1_000 * 32,
        }
    }

    /// A front camera: 15 Hz, 80 m, 90°, 1920x1080 RGB (6.2 MB per frame), noise that grows
    /// fastest with distance (depth from the ground plane).
    pub fn camera() -> SensorModel {
        SensorModel {
            id: "camera_front",
            kind: PerceptionSummary::SENSOR_CAMERA,
            rate_hz: 15.0,
            max_range: 80.0,
            fov: PI / 2.0,
            detection_probability: 0.9,
            sigma_base: 0.2,
            sigma_per_m: 0.02,
            velocity_sigma: None,
            min_visible_fraction: 0.3,
            raw_bytes: 1920 * 1080 * 3,
        }
    }

    /// The vehicle nodes' three sensors.
    pub fn suite() -> Vec<SensorModel> {
        vec![Self::lidar(), Self::radar(), Self::camera()]
    }
}

/// Something a sensor could see, in the observer's base_link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) id: u32,
    pub(crate) class: u8,
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) length: f64,
    pub(crate) width: f64,
    pub(crate) height: f64,
    pub(crate) v: f64,
    /// Angular interval it covers [rad], lo < hi (never across ±π: see `interval`).
    lo: f64,
    hi: f64,
    range: f64,
}

/// The angular interval of an axis-aligned box centred at (x, y), seen from the origin.
fn interval(x: f64, y: f64, length: f64, width: f64) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    let mut angles = [0.0; 4];
    for (k, (dx, dy)) in [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)]
        .into_iter()
        .enumerate()
    {
        angles[k] = (y + dy * width / 2.0).atan2(x + dx * length / 2.0);
    }
    // Behind the observer the corners straddle ±π: measure from the box's own direction.
    let centre = y.atan2(x);
    for a in angles {
        let mut d = a - centre;
        while d > PI {
            d -= 2.0 * PI;
        }
        while d < -PI {
            d += 2.0 * PI;
        }
        lo = lo.min(centre + d);
        hi = hi.max(centre + d);
    }
    (lo, hi)
}

/// Length of `[lo, hi]` not covered by `covers` (intervals, in any order).
fn uncovered(lo: f64, hi: f64, covers: &[(f64, f64)]) -> f64 {
    let mut parts: Vec<(f64, f64)> = covers
        .iter()
        .map(|&(a, b)| (a.max(lo), b.min(hi)))
        .filter(|(a, b)| b > a)
        .collect();
    parts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut covered = 0.0;
    let mut end = lo;
    for (a, b) in parts {
        if b <= end {
            continue;
        }
        covered += b - a.max(end);
        end = b;
    }
    (hi - lo) - covered
}

/// Every vehicle and active hazard near `observer`, in its base_link.
/// Vehicles and hazards within `reach` of `observer` (hazards behind a crest only as near
/// as they are visible), relative to it.
pub(crate) fn candidates(world: &World, observer: u32, reach: f64) -> Option<Vec<Candidate>> {
    let lane_width = world.scenario().road.lane_width_m;
    let me = world.vehicles().iter().find(|v| v.id == observer)?;
    let (ox, oy) = (me.s - me.length / 2.0, me.lane as f64 * lane_width);
    let mut out = Vec::new();
    let mut push =
        |id: u32, class: u8, cx: f64, cy: f64, length: f64, width: f64, height: f64, v: f64| {
            let (x, y) = (cx - ox, cy - oy);
            let range = (x * x + y * y).sqrt();
            if range > reach + length {
                return;
            }
            let (lo, hi) = interval(x, y, length, width);
            out.push(Candidate {
                id,
                class,
                x,
                y,
                length,
                width,
                height,
                v,
                lo,
                hi,
                range,
            });
        };
    for v in world.vehicles() {
        if v.id == observer {
            continue;
        }
        let class = if v.truck {
            DetectedObject::CLASS_TRUCK
        } else {
            DetectedObject::CLASS_CAR
        };
        let height = if v.truck { 3.5 } else { 1.5 };
        push(
            v.id + 1,
            class,
            v.s - v.length / 2.0,
            v.lane as f64 * lane_width,
            v.length,
            v.width,
            height,
            v.v,
        );
    }
    for o in world.obstacles() {
        let (class, width, height) = match o.kind {
            HazardKind::StalledVehicle => (DetectedObject::CLASS_CAR, 1.9, 1.5),
            HazardKind::Debris => (DetectedObject::CLASS_STATIC_OBSTACLE, 1.0, 0.5),
            HazardKind::LaneClosure => {
                (DetectedObject::CLASS_STATIC_OBSTACLE, lane_width * 0.8, 1.0)
            }
        };
        // Behind a crest or a bend (`visible_within_m`), no sensor sees it from farther
        // than a driver does.
        let visible_within = world.scenario().hazards[o.hazard]
            .visible_within_m
            .unwrap_or(f64::INFINITY);
        if o.s_back - me.s > visible_within {
            continue;
        }
        let length = o.s_front - o.s_back;
        push(
            1_000_000 + o.hazard as u32,
            class,
            (o.s_back + o.s_front) / 2.0,
            o.lane as f64 * lane_width,
            length,
            width,
            height,
            0.0,
        );
    }
    Some(out)
}

/// What `sensor` of vehicle `observer` reports at time `stamp`; `None` when the vehicle is
/// not on the road.
pub fn observe(
    world: &World,
    observer: u32,
    sensor: &SensorModel,
    stamp: Time,
    rng: &mut impl Rng,
) -> Option<PerceptionSummary> {
    let mut cands = candidates(world, observer, sensor.max_range)?;
    cands.sort_by(|a, b| a.range.total_cmp(&b.range));
    let mut covers: Vec<(f64, f64)> = Vec::new();
    let mut objects = Vec::new();
    let unit = Normal::new(0.0, 1.0).expect("unit normal");
    for c in &cands {
        let bearing = c.y.atan2(c.x);
        let in_view = sensor.fov >= 2.0 * PI - 1e-9 || bearing.abs() <= sensor.fov / 2.0;
        let width = c.hi - c.lo;
        let visible = if width > 0.0 {
            uncovered(c.lo, c.hi, &covers) / width
        } else {
            0.0
        };
        // Everything occludes what is behind it, seen or not.
        covers.push((c.lo, c.hi));
        // The nearest point of the box counts for the range.
        let near = (c.range - c.length / 2.0).max(0.0);
        if !in_view || near > sensor.max_range || visible < sensor.min_visible_fraction {
            continue;
        }
        if !rng.random_bool(sensor.detection_probability) {
            continue;
        }
        let sigma = sensor.sigma_base + sensor.sigma_per_m * c.range;
        let mut o = DetectedObject::default();
        o.id = c.id;
        o.classification = c.class;
        o.class_confidence = if sensor.kind == PerceptionSummary::SENSOR_CAMERA {
            0.85
        } else {
            0.7
        };
        o.existence_probability = sensor.detection_probability as f32;
        o.position.x = c.x + sigma * unit.sample(rng);
        o.position.y = c.y + sigma * unit.sample(rng);
        o.position.z = c.height / 2.0;
        o.dimensions.x = c.length;
        o.dimensions.y = c.width;
        o.dimensions.z = c.height;
        if let Some(vs) = sensor.velocity_sigma {
            o.has_velocity = true;
            o.velocity.x = c.v + vs * unit.sample(rng);
        }
        let var = (sigma * sigma) as f32;
        o.position_covariance = [var, 0.0, 0.0, 0.0, var, 0.0, 0.0, 0.0, var];
        objects.push(o);
    }
    let mut s = PerceptionSummary::default();
    s.header.stamp = stamp;
    s.header.frame_id = "base_link".into();
    s.sensor_id = sensor.id.into();
    s.sensor_kind = sensor.kind;
    s.sensor_pose.orientation.w = 1.0;
    s.horizontal_fov = sensor.fov as f32;
    s.vertical_fov = 0.5;
    s.min_range = 0.5;
    s.max_range = sensor.max_range as f32;
    s.objects = objects;
    s.raw_bytes = sensor.raw_bytes;
    Some(s)
}

/// The state vehicle `id` reports (odometry), in `map`; `None` when it is not on the road.
pub fn vehicle_state(world: &World, id: u32, name: &str, stamp: Time) -> Option<VehicleState> {
    let lane_width = world.scenario().road.lane_width_m;
    let v = world.vehicles().iter().find(|v| v.id == id)?;
    let mut s = VehicleState::default();
    s.header.stamp = stamp;
    s.header.frame_id = "map".into();
    s.vehicle_id = name.into();
    s.pose.position.x = v.s - v.length / 2.0;
    s.pose.position.y = v.lane as f64 * lane_width;
    s.pose.orientation.w = 1.0;
    s.twist.linear.x = v.v;
    s.acceleration = v.a;
    s.lane_index = v.lane as i32;
    s.length = v.length;
    s.width = v.width;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A world of a few vehicles placed by hand: (lane, front bumper s, truck).
    fn world(placed: &[(usize, f64, bool)], extra: &str) -> World {
        let text = format!(
            "name: s\nduration_s: 10\nroad: {{ length_m: 2000, lanes: 3, speed_limit_mps: 30 }}\ntraffic: {{ vehicles: {}, truck_share: 0, connected_share: 1 }}\n{extra}",
            placed.len()
        );
        let mut w = World::new(&Scenario::parse(&text, "s").unwrap());
        w.place(placed);
        w
    }

    fn seen(w: &World, observer: u32, sensor: &SensorModel) -> Vec<u32> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut s = sensor.clone();
        s.detection_probability = 1.0;
        let summary = observe(w, observer, &s, Time::default(), &mut rng).unwrap();
        let mut ids: Vec<u32> = summary.objects.iter().map(|o| o.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn objects_in_range_are_reported_in_base_link_near_the_truth() {
        // The observer in the middle lane, a car 40 m ahead one lane to the left, one 200 m
        // ahead one lane to the right (outside the near car's shadow).
        let w = world(
            &[(1, 500.0, false), (2, 540.0, false), (0, 700.0, false)],
            "",
        );
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut lidar = SensorModel::lidar();
        lidar.detection_probability = 1.0;
        let s = observe(&w, 0, &lidar, Time::default(), &mut rng).unwrap();
        assert_eq!(s.header.frame_id, "base_link");
        assert_eq!(s.raw_bytes, 1_920_000);
        // The car 40 m ahead; the one 200 m ahead is out of LiDAR range.
        assert_eq!(s.objects.len(), 1, "{:?}", s.objects);
        let o = &s.objects[0];
        assert_eq!(o.id, 2);
        let sigma = 0.05 + 0.002 * 40.15;
        assert!((o.position.x - 40.0).abs() < 4.0 * sigma, "{o:?}");
        assert!((o.position.y - 3.5).abs() < 4.0 * sigma, "{o:?}");
        assert!(!o.has_velocity);
        // The radar reaches 200 m and measures speed.
        let mut radar = SensorModel::radar();
        radar.detection_probability = 1.0;
        let r = observe(&w, 0, &radar, Time::default(), &mut rng).unwrap();
        assert_eq!(r.objects.len(), 2, "{:?}", r.objects);
        assert!(r.objects.iter().all(|o| o.has_velocity));
        let far = r.objects.iter().find(|o| o.id == 3).unwrap();
        assert!(
            (far.position.y - -3.5).abs() < 2.0,
            "one lane to the right: {far:?}"
        );
    }

    #[test]
    fn a_car_behind_a_truck_is_hidden_and_reappears_when_the_truck_is_beside() {
        let mut w = world(
            &[(1, 500.0, false), (1, 530.0, true), (1, 560.0, false)],
            "",
        );
        assert_eq!(
            seen(&w, 0, &SensorModel::lidar()),
            vec![2],
            "the truck hides the car"
        );
        // The truck one lane over no longer covers the car ahead.
        w.place(&[(1, 500.0, false), (2, 530.0, true), (1, 560.0, false)]);
        assert_eq!(seen(&w, 0, &SensorModel::lidar()), vec![2, 3]);
    }

    #[test]
    fn a_stalled_vehicle_is_seen_only_without_a_car_in_front_and_within_range() {
        let extra = "hazards:\n  - { kind: stalled_vehicle, s_m: 600, lane: 1 }\n";
        let w = world(&[(1, 500.0, false), (0, 100.0, false)], extra);
        assert_eq!(seen(&w, 0, &SensorModel::lidar()), vec![1_000_000]);
        // 500 m behind it, nothing reaches.
        assert!(seen(&w, 1, &SensorModel::radar()).is_empty());
        let w = world(&[(1, 500.0, false), (1, 530.0, false)], extra);
        assert_eq!(
            seen(&w, 0, &SensorModel::lidar()),
            vec![2],
            "hidden by the car in front"
        );
        // Beyond a crest: seen from 80 m, not from 100 m.
        let crest =
            "hazards:\n  - { kind: stalled_vehicle, s_m: 600, lane: 1, visible_within_m: 80 }\n";
        let w = world(&[(1, 500.0, false), (0, 525.0, false)], crest);
        assert_eq!(
            seen(&w, 0, &SensorModel::radar()),
            vec![2],
            "only the car 25 m ahead"
        );
        assert_eq!(seen(&w, 1, &SensorModel::radar()), vec![1_000_000]);
    }

    #[test]
    fn the_front_sensors_see_nothing_behind_and_the_lidar_does() {
        let w = world(&[(1, 500.0, false), (1, 470.0, false)], "");
        assert!(seen(&w, 0, &SensorModel::camera()).is_empty());
        assert!(seen(&w, 0, &SensorModel::radar()).is_empty());
        assert_eq!(seen(&w, 0, &SensorModel::lidar()), vec![2]);
    }

    #[test]
    fn uncovered_length_merges_overlapping_covers() {
        assert!((uncovered(0.0, 1.0, &[]) - 1.0).abs() < 1e-12);
        assert!((uncovered(0.0, 1.0, &[(0.2, 0.5), (0.4, 0.6)]) - 0.6).abs() < 1e-12);
        assert!(uncovered(0.0, 1.0, &[(-1.0, 2.0)]).abs() < 1e-12);
    }

    #[test]
    fn the_vehicle_state_is_in_the_map_frame() {
        let w = world(&[(2, 800.0, false)], "");
        let s = vehicle_state(&w, 0, "veh-0", Time::default()).unwrap();
        assert_eq!(s.header.frame_id, "map");
        assert_eq!(s.lane_index, 2);
        assert!((s.pose.position.x - (800.0 - 2.25)).abs() < 1e-9);
        assert!((s.pose.position.y - 7.0).abs() < 1e-9);
        assert!(vehicle_state(&w, 99, "x", Time::default()).is_none());
    }
}
