//! DENM: messages built as a road-side unit would, through UPER, into incidents; incidents
//! through UPER and back; and the errors.

mod common;

use common::{ms, time, ORIGIN, T0};
use twinlink_cits::asn::cdd_v1::{
    ActionID, Altitude, AltitudeConfidence, AltitudeValue, CauseCode, CauseCodeType, HeadingValue,
    InformationQuality, ItsPduHeader, LanePosition, Latitude, Longitude, PosConfidenceEllipse,
    ReferencePosition, RelevanceDistance, SemiAxisLength, SequenceNumber, StationID, StationType,
    SubCauseCodeType, TimestampIts, ValidityDuration,
};
use twinlink_cits::asn::denm::{
    AlacarteContainer, DecentralizedEnvironmentalNotificationMessage, ManagementContainer,
    SituationContainer, Termination,
};
use twinlink_cits::denm::{
    decode_denm, denm_to_incident, denm_to_incident_with_lanes, encode_denm, incident_to_denm,
    station_type, Denm, DenmContext, LaneNumbering, MAX_VALIDITY_S,
};
use twinlink_cits::geo::GeoPoint;
use twinlink_cits::time::ros_to_its;
use twinlink_cits::{CitsError, UNSPECIFIED_CONFIDENCE};
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::twin_msgs::msg::Incident;

/// ITS timestamp of 2023-11-14T22:13:20Z (UTC ms since 2004 + 5 leap seconds).
const T0_ITS: u64 = (1_700_000_000 - 1_072_915_200 + 5) * 1000;

/// Management container of road-side unit 777's event 12, detected at T0, valid 120 s.
fn management(lat: i32, lon: i32, alt: i32) -> ManagementContainer {
    ManagementContainer::new(
        ActionID::new(StationID(777), SequenceNumber(12)),
        TimestampIts(T0_ITS),
        TimestampIts(T0_ITS + 500),
        None,
        ReferencePosition::new(
            Latitude(lat),
            Longitude(lon),
            PosConfidenceEllipse::new(SemiAxisLength(500), SemiAxisLength(300), HeadingValue(900)),
            Altitude::new(AltitudeValue(alt), AltitudeConfidence::alt_001_00),
        ),
        Some(RelevanceDistance::lessThan200m),
        None,
        ValidityDuration(120),
        None,
        StationType(station_type::ROAD_SIDE_UNIT),
    )
}

/// A stationary-vehicle DENM as a road-side unit sends it: built field by field from the
/// ASN.1 types, UPER-encoded, then taken in.
#[test]
fn rsu_denm_built_from_asn_types_enters_as_incident() {
    // 100 m north and 50 m east of the origin, 2 m above it.
    let event = ORIGIN
        .map_to_geodetic(&Point {
            x: 50.0,
            y: 100.0,
            z: 2.0,
        })
        .unwrap();
    let lat = (event.latitude_deg * 1e7).round() as i32;
    let lon = (event.longitude_deg * 1e7).round() as i32;
    let alt = (event.altitude_m * 100.0).round() as i32;
    let denm = Denm::new(
        ItsPduHeader::new(2, 1, StationID(777)),
        DecentralizedEnvironmentalNotificationMessage::new(
            management(lat, lon, alt),
            Some(SituationContainer::new(
                InformationQuality(5),
                CauseCode::new(CauseCodeType(94), SubCauseCodeType(2)), // vehicleBreakdown
                None,
                None,
            )),
            None,
            Some(AlacarteContainer::new(
                Some(LanePosition(2)), // second lane from outside
                None,
                None,
                None,
                None,
                None,
            )),
        ),
    );
    let bytes = twinlink_cits::asn::rasn::uper::encode(&denm).unwrap();
    // The header is octet-aligned: protocolVersion 2, messageID 1, stationID 777.
    assert_eq!(&bytes[..6], &[0x02, 0x01, 0x00, 0x00, 0x03, 0x09]);

    let decoded = decode_denm(&bytes).unwrap();
    assert_eq!(decoded, denm);
    let inc = denm_to_incident(&decoded, &ORIGIN).unwrap();
    assert_eq!(inc.incident_id, "denm-777-12");
    assert_eq!(inc.incident_kind, Incident::INCIDENT_STALLED_VEHICLE);
    assert!((inc.position.x - 50.0).abs() < 0.01, "{:?}", inc.position);
    assert!((inc.position.y - 100.0).abs() < 0.01, "{:?}", inc.position);
    assert!((inc.position.z - 2.0).abs() < 0.006, "{:?}", inc.position);
    assert_eq!(inc.lane_index, 1); // right-hand traffic: second from the right
    assert_eq!(inc.extent, 200.0);
    assert!((inc.confidence - 4.0 / 6.0).abs() < 1e-6);
    assert_eq!(inc.detected, T0);
    assert_eq!(inc.expires, time(T0.sec + 120, 0));
    assert_eq!(inc.segment_id, "");
    assert_eq!(inc.s, 0.0);

    let lht = denm_to_incident_with_lanes(
        &decoded,
        &ORIGIN,
        LaneNumbering::LeftHandTraffic { driving_lanes: 3 },
    )
    .unwrap();
    assert_eq!(lht.lane_index, 1); // second from the left of three = middle
}

fn incident(kind: u8) -> Incident {
    Incident {
        incident_id: "hazard-17".into(),
        incident_kind: kind,
        position: Point {
            x: -312.25,
            y: 1204.5,
            z: -3.5,
        },
        segment_id: "A9-north-12".into(),
        s: 812.0,
        lane_index: 0,
        extent: 120.0,
        confidence: 0.8,
        detected: time(T0.sec - 30, 123_456_789),
        expires: time(T0.sec + 600, 0),
    }
}

fn ctx() -> DenmContext {
    DenmContext {
        sequence_number: 99,
        ..DenmContext::road_side_unit(4242, ORIGIN, T0)
    }
}

fn round_trip(inc: &Incident, ctx: &DenmContext) -> Incident {
    let denm = incident_to_denm(inc, ctx).unwrap();
    let bytes = encode_denm(&denm).unwrap();
    let back = decode_denm(&bytes).unwrap();
    assert_eq!(back, denm);
    denm_to_incident_with_lanes(&back, &ctx.origin, ctx.lanes).unwrap()
}

#[test]
fn every_kind_round_trips_through_uper() {
    for kind in 1..=6 {
        let inc = incident(kind);
        let back = round_trip(&inc, &ctx());
        assert_eq!(back.incident_kind, kind, "kind {kind}");
        assert_eq!(back.incident_id, "denm-4242-99");
        assert!((back.position.x - inc.position.x).abs() < 0.01);
        assert!((back.position.y - inc.position.y).abs() < 0.01);
        assert!((back.position.z - inc.position.z).abs() < 0.006);
        assert_eq!(back.lane_index, 0);
        assert_eq!(back.extent, 200.0); // lessThan200m
        assert!((back.confidence - inc.confidence).abs() <= 1.0 / 12.0 + 1e-6);
        assert_eq!(back.detected, time(T0.sec - 30, 123_000_000));
        // 630 s of validity (rounded up from 629.877 s).
        assert_eq!(back.expires, time(T0.sec + 600, 123_000_000));
    }
}

#[test]
fn incident_from_a_denm_keeps_its_action_id_on_the_way_out() {
    let inc = Incident {
        incident_id: "denm-777-12".into(),
        ..incident(Incident::INCIDENT_ACCIDENT)
    };
    let denm = incident_to_denm(&inc, &ctx()).unwrap();
    let a = &denm.denm.management.action_id;
    assert_eq!((a.originating_station_id.0, a.sequence_number.0), (777, 12));
    assert_eq!(denm.header.station_id.0, 4242);
    assert_eq!(round_trip(&inc, &ctx()).incident_id, "denm-777-12");
}

#[test]
fn lanes_are_counted_from_the_outside() {
    let mut inc = incident(Incident::INCIDENT_DEBRIS);
    inc.lane_index = 2;
    let denm = incident_to_denm(&inc, &ctx()).unwrap();
    let lane = denm.denm.alacarte.as_ref().unwrap().lane_position.clone();
    assert_eq!(lane, Some(LanePosition(3)));
    assert_eq!(round_trip(&inc, &ctx()).lane_index, 2);

    let lht = DenmContext {
        lanes: LaneNumbering::LeftHandTraffic { driving_lanes: 4 },
        ..ctx()
    };
    let denm = incident_to_denm(&inc, &lht).unwrap();
    let lane = denm.denm.alacarte.as_ref().unwrap().lane_position.clone();
    assert_eq!(lane, Some(LanePosition(2)));
    assert_eq!(round_trip(&inc, &lht).lane_index, 2);

    inc.lane_index = -1;
    let denm = incident_to_denm(&inc, &ctx()).unwrap();
    assert!(denm.denm.alacarte.is_none());
    assert_eq!(round_trip(&inc, &ctx()).lane_index, -1);
}

#[test]
fn lane_closure_is_roadworks_with_closed_lanes() {
    let inc = incident(Incident::INCIDENT_LANE_CLOSURE);
    let denm = incident_to_denm(&inc, &ctx()).unwrap();
    let s = denm.denm.situation.as_ref().unwrap();
    assert_eq!(s.event_type.cause_code.0, 3);
    let rw = denm.denm.alacarte.as_ref().unwrap().road_works.as_ref();
    assert!(rw.unwrap().closed_lanes.is_some());
    let denm = incident_to_denm(&incident(Incident::INCIDENT_ROADWORKS), &ctx()).unwrap();
    assert!(denm.denm.alacarte.as_ref().unwrap().road_works.is_none());
}

#[test]
fn validity_is_clamped_to_a_day_and_no_expiry_is_a_day() {
    let mut inc = incident(Incident::INCIDENT_CONGESTION);
    inc.expires = time(0, 0);
    let denm = incident_to_denm(&inc, &ctx()).unwrap();
    assert_eq!(denm.denm.management.validity_duration.0, MAX_VALIDITY_S);
    inc.expires = time(inc.detected.sec + 3 * 86_400, 0);
    let denm = incident_to_denm(&inc, &ctx()).unwrap();
    assert_eq!(denm.denm.management.validity_duration.0, MAX_VALIDITY_S);
    let back = round_trip(&inc, &ctx());
    assert_eq!(ms(&back.expires) - ms(&back.detected), 86_400_000);
    // Detection time zero: the reference time stands in.
    inc.detected = time(0, 0);
    inc.expires = time(0, 0);
    let denm = incident_to_denm(&inc, &ctx()).unwrap();
    assert_eq!(
        denm.denm.management.detection_time.0,
        ros_to_its(&T0).unwrap()
    );
}

#[test]
fn a_terminated_denm_becomes_an_expired_incident() {
    let mut denm = incident_to_denm(&incident(Incident::INCIDENT_ACCIDENT), &ctx()).unwrap();
    denm.denm.management.termination = Some(Termination::isCancellation);
    let inc =
        denm_to_incident(&decode_denm(&encode_denm(&denm).unwrap()).unwrap(), &ORIGIN).unwrap();
    assert_eq!(inc.expires, T0);
    assert_eq!(inc.incident_kind, Incident::INCIDENT_ACCIDENT);
    // A cancellation may omit the situation: the kind is then unknown.
    denm.denm.situation = None;
    let inc = denm_to_incident(&denm, &ORIGIN).unwrap();
    assert_eq!(inc.incident_kind, Incident::INCIDENT_UNKNOWN);
    assert_eq!(inc.confidence, UNSPECIFIED_CONFIDENCE);
    assert_eq!(inc.incident_id, "denm-4242-99");
}

#[test]
fn unavailable_altitude_takes_the_origins() {
    let mut denm = incident_to_denm(&incident(Incident::INCIDENT_DEBRIS), &ctx()).unwrap();
    denm.denm.management.event_position.altitude.altitude_value = AltitudeValue(800_001);
    let inc = denm_to_incident(&denm, &ORIGIN).unwrap();
    let g = ORIGIN.map_to_geodetic(&inc.position).unwrap();
    assert!((g.altitude_m - ORIGIN.altitude_m).abs() < 1e-6, "{g:?}");
}

fn expect_err(r: Result<impl std::fmt::Debug, CitsError>, needle: &str) {
    let e = r.expect_err("expected an error");
    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
}

#[test]
fn bad_incidents_are_refused_naming_the_field() {
    let c = ctx();
    expect_err(
        incident_to_denm(&incident(Incident::INCIDENT_UNKNOWN), &c),
        "incident_kind",
    );
    expect_err(incident_to_denm(&incident(42), &c), "incident_kind");
    let mut inc = incident(Incident::INCIDENT_DEBRIS);
    inc.position.y = f64::NAN;
    expect_err(incident_to_denm(&inc, &c), "position.y");
    let mut inc = incident(Incident::INCIDENT_DEBRIS);
    inc.confidence = 1.5;
    expect_err(incident_to_denm(&inc, &c), "confidence");
    let mut inc = incident(Incident::INCIDENT_DEBRIS);
    inc.extent = -3.0;
    expect_err(incident_to_denm(&inc, &c), "extent");
    let mut inc = incident(Incident::INCIDENT_DEBRIS);
    inc.lane_index = -2;
    expect_err(incident_to_denm(&inc, &c), "lane_index");
    inc.lane_index = 14;
    expect_err(incident_to_denm(&inc, &c), "lane_index");
    let mut inc = incident(Incident::INCIDENT_DEBRIS);
    inc.expires = time(inc.detected.sec - 1, 0);
    expect_err(incident_to_denm(&inc, &c), "expires");
    let mut inc = incident(Incident::INCIDENT_DEBRIS);
    inc.detected = time(1_000_000_000, 0); // 2001
    expect_err(incident_to_denm(&inc, &c), "detected");
    let mut inc = incident(Incident::INCIDENT_DEBRIS);
    inc.position.z = 9000.0;
    expect_err(incident_to_denm(&inc, &c), "position.altitude");
    let mut c2 = ctx();
    c2.station_type = 13;
    expect_err(incident_to_denm(&incident(1), &c2), "station_type");
    let mut c3 = ctx();
    c3.origin.latitude_deg = 95.0;
    expect_err(incident_to_denm(&incident(1), &c3), "origin.latitude");
}

#[test]
fn bad_denms_are_refused_naming_the_field() {
    let good = incident_to_denm(&incident(Incident::INCIDENT_ACCIDENT), &ctx()).unwrap();

    let mut d = good.clone();
    d.header.message_id = 2;
    expect_err(denm_to_incident(&d, &ORIGIN), "header.messageID");
    let mut d = good.clone();
    d.header.protocol_version = 1;
    expect_err(denm_to_incident(&d, &ORIGIN), "header.protocolVersion");
    let mut d = good.clone();
    d.denm.situation.as_mut().unwrap().event_type =
        CauseCode::new(CauseCodeType(97), SubCauseCodeType(0)); // collisionRisk
    expect_err(denm_to_incident(&d, &ORIGIN), "causeCode");
    let mut d = good.clone();
    d.denm.situation = None;
    expect_err(denm_to_incident(&d, &ORIGIN), "denm.situation");
    let mut d = good.clone();
    d.denm.management.event_position.latitude = Latitude(900_000_001);
    expect_err(
        denm_to_incident(&d, &ORIGIN),
        "eventPosition.latitude: unavailable",
    );
    let mut d = good.clone();
    d.denm.management.event_position.longitude = Longitude(-1_800_000_000);
    expect_err(denm_to_incident(&d, &ORIGIN), "eventPosition.longitude");
    let mut d = good.clone();
    d.denm.management.event_position.altitude.altitude_value = AltitudeValue(800_000);
    expect_err(denm_to_incident(&d, &ORIGIN), "altitudeValue");
    let mut d = good.clone();
    d.denm.management.station_type = StationType(200);
    expect_err(denm_to_incident(&d, &ORIGIN), "stationType");
    let mut d = good.clone();
    d.denm.alacarte = Some(AlacarteContainer::new(
        Some(LanePosition(5)),
        None,
        None,
        None,
        None,
        None,
    ));
    expect_err(
        denm_to_incident_with_lanes(
            &d,
            &ORIGIN,
            LaneNumbering::LeftHandTraffic { driving_lanes: 3 },
        ),
        "lanePosition",
    );
    // Values outside the ASN.1 constraints do not even encode.
    let mut d = good.clone();
    d.denm.situation.as_mut().unwrap().information_quality = InformationQuality(9);
    assert!(matches!(encode_denm(&d), Err(CitsError::Encode { .. })));
    expect_err(denm_to_incident(&d, &ORIGIN), "informationQuality");
}

#[test]
fn bad_bytes_are_refused() {
    let bytes = encode_denm(&incident_to_denm(&incident(1), &ctx()).unwrap()).unwrap();
    expect_err(decode_denm(&bytes[..bytes.len() / 2]), "DENM");
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0, 0]);
    expect_err(decode_denm(&longer), "left over");
    expect_err(decode_denm(&[]), "DENM");
}

#[test]
fn origin_and_event_far_apart() {
    // An RSU 20 km away from the map origin: still exact to the centimetre.
    let far = GeoPoint {
        latitude_deg: ORIGIN.latitude_deg + 0.18,
        longitude_deg: ORIGIN.longitude_deg - 0.1,
        altitude_m: 480.0,
    };
    let p = ORIGIN.geodetic_to_map(&far).unwrap();
    let mut inc = incident(Incident::INCIDENT_CONGESTION);
    inc.position = p.clone();
    let back = round_trip(&inc, &ctx());
    assert!((back.position.x - p.x).abs() < 0.01);
    assert!((back.position.y - p.y).abs() < 0.01);
    assert!((back.position.z - p.z).abs() < 0.006);
}
