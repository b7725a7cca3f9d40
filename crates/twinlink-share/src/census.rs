//! The census contract shared by twins and the service: aggregation windows, contributor
//! tokens and time conversions.
//!
//! Windows are aligned to the Unix epoch: window `i` of length `L` covers
//! `[i * L, (i + 1) * L)`. A twin and the service that agree on `L` (the service publishes
//! it in every `RegionalTraffic.window`) agree on every window without talking.
//!
//! A twin's contributor token for window `i` is
//! `hex(HMAC-SHA256(secret, "twinlink/census/v1/" + i))[..32]` ([`contributor_token`]):
//! stable within the window, so the service counts the twin once however often it
//! reports, and unlinkable across windows for anyone without the twin's secret.

pub use crate::time::{now_us, ros_time, time_us};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use twinlink_msgs::builtin_interfaces::msg::{Duration as RosDuration, Time};

/// Microseconds since the Unix epoch (the service's clock and the unit of windows).
pub type Micros = u64;

/// Prefix of the HMAC message a token is derived from (versioned, so a future derivation
/// cannot collide with this one).
pub const TOKEN_CONTEXT: &str = "twinlink/census/v1/";

/// Length of a contributor token in hex characters (16 bytes of the HMAC).
pub const TOKEN_LEN: usize = 32;

/// Aggregation windows of one length, aligned to the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    length_us: Micros,
}

impl Windows {
    /// Windows of `length_us` microseconds (at least 1).
    pub fn new(length_us: Micros) -> Self {
        Self {
            length_us: length_us.max(1),
        }
    }

    /// The window length \[µs\].
    pub fn length_us(&self) -> Micros {
        self.length_us
    }

    /// Index of the window that contains `t_us`.
    pub fn index_of(&self, t_us: Micros) -> u64 {
        t_us / self.length_us
    }

    /// Start of the window that contains `t_us` \[µs\].
    pub fn start_of(&self, t_us: Micros) -> Micros {
        self.index_of(t_us) * self.length_us
    }

    /// Whether `t_us` is the start of a window.
    pub fn is_start(&self, t_us: Micros) -> bool {
        t_us % self.length_us == 0
    }
}

/// The contributor token of a twin with `secret` for window `window_index` (see the
/// module documentation and `CensusReport.msg`).
pub fn contributor_token(secret: &[u8], window_index: u64) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .expect("HMAC-SHA256 takes a key of any length");
    mac.update(TOKEN_CONTEXT.as_bytes());
    mac.update(window_index.to_string().as_bytes());
    let digest = mac.finalize().into_bytes();
    digest[..TOKEN_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a ROS time has sub-microsecond digits (it cannot be a window start).
pub fn has_sub_micros(t: &Time) -> bool {
    t.nanosec % 1_000 != 0
}

/// A span of microseconds as a ROS duration.
pub fn ros_duration(span_us: Micros) -> RosDuration {
    let t = ros_time(span_us);
    RosDuration {
        sec: t.sec,
        nanosec: t.nanosec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let w = Windows::new(30_000_000);
        assert_eq!(w.index_of(59_999_999), 1);
        assert_eq!(w.start_of(59_999_999), 30_000_000);
        assert!(w.is_start(60_000_000));
        assert!(!w.is_start(60_000_001));
        assert_eq!(Windows::new(0).length_us(), 1);
    }

    #[test]
    fn tokens_are_stable_within_a_window_and_differ_across_windows_and_twins() {
        let a = contributor_token(b"secret-a", 7);
        assert_eq!(a, contributor_token(b"secret-a", 7));
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, contributor_token(b"secret-a", 8));
        assert_ne!(a, contributor_token(b"secret-b", 7));
    }

    #[test]
    fn window_starts_have_no_sub_microsecond_digits_and_spans_convert() {
        // (Time conversions themselves are tested in `crate::time`.)
        assert!(has_sub_micros(&Time { sec: 1, nanosec: 1 }));
        let d = ros_duration(1_500_000);
        assert_eq!((d.sec, d.nanosec), (1, 500_000_000));
    }
}
