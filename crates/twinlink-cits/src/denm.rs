//! Incident <-> DENM (ETSI EN 302 637-3 v1.3.1, "DENM v2": `protocolVersion` 2, with the
//! ITS-Container of ETSI TS 102 894-2 v1.3.1).
//!
//! The field-by-field mapping, its units and quantization are tabulated in the crate's
//! README; the doc comments of [`incident_to_denm`] and [`denm_to_incident`] summarize it.
//! DENMs of ETSI TS 103 831 (DENM release 2, a different ASN.1 module) are not decoded here;
//! they carry the same `protocolVersion` (2), so the caller must keep them away from
//! [`decode_denm`] (see the README).

use c_its_parser::standards::cdd_1_3_1_1::its_container::{
    ActionID, Altitude, AltitudeConfidence, AltitudeValue, CauseCode, CauseCodeType, ClosedLanes,
    HeadingValue, InformationQuality, ItsPduHeader, LanePosition, Latitude, Longitude,
    PosConfidenceEllipse, ReferencePosition, RelevanceDistance, SemiAxisLength, SequenceNumber,
    StationID, StationType, SubCauseCodeType, TimestampIts, ValidityDuration,
};
use c_its_parser::standards::denm_1_3_1::denm_pdu_descriptions::{
    AlacarteContainer, DecentralizedEnvironmentalNotificationMessage, ManagementContainer,
    RoadWorksContainerExtended, SituationContainer, Termination,
};
use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::twin_msgs::msg::Incident;

use crate::geo::{GeoOrigin, GeoPoint};
use crate::quant::{quantize, unit_interval};
use crate::time::{its_to_ros_named, ros_to_its_named};
use crate::{uper_decode, uper_encode, CitsError, UNSPECIFIED_CONFIDENCE};

/// A DENM: ITS PDU header and the DENM proper (EN 302 637-3 v1.3.1).
pub type Denm = c_its_parser::standards::denm_1_3_1::denm_pdu_descriptions::DENM;

/// `ItsPduHeader.protocolVersion` of EN 302 637-3 v1.3.1 DENMs.
pub const DENM_PROTOCOL_VERSION: u8 = 2;
/// `ItsPduHeader.messageID` of a DENM.
pub const DENM_MESSAGE_ID: u8 = 1;
/// Largest `validityDuration` \[s\] (one day). Longer or unlimited validity is clamped to it.
pub const MAX_VALIDITY_S: u32 = 86_400;
/// Most driving lanes a DENM can address (`LanePosition` 1..=14).
pub const MAX_DRIVING_LANES: u8 = 14;

/// `StationType` values (ETSI TS 102 894-2 v1.3.1) for [`DenmContext::station_type`].
pub mod station_type {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// Passenger car.
    pub const PASSENGER_CAR: u8 = 5;
    /// Bus.
    pub const BUS: u8 = 6;
    /// Heavy truck.
    pub const HEAVY_TRUCK: u8 = 8;
    /// Special vehicle (e.g. road operator, emergency).
    pub const SPECIAL_VEHICLES: u8 = 10;
    /// Road-side unit; twinlink's regional service speaks as one.
    pub const ROAD_SIDE_UNIT: u8 = 15;
}

/// DENM cause codes (`CauseCodeType`, ETSI TS 102 894-2) this crate maps.
pub mod cause_code {
    /// trafficCondition.
    pub const TRAFFIC_CONDITION: u8 = 1;
    /// accident.
    pub const ACCIDENT: u8 = 2;
    /// roadworks.
    pub const ROADWORKS: u8 = 3;
    /// hazardousLocation-ObstacleOnTheRoad.
    pub const OBSTACLE_ON_THE_ROAD: u8 = 10;
    /// dangerousEndOfQueue.
    pub const DANGEROUS_END_OF_QUEUE: u8 = 27;
    /// vehicleBreakdown.
    pub const VEHICLE_BREAKDOWN: u8 = 91;
    /// postCrash.
    pub const POST_CRASH: u8 = 92;
    /// stationaryVehicle.
    pub const STATIONARY_VEHICLE: u8 = 94;
}

/// How twinlink lane indices (0 = rightmost lane in the driving direction) relate to DENM
/// `LanePosition`. The ITS-Container of DENM v1.3.1 (TS 102 894-2 v1.3.1) counts lanes from
/// the *outside*, the hard-shoulder side: `hardShoulder(0), outermostDrivingLane(1),
/// secondLaneFromOutside(2)`, .. 14. (ETSI-ITS-CDD v2.x, used by DENM release 2, counts from
/// the inside instead; that numbering is not used here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaneNumbering {
    /// Right-hand traffic: the outside is on the right, `LanePosition = lane_index + 1`.
    #[default]
    RightHandTraffic,
    /// Left-hand traffic: the outside is on the left, so the carriageway's number of driving
    /// lanes is needed: `LanePosition = driving_lanes - lane_index`.
    LeftHandTraffic {
        /// Driving lanes of the carriageway in the incident's direction (1..=14).
        driving_lanes: u8,
    },
}

impl LaneNumbering {
    fn validate(&self, field: &str) -> Result<(), CitsError> {
        if let LaneNumbering::LeftHandTraffic { driving_lanes } = *self {
            if !(1..=MAX_DRIVING_LANES).contains(&driving_lanes) {
                return Err(CitsError::out_of_range(
                    format!("{field}.driving_lanes"),
                    driving_lanes,
                    format!("[1, {MAX_DRIVING_LANES}]"),
                ));
            }
        }
        Ok(())
    }

    /// twinlink lane index (>= 0) -> `LanePosition` 1..=14.
    fn lane_position(&self, lane_index: i32) -> Result<i8, CitsError> {
        let max = match *self {
            LaneNumbering::RightHandTraffic => i32::from(MAX_DRIVING_LANES),
            LaneNumbering::LeftHandTraffic { driving_lanes } => i32::from(driving_lanes),
        };
        if !(0..max).contains(&lane_index) {
            return Err(CitsError::out_of_range(
                "lane_index",
                lane_index,
                format!(
                    "[0, {}] ({} driving lanes), or -1 for all lanes",
                    max - 1,
                    max
                ),
            ));
        }
        Ok(match *self {
            LaneNumbering::RightHandTraffic => lane_index + 1,
            LaneNumbering::LeftHandTraffic { driving_lanes } => {
                i32::from(driving_lanes) - lane_index
            }
        } as i8)
    }

    /// `LanePosition` 1..=14 -> twinlink lane index.
    fn lane_index(&self, position: i8) -> Result<i32, CitsError> {
        let p = i32::from(position);
        match *self {
            LaneNumbering::RightHandTraffic => Ok(p - 1),
            LaneNumbering::LeftHandTraffic { driving_lanes } => {
                if p > i32::from(driving_lanes) {
                    return Err(CitsError::Inconsistent {
                        field: "denm.alacarte.lanePosition".into(),
                        reason: format!(
                            "lane {p} on a carriageway of {driving_lanes} driving lanes"
                        ),
                    });
                }
                Ok(i32::from(driving_lanes) - p)
            }
        }
    }
}

/// What a DENM needs beyond the incident: who sends it, where "map" is, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct DenmContext {
    /// Sending station (`ItsPduHeader.stationID`; also the originating station of new
    /// action ids).
    pub station_id: u32,
    /// Sending station's type (see [`station_type`]).
    pub station_type: u8,
    /// WGS84 position of the "map" frame's origin.
    pub origin: GeoOrigin,
    /// Sequence number of the action id for an incident that did not come from a DENM (see
    /// [`incident_to_denm`]). The sender keeps one per event and increments it for each new
    /// event.
    pub sequence_number: u16,
    /// `referenceTime`: when this DENM (this update of the event) is generated.
    pub reference_time: Time,
    /// How lanes are numbered where the incident is (default: right-hand traffic).
    pub lanes: LaneNumbering,
}

impl DenmContext {
    /// A context for a road-side unit (twinlink's regional service) in right-hand traffic,
    /// with sequence number 0.
    pub fn road_side_unit(station_id: u32, origin: GeoOrigin, reference_time: Time) -> Self {
        DenmContext {
            station_id,
            station_type: station_type::ROAD_SIDE_UNIT,
            origin,
            sequence_number: 0,
            reference_time,
            lanes: LaneNumbering::RightHandTraffic,
        }
    }
}

/// The incident id a DENM's action id becomes: `denm-<originatingStationID>-<sequenceNumber>`
/// (decimal, no leading zeros).
pub fn incident_id_for_action(station_id: u32, sequence_number: u16) -> String {
    format!("denm-{station_id}-{sequence_number}")
}

/// The action id in an incident id of the form [`incident_id_for_action`] makes, if it is
/// exactly of that form (`denm-0042-7` or `denm-1-70000` are not).
pub fn action_for_incident_id(incident_id: &str) -> Option<(u32, u16)> {
    let rest = incident_id.strip_prefix("denm-")?;
    let (station, seq) = rest.split_once('-')?;
    let station: u32 = station.parse().ok()?;
    let seq: u16 = seq.parse().ok()?;
    (incident_id_for_action(station, seq) == incident_id).then_some((station, seq))
}

/// The DENM cause code (and sub-cause 0, "unavailable") for an incident kind.
/// `INCIDENT_UNKNOWN` and kinds this crate does not know have no DENM cause and are refused:
/// a DENM without a meaningful cause would only confuse receivers.
pub fn cause_for_kind(kind: u8) -> Result<u8, CitsError> {
    Ok(match kind {
        Incident::INCIDENT_STALLED_VEHICLE => cause_code::STATIONARY_VEHICLE,
        Incident::INCIDENT_DEBRIS => cause_code::OBSTACLE_ON_THE_ROAD,
        Incident::INCIDENT_LANE_CLOSURE | Incident::INCIDENT_ROADWORKS => cause_code::ROADWORKS,
        Incident::INCIDENT_ACCIDENT => cause_code::ACCIDENT,
        Incident::INCIDENT_CONGESTION => cause_code::TRAFFIC_CONDITION,
        Incident::INCIDENT_UNKNOWN => {
            return Err(CitsError::unsupported(
                "incident_kind",
                kind,
                "INCIDENT_UNKNOWN has no DENM cause code; it is not sent",
            ))
        }
        _ => {
            return Err(CitsError::unsupported(
                "incident_kind",
                kind,
                "not an INCIDENT_* constant",
            ))
        }
    })
}

/// The incident kind for a received DENM cause code. Causes without a twinlink kind are an
/// error (the caller drops the DENM); roadworks are refined by [`denm_to_incident`].
pub fn kind_for_cause(cause: u8) -> Result<u8, CitsError> {
    Ok(match cause {
        cause_code::STATIONARY_VEHICLE | cause_code::VEHICLE_BREAKDOWN => {
            Incident::INCIDENT_STALLED_VEHICLE
        }
        cause_code::OBSTACLE_ON_THE_ROAD => Incident::INCIDENT_DEBRIS,
        cause_code::ROADWORKS => Incident::INCIDENT_ROADWORKS,
        cause_code::ACCIDENT | cause_code::POST_CRASH => Incident::INCIDENT_ACCIDENT,
        cause_code::TRAFFIC_CONDITION | cause_code::DANGEROUS_END_OF_QUEUE => {
            Incident::INCIDENT_CONGESTION
        }
        _ => {
            return Err(CitsError::unsupported(
                "denm.situation.eventType.causeCode",
                cause,
                "no twinlink incident kind for this cause",
            ))
        }
    })
}

/// Upper bounds \[m\] of the `RelevanceDistance` classes lessThan50m .. lessThan10km, and the
/// value taken for over10km.
const RELEVANCE_BOUNDS_M: [f32; 8] = [
    50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10_000.0, 10_000.0,
];

fn relevance_for_extent(extent: f32) -> Result<Option<RelevanceDistance>, CitsError> {
    let e = crate::quant::finite("extent", f64::from(extent))?;
    if e < 0.0 {
        return Err(CitsError::out_of_range("extent", e, ">= 0 m"));
    }
    if e == 0.0 {
        return Ok(None);
    }
    use RelevanceDistance::*;
    let classes = [
        lessThan50m,
        lessThan100m,
        lessThan200m,
        lessThan500m,
        lessThan1000m,
        lessThan5km,
        lessThan10km,
    ];
    Ok(Some(
        classes
            .into_iter()
            .zip(RELEVANCE_BOUNDS_M)
            .find(|(_, bound)| e <= f64::from(*bound))
            .map_or(over10km, |(c, _)| c),
    ))
}

/// The extent a `RelevanceDistance` stands for: the class's upper bound.
pub fn extent_for_relevance(r: RelevanceDistance) -> f32 {
    RELEVANCE_BOUNDS_M[r as usize]
}

/// twinlink confidence [0, 1] -> `InformationQuality` 1..=7 (lowest..highest); 0 means
/// "unavailable" and is never sent.
fn information_quality(confidence: f32) -> Result<u8, CitsError> {
    let c = unit_interval("confidence", confidence)?;
    Ok(1 + (c * 6.0).round() as u8)
}

/// `InformationQuality` -> twinlink confidence: 1..=7 -> 0, 1/6, .., 1; 0 (unavailable) ->
/// [`UNSPECIFIED_CONFIDENCE`].
pub fn confidence_for_quality(q: u8) -> Result<f32, CitsError> {
    match q {
        0 => Ok(UNSPECIFIED_CONFIDENCE),
        1..=7 => Ok(f32::from(q - 1) / 6.0),
        _ => Err(CitsError::out_of_range(
            "denm.situation.informationQuality",
            q,
            "[0, 7]",
        )),
    }
}

/// Quantizes a WGS84 point into a `ReferencePosition` with unavailable confidences.
fn reference_position(g: &GeoPoint, field: &str) -> Result<ReferencePosition, CitsError> {
    g.validate(field)?;
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
        lon = 1_800_000_000; // -180 deg "shall not be used"; it is +180 deg.
    }
    let alt = quantize(
        &format!("{field}.altitude"),
        g.altitude_m,
        0.01,
        -99_999,
        799_999,
        "(-1000, 8000) m",
    )?;
    Ok(ReferencePosition::new(
        Latitude(lat as i32),
        Longitude(lon as i32),
        PosConfidenceEllipse::new(
            SemiAxisLength(4095), // unavailable
            SemiAxisLength(4095),
            HeadingValue(3601), // unavailable
        ),
        Altitude::new(AltitudeValue(alt as i32), AltitudeConfidence::unavailable),
    ))
}

/// The WGS84 point of a received `ReferencePosition`; an unavailable altitude is taken as
/// `default_altitude_m`.
pub(crate) fn geo_of_reference_position(
    lat: i32,
    lon: i32,
    alt: i32,
    default_altitude_m: f64,
    field: &str,
) -> Result<GeoPoint, CitsError> {
    match lat {
        900_000_001 => return Err(CitsError::unavailable(format!("{field}.latitude"))),
        -900_000_000..=900_000_000 => {}
        _ => {
            return Err(CitsError::out_of_range(
                format!("{field}.latitude"),
                lat,
                "[-900000000, 900000000] (1e-7 deg) or 900000001 (unavailable)",
            ))
        }
    }
    match lon {
        1_800_000_001 => return Err(CitsError::unavailable(format!("{field}.longitude"))),
        -1_799_999_999..=1_800_000_000 => {}
        _ => {
            return Err(CitsError::out_of_range(
                format!("{field}.longitude"),
                lon,
                "[-1799999999, 1800000000] (1e-7 deg) or 1800000001 (unavailable)",
            ))
        }
    }
    let altitude_m = match alt {
        800_001 => default_altitude_m,
        -99_999..=799_999 => f64::from(alt) / 100.0,
        _ => {
            return Err(CitsError::out_of_range(
                format!("{field}.altitude.altitudeValue"),
                alt,
                "(-100000, 800000) (0.01 m) or 800001 (unavailable)",
            ))
        }
    };
    Ok(GeoPoint {
        latitude_deg: f64::from(lat) * 1e-7,
        longitude_deg: f64::from(lon) * 1e-7,
        altitude_m,
    })
}

fn check_station_type(t: u8, field: &str) -> Result<(), CitsError> {
    // TS 102 894-2 v1.3.1 defines 0..=11 and 15 (roadSideUnit); the rest is reserved.
    if t <= 11 || t == station_type::ROAD_SIDE_UNIT {
        Ok(())
    } else {
        Err(CitsError::unsupported(
            field,
            t,
            "reserved StationType (defined: 0..=11, 15)",
        ))
    }
}

/// Builds the DENM announcing `incident` (EN 302 637-3 v1.3.1).
///
/// | DENM | from |
/// | --- | --- |
/// | `header` | protocolVersion 2, messageID 1, stationID = `ctx.station_id` |
/// | `management.actionID` | parsed from `incident_id` if it reads `denm-<station>-<seq>` (an incident that came in as a DENM keeps its action id), else (`ctx.station_id`, `ctx.sequence_number`) |
/// | `detectionTime` | `detected` (zero: `ctx.reference_time`) |
/// | `referenceTime` | `ctx.reference_time` |
/// | `eventPosition` | `position` (map) -> WGS84, 1e-7 deg, altitude 0.01 m; confidences unavailable |
/// | `relevanceDistance` | `extent` (> 0): smallest class whose bound is >= extent |
/// | `validityDuration` | `expires - detected`, rounded up to whole seconds, at most 86 400 s; `expires` zero (no expiry): 86 400 s |
/// | `stationType` | `ctx.station_type` |
/// | `situation.informationQuality` | `confidence`: 1 + round(6 c) |
/// | `situation.eventType` | `incident_kind` (see [`cause_for_kind`]), sub-cause 0 |
/// | `alacarte.lanePosition` | `lane_index` >= 0, counted from the outside (see [`LaneNumbering`]): right-hand traffic `lane_index + 1`; -1 (all lanes): omitted |
/// | `alacarte.roadWorks.closedLanes` | `INCIDENT_LANE_CLOSURE` only: present, with no field set (the marker of a lane closure) |
///
/// Not sent: `segment_id`, `s` (twinlink map matching).
pub fn incident_to_denm(incident: &Incident, ctx: &DenmContext) -> Result<Denm, CitsError> {
    ctx.origin.validate()?;
    check_station_type(ctx.station_type, "ctx.station_type")?;
    ctx.lanes.validate("ctx.lanes")?;
    let cause = cause_for_kind(incident.incident_kind)?;
    let (station, seq) = action_for_incident_id(&incident.incident_id)
        .unwrap_or((ctx.station_id, ctx.sequence_number));

    let reference = ros_to_its_named(&ctx.reference_time, "ctx.reference_time")?;
    let detected = if incident.detected == Time::default() {
        reference
    } else {
        ros_to_its_named(&incident.detected, "detected")?
    };
    let validity = if incident.expires == Time::default() {
        MAX_VALIDITY_S
    } else {
        let expires = ros_to_its_named(&incident.expires, "expires")?;
        if expires < detected {
            return Err(CitsError::Inconsistent {
                field: "expires".into(),
                reason: format!(
                    "expires ({}.{:09} s) is before detected ({}.{:09} s)",
                    incident.expires.sec,
                    incident.expires.nanosec,
                    incident.detected.sec,
                    incident.detected.nanosec
                ),
            });
        }
        // Round up: the event must not expire early at the receiver.
        (expires - detected)
            .div_ceil(1000)
            .min(u64::from(MAX_VALIDITY_S)) as u32
    };

    let event = ctx
        .origin
        .map_to_geodetic_named(&incident.position, "position")?;
    let event_position = reference_position(&event, "position")?;
    let relevance = relevance_for_extent(incident.extent)?;
    let quality = information_quality(incident.confidence)?;

    let lane_position = match incident.lane_index {
        -1 => None,
        i => Some(ctx.lanes.lane_position(i)?),
    };
    // The marker of a lane closure (roadworks is the cause of both): a closedLanes that
    // says no more than that lanes are closed; which one, lanePosition tells. (DENM v1.3.1's
    // DrivingLaneStatus would need the carriageway's lane count, which an Incident lacks.)
    let road_works = (incident.incident_kind == Incident::INCIDENT_LANE_CLOSURE).then(|| {
        RoadWorksContainerExtended::new(
            None,
            Some(ClosedLanes::new(None, None, None)),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )
    });
    let alacarte = (lane_position.is_some() || road_works.is_some()).then(|| {
        AlacarteContainer::new(
            lane_position.map(LanePosition),
            None,
            None,
            road_works,
            None,
            None,
        )
    });

    let management = ManagementContainer::new(
        ActionID::new(StationID(station), SequenceNumber(seq)),
        TimestampIts(detected),
        TimestampIts(reference),
        None,
        event_position,
        relevance,
        None,
        ValidityDuration(validity),
        None,
        StationType(ctx.station_type),
    );
    let situation = SituationContainer::new(
        InformationQuality(quality),
        CauseCode::new(CauseCodeType(cause), SubCauseCodeType(0)),
        None,
        None,
    );
    Ok(Denm::new(
        ItsPduHeader::new(
            DENM_PROTOCOL_VERSION,
            DENM_MESSAGE_ID,
            StationID(ctx.station_id),
        ),
        DecentralizedEnvironmentalNotificationMessage::new(
            management,
            Some(situation),
            None,
            alacarte,
        ),
    ))
}

/// The incident a received DENM announces, with positions in the map frame at `origin`,
/// lanes numbered for right-hand traffic (see [`denm_to_incident_with_lanes`]).
pub fn denm_to_incident(denm: &Denm, origin: &GeoOrigin) -> Result<Incident, CitsError> {
    denm_to_incident_with_lanes(denm, origin, LaneNumbering::RightHandTraffic)
}

/// The incident a received DENM announces (EN 302 637-3 v1.3.1 only: `protocolVersion` 2).
///
/// | Incident | from |
/// | --- | --- |
/// | `incident_id` | `denm-<actionID.originatingStationID>-<actionID.sequenceNumber>` |
/// | `incident_kind` | `situation.eventType.causeCode` (see [`kind_for_cause`]); roadworks with `alacarte.roadWorks.closedLanes` -> `INCIDENT_LANE_CLOSURE`; a termination without situation -> `INCIDENT_UNKNOWN` |
/// | `position` | `eventPosition` -> map; unavailable altitude -> the origin's altitude |
/// | `lane_index` | `alacarte.lanePosition` 1..=14 (see [`LaneNumbering`]; right-hand traffic: position - 1); absent, off the road (-1) or hard shoulder (0): -1 |
/// | `extent` | `relevanceDistance`: the class's upper bound (over10km: 10 000 m); absent: 0 |
/// | `confidence` | `informationQuality`: (q - 1) / 6; 0 (unavailable): [`UNSPECIFIED_CONFIDENCE`] |
/// | `detected` | `detectionTime` |
/// | `expires` | `detectionTime + validityDuration`; a termination (cancellation or negation): `referenceTime`, i.e. already over |
/// | `segment_id`, `s` | empty, 0 (not map-matched) |
pub fn denm_to_incident_with_lanes(
    denm: &Denm,
    origin: &GeoOrigin,
    lanes: LaneNumbering,
) -> Result<Incident, CitsError> {
    origin.validate()?;
    lanes.validate("lanes")?;
    let h = &denm.header;
    if h.message_id != DENM_MESSAGE_ID {
        return Err(CitsError::unsupported(
            "header.messageID",
            h.message_id,
            "not a DENM (1)",
        ));
    }
    if h.protocol_version != DENM_PROTOCOL_VERSION {
        return Err(CitsError::unsupported(
            "header.protocolVersion",
            h.protocol_version,
            "only DENM v2 (EN 302 637-3 v1.3.1, protocolVersion 2) is decoded",
        ));
    }
    let m = &denm.denm.management;
    check_station_type(m.station_type.0, "denm.management.stationType")?;
    let detected = its_to_ros_named(m.detection_time.0, "denm.management.detectionTime")?;
    let reference = its_to_ros_named(m.reference_time.0, "denm.management.referenceTime")?;

    let p = &m.event_position;
    let event = geo_of_reference_position(
        p.latitude.0,
        p.longitude.0,
        p.altitude.altitude_value.0,
        origin.altitude_m,
        "denm.management.eventPosition",
    )?;
    let position: Point = origin.geodetic_to_map(&event)?;

    let validity = m.validity_duration.0;
    if validity > MAX_VALIDITY_S {
        return Err(CitsError::out_of_range(
            "denm.management.validityDuration",
            validity,
            format!("[0, {MAX_VALIDITY_S}] s"),
        ));
    }
    let expires = if m.termination.is_some() {
        reference
    } else {
        let t = m.detection_time.0 + u64::from(validity) * 1000;
        its_to_ros_named(t, "denm.management.detectionTime + validityDuration")?
    };

    let (mut kind, confidence) = match (&denm.denm.situation, m.termination) {
        (Some(s), _) => {
            let q = s.information_quality.0;
            (
                kind_for_cause(s.event_type.cause_code.0)?,
                confidence_for_quality(q)?,
            )
        }
        (None, Some(Termination::isCancellation | Termination::isNegation)) => {
            (Incident::INCIDENT_UNKNOWN, UNSPECIFIED_CONFIDENCE)
        }
        (None, None) => return Err(CitsError::unavailable("denm.situation")),
    };

    let alacarte = denm.denm.alacarte.as_ref();
    if kind == Incident::INCIDENT_ROADWORKS
        && alacarte
            .and_then(|a| a.road_works.as_ref())
            .is_some_and(|r| r.closed_lanes.is_some())
    {
        kind = Incident::INCIDENT_LANE_CLOSURE;
    }

    let lane_index = match alacarte.and_then(|a| a.lane_position.as_ref()) {
        None => -1,
        // Off the road, or on the hard shoulder: no twinlink lane; "all lanes" is the safe side.
        Some(LanePosition(-1 | 0)) => -1,
        Some(LanePosition(p @ 1..=14)) => lanes.lane_index(*p)?,
        Some(LanePosition(p)) => {
            return Err(CitsError::out_of_range(
                "denm.alacarte.lanePosition",
                p,
                "[-1, 14]",
            ))
        }
    };

    Ok(Incident {
        incident_id: incident_id_for_action(
            m.action_id.originating_station_id.0,
            m.action_id.sequence_number.0,
        ),
        incident_kind: kind,
        position,
        segment_id: String::new(),
        s: 0.0,
        lane_index,
        extent: m.relevance_distance.map_or(0.0, extent_for_relevance),
        confidence,
        detected,
        expires,
    })
}

/// UPER-encodes a DENM.
pub fn encode_denm(denm: &Denm) -> Result<Vec<u8>, CitsError> {
    uper_encode(denm, "DENM")
}

/// UPER-decodes a DENM (EN 302 637-3 v1.3.1). Bytes beyond the message are an error. The
/// result is only syntactically valid; [`denm_to_incident`] checks the values.
pub fn decode_denm(bytes: &[u8]) -> Result<Denm, CitsError> {
    uper_decode(bytes, "DENM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_parse_only_in_canonical_form() {
        assert_eq!(action_for_incident_id("denm-4242-7"), Some((4242, 7)));
        assert_eq!(
            action_for_incident_id("denm-4294967295-65535"),
            Some((u32::MAX, u16::MAX))
        );
        for bad in [
            "denm-0042-7",
            "denm-1-70000",
            "denm-1-",
            "denm--1-2",
            "denm-1-2-3",
            "denm-+1-2",
            "DENM-1-2",
            "stall-7",
            "",
        ] {
            assert_eq!(action_for_incident_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn kinds_and_causes() {
        for kind in 1..=6 {
            let cause = cause_for_kind(kind).unwrap();
            let back = kind_for_cause(cause).unwrap();
            if kind == Incident::INCIDENT_LANE_CLOSURE {
                assert_eq!(back, Incident::INCIDENT_ROADWORKS);
            } else {
                assert_eq!(back, kind);
            }
        }
        assert_eq!(
            cause_for_kind(Incident::INCIDENT_STALLED_VEHICLE).unwrap(),
            94
        );
        assert_eq!(cause_for_kind(Incident::INCIDENT_DEBRIS).unwrap(), 10);
        assert_eq!(cause_for_kind(Incident::INCIDENT_ROADWORKS).unwrap(), 3);
        assert_eq!(cause_for_kind(Incident::INCIDENT_ACCIDENT).unwrap(), 2);
        assert_eq!(cause_for_kind(Incident::INCIDENT_CONGESTION).unwrap(), 1);
        assert!(cause_for_kind(Incident::INCIDENT_UNKNOWN).is_err());
        assert!(cause_for_kind(7).is_err());
        let e = kind_for_cause(17).unwrap_err(); // adverseWeatherCondition-Adhesion
        assert!(e.to_string().contains("causeCode"), "{e}");
    }

    #[test]
    fn relevance_classes() {
        let class = |e: f32| relevance_for_extent(e).unwrap();
        assert_eq!(class(0.0), None);
        assert_eq!(class(0.1), Some(RelevanceDistance::lessThan50m));
        assert_eq!(class(50.0), Some(RelevanceDistance::lessThan50m));
        assert_eq!(class(50.5), Some(RelevanceDistance::lessThan100m));
        assert_eq!(class(10_000.0), Some(RelevanceDistance::lessThan10km));
        assert_eq!(class(10_001.0), Some(RelevanceDistance::over10km));
        assert!(relevance_for_extent(-1.0).is_err());
        assert!(relevance_for_extent(f32::NAN).is_err());
    }

    #[test]
    fn quality_scale() {
        assert_eq!(information_quality(0.0).unwrap(), 1);
        assert_eq!(information_quality(1.0).unwrap(), 7);
        assert_eq!(information_quality(0.5).unwrap(), 4);
        assert_eq!(confidence_for_quality(4).unwrap(), 0.5);
        assert_eq!(confidence_for_quality(0).unwrap(), UNSPECIFIED_CONFIDENCE);
        assert!(confidence_for_quality(8).is_err());
        assert!(information_quality(1.5).is_err());
    }

    #[test]
    fn lane_numbering_both_traffic_sides() {
        let right = LaneNumbering::RightHandTraffic;
        // Right-hand traffic: the rightmost lane (0) is the outermost, LanePosition 1.
        assert_eq!(right.lane_position(0).unwrap(), 1);
        assert_eq!(right.lane_position(13).unwrap(), 14);
        assert!(right.lane_position(14).is_err());
        let left = LaneNumbering::LeftHandTraffic { driving_lanes: 3 };
        // Left-hand traffic, 3 lanes: the leftmost (2) is the outermost, LanePosition 1.
        assert_eq!(left.lane_position(2).unwrap(), 1);
        assert_eq!(left.lane_position(0).unwrap(), 3);
        assert!(left.lane_position(3).is_err());
        assert!(left.lane_index(4).is_err());
        for l in [right, left] {
            for i in 0..3 {
                assert_eq!(l.lane_index(l.lane_position(i).unwrap()).unwrap(), i);
            }
        }
        assert!(LaneNumbering::LeftHandTraffic { driving_lanes: 0 }
            .validate("l")
            .is_err());
    }
}
