//! The "map" frame <-> WGS84.
//!
//! twinlink's "map" frame is a local tangent plane (REP-103: x east, y north, z up, metres) at
//! a geodetic origin. C-ITS positions are WGS84 latitude/longitude (and altitude above the
//! ellipsoid). The conversion is the exact east-north-up (ENU) transform on the WGS84
//! ellipsoid: map (e, n, u) -> ECEF through the ENU rotation at the origin -> geodetic, and
//! back; the arithmetic is the `map_3d` crate's (a port of pymap3d). It is exact at any
//! distance (no flat-earth approximation); "map" is only as flat as a tangent plane is, so
//! far from the origin "up" tilts away from the local vertical (about 8 cm of height per km
//! squared of distance), which the conversion accounts for in both directions.

use map_3d::{enu2geodetic, enu2uvw, geodetic2enu, uvw2enu, Ellipsoid};
use twinlink_msgs::geometry_msgs::msg::Point;

use crate::quant::finite;
use crate::CitsError;

/// Largest |latitude| of a map origin or a CPM reference point: east and north are undefined
/// at the poles.
pub const MAX_ORIGIN_LATITUDE_DEG: f64 = 89.9;

/// Largest distance of a map point from the origin, per axis, that is converted \[m\].
/// Far beyond any region a twinlink map covers; it keeps nonsense coordinates out of the
/// geodetic arithmetic.
pub const MAX_MAP_COORDINATE_M: f64 = 1_000_000.0;

/// A WGS84 position: degrees, and metres above the ellipsoid.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GeoPoint {
    /// Latitude \[deg\], north positive.
    pub latitude_deg: f64,
    /// Longitude \[deg\], east positive.
    pub longitude_deg: f64,
    /// Height above the WGS84 ellipsoid \[m\].
    pub altitude_m: f64,
}

/// The WGS84 position of the "map" frame's origin (map x = east, y = north, z = up there).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GeoOrigin {
    /// Latitude \[deg\], north positive; |latitude| <= [`MAX_ORIGIN_LATITUDE_DEG`].
    pub latitude_deg: f64,
    /// Longitude \[deg\], east positive.
    pub longitude_deg: f64,
    /// Height above the WGS84 ellipsoid \[m\].
    pub altitude_m: f64,
}

impl From<GeoOrigin> for GeoPoint {
    fn from(o: GeoOrigin) -> Self {
        GeoPoint {
            latitude_deg: o.latitude_deg,
            longitude_deg: o.longitude_deg,
            altitude_m: o.altitude_m,
        }
    }
}

impl From<GeoPoint> for GeoOrigin {
    fn from(p: GeoPoint) -> Self {
        GeoOrigin {
            latitude_deg: p.latitude_deg,
            longitude_deg: p.longitude_deg,
            altitude_m: p.altitude_m,
        }
    }
}

impl GeoPoint {
    /// Checks that the point is finite and on the globe (|lat| <= 90, |lon| <= 180). (The
    /// altitudes C-ITS can express, -1000 m to 8000 m, are checked where a message is built.)
    pub fn validate(&self, field: &str) -> Result<(), CitsError> {
        let lat = finite(&format!("{field}.latitude"), self.latitude_deg)?;
        let lon = finite(&format!("{field}.longitude"), self.longitude_deg)?;
        let alt = finite(&format!("{field}.altitude"), self.altitude_m)?;
        if lat.abs() > 90.0 {
            return Err(CitsError::out_of_range(
                format!("{field}.latitude"),
                lat,
                "[-90, 90] deg",
            ));
        }
        if lon.abs() > 180.0 {
            return Err(CitsError::out_of_range(
                format!("{field}.longitude"),
                lon,
                "[-180, 180] deg",
            ));
        }
        // Altitude: any finite value converts; the message fields check their own range.
        let _ = alt;
        Ok(())
    }

    /// [`validate`](Self::validate), and not so close to a pole that east and north are
    /// undefined (|lat| <= [`MAX_ORIGIN_LATITUDE_DEG`]): required of tangent-plane origins.
    pub fn validate_as_origin(&self, field: &str) -> Result<(), CitsError> {
        self.validate(field)?;
        if self.latitude_deg.abs() > MAX_ORIGIN_LATITUDE_DEG {
            return Err(CitsError::out_of_range(
                format!("{field}.latitude"),
                self.latitude_deg,
                format!("[-{MAX_ORIGIN_LATITUDE_DEG}, {MAX_ORIGIN_LATITUDE_DEG}] deg for a tangent-plane origin"),
            ));
        }
        Ok(())
    }

    fn radians(&self) -> (f64, f64) {
        (
            self.latitude_deg.to_radians(),
            self.longitude_deg.to_radians(),
        )
    }
}

impl GeoOrigin {
    /// Reads `LAT,LON` or `LAT,LON,ALT` (degrees, degrees, metres above the WGS84
    /// ellipsoid; altitude 0 when left out), as command lines give an origin; the error
    /// says what is wrong.
    pub fn parse(text: &str) -> Result<GeoOrigin, String> {
        let bad = |why: String| {
            format!("{text:?}: {why} (give LAT,LON or LAT,LON,ALT in degrees and metres, e.g. 48.137,11.575,520)")
        };
        let parts = text
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<f64>()
                    .map_err(|e| bad(format!("{p:?}: {e}")))
            })
            .collect::<Result<Vec<f64>, String>>()?;
        let (latitude_deg, longitude_deg, altitude_m) = match parts[..] {
            [lat, lon] => (lat, lon, 0.0),
            [lat, lon, alt] => (lat, lon, alt),
            _ => return Err(bad(format!("{} numbers", parts.len()))),
        };
        let origin = GeoOrigin {
            latitude_deg,
            longitude_deg,
            altitude_m,
        };
        GeoPoint::from(origin)
            .validate_as_origin("origin")
            .map_err(|e| bad(e.to_string()))?;
        Ok(origin)
    }

    /// Checks the origin (see [`GeoPoint::validate_as_origin`]).
    pub fn validate(&self) -> Result<(), CitsError> {
        GeoPoint::from(*self).validate_as_origin("origin")
    }

    /// The WGS84 position of a point given in the map frame.
    pub fn map_to_geodetic(&self, p: &Point) -> Result<GeoPoint, CitsError> {
        self.map_to_geodetic_named(p, "position")
    }

    /// The map-frame position of a WGS84 point.
    pub fn geodetic_to_map(&self, g: &GeoPoint) -> Result<Point, CitsError> {
        self.validate()?;
        g.validate("position")?;
        let [x, y, z] = geodetic_to_enu(&GeoPoint::from(*self), g);
        Ok(Point { x, y, z })
    }

    pub(crate) fn map_to_geodetic_named(
        &self,
        p: &Point,
        field: &str,
    ) -> Result<GeoPoint, CitsError> {
        self.validate()?;
        let enu = map_coordinates(p, field)?;
        Ok(enu_to_geodetic(&GeoPoint::from(*self), enu))
    }
}

/// The finite, bounded coordinates of a map point.
pub(crate) fn map_coordinates(p: &Point, field: &str) -> Result<[f64; 3], CitsError> {
    let mut out = [0.0; 3];
    for (i, (axis, v)) in [("x", p.x), ("y", p.y), ("z", p.z)].into_iter().enumerate() {
        let name = format!("{field}.{axis}");
        let v = finite(&name, v)?;
        if v.abs() > MAX_MAP_COORDINATE_M {
            return Err(CitsError::out_of_range(
                name,
                v,
                format!("[-{MAX_MAP_COORDINATE_M}, {MAX_MAP_COORDINATE_M}] m from the origin"),
            ));
        }
        out[i] = v;
    }
    Ok(out)
}

/// The geodetic position of the point `enu` metres east, north and up of `at` (in the
/// tangent plane at `at`).
pub fn enu_to_geodetic(at: &GeoPoint, enu: [f64; 3]) -> GeoPoint {
    let (lat0, lon0) = at.radians();
    let (lat, lon, alt) = enu2geodetic(
        enu[0],
        enu[1],
        enu[2],
        lat0,
        lon0,
        at.altitude_m,
        Ellipsoid::WGS84,
    );
    GeoPoint {
        latitude_deg: lat.to_degrees(),
        longitude_deg: lon.to_degrees(),
        altitude_m: alt,
    }
}

/// The east, north, up coordinates of `p` in the tangent plane at `at` \[m\].
pub fn geodetic_to_enu(at: &GeoPoint, p: &GeoPoint) -> [f64; 3] {
    let (lat0, lon0) = at.radians();
    let (lat, lon) = p.radians();
    let (e, n, u) = geodetic2enu(
        lat,
        lon,
        p.altitude_m,
        lat0,
        lon0,
        at.altitude_m,
        Ellipsoid::WGS84,
    );
    [e, n, u]
}

/// A vector given in east-north-up components at `from`, in east-north-up components at
/// `to` (the rotation between the two tangent planes; a vector has no position, so only the
/// orientation of the planes matters).
pub fn rotate_enu(v: [f64; 3], from: &GeoPoint, to: &GeoPoint) -> [f64; 3] {
    let (lat0, lon0) = from.radians();
    let (x, y, z) = enu2uvw(v[0], v[1], v[2], lat0, lon0);
    let (lat1, lon1) = to.radians();
    let (e, n, u) = uvw2enu(x, y, z, lat1, lon1);
    [e, n, u]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> GeoOrigin {
        GeoOrigin {
            latitude_deg: 42.0,
            longitude_deg: -82.0,
            altitude_m: 200.0,
        }
    }

    /// Reference values from the closed-form geodetic -> ECEF -> ENU formulas (WGS84,
    /// a = 6378137 m, f = 1/298.257223563), evaluated independently in double precision
    /// (Python, no geodesy library). The point is the one of pymap3d's README example.
    #[test]
    fn origins_parse_from_the_command_line_form() {
        let o = GeoOrigin::parse("48.137, 11.575,520").unwrap();
        assert_eq!(
            (o.latitude_deg, o.longitude_deg, o.altitude_m),
            (48.137, 11.575, 520.0)
        );
        assert_eq!(GeoOrigin::parse("48,11").unwrap().altitude_m, 0.0);
        assert!(GeoOrigin::parse("48").unwrap_err().contains("1 numbers"));
        assert!(GeoOrigin::parse("north,11")
            .unwrap_err()
            .contains("LAT,LON"));
        assert!(GeoOrigin::parse("95,11").is_err());
        assert!(
            GeoOrigin::parse("89.95,11").is_err(),
            "too near a pole for a tangent plane"
        );
    }

    #[test]
    fn enu_matches_reference_values() {
        let p = GeoPoint {
            latitude_deg: 42.002582,
            longitude_deg: -81.997752,
            altitude_m: 1139.702,
        };
        let m = origin().geodetic_to_map(&p).unwrap();
        assert!((m.x - 186.274_211_849_684_72).abs() < 1e-6, "{m:?}");
        assert!((m.y - 286.845_088_007_777_46).abs() < 1e-6, "{m:?}");
        assert!((m.z - 939.692_821_177_739_6).abs() < 1e-6, "{m:?}");
        let g = origin().map_to_geodetic(&m).unwrap();
        assert!((g.latitude_deg - p.latitude_deg).abs() < 1e-11, "{g:?}");
        assert!((g.longitude_deg - p.longitude_deg).abs() < 1e-11, "{g:?}");
        assert!((g.altitude_m - p.altitude_m).abs() < 1e-6, "{g:?}");
    }

    /// 1e-7 degrees of latitude at 48 deg N is 1.1119 cm; of longitude, 0.7463 cm
    /// (same reference computation as above).
    #[test]
    fn one_unit_of_c_its_latitude_is_about_a_centimetre() {
        let at = GeoPoint {
            latitude_deg: 48.0,
            longitude_deg: 11.0,
            altitude_m: 0.0,
        };
        let north = geodetic_to_enu(
            &at,
            &GeoPoint {
                latitude_deg: 48.000_000_1,
                ..at
            },
        );
        let east = geodetic_to_enu(
            &at,
            &GeoPoint {
                longitude_deg: 11.000_000_1,
                ..at
            },
        );
        assert!((north[1] - 0.011_119_032).abs() < 1e-7, "{north:?}");
        assert!((east[0] - 0.007_462_535).abs() < 1e-7, "{east:?}");
    }

    #[test]
    fn origin_maps_to_zero_and_curvature_is_accounted_for() {
        let o = origin();
        let m = o.geodetic_to_map(&GeoPoint::from(o)).unwrap();
        assert!(m.x.abs() < 1e-9 && m.y.abs() < 1e-9 && m.z.abs() < 1e-9);
        // 1 km east on the tangent plane is ~7.8 cm above the ellipsoid.
        let g = o
            .map_to_geodetic(&Point {
                x: 1000.0,
                y: 0.0,
                z: 0.0,
            })
            .unwrap();
        let rise = g.altitude_m - o.altitude_m;
        assert!((0.07..0.09).contains(&rise), "{rise}");
    }

    #[test]
    fn round_trips_far_from_the_origin() {
        let o = GeoOrigin {
            latitude_deg: -33.86,
            longitude_deg: 151.2,
            altitude_m: 10.0,
        };
        for p in [
            Point {
                x: 25_000.0,
                y: -40_000.0,
                z: 3.0,
            },
            Point {
                x: -999_000.0,
                y: 500_000.0,
                z: -20.0,
            },
        ] {
            let back = o.geodetic_to_map(&o.map_to_geodetic(&p).unwrap()).unwrap();
            assert!((back.x - p.x).abs() < 1e-4, "{back:?}");
            assert!((back.y - p.y).abs() < 1e-4, "{back:?}");
            assert!((back.z - p.z).abs() < 1e-4, "{back:?}");
        }
    }

    #[test]
    fn rotation_between_nearby_planes_is_almost_identity_and_preserves_length() {
        let a = GeoPoint::from(origin());
        let b = enu_to_geodetic(&a, [2000.0, 1000.0, 0.0]);
        let v = rotate_enu([10.0, 0.0, 0.0], &a, &b);
        assert!(((v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt() - 10.0).abs() < 1e-9);
        // Meridian convergence over 2 km at 42 deg: ~0.017 deg; the vector turns by that.
        let turn = v[1].atan2(v[0]).to_degrees();
        assert!(turn.abs() > 0.01 && turn.abs() < 0.03, "{turn}");
        let back = rotate_enu(v, &b, &a);
        assert!((back[0] - 10.0).abs() < 1e-9 && back[1].abs() < 1e-9);
    }

    #[test]
    fn bad_origins_and_points_are_errors() {
        let mut o = origin();
        o.latitude_deg = f64::NAN;
        assert!(matches!(o.validate(), Err(CitsError::NotFinite { .. })));
        o.latitude_deg = 90.0;
        let e = o.validate().unwrap_err();
        assert!(e.to_string().contains("origin.latitude"), "{e}");
        let e = origin()
            .map_to_geodetic(&Point {
                x: f64::INFINITY,
                y: 0.0,
                z: 0.0,
            })
            .unwrap_err();
        assert!(e.to_string().contains("position.x"), "{e}");
        let e = origin()
            .map_to_geodetic(&Point {
                x: 0.0,
                y: 2e6,
                z: 0.0,
            })
            .unwrap_err();
        assert!(e.to_string().contains("position.y"), "{e}");
    }
}
