//! Conformance against an independent UPER implementation.
//!
//! No published UPER test vector of an EN 302 637-3 v1.3.1 DENM or a TS 103 324 v2.1.1 CPM
//! was found (the vectors in public test suites are of the older TR 103 562 CPM or of
//! DENM release 2). The vectors below were therefore produced with asn1tools 0.169.0 (a
//! Python ASN.1 compiler with its own UPER codec, unrelated to rasn) from the ETSI ASN.1
//! modules:
//!
//! - DENM: `EN302637-3v131-DENM.asn` (ETSI EN 302 637-3 v1.3.1) and `TS102894-2v131-CDD.asn`
//!   (ETSI TS 102 894-2 v1.3.1), as bundled in riebl/vanetza, `asn1/`;
//! - CPM: `CPM-*.asn` (ETSI TS 103 324 v2.1.1) and `TS102894-2v241-CDD.asn` (ETSI-ITS-CDD
//!   v2.4.1), riebl/vanetza, `asn1/release2/`. asn1tools does not evaluate the named-number
//!   constraint `TrafficParticipantType (unknown|passengerCar..tram|agricultural)` of
//!   `ObjectClass.vehicleSubClass` (it encodes it in 0 bits); it was given its PER-visible
//!   equivalent `(0..14)`, which is what the standard's encoding uses (4 bits).
//!
//! Each "A" vector is a message written out value by value (as a road-side unit would send
//! it); each "B" vector is asn1tools' encoding of the value this crate's converter must
//! produce for a fixture, so the converter's bytes are compared with another encoder's.

mod common;

use common::{time, unhex, ORIGIN, T0};
use twinlink_cits::asn::rasn;
use twinlink_cits::cpm::{cpm_to_objects, decode_cpm, encode_cpm, objects_to_cpm, CpmContext};
use twinlink_cits::denm::{
    decode_denm, denm_to_incident, encode_denm, incident_to_denm, DenmContext,
};
use twinlink_msgs::geometry_msgs::msg::{Point, Vector3};
use twinlink_msgs::twin_msgs::msg::{DetectedObject, Incident};

/// Road-side unit 777, stationary vehicle (cause 94, sub-cause 2), lanePosition 2,
/// relevance < 200 m, upstream traffic, 120 s validity, informationQuality 5, with a
/// stationaryVehicle container (stationarySince lessThan2Minutes) this crate ignores.
const DENM_A: &str = "020100000309a70000018480061240255871049009562be52562fa0723054901f412c3842522464801e03c52f0121381";

/// `incident_to_denm` of the lane-closure fixture below.
const DENM_B: &str = "020100001092a50000084900039240253b25049009561c45256008772307152ffffffe11251c0f60e4c0f18060090d0000";

/// Road-side unit 90001 at 48.14 N 11.579 E, 525 m: an RSU container and two objects, a
/// pedestrian (id 41, polar velocity 1.5 m/s north, measured 100 ms early, classes
/// car 30 % / pedestrian road worker 65 %) and debris (no id, 1.2 x 0.8 x 0.3 m, yaw 45 deg,
/// otherSubClass singleObject with unavailable confidence).
const CPM_A: &str = "020e00015f91024804ab0e2292b3ee039185158005005000129da188808021980804c02800a5e70fd8f009c067c026012c24e109e10a748280138a0034e207ffbec79ffefed47ff8385f80820e10b086039000";

/// `objects_to_cpm` of the car fixture below.
const CPM_B: &str = "020e00015f91024804ab0e2292b3bfb39184da7fffffff08929daf88808021300402d3a800aa00305dc013c07ce04efeed7fff0f9ff3f37fcfffff023df83be23f2cfe00b640";

/// 2023-11-14T22:13:20Z as TimestampIts.
const T0_ITS: u64 = 627_084_805_000;

#[test]
fn denm_a_decodes_and_converts() {
    let bytes = unhex(DENM_A);
    let denm = decode_denm(&bytes).unwrap();
    assert_eq!(encode_denm(&denm).unwrap(), bytes, "canonical re-encoding");
    let m = &denm.denm.management;
    assert_eq!(denm.header.station_id.0, 777);
    assert_eq!(m.detection_time.0, T0_ITS);
    assert_eq!(m.event_position.latitude.0, 481_380_000);
    assert_eq!(m.event_position.longitude.0, 115_770_000);
    assert_eq!(m.event_position.altitude.altitude_value.0, 52_100);
    assert!(denm
        .denm
        .alacarte
        .as_ref()
        .unwrap()
        .stationary_vehicle
        .is_some());

    let inc = denm_to_incident(&denm, &ORIGIN).unwrap();
    assert_eq!(inc.incident_id, "denm-777-12");
    assert_eq!(inc.incident_kind, Incident::INCIDENT_STALLED_VEHICLE);
    assert_eq!(inc.lane_index, 1);
    assert_eq!(inc.extent, 200.0);
    assert!((inc.confidence - 4.0 / 6.0).abs() < 1e-6);
    assert_eq!(inc.detected, T0);
    assert_eq!(inc.expires, time(T0.sec + 120, 0));
    let g = ORIGIN.map_to_geodetic(&inc.position).unwrap();
    assert!((g.latitude_deg - 48.138).abs() < 1e-9, "{g:?}");
    assert!((g.longitude_deg - 11.577).abs() < 1e-9, "{g:?}");
    assert!((g.altitude_m - 521.0).abs() < 1e-6, "{g:?}");
}

#[test]
fn denm_b_is_what_incident_to_denm_encodes() {
    let inc = Incident {
        incident_id: "lane-3".into(),
        incident_kind: Incident::INCIDENT_LANE_CLOSURE,
        position: Point {
            x: 120.0,
            y: -40.0,
            z: 1.0,
        },
        segment_id: String::new(),
        s: 0.0,
        lane_index: 1,
        extent: 300.0,
        confidence: 0.75,
        detected: time(T0.sec - 60, 0),
        expires: time(T0.sec + 3600, 0),
    };
    let ctx = DenmContext {
        sequence_number: 7,
        ..DenmContext::road_side_unit(4242, ORIGIN, T0)
    };
    let bytes = encode_denm(&incident_to_denm(&inc, &ctx).unwrap()).unwrap();
    assert_eq!(bytes, unhex(DENM_B));
    let back = denm_to_incident(&decode_denm(&bytes).unwrap(), &ORIGIN).unwrap();
    assert_eq!(back.incident_kind, Incident::INCIDENT_LANE_CLOSURE);
    assert_eq!(back.lane_index, 1);
}

#[test]
fn cpm_a_decodes_and_converts() {
    let bytes = unhex(CPM_A);
    let cpm = decode_cpm(&bytes).unwrap();
    assert_eq!(encode_cpm(&cpm).unwrap(), bytes, "canonical re-encoding");
    let objects = cpm_to_objects(&cpm, &ORIGIN).unwrap();
    assert_eq!(objects.len(), 2);

    let reference = twinlink_cits::GeoPoint {
        latitude_deg: 48.14,
        longitude_deg: 11.579,
        altitude_m: 525.0,
    };
    let at = |e: f64, n: f64, u: f64| {
        ORIGIN
            .geodetic_to_map(&twinlink_cits::geo::enu_to_geodetic(&reference, [e, n, u]))
            .unwrap()
    };
    let p = &objects[0];
    assert_eq!(p.id, 42);
    assert_eq!(p.classification, DetectedObject::CLASS_PEDESTRIAN);
    assert!((p.class_confidence - 0.65).abs() < 1e-6);
    assert!((p.existence_probability - 0.8).abs() < 1e-6);
    assert!(p.has_velocity && (p.velocity.y - 1.5).abs() < 1e-3 && p.velocity.x.abs() < 1e-3);
    let want = at(-12.5, 8.45, 0.0);
    assert!((p.position.x - want.x).abs() < 1e-3 && (p.position.y - want.y).abs() < 1e-3);

    let d = &objects[1];
    assert_eq!(d.id, 0);
    assert_eq!(d.classification, DetectedObject::CLASS_STATIC_OBSTACLE);
    let want = at(400.0, -25.0, -6.0);
    assert!((d.position.x - want.x).abs() < 1e-3 && (d.position.y - want.y).abs() < 1e-3);
    assert!((d.position.z - want.z).abs() < 1e-3);
    assert!((d.yaw - 45f64.to_radians()).abs() < 1e-3);
    assert_eq!(
        (d.dimensions.x, d.dimensions.y, d.dimensions.z),
        (1.2, 0.8, 0.3)
    );
}

#[test]
fn cpm_b_is_what_objects_to_cpm_encodes() {
    let car = DetectedObject {
        id: 43,
        classification: DetectedObject::CLASS_CAR,
        class_confidence: 0.9,
        existence_probability: 0.8,
        position: Point {
            x: 230.0,
            y: 310.0,
            z: 0.5,
        },
        yaw: 0.5,
        dimensions: Vector3 {
            x: 4.5,
            y: 1.8,
            z: 1.5,
        },
        has_velocity: true,
        velocity: Vector3 {
            x: 10.0,
            y: -2.0,
            z: 0.0,
        },
        position_covariance: [0.04, 0.0, 0.0, 0.0, 0.04, 0.0, 0.0, 0.0, 0.0],
    };
    let rsu = ORIGIN
        .map_to_geodetic(&Point {
            x: 200.0,
            y: 300.0,
            z: 6.0,
        })
        .unwrap();
    let ctx = CpmContext::road_side_unit(90_001, ORIGIN, rsu, T0);
    let cpm = objects_to_cpm(std::slice::from_ref(&car), &ctx).unwrap();
    let bytes = encode_cpm(&cpm).unwrap();
    assert_eq!(bytes, unhex(CPM_B));
    // The wrapped container is the open type's content: a PerceivedObjectContainer.
    let inner = &cpm.payload.cpm_containers.0 .0[1].container_data;
    let _: twinlink_cits::asn::cpm_objects::PerceivedObjectContainer =
        rasn::uper::decode(inner.as_bytes()).unwrap();
    let back = cpm_to_objects(&decode_cpm(&bytes).unwrap(), &ORIGIN).unwrap();
    assert_eq!(back[0].id, 43);
    assert!((back[0].position.x - 230.0).abs() < 0.006);
    assert!((back[0].position.y - 310.0).abs() < 0.006);
}
