//! Hazards learned from the vehicle's own sensors: stalled vehicles and debris on the
//! lanes, as `Incident`s that the twin can share with other twins.
//!
//! The detector is pure (no I/O, no clock, no tracker internals). The twin hands it, at
//! each planning cycle, the confirmed tracks as [`TrackView`]s (map position, velocity over
//! ground, size, class, position sigma), its own vehicle as an [`EgoView`] (route position
//! and speed) and the [`Road`]; it answers with the [`HazardChanges`] of that cycle. Built
//! from the tracker, for example:
//!
//! ```
//! use twin_dr_host::hazard_detect::TrackView;
//! use twin_dr_host::tracker::{Tracker, TrackerConfig};
//!
//! let tracker = Tracker::new(TrackerConfig::default());
//! let views: Vec<TrackView> = tracker
//!     .confirmed()
//!     .map(|tr| {
//!         let (p, cov) = tr.filter.position();
//!         let v = tr.filter.velocity();
//!         TrackView {
//!             id: tr.id,
//!             x: p.x,
//!             y: p.y,
//!             vx: v.x,
//!             vy: v.y,
//!             length: tr.dimensions[0],
//!             width: tr.dimensions[1],
//!             class: tr.class(),
//!             position_sigma: ((cov[(0, 0)] + cov[(1, 1)]) / 2.0).max(0.0).sqrt(),
//!         }
//!     })
//!     .collect();
//! assert!(views.is_empty());
//! ```
//!
//! # Rules
//!
//! Names in `code` are fields of [`HazardConfig`]; the defaults are in brackets.
//!
//! **What is looked at.** A track is used only when every number in it is finite, its
//! size and sigma are not negative and its size is at most [`MAX_DIMENSION`], its class is
//! one of `DetectedObject::CLASS_*` and its id is not repeated in the same update; anything
//! else is skipped and counted (`skipped_invalid`), as is an update whose time or ego is
//! not finite or whose time goes backwards. A track is *on the road* when its projection
//! onto the route ([`Road::to_frenet_near`] around the ego) lies within the route's length
//! and its lateral offset `d` falls in one of the lanes ([`Road::lane_of`]); tracks off the
//! road are ignored. Pedestrians and bicycles are ignored altogether: they move on their
//! own, stand at crossings and on the verge, and a standing pedestrian is not a stalled
//! vehicle (a driver standing beside a broken-down car must not hide the car either, so
//! they are not counted as traffic below).
//!
//! **Candidate.** An on-road track whose speed over ground is below `slow_speed`
//! \[1.0 m/s\] becomes a candidate; its dwell restarts whenever it is seen at or above that
//! speed, leaves the road or is not in the update. Speed over ground, not along the road,
//! so a car turning across the lanes is not "stopped".
//!
//! **Hazard.** A candidate that has been slow for `dwell` \[2.0 s\] is raised as a hazard,
//! unless it looks like a queue (below). Its kind comes from its class: car, truck,
//! motorcycle → `INCIDENT_STALLED_VEHICLE`; `CLASS_STATIC_OBSTACLE` → `INCIDENT_DEBRIS`;
//! unknown → `INCIDENT_DEBRIS` when shorter than `debris_max_length` \[2.0 m\], else
//! `INCIDENT_STALLED_VEHICLE` (the kind follows the class while the hazard is seen, the
//! id does not).
//!
//! **Congestion is not a hazard.** A stopped car at the end of a queue looks, to one
//! sensor frame, exactly like a stalled car; what tells them apart is the traffic around
//! it. A candidate that may be a vehicle (any class but `CLASS_STATIC_OBSTACLE`) is held
//! back while any of these holds; its dwell keeps running, so it is raised as soon as
//! none does (e.g. the traffic around moves on and it stays):
//!
//! 1. *Queued behind something*: another track (any class but pedestrians and bicycles)
//!    below `flowing_speed` \[5.0 m/s\] has its centre in the same lane within
//!    `free_ahead` \[30 m\] in front of it. A stalled car has free road ahead of it; a car
//!    in a queue (or waiting behind debris or a stalled car) has not. Of a row of stopped
//!    vehicles only the first can be a hazard, and it names the place to avoid.
//! 2. *The ego is in the same queue*: the ego's speed is below `flowing_speed` and the
//!    candidate is within `ego_queue_range` \[50 m\] of it along the road. A vehicle that
//!    crawls among stopped ones is most likely in a jam itself; a hazard it passes slowly
//!    would, in any case, have been raised earlier while it approached at speed (holding
//!    back only concerns raising: a hazard already raised is not withdrawn because the
//!    ego slows down behind it).
//! 3. *A jam around it*: within `jam_window` \[50 m\] along the road, in any lane, at
//!    least `jam_min_queued` \[2\] other vehicle tracks are below `flowing_speed` and they
//!    outnumber those at or above it. This catches the tail of a jam seen by a fast ego
//!    when occlusion hides all but the last car of each lane (rule 1 then sees nothing in
//!    front); a stalled car with traffic still passing it is not affected.
//!
//! Debris (`CLASS_STATIC_OBSTACLE`) is exempt from these rules: it does not queue, and a
//! lost load is a hazard in a jam too. Counted once per candidate in `congestion_held`.
//!
//! **The incident.** `incident_id` is `h-<segment>-<lane>-<cell>`: the road segment and
//! lane where the object was first slow, and its distance along that segment snapped to
//! the nearest multiple of `id_grid` \[5 m\]. It is fixed when the candidate starts, so it
//! is stable across updates however the track's position jitters, and two twins on routes
//! sharing the segment that see the same object derive the same id unless their first
//! positions fall on either side of a cell boundary (with a position error `e` between
//! them, the chance of that is about `e / id_grid`: 10 % for half a metre). Segment ids
//! are the regional names of road stretches, so the id does not depend on where a route
//! starts. `position` is the map position (smoothed while seen), `segment_id` and `s` the
//! segment and the distance along it ([`Road::segment_at`]), `lane_index` the lane,
//! `extent` the track's length (at least `min_extent` \[1 m\]), `detected` the time it was
//! first slow, `expires` the last time it was seen plus `ttl` \[60 s\]. `confidence` is
//! `1 / (1 + (sigma / sigma_ref)²) · min(1, slow_for / (2 · dwell))` with
//! `sigma_ref` \[1 m\]: a well-localised object (LiDAR, 0.2 m) just raised has about 0.5,
//! and 1 after twice the dwell; a track with a 1 m sigma at most 0.5.
//!
//! **Reporting.** A hazard is in [`HazardChanges::new`] once, when raised; in
//! [`HazardChanges::updated`] when its kind changes, its confidence moves by 0.1 or more,
//! its extent or position by 1 m or more, it is taken over by a new track, or its
//! `expires` has moved `refresh_interval` \[10 s\] past the one last reported, so the twin
//! can share refreshes at a bounded rate rather than every cycle.
//!
//! **End of a hazard.** It is *resolved* ([`HazardChanges::resolved`], then forgotten)
//! when
//!
//! - its track drives off: faster than `moving_factor` × `slow_speed` \[2 × 1 m/s\] for
//!   `moving_time` \[1 s\] (between the two speeds is still stopped: hysteresis), or lost
//!   by the tracker while doing so;
//! - it is gone when the ego passes it: the ego gets beyond it by `pass_margin` \[10 m\],
//!   the track is not in the update, and it was last seen while the ego was more than
//!   `pass_check_range` \[30 m\] before it (the ego drove its whole final approach
//!   without seeing it, so it should have). A hazard seen during that approach and lost
//!   only as the ego drives past it (out of the sensors' field of view) is not resolved:
//!   it is still there.
//!
//! A hazard that is not seen any more but not passed just *expires* when `ttl` has gone
//! by since it was last seen ([`HazardChanges::expired`]). When its track disappears, a
//! slow track in the same lane within `adopt_radius` \[5 m\] of it takes it over at once
//! (the tracker re-created the object's track), without a new dwell and keeping its id.
//!
//! **Bounded memory.** At most `max_candidates` \[256\] candidates (a new one drops the
//! one slow for longest) and `max_hazards` \[64\] hazards (a new one drops the oldest,
//! reported as expired); both counted in `evicted`.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::twin_msgs::msg::{DetectedObject, Incident};

use crate::road::Road;

/// Largest track length or width accepted [m]; larger is a tracker fault, skipped.
pub const MAX_DIMENSION: f64 = 100.0;

/// Tolerance of time comparisons [s] (times are seconds since the Unix epoch, whose
/// resolution as `f64` is about 0.2 µs).
const TIME_EPS: f64 = 1e-6;
/// Weight of a new position in the smoothed hazard position.
const POSITION_SMOOTHING: f64 = 0.2;
/// A confidence change of this much is reported as an update.
const REPORT_CONFIDENCE: f32 = 0.1;
/// An extent or position change of this much is reported as an update [m].
const REPORT_DISTANCE: f64 = 1.0;

/// Settings of the [`HazardDetector`]; see the module documentation for how each is used.
#[derive(Debug, Clone, PartialEq)]
pub struct HazardConfig {
    /// Speed over ground below which a track counts as stopped [m/s]. Default 1.0.
    pub slow_speed: f64,
    /// How long a track must stay below `slow_speed` to be a hazard [s]. Default 2.0.
    pub dwell: f64,
    /// A hazard whose track is faster than `moving_factor * slow_speed` for
    /// `moving_time` has driven off. Default 2.0.
    pub moving_factor: f64,
    /// How long a hazard's track must stay above the moving speed to be resolved [s].
    /// Default 1.0.
    pub moving_time: f64,
    /// Speed at or above which traffic (and the ego) is flowing, not queued [m/s].
    /// Default 5.0.
    pub flowing_speed: f64,
    /// A candidate with a queued track this close in front of it in its lane is queued
    /// itself [m]. Default 30.
    pub free_ahead: f64,
    /// A candidate this close to a queued ego (along the road, either way) is in the ego's
    /// queue [m]. Default 50.
    pub ego_queue_range: f64,
    /// Half-length of the stretch around a candidate counted for the jam rule [m].
    /// Default 50.
    pub jam_window: f64,
    /// Queued vehicles in the jam window, besides the candidate, that make a jam (when
    /// they outnumber the flowing ones). Default 2.
    pub jam_min_queued: usize,
    /// An object of unknown class shorter than this is debris, else a vehicle [m].
    /// Default 2.0.
    pub debris_max_length: f64,
    /// Smallest extent reported [m]. Default 1.0.
    pub min_extent: f64,
    /// Grid along the segment onto which the first position is snapped for the id [m].
    /// Default 5.
    pub id_grid: f64,
    /// A hazard is forgotten this long after it was last seen; its `expires` [s].
    /// Default 60.
    pub ttl: f64,
    /// A seen hazard is reported again when its expiry moved this far [s]. Default 10.
    pub refresh_interval: f64,
    /// The ego has passed a hazard when this far beyond it along the road [m].
    /// Default 10.
    pub pass_margin: f64,
    /// A hazard not seen since the ego was this far before it is gone when passed [m].
    /// Default 30.
    pub pass_check_range: f64,
    /// A slow track this close (same lane, along the road) takes over a hazard whose
    /// track disappeared [m]. Default 5.
    pub adopt_radius: f64,
    /// Position sigma at which the position factor of the confidence is 0.5 [m].
    /// Default 1.0.
    pub sigma_ref: f64,
    /// Most candidates kept. Default 256.
    pub max_candidates: usize,
    /// Most hazards kept. Default 64.
    pub max_hazards: usize,
}

impl Default for HazardConfig {
    fn default() -> Self {
        HazardConfig {
            slow_speed: 1.0,
            dwell: 2.0,
            moving_factor: 2.0,
            moving_time: 1.0,
            flowing_speed: 5.0,
            free_ahead: 30.0,
            ego_queue_range: 50.0,
            jam_window: 50.0,
            jam_min_queued: 2,
            debris_max_length: 2.0,
            min_extent: 1.0,
            id_grid: 5.0,
            ttl: 60.0,
            refresh_interval: 10.0,
            pass_margin: 10.0,
            pass_check_range: 30.0,
            adopt_radius: 5.0,
            sigma_ref: 1.0,
            max_candidates: 256,
            max_hazards: 64,
        }
    }
}

/// One confirmed track, as the detector needs it (built by the caller from the tracker).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackView {
    /// Track id, stable for the track's life.
    pub id: u64,
    /// Map position [m].
    pub x: f64,
    /// Map position [m].
    pub y: f64,
    /// Velocity over ground in the map frame [m/s].
    pub vx: f64,
    /// Velocity over ground in the map frame [m/s].
    pub vy: f64,
    /// Box length [m] (0 when unknown).
    pub length: f64,
    /// Box width [m] (0 when unknown); validated, but the rules place an object by its
    /// centre.
    pub width: f64,
    /// One of `DetectedObject::CLASS_*`.
    pub class: u8,
    /// Position standard deviation (1 sigma) [m].
    pub position_sigma: f64,
}

/// The own vehicle, as the detector needs it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EgoView {
    /// Route position [m].
    pub s: f64,
    /// Speed [m/s] (its magnitude is used).
    pub speed: f64,
}

/// What one [`HazardDetector::update`] changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HazardChanges {
    /// Hazards raised in this update.
    pub new: Vec<Incident>,
    /// Hazards whose incident changed enough to share again (see the module docs).
    pub updated: Vec<Incident>,
    /// Ids of hazards that are gone (drove off, or not there when passed): stop sharing.
    pub resolved: Vec<String>,
    /// Ids of hazards forgotten without being resolved: not seen for the TTL, or dropped
    /// to keep within `max_hazards`.
    pub expired: Vec<String>,
}

impl HazardChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.new.is_empty()
            && self.updated.is_empty()
            && self.resolved.is_empty()
            && self.expired.is_empty()
    }
}

/// Counters of a [`HazardDetector`] since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HazardStats {
    /// Candidates started (a track became slow on the road).
    pub candidates: u64,
    /// Hazards raised.
    pub hazards_raised: u64,
    /// Candidates held back as congestion after their dwell (each counted once).
    pub congestion_held: u64,
    /// Hazards resolved.
    pub resolved: u64,
    /// Hazards expired by their TTL.
    pub expired: u64,
    /// Candidates and hazards dropped to stay within the memory bounds.
    pub evicted: u64,
    /// Tracks (and whole updates) skipped for a non-finite or out-of-range value.
    pub skipped_invalid: u64,
}

/// A track that has been slow on the road, not (yet) a hazard.
#[derive(Debug, Clone)]
struct Candidate {
    /// When it became slow [s].
    since: f64,
    /// Route position and lane where it became slow (for the id).
    first_s: f64,
    first_lane: i32,
    /// Insertion order, to break ties of `since`.
    seq: u64,
    /// Whether it has been counted in `congestion_held`.
    held: bool,
}

/// A raised hazard.
#[derive(Debug, Clone)]
struct Active {
    incident: Incident,
    /// The track that shows it.
    track: u64,
    /// Smoothed map position [m].
    x: f64,
    y: f64,
    /// Route position [m] and lane.
    s: f64,
    lane: i32,
    /// When it was first slow [s].
    detected: f64,
    /// When it was last seen [s].
    last_seen: f64,
    /// Ego route position when it was last seen [m].
    last_seen_ego_s: f64,
    /// Since when its track has been faster than the moving speed [s].
    moving_since: Option<f64>,
    /// Whether the ego has passed it (checked once).
    passed: bool,
    /// The incident as last reported (new or updated).
    reported: Incident,
}

/// A valid on-road track of this update.
#[derive(Debug, Clone, Copy)]
struct Obs {
    id: u64,
    x: f64,
    y: f64,
    s: f64,
    lane: i32,
    speed: f64,
    length: f64,
    class: u8,
    sigma: f64,
}

/// Learns hazards (stalled vehicles, debris) from the vehicle's own confirmed tracks.
#[derive(Debug, Clone)]
pub struct HazardDetector {
    config: HazardConfig,
    candidates: HashMap<u64, Candidate>,
    hazards: Vec<Active>,
    stats: HazardStats,
    last_now: Option<f64>,
    seq: u64,
}

impl Default for HazardDetector {
    fn default() -> Self {
        HazardDetector::new(HazardConfig::default())
    }
}

/// A ROS time from seconds since the Unix epoch.
fn ros_time(t: f64) -> Time {
    let sec = t.floor();
    let nanosec = ((t - sec) * 1e9).round().clamp(0.0, 999_999_999.0) as u32;
    Time {
        sec: sec.clamp(i32::MIN as f64, i32::MAX as f64) as i32,
        nanosec,
    }
}

fn is_vulnerable(class: u8) -> bool {
    matches!(
        class,
        DetectedObject::CLASS_PEDESTRIAN | DetectedObject::CLASS_BICYCLE
    )
}

/// The stable id of a hazard first seen at route position `s` in `lane`.
fn incident_id(road: &Road, s: f64, lane: i32, grid: f64) -> String {
    let (segment, along) = road.segment_at(s);
    let grid = if grid.is_finite() && grid > 0.0 {
        grid
    } else {
        1.0
    };
    // `+ 0.0` turns -0 into 0.
    let cell = (along / grid).round() * grid + 0.0;
    format!("h-{segment}-{lane}-{cell}")
}

impl HazardDetector {
    /// A detector with `config`.
    pub fn new(config: HazardConfig) -> Self {
        HazardDetector {
            config,
            candidates: HashMap::new(),
            hazards: Vec::new(),
            stats: HazardStats::default(),
            last_now: None,
            seq: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &HazardConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> HazardStats {
        self.stats
    }

    /// Candidates now (slow tracks not yet hazards).
    pub fn pending(&self) -> usize {
        self.candidates.len()
    }

    /// The hazards now known, oldest first, as up-to-date incidents.
    pub fn active(&self) -> impl Iterator<Item = &Incident> {
        self.hazards.iter().map(|h| &h.incident)
    }

    /// Takes the confirmed tracks at time `now` [s since the Unix epoch] (predicted to
    /// `now` by the caller), the road and the ego, and returns what changed. See the
    /// module documentation for the rules.
    pub fn update(
        &mut self,
        now: f64,
        tracks: impl IntoIterator<Item = TrackView>,
        road: &Road,
        ego: EgoView,
    ) -> HazardChanges {
        let mut changes = HazardChanges::default();
        let backwards = self.last_now.is_some_and(|t| now < t);
        if !(now.is_finite() && ego.s.is_finite() && ego.speed.is_finite()) || backwards {
            self.stats.skipped_invalid += 1;
            return changes;
        }
        self.last_now = Some(now);
        let ego = EgoView {
            s: ego.s,
            speed: ego.speed.abs(),
        };
        let obs = self.observe(tracks, road, ego.s);
        let index: HashMap<u64, usize> = obs.iter().enumerate().map(|(i, o)| (o.id, i)).collect();
        self.update_hazards(now, &obs, &index, road, ego, &mut changes);
        self.update_candidates(now, &obs, &index, road, ego, &mut changes);
        changes
    }

    /// The valid, on-road tracks that are not pedestrians or bicycles; counts the invalid.
    fn observe(
        &mut self,
        tracks: impl IntoIterator<Item = TrackView>,
        road: &Road,
        ego_s: f64,
    ) -> Vec<Obs> {
        let mut ids = HashSet::new();
        let mut out = Vec::new();
        for t in tracks {
            let numbers = [t.x, t.y, t.vx, t.vy, t.length, t.width, t.position_sigma];
            let valid = numbers.iter().all(|v| v.is_finite())
                && (0.0..=MAX_DIMENSION).contains(&t.length)
                && (0.0..=MAX_DIMENSION).contains(&t.width)
                && t.position_sigma >= 0.0
                && t.class <= DetectedObject::CLASS_STATIC_OBSTACLE;
            if !valid || !ids.insert(t.id) {
                self.stats.skipped_invalid += 1;
                continue;
            }
            if is_vulnerable(t.class) {
                continue;
            }
            let f = road.to_frenet_near(t.x, t.y, ego_s);
            let Some(lane) = road.lane_of(f.d) else {
                continue;
            };
            if !(0.0..=road.length()).contains(&f.s) {
                continue;
            }
            out.push(Obs {
                id: t.id,
                x: t.x,
                y: t.y,
                s: f.s,
                lane,
                speed: t.vx.hypot(t.vy),
                length: t.length,
                class: t.class,
                sigma: t.position_sigma,
            });
        }
        out
    }

    /// The kind of hazard an object of `class` and `length` is, if any.
    fn kind_of(&self, class: u8, length: f64) -> Option<u8> {
        match class {
            DetectedObject::CLASS_CAR
            | DetectedObject::CLASS_TRUCK
            | DetectedObject::CLASS_MOTORCYCLE => Some(Incident::INCIDENT_STALLED_VEHICLE),
            DetectedObject::CLASS_STATIC_OBSTACLE => Some(Incident::INCIDENT_DEBRIS),
            DetectedObject::CLASS_UNKNOWN if length < self.config.debris_max_length => {
                Some(Incident::INCIDENT_DEBRIS)
            }
            DetectedObject::CLASS_UNKNOWN => Some(Incident::INCIDENT_STALLED_VEHICLE),
            _ => None,
        }
    }

    fn confidence(&self, sigma: f64, slow_for: f64) -> f32 {
        let c = &self.config;
        let r = sigma / c.sigma_ref.max(1e-3);
        let position = 1.0 / (1.0 + r * r);
        let time = if c.dwell > 0.0 {
            (slow_for / (2.0 * c.dwell)).clamp(0.0, 1.0)
        } else {
            1.0
        };
        ((position * time) as f32).clamp(0.0, 1.0)
    }

    /// Why candidate `c` looks like congestion rather than a hazard, if it does.
    fn congestion(&self, c: &Obs, obs: &[Obs], ego: EgoView) -> Option<&'static str> {
        let cfg = &self.config;
        let queued = |o: &Obs| o.speed < cfg.flowing_speed;
        let others = || obs.iter().filter(move |o| o.id != c.id);
        if others()
            .any(|o| o.lane == c.lane && o.s > c.s && o.s - c.s <= cfg.free_ahead && queued(o))
        {
            return Some("queued behind a stopped object");
        }
        if ego.speed < cfg.flowing_speed && (c.s - ego.s).abs() <= cfg.ego_queue_range {
            return Some("the ego is queued with it");
        }
        let (mut slow, mut flowing) = (0usize, 0usize);
        for o in others().filter(|o| {
            o.class != DetectedObject::CLASS_STATIC_OBSTACLE && (o.s - c.s).abs() <= cfg.jam_window
        }) {
            if queued(o) {
                slow += 1;
            } else {
                flowing += 1;
            }
        }
        (slow >= cfg.jam_min_queued && slow > flowing).then_some("a jam around it")
    }

    /// Sets the hazard's incident from its current state.
    fn refresh_incident(&self, h: &mut Active, road: &Road, kind: u8, o: &Obs, now: f64) {
        let (segment, along) = road.segment_at(h.s);
        let inc = &mut h.incident;
        inc.incident_kind = kind;
        inc.position = Point {
            x: h.x,
            y: h.y,
            z: 0.0,
        };
        inc.segment_id = segment.to_string();
        inc.s = along;
        inc.lane_index = h.lane;
        inc.extent = o.length.max(self.config.min_extent) as f32;
        inc.confidence = self.confidence(o.sigma, now - h.detected);
        inc.detected = ros_time(h.detected);
        inc.expires = ros_time(h.last_seen + self.config.ttl);
    }

    /// Whether `h`'s incident differs enough from the one last reported to share again.
    fn worth_reporting(&self, h: &Active) -> bool {
        let (a, b) = (&h.incident, &h.reported);
        let secs = |t: &Time| t.sec as f64 + t.nanosec as f64 * 1e-9;
        a.incident_kind != b.incident_kind
            || (a.confidence - b.confidence).abs() >= REPORT_CONFIDENCE
            || ((a.extent - b.extent).abs() as f64) >= REPORT_DISTANCE
            || (a.position.x - b.position.x).hypot(a.position.y - b.position.y) >= REPORT_DISTANCE
            || secs(&a.expires) - secs(&b.expires) >= self.config.refresh_interval - TIME_EPS
    }

    fn update_hazards(
        &mut self,
        now: f64,
        obs: &[Obs],
        index: &HashMap<u64, usize>,
        road: &Road,
        ego: EgoView,
        changes: &mut HazardChanges,
    ) {
        let cfg = self.config.clone();
        // Tracks that show a hazard (seen in this update) cannot take over another one.
        let mut owned: HashSet<u64> = self
            .hazards
            .iter()
            .filter(|h| index.contains_key(&h.track))
            .map(|h| h.track)
            .collect();
        let hazards = std::mem::take(&mut self.hazards);
        for mut h in hazards {
            let mut adopted = false;
            let mut seen = index.get(&h.track).map(|&i| obs[i]);
            if seen.is_none() && h.moving_since.is_none() {
                // The tracker may have re-created the object's track: a slow track at the
                // same place takes the hazard over.
                seen = obs
                    .iter()
                    .filter(|o| {
                        !owned.contains(&o.id)
                            && o.lane == h.lane
                            && o.speed < cfg.slow_speed
                            && (o.s - h.s).abs() <= cfg.adopt_radius
                    })
                    .min_by(|a, b| (a.s - h.s).abs().total_cmp(&(b.s - h.s).abs()))
                    .copied();
                if let Some(o) = seen {
                    h.track = o.id;
                    owned.insert(o.id);
                    self.candidates.remove(&o.id);
                    adopted = true;
                }
            }
            let Some(o) = seen else {
                // Not seen in this update.
                let passing = !h.passed && ego.s > h.s + cfg.pass_margin;
                if passing {
                    h.passed = true;
                }
                if h.moving_since.is_some()
                    || (passing && h.last_seen_ego_s < h.s - cfg.pass_check_range)
                {
                    self.stats.resolved += 1;
                    changes.resolved.push(h.incident.incident_id);
                } else if now >= h.last_seen + cfg.ttl - TIME_EPS {
                    self.stats.expired += 1;
                    changes.expired.push(h.incident.incident_id);
                } else {
                    self.hazards.push(h);
                }
                continue;
            };
            if o.speed > cfg.moving_factor * cfg.slow_speed {
                let since = *h.moving_since.get_or_insert(now);
                if now - since >= cfg.moving_time - TIME_EPS {
                    self.stats.resolved += 1;
                    changes.resolved.push(h.incident.incident_id);
                    continue;
                }
                // Driving off, maybe: not a confirmation that it is still there.
                self.hazards.push(h);
                continue;
            }
            h.moving_since = None;
            h.last_seen = now;
            h.last_seen_ego_s = ego.s;
            h.x += POSITION_SMOOTHING * (o.x - h.x);
            h.y += POSITION_SMOOTHING * (o.y - h.y);
            h.s = road.to_frenet_near(h.x, h.y, ego.s).s;
            if !h.passed && ego.s > h.s + cfg.pass_margin {
                // Passed while still seen: it is there.
                h.passed = true;
            }
            let kind = self
                .kind_of(o.class, o.length)
                .unwrap_or(h.incident.incident_kind);
            self.refresh_incident(&mut h, road, kind, &o, now);
            if adopted || self.worth_reporting(&h) {
                h.reported = h.incident.clone();
                changes.updated.push(h.incident.clone());
            }
            self.hazards.push(h);
        }
    }

    fn update_candidates(
        &mut self,
        now: f64,
        obs: &[Obs],
        index: &HashMap<u64, usize>,
        road: &Road,
        ego: EgoView,
        changes: &mut HazardChanges,
    ) {
        let cfg = self.config.clone();
        let owned: HashSet<u64> = self.hazards.iter().map(|h| h.track).collect();
        // A candidate's dwell ends when its track is gone, fast or a hazard's.
        self.candidates.retain(|id, _| {
            !owned.contains(id)
                && index
                    .get(id)
                    .is_some_and(|&i| obs[i].speed < cfg.slow_speed)
        });
        for o in obs {
            if owned.contains(&o.id)
                || o.speed >= cfg.slow_speed
                || self.candidates.contains_key(&o.id)
            {
                continue;
            }
            if self.candidates.len() >= cfg.max_candidates {
                let oldest = self
                    .candidates
                    .iter()
                    .min_by(|a, b| a.1.since.total_cmp(&b.1.since).then(a.1.seq.cmp(&b.1.seq)))
                    .map(|(&id, _)| id);
                match oldest {
                    Some(id) => {
                        self.candidates.remove(&id);
                        self.stats.evicted += 1;
                    }
                    None => continue, // max_candidates is 0
                }
            }
            self.seq += 1;
            self.candidates.insert(
                o.id,
                Candidate {
                    since: now,
                    first_s: o.s,
                    first_lane: o.lane,
                    seq: self.seq,
                    held: false,
                },
            );
            self.stats.candidates += 1;
        }
        // Raise, in the order of the tracks (deterministic).
        for o in obs {
            let Some(c) = self.candidates.get(&o.id) else {
                continue;
            };
            if now - c.since < cfg.dwell - TIME_EPS {
                continue;
            }
            let Some(kind) = self.kind_of(o.class, o.length) else {
                continue;
            };
            if o.class != DetectedObject::CLASS_STATIC_OBSTACLE
                && self.congestion(o, obs, ego).is_some()
            {
                let c = self.candidates.get_mut(&o.id).expect("looked up above");
                if !c.held {
                    c.held = true;
                    self.stats.congestion_held += 1;
                }
                continue;
            }
            let id = incident_id(road, c.first_s, c.first_lane, cfg.id_grid);
            if self.hazards.iter().any(|h| h.incident.incident_id == id) {
                // The same place is a hazard already (a duplicate track of the object, or a
                // second object in the same cell): keep waiting, it may take over.
                continue;
            }
            let c = self.candidates.remove(&o.id).expect("looked up above");
            if self.hazards.len() >= cfg.max_hazards {
                if self.hazards.is_empty() {
                    continue; // max_hazards is 0
                }
                let old = self.hazards.remove(0);
                self.stats.evicted += 1;
                changes.expired.push(old.incident.incident_id);
            }
            let mut h = Active {
                incident: Incident {
                    incident_id: id,
                    ..Default::default()
                },
                track: o.id,
                x: o.x,
                y: o.y,
                s: o.s,
                lane: c.first_lane,
                detected: c.since,
                last_seen: now,
                last_seen_ego_s: ego.s,
                moving_since: None,
                passed: ego.s > o.s + cfg.pass_margin,
                reported: Incident::default(),
            };
            self.refresh_incident(&mut h, road, kind, o, now);
            h.reported = h.incident.clone();
            changes.new.push(h.incident.clone());
            self.stats.hazards_raised += 1;
            self.hazards.push(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ego::stamp_seconds;

    const T0: f64 = 1_700_000_000.0;
    const DT: f64 = 0.1;

    fn road() -> Road {
        Road::straight(5000.0, 3, 30.0).unwrap()
    }

    fn t(k: usize) -> f64 {
        T0 + k as f64 * DT
    }

    fn object(id: u64, class: u8, x: f64, lane: i32, speed: f64, length: f64) -> TrackView {
        TrackView {
            id,
            x,
            y: lane as f64 * 3.5,
            vx: speed,
            vy: 0.0,
            length,
            width: 1.9,
            class,
            position_sigma: 0.2,
        }
    }

    fn car(id: u64, x: f64, lane: i32, speed: f64) -> TrackView {
        object(id, DetectedObject::CLASS_CAR, x, lane, speed, 4.5)
    }

    fn ego(s: f64, speed: f64) -> EgoView {
        EgoView { s, speed }
    }

    /// Runs updates `from..=to` (times `t(k)`), with tracks and ego from `scene(k)`;
    /// returns each update's changes with its step.
    fn run(
        det: &mut HazardDetector,
        road: &Road,
        from: usize,
        to: usize,
        mut scene: impl FnMut(usize) -> (Vec<TrackView>, EgoView),
    ) -> Vec<(usize, HazardChanges)> {
        (from..=to)
            .map(|k| {
                let (tracks, e) = scene(k);
                (k, det.update(t(k), tracks, road, e))
            })
            .collect()
    }

    fn new_at(log: &[(usize, HazardChanges)]) -> Vec<(usize, Incident)> {
        log.iter()
            .flat_map(|(k, c)| c.new.iter().map(move |i| (*k, i.clone())))
            .collect()
    }

    #[test]
    fn a_stalled_car_with_traffic_passing_is_raised_after_the_dwell() {
        let road = road();
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 40, |k| {
            let dt = k as f64 * DT;
            let tracks = vec![
                // Stalled in lane 0, a little speed noise.
                car(1, 300.0, 0, if k % 2 == 0 { 0.2 } else { 0.4 }),
                // Traffic in lanes 1 and 2 passes it.
                car(2, 260.0 + 22.0 * dt, 1, 22.0),
                car(3, 310.0 + 22.0 * dt, 1, 22.0),
                car(4, 280.0 + 25.0 * dt, 2, 25.0),
            ];
            (tracks, ego(100.0 + 20.0 * dt, 20.0))
        });
        let new = new_at(&log);
        assert_eq!(new.len(), 1, "{new:?}");
        let (k, inc) = &new[0];
        assert_eq!(*k, 20, "raised exactly when the 2 s dwell is complete");
        assert_eq!(inc.incident_kind, Incident::INCIDENT_STALLED_VEHICLE);
        assert_eq!(inc.incident_id, "h-seg-0-0-300");
        assert_eq!(inc.lane_index, 0);
        assert_eq!(inc.segment_id, "seg-0");
        assert!((inc.s - 300.0).abs() < 1e-9, "{}", inc.s);
        assert!((inc.position.x - 300.0).abs() < 1e-9 && inc.position.y.abs() < 1e-9);
        assert!((inc.extent - 4.5).abs() < 1e-6);
        assert!((stamp_seconds(&inc.detected) - T0).abs() < 1e-6);
        assert!((stamp_seconds(&inc.expires) - (t(20) + 60.0)).abs() < 1e-6);
        // sigma 0.2 m, just raised: 1 / 1.04 * 0.5.
        assert!((inc.confidence - 0.4808).abs() < 1e-3, "{}", inc.confidence);
        assert_eq!(det.active().count(), 1);
        let active = det.active().next().unwrap();
        assert!(active.confidence > 0.9, "4 s slow: {}", active.confidence);
        let s = det.stats();
        assert_eq!((s.candidates, s.hazards_raised, s.resolved), (1, 1, 0));
        // The growing confidence is shared as an update with the same id.
        let updated: Vec<_> = log.iter().flat_map(|(_, c)| c.updated.clone()).collect();
        assert!(!updated.is_empty());
        assert!(updated.iter().all(|i| i.incident_id == inc.incident_id));
    }

    #[test]
    fn debris_and_unknown_objects_by_size() {
        use DetectedObject as D;
        let road = road();
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 25, |_| {
            let tracks = vec![
                object(1, D::CLASS_STATIC_OBSTACLE, 400.0, 1, 0.0, 0.5),
                object(2, D::CLASS_UNKNOWN, 600.0, 0, 0.0, 1.2),
                object(3, D::CLASS_UNKNOWN, 800.0, 2, 0.0, 6.0),
                object(4, D::CLASS_TRUCK, 1000.0, 1, 0.0, 12.0),
                // A car stopped 40 m ahead of the stopped ego, in another lane: the ego's
                // queue, held back. Debris right in front of the ego is not.
                car(5, 420.0, 0, 0.0),
            ];
            (tracks, ego(380.0, 0.0))
        });
        let mut new = new_at(&log);
        new.sort_by(|a, b| a.1.position.x.total_cmp(&b.1.position.x));
        let got: Vec<_> = new
            .iter()
            .map(|(k, i)| (*k, i.incident_kind, i.lane_index, i.extent))
            .collect();
        assert_eq!(
            got,
            vec![
                (20, Incident::INCIDENT_DEBRIS, 1, 1.0),
                (20, Incident::INCIDENT_DEBRIS, 0, 1.2),
                (20, Incident::INCIDENT_STALLED_VEHICLE, 2, 6.0),
                (20, Incident::INCIDENT_STALLED_VEHICLE, 1, 12.0),
            ]
        );
        assert_eq!(det.stats().congestion_held, 1, "the car in the ego's queue");
        assert_eq!(det.pending(), 1);
    }

    #[test]
    fn a_queue_around_a_slow_ego_is_congestion() {
        let road = road();
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 60, |k| {
            let creep = 0.3 * (k % 3) as f64;
            let tracks = vec![
                car(1, 150.0, 0, creep),
                car(2, 158.0, 0, 0.5),
                car(3, 166.0, 0, creep),
                car(4, 175.0, 0, 0.2),
                car(5, 153.0, 1, 0.8),
                car(6, 163.0, 1, creep),
            ];
            (tracks, ego(140.0, 0.6))
        });
        assert!(new_at(&log).is_empty());
        assert_eq!(det.active().count(), 0);
        let s = det.stats();
        assert_eq!(s.hazards_raised, 0);
        assert_eq!(s.congestion_held, 6, "every car held after its dwell");
    }

    #[test]
    fn the_tail_of_a_jam_seen_by_a_fast_ego_is_congestion() {
        let road = road();
        // Occlusion leaves only the last car of each lane visible: nothing in front of
        // them, the ego fast and far; the stopped neighbours give the jam away.
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 40, |k| {
            let dt = k as f64 * DT;
            let tracks = vec![
                car(1, 400.0, 0, 0.0),
                car(2, 396.0, 1, 0.3),
                car(3, 405.0, 2, 0.1),
            ];
            (tracks, ego(100.0 + 25.0 * dt, 25.0))
        });
        assert!(new_at(&log).is_empty());
        assert_eq!(det.stats().congestion_held, 3);
        // The same with traffic flowing past in the other lanes: a stalled car.
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 40, |k| {
            let dt = k as f64 * DT;
            let tracks = vec![
                car(1, 400.0, 0, 0.0),
                car(2, 380.0 + 20.0 * dt, 1, 20.0),
                car(3, 390.0 + 20.0 * dt, 2, 20.0),
            ];
            (tracks, ego(100.0 + 25.0 * dt, 25.0))
        });
        assert_eq!(new_at(&log).len(), 1);
    }

    #[test]
    fn only_the_first_of_a_row_of_stopped_vehicles_is_a_hazard() {
        let road = road();
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 40, |k| {
            let dt = k as f64 * DT;
            let tracks = vec![
                // A stalled car and one stopped behind it, waiting to change lanes.
                car(1, 400.0, 0, 0.0),
                car(2, 390.0, 0, 0.2),
                car(3, 360.0 + 18.0 * dt, 1, 18.0),
                car(4, 400.0 + 18.0 * dt, 1, 18.0),
            ];
            (tracks, ego(100.0 + 25.0 * dt, 25.0))
        });
        let new = new_at(&log);
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!(new[0].1.incident_id, "h-seg-0-0-400");
        assert_eq!(det.stats().congestion_held, 1);
        assert_eq!(det.pending(), 1, "the waiting car stays a candidate");
    }

    #[test]
    fn a_car_that_stops_then_drives_off_is_raised_then_resolved() {
        let road = road();
        let mut det = HazardDetector::default();
        let mut x = 300.0;
        let log = run(&mut det, &road, 0, 60, |k| {
            // Stopped for 3 s, then 1.5 m/s (above the threshold, below twice it) for
            // 0.5 s, then 3 m/s.
            let v = match k {
                0..=29 => 0.0,
                30..=34 => 1.5,
                _ => 3.0,
            };
            x += v * DT;
            (vec![car(7, x, 0, v)], ego(100.0 + 5.0 * k as f64 * DT, 5.0))
        });
        let new = new_at(&log);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].0, 20);
        let id = new[0].1.incident_id.clone();
        let resolved: Vec<_> = log
            .iter()
            .flat_map(|(k, c)| c.resolved.iter().map(move |r| (*k, r.clone())))
            .collect();
        // 3 m/s from step 35: 1 s later.
        assert_eq!(resolved, vec![(45, id)]);
        assert_eq!(det.active().count(), 0);
        let s = det.stats();
        assert_eq!((s.hazards_raised, s.resolved, s.candidates), (1, 1, 1));
        assert_eq!(det.pending(), 0, "driving, not a candidate again");
    }

    #[test]
    fn ids_are_stable_and_shared_by_two_twins() {
        let road = road();
        let mut a = HazardDetector::default();
        let mut b = HazardDetector::default();
        // Twin A sees the car at (402.0, 0.3) with jitter, twin B (another vehicle, a
        // different track id) at (401.2, -0.4) and later: same 5 m cell, same id.
        let jitter = |k: usize| [0.0, 0.3, -0.2, 0.1][k % 4];
        let log_a = run(&mut a, &road, 0, 250, |k| {
            let mut c = car(11, 402.0 + jitter(k), 0, 0.1);
            c.y = 0.3 - jitter(k);
            (vec![c], ego(100.0, 25.0))
        });
        let log_b = run(&mut b, &road, 10, 250, |k| {
            let mut c = car(905, 401.2 - jitter(k), 0, 0.2);
            c.y = -0.4;
            (vec![c], ego(200.0, 15.0))
        });
        let (na, nb) = (new_at(&log_a), new_at(&log_b));
        assert_eq!((na.len(), nb.len()), (1, 1));
        assert_eq!(na[0].1.incident_id, "h-seg-0-0-400");
        assert_eq!(na[0].1.incident_id, nb[0].1.incident_id);
        // Refreshed every 10 s under the same id, not every cycle.
        let updated: Vec<_> = log_a
            .iter()
            .flat_map(|(k, c)| c.updated.iter().map(move |i| (*k, i.incident_id.clone())))
            .collect();
        assert!(updated.iter().all(|(_, id)| *id == na[0].1.incident_id));
        // The confidence growing by 0.1 (about every 0.5 s) until it settles at 4 s, then
        // the expiry every 10 s.
        let steps: Vec<_> = updated.iter().map(|(k, _)| *k).collect();
        assert_eq!(steps, vec![25, 30, 35, 40, 140, 240]);
        assert_eq!(a.active().next().unwrap().incident_id, "h-seg-0-0-400");
    }

    #[test]
    fn a_recreated_track_takes_its_hazard_over() {
        let road = road();
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 60, |k| {
            // The tracker loses the car at step 30 and makes a new track for it at 35.
            let tracks = match k {
                0..=29 => vec![car(1, 500.0, 1, 0.0)],
                30..=34 => vec![],
                _ => vec![car(2, 501.5, 1, 0.0)],
            };
            (tracks, ego(200.0, 20.0))
        });
        assert_eq!(new_at(&log).len(), 1, "no second hazard");
        let (_, at35) = &log[35];
        assert_eq!(at35.updated.len(), 1);
        assert_eq!(at35.updated[0].incident_id, "h-seg-0-1-500");
        assert_eq!(det.pending(), 0);
        assert_eq!(det.hazards[0].track, 2);
    }

    #[test]
    fn a_hazard_gone_when_passed_is_resolved_one_passed_while_seen_expires() {
        let road = road();
        // The car is towed away while the ego is still 100 m before it; the ego passes
        // the place without seeing it: resolved.
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 200, |k| {
            let e = ego(100.0 + 20.0 * k as f64 * DT, 20.0);
            let tracks = if k < 25 {
                vec![car(1, 400.0, 0, 0.0)]
            } else {
                vec![]
            };
            (tracks, e)
        });
        assert_eq!(new_at(&log).len(), 1);
        let resolved: Vec<_> = log
            .iter()
            .filter(|(_, c)| !c.resolved.is_empty())
            .map(|(k, _)| *k)
            .collect();
        // Ego beyond 400 + 10 m at step 156.
        assert_eq!(resolved, vec![156]);
        // Seen until the ego is 20 m before it, then out of the sensors' view: passed
        // but not resolved; it expires 60 s after it was last seen.
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 800, |k| {
            let s = 100.0 + 20.0 * k as f64 * DT;
            let tracks = if s < 380.0 {
                vec![car(1, 400.0, 0, 0.0)]
            } else {
                vec![]
            };
            (tracks, ego(s, 20.0))
        });
        assert!(log.iter().all(|(_, c)| c.resolved.is_empty()));
        let expired: Vec<_> = log
            .iter()
            .filter(|(_, c)| !c.expired.is_empty())
            .map(|(k, _)| *k)
            .collect();
        // Last seen at step 139 (ego at 378 m): expires 600 steps later.
        assert_eq!(expired, vec![739]);
        assert_eq!(det.stats().expired, 1);
        assert_eq!(det.active().count(), 0);
    }

    #[test]
    fn invalid_numbers_are_skipped_and_counted() {
        let road = road();
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 30, |_| {
            let mut nan_x = car(1, 300.0, 0, 0.0);
            nan_x.x = f64::NAN;
            let mut inf_v = car(2, 320.0, 1, 0.0);
            inf_v.vx = f64::INFINITY;
            let mut nan_sigma = car(3, 340.0, 2, 0.0);
            nan_sigma.position_sigma = f64::NAN;
            let mut negative = car(4, 360.0, 0, 0.0);
            negative.length = -1.0;
            let mut bad_class = car(6, 380.0, 1, 0.0);
            bad_class.class = 9;
            let tracks = vec![
                nan_x,
                inf_v,
                nan_sigma,
                negative,
                bad_class,
                car(5, 500.0, 0, 0.0),
            ];
            (tracks, ego(100.0, 20.0))
        });
        assert_eq!(det.stats().skipped_invalid, 5 * 31);
        let new = new_at(&log);
        assert_eq!(new.len(), 1, "the valid one is still raised");
        assert_eq!(new[0].1.incident_id, "h-seg-0-0-500");
        // Whole updates with a bad time or ego, or a time going backwards.
        let before = det.stats().skipped_invalid;
        let c = det.update(
            f64::NAN,
            vec![car(5, 500.0, 0, 0.0)],
            &road,
            ego(100.0, 20.0),
        );
        assert!(c.is_empty());
        det.update(t(31), vec![], &road, ego(f64::NAN, 20.0));
        det.update(t(31), vec![], &road, ego(100.0, f64::INFINITY));
        det.update(t(10), vec![], &road, ego(100.0, 20.0));
        assert_eq!(det.stats().skipped_invalid, before + 4);
        assert_eq!(det.active().count(), 1, "refused updates change nothing");
    }

    #[test]
    fn pedestrians_and_bicycles_on_the_road_are_not_hazards() {
        let road = road();
        let mut det = HazardDetector::default();
        let log = run(&mut det, &road, 0, 50, |_| {
            let tracks = vec![
                object(1, DetectedObject::CLASS_PEDESTRIAN, 300.0, 1, 0.0, 0.5),
                object(2, DetectedObject::CLASS_BICYCLE, 350.0, 0, 0.3, 1.8),
                // A car just off the road (beyond the last lane): not on the road.
                car(3, 320.0, 4, 0.0),
            ];
            (tracks, ego(100.0, 20.0))
        });
        assert!(new_at(&log).is_empty());
        assert_eq!(det.stats().candidates, 0);
        assert_eq!(det.pending(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let road = road();
        let mut det = HazardDetector::default();
        // 300 stopped cars at once: 256 candidates kept, the oldest dropped.
        let many: Vec<_> = (0..300u64)
            .map(|i| car(i, 100.0 + 15.0 * i as f64, (i % 3) as i32, 0.0))
            .collect();
        det.update(t(0), many.clone(), &road, ego(0.0, 20.0));
        assert_eq!(det.pending(), 256);
        assert_eq!(det.stats().evicted, 44);
        assert!(!det.candidates.contains_key(&0) && det.candidates.contains_key(&299));
        det.update(t(1), many, &road, ego(0.0, 20.0));
        assert_eq!(det.pending(), 256);
        // Hazards: at most max_hazards, the oldest dropped and reported as expired.
        let mut det = HazardDetector::new(HazardConfig {
            max_hazards: 4,
            ..Default::default()
        });
        let mut expired = Vec::new();
        for k in 0..=30 {
            // Six stopped cars, 200 m apart: raised together, the first two dropped.
            let tracks = (0..6u64).map(|i| car(i, 500.0 + 200.0 * i as f64, 1, 0.0));
            let c = det.update(t(k), tracks, &road, ego(0.0, 20.0));
            expired.extend(c.expired);
            assert!(det.active().count() <= 4);
        }
        assert_eq!(det.stats().hazards_raised, 6);
        assert_eq!(expired, vec!["h-seg-0-1-500", "h-seg-0-1-700"]);
    }
}
