//! The PE end of the twin link as the twin link node runs it, without ROS: parameters,
//! validation of what arrives from the vehicle's ROS graph, conversion of odometry to the
//! twin's VehicleState, stream naming, TwinStatus from the link's counters, and the sharing
//! policy the vehicle grants.

use std::collections::BTreeMap;

use twinlink_link::link::LinkStats;
use twinlink_link::minimal::{ros_time, STREAM_STATE};
use twinlink_link::Priority;
use twinlink_msgs::nav_msgs::msg::Odometry;
use twinlink_msgs::twin_msgs::msg::{
    Incident, PerceptionSummary, SharingPolicy, TwinStatus, VehicleState,
};

use crate::params::{ParamSpec, Params};

/// Stream of sharing policy updates (PE -> DR).
pub const STREAM_POLICY: &str = "policy";

/// Stream of incidents the vehicle reports itself (its own breakdown, a hazard its driver
/// assistance recognised); its twin shares them as its vehicle's policy permits.
pub const STREAM_INCIDENT: &str = "incident";

/// The twin link node's parameters, with defaults and ranges.
pub fn parameters() -> Vec<ParamSpec> {
    vec![
        ParamSpec::string(
            "vehicle_id",
            "",
            &[],
            "vehicle id; empty = the node's namespace without the leading /",
        ),
        ParamSpec::string(
            "key_file",
            "",
            &[],
            "this PE's key file from `twinctl provision` (required)",
        ),
        ParamSpec::string(
            "zenoh_mode",
            "peer",
            &["peer", "client"],
            "peer, or client of a Zenoh router",
        ),
        ParamSpec::string(
            "zenoh_connect",
            "",
            &[],
            "endpoints to connect to, comma separated, e.g. tcp/10.0.0.2:7447",
        ),
        ParamSpec::string(
            "zenoh_listen",
            "",
            &[],
            "endpoints to listen on, comma separated",
        ),
        ParamSpec::double(
            "vehicle_length",
            4.6,
            1.0,
            30.0,
            "body length along base_link x [m]",
        ),
        ParamSpec::double(
            "vehicle_width",
            1.9,
            0.5,
            4.0,
            "body width along base_link y [m]",
        ),
        ParamSpec::double(
            "state_rate",
            20.0,
            0.1,
            200.0,
            "most vehicle states uplinked per second (odometry is decimated) [Hz]",
        ),
        ParamSpec::double(
            "status_period",
            1.0,
            0.05,
            60.0,
            "period of ~/twin_status [s]",
        ),
        ParamSpec::int(
            "max_objects",
            512,
            1,
            65_535,
            "summaries with more objects are refused",
        ),
        ParamSpec::double(
            "max_summary_age",
            2.0,
            0.01,
            60.0,
            "summaries stamped longer ago (or later) are refused [s]",
        ),
        ParamSpec::double(
            "degraded_loss",
            0.2,
            0.0,
            1.0,
            "loss rate above which the link is reported DEGRADED",
        ),
        ParamSpec::string(
            "summary_topics",
            "perception/objects/lidar,perception/objects/radar,perception/objects/camera",
            &[],
            "PerceptionSummary topics to uplink, comma separated",
        ),
        ParamSpec::string(
            "report_file",
            "",
            &[],
            "write the link's and node's counters here as JSON at exit; empty = none",
        ),
        ParamSpec::bool(
            "publish_markers",
            true,
            "publish twin/markers (what the twin sees and advises)",
        ),
        ParamSpec::string(
            "radio_map_file",
            "",
            &[],
            "simulation only: a radio map (JSON, twinlink_link::radio::RadioMap) whose quality at the odometry's x shapes the link both ways; empty = the real network as it is",
        ),
        ParamSpec::bool(
            "object_inclusion",
            true,
            "send an object again only when the twin's prediction of it is off (false: every object of every summary)",
        ),
        ParamSpec::double(
            "inclusion_max_error",
            1.0,
            0.05,
            20.0,
            "prediction error that sends an object again [m]",
        ),
        ParamSpec::double(
            "inclusion_interval",
            1.0,
            0.05,
            1.2,
            "longest time between two sends of a seen object, below the twin's 1.5 s coast [s]",
        ),
        ParamSpec::bool(
            "state_inclusion",
            true,
            "send the vehicle's state again only when the twin's prediction of it is off (false: at state_rate)",
        ),
        ParamSpec::double(
            "state_max_error",
            0.25,
            0.01,
            5.0,
            "position error of the twin's prediction that sends the state again [m]",
        ),
        ParamSpec::bool(
            "compress_uplink",
            true,
            "compress frames to the twin (LZ4) when that makes them smaller",
        ),
        ParamSpec::double(
            "heartbeat",
            0.25,
            0.01,
            0.5,
            "longest silence of the link before a heartbeat frame, below the twin's 600 ms peer timeout [s]",
        ),
    ]
}

/// The node's settings, from validated parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    /// The vehicle.
    pub vehicle_id: String,
    /// PE key file.
    pub key_file: String,
    /// Zenoh mode.
    pub zenoh_mode: String,
    /// Endpoints to connect to.
    pub zenoh_connect: Vec<String>,
    /// Endpoints to listen on.
    pub zenoh_listen: Vec<String>,
    /// Body length [m].
    pub vehicle_length: f64,
    /// Body width [m].
    pub vehicle_width: f64,
    /// Most states per second.
    pub state_rate: f64,
    /// TwinStatus period [s].
    pub status_period: f64,
    /// Most objects per summary.
    pub max_objects: usize,
    /// Largest |now - stamp| of a summary [s].
    pub max_summary_age: f64,
    /// Loss rate that makes the link DEGRADED.
    pub degraded_loss: f64,
    /// Summary topics to subscribe.
    pub summary_topics: Vec<String>,
    /// Publish markers.
    pub publish_markers: bool,
    /// JSON report at exit.
    pub report_file: String,
    /// Which objects of a summary go up.
    pub inclusion: crate::inclusion::InclusionConfig,
    /// A simulator's coverage, applied to the link by position (empty: none).
    pub radio_map_file: String,
    /// Which of the vehicle's states go up.
    pub state_inclusion: crate::inclusion::StateInclusionConfig,
    /// Compress frames to the twin.
    pub compress_uplink: bool,
    /// Longest silence of the link before a heartbeat [s].
    pub heartbeat_s: f64,
}

fn endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl UplinkConfig {
    /// The configuration from validated parameters; `namespace` supplies the vehicle id when
    /// the parameter is empty. Checks what the parameter table cannot: a key file and at
    /// least one endpoint are given, and the vehicle id is valid.
    pub fn from_params(p: &Params, namespace: &str) -> Result<Self, String> {
        let vehicle_id = match p.str("vehicle_id") {
            "" => namespace.trim_matches('/').replace('/', "_"),
            v => v.to_string(),
        };
        twinlink_link::VehicleId::new(&vehicle_id)
            .map_err(|e| format!("parameter 'vehicle_id': {vehicle_id:?}: {e}"))?;
        let config = UplinkConfig {
            vehicle_id,
            key_file: p.str("key_file").to_string(),
            zenoh_mode: p.str("zenoh_mode").to_string(),
            zenoh_connect: endpoints(p.str("zenoh_connect")),
            zenoh_listen: endpoints(p.str("zenoh_listen")),
            vehicle_length: p.f64("vehicle_length"),
            vehicle_width: p.f64("vehicle_width"),
            state_rate: p.f64("state_rate"),
            status_period: p.f64("status_period"),
            max_objects: p.usize("max_objects"),
            max_summary_age: p.f64("max_summary_age"),
            degraded_loss: p.f64("degraded_loss"),
            summary_topics: endpoints(p.str("summary_topics")),
            publish_markers: p.bool("publish_markers"),
            report_file: p.str("report_file").to_string(),
            inclusion: crate::inclusion::InclusionConfig {
                enabled: p.bool("object_inclusion"),
                max_error_m: p.f64("inclusion_max_error"),
                max_interval_s: p.f64("inclusion_interval"),
                summary_interval_s: p.f64("inclusion_interval"),
                ..crate::inclusion::InclusionConfig::default()
            },
            radio_map_file: p.str("radio_map_file").to_string(),
            state_inclusion: crate::inclusion::StateInclusionConfig {
                enabled: p.bool("state_inclusion"),
                max_error_m: p.f64("state_max_error"),
                ..crate::inclusion::StateInclusionConfig::default()
            },
            compress_uplink: p.bool("compress_uplink"),
            heartbeat_s: p.f64("heartbeat"),
        };
        if config.key_file.is_empty() {
            return Err(
                "parameter 'key_file': required (the PE key file from `twinctl provision`)".into(),
            );
        }
        if config.zenoh_connect.is_empty() && config.zenoh_listen.is_empty() {
            return Err(
                "parameters 'zenoh_connect' and 'zenoh_listen': give at least one endpoint".into(),
            );
        }
        Ok(config)
    }
}

/// Why an input from the vehicle's graph was refused. `kind()` names the counter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// A number is NaN or infinite.
    #[error("{what}: {field} is not finite")]
    NotFinite {
        /// Message type.
        what: &'static str,
        /// Field.
        field: String,
    },
    /// The orientation quaternion is not a rotation.
    #[error("odometry: orientation quaternion has norm {norm:.3}, not 1")]
    BadQuaternion {
        /// Its norm.
        norm: f64,
    },
    /// A frame id is missing or not the one expected.
    #[error("{what}: frame_id {found:?}, expected {expected}")]
    Frame {
        /// Message type.
        what: &'static str,
        /// Given.
        found: String,
        /// Expected.
        expected: &'static str,
    },
    /// Too many objects.
    #[error("summary from {sensor:?}: {count} objects, more than max_objects {max}")]
    TooManyObjects {
        /// Sensor.
        sensor: String,
        /// Count.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// A probability outside [0, 1].
    #[error("summary from {sensor:?}: object {index} has {field} {value} outside [0, 1]")]
    Probability {
        /// Sensor.
        sensor: String,
        /// Object index.
        index: usize,
        /// Field.
        field: &'static str,
        /// Value.
        value: f32,
    },
    /// A sensor id that cannot name a stream.
    #[error("summary: sensor_id {0:?} must be 1-64 characters of a-z, 0-9, _ or -")]
    SensorId(String),
    /// A stamp far from now.
    #[error("summary from {sensor:?}: stamped {age_s:.2} s from now, more than max_summary_age {max_s} s")]
    Stale {
        /// Sensor.
        sensor: String,
        /// now - stamp [s] (negative: in the future).
        age_s: f64,
        /// Limit [s].
        max_s: f64,
    },
    /// An incident report that its twin could not place or share.
    #[error("incident {id:?}: {problem}")]
    Incident {
        /// Its id as given.
        id: String,
        /// What is wrong.
        problem: &'static str,
    },
}

impl InputError {
    /// Counter name.
    pub fn kind(&self) -> &'static str {
        match self {
            InputError::NotFinite { .. } => "not_finite",
            InputError::BadQuaternion { .. } => "bad_quaternion",
            InputError::Frame { .. } => "wrong_frame",
            InputError::TooManyObjects { .. } => "too_many_objects",
            InputError::Probability { .. } => "bad_probability",
            InputError::SensorId(_) => "bad_sensor_id",
            InputError::Stale { .. } => "stale",
            InputError::Incident { .. } => "bad_incident",
        }
    }
}

fn finite(what: &'static str, field: &str, values: &[f64]) -> Result<(), InputError> {
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(InputError::NotFinite {
            what,
            field: field.to_string(),
        })
    }
}

/// The vehicle's state for its twin from odometry (pose in map or odom, twist in the child
/// frame, normally base_link).
pub fn odometry_to_state(
    odom: &Odometry,
    config: &UplinkConfig,
) -> Result<VehicleState, InputError> {
    let p = &odom.pose.pose;
    finite(
        "odometry",
        "pose.position",
        &[p.position.x, p.position.y, p.position.z],
    )?;
    let q = &p.orientation;
    finite("odometry", "pose.orientation", &[q.x, q.y, q.z, q.w])?;
    let norm = (q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w).sqrt();
    if (norm - 1.0).abs() > 0.01 {
        return Err(InputError::BadQuaternion { norm });
    }
    let t = &odom.twist.twist;
    finite(
        "odometry",
        "twist",
        &[
            t.linear.x,
            t.linear.y,
            t.linear.z,
            t.angular.x,
            t.angular.y,
            t.angular.z,
        ],
    )?;
    finite("odometry", "pose.covariance", &odom.pose.covariance)?;
    if odom.header.frame_id.is_empty() {
        return Err(InputError::Frame {
            what: "odometry",
            found: String::new(),
            expected: "map or odom",
        });
    }
    Ok(VehicleState {
        header: odom.header.clone(),
        vehicle_id: config.vehicle_id.clone(),
        pose: p.clone(),
        twist: t.clone(),
        acceleration: 0.0,
        steering_angle: 0.0,
        pose_covariance: odom.pose.covariance,
        lane_index: -1,
        length: config.vehicle_length,
        width: config.vehicle_width,
    })
}

/// Checks an incident the vehicle reports (topic `twin/incident_report`) before it goes
/// up the link: an id of 1-64 characters, a known kind, a finite position in `map`, an
/// extent of 0-20,000 m, a confidence in [0, 1], a lane of -1 (all) or more.
pub fn check_incident(i: &Incident) -> Result<(), InputError> {
    let bad = |problem| {
        Err(InputError::Incident {
            id: i.incident_id.clone(),
            problem,
        })
    };
    if i.incident_id.is_empty() || i.incident_id.len() > 64 {
        return bad("incident_id must be 1-64 characters");
    }
    if i.incident_kind > Incident::INCIDENT_CONGESTION {
        return bad("incident_kind is not one of INCIDENT_*");
    }
    let p = &i.position;
    if !(p.x.is_finite() && p.y.is_finite() && p.z.is_finite() && i.s.is_finite()) {
        return bad("position and s must be finite");
    }
    if !(i.extent.is_finite() && (0.0..=20_000.0).contains(&i.extent)) {
        return bad("extent must be within 0-20000 m");
    }
    if !(i.confidence.is_finite() && (0.0..=1.0).contains(&i.confidence)) {
        return bad("confidence must be within [0, 1]");
    }
    if i.lane_index < -1 {
        return bad("lane_index must be -1 (all lanes) or a lane");
    }
    Ok(())
}

/// Checks a summary from one of the vehicle's summarizers before it goes up the link.
pub fn check_summary(
    s: &PerceptionSummary,
    config: &UplinkConfig,
    now_us: u64,
) -> Result<(), InputError> {
    stream_for_sensor(&s.sensor_id)?;
    let sensor = &s.sensor_id;
    if s.header.frame_id != "base_link" {
        return Err(InputError::Frame {
            what: "summary",
            found: s.header.frame_id.clone(),
            expected: "base_link",
        });
    }
    let stamp_us = twinlink_link::minimal::time_us(&s.header.stamp) as f64;
    let age_s = (now_us as f64 - stamp_us) / 1e6;
    if age_s.abs() > config.max_summary_age {
        return Err(InputError::Stale {
            sensor: sensor.clone(),
            age_s,
            max_s: config.max_summary_age,
        });
    }
    if s.objects.len() > config.max_objects {
        return Err(InputError::TooManyObjects {
            sensor: sensor.clone(),
            count: s.objects.len(),
            max: config.max_objects,
        });
    }
    for (index, o) in s.objects.iter().enumerate() {
        finite(
            "summary",
            &format!("objects[{index}]"),
            &[
                o.position.x,
                o.position.y,
                o.position.z,
                o.yaw,
                o.dimensions.x,
                o.dimensions.y,
                o.dimensions.z,
                o.velocity.x,
                o.velocity.y,
                o.velocity.z,
            ],
        )?;
        for (field, value) in [
            ("class_confidence", o.class_confidence),
            ("existence_probability", o.existence_probability),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(InputError::Probability {
                    sensor: sensor.clone(),
                    index,
                    field,
                    value,
                });
            }
        }
    }
    Ok(())
}

/// The link stream of a sensor's summaries: `objects/<sensor_id>`.
pub fn stream_for_sensor(sensor_id: &str) -> Result<String, InputError> {
    let ok = !sensor_id.is_empty()
        && sensor_id.len() <= 64
        && sensor_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(format!("objects/{sensor_id}"))
    } else {
        Err(InputError::SensorId(sensor_id.to_string()))
    }
}

/// Priorities of the uplink streams: own state first, then objects.
pub fn priority_of(stream: &str) -> Priority {
    if stream == STREAM_STATE || stream == STREAM_POLICY {
        Priority::OwnState
    } else if stream == STREAM_INCIDENT {
        Priority::Hazard
    } else {
        Priority::Objects
    }
}

/// What the node counts besides the link's own counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NodeCounters {
    /// Inputs refused, by reason (decode errors and [`InputError::kind`]).
    pub rejected: BTreeMap<String, u64>,
    /// Odometry messages skipped by the state rate limit.
    pub states_decimated: u64,
    /// Messages handed to the link.
    pub uplinked: u64,
    /// Recommendations published.
    pub recommendations: u64,
    /// Observations relayed from other twins published.
    pub relayed: u64,
    /// Incidents the vehicle reported, handed to the link.
    pub incidents: u64,
    /// Summaries not sent because nothing in them had changed (object inclusion).
    pub summaries_unchanged: u64,
    /// The object inclusion's counters.
    pub inclusion: crate::inclusion::InclusionStats,
    /// The vehicle's states offered and sent (state inclusion).
    pub state_inclusion: crate::inclusion::StateInclusionStats,
    /// Changes of the emulated radio's quality (`radio_map_file`).
    pub radio_changes: u64,
    /// Odometry messages received without coverage (`radio_map_file`).
    pub radio_uncovered: u64,
}

impl NodeCounters {
    /// Counts one refusal.
    pub fn reject(&mut self, reason: &str) {
        *self.rejected.entry(reason.to_string()).or_default() += 1;
    }
}

/// The TwinStatus the node publishes, from the link's counters.
pub fn twin_status(
    vehicle_id: &str,
    stats: &LinkStats,
    node: &NodeCounters,
    link_state: u8,
    link_state_since_us: u64,
    sync_lag_s: f32,
    now_us: u64,
) -> TwinStatus {
    TwinStatus {
        header: twinlink_msgs::std_msgs::msg::Header {
            stamp: ros_time(now_us),
            frame_id: String::new(),
        },
        vehicle_id: vehicle_id.to_string(),
        link_state,
        link_state_since: ros_time(link_state_since_us),
        rtt: stats
            .rtt
            .smoothed_us
            .map(|us| us as f32 / 1e6)
            .unwrap_or(0.0),
        measured_bandwidth: stats.path.delivery_bps as f32,
        predicted_bandwidth: stats.path.bottleneck_bps as f32,
        predicted_outage_in: -1.0,
        loss_rate: stats.path.loss.clamp(0.0, 1.0) as f32,
        sync_lag: sync_lag_s,
        uplink_bytes: stats.bytes_sent,
        downlink_bytes: stats.bytes_received,
        buffered_messages: stats.outbox.queued as u32,
        dropped_messages: stats.outbox.coalesced + stats.outbox.dropped.iter().sum::<u64>(),
        rejected_messages: stats.rejected_total() + node.rejected.values().sum::<u64>(),
        dr_host: String::new(),
    }
}

/// The link state to report: DISCONNECTED without a peer, CONNECTING before the first
/// session, DEGRADED above `degraded_loss`, else CONNECTED.
pub fn link_state(stats: &LinkStats, degraded_loss: f64) -> u8 {
    if stats.sessions_established == 0 {
        TwinStatus::LINK_CONNECTING
    } else if !stats.peer_alive {
        TwinStatus::LINK_DISCONNECTED
    } else {
        if stats.path.loss > degraded_loss {
            TwinStatus::LINK_DEGRADED
        } else {
            TwinStatus::LINK_CONNECTED
        }
    }
}

/// The sharing policy the vehicle has granted; changed only through SetSharingPolicy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyStore {
    current: SharingPolicy,
}

impl PolicyStore {
    /// The policy in force (version 0 until one is accepted: nothing is shared).
    pub fn current(&self) -> &SharingPolicy {
        &self.current
    }

    /// Validates and accepts a new policy; returns it with its version set, or why not.
    /// The rules are the ones the twin enforces (`twinlink_share::policy`), so the vehicle
    /// never accepts a policy its twin would refuse.
    pub fn set(&mut self, mut policy: SharingPolicy) -> Result<SharingPolicy, String> {
        twinlink_share::policy::validate_policy(&policy, twinlink_share::time::now_us())
            .map_err(|e| e.to_string())?;
        policy.version = self.current.version + 1;
        self.current = policy.clone();
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{resolve, Given, ParamValue};
    use twinlink_msgs::twin_msgs::msg::{SharedObservation, SharingRule};

    fn rule_for_twin() -> SharingRule {
        SharingRule {
            category: SharedObservation::CATEGORY_HAZARDS,
            audience: SharingRule::AUDIENCE_ANY_TWIN,
            spatial_precision: 10.0,
            max_age: 60.0,
            ..Default::default()
        }
    }

    fn config() -> UplinkConfig {
        let mut given = Given::new();
        given.insert("key_file".into(), ParamValue::Str("/keys/pe.json".into()));
        given.insert(
            "zenoh_connect".into(),
            ParamValue::Str("tcp/127.0.0.1:7447, tcp/10.0.0.2:7447".into()),
        );
        UplinkConfig::from_params(&resolve(&parameters(), &given).unwrap(), "/car_7").unwrap()
    }

    #[test]
    fn incident_reports_are_checked_field_by_field() {
        let mut i = Incident {
            incident_id: "own-breakdown".into(),
            incident_kind: Incident::INCIDENT_STALLED_VEHICLE,
            extent: 5.0,
            confidence: 1.0,
            ..Default::default()
        };
        check_incident(&i).unwrap();
        let problem = |i: &Incident| match check_incident(i).unwrap_err() {
            InputError::Incident { problem, .. } => problem,
            other => panic!("{other}"),
        };
        i.position.x = f64::NAN;
        assert!(problem(&i).starts_with("position"));
        i.position.x = 0.0;
        i.incident_kind = 99;
        assert!(problem(&i).starts_with("incident_kind"));
        i.incident_kind = Incident::INCIDENT_DEBRIS;
        i.confidence = 1.5;
        assert!(problem(&i).starts_with("confidence"));
        i.confidence = 0.5;
        i.lane_index = -2;
        assert!(problem(&i).starts_with("lane_index"));
        i.lane_index = 0;
        i.incident_id = String::new();
        assert_eq!(check_incident(&i).unwrap_err().kind(), "bad_incident");
        assert_eq!(priority_of(STREAM_INCIDENT), Priority::Hazard);
    }

    #[test]
    fn config_takes_the_vehicle_from_the_namespace_and_requires_keys_and_endpoints() {
        let c = config();
        assert_eq!(c.vehicle_id, "car_7");
        assert_eq!(
            c.zenoh_connect,
            vec!["tcp/127.0.0.1:7447", "tcp/10.0.0.2:7447"]
        );
        let p = resolve(&parameters(), &Given::new()).unwrap();
        assert!(UplinkConfig::from_params(&p, "/car")
            .unwrap_err()
            .contains("'key_file': required"));
        let mut given = Given::new();
        given.insert("key_file".into(), ParamValue::Str("k".into()));
        let p = resolve(&parameters(), &given).unwrap();
        assert!(UplinkConfig::from_params(&p, "/car")
            .unwrap_err()
            .contains("zenoh_connect"));
        assert!(UplinkConfig::from_params(&resolve(&parameters(), &given).unwrap(), "/").is_err());
    }

    #[test]
    fn odometry_becomes_the_twins_vehicle_state() {
        let mut odom = Odometry::default();
        odom.header.frame_id = "map".into();
        odom.pose.pose.orientation.w = 1.0;
        odom.pose.pose.position.x = 12.0;
        odom.twist.twist.linear.x = 20.0;
        let s = odometry_to_state(&odom, &config()).unwrap();
        assert_eq!(
            (
                s.vehicle_id.as_str(),
                s.pose.position.x,
                s.twist.linear.x,
                s.length
            ),
            ("car_7", 12.0, 20.0, 4.6)
        );
        odom.pose.pose.orientation.w = 0.5;
        assert_eq!(
            odometry_to_state(&odom, &config()).unwrap_err().kind(),
            "bad_quaternion"
        );
        odom.pose.pose.orientation.w = 1.0;
        odom.twist.twist.linear.y = f64::NAN;
        assert_eq!(
            odometry_to_state(&odom, &config()).unwrap_err().kind(),
            "not_finite"
        );
    }

    #[test]
    fn summaries_are_checked_before_the_uplink() {
        let now = 1_000_000_000;
        let mut s = PerceptionSummary {
            sensor_id: "lidar_top".into(),
            ..Default::default()
        };
        s.header.frame_id = "base_link".into();
        s.header.stamp = ros_time(now);
        s.objects.push(Default::default());
        check_summary(&s, &config(), now).unwrap();
        assert_eq!(stream_for_sensor("lidar_top").unwrap(), "objects/lidar_top");
        let mut bad = s.clone();
        bad.objects[0].existence_probability = 1.5;
        assert_eq!(
            check_summary(&bad, &config(), now).unwrap_err().kind(),
            "bad_probability"
        );
        let mut bad = s.clone();
        bad.header.frame_id = "lidar".into();
        assert_eq!(
            check_summary(&bad, &config(), now).unwrap_err().kind(),
            "wrong_frame"
        );
        let mut bad = s.clone();
        bad.sensor_id = "Lidar Top".into();
        assert_eq!(
            check_summary(&bad, &config(), now).unwrap_err().kind(),
            "bad_sensor_id"
        );
        assert_eq!(
            check_summary(&s, &config(), now + 10_000_000)
                .unwrap_err()
                .kind(),
            "stale"
        );
        let mut bad = s.clone();
        bad.objects = vec![Default::default(); 513];
        assert_eq!(
            check_summary(&bad, &config(), now).unwrap_err().kind(),
            "too_many_objects"
        );
    }

    #[test]
    fn policies_are_validated_and_versioned() {
        let mut store = PolicyStore::default();
        let rule = SharingRule {
            category: SharedObservation::CATEGORY_HAZARDS,
            audience: SharingRule::AUDIENCE_ANY_TWIN,
            spatial_precision: 10.0,
            max_age: 60.0,
            ..Default::default()
        };
        let p = store
            .set(SharingPolicy {
                rules: vec![rule.clone()],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(p.version, 1);
        let e = store
            .set(SharingPolicy {
                rules: vec![rule.clone(), rule.clone()],
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("second rule"), "{e}");
        let mut bad = rule;
        bad.audience = 9;
        assert!(store
            .set(SharingPolicy {
                rules: vec![bad],
                ..Default::default()
            })
            .is_err());
        assert_eq!(store.current().version, 1);
        // What the twin would refuse, the vehicle refuses too: a grant already expired,
        // and a maximum age of zero.
        let mut expired = rule_for_twin();
        expired.expires.sec = 1;
        let e = store
            .set(SharingPolicy {
                rules: vec![expired],
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("rules[0].expires"), "{e}");
        let mut zero_age = rule_for_twin();
        zero_age.max_age = 0.0;
        let e = store
            .set(SharingPolicy {
                rules: vec![zero_age],
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("rules[0].max_age"), "{e}");
        assert_eq!(store.current().version, 1);
    }
}
