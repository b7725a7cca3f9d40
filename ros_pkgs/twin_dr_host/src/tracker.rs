//! Multi-object tracking over LiDAR, radar and camera summaries, in the map frame.
//!
//! - **Motion models**: constant velocity (state `[x, y, vx, vy]`, linear Kalman filter) for
//!   pedestrians and objects of unknown class, CTRV (constant turn rate and velocity, state
//!   `[x, y, v, yaw, yaw_rate]`, extended Kalman filter) for vehicles. A track born as
//!   unknown (a radar target) switches to CTRV when its class becomes a vehicle.
//! - **Measurements**: position with the summarizer's covariance, floored and scaled per
//!   sensor kind ([`SensorNoise`]); plus velocity over ground when the sensor measures it.
//! - **Gating**: squared Mahalanobis distance of the innovation below the chi-square
//!   quantile for the measurement's dimension (99 %: 9.21 for 2, 13.28 for 4).
//! - **Assignment**: optimal, by the Kuhn-Munkres algorithm (`pathfinding`) on the squared
//!   Mahalanobis distances, with a "missed" column per track so that a track may stay
//!   unassigned when every detection costs more than the gate.
//! - **Track management**: a track is born tentative from an unassigned detection, is
//!   confirmed after `confirm_hits` updates, and is deleted when not updated for
//!   `max_coast` (tentative ones after `tentative_coast`). Class is a vote weighted by
//!   class confidence.

use nalgebra::{Matrix2, SMatrix, SVector, Vector2};
use pathfinding::matrix::Matrix;
use pathfinding::prelude::kuhn_munkres_min;
use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary};

/// Chi-square 99 % quantiles for 2 and 4 degrees of freedom.
pub const GATE_2D: f64 = 9.21;
/// See [`GATE_2D`].
pub const GATE_4D: f64 = 13.28;

/// How much to trust one kind of sensor's positions and velocities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorNoise {
    /// Smallest position standard deviation accepted [m].
    pub min_position_sigma: f64,
    /// Factor on the summarizer's own position covariance.
    pub covariance_scale: f64,
    /// Standard deviation of a measured velocity [m/s].
    pub velocity_sigma: f64,
}

/// Settings of the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerConfig {
    /// LiDAR noise.
    pub lidar: SensorNoise,
    /// Radar noise.
    pub radar: SensorNoise,
    /// Camera noise.
    pub camera: SensorNoise,
    /// Noise of fused or unknown sensors.
    pub other: SensorNoise,
    /// Acceleration noise of the motion models [m/s^2].
    pub acceleration_sigma: f64,
    /// Yaw acceleration noise of CTRV [rad/s^2].
    pub yaw_acceleration_sigma: f64,
    /// Updates that confirm a track.
    pub confirm_hits: u32,
    /// A confirmed track is deleted after this long without an update [s].
    pub max_coast: f64,
    /// A tentative track is deleted after this long without an update [s].
    pub tentative_coast: f64,
    /// Velocity variance of a track born without a velocity measurement [m^2/s^2].
    pub initial_velocity_variance: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            lidar: SensorNoise {
                min_position_sigma: 0.15,
                covariance_scale: 1.0,
                velocity_sigma: 1.0,
            },
            radar: SensorNoise {
                min_position_sigma: 0.5,
                covariance_scale: 1.0,
                velocity_sigma: 0.3,
            },
            camera: SensorNoise {
                min_position_sigma: 0.5,
                covariance_scale: 1.0,
                velocity_sigma: 1.0,
            },
            other: SensorNoise {
                min_position_sigma: 0.3,
                covariance_scale: 1.0,
                velocity_sigma: 0.5,
            },
            acceleration_sigma: 2.0,
            yaw_acceleration_sigma: 0.6,
            confirm_hits: 3,
            max_coast: 1.5,
            tentative_coast: 0.5,
            initial_velocity_variance: 100.0,
        }
    }
}

/// One detection in the map frame, ready for the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Position [m].
    pub position: Vector2<f64>,
    /// Position covariance [m^2].
    pub position_cov: Matrix2<f64>,
    /// Velocity over ground and its covariance, when measured.
    pub velocity: Option<(Vector2<f64>, Matrix2<f64>)>,
    /// One of DetectedObject::CLASS_*.
    pub class: u8,
    /// Confidence of the class.
    pub class_confidence: f32,
    /// Box length, width, height [m].
    pub dimensions: [f64; 3],
}

/// A detection of a summary in base_link, moved into the map frame by the vehicle's pose
/// (`x`, `y`, `yaw`) and given the sensor's noise.
pub fn measurement(
    o: &DetectedObject,
    pose: (f64, f64, f64),
    noise: &SensorNoise,
) -> Option<Measurement> {
    let (px, py, yaw) = pose;
    let values = [o.position.x, o.position.y, o.velocity.x, o.velocity.y];
    if !values.iter().all(|v| v.is_finite()) {
        return None;
    }
    let (s, c) = yaw.sin_cos();
    let rot = Matrix2::new(c, -s, s, c);
    let position = Vector2::new(px, py) + rot * Vector2::new(o.position.x, o.position.y);
    let pc = &o.position_covariance;
    let local = Matrix2::new(pc[0] as f64, pc[1] as f64, pc[3] as f64, pc[4] as f64)
        * noise.covariance_scale;
    let floor = noise.min_position_sigma.powi(2);
    let mut cov = rot * local * rot.transpose();
    if !cov.iter().all(|v| v.is_finite()) {
        cov = Matrix2::zeros();
    }
    cov[(0, 0)] = cov[(0, 0)].max(floor);
    cov[(1, 1)] = cov[(1, 1)].max(floor);
    let velocity = o.has_velocity.then(|| {
        (
            rot * Vector2::new(o.velocity.x, o.velocity.y),
            Matrix2::identity() * noise.velocity_sigma.powi(2),
        )
    });
    Some(Measurement {
        position,
        position_cov: cov,
        velocity,
        class: o.classification,
        class_confidence: o.class_confidence.clamp(0.0, 1.0),
        dimensions: [o.dimensions.x, o.dimensions.y, o.dimensions.z],
    })
}

/// The noise model of a summary's sensor kind.
pub fn noise_of(config: &TrackerConfig, summary: &PerceptionSummary) -> SensorNoise {
    match summary.sensor_kind {
        PerceptionSummary::SENSOR_LIDAR => config.lidar,
        PerceptionSummary::SENSOR_RADAR => config.radar,
        PerceptionSummary::SENSOR_CAMERA => config.camera,
        _ => config.other,
    }
}

/// Optimal assignment of `n` tracks to `m` detections given the gated pairs
/// `(track, detection, squared Mahalanobis distance)`: every track may also stay
/// unassigned at the cost of the widest gate. Solved per connected component of the gating
/// graph (Kuhn-Munkres from `pathfinding` for components larger than one pair), which gives
/// the same optimum as one problem over everything, at a fraction of the cost.
pub fn assign_by_component(
    n: usize,
    m: usize,
    gated: &[(usize, usize, f64)],
) -> Vec<(usize, usize)> {
    // Union-find over tracks 0..n and detections n..n+m.
    let mut parent: Vec<usize> = (0..n + m).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for &(i, j, _) in gated {
        let (a, b) = (find(&mut parent, i), find(&mut parent, n + j));
        if a != b {
            parent[a] = b;
        }
    }
    let mut groups: std::collections::HashMap<usize, Vec<usize>> = std::collections::HashMap::new();
    for (k, &(i, _, _)) in gated.iter().enumerate() {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(k);
    }
    let mut out = Vec::new();
    for pairs in groups.values() {
        if pairs.len() == 1 {
            let (i, j, _) = gated[pairs[0]];
            out.push((i, j));
            continue;
        }
        let mut tracks: Vec<usize> = pairs.iter().map(|&k| gated[k].0).collect();
        let mut dets: Vec<usize> = pairs.iter().map(|&k| gated[k].1).collect();
        tracks.sort_unstable();
        tracks.dedup();
        dets.sort_unstable();
        dets.dedup();
        // Costs in thousandths of a squared Mahalanobis distance; column m + i is "track i
        // missed", costing the widest gate, so any gated detection is preferred.
        const FORBIDDEN: i64 = i64::MAX / 1024;
        let (cn, cm) = (tracks.len(), dets.len());
        let mut costs = Matrix::new(cn, cm + cn, FORBIDDEN);
        for &k in pairs {
            let (i, j, d2) = gated[k];
            let r = tracks.binary_search(&i).expect("track of the group");
            let c = dets.binary_search(&j).expect("detection of the group");
            costs[(r, c)] = (d2 * 1000.0) as i64;
        }
        for r in 0..cn {
            costs[(r, cm + r)] = (GATE_4D * 1000.0) as i64;
        }
        let (_, assignment) = kuhn_munkres_min(&costs);
        for (r, &c) in assignment.iter().enumerate() {
            if c < cm && costs[(r, c)] < FORBIDDEN {
                out.push((tracks[r], dets[c]));
            }
        }
    }
    out
}

fn is_vehicle(class: u8) -> bool {
    matches!(
        class,
        DetectedObject::CLASS_CAR | DetectedObject::CLASS_TRUCK | DetectedObject::CLASS_MOTORCYCLE
    )
}

/// Kalman update of state `x` and covariance `p` with measurement `z`, prediction `hx`,
/// Jacobian `h` and noise `r`. Returns false (no change) if the innovation covariance is
/// singular.
fn kalman_update<const N: usize, const M: usize>(
    x: &mut SVector<f64, N>,
    p: &mut SMatrix<f64, N, N>,
    z: SVector<f64, M>,
    hx: SVector<f64, M>,
    h: SMatrix<f64, M, N>,
    r: SMatrix<f64, M, M>,
) -> bool {
    let s = h * *p * h.transpose() + r;
    let Some(s_inv) = s.try_inverse() else {
        return false;
    };
    let k = *p * h.transpose() * s_inv;
    *x += k * (z - hx);
    // Joseph form keeps P symmetric and positive.
    let i_kh = SMatrix::<f64, N, N>::identity() - k * h;
    *p = i_kh * *p * i_kh.transpose() + k * r * k.transpose();
    true
}

fn mahalanobis<const M: usize>(innovation: SVector<f64, M>, s: SMatrix<f64, M, M>) -> f64 {
    s.try_inverse()
        .map(|inv| (innovation.transpose() * inv * innovation)[(0, 0)])
        .unwrap_or(f64::INFINITY)
}

/// A track's filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `[x, y, vx, vy]`.
    ConstantVelocity {
        /// State.
        x: SVector<f64, 4>,
        /// Covariance.
        p: SMatrix<f64, 4, 4>,
    },
    /// `[x, y, v, yaw, yaw_rate]`.
    Ctrv {
        /// State.
        x: SVector<f64, 5>,
        /// Covariance.
        p: SMatrix<f64, 5, 5>,
    },
}

fn ctrv_step(x: &SVector<f64, 5>, dt: f64) -> SVector<f64, 5> {
    let (px, py, v, yaw, w) = (x[0], x[1], x[2], x[3], x[4]);
    let (nx, ny) = if w.abs() > 1e-4 {
        (
            px + v / w * ((yaw + w * dt).sin() - yaw.sin()),
            py + v / w * (yaw.cos() - (yaw + w * dt).cos()),
        )
    } else {
        (px + v * yaw.cos() * dt, py + v * yaw.sin() * dt)
    };
    SVector::<f64, 5>::new(nx, ny, v, yaw + w * dt, w)
}

/// Jacobian of [`ctrv_step`] with respect to the state, in closed form (the same branch
/// on the yaw rate as the step).
fn ctrv_jacobian(x: &SVector<f64, 5>, dt: f64) -> SMatrix<f64, 5, 5> {
    let (v, yaw, w) = (x[2], x[3], x[4]);
    let mut f = SMatrix::<f64, 5, 5>::identity();
    let (s0, c0) = yaw.sin_cos();
    if w.abs() > 1e-4 {
        let (s1, c1) = (yaw + w * dt).sin_cos();
        f[(0, 2)] = (s1 - s0) / w;
        f[(0, 3)] = v / w * (c1 - c0);
        f[(0, 4)] = v / w * c1 * dt - v / (w * w) * (s1 - s0);
        f[(1, 2)] = (c0 - c1) / w;
        f[(1, 3)] = v / w * (s1 - s0);
        f[(1, 4)] = v / w * s1 * dt - v / (w * w) * (c0 - c1);
    } else {
        f[(0, 2)] = c0 * dt;
        f[(0, 3)] = -v * s0 * dt;
        f[(0, 4)] = -v * s0 * dt * dt / 2.0;
        f[(1, 2)] = s0 * dt;
        f[(1, 3)] = v * c0 * dt;
        f[(1, 4)] = v * c0 * dt * dt / 2.0;
    }
    f[(3, 4)] = dt;
    f
}

impl Filter {
    /// Position and its covariance.
    pub fn position(&self) -> (Vector2<f64>, Matrix2<f64>) {
        match self {
            Filter::ConstantVelocity { x, p } => (
                Vector2::new(x[0], x[1]),
                p.fixed_view::<2, 2>(0, 0).into_owned(),
            ),
            Filter::Ctrv { x, p } => (
                Vector2::new(x[0], x[1]),
                p.fixed_view::<2, 2>(0, 0).into_owned(),
            ),
        }
    }

    /// Velocity over ground.
    pub fn velocity(&self) -> Vector2<f64> {
        match self {
            Filter::ConstantVelocity { x, .. } => Vector2::new(x[2], x[3]),
            Filter::Ctrv { x, .. } => Vector2::new(x[2] * x[3].cos(), x[2] * x[3].sin()),
        }
    }

    /// Advances the state by `dt` seconds.
    pub fn predict(&mut self, dt: f64, config: &TrackerConfig) {
        if dt <= 0.0 {
            return;
        }
        let qa = config.acceleration_sigma.powi(2);
        match self {
            Filter::ConstantVelocity { x, p } => {
                let mut f = SMatrix::<f64, 4, 4>::identity();
                f[(0, 2)] = dt;
                f[(1, 3)] = dt;
                let (dt2, dt3, dt4) = (dt * dt, dt.powi(3), dt.powi(4));
                let mut q = SMatrix::<f64, 4, 4>::zeros();
                for (i, j) in [(0, 2), (1, 3)] {
                    q[(i, i)] = dt4 / 4.0 * qa;
                    q[(i, j)] = dt3 / 2.0 * qa;
                    q[(j, i)] = dt3 / 2.0 * qa;
                    q[(j, j)] = dt2 * qa;
                }
                *x = f * *x;
                *p = f * *p * f.transpose() + q;
            }
            Filter::Ctrv { x, p } => {
                let f = ctrv_jacobian(x, dt);
                let yaw = x[3];
                let mut g = SMatrix::<f64, 5, 2>::zeros();
                g[(0, 0)] = dt * dt / 2.0 * yaw.cos();
                g[(1, 0)] = dt * dt / 2.0 * yaw.sin();
                g[(2, 0)] = dt;
                g[(3, 1)] = dt * dt / 2.0;
                g[(4, 1)] = dt;
                let qn =
                    SMatrix::<f64, 2, 2>::new(qa, 0.0, 0.0, config.yaw_acceleration_sigma.powi(2));
                *x = ctrv_step(x, dt);
                *p = f * *p * f.transpose() + g * qn * g.transpose();
            }
        }
    }

    /// Squared Mahalanobis distance of a measurement and its gate.
    pub fn distance(&self, m: &Measurement) -> (f64, f64) {
        let (pos, pcov) = self.position();
        match &m.velocity {
            None => (
                mahalanobis(m.position - pos, pcov + m.position_cov),
                GATE_2D,
            ),
            Some((v, vcov)) => {
                let (hx, h) = self.position_velocity_model();
                let z = SVector::<f64, 4>::new(m.position.x, m.position.y, v.x, v.y);
                let r = block_diag(&m.position_cov, vcov);
                let s = match self {
                    Filter::ConstantVelocity { p, .. } => {
                        let h4: SMatrix<f64, 4, 4> = h.fixed_view::<4, 4>(0, 0).into_owned();
                        h4 * p * h4.transpose() + r
                    }
                    Filter::Ctrv { p, .. } => h * p * h.transpose() + r,
                };
                (mahalanobis(z - hx, s), GATE_4D)
            }
        }
    }

    /// Prediction and Jacobian of the measurement `[x, y, vx, vy]` (for CV, the first four
    /// columns are used).
    fn position_velocity_model(&self) -> (SVector<f64, 4>, SMatrix<f64, 4, 5>) {
        let mut h = SMatrix::<f64, 4, 5>::zeros();
        h[(0, 0)] = 1.0;
        h[(1, 1)] = 1.0;
        match self {
            Filter::ConstantVelocity { x, .. } => {
                h[(2, 2)] = 1.0;
                h[(3, 3)] = 1.0;
                (SVector::<f64, 4>::new(x[0], x[1], x[2], x[3]), h)
            }
            Filter::Ctrv { x, .. } => {
                let (v, yaw) = (x[2], x[3]);
                h[(2, 2)] = yaw.cos();
                h[(2, 3)] = -v * yaw.sin();
                h[(3, 2)] = yaw.sin();
                h[(3, 3)] = v * yaw.cos();
                (
                    SVector::<f64, 4>::new(x[0], x[1], v * yaw.cos(), v * yaw.sin()),
                    h,
                )
            }
        }
    }

    /// Updates with a measurement.
    pub fn update(&mut self, m: &Measurement) {
        let z2 = m.position;
        match &m.velocity {
            None => match self {
                Filter::ConstantVelocity { x, p } => {
                    let mut h = SMatrix::<f64, 2, 4>::zeros();
                    h[(0, 0)] = 1.0;
                    h[(1, 1)] = 1.0;
                    let hx = Vector2::new(x[0], x[1]);
                    kalman_update(x, p, z2, hx, h, m.position_cov);
                }
                Filter::Ctrv { x, p } => {
                    let mut h = SMatrix::<f64, 2, 5>::zeros();
                    h[(0, 0)] = 1.0;
                    h[(1, 1)] = 1.0;
                    let hx = Vector2::new(x[0], x[1]);
                    kalman_update(x, p, z2, hx, h, m.position_cov);
                }
            },
            Some((v, vcov)) => {
                let (hx, h) = self.position_velocity_model();
                let z = SVector::<f64, 4>::new(m.position.x, m.position.y, v.x, v.y);
                let r = block_diag(&m.position_cov, vcov);
                match self {
                    Filter::ConstantVelocity { x, p } => {
                        let h4: SMatrix<f64, 4, 4> = h.fixed_view::<4, 4>(0, 0).into_owned();
                        kalman_update(x, p, z, hx, h4, r);
                    }
                    Filter::Ctrv { x, p } => {
                        kalman_update(x, p, z, hx, h, r);
                    }
                }
            }
        }
    }

    /// The same track as a CTRV filter (heading from its velocity).
    pub fn to_ctrv(&self) -> Filter {
        match self {
            Filter::Ctrv { .. } => self.clone(),
            Filter::ConstantVelocity { x, p } => {
                let (vx, vy) = (x[2], x[3]);
                let v = vx.hypot(vy);
                let mut nx = SVector::<f64, 5>::zeros();
                nx[0] = x[0];
                nx[1] = x[1];
                nx[2] = v;
                nx[3] = vy.atan2(vx);
                let mut np = SMatrix::<f64, 5, 5>::zeros();
                np.fixed_view_mut::<2, 2>(0, 0)
                    .copy_from(&p.fixed_view::<2, 2>(0, 0));
                let speed_var = (p[(2, 2)] + p[(3, 3)]) / 2.0;
                np[(2, 2)] = speed_var;
                np[(3, 3)] = (speed_var / v.max(0.5).powi(2)).min(std::f64::consts::PI.powi(2));
                np[(4, 4)] = 0.25;
                Filter::Ctrv { x: nx, p: np }
            }
        }
    }
}

fn block_diag(a: &Matrix2<f64>, b: &Matrix2<f64>) -> SMatrix<f64, 4, 4> {
    let mut r = SMatrix::<f64, 4, 4>::zeros();
    r.fixed_view_mut::<2, 2>(0, 0).copy_from(a);
    r.fixed_view_mut::<2, 2>(2, 2).copy_from(b);
    r
}

/// Lifecycle of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackStatus {
    /// Born, not yet confirmed.
    Tentative,
    /// Confirmed by enough updates.
    Confirmed,
}

/// One tracked object.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Id, unique for the tracker's life.
    pub id: u64,
    /// Its filter.
    pub filter: Filter,
    /// Status.
    pub status: TrackStatus,
    /// Updates received.
    pub hits: u32,
    /// Time of the last update [s].
    pub last_update: f64,
    /// Time the filter is predicted to [s].
    pub time: f64,
    /// Class votes (weight per DetectedObject::CLASS_*).
    pub class_votes: [f32; 7],
    /// Box size, smoothed [m].
    pub dimensions: [f64; 3],
}

impl Track {
    /// The class with the most votes.
    pub fn class(&self) -> u8 {
        self.class_votes
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(c, _)| c as u8)
            .unwrap_or(0)
    }
}

/// What one update did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Measurements assigned to tracks.
    pub assigned: usize,
    /// Tracks born.
    pub born: usize,
    /// Tracks deleted.
    pub deleted: usize,
    /// Detections near a confirmed track that gave no new track.
    pub suppressed: usize,
    /// Confirmed tracks removed as duplicates of an older one.
    pub merged: usize,
}

/// Squared Mahalanobis distance (position, 2 degrees of freedom) within which no track is
/// born next to a confirmed one: the 99.99 % quantile.
pub const BIRTH_EXCLUSION: f64 = 18.42;

/// Largest speed difference of two confirmed tracks that are one object [m/s].
pub const DUPLICATE_SPEED_DIFFERENCE: f64 = 2.0;

/// The multi-object tracker.
#[derive(Debug, Clone)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            config,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    /// The settings.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Every track, tentative ones included.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Confirmed tracks.
    pub fn confirmed(&self) -> impl Iterator<Item = &Track> {
        self.tracks
            .iter()
            .filter(|t| t.status == TrackStatus::Confirmed)
    }

    /// Predicts every track to time `t` [s] and deletes the ones coasted too long.
    pub fn predict_to(&mut self, t: f64) -> usize {
        for track in &mut self.tracks {
            track.filter.predict(t - track.time, &self.config);
            track.time = track.time.max(t);
        }
        let before = self.tracks.len();
        let c = &self.config;
        self.tracks.retain(|tr| {
            let limit = if tr.status == TrackStatus::Confirmed {
                c.max_coast
            } else {
                c.tentative_coast
            };
            t - tr.last_update <= limit
        });
        before - self.tracks.len()
    }

    /// One frame of measurements at time `t` [s] (one sensor's summary).
    pub fn update(&mut self, t: f64, measurements: &[Measurement]) -> UpdateStats {
        let mut stats = UpdateStats {
            deleted: self.predict_to(t),
            ..Default::default()
        };
        let (n, m) = (self.tracks.len(), measurements.len());
        let mut assigned_measurement = vec![false; m];
        if n > 0 && m > 0 {
            // Gating: a cheap bound first (the Mahalanobis distance of the position alone
            // is at least |dp|^2 / trace(S_pos), and the full distance at least that), the
            // exact distance only for pairs that pass it.
            let mut gated: Vec<(usize, usize, f64)> = Vec::new();
            for (i, track) in self.tracks.iter().enumerate() {
                let (pos, pcov) = track.filter.position();
                let ptrace = pcov.trace();
                for (j, meas) in measurements.iter().enumerate() {
                    let dp2 = (meas.position - pos).norm_squared();
                    if dp2 > GATE_4D * (ptrace + meas.position_cov.trace()) {
                        continue;
                    }
                    let (d2, gate) = track.filter.distance(meas);
                    if d2 <= gate {
                        gated.push((i, j, d2));
                    }
                }
            }
            // The optimal assignment splits into independent problems, one per connected
            // group of tracks and detections that gate with each other; most groups are a
            // single pair, solved without the Hungarian method.
            let confirm_hits = self.config.confirm_hits;
            for (i, j) in assign_by_component(n, m, &gated) {
                let meas = &measurements[j];
                let track = &mut self.tracks[i];
                track.filter.update(meas);
                track.hits += 1;
                track.last_update = t;
                track.class_votes[meas.class.min(6) as usize] += meas.class_confidence.max(0.05);
                for k in 0..3 {
                    track.dimensions[k] = 0.8 * track.dimensions[k] + 0.2 * meas.dimensions[k];
                }
                if track.status == TrackStatus::Tentative && track.hits >= confirm_hits {
                    track.status = TrackStatus::Confirmed;
                }
                if is_vehicle(track.class())
                    && matches!(track.filter, Filter::ConstantVelocity { .. })
                    && track.filter.velocity().norm() > 1.0
                {
                    track.filter = track.filter.to_ctrv();
                }
                assigned_measurement[j] = true;
                stats.assigned += 1;
            }
        }
        let before_births = self.tracks.len();
        for (j, meas) in measurements.iter().enumerate() {
            if assigned_measurement[j] {
                continue;
            }
            // A detection just outside a confirmed track's gate (about 1 in 100 falls
            // there) or a second detection of its object in one frame is not a new object:
            // no track is born within BIRTH_EXCLUSION of a confirmed one.
            let near_confirmed = self.tracks[..before_births].iter().any(|tr| {
                tr.status == TrackStatus::Confirmed && {
                    let (p, pc) = tr.filter.position();
                    let d = meas.position - p;
                    d.norm_squared() <= BIRTH_EXCLUSION * (pc.trace() + meas.position_cov.trace())
                        && mahalanobis(d, pc + meas.position_cov) <= BIRTH_EXCLUSION
                }
            });
            if near_confirmed {
                stats.suppressed += 1;
                continue;
            }
            self.birth(t, meas);
            stats.born += 1;
        }
        stats.merged = self.merge_duplicates();
        stats
    }

    /// Removes confirmed tracks that follow the same object as an older confirmed track:
    /// positions within each other's 99 % gate and velocities within
    /// [`DUPLICATE_SPEED_DIFFERENCE`]. The older track (more updates) keeps its id.
    fn merge_duplicates(&mut self) -> usize {
        let n = self.tracks.len();
        let mut remove = vec![false; n];
        for a in 0..n {
            if remove[a] || self.tracks[a].status != TrackStatus::Confirmed {
                continue;
            }
            let (pa, ca) = self.tracks[a].filter.position();
            let va = self.tracks[a].filter.velocity();
            for b in a + 1..n {
                if remove[b] || self.tracks[b].status != TrackStatus::Confirmed {
                    continue;
                }
                let (pb, cb) = self.tracks[b].filter.position();
                let d = pa - pb;
                if d.norm_squared() > GATE_2D * (ca.trace() + cb.trace())
                    || (va - self.tracks[b].filter.velocity()).norm() > DUPLICATE_SPEED_DIFFERENCE
                    || mahalanobis(d, ca + cb) > GATE_2D
                {
                    continue;
                }
                let younger = if self.tracks[a].hits >= self.tracks[b].hits {
                    b
                } else {
                    a
                };
                remove[younger] = true;
                if younger == a {
                    break;
                }
            }
        }
        let merged = remove.iter().filter(|r| **r).count();
        if merged > 0 {
            let mut k = 0;
            self.tracks.retain(|_| {
                let keep = !remove[k];
                k += 1;
                keep
            });
        }
        merged
    }

    fn birth(&mut self, t: f64, m: &Measurement) {
        let c = &self.config;
        let (vel, vcov) = m.velocity.unwrap_or((
            Vector2::zeros(),
            Matrix2::identity() * c.initial_velocity_variance,
        ));
        let mut x = SVector::<f64, 4>::new(m.position.x, m.position.y, vel.x, vel.y);
        let mut p = SMatrix::<f64, 4, 4>::zeros();
        p.fixed_view_mut::<2, 2>(0, 0).copy_from(&m.position_cov);
        p.fixed_view_mut::<2, 2>(2, 2).copy_from(&vcov);
        if !x.iter().all(|v| v.is_finite()) {
            x = SVector::zeros();
        }
        let mut filter = Filter::ConstantVelocity { x, p };
        if is_vehicle(m.class) && m.velocity.is_some() && vel.norm() > 1.0 {
            filter = filter.to_ctrv();
        }
        let mut votes = [0.0f32; 7];
        votes[m.class.min(6) as usize] = m.class_confidence.max(0.05);
        self.tracks.push(Track {
            id: self.next_id,
            filter,
            status: if c.confirm_hits <= 1 {
                TrackStatus::Confirmed
            } else {
                TrackStatus::Tentative
            },
            hits: 1,
            last_update: t,
            time: t,
            class_votes: votes,
            dimensions: m.dimensions,
        });
        self.next_id += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn closed_form_ctrv_jacobian_matches_central_differences() {
        for (x, dt) in [
            (SVector::<f64, 5>::new(3.0, -2.0, 14.0, 0.7, 0.3), 0.1),
            (SVector::<f64, 5>::new(0.0, 1.0, 25.0, -2.0, -0.05), 0.5),
            (SVector::<f64, 5>::new(10.0, 5.0, 8.0, 3.0, 0.0), 0.2),
        ] {
            let f = ctrv_jacobian(&x, dt);
            for k in 0..5 {
                // Across a zero yaw rate, step over the straight-line branch of the step
                // (the closed form gives the limit of the curved one, which is the truth).
                let eps = if k == 4 && x[4].abs() < 1e-4 {
                    1e-3
                } else {
                    1e-6 * (1.0 + x[k].abs())
                };
                let (mut plus, mut minus) = (x, x);
                plus[k] += eps;
                minus[k] -= eps;
                let col = (ctrv_step(&plus, dt) - ctrv_step(&minus, dt)) / (2.0 * eps);
                for r in 0..5 {
                    assert!(
                        (f[(r, k)] - col[r]).abs() < 1e-4,
                        "d{r}/d{k}: {} vs {}",
                        f[(r, k)],
                        col[r]
                    );
                }
            }
        }
    }

    #[test]
    fn assignment_by_component_equals_one_global_assignment() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let n = rand::Rng::random_range(&mut rng, 1..12);
            let m = rand::Rng::random_range(&mut rng, 1..12);
            let mut gated = Vec::new();
            for i in 0..n {
                for j in 0..m {
                    if rand::Rng::random_bool(&mut rng, 0.2) {
                        gated.push((i, j, rand::Rng::random_range(&mut rng, 0.0..GATE_4D)));
                    }
                }
            }
            let cost = |pairs: &[(usize, usize)]| -> i64 {
                let matched: i64 = pairs
                    .iter()
                    .map(|&(i, j)| {
                        (gated.iter().find(|g| g.0 == i && g.1 == j).unwrap().2 * 1000.0) as i64
                    })
                    .sum();
                matched + (n - pairs.len()) as i64 * (GATE_4D * 1000.0) as i64
            };
            // One global problem, as the tracker solved it before.
            const FORBIDDEN: i64 = i64::MAX / 1024;
            let mut costs = Matrix::new(n, m + n, FORBIDDEN);
            for &(i, j, d2) in &gated {
                costs[(i, j)] = (d2 * 1000.0) as i64;
            }
            for i in 0..n {
                costs[(i, m + i)] = (GATE_4D * 1000.0) as i64;
            }
            let (_, a) = kuhn_munkres_min(&costs);
            let global: Vec<(usize, usize)> = a
                .iter()
                .enumerate()
                .filter(|&(i, &j)| j < m && costs[(i, j)] < FORBIDDEN)
                .map(|(i, &j)| (i, j))
                .collect();
            let split = assign_by_component(n, m, &gated);
            assert_eq!(cost(&split), cost(&global), "{gated:?}");
            let mut used = std::collections::HashSet::new();
            assert!(
                split.iter().all(|p| used.insert(p.1)),
                "a detection assigned twice"
            );
        }
    }

    fn meas(x: f64, y: f64, class: u8) -> Measurement {
        Measurement {
            position: Vector2::new(x, y),
            position_cov: Matrix2::identity() * 0.04,
            velocity: None,
            class,
            class_confidence: 0.8,
            dimensions: [4.5, 1.8, 1.5],
        }
    }

    #[test]
    fn a_moving_car_is_confirmed_and_its_velocity_learned() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let noise = Normal::new(0.0, 0.2).unwrap();
        let mut tracker = Tracker::new(TrackerConfig::default());
        for k in 0..50 {
            let t = k as f64 * 0.1;
            let m = meas(
                20.0 + 15.0 * t + noise.sample(&mut rng),
                3.0 + noise.sample(&mut rng),
                DetectedObject::CLASS_CAR,
            );
            tracker.update(t, &[m]);
        }
        let tracks: Vec<&Track> = tracker.confirmed().collect();
        assert_eq!(tracks.len(), 1, "{:?}", tracker.tracks());
        let v = tracks[0].filter.velocity();
        assert!((v.x - 15.0).abs() < 1.0 && v.y.abs() < 1.0, "{v:?}");
        assert!(
            matches!(tracks[0].filter, Filter::Ctrv { .. }),
            "a car moving becomes CTRV"
        );
        assert_eq!(tracks[0].class(), DetectedObject::CLASS_CAR);
    }

    #[test]
    fn no_track_is_born_beside_a_confirmed_one_and_duplicates_merge() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for k in 0..10 {
            tracker.update(
                k as f64 * 0.1,
                &[meas(10.0, 0.0, DetectedObject::CLASS_CAR)],
            );
        }
        let id = tracker.confirmed().next().unwrap().id;
        // Two detections of the same object in one frame (e.g. a split cluster): the second
        // does not start a track.
        let stats = tracker.update(1.0, &[meas(10.0, 0.0, 1), meas(10.0, 0.8, 1)]);
        assert_eq!((stats.assigned, stats.born, stats.suppressed), (1, 0, 1));
        // A second object 4 m away is born as usual.
        let stats = tracker.update(1.1, &[meas(10.0, 0.0, 1), meas(10.0, 4.0, 1)]);
        assert_eq!(stats.born, 1);
        // A duplicate confirmed track on the first object (as a late-confirmed tentative
        // track would be) is merged away; the older id stays.
        let mut dup = tracker.tracks()[0].clone();
        dup.id = 999;
        dup.hits = 3;
        tracker.tracks.push(dup);
        let stats = tracker.update(1.2, &[meas(10.0, 0.0, 1), meas(10.0, 4.0, 1)]);
        assert_eq!(stats.merged, 1);
        assert!(tracker.tracks().iter().any(|t| t.id == id));
        assert!(tracker.tracks().iter().all(|t| t.id != 999));
    }

    #[test]
    fn crossing_objects_keep_their_ids() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut ids = None;
        for k in 0..60 {
            let t = k as f64 * 0.1;
            // Two pedestrians crossing each other's paths, 1.5 m apart at the closest.
            let a = meas(-6.0 + 2.0 * t, 0.75, DetectedObject::CLASS_PEDESTRIAN);
            let b = meas(6.0 - 2.0 * t, -0.75, DetectedObject::CLASS_PEDESTRIAN);
            tracker.update(t, &[a, b]);
            if k == 10 {
                let mut by_x: Vec<&Track> = tracker.confirmed().collect();
                by_x.sort_by(|p, q| p.filter.position().0.x.total_cmp(&q.filter.position().0.x));
                ids = Some((by_x[0].id, by_x[1].id));
            }
        }
        let (left_id, right_id) = ids.unwrap();
        let final_left = tracker.confirmed().find(|t| t.id == left_id).unwrap();
        // The one that started on the left is now on the right.
        assert!(
            final_left.filter.position().0.x > 3.0,
            "{:?}",
            tracker.tracks()
        );
        let final_right = tracker.confirmed().find(|t| t.id == right_id).unwrap();
        assert!(final_right.filter.position().0.x < -3.0);
        assert_eq!(tracker.tracks().len(), 2);
    }

    #[test]
    fn clutter_dies_tentative_and_lost_tracks_coast_then_end() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(0.0, &[meas(50.0, 50.0, 0)]);
        assert_eq!(tracker.tracks().len(), 1);
        tracker.update(0.6, &[]);
        assert!(
            tracker.tracks().is_empty(),
            "a one-off detection is not a track"
        );
        for k in 0..5 {
            tracker.update(
                k as f64 * 0.1,
                &[meas(10.0, 0.0, DetectedObject::CLASS_CAR)],
            );
        }
        assert_eq!(tracker.confirmed().count(), 1);
        tracker.update(1.0, &[]);
        assert_eq!(tracker.confirmed().count(), 1, "a confirmed track coasts");
        tracker.update(2.5, &[]);
        assert_eq!(tracker.tracks().len(), 0, "and ends after max_coast");
    }

    #[test]
    fn a_far_outlier_is_gated_out_and_radar_velocity_is_fused() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for k in 0..5 {
            tracker.update(
                k as f64 * 0.1,
                &[meas(10.0 + k as f64, 0.0, DetectedObject::CLASS_CAR)],
            );
        }
        let before = tracker.tracks()[0].id;
        let stats = tracker.update(0.5, &[meas(40.0, 10.0, DetectedObject::CLASS_CAR)]);
        assert_eq!((stats.assigned, stats.born), (0, 1));
        let mut radar = meas(15.0, 0.0, DetectedObject::CLASS_UNKNOWN);
        radar.velocity = Some((Vector2::new(10.0, 0.0), Matrix2::identity() * 0.09));
        let stats = tracker.update(0.5, &[radar]);
        assert_eq!(stats.assigned, 1);
        let track = tracker.tracks().iter().find(|t| t.id == before).unwrap();
        assert!(
            (track.filter.velocity().x - 10.0).abs() < 1.0,
            "{:?}",
            track.filter.velocity()
        );
    }

    #[test]
    fn detections_move_into_the_map_frame() {
        let mut o = DetectedObject::default();
        o.position.x = 10.0;
        o.position_covariance = [0.01, 0.0, 0.0, 0.0, 0.25, 0.0, 0.0, 0.0, 0.1];
        let m = measurement(
            &o,
            (100.0, 50.0, std::f64::consts::FRAC_PI_2),
            &TrackerConfig::default().lidar,
        )
        .unwrap();
        assert!((m.position - Vector2::new(100.0, 60.0)).norm() < 1e-9);
        // The long axis of the covariance turns with the vehicle.
        assert!(
            (m.position_cov[(0, 0)] - 0.25).abs() < 1e-9
                && (m.position_cov[(1, 1)] - 0.0225).abs() < 1e-9,
            "{:?}",
            m.position_cov
        );
        o.position.y = f64::NAN;
        assert!(measurement(&o, (0.0, 0.0, 0.0), &TrackerConfig::default().lidar).is_none());
    }
}
