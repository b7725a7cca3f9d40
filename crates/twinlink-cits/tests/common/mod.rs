//! Shared fixtures of the integration tests.
#![allow(dead_code)]

use twinlink_cits::geo::GeoOrigin;
use twinlink_msgs::builtin_interfaces::msg::Time;

/// Map origin used by the tests: Munich, 519 m above the ellipsoid.
pub const ORIGIN: GeoOrigin = GeoOrigin {
    latitude_deg: 48.137_154,
    longitude_deg: 11.576_124,
    altitude_m: 519.0,
};

/// 2023-11-14T22:13:20Z.
pub const T0: Time = Time {
    sec: 1_700_000_000,
    nanosec: 0,
};

pub fn time(sec: i32, nanosec: u32) -> Time {
    Time { sec, nanosec }
}

/// Time as milliseconds (for tolerance checks).
pub fn ms(t: &Time) -> i64 {
    i64::from(t.sec) * 1000 + i64::from(t.nanosec / 1_000_000)
}

/// Hex text -> bytes (whitespace ignored).
pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
