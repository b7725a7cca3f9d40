//! ROS time <-> ITS timestamps.
//!
//! ROS times (`builtin_interfaces/Time`) count UTC seconds since the Unix epoch, without leap
//! seconds (POSIX time). ITS timestamps (`TimestampIts`, ETSI TS 102 894-2) count the
//! milliseconds elapsed since 2004-01-01T00:00:00.000 UTC *including* the leap seconds
//! inserted since then (a TAI-like count): since 2017-01-01 an ITS timestamp is 5 s ahead of
//! the UTC milliseconds since 2004 (the standard's own example: 2007-01-01T00:00:00Z is
//! 94 694 401 000). This module applies that table of leap seconds. None has been inserted
//! since 2016-12-31; a future one would have to be added to [`LEAP_SECONDS_SINCE_2004`].
//!
//! Resolution: ITS timestamps are whole milliseconds; ROS nanoseconds are truncated.

use twinlink_msgs::builtin_interfaces::msg::Time;

use crate::CitsError;

/// 2004-01-01T00:00:00Z in Unix seconds: the ITS epoch.
pub const ITS_EPOCH_UNIX_S: i64 = 1_072_915_200;

/// Largest `TimestampIts` (42 bits of milliseconds).
pub const TIMESTAMP_ITS_MAX: u64 = 4_398_046_511_103;

/// Leap seconds inserted into UTC since the ITS epoch: `(first Unix second at which the
/// count applies, leap seconds since 2004)`. Source: IERS Bulletin C (insertions at the end
/// of 2005-12-31, 2008-12-31, 2012-06-30, 2015-06-30, 2016-12-31).
pub const LEAP_SECONDS_SINCE_2004: [(i64, i64); 5] = [
    (1_136_073_600, 1), // 2006-01-01
    (1_230_768_000, 2), // 2009-01-01
    (1_341_100_800, 3), // 2012-07-01
    (1_435_708_800, 4), // 2015-07-01
    (1_483_228_800, 5), // 2017-01-01
];

/// Leap seconds inserted between the ITS epoch and the Unix second `unix_s`.
pub fn leap_seconds_since_2004(unix_s: i64) -> i64 {
    LEAP_SECONDS_SINCE_2004
        .iter()
        .rev()
        .find(|(from, _)| unix_s >= *from)
        .map_or(0, |(_, n)| *n)
}

/// A ROS time as an ITS timestamp \[ms\]. Times before 2004 have no ITS timestamp.
pub fn ros_to_its(t: &Time) -> Result<u64, CitsError> {
    ros_to_its_named(t, "time")
}

/// An ITS timestamp \[ms\] as a ROS time. Timestamps past 2038-01-19 (the end of ROS's 32-bit
/// seconds) have no ROS time.
pub fn its_to_ros(its_ms: u64) -> Result<Time, CitsError> {
    its_to_ros_named(its_ms, "timestamp")
}

pub(crate) fn ros_to_its_named(t: &Time, field: &str) -> Result<u64, CitsError> {
    if t.nanosec >= 1_000_000_000 {
        return Err(CitsError::out_of_range(
            format!("{field}.nanosec"),
            t.nanosec,
            "[0, 999999999]",
        ));
    }
    let sec = i64::from(t.sec);
    let unix_ms = sec * 1000 + i64::from(t.nanosec / 1_000_000);
    let its = unix_ms - ITS_EPOCH_UNIX_S * 1000 + leap_seconds_since_2004(sec) * 1000;
    if its < 0 {
        return Err(CitsError::out_of_range(
            field,
            format!("{}.{:09} s", t.sec, t.nanosec),
            "2004-01-01T00:00:00Z or later (the ITS epoch)",
        ));
    }
    // i32 seconds end in 2038, far below the 42-bit maximum (year 2143).
    Ok(its as u64)
}

pub(crate) fn its_to_ros_named(its_ms: u64, field: &str) -> Result<Time, CitsError> {
    if its_ms > TIMESTAMP_ITS_MAX {
        return Err(CitsError::out_of_range(
            field,
            its_ms,
            format!("[0, {TIMESTAMP_ITS_MAX}] ms"),
        ));
    }
    let its = its_ms as i64;
    // The leap count in force at this ITS time; during an inserted leap second the previous
    // count applies, so that second maps onto the first second of the next UTC day.
    let leap = LEAP_SECONDS_SINCE_2004
        .iter()
        .rev()
        .find(|(from, n)| its >= (from - ITS_EPOCH_UNIX_S + n) * 1000)
        .map_or(0, |(_, n)| *n);
    let unix_ms = its + (ITS_EPOCH_UNIX_S - leap) * 1000;
    let sec = i32::try_from(unix_ms.div_euclid(1000)).map_err(|_| {
        CitsError::out_of_range(
            field,
            its_ms,
            "up to 2038-01-19T03:14:07Z (ROS time has 32-bit seconds)",
        )
    })?;
    Ok(Time {
        sec,
        nanosec: (unix_ms.rem_euclid(1000) as u32) * 1_000_000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sec: i32, nanosec: u32) -> Time {
        Time { sec, nanosec }
    }

    #[test]
    fn standard_example_2007() {
        // ETSI TS 102 894-2, TimestampIts: 2007-01-01T00:00:00.000Z = 94 694 401 000.
        assert_eq!(ros_to_its(&t(1_167_609_600, 0)).unwrap(), 94_694_401_000);
        assert_eq!(its_to_ros(94_694_401_000).unwrap(), t(1_167_609_600, 0));
    }

    #[test]
    fn epoch_and_current_offset() {
        assert_eq!(ros_to_its(&t(1_072_915_200, 0)).unwrap(), 0);
        // 2024-01-01T00:00:00Z: 20 years of UTC milliseconds plus 5 leap seconds.
        let unix = 1_704_067_200_i64;
        assert_eq!(
            ros_to_its(&t(unix as i32, 999_999_999)).unwrap() as i64,
            (unix - ITS_EPOCH_UNIX_S) * 1000 + 5000 + 999
        );
    }

    #[test]
    fn round_trip_every_leap_boundary() {
        for (from, _) in LEAP_SECONDS_SINCE_2004 {
            for d in [-2, -1, 0, 1, 2] {
                let time = t((from + d) as i32, 250_000_000);
                let its = ros_to_its(&time).unwrap();
                assert_eq!(its_to_ros(its).unwrap(), time);
            }
            // The inserted second itself maps onto the next UTC second.
            let after = ros_to_its(&t(from as i32, 0)).unwrap();
            assert_eq!(its_to_ros(after - 1000).unwrap(), t(from as i32, 0));
            assert_eq!(
                its_to_ros(after - 1001).unwrap(),
                t(from as i32 - 1, 999_000_000)
            );
        }
    }

    #[test]
    fn out_of_range_times_are_errors() {
        let e = ros_to_its(&t(1_000_000_000, 0)).unwrap_err();
        assert!(e.to_string().contains("2004"), "{e}");
        assert!(ros_to_its(&t(-5, 0)).is_err());
        assert!(ros_to_its(&t(1_700_000_000, 1_000_000_000)).is_err());
        assert!(its_to_ros(TIMESTAMP_ITS_MAX + 1).is_err());
        assert!(its_to_ros(TIMESTAMP_ITS_MAX).is_err()); // year 2143
    }
}
