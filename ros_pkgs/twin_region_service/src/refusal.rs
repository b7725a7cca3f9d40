//! Why an input was refused, and a limiter that keeps refusal logs readable under attack.
//!
//! Every refusal has a stable, short reason ([`RefusalReason::as_str`]) used as the
//! `reason` label of `twinlink_region_contributions_refused_total`, and a detail for the
//! log. The service counts every refusal and logs each reason at most once per interval
//! ([`LogLimiter`]), saying how many it kept quiet.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Why a contribution or an incident was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// The payload is larger than the service accepts, or a string or list is longer
    /// than its bound.
    TooLarge,
    /// The payload is not a CDR-encoded `CensusReport`.
    Undecodable,
    /// The key is not `twinlink/v1/census/<tile>` with a valid tile.
    BadKey,
    /// `tile_id` differs from the tile of the key the report was put on.
    TileMismatch,
    /// `header.frame_id` is not `map`.
    BadFrame,
    /// The contributor token is empty, too long, or has characters outside `[A-Za-z0-9_-]`.
    BadContributor,
    /// `segment_id` is empty or too long.
    BadSegment,
    /// `s` or `speed` is not a finite number.
    NotFinite,
    /// `speed` is outside 0..=100 m/s.
    SpeedOutOfRange,
    /// `s` is negative or beyond the longest segment accepted.
    PositionOutOfRange,
    /// `lane_index` is outside -1..=15.
    LaneOutOfRange,
    /// `window_start` is not the start of an aggregation window.
    WindowMisaligned,
    /// `window_start` lies in the future (beyond the clock tolerance).
    WindowInFuture,
    /// The window was already closed (or its late-arrival grace is over).
    WindowTooOld,
    /// `header.stamp` lies outside the window (beyond the clock tolerance).
    StampOutsideWindow,
    /// `header.stamp` lies in the future (beyond the clock tolerance).
    StampInFuture,
    /// An incident has an invalid field.
    BadIncident,
    /// The service holds as many samples or incidents as it is configured to.
    OverCapacity,
}

impl RefusalReason {
    /// Every reason, for tests and for pre-registering metric labels.
    pub const ALL: [RefusalReason; 18] = [
        RefusalReason::TooLarge,
        RefusalReason::Undecodable,
        RefusalReason::BadKey,
        RefusalReason::TileMismatch,
        RefusalReason::BadFrame,
        RefusalReason::BadContributor,
        RefusalReason::BadSegment,
        RefusalReason::NotFinite,
        RefusalReason::SpeedOutOfRange,
        RefusalReason::PositionOutOfRange,
        RefusalReason::LaneOutOfRange,
        RefusalReason::WindowMisaligned,
        RefusalReason::WindowInFuture,
        RefusalReason::WindowTooOld,
        RefusalReason::StampOutsideWindow,
        RefusalReason::StampInFuture,
        RefusalReason::BadIncident,
        RefusalReason::OverCapacity,
    ];

    /// The stable label of this reason (metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::TooLarge => "too_large",
            RefusalReason::Undecodable => "undecodable",
            RefusalReason::BadKey => "bad_key",
            RefusalReason::TileMismatch => "tile_mismatch",
            RefusalReason::BadFrame => "bad_frame",
            RefusalReason::BadContributor => "bad_contributor",
            RefusalReason::BadSegment => "bad_segment",
            RefusalReason::NotFinite => "not_finite",
            RefusalReason::SpeedOutOfRange => "speed_out_of_range",
            RefusalReason::PositionOutOfRange => "position_out_of_range",
            RefusalReason::LaneOutOfRange => "lane_out_of_range",
            RefusalReason::WindowMisaligned => "window_misaligned",
            RefusalReason::WindowInFuture => "window_in_future",
            RefusalReason::WindowTooOld => "window_too_old",
            RefusalReason::StampOutsideWindow => "stamp_outside_window",
            RefusalReason::StampInFuture => "stamp_in_future",
            RefusalReason::BadIncident => "bad_incident",
            RefusalReason::OverCapacity => "over_capacity",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused input: the reason (for counting) and what exactly was wrong (for the log).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    /// Why, as a stable label.
    pub reason: RefusalReason,
    /// What was wrong, naming the field.
    pub detail: String,
}

impl Refusal {
    /// A refusal for `reason` with `detail`.
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Admits at most one log line per key per interval and counts the ones held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    state: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    /// A limiter admitting one line per key every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: HashMap::new(),
        }
    }

    /// `Some(n)` when a line for `key` may be logged at `now`, `n` being how many were held
    /// back since the last one; `None` when this one should be held back.
    pub fn admit(&mut self, key: &'static str, now: Instant) -> Option<u64> {
        match self.state.get_mut(key) {
            Some((last, held)) if now.saturating_duration_since(*last) < self.every => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                self.state.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_distinct_snake_case_labels() {
        let mut labels: Vec<&str> = RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
        let r = Refusal::new(RefusalReason::BadFrame, "header.frame_id is \"odom\"");
        assert_eq!(r.to_string(), "bad_frame: header.frame_id is \"odom\"");
    }

    #[test]
    fn limiter_admits_one_line_per_key_per_interval_and_counts_the_rest() {
        let mut l = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.admit("a", t0), Some(0));
        assert_eq!(l.admit("a", t0 + Duration::from_millis(10)), None);
        assert_eq!(l.admit("a", t0 + Duration::from_millis(20)), None);
        assert_eq!(l.admit("b", t0 + Duration::from_millis(20)), Some(0));
        assert_eq!(l.admit("a", t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.admit("a", t0 + Duration::from_millis(1001)), None);
    }
}
