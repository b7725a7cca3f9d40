//! The congestion speed advisor: a learned model, run through ONNX Runtime, that tells
//! the planner how fast to approach slow traffic that regional data report ahead.
//!
//! **What it adds to the baseline.** The planner's congestion lookahead
//! ([`crate::planner::Planner::caps`]) plans to reach a slow stretch's *reported* speed at
//! its *reported* start, as if both stood still until the vehicle gets there. Jams move:
//! their upstream front travels upstream while the inflow exceeds what leaves them and
//! downstream while they dissolve, and a regional tile is up to a window plus an update
//! interval old. The advisor compares the newest regional snapshot of the lane with the one
//! before (where the slow region started then and now, how slow, long and dense it was, how
//! dense and fast the traffic feeding it is, how old the data are) and estimates the speed
//! at which the slow region's front moves, `c`. The advice follows from it by physics: the
//! speed from which braking at `harmonize_decel` meets the moving front at the region's
//! speed, `c + sqrt((v_jam - c)² + 2 b max(d + c·lag - margin, 0))`, with `lag` the data's
//! age plus half its window. The model was trained on hindsight in simulated traffic
//! (`models/speed_advisor/`); its contract, `speed_advisor/1`, is written in
//! `models/README.md` and checked by [`SpeedModel::load`], which refuses a model that does
//! not match and says what differs.
//!
//! **Where it applies.** Only to the first slow region ahead of the vehicle in a lane,
//! starting 0 to `lookahead` metres ahead, when the snapshot before also shows a slow region
//! that starts within [`MATCH`] of it and every feature lies in the range the model was
//! trained on (its `twinlink.feature_ranges`). The model's constraint replaces the baseline's
//! caps of that region's stretches; every other constraint stays the baseline's.
//!
//! **How well.** It predicts the ideal approach speed better than the baseline (in closed
//! loop, `tests/model_gain.rs`: 23 % lower error against the hindsight-ideal advice), but
//! the safety envelope cuts most of that near the reported front, and a vehicle following
//! the advised planner brakes more than one following the baseline in the simulated traffic
//! (see `models/speed_advisor/README.md`). It is therefore off unless configured.
//!
//! **Safety envelope.** The front speed is taken no lower than [`MIN_FRONT_SPEED`]
//! (-25 km/h, faster than jam fronts travel upstream), and the advice is never above the
//! speed from which the vehicle could still reach the *reported* jam speed before the
//! *reported* front braking at the planner's `lookahead_decel`, as if the front had not
//! moved. The planner's safety filter then bounds the plan as it bounds every plan (the
//! limit, the safe following speed behind what the vehicle's sensors see).

use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use crate::planner::PlannerConfig;
use crate::world::{LaneSpeed, WorldModel};

/// The contract this module implements.
pub const CONTRACT: &str = "speed_advisor/1";

/// The input features, in order (SI units; see `models/README.md`).
pub const FEATURES: [&str; 13] = [
    "tail_distance",
    "tail_distance_prev",
    "jam_speed",
    "jam_speed_prev",
    "jam_length",
    "jam_length_prev",
    "jam_density",
    "upstream_speed",
    "upstream_density",
    "speed_limit",
    "snapshot_interval",
    "snapshot_age",
    "window",
];
/// Number of features.
pub const F: usize = FEATURES.len();

/// A stretch is slow below this fraction of the limit (as the baseline's lookahead).
pub const SLOW_FRACTION: f64 = 0.8;
/// Slow stretches this close belong to one slow region [m].
pub const JOIN_GAP: f64 = 100.0;
/// The region's head: its first metres, whose slowest stretch is the jam speed [m].
pub const HEAD: f64 = 500.0;
/// The stretch upstream of the region that feeds it [m].
pub const UPSTREAM: f64 = 1000.0;
/// The snapshot before must show a region starting this close to the newest one's [m].
pub const MATCH: f64 = 1500.0;
/// Region lengths are capped here [m].
pub const LENGTH_CAP: f64 = 5000.0;
/// Slowest front speed the envelope accepts (25 km/h upstream) [m/s].
pub const MIN_FRONT_SPEED: f64 = -25.0 / 3.6;
/// Largest difference between the model's advice and the advice its front speed gives by
/// the contract's formula before the answer is refused [m/s].
pub const HEAD_TOLERANCE: f64 = 0.05;

/// Why a model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file is missing.
    #[error("model file {0} does not exist")]
    Missing(String),
    /// ONNX Runtime's library cannot be found.
    #[error("ONNX Runtime: {0}")]
    NoRuntime(String),
    /// ONNX Runtime refused the model or a run.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The model does not match the contract.
    #[error("model {path} does not match the {CONTRACT} contract: {problem}")]
    Contract {
        /// Model file (or name).
        path: String,
        /// What differs, and what is expected.
        problem: String,
    },
}

fn ort_err(e: impl fmt::Display) -> ModelError {
    ModelError::Runtime(e.to_string())
}

/// ONNX Runtime's environment (one per process, kept for its life); the library comes
/// from `ORT_DYLIB_PATH`.
fn environment() -> Result<ort::environment::Environment, ModelError> {
    static ENV: Mutex<Option<ort::environment::Environment>> = Mutex::new(None);
    let mut env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = env.as_ref() {
        return Ok(env.clone());
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        None => {
            return Err(ModelError::NoRuntime(
                "ORT_DYLIB_PATH is not set; it must name ONNX Runtime's shared library \
                 (`source scripts/env.sh` sets it to the onnxruntime wheel's library)"
                    .into(),
            ))
        }
        Some(p) if !Path::new(&p).exists() => {
            return Err(ModelError::NoRuntime(format!(
                "ORT_DYLIB_PATH={} does not exist (`source scripts/env.sh` sets it to the \
                 onnxruntime wheel's library)",
                p.to_string_lossy()
            )))
        }
        Some(_) => {}
    }
    let built = ort::environment::init()
        .with_name("twinlink")
        .build()
        .map_err(ort_err)?;
    *env = Some(built.clone());
    Ok(built)
}

/// A loaded speed advisor, checked against `speed_advisor/1`. One session, shared by
/// every twin of a host behind a mutex (a run takes a few microseconds).
pub struct SpeedModel {
    session: Mutex<ort::session::Session>,
    name: String,
    ranges: Vec<(f64, f64)>,
    harmonize_decel: f64,
    arrive_margin: f64,
    lookahead: f64,
}

impl fmt::Debug for SpeedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpeedModel")
            .field("name", &self.name)
            .field("ranges", &self.ranges)
            .finish_non_exhaustive()
    }
}

impl SpeedModel {
    /// Loads and checks the model at `path`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        if !path.exists() {
            return Err(ModelError::Missing(path.display().to_string()));
        }
        let env = environment()?;
        let session = ort::session::Session::builder(&env)
            .map_err(ort_err)?
            .with_intra_threads(1)
            .map_err(ort_err)?
            .commit_from_file(path)
            .map_err(ort_err)?;
        Self::check(session, path.display().to_string())
    }

    /// Loads and checks a model from its bytes; `name` names it in errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, ModelError> {
        let env = environment()?;
        let session = ort::session::Session::builder(&env)
            .map_err(ort_err)?
            .with_intra_threads(1)
            .map_err(ort_err)?
            .commit_from_memory(bytes)
            .map_err(ort_err)?;
        Self::check(session, name.to_string())
    }

    fn check(session: ort::session::Session, name: String) -> Result<Self, ModelError> {
        let contract = |problem: String| ModelError::Contract {
            path: name.clone(),
            problem,
        };
        let float = Some(ort::value::TensorElementType::Float32);
        // Inputs: exactly `features`, float32 [N, 13].
        let inputs = session.inputs();
        if inputs.len() != 1 || inputs[0].name() != "features" {
            let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
            return Err(contract(format!(
                "inputs are {names:?}; expected one input \"features\" float32 [N, {F}]"
            )));
        }
        let ty = inputs[0].dtype().tensor_type();
        if ty != float {
            return Err(contract(format!(
                "input \"features\" is {ty:?}; expected float32"
            )));
        }
        let shape: Vec<i64> = inputs[0]
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        if !(shape.len() == 2 && shape[1] == F as i64) {
            return Err(contract(format!(
                "input \"features\" has shape {shape:?}; expected [N, {F}]"
            )));
        }
        // Outputs: `advice` and `front_speed`, float32 [N, 1].
        let outputs = session.outputs();
        let names: Vec<&str> = outputs.iter().map(|o| o.name()).collect();
        if names != ["advice", "front_speed"] {
            return Err(contract(format!(
                "outputs are {names:?}; expected \"advice\" and \"front_speed\", float32 [N, 1]"
            )));
        }
        for o in outputs {
            let ty = o.dtype().tensor_type();
            let shape: Vec<i64> = o
                .dtype()
                .tensor_shape()
                .map(|s| s.to_vec())
                .unwrap_or_default();
            if ty != float || !(shape.len() == 2 && shape[1] == 1) {
                return Err(contract(format!(
                    "output {:?} is {ty:?} {shape:?}; expected float32 [N, 1]",
                    o.name()
                )));
            }
        }
        // Metadata: contract, feature names in order, ranges, the planner settings it
        // was trained for.
        let meta = session.metadata().map_err(ort_err)?;
        let get = |key: &str| {
            meta.custom(key)
                .ok_or_else(|| contract(format!("metadata `{key}` is missing")))
        };
        let found = get("twinlink.contract")?;
        if found != CONTRACT {
            return Err(contract(format!(
                "metadata `twinlink.contract` is {found:?}; expected {CONTRACT:?}"
            )));
        }
        let features = get("twinlink.features")?;
        let names: Vec<&str> = features.split(',').map(str::trim).collect();
        if names != FEATURES {
            let problem = match names.iter().zip(FEATURES).position(|(a, b)| *a != b) {
                Some(i) => format!(
                    "feature {i} is {:?}; expected {:?} (features, in order: {})",
                    names[i],
                    FEATURES[i],
                    FEATURES.join(",")
                ),
                None => format!(
                    "{} features; expected {F}: {}",
                    names.len(),
                    FEATURES.join(",")
                ),
            };
            return Err(contract(format!("metadata `twinlink.features`: {problem}")));
        }
        let ranges_text = get("twinlink.feature_ranges")?;
        let ranges: Vec<(f64, f64)> = ranges_text
            .split(',')
            .map(|r| {
                let (lo, hi) = r.split_once(':')?;
                let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                (lo <= hi).then_some((lo, hi))
            })
            .collect::<Option<_>>()
            .filter(|r: &Vec<(f64, f64)>| r.len() == F)
            .ok_or_else(|| {
                contract(format!(
                    "metadata `twinlink.feature_ranges` is {ranges_text:?}; expected {F} \
                     `min:max` pairs"
                ))
            })?;
        let number = |key: &str| -> Result<f64, ModelError> {
            let text = get(key)?;
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| contract(format!("metadata `{key}` is {text:?}; expected a number")))
        };
        let harmonize_decel = number("twinlink.harmonize_decel")?;
        let arrive_margin = number("twinlink.arrive_margin")?;
        let lookahead = number("twinlink.lookahead")?;
        drop(meta);
        Ok(SpeedModel {
            session: Mutex::new(session),
            name,
            ranges,
            harmonize_decel,
            arrive_margin,
            lookahead,
        })
    }

    /// The file or name it was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The range of each feature in the model's training data.
    pub fn ranges(&self) -> &[(f64, f64)] {
        &self.ranges
    }

    /// Whether every feature lies in the range the model was trained on.
    pub fn covers(&self, features: &[f64; F]) -> bool {
        features
            .iter()
            .zip(&self.ranges)
            .all(|(v, (lo, hi))| v.is_finite() && *lo <= *v && *v <= *hi)
    }

    /// Checks that `config` plans with the settings the model was trained for (its advice
    /// brakes at `harmonize_decel` to `arrive_margin` before the front).
    pub fn check_config(&self, config: &PlannerConfig) -> Result<(), ModelError> {
        for (key, model, planner) in [
            (
                "harmonize_decel",
                self.harmonize_decel,
                config.harmonize_decel,
            ),
            ("arrive_margin", self.arrive_margin, config.arrive_margin),
            ("lookahead", self.lookahead, config.lookahead),
        ] {
            if (model - planner).abs() > 1e-6 {
                return Err(ModelError::Contract {
                    path: self.name.clone(),
                    problem: format!("trained for {key} = {model}, but the planner uses {planner}"),
                });
            }
        }
        Ok(())
    }

    /// Runs the model on `rows`: (advice [m/s], front speed [m/s]) per row.
    pub fn run(&self, rows: &[[f32; F]]) -> Result<Vec<(f64, f64)>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let tensor = ort::value::TensorRef::from_array_view(([rows.len(), F], flat.as_slice()))
            .map_err(ort_err)?;
        // A poisoned lock only means another thread panicked mid-run; the session is fine.
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs!["features" => tensor])
            .map_err(ort_err)?;
        let (_, advice) = outputs["advice"]
            .try_extract_tensor::<f32>()
            .map_err(ort_err)?;
        let (_, front) = outputs["front_speed"]
            .try_extract_tensor::<f32>()
            .map_err(ort_err)?;
        if advice.len() != rows.len() || front.len() != rows.len() {
            return Err(ModelError::Contract {
                path: self.name.clone(),
                problem: format!(
                    "{} rows in, {} advice and {} front speeds out; expected one each per row",
                    rows.len(),
                    advice.len(),
                    front.len()
                ),
            });
        }
        Ok(advice
            .iter()
            .zip(front)
            .map(|(&a, &c)| (a as f64, c as f64))
            .collect())
    }
}

/// A slow region: slow stretches of one lane joined while less than [`JOIN_GAP`] apart.
#[derive(Debug, Clone, PartialEq)]
struct Region<'a> {
    start: f64,
    end: f64,
    stretches: Vec<&'a LaneSpeed>,
}

/// Slow regions of `lane` in `stretches`, in route order: stretches slower than `below`
/// (and, unless `behind_ok`, ending after `ego_s`).
fn regions<'a>(
    stretches: &'a [LaneSpeed],
    lane: i32,
    ego_s: f64,
    below: f64,
    behind_ok: bool,
) -> Vec<Region<'a>> {
    let mut slow: Vec<&LaneSpeed> = stretches
        .iter()
        .filter(|t| t.lane == lane && t.speed < below && (behind_ok || t.end_s > ego_s))
        .collect();
    slow.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    let mut out: Vec<Region> = Vec::new();
    for t in slow {
        match out.last_mut() {
            Some(r) if t.start_s <= r.end + JOIN_GAP => {
                r.end = r.end.max(t.end_s);
                r.stretches.push(t);
            }
            _ => out.push(Region {
                start: t.start_s,
                end: t.end_s,
                stretches: vec![t],
            }),
        }
    }
    out
}

/// (slowest speed, length-weighted mean density) of the region's first [`HEAD`] metres.
fn head(r: &Region) -> (f64, f64) {
    let sel = r.stretches.iter().filter(|t| t.start_s < r.start + HEAD);
    let (mut speed, mut w, mut dw) = (f64::INFINITY, 0.0, 0.0);
    for t in sel {
        speed = speed.min(t.speed);
        let len = t.end_s - t.start_s;
        w += len;
        dw += len * t.density;
    }
    (speed, dw / w)
}

/// Length-weighted mean speed and density of `lane`'s stretches over `[start - UPSTREAM,
/// start)`; (`limit`, 0) without any.
fn upstream(stretches: &[LaneSpeed], lane: i32, start: f64, limit: f64) -> (f64, f64) {
    let (mut w, mut vw, mut dw) = (0.0, 0.0, 0.0);
    for t in stretches.iter().filter(|t| t.lane == lane) {
        let len = (t.end_s.min(start) - t.start_s.max(start - UPSTREAM)).max(0.0);
        w += len;
        vw += len * t.speed;
        dw += len * t.density;
    }
    if w > 0.0 {
        (vw / w, dw / w)
    } else {
        (limit, 0.0)
    }
}

/// The advisor's input for one lane, and where its region is.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvisorInput {
    /// Lane.
    pub lane: i32,
    /// The features, in [`FEATURES`] order.
    pub features: [f64; F],
    /// Route position of the slow region's start in the newest snapshot [m].
    pub region_start: f64,
    /// Route position of the slow region's end in the newest snapshot [m].
    pub region_end: f64,
}

/// The features of the first slow region ahead in `lane` for the vehicle of `world`, or
/// `None` when there is none starting within `lookahead` (measured from the vehicle), no
/// regional update cycle before the newest, no slow region in it within [`MATCH`] of the
/// newest one's start, or no time yet (see [`WorldModel::now`]). The definitions are those
/// of `models/speed_advisor/traffic_sim.py` (`features`).
pub fn features(world: &WorldModel, lane: i32, lookahead: f64) -> Option<AdvisorInput> {
    let ego_s = world.ego().s;
    let limit = world.road().speed_limit_at(ego_s);
    let below = SLOW_FRACTION * limit;
    let now = world.now()?;
    let (stamp, window) = world.traffic_stamp()?;
    let prev = world.previous_traffic()?;
    let current = world.traffic();
    let r = regions(current, lane, ego_s, below, false)
        .into_iter()
        .find(|r| r.start < ego_s + lookahead)?;
    let p = regions(&prev.lanes, lane, ego_s, below, true)
        .into_iter()
        .min_by(|a, b| {
            (a.start - r.start)
                .abs()
                .total_cmp(&(b.start - r.start).abs())
        })?;
    if (p.start - r.start).abs() > MATCH {
        return None;
    }
    let (jam_speed, jam_density) = head(&r);
    let (jam_speed_prev, _) = head(&p);
    let (up_speed, up_density) = upstream(current, lane, r.start, limit);
    Some(AdvisorInput {
        lane,
        features: [
            r.start - ego_s,
            p.start - ego_s,
            jam_speed,
            jam_speed_prev,
            (r.end - r.start).min(LENGTH_CAP),
            (p.end - p.start).min(LENGTH_CAP),
            jam_density,
            up_speed,
            up_density,
            limit,
            stamp - prev.stamp,
            now - stamp,
            window,
        ],
        region_start: r.start,
        region_end: r.end,
    })
}

/// The contract's physics head: the speed from which braking at `b` meets a front `d`
/// metres ahead (reported `lag` seconds ago, moving at `c` since), `margin` before it, at
/// the region's speed `v_jam` [m/s].
pub fn front_speed_advice(d: f64, c: f64, lag: f64, v_jam: f64, b: f64, margin: f64) -> f64 {
    let room = (d + c * lag - margin).max(0.0);
    c + ((v_jam - c).powi(2) + 2.0 * b * room).max(0.0).sqrt()
}

/// The model's advice for one lane, within the safety envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct CongestionAdvice {
    /// Lane.
    pub lane: i32,
    /// Route position of the slow region's start in the newest snapshot [m].
    pub region_start: f64,
    /// Route position of the slow region's end in the newest snapshot [m].
    pub region_end: f64,
    /// The region's speed (slowest stretch of its head) [m/s].
    pub jam_speed: f64,
    /// The front's speed the advice uses: the model's, no lower than [`MIN_FRONT_SPEED`]
    /// [m/s].
    pub front_speed: f64,
    /// Age of the newest snapshot plus half its window [s].
    pub lag: f64,
    /// The model's answer for the vehicle's position (before the envelope) [m/s].
    pub model_advice: f64,
}

impl CongestionAdvice {
    /// Whether the model's constraint replaces the baseline's for a slow stretch starting
    /// at route position `start` (one of the region's).
    pub fn replaces(&self, start: f64) -> bool {
        start >= self.region_start - 1e-6 && start <= self.region_end + 1e-6
    }

    /// The speed cap at route position `s`: the physics head with the envelope's front
    /// speed, and no more than what reaches the reported jam speed before the reported
    /// front braking at `lookahead_decel`, as if the front had not moved [m/s].
    pub fn cap_at(&self, s: f64, c: &PlannerConfig) -> f64 {
        let d = self.region_start - s;
        let head = front_speed_advice(
            d,
            self.front_speed,
            self.lag,
            self.jam_speed,
            c.harmonize_decel,
            c.arrive_margin,
        );
        let envelope = (self.jam_speed.powi(2)
            + 2.0 * c.lookahead_decel * (d - c.arrive_margin).max(0.0))
        .sqrt();
        head.min(envelope)
    }

    /// The reason of a recommendation bound by this advice, for a vehicle at `s`.
    pub fn reason(&self, s: f64) -> String {
        format!(
            "traffic at {:.0} km/h {:.0} m ahead in lane {}, front moving {:+.0} km/h (model)",
            self.jam_speed * 3.6,
            (self.region_start - s).max(0.0),
            self.lane,
            self.front_speed * 3.6
        )
    }
}

/// The model's advice for `lanes` (those that exist, where it applies), from one batched
/// run. An answer whose advice does not follow from its front speed by the contract's
/// formula is refused (an error).
pub fn advise(
    model: &SpeedModel,
    world: &WorldModel,
    lanes: &[i32],
    config: &PlannerConfig,
) -> Result<Vec<CongestionAdvice>, ModelError> {
    let inputs: Vec<AdvisorInput> = lanes
        .iter()
        .filter(|&&l| world.road().has_lane(l))
        .filter_map(|&l| features(world, l, config.lookahead))
        .filter(|i| (0.0..=config.lookahead).contains(&i.features[0]) && model.covers(&i.features))
        .collect();
    let rows: Vec<[f32; F]> = inputs
        .iter()
        .map(|i| i.features.map(|v| v as f32))
        .collect();
    let answers = model.run(&rows)?;
    let mut out = Vec::with_capacity(inputs.len());
    for (input, (advice, front)) in inputs.iter().zip(answers) {
        let f = &input.features;
        let lag = f[11] + 0.5 * f[12];
        // The model computes in float32; recompute from the same float32 inputs.
        let f32_ = |v: f64| v as f32 as f64;
        let expected = front_speed_advice(
            f32_(f[0]),
            front,
            f32_(f[11]) + 0.5 * f32_(f[12]),
            f32_(f[2]),
            config.harmonize_decel,
            config.arrive_margin,
        )
        .min(f32_(f[9]));
        if !(advice.is_finite() && front.is_finite())
            || (advice - expected).abs() > HEAD_TOLERANCE * expected.max(1.0)
        {
            return Err(ModelError::Contract {
                path: model.name().to_string(),
                problem: format!(
                    "advice {advice} m/s does not follow from front speed {front} m/s \
                     (the contract's formula gives {expected:.3} m/s)"
                ),
            });
        }
        out.push(CongestionAdvice {
            lane: input.lane,
            region_start: input.region_start,
            region_end: input.region_end,
            jam_speed: f[2],
            front_speed: front.max(MIN_FRONT_SPEED),
            lag,
            model_advice: advice,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{PlanContext, Planner};
    use crate::road::Road;
    use std::path::PathBuf;
    use std::sync::Arc;
    use twinlink_msgs::builtin_interfaces::msg::Duration;
    use twinlink_msgs::twin_msgs::msg::{LaneTraffic, Recommendation, RegionalTraffic};

    fn models_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/speed_advisor")
    }

    fn require_runtime() {
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            panic!(
                "ORT_DYLIB_PATH is not set: the speed advisor's tests run the real model \
                 through ONNX Runtime; `source scripts/env.sh` first (make test does)"
            );
        }
    }

    fn fixture(name: &str) -> Result<SpeedModel, ModelError> {
        require_runtime();
        SpeedModel::load(&models_dir().join("fixtures").join(name))
    }

    /// A tile of one lane's stretches [(start, end, speed, density)] on a straight road
    /// with a segment per kilometre, stamped `stamp`.
    pub(crate) fn tile(
        stretches: &[[f64; 4]],
        lane: i32,
        stamp: f64,
        window: f64,
    ) -> RegionalTraffic {
        let mut t = RegionalTraffic {
            tile_id: "t".into(),
            window: Duration {
                sec: window as i32,
                nanosec: ((window.fract()) * 1e9) as u32,
            },
            lanes: stretches
                .iter()
                .map(|&[a, b, v, k]| {
                    let seg = (a / 1000.0).floor();
                    LaneTraffic {
                        segment_id: format!("seg-{}", seg as i64),
                        lane_index: lane,
                        start_s: a - seg * 1000.0,
                        end_s: b - seg * 1000.0,
                        mean_speed: v as f32,
                        density: k as f32,
                        flow: (v * k * 3.6) as f32,
                    }
                })
                .collect(),
            contributors: 50,
            k_threshold: 10,
            ..Default::default()
        };
        t.header.stamp = crate::planner::ros_time((stamp * 1e6).round() as u64);
        t
    }

    #[test]
    fn the_committed_model_loads_and_matches_the_contract() {
        require_runtime();
        let model = SpeedModel::load(&models_dir().join("speed_advisor.onnx")).unwrap();
        assert_eq!(model.ranges().len(), F);
        model.check_config(&PlannerConfig::default()).unwrap();
        let other = PlannerConfig {
            harmonize_decel: 0.5,
            ..Default::default()
        };
        let e = model.check_config(&other).unwrap_err().to_string();
        assert!(
            e.contains("harmonize_decel = 0.3") && e.contains("0.5"),
            "{e}"
        );
        assert!(Planner::default().with_speed_model(Arc::new(model)).is_ok());
    }

    #[test]
    fn mismatching_models_are_refused_with_what_differs() {
        let expect = |name: &str, needles: &[&str]| {
            let e = fixture(name).unwrap_err().to_string();
            assert!(e.contains(CONTRACT), "{name}: {e}");
            for n in needles {
                assert!(e.contains(n), "{name}: {e:?} lacks {n:?}");
            }
        };
        expect(
            "wrong_contract.onnx",
            &["twinlink.contract", "\"speed_advisor/2\""],
        );
        expect("no_contract.onnx", &["`twinlink.contract` is missing"]);
        expect(
            "wrong_features.onnx",
            &["feature 2 is \"jam_speed_prev\"", "expected \"jam_speed\""],
        );
        expect("wrong_width.onnx", &["shape [-1, 12]", "expected [N, 13]"]);
        expect("wrong_type.onnx", &["Float64", "expected float32"]);
        expect(
            "wrong_outputs.onnx",
            &["outputs are [\"speed\", \"front_speed\"]"],
        );
        assert!(matches!(
            SpeedModel::load(Path::new("/nonexistent/speed_advisor.onnx")),
            Err(ModelError::Missing(_))
        ));
        // The same checks on bytes (an operator's model read from elsewhere).
        let bytes = std::fs::read(models_dir().join("fixtures/wrong_contract.onnx")).unwrap();
        let e = SpeedModel::from_bytes(&bytes, "upload")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model upload") && e.contains("speed_advisor/2"),
            "{e}"
        );
        // A model that keeps the contract loads.
        fixture("valid_tiny.onnx").unwrap();
    }

    #[test]
    fn features_match_the_training_scripts() {
        let text = std::fs::read_to_string(models_dir().join("fixtures/features.json")).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let names: Vec<&str> = fixture["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, FEATURES);
        let mut checked = 0;
        for case in fixture["cases"].as_array().unwrap() {
            let limit = case["limit"].as_f64().unwrap();
            let road = Arc::new(Road::straight(10_000.0, 1, limit).unwrap());
            let snapshot = |key: &str| {
                let s = &case[key];
                let stretches: Vec<[f64; 4]> = s["stretches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        let r = r.as_array().unwrap();
                        [0, 1, 2, 3].map(|i| r[i].as_f64().unwrap())
                    })
                    .collect();
                (
                    tile(
                        &stretches,
                        0,
                        s["stamp"].as_f64().unwrap(),
                        s["window"].as_f64().unwrap(),
                    ),
                    s["arrival"].as_f64().unwrap(),
                )
            };
            for sit in case["situations"].as_array().unwrap() {
                let mut w = WorldModel::new(road.clone());
                for key in ["previous", "newest"] {
                    let (t, arrival) = snapshot(key);
                    w.apply_regional(&t, arrival).unwrap();
                }
                let ego_s = sit["ego_s"].as_f64().unwrap();
                w.set_ego(ego_s, 0.0, 0.0, 25.0, 4.5, 1.9);
                w.expire(case["now"].as_f64().unwrap());
                let got = features(&w, 0, 3000.0).map(|i| i.features);
                match sit["features"].as_array() {
                    None => assert!(got.is_none(), "ego at {ego_s}: {got:?}"),
                    Some(want) => {
                        let got = got.unwrap_or_else(|| panic!("ego at {ego_s}: no features"));
                        for (i, (g, w)) in got.iter().zip(want).enumerate() {
                            let w = w.as_f64().unwrap();
                            assert!(
                                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                                "ego at {ego_s}: {} is {g}, the script says {w}",
                                FEATURES[i]
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 9, "{checked}");
    }

    /// A road with a slow region whose front moved 200 m upstream between two updates
    /// (40 s apart), and the vehicle 1000 m before it.
    fn approaching_front(ego_s: f64) -> WorldModel {
        let limit = 33.0;
        let mut w = WorldModel::new(Arc::new(Road::straight(10_000.0, 1, limit).unwrap()));
        let cells = |front: f64| -> Vec<[f64; 4]> {
            (0..100)
                .map(|i| {
                    let a = i as f64 * 100.0;
                    let slow = a >= front && a < front + 1200.0;
                    if slow {
                        [a, a + 100.0, 3.0, 80.0]
                    } else {
                        [a, a + 100.0, 32.0, 18.0]
                    }
                })
                .collect()
        };
        let t0 = 1_700_000_000.0;
        w.apply_regional(&tile(&cells(6200.0), 0, t0, 40.0), t0 + 3.0)
            .unwrap();
        w.apply_regional(&tile(&cells(6000.0), 0, t0 + 40.0, 40.0), t0 + 43.0)
            .unwrap();
        w.set_ego(ego_s, 0.0, 0.0, 30.0, 4.5, 1.9);
        w.expire(t0 + 50.0);
        w
    }

    #[test]
    fn the_planner_uses_the_model_where_it_applies_and_bounds_it() {
        require_runtime();
        let model = Arc::new(SpeedModel::load(&models_dir().join("speed_advisor.onnx")).unwrap());
        let base = Planner::default();
        let with = Planner::default().with_speed_model(model.clone()).unwrap();
        let ctx = PlanContext {
            state_age: 0.1,
            horizon: 10.0,
        };
        let w = approaching_front(5000.0);
        let input = features(&w, 0, 3000.0).unwrap();
        assert_eq!(input.features[0], 1000.0);
        assert_eq!(input.features[1], 1200.0);
        assert_eq!(input.features[10], 40.0);
        assert_eq!(input.features[11], 10.0);
        let a = base.plan(&w, &ctx);
        let b = with.plan(&w, &ctx);
        assert_eq!(a.reason_code, Recommendation::REASON_CONGESTION_AHEAD);
        assert!(!a.reason.contains("(model)"), "{}", a.reason);
        assert_eq!(b.reason_code, Recommendation::REASON_CONGESTION_AHEAD);
        assert!(b.reason.contains("(model)"), "{}", b.reason);
        // The advised speed is the model's, through the envelope: the physics head with the
        // model's front speed at the vehicle's position.
        let c = PlannerConfig::default();
        let advice = advise(&model, &w, &[0], &c).unwrap().remove(0);
        assert_eq!(advice.region_start, 6000.0);
        assert!(
            (b.target_speed - advice.cap_at(5000.0, &c)).abs() < 1e-9,
            "{b:?}"
        );
        assert!(
            (advice.model_advice - b.target_speed).abs() < 0.05,
            "{advice:?}"
        );
        // The envelope: never above reaching the reported jam speed before the reported
        // front at lookahead_decel; the plan (horizon included) never above the limit.
        let envelope =
            (3.0f64.powi(2) + 2.0 * c.lookahead_decel * (1000.0 - c.arrive_margin)).sqrt();
        assert!(advice.cap_at(5000.0, &c) <= envelope + 1e-9);
        assert!(b.horizon.iter().all(|h| h.1 <= 33.0 + 1e-9));
        // Even a model answer of a front racing upstream is bounded below by the envelope.
        let racing = CongestionAdvice {
            front_speed: MIN_FRONT_SPEED,
            ..advice.clone()
        };
        assert!(racing.cap_at(5000.0, &c) >= 3.0);
        // Where the model does not apply (no earlier snapshot), the baseline plans.
        let mut fresh = WorldModel::new(Arc::new(w.road().clone()));
        let t0 = 1_700_000_000.0;
        fresh
            .apply_regional(&tile(&[[6000.0, 7000.0, 3.0, 80.0]], 0, t0, 40.0), t0 + 1.0)
            .unwrap();
        fresh.set_ego(5000.0, 0.0, 0.0, 30.0, 4.5, 1.9);
        fresh.expire(t0 + 5.0);
        assert!(features(&fresh, 0, 3000.0).is_none());
        assert_eq!(with.plan(&fresh, &ctx), base.plan(&fresh, &ctx));
    }

    #[test]
    fn tiles_of_one_update_cycle_make_one_snapshot() {
        let mut w = approaching_front(5000.0);
        let (stamp, _) = w.traffic_stamp().unwrap();
        let prev = w.previous_traffic().unwrap().stamp;
        // Another tile of the same cycle (stamped 0.5 s later) does not roll the snapshot.
        w.apply_regional(
            &tile(&[[9900.0, 10_000.0, 30.0, 10.0]], 0, stamp + 0.5, 40.0),
            stamp + 4.0,
        )
        .unwrap();
        assert_eq!(w.traffic_stamp().unwrap().0, stamp);
        assert_eq!(w.previous_traffic().unwrap().stamp, prev);
        // The next cycle does.
        w.apply_regional(
            &tile(&[[9900.0, 10_000.0, 30.0, 10.0]], 0, stamp + 40.0, 40.0),
            stamp + 44.0,
        )
        .unwrap();
        assert_eq!(w.traffic_stamp().unwrap().0, stamp + 40.0);
        assert_eq!(w.previous_traffic().unwrap().stamp, stamp);
    }
}
