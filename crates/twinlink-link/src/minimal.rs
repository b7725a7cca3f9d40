//! The minimal PE and DR behind `twinlink-pe` and `twinlink-dr` (like Zenoh's z_ping and
//! z_pong): a vehicle driving along a road with traffic ahead, and a twin that answers each
//! perception summary with a speed recommendation from the gap to the vehicle ahead.
//!
//! The demo, the end-to-end tests and the benchmarks use them so that real twin_msgs
//! messages cross the real link. The DR host (fusion, planning models) replaces the rule.

// Messages are built field by field from defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::codec::{self, DecodeError};
use twinlink_msgs::twin_msgs::msg::{
    DetectedObject, HorizonPoint, PerceptionSummary, Recommendation, VehicleState,
};
use twinlink_msgs::Message as RosMessage;

use crate::sync::{Message, Priority};

/// Stream of the vehicle's own state.
pub const STREAM_STATE: &str = "state";
/// Stream of the fused perception summary.
pub const STREAM_OBJECTS: &str = "objects/fused";
/// Stream of recommendations.
pub const STREAM_RECOMMENDATION: &str = "recommendation";

/// Speed limit of the minimal road [m/s].
pub const SPEED_LIMIT: f64 = 27.8;
/// Time gap the rule keeps to the vehicle ahead [s].
pub const TIME_GAP: f64 = 1.8;
/// Half a lane's width [m]: objects closer to the x axis than this are in our lane.
pub const HALF_LANE: f64 = 1.75;

/// A ROS time from microseconds since the Unix epoch.
pub fn ros_time(us: u64) -> Time {
    Time {
        sec: (us / 1_000_000) as i32,
        nanosec: ((us % 1_000_000) * 1000) as u32,
    }
}

/// Microseconds since the Unix epoch from a ROS time.
pub fn time_us(t: &Time) -> u64 {
    t.sec.max(0) as u64 * 1_000_000 + t.nanosec as u64 / 1000
}

/// Wraps a ROS message for the link.
pub fn to_link<M: RosMessage + serde::Serialize>(
    stream: &str,
    priority: Priority,
    message: &M,
    created_us: u64,
) -> Message {
    Message {
        stream: stream.to_string(),
        priority,
        type_name: M::TYPE_NAME.to_string(),
        created_us,
        payload: codec::encode(message).expect("generated messages within bounds encode"),
    }
}

/// Why a link message could not be read as the expected ROS type.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The message says it is another type.
    #[error("stream {stream:?} carries {found}, expected {expected}")]
    WrongType {
        /// The stream.
        stream: String,
        /// Declared type.
        found: String,
        /// Expected type.
        expected: &'static str,
    },
    /// The CDR payload did not decode.
    #[error("stream {stream:?}: {source}")]
    Decode {
        /// The stream.
        stream: String,
        /// The decoder's error.
        source: DecodeError,
    },
}

/// Reads a link message as ROS type `M`, checking the declared type first.
pub fn from_link<M>(message: &Message) -> Result<M, ReadError>
where
    M: RosMessage + for<'de> serde::Deserialize<'de>,
{
    if message.type_name != M::TYPE_NAME {
        return Err(ReadError::WrongType {
            stream: message.stream.clone(),
            found: message.type_name.clone(),
            expected: M::TYPE_NAME,
        });
    }
    codec::decode(&message.payload).map_err(|source| ReadError::Decode {
        stream: message.stream.clone(),
        source,
    })
}

/// The vehicle at time `t` [s] of the minimal scenario: driving along x at 20 m/s.
pub fn vehicle_state(vehicle: &str, t: f64, stamp_us: u64) -> VehicleState {
    let mut s = VehicleState::default();
    s.header.stamp = ros_time(stamp_us);
    s.header.frame_id = "map".into();
    s.vehicle_id = vehicle.into();
    s.pose.position.x = 20.0 * t;
    s.pose.orientation.w = 1.0;
    s.twist.linear.x = 20.0;
    s.lane_index = 1;
    s.length = 4.6;
    s.width = 1.9;
    s
}

/// A summary of `objects` vehicles around the PE at time `t` [s], in base_link: the first
/// one ahead in the lane, closing in and receding over a 20 s cycle, the rest spread
/// over neighbouring lanes.
pub fn perception_summary(objects: usize, t: f64, stamp_us: u64) -> PerceptionSummary {
    let mut s = PerceptionSummary::default();
    s.header.stamp = ros_time(stamp_us);
    s.header.frame_id = "base_link".into();
    s.sensor_id = "fused".into();
    s.sensor_kind = PerceptionSummary::SENSOR_FUSED;
    s.horizontal_fov = std::f32::consts::TAU;
    s.max_range = 120.0;
    s.raw_bytes = 4_000_000;
    s.objects = (0..objects)
        .map(|i| {
            let mut o = DetectedObject::default();
            o.id = i as u32 + 1;
            o.classification = DetectedObject::CLASS_CAR;
            o.class_confidence = 0.9;
            o.existence_probability = 0.95;
            let phase = (t / 20.0 * std::f64::consts::TAU).sin();
            if i == 0 {
                o.position.x = 45.0 + 25.0 * phase;
                o.position.y = 0.2;
            } else {
                o.position.x = -60.0 + (i as f64 * 7.3) % 180.0;
                o.position.y = [-3.5, 3.5, -7.0][i % 3];
            }
            o.dimensions.x = 4.5;
            o.dimensions.y = 1.9;
            o.dimensions.z = 1.5;
            o.has_velocity = true;
            o.velocity.x = 18.0 + (i % 5) as f64;
            o.position_covariance = [0.1, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.2];
            o
        })
        .collect();
    s.processing_time = 0.004;
    s
}

/// The minimal twin's advice for a summary: keep [`TIME_GAP`] to the nearest vehicle
/// ahead in the lane, never above [`SPEED_LIMIT`], over a horizon of `horizon_s` seconds
/// (at least 5; longer when the link is predicted to drop, so that the PE has advice for the
/// whole outage). Horizon points are 1 s apart up to 5 s, then 2 s apart, at most 40.
pub fn recommend(
    vehicle: &str,
    sequence: u64,
    own_speed: f64,
    summary: &PerceptionSummary,
    now_us: u64,
    horizon_s: f64,
) -> Recommendation {
    let ahead = summary
        .objects
        .iter()
        .filter(|o| o.position.x > 0.0 && o.position.y.abs() < HALF_LANE)
        .min_by(|a, b| a.position.x.total_cmp(&b.position.x));
    let (target, reason_code, reason) = match ahead {
        Some(o) => {
            let gap = (o.position.x - o.dimensions.x / 2.0).max(0.0);
            let speed = (gap / TIME_GAP).min(SPEED_LIMIT);
            (
                speed,
                Recommendation::REASON_FOLLOWING,
                format!("vehicle {} ahead at {:.0} m", o.id, gap),
            )
        }
        None => (
            SPEED_LIMIT,
            Recommendation::REASON_FREE_ROAD,
            "free road".to_string(),
        ),
    };
    let mut r = Recommendation::default();
    r.header.stamp = ros_time(now_us);
    r.header.frame_id = "map".into();
    r.vehicle_id = vehicle.into();
    r.sequence = sequence;
    r.target_speed = target;
    r.target_lane = 1;
    r.lane_change = Recommendation::LANE_KEEP;
    r.confidence = 0.8;
    let horizon_s = if horizon_s.is_finite() {
        horizon_s.clamp(5.0, 80.0)
    } else {
        5.0
    };
    r.valid_until = ros_time(now_us + (horizon_s * 1e6) as u64);
    r.reason_code = reason_code;
    r.reason = reason;
    let offsets = (1..=5)
        .map(f64::from)
        .chain(
            (1..)
                .map(|k| 5.0 + 2.0 * f64::from(k))
                .take_while(|t| *t <= horizon_s),
        )
        .take(40);
    r.horizon = offsets
        .map(|t| {
            // Reach the target over 5 s, then hold it.
            let f = (t / 5.0).min(1.0);
            HorizonPoint {
                time_offset: t as f32,
                speed: (own_speed + (target - own_speed) * f) as f32,
                lane_index: 1,
            }
        })
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_the_link_wrapping_and_wrong_types_are_named() {
        let s = perception_summary(50, 1.0, 1_700_000_000_123_456);
        let m = to_link(STREAM_OBJECTS, Priority::Objects, &s, 1);
        assert_eq!(m.type_name, "twin_msgs/msg/PerceptionSummary");
        let back: PerceptionSummary = from_link(&m).unwrap();
        assert_eq!(back, s);
        assert_eq!(time_us(&back.header.stamp), 1_700_000_000_123_456);
        let err = from_link::<Recommendation>(&m).unwrap_err().to_string();
        assert!(
            err.contains("expected twin_msgs/msg/Recommendation"),
            "{err}"
        );
        let mut broken = m.clone();
        broken.payload.truncate(10);
        assert!(from_link::<PerceptionSummary>(&broken).is_err());
    }

    #[test]
    fn the_rule_follows_the_vehicle_ahead_and_is_free_without_one() {
        let s = perception_summary(3, 0.0, 0);
        let r = recommend("v", 7, 20.0, &s, 0, 5.0);
        // Leader at x = 45 m, 4.5 m long: gap 42.75 m, 1.8 s -> 23.75 m/s.
        assert!(
            (r.target_speed - 42.75 / 1.8).abs() < 1e-9,
            "{}",
            r.target_speed
        );
        assert_eq!(r.reason_code, Recommendation::REASON_FOLLOWING);
        assert_eq!(r.sequence, 7);
        assert_eq!(r.horizon.len(), 5);
        assert!((r.horizon[4].speed as f64 - r.target_speed).abs() < 1e-3);
        let free = recommend("v", 8, 20.0, &perception_summary(0, 0.0, 0), 0, 5.0);
        assert_eq!(free.target_speed, SPEED_LIMIT);
        assert_eq!(free.reason_code, Recommendation::REASON_FREE_ROAD);
        // A predicted 20 s outage: the horizon covers it.
        let long = recommend("v", 9, 20.0, &s, 0, 23.0);
        assert_eq!(long.horizon.last().unwrap().time_offset, 23.0);
        assert_eq!(time_us(&long.valid_until), 23_000_000);
        assert!(long
            .horizon
            .windows(2)
            .all(|w| w[0].time_offset < w[1].time_offset));
    }
}
