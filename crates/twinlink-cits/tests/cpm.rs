//! CPM: messages built as a road-side unit would, through UPER, into map-frame objects;
//! objects through UPER and back; and the errors.

mod common;

use common::{ORIGIN, T0};
use twinlink_cits::asn::cdd_v2::{
    Altitude, AltitudeConfidence, AltitudeValue, AngleConfidence, CardinalNumber1B, CartesianAngle,
    CartesianAngleValue, CartesianCoordinateLarge, CartesianCoordinateWithConfidence,
    CartesianPosition3dWithConfidence, ConfidenceLevel, CoordinateConfidence,
    DeltaTimeMilliSecondSigned, EulerAnglesWithConfidence, HeadingValue, Identifier2B,
    ItsPduHeader, Latitude, Longitude, MessageId, ObjectClass, ObjectClassDescription,
    ObjectClassWithConfidence, ObjectDimension, ObjectDimensionConfidence, ObjectDimensionValue,
    ObjectPerceptionQuality, OrdinalNumber1B, OtherSubClass, PerceivedObject, PosConfidenceEllipse,
    ReferencePosition, SemiAxisLength, Speed, SpeedConfidence, SpeedValue, StationId, TimestampIts,
    TrafficParticipantType, Velocity3dWithConfidence, VelocityComponent, VelocityComponentValue,
    VelocityPolarWithZ, VruProfileAndSubprofile, VruSubProfilePedestrian,
};
use twinlink_cits::asn::cpm::{
    ConstraintWrappedCpmContainers, CpmContainerId, CpmPayload, ManagementContainer,
    WrappedCpmContainer, WrappedCpmContainers, ORIGINATING_RSU_CONTAINER,
    PERCEIVED_OBJECT_CONTAINER,
};
use twinlink_cits::asn::cpm_objects::{PerceivedObjectContainer, PerceivedObjects};
use twinlink_cits::asn::cpm_originating::OriginatingRsuContainer;
use twinlink_cits::asn::rasn;
use twinlink_cits::asn::rasn::types::Any;
use twinlink_cits::cpm::{
    cpm_reference_time, cpm_to_objects, decode_cpm, encode_cpm, objects_to_cpm, Cpm, CpmContext,
    MAX_OBJECTS_PER_CPM,
};
use twinlink_cits::geo::GeoPoint;
use twinlink_cits::{CitsError, UNSPECIFIED_CONFIDENCE};
use twinlink_msgs::geometry_msgs::msg::{Point, Vector3};
use twinlink_msgs::twin_msgs::msg::DetectedObject;

const T0_ITS: u64 = (1_700_000_000 - 1_072_915_200 + 5) * 1000;

/// The RSU: 200 m east, 300 m north of the map origin, on a 6 m gantry.
fn rsu_position() -> GeoPoint {
    ORIGIN
        .map_to_geodetic(&Point {
            x: 200.0,
            y: 300.0,
            z: 6.0,
        })
        .unwrap()
}

fn coordinate(cm: i32, confidence: u16) -> CartesianCoordinateWithConfidence {
    CartesianCoordinateWithConfidence::new(
        CartesianCoordinateLarge(cm),
        CoordinateConfidence(confidence),
    )
}

/// A CPM with two objects, built field by field from the ASN.1 types as a road-side unit
/// sends it, wrapping its containers as open types.
fn rsu_cpm(reference: &GeoPoint) -> Cpm {
    let pedestrian = PerceivedObject::new(
        Some(Identifier2B(41)),
        DeltaTimeMilliSecondSigned(-100), // measured 100 ms before referenceTime
        CartesianPosition3dWithConfidence::new(coordinate(-1250, 20), coordinate(830, 20), None),
        Some(Velocity3dWithConfidence::polarVelocity(
            VelocityPolarWithZ::new(
                Speed::new(SpeedValue(150), SpeedConfidence(10)),
                CartesianAngle::new(CartesianAngleValue(900), AngleConfidence(20)), // north
                None,
            ),
        )),
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        Some(ObjectPerceptionQuality(12)),
        None,
        Some(ObjectClassDescription(vec![
            ObjectClassWithConfidence::new(
                ObjectClass::vehicleSubClass(TrafficParticipantType(5)), // passenger car
                ConfidenceLevel(30),
            ),
            ObjectClassWithConfidence::new(
                ObjectClass::vruSubClass(VruProfileAndSubprofile::pedestrian(
                    VruSubProfilePedestrian(2), // road worker
                )),
                ConfidenceLevel(65),
            ),
        ])),
        None,
    );
    let debris = PerceivedObject::new(
        None,
        DeltaTimeMilliSecondSigned(0),
        CartesianPosition3dWithConfidence::new(
            coordinate(40_000, 4096),
            coordinate(-2_500, 4096),
            Some(coordinate(-600, 4096)),
        ),
        None,
        None,
        Some(EulerAnglesWithConfidence::new(
            CartesianAngle::new(CartesianAngleValue(450), AngleConfidence(127)),
            None,
            None,
        )),
        None,
        None,
        Some(ObjectDimension::new(
            ObjectDimensionValue(3),
            ObjectDimensionConfidence(2),
        )),
        Some(ObjectDimension::new(
            ObjectDimensionValue(8),
            ObjectDimensionConfidence(2),
        )),
        Some(ObjectDimension::new(
            ObjectDimensionValue(12),
            ObjectDimensionConfidence(2),
        )),
        None,
        None,
        None,
        Some(ObjectClassDescription(vec![
            ObjectClassWithConfidence::new(
                ObjectClass::otherSubClass(OtherSubClass(1)),
                ConfidenceLevel(101), // unavailable
            ),
        ])),
        None,
    );
    let objects = PerceivedObjectContainer::new(
        CardinalNumber1B(2),
        PerceivedObjects(vec![pedestrian, debris]),
    );
    let wrap = |id: CpmContainerId, bytes: Vec<u8>| WrappedCpmContainer::new(id, Any::new(bytes));
    Cpm::new(
        ItsPduHeader::new(OrdinalNumber1B(2), MessageId(14), StationId(90_001)),
        CpmPayload::new(
            ManagementContainer::new(
                TimestampIts(T0_ITS),
                ReferencePosition::new(
                    Latitude((reference.latitude_deg * 1e7).round() as i32),
                    Longitude((reference.longitude_deg * 1e7).round() as i32),
                    PosConfidenceEllipse::new(
                        SemiAxisLength(10),
                        SemiAxisLength(10),
                        HeadingValue(0),
                    ),
                    Altitude::new(
                        AltitudeValue((reference.altitude_m * 100.0).round() as i32),
                        AltitudeConfidence::alt_000_10,
                    ),
                ),
                None,
                None,
            ),
            ConstraintWrappedCpmContainers(WrappedCpmContainers(vec![
                wrap(
                    ORIGINATING_RSU_CONTAINER,
                    rasn::uper::encode(&OriginatingRsuContainer::new(None)).unwrap(),
                ),
                wrap(
                    PERCEIVED_OBJECT_CONTAINER,
                    rasn::uper::encode(&objects).unwrap(),
                ),
            ])),
        ),
    )
}

fn quantized(g: &GeoPoint) -> GeoPoint {
    GeoPoint {
        latitude_deg: (g.latitude_deg * 1e7).round() / 1e7,
        longitude_deg: (g.longitude_deg * 1e7).round() / 1e7,
        altitude_m: (g.altitude_m * 100.0).round() / 100.0,
    }
}

#[test]
fn rsu_cpm_built_from_asn_types_enters_as_objects() {
    let rsu = rsu_position();
    let cpm = rsu_cpm(&rsu);
    let bytes = rasn::uper::encode(&cpm).unwrap();
    // Header: protocolVersion 2, messageId 14 (cpm), stationId 90001.
    assert_eq!(&bytes[..6], &[0x02, 0x0e, 0x00, 0x01, 0x5f, 0x91]);
    let decoded = decode_cpm(&bytes).unwrap();
    assert_eq!(decoded, cpm);
    assert_eq!(cpm_reference_time(&decoded).unwrap(), T0);

    let objects = cpm_to_objects(&decoded, &ORIGIN).unwrap();
    assert_eq!(objects.len(), 2);
    // Expected map positions: the RSU's (quantized) position plus the offsets, in the RSU's
    // tangent plane, converted to map.
    let rsu_q = quantized(&rsu);
    let expect = |e: f64, n: f64, u: f64| {
        ORIGIN
            .geodetic_to_map(&twinlink_cits::geo::enu_to_geodetic(&rsu_q, [e, n, u]))
            .unwrap()
    };

    let p = &objects[0];
    assert_eq!(p.id, 42);
    assert_eq!(p.classification, DetectedObject::CLASS_PEDESTRIAN); // 65 % beats 30 %
    assert!((p.class_confidence - 0.65).abs() < 1e-6);
    assert!((p.existence_probability - 0.8).abs() < 1e-6);
    assert!(p.has_velocity);
    assert!(p.velocity.x.abs() < 1e-3 && (p.velocity.y - 1.5).abs() < 1e-3);
    // Measured 100 ms early while walking north at 1.5 m/s: 15 cm further north now.
    let want = expect(-12.50, 8.30 + 0.15, 0.0);
    assert!(
        (p.position.x - want.x).abs() < 1e-3,
        "{:?} {want:?}",
        p.position
    );
    assert!(
        (p.position.y - want.y).abs() < 1e-3,
        "{:?} {want:?}",
        p.position
    );
    assert!(
        (p.position.z - want.z).abs() < 1e-3,
        "{:?} {want:?}",
        p.position
    );
    // 95 % = 0.20 m -> sigma = 0.102 m.
    let sigma = (p.position_covariance[0] as f64).sqrt();
    assert!((sigma - 0.2 / 1.96).abs() < 1e-6, "{sigma}");
    assert_eq!(p.dimensions, Vector3::default());
    assert_eq!(p.yaw, 0.0);

    let d = &objects[1];
    assert_eq!(d.id, 0);
    assert_eq!(d.classification, DetectedObject::CLASS_STATIC_OBSTACLE);
    assert_eq!(d.class_confidence, UNSPECIFIED_CONFIDENCE);
    assert_eq!(d.existence_probability, UNSPECIFIED_CONFIDENCE);
    assert!(!d.has_velocity);
    let want = expect(400.0, -25.0, -6.0);
    assert!(
        (d.position.x - want.x).abs() < 1e-3,
        "{:?} {want:?}",
        d.position
    );
    assert!(
        (d.position.y - want.y).abs() < 1e-3,
        "{:?} {want:?}",
        d.position
    );
    assert!(
        (d.position.z - want.z).abs() < 1e-3,
        "{:?} {want:?}",
        d.position
    );
    assert!((d.yaw - 45f64.to_radians()).abs() < 1e-3, "{}", d.yaw);
    assert!((d.dimensions.x - 1.2).abs() < 1e-9);
    assert!((d.dimensions.y - 0.8).abs() < 1e-9);
    assert!((d.dimensions.z - 0.3).abs() < 1e-9);
    assert_eq!(d.position_covariance, [0.0; 9]);
}

fn object(id: u32, class: u8, x: f64, y: f64) -> DetectedObject {
    DetectedObject {
        id,
        classification: class,
        class_confidence: 0.87,
        existence_probability: 0.93,
        position: Point { x, y, z: 0.4 },
        yaw: -2.5,
        dimensions: Vector3 {
            x: 4.6,
            y: 1.9,
            z: 1.5,
        },
        has_velocity: true,
        velocity: Vector3 {
            x: -12.34,
            y: 5.67,
            z: 0.0,
        },
        position_covariance: [0.04, 0.0, 0.0, 0.0, 0.09, 0.0, 0.0, 0.0, 0.25],
    }
}

fn ctx() -> CpmContext {
    CpmContext::road_side_unit(90_001, ORIGIN, rsu_position(), T0)
}

fn round_trip(objects: &[DetectedObject], ctx: &CpmContext) -> Vec<DetectedObject> {
    let cpm = objects_to_cpm(objects, ctx).unwrap();
    let bytes = encode_cpm(&cpm).unwrap();
    let back = decode_cpm(&bytes).unwrap();
    assert_eq!(back, cpm);
    cpm_to_objects(&back, &ctx.origin).unwrap()
}

fn assert_close(a: &DetectedObject, b: &DetectedObject) {
    assert_eq!(a.id, b.id);
    assert_eq!(a.classification, b.classification);
    for (x, y) in [
        (a.position.x, b.position.x),
        (a.position.y, b.position.y),
        (a.position.z, b.position.z),
    ] {
        assert!(
            (x - y).abs() < 0.006,
            "{:?} vs {:?}",
            a.position,
            b.position
        );
    }
    assert_eq!(a.has_velocity, b.has_velocity);
    for (x, y) in [
        (a.velocity.x, b.velocity.x),
        (a.velocity.y, b.velocity.y),
        (a.velocity.z, b.velocity.z),
    ] {
        assert!(
            (x - y).abs() < 0.006,
            "{:?} vs {:?}",
            a.velocity,
            b.velocity
        );
    }
    let dyaw = twinlink_cits_angle_diff(a.yaw, b.yaw);
    assert!(dyaw < 0.000_9, "{} vs {}", a.yaw, b.yaw);
    for (x, y) in [
        (a.dimensions.x, b.dimensions.x),
        (a.dimensions.y, b.dimensions.y),
        (a.dimensions.z, b.dimensions.z),
    ] {
        assert!(
            (x - y).abs() <= 0.05 + 1e-9,
            "{:?} vs {:?}",
            a.dimensions,
            b.dimensions
        );
    }
    assert!((a.existence_probability - b.existence_probability).abs() <= 1.0 / 30.0 + 1e-6);
    if a.classification != DetectedObject::CLASS_UNKNOWN {
        assert!((a.class_confidence - b.class_confidence).abs() <= 0.005 + 1e-6);
    }
}

fn twinlink_cits_angle_diff(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(std::f64::consts::TAU);
    d.min(std::f64::consts::TAU - d)
}

#[test]
fn objects_round_trip_through_uper() {
    let objects: Vec<_> = (0..=6)
        .map(|class| {
            object(
                u32::from(class) * 1000,
                class,
                -150.0 + 40.0 * f64::from(class),
                80.0,
            )
        })
        .collect();
    let back = round_trip(&objects, &ctx());
    assert_eq!(back.len(), objects.len());
    for (a, b) in objects.iter().zip(&back) {
        assert_close(a, b);
        // Covariance diagonal: rounded up to the next centimetre of 95 % confidence.
        for k in [0, 4, 8] {
            let s0 = f64::from(a.position_covariance[k]).sqrt();
            let s1 = f64::from(b.position_covariance[k]).sqrt();
            assert!(
                s1 >= s0 - 1e-6 && s1 - s0 <= 0.01 / 1.96 + 1e-6,
                "{s0} {s1}"
            );
        }
    }
    assert_eq!(back[0].class_confidence, 0.0); // CLASS_UNKNOWN is sent without class
}

#[test]
fn vehicle_station_sends_an_originating_vehicle_container() {
    let c = CpmContext {
        station_type: 5,
        station_heading_deg: Some(271.25),
        ..ctx()
    };
    let cpm = objects_to_cpm(&[object(3, DetectedObject::CLASS_CAR, 10.0, 10.0)], &c).unwrap();
    let ids: Vec<u8> = cpm
        .payload
        .cpm_containers
        .0
         .0
        .iter()
        .map(|w| w.container_id.0)
        .collect();
    assert_eq!(ids, vec![1, 5]);
    let back = round_trip(&[object(3, DetectedObject::CLASS_CAR, 10.0, 10.0)], &c);
    assert_close(&object(3, DetectedObject::CLASS_CAR, 10.0, 10.0), &back[0]);
}

#[test]
fn object_limit_is_the_standards() {
    let objects: Vec<_> = (0..MAX_OBJECTS_PER_CPM as u32)
        .map(|i| {
            object(
                i + 1,
                DetectedObject::CLASS_CAR,
                f64::from(i % 20),
                f64::from(i / 20),
            )
        })
        .collect();
    let back = round_trip(&objects, &ctx());
    assert_eq!(back.len(), 255);
    let mut more = objects;
    more.push(object(999, DetectedObject::CLASS_CAR, 0.0, 0.0));
    let e = objects_to_cpm(&more, &ctx()).unwrap_err();
    assert_eq!(
        e,
        CitsError::TooManyObjects {
            count: 256,
            max: 255
        }
    );
    assert!(e.to_string().contains("at most 255"), "{e}");
}

fn expect_err(r: Result<impl std::fmt::Debug, CitsError>, needle: &str) {
    let e = r.expect_err("expected an error");
    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
}

#[test]
fn bad_objects_are_refused_naming_the_field() {
    let c = ctx();
    let ok = object(1, DetectedObject::CLASS_CAR, 0.0, 0.0);
    let one = |f: &dyn Fn(&mut DetectedObject)| {
        let mut o = ok.clone();
        f(&mut o);
        objects_to_cpm(&[ok.clone(), o], &c)
    };
    expect_err(one(&|o| o.id = 65_537), "objects[1].id");
    expect_err(one(&|o| o.position.x = f64::NAN), "objects[1].position.x");
    expect_err(one(&|o| o.position.y = 2000.0), "objects[1].position.y");
    expect_err(one(&|o| o.velocity.x = 170.0), "objects[1].velocity.x");
    expect_err(
        one(&|o| o.velocity.z = f64::INFINITY),
        "objects[1].velocity.z",
    );
    expect_err(one(&|o| o.yaw = f64::NAN), "objects[1].yaw");
    expect_err(one(&|o| o.dimensions.y = -1.0), "objects[1].dimensions.y");
    expect_err(one(&|o| o.classification = 9), "objects[1].classification");
    expect_err(
        one(&|o| o.class_confidence = -0.1),
        "objects[1].class_confidence",
    );
    expect_err(
        one(&|o| o.existence_probability = f32::NAN),
        "objects[1].existence_probability",
    );
    expect_err(
        one(&|o| o.position_covariance[4] = -1.0),
        "objects[1].position_covariance[4]",
    );
    // Unmeasured velocity is not checked: it is not sent.
    assert!(one(&|o| {
        o.has_velocity = false;
        o.velocity.x = f64::NAN;
    })
    .is_ok());
    let mut c2 = ctx();
    c2.reference_position.latitude_deg = 91.0;
    expect_err(objects_to_cpm(&[], &c2), "ctx.reference_position.latitude");
    let mut c4 = ctx();
    c4.station_type = 16;
    expect_err(objects_to_cpm(&[], &c4), "ctx.station_type");
    let mut c3 = ctx();
    c3.station_type = 5;
    c3.station_heading_deg = Some(f64::NAN);
    expect_err(objects_to_cpm(&[], &c3), "ctx.station_heading_deg");
}

#[test]
fn bad_cpms_are_refused_naming_the_field() {
    let good = rsu_cpm(&rsu_position());
    let mut c = good.clone();
    c.header.message_id = MessageId(1);
    expect_err(cpm_to_objects(&c, &ORIGIN), "header.messageId");
    let mut c = good.clone();
    c.header.protocol_version = OrdinalNumber1B(1);
    expect_err(cpm_to_objects(&c, &ORIGIN), "header.protocolVersion");
    let mut c = good.clone();
    c.payload.management_container.reference_position.longitude = Longitude(1_800_000_001);
    expect_err(cpm_to_objects(&c, &ORIGIN), "referencePosition.longitude");
    let mut c = good.clone();
    c.payload.cpm_containers.0 .0[0].container_id = CpmContainerId(9);
    expect_err(cpm_to_objects(&c, &ORIGIN), "cpmContainers[0].containerId");
    let mut c = good.clone();
    let dup = c.payload.cpm_containers.0 .0[1].clone();
    c.payload.cpm_containers.0 .0.push(dup);
    expect_err(cpm_to_objects(&c, &ORIGIN), "more than once");
    let mut c = good.clone();
    let vehicle = WrappedCpmContainer::new(
        CpmContainerId(1),
        Any::new(
            rasn::uper::encode(
                &twinlink_cits::asn::cpm_originating::OriginatingVehicleContainer::new(
                    twinlink_cits::asn::cdd_v2::Wgs84Angle::new(
                        twinlink_cits::asn::cdd_v2::Wgs84AngleValue(3601),
                        twinlink_cits::asn::cdd_v2::Wgs84AngleConfidence(127),
                    ),
                    None,
                    None,
                    None,
                ),
            )
            .unwrap(),
        ),
    );
    c.payload.cpm_containers.0 .0.push(vehicle);
    expect_err(cpm_to_objects(&c, &ORIGIN), "originating RSU");
    let mut c = good.clone();
    c.payload.cpm_containers.0 .0[1].container_data = Any::new(vec![0xff, 0x00]);
    expect_err(
        cpm_to_objects(&c, &ORIGIN),
        "cpmContainers[1].containerData",
    );

    // Object fields: re-wrap an edited object container.
    let edit = |f: &dyn Fn(&mut PerceivedObject)| {
        let mut c = good.clone();
        let w = &mut c.payload.cpm_containers.0 .0[1];
        let mut objects: PerceivedObjectContainer =
            rasn::uper::decode(w.container_data.as_bytes()).unwrap();
        f(&mut objects.perceived_objects.0[0]);
        w.container_data = Any::new(rasn::uper::encode(&objects).unwrap());
        cpm_to_objects(&c, &ORIGIN)
    };
    expect_err(
        edit(&|o| o.position.x_coordinate.value = CartesianCoordinateLarge(131_071)),
        "perceivedObjects[0].position.xCoordinate",
    );
    expect_err(
        edit(&|o| {
            o.velocity = Some(Velocity3dWithConfidence::cartesianVelocity(
                twinlink_cits::asn::cdd_v2::VelocityCartesian::new(
                    VelocityComponent::new(VelocityComponentValue(16_382), SpeedConfidence(1)),
                    VelocityComponent::new(VelocityComponentValue(0), SpeedConfidence(1)),
                    None,
                ),
            ))
        }),
        "perceivedObjects[0].velocity.xVelocity",
    );
    expect_err(
        edit(&|o| {
            o.classification = Some(ObjectClassDescription(vec![
                ObjectClassWithConfidence::new(
                    ObjectClass::otherSubClass(OtherSubClass(77)),
                    ConfidenceLevel(50),
                ),
            ]))
        }),
        "otherSubClass",
    );
    expect_err(
        edit(&|o| {
            o.angles = Some(EulerAnglesWithConfidence::new(
                CartesianAngle::new(CartesianAngleValue(3600), AngleConfidence(127)),
                None,
                None,
            ))
        }),
        "angles.zAngle",
    );
    // An unavailable velocity component means "no velocity", not an error.
    let objects = edit(&|o| {
        o.velocity = Some(Velocity3dWithConfidence::cartesianVelocity(
            twinlink_cits::asn::cdd_v2::VelocityCartesian::new(
                VelocityComponent::new(VelocityComponentValue(16_383), SpeedConfidence(127)),
                VelocityComponent::new(VelocityComponentValue(100), SpeedConfidence(127)),
                None,
            ),
        ))
    })
    .unwrap();
    assert!(!objects[0].has_velocity);
}

#[test]
fn a_cpm_without_objects_shares_nothing() {
    let cpm = objects_to_cpm(&[], &ctx()).unwrap();
    let back = decode_cpm(&encode_cpm(&cpm).unwrap()).unwrap();
    assert!(cpm_to_objects(&back, &ORIGIN).unwrap().is_empty());
    let mut c = back;
    c.payload.cpm_containers.0 .0.truncate(1); // only the originating container
    assert!(cpm_to_objects(&c, &ORIGIN).unwrap().is_empty());
}

#[test]
fn bad_bytes_are_refused() {
    let bytes = encode_cpm(&objects_to_cpm(&[object(1, 1, 0.0, 0.0)], &ctx()).unwrap()).unwrap();
    expect_err(decode_cpm(&bytes[..bytes.len() - 3]), "CPM");
    let mut longer = bytes.clone();
    longer.push(0x55);
    expect_err(decode_cpm(&longer), "left over");
}
