//! One digital representative: the twin of one vehicle, without I/O.
//!
//! A [`Twin`] takes what arrives for its vehicle (its own state, its sensors' summaries,
//! regional traffic, incidents) and answers with recommendations:
//!
//! 1. `VehicleState` → the own-vehicle estimator ([`crate::ego`]).
//! 2. `PerceptionSummary` → each detection is placed in the map with the vehicle's pose at
//!    the summary's stamp and the sensor's noise model, then fused by the multi-object
//!    tracker ([`crate::tracker`]).
//! 3. Regional traffic and incidents → the world model ([`crate::world`]).
//! 4. [`Twin::recommend`] → tracks and the own estimate go into the world model, the
//!    planner ([`crate::planner`]) plans, the safety filter bounds the plan, and the
//!    result becomes a `Recommendation`.
//!
//! While the vehicle is offline nothing changes in this flow: the estimator predicts, the
//! world keeps taking regional data, and recommendations (with a growing state age, lower
//! confidence and conservative speed) are still made, ready for when the link returns.
//! Every refused input is an error that names its reason; the caller counts it.

use std::sync::Arc;

use serde::Serialize;
use twinlink_msgs::twin_msgs::msg::{
    CensusReport, Incident, PerceptionSummary, Recommendation, RegionalTraffic, SharedObservation,
    SharingPolicy, VehicleState,
};
use twinlink_share::{PolicyError, PseudonymIssuer, RotationConfig, TileGrid, Verified};

use crate::ego::{stamp_seconds, EgoEstimate, EgoEstimator, StateError};
use crate::hazard_detect::{EgoView, HazardChanges, HazardDetector, TrackView};
use crate::planner::{Plan, PlanContext, Planner};
use crate::relay::{Ignored, Outcome, TwinSharing};
use crate::road::Road;
use crate::tracker::{measurement, noise_of, Tracker, TrackerConfig};
use crate::world::{RegionalUpdate, Source, WorldError, WorldModel};

/// Longest a summary may lag the tracker's time and still be fused [s].
pub const MAX_SUMMARY_LAG: f64 = 0.5;
/// Most objects one summary may carry.
pub const MAX_OBJECTS: usize = 512;

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TwinError {
    /// A state that names another vehicle.
    #[error("VehicleState for {found:?} reached the twin of {expected:?}")]
    WrongVehicle {
        /// The vehicle the message names.
        found: String,
        /// This twin's vehicle.
        expected: String,
    },
    /// A bad vehicle state.
    #[error(transparent)]
    State(#[from] StateError),
    /// A summary that cannot be fused.
    #[error("PerceptionSummary from {sensor:?}: {problem}")]
    Summary {
        /// The sensor.
        sensor: String,
        /// What is wrong.
        problem: String,
    },
    /// Regional data or an incident refused.
    #[error(transparent)]
    World(#[from] WorldError),
}

impl TwinError {
    /// A short, stable label for counting (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            TwinError::WrongVehicle { .. } => "wrong_vehicle",
            TwinError::State(StateError::Stale(_)) => "stale_state",
            TwinError::State(StateError::Invalid(..)) => "invalid_state",
            TwinError::Summary { problem, .. } if problem.starts_with("no vehicle state") => {
                "no_state_yet"
            }
            TwinError::Summary { problem, .. } if problem.starts_with("stamped") => "stale_summary",
            TwinError::Summary { .. } => "invalid_summary",
            TwinError::World(WorldError::BelowK { .. }) => "below_k",
            TwinError::World(WorldError::Invalid { .. }) => "invalid_regional",
        }
    }
}

/// What a summary did to the tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FusionStats {
    /// Detections fused into existing tracks.
    pub assigned: usize,
    /// Tracks born.
    pub born: usize,
    /// Detections skipped for non-finite values (counted, not fused).
    pub skipped: usize,
}

/// The twin's settings, shared by the twins of one host.
#[derive(Debug, Clone)]
pub struct TwinSettings {
    /// The route (every twin of the host drives it; a fleet host holds one per region).
    pub road: Arc<Road>,
    /// Tracker settings.
    pub tracker: TrackerConfig,
    /// The planner.
    pub planner: Planner,
}

/// A twin's counters and state summary, for status and inspection.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TwinStatusReport {
    /// Vehicle id.
    pub vehicle: String,
    /// States applied.
    pub states: u64,
    /// Summaries fused.
    pub summaries: u64,
    /// Recommendations made.
    pub recommendations: u64,
    /// Regional tiles applied.
    pub regional_tiles: u64,
    /// Inputs refused.
    pub refused: u64,
    /// Confirmed tracks now.
    pub confirmed_tracks: usize,
    /// Hazards known.
    pub hazards: usize,
    /// The own estimate at the time of the report, if any state was seen.
    pub estimate: Option<EstimateReport>,
    /// The newest recommendation's speed, lane and reason.
    pub last_recommendation: Option<(f64, i32, String)>,
}

/// The own estimate, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EstimateReport {
    /// Position [m].
    pub x: f64,
    /// Position [m].
    pub y: f64,
    /// Speed [m/s].
    pub speed: f64,
    /// Position uncertainty (1 sigma) [m].
    pub position_sigma: f64,
    /// Age of the newest state [s].
    pub age: f64,
}

impl From<EgoEstimate> for EstimateReport {
    fn from(e: EgoEstimate) -> Self {
        EstimateReport {
            x: e.x,
            y: e.y,
            speed: e.speed,
            position_sigma: e.position_sigma,
            age: e.age,
        }
    }
}

/// One vehicle's digital representative.
#[derive(Debug, Clone)]
pub struct Twin {
    vehicle: String,
    ego: EgoEstimator,
    tracker: Tracker,
    world: WorldModel,
    planner: Planner,
    /// Time of the newest summary fused [s].
    fused_until: f64,
    sequence: u64,
    states: u64,
    summaries: u64,
    regional_tiles: u64,
    refused: u64,
    last_plan: Option<Plan>,
    /// Hazards learned from the twin's own tracks.
    hazards: HazardDetector,
    /// Twin time of the detector's last update [s].
    hazards_checked: f64,
    /// What the detector found since [`Twin::take_hazard_changes`] last took it.
    hazard_changes: HazardChanges,
    /// The vehicle's consent, the twin's pseudonyms and the hazards it shares.
    sharing: TwinSharing,
    /// The secret the twin's census tokens are derived from (never leaves the twin).
    census_secret: [u8; 32],
    /// The newest state the vehicle reported.
    reported: Option<ReportedState>,
    /// What the operator wants of the twin.
    desired: DesiredState,
    /// When its vehicle was last connected.
    connectivity: Connectivity,
}

/// `v` snapped to a grid of pitch `p` (unchanged for `p` 0).
pub fn snap(v: f64, p: f64) -> f64 {
    if p > 0.0 {
        (v / p).round() * p
    } else {
        v
    }
}

/// Highest speed cap an operator may set [m/s] (252 km/h).
pub const MAX_SPEED_CAP: f64 = 70.0;

/// What an operator wants of a twin: the desired half of its state document (the
/// reported half is what the vehicle sends). Kept durably; every change has a new version.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DesiredState {
    /// 0 while never set; one more at every change.
    pub version: u64,
    /// When it was set [µs since the Unix epoch].
    pub set_at_us: u64,
    /// The operator who set it.
    pub by: String,
    /// Highest speed the twin may advise [m/s]: a fleet's cap (weather, cargo, a driver in
    /// training). `None`: the road's limits only.
    pub max_speed_mps: Option<f64>,
}

impl DesiredState {
    /// Checks the operator's values; the error names the field.
    pub fn check(max_speed_mps: Option<f64>) -> Result<(), String> {
        match max_speed_mps {
            Some(v) if !(v.is_finite() && v > 0.0 && v <= MAX_SPEED_CAP) => Err(format!(
                "max_speed_mps must be above 0 and at most {MAX_SPEED_CAP} m/s, got {v}"
            )),
            _ => Ok(()),
        }
    }
}

/// The newest state a vehicle reported (map frame).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ReportedState {
    /// Its stamp [µs since the Unix epoch].
    pub stamp_us: u64,
    /// Position [m].
    pub x: f64,
    /// Position [m].
    pub y: f64,
    /// Speed over ground [m/s].
    pub speed: f64,
    /// Lane it reported (-1: unknown).
    pub lane: i32,
}

/// When a twin's vehicle was connected: since when, or until when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Connectivity {
    /// Whether the vehicle is connected now.
    pub connected: bool,
    /// When it connected (the newest time) [µs since the Unix epoch].
    pub since_us: Option<u64>,
    /// When it went away (while it is away) [µs since the Unix epoch].
    pub until_us: Option<u64>,
}

/// How long a relayed hazard that names no expiry is kept [s] (its discloser announces
/// active hazards every few seconds).
pub const RELAYED_TTL: f64 = 120.0;

/// Most hazards taken from one disclosure (the twins' own carry one each).
pub const MAX_RELAYED_HAZARDS: usize = 16;

/// A twin whose newest vehicle state is older than this contributes no census [s].
pub const CENSUS_MAX_STATE_AGE: f64 = 2.0;

/// Most hazard changes kept for [`Twin::take_hazard_changes`] per kind.
const MAX_PENDING_HAZARD_CHANGES: usize = 64;

/// How often the hazard detector looks at the tracks [s of twin time] (its dwell is 2 s).
const HAZARD_CHECK_PERIOD: f64 = 0.5;

impl Twin {
    /// A new twin for `vehicle`.
    pub fn new(vehicle: &str, settings: &TwinSettings) -> Self {
        Twin {
            vehicle: vehicle.to_string(),
            ego: EgoEstimator::new(),
            tracker: Tracker::new(settings.tracker.clone()),
            world: WorldModel::new(settings.road.clone()),
            planner: settings.planner.clone(),
            fused_until: f64::NEG_INFINITY,
            sequence: 0,
            states: 0,
            summaries: 0,
            regional_tiles: 0,
            refused: 0,
            last_plan: None,
            hazards: HazardDetector::default(),
            hazards_checked: f64::NEG_INFINITY,
            hazard_changes: HazardChanges::default(),
            sharing: TwinSharing::new(RotationConfig::default(), TileGrid::default())
                .expect("the default rotation is valid"),
            census_secret: rand::random(),
            reported: None,
            desired: DesiredState::default(),
            connectivity: Connectivity::default(),
        }
    }

    /// What the operator wants of the twin.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// Takes the operator's desired state (checked by [`DesiredState::check`]); it bounds
    /// the next recommendation on.
    pub fn set_desired(&mut self, desired: DesiredState) -> Result<(), String> {
        DesiredState::check(desired.max_speed_mps)?;
        self.desired = desired;
        Ok(())
    }

    /// When the vehicle was last connected.
    pub fn connectivity(&self) -> Connectivity {
        self.connectivity
    }

    /// The vehicle connected (`true`) or went away at `now_us`.
    pub fn set_connected(&mut self, connected: bool, now_us: u64) {
        if connected {
            self.connectivity = Connectivity {
                connected: true,
                since_us: Some(now_us),
                until_us: None,
            };
        } else if self.connectivity.connected {
            self.connectivity.connected = false;
            self.connectivity.until_us = Some(now_us);
        }
    }

    /// The vehicle.
    pub fn vehicle(&self) -> &str {
        &self.vehicle
    }

    /// The tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The world model.
    pub fn world(&self) -> &WorldModel {
        &self.world
    }

    /// The own-vehicle estimator.
    pub fn ego(&self) -> &EgoEstimator {
        &self.ego
    }

    /// Sequence number of the newest recommendation.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Continues numbering after `sequence` (after a restart from durable state).
    pub fn resume_sequence(&mut self, sequence: u64) {
        self.sequence = self.sequence.max(sequence);
    }

    fn count<T>(&mut self, r: Result<T, TwinError>) -> Result<T, TwinError> {
        if r.is_err() {
            self.refused += 1;
        }
        r
    }

    /// Applies the vehicle's reported state.
    pub fn on_state(&mut self, state: &VehicleState) -> Result<(), TwinError> {
        let r = if !state.vehicle_id.is_empty() && state.vehicle_id != self.vehicle {
            Err(TwinError::WrongVehicle {
                found: state.vehicle_id.clone(),
                expected: self.vehicle.clone(),
            })
        } else {
            self.ego.apply(state).map_err(TwinError::from)
        };
        if r.is_ok() {
            self.states += 1;
            self.reported = Some(ReportedState {
                stamp_us: (state.header.stamp.sec.max(0) as u64) * 1_000_000
                    + u64::from(state.header.stamp.nanosec / 1000),
                x: state.pose.position.x,
                y: state.pose.position.y,
                speed: state.twist.linear.x.hypot(state.twist.linear.y),
                lane: state.lane_index,
            });
        }
        self.count(r)
    }

    /// What the vehicle reported last, as the fleet may see it: only under its `traffic`
    /// grant to its fleet, with the position snapped to that grant's precision. `Err` names
    /// why it is withheld (`no_state`, or the consent's reason).
    pub fn reported_for_fleet(&self, now_us: u64) -> Result<ReportedState, &'static str> {
        let r = self.reported.ok_or("no_state")?;
        let p = self.fleet_grant(now_us)?;
        Ok(ReportedState {
            x: snap(r.x, p),
            y: snap(r.y, p),
            speed: (r.speed * 10.0).round() / 10.0,
            ..r
        })
    }

    /// The precision [m] at which the vehicle lets its fleet (its operators among them)
    /// see where it is: its `traffic` grant to its fleet. `Err` names why there is none.
    pub fn fleet_grant(&self, now_us: u64) -> Result<f64, &'static str> {
        use twinlink_share::{Audience, Decision, DisclosureRequest};
        match self.sharing.consent().decide(
            &DisclosureRequest::new(
                SharedObservation::CATEGORY_TRAFFIC,
                Audience::SameFleet,
                0.0,
            ),
            now_us,
        ) {
            Decision::Allow { precision_m, .. } => Ok(f64::from(precision_m)),
            Decision::Deny(reason) => Err(reason.as_str()),
        }
    }

    /// The stamp of the newest state the vehicle reported [µs], 0 before any: the version
    /// of the reported half of the twin's state.
    pub fn reported_version(&self) -> u64 {
        self.reported.map_or(0, |r| r.stamp_us)
    }

    /// Fuses one sensor's summary.
    pub fn on_summary(&mut self, summary: &PerceptionSummary) -> Result<FusionStats, TwinError> {
        let r = self.fuse(summary);
        if r.is_ok() {
            self.summaries += 1;
        }
        self.count(r)
    }

    fn fuse(&mut self, summary: &PerceptionSummary) -> Result<FusionStats, TwinError> {
        let bad = |problem: String| TwinError::Summary {
            sensor: summary.sensor_id.clone(),
            problem,
        };
        if summary.objects.len() > MAX_OBJECTS {
            return Err(bad(format!(
                "{} objects, more than {MAX_OBJECTS}",
                summary.objects.len()
            )));
        }
        if !summary.header.frame_id.is_empty() && summary.header.frame_id != "base_link" {
            return Err(bad(format!(
                "frame {:?}: summaries are in base_link",
                summary.header.frame_id
            )));
        }
        let t = stamp_seconds(&summary.header.stamp);
        if t < self.fused_until - MAX_SUMMARY_LAG {
            return Err(bad(format!(
                "stamped {:.3} s before the newest summary fused",
                self.fused_until - t
            )));
        }
        let Some(pose) = self.ego.pose_at(t) else {
            return Err(bad("no vehicle state yet to place it in the map".into()));
        };
        let noise = noise_of(self.tracker.config(), summary);
        let mut skipped = 0;
        let measurements: Vec<_> = summary
            .objects
            .iter()
            .filter_map(|o| {
                let m = measurement(o, pose, &noise);
                if m.is_none() {
                    skipped += 1;
                }
                m
            })
            .collect();
        // A summary slightly older than the tracker's time is fused at the tracker's time.
        let at = t.max(self.fused_until);
        let stats = self.tracker.update(at, &measurements);
        self.fused_until = at;
        Ok(FusionStats {
            assigned: stats.assigned,
            born: stats.born,
            skipped,
        })
    }

    /// Applies a regional traffic tile.
    pub fn on_regional(
        &mut self,
        tile: &RegionalTraffic,
        now: f64,
    ) -> Result<RegionalUpdate, TwinError> {
        let r = self
            .world
            .apply_regional(tile, now)
            .map_err(TwinError::from);
        if r.is_ok() {
            self.regional_tiles += 1;
        }
        self.count(r)
    }

    /// Adds an incident from `source`.
    pub fn on_incident(
        &mut self,
        incident: &Incident,
        now: f64,
        source: Source,
    ) -> Result<(), TwinError> {
        let r = self
            .world
            .add_incident(incident, now, source)
            .map_err(TwinError::from);
        self.count(r)
    }

    /// Brings the world model to time `now` [s]: the own estimate, the confirmed tracks
    /// predicted to `now`, expired regional data dropped.
    fn refresh_world(&mut self, now: f64) -> Option<EgoEstimate> {
        self.world.expire(now);
        let e = self.ego.estimate(now)?;
        let (length, width) = self.ego.dimensions();
        self.world.set_ego(e.x, e.y, e.yaw, e.speed, length, width);
        let dt = now - self.fused_until;
        self.world.set_objects(self.tracker.confirmed().map(|tr| {
            let (p, _) = tr.filter.position();
            let v = tr.filter.velocity();
            // Tracks move on to `now` at their velocity (the tracker is not advanced:
            // it stays at the newest summary's time).
            let dt = dt.clamp(0.0, 2.0);
            (
                tr.id,
                p.x + v.x * dt,
                p.y + v.y * dt,
                v.x,
                v.y,
                tr.dimensions[0],
                tr.dimensions[1],
            )
        }));
        if now - self.hazards_checked >= HAZARD_CHECK_PERIOD || now < self.hazards_checked {
            self.hazards_checked = now;
            self.detect_hazards(now, dt.clamp(0.0, 2.0));
        }
        Some(e)
    }

    /// Runs the hazard detector over the confirmed tracks (moved on by `dt` to `now`) and
    /// puts what it raised into the world model as the twin's own hazards.
    fn detect_hazards(&mut self, now: f64, dt: f64) {
        let views: Vec<TrackView> = self
            .tracker
            .confirmed()
            .map(|tr| {
                let (p, cov) = tr.filter.position();
                let v = tr.filter.velocity();
                TrackView {
                    id: tr.id,
                    x: p.x + v.x * dt,
                    y: p.y + v.y * dt,
                    vx: v.x,
                    vy: v.y,
                    length: tr.dimensions[0],
                    width: tr.dimensions[1],
                    class: tr.class(),
                    position_sigma: ((cov[(0, 0)] + cov[(1, 1)]) / 2.0).max(0.0).sqrt(),
                }
            })
            .collect();
        let ego = self.world.ego();
        let ego = EgoView {
            s: ego.s,
            speed: ego.speed,
        };
        let changes = self.hazards.update(now, views, self.world.road(), ego);
        for inc in changes.new.iter().chain(&changes.updated) {
            // The detector's incidents lie on the route by construction.
            let _ = self.world.add_incident(inc, now, Source::OwnSensors);
        }
        for id in changes.resolved.iter().chain(&changes.expired) {
            self.world.remove_incident(id, Source::OwnSensors);
        }
        let pending = &mut self.hazard_changes;
        pending.new.extend(changes.new);
        pending.updated.extend(changes.updated);
        pending.resolved.extend(changes.resolved);
        pending.expired.extend(changes.expired);
        self.bound_hazard_changes();
    }

    /// The hazards learned from the vehicle's own sensors since the last call: raised,
    /// changed, resolved and expired (for sharing with other twins).
    pub fn take_hazard_changes(&mut self) -> HazardChanges {
        std::mem::take(&mut self.hazard_changes)
    }

    /// Applies an incident the vehicle reports itself (its own breakdown, a hazard its
    /// driver assistance recognised): into the world model as the twin's own, and queued
    /// for sharing like the detector's. One whose `expires` is past withdraws the incident
    /// of that id.
    pub fn on_vehicle_incident(&mut self, incident: &Incident, now: f64) -> Result<(), TwinError> {
        let withdrawn = {
            let e = crate::ego::stamp_seconds(&incident.expires);
            e > 0.0 && e <= now
        };
        let r = if withdrawn {
            self.world
                .remove_incident(&incident.incident_id, Source::OwnSensors);
            self.hazard_changes
                .resolved
                .push(incident.incident_id.clone());
            Ok(())
        } else {
            self.world
                .add_incident(incident, now, Source::OwnSensors)
                .map(|()| self.hazard_changes.new.push(incident.clone()))
                .map_err(TwinError::from)
        };
        self.bound_hazard_changes();
        self.count(r)
    }

    /// Replaces the vehicle's sharing policy (validated); returns its version.
    pub fn on_policy(&mut self, policy: SharingPolicy, now_us: u64) -> Result<u64, PolicyError> {
        self.sharing.set_policy(policy, now_us)
    }

    /// Replaces the sharing policy with one from `origin` (an operator's, or a stored one
    /// at its original time), validated at `now_us`; returns its version.
    pub fn on_policy_from(
        &mut self,
        policy: SharingPolicy,
        origin: crate::relay::PolicyOrigin,
        now_us: u64,
    ) -> Result<u64, PolicyError> {
        self.sharing.set_policy_from(policy, origin, now_us)
    }

    /// The twin's sharing state (the vehicle's consent, counters).
    pub fn sharing(&self) -> &TwinSharing {
        &self.sharing
    }

    /// What to disclose now, at `now_us`: the hazard changes since the last call and, when
    /// due, the active hazards again; each disclosed or denied by the vehicle's consent
    /// (see [`crate::relay`]).
    pub fn share(&mut self, issuer: &PseudonymIssuer, now_us: u64) -> Vec<Outcome> {
        let changes = self.take_hazard_changes();
        let mut out = if changes.is_empty() {
            Vec::new()
        } else {
            self.sharing.on_changes(changes, issuer, now_us)
        };
        out.extend(self.sharing.announce_due(issuer, now_us));
        out
    }

    /// Answers another twin's verified query for `name` (see [`TwinSharing::answer`]).
    pub fn answer(
        &mut self,
        name: &twinlink_share::DataName,
        audience: twinlink_share::Audience,
        issuer: &PseudonymIssuer,
        now_us: u64,
    ) -> Vec<Outcome> {
        self.sharing.answer(name, audience, issuer, now_us)
    }

    /// The tiles whose hazards this twin wants from other twins at `now` [s]: those along
    /// the next [`crate::relay::FETCH_AHEAD_M`] of the route ahead of its vehicle (and
    /// [`crate::relay::ROUTE_MARGIN_M`] beside it). Empty unless the vehicle lets its twin
    /// fetch on its own and its position is known.
    pub fn fetch_tiles(&self, now: f64, grid: &TileGrid) -> Vec<twinlink_share::TileName> {
        if !self.sharing.consent().may_fetch_autonomously() {
            return Vec::new();
        }
        let Some(e) = self.ego.estimate(now) else {
            return Vec::new();
        };
        let road = self.world.road();
        let s = road.to_frenet(e.x, e.y).s;
        crate::relay::tiles_between(
            road,
            grid,
            s,
            s + crate::relay::FETCH_AHEAD_M,
            crate::relay::ROUTE_MARGIN_M,
        )
    }

    /// Takes another twin's verified disclosure, if the vehicle lets its twin fetch from
    /// others: its hazards that lie on this vehicle's route go into the world model as
    /// relayed (a withdrawal removes the hazard). Returns the observation with only those
    /// hazards, to pass on to the vehicle (`Ok` with no hazards: nothing on the route).
    pub fn on_relayed(
        &mut self,
        verified: &Verified,
        now: f64,
    ) -> Result<twinlink_msgs::twin_msgs::msg::SharedObservation, Ignored> {
        let hazards = self.sharing.accept(verified)?;
        let stamp = crate::ego::stamp_seconds(&verified.observation.header.stamp);
        let mut kept = Vec::new();
        for incident in hazards.iter().take(MAX_RELAYED_HAZARDS) {
            let mut incident = incident.clone();
            // Ids of the sender's own naming: they can only ever replace or withdraw what
            // the same sender said, never the twin's own or the region's hazards.
            incident.incident_id = format!(
                "{}/{}/{}",
                verified.fleet_id, verified.pseudonym, incident.incident_id
            );
            let expires = crate::ego::stamp_seconds(&incident.expires);
            // A withdrawal expires with its disclosure (its stamp rounded up to the second).
            let withdrawal = expires > 0.0 && expires <= stamp + 1.0;
            // What another twin said is forgotten after a while unless it says it again.
            incident.expires = crate::planner::ros_time(
                ((if withdrawal {
                    now - 1e-3
                } else if expires <= 0.0 {
                    now + RELAYED_TTL
                } else {
                    expires.min(now + RELAYED_TTL)
                }) * 1e6)
                    .max(0.0) as u64,
            );
            // One the world does not take is off this vehicle's route: counted by the
            // host (`relay_ignored_total{reason="off_route"}`) when none is kept.
            if self
                .world
                .add_incident(&incident, now, Source::Relayed)
                .is_ok()
                && self.sharing.forward_relayed(&incident, withdrawal, now)
            {
                kept.push(incident);
            }
        }
        let mut observation = verified.observation.clone();
        observation.hazards = kept;
        Ok(observation)
    }

    /// The twin's census contribution at `now_us` for the regional service's `windows`
    /// (see `CensusReport.msg`): its vehicle's segment, lane, position along the segment
    /// and speed, under this window's contributor token, in the tile of `grid` it is in.
    /// Only with its vehicle's consent: a `traffic` rule for the fleet (positions snapped
    /// to its precision). `Err` names why there is none.
    pub fn census(
        &self,
        now_us: u64,
        windows: &twinlink_share::census::Windows,
        grid: &TileGrid,
    ) -> Result<CensusReport, &'static str> {
        use twinlink_share::{Audience, Decision, DisclosureRequest};
        let consent = self.sharing.consent();
        let ask = |category| {
            consent.decide(
                &DisclosureRequest::new(category, Audience::SameFleet, 0.0),
                now_us,
            )
        };
        let precision = match ask(SharedObservation::CATEGORY_TRAFFIC) {
            Decision::Allow { precision_m, .. } => f64::from(precision_m),
            Decision::Deny(reason) => return Err(reason.as_str()),
        };
        let now = now_us as f64 * 1e-6;
        let e = self.ego.estimate(now).ok_or("no_state")?;
        if e.age > CENSUS_MAX_STATE_AGE {
            // A vehicle the twin only predicts is not a sample of the traffic.
            return Err("stale_state");
        }
        let road = self.world.road();
        let f = road.to_frenet(e.x, e.y);
        if f.s < 0.0 || f.s > road.length() {
            return Err("off_route");
        }
        let (segment, s_on_segment) = road.segment_at(f.s);
        let snap = |v: f64| {
            if precision > 0.0 {
                (v / precision).round() * precision
            } else {
                v
            }
        };
        let tile = grid.tile_of(e.x, e.y);
        let mut report = CensusReport {
            tile_id: tile.to_string(),
            contributor: twinlink_share::census::contributor_token(
                &self.census_secret,
                windows.index_of(now_us),
            ),
            window_start: twinlink_share::time::ros_time(windows.start_of(now_us)),
            segment_id: segment.to_string(),
            lane_index: road.lane_of(f.d).unwrap_or(-1),
            s: snap(s_on_segment).max(0.0),
            speed: e.speed.clamp(0.0, 100.0) as f32,
            ..Default::default()
        };
        report.header.stamp = twinlink_share::time::ros_time(now_us);
        report.header.frame_id = "map".into();
        // Hazards go to other twins through the relay (coarsened, under a pseudonym), not
        // in the census.
        let _ = tile;
        Ok(report)
    }

    fn bound_hazard_changes(&mut self) {
        let pending = &mut self.hazard_changes;
        // Nobody taking them (no sharing configured) must not make them grow.
        for list in [&mut pending.new, &mut pending.updated] {
            if list.len() > MAX_PENDING_HAZARD_CHANGES {
                list.drain(..list.len() - MAX_PENDING_HAZARD_CHANGES);
            }
        }
        for list in [&mut pending.resolved, &mut pending.expired] {
            if list.len() > MAX_PENDING_HAZARD_CHANGES {
                list.drain(..list.len() - MAX_PENDING_HAZARD_CHANGES);
            }
        }
    }

    /// The hazard detector (its active hazards and counters).
    pub fn hazard_detector(&self) -> &HazardDetector {
        &self.hazards
    }

    /// Plans for time `now` [s since the Unix epoch] and returns the recommendation, with a
    /// horizon of at least `horizon` seconds. `None` before the first vehicle state.
    pub fn recommend(&mut self, now: f64, horizon: f64) -> Option<Recommendation> {
        let e = self.refresh_world(now)?;
        let plan = self.planner.plan(
            &self.world,
            &PlanContext {
                state_age: e.age,
                horizon,
            },
        );
        let mut plan = plan;
        if let Some(cap) = self.desired.max_speed_mps {
            // The operator's cap bounds the advice and the whole horizon.
            if plan.target_speed > cap {
                plan.target_speed = cap;
                plan.reason_code = Recommendation::REASON_SPEED_LIMIT;
                plan.reason = format!("operator's speed cap {:.0} km/h", cap * 3.6);
            }
            for point in &mut plan.horizon {
                point.1 = point.1.min(cap);
            }
        }
        self.sequence += 1;
        let r = plan.to_recommendation(&self.vehicle, self.sequence, (now * 1e6) as u64);
        self.last_plan = Some(plan);
        Some(r)
    }

    /// The newest plan.
    pub fn last_plan(&self) -> Option<&Plan> {
        self.last_plan.as_ref()
    }

    /// A report of counters and state at time `now`.
    pub fn status(&self, now: f64) -> TwinStatusReport {
        TwinStatusReport {
            vehicle: self.vehicle.clone(),
            states: self.states,
            summaries: self.summaries,
            recommendations: self.sequence,
            regional_tiles: self.regional_tiles,
            refused: self.refused,
            confirmed_tracks: self.tracker.confirmed().count(),
            hazards: self.world.hazards().len(),
            estimate: self.ego.estimate(now).map(EstimateReport::from),
            last_recommendation: self
                .last_plan
                .as_ref()
                .map(|p| (p.target_speed, p.target_lane, p.reason.clone())),
        }
    }
}

#[cfg(test)]
// Messages are built field by field from defaults, as ROS users write them.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use crate::planner::ros_time;
    use twinlink_msgs::twin_msgs::msg::DetectedObject;

    const LIMIT: f64 = 30.0;

    fn settings() -> TwinSettings {
        TwinSettings {
            road: Arc::new(Road::straight(20_000.0, 3, LIMIT).unwrap()),
            tracker: TrackerConfig::default(),
            planner: Planner::default(),
        }
    }

    fn state(t: f64, x: f64, v: f64) -> VehicleState {
        let mut s = VehicleState::default();
        s.header.stamp = ros_time((t * 1e6) as u64);
        s.header.frame_id = "map".into();
        s.vehicle_id = "veh-1".into();
        s.pose.position.x = x;
        s.pose.position.y = 0.0;
        s.pose.orientation.w = 1.0;
        s.twist.linear.x = v;
        s.length = 4.5;
        s.width = 1.9;
        s
    }

    fn summary(t: f64, objects: &[(f64, f64, f64)]) -> PerceptionSummary {
        let mut s = PerceptionSummary::default();
        s.header.stamp = ros_time((t * 1e6) as u64);
        s.header.frame_id = "base_link".into();
        s.sensor_id = "lidar_top".into();
        s.sensor_kind = PerceptionSummary::SENSOR_LIDAR;
        s.objects = objects
            .iter()
            .map(|&(x, y, v)| {
                let mut o = DetectedObject::default();
                o.classification = DetectedObject::CLASS_CAR;
                o.class_confidence = 0.9;
                o.position.x = x;
                o.position.y = y;
                o.dimensions.x = 4.5;
                o.dimensions.y = 1.9;
                o.has_velocity = true;
                o.velocity.x = v;
                o.position_covariance = [0.04, 0.0, 0.0, 0.0, 0.04, 0.0, 0.0, 0.0, 0.1];
                o
            })
            .collect();
        s
    }

    #[test]
    fn an_operators_speed_cap_bounds_the_advice_and_its_horizon() {
        let mut twin = Twin::new("veh-1", &settings());
        let t = 1_700_000_000.0;
        twin.on_state(&state(t, 100.0, 30.0)).unwrap();
        let free = twin.recommend(t + 0.05, 5.0).unwrap();
        assert!(free.target_speed > 25.0, "{}", free.target_speed);
        for bad in [0.0, -1.0, f64::NAN, MAX_SPEED_CAP + 1.0] {
            let e = twin
                .set_desired(DesiredState {
                    max_speed_mps: Some(bad),
                    ..Default::default()
                })
                .unwrap_err();
            assert!(e.contains("max_speed_mps"), "{e}");
        }
        assert_eq!(
            twin.desired().version,
            0,
            "a refused change changes nothing"
        );
        twin.set_desired(DesiredState {
            version: 1,
            set_at_us: 1,
            by: "alice".into(),
            max_speed_mps: Some(15.0),
        })
        .unwrap();
        let capped = twin.recommend(t + 0.1, 5.0).unwrap();
        assert_eq!(capped.target_speed, 15.0);
        assert_eq!(capped.reason_code, Recommendation::REASON_SPEED_LIMIT);
        assert!(capped.reason.contains("54 km/h"), "{}", capped.reason);
        assert!(!capped.horizon.is_empty());
        assert!(capped.horizon.iter().all(|h| h.speed <= 15.0));
        // Cleared: the road's limit again.
        twin.set_desired(DesiredState {
            version: 2,
            ..Default::default()
        })
        .unwrap();
        assert!(twin.recommend(t + 0.15, 5.0).unwrap().target_speed > 25.0);
    }

    #[test]
    fn the_fleet_sees_the_reported_state_only_under_the_vehicles_grant() {
        use twinlink_msgs::twin_msgs::msg::SharingRule;
        let mut twin = Twin::new("veh-1", &settings());
        let t0 = 1_700_000_010.0;
        let us = |t: f64| (t * 1e6) as u64;
        assert_eq!(twin.reported_version(), 0);
        assert_eq!(twin.reported_for_fleet(us(t0)).unwrap_err(), "no_state");
        twin.on_state(&state(t0, 1234.0, 25.0)).unwrap();
        assert_eq!(twin.reported_version(), us(t0));
        assert_eq!(twin.reported_for_fleet(us(t0)).unwrap_err(), "no_rule");
        let mut policy = SharingPolicy::default();
        policy.rules.push(SharingRule {
            category: SharedObservation::CATEGORY_TRAFFIC,
            audience: SharingRule::AUDIENCE_SAME_FLEET,
            spatial_precision: 100.0,
            max_age: 10.0,
            ..Default::default()
        });
        twin.on_policy(policy, us(t0)).unwrap();
        let r = twin.reported_for_fleet(us(t0)).unwrap();
        assert_eq!((r.x, r.y, r.speed), (1200.0, 0.0, 25.0), "snapped to 100 m");
        assert_eq!(r.stamp_us, us(t0));
    }

    #[test]
    fn connectivity_says_since_and_until_when() {
        let mut twin = Twin::new("veh-1", &settings());
        assert_eq!(twin.connectivity(), Connectivity::default());
        twin.set_connected(true, 10);
        assert_eq!(
            twin.connectivity(),
            Connectivity {
                connected: true,
                since_us: Some(10),
                until_us: None
            }
        );
        twin.set_connected(false, 20);
        twin.set_connected(false, 30);
        assert_eq!(
            twin.connectivity(),
            Connectivity {
                connected: false,
                since_us: Some(10),
                until_us: Some(20)
            }
        );
    }

    #[test]
    fn census_needs_consent_and_a_fresh_state_and_keeps_its_token_for_a_window() {
        use twinlink_msgs::twin_msgs::msg::SharingRule;
        use twinlink_share::census::Windows;
        let mut twin = Twin::new("veh-1", &settings());
        let t0 = 1_700_000_010.0;
        let us = |t: f64| (t * 1e6) as u64;
        let windows = Windows::new(30_000_000);
        let grid = TileGrid::default();
        assert_eq!(twin.census(us(t0), &windows, &grid).unwrap_err(), "no_rule");
        let mut policy = SharingPolicy::default();
        policy.rules.push(SharingRule {
            category: SharedObservation::CATEGORY_TRAFFIC,
            audience: SharingRule::AUDIENCE_SAME_FLEET,
            spatial_precision: 10.0,
            max_age: 10.0,
            ..Default::default()
        });
        twin.on_policy(policy, us(t0)).unwrap();
        assert_eq!(
            twin.census(us(t0), &windows, &grid).unwrap_err(),
            "no_state"
        );
        twin.on_state(&state(t0, 1234.0, 25.0)).unwrap();
        let r = twin.census(us(t0 + 0.1), &windows, &grid).unwrap();
        assert_eq!(r.tile_id, "1_0");
        assert_eq!(r.lane_index, 0);
        assert_eq!(r.segment_id, twin.world().road().segment_at(1236.5).0);
        assert_eq!(r.s % 10.0, 0.0, "snapped to the rule's 10 m: {}", r.s);
        assert!((r.speed - 25.0).abs() < 0.5, "{}", r.speed);
        assert_eq!(r.contributor.len(), 32);
        assert!(r.incidents.is_empty());
        let later = twin.census(us(t0 + 0.5), &windows, &grid).unwrap();
        assert_eq!(later.contributor, r.contributor, "one token per window");
        twin.on_state(&state(t0 + 30.0, 1984.0, 25.0)).unwrap();
        let next = twin.census(us(t0 + 30.0), &windows, &grid).unwrap();
        assert_ne!(next.contributor, r.contributor, "a new window, a new token");
        // A vehicle only predicted is not a sample.
        assert_eq!(
            twin.census(us(t0 + 40.0), &windows, &grid).unwrap_err(),
            "stale_state"
        );
    }

    #[test]
    fn fuses_and_follows_a_slower_vehicle_ahead() {
        let mut twin = Twin::new("veh-1", &settings());
        let t0 = 1_700_000_000.0;
        assert_eq!(
            twin.on_summary(&summary(t0, &[(30.0, 0.0, 15.0)]))
                .unwrap_err()
                .reason(),
            "no_state_yet"
        );
        for k in 0..20 {
            let t = t0 + k as f64 * 0.1;
            let ego_x = 100.0 + 25.0 * (t - t0);
            twin.on_state(&state(t, ego_x, 25.0)).unwrap();
            // A car 40 m ahead in the same lane doing 15 m/s (relative -10 m/s).
            let lead_x = 140.0 + 15.0 * (t - t0);
            twin.on_summary(&summary(t, &[(lead_x - ego_x, 0.0, 15.0)]))
                .unwrap();
        }
        let r = twin.recommend(t0 + 1.95, 5.0).unwrap();
        assert_eq!(twin.tracker().confirmed().count(), 1);
        assert_eq!(
            r.reason_code,
            Recommendation::REASON_FOLLOWING,
            "{}",
            r.reason
        );
        assert!(r.target_speed < 20.0, "{}", r.target_speed);
        assert_eq!(r.sequence, 1);
        assert_eq!(r.vehicle_id, "veh-1");
        let status = twin.status(t0 + 2.0);
        assert_eq!(
            (status.states, status.summaries, status.refused),
            (20, 20, 1)
        );
    }

    #[test]
    fn a_car_stopped_in_the_next_lane_becomes_the_twins_own_hazard() {
        let mut twin = Twin::new("veh-1", &settings());
        let t0 = 1_700_000_000.0;
        let mut raised_at = None;
        for k in 0..45 {
            let t = t0 + k as f64 * 0.1;
            let ego_x = 100.0 + 25.0 * (t - t0);
            twin.on_state(&state(t, ego_x, 25.0)).unwrap();
            // A car stopped at x = 300 in lane 1 (3.5 m to the left).
            twin.on_summary(&summary(t, &[(300.0 - ego_x, 3.5, 0.0)]))
                .unwrap();
            twin.recommend(t, 5.0).unwrap();
            let changes = twin.take_hazard_changes();
            if !changes.new.is_empty() {
                assert!(raised_at.is_none(), "raised once");
                raised_at = Some(t - t0);
                let inc = &changes.new[0];
                assert_eq!(inc.incident_kind, Incident::INCIDENT_STALLED_VEHICLE);
                assert_eq!(inc.lane_index, 1);
                assert!((inc.position.x - 300.0).abs() < 1.0, "{inc:?}");
            }
        }
        // After the 2 s dwell (and the tracker's confirmation), not before.
        let raised_at = raised_at.expect("the stopped car became a hazard");
        assert!((2.0..=3.5).contains(&raised_at), "{raised_at}");
        let own: Vec<_> = twin
            .world()
            .hazards()
            .iter()
            .filter(|h| h.source == Source::OwnSensors)
            .collect();
        assert_eq!(own.len(), 1, "{:?}", twin.world().hazards());
        assert_eq!(own[0].lane, 1);
        assert_eq!(twin.hazard_detector().stats().hazards_raised, 1);
    }

    #[test]
    fn keeps_advising_while_the_vehicle_is_offline() {
        let mut twin = Twin::new("veh-1", &settings());
        let t0 = 1_700_000_000.0;
        for k in 0..10 {
            let t = t0 + k as f64 * 0.1;
            twin.on_state(&state(t, 100.0 + 20.0 * k as f64 * 0.1, 20.0))
                .unwrap();
        }
        let online = twin.recommend(t0 + 1.0, 5.0).unwrap();
        // 15 s later, no state since: still a recommendation, conservative and less sure.
        let offline = twin.recommend(t0 + 15.9, 20.0).unwrap();
        assert_eq!(offline.reason_code, Recommendation::REASON_LINK_DEGRADED);
        assert!(offline.confidence < online.confidence);
        assert!(offline.target_speed < online.target_speed);
        assert!(offline.horizon.last().unwrap().time_offset >= 19.0);
        let status = twin.status(t0 + 15.9);
        let est = status.estimate.unwrap();
        assert!((est.x - (100.0 + 20.0 * 15.9)).abs() < 5.0, "{est:?}");
        assert!(est.position_sigma > 1.0 && est.age > 14.0, "{est:?}");
    }

    #[test]
    fn refuses_what_does_not_fit_and_counts_it() {
        let mut twin = Twin::new("veh-1", &settings());
        let mut other = state(1.0, 0.0, 1.0);
        other.vehicle_id = "veh-2".into();
        assert_eq!(twin.on_state(&other).unwrap_err().reason(), "wrong_vehicle");
        twin.on_state(&state(10.0, 0.0, 1.0)).unwrap();
        assert_eq!(
            twin.on_state(&state(9.0, 0.0, 1.0)).unwrap_err().reason(),
            "stale_state"
        );
        twin.on_summary(&summary(10.0, &[(10.0, 0.0, 1.0)]))
            .unwrap();
        assert_eq!(
            twin.on_summary(&summary(9.0, &[])).unwrap_err().reason(),
            "stale_summary"
        );
        let mut map_frame = summary(10.1, &[]);
        map_frame.header.frame_id = "map".into();
        assert_eq!(
            twin.on_summary(&map_frame).unwrap_err().reason(),
            "invalid_summary"
        );
        let nan = summary(10.2, &[(f64::NAN, 0.0, 1.0), (12.0, 0.0, 1.0)]);
        assert_eq!(twin.on_summary(&nan).unwrap().skipped, 1);
        assert_eq!(twin.status(10.0).refused, 4);
    }
}
