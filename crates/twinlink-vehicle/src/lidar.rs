//! The LiDAR summarizer: a point cloud in, a list of boxed, classified objects out.
//!
//! Stages, each O(points):
//! 1. **Crop** to the configured range and height band, and drop the vehicle's own body.
//! 2. **Ground removal** on a polar grid: the lowest point of each (sector, range bin) cell
//!    is a ground candidate; walking outward along each sector, a candidate is accepted as
//!    ground when its cell is flat (its points rise no more than the road can within it) and
//!    it continues the last accepted ground height within the allowed slope, so the bottoms
//!    of objects are not mistaken for a step in the road. Points higher than
//!    `ground_height_threshold` above their cell's ground are kept.
//! 3. **Voxel downsampling** of what is left (centroid per voxel, weighted by points).
//! 4. **Euclidean clustering**: voxels closer than `cluster_tolerance` in the ground plane
//!    and `cluster_vertical_tolerance` in height join one cluster (spatial hash of cell size
//!    `cluster_tolerance` and union-find). The looser vertical gap bridges the rows of a
//!    LiDAR with few beams (16 beams leave 0.7 m between rows at 20 m).
//! 5. **Box fitting**: search-based L-shape fitting (closeness criterion, Zhang et al.,
//!    "Efficient L-Shape Fitting for Vehicle Detection Using Laser Scanners", IV 2017) in
//!    1 degree steps, then a **class by size**, then the box is **completed to the class's
//!    typical size** on the side hidden from the sensor (a LiDAR sees at most two faces of
//!    a car), as Autoware's shape estimation does with its vehicle correctors.
//! 6. **Identity**: each object keeps the id of the nearest object of the previous frame
//!    within `association_gate`.

use std::time::Instant;

use petgraph::unionfind::UnionFind;
use rustc_hash::FxHashMap;
use twinlink_msgs::geometry_msgs::msg::{Point, Vector3};
use twinlink_msgs::sensor_msgs::msg::PointCloud2;
use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary};

use crate::cloud::{self, CloudError};
use crate::geometry::{fold_half_turn, Mounting};
use crate::identity::IdAssigner;
use crate::params::{ParamSpec, Params};

/// Settings of the LiDAR pipeline (the node's parameters; see the package README).
#[derive(Debug, Clone, PartialEq)]
pub struct LidarConfig {
    /// Name of the sensor in summaries.
    pub sensor_id: String,
    /// The sensor's pose in base_link.
    pub mounting: Mounting,
    /// Points closer than this to the sensor are ignored [m].
    pub min_range: f32,
    /// Points farther than this from the sensor are ignored [m].
    pub max_range: f32,
    /// Points above this height in base_link are ignored (bridges, signs) [m].
    pub max_height: f32,
    /// Half-length of the box around base_link's origin holding the vehicle's own body,
    /// forward [m].
    pub ego_front: f32,
    /// ... backward [m].
    pub ego_rear: f32,
    /// ... half its width [m].
    pub ego_half_width: f32,
    /// Height of the ground at base_link's origin [m] (0 when base_link is on the ground).
    pub ground_z: f32,
    /// Angular width of a ground sector [rad].
    pub ground_sector: f32,
    /// Radial length of a ground bin [m].
    pub ground_bin: f32,
    /// Steepest road slope followed by the ground estimate [rad].
    pub ground_max_slope: f32,
    /// Points less than this above their cell's ground are ground [m].
    pub ground_height_threshold: f32,
    /// Edge of a downsampling voxel [m].
    pub voxel_size: f32,
    /// Voxels closer than this belong to the same object [m].
    pub cluster_tolerance: f32,
    /// Voxels this far apart in height (and within `cluster_tolerance` in the ground plane)
    /// belong to the same object [m].
    pub cluster_vertical_tolerance: f32,
    /// Clusters of fewer raw points are noise.
    pub min_cluster_points: usize,
    /// Clusters of more raw points are split off as unknown structure (walls, barriers).
    pub max_cluster_points: usize,
    /// Objects longer than this are structure, not objects [m].
    pub max_object_length: f32,
    /// Largest distance an object moves between frames and keeps its id [m].
    pub association_gate: f32,
    /// Largest accepted cloud [points].
    pub max_points: usize,
}

impl Default for LidarConfig {
    fn default() -> Self {
        LidarConfig {
            sensor_id: "lidar_top".into(),
            mounting: Mounting {
                z: 1.9,
                ..Default::default()
            },
            min_range: 1.0,
            max_range: 100.0,
            max_height: 4.5,
            ego_front: 3.9,
            ego_rear: 1.1,
            ego_half_width: 1.1,
            ground_z: 0.0,
            ground_sector: 1.0f32.to_radians(),
            ground_bin: 1.0,
            ground_max_slope: 8.0f32.to_radians(),
            ground_height_threshold: 0.2,
            voxel_size: 0.15,
            cluster_tolerance: 0.6,
            cluster_vertical_tolerance: 1.5,
            min_cluster_points: 6,
            max_cluster_points: 60_000,
            max_object_length: 20.0,
            association_gate: 2.5,
            max_points: cloud::DEFAULT_MAX_POINTS,
        }
    }
}

/// The LiDAR summarizer node's parameters, with defaults and ranges.
pub fn parameters() -> Vec<ParamSpec> {
    let d = LidarConfig::default();
    let mut specs = vec![
        ParamSpec::string(
            "sensor_id",
            &d.sensor_id,
            &[],
            "name of the sensor in summaries",
        ),
        ParamSpec::double(
            "min_range",
            d.min_range as f64,
            0.0,
            50.0,
            "ignore returns closer to the sensor [m]",
        ),
        ParamSpec::double(
            "max_range",
            d.max_range as f64,
            5.0,
            300.0,
            "ignore returns farther from the sensor [m]",
        ),
        ParamSpec::double(
            "max_height",
            d.max_height as f64,
            1.0,
            20.0,
            "ignore returns higher in base_link (bridges, signs) [m]",
        ),
        ParamSpec::double(
            "ego_front",
            d.ego_front as f64,
            0.0,
            20.0,
            "own body extends this far forward of base_link [m]",
        ),
        ParamSpec::double(
            "ego_rear",
            d.ego_rear as f64,
            0.0,
            20.0,
            "own body extends this far behind base_link [m]",
        ),
        ParamSpec::double(
            "ego_half_width",
            d.ego_half_width as f64,
            0.0,
            3.0,
            "half the width of the own body [m]",
        ),
        ParamSpec::double(
            "ground_z",
            d.ground_z as f64,
            -3.0,
            3.0,
            "ground height at base_link's origin [m]",
        ),
        ParamSpec::double(
            "ground_sector",
            d.ground_sector as f64,
            0.002,
            0.2,
            "angular width of a ground sector [rad]",
        ),
        ParamSpec::double(
            "ground_bin",
            d.ground_bin as f64,
            0.1,
            5.0,
            "radial length of a ground bin [m]",
        ),
        ParamSpec::double(
            "ground_max_slope",
            d.ground_max_slope as f64,
            0.0,
            0.5,
            "steepest road slope followed [rad]",
        ),
        ParamSpec::double(
            "ground_height_threshold",
            d.ground_height_threshold as f64,
            0.02,
            1.0,
            "points this close above the ground are ground [m]",
        ),
        ParamSpec::double(
            "voxel_size",
            d.voxel_size as f64,
            0.02,
            1.0,
            "edge of a downsampling voxel [m]",
        ),
        ParamSpec::double(
            "cluster_tolerance",
            d.cluster_tolerance as f64,
            0.1,
            3.0,
            "largest gap inside one object [m]",
        ),
        ParamSpec::double(
            "cluster_vertical_tolerance",
            d.cluster_vertical_tolerance as f64,
            0.1,
            5.0,
            "largest height gap inside one object [m]",
        ),
        ParamSpec::int(
            "min_cluster_points",
            d.min_cluster_points as i64,
            1,
            10_000,
            "fewer returns are noise",
        ),
        ParamSpec::int(
            "max_cluster_points",
            d.max_cluster_points as i64,
            10,
            2_000_000,
            "more returns are structure (walls)",
        ),
        ParamSpec::double(
            "max_object_length",
            d.max_object_length as f64,
            1.0,
            100.0,
            "longer clusters are structure [m]",
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
            20_000_000,
            "larger clouds are refused [points]",
        ),
        ParamSpec::bool("publish_debug_markers", true, "publish ~/debug/markers"),
    ];
    specs.extend(crate::params::mounting_specs(d.mounting));
    specs
}

impl LidarConfig {
    /// The configuration from validated parameters (see [`parameters`]).
    pub fn from_params(p: &Params) -> Self {
        LidarConfig {
            sensor_id: p.str("sensor_id").to_string(),
            mounting: crate::params::mounting_from(p),
            min_range: p.f32("min_range"),
            max_range: p.f32("max_range"),
            max_height: p.f32("max_height"),
            ego_front: p.f32("ego_front"),
            ego_rear: p.f32("ego_rear"),
            ego_half_width: p.f32("ego_half_width"),
            ground_z: p.f32("ground_z"),
            ground_sector: p.f32("ground_sector"),
            ground_bin: p.f32("ground_bin"),
            ground_max_slope: p.f32("ground_max_slope"),
            ground_height_threshold: p.f32("ground_height_threshold"),
            voxel_size: p.f32("voxel_size"),
            cluster_tolerance: p.f32("cluster_tolerance"),
            cluster_vertical_tolerance: p.f32("cluster_vertical_tolerance"),
            min_cluster_points: p.usize("min_cluster_points"),
            max_cluster_points: p.usize("max_cluster_points"),
            max_object_length: p.f32("max_object_length"),
            association_gate: p.f32("association_gate"),
            max_points: p.usize("max_points"),
        }
    }
}

/// Typical size of each class (length, width, height) [m], used to complete boxes.
pub fn class_prior(class: u8) -> Option<[f32; 3]> {
    match class {
        DetectedObject::CLASS_CAR => Some([4.5, 1.85, 1.5]),
        DetectedObject::CLASS_TRUCK => Some([10.0, 2.5, 3.5]),
        DetectedObject::CLASS_PEDESTRIAN => Some([0.6, 0.6, 1.75]),
        DetectedObject::CLASS_BICYCLE => Some([1.8, 0.6, 1.7]),
        _ => None,
    }
}

/// What one frame went through, for diagnostics and TwinStatus.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameStats {
    /// Points in the cloud.
    pub input_points: usize,
    /// Points with a NaN or infinite coordinate.
    pub non_finite: usize,
    /// Points outside range, height band, or on the vehicle's own body.
    pub cropped: usize,
    /// Ground points.
    pub ground: usize,
    /// Voxels after downsampling.
    pub voxels: usize,
    /// Clusters found.
    pub clusters: usize,
    /// Clusters too small to be objects.
    pub noise_clusters: usize,
    /// Clusters too large or long to be objects.
    pub structure_clusters: usize,
    /// Objects reported.
    pub objects: usize,
    /// Wall time of the pipeline [s].
    pub seconds: f64,
}

/// The LiDAR summarizer; keeps the previous frame's objects for stable ids.
pub struct LidarSummarizer {
    config: LidarConfig,
    ids: IdAssigner,
    ground: Vec<f32>,
    highest: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Voxel {
    sum: [f32; 3],
    count: u32,
}

impl LidarSummarizer {
    /// A summarizer with these settings.
    pub fn new(config: LidarConfig) -> Self {
        LidarSummarizer {
            config: config.clone(),
            ids: IdAssigner::new(config.association_gate as f64),
            ground: Vec::new(),
            highest: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &LidarConfig {
        &self.config
    }

    /// Summarizes one cloud (in the sensor's frame) into objects in base_link.
    pub fn summarize(
        &mut self,
        cloud: &PointCloud2,
    ) -> Result<(PerceptionSummary, FrameStats), CloudError> {
        let started = Instant::now();
        let mut points = cloud::read_xyz(cloud, self.config.max_points)?;
        let mut stats = FrameStats {
            input_points: points.xyz.len() + points.non_finite,
            non_finite: points.non_finite,
            ..Default::default()
        };
        self.config.mounting.apply(&mut points.xyz);
        let objects = self.detect(&points.xyz, &mut stats);
        stats.seconds = started.elapsed().as_secs_f64();
        let summary = PerceptionSummary {
            header: twinlink_msgs::std_msgs::msg::Header {
                stamp: cloud.header.stamp.clone(),
                frame_id: "base_link".into(),
            },
            sensor_id: self.config.sensor_id.clone(),
            sensor_kind: PerceptionSummary::SENSOR_LIDAR,
            sensor_pose: self.config.mounting.pose(),
            horizontal_fov: std::f32::consts::TAU,
            vertical_fov: 0.0,
            min_range: self.config.min_range,
            max_range: self.config.max_range,
            objects,
            raw_bytes: cloud.data.len() as u64,
            processing_time: stats.seconds as f32,
        };
        Ok((summary, stats))
    }

    /// Runs stages 1-6 on points already in base_link.
    pub fn detect(&mut self, points: &[[f32; 3]], stats: &mut FrameStats) -> Vec<DetectedObject> {
        let c = &self.config;
        let sensor = [c.mounting.x as f32, c.mounting.y as f32];
        let sectors = ((std::f32::consts::TAU / c.ground_sector).ceil() as usize).max(1);
        let bins = ((c.max_range / c.ground_bin).ceil() as usize + 1).max(1);

        // 1. Crop, and the lowest point of every polar cell.
        let min_r2 = c.min_range * c.min_range;
        let max_r2 = c.max_range * c.max_range;
        let mut kept: Vec<([f32; 3], u32)> = Vec::with_capacity(points.len());
        self.ground.clear();
        self.ground.resize(sectors * bins, f32::INFINITY);
        self.highest.clear();
        self.highest.resize(sectors * bins, f32::NEG_INFINITY);
        let sector_scale = sectors as f32 / std::f32::consts::TAU;
        for p in points {
            let (dx, dy) = (p[0] - sensor[0], p[1] - sensor[1]);
            let r2 = dx * dx + dy * dy;
            let on_ego = p[0] < c.ego_front && p[0] > -c.ego_rear && p[1].abs() < c.ego_half_width;
            if r2 < min_r2 || r2 > max_r2 || p[2] > c.max_height || on_ego {
                stats.cropped += 1;
                continue;
            }
            let sector =
                (((dy.atan2(dx) + std::f32::consts::PI) * sector_scale) as usize).min(sectors - 1);
            let bin = ((r2.sqrt() / c.ground_bin) as usize).min(bins - 1);
            let cell = (sector * bins + bin) as u32;
            let lowest = &mut self.ground[cell as usize];
            *lowest = lowest.min(p[2]);
            let highest = &mut self.highest[cell as usize];
            *highest = highest.max(p[2]);
            kept.push((*p, cell));
        }

        // 2. Ground height per cell, walking outward along each sector.
        let slope = c.ground_max_slope.tan();
        for sector in 0..sectors {
            let row = &mut self.ground[sector * bins..(sector + 1) * bins];
            let tops = &self.highest[sector * bins..(sector + 1) * bins];
            let (mut last_z, mut last_r) = (c.ground_z, 0.0f32);
            // A cell whose points rise more than the road can within it holds something
            // standing (the bottom of a car's face), not road.
            let flat = c.ground_height_threshold + slope * c.ground_bin;
            for (bin, (cell, top)) in row.iter_mut().zip(tops).enumerate() {
                let r = (bin as f32 + 0.5) * c.ground_bin;
                let candidate = *cell;
                let allowed = c.ground_height_threshold + slope * (r - last_r);
                if candidate.is_finite()
                    && top - candidate <= flat
                    && (candidate - last_z).abs() <= allowed
                {
                    last_z = candidate;
                    last_r = r;
                }
                *cell = last_z;
            }
        }

        // 3. Voxel downsampling of the points above ground.
        let inv_voxel = 1.0 / c.voxel_size;
        let mut voxel_index: FxHashMap<u64, u32> = FxHashMap::default();
        let mut voxels: Vec<Voxel> = Vec::new();
        // Ground height under each voxel (the lowest of its points' cells).
        let mut voxel_ground: Vec<f32> = Vec::new();
        for (p, cell) in &kept {
            let ground = self.ground[*cell as usize];
            if p[2] < ground + c.ground_height_threshold {
                stats.ground += 1;
                continue;
            }
            let key = voxel_key(p, inv_voxel);
            let index = *voxel_index.entry(key).or_insert_with(|| {
                voxels.push(Voxel {
                    sum: [0.0; 3],
                    count: 0,
                });
                voxel_ground.push(ground);
                (voxels.len() - 1) as u32
            });
            let v = &mut voxels[index as usize];
            v.sum[0] += p[0];
            v.sum[1] += p[1];
            v.sum[2] += p[2];
            v.count += 1;
            let g = &mut voxel_ground[index as usize];
            *g = g.min(ground);
        }
        stats.voxels = voxels.len();
        let centroids: Vec<[f32; 3]> = voxels
            .iter()
            .map(|v| {
                let n = v.count as f32;
                [v.sum[0] / n, v.sum[1] / n, v.sum[2] / n]
            })
            .collect();

        // 4. Euclidean clustering: spatial hash on (x, y) and union-find.
        let tol = c.cluster_tolerance;
        let vtol = c.cluster_vertical_tolerance;
        let inv_cell = 1.0 / tol;
        let mut cells: FxHashMap<(i32, i32), Vec<u32>> = FxHashMap::default();
        for (i, p) in centroids.iter().enumerate() {
            let key = (
                (p[0] * inv_cell).floor() as i32,
                (p[1] * inv_cell).floor() as i32,
            );
            cells.entry(key).or_default().push(i as u32);
        }
        let mut sets = UnionFind::<u32>::new(centroids.len());
        let tol2 = tol * tol;
        for (&(cx, cy), members) in &cells {
            for dx in 0..=1 {
                for dy in -1..=1 {
                    // Each unordered pair of neighbouring cells once.
                    if dx == 0 && dy == -1 {
                        continue;
                    }
                    let Some(other) = cells.get(&(cx + dx, cy + dy)) else {
                        continue;
                    };
                    let same = dx == 0 && dy == 0;
                    for (k, &a) in members.iter().enumerate() {
                        let pa = centroids[a as usize];
                        let candidates = if same { &other[k + 1..] } else { &other[..] };
                        for &b in candidates {
                            let pb = centroids[b as usize];
                            let d2 = (pa[0] - pb[0]).powi(2) + (pa[1] - pb[1]).powi(2);
                            if d2 <= tol2 && (pa[2] - pb[2]).abs() <= vtol {
                                sets.union(a, b);
                            }
                        }
                    }
                }
            }
        }
        let mut clusters: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
        for i in 0..centroids.len() as u32 {
            clusters.entry(sets.find_mut(i)).or_default().push(i);
        }
        stats.clusters = clusters.len();

        // 5. Boxes and classes. A sparse LiDAR samples a face seen at a grazing angle in
        // strips farther apart than the tolerance; a cluster that lies inside another's
        // completed box is part of that object and is merged into it before the final fit.
        let mut ordered: Vec<Vec<u32>> = clusters.into_values().collect();
        // Deterministic order: by the first voxel index.
        ordered.sort_unstable_by_key(|m| m[0]);
        let mut groups: Vec<Group> = Vec::new();
        for members in ordered {
            let raw: usize = members
                .iter()
                .map(|&i| voxels[i as usize].count as usize)
                .sum();
            if raw > c.max_cluster_points {
                stats.structure_clusters += 1;
                continue;
            }
            groups.push(Group {
                points: members.iter().map(|&i| centroids[i as usize]).collect(),
                ground: members
                    .iter()
                    .map(|&i| voxel_ground[i as usize])
                    .fold(f32::INFINITY, f32::min),
                raw,
                object: None,
                merged: false,
            });
        }
        for g in &mut groups {
            g.object = fit_object(&g.points, g.ground, sensor, c);
        }
        let mut by_size: Vec<usize> = (0..groups.len()).collect();
        by_size.sort_by_key(|&i| std::cmp::Reverse(groups[i].raw));
        for (k, &i) in by_size.iter().enumerate() {
            if groups[i].merged || groups[i].raw < c.min_cluster_points {
                continue;
            }
            let Some(host) = groups[i].object.clone() else {
                continue;
            };
            let mut grew = false;
            for &j in &by_size[k + 1..] {
                let j_inside_host = groups[j]
                    .points
                    .iter()
                    .all(|p| inside(&host, p, MERGE_MARGIN));
                let host_inside_j = groups[j]
                    .object
                    .as_ref()
                    .is_some_and(|o| groups[i].points.iter().all(|p| inside(o, p, MERGE_MARGIN)));
                if groups[j].merged || !(j_inside_host || host_inside_j) {
                    continue;
                }
                let (points, ground, raw) = (
                    std::mem::take(&mut groups[j].points),
                    groups[j].ground,
                    groups[j].raw,
                );
                groups[j].merged = true;
                let g = &mut groups[i];
                g.points.extend(points);
                g.ground = g.ground.min(ground);
                g.raw += raw;
                grew = true;
            }
            if grew {
                let g = &mut groups[i];
                g.object = fit_object(&g.points, g.ground, sensor, c);
            }
        }
        let mut found: Vec<DetectedObject> = Vec::new();
        for g in groups.into_iter().filter(|g| !g.merged) {
            if g.raw < c.min_cluster_points {
                stats.noise_clusters += 1;
                continue;
            }
            match g.object {
                Some(o) => found.push(o),
                None => stats.structure_clusters += 1,
            }
        }

        // 6. Ids from the previous frame.
        self.ids.assign(&mut found);
        stats.objects = found.len();
        found
    }
}

/// How far outside an object's box a cluster may reach and still be merged into it [m].
const MERGE_MARGIN: f32 = 0.3;

struct Group {
    points: Vec<[f32; 3]>,
    ground: f32,
    raw: usize,
    object: Option<DetectedObject>,
    merged: bool,
}

/// True if `p` lies within `margin` of the object's box in the ground plane.
fn inside(o: &DetectedObject, p: &[f32; 3], margin: f32) -> bool {
    let (s, c) = o.yaw.sin_cos();
    let (dx, dy) = (p[0] as f64 - o.position.x, p[1] as f64 - o.position.y);
    let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
    u.abs() <= o.dimensions.x / 2.0 + margin as f64
        && v.abs() <= o.dimensions.y / 2.0 + margin as f64
}

fn voxel_key(p: &[f32; 3], inv: f32) -> u64 {
    let ix = ((p[0] * inv).floor() as i64 + (1 << 20)) as u64 & 0x1F_FFFF;
    let iy = ((p[1] * inv).floor() as i64 + (1 << 20)) as u64 & 0x1F_FFFF;
    let iz = ((p[2] * inv).floor() as i64 + (1 << 20)) as u64 & 0x1F_FFFF;
    ix << 42 | iy << 21 | iz
}

/// An oriented rectangle in the ground plane found by L-shape fitting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rectangle {
    /// Direction of the first axis [rad].
    pub theta: f32,
    /// Extent along the first axis: min and max of p . e1 [m].
    pub a: [f32; 2],
    /// Extent along the second axis: min and max of p . e2 [m].
    pub b: [f32; 2],
}

/// Search-based L-shape fitting with the closeness criterion, 1 degree steps over a
/// quarter turn.
pub fn fit_rectangle(points: &[[f32; 3]]) -> Rectangle {
    const D0: f32 = 0.01;
    let mut best = (
        f32::NEG_INFINITY,
        Rectangle {
            theta: 0.0,
            a: [0.0; 2],
            b: [0.0; 2],
        },
    );
    let mut c1 = Vec::with_capacity(points.len());
    let mut c2 = Vec::with_capacity(points.len());
    for step in 0..90 {
        let theta = (step as f32).to_radians();
        let (s, c) = theta.sin_cos();
        c1.clear();
        c2.clear();
        let (mut a, mut b) = (
            [f32::INFINITY, f32::NEG_INFINITY],
            [f32::INFINITY, f32::NEG_INFINITY],
        );
        for p in points {
            let u = p[0] * c + p[1] * s;
            let v = -p[0] * s + p[1] * c;
            a = [a[0].min(u), a[1].max(u)];
            b = [b[0].min(v), b[1].max(v)];
            c1.push(u);
            c2.push(v);
        }
        let mut score = 0.0;
        for (u, v) in c1.iter().zip(&c2) {
            let d1 = (a[1] - u).min(u - a[0]);
            let d2 = (b[1] - v).min(v - b[0]);
            score += 1.0 / d1.min(d2).max(D0);
        }
        if score > best.0 {
            best = (score, Rectangle { theta, a, b });
        }
    }
    best.1
}

/// Class by visible size: (footprint's longer side, height above ground).
pub fn classify(footprint: f32, height: f32) -> (u8, f32) {
    if height > 2.6 || footprint > 6.5 {
        (DetectedObject::CLASS_TRUCK, 0.7)
    } else if height < 0.9 {
        (DetectedObject::CLASS_STATIC_OBSTACLE, 0.5)
    } else if footprint >= 1.3 {
        (DetectedObject::CLASS_CAR, 0.7)
    } else if height <= 2.2 {
        (DetectedObject::CLASS_PEDESTRIAN, 0.5)
    } else {
        (DetectedObject::CLASS_UNKNOWN, 0.3)
    }
}

/// Completes one visible extent `[lo, hi]` to `size`, growing away from the sensor at
/// coordinate `sensor` on the same axis. Returns the new extent and whether it grew.
fn complete_extent(extent: [f32; 2], size: f32, sensor: f32) -> ([f32; 2], bool) {
    if extent[1] - extent[0] >= size {
        return (extent, false);
    }
    if sensor <= extent[0] {
        ([extent[0], extent[0] + size], true)
    } else if sensor >= extent[1] {
        ([extent[1] - size, extent[1]], true)
    } else {
        // The sensor is beside the object on this axis: both ends are seen; grow evenly.
        let middle = (extent[0] + extent[1]) / 2.0;
        ([middle - size / 2.0, middle + size / 2.0], true)
    }
}

fn fit_object(
    pts: &[[f32; 3]],
    ground: f32,
    sensor: [f32; 2],
    c: &LidarConfig,
) -> Option<DetectedObject> {
    let top = pts.iter().map(|p| p[2]).fold(f32::NEG_INFINITY, f32::max);
    let ground = if ground.is_finite() {
        ground
    } else {
        c.ground_z
    };
    let height = (top - ground).max(c.voxel_size);
    let rect = fit_rectangle(pts);
    let (mut a, mut b) = (rect.a, rect.b);
    let (la, lb) = (a[1] - a[0], b[1] - b[0]);
    let footprint = la.max(lb);
    if footprint > c.max_object_length {
        return None;
    }
    let (class, confidence) = classify(footprint, height);
    let (s, co) = rect.theta.sin_cos();
    let sensor_a = sensor[0] * co + sensor[1] * s;
    let sensor_b = -sensor[0] * s + sensor[1] * co;
    // Which axis is the object's length: a side clearly longer than the class's width is a
    // long side; otherwise the visible face is the front or rear and the length is hidden
    // along the other axis.
    let mut completed = false;
    let length_is_a = if let Some([length, width, _]) = class_prior(class) {
        let longer_is_a = la >= lb;
        let longer = la.max(lb);
        let length_is_a = if longer > width + 0.4 {
            longer_is_a
        } else {
            !longer_is_a
        };
        let (len_ext, wid_ext) = if length_is_a {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let (len_sensor, wid_sensor) = if length_is_a {
            (sensor_a, sensor_b)
        } else {
            (sensor_b, sensor_a)
        };
        let (l, grew_l) = complete_extent(*len_ext, length, len_sensor);
        let (w, grew_w) = complete_extent(*wid_ext, width, wid_sensor);
        *len_ext = l;
        *wid_ext = w;
        completed = grew_l || grew_w;
        length_is_a
    } else {
        la >= lb
    };
    let (ca, cb) = ((a[0] + a[1]) / 2.0, (b[0] + b[1]) / 2.0);
    let (x, y) = (ca * co - cb * s, ca * s + cb * co);
    let (length, width, yaw) = if length_is_a {
        (a[1] - a[0], b[1] - b[0], rect.theta)
    } else {
        (
            b[1] - b[0],
            a[1] - a[0],
            rect.theta + std::f32::consts::FRAC_PI_2,
        )
    };
    let range = ((x - sensor[0]).powi(2) + (y - sensor[1]).powi(2)).sqrt();
    let sigma = 0.05 + 0.002 * range + if completed { 0.25 } else { 0.0 };
    let var = sigma * sigma;
    Some(DetectedObject {
        id: 0,
        classification: class,
        class_confidence: confidence,
        existence_probability: (0.5 + 0.05 * pts.len() as f32).min(0.95),
        position: Point {
            x: x as f64,
            y: y as f64,
            z: ((ground + top) / 2.0) as f64,
        },
        yaw: fold_half_turn(yaw as f64),
        dimensions: Vector3 {
            x: length.max(c.voxel_size) as f64,
            y: width.max(c.voxel_size) as f64,
            z: height as f64,
        },
        has_velocity: false,
        velocity: Vector3::default(),
        position_covariance: [var, 0.0, 0.0, 0.0, var, 0.0, 0.0, 0.0, 0.04],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{LidarModel, Scene, SceneObject};

    fn scene() -> Scene {
        Scene {
            objects: vec![
                SceneObject::car(20.0, 0.0, 0.0),
                SceneObject::car(12.0, 3.6, 0.05),
                SceneObject::car(-15.0, -3.5, 0.0),
                SceneObject::truck(35.0, -3.6, 0.0),
                SceneObject::pedestrian(8.0, 7.0),
            ],
        }
    }

    #[test]
    fn finds_every_object_within_a_few_decimetres_and_nothing_else() {
        let scene = scene();
        let model = LidarModel {
            noise_m: 0.02,
            ..LidarModel::default()
        };
        let cloud = model.scan(&scene, 7);
        let mut s = LidarSummarizer::new(LidarConfig {
            mounting: model.mounting(),
            ..Default::default()
        });
        let (summary, stats) = s.summarize(&cloud).unwrap();
        assert_eq!(
            summary.objects.len(),
            scene.objects.len(),
            "{stats:?}\n{:?}",
            summary
                .objects
                .iter()
                .map(|o| (
                    o.position.x as f32,
                    o.position.y as f32,
                    o.position.z as f32,
                    o.dimensions.x as f32,
                    o.dimensions.y as f32,
                    o.dimensions.z as f32,
                    o.classification
                ))
                .collect::<Vec<_>>()
        );
        for truth in &scene.objects {
            let best = summary
                .objects
                .iter()
                .map(|o| ((o.position.x - truth.x).hypot(o.position.y - truth.y), o))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap();
            assert!(
                best.0 < 0.3,
                "{truth:?} -> {:?} off by {:.2} m",
                best.1,
                best.0
            );
            assert_eq!(best.1.classification, truth.class, "{truth:?}");
        }
        assert!(stats.ground > stats.input_points / 3, "{stats:?}");
    }

    #[test]
    fn a_sixteen_beam_lidar_sees_whole_cars() {
        let scene = Scene {
            objects: vec![
                SceneObject::car(22.0, 0.2, 0.0),
                SceneObject::car(14.0, -3.6, 0.04),
            ],
        };
        let model = LidarModel {
            beams: 16,
            columns: 512,
            lowest: (-25f64).to_radians(),
            highest: 3f64.to_radians(),
            height: 1.8,
            ..LidarModel::default()
        };
        let mut s = LidarSummarizer::new(LidarConfig {
            mounting: model.mounting(),
            ..Default::default()
        });
        let (summary, stats) = s.summarize(&model.scan(&scene, 4)).unwrap();
        let found: Vec<_> = summary
            .objects
            .iter()
            .map(|o| {
                (
                    o.position.x as f32,
                    o.position.y as f32,
                    o.dimensions.z as f32,
                    o.classification,
                )
            })
            .collect();
        assert_eq!(summary.objects.len(), 2, "{stats:?} {found:?}");
    }

    #[test]
    fn ids_are_stable_across_frames() {
        let model = LidarModel::default();
        let mut scene = scene();
        let mut s = LidarSummarizer::new(LidarConfig {
            mounting: model.mounting(),
            ..Default::default()
        });
        let (first, _) = s.summarize(&model.scan(&scene, 1)).unwrap();
        for o in &mut scene.objects {
            o.x += 0.8;
        }
        let (second, _) = s.summarize(&model.scan(&scene, 2)).unwrap();
        let mut a: Vec<u32> = first.objects.iter().map(|o| o.id).collect();
        let mut b: Vec<u32> = second.objects.iter().map(|o| o.id).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn sloped_road_is_ground_not_objects() {
        let model = LidarModel {
            ground_slope: 0.06,
            ..LidarModel::default()
        };
        let mut s = LidarSummarizer::new(LidarConfig {
            mounting: model.mounting(),
            ..Default::default()
        });
        let (summary, stats) = s.summarize(&model.scan(&Scene::default(), 3)).unwrap();
        assert!(
            summary.objects.is_empty(),
            "{stats:?} {:#?}",
            summary.objects
        );
    }

    #[test]
    fn l_shape_recovers_orientation() {
        // Two faces of a 4 x 2 box rotated by 30 degrees.
        let yaw = 30f32.to_radians();
        let (s, c) = yaw.sin_cos();
        let mut pts = Vec::new();
        for i in 0..40 {
            let t = i as f32 / 10.0;
            pts.push([t * c, t * s, 0.5]);
        }
        for i in 0..20 {
            let t = i as f32 / 10.0;
            pts.push([-t * s, t * c, 0.5]);
        }
        let r = fit_rectangle(&pts);
        assert!(
            (r.theta - yaw).abs() < 0.02
                || (r.theta - yaw - std::f32::consts::FRAC_PI_2).abs() < 0.02,
            "{r:?}"
        );
    }

    #[test]
    fn parameters_round_trip_to_the_default_config() {
        let p = crate::params::resolve(&parameters(), &Default::default()).unwrap();
        assert_eq!(LidarConfig::from_params(&p), LidarConfig::default());
    }

    #[test]
    fn boxes_grow_away_from_the_sensor() {
        assert_eq!(
            complete_extent([10.0, 10.1], 4.5, 0.0),
            ([10.0, 14.5], true)
        );
        assert_eq!(
            complete_extent([-10.1, -10.0], 4.5, 0.0),
            ([-14.5, -10.0], true)
        );
        assert_eq!(complete_extent([0.0, 5.0], 4.5, 0.0), ([0.0, 5.0], false));
        // A face seen edge-on from beside it grows evenly.
        assert_eq!(complete_extent([-1.0, 1.0], 4.0, 0.0), ([-2.0, 2.0], true));
    }
}
