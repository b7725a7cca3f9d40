//! What a DR knows around its vehicle, in road coordinates.
//!
//! The world model puts three sources on one lane-level picture of the route ahead and
//! behind the vehicle:
//!
//! - **tracks**: the fused objects of the vehicle's own sensors (from [`crate::tracker`]),
//!   projected onto the route (s, d, lane, speed along the road);
//! - **regional traffic** from the cloud key space: per-lane space-mean speeds over
//!   stretches of segments, published only for tiles with at least k contributors;
//! - **hazards**: incidents (stalled vehicles, debris, closures, accidents, roadworks,
//!   congestion) from the region, other twins or the vehicle's own sensors, each with an
//!   expiry.
//!
//! The planner asks it for the obstacle ahead of and behind a position in a lane
//! ([`WorldModel::leader`], [`WorldModel::follower`]), the hazards and the slow traffic
//! ahead. Every outside input is validated; what is refused says why and is counted by the
//! caller.

use std::sync::Arc;

use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::twin_msgs::msg::{Incident, RegionalTraffic};

use crate::road::Road;

/// Where a piece of knowledge came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The vehicle's own sensors, fused by the DR.
    OwnSensors,
    /// The regional (cloud) service.
    Region,
    /// Another twin, relayed.
    Relayed,
}

/// Relayed hazards of one kind in one lane nearer than this (plus their extent) are one
/// hazard [m]: twice a typical disclosure precision of 10 m.
pub const RELAYED_MERGE_DISTANCE: f64 = 20.0;

/// An object on the route that the planner must respect.
#[derive(Debug, Clone, PartialEq)]
pub struct Obstacle {
    /// Track id, or a hash of the incident id for hazards.
    pub id: u64,
    /// Route position of its centre [m].
    pub s: f64,
    /// Lateral offset [m].
    pub d: f64,
    /// Lane of its centre.
    pub lane: i32,
    /// Speed along the route [m/s] (0 for hazards).
    pub speed: f64,
    /// Length along the route [m].
    pub length: f64,
    /// Width [m].
    pub width: f64,
    /// `Some(kind)` (an `Incident::INCIDENT_*`) when this is a hazard, not a road user.
    pub hazard: Option<u8>,
    /// Where it came from.
    pub source: Source,
}

/// Regional traffic on one lane over a stretch of the route.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneSpeed {
    /// Lane, 0 = rightmost.
    pub lane: i32,
    /// Route position where the stretch starts [m].
    pub start_s: f64,
    /// Route position where it ends [m].
    pub end_s: f64,
    /// Space-mean speed [m/s].
    pub speed: f64,
    /// Density [vehicles/km].
    pub density: f64,
    /// When it stops counting [s since the Unix epoch].
    pub expires: f64,
}

/// A hazard on the route.
#[derive(Debug, Clone, PartialEq)]
pub struct Hazard {
    /// Stable id of the incident.
    pub id: String,
    /// One of `Incident::INCIDENT_*`.
    pub kind: u8,
    /// Route position [m].
    pub s: f64,
    /// Affected lane, or -1 for all lanes.
    pub lane: i32,
    /// Length of road affected [m].
    pub extent: f64,
    /// Confidence [0, 1].
    pub confidence: f64,
    /// When to forget it [s since the Unix epoch]; infinity = never.
    pub expires: f64,
    /// Where it came from.
    pub source: Source,
}

/// The vehicle itself, in road coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Ego {
    /// Route position [m].
    pub s: f64,
    /// Lateral offset [m].
    pub d: f64,
    /// Lane (-1 when off the road).
    pub lane: i32,
    /// Speed along the route [m/s].
    pub speed: f64,
    /// Body length [m].
    pub length: f64,
    /// Body width [m].
    pub width: f64,
}

/// Why regional data or an incident was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorldError {
    /// A regional tile published with fewer contributors than its k.
    #[error("regional tile {tile:?} has {contributors} contributors, below its k of {k}: refused (k-anonymity)")]
    BelowK {
        /// The tile.
        tile: String,
        /// Distinct contributors.
        contributors: u32,
        /// The threshold it claims.
        k: u32,
    },
    /// A field is out of range.
    #[error("{what}: field `{field}` {problem}")]
    Invalid {
        /// The message, e.g. `regional tile t1`.
        what: String,
        /// The field, e.g. `lanes[2].mean_speed`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// What [`WorldModel::apply_regional`] took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionalUpdate {
    /// Lane stretches on this route applied.
    pub lanes: usize,
    /// Incidents on this route applied.
    pub incidents: usize,
    /// Entries about other roads of the tile (not on the route), skipped.
    pub off_route: usize,
}

/// The regional traffic of the route as one update cycle left it, kept for models that
/// compare two snapshots (the congestion speed advisor, [`crate::model`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficSnapshot {
    /// Time the data describe: the tiles' stamp (end of their aggregation window), or the
    /// time they were applied when unstamped [s since the Unix epoch].
    pub stamp: f64,
    /// Aggregation window of the newest tile of the cycle [s].
    pub window: f64,
    /// The lane stretches.
    pub lanes: Vec<LaneSpeed>,
}

/// Tiles stamped within this of the newest one belong to the same update cycle [s].
pub const SAME_UPDATE: f64 = 1.0;

/// Smallest k a regional tile may claim (open mobility-data standards use 10; a tile that
/// claims less is refused, whatever its contributors).
pub const MIN_K: u32 = 10;

/// The DR's world model.
#[derive(Debug, Clone)]
pub struct WorldModel {
    road: Arc<Road>,
    ego: Ego,
    objects: Vec<Obstacle>,
    traffic: Vec<LaneSpeed>,
    hazards: Vec<Hazard>,
    // Added for the speed advisor (model.rs): the time of the newest `expire` call (the
    // time the twin plans for), the stamp and window of the newest regional update cycle,
    // and the traffic as the cycle before it left it.
    clock: Option<f64>,
    traffic_at: Option<(f64, f64)>,
    previous: Option<TrafficSnapshot>,
}

fn seconds(t: &Time) -> f64 {
    t.sec as f64 + t.nanosec as f64 * 1e-9
}

fn hash_id(id: &str) -> u64 {
    // FNV-1a: stable across runs and builds (std's hasher is not).
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl WorldModel {
    /// An empty world on `road`.
    pub fn new(road: Arc<Road>) -> Self {
        WorldModel {
            road,
            ego: Ego::default(),
            objects: Vec::new(),
            traffic: Vec::new(),
            hazards: Vec::new(),
            clock: None,
            traffic_at: None,
            previous: None,
        }
    }

    /// The route.
    pub fn road(&self) -> &Road {
        &self.road
    }

    /// The vehicle.
    pub fn ego(&self) -> &Ego {
        &self.ego
    }

    /// Tracked road users.
    pub fn objects(&self) -> &[Obstacle] {
        &self.objects
    }

    /// Known hazards.
    pub fn hazards(&self) -> &[Hazard] {
        &self.hazards
    }

    /// Known regional lane speeds.
    pub fn traffic(&self) -> &[LaneSpeed] {
        &self.traffic
    }

    /// The time of the newest [`WorldModel::expire`] call: the time the world is brought
    /// to before planning [s since the Unix epoch].
    pub fn now(&self) -> Option<f64> {
        self.clock
    }

    /// Stamp and window of the newest regional update cycle [s, s].
    pub fn traffic_stamp(&self) -> Option<(f64, f64)> {
        self.traffic_at
    }

    /// The regional traffic as the update cycle before the newest left it.
    pub fn previous_traffic(&self) -> Option<&TrafficSnapshot> {
        self.previous.as_ref()
    }

    /// Places the vehicle at map position (x, y) with heading `yaw` and speed `speed`
    /// [m, rad, m/s].
    pub fn set_ego(&mut self, x: f64, y: f64, yaw: f64, speed: f64, length: f64, width: f64) {
        let f = if self.ego.s == 0.0 {
            self.road.to_frenet(x, y)
        } else {
            self.road.to_frenet_near(x, y, self.ego.s)
        };
        let along = speed * (yaw - self.road.heading_at(f.s)).cos();
        self.ego = Ego {
            s: f.s,
            d: f.d,
            lane: self.road.lane_of(f.d).unwrap_or(-1),
            speed: along,
            length: if length > 0.0 { length } else { 4.5 },
            width: if width > 0.0 { width } else { 1.9 },
        };
    }

    /// Replaces the tracked road users. Each item is (track id, x, y, vx, vy, length,
    /// width) in the map frame; objects off the road are kept out.
    pub fn set_objects(
        &mut self,
        tracks: impl IntoIterator<Item = (u64, f64, f64, f64, f64, f64, f64)>,
    ) {
        self.objects.clear();
        for (id, x, y, vx, vy, length, width) in tracks {
            let f = self.road.to_frenet_near(x, y, self.ego.s);
            let Some(lane) = self.road.lane_of(f.d) else {
                continue;
            };
            let h = self.road.heading_at(f.s);
            self.objects.push(Obstacle {
                id,
                s: f.s,
                d: f.d,
                lane,
                speed: vx * h.cos() + vy * h.sin(),
                length: length.max(0.5),
                width: width.max(0.5),
                hazard: None,
                source: Source::OwnSensors,
            });
        }
    }

    /// Forgets regional traffic and hazards whose time is up.
    pub fn expire(&mut self, now: f64) {
        self.clock = Some(now);
        self.traffic.retain(|l| l.expires > now);
        self.hazards.retain(|h| h.expires > now);
    }

    /// Takes a regional tile: refuses it below k-anonymity or with a bad field; keeps the
    /// lanes and incidents on this route (replacing earlier data for the same stretches).
    pub fn apply_regional(
        &mut self,
        tile: &RegionalTraffic,
        now: f64,
    ) -> Result<RegionalUpdate, WorldError> {
        let what = format!("regional tile {:?}", tile.tile_id);
        let bad = |field: String, problem: &str| WorldError::Invalid {
            what: what.clone(),
            field,
            problem: problem.to_string(),
        };
        if tile.k_threshold < MIN_K || tile.contributors < tile.k_threshold {
            return Err(WorldError::BelowK {
                tile: tile.tile_id.clone(),
                contributors: tile.contributors,
                k: tile.k_threshold,
            });
        }
        let window = tile.window.sec as f64 + tile.window.nanosec as f64 * 1e-9;
        if !(window.is_finite() && window > 0.0 && window <= 3600.0) {
            return Err(bad("window".into(), "must be in (0, 3600] s"));
        }
        // Validate everything first: a tile is taken whole or not at all.
        for (i, l) in tile.lanes.iter().enumerate() {
            let speed = l.mean_speed as f64;
            if !(speed.is_finite() && (0.0..=70.0).contains(&speed)) {
                return Err(bad(
                    format!("lanes[{i}].mean_speed"),
                    "must be in [0, 70] m/s",
                ));
            }
            if !(l.start_s.is_finite() && l.end_s.is_finite() && l.end_s > l.start_s) {
                return Err(bad(
                    format!("lanes[{i}].end_s"),
                    "must be finite and after start_s",
                ));
            }
            if !(l.density.is_finite() && l.density >= 0.0) {
                return Err(bad(
                    format!("lanes[{i}].density"),
                    "must be finite and not negative",
                ));
            }
        }
        for (i, inc) in tile.incidents.iter().enumerate() {
            validate_incident(inc)
                .map_err(|(field, problem)| bad(format!("incidents[{i}].{field}"), problem))?;
        }
        let mut update = RegionalUpdate::default();
        // Regional data counts for three windows, unless refreshed.
        let expires = now + 3.0 * window;
        // The data's time: the tile's stamp, or now when it has none (or one from the
        // future). A tile of a new update cycle keeps the traffic as it was (a snapshot).
        let stamp = match seconds(&tile.header.stamp) {
            t if t > 0.0 && t <= now + SAME_UPDATE => t,
            _ => now,
        };
        let mut rolled = false;
        for l in &tile.lanes {
            let (Some(a), Some(b)) = (
                self.road.route_s(&l.segment_id, l.start_s),
                self.road.route_s(&l.segment_id, l.end_s),
            ) else {
                update.off_route += 1;
                continue;
            };
            if !self.road.has_lane(l.lane_index) {
                update.off_route += 1;
                continue;
            }
            if !rolled {
                rolled = true;
                match self.traffic_at {
                    Some((at, w)) if stamp > at + SAME_UPDATE => {
                        self.previous = Some(TrafficSnapshot {
                            stamp: at,
                            window: w,
                            lanes: self.traffic.clone(),
                        });
                        self.traffic_at = Some((stamp, window));
                    }
                    Some(_) => {}
                    None => self.traffic_at = Some((stamp, window)),
                }
            }
            self.traffic
                .retain(|t| !(t.lane == l.lane_index && t.start_s < b && a < t.end_s));
            self.traffic.push(LaneSpeed {
                lane: l.lane_index,
                start_s: a,
                end_s: b,
                speed: l.mean_speed as f64,
                density: l.density as f64,
                expires,
            });
            update.lanes += 1;
        }
        for inc in &tile.incidents {
            if self.add_incident(inc, now, Source::Region).is_ok() {
                update.incidents += 1;
            } else {
                update.off_route += 1;
            }
        }
        Ok(update)
    }

    /// Adds or refreshes an incident. It is placed by segment and s when it names a
    /// segment of this route, else by projecting its position; one that is not on the
    /// route is refused.
    pub fn add_incident(
        &mut self,
        inc: &Incident,
        now: f64,
        source: Source,
    ) -> Result<(), WorldError> {
        validate_incident(inc).map_err(|(field, problem)| WorldError::Invalid {
            what: format!("incident {:?}", inc.incident_id),
            field: field.to_string(),
            problem: problem.to_string(),
        })?;
        let s = match self.road.route_s(&inc.segment_id, inc.s) {
            Some(s) if !inc.segment_id.is_empty() => s,
            _ => {
                let f = self.road.to_frenet(inc.position.x, inc.position.y);
                let half = self.road.lane_width() * self.road.lanes() as f64;
                if f.s < 0.0 || f.s > self.road.length() || f.d < -half || f.d > 2.0 * half {
                    return Err(WorldError::Invalid {
                        what: format!("incident {:?}", inc.incident_id),
                        field: "position".into(),
                        problem: "is not on this vehicle's route".into(),
                    });
                }
                f.s
            }
        };
        let lane = if self.road.has_lane(inc.lane_index) {
            inc.lane_index
        } else {
            -1
        };
        let expires = match seconds(&inc.expires) {
            e if e <= 0.0 => f64::INFINITY,
            e => e,
        };
        if expires <= now {
            // Expired on arrival: a withdrawal of what this source said before.
            self.remove_incident(&inc.incident_id, source);
            return Ok(());
        }
        // One source never replaces another's hazard of the same id.
        self.hazards
            .retain(|h| !(h.id == inc.incident_id && h.source == source));
        let (mut s, mut expires) = (s, expires);
        if source == Source::Relayed {
            // Twins disclose the same hazard under ids of their own (keyed per pseudonym):
            // reports of one kind in this lane within a few metres are one hazard, kept
            // under the newest id, where the nearest report puts it, as long as the
            // longest-lived report says.
            let near = RELAYED_MERGE_DISTANCE + (inc.extent as f64).max(1.0);
            self.hazards.retain(|h| {
                let same = h.source == Source::Relayed
                    && h.lane == lane
                    && h.kind == inc.incident_kind
                    && (h.s - s).abs() <= near;
                if same {
                    s = s.min(h.s);
                    expires = expires.max(h.expires);
                }
                !same
            });
        }
        self.hazards.push(Hazard {
            id: inc.incident_id.clone(),
            kind: inc.incident_kind,
            s,
            lane,
            extent: (inc.extent as f64).max(1.0),
            confidence: inc.confidence as f64,
            expires,
            source,
        });
        Ok(())
    }

    /// Forgets the hazard `id` if it came from `source` (a hazard the vehicle's own
    /// sensors raised and then saw drive off goes; the same id from the region stays).
    pub fn remove_incident(&mut self, id: &str, source: Source) {
        self.hazards.retain(|h| !(h.id == id && h.source == source));
    }

    /// Hazards as standing obstacles; a hazard on all lanes yields one per lane.
    /// Congestion is not an obstacle (it is traffic, see [`WorldModel::slow_traffic_ahead`]).
    fn hazard_obstacles(&self, lane: i32) -> impl Iterator<Item = Obstacle> + '_ {
        self.hazards
            .iter()
            .filter(move |h| {
                h.kind != Incident::INCIDENT_CONGESTION && (h.lane == lane || h.lane < 0)
            })
            .map(move |h| Obstacle {
                id: hash_id(&h.id),
                s: h.s,
                d: self.road.lane_center(lane),
                lane,
                speed: 0.0,
                length: h.extent,
                width: self.road.lane_width(),
                hazard: Some(h.kind),
                source: h.source,
            })
    }

    /// Whether an object occupies `lane`: its centre is in it, or its body reaches more
    /// than 0.3 m into it.
    fn occupies(&self, o: &Obstacle, lane: i32) -> bool {
        if o.lane == lane {
            return true;
        }
        let reach = (o.d - self.road.lane_center(lane)).abs() - o.width / 2.0;
        reach < self.road.lane_width() / 2.0 - 0.3
    }

    /// The nearest obstacle in `lane` whose rear is ahead of route position `s` (road users
    /// and hazards), excluding `except` (a track id, e.g. the vehicle being considered).
    pub fn leader(&self, lane: i32, s: f64) -> Option<Obstacle> {
        self.objects
            .iter()
            .filter(|o| self.occupies(o, lane) && o.s > s)
            .cloned()
            .chain(
                self.hazard_obstacles(lane)
                    .filter(|h| h.s + h.length / 2.0 > s),
            )
            .min_by(|a, b| (a.s - a.length / 2.0).total_cmp(&(b.s - b.length / 2.0)))
    }

    /// The nearest road user in `lane` behind route position `s`.
    pub fn follower(&self, lane: i32, s: f64) -> Option<Obstacle> {
        self.objects
            .iter()
            .filter(|o| self.occupies(o, lane) && o.s <= s)
            .max_by(|a, b| a.s.total_cmp(&b.s))
            .cloned()
    }

    /// Regional lane stretches ahead of `s` in `lane` (within `ahead` metres) whose speed is
    /// below `below`, as (distance to the stretch's start, speed), nearest first.
    /// Congestion incidents count as stretches too.
    pub fn slow_traffic_ahead(&self, lane: i32, s: f64, ahead: f64, below: f64) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = self
            .traffic
            .iter()
            .filter(|t| t.lane == lane && t.end_s > s && t.start_s < s + ahead && t.speed < below)
            .map(|t| ((t.start_s - s).max(0.0), t.speed))
            .collect();
        for h in &self.hazards {
            if h.kind == Incident::INCIDENT_CONGESTION
                && (h.lane == lane || h.lane < 0)
                && h.s + h.extent / 2.0 > s
                && h.s - h.extent / 2.0 < s + ahead
            {
                // A congestion incident says traffic is slow, not how slow: assume a jam.
                out.push(((h.s - h.extent / 2.0 - s).max(0.0), 5.0_f64.min(below)));
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// Checks an incident's fields; the error is (field, problem).
fn validate_incident(inc: &Incident) -> Result<(), (&'static str, &'static str)> {
    if inc.incident_id.is_empty() {
        return Err(("incident_id", "must not be empty"));
    }
    if inc.incident_kind > Incident::INCIDENT_CONGESTION {
        return Err(("incident_kind", "is not one of INCIDENT_*"));
    }
    let p = &inc.position;
    if !(p.x.is_finite() && p.y.is_finite() && p.z.is_finite()) {
        return Err(("position", "must be finite"));
    }
    if !inc.s.is_finite() {
        return Err(("s", "must be finite"));
    }
    if !(inc.extent.is_finite() && (0.0..=20_000.0).contains(&inc.extent)) {
        return Err(("extent", "must be in [0, 20000] m"));
    }
    if !(inc.confidence.is_finite() && (0.0..=1.0).contains(&inc.confidence)) {
        return Err(("confidence", "must be in [0, 1]"));
    }
    if inc.lane_index < -1 {
        return Err(("lane_index", "must be -1 (all lanes) or a lane"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_msgs::builtin_interfaces::msg::Duration;
    use twinlink_msgs::twin_msgs::msg::LaneTraffic;

    fn world() -> WorldModel {
        let mut w = WorldModel::new(Arc::new(Road::straight(5000.0, 3, 30.0).unwrap()));
        w.set_ego(100.0, 3.5, 0.0, 25.0, 4.5, 1.9);
        w
    }

    pub(crate) fn incident(id: &str, kind: u8, segment: &str, s: f64, lane: i32) -> Incident {
        Incident {
            incident_id: id.into(),
            incident_kind: kind,
            segment_id: segment.into(),
            s,
            lane_index: lane,
            extent: 10.0,
            confidence: 0.9,
            ..Default::default()
        }
    }

    fn tile(contributors: u32, k: u32) -> RegionalTraffic {
        RegionalTraffic {
            tile_id: "t1".into(),
            window: Duration {
                sec: 60,
                nanosec: 0,
            },
            lanes: vec![LaneTraffic {
                segment_id: "seg-1".into(),
                lane_index: 1,
                start_s: 200.0,
                end_s: 600.0,
                mean_speed: 6.0,
                density: 60.0,
                flow: 1300.0,
            }],
            incidents: vec![incident(
                "i1",
                Incident::INCIDENT_STALLED_VEHICLE,
                "seg-2",
                50.0,
                1,
            )],
            contributors,
            k_threshold: k,
            ..Default::default()
        }
    }

    #[test]
    fn one_source_never_replaces_or_withdraws_another_sources_hazard() {
        let mut w = world();
        let own = incident("h-seg-0-1", Incident::INCIDENT_STALLED_VEHICLE, "", 0.0, 1);
        let mut own = own;
        own.position.x = 900.0;
        own.position.y = 3.5;
        w.add_incident(&own, 1.0, Source::OwnSensors).unwrap();
        // The same id relayed, then withdrawn (expired on arrival): the own hazard stays.
        let mut relayed = own.clone();
        relayed.position.x = 2000.0;
        w.add_incident(&relayed, 1.0, Source::Relayed).unwrap();
        assert_eq!(w.hazards().len(), 2);
        relayed.expires = twinlink_msgs::builtin_interfaces::msg::Time { sec: 0, nanosec: 1 };
        w.add_incident(&relayed, 2.0, Source::Relayed).unwrap();
        assert_eq!(w.hazards().len(), 1);
        assert_eq!(w.hazards()[0].source, Source::OwnSensors);
    }

    #[test]
    fn ego_and_objects_are_placed_in_lanes() {
        let mut w = world();
        assert_eq!(w.ego().lane, 1);
        assert!((w.ego().speed - 25.0).abs() < 1e-9);
        w.set_objects([
            (1, 150.0, 3.4, 20.0, 0.0, 4.5, 1.9),
            (2, 130.0, 0.2, 22.0, 0.0, 4.5, 1.9),
            (3, 60.0, 3.6, 27.0, 0.0, 4.5, 1.9),
            (4, 120.0, 40.0, 0.0, 0.0, 1.0, 1.0), // off the road
            (5, 110.0, 5.4, 20.0, 0.0, 4.5, 1.9), // straddles lanes 1 and 2
        ]);
        assert_eq!(w.objects().len(), 4);
        assert_eq!(w.leader(1, 100.0).unwrap().id, 5);
        assert_eq!(w.leader(1, 115.0).unwrap().id, 1);
        assert_eq!(w.leader(2, 100.0).unwrap().id, 5);
        assert_eq!(w.leader(0, 100.0).unwrap().id, 2);
        assert_eq!(w.follower(1, 100.0).unwrap().id, 3);
        assert!(w.follower(0, 100.0).is_none());
    }

    #[test]
    fn regional_tiles_obey_k_and_map_onto_the_route() {
        let mut w = world();
        let err = w.apply_regional(&tile(9, 10), 0.0).unwrap_err();
        assert!(
            matches!(
                err,
                WorldError::BelowK {
                    contributors: 9,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            w.apply_regional(&tile(50, 3), 0.0).is_err(),
            "k below the minimum"
        );
        let u = w.apply_regional(&tile(12, 10), 0.0).unwrap();
        assert_eq!((u.lanes, u.incidents, u.off_route), (1, 1, 0));
        let slow = w.slow_traffic_ahead(1, 100.0, 2000.0, 20.0);
        assert_eq!(slow, vec![(1100.0, 6.0)]);
        assert!(w.slow_traffic_ahead(0, 100.0, 2000.0, 20.0).is_empty());
        // The stalled vehicle at seg-2 + 50 m = 2050 m is a standing obstacle in lane 1.
        let hazard = w.leader(1, 100.0).unwrap();
        assert_eq!(
            (hazard.s, hazard.speed, hazard.hazard),
            (2050.0, 0.0, Some(1))
        );
        assert!(w.leader(0, 100.0).is_none());
        // Expiry after three windows.
        w.expire(181.0);
        assert!(w.traffic().is_empty());
        assert_eq!(w.hazards().len(), 1, "no expiry set on the incident");
        // Unknown segments are skipped, not errors; a bad field refuses the whole tile.
        let mut other = tile(12, 10);
        other.lanes[0].segment_id = "elsewhere".into();
        other.incidents.clear();
        assert_eq!(w.apply_regional(&other, 0.0).unwrap().off_route, 1);
        let mut bad = tile(12, 10);
        bad.lanes[0].mean_speed = f32::NAN;
        let e = w.apply_regional(&bad, 0.0).unwrap_err().to_string();
        assert!(e.contains("lanes[0].mean_speed"), "{e}");
        let mut bad = tile(12, 10);
        bad.incidents[0].confidence = 2.0;
        let e = w.apply_regional(&bad, 0.0).unwrap_err().to_string();
        assert!(e.contains("incidents[0].confidence"), "{e}");
    }

    #[test]
    fn incidents_by_position_all_lanes_and_expiry() {
        let mut w = world();
        let mut inc = incident("closure", Incident::INCIDENT_LANE_CLOSURE, "", 0.0, -1);
        inc.position.x = 900.0;
        inc.position.y = 1.0;
        inc.expires = Time {
            sec: 100,
            nanosec: 0,
        };
        w.add_incident(&inc, 0.0, Source::Relayed).unwrap();
        for lane in 0..3 {
            assert_eq!(w.leader(lane, 100.0).unwrap().s, 900.0);
        }
        let mut far = inc.clone();
        far.incident_id = "far".into();
        far.position.y = 500.0;
        assert!(w.add_incident(&far, 0.0, Source::Region).is_err());
        w.expire(100.5);
        assert!(w.hazards().is_empty());
        let mut jam = incident("jam", Incident::INCIDENT_CONGESTION, "seg-0", 700.0, -1);
        jam.extent = 200.0;
        w.add_incident(&jam, 0.0, Source::Region).unwrap();
        assert!(
            w.leader(1, 100.0).is_none(),
            "congestion is not an obstacle"
        );
        assert_eq!(
            w.slow_traffic_ahead(2, 100.0, 1000.0, 20.0),
            vec![(500.0, 5.0)]
        );
    }
}
