//! Time conventions: every `now` in this crate is microseconds since the Unix epoch (`u64`),
//! as elsewhere in twinlink; message times are `builtin_interfaces/Time`.

use twinlink_msgs::builtin_interfaces::msg::Time;

/// Microseconds in one second.
pub const US_PER_S: u64 = 1_000_000;

/// Now, in microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch of a message time, or `None` for a time before the
/// epoch or with `nanosec >= 1e9` (not a valid ROS time).
pub fn time_us(t: &Time) -> Option<u64> {
    if t.sec < 0 || t.nanosec >= 1_000_000_000 {
        return None;
    }
    Some(t.sec as u64 * US_PER_S + u64::from(t.nanosec) / 1000)
}

/// The message time of `us` microseconds since the Unix epoch (saturating at the largest
/// time a `Time` can hold, in 2038).
pub fn ros_time(us: u64) -> Time {
    let sec = us / US_PER_S;
    if sec > i32::MAX as u64 {
        return Time {
            sec: i32::MAX,
            nanosec: 999_999_999,
        };
    }
    Time {
        sec: sec as i32,
        nanosec: ((us % US_PER_S) * 1000) as u32,
    }
}

/// True for the zero time, which messages use for "never" / "not set".
pub fn is_zero(t: &Time) -> bool {
    t.sec == 0 && t.nanosec == 0
}

/// Seconds from `earlier_us` to `later_us`, negative if `later_us` is earlier.
pub fn seconds_between(earlier_us: u64, later_us: u64) -> f64 {
    if later_us >= earlier_us {
        (later_us - earlier_us) as f64 / US_PER_S as f64
    } else {
        -((earlier_us - later_us) as f64 / US_PER_S as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let t = ros_time(1_700_000_123_456_789);
        assert_eq!(t.sec, 1_700_000_123);
        assert_eq!(t.nanosec, 456_789_000);
        assert_eq!(time_us(&t), Some(1_700_000_123_456_789));
        assert_eq!(
            time_us(&Time {
                sec: -1,
                nanosec: 0
            }),
            None
        );
        assert_eq!(
            time_us(&Time {
                sec: 1,
                nanosec: 1_000_000_000
            }),
            None
        );
        assert_eq!(ros_time(u64::MAX).sec, i32::MAX);
        assert!(is_zero(&Time::default()));
        assert_eq!(seconds_between(3_000_000, 1_000_000), -2.0);
    }
}
