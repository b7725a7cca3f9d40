//! k-anonymous aggregation of the census into regional traffic per tile (no I/O).
//!
//! # What goes in
//!
//! - **Census reports** ([`Aggregator::contribute`], [`Aggregator::contribute_encoded`]):
//!   one sample of one twin's vehicle (segment, lane, position along the segment, speed)
//!   plus the incidents the twin knows, for one tile and one aggregation window, under a
//!   per-window contributor token. Each is validated whole before anything is kept; a
//!   refusal names its [`RefusalReason`](crate::refusal::RefusalReason).
//! - **Incidents from outside the census** ([`Aggregator::add_incident`]), e.g. C-ITS DENMs
//!   of road-side units: not personal data, kept until they expire.
//!
//! # What comes out
//!
//! When a window's late-arrival grace is over, [`Aggregator::close_due`] closes it and
//! reports, per tile that had census in it, either a `RegionalTraffic` to publish or that
//! the tile was withheld below k; and, per tile with live outside incidents, a hazards
//! tile ([`WindowReport::hazards`]).
//!
//! # The rules
//!
//! - **One vote per token per window.** A token's newest sample (by stamp) replaces its
//!   earlier ones; an older one arriving late is ignored. The tile's `contributors` is the
//!   number of distinct tokens with a sample in the window.
//! - **k-anonymity.** A tile is published only when `contributors >= k` (k at least
//!   [`MIN_K`], 10 by default; DR hosts refuse tiles that claim a k below 10).
//! - **Sparse stretches.** Each lane of each segment is cut into stretches of
//!   `stretch_m` (`[i * L, (i + 1) * L)` along the segment). A stretch with fewer than
//!   `min_stretch_contributors` distinct tokens is left out of the tile, so a tile that
//!   passes k as a whole cannot expose one vehicle's speed on a lonely stretch. Samples
//!   with `lane_index = -1` (unknown lane) count for the tile, never for a stretch.
//! - **Space-mean speed** of a stretch: the harmonic mean of the spot speeds of its
//!   samples (the speed matching the mean travel time over the stretch); speeds below
//!   [`SPEED_FLOOR`] count as that floor, so one stopped vehicle gives a low mean, not 0.
//!   A stretch whose mean exceeds [`MAX_PUBLISHED_SPEED`] (what DR hosts accept) is left
//!   out as implausible rather than making every DR refuse the whole tile.
//! - **Density and flow.** A token's newest sample is, for a twin reporting regularly,
//!   close to the window's end, so a stretch's `n` samples approximate a snapshot of the
//!   contributing vehicles on it: density = `n / (penetration * L)` [1/km], and flow
//!   follows from the fundamental relation `q = k * v` with the space-mean speed [1/h].
//!   Limits: vehicles without a twin are invisible unless `penetration` (the share of
//!   vehicles that contribute, 1 by default) is known, so by default both are lower bounds;
//!   a stretch running past the segment's end is counted at full length (density is
//!   underestimated there); samples taken early in the window blur the snapshot.
//! - **Incidents** are merged by `incident_id`: the report with the highest confidence
//!   gives the description, the expiry is the latest, detection the earliest. An incident
//!   without expiry gets one: last report + `incident_ttl`. Expired incidents are dropped.
//!   Census incidents count only for the window they were reported in (they are part of
//!   that window's k-anonymous contribution); outside incidents live until they expire,
//!   are published in every traffic tile of their tile that passes k, and, whatever k, on
//!   the tile's hazards key.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use twinlink_link::keys::{self, RegionTile};
use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::codec::{self, DecodeError, DecodeLimits};
use twinlink_msgs::std_msgs::msg::Header;
use twinlink_msgs::twin_msgs::msg::{CensusReport, Incident, LaneTraffic, RegionalTraffic};

use crate::census::{self, Micros, Windows};
use crate::refusal::{Refusal, RefusalReason as R};

/// Smallest k the service accepts (k = 1 would publish single vehicles).
pub const MIN_K: u32 = 2;
/// Default k, as open mobility-data standards use (and the smallest DR hosts accept).
pub const DEFAULT_K: u32 = 10;
/// Smallest `min_stretch_contributors` accepted (1 would expose single vehicles' speeds).
pub const MIN_STRETCH_CONTRIBUTORS: u32 = 2;
/// Highest speed a census sample may report [m/s].
pub const MAX_SPEED: f64 = 100.0;
/// Highest lane index a census sample may report.
pub const MAX_LANE: i32 = 15;
/// Longest position along a segment accepted \[m\].
pub const MAX_S: f64 = 1_000_000.0;
/// Highest space-mean speed published [m/s]: DR hosts refuse a tile with a faster lane.
pub const MAX_PUBLISHED_SPEED: f64 = 70.0;
/// Spot speeds below this count as this in the harmonic mean [m/s].
pub const SPEED_FLOOR: f64 = 0.5;
/// Longest tile id, contributor token and segment id accepted \[bytes\].
pub const MAX_NAME_LEN: usize = 64;
/// Longest incident id accepted \[bytes\].
pub const MAX_INCIDENT_ID_LEN: usize = 128;
/// Most incidents in one census report (also the bound in `CensusReport.msg`).
pub const MAX_INCIDENTS_PER_REPORT: usize = 16;
/// Largest encoded census report accepted \[bytes\].
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// The frame every census sample is in.
pub const MAP_FRAME: &str = "map";

/// Parameters of the aggregation. Each is named in errors as the binary's flag spells it.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorConfig {
    /// Distinct contributors a tile needs in a window to be published (`--k`).
    pub k: u32,
    /// Length of an aggregation window (`--window-s`); windows are aligned to the epoch.
    pub window: Duration,
    /// Length of a lane stretch along a segment \[m\] (`--stretch-m`).
    pub stretch_m: f64,
    /// Distinct contributors a stretch needs to be published
    /// (`--min-stretch-contributors`).
    pub min_stretch_contributors: u32,
    /// Tolerance for clock differences and transit (`--grace-s`): reports are accepted this
    /// long after their window ended (so a window closes this late) and may be stamped this
    /// far in the future.
    pub grace: Duration,
    /// Share of the vehicles on the road that contribute, in (0, 1] (`--penetration`);
    /// scales density and flow.
    pub penetration: f64,
    /// Lifetime of an incident reported without expiry, from its last report
    /// (`--incident-ttl-s`).
    pub incident_ttl: Duration,
    /// Most samples (distinct tokens over all tiles) held per window (`--max-samples`).
    pub max_samples_per_window: usize,
    /// Most incidents held per tile, census and outside ones each
    /// (`--max-incidents-per-tile`).
    pub max_incidents_per_tile: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self::for_window(Duration::from_secs(30))
    }
}

impl AggregatorConfig {
    /// The defaults for windows of `window`: grace a tenth of the window (at most 1 s),
    /// incident lifetime three windows (as long as a DR keeps regional data).
    pub fn for_window(window: Duration) -> Self {
        Self {
            k: DEFAULT_K,
            window,
            stretch_m: 500.0,
            min_stretch_contributors: 3,
            grace: (window / 10).min(Duration::from_secs(1)),
            penetration: 1.0,
            incident_ttl: window * 3,
            max_samples_per_window: 1_000_000,
            max_incidents_per_tile: 256,
        }
    }

    /// Checks every parameter; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |param: &'static str, value: String, problem: &str| {
            Err(ConfigError {
                param,
                value,
                problem: problem.to_string(),
            })
        };
        if !(MIN_K..=1_000_000).contains(&self.k) {
            return bad(
                "k",
                self.k.to_string(),
                "must be within 2..=1000000 (k = 1 would publish single vehicles; DR hosts refuse tiles with k below 10)",
            );
        }
        let w = self.window.as_secs_f64();
        if !(0.5..=3600.0).contains(&w) || self.window.subsec_micros() % 1000 != 0 {
            return bad(
                "window-s",
                format!("{w}"),
                "must be within 0.5..=3600 s, in whole milliseconds",
            );
        }
        if !(self.stretch_m.is_finite() && (10.0..=100_000.0).contains(&self.stretch_m)) {
            return bad(
                "stretch-m",
                format!("{}", self.stretch_m),
                "must be within 10..=100000 m",
            );
        }
        if self.min_stretch_contributors < MIN_STRETCH_CONTRIBUTORS {
            return bad(
                "min-stretch-contributors",
                self.min_stretch_contributors.to_string(),
                "must be at least 2 (1 would expose a single vehicle's speed)",
            );
        }
        if self.grace > self.window / 2 {
            return bad(
                "grace-s",
                format!("{}", self.grace.as_secs_f64()),
                "must be at most half the window",
            );
        }
        if !(self.penetration.is_finite() && self.penetration > 0.0 && self.penetration <= 1.0) {
            return bad(
                "penetration",
                format!("{}", self.penetration),
                "must be within (0, 1]",
            );
        }
        if self.incident_ttl.is_zero() || self.incident_ttl > Duration::from_secs(86_400) {
            return bad(
                "incident-ttl-s",
                format!("{}", self.incident_ttl.as_secs_f64()),
                "must be within (0, 86400] s",
            );
        }
        if self.max_samples_per_window == 0 {
            return bad("max-samples", "0".into(), "must be at least 1");
        }
        if self.max_incidents_per_tile == 0 {
            return bad("max-incidents-per-tile", "0".into(), "must be at least 1");
        }
        Ok(())
    }
}

/// A parameter out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--{param} {value}: {problem}")]
pub struct ConfigError {
    /// The parameter, as the binary's flag spells it (without `--`).
    pub param: &'static str,
    /// The refused value.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Where an incident that is not part of the census came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncidentSource {
    /// A road-side unit's C-ITS DENM.
    Rsu,
    /// A traffic operator (traffic management centre, manual entry).
    Operator,
}

impl IncidentSource {
    /// Lower-case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentSource::Rsu => "rsu",
            IncidentSource::Operator => "operator",
        }
    }
}

/// What became of an accepted census report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The first sample of its token in this tile and window.
    New,
    /// It replaced an older sample of its token.
    Replaced,
    /// Its token already has a newer sample: the sample was ignored (its incidents kept).
    Older,
}

/// A tile that met k in a window.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedTile {
    /// The tile to put on `twinlink/v1/region/<tile>/traffic`.
    pub traffic: RegionalTraffic,
    /// Lane stretches left out for fewer than `min_stretch_contributors` contributors.
    pub sparse_stretches: u32,
    /// Lane stretches left out for a mean speed above [`MAX_PUBLISHED_SPEED`].
    pub implausible_stretches: u32,
}

/// What a closed window gave for one tile with census in it.
#[derive(Debug, Clone, PartialEq)]
pub enum TileOutcome {
    /// At least k contributors: publish.
    Published(PublishedTile),
    /// Fewer than k contributors: nothing leaves the service.
    Withheld {
        /// The tile.
        tile: String,
        /// Distinct contributors it had.
        contributors: u32,
        /// The k it needed.
        k: u32,
    },
}

/// Everything one closed window gave.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowReport {
    /// Start of the window [µs since the epoch].
    pub window_start_us: Micros,
    /// End of the window (exclusive) [µs since the epoch].
    pub window_end_us: Micros,
    /// One outcome per tile with census in the window, sorted by tile.
    pub tiles: Vec<TileOutcome>,
    /// One hazards tile per tile with live outside incidents, sorted by tile:
    /// `RegionalTraffic` with no lanes, `contributors = 0` and `k_threshold = 0` (nothing
    /// in it comes from the census), for `twinlink/v1/region/<tile>/hazards`.
    pub hazards: Vec<RegionalTraffic>,
}

/// Speed, density and flow of one lane stretch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StretchEstimate {
    /// Space-mean speed [m/s].
    pub mean_speed: f64,
    /// Vehicles per kilometre of lane [1/km].
    pub density: f64,
    /// Vehicles per hour passing [1/h].
    pub flow: f64,
}

/// The harmonic mean of spot speeds, each at least [`SPEED_FLOOR`]; `None` when empty.
pub fn harmonic_mean(speeds: &[f64]) -> Option<f64> {
    if speeds.is_empty() {
        return None;
    }
    let inverse: f64 = speeds.iter().map(|v| 1.0 / v.max(SPEED_FLOOR)).sum();
    Some(speeds.len() as f64 / inverse)
}

/// Speed, density and flow of a stretch of `stretch_m` metres from the spot speeds of its
/// distinct contributors (see the module documentation for the estimate and its limits);
/// `None` when there are none.
pub fn estimate(speeds: &[f64], stretch_m: f64, penetration: f64) -> Option<StretchEstimate> {
    let mean_speed = harmonic_mean(speeds)?;
    let density = speeds.len() as f64 / penetration / (stretch_m / 1000.0);
    Some(StretchEstimate {
        mean_speed,
        density,
        flow: density * mean_speed * 3.6,
    })
}

#[derive(Debug, Clone)]
struct Sample {
    segment: String,
    lane: i32,
    s: f64,
    speed: f64,
    stamp_us: Micros,
}

#[derive(Debug, Default)]
struct TileData {
    samples: HashMap<String, Sample>,
    incidents: HashMap<String, Incident>,
}

#[derive(Debug, Default)]
struct WindowData {
    tiles: HashMap<String, TileData>,
    samples: usize,
}

#[derive(Debug, Clone)]
struct OutsideIncident {
    incident: Incident,
    source: IncidentSource,
}

/// The aggregation state: open windows with their samples, and outside incidents.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregatorConfig,
    windows: Windows,
    grace_us: Micros,
    ttl_us: Micros,
    /// Start of the oldest window still open; earlier ones are closed.
    open_from: Micros,
    open: BTreeMap<Micros, WindowData>,
    outside: HashMap<String, HashMap<String, OutsideIncident>>,
}

impl Aggregator {
    /// An aggregator whose first open window is the one containing `now_us`.
    pub fn new(config: AggregatorConfig, now_us: Micros) -> Result<Self, ConfigError> {
        config.validate()?;
        let windows = Windows::new(config.window.as_micros() as Micros);
        Ok(Self {
            grace_us: config.grace.as_micros() as Micros,
            ttl_us: config.incident_ttl.as_micros() as Micros,
            open_from: windows.start_of(now_us),
            windows,
            config,
            open: BTreeMap::new(),
            outside: HashMap::new(),
        })
    }

    /// The parameters.
    pub fn config(&self) -> &AggregatorConfig {
        &self.config
    }

    /// The aggregation windows.
    pub fn windows(&self) -> Windows {
        self.windows
    }

    /// When the oldest open window is due to close [µs since the epoch].
    pub fn next_close_us(&self) -> Micros {
        self.open_from + self.windows.length_us() + self.grace_us
    }

    /// Decodes and takes a census report that arrived on `key_expr` at `now_us`.
    pub fn contribute_encoded(
        &mut self,
        key_expr: &str,
        payload: &[u8],
        now_us: Micros,
    ) -> Result<Accepted, Refusal> {
        if payload.len() > MAX_REPORT_BYTES {
            return Err(Refusal::new(
                R::TooLarge,
                format!(
                    "{} bytes; at most {MAX_REPORT_BYTES} are accepted",
                    payload.len()
                ),
            ));
        }
        let tile = keys::census_tile_of(key_expr).ok_or_else(|| {
            Refusal::new(
                R::BadKey,
                format!("{key_expr:?} is not twinlink/v1/census/<tile>"),
            )
        })?;
        let limits = DecodeLimits {
            max_message_bytes: MAX_REPORT_BYTES,
        };
        let report: CensusReport =
            codec::decode_with_limits(payload, &limits).map_err(|e| match e {
                DecodeError::Bound(_) | DecodeError::TooLarge { .. } => {
                    Refusal::new(R::TooLarge, e.to_string())
                }
                _ => Refusal::new(R::Undecodable, e.to_string()),
            })?;
        self.contribute(&tile, &report, now_us)
    }

    /// Takes a census report for `tile` (the tile of the key it arrived on) at `now_us`:
    /// validates it whole, then keeps its sample (one per token) and its incidents.
    pub fn contribute(
        &mut self,
        tile: &RegionTile,
        report: &CensusReport,
        now_us: Micros,
    ) -> Result<Accepted, Refusal> {
        validate_report(tile, report)?;
        let window_start = self.check_times(report, now_us)?;
        let stamp_us = census::time_us(&report.header.stamp).unwrap_or(0);
        let incidents: Vec<Incident> = report
            .incidents
            .iter()
            .filter(|i| !expired(i, now_us))
            .map(|i| self.with_expiry(i.clone(), now_us))
            .collect();

        let max_samples = self.config.max_samples_per_window;
        let max_incidents = self.config.max_incidents_per_tile;
        let window = self.open.entry(window_start).or_default();
        let known_token = window
            .tiles
            .get(tile.as_str())
            .is_some_and(|t| t.samples.contains_key(&report.contributor));
        if !known_token && window.samples >= max_samples {
            return Err(Refusal::new(
                R::OverCapacity,
                format!("the window already holds {max_samples} samples"),
            ));
        }
        if let Some(t) = window.tiles.get(tile.as_str()) {
            let new_ids = incidents
                .iter()
                .filter(|i| !t.incidents.contains_key(&i.incident_id))
                .count();
            if t.incidents.len() + new_ids > max_incidents {
                return Err(Refusal::new(
                    R::OverCapacity,
                    format!(
                        "tile {} already holds {} incidents in this window; at most {max_incidents}",
                        tile.as_str(),
                        t.incidents.len()
                    ),
                ));
            }
        } else if incidents.len() > max_incidents {
            return Err(Refusal::new(
                R::OverCapacity,
                format!("more than {max_incidents} incidents for one tile"),
            ));
        }

        let data = window.tiles.entry(tile.as_str().to_string()).or_default();
        for inc in incidents {
            merge_incident(&mut data.incidents, inc);
        }
        let sample = Sample {
            segment: report.segment_id.clone(),
            lane: report.lane_index,
            s: report.s,
            speed: f64::from(report.speed),
            stamp_us,
        };
        let outcome = match data.samples.get_mut(&report.contributor) {
            None => {
                data.samples.insert(report.contributor.clone(), sample);
                window.samples += 1;
                Accepted::New
            }
            Some(old) if old.stamp_us <= stamp_us => {
                *old = sample;
                Accepted::Replaced
            }
            Some(_) => Accepted::Older,
        };
        Ok(outcome)
    }

    /// Takes an incident from outside the census (a road-side unit's DENM, an operator)
    /// for `tile` at `now_us`. Returns `Ok(false)` when it had already expired (and was
    /// dropped).
    pub fn add_incident(
        &mut self,
        tile: &RegionTile,
        incident: Incident,
        source: IncidentSource,
        now_us: Micros,
    ) -> Result<bool, Refusal> {
        validate_incident(&incident, "incident")?;
        if expired(&incident, now_us) {
            return Ok(false);
        }
        let incident = self.with_expiry(incident, now_us);
        let max = self.config.max_incidents_per_tile;
        let known = self.outside.entry(tile.as_str().to_string()).or_default();
        if !known.contains_key(&incident.incident_id) && known.len() >= max {
            return Err(Refusal::new(
                R::OverCapacity,
                format!(
                    "tile {} already holds {max} outside incidents",
                    tile.as_str()
                ),
            ));
        }
        match known.get_mut(&incident.incident_id) {
            None => {
                known.insert(
                    incident.incident_id.clone(),
                    OutsideIncident { incident, source },
                );
            }
            Some(old) => {
                let stronger = incident.confidence > old.incident.confidence;
                merge_into(&mut old.incident, incident);
                if stronger {
                    old.source = source;
                }
            }
        }
        Ok(true)
    }

    /// The live outside incidents of `tile` with their sources, sorted by id.
    pub fn outside_incidents(&self, tile: &str) -> Vec<(Incident, IncidentSource)> {
        let mut out: Vec<_> = self
            .outside
            .get(tile)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|o| (o.incident.clone(), o.source))
            .collect();
        out.sort_by(|a, b| a.0.incident_id.cmp(&b.0.incident_id));
        out
    }

    /// Closes every window whose grace is over at `now_us`, oldest first.
    pub fn close_due(&mut self, now_us: Micros) -> Vec<WindowReport> {
        let len = self.windows.length_us();
        // After a long stall (a suspended process, a clock jump) skip the empty windows in
        // between instead of closing each one.
        let latest_due = self
            .windows
            .start_of(now_us.saturating_sub(self.grace_us))
            .saturating_sub(len);
        if latest_due > self.open_from + 10 * len {
            let skip_to = latest_due - len;
            self.open.retain(|start, _| *start >= skip_to);
            let first_kept = self.open.keys().next().copied().unwrap_or(skip_to);
            self.open_from = first_kept.min(skip_to);
        }
        let mut reports = Vec::new();
        while self.open_from + len + self.grace_us <= now_us {
            let start = self.open_from;
            let data = self.open.remove(&start).unwrap_or_default();
            reports.push(self.close_window(start, data));
            self.open_from = start + len;
        }
        reports
    }

    fn check_times(&self, report: &CensusReport, now_us: Micros) -> Result<Micros, Refusal> {
        let len = self.windows.length_us();
        let start = census::time_us(&report.window_start)
            .filter(|t| !census::has_sub_micros(&report.window_start) && self.windows.is_start(*t))
            .ok_or_else(|| {
                Refusal::new(
                    R::WindowMisaligned,
                    format!(
                        "window_start {}.{:09} s is not the start of a {} s window",
                        report.window_start.sec,
                        report.window_start.nanosec,
                        self.config.window.as_secs_f64()
                    ),
                )
            })?;
        if start > now_us + self.grace_us {
            return Err(Refusal::new(
                R::WindowInFuture,
                format!(
                    "window_start is {:.3} s ahead of the service's clock",
                    (start - now_us) as f64 * 1e-6
                ),
            ));
        }
        let end = start + len;
        if start < self.open_from || end + self.grace_us <= now_us {
            return Err(Refusal::new(
                R::WindowTooOld,
                format!(
                    "the window that started {:.3} s ago is closed",
                    now_us.saturating_sub(start) as f64 * 1e-6
                ),
            ));
        }
        let stamp = census::time_us(&report.header.stamp).ok_or_else(|| {
            Refusal::new(R::StampOutsideWindow, "header.stamp is not a valid time")
        })?;
        if stamp > now_us + self.grace_us {
            return Err(Refusal::new(
                R::StampInFuture,
                format!(
                    "header.stamp is {:.3} s ahead of the service's clock",
                    (stamp - now_us) as f64 * 1e-6
                ),
            ));
        }
        if stamp + self.grace_us < start || stamp >= end + self.grace_us {
            return Err(Refusal::new(
                R::StampOutsideWindow,
                "header.stamp lies outside the window it is reported for",
            ));
        }
        Ok(start)
    }

    fn with_expiry(&self, mut incident: Incident, now_us: Micros) -> Incident {
        if is_zero(&incident.expires) {
            incident.expires = census::ros_time(now_us + self.ttl_us);
        }
        incident
    }

    fn close_window(&mut self, start: Micros, data: WindowData) -> WindowReport {
        let end = start + self.windows.length_us();
        for known in self.outside.values_mut() {
            known.retain(|_, o| !expired(&o.incident, end));
        }
        self.outside.retain(|_, known| !known.is_empty());
        let header = Header {
            stamp: census::ros_time(end),
            frame_id: MAP_FRAME.to_string(),
        };
        let window = census::ros_duration(self.windows.length_us());

        let mut tiles: Vec<(String, TileData)> = data.tiles.into_iter().collect();
        tiles.sort_by(|a, b| a.0.cmp(&b.0));
        let mut outcomes = Vec::with_capacity(tiles.len());
        for (tile, data) in tiles {
            let contributors = u32::try_from(data.samples.len()).unwrap_or(u32::MAX);
            if contributors < self.config.k {
                outcomes.push(TileOutcome::Withheld {
                    tile,
                    contributors,
                    k: self.config.k,
                });
                continue;
            }
            let (lanes, sparse, implausible) = self.lane_traffic(&data.samples);
            let mut incidents: HashMap<String, Incident> = HashMap::new();
            for inc in data.incidents.into_values() {
                if !expired(&inc, end) {
                    merge_incident(&mut incidents, inc);
                }
            }
            for o in self.outside.get(&tile).into_iter().flat_map(|m| m.values()) {
                merge_incident(&mut incidents, o.incident.clone());
            }
            outcomes.push(TileOutcome::Published(PublishedTile {
                traffic: RegionalTraffic {
                    header: header.clone(),
                    tile_id: tile,
                    window: window.clone(),
                    lanes,
                    incidents: sorted(incidents.into_values().collect()),
                    contributors,
                    k_threshold: self.config.k,
                },
                sparse_stretches: sparse,
                implausible_stretches: implausible,
            }));
        }

        let mut hazard_tiles: Vec<&String> = self.outside.keys().collect();
        hazard_tiles.sort();
        let hazards = hazard_tiles
            .into_iter()
            .map(|tile| RegionalTraffic {
                header: header.clone(),
                tile_id: tile.clone(),
                window: window.clone(),
                lanes: Vec::new(),
                incidents: sorted(
                    self.outside[tile]
                        .values()
                        .map(|o| o.incident.clone())
                        .collect(),
                ),
                contributors: 0,
                k_threshold: 0,
            })
            .collect();
        WindowReport {
            window_start_us: start,
            window_end_us: end,
            tiles: outcomes,
            hazards,
        }
    }

    /// The published lane stretches, and how many were left out as sparse and as
    /// implausible.
    fn lane_traffic(&self, samples: &HashMap<String, Sample>) -> (Vec<LaneTraffic>, u32, u32) {
        let len = self.config.stretch_m;
        let mut stretches: BTreeMap<(&str, i32, u64), Vec<f64>> = BTreeMap::new();
        for sample in samples.values().filter(|s| s.lane >= 0) {
            let index = (sample.s / len).floor() as u64;
            stretches
                .entry((sample.segment.as_str(), sample.lane, index))
                .or_default()
                .push(sample.speed);
        }
        let (mut lanes, mut sparse, mut implausible) = (Vec::new(), 0, 0);
        for ((segment, lane, index), speeds) in stretches {
            if speeds.len() < self.config.min_stretch_contributors as usize {
                sparse += 1;
                continue;
            }
            let Some(e) = estimate(&speeds, len, self.config.penetration) else {
                continue;
            };
            if e.mean_speed > MAX_PUBLISHED_SPEED {
                implausible += 1;
                continue;
            }
            lanes.push(LaneTraffic {
                segment_id: segment.to_string(),
                lane_index: lane,
                start_s: index as f64 * len,
                end_s: (index + 1) as f64 * len,
                mean_speed: e.mean_speed as f32,
                density: e.density as f32,
                flow: e.flow as f32,
            });
        }
        (lanes, sparse, implausible)
    }
}

fn sorted(mut incidents: Vec<Incident>) -> Vec<Incident> {
    incidents.sort_by(|a, b| a.incident_id.cmp(&b.incident_id));
    incidents
}

fn is_zero(t: &Time) -> bool {
    t.sec == 0 && t.nanosec == 0
}

fn later(a: &Time, b: &Time) -> bool {
    (a.sec, a.nanosec) > (b.sec, b.nanosec)
}

/// Whether `incident` has an expiry at or before `now_us` (no expiry: never).
fn expired(incident: &Incident, now_us: Micros) -> bool {
    !is_zero(&incident.expires) && census::time_us(&incident.expires).is_some_and(|e| e <= now_us)
}

fn merge_incident(known: &mut HashMap<String, Incident>, incident: Incident) {
    match known.get_mut(&incident.incident_id) {
        Some(old) => merge_into(old, incident),
        None => {
            known.insert(incident.incident_id.clone(), incident);
        }
    }
}

/// Merges two reports of one incident: the more confident one's description, the latest
/// expiry, the earliest detection.
fn merge_into(old: &mut Incident, new: Incident) {
    let expires = if later(&new.expires, &old.expires) {
        new.expires.clone()
    } else {
        old.expires.clone()
    };
    let detected = match (is_zero(&old.detected), is_zero(&new.detected)) {
        (true, _) => new.detected.clone(),
        (false, true) => old.detected.clone(),
        (false, false) if later(&old.detected, &new.detected) => new.detected.clone(),
        (false, false) => old.detected.clone(),
    };
    if new.confidence > old.confidence {
        *old = new;
    }
    old.expires = expires;
    old.detected = detected;
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// Checks a report's fields against `tile` (stateless; windows are checked separately).
fn validate_report(tile: &RegionTile, r: &CensusReport) -> Result<(), Refusal> {
    if r.tile_id != tile.as_str() {
        return Err(Refusal::new(
            R::TileMismatch,
            format!(
                "tile_id {:?} was put on the key of tile {:?}",
                r.tile_id,
                tile.as_str()
            ),
        ));
    }
    if r.header.frame_id != MAP_FRAME {
        return Err(Refusal::new(
            R::BadFrame,
            format!("header.frame_id is {:?}, not \"map\"", r.header.frame_id),
        ));
    }
    if !name_ok(&r.contributor) {
        return Err(Refusal::new(
            R::BadContributor,
            format!(
                "contributor must be 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9_-] ({} bytes given)",
                r.contributor.len()
            ),
        ));
    }
    if r.segment_id.is_empty() || r.segment_id.len() > MAX_NAME_LEN {
        return Err(Refusal::new(
            R::BadSegment,
            format!(
                "segment_id must be 1 to {MAX_NAME_LEN} bytes ({} given)",
                r.segment_id.len()
            ),
        ));
    }
    if !r.s.is_finite() {
        return Err(Refusal::new(R::NotFinite, "s is not a finite number"));
    }
    if !r.speed.is_finite() {
        return Err(Refusal::new(R::NotFinite, "speed is not a finite number"));
    }
    if !(0.0..=MAX_SPEED).contains(&f64::from(r.speed)) {
        return Err(Refusal::new(
            R::SpeedOutOfRange,
            format!("speed {} m/s is outside 0..={MAX_SPEED}", r.speed),
        ));
    }
    if !(0.0..=MAX_S).contains(&r.s) {
        return Err(Refusal::new(
            R::PositionOutOfRange,
            format!("s {} m is outside 0..={MAX_S}", r.s),
        ));
    }
    if !(-1..=MAX_LANE).contains(&r.lane_index) {
        return Err(Refusal::new(
            R::LaneOutOfRange,
            format!("lane_index {} is outside -1..={MAX_LANE}", r.lane_index),
        ));
    }
    if r.incidents.len() > MAX_INCIDENTS_PER_REPORT {
        return Err(Refusal::new(
            R::TooLarge,
            format!(
                "{} incidents; at most {MAX_INCIDENTS_PER_REPORT} per report",
                r.incidents.len()
            ),
        ));
    }
    for (i, inc) in r.incidents.iter().enumerate() {
        validate_incident(inc, &format!("incidents[{i}]"))?;
    }
    Ok(())
}

/// Checks an incident's fields; the refusal names `what.field`.
fn validate_incident(inc: &Incident, what: &str) -> Result<(), Refusal> {
    let bad = |field: &str, problem: &str| {
        Err(Refusal::new(
            R::BadIncident,
            format!("{what}.{field} {problem}"),
        ))
    };
    if inc.incident_id.is_empty() || inc.incident_id.len() > MAX_INCIDENT_ID_LEN {
        return bad("incident_id", "must be 1 to 128 bytes");
    }
    if inc.incident_kind > Incident::INCIDENT_CONGESTION {
        return bad("incident_kind", "is not one of INCIDENT_*");
    }
    let p = &inc.position;
    if !(p.x.is_finite() && p.y.is_finite() && p.z.is_finite()) {
        return bad("position", "must be finite");
    }
    if inc.segment_id.len() > MAX_NAME_LEN {
        return bad("segment_id", "must be at most 64 bytes");
    }
    if !(inc.s.is_finite() && (0.0..=MAX_S).contains(&inc.s)) {
        return bad("s", "must be within 0..=1000000 m");
    }
    if !(-1..=MAX_LANE).contains(&inc.lane_index) {
        return bad("lane_index", "must be within -1..=15");
    }
    if !(inc.extent.is_finite() && (0.0..=20_000.0).contains(&inc.extent)) {
        return bad("extent", "must be within 0..=20000 m");
    }
    if !(inc.confidence.is_finite() && (0.0..=1.0).contains(&inc.confidence)) {
        return bad("confidence", "must be within 0..=1");
    }
    if census::time_us(&inc.detected).is_none() {
        return bad("detected", "is not a valid time");
    }
    if census::time_us(&inc.expires).is_none() {
        return bad("expires", "is not a valid time");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_msgs::geometry_msgs::msg::Point;

    const S: Micros = 1_000_000;
    /// A window start far from the epoch, like a real clock's.
    const T0: Micros = 1_700_000_010 * S;

    fn config() -> AggregatorConfig {
        AggregatorConfig::for_window(Duration::from_secs(10))
    }

    fn tile(name: &str) -> RegionTile {
        RegionTile::new(name).unwrap()
    }

    fn report(tile: &str, token: &str, lane: i32, s: f64, speed: f32, at: Micros) -> CensusReport {
        CensusReport {
            header: Header {
                stamp: census::ros_time(at),
                frame_id: "map".into(),
            },
            tile_id: tile.into(),
            contributor: token.into(),
            window_start: census::ros_time(Windows::new(10 * S).start_of(at)),
            segment_id: "seg-a".into(),
            lane_index: lane,
            s,
            speed,
            incidents: Vec::new(),
        }
    }

    fn incident(id: &str, confidence: f32, expires: Micros) -> Incident {
        Incident {
            incident_id: id.into(),
            incident_kind: Incident::INCIDENT_STALLED_VEHICLE,
            position: Point {
                x: 100.0,
                y: 3.5,
                z: 0.0,
            },
            segment_id: "seg-a".into(),
            s: 100.0,
            lane_index: 0,
            extent: 10.0,
            confidence,
            detected: census::ros_time(T0),
            expires: census::ros_time(expires),
        }
    }

    /// `n` distinct contributors to `t` in the window starting at T0, all in lane 0 at s
    /// 100 + i (one stretch) with the given speed.
    fn fill(agg: &mut Aggregator, t: &str, n: usize, speed: f32) {
        for i in 0..n {
            let r = report(t, &format!("tok{i}"), 0, 100.0 + i as f64, speed, T0 + S);
            assert_eq!(agg.contribute(&tile(t), &r, T0 + 2 * S), Ok(Accepted::New));
        }
    }

    fn close(agg: &mut Aggregator) -> WindowReport {
        let mut reports = agg.close_due(T0 + 11 * S);
        assert_eq!(reports.len(), 1);
        reports.pop().unwrap()
    }

    fn published(outcome: &TileOutcome) -> &PublishedTile {
        match outcome {
            TileOutcome::Published(p) => p,
            other => panic!("not published: {other:?}"),
        }
    }

    #[test]
    fn harmonic_mean_is_the_space_mean_of_spot_speeds() {
        assert_eq!(harmonic_mean(&[]), None);
        // 10 and 30 m/s over the same distance: travel times 0.1 and 0.0333 s/m.
        assert!((harmonic_mean(&[10.0, 30.0]).unwrap() - 15.0).abs() < 1e-9);
        assert!((harmonic_mean(&[20.0; 5]).unwrap() - 20.0).abs() < 1e-9);
        // A stopped vehicle counts as SPEED_FLOOR, so the mean is low but not zero.
        let m = harmonic_mean(&[0.0, 20.0]).unwrap();
        assert!(m > 0.0 && m < 1.0, "{m}");
    }

    #[test]
    fn density_and_flow_follow_from_count_length_and_speed() {
        let e = estimate(&[20.0, 20.0, 20.0, 20.0], 500.0, 1.0).unwrap();
        assert!((e.density - 8.0).abs() < 1e-9); // 4 vehicles on 0.5 km
        assert!((e.flow - 8.0 * 72.0).abs() < 1e-6); // q = k v, v = 72 km/h
        let half = estimate(&[20.0; 4], 500.0, 0.5).unwrap();
        assert!((half.density - 16.0).abs() < 1e-9);
        assert_eq!(estimate(&[], 500.0, 1.0), None);
    }

    #[test]
    fn a_tile_is_withheld_at_k_minus_one_and_published_at_k() {
        let mut agg = Aggregator::new(config(), T0).unwrap();
        fill(&mut agg, "below", 9, 20.0);
        fill(&mut agg, "at-k", 10, 20.0);
        let report = close(&mut agg);
        assert_eq!(report.window_start_us, T0);
        assert_eq!(report.window_end_us, T0 + 10 * S);
        assert_eq!(
            report.tiles[1],
            TileOutcome::Withheld {
                tile: "below".into(),
                contributors: 9,
                k: 10
            }
        );
        let p = published(&report.tiles[0]);
        let t = &p.traffic;
        assert_eq!(t.tile_id, "at-k");
        assert_eq!((t.contributors, t.k_threshold), (10, 10));
        assert_eq!(t.header.frame_id, "map");
        assert_eq!(census::time_us(&t.header.stamp), Some(T0 + 10 * S));
        assert_eq!((t.window.sec, t.window.nanosec), (10, 0));
        assert_eq!(t.lanes.len(), 1);
        let lane = &t.lanes[0];
        assert_eq!((lane.segment_id.as_str(), lane.lane_index), ("seg-a", 0));
        assert_eq!((lane.start_s, lane.end_s), (0.0, 500.0));
        assert!((lane.mean_speed - 20.0).abs() < 1e-4);
        assert!((lane.density - 20.0).abs() < 1e-4);
        // The next window starts empty.
        assert!(agg.close_due(T0 + 21 * S)[0].tiles.is_empty());
    }

    #[test]
    fn k_is_configurable_down_to_two() {
        let mut c = config();
        c.k = 2;
        c.min_stretch_contributors = 2;
        let mut agg = Aggregator::new(c, T0).unwrap();
        fill(&mut agg, "t", 2, 15.0);
        let r = close(&mut agg);
        assert_eq!(published(&r.tiles[0]).traffic.k_threshold, 2);
    }

    #[test]
    fn a_later_sample_of_a_token_replaces_the_earlier_one() {
        let mut agg = Aggregator::new(config(), T0).unwrap();
        fill(&mut agg, "t", 10, 20.0);
        let now = T0 + 5 * S;
        // tok0 reports again, later, slower: one vote, its newest speed.
        let newer = report("t", "tok0", 0, 150.0, 5.0, T0 + 4 * S);
        assert_eq!(
            agg.contribute(&tile("t"), &newer, now),
            Ok(Accepted::Replaced)
        );
        // An older sample arriving after the newer one is ignored.
        let older = report("t", "tok0", 0, 120.0, 30.0, T0 + 3 * S);
        assert_eq!(agg.contribute(&tile("t"), &older, now), Ok(Accepted::Older));
        let r = close(&mut agg);
        let t = &published(&r.tiles[0]).traffic;
        assert_eq!(t.contributors, 10);
        let expected = harmonic_mean(&[5.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0])
            .unwrap() as f32;
        assert!((t.lanes[0].mean_speed - expected).abs() < 1e-4);
    }

    #[test]
    fn sparse_stretches_and_unknown_lanes_are_left_out_but_count_for_k() {
        let mut agg = Aggregator::new(config(), T0).unwrap();
        let t = tile("t");
        let mut put = |token: &str, lane: i32, s: f64, speed: f32| {
            let r = report("t", token, lane, s, speed, T0 + S);
            agg.contribute(&t, &r, T0 + 2 * S).unwrap();
        };
        // Lane 0, stretch [0, 500): 3 contributors (published).
        for i in 0..3 {
            put(&format!("a{i}"), 0, 10.0 * i as f64, 25.0);
        }
        // Lane 1, same stretch: 2 contributors (sparse).
        for i in 0..2 {
            put(&format!("b{i}"), 1, 20.0, 30.0);
        }
        // Lane 0, stretch [500, 1000): 1 contributor (sparse).
        put("c0", 0, 700.0, 35.0);
        // Unknown lane: 4 contributors, no stretch.
        for i in 0..4 {
            put(&format!("d{i}"), -1, 20.0, 10.0);
        }
        let r = close(&mut agg);
        let p = published(&r.tiles[0]);
        assert_eq!(p.traffic.contributors, 10);
        assert_eq!(p.sparse_stretches, 2);
        assert_eq!(p.implausible_stretches, 0);
        assert_eq!(p.traffic.lanes.len(), 1);
        assert_eq!(p.traffic.lanes[0].lane_index, 0);
        assert!((p.traffic.lanes[0].mean_speed - 25.0).abs() < 1e-4);
    }

    #[test]
    fn a_stretch_faster_than_dr_hosts_accept_is_left_out() {
        let mut agg = Aggregator::new(config(), T0).unwrap();
        fill(&mut agg, "t", 10, 80.0);
        let p = published(&close(&mut agg).tiles[0]).clone();
        assert!(p.traffic.lanes.is_empty());
        assert_eq!(p.implausible_stretches, 1);
    }

    #[test]
    fn census_incidents_merge_by_id_and_expired_ones_are_dropped() {
        let mut agg = Aggregator::new(config(), T0).unwrap();
        fill(&mut agg, "t", 10, 20.0);
        let now = T0 + 3 * S;
        let mut a = report("t", "tok0", 0, 100.0, 20.0, T0 + 2 * S);
        let mut weak = incident("stall-1", 0.4, T0 + 100 * S);
        weak.extent = 50.0;
        weak.detected = census::ros_time(T0 - 5 * S);
        a.incidents = vec![
            weak,
            incident("gone", 0.9, T0 + 5 * S), // expires before the window ends
            incident("already-gone", 0.9, T0 + S), // expired on arrival
            incident("no-expiry", 0.5, 0),
        ];
        agg.contribute(&tile("t"), &a, now).unwrap();
        let mut b = report("t", "tok1", 0, 100.0, 20.0, T0 + 2 * S);
        b.incidents = vec![incident("stall-1", 0.8, T0 + 60 * S)];
        agg.contribute(&tile("t"), &b, now).unwrap();

        let r = close(&mut agg);
        let incidents = &published(&r.tiles[0]).traffic.incidents;
        let ids: Vec<&str> = incidents.iter().map(|i| i.incident_id.as_str()).collect();
        assert_eq!(ids, ["no-expiry", "stall-1"]);
        let stall = &incidents[1];
        assert_eq!(stall.confidence, 0.8); // highest confidence...
        assert_eq!(stall.extent, 10.0); // ...gives the description
        assert_eq!(census::time_us(&stall.expires), Some(T0 + 100 * S)); // latest expiry
        assert_eq!(census::time_us(&stall.detected), Some(T0 - 5 * S)); // earliest detection

        // No expiry given: last report + incident_ttl (3 windows).
        assert_eq!(census::time_us(&incidents[0].expires), Some(now + 30 * S));
    }

    #[test]
    fn census_incidents_of_a_withheld_tile_do_not_leave_the_service() {
        let mut agg = Aggregator::new(config(), T0).unwrap();
        let mut r = report("t", "tok0", 0, 100.0, 20.0, T0 + S);
        r.incidents = vec![incident("x", 0.9, T0 + 100 * S)];
        agg.contribute(&tile("t"), &r, T0 + 2 * S).unwrap();
        let report = close(&mut agg);
        assert!(matches!(report.tiles[0], TileOutcome::Withheld { .. }));
        assert!(report.hazards.is_empty());
        // Nor do they carry over into a later window that passes k.
        for i in 0..10 {
            let r = report_in("t", &format!("n{i}"), T0 + 11 * S);
            agg.contribute(&tile("t"), &r, T0 + 12 * S).unwrap();
        }
        let later = agg.close_due(T0 + 21 * S);
        assert!(published(&later[0].tiles[0]).traffic.incidents.is_empty());
    }

    /// The encoding of `r` with a 72-character contributor (the codec refuses to encode
    /// it, so the bytes are spliced: 8 more characters keep every later field aligned).
    fn with_long_token(r: &CensusReport) -> Vec<u8> {
        let mut r = r.clone();
        r.contributor = "x".repeat(64);
        let bytes = codec::encode(&r).unwrap();
        let mut field = 65u32.to_le_bytes().to_vec();
        field.extend_from_slice(r.contributor.as_bytes());
        let at = bytes.windows(field.len()).position(|w| w == field).unwrap();
        let mut out = bytes[..at].to_vec();
        out.extend_from_slice(&73u32.to_le_bytes());
        out.extend_from_slice("x".repeat(72).as_bytes());
        out.extend_from_slice(&bytes[at + field.len()..]);
        out
    }

    fn report_in(t: &str, token: &str, at: Micros) -> CensusReport {
        report(t, token, 0, 100.0, 20.0, at)
    }

    #[test]
    fn outside_incidents_go_on_hazards_always_and_in_traffic_only_at_k() {
        let mut agg = Aggregator::new(config(), T0).unwrap();
        let now = T0 + S;
        assert_eq!(
            agg.add_incident(
                &tile("rural"),
                incident("denm-1", 0.7, T0 + 15 * S),
                IncidentSource::Rsu,
                now
            ),
            Ok(true)
        );
        agg.add_incident(
            &tile("busy"),
            incident("denm-2", 0.9, 0),
            IncidentSource::Operator,
            now,
        )
        .unwrap();
        // A weaker report of the same incident keeps the stronger one's source.
        agg.add_incident(
            &tile("busy"),
            incident("denm-2", 0.1, T0 + 500 * S),
            IncidentSource::Rsu,
            now,
        )
        .unwrap();
        let merged = agg.outside_incidents("busy");
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].1, IncidentSource::Operator);
        assert_eq!(merged[0].0.confidence, 0.9);
        assert_eq!(census::time_us(&merged[0].0.expires), Some(T0 + 500 * S));
        // Already expired: dropped, not refused.
        assert_eq!(
            agg.add_incident(
                &tile("busy"),
                incident("old", 0.9, T0),
                IncidentSource::Rsu,
                now
            ),
            Ok(false)
        );
        fill(&mut agg, "busy", 10, 20.0);
        fill(&mut agg, "rural", 3, 20.0);

        let r = close(&mut agg);
        // Hazards: both tiles, whatever their census.
        let hazard_tiles: Vec<&str> = r.hazards.iter().map(|h| h.tile_id.as_str()).collect();
        assert_eq!(hazard_tiles, ["busy", "rural"]);
        assert!(r
            .hazards
            .iter()
            .all(|h| h.lanes.is_empty() && h.contributors == 0 && h.k_threshold == 0));
        // Traffic: the outside incident rides only in the tile that passed k.
        let busy = published(&r.tiles[0]);
        assert_eq!(busy.traffic.incidents[0].incident_id, "denm-2");
        assert!(matches!(r.tiles[1], TileOutcome::Withheld { .. }));
        // denm-1 expires at T0 + 15 s: gone after the next window.
        let next = agg.close_due(T0 + 21 * S);
        let tiles: Vec<&str> = next[0].hazards.iter().map(|h| h.tile_id.as_str()).collect();
        assert_eq!(tiles, ["busy"]);
    }

    #[test]
    fn windows_close_after_their_grace_and_late_reports_within_it_count() {
        let mut agg = Aggregator::new(config(), T0 + 3 * S).unwrap();
        assert_eq!(agg.next_close_us(), T0 + 11 * S); // 10 s window + 1 s grace
        assert!(agg.close_due(T0 + 10 * S + S / 2).is_empty());
        // Half a second after the window's end, within the grace: still counted.
        let late = report_in("t", "late", T0 + 9 * S);
        assert_eq!(
            agg.contribute(&tile("t"), &late, T0 + 10 * S + S / 2),
            Ok(Accepted::New)
        );
        let closed = agg.close_due(T0 + 11 * S);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].tiles.len(), 1);
        // After the close, the same window is too old.
        let err = agg.contribute(&tile("t"), &late, T0 + 11 * S).unwrap_err();
        assert_eq!(err.reason, R::WindowTooOld);
        // A long stall closes at most a few empty windows, not thousands.
        let many = agg.close_due(T0 + 100_000 * S);
        assert!(many.len() <= 12, "{}", many.len());
        assert!(agg.next_close_us() > T0 + 100_000 * S);
    }

    /// One report per refusal reason; together they must cover every reason.
    #[test]
    fn every_refusal_reason_is_detected_and_the_aggregator_goes_on() {
        use std::collections::BTreeSet;
        let mut c = config();
        c.max_samples_per_window = 3;
        let mut agg = Aggregator::new(c, T0).unwrap();
        let t = tile("t");
        let now = T0 + 2 * S;
        let good = || report("t", "good", 0, 100.0, 20.0, T0 + S);
        let key = keys::census(&t);
        let mut seen = BTreeSet::new();
        let mut refuse = |agg: &mut Aggregator, r: CensusReport, want: R| {
            let err = agg.contribute(&t, &r, now).unwrap_err();
            assert_eq!(err.reason, want, "{err}");
            seen.insert(want);
        };
        let with = |f: &dyn Fn(&mut CensusReport)| {
            let mut r = good();
            f(&mut r);
            r
        };
        refuse(
            &mut agg,
            with(&|r| r.tile_id = "other".into()),
            R::TileMismatch,
        );
        refuse(
            &mut agg,
            with(&|r| r.header.frame_id = "odom".into()),
            R::BadFrame,
        );
        refuse(
            &mut agg,
            with(&|r| r.contributor = String::new()),
            R::BadContributor,
        );
        refuse(
            &mut agg,
            with(&|r| r.contributor = "a b".into()),
            R::BadContributor,
        );
        refuse(
            &mut agg,
            with(&|r| r.segment_id = String::new()),
            R::BadSegment,
        );
        refuse(&mut agg, with(&|r| r.speed = f32::NAN), R::NotFinite);
        refuse(&mut agg, with(&|r| r.s = f64::INFINITY), R::NotFinite);
        refuse(&mut agg, with(&|r| r.speed = 100.5), R::SpeedOutOfRange);
        refuse(&mut agg, with(&|r| r.speed = -1.0), R::SpeedOutOfRange);
        refuse(&mut agg, with(&|r| r.s = -1.0), R::PositionOutOfRange);
        refuse(&mut agg, with(&|r| r.lane_index = 16), R::LaneOutOfRange);
        refuse(&mut agg, with(&|r| r.lane_index = -2), R::LaneOutOfRange);
        refuse(
            &mut agg,
            with(&|r| r.window_start = census::ros_time(T0 + 1_000)),
            R::WindowMisaligned,
        );
        refuse(
            &mut agg,
            with(&|r| {
                r.window_start = census::ros_time(T0 + 10 * S);
                r.header.stamp = census::ros_time(T0 + 10 * S);
            }),
            R::WindowInFuture,
        );
        refuse(
            &mut agg,
            with(&|r| {
                r.window_start = census::ros_time(T0 - 10 * S);
                r.header.stamp = census::ros_time(T0 - 5 * S);
            }),
            R::WindowTooOld,
        );
        refuse(
            &mut agg,
            with(&|r| r.header.stamp = census::ros_time(T0 - 5 * S)),
            R::StampOutsideWindow,
        );
        refuse(
            &mut agg,
            with(&|r| r.header.stamp = census::ros_time(now + 5 * S)),
            R::StampInFuture,
        );
        refuse(
            &mut agg,
            with(&|r| r.incidents = vec![incident("x", 1.5, 0)]),
            R::BadIncident,
        );
        refuse(
            &mut agg,
            with(&|r| r.incidents = vec![incident("", 0.5, 0)]),
            R::BadIncident,
        );
        refuse(
            &mut agg,
            with(&|r| r.incidents = vec![incident("x", 0.5, 0); MAX_INCIDENTS_PER_REPORT + 1]),
            R::TooLarge,
        );
        for i in 0..3 {
            agg.contribute(&t, &with(&|r| r.contributor = format!("c{i}")), now)
                .unwrap();
        }
        refuse(
            &mut agg,
            with(&|r| r.contributor = "c3".into()),
            R::OverCapacity,
        );
        // A known token still replaces its sample at capacity.
        assert_eq!(
            agg.contribute(&t, &with(&|r| r.contributor = "c0".into()), now),
            Ok(Accepted::Replaced)
        );

        // The encoded path: size, key and decoding.
        let bytes = codec::encode(&good()).unwrap();
        let mut encoded = |key: &str, payload: &[u8], want: R| {
            let err = agg.contribute_encoded(key, payload, now).unwrap_err();
            assert_eq!(err.reason, want, "{err}");
            seen.insert(want);
        };
        encoded(key.as_str(), &vec![0u8; MAX_REPORT_BYTES + 1], R::TooLarge);
        encoded("twinlink/v1/census/t/extra", &bytes, R::BadKey);
        encoded("twinlink/v1/region/t/traffic", &bytes, R::BadKey);
        encoded(key.as_str(), &[0, 1, 0, 0, 7], R::Undecodable);
        encoded(key.as_str(), &bytes[..bytes.len() / 2], R::Undecodable);
        encoded(key.as_str(), &with_long_token(&good()), R::TooLarge);
        // Outside incidents are validated the same way.
        let err = agg
            .add_incident(&t, incident("x", f32::NAN, 0), IncidentSource::Rsu, now)
            .unwrap_err();
        assert_eq!(err.reason, R::BadIncident);
        assert!(err.detail.contains("confidence"), "{err}");

        let all: BTreeSet<R> = R::ALL.into_iter().collect();
        assert_eq!(
            seen,
            all,
            "reasons never produced: {:?}",
            all.difference(&seen)
        );
        // The aggregator goes on: the accepted samples are there.
        let r = close(&mut agg);
        assert!(matches!(
            r.tiles[0],
            TileOutcome::Withheld {
                contributors: 3,
                ..
            }
        ));
        let ok = agg.contribute_encoded(
            key.as_str(),
            &codec::encode(&report_in("t", "z", T0 + 12 * S)).unwrap(),
            T0 + 12 * S,
        );
        assert_eq!(ok, Ok(Accepted::New));
    }

    #[test]
    fn outside_incidents_are_bounded_per_tile() {
        let mut c = config();
        c.max_incidents_per_tile = 1;
        let mut agg = Aggregator::new(c, T0).unwrap();
        let t = tile("t");
        agg.add_incident(&t, incident("a", 0.5, 0), IncidentSource::Rsu, T0)
            .unwrap();
        agg.add_incident(&t, incident("a", 0.6, 0), IncidentSource::Rsu, T0)
            .unwrap();
        let err = agg
            .add_incident(&t, incident("b", 0.5, 0), IncidentSource::Rsu, T0)
            .unwrap_err();
        assert_eq!(err.reason, R::OverCapacity);
    }

    type Change = dyn Fn(&mut AggregatorConfig);

    #[test]
    fn configuration_errors_name_the_flag() {
        let cases: [(&Change, &str); 7] = [
            (&|c| c.k = 1, "--k 1"),
            (&|c| c.window = Duration::from_millis(100), "--window-s"),
            (&|c| c.stretch_m = f64::NAN, "--stretch-m"),
            (
                &|c| c.min_stretch_contributors = 1,
                "--min-stretch-contributors",
            ),
            (&|c| c.grace = Duration::from_secs(6), "--grace-s"),
            (&|c| c.penetration = 0.0, "--penetration"),
            (&|c| c.incident_ttl = Duration::ZERO, "--incident-ttl-s"),
        ];
        for (change, flag) in cases {
            let mut c = config();
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err}");
        }
        config().validate().unwrap();
        AggregatorConfig::default().validate().unwrap();
        assert_eq!(AggregatorConfig::default().k, 10);
        assert_eq!(AggregatorConfig::default().grace, Duration::from_secs(1));
    }

    #[test]
    fn published_tiles_pass_the_checks_dr_hosts_apply() {
        let mut agg = Aggregator::new(config(), T0).unwrap();
        let t = tile("t");
        for i in 0..40i32 {
            let r = report(
                "t",
                &format!("v{i}"),
                i % 3,
                f64::from(i * 97 % 2000),
                (i % 7) as f32 * 5.0,
                T0 + S,
            );
            agg.contribute(&t, &r, T0 + 2 * S).unwrap();
        }
        let r = close(&mut agg);
        let tile = &published(&r.tiles[0]).traffic;
        assert!(tile.k_threshold >= 10 && tile.contributors >= tile.k_threshold);
        assert!(!tile.lanes.is_empty());
        for l in &tile.lanes {
            assert!((0.0..=70.0).contains(&l.mean_speed), "{l:?}");
            assert!(l.end_s > l.start_s && l.density >= 0.0 && l.flow >= 0.0);
        }
        // Round trip through the codec the DR host decodes with.
        let bytes = codec::encode(tile).unwrap();
        let back: RegionalTraffic = codec::decode(&bytes).unwrap();
        assert_eq!(&back, tile);
    }
}
