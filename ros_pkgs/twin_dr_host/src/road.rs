//! The lane-level road model along a vehicle's route.
//!
//! A route is one reference polyline in the map frame (the centre line of the rightmost
//! lane, lane 0), cut into named segments (the `segment_id`s of regional traffic and
//! incidents), with a number of lanes of equal width to the left of it and speed limits
//! that change along it. Positions are expressed in Frenet coordinates: `s` is the
//! distance along the reference line from the route's start [m], `d` the signed lateral
//! offset from it, positive to the left (REP-103), so lane `i`'s centre is at
//! `d = i * lane_width`.
//!
//! A [`RoadSpec`] is what an operator writes (JSON); [`Road::new`] validates it and names
//! the field that is wrong.

use serde::{Deserialize, Serialize};

/// A named stretch of the route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentSpec {
    /// Segment id, as regional traffic and incidents name it.
    pub id: String,
    /// Length of the segment along the reference line [m].
    pub length: f64,
}

/// A speed limit that holds from `from_s` until the next one [m, m/s].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeedLimit {
    /// Route position where the limit starts [m].
    pub from_s: f64,
    /// The limit [m/s].
    pub limit: f64,
}

/// A route as written in a configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoadSpec {
    /// Reference line (centre of lane 0) in the map frame, `[x, y]` points [m].
    pub points: Vec<[f64; 2]>,
    /// Number of lanes (lane 0 is the rightmost).
    pub lanes: u32,
    /// Width of every lane [m].
    pub lane_width: f64,
    /// Segments in route order; their lengths add up to the route's length. Empty means
    /// one segment named `route` over the whole length.
    #[serde(default)]
    pub segments: Vec<SegmentSpec>,
    /// Speed limits in ascending `from_s`; the first must start at 0.
    pub speed_limits: Vec<SpeedLimit>,
}

/// Why a road specification was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoadError {
    /// A field has a value outside what a road can have.
    #[error("road field `{field}`: {problem}")]
    Invalid {
        /// The field, e.g. `points[3]`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> RoadError {
    RoadError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A position in road coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frenet {
    /// Distance along the route [m].
    pub s: f64,
    /// Lateral offset from lane 0's centre, positive to the left [m].
    pub d: f64,
}

/// A validated route with a precomputed arc length per point.
#[derive(Debug, Clone)]
pub struct Road {
    points: Vec<[f64; 2]>,
    /// Arc length at each point.
    cum_s: Vec<f64>,
    lanes: u32,
    lane_width: f64,
    segments: Vec<(String, f64, f64)>,
    limits: Vec<SpeedLimit>,
}

/// Longest distance from the hint searched by [`Road::to_frenet_near`] [m].
pub const NEAR_WINDOW: f64 = 400.0;

impl Road {
    /// Validates `spec`: at least two distinct points, finite coordinates, 1 to 16 lanes of
    /// 2 to 6 m, segments that cover the route, limits that start at 0 and ascend.
    pub fn new(spec: RoadSpec) -> Result<Road, RoadError> {
        if spec.points.len() < 2 {
            return Err(invalid("points", "a route needs at least two points"));
        }
        let mut cum_s = Vec::with_capacity(spec.points.len());
        let mut s = 0.0;
        for (i, p) in spec.points.iter().enumerate() {
            if !(p[0].is_finite() && p[1].is_finite()) {
                return Err(invalid(
                    format!("points[{i}]"),
                    "coordinates must be finite",
                ));
            }
            if i > 0 {
                let q = spec.points[i - 1];
                let len = (p[0] - q[0]).hypot(p[1] - q[1]);
                if len < 1e-3 {
                    return Err(invalid(
                        format!("points[{i}]"),
                        "repeats the previous point (segments must be longer than 1 mm)",
                    ));
                }
                s += len;
            }
            cum_s.push(s);
        }
        let length = s;
        if !(1..=16).contains(&spec.lanes) {
            return Err(invalid(
                "lanes",
                format!("must be 1 to 16, got {}", spec.lanes),
            ));
        }
        if !(spec.lane_width.is_finite() && (2.0..=6.0).contains(&spec.lane_width)) {
            return Err(invalid(
                "lane_width",
                format!("must be 2 to 6 m, got {}", spec.lane_width),
            ));
        }
        let mut segments = Vec::new();
        if spec.segments.is_empty() {
            segments.push(("route".to_string(), 0.0, length));
        } else {
            let mut start = 0.0;
            for (i, seg) in spec.segments.iter().enumerate() {
                if seg.id.is_empty() {
                    return Err(invalid(format!("segments[{i}].id"), "must not be empty"));
                }
                if segments.iter().any(|(id, _, _)| *id == seg.id) {
                    return Err(invalid(
                        format!("segments[{i}].id"),
                        format!("{:?} appears twice", seg.id),
                    ));
                }
                if !(seg.length.is_finite() && seg.length > 0.0) {
                    return Err(invalid(
                        format!("segments[{i}].length"),
                        format!("must be positive, got {}", seg.length),
                    ));
                }
                segments.push((seg.id.clone(), start, start + seg.length));
                start += seg.length;
            }
            if (start - length).abs() > 1.0 {
                return Err(invalid(
                    "segments",
                    format!("lengths add up to {start:.1} m but the points are {length:.1} m long"),
                ));
            }
        }
        if spec.speed_limits.is_empty() {
            return Err(invalid(
                "speed_limits",
                "at least one limit (from_s = 0) is needed",
            ));
        }
        for (i, l) in spec.speed_limits.iter().enumerate() {
            if !(l.limit.is_finite() && l.limit > 0.0 && l.limit <= 70.0) {
                return Err(invalid(
                    format!("speed_limits[{i}].limit"),
                    format!("must be in (0, 70] m/s, got {}", l.limit),
                ));
            }
            let ok = if i == 0 {
                l.from_s == 0.0
            } else {
                l.from_s.is_finite() && l.from_s > spec.speed_limits[i - 1].from_s
            };
            if !ok {
                return Err(invalid(
                    format!("speed_limits[{i}].from_s"),
                    "the first limit starts at 0 and each next one further along",
                ));
            }
        }
        Ok(Road {
            points: spec.points,
            cum_s,
            lanes: spec.lanes,
            lane_width: spec.lane_width,
            segments,
            limits: spec.speed_limits,
        })
    }

    /// A straight road along the map's x axis from the origin, `length` metres long, with
    /// `lanes` lanes of 3.5 m, one segment per kilometre (`seg-0`, `seg-1`, ...) and one
    /// speed limit.
    pub fn straight(length: f64, lanes: u32, limit: f64) -> Result<Road, RoadError> {
        let n = (length / 1000.0).ceil().max(1.0) as usize;
        let segments = (0..n)
            .map(|i| SegmentSpec {
                id: format!("seg-{i}"),
                length: (length - 1000.0 * i as f64).min(1000.0),
            })
            .collect();
        Road::new(RoadSpec {
            points: vec![[0.0, 0.0], [length, 0.0]],
            lanes,
            lane_width: 3.5,
            segments,
            speed_limits: vec![SpeedLimit { from_s: 0.0, limit }],
        })
    }

    /// Length of the route [m].
    pub fn length(&self) -> f64 {
        *self.cum_s.last().expect("validated: two points or more")
    }

    /// Number of lanes.
    pub fn lanes(&self) -> u32 {
        self.lanes
    }

    /// Width of a lane [m].
    pub fn lane_width(&self) -> f64 {
        self.lane_width
    }

    /// The lane containing lateral offset `d`, or `None` off the road.
    pub fn lane_of(&self, d: f64) -> Option<i32> {
        let lane = (d / self.lane_width + 0.5).floor();
        (lane >= 0.0 && lane < self.lanes as f64).then_some(lane as i32)
    }

    /// Lateral offset of lane `lane`'s centre [m].
    pub fn lane_center(&self, lane: i32) -> f64 {
        lane as f64 * self.lane_width
    }

    /// Whether `lane` exists.
    pub fn has_lane(&self, lane: i32) -> bool {
        lane >= 0 && (lane as u32) < self.lanes
    }

    /// The speed limit at route position `s` [m/s].
    pub fn speed_limit_at(&self, s: f64) -> f64 {
        let i = self.limits.partition_point(|l| l.from_s <= s);
        self.limits[i.saturating_sub(1)].limit
    }

    /// Speed limits that start after `s` and before `s + ahead`, as (distance, limit).
    pub fn limit_changes_ahead(&self, s: f64, ahead: f64) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.limits
            .iter()
            .filter(move |l| l.from_s > s && l.from_s <= s + ahead)
            .map(move |l| (l.from_s - s, l.limit))
    }

    /// Route position of `s_on_segment` metres along segment `id`, if the segment exists.
    pub fn route_s(&self, id: &str, s_on_segment: f64) -> Option<f64> {
        self.segments
            .iter()
            .find(|(sid, _, _)| sid == id)
            .map(|(_, start, end)| (start + s_on_segment).clamp(*start, *end))
    }

    /// The segment at route position `s` and the position along it.
    pub fn segment_at(&self, s: f64) -> (&str, f64) {
        let i = self
            .segments
            .partition_point(|(_, start, _)| *start <= s)
            .saturating_sub(1);
        let (id, start, _) = &self.segments[i];
        (id, s - start)
    }

    /// Map position and heading of (s, d) [m, m, rad].
    pub fn to_map(&self, s: f64, d: f64) -> (f64, f64, f64) {
        let s = s.clamp(0.0, self.length());
        let i = self
            .cum_s
            .partition_point(|&c| c <= s)
            .clamp(1, self.points.len() - 1);
        let (a, b) = (self.points[i - 1], self.points[i]);
        let len = self.cum_s[i] - self.cum_s[i - 1];
        let (ux, uy) = ((b[0] - a[0]) / len, (b[1] - a[1]) / len);
        let t = s - self.cum_s[i - 1];
        (a[0] + ux * t - uy * d, a[1] + uy * t + ux * d, uy.atan2(ux))
    }

    /// Heading of the reference line at `s` [rad].
    pub fn heading_at(&self, s: f64) -> f64 {
        self.to_map(s, 0.0).2
    }

    /// Projects a map position onto the route (nearest point of the reference line).
    /// Positions before the start or past the end get `s` beyond the route's ends, measured
    /// along the first or last piece.
    pub fn to_frenet(&self, x: f64, y: f64) -> Frenet {
        self.project_range(x, y, 1, self.points.len() - 1)
    }

    /// Like [`Road::to_frenet`], searching only pieces within [`NEAR_WINDOW`] of
    /// `s_hint` (objects around a vehicle at `s_hint`): the cost does not grow with the
    /// route's length.
    pub fn to_frenet_near(&self, x: f64, y: f64, s_hint: f64) -> Frenet {
        let lo = self.cum_s.partition_point(|&c| c < s_hint - NEAR_WINDOW);
        let hi = self.cum_s.partition_point(|&c| c <= s_hint + NEAR_WINDOW);
        self.project_range(
            x,
            y,
            lo.clamp(1, self.points.len() - 1),
            hi.clamp(1, self.points.len() - 1),
        )
    }

    fn project_range(&self, x: f64, y: f64, first: usize, last: usize) -> Frenet {
        let n = self.points.len();
        let mut best = (f64::INFINITY, Frenet { s: 0.0, d: 0.0 });
        for i in first..=last.max(first) {
            let (a, b) = (self.points[i - 1], self.points[i]);
            let len = self.cum_s[i] - self.cum_s[i - 1];
            let (ux, uy) = ((b[0] - a[0]) / len, (b[1] - a[1]) / len);
            let (px, py) = (x - a[0], y - a[1]);
            let along = px * ux + py * uy;
            // The first and last pieces extend beyond the route's ends.
            let t = match (i == 1, i == n - 1) {
                (true, true) => along,
                (true, false) => along.min(len),
                (false, true) => along.max(0.0),
                (false, false) => along.clamp(0.0, len),
            };
            let (cx, cy) = (a[0] + ux * t, a[1] + uy * t);
            let dist2 = (x - cx).powi(2) + (y - cy).powi(2);
            if dist2 < best.0 {
                let d = ux * (y - a[1]) - uy * (x - a[0]);
                best = (
                    dist2,
                    Frenet {
                        s: self.cum_s[i - 1] + t,
                        d,
                    },
                );
            }
        }
        best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn bent() -> Road {
        // 100 m east, then 100 m north.
        Road::new(RoadSpec {
            points: vec![[0.0, 0.0], [100.0, 0.0], [100.0, 100.0]],
            lanes: 3,
            lane_width: 3.5,
            segments: vec![
                SegmentSpec {
                    id: "a".into(),
                    length: 100.0,
                },
                SegmentSpec {
                    id: "b".into(),
                    length: 100.0,
                },
            ],
            speed_limits: vec![
                SpeedLimit {
                    from_s: 0.0,
                    limit: 27.8,
                },
                SpeedLimit {
                    from_s: 150.0,
                    limit: 13.9,
                },
            ],
        })
        .unwrap()
    }

    #[test]
    fn frenet_round_trips_on_a_bent_route() {
        let road = bent();
        assert_relative_eq!(road.length(), 200.0);
        for &(s, d) in &[
            (10.0, 0.0),
            (50.0, 3.5),
            (99.0, -1.0),
            (150.0, 7.0),
            (190.0, 2.0),
        ] {
            let (x, y, _) = road.to_map(s, d);
            let f = road.to_frenet(x, y);
            assert_relative_eq!(f.s, s, epsilon = 1e-9);
            assert_relative_eq!(f.d, d, epsilon = 1e-9);
            let g = road.to_frenet_near(x, y, s + 50.0);
            assert_relative_eq!(g.s, s, epsilon = 1e-9);
        }
        // Left of the first piece is +d; the second piece heads north, so left is -x.
        assert_relative_eq!(road.to_frenet(50.0, 3.0).d, 3.0);
        assert_relative_eq!(road.to_frenet(97.0, 150.0).d, 3.0);
        assert_relative_eq!(road.heading_at(150.0), std::f64::consts::FRAC_PI_2);
        // Beyond the ends, s extends along the end pieces.
        assert_relative_eq!(road.to_frenet(-20.0, 0.0).s, -20.0);
        assert_relative_eq!(road.to_frenet(100.0, 130.0).s, 230.0);
    }

    #[test]
    fn lanes_limits_and_segments() {
        let road = bent();
        assert_eq!(road.lane_of(0.0), Some(0));
        assert_eq!(road.lane_of(1.7), Some(0));
        assert_eq!(road.lane_of(1.8), Some(1));
        assert_eq!(road.lane_of(7.0), Some(2));
        assert_eq!(road.lane_of(9.0), None);
        assert_eq!(road.lane_of(-2.0), None);
        assert_eq!(road.speed_limit_at(10.0), 27.8);
        assert_eq!(road.speed_limit_at(150.0), 13.9);
        let ahead: Vec<_> = road.limit_changes_ahead(100.0, 100.0).collect();
        assert_eq!(ahead, vec![(50.0, 13.9)]);
        assert_eq!(road.route_s("b", 30.0), Some(130.0));
        assert_eq!(road.route_s("c", 30.0), None);
        assert_eq!(road.segment_at(130.0), ("b", 30.0));
        assert_eq!(road.segment_at(30.0), ("a", 30.0));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let mut spec = RoadSpec {
            points: vec![[0.0, 0.0], [10.0, 0.0]],
            lanes: 2,
            lane_width: 3.5,
            segments: vec![],
            speed_limits: vec![SpeedLimit {
                from_s: 0.0,
                limit: 20.0,
            }],
        };
        assert!(Road::new(spec.clone()).is_ok());
        let err = |s: &RoadSpec| Road::new(s.clone()).unwrap_err().to_string();
        let mut bad = spec.clone();
        bad.points[1] = [f64::NAN, 0.0];
        assert!(err(&bad).contains("points[1]"), "{}", err(&bad));
        bad = spec.clone();
        bad.points.push([10.0, 0.0]);
        assert!(err(&bad).contains("points[2]"));
        bad = spec.clone();
        bad.lanes = 0;
        assert!(err(&bad).contains("`lanes`"));
        bad = spec.clone();
        bad.lane_width = 9.0;
        assert!(err(&bad).contains("lane_width"));
        bad = spec.clone();
        bad.speed_limits[0].from_s = 5.0;
        assert!(err(&bad).contains("speed_limits[0].from_s"));
        bad = spec.clone();
        bad.segments = vec![SegmentSpec {
            id: "x".into(),
            length: 3.0,
        }];
        assert!(err(&bad).contains("add up"));
        spec.speed_limits[0].limit = -1.0;
        assert!(err(&spec).contains("speed_limits[0].limit"));
        let json = r#"{"points": [[0,0],[1,0]], "lanes": 1, "lane_width": 3.5, "speed_limits": [], "extra": 1}"#;
        let e = serde_json::from_str::<RoadSpec>(json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn the_shipped_demo_road_is_valid() {
        let spec: RoadSpec =
            serde_json::from_str(include_str!("../config/demo_road.json")).unwrap();
        let road = Road::new(spec).unwrap();
        assert_eq!(road.lanes(), 3);
        // The demo vehicle drives along y = 0: the middle lane.
        assert_eq!(road.lane_of(road.to_frenet(100.0, 0.0).d), Some(1));
        assert!(road.speed_limit_at(3500.0) < road.speed_limit_at(100.0));
    }

    #[test]
    fn straight_roads_have_a_segment_per_kilometre() {
        let road = Road::straight(2500.0, 3, 30.0).unwrap();
        assert_eq!(road.route_s("seg-2", 100.0), Some(2100.0));
        assert_eq!(road.segment_at(1999.0).0, "seg-1");
    }
}
