//! Road-side units' DENMs into the regional service: the standard C-ITS hazard warning
//! (ETSI EN 302 637-3 v1.3.1, UPER) as an outside incident of the tile it lies in.
//!
//! Road-side units (or a C-ITS gateway in front of them) put each DENM's UPER bytes on
//! `twinlink/v1/cits/denm` ([`twinlink_link::keys::cits_denm`]). The service decodes it
//! with `twinlink-cits`, places its event position in the map frame at the configured
//! WGS84 origin, names the tile it lies in on the twins' grid, and adds it to that tile
//! like any road-side-unit incident: it is published on `region/<tile>/hazards` whatever
//! k, and rides along in the tile's `RegionalTraffic`. A termination (cancellation or
//! negation) arrives already expired and withdraws the incident.

use twinlink_cits::denm::{decode_denm, denm_to_incident};
use twinlink_cits::GeoOrigin;
use twinlink_link::keys::RegionTile;
use twinlink_share::TileGrid;

use crate::aggregate::IncidentSource;
use crate::service::IncidentInput;

/// Why a DENM did not become an incident.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DenmRefusal {
    /// Not a valid UPER DENM.
    #[error("undecodable DENM: {0}")]
    Undecodable(String),
    /// A DENM whose content cannot be an incident here (another protocol version, an
    /// event position off the globe, ...).
    #[error("DENM refused: {0}")]
    Invalid(String),
}

impl DenmRefusal {
    /// A short, stable label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenmRefusal::Undecodable(_) => "undecodable_denm",
            DenmRefusal::Invalid(_) => "invalid_denm",
        }
    }
}

/// The incident a DENM's `bytes` announce, for the tile of `grid` it lies in (map frame at
/// `origin`).
pub fn incident_from_denm(
    bytes: &[u8],
    origin: &GeoOrigin,
    grid: &TileGrid,
) -> Result<IncidentInput, DenmRefusal> {
    let denm = decode_denm(bytes).map_err(|e| DenmRefusal::Undecodable(e.to_string()))?;
    let incident =
        denm_to_incident(&denm, origin).map_err(|e| DenmRefusal::Invalid(e.to_string()))?;
    let tile = grid.tile_of(incident.position.x, incident.position.y);
    let tile = RegionTile::new(&tile.to_string())
        .map_err(|e| DenmRefusal::Invalid(format!("tile {tile}: {e}")))?;
    Ok(IncidentInput {
        tile,
        incident,
        source: IncidentSource::Rsu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_cits::denm::{encode_denm, incident_to_denm, DenmContext};
    use twinlink_msgs::geometry_msgs::msg::Point;
    use twinlink_msgs::twin_msgs::msg::Incident;
    use twinlink_share::time::ros_time;

    const ORIGIN: GeoOrigin = GeoOrigin {
        latitude_deg: 48.137,
        longitude_deg: 11.575,
        altitude_m: 520.0,
    };
    const NOW_US: u64 = 1_800_000_000_000_000;

    fn denm_bytes(x: f64, y: f64) -> Vec<u8> {
        let incident = Incident {
            incident_id: "rsu-7".into(),
            incident_kind: Incident::INCIDENT_ACCIDENT,
            position: Point { x, y, z: 0.0 },
            lane_index: 1,
            extent: 200.0,
            confidence: 0.8,
            detected: ros_time(NOW_US - 5_000_000),
            expires: ros_time(NOW_US + 600_000_000),
            ..Default::default()
        };
        let ctx = DenmContext::road_side_unit(4242, ORIGIN, ros_time(NOW_US));
        encode_denm(&incident_to_denm(&incident, &ctx).unwrap()).unwrap()
    }

    #[test]
    fn a_road_side_units_denm_becomes_an_incident_of_its_tile() {
        let input =
            incident_from_denm(&denm_bytes(2450.0, 3.5), &ORIGIN, &TileGrid::default()).unwrap();
        assert_eq!(input.tile.as_str(), "2_0");
        assert_eq!(input.source, IncidentSource::Rsu);
        let i = &input.incident;
        assert_eq!(i.incident_kind, Incident::INCIDENT_ACCIDENT);
        assert!((i.position.x - 2450.0).abs() < 0.5, "{:?}", i.position);
        assert!((i.position.y - 3.5).abs() < 0.5, "{:?}", i.position);
        assert!(i.incident_id.starts_with("denm-4242-"), "{}", i.incident_id);
    }

    #[test]
    fn bad_bytes_are_refused_with_their_reason() {
        let e = incident_from_denm(b"not a denm", &ORIGIN, &TileGrid::default()).unwrap_err();
        assert_eq!(e.as_str(), "undecodable_denm");
        let mut bytes = denm_bytes(100.0, 0.0);
        bytes.truncate(bytes.len() / 2);
        assert!(incident_from_denm(&bytes, &ORIGIN, &TileGrid::default()).is_err());
    }
}
