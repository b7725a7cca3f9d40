//! Coarsening: what a [`Decision`] does to an observation before it leaves the twin.
//!
//! [`coarsen`] returns a copy that discloses no more than the decision allows:
//!
//! - **Age**: an observation whose header stamp is older than `max_age_s` is not disclosed
//!   ([`CoarsenError::TooOld`]); a stamp ahead of `now` counts as age zero.
//! - **Positions** (objects and hazards, x, y and z) are snapped to the nearest point of a grid
//!   of pitch `precision_m` anchored at the map origin, so each coordinate moves by at most
//!   `precision_m / 2` and a horizontal position by at most `precision_m / 2 · √2`. A hazard's
//!   distance along its segment `s` is snapped the same way (it would otherwise give the exact
//!   position back). Segment ids are kept: a segment is a public map feature, and the
//!   receiver needs it to put the hazard on its route.
//! - **Covariance**: snapping adds an error uniform over one grid cell, whose variance is
//!   `precision² / 12` per axis; each diagonal entry of an object's position covariance is
//!   raised to at least `(precision / √12)²` so receivers do not trust a snapped position more
//!   than it deserves. Off-diagonal entries are kept (raising the diagonal keeps the matrix
//!   positive semi-definite).
//! - **Timestamps**: when `precision_m > 0`, the header stamp and the hazards' `detected`
//!   times are rounded down to the whole second and `expires` up to it. Sub-second stamps
//!   follow one vehicle's sensor cycle and clock offset and could link disclosures that the
//!   coarse positions no longer link; rounding down never makes data look fresher. With
//!   precision 0 (exact positions) nothing is hidden by rounding, so stamps are kept.
//! - **Object ids** are tracker ids, stable across a vehicle's observations, so they would
//!   link disclosures; objects are sorted by their snapped position (hiding the tracker's
//!   order too) and numbered 1, 2, …: ids meaningful within this disclosure only.
//! - **Incident ids** are replaced by a keyed hash ([`PeriodKey::incident_id`]) under the
//!   current pseudonym period's secret: one hazard keeps one id for the period, so receivers
//!   can merge repeated reports, but ids of different periods cannot be linked.
//! - **Region tile** is recomputed from the first snapped position (hazards first), or for an
//!   observation without items (traffic) from the snapped centre of its given tile, so the
//!   tile never tells more than the coarse positions. Publish under the coarsened tile.
//!
//! Lists that do not belong to the category (objects in a hazards observation, anything in a
//! traffic one) are refused: they would be disclosed under another category's rule.
//! `origin_pseudonym`, `disclosure_id` and `signature` are cleared; sealing sets them.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::twin_msgs::msg::SharedObservation;

use crate::policy::{Decision, DenyReason};
use crate::tile::{Category, TileGrid, TileName};
use crate::time::{seconds_between, time_us};

/// Why an observation was not made ready for disclosure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoarsenError {
    /// The decision was a deny.
    #[error("denied: {0}")]
    Denied(DenyReason),
    /// The observation is older than the decision's `max_age_s`.
    #[error("observation is {age_s:.1} s old; at most {max_age_s} s may be disclosed")]
    TooOld {
        /// Age at `now` (s).
        age_s: f64,
        /// The allowed maximum (s).
        max_age_s: f32,
    },
    /// The header stamp is not a valid time.
    #[error("header.stamp is not a valid time")]
    BadStamp,
    /// Shared positions must be in the map frame.
    #[error("header.frame_id is {0:?}; shared observations are in \"map\"")]
    NotMapFrame(String),
    /// A position that would be disclosed is NaN or infinite.
    #[error("{0} is not finite")]
    NonFinite(String),
    /// The decision's precision is NaN, infinite or negative (a validated consent never
    /// gives one; refused rather than disclosing exact positions).
    #[error("precision {0} m is not a non-negative number")]
    BadPrecision(f32),
    /// The category is not a known one.
    #[error("category {0} is not a SharedObservation category")]
    UnknownCategory(u8),
    /// A list that does not belong to the observation's category is not empty.
    #[error("{field} must be empty in a {category} observation")]
    CategoryMismatch {
        /// `objects` or `hazards`.
        field: &'static str,
        /// The observation's category name.
        category: &'static str,
    },
    /// An observation without items carries no valid region tile.
    #[error("region_tile {0:?} is not a tile name and there is no position to name the tile")]
    NoTile(String),
}

impl CoarsenError {
    /// A short, stable name for logs and metrics labels (for a deny, the deny reason's).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Denied(reason) => reason.as_str(),
            Self::TooOld { .. } => "too_old",
            Self::BadStamp => "bad_stamp",
            Self::NotMapFrame(_) => "not_map_frame",
            Self::NonFinite(_) => "non_finite",
            Self::BadPrecision(_) => "bad_precision",
            Self::UnknownCategory(_) => "unknown_category",
            Self::CategoryMismatch { .. } => "category_mismatch",
            Self::NoTile(_) => "no_tile",
        }
    }
}

/// The secret of one pseudonym period, keying the hash that replaces incident ids.
///
/// Held by the disclosing twin only (inside its [`crate::identity::PseudonymCredential`]) and
/// replaced at every rotation. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct PeriodKey([u8; 32]);

impl PeriodKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The key with these bytes (for tests and reproducible replays).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The disclosed id of incident `incident_id`: 16 hex digits of
    /// HMAC-SHA-256(key, `"twinlink-share/incident/v1\0"` ‖ id). Stable for one key,
    /// unlinkable across keys. An empty id stays empty (there is nothing to link).
    pub fn incident_id(&self, incident_id: &str) -> String {
        if incident_id.is_empty() {
            return String::new();
        }
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(b"twinlink-share/incident/v1\0");
        mac.update(incident_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for PeriodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeriodKey(..)")
    }
}

/// Snaps `v` to the nearest multiple of `pitch` (unchanged for pitch 0).
fn snap(v: f64, pitch: f64) -> f64 {
    if pitch > 0.0 {
        (v / pitch).round() * pitch
    } else {
        v
    }
}

fn snap_point(p: &Point, pitch: f64, what: impl Fn() -> String) -> Result<Point, CoarsenError> {
    if !(p.x.is_finite() && p.y.is_finite() && p.z.is_finite()) {
        return Err(CoarsenError::NonFinite(what()));
    }
    Ok(Point {
        x: snap(p.x, pitch),
        y: snap(p.y, pitch),
        z: snap(p.z, pitch),
    })
}

fn floor_second(t: &Time) -> Time {
    Time {
        sec: t.sec,
        nanosec: 0,
    }
}

fn ceil_second(t: &Time) -> Time {
    if t.nanosec == 0 {
        t.clone()
    } else {
        Time {
            sec: t.sec.saturating_add(1),
            nanosec: 0,
        }
    }
}

/// Applies `decision` to `observation` at `now_us` (µs since the epoch): see the module
/// documentation for exactly what changes. `key` is the current pseudonym period's key and
/// `grid` the tile grid names are built on.
pub fn coarsen(
    observation: &SharedObservation,
    decision: &Decision,
    key: &PeriodKey,
    grid: &TileGrid,
    now_us: u64,
) -> Result<SharedObservation, CoarsenError> {
    let (precision_m, max_age_s) = match *decision {
        Decision::Deny(reason) => return Err(CoarsenError::Denied(reason)),
        Decision::Allow {
            precision_m,
            max_age_s,
        } => (precision_m, max_age_s),
    };
    let category = Category::from_u8(observation.category)
        .ok_or(CoarsenError::UnknownCategory(observation.category))?;
    let mismatch = |field| {
        Err(CoarsenError::CategoryMismatch {
            field,
            category: category.name(),
        })
    };
    if category != Category::Objects && !observation.objects.is_empty() {
        return mismatch("objects");
    }
    if category != Category::Hazards && !observation.hazards.is_empty() {
        return mismatch("hazards");
    }
    let stamp = time_us(&observation.header.stamp).ok_or(CoarsenError::BadStamp)?;
    let age_s = seconds_between(stamp, now_us).max(0.0);
    let max_age = f64::from(max_age_s);
    if max_age.is_nan() || age_s > max_age {
        return Err(CoarsenError::TooOld { age_s, max_age_s });
    }
    if observation.header.frame_id != "map" {
        return Err(CoarsenError::NotMapFrame(
            observation.header.frame_id.clone(),
        ));
    }
    if !(precision_m.is_finite() && precision_m >= 0.0) {
        return Err(CoarsenError::BadPrecision(precision_m));
    }
    let pitch = f64::from(precision_m);
    let coarse = pitch > 0.0;

    let mut out = observation.clone();
    out.origin_pseudonym.clear();
    out.disclosure_id = 0;
    out.signature.clear();
    out.position_precision = pitch as f32;
    if coarse {
        out.header.stamp = floor_second(&out.header.stamp);
    }

    let variance_floor = (pitch * pitch / 12.0) as f32;
    for (i, object) in out.objects.iter_mut().enumerate() {
        object.position = snap_point(&object.position, pitch, || format!("objects[{i}].position"))?;
        for d in [0, 4, 8] {
            object.position_covariance[d] = object.position_covariance[d].max(variance_floor);
        }
    }
    out.objects.sort_by(|a, b| {
        let (p, q) = (&a.position, &b.position);
        p.x.total_cmp(&q.x)
            .then(p.y.total_cmp(&q.y))
            .then(p.z.total_cmp(&q.z))
    });
    for (n, object) in out.objects.iter_mut().enumerate() {
        object.id = u32::try_from(n + 1).unwrap_or(u32::MAX);
    }

    for (i, hazard) in out.hazards.iter_mut().enumerate() {
        hazard.position = snap_point(&hazard.position, pitch, || format!("hazards[{i}].position"))?;
        if !hazard.s.is_finite() {
            return Err(CoarsenError::NonFinite(format!("hazards[{i}].s")));
        }
        hazard.s = snap(hazard.s, pitch);
        hazard.incident_id = key.incident_id(&hazard.incident_id);
        if coarse {
            hazard.detected = floor_second(&hazard.detected);
            hazard.expires = ceil_second(&hazard.expires);
        }
    }

    let anchor = match (out.hazards.first(), out.objects.first()) {
        (Some(h), _) => (h.position.x, h.position.y),
        (None, Some(o)) => (o.position.x, o.position.y),
        (None, None) => {
            let tile = TileName::parse(&observation.region_tile)
                .map_err(|_| CoarsenError::NoTile(observation.region_tile.clone()))?;
            let (x, y) = grid.centre(tile);
            (snap(x, pitch), snap(y, pitch))
        }
    };
    out.region_tile = grid.tile_of(anchor.0, anchor.1).to_string();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ros_time;
    use twinlink_msgs::twin_msgs::msg::{DetectedObject, Incident};

    const NOW: u64 = 1_700_000_000_250_000;

    fn allow(precision_m: f32) -> Decision {
        Decision::Allow {
            precision_m,
            max_age_s: 60.0,
        }
    }

    fn objects(points: &[(f64, f64)]) -> SharedObservation {
        let mut obs = SharedObservation {
            category: SharedObservation::CATEGORY_OBJECTS,
            region_tile: "0_0".into(),
            origin_pseudonym: "leftover".into(),
            disclosure_id: 9,
            signature: vec![1, 2, 3],
            ..Default::default()
        };
        obs.header.frame_id = "map".into();
        obs.header.stamp = ros_time(NOW - 2_345_678);
        for (i, &(x, y)) in points.iter().enumerate() {
            obs.objects.push(DetectedObject {
                id: 1000 + i as u32,
                position: Point { x, y, z: 0.7 },
                position_covariance: [0.01, 0.002, 0.0, 0.002, 0.01, 0.0, 0.0, 0.0, 0.04],
                ..Default::default()
            });
        }
        obs
    }

    fn hazards(ids: &[&str]) -> SharedObservation {
        let mut obs = SharedObservation {
            category: SharedObservation::CATEGORY_HAZARDS,
            ..Default::default()
        };
        obs.header.frame_id = "map".into();
        obs.header.stamp = ros_time(NOW - 1_000);
        for (i, id) in ids.iter().enumerate() {
            obs.hazards.push(Incident {
                incident_id: id.to_string(),
                position: Point {
                    x: -1234.56 + i as f64,
                    y: 987.65,
                    z: 0.0,
                },
                segment_id: "seg_42".into(),
                s: 123.456,
                detected: ros_time(NOW - 10_500_000),
                expires: ros_time(NOW + 300_400_000),
                ..Default::default()
            });
        }
        obs
    }

    #[test]
    fn snapped_positions_stay_within_the_bound_and_ids_are_replaced() {
        let key = PeriodKey::from_bytes([1; 32]);
        let grid = TileGrid::default();
        let truth = [
            (-12.3, 4.56),
            (1499.9, -0.01),
            (250.0, 250.0),
            (-37.5, -37.5),
        ];
        for precision in [0.5_f32, 10.0, 75.0, 1000.0] {
            let out = coarsen(&objects(&truth), &allow(precision), &key, &grid, NOW).unwrap();
            let p = f64::from(precision);
            assert_eq!(out.position_precision, precision);
            assert_eq!(out.objects.len(), truth.len());
            for o in &out.objects {
                // Every disclosed position is on the grid and close to some true position.
                for v in [o.position.x, o.position.y, o.position.z] {
                    assert!(((v / p).round() * p - v).abs() < 1e-9);
                }
                let nearest = truth
                    .iter()
                    .map(|&(x, y)| (o.position.x - x).hypot(o.position.y - y))
                    .fold(f64::INFINITY, f64::min);
                assert!(nearest <= p / 2.0 * 2f64.sqrt() + 1e-9, "{nearest} at {p}");
                let floor = (p * p / 12.0) as f32;
                assert!(o.position_covariance[0] >= floor && o.position_covariance[8] >= floor);
                assert_eq!(o.position_covariance[1], 0.002, "off-diagonal kept");
                assert!(o.id <= truth.len() as u32 && o.id >= 1);
            }
            let ids: Vec<u32> = out.objects.iter().map(|o| o.id).collect();
            assert_eq!(ids, (1..=truth.len() as u32).collect::<Vec<_>>());
            assert!(out.origin_pseudonym.is_empty() && out.signature.is_empty());
            assert_eq!(out.disclosure_id, 0);
            assert_eq!(out.header.stamp.nanosec, 0, "stamp rounded to the second");
            assert!(time_us(&out.header.stamp).unwrap() <= NOW - 2_345_678);
        }
    }

    #[test]
    fn precision_zero_keeps_positions_and_stamps_but_not_ids() {
        let key = PeriodKey::from_bytes([1; 32]);
        let obs = objects(&[(-12.3, 4.56)]);
        let out = coarsen(&obs, &allow(0.0), &key, &TileGrid::default(), NOW).unwrap();
        assert_eq!(out.objects[0].position, obs.objects[0].position);
        assert_eq!(
            out.objects[0].position_covariance,
            obs.objects[0].position_covariance
        );
        assert_eq!(out.header.stamp, obs.header.stamp);
        assert_eq!(out.objects[0].id, 1);
        assert_eq!(out.region_tile, "-1_0");
    }

    #[test]
    fn hazard_ids_are_stable_within_a_period_and_differ_across() {
        let grid = TileGrid::default();
        let period1 = PeriodKey::from_bytes([1; 32]);
        let period2 = PeriodKey::from_bytes([2; 32]);
        let obs = hazards(&["stalled-7", "debris-3", ""]);
        let a = coarsen(&obs, &allow(20.0), &period1, &grid, NOW).unwrap();
        let b = coarsen(&obs, &allow(20.0), &period1, &grid, NOW + 1).unwrap();
        let c = coarsen(&obs, &allow(20.0), &period2, &grid, NOW).unwrap();
        let ids = |o: &SharedObservation| -> Vec<String> {
            o.hazards.iter().map(|h| h.incident_id.clone()).collect()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a)[0], ids(&c)[0]);
        assert_ne!(ids(&a)[1], ids(&c)[1]);
        assert_ne!(ids(&a)[0], ids(&a)[1]);
        assert_eq!(ids(&a)[2], "");
        for id in &ids(&a)[..2] {
            assert_eq!(id.len(), 16);
            assert!(!id.contains("stalled") && !id.contains("debris"));
        }
        let h = &a.hazards[0];
        assert_eq!(h.segment_id, "seg_42", "segment ids are kept");
        assert_eq!((h.position.x, h.position.y), (-1240.0, 980.0));
        assert_eq!(h.s, 120.0);
        assert_eq!(h.detected.nanosec, 0);
        assert!(time_us(&h.detected).unwrap() <= NOW - 10_500_000);
        assert_eq!(h.expires.nanosec, 0);
        assert!(time_us(&h.expires).unwrap() >= NOW + 300_400_000);
        assert_eq!(a.region_tile, "-2_0");
        assert!(format!("{period1:?}").contains(".."));
    }

    #[test]
    fn too_old_denied_and_malformed_observations_are_not_disclosed() {
        let key = PeriodKey::from_bytes([1; 32]);
        let grid = TileGrid::default();
        let obs = objects(&[(1.0, 2.0)]);
        let strict = Decision::Allow {
            precision_m: 10.0,
            max_age_s: 2.0,
        };
        assert!(matches!(
            coarsen(&obs, &strict, &key, &grid, NOW),
            Err(CoarsenError::TooOld { .. })
        ));
        let deny = Decision::Deny(DenyReason::NoRule);
        let e = coarsen(&obs, &deny, &key, &grid, NOW).unwrap_err();
        assert_eq!(e.as_str(), "no_rule");
        let mut bad = obs.clone();
        bad.objects[0].position.y = f64::NAN;
        assert_eq!(
            coarsen(&bad, &allow(10.0), &key, &grid, NOW),
            Err(CoarsenError::NonFinite("objects[0].position".into()))
        );
        let mut bad = obs.clone();
        bad.header.frame_id = "base_link".into();
        assert!(matches!(
            coarsen(&bad, &allow(10.0), &key, &grid, NOW),
            Err(CoarsenError::NotMapFrame(_))
        ));
        let mut bad = obs.clone();
        bad.hazards = hazards(&["x"]).hazards;
        assert_eq!(
            coarsen(&bad, &allow(10.0), &key, &grid, NOW)
                .unwrap_err()
                .as_str(),
            "category_mismatch"
        );
        for p in [f32::NAN, -1.0, f32::INFINITY] {
            let e = coarsen(&obs, &allow(p), &key, &grid, NOW).unwrap_err();
            assert_eq!(e.as_str(), "bad_precision", "{p}");
        }
        let mut bad = obs.clone();
        bad.header.stamp.nanosec = 2_000_000_000;
        assert_eq!(
            coarsen(&bad, &allow(10.0), &key, &grid, NOW),
            Err(CoarsenError::BadStamp)
        );
    }

    #[test]
    fn the_tile_of_an_empty_observation_is_coarsened_too() {
        let key = PeriodKey::from_bytes([1; 32]);
        let grid = TileGrid::default();
        let mut traffic = SharedObservation {
            category: SharedObservation::CATEGORY_TRAFFIC,
            region_tile: "3_-2".into(),
            ..Default::default()
        };
        traffic.header.frame_id = "map".into();
        traffic.header.stamp = ros_time(NOW);
        let fine = coarsen(&traffic, &allow(100.0), &key, &grid, NOW).unwrap();
        assert_eq!(fine.region_tile, "3_-2");
        // At 5 km precision the 1 km tile would tell more than the policy allows.
        let coarse = coarsen(&traffic, &allow(5000.0), &key, &grid, NOW).unwrap();
        assert_eq!(coarse.region_tile, "5_0");
        traffic.region_tile = "nowhere".into();
        assert!(matches!(
            coarsen(&traffic, &allow(100.0), &key, &grid, NOW),
            Err(CoarsenError::NoTile(_))
        ));
    }
}
