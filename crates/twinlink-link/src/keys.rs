//! The key space: every Zenoh key expression twinlink uses, defined once.
//!
//! Nothing else in the project formats a key by hand. Keys are built from validated parts
//! ([`VehicleId`], [`RegionTile`]), so a vehicle id can never smuggle `*`, `/` or `$`
//! into a key expression and widen what a subscriber sees.
//!
//! ```text
//! twinlink/v1/twin/<vehicle>/up             PE -> DR sealed data frames (put)
//! twinlink/v1/twin/<vehicle>/down           DR -> PE sealed data frames (put)
//! twinlink/v1/twin/<vehicle>/sync           DR queryable: handshake, key rotation, catch-up
//! twinlink/v1/twin/<vehicle>/alive/pe       liveliness token of the PE
//! twinlink/v1/twin/<vehicle>/alive/dr       liveliness token of the DR
//! twinlink/v1/twin/*/...                    the same for every vehicle: a link hub's
//!                                           wildcard declarations (crate::hub)
//! twinlink/v1/share/<category>/<tile>       inter-twin disclosures by name, what and where
//!                                           (sealed twin_msgs/SharedObservation envelopes;
//!                                           no vehicle, twin or pseudonym in the key)
//! twinlink/v1/share/<category>/*            the same for every tile
//! twinlink/v1/cits/denm                     road-side units' DENMs (UPER, EN 302 637-3)
//!                                           into the regional service
//! twinlink/v1/cits/denm-out/<tile>          hazards twins may disclose to any twin, as
//!                                           standard DENMs for C-ITS gateways
//! twinlink/v1/region/<tile>/<category>      regional data by tile and category (CDR,
//!                                           e.g. `traffic`: twin_msgs/RegionalTraffic)
//! twinlink/v1/region/<tile>/hazards         incidents from outside the census (road-side
//!                                           units), published whatever k (RegionalTraffic)
//! twinlink/v1/census/<tile>                 twins' census contributions to the regional
//!                                           service (CDR, twin_msgs/CensusReport)
//! twinlink/v1/census/*                      the same for every tile: the regional
//!                                           service's subscription
//! ```
//!
//! A DR host serves many twins from one Zenoh session: it watches every PE's liveliness
//! token ([`any_pe_alive`]) and every handshake ([`any_sync`]) to wake the twin a vehicle
//! is looking for, and reads a key's vehicle back with [`vehicle_of`].

use std::fmt;
use std::str::FromStr;

use zenoh::key_expr::OwnedKeyExpr;

/// Prefix of every key, with the protocol version, so that a future wire change can run
/// beside this one on the same routers.
pub const ROOT: &str = "twinlink/v1";

/// The longest vehicle id accepted.
pub const MAX_VEHICLE_ID_LEN: usize = 64;

/// Why a name was refused as a key chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The name was empty.
    #[error("{what} is empty")]
    Empty {
        /// What was being named (`vehicle id`, `region tile`, ...).
        what: &'static str,
    },
    /// The name was longer than allowed.
    #[error("{what} {value:?} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// What was being named.
        what: &'static str,
        /// The refused value.
        value: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name had a character outside `[A-Za-z0-9_.-]`.
    #[error("{what} {value:?} contains {ch:?}; only ASCII letters, digits, '_', '-' and '.' are allowed")]
    BadCharacter {
        /// What was being named.
        what: &'static str,
        /// The refused value.
        value: String,
        /// The first character refused.
        ch: char,
    },
}

fn validate_chunk(what: &'static str, value: &str, max: usize) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty { what });
    }
    if value.len() > max {
        return Err(KeyError::TooLong {
            what,
            value: value.to_string(),
            len: value.len(),
            max,
        });
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(KeyError::BadCharacter {
            what,
            value: value.to_string(),
            ch,
        });
    }
    if value.starts_with('.') {
        return Err(KeyError::BadCharacter {
            what,
            value: value.to_string(),
            ch: '.',
        });
    }
    Ok(())
}

/// A vehicle's id: one key chunk of ASCII letters, digits, `_`, `-` and `.`, 1 to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VehicleId(String);

impl VehicleId {
    /// Validates `value` as a vehicle id.
    pub fn new(value: &str) -> Result<Self, KeyError> {
        validate_chunk("vehicle id", value, MAX_VEHICLE_ID_LEN)?;
        Ok(Self(value.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VehicleId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A region tile name (for example a quadkey or `x_y` grid index), one key chunk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegionTile(String);

impl RegionTile {
    /// Validates `value` as a region tile name.
    pub fn new(value: &str) -> Result<Self, KeyError> {
        validate_chunk("region tile", value, 64)?;
        Ok(Self(value.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which end of the intra-twin link a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// The physical entity: the vehicle.
    Pe,
    /// The digital representative: the vehicle's twin.
    Dr,
}

impl Role {
    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Pe => Role::Dr,
            Role::Dr => Role::Pe,
        }
    }

    /// Lower-case name used in keys, logs and files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pe => "pe",
            Role::Dr => "dr",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn key(text: String) -> OwnedKeyExpr {
    // Every chunk was validated, so the text is a canonical key expression; a failure here
    // is a bug in this module, caught by the tests below.
    OwnedKeyExpr::autocanonize(text).expect("twinlink keys are built from validated chunks")
}

/// The keys of one twin: a PE and its DR.
#[derive(Debug, Clone)]
pub struct TwinKeys {
    vehicle: VehicleId,
}

impl TwinKeys {
    /// The keys of `vehicle`'s twin.
    pub fn new(vehicle: VehicleId) -> Self {
        Self { vehicle }
    }

    /// The vehicle these keys belong to.
    pub fn vehicle(&self) -> &VehicleId {
        &self.vehicle
    }

    fn base(&self) -> String {
        format!("{ROOT}/twin/{}", self.vehicle)
    }

    /// Sealed data frames sent by `from` (PE: `up`, DR: `down`).
    pub fn data_from(&self, from: Role) -> OwnedKeyExpr {
        match from {
            Role::Pe => self.uplink(),
            Role::Dr => self.downlink(),
        }
    }

    /// PE -> DR sealed data frames.
    pub fn uplink(&self) -> OwnedKeyExpr {
        key(format!("{}/up", self.base()))
    }

    /// DR -> PE sealed data frames.
    pub fn downlink(&self) -> OwnedKeyExpr {
        key(format!("{}/down", self.base()))
    }

    /// The DR's queryable for handshakes, key rotation and catch-up.
    pub fn sync(&self) -> OwnedKeyExpr {
        key(format!("{}/sync", self.base()))
    }

    /// The liveliness token of `role`.
    pub fn alive(&self, role: Role) -> OwnedKeyExpr {
        key(format!("{}/alive/{}", self.base(), role.as_str()))
    }

    /// Everything of this twin (for diagnostics and the privacy tests' eavesdropper).
    pub fn all(&self) -> OwnedKeyExpr {
        key(format!("{}/**", self.base()))
    }
}

/// Inter-twin disclosures of `category` (`hazards`, `objects`, `traffic`) in `tile`.
pub fn share(category: &str, tile: &RegionTile) -> Result<OwnedKeyExpr, KeyError> {
    validate_chunk("category", category, 64)?;
    Ok(key(format!("{ROOT}/share/{category}/{}", tile.0)))
}

/// Inter-twin disclosures of `category` in every tile.
pub fn any_share(category: &str) -> Result<OwnedKeyExpr, KeyError> {
    validate_chunk("category", category, 64)?;
    Ok(key(format!("{ROOT}/share/{category}/*")))
}

/// The category and tile of a share key (`twinlink/v1/share/<category>/<tile>`).
pub fn share_name_of(key_expr: &str) -> Option<(&str, RegionTile)> {
    let rest = key_expr.strip_prefix(ROOT)?.strip_prefix("/share/")?;
    let (category, tile) = rest.split_once('/')?;
    validate_chunk("category", category, 64).ok()?;
    Some((category, RegionTile::new(tile).ok()?))
}

/// Regional traffic of one tile and category (reserved for the regional service).
pub fn region(tile: &RegionTile, category: &str) -> Result<OwnedKeyExpr, KeyError> {
    validate_chunk("category", category, 64)?;
    Ok(key(format!("{ROOT}/region/{}/{category}", tile.0)))
}

/// The liveliness tokens of every PE.
pub fn any_pe_alive() -> OwnedKeyExpr {
    any_alive(Role::Pe)
}

/// The liveliness tokens of every twin's `role` end.
pub fn any_alive(role: Role) -> OwnedKeyExpr {
    key(format!("{ROOT}/twin/*/alive/{}", role.as_str()))
}

/// The data frames that every twin's `from` end sends (PE: `up`, DR: `down`).
pub fn any_data_from(from: Role) -> OwnedKeyExpr {
    let direction = match from {
        Role::Pe => "up",
        Role::Dr => "down",
    };
    key(format!("{ROOT}/twin/*/{direction}"))
}

/// The handshake keys of every twin.
pub fn any_sync() -> OwnedKeyExpr {
    key(format!("{ROOT}/twin/*/sync"))
}

/// Regional data of `category` for every tile.
pub fn any_region(category: &str) -> Result<OwnedKeyExpr, KeyError> {
    validate_chunk("category", category, 64)?;
    Ok(key(format!("{ROOT}/region/*/{category}")))
}

/// The vehicle a twin key (`twinlink/v1/twin/<vehicle>/...`) belongs to.
pub fn vehicle_of(key_expr: &str) -> Option<VehicleId> {
    let rest = key_expr.strip_prefix(ROOT)?.strip_prefix("/twin/")?;
    let vehicle = rest.split('/').next()?;
    VehicleId::new(vehicle).ok()
}

/// The tile of a region key (`twinlink/v1/region/<tile>/<category>`).
pub fn tile_of(key_expr: &str) -> Option<RegionTile> {
    let rest = key_expr.strip_prefix(ROOT)?.strip_prefix("/region/")?;
    RegionTile::new(rest.split('/').next()?).ok()
}

/// Census contributions of twins for one tile (read by the regional service).
pub fn census(tile: &RegionTile) -> OwnedKeyExpr {
    key(format!("{ROOT}/census/{}", tile.0))
}

/// Census contributions for every tile (the regional service's subscription).
pub fn any_census() -> OwnedKeyExpr {
    key(format!("{ROOT}/census/*"))
}

/// The tile of a census key (`twinlink/v1/census/<tile>`, nothing after the tile).
pub fn census_tile_of(key_expr: &str) -> Option<RegionTile> {
    let rest = key_expr.strip_prefix(ROOT)?.strip_prefix("/census/")?;
    RegionTile::new(rest).ok()
}

/// Road-side units' DENMs (UPER bytes) for the regional service.
pub fn cits_denm() -> OwnedKeyExpr {
    key(format!("{ROOT}/cits/denm"))
}

/// Hazards that twins may disclose to any twin, as standard DENMs (UPER), by tile.
pub fn cits_denm_out(tile: &RegionTile) -> OwnedKeyExpr {
    key(format!("{ROOT}/cits/denm-out/{}", tile.0))
}

/// Every twinlink key (for diagnostics).
pub fn everything() -> OwnedKeyExpr {
    key(format!("{ROOT}/**"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twin() -> TwinKeys {
        TwinKeys::new(VehicleId::new("veh-01").unwrap())
    }

    #[test]
    fn keys_have_the_documented_shape() {
        let t = twin();
        assert_eq!(t.uplink().as_str(), "twinlink/v1/twin/veh-01/up");
        assert_eq!(t.downlink().as_str(), "twinlink/v1/twin/veh-01/down");
        assert_eq!(t.sync().as_str(), "twinlink/v1/twin/veh-01/sync");
        assert_eq!(
            t.alive(Role::Pe).as_str(),
            "twinlink/v1/twin/veh-01/alive/pe"
        );
        assert_eq!(
            t.alive(Role::Dr).as_str(),
            "twinlink/v1/twin/veh-01/alive/dr"
        );
        assert_eq!(t.data_from(Role::Pe), t.uplink());
        assert_eq!(t.data_from(Role::Dr), t.downlink());
        let tile = RegionTile::new("120_33").unwrap();
        let shared = share("hazards", &tile).unwrap();
        assert_eq!(shared.as_str(), "twinlink/v1/share/hazards/120_33");
        let (category, back) = share_name_of(shared.as_str()).unwrap();
        assert_eq!((category, back.as_str()), ("hazards", "120_33"));
        assert!(any_share("hazards").unwrap().intersects(&shared));
        assert!(share("haz/*", &tile).is_err());
        assert!(share_name_of("twinlink/v1/share/hazards").is_none());
        assert!(share_name_of("twinlink/v1/share/hazards/1_2/x").is_none());
        assert_eq!(
            region(&tile, "hazard").unwrap().as_str(),
            "twinlink/v1/region/120_33/hazard"
        );
    }

    #[test]
    fn one_twins_wildcard_covers_its_keys_and_no_other_twin() {
        let t = twin();
        let all = t.all();
        for k in [t.uplink(), t.downlink(), t.sync(), t.alive(Role::Pe)] {
            assert!(all.intersects(&k), "{k}");
        }
        let neighbour = TwinKeys::new(VehicleId::new("veh-011").unwrap());
        assert!(!all.intersects(&neighbour.uplink()));
        assert!(everything().includes(&neighbour.uplink()));
    }

    #[test]
    fn host_wildcards_match_every_twin_and_keys_read_back() {
        let t = twin();
        assert!(any_pe_alive().includes(&t.alive(Role::Pe)));
        assert!(!any_pe_alive().intersects(&t.alive(Role::Dr)));
        assert!(any_sync().includes(&t.sync()));
        for role in [Role::Pe, Role::Dr] {
            assert!(any_alive(role).includes(&t.alive(role)));
            assert!(!any_alive(role).intersects(&t.alive(role.peer())));
            assert!(any_data_from(role).includes(&t.data_from(role)));
            assert!(!any_data_from(role).intersects(&t.data_from(role.peer())));
        }
        let tile = RegionTile::new("120_33").unwrap();
        let traffic = region(&tile, "traffic").unwrap();
        assert!(any_region("traffic").unwrap().includes(&traffic));
        assert!(any_region("a/b").is_err());
        assert_eq!(vehicle_of(t.sync().as_str()).unwrap().as_str(), "veh-01");
        assert_eq!(
            vehicle_of("twinlink/v1/twin/veh-01").unwrap().as_str(),
            "veh-01"
        );
        assert!(vehicle_of("twinlink/v1/relay/veh-01/x").is_none());
        assert!(vehicle_of("twinlink/v1/twin/*/sync").is_none());
        assert_eq!(tile_of(traffic.as_str()).unwrap().as_str(), "120_33");
    }

    #[test]
    fn census_keys_have_the_documented_shape_and_read_back() {
        let tile = RegionTile::new("120_33").unwrap();
        let census = census(&tile);
        assert_eq!(census.as_str(), "twinlink/v1/census/120_33");
        assert!(any_census().includes(&census));
        assert!(!any_census().intersects(&region(&tile, "traffic").unwrap()));
        assert_eq!(census_tile_of(census.as_str()).unwrap(), tile);
        assert!(census_tile_of("twinlink/v1/census/120_33/x").is_none());
        assert!(census_tile_of("twinlink/v1/census/*").is_none());
        assert!(census_tile_of("twinlink/v1/region/120_33/traffic").is_none());
    }

    #[test]
    fn vehicle_ids_that_would_widen_a_key_are_refused() {
        for bad in [
            "", "a/b", "*", "**", "a*", "$x", "veh 1", "v#1", "v?1", ".hidden", "é",
        ] {
            assert!(VehicleId::new(bad).is_err(), "{bad:?} accepted");
        }
        let long = "x".repeat(MAX_VEHICLE_ID_LEN + 1);
        let err = VehicleId::new(&long).unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
        let err = VehicleId::new("a/b").unwrap_err();
        assert!(err.to_string().contains("vehicle id"), "{err}");
        for good in ["veh-01", "CAR_7", "fleet.a.12", "x"] {
            VehicleId::new(good).unwrap();
        }
    }
}
