//! Synthetic sensor data with known truth: a spinning LiDAR ray-cast against the ground and
//! oriented boxes, and radar detections of the same boxes. Used by unit tests, benchmarks
//! and the simulator; the end-to-end tests use an independent Python generator.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use twinlink_msgs::sensor_msgs::msg::PointCloud2;
use twinlink_msgs::twin_msgs::msg::DetectedObject;

use crate::cloud::build_f32_cloud;
use crate::geometry::Mounting;

/// A box standing on the ground, in base_link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneObject {
    /// Center x [m].
    pub x: f64,
    /// Center y [m].
    pub y: f64,
    /// Heading [rad].
    pub yaw: f64,
    /// Size along the heading [m].
    pub length: f64,
    /// Size across [m].
    pub width: f64,
    /// Height [m].
    pub height: f64,
    /// One of DetectedObject::CLASS_*.
    pub class: u8,
    /// Velocity over ground, x [m/s].
    pub vx: f64,
    /// Velocity over ground, y [m/s].
    pub vy: f64,
}

impl SceneObject {
    /// A 4.5 x 1.85 x 1.5 m car.
    pub fn car(x: f64, y: f64, yaw: f64) -> Self {
        SceneObject {
            x,
            y,
            yaw,
            length: 4.5,
            width: 1.85,
            height: 1.5,
            class: DetectedObject::CLASS_CAR,
            vx: 0.0,
            vy: 0.0,
        }
    }

    /// A 10 x 2.5 x 3.5 m truck.
    pub fn truck(x: f64, y: f64, yaw: f64) -> Self {
        SceneObject {
            x,
            y,
            yaw,
            length: 10.0,
            width: 2.5,
            height: 3.5,
            class: DetectedObject::CLASS_TRUCK,
            vx: 0.0,
            vy: 0.0,
        }
    }

    /// A 0.6 x 0.6 x 1.75 m pedestrian.
    pub fn pedestrian(x: f64, y: f64) -> Self {
        SceneObject {
            x,
            y,
            yaw: 0.0,
            length: 0.6,
            width: 0.6,
            height: 1.75,
            class: DetectedObject::CLASS_PEDESTRIAN,
            vx: 0.0,
            vy: 0.0,
        }
    }

    /// The same object moving with velocity (vx, vy) [m/s].
    pub fn moving(mut self, vx: f64, vy: f64) -> Self {
        self.vx = vx;
        self.vy = vy;
        self
    }

    /// The azimuths from `origin` (x, y) that the box's footprint covers, as `(lo, hi)` in
    /// radians with `lo <= hi` and `lo` in [-π, π) (`hi` may exceed π when the box straddles
    /// the rear); `None` when the origin is inside the footprint (every azimuth may hit).
    pub fn azimuth_interval(&self, origin: [f64; 2]) -> Option<(f64, f64)> {
        let (s, c) = self.yaw.sin_cos();
        let (dx, dy) = (origin[0] - self.x, origin[1] - self.y);
        let (lx, ly) = (dx * c + dy * s, -dx * s + dy * c);
        if lx.abs() <= self.length / 2.0 && ly.abs() <= self.width / 2.0 {
            return None;
        }
        let centre = (self.y - origin[1]).atan2(self.x - origin[0]);
        let (mut lo, mut hi) = (0.0f64, 0.0f64);
        for (kx, ky) in [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)] {
            let (cx, cy) = (kx * self.length / 2.0, ky * self.width / 2.0);
            let (wx, wy) = (self.x + cx * c - cy * s, self.y + cx * s + cy * c);
            let a = (wy - origin[1]).atan2(wx - origin[0]);
            let d = (a - centre + std::f64::consts::PI).rem_euclid(std::f64::consts::TAU)
                - std::f64::consts::PI;
            lo = lo.min(d);
            hi = hi.max(d);
        }
        let lo_abs = (centre + lo + std::f64::consts::PI).rem_euclid(std::f64::consts::TAU)
            - std::f64::consts::PI;
        Some((lo_abs, lo_abs + (hi - lo)))
    }

    /// Distance along the ray `origin + t * dir` to the box's surface, if it hits.
    pub fn intersect(&self, origin: [f64; 3], dir: [f64; 3], ground: f64) -> Option<f64> {
        let (s, c) = self.yaw.sin_cos();
        let (ox, oy) = (origin[0] - self.x, origin[1] - self.y);
        let o = [ox * c + oy * s, -ox * s + oy * c, origin[2] - ground];
        let d = [dir[0] * c + dir[1] * s, -dir[0] * s + dir[1] * c, dir[2]];
        let lo = [-self.length / 2.0, -self.width / 2.0, 0.0];
        let hi = [self.length / 2.0, self.width / 2.0, self.height];
        let (mut t0, mut t1) = (0.0f64, f64::INFINITY);
        for k in 0..3 {
            if d[k].abs() < 1e-12 {
                if o[k] < lo[k] || o[k] > hi[k] {
                    return None;
                }
                continue;
            }
            let (a, b) = ((lo[k] - o[k]) / d[k], (hi[k] - o[k]) / d[k]);
            t0 = t0.max(a.min(b));
            t1 = t1.min(a.max(b));
            if t0 > t1 {
                return None;
            }
        }
        (t0 > 0.0).then_some(t0)
    }
}

/// Objects around the vehicle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scene {
    /// The boxes.
    pub objects: Vec<SceneObject>,
}

/// A spinning multi-beam LiDAR.
#[derive(Debug, Clone, PartialEq)]
pub struct LidarModel {
    /// Beams, evenly spread over [lowest, highest] elevation.
    pub beams: usize,
    /// Firings per revolution.
    pub columns: usize,
    /// Elevation of the lowest beam [rad].
    pub lowest: f64,
    /// Elevation of the highest beam [rad].
    pub highest: f64,
    /// Mounting height above base_link [m].
    pub height: f64,
    /// Largest range returned [m].
    pub max_range: f64,
    /// Standard deviation of the range noise [m].
    pub noise_m: f64,
    /// The road rises by this much per metre along x.
    pub ground_slope: f64,
}

impl Default for LidarModel {
    fn default() -> Self {
        LidarModel {
            beams: 64,
            columns: 1024,
            lowest: (-24.8f64).to_radians(),
            highest: 2.0f64.to_radians(),
            height: 1.9,
            max_range: 120.0,
            noise_m: 0.02,
            ground_slope: 0.0,
        }
    }
}

impl LidarModel {
    /// Where this LiDAR sits on the vehicle.
    pub fn mounting(&self) -> Mounting {
        Mounting {
            z: self.height,
            ..Default::default()
        }
    }

    /// One revolution: an unorganized cloud of the returns (x, y, z, intensity as float32)
    /// in the LiDAR's frame. Rays that hit nothing within range return nothing.
    pub fn scan(&self, scene: &Scene, seed: u64) -> PointCloud2 {
        self.scan_culled(scene, seed, true)
    }

    /// [`LidarModel::scan`], testing each ray against only the boxes in its column's
    /// azimuth (`cull`) or against every box.
    fn scan_culled(&self, scene: &Scene, seed: u64, cull: bool) -> PointCloud2 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let noise = Normal::new(0.0, self.noise_m.max(1e-9)).expect("finite sigma");
        let mut values = Vec::with_capacity(self.beams * self.columns);
        let origin = [0.0, 0.0, self.height];
        // Which boxes each column's rays can hit: those whose footprint covers its azimuth
        // (a conservative test, so the hits are those of testing every box).
        let column_of = |azimuth: f64| -> f64 {
            (azimuth + std::f64::consts::PI) / std::f64::consts::TAU * self.columns as f64
        };
        let mut by_column: Vec<Vec<u32>> = vec![Vec::new(); self.columns];
        for (k, o) in scene.objects.iter().enumerate() {
            match o.azimuth_interval([origin[0], origin[1]]).filter(|_| cull) {
                None => by_column.iter_mut().for_each(|c| c.push(k as u32)),
                Some((lo, hi)) => {
                    let first = column_of(lo).floor() as i64 - 1;
                    let last = column_of(hi).ceil() as i64 + 1;
                    let n = self.columns as i64;
                    for col in first..=last.min(first + n - 1) {
                        let list = &mut by_column[col.rem_euclid(n) as usize];
                        if list.last() != Some(&(k as u32)) {
                            list.push(k as u32);
                        }
                    }
                }
            }
        }
        for beam in 0..self.beams {
            let elevation = self.lowest
                + (self.highest - self.lowest) * beam as f64 / (self.beams.max(2) - 1) as f64;
            for (column, boxes) in by_column.iter().enumerate() {
                let azimuth = std::f64::consts::TAU * column as f64 / self.columns as f64
                    - std::f64::consts::PI;
                let dir = [
                    elevation.cos() * azimuth.cos(),
                    elevation.cos() * azimuth.sin(),
                    elevation.sin(),
                ];
                // Ground z = slope * x: solve origin.z + t dir.z = slope (origin.x + t dir.x).
                let denom = dir[2] - self.ground_slope * dir[0];
                let mut hit =
                    (denom < -1e-9).then(|| (self.ground_slope * origin[0] - origin[2]) / denom);
                let mut intensity = 0.1f32;
                for &k in boxes {
                    let o = &scene.objects[k as usize];
                    if let Some(t) = o.intersect(origin, dir, self.ground_slope * o.x) {
                        if hit.is_none_or(|h| t < h) {
                            hit = Some(t);
                            intensity = 0.6;
                        }
                    }
                }
                let Some(t) = hit.filter(|t| *t <= self.max_range) else {
                    continue;
                };
                let r = t + noise.sample(&mut rng);
                values.push(vec![
                    (r * dir[0]) as f32,
                    (r * dir[1]) as f32,
                    (r * dir[2]) as f32,
                    intensity + rng.random_range(0.0..0.05),
                ]);
            }
        }
        build_f32_cloud("lidar_top", &["x", "y", "z", "intensity"], &values)
    }
}

/// The highway scene of the LiDAR benchmark: 24 vehicles on four lanes and a pedestrian.
pub fn benchmark_scene() -> Scene {
    let mut objects = Vec::new();
    for (lane, y) in [-5.25f64, -1.75, 1.75, 5.25].into_iter().enumerate() {
        for k in 0..6 {
            let x = -50.0 + 22.0 * k as f64 + 7.0 * lane as f64;
            if x.abs() < 6.0 && y.abs() < 2.0 {
                continue;
            }
            objects.push(if (k + lane) % 5 == 0 {
                SceneObject::truck(x, y, 0.0)
            } else {
                SceneObject::car(x, y, 0.02 * k as f64)
            });
        }
    }
    objects.push(SceneObject::pedestrian(6.0, 9.0));
    Scene { objects }
}

/// A LiDAR whose scan of `scene` has at least `points` returns (columns chosen to fit).
pub fn lidar_with_points(scene: &Scene, points: usize) -> LidarModel {
    let mut model = LidarModel {
        columns: 512,
        ..LidarModel::default()
    };
    let probe = model.scan(scene, 0).width as usize;
    model.columns = (512 * points).div_ceil(probe.max(1)) + 8;
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rays_hit_boxes_before_the_ground() {
        let car = SceneObject::car(10.0, 0.0, 0.0);
        let t = car
            .intersect([0.0, 0.0, 1.0], [1.0, 0.0, 0.0], 0.0)
            .unwrap();
        assert!((t - 7.75).abs() < 1e-9);
        assert!(car
            .intersect([0.0, 0.0, 2.0], [1.0, 0.0, 0.0], 0.0)
            .is_none());
        let cloud = LidarModel::default().scan(&Scene { objects: vec![car] }, 1);
        assert!(cloud.width > 30_000);
    }

    #[test]
    fn culling_by_azimuth_keeps_every_hit() {
        // A box behind (straddling ±π), a rotated one, a pedestrian, a box around the origin.
        let mut scene = Scene {
            objects: vec![
                SceneObject::truck(-20.0, 0.3, 0.1),
                SceneObject::car(12.0, 4.0, 0.7),
                SceneObject::car(-7.0, -3.5, 3.0),
                SceneObject::pedestrian(3.0, -2.0),
            ],
        };
        let model = LidarModel {
            beams: 16,
            columns: 720,
            ..LidarModel::default()
        };
        let culled = model.scan_culled(&scene, 4, true);
        assert_eq!(culled, model.scan_culled(&scene, 4, false));
        // Returns from the boxes (intensity 0.6 and above), not only the ground.
        let box_hits = culled
            .data
            .chunks(culled.point_step as usize)
            .filter(|p| f32::from_le_bytes(p[12..16].try_into().unwrap()) >= 0.6)
            .count();
        assert!(box_hits > 200, "{box_hits}");
        scene.objects.push(SceneObject::car(0.5, 0.0, 0.0));
        assert_eq!(
            model.scan_culled(&scene, 4, true),
            model.scan_culled(&scene, 4, false)
        );
        // Every azimuth interval contains the bearing of the box centre.
        for o in &scene.objects[..4] {
            let (lo, hi) = o.azimuth_interval([0.0, 0.0]).unwrap();
            let b = o.y.atan2(o.x);
            let tau = std::f64::consts::TAU;
            assert!(
                (lo..=hi).contains(&b) || (lo..=hi).contains(&(b + tau)),
                "{o:?} {lo} {hi} {b}"
            );
        }
        assert_eq!(scene.objects[4].azimuth_interval([0.0, 0.0]), None);
    }

    #[test]
    fn benchmark_cloud_has_the_requested_size() {
        let scene = benchmark_scene();
        let model = lidar_with_points(&scene, 120_000);
        let n = model.scan(&scene, 1).width;
        assert!((120_000..125_000).contains(&n), "{n}");
    }
}

/// A radar returning detections from the visible faces of boxes, with radial velocity.
#[derive(Debug, Clone, PartialEq)]
pub struct RadarModel {
    /// Full horizontal field of view [rad].
    pub horizontal_fov: f64,
    /// Rays per frame across the field of view (at one elevation).
    pub rays: usize,
    /// Largest range [m].
    pub max_range: f64,
    /// Standard deviation of the radial velocity noise [m/s].
    pub velocity_noise: f64,
    /// carla-ros-bridge layout (x, y, z, Range, Velocity, AzimuthAngle, ElevationAngle) if
    /// true, plain (x, y, z, velocity) if false.
    pub carla_layout: bool,
}

impl Default for RadarModel {
    fn default() -> Self {
        RadarModel {
            horizontal_fov: 30f64.to_radians(),
            rays: 240,
            max_range: 150.0,
            velocity_noise: 0.1,
            carla_layout: true,
        }
    }
}

impl RadarModel {
    /// One frame of detections in the radar's frame, for a vehicle moving with `ego`.
    pub fn scan(
        &self,
        scene: &Scene,
        mounting: &Mounting,
        ego: crate::radar::EgoMotion,
        seed: u64,
    ) -> PointCloud2 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let noise = Normal::new(0.0, self.velocity_noise.max(1e-9)).expect("finite sigma");
        let origin = [mounting.x, mounting.y, mounting.z];
        let v_sensor = [
            ego.vx - ego.yaw_rate * mounting.y,
            ego.vy + ego.yaw_rate * mounting.x,
        ];
        let mut values = Vec::new();
        for k in 0..self.rays {
            let az_local = -self.horizontal_fov / 2.0
                + self.horizontal_fov * (k as f64 + 0.5) / self.rays as f64;
            let az = az_local + mounting.yaw;
            let dir = [az.cos(), az.sin(), 0.0];
            let mut best: Option<(f64, &SceneObject)> = None;
            for o in &scene.objects {
                if let Some(t) = o.intersect(origin, dir, -mounting.z + origin[2] - 0.0 - origin[2])
                {
                    if t <= self.max_range && best.is_none_or(|(b, _)| t < b) {
                        best = Some((t, o));
                    }
                }
            }
            let Some((t, o)) = best else { continue };
            // Keep about one ray in three: radar returns are sparse.
            if k % 3 != 0 {
                continue;
            }
            let rel = [o.vx - v_sensor[0], o.vy - v_sensor[1]];
            let range_rate = rel[0] * dir[0] + rel[1] * dir[1] + noise.sample(&mut rng);
            let (x, y) = (t * az_local.cos(), t * az_local.sin());
            let mut row = vec![x as f32, y as f32, 0.0f32];
            if self.carla_layout {
                row.extend([t as f32, range_rate as f32, az_local as f32, 0.0]);
            } else {
                row.push(range_rate as f32);
            }
            values.push(row);
        }
        let names: &[&str] = if self.carla_layout {
            &[
                "x",
                "y",
                "z",
                "Range",
                "Velocity",
                "AzimuthAngle",
                "ElevationAngle",
            ]
        } else {
            &["x", "y", "z", "velocity"]
        };
        build_f32_cloud("radar_front", names, &values)
    }
}
