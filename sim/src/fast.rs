//! Fast mode: the world, every connected vehicle's sensors and link, and every twin, in
//! one process on the world's virtual clock.
//!
//! Each connected vehicle gets, when it enters, its key pair, a PE-to-DR link path (the
//! link's own sealing and receive code: [`twinlink_link::link::IngestPipeline`]) and a twin
//! ([`twin_dr_host::twin::Twin`], the DR host's own). Every 0.1 s it sends one fused
//! summary (the union of what its LiDAR, radar and camera models report, nearest report
//! per object; [`crate::sensors`]), every 0.5 s its state; each is CDR-encoded, sealed,
//! opened and decoded as on the real link, then applied to the twin. Every 0.5 s the twin
//! plans, and the vehicle drives no faster than the advised speed until the next advice.
//!
//! Coverage: where a vehicle has none (a tunnel, a dead zone), its messages wait, the
//! newest of each stream kept as the link's outbox coalesces them, and go first when it is
//! covered again; the twin keeps planning on its predicted estimate, but its advice does
//! not reach the vehicle, whose last advice lapses at its `valid_until`.
//!
//! Differences from the real-time mode, which reports state: object-level sensors instead
//! of point clouds and images (the same occlusion geometry); one fused summary instead of
//! one per sensor; coverage only as there or not (bandwidth, latency and loss act on the
//! real link in real-time mode); frames are measured as sealed, without the
//! acknowledgements and path reports that ride on them.
//!
//! With twins off, the same world runs without them: the baseline of a comparison.

// Messages are built field by field from their defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use twin_dr_host::planner::{Planner, PlannerConfig};
use twin_dr_host::relay::Outcome;
use twin_dr_host::road::{Road, RoadSpec, SegmentSpec, SpeedLimit};
use twin_dr_host::tracker::TrackerConfig;
use twin_dr_host::twin::{Twin, TwinSettings};
use twinlink_link::link::{FrameSealer, IngestPipeline};
use twinlink_link::minimal::{from_link, ros_time, to_link};
use twinlink_link::{KeyMaterial, Priority, VehicleId};
use twinlink_msgs::twin_msgs::msg::{
    PerceptionSummary, Recommendation, SharedObservation, SharingPolicy, SharingRule, VehicleState,
};
use twinlink_msgs::Message as _;
use twinlink_share::{FleetAuthority, KeyPair, PseudonymIssuer, Verifier, VerifierConfig};

use crate::scenario::Scenario;
use crate::sensors::{observe, vehicle_state, SensorModel};
use crate::world::{World, WorldStats};

/// The virtual clock's epoch: simulated time 0 is this many seconds after the Unix epoch
/// (stamps must look like ROS times; a constant keeps runs identical).
pub const EPOCH_S: f64 = 1_800_000_000.0;

/// Why a fast run could not start.
#[derive(Debug, thiserror::Error)]
pub enum FastError {
    /// The scenario's road is not one the twin can model.
    #[error("the twin's road model refused the scenario's road: {0}")]
    Road(String),
    /// A vehicle's keys or link path could not be made.
    #[error("vehicle {vehicle}: {message}")]
    Link {
        /// The vehicle.
        vehicle: String,
        /// What failed.
        message: String,
    },
}

/// Settings of a fast run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastConfig {
    /// Whether connected vehicles have twins (off: the baseline).
    pub twins: bool,
    /// Fused summaries per second per connected vehicle.
    pub summary_hz: f64,
    /// States per second per connected vehicle.
    pub state_hz: f64,
    /// Recommendations per second per twin.
    pub recommend_hz: f64,
    /// Shortest horizon of a recommendation [s].
    pub horizon_s: f64,
    /// Whether twins relay hazards to each other (every vehicle permits hazards to any
    /// twin at `relay_precision_m` and lets its twin fetch): the DR host's own disclosure,
    /// signing, verification and consent code, delivered within the step.
    pub relay: bool,
    /// Spatial precision of the relayed hazards [m].
    pub relay_precision_m: f32,
}

impl Default for FastConfig {
    fn default() -> Self {
        FastConfig {
            twins: true,
            summary_hz: 10.0,
            state_hz: 2.0,
            recommend_hz: 2.0,
            horizon_s: 5.0,
            relay: false,
            relay_precision_m: 10.0,
        }
    }
}

/// What a fast run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FastReport {
    /// Scenario name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// Whether twins ran.
    pub twins: bool,
    /// Simulated time [s].
    pub simulated_s: f64,
    /// Wall-clock time [s].
    pub wall_s: f64,
    /// Simulated seconds per wall-clock second.
    pub realtime_factor: f64,
    /// Vehicles on the road at the end.
    pub vehicles_at_end: usize,
    /// Connected vehicles that had a twin.
    pub twinned: usize,
    /// Collisions.
    pub collisions: u64,
    /// Hard brakes (deceleration beyond 4 m/s²).
    pub hard_brakes: u64,
    /// Smallest time-to-collision [s] (null when nothing closed in).
    pub min_ttc_s: Option<f64>,
    /// Hard brakes of connected vehicles (the ones twins advise).
    pub hard_brakes_connected: u64,
    /// Smallest time-to-collision of a connected vehicle [s] (null when none closed in).
    pub min_ttc_connected_s: Option<f64>,
    /// Mean speed [m/s].
    pub mean_speed_mps: f64,
    /// Vehicles leaving the road per hour.
    pub throughput_per_h: f64,
    /// Summaries the twins fused.
    pub summaries: u64,
    /// States the twins applied.
    pub states: u64,
    /// Recommendations made.
    pub recommendations: u64,
    /// Inter-twin relay counters (zero when the relay is off).
    pub relay: RelayCounts,
    /// Messages a twin refused.
    pub refused: u64,
    /// The same, by reason (the DR host's metric labels).
    pub refused_by_reason: BTreeMap<String, u64>,
    /// Bytes of raw sensor data the summaries stand for (kept on board).
    pub raw_sensor_bytes: u64,
    /// Bytes of sealed frames up (summaries and states).
    pub uplink_bytes: u64,
    /// Bytes of sealed frames down (recommendations).
    pub downlink_bytes: u64,
    /// `raw_sensor_bytes / uplink_bytes` (null without twins).
    pub uplink_reduction_factor: Option<f64>,
    /// Share of recommendations whose speed was below what the vehicle would have driven.
    pub advice_binding_share: f64,
    /// Twin's estimate of its vehicle's position against the truth at each
    /// recommendation: mean [m].
    pub estimate_error_mean_m: f64,
    /// The same, 95th percentile [m].
    pub estimate_error_p95_m: f64,
    /// Vehicle-steps without coverage (connected vehicles).
    pub offline_vehicle_s: f64,
    /// Messages that waited for coverage (before the link's coalescing).
    pub held_messages: u64,
    /// Advice that expired before the next one arrived.
    pub expired_advice: u64,
    /// The twin's estimate against the truth while its vehicle had no coverage (the twin
    /// predicting): 95th percentile [m] (0 without outages).
    pub estimate_error_offline_p95_m: f64,
    /// The world's own counters.
    #[serde(skip)]
    pub world: WorldStats,
}

/// What the inter-twin relay did in a fast run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayCounts {
    /// Disclosures the twins sealed (new, changed, withdrawn and announced hazards).
    pub disclosed: u64,
    /// Disclosures the consent refused.
    pub denied: u64,
    /// Disclosures that passed verification.
    pub verified: u64,
    /// Disclosures refused by verification.
    pub rejected: u64,
    /// Disclosures another twin took with at least one new or changed hazard on its route
    /// (what it would pass on to its vehicle; repeats of what it has are not counted).
    pub taken: u64,
}

/// The fleet's credentials and the receiving side's verifier, for the relay.
struct Relay {
    issuer: PseudonymIssuer,
    verifier: Verifier,
    policy: SharingPolicy,
    counts: RelayCounts,
}

impl Relay {
    fn new(precision_m: f32) -> Result<Relay, FastError> {
        let fail = |e: &dyn std::fmt::Display| FastError::Link {
            vehicle: "(relay)".into(),
            message: e.to_string(),
        };
        let authority =
            FleetAuthority::new("sim-fleet", KeyPair::generate()).map_err(|e| fail(&e))?;
        let key = KeyPair::generate();
        let epoch_us = (EPOCH_S * 1e6) as u64;
        let day_us = 86_400_000_000;
        let cert = authority
            .certify(key.public_key(), epoch_us - day_us, epoch_us + 30 * day_us)
            .map_err(|e| fail(&e))?;
        let issuer = PseudonymIssuer::new(key, cert).map_err(|e| fail(&e))?;
        let verifier = Verifier::new(
            "sim-fleet",
            authority.public_key(),
            VerifierConfig::default(),
        )
        .map_err(|e| fail(&e))?;
        let policy = SharingPolicy {
            rules: vec![SharingRule {
                category: SharedObservation::CATEGORY_HAZARDS,
                audience: SharingRule::AUDIENCE_ANY_TWIN,
                spatial_precision: precision_m,
                max_age: 30.0,
                ..Default::default()
            }],
            allow_autonomous_fetch: true,
            version: 0,
        };
        Ok(Relay {
            issuer,
            verifier,
            policy,
            counts: RelayCounts::default(),
        })
    }
}

struct Connected {
    name: String,
    twin: Twin,
    link: IngestPipeline,
    up: FrameSealer,
    /// Seals the recommendations, to measure the downlink frames.
    down: FrameSealer,
    next_summary: f64,
    next_state: f64,
    next_advice: f64,
    /// Messages waiting for coverage, newest per stream (as the link's outbox coalesces).
    waiting: BTreeMap<String, twinlink_link::Message>,
    /// Whether the vehicle had coverage at its last step.
    covered: bool,
}

/// A fast-mode run in progress.
pub struct FastRun {
    world: World,
    config: FastConfig,
    settings: TwinSettings,
    sensors: Vec<SensorModel>,
    rng: ChaCha8Rng,
    connected: BTreeMap<u32, Connected>,
    twinned: usize,
    counts: Counts,
    errors: Vec<f64>,
    offline_errors: Vec<f64>,
    /// Until when each vehicle's advice holds (simulated seconds).
    advice_until: BTreeMap<u32, f64>,
    /// The inter-twin relay, when on.
    relay: Option<Relay>,
}

#[derive(Default)]
struct Counts {
    refused_by_reason: BTreeMap<&'static str, u64>,
    offline_steps: u64,
    held: u64,
    expired_advice: u64,
    summaries: u64,
    states: u64,
    recommendations: u64,
    binding: u64,
    refused: u64,
    raw: u64,
    up: u64,
    down: u64,
}

/// The twin's road for the scenario's: straight along map x, lane 0's centre at y = 0.
pub fn twin_road(s: &Scenario) -> Result<Road, FastError> {
    Road::new(twin_road_spec(s)).map_err(|e| FastError::Road(e.to_string()))
}

/// The scenario's road as the DR host's road file describes it (`--road`): straight along
/// map x, lane 0's centre at y = 0, segments of 1 km.
pub fn twin_road_spec(s: &Scenario) -> RoadSpec {
    let n = (s.road.length_m / 1000.0).ceil().max(1.0) as usize;
    RoadSpec {
        points: vec![[0.0, 0.0], [s.road.length_m, 0.0]],
        lanes: s.road.lanes as u32,
        lane_width: s.road.lane_width_m,
        segments: (0..n)
            .map(|i| SegmentSpec {
                id: format!("seg-{i}"),
                length: (s.road.length_m - 1000.0 * i as f64).min(1000.0),
            })
            .collect(),
        speed_limits: vec![SpeedLimit {
            from_s: 0.0,
            limit: s.road.speed_limit_mps,
        }],
    }
}

/// One summary from several sensors' reports: for each object, the report of the sensor
/// nearest to it in noise (the first sensor that reported it, sensors ordered by accuracy).
pub fn fuse(reports: Vec<PerceptionSummary>) -> PerceptionSummary {
    let mut fused = PerceptionSummary::default();
    let mut seen = std::collections::HashSet::new();
    let mut raw = 0;
    for r in reports {
        raw += r.raw_bytes;
        if fused.header.frame_id.is_empty() {
            fused.header = r.header.clone();
        }
        for o in r.objects {
            if seen.insert(o.id) {
                fused.objects.push(o);
            }
        }
    }
    fused.sensor_id = "fused".into();
    fused.sensor_kind = PerceptionSummary::SENSOR_FUSED;
    fused.sensor_pose.orientation.w = 1.0;
    fused.horizontal_fov = std::f32::consts::TAU;
    fused.vertical_fov = 0.5;
    fused.min_range = 0.5;
    fused.max_range = 200.0;
    fused.raw_bytes = raw;
    fused
}

/// The lane a recommendation advises changing to because of a hazard or closure ahead
/// (drivers take such advice; a change for speed alone is left to them).
pub fn advised_lane(r: &Recommendation) -> Option<usize> {
    (r.lane_change != Recommendation::LANE_KEEP)
        .then(|| usize::try_from(r.target_lane).ok())
        .flatten()
}

/// The 95th percentile of `values` (0 when there are none).
fn p95(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let i = ((sorted.len() as f64 * 0.95) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0.0)
}

impl FastRun {
    /// A run of `scenario` with `config`.
    pub fn new(scenario: &Scenario, config: FastConfig) -> Result<FastRun, FastError> {
        Ok(FastRun {
            world: World::new(scenario),
            config,
            settings: TwinSettings {
                road: Arc::new(twin_road(scenario)?),
                tracker: TrackerConfig::default(),
                planner: Planner::new(PlannerConfig::default()),
            },
            // LiDAR first: the most accurate report of an object is kept.
            sensors: vec![
                SensorModel::lidar(),
                SensorModel::camera(),
                SensorModel::radar(),
            ],
            rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x5e_5005),
            connected: BTreeMap::new(),
            twinned: 0,
            counts: Counts::default(),
            errors: Vec::new(),
            offline_errors: Vec::new(),
            advice_until: BTreeMap::new(),
            relay: if config.relay {
                Some(Relay::new(config.relay_precision_m)?)
            } else {
                None
            },
        })
    }

    /// The world.
    pub fn world(&self) -> &World {
        &self.world
    }

    fn connect(&mut self, id: u32) -> Result<(), FastError> {
        let t = self.world.time();
        let name = format!("sim-{id:05}");
        let fail = |message: String| FastError::Link {
            vehicle: name.clone(),
            message,
        };
        let vehicle = VehicleId::new(&name).map_err(|e| fail(e.to_string()))?;
        let (pe, dr) = KeyMaterial::generate_pair(&vehicle).map_err(|e| fail(e.to_string()))?;
        let (link, mut up) =
            IngestPipeline::new(pe.clone(), dr.clone()).map_err(|e| fail(e.to_string()))?;
        // Vehicles compress their frames, as the twin link node does.
        up.set_compress(true);
        let (_, down) = IngestPipeline::new(pe, dr).map_err(|e| fail(e.to_string()))?;
        // Spread the vehicles' clocks over the periods.
        let phase = |rng: &mut ChaCha8Rng, hz: f64| t + rng.random_range(0.0..1.0) / hz;
        let mut twin = Twin::new(&name, &self.settings);
        if let Some(relay) = &self.relay {
            let stamp_us = ((EPOCH_S + t) * 1e6) as u64;
            twin.on_policy(relay.policy.clone(), stamp_us)
                .map_err(|e| fail(e.to_string()))?;
        }
        let c = Connected {
            twin,
            name,
            link,
            up,
            down,
            next_summary: phase(&mut self.rng, self.config.summary_hz),
            next_state: t,
            next_advice: phase(&mut self.rng, self.config.recommend_hz),
            waiting: BTreeMap::new(),
            covered: true,
        };
        self.connected.insert(id, c);
        self.twinned += 1;
        Ok(())
    }

    /// Advances the world by one step and runs every twin's due work.
    pub fn step(&mut self) -> Result<(), FastError> {
        self.world.step();
        if !self.config.twins {
            return Ok(());
        }
        let t = self.world.time();
        let stamp_us = ((EPOCH_S + t) * 1e6) as u64;
        let stamp = ros_time(stamp_us);
        // Vehicles that left lose their twin; connected vehicles that entered get one.
        let on_road: Vec<(u32, bool)> = self
            .world
            .vehicles()
            .iter()
            .map(|v| (v.id, v.connected))
            .collect();
        self.connected
            .retain(|id, _| on_road.binary_search_by(|(v, _)| v.cmp(id)).is_ok());
        for &(id, connected) in &on_road {
            if connected && !self.connected.contains_key(&id) {
                self.connect(id)?;
            }
        }
        // Advice past its validity no longer binds (a vehicle out of coverage hears none).
        let expired: Vec<u32> = self
            .advice_until
            .iter()
            .filter(|(_, &until)| t > until)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.advice_until.remove(&id);
            if let Some(v) = self.world.vehicle_mut(id) {
                v.advised_speed = None;
                v.advised_lane = None;
                self.counts.expired_advice += 1;
            }
        }
        let ids: Vec<u32> = self.connected.keys().copied().collect();
        for id in ids {
            let at = self
                .world
                .vehicles()
                .binary_search_by(|v| v.id.cmp(&id))
                .map(|i| self.world.vehicles()[i].s)
                .unwrap_or(0.0);
            let covered = self.world.scenario().coverage.at(at).is_covered();
            let c = self.connected.get_mut(&id).expect("listed above");
            c.covered = covered;
            if !covered {
                self.counts.offline_steps += 1;
            }
            let mut inbox = Vec::new();
            if t + 1e-9 >= c.next_state {
                c.next_state += 1.0 / self.config.state_hz;
                if let Some(s) = vehicle_state(&self.world, id, &c.name, stamp.clone()) {
                    inbox.push(to_link("state", Priority::OwnState, &s, stamp_us));
                }
            }
            if t + 1e-9 >= c.next_summary {
                c.next_summary += 1.0 / self.config.summary_hz;
                let reports: Vec<PerceptionSummary> = self
                    .sensors
                    .iter()
                    .filter_map(|s| observe(&self.world, id, s, stamp.clone(), &mut self.rng))
                    .collect();
                let fused = fuse(reports);
                self.counts.raw += fused.raw_bytes;
                inbox.push(to_link(
                    "objects/fused",
                    Priority::Objects,
                    &fused,
                    stamp_us,
                ));
            }
            if !covered {
                // No coverage: messages wait, the newest of each stream kept.
                for m in inbox.drain(..) {
                    self.counts.held += 1;
                    c.waiting.insert(m.stream.clone(), m);
                }
            } else if !c.waiting.is_empty() {
                // Back in coverage: what waited goes first.
                let mut caught_up: Vec<twinlink_link::Message> =
                    std::mem::take(&mut c.waiting).into_values().collect();
                // In time order, a state before the summary of the same instant (the twin
                // places a summary with the state at its stamp).
                caught_up.sort_by_key(|m| (m.created_us, m.type_name != VehicleState::TYPE_NAME));
                caught_up.append(&mut inbox);
                inbox = caught_up;
            }
            for message in inbox {
                let frame = c.up.seal(message);
                self.counts.up += frame.len() as u64;
                for d in c.link.ingest(&frame) {
                    let m = &d.message;
                    let applied: Result<(), &'static str> =
                        if m.type_name == VehicleState::TYPE_NAME {
                            from_link::<VehicleState>(m)
                                .map_err(|_| "undecodable")
                                .and_then(|s| c.twin.on_state(&s).map_err(|e| e.reason()))
                                .map(|_| self.counts.states += 1)
                        } else {
                            from_link::<PerceptionSummary>(m)
                                .map_err(|_| "undecodable")
                                .and_then(|s| c.twin.on_summary(&s).map_err(|e| e.reason()))
                                .map(|_| self.counts.summaries += 1)
                        };
                    if let Err(reason) = applied {
                        self.counts.refused += 1;
                        *self.counts.refused_by_reason.entry(reason).or_default() += 1;
                    }
                }
            }
            if t + 1e-9 >= c.next_advice {
                c.next_advice += 1.0 / self.config.recommend_hz;
                let now = EPOCH_S + t;
                if let Some(r) = c.twin.recommend(now, self.config.horizon_s) {
                    self.counts.recommendations += 1;
                    // The twin's estimate against the truth, apart while it predicts.
                    let truth = vehicle_state(&self.world, id, &c.name, stamp.clone());
                    if let (Some(est), Some(truth)) = (c.twin.status(now).estimate, truth) {
                        let (dx, dy) =
                            (est.x - truth.pose.position.x, est.y - truth.pose.position.y);
                        let error = (dx * dx + dy * dy).sqrt();
                        if covered {
                            self.errors.push(error);
                        } else {
                            self.offline_errors.push(error);
                        }
                    }
                    if !covered {
                        // The twin keeps planning (its estimate predicted), but the advice
                        // does not reach the vehicle.
                        continue;
                    }
                    let frame =
                        c.down
                            .seal(to_link("recommendation", Priority::OwnState, &r, stamp_us));
                    self.counts.down += frame.len() as u64;
                    let limit = self.world.scenario().road.speed_limit_mps;
                    if let Some(v) = self.world.vehicle_mut(id) {
                        let would = v.desired_speed.min(limit);
                        if r.target_speed < would - 0.5 {
                            self.counts.binding += 1;
                        }
                        v.advised_speed = Some(r.target_speed.max(0.0));
                        v.advised_lane = advised_lane(&r);
                        let valid_s =
                            twinlink_link::minimal::time_us(&r.valid_until) as f64 * 1e-6 - EPOCH_S;
                        self.advice_until.insert(id, valid_s.max(t));
                    }
                }
            }
        }
        self.relay_step(stamp_us);
        Ok(())
    }

    /// Every twin discloses what it learned; each disclosure is verified once and offered
    /// to every other twin (as a DR host does with what it hears on the share key space).
    fn relay_step(&mut self, now_us: u64) {
        let Some(relay) = &mut self.relay else {
            return;
        };
        let mut sealed = Vec::new();
        for c in self.connected.values_mut() {
            for outcome in c.twin.share(&relay.issuer, now_us) {
                match outcome {
                    Outcome::Disclosed(d) => {
                        relay.counts.disclosed += 1;
                        sealed.push(d.bytes);
                    }
                    Outcome::Denied { .. } => relay.counts.denied += 1,
                }
            }
        }
        let now = now_us as f64 * 1e-6;
        for bytes in sealed {
            let verified = match relay.verifier.verify(&bytes, now_us) {
                Ok(v) => v,
                Err(_) => {
                    relay.counts.rejected += 1;
                    continue;
                }
            };
            relay.counts.verified += 1;
            for c in self.connected.values_mut() {
                if let Ok(o) = c.twin.on_relayed(&verified, now) {
                    if !o.hazards.is_empty() {
                        relay.counts.taken += 1;
                    }
                }
            }
        }
    }

    /// Runs to the scenario's end and reports.
    pub fn run(mut self) -> Result<FastReport, FastError> {
        let started = Instant::now();
        while !self.world.finished() {
            self.step()?;
        }
        Ok(self.report(started.elapsed().as_secs_f64()))
    }

    fn report(&self, wall_s: f64) -> FastReport {
        let st = self.world.stats().clone();
        let mean = if self.errors.is_empty() {
            0.0
        } else {
            self.errors.iter().sum::<f64>() / self.errors.len() as f64
        };
        let online_p95 = p95(&self.errors);
        let offline_p95 = p95(&self.offline_errors);
        let c = &self.counts;
        FastReport {
            scenario: self.world.scenario().name.clone(),
            seed: self.world.scenario().seed,
            twins: self.config.twins,
            simulated_s: st.time,
            wall_s,
            realtime_factor: if wall_s > 0.0 {
                st.time / wall_s
            } else {
                f64::INFINITY
            },
            vehicles_at_end: self.world.vehicles().len(),
            twinned: self.twinned,
            collisions: st.collisions,
            hard_brakes: st.hard_brakes,
            min_ttc_s: st.min_ttc.is_finite().then_some(st.min_ttc),
            hard_brakes_connected: st.hard_brakes_connected,
            min_ttc_connected_s: st
                .min_ttc_connected
                .is_finite()
                .then_some(st.min_ttc_connected),
            mean_speed_mps: st.mean_speed(),
            throughput_per_h: st.throughput_per_h(),
            summaries: c.summaries,
            states: c.states,
            recommendations: c.recommendations,
            relay: self.relay.as_ref().map(|r| r.counts).unwrap_or_default(),
            refused: c.refused,
            refused_by_reason: c
                .refused_by_reason
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            raw_sensor_bytes: c.raw,
            uplink_bytes: c.up,
            downlink_bytes: c.down,
            uplink_reduction_factor: (c.up > 0).then(|| c.raw as f64 / c.up as f64),
            advice_binding_share: if c.recommendations > 0 {
                c.binding as f64 / c.recommendations as f64
            } else {
                0.0
            },
            estimate_error_mean_m: mean,
            estimate_error_p95_m: online_p95,
            offline_vehicle_s: c.offline_steps as f64 * self.world.scenario().step_s,
            held_messages: c.held,
            expired_advice: c.expired_advice,
            estimate_error_offline_p95_m: offline_p95,
            world: st,
        }
    }
}

/// One side of a relay comparison: a scenario's runs with twins, over several seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelaySide {
    /// Collisions, all runs.
    pub collisions: u64,
    /// Hard brakes, all vehicles, all runs.
    pub hard_brakes: u64,
    /// Hard brakes of connected vehicles (the ones twins advise), all runs.
    pub hard_brakes_connected: u64,
    /// Smallest time-to-collision of any vehicle over all runs [s].
    pub min_ttc_s: Option<f64>,
    /// Smallest time-to-collision of a connected vehicle over all runs [s].
    pub min_ttc_connected_s: Option<f64>,
    /// Median over the runs of each run's smallest connected time-to-collision [s].
    pub median_min_ttc_connected_s: Option<f64>,
    /// Mean speed over the runs [m/s].
    pub mean_speed_mps: f64,
    /// The relay's counters, all runs (zero with the relay off).
    pub relay: RelayCounts,
}

/// Twins with and without the inter-twin relay on the same scenario and seeds (fast mode):
/// the figures the demo report shows for `hidden_hazard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayComparison {
    /// Scenario name.
    pub scenario: String,
    /// Seeds run (each with the relay off and on).
    pub seeds: Vec<u64>,
    /// Twins, relay off.
    pub off: RelaySide,
    /// Twins, relay on.
    pub on: RelaySide,
}

fn side(reports: &[FastReport]) -> RelaySide {
    let min = |f: &dyn Fn(&FastReport) -> Option<f64>| {
        reports.iter().filter_map(f).min_by(f64::total_cmp)
    };
    let mut per_run: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.min_ttc_connected_s)
        .collect();
    per_run.sort_by(f64::total_cmp);
    let mut relay = RelayCounts::default();
    for r in reports {
        relay.disclosed += r.relay.disclosed;
        relay.denied += r.relay.denied;
        relay.verified += r.relay.verified;
        relay.rejected += r.relay.rejected;
        relay.taken += r.relay.taken;
    }
    RelaySide {
        collisions: reports.iter().map(|r| r.collisions).sum(),
        hard_brakes: reports.iter().map(|r| r.hard_brakes).sum(),
        hard_brakes_connected: reports.iter().map(|r| r.hard_brakes_connected).sum(),
        min_ttc_s: min(&|r| r.min_ttc_s),
        min_ttc_connected_s: min(&|r| r.min_ttc_connected_s),
        median_min_ttc_connected_s: (!per_run.is_empty()).then(|| per_run[per_run.len() / 2]),
        mean_speed_mps: reports.iter().map(|r| r.mean_speed_mps).sum::<f64>()
            / reports.len().max(1) as f64,
        relay,
    }
}

/// Runs `scenario` with twins, relay off and on, for each of `seeds` (in parallel, one
/// thread a run) and sums up both sides.
pub fn relay_comparison(scenario: &Scenario, seeds: &[u64]) -> Result<RelayComparison, FastError> {
    let runs: Vec<Result<FastReport, FastError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [false, true]
            .into_iter()
            .flat_map(|relay| seeds.iter().map(move |&seed| (relay, seed)))
            .map(|(relay, seed)| {
                let mut scenario = scenario.clone();
                scenario.seed = seed;
                scope.spawn(move || {
                    let config = FastConfig {
                        relay,
                        ..FastConfig::default()
                    };
                    FastRun::new(&scenario, config).and_then(FastRun::run)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a fast run does not panic"))
            .collect()
    });
    let runs = runs.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (off, on) = runs.split_at(seeds.len());
    Ok(RelayComparison {
        scenario: scenario.name.clone(),
        seeds: seeds.to_vec(),
        off: side(off),
        on: side(on),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str) -> Scenario {
        Scenario::parse(
            &format!("name: f\nseed: 3\nduration_s: 40\nroad: {{ length_m: 3000, lanes: 3, speed_limit_mps: 30 }}\ntraffic: {{ vehicles: 40, inflow_veh_per_h: 1800, connected_share: 0.4 }}\n{extra}"),
            "f",
        )
        .unwrap()
    }

    fn same_but_time(a: &FastReport, b: &FastReport) -> bool {
        let strip = |r: &FastReport| FastReport {
            wall_s: 0.0,
            realtime_factor: 0.0,
            ..r.clone()
        };
        strip(a) == strip(b)
    }

    #[test]
    fn a_fast_run_is_deterministic_for_a_seed() {
        let s = scenario("");
        let a = FastRun::new(&s, FastConfig::default())
            .unwrap()
            .run()
            .unwrap();
        let b = FastRun::new(&s, FastConfig::default())
            .unwrap()
            .run()
            .unwrap();
        assert!(same_but_time(&a, &b), "{a:?}\n{b:?}");
        let mut other = s.clone();
        other.seed = 4;
        let c = FastRun::new(&other, FastConfig::default())
            .unwrap()
            .run()
            .unwrap();
        assert!(!same_but_time(&a, &c));
    }

    #[test]
    fn twins_get_every_message_advise_their_vehicles_and_track_them() {
        let s = scenario("hazards:\n  - { kind: stalled_vehicle, s_m: 1500, lane: 0 }\n");
        let on = FastRun::new(&s, FastConfig::default())
            .unwrap()
            .run()
            .unwrap();
        assert!(on.twinned >= 10, "{on:?}");
        assert_eq!(on.refused, 0, "{on:?}");
        // 10 summaries and 2 states a second per twin, about 40 s each.
        assert!(on.summaries > 2_000 && on.states > 400, "{on:?}");
        assert!(on.recommendations > 400, "{on:?}");
        // What leaves the vehicle is summaries: three orders of magnitude below raw data.
        assert!(on.uplink_reduction_factor.unwrap() > 1_000.0, "{on:?}");
        assert!(on.downlink_bytes > 0);
        // The twin knows where its vehicle is.
        assert!(on.estimate_error_mean_m < 1.0, "{on:?}");
        assert_eq!(on.collisions, 0, "{on:?}");
        // The advice changed what the vehicles did: the same world without twins differs.
        let off = FastRun::new(
            &s,
            FastConfig {
                twins: false,
                ..FastConfig::default()
            },
        )
        .unwrap()
        .run()
        .unwrap();
        assert_eq!(off.recommendations, 0);
        assert_eq!(off.uplink_reduction_factor, None);
        assert_ne!(
            on.world, off.world,
            "twins' advice left every vehicle as it was"
        );
    }

    #[test]
    fn in_a_tunnel_the_twin_predicts_its_vehicle_and_catches_up_after_it() {
        let s = Scenario::parse(
            "name: tunnel\nseed: 5\nduration_s: 90\nroad: { length_m: 3000, lanes: 2, speed_limit_mps: 25 }\ntraffic: { vehicles: 16, inflow_veh_per_h: 0, connected_share: 0.5 }\ncoverage:\n  zones:\n    - { kind: tunnel, from_m: 800, to_m: 1800 }\n",
            "tunnel",
        )
        .unwrap();
        let r = FastRun::new(&s, FastConfig::default())
            .unwrap()
            .run()
            .unwrap();
        assert!(r.offline_vehicle_s > 100.0, "{r:?}");
        assert!(r.held_messages > 500, "{r:?}");
        assert!(r.expired_advice > 0, "advice lapses in the tunnel: {r:?}");
        assert_eq!(r.refused, 0, "what waited is accepted on return: {r:?}");
        // Predicting through up to 40 s of tunnel, the twin is off by metres, not by the
        // kilometre the vehicle drove.
        assert!(
            r.estimate_error_offline_p95_m > r.estimate_error_p95_m,
            "{r:?}"
        );
        assert!(r.estimate_error_offline_p95_m < 50.0, "{r:?}");
    }

    #[test]
    fn fusing_keeps_the_first_report_of_each_object_and_sums_raw_bytes() {
        let mut a = PerceptionSummary::default();
        a.header.frame_id = "base_link".into();
        a.raw_bytes = 10;
        let mut o = twinlink_msgs::twin_msgs::msg::DetectedObject::default();
        o.id = 7;
        o.position.x = 1.0;
        a.objects.push(o.clone());
        let mut b = PerceptionSummary::default();
        b.raw_bytes = 5;
        o.position.x = 2.0;
        b.objects.push(o.clone());
        o.id = 8;
        b.objects.push(o);
        let f = fuse(vec![a, b]);
        assert_eq!(f.raw_bytes, 15);
        assert_eq!(f.objects.len(), 2);
        assert_eq!(f.objects[0].position.x, 1.0);
        assert_eq!(f.sensor_kind, PerceptionSummary::SENSOR_FUSED);
        assert_eq!(f.header.frame_id, "base_link");
    }
}
