//! Which perceived objects to send, in the spirit of ETSI TS 103 324 (Collective
//! Perception): an object goes out again only when it moved more than 4 m, changed speed by
//! more than 0.5 m/s or heading by more than 4 degrees, or 1 s passed since it was last sent.
//!
//! Under low bandwidth the rules tighten: every threshold and the interval are multiplied
//! by a factor (from the ratio of what the sender would send to what the path carries), and
//! a byte budget caps each summary; objects that changed most (relative to their
//! thresholds) and are nearest go first. Objects left out are not lost: their next
//! inclusion carries their newest state, and the receiver keeps their previous one.

use std::collections::HashMap;

use twinlink_msgs::twin_msgs::msg::DetectedObject;

/// The thresholds of the inclusion rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InclusionRules {
    /// Position change that triggers inclusion [m].
    pub distance_m: f64,
    /// Speed change that triggers inclusion [m/s].
    pub speed_mps: f64,
    /// Heading change that triggers inclusion [rad].
    pub heading_rad: f64,
    /// Longest time between two inclusions of an object [s].
    pub max_interval_s: f64,
}

impl Default for InclusionRules {
    fn default() -> Self {
        Self {
            distance_m: 4.0,
            speed_mps: 0.5,
            heading_rad: 4f64.to_radians(),
            max_interval_s: 1.0,
        }
    }
}

/// Serialized bytes one `DetectedObject` takes in a summary (CDR, fixed size).
pub const OBJECT_BYTES: usize = 4 + 1 + 3 + 4 + 4 + 24 + 8 + 24 + 1 + 7 + 24 + 36 + 4;

#[derive(Debug, Clone, Copy)]
struct Sent {
    x: f64,
    y: f64,
    speed: f64,
    heading: f64,
    at_s: f64,
}

fn speed_of(o: &DetectedObject) -> f64 {
    o.velocity.x.hypot(o.velocity.y)
}

fn heading_of(o: &DetectedObject) -> f64 {
    if o.has_velocity && speed_of(o) > 0.5 {
        o.velocity.y.atan2(o.velocity.x)
    } else {
        o.yaw
    }
}

fn angle_between(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(std::f64::consts::TAU);
    d.min(std::f64::consts::TAU - d)
}

/// Per-object memory of what was sent, applying [`InclusionRules`].
#[derive(Debug, Clone, Default)]
pub struct ObjectInclusion {
    rules: InclusionRules,
    sent: HashMap<u32, Sent>,
}

impl ObjectInclusion {
    /// Inclusion with `rules`.
    pub fn new(rules: InclusionRules) -> Self {
        Self {
            rules,
            sent: HashMap::new(),
        }
    }

    /// How far past its thresholds `o` is at `now_s` (>= 1 means due), under `tighten`.
    fn urgency(&self, o: &DetectedObject, now_s: f64, tighten: f64) -> f64 {
        // Objects without identity cannot be tracked across summaries: always due.
        let Some(last) = (o.id != 0).then(|| self.sent.get(&o.id)).flatten() else {
            return f64::INFINITY;
        };
        let r = &self.rules;
        let moved = (o.position.x - last.x).hypot(o.position.y - last.y) / (r.distance_m * tighten);
        let speed = (speed_of(o) - last.speed).abs() / (r.speed_mps * tighten);
        let heading = angle_between(heading_of(o), last.heading) / (r.heading_rad * tighten);
        let age = (now_s - last.at_s) / (r.max_interval_s * tighten);
        moved.max(speed).max(heading).max(age)
    }

    /// The objects to send now, at time `now_s` [s]: those due under the rules tightened by
    /// `tighten` (>= 1), most urgent then nearest first, at most `byte_budget` bytes of
    /// objects. Chosen objects are remembered as sent.
    pub fn select(
        &mut self,
        objects: &[DetectedObject],
        now_s: f64,
        tighten: f64,
        byte_budget: usize,
    ) -> Vec<DetectedObject> {
        let tighten = if tighten.is_finite() {
            tighten.max(1.0)
        } else {
            1.0
        };
        let mut due: Vec<(f64, f64, &DetectedObject)> = objects
            .iter()
            .map(|o| {
                (
                    self.urgency(o, now_s, tighten),
                    o.position.x.hypot(o.position.y),
                    o,
                )
            })
            .filter(|(u, _, _)| *u >= 1.0)
            .collect();
        // Most urgent first; among equally urgent (new ones), nearest first.
        due.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.total_cmp(&b.1)));
        let most = byte_budget / OBJECT_BYTES;
        let chosen: Vec<DetectedObject> = due
            .into_iter()
            .take(most)
            .map(|(_, _, o)| o.clone())
            .collect();
        for o in &chosen {
            if o.id != 0 {
                self.sent.insert(
                    o.id,
                    Sent {
                        x: o.position.x,
                        y: o.position.y,
                        speed: speed_of(o),
                        heading: heading_of(o),
                        at_s: now_s,
                    },
                );
            }
        }
        // Forget objects not seen for a long time, to stay bounded.
        let horizon = self.rules.max_interval_s * tighten * 10.0;
        self.sent.retain(|_, s| now_s - s.at_s < horizon);
        chosen
    }
}

/// How much to tighten the rules: what the sender would send over what the path carries,
/// between 1 and 8.
pub fn tighten_factor(demand_bps: f64, available_bps: f64) -> f64 {
    if available_bps <= 0.0 || !demand_bps.is_finite() {
        return 1.0;
    }
    (demand_bps / available_bps).clamp(1.0, 8.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_msgs::codec;
    use twinlink_msgs::twin_msgs::msg::PerceptionSummary;

    fn object(id: u32, x: f64, vx: f64) -> DetectedObject {
        let mut o = DetectedObject {
            id,
            has_velocity: true,
            ..Default::default()
        };
        o.position.x = x;
        o.velocity.x = vx;
        o
    }

    #[test]
    fn object_bytes_matches_the_codec() {
        let mut s = PerceptionSummary::default();
        let empty = codec::encode(&s).unwrap().len();
        s.objects = vec![DetectedObject::default(); 10];
        let ten = codec::encode(&s).unwrap().len();
        assert_eq!((ten - empty) / 10, OBJECT_BYTES);
    }

    #[test]
    fn cpm_thresholds_decide_inclusion() {
        let mut inc = ObjectInclusion::default();
        let first = inc.select(&[object(1, 10.0, 10.0)], 0.0, 1.0, usize::MAX);
        assert_eq!(first.len(), 1, "new objects are always sent");
        let cases = [
            (object(1, 13.9, 10.0), 0.1, false, "moved 3.9 m"),
            (object(1, 14.1, 10.0), 0.1, true, "moved 4.1 m"),
        ];
        for (o, t, expected, why) in cases {
            let mut probe = inc.clone();
            assert_eq!(
                !probe.select(&[o], t, 1.0, usize::MAX).is_empty(),
                expected,
                "{why}"
            );
        }
        let mut probe = inc.clone();
        assert!(
            probe
                .select(&[object(1, 10.0, 10.6)], 0.1, 1.0, usize::MAX)
                .len()
                == 1,
            "speed +0.6"
        );
        let mut probe = inc.clone();
        assert!(
            probe
                .select(&[object(1, 10.0, 10.4)], 0.1, 1.0, usize::MAX)
                .is_empty(),
            "speed +0.4"
        );
        let mut turned = object(1, 10.0, 0.0);
        turned.velocity.x = 10.0 * 5f64.to_radians().cos();
        turned.velocity.y = 10.0 * 5f64.to_radians().sin();
        let mut probe = inc.clone();
        assert_eq!(
            probe.select(&[turned], 0.1, 1.0, usize::MAX).len(),
            1,
            "heading 5 deg"
        );
        let mut probe = inc.clone();
        assert!(probe
            .select(&[object(1, 10.0, 10.0)], 0.99, 1.0, usize::MAX)
            .is_empty());
        assert_eq!(
            inc.select(&[object(1, 10.0, 10.0)], 1.0, 1.0, usize::MAX)
                .len(),
            1,
            "1 s passed"
        );
    }

    #[test]
    fn tightening_and_budget_send_less_most_urgent_and_nearest_first() {
        let mut inc = ObjectInclusion::default();
        let objects: Vec<_> = (1..=20).map(|i| object(i, i as f64 * 5.0, 10.0)).collect();
        let budget = 5 * OBJECT_BYTES;
        let first = inc.select(&objects, 0.0, 1.0, budget);
        assert_eq!(
            first.iter().map(|o| o.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        // Everything moved 6 m: due under the normal rules, not when tightened by 2.
        let moved: Vec<_> = (1..=5)
            .map(|i| object(i, i as f64 * 5.0 + 6.0, 10.0))
            .collect();
        assert!(inc.clone().select(&moved, 0.2, 2.0, usize::MAX).is_empty());
        assert_eq!(inc.select(&moved, 0.2, 1.0, usize::MAX).len(), 5);
        assert_eq!(tighten_factor(560_000.0, 64_000.0), 8.0);
        assert_eq!(tighten_factor(100_000.0, 1e6), 1.0);
        assert_eq!(tighten_factor(100_000.0, 0.0), 1.0);
    }
}
