//! Property tests: nothing panics on any input (random and corrupted bytes, arbitrary field
//! values), anything accepted encodes, and valid incidents and object lists round-trip
//! through UPER within the documented quantization.

mod common;

use common::{ms, ORIGIN};
use proptest::prelude::*;
use twinlink_cits::cpm::{cpm_to_objects, decode_cpm, encode_cpm, objects_to_cpm, CpmContext};
use twinlink_cits::denm::{
    decode_denm, denm_to_incident, denm_to_incident_with_lanes, encode_denm, extent_for_relevance,
    incident_to_denm, DenmContext, LaneNumbering, MAX_VALIDITY_S,
};
use twinlink_cits::geo::GeoPoint;
use twinlink_cits::time::ros_to_its;
use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::geometry_msgs::msg::{Point, Vector3};
use twinlink_msgs::twin_msgs::msg::{DetectedObject, Incident};

/// Feeds decoded bytes through every conversion; none may panic, whatever they return.
fn take_in_denm(bytes: &[u8]) {
    if let Ok(denm) = decode_denm(bytes) {
        let _ = denm_to_incident(&denm, &ORIGIN);
        let _ = denm_to_incident_with_lanes(
            &denm,
            &ORIGIN,
            LaneNumbering::LeftHandTraffic { driving_lanes: 3 },
        );
        let _ = encode_denm(&denm);
    }
}

fn take_in_cpm(bytes: &[u8]) {
    if let Ok(cpm) = decode_cpm(bytes) {
        let _ = cpm_to_objects(&cpm, &ORIGIN);
        let _ = encode_cpm(&cpm);
    }
}

/// Finite, or NaN, or infinite, or huge.
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -2000.0..2000.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => any::<f64>(),
    ]
}

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -0.5..1.5f32,
        1 => Just(f32::NAN),
        1 => any::<f32>(),
    ]
}

fn any_time() -> impl Strategy<Value = Time> {
    (any::<i32>(), any::<u32>()).prop_map(|(sec, nanosec)| Time { sec, nanosec })
}

/// A time between 2004 and 2037.
fn valid_time() -> impl Strategy<Value = Time> {
    (1_072_915_200i32..2_100_000_000, 0u32..1_000_000_000)
        .prop_map(|(sec, nanosec)| Time { sec, nanosec })
}

fn valid_denm_ctx() -> impl Strategy<Value = DenmContext> {
    (
        any::<u32>(),
        prop_oneof![Just(5u8), Just(15u8)],
        any::<u16>(),
        valid_time(),
        prop_oneof![
            Just(LaneNumbering::RightHandTraffic),
            (1u8..=14).prop_map(|n| LaneNumbering::LeftHandTraffic { driving_lanes: n }),
        ],
    )
        .prop_map(|(station_id, station_type, seq, t, lanes)| DenmContext {
            station_id,
            station_type,
            origin: ORIGIN,
            sequence_number: seq,
            reference_time: t,
            lanes,
        })
}

prop_compose! {
    fn valid_incident(max_lanes: i32)(
        from_denm in any::<bool>(),
        station in any::<u32>(),
        seq in any::<u16>(),
        other_id in "[a-z0-9-]{0,12}",
        kind in 1u8..=6,
        x in -20_000.0..20_000.0f64,
        y in -20_000.0..20_000.0f64,
        z in -50.0..50.0f64,
        lane in -1..max_lanes,
        extent in prop_oneof![Just(0.0f32), 0.01f32..20_000.0],
        confidence in 0.0f32..=1.0,
        detected in valid_time(),
        validity_ms in prop_oneof![Just(None), (0u64..200_000_000).prop_map(Some)],
    ) -> Incident {
        let expires = match validity_ms {
            None => Time::default(),
            Some(d) => {
                let t = i64::from(detected.sec) * 1000 + i64::from(detected.nanosec / 1_000_000) + d as i64;
                Time { sec: (t / 1000).min(i64::from(i32::MAX)) as i32, nanosec: (t % 1000) as u32 * 1_000_000 }
            }
        };
        Incident {
            incident_id: if from_denm { format!("denm-{station}-{seq}") } else { other_id },
            incident_kind: kind,
            position: Point { x, y, z },
            segment_id: "seg".into(),
            s: 12.5,
            lane_index: lane,
            extent,
            confidence,
            detected,
            expires,
        }
    }
}

fn any_incident() -> impl Strategy<Value = Incident> {
    (
        (".{0,24}", any::<u8>(), any_f64(), any_f64(), any_f64()),
        (any::<i32>(), any_f32(), any_f32(), any_time(), any_time()),
    )
        .prop_map(
            |((id, kind, x, y, z), (lane, extent, confidence, detected, expires))| Incident {
                incident_id: id,
                incident_kind: kind,
                position: Point { x, y, z },
                segment_id: String::new(),
                s: 0.0,
                lane_index: lane,
                extent,
                confidence,
                detected,
                expires,
            },
        )
}

fn valid_object() -> impl Strategy<Value = DetectedObject> {
    (
        (
            0u32..=65_536,
            0u8..=6,
            0.0f32..=1.0,
            0.0f32..=1.0,
            -1000.0..1000.0f64,
            -1000.0..1000.0f64,
            -30.0..30.0f64,
        ),
        (
            -10.0..10.0f64,
            prop_oneof![Just(0.0), 0.1..25.4f64],
            prop_oneof![Just(0.0), 0.1..25.4f64],
            prop_oneof![Just(0.0), 0.1..25.4f64],
            any::<bool>(),
            (-150.0..150.0f64, -150.0..150.0f64, -5.0..5.0f64),
            (0.0f32..4.0, 0.0f32..4.0, 0.0f32..4.0),
        ),
    )
        .prop_map(
            |((id, class, cc, ex, x, y, z), (yaw, l, w, h, hv, (vx, vy, vz), (sx, sy, sz)))| {
                DetectedObject {
                    id,
                    classification: class,
                    class_confidence: cc,
                    existence_probability: ex,
                    position: Point { x, y, z },
                    yaw,
                    dimensions: Vector3 { x: l, y: w, z: h },
                    has_velocity: hv,
                    velocity: if hv {
                        Vector3 {
                            x: vx,
                            y: vy,
                            z: vz,
                        }
                    } else {
                        Vector3::default()
                    },
                    position_covariance: [sx, 0.0, 0.0, 0.0, sy, 0.0, 0.0, 0.0, sz],
                }
            },
        )
}

fn any_object() -> impl Strategy<Value = DetectedObject> {
    (
        (
            any::<u32>(),
            any::<u8>(),
            any_f32(),
            any_f32(),
            any_f64(),
            any_f64(),
            any_f64(),
        ),
        (
            any_f64(),
            any_f64(),
            any_f64(),
            any::<bool>(),
            any_f64(),
            any_f64(),
            any_f32(),
        ),
    )
        .prop_map(
            |((id, class, cc, ex, x, y, z), (yaw, l, w, hv, vx, vy, s))| DetectedObject {
                id,
                classification: class,
                class_confidence: cc,
                existence_probability: ex,
                position: Point { x, y, z },
                yaw,
                dimensions: Vector3 { x: l, y: w, z: l },
                has_velocity: hv,
                velocity: Vector3 {
                    x: vx,
                    y: vy,
                    z: 0.0,
                },
                position_covariance: [s, 0.0, 0.0, 0.0, s, 0.0, 0.0, 0.0, s],
            },
        )
}

/// The RSU of the CPM tests: within ~1 km of the map origin, so every valid object is
/// within the ±1310.7 m a CPM can express.
fn rsu_ctx(t: Time, e: f64, n: f64) -> CpmContext {
    let p: GeoPoint = ORIGIN
        .map_to_geodetic(&Point { x: e, y: n, z: 5.0 })
        .unwrap();
    CpmContext::road_side_unit(7, ORIGIN, p, t)
}

fn angle_diff(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(std::f64::consts::TAU);
    d.min(std::f64::consts::TAU - d)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        take_in_denm(&bytes);
        take_in_cpm(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Corrupting a valid message reaches deep into the decoders and the conversions.
    #[test]
    fn corrupted_messages_never_panic(
        inc in valid_incident(14),
        objects in proptest::collection::vec(valid_object(), 1..6),
        flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..6),
        cut in any::<usize>(),
        junk in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let ctx = DenmContext::road_side_unit(1, ORIGIN, inc.detected.clone());
        let denm = encode_denm(&incident_to_denm(&inc, &ctx).unwrap()).unwrap();
        let cpm_ctx = rsu_ctx(inc.detected.clone(), 0.0, 0.0);
        let cpm = encode_cpm(&objects_to_cpm(&objects, &cpm_ctx).unwrap()).unwrap();
        for original in [denm, cpm] {
            let mut b = original.clone();
            for (i, bit) in &flips {
                let n = b.len();
                b[i % n] ^= 1 << bit;
            }
            take_in_denm(&b);
            take_in_cpm(&b);
            let mut t = original.clone();
            t.truncate(cut % (t.len() + 1));
            t.extend_from_slice(&junk);
            take_in_denm(&t);
            take_in_cpm(&t);
        }
    }

    /// Whatever the fields hold, incident_to_denm does not panic, and what it accepts
    /// encodes.
    #[test]
    fn any_incident_is_refused_or_encodes(inc in any_incident(), ctx in valid_denm_ctx()) {
        if let Ok(denm) = incident_to_denm(&inc, &ctx) {
            prop_assert!(encode_denm(&denm).is_ok());
        }
    }

    #[test]
    fn any_objects_are_refused_or_encode(
        objects in proptest::collection::vec(any_object(), 0..4),
        t in valid_time(),
    ) {
        if let Ok(cpm) = objects_to_cpm(&objects, &rsu_ctx(t, 100.0, -50.0)) {
            prop_assert!(encode_cpm(&cpm).is_ok());
        }
    }

    #[test]
    fn valid_incidents_round_trip(inc in valid_incident(14), ctx in valid_denm_ctx()) {
        let mut inc = inc;
        if let LaneNumbering::LeftHandTraffic { driving_lanes } = ctx.lanes {
            inc.lane_index = inc.lane_index.min(i32::from(driving_lanes) - 1);
        }
        let denm = incident_to_denm(&inc, &ctx).unwrap();
        let bytes = encode_denm(&denm).unwrap();
        let back = denm_to_incident_with_lanes(&decode_denm(&bytes).unwrap(), &ORIGIN, ctx.lanes)
            .unwrap();

        let want_id = if inc.incident_id.starts_with("denm-")
            && twinlink_cits::denm::action_for_incident_id(&inc.incident_id).is_some()
        {
            inc.incident_id.clone()
        } else {
            format!("denm-{}-{}", ctx.station_id, ctx.sequence_number)
        };
        prop_assert_eq!(&back.incident_id, &want_id);
        prop_assert_eq!(back.incident_kind, inc.incident_kind);
        // 1e-7 deg is at most 1.1 cm; half of it per axis, plus float noise.
        prop_assert!((back.position.x - inc.position.x).abs() < 0.006, "{:?} {:?}", back.position, inc.position);
        prop_assert!((back.position.y - inc.position.y).abs() < 0.006, "{:?} {:?}", back.position, inc.position);
        prop_assert!((back.position.z - inc.position.z).abs() < 0.0051, "{:?} {:?}", back.position, inc.position);
        prop_assert_eq!(back.lane_index, inc.lane_index);
        if inc.extent == 0.0 {
            prop_assert_eq!(back.extent, 0.0);
        } else {
            // The relevance class's bound: at least the extent, and the same class again.
            prop_assert!(back.extent >= inc.extent.min(10_000.0));
            let again = incident_to_denm(&Incident { extent: back.extent, ..inc.clone() }, &ctx).unwrap();
            prop_assert_eq!(
                again.denm.management.relevance_distance.map(extent_for_relevance),
                Some(back.extent)
            );
        }
        prop_assert!((back.confidence - inc.confidence).abs() <= 1.0 / 12.0 + 1e-6);
        // Detection time: whole milliseconds, truncated.
        prop_assert_eq!(ms(&back.detected), ms(&inc.detected));
        prop_assert_eq!(back.detected.nanosec % 1_000_000, 0);
        // Validity is elapsed time (ITS timestamps count leap seconds), not UTC difference.
        let its = |t: &Time| ros_to_its(t).unwrap() as i64;
        let validity = its(&back.expires) - its(&back.detected);
        if inc.expires == Time::default() {
            prop_assert_eq!(validity, i64::from(MAX_VALIDITY_S) * 1000);
        } else {
            let wanted = its(&inc.expires) - its(&inc.detected);
            let capped = wanted.min(i64::from(MAX_VALIDITY_S) * 1000);
            // Rounded up to whole seconds, capped at a day.
            prop_assert!(validity >= capped && validity < capped + 1000, "{} {}", validity, wanted);
        }
        prop_assert_eq!(&back.segment_id, "");
        prop_assert_eq!(back.s, 0.0);
    }

    #[test]
    fn valid_objects_round_trip(
        objects in proptest::collection::vec(valid_object(), 0..12),
        t in valid_time(),
        e in -300.0..300.0f64,
        n in -300.0..300.0f64,
    ) {
        let ctx = rsu_ctx(t, e, n);
        let cpm = objects_to_cpm(&objects, &ctx).unwrap();
        let bytes = encode_cpm(&cpm).unwrap();
        let back = cpm_to_objects(&decode_cpm(&bytes).unwrap(), &ORIGIN).unwrap();
        prop_assert_eq!(back.len(), objects.len());
        for (a, b) in objects.iter().zip(&back) {
            prop_assert_eq!(a.id, b.id);
            prop_assert_eq!(a.classification, b.classification);
            // 0.01 m per axis in the reference plane: within 0.005 m, plus float noise.
            for (p, q) in [(a.position.x, b.position.x), (a.position.y, b.position.y), (a.position.z, b.position.z)] {
                prop_assert!((p - q).abs() < 0.0051, "{:?} {:?}", a.position, b.position);
            }
            prop_assert_eq!(a.has_velocity, b.has_velocity);
            for (p, q) in [(a.velocity.x, b.velocity.x), (a.velocity.y, b.velocity.y), (a.velocity.z, b.velocity.z)] {
                prop_assert!((p - q).abs() < 0.0051, "{:?} {:?}", a.velocity, b.velocity);
            }
            // 0.1 deg: within 0.05 deg.
            prop_assert!(angle_diff(a.yaw, b.yaw) < 0.000_88, "{} {}", a.yaw, b.yaw);
            for (p, q) in [(a.dimensions.x, b.dimensions.x), (a.dimensions.y, b.dimensions.y), (a.dimensions.z, b.dimensions.z)] {
                prop_assert!((p - q).abs() <= 0.05 + 1e-9 || (p < 0.05 && (q - 0.1).abs() < 1e-9), "{:?} {:?}", a.dimensions, b.dimensions);
            }
            prop_assert!((a.existence_probability - b.existence_probability).abs() <= 1.0 / 30.0 + 1e-6);
            if a.classification == DetectedObject::CLASS_UNKNOWN {
                prop_assert_eq!(b.class_confidence, 0.0);
            } else {
                // Percent, at least 1 %.
                prop_assert!((a.class_confidence.max(0.01) - b.class_confidence).abs() <= 0.005 + 1e-6);
            }
            for k in [0, 4, 8] {
                let (s0, s1) = (f64::from(a.position_covariance[k]).sqrt(), f64::from(b.position_covariance[k]).sqrt());
                if s0 == 0.0 {
                    prop_assert_eq!(s1, 0.0);
                } else {
                    // 95 % radius rounded up to the centimetre (at least 1 cm).
                    prop_assert!(s1 >= s0 - 1e-6 && s1 <= s0.max(0.01 / 1.96) + 0.01 / 1.96 + 1e-6, "{} {}", s0, s1);
                }
            }
        }
    }
}
