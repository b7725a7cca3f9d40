//! Shared objects <-> CPM (ETSI TS 103 324 v2.1.1, `protocolVersion` 2, with the
//! ETSI-ITS-CDD of ETSI TS 102 894-2 v2.2.1).
//!
//! twinlink objects are in the "map" frame; a CPM gives each object relative to its
//! reference position (the sending station's position), in the east-north-up tangent plane
//! there ("x-axis East, y-axis North, z-axis vertical", TS 103 324). The conversion goes
//! through WGS84 both ways (see [`crate::geo`]), so map origin and reference position may be
//! kilometres apart. The field-by-field mapping is tabulated in the crate's README; the doc
//! comments of [`objects_to_cpm`] and [`cpm_to_objects`] summarize it.
//! CPMs of ETSI TR 103 562 (the pre-standard "CPM v1", `protocolVersion` 1) are not decoded.

use c_its_parser::standards::cdd_2_2_1::etsi_its_cdd::{
    Altitude, AltitudeConfidence, AltitudeValue, HeadingValue, Latitude, Longitude,
    PosConfidenceEllipse, ReferencePosition, SemiAxisLength,
};
use c_its_parser::standards::cdd_2_2_1::etsi_its_cdd::{
    AngleConfidence, CardinalNumber1B, CartesianAngle, CartesianAngleValue,
    CartesianCoordinateLarge, CartesianCoordinateWithConfidence, CartesianPosition3dWithConfidence,
    ConfidenceLevel, CoordinateConfidence, DeltaTimeMilliSecondSigned, EulerAnglesWithConfidence,
    Identifier2B, ItsPduHeader, MessageId, ObjectClass, ObjectClassDescription,
    ObjectClassWithConfidence, ObjectDimension, ObjectDimensionConfidence, ObjectDimensionValue,
    ObjectPerceptionQuality, OrdinalNumber1B, OtherSubClass, PerceivedObject, SpeedConfidence,
    StationId, TimestampIts, TrafficParticipantType, Velocity3dWithConfidence, VelocityCartesian,
    VelocityComponent, VelocityComponentValue, VruProfileAndSubprofile, VruSubProfileBicyclist,
    VruSubProfileMotorcyclist, VruSubProfilePedestrian, Wgs84Angle, Wgs84AngleConfidence,
    Wgs84AngleValue,
};
use c_its_parser::standards::cpm_2_1_1::cpm_originating_station_containers::{
    OriginatingRsuContainer, OriginatingVehicleContainer,
};
use c_its_parser::standards::cpm_2_1_1::cpm_pdu_descriptions::{
    ConstraintWrappedCpmContainers, CpmContainerId, CpmPayload, ManagementContainer,
    WrappedCpmContainer, WrappedCpmContainers, ORIGINATING_RSU_CONTAINER,
    ORIGINATING_VEHICLE_CONTAINER, PERCEIVED_OBJECT_CONTAINER, PERCEPTION_REGION_CONTAINER,
    SENSOR_INFORMATION_CONTAINER,
};
use c_its_parser::standards::cpm_2_1_1::cpm_perceived_object_container::{
    PerceivedObjectContainer, PerceivedObjects,
};
use c_its_parser::standards::cpm_2_1_1::cpm_perception_region_container::PerceptionRegionContainer;
use c_its_parser::standards::cpm_2_1_1::cpm_sensor_information_container::SensorInformationContainer;
use rasn::types::Any;
use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::geometry_msgs::msg::{Point, Vector3};
use twinlink_msgs::twin_msgs::msg::DetectedObject;

use crate::denm::geo_of_reference_position;
use crate::geo::{
    enu_to_geodetic, geodetic_to_enu, map_coordinates, rotate_enu, GeoOrigin, GeoPoint,
};
use crate::quant::{
    angle_to_decidegrees, decidegrees_to_angle, finite, normalize_angle, quantize, unit_interval,
};
use crate::time::{its_to_ros_named, ros_to_its_named};
use crate::{uper_decode, uper_encode, CitsError, UNSPECIFIED_CONFIDENCE};

/// A CPM: ITS PDU header and payload (TS 103 324 v2.1.1).
pub type Cpm =
    c_its_parser::standards::cpm_2_1_1::cpm_pdu_descriptions::CollectivePerceptionMessage;

/// `ItsPduHeader.protocolVersion` of TS 103 324 v2.1.1 CPMs.
pub const CPM_PROTOCOL_VERSION: u8 = 2;
/// `ItsPduHeader.messageId` of a CPM.
pub const CPM_MESSAGE_ID: u8 = 14;
/// Most perceived objects one CPM carries (`PerceivedObjects`, SIZE(0..255)).
pub const MAX_OBJECTS_PER_CPM: usize = 255;
/// Largest twinlink object id a CPM can carry: CPM `objectId` 0..=65535 is twinlink id
/// 1..=65536 (twinlink id 0 means "no identity" and is sent without `objectId`).
pub const MAX_OBJECT_ID: u32 = 65_536;
/// Largest offset of an object from the reference position, per axis \[m\]
/// (`CartesianCoordinateLarge`, 0.01 m, without its two out-of-range values).
pub const MAX_OFFSET_M: f64 = 1310.70;
/// Largest velocity component \[m/s\] (`VelocityComponentValue`, 0.01 m/s, without its
/// out-of-range and unavailable values).
pub const MAX_VELOCITY_MPS: f64 = 163.81;
/// Object dimensions above this \[m\] are sent as `ObjectDimensionValue` 255 ("out of range",
/// more than 25.4 m) and read back as 25.5 m.
pub const MAX_DIMENSION_M: f64 = 25.4;

/// What a CPM needs beyond the objects: who sends it, from where, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct CpmContext {
    /// Sending station (`ItsPduHeader.stationId`).
    pub station_id: u32,
    /// Sending station's type (`TrafficParticipantType`): 15 (road-side unit) sends an
    /// originating RSU container, any other type an originating vehicle container.
    pub station_type: u8,
    /// WGS84 position of the "map" frame's origin.
    pub origin: GeoOrigin,
    /// `referenceTime`: when the objects' states hold.
    pub reference_time: Time,
    /// `referencePosition`: the sending station's position; objects are sent relative to it
    /// and must lie within [`MAX_OFFSET_M`] of it on each axis. [`GeoOrigin::map_to_geodetic`]
    /// gives it for a station whose position is known in the map frame.
    pub reference_position: GeoPoint,
    /// Vehicle orientation \[deg\], clockwise from WGS84 north (`orientationAngle` of the
    /// originating vehicle container); `None` sends "unavailable". Unused for an RSU.
    pub station_heading_deg: Option<f64>,
}

impl CpmContext {
    /// A context for a road-side unit (twinlink's regional service).
    pub fn road_side_unit(
        station_id: u32,
        origin: GeoOrigin,
        reference_position: GeoPoint,
        reference_time: Time,
    ) -> Self {
        CpmContext {
            station_id,
            station_type: ROAD_SIDE_UNIT,
            origin,
            reference_time,
            reference_position,
            station_heading_deg: None,
        }
    }
}

/// `TrafficParticipantType` of a road-side unit.
pub const ROAD_SIDE_UNIT: u8 = 15;

/// The `ObjectClass` a twinlink class is sent as; `None` for `CLASS_UNKNOWN` (sent without
/// classification).
pub fn object_class_for(class: u8) -> Result<Option<ObjectClass>, CitsError> {
    Ok(Some(match class {
        DetectedObject::CLASS_UNKNOWN => return Ok(None),
        DetectedObject::CLASS_CAR => ObjectClass::vehicleSubClass(TrafficParticipantType(5)),
        DetectedObject::CLASS_TRUCK => ObjectClass::vehicleSubClass(TrafficParticipantType(8)),
        DetectedObject::CLASS_MOTORCYCLE => ObjectClass::vruSubClass(
            VruProfileAndSubprofile::motorcyclist(VruSubProfileMotorcyclist(2)),
        ),
        DetectedObject::CLASS_BICYCLE => ObjectClass::vruSubClass(
            VruProfileAndSubprofile::bicyclistAndLightVruVehicle(VruSubProfileBicyclist(1)),
        ),
        DetectedObject::CLASS_PEDESTRIAN => ObjectClass::vruSubClass(
            VruProfileAndSubprofile::pedestrian(VruSubProfilePedestrian(1)),
        ),
        DetectedObject::CLASS_STATIC_OBSTACLE => ObjectClass::otherSubClass(OtherSubClass(1)),
        c => {
            return Err(CitsError::unsupported(
                "classification",
                c,
                "not a CLASS_* constant",
            ))
        }
    }))
}

/// The twinlink class of a received `ObjectClass`. Classes twinlink has no counterpart for
/// (animals, VRU groups, unknown) become `CLASS_UNKNOWN`; reserved codes are errors.
pub fn class_for_object_class(c: &ObjectClass, field: &str) -> Result<u8, CitsError> {
    use DetectedObject as D;
    Ok(match c {
        // The CDD constrains vehicleSubClass to (unknown|passengerCar..tram|agricultural):
        // pedestrians, cycles, mopeds, motorcycles, light VRU vehicles and animals are VRUs
        // and go in vruSubClass.
        ObjectClass::vehicleSubClass(TrafficParticipantType(t)) => match t {
            0 => D::CLASS_UNKNOWN,
            5 => D::CLASS_CAR,
            6..=11 | 14 => D::CLASS_TRUCK,
            t => {
                return Err(CitsError::unsupported(
                    format!("{field}.vehicleSubClass"),
                    *t,
                    "not in (unknown|passengerCar..tram|agricultural) = 0, 5..=11, 14",
                ))
            }
        },
        ObjectClass::vruSubClass(v) => match v {
            VruProfileAndSubprofile::pedestrian(_) => D::CLASS_PEDESTRIAN,
            VruProfileAndSubprofile::bicyclistAndLightVruVehicle(_) => D::CLASS_BICYCLE,
            VruProfileAndSubprofile::motorcyclist(_) => D::CLASS_MOTORCYCLE,
            VruProfileAndSubprofile::animal(_) => D::CLASS_UNKNOWN,
            _ => {
                return Err(CitsError::unsupported(
                    format!("{field}.vruSubClass"),
                    -1,
                    "unknown VRU profile (extension)",
                ))
            }
        },
        ObjectClass::groupSubClass(_) => D::CLASS_UNKNOWN,
        ObjectClass::otherSubClass(OtherSubClass(o)) => match o {
            0 => D::CLASS_UNKNOWN,
            1..=3 => D::CLASS_STATIC_OBSTACLE,
            o => {
                return Err(CitsError::unsupported(
                    format!("{field}.otherSubClass"),
                    *o,
                    "reserved (defined: 0..=3)",
                ))
            }
        },
        _ => {
            return Err(CitsError::unsupported(
                field.to_string(),
                -1,
                "unknown ObjectClass alternative (extension)",
            ))
        }
    })
}

/// Quantized reference position (CDD v2) and the WGS84 point it stands for.
fn reference_position(g: &GeoPoint) -> Result<(ReferencePosition, GeoPoint), CitsError> {
    let field = "ctx.reference_position";
    g.validate_as_origin(field)?;
    let lat = quantize(
        &format!("{field}.latitude"),
        g.latitude_deg,
        1e-7,
        -900_000_000,
        900_000_000,
        "[-90, 90] deg",
    )?;
    let mut lon = quantize(
        &format!("{field}.longitude"),
        g.longitude_deg,
        1e-7,
        -1_800_000_000,
        1_800_000_000,
        "[-180, 180] deg",
    )?;
    if lon == -1_800_000_000 {
        lon = 1_800_000_000;
    }
    let alt = quantize(
        &format!("{field}.altitude"),
        g.altitude_m,
        0.01,
        -99_999,
        799_999,
        "(-1000, 8000) m",
    )?;
    let rp = ReferencePosition::new(
        Latitude(lat as i32),
        Longitude(lon as i32),
        PosConfidenceEllipse::new(
            SemiAxisLength(4095),
            SemiAxisLength(4095),
            HeadingValue(3601),
        ),
        Altitude::new(AltitudeValue(alt as i32), AltitudeConfidence::unavailable),
    );
    let quantized = GeoPoint {
        latitude_deg: lat as f64 * 1e-7,
        longitude_deg: lon as f64 * 1e-7,
        altitude_m: alt as f64 / 100.0,
    };
    Ok((rp, quantized))
}

/// Variance \[m^2\] -> `CoordinateConfidence` (95 % = 1.96 sigma, in 0.01 m, rounded up);
/// zero variance: 4096 (unavailable).
fn coordinate_confidence(field: &str, variance: f32) -> Result<CoordinateConfidence, CitsError> {
    let v = finite(field, f64::from(variance))?;
    if v < 0.0 {
        return Err(CitsError::out_of_range(field, v, ">= 0 m^2"));
    }
    if v == 0.0 {
        return Ok(CoordinateConfidence(4096));
    }
    let c = (1.96 * v.sqrt() / 0.01).ceil().clamp(1.0, 4095.0);
    Ok(CoordinateConfidence(c as u16))
}

/// `CoordinateConfidence` -> variance \[m^2\]; 4096 (unavailable): 0.
fn variance_for_confidence(c: u16, field: &str) -> Result<f32, CitsError> {
    match c {
        4096 => Ok(0.0),
        1..=4095 => {
            let sigma = f64::from(c) * 0.01 / 1.96;
            Ok((sigma * sigma) as f32)
        }
        c => Err(CitsError::out_of_range(field, c, "[1, 4096]")),
    }
}

fn coordinate(
    field: &str,
    offset: f64,
    variance_field: &str,
    variance: f32,
) -> Result<CartesianCoordinateWithConfidence, CitsError> {
    let v = quantize(
        field,
        offset,
        0.01,
        -131_071,
        131_070,
        &format!("[-{MAX_OFFSET_M}, {MAX_OFFSET_M}] m from the reference position"),
    )?;
    Ok(CartesianCoordinateWithConfidence::new(
        CartesianCoordinateLarge(v as i32),
        coordinate_confidence(variance_field, variance)?,
    ))
}

fn velocity_component(field: &str, v: f64) -> Result<VelocityComponent, CitsError> {
    let q = quantize(
        field,
        v,
        0.01,
        -16_382,
        16_381,
        &format!("[-{MAX_VELOCITY_MPS}, {MAX_VELOCITY_MPS}] m/s"),
    )?;
    Ok(VelocityComponent::new(
        VelocityComponentValue(q as i16),
        SpeedConfidence(127), // unavailable: twinlink carries no velocity covariance
    ))
}

fn dimension(field: &str, d: f64) -> Result<Option<ObjectDimension>, CitsError> {
    let d = finite(field, d)?;
    if d < 0.0 {
        return Err(CitsError::out_of_range(field, d, ">= 0 m"));
    }
    if d == 0.0 {
        return Ok(None);
    }
    let n = if d > MAX_DIMENSION_M {
        255
    } else {
        ((d * 10.0).round() as u16).clamp(1, 254)
    };
    Ok(Some(ObjectDimension::new(
        ObjectDimensionValue(n),
        ObjectDimensionConfidence(32), // unavailable
    )))
}

fn dimension_value(d: Option<&ObjectDimension>, field: &str) -> Result<f64, CitsError> {
    match d.map(|d| d.value.0) {
        None | Some(256) => Ok(0.0),
        Some(n @ 1..=255) => Ok(f64::from(n) / 10.0),
        Some(n) => Err(CitsError::out_of_range(field, n, "[1, 256]")),
    }
}

fn perceived_object(
    o: &DetectedObject,
    i: usize,
    origin: &GeoPoint,
    reference: &GeoPoint,
) -> Result<PerceivedObject, CitsError> {
    let f = |name: &str| format!("objects[{i}].{name}");
    let object_id = match o.id {
        0 => None,
        id @ 1..=MAX_OBJECT_ID => Some(Identifier2B((id - 1) as u16)),
        id => {
            return Err(CitsError::out_of_range(
                f("id"),
                id,
                format!("[0, {MAX_OBJECT_ID}] (CPM objectId 0..=65535 is id - 1)"),
            ))
        }
    };

    let enu = map_coordinates(&o.position, &f("position"))?;
    let at = enu_to_geodetic(origin, enu);
    let [x, y, z] = geodetic_to_enu(reference, &at);
    let cov = &o.position_covariance;
    let position = CartesianPosition3dWithConfidence::new(
        coordinate(&f("position.x"), x, &f("position_covariance[0]"), cov[0])?,
        coordinate(&f("position.y"), y, &f("position_covariance[4]"), cov[4])?,
        Some(coordinate(
            &f("position.z"),
            z,
            &f("position_covariance[8]"),
            cov[8],
        )?),
    );

    let velocity = if o.has_velocity {
        let v = [
            finite(&f("velocity.x"), o.velocity.x)?,
            finite(&f("velocity.y"), o.velocity.y)?,
            finite(&f("velocity.z"), o.velocity.z)?,
        ];
        let [vx, vy, vz] = rotate_enu(v, origin, reference);
        Some(Velocity3dWithConfidence::cartesianVelocity(
            VelocityCartesian::new(
                velocity_component(&f("velocity.x"), vx)?,
                velocity_component(&f("velocity.y"), vy)?,
                Some(velocity_component(&f("velocity.z"), vz)?),
            ),
        ))
    } else {
        None
    };

    let yaw = finite(&f("yaw"), o.yaw)?;
    let dir = rotate_enu([yaw.cos(), yaw.sin(), 0.0], origin, reference);
    let angles = EulerAnglesWithConfidence::new(
        CartesianAngle::new(
            CartesianAngleValue(angle_to_decidegrees(&f("yaw"), dir[1].atan2(dir[0]))?),
            AngleConfidence(127), // unavailable
        ),
        None,
        None,
    );

    let existence = unit_interval(&f("existence_probability"), o.existence_probability)?;
    let class_confidence = unit_interval(&f("class_confidence"), o.class_confidence)?;
    let classification = object_class_for(o.classification)
        .map_err(|e| match e {
            CitsError::Unsupported { code, reason, .. } => CitsError::Unsupported {
                field: f("classification"),
                code,
                reason,
            },
            e => e,
        })?
        .map(|class| {
            let pct = (class_confidence * 100.0).round().clamp(1.0, 100.0) as u8;
            ObjectClassDescription(vec![ObjectClassWithConfidence::new(
                class,
                ConfidenceLevel(pct),
            )])
        });

    Ok(PerceivedObject::new(
        object_id,
        DeltaTimeMilliSecondSigned(0),
        position,
        velocity,
        None,
        Some(angles),
        None,
        None,
        dimension(&f("dimensions.z"), o.dimensions.z)?,
        dimension(&f("dimensions.y"), o.dimensions.y)?,
        dimension(&f("dimensions.x"), o.dimensions.x)?,
        None,
        Some(ObjectPerceptionQuality((existence * 15.0).round() as u8)),
        None,
        classification,
        None,
    ))
}

fn wrap<T: rasn::Encode>(
    id: CpmContainerId,
    container: &T,
    what: &str,
) -> Result<WrappedCpmContainer, CitsError> {
    Ok(WrappedCpmContainer::new(
        id,
        Any::new(uper_encode(container, what)?),
    ))
}

/// Builds the CPM sharing `objects` (given in the map frame) from the station in `ctx`.
///
/// | CPM | from |
/// | --- | --- |
/// | `header` | protocolVersion 2, messageId 14, stationId = `ctx.station_id` |
/// | `managementContainer.referenceTime` / `referencePosition` | `ctx.reference_time` / `ctx.reference_position` (1e-7 deg, 0.01 m) |
/// | originating container | station type 15: originating RSU container; else originating vehicle container with `ctx.station_heading_deg` |
/// | perceived object container | one `PerceivedObject` per object, in order, at most 255 |
/// | `objectId` | `id - 1` for id 1..=65536; id 0: omitted; larger: error |
/// | `measurementDeltaTime` | 0 (states hold at the reference time) |
/// | `position` x, y, z | map position -> WGS84 -> east, north, up of the reference position, 0.01 m, within ±1310.70 m |
/// | coordinate `confidence` | diagonal of `position_covariance`: ceil(1.96 sigma / 0.01 m); zero variance: unavailable |
/// | `velocity` | `has_velocity`: cartesian, `velocity` rotated into the reference plane, 0.01 m/s, within ±163.81 m/s, confidence unavailable; else omitted |
/// | `angles.zAngle` | `yaw` (counter-clockwise from east), 0.1 deg, confidence unavailable |
/// | `objectDimensionX`/`Y`/`Z` | `dimensions` x (length) / y (width) / z (height), 0.1 m; 0: omitted; > 25.4 m: 255 (out of range) |
/// | `objectPerceptionQuality` | `existence_probability`: round(15 p) |
/// | `classification` | `classification` (see [`object_class_for`]) with confidence round(100 `class_confidence`) % (at least 1); `CLASS_UNKNOWN`: omitted |
pub fn objects_to_cpm(objects: &[DetectedObject], ctx: &CpmContext) -> Result<Cpm, CitsError> {
    ctx.origin.validate()?;
    if objects.len() > MAX_OBJECTS_PER_CPM {
        return Err(CitsError::TooManyObjects {
            count: objects.len(),
            max: MAX_OBJECTS_PER_CPM,
        });
    }
    if ctx.station_type > ROAD_SIDE_UNIT {
        return Err(CitsError::unsupported(
            "ctx.station_type",
            ctx.station_type,
            "reserved TrafficParticipantType (defined: 0..=15)",
        ));
    }
    let reference_time = ros_to_its_named(&ctx.reference_time, "ctx.reference_time")?;
    let (reference_position, reference) = reference_position(&ctx.reference_position)?;
    let origin = GeoPoint::from(ctx.origin);

    let originating = if ctx.station_type == ROAD_SIDE_UNIT {
        wrap(
            ORIGINATING_RSU_CONTAINER,
            &OriginatingRsuContainer::new(None),
            "originatingRsuContainer",
        )?
    } else {
        let heading = match ctx.station_heading_deg {
            None => 3601,
            Some(h) => angle_to_decidegrees(
                "ctx.station_heading_deg",
                finite("ctx.station_heading_deg", h)?.to_radians(),
            )?,
        };
        wrap(
            ORIGINATING_VEHICLE_CONTAINER,
            &OriginatingVehicleContainer::new(
                Wgs84Angle::new(Wgs84AngleValue(heading), Wgs84AngleConfidence(127)),
                None,
                None,
                None,
            ),
            "originatingVehicleContainer",
        )?
    };

    let perceived = objects
        .iter()
        .enumerate()
        .map(|(i, o)| perceived_object(o, i, &origin, &reference))
        .collect::<Result<Vec<_>, _>>()?;
    let container = PerceivedObjectContainer::new(
        CardinalNumber1B(perceived.len() as u8),
        PerceivedObjects(perceived),
    );
    let objects_container = wrap(
        PERCEIVED_OBJECT_CONTAINER,
        &container,
        "perceivedObjectContainer",
    )?;

    Ok(Cpm::new(
        ItsPduHeader::new(
            OrdinalNumber1B(CPM_PROTOCOL_VERSION),
            MessageId(CPM_MESSAGE_ID),
            StationId(ctx.station_id),
        ),
        CpmPayload::new(
            ManagementContainer::new(TimestampIts(reference_time), reference_position, None, None),
            ConstraintWrappedCpmContainers(WrappedCpmContainers(vec![
                originating,
                objects_container,
            ])),
        ),
    ))
}

/// The time the objects of a CPM refer to (`referenceTime`) as a ROS time.
pub fn cpm_reference_time(cpm: &Cpm) -> Result<Time, CitsError> {
    its_to_ros_named(
        cpm.payload.management_container.reference_time.0,
        "cpm.managementContainer.referenceTime",
    )
}

/// The objects a received CPM shares, in the map frame at `origin`, at the CPM's
/// `referenceTime` (see [`cpm_reference_time`]).
///
/// | DetectedObject | from |
/// | --- | --- |
/// | `id` | `objectId + 1`; absent: 0 |
/// | `position` | reference position + (x, y, z) east/north/up -> WGS84 -> map; z absent: 0; objects measured at `referenceTime + measurementDeltaTime` are moved back to `referenceTime` along their velocity |
/// | `position_covariance` | diagonal from the coordinate confidences ((c * 0.01 m / 1.96)^2; unavailable: 0), off-diagonal 0 |
/// | `velocity`, `has_velocity` | cartesian or polar velocity rotated into map; absent or unavailable: `has_velocity` false, zero |
/// | `yaw` | `angles.zAngle` rotated into map; absent or unavailable (3601): 0 |
/// | `dimensions` | `objectDimensionX`/`Y`/`Z`, 0.1 m (255: 25.5 m); absent or unavailable: 0 |
/// | `existence_probability` | `objectPerceptionQuality / 15`; absent: [`UNSPECIFIED_CONFIDENCE`] |
/// | `classification`, `class_confidence` | the class with the highest confidence (see [`class_for_object_class`]), confidence / 100 (101, unavailable: [`UNSPECIFIED_CONFIDENCE`]); absent: `CLASS_UNKNOWN`, 0 |
///
/// Containers other than the perceived object container are checked for a valid encoding
/// and otherwise ignored; container ids TS 103 324 v2.1.1 does not define (6..=16),
/// repeated containers and both originating containers at once are errors. A CPM without perceived object container shares nothing.
pub fn cpm_to_objects(cpm: &Cpm, origin: &GeoOrigin) -> Result<Vec<DetectedObject>, CitsError> {
    origin.validate()?;
    let h = &cpm.header;
    if h.message_id.0 != CPM_MESSAGE_ID {
        return Err(CitsError::unsupported(
            "header.messageId",
            h.message_id.0,
            "not a CPM (14)",
        ));
    }
    if h.protocol_version.0 != CPM_PROTOCOL_VERSION {
        return Err(CitsError::unsupported(
            "header.protocolVersion",
            h.protocol_version.0,
            "only CPM of TS 103 324 v2.1.1 (protocolVersion 2) is decoded",
        ));
    }
    let m = &cpm.payload.management_container;
    cpm_reference_time(cpm)?;
    let rp = &m.reference_position;
    let reference = geo_of_reference_position(
        rp.latitude.0,
        rp.longitude.0,
        rp.altitude.altitude_value.0,
        origin.altitude_m,
        "cpm.managementContainer.referencePosition",
    )?;
    reference.validate_as_origin("cpm.managementContainer.referencePosition")?;

    let mut seen = [false; 17];
    let mut objects = None;
    for (k, c) in cpm.payload.cpm_containers.0 .0.iter().enumerate() {
        let id = c.container_id.0;
        let field = format!("cpm.cpmContainers[{k}]");
        if !(1..=5).contains(&id) {
            return Err(CitsError::unsupported(
                format!("{field}.containerId"),
                id,
                "TS 103 324 v2.1.1 defines containers 1..=5",
            ));
        }
        if std::mem::replace(&mut seen[usize::from(id)], true) {
            return Err(CitsError::Inconsistent {
                field: format!("{field}.containerId"),
                reason: format!("container {id} appears more than once"),
            });
        }
        let bytes = c.container_data.as_bytes();
        let what = format!("{field}.containerData");
        match CpmContainerId(id) {
            ORIGINATING_VEHICLE_CONTAINER => {
                uper_decode::<OriginatingVehicleContainer>(bytes, &what)?;
            }
            ORIGINATING_RSU_CONTAINER => {
                uper_decode::<OriginatingRsuContainer>(bytes, &what)?;
            }
            SENSOR_INFORMATION_CONTAINER => {
                uper_decode::<SensorInformationContainer>(bytes, &what)?;
            }
            PERCEPTION_REGION_CONTAINER => {
                uper_decode::<PerceptionRegionContainer>(bytes, &what)?;
            }
            _ => objects = Some(uper_decode::<PerceivedObjectContainer>(bytes, &what)?),
        }
    }
    if seen[1] && seen[2] {
        return Err(CitsError::Inconsistent {
            field: "cpm.cpmContainers".into(),
            reason: "both an originating vehicle and an originating RSU container".into(),
        });
    }
    let Some(container) = objects else {
        return Ok(Vec::new());
    };
    let list = &container.perceived_objects.0;
    if list.len() > MAX_OBJECTS_PER_CPM {
        return Err(CitsError::TooManyObjects {
            count: list.len(),
            max: MAX_OBJECTS_PER_CPM,
        });
    }
    let origin_point = GeoPoint::from(*origin);
    list.iter()
        .enumerate()
        .map(|(j, o)| detected_object(o, j, &reference, &origin_point))
        .collect()
}

fn coordinate_value(
    c: &CartesianCoordinateWithConfidence,
    field: &str,
) -> Result<(f64, f32), CitsError> {
    let v = c.value.0;
    if !(-131_071..=131_070).contains(&v) {
        return Err(CitsError::out_of_range(
            field,
            v,
            "[-131071, 131070] (0.01 m; -131072 and 131071 mean out of range)",
        ));
    }
    Ok((
        f64::from(v) / 100.0,
        variance_for_confidence(c.confidence.0, &format!("{field}.confidence"))?,
    ))
}

/// A velocity component \[m/s\]; `None` if unavailable.
fn velocity_value(c: &VelocityComponent, field: &str) -> Result<Option<f64>, CitsError> {
    match c.value.0 {
        16_383 => Ok(None),
        v @ -16_382..=16_381 => Ok(Some(f64::from(v) / 100.0)),
        v => Err(CitsError::out_of_range(
            field,
            v,
            "[-16382, 16381] (0.01 m/s; -16383 and 16382 mean out of range) or 16383 (unavailable)",
        )),
    }
}

/// An angle in tenths of a degree; `None` if unavailable (3601).
fn angle_value(v: u16, field: &str) -> Result<Option<f64>, CitsError> {
    match v {
        3601 => Ok(None),
        0..=3599 => Ok(Some(decidegrees_to_angle(v))),
        v => Err(CitsError::out_of_range(
            field,
            v,
            "[0, 3599] (0.1 deg) or 3601 (unavailable)",
        )),
    }
}

/// ENU velocity at the reference position, if the CPM gives one.
fn velocity_of(o: &PerceivedObject, field: &str) -> Result<Option<[f64; 3]>, CitsError> {
    let Some(v) = &o.velocity else {
        return Ok(None);
    };
    match v {
        Velocity3dWithConfidence::cartesianVelocity(c) => {
            let x = velocity_value(&c.x_velocity, &format!("{field}.xVelocity"))?;
            let y = velocity_value(&c.y_velocity, &format!("{field}.yVelocity"))?;
            let z = match &c.z_velocity {
                Some(z) => velocity_value(z, &format!("{field}.zVelocity"))?.unwrap_or(0.0),
                None => 0.0,
            };
            Ok(x.zip(y).map(|(x, y)| [x, y, z]))
        }
        Velocity3dWithConfidence::polarVelocity(p) => {
            let m =
                match p.velocity_magnitude.speed_value.0 {
                    16_383 => None,
                    s @ 0..=16_381 => Some(f64::from(s) / 100.0),
                    s => return Err(CitsError::out_of_range(
                        format!("{field}.velocityMagnitude"),
                        s,
                        "[0, 16381] (0.01 m/s; 16382 means out of range) or 16383 (unavailable)",
                    )),
                };
            let dir = angle_value(
                p.velocity_direction.value.0,
                &format!("{field}.velocityDirection"),
            )?;
            let z = match &p.z_velocity {
                Some(z) => velocity_value(z, &format!("{field}.zVelocity"))?.unwrap_or(0.0),
                None => 0.0,
            };
            Ok(m.zip(dir).map(|(m, d)| [m * d.cos(), m * d.sin(), z]))
        }
    }
}

fn detected_object(
    o: &PerceivedObject,
    j: usize,
    reference: &GeoPoint,
    origin: &GeoPoint,
) -> Result<DetectedObject, CitsError> {
    let f = |name: &str| format!("cpm.perceivedObjects[{j}].{name}");
    let p = &o.position;
    let (x, vx_var) = coordinate_value(&p.x_coordinate, &f("position.xCoordinate"))?;
    let (y, vy_var) = coordinate_value(&p.y_coordinate, &f("position.yCoordinate"))?;
    let (z, vz_var) = match &p.z_coordinate {
        Some(c) => coordinate_value(c, &f("position.zCoordinate"))?,
        None => (0.0, 0.0),
    };

    let dt = o.measurement_delta_time.0;
    if !(-2048..=2047).contains(&dt) {
        return Err(CitsError::out_of_range(
            f("measurementDeltaTime"),
            dt,
            "[-2048, 2047] ms",
        ));
    }
    let velocity_ref = velocity_of(o, &f("velocity"))?;
    // The state holds at referenceTime + dt: move it back to referenceTime.
    let dt_s = f64::from(dt) / 1000.0;
    let at_ref = match velocity_ref {
        Some(v) => [x - v[0] * dt_s, y - v[1] * dt_s, z - v[2] * dt_s],
        None => [x, y, z],
    };
    let geo = enu_to_geodetic(reference, at_ref);
    let [mx, my, mz] = geodetic_to_enu(origin, &geo);
    let velocity = velocity_ref.map(|v| rotate_enu(v, reference, origin));

    let yaw = match &o.angles {
        Some(a) => match angle_value(a.z_angle.value.0, &f("angles.zAngle"))? {
            Some(yaw_ref) => {
                let d = rotate_enu([yaw_ref.cos(), yaw_ref.sin(), 0.0], reference, origin);
                normalize_angle(d[1].atan2(d[0]))
            }
            None => 0.0,
        },
        None => 0.0,
    };

    let existence_probability = match &o.object_perception_quality {
        None => UNSPECIFIED_CONFIDENCE,
        Some(ObjectPerceptionQuality(q @ 0..=15)) => f32::from(*q) / 15.0,
        Some(ObjectPerceptionQuality(q)) => {
            return Err(CitsError::out_of_range(
                f("objectPerceptionQuality"),
                q,
                "[0, 15]",
            ))
        }
    };

    let (classification, class_confidence) = match &o.classification {
        None => (DetectedObject::CLASS_UNKNOWN, 0.0),
        Some(ObjectClassDescription(list)) => {
            let mut best: Option<(u8, u8)> = None; // (class, confidence level)
            for (k, c) in list.iter().enumerate() {
                let field = f(&format!("classification[{k}]"));
                let level = c.confidence.0;
                if !(1..=101).contains(&level) {
                    return Err(CitsError::out_of_range(
                        format!("{field}.confidence"),
                        level,
                        "[1, 101]",
                    ));
                }
                let class =
                    class_for_object_class(&c.object_class, &format!("{field}.objectClass"))?;
                // Unavailable (101) ranks below any stated confidence.
                let rank = |l: u8| if l == 101 { 0 } else { l };
                if best.is_none_or(|(_, b)| rank(level) > rank(b)) {
                    best = Some((class, level));
                }
            }
            match best {
                None => (DetectedObject::CLASS_UNKNOWN, 0.0),
                Some((class, 101)) => (class, UNSPECIFIED_CONFIDENCE),
                Some((class, level)) => (class, f32::from(level) / 100.0),
            }
        }
    };

    let id = match &o.object_id {
        Some(Identifier2B(n)) => u32::from(*n) + 1,
        None => 0,
    };
    let mut position_covariance = [0.0f32; 9];
    position_covariance[0] = vx_var;
    position_covariance[4] = vy_var;
    position_covariance[8] = vz_var;
    let [vx, vy, vz] = velocity.unwrap_or([0.0; 3]);
    Ok(DetectedObject {
        id,
        classification,
        class_confidence,
        existence_probability,
        position: Point {
            x: mx,
            y: my,
            z: mz,
        },
        yaw,
        dimensions: Vector3 {
            x: dimension_value(o.object_dimension_x.as_ref(), &f("objectDimensionX"))?,
            y: dimension_value(o.object_dimension_y.as_ref(), &f("objectDimensionY"))?,
            z: dimension_value(o.object_dimension_z.as_ref(), &f("objectDimensionZ"))?,
        },
        has_velocity: velocity.is_some(),
        velocity: Vector3 {
            x: vx,
            y: vy,
            z: vz,
        },
        position_covariance,
    })
}

/// UPER-encodes a CPM.
pub fn encode_cpm(cpm: &Cpm) -> Result<Vec<u8>, CitsError> {
    uper_encode(cpm, "CPM")
}

/// UPER-decodes a CPM (TS 103 324 v2.1.1). Bytes beyond the message are an error. The
/// containers stay encoded (open types); [`cpm_to_objects`] decodes and checks them.
pub fn decode_cpm(bytes: &[u8]) -> Result<Cpm, CitsError> {
    uper_decode(bytes, "CPM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip() {
        for class in 1..=6 {
            let c = object_class_for(class).unwrap().unwrap();
            assert_eq!(class_for_object_class(&c, "c").unwrap(), class);
        }
        assert_eq!(
            object_class_for(DetectedObject::CLASS_UNKNOWN).unwrap(),
            None
        );
        assert!(object_class_for(7).is_err());
        // Motorcycles are VRUs: vehicleSubClass may not carry them.
        let c = object_class_for(DetectedObject::CLASS_MOTORCYCLE)
            .unwrap()
            .unwrap();
        assert!(matches!(c, ObjectClass::vruSubClass(_)));
        let e = class_for_object_class(
            &ObjectClass::vehicleSubClass(TrafficParticipantType(4)),
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("vehicleSubClass"), "{e}");
        let reserved = ObjectClass::otherSubClass(OtherSubClass(9));
        let e = class_for_object_class(&reserved, "x").unwrap_err();
        assert!(e.to_string().contains("otherSubClass"), "{e}");
    }

    #[test]
    fn confidences_scale() {
        assert_eq!(coordinate_confidence("c", 0.0).unwrap().0, 4096);
        // sigma 0.1 m -> 95 % = 0.196 m -> 20 (rounded up).
        assert_eq!(coordinate_confidence("c", 0.01).unwrap().0, 20);
        assert_eq!(coordinate_confidence("c", 1e6).unwrap().0, 4095);
        assert!(coordinate_confidence("c", -1.0).is_err());
        let v = variance_for_confidence(20, "c").unwrap();
        assert!((0.01..0.0105).contains(&v), "{v}");
        assert_eq!(variance_for_confidence(4096, "c").unwrap(), 0.0);
        assert!(variance_for_confidence(0, "c").is_err());
    }

    #[test]
    fn dimensions_quantize_and_saturate() {
        assert!(dimension("d", 0.0).unwrap().is_none());
        assert_eq!(dimension("d", 0.01).unwrap().unwrap().value.0, 1);
        assert_eq!(dimension("d", 4.54).unwrap().unwrap().value.0, 45);
        assert_eq!(dimension("d", 25.4).unwrap().unwrap().value.0, 254);
        assert_eq!(dimension("d", 30.0).unwrap().unwrap().value.0, 255);
        assert!(dimension("d", -0.1).is_err());
        assert!(dimension("d", f64::NAN).is_err());
    }
}
