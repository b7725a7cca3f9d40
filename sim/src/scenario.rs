//! Scenarios: what a simulation run contains, read from YAML and validated.
//!
//! A scenario names the road, the traffic on it, the scripted hazards and bottlenecks, and
//! the wireless coverage along the road. Every field is in SI units (m, s, m/s) and the
//! file is refused, with an error that names the field (`hazards[1].lane`), when a field
//! is unknown, missing, of the wrong type or outside its range. The shipped scenarios are
//! in `sim/scenarios/`:
//!
//! ```yaml
//! name: hidden_hazard
//! seed: 1
//! duration_s: 180
//! road: { length_m: 5000, lanes: 3, speed_limit_mps: 33.3 }
//! traffic: { vehicles: 80, inflow_veh_per_h: 2400, connected_share: 0.3 }
//! hazards:
//!   - { kind: stalled_vehicle, s_m: 3200, lane: 0, from_s: 0 }
//! ```

use std::path::Path;

use serde::Deserialize;

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The YAML does not match the schema (unknown or missing field, wrong type).
    #[error("{origin}: {message}")]
    Syntax {
        /// The file, or `<string>`.
        origin: String,
        /// The parser's message, with the field and the line.
        message: String,
    },
    /// A field is outside its range or contradicts another one.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// The file, or `<string>`.
        origin: String,
        /// The field's path, e.g. `hazards[1].lane`.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl ScenarioError {
    /// The path of the offending field, when the error is about one value.
    pub fn field(&self) -> Option<&str> {
        match self {
            ScenarioError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A simulation run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// Seed of every random choice (same seed, same run).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated time [s].
    pub duration_s: f64,
    /// Integration step [s].
    #[serde(default = "default_step")]
    pub step_s: f64,
    /// The road.
    pub road: RoadSpec,
    /// The traffic on it.
    pub traffic: TrafficSpec,
    /// Scripted obstacles.
    #[serde(default)]
    pub hazards: Vec<HazardSpec>,
    /// Stretches with a lower speed limit for a while (they make queues and waves).
    #[serde(default)]
    pub bottlenecks: Vec<BottleneckSpec>,
    /// Wireless coverage along the road.
    #[serde(default)]
    pub coverage: CoverageSpec,
}

fn default_seed() -> u64 {
    1
}

fn default_step() -> f64 {
    0.1
}

/// A straight multi-lane highway; lane 0 is the rightmost.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoadSpec {
    /// Length [m].
    pub length_m: f64,
    /// Lanes in the direction of travel.
    pub lanes: usize,
    /// Lane width [m].
    #[serde(default = "default_lane_width")]
    pub lane_width_m: f64,
    /// Speed limit [m/s].
    pub speed_limit_mps: f64,
}

fn default_lane_width() -> f64 {
    3.5
}

/// The vehicles.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// Vehicles on the road at the start, spread over it.
    pub vehicles: usize,
    /// Vehicles entering at the start of the road [veh/h], over all lanes.
    #[serde(default)]
    pub inflow_veh_per_h: f64,
    /// Share of vehicles that are connected (have a twin), 0 to 1.
    #[serde(default = "default_connected_share")]
    pub connected_share: f64,
    /// Share of trucks (longer, slower, gentler), 0 to 1.
    #[serde(default = "default_truck_share")]
    pub truck_share: f64,
    /// Desired speeds are drawn around the limit times this factor.
    #[serde(default = "default_speed_factor")]
    pub desired_speed_factor: f64,
    /// How far ahead drivers see what is in their lane [m].
    #[serde(default = "default_sight")]
    pub sight_distance_m: f64,
}

fn default_sight() -> f64 {
    300.0
}

fn default_connected_share() -> f64 {
    0.3
}

fn default_truck_share() -> f64 {
    0.1
}

fn default_speed_factor() -> f64 {
    1.0
}

/// What a hazard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HazardKind {
    /// A vehicle standing in its lane (a car-sized obstacle that sensors see as a vehicle).
    StalledVehicle,
    /// Debris on the road (a small obstacle).
    Debris,
    /// A lane closed over `length_m` (road works).
    LaneClosure,
}

/// An obstacle in one lane for a while.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HazardSpec {
    /// What it is.
    pub kind: HazardKind,
    /// Where it starts along the road [m].
    pub s_m: f64,
    /// Its lane.
    pub lane: usize,
    /// Its length along the road [m] (stalled vehicle 4.5, debris 1 unless given).
    #[serde(default)]
    pub length_m: Option<f64>,
    /// How near a driver must be to see it [m] (behind a crest or a bend; the drivers'
    /// sight distance when absent).
    #[serde(default)]
    pub visible_within_m: Option<f64>,
    /// When it is due [s]; it takes its place as soon as its stretch of lane (a closure:
    /// its first 20 m) and 60 m before it are free of vehicles, so that nothing appears
    /// under a moving vehicle.
    #[serde(default)]
    pub from_s: f64,
    /// When it is cleared [s] (never when absent).
    #[serde(default)]
    pub until_s: Option<f64>,
}

impl HazardSpec {
    /// Its length along the road [m].
    pub fn length(&self) -> f64 {
        self.length_m.unwrap_or(match self.kind {
            HazardKind::StalledVehicle => 4.5,
            HazardKind::Debris => 1.0,
            HazardKind::LaneClosure => 200.0,
        })
    }
}

/// A stretch where every lane's limit drops for a while.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BottleneckSpec {
    /// Start along the road [m].
    pub from_m: f64,
    /// End along the road [m].
    pub to_m: f64,
    /// The limit there [m/s].
    pub speed_limit_mps: f64,
    /// When it starts [s].
    #[serde(default)]
    pub from_s: f64,
    /// When it ends [s] (never when absent).
    #[serde(default)]
    pub until_s: Option<f64>,
}

/// Wireless coverage: base stations along the road (or, without any, a default link
/// quality everywhere), and zones where it differs (a tunnel is a zone with no coverage).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverageSpec {
    /// Link quality where no zone applies, when there are no base stations.
    #[serde(default)]
    pub default: LinkQuality,
    /// Cells along the road: where any are given, the quality outside zones is the best
    /// cell's at that place (and none beyond every cell's range).
    #[serde(default)]
    pub base_stations: Vec<BaseStation>,
    /// Zones along the road; where zones overlap, the later one applies.
    #[serde(default)]
    pub zones: Vec<CoverageZone>,
}

/// What the wireless link offers at a place: the link's own radio quality (the real-time
/// mode applies it to each vehicle's link as it is).
pub use twinlink_link::radio::RadioQuality as LinkQuality;

/// A cell: a base station beside the road.
///
/// Its quality at distance d (from the mast, with `offset_m` to the road) follows a
/// log-distance path loss (exponent 3.5) from 0 dB signal-to-noise ratio at `range_m`, so
/// SNR(d) = 35 log10(range / d) dB; the bit rate is Shannon's log2(1 + SNR) scaled so that
/// 30 dB gives `bandwidth_bps`; loss is 30 % at the edge falling tenfold per 10 dB
/// (0.03 % at 30 dB); latency grows from `latency_ms` by up to 30 ms towards the edge
/// (scheduling and retransmissions). Beyond `range_m` the cell gives nothing.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseStation {
    /// Where along the road [m].
    pub s_m: f64,
    /// Distance of the mast from the road [m].
    #[serde(default = "default_offset")]
    pub offset_m: f64,
    /// Cell edge: the distance where the signal reaches the noise [m].
    #[serde(default = "default_range")]
    pub range_m: f64,
    /// Bit rate each way near the mast [bit/s].
    #[serde(default = "default_peak")]
    pub bandwidth_bps: f64,
    /// One-way latency near the mast [ms].
    #[serde(default = "default_cell_latency")]
    pub latency_ms: f64,
}

fn default_offset() -> f64 {
    100.0
}
fn default_range() -> f64 {
    2500.0
}
fn default_peak() -> f64 {
    50e6
}
fn default_cell_latency() -> f64 {
    15.0
}

/// Signal-to-noise ratio at which a cell gives its full bit rate [dB].
const PEAK_SNR_DB: f64 = 30.0;

impl BaseStation {
    /// What this cell gives at road position `s`.
    pub fn quality_at(&self, s: f64) -> LinkQuality {
        let d = (s - self.s_m).hypot(self.offset_m).max(1.0);
        if d > self.range_m {
            return LinkQuality::none();
        }
        let snr_db = (35.0 * (self.range_m / d).log10()).min(PEAK_SNR_DB);
        let efficiency = (1.0 + 10f64.powf(snr_db / 10.0)).log2()
            / (1.0 + 10f64.powf(PEAK_SNR_DB / 10.0)).log2();
        let bandwidth = self.bandwidth_bps * efficiency;
        if bandwidth < 1_000.0 {
            return LinkQuality::none();
        }
        LinkQuality {
            bandwidth_bps: bandwidth,
            latency_ms: self.latency_ms + 30.0 * (1.0 - efficiency),
            loss: 0.3 * 10f64.powf(-snr_db / 10.0),
        }
    }
}

/// What a coverage zone is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    /// No coverage.
    Tunnel,
    /// No coverage.
    DeadZone,
    /// Reduced coverage, as given by the zone's `quality`.
    Weak,
}

/// A stretch of road with its own link quality.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverageZone {
    /// What it is.
    pub kind: ZoneKind,
    /// Start along the road [m].
    pub from_m: f64,
    /// End along the road [m].
    pub to_m: f64,
    /// The quality inside (required for `weak`, not allowed otherwise).
    #[serde(default)]
    pub quality: Option<LinkQuality>,
}

impl CoverageSpec {
    /// The link quality at road position `s`.
    pub fn at(&self, s: f64) -> LinkQuality {
        let mut q = if self.base_stations.is_empty() {
            self.default
        } else {
            self.base_stations
                .iter()
                .map(|b| b.quality_at(s))
                .max_by(|a, b| a.bandwidth_bps.total_cmp(&b.bandwidth_bps))
                .unwrap_or_else(LinkQuality::none)
        };
        for z in &self.zones {
            if s >= z.from_m && s < z.to_m {
                q = match z.kind {
                    ZoneKind::Tunnel | ZoneKind::DeadZone => LinkQuality::none(),
                    ZoneKind::Weak => z.quality.unwrap_or(self.default),
                };
            }
        }
        q
    }

    /// The coverage of a road `length_m` long sampled every `step_m`, as the link's radio
    /// applies it.
    pub fn radio_map(&self, length_m: f64, step_m: f64) -> twinlink_link::radio::RadioMap {
        let n = (length_m / step_m).ceil().max(1.0) as usize;
        twinlink_link::radio::RadioMap {
            start_m: 0.0,
            step_m,
            samples: (0..n).map(|i| self.at((i as f64 + 0.5) * step_m)).collect(),
        }
    }
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario =
            serde_saphyr::from_str(text).map_err(|e| ScenarioError::Syntax {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        scenario
            .validate()
            .map_err(|(field, message)| ScenarioError::Invalid {
                origin: origin.to_string(),
                field,
                message,
            })?;
        Ok(scenario)
    }

    /// Checks every range and every cross-reference; the error names the field.
    fn validate(&self) -> Result<(), (String, String)> {
        let f = |field: &str, message: String| Err((field.to_string(), message));
        let positive = |field: &str, v: f64| -> Result<(), (String, String)> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                f(field, format!("must be a positive number, got {v}"))
            }
        };
        let share = |field: &str, v: f64| -> Result<(), (String, String)> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                f(field, format!("must be within 0..=1, got {v}"))
            }
        };
        if self.name.trim().is_empty() {
            return f("name", "must not be empty".into());
        }
        positive("duration_s", self.duration_s)?;
        if self.duration_s > 86_400.0 {
            return f(
                "duration_s",
                format!("at most one day (86400), got {}", self.duration_s),
            );
        }
        positive("step_s", self.step_s)?;
        if self.step_s > 0.5 {
            return f(
                "step_s",
                format!("at most 0.5 s (IDM needs small steps), got {}", self.step_s),
            );
        }
        let road = &self.road;
        positive("road.length_m", road.length_m)?;
        if !(1..=8).contains(&road.lanes) {
            return f(
                "road.lanes",
                format!("must be within 1..=8, got {}", road.lanes),
            );
        }
        positive("road.lane_width_m", road.lane_width_m)?;
        positive("road.speed_limit_mps", road.speed_limit_mps)?;
        if road.speed_limit_mps > 70.0 {
            return f(
                "road.speed_limit_mps",
                format!("at most 70 m/s (252 km/h), got {}", road.speed_limit_mps),
            );
        }
        let t = &self.traffic;
        let capacity = (road.length_m / 7.0) as usize * road.lanes;
        if t.vehicles > capacity {
            return f(
                "traffic.vehicles",
                format!(
                    "{} do not fit on {} lanes of {} m (at most {capacity})",
                    t.vehicles, road.lanes, road.length_m
                ),
            );
        }
        if !(t.inflow_veh_per_h.is_finite()
            && (0.0..=3000.0 * road.lanes as f64).contains(&t.inflow_veh_per_h))
        {
            return f(
                "traffic.inflow_veh_per_h",
                format!(
                    "must be within 0..={} (3000 per lane), got {}",
                    3000 * road.lanes,
                    t.inflow_veh_per_h
                ),
            );
        }
        share("traffic.connected_share", t.connected_share)?;
        positive("traffic.sight_distance_m", t.sight_distance_m)?;
        share("traffic.truck_share", t.truck_share)?;
        if !(0.5..=1.5).contains(&t.desired_speed_factor) {
            return f(
                "traffic.desired_speed_factor",
                format!("must be within 0.5..=1.5, got {}", t.desired_speed_factor),
            );
        }
        let on_road = |field: &str, v: f64| -> Result<(), (String, String)> {
            if v.is_finite() && (0.0..=road.length_m).contains(&v) {
                Ok(())
            } else {
                f(
                    field,
                    format!("must be on the road (0..={} m), got {v}", road.length_m),
                )
            }
        };
        let window = |field: &str, from: f64, until: Option<f64>| -> Result<(), (String, String)> {
            if !(from.is_finite() && from >= 0.0) {
                return f(
                    &format!("{field}.from_s"),
                    format!("must be at least 0, got {from}"),
                );
            }
            match until {
                Some(u) if !(u.is_finite() && u > from) => f(
                    &format!("{field}.until_s"),
                    format!("must be after from_s ({from}), got {u}"),
                ),
                _ => Ok(()),
            }
        };
        for (i, h) in self.hazards.iter().enumerate() {
            let at = format!("hazards[{i}]");
            on_road(&format!("{at}.s_m"), h.s_m)?;
            if h.lane >= road.lanes {
                return f(
                    &format!("{at}.lane"),
                    format!("the road has lanes 0..={}, got {}", road.lanes - 1, h.lane),
                );
            }
            if let Some(l) = h.length_m {
                positive(&format!("{at}.length_m"), l)?;
            }
            if let Some(d) = h.visible_within_m {
                positive(&format!("{at}.visible_within_m"), d)?;
            }
            on_road(&format!("{at}.length_m"), h.s_m + h.length())?;
            window(&at, h.from_s, h.until_s)?;
        }
        for (i, b) in self.bottlenecks.iter().enumerate() {
            let at = format!("bottlenecks[{i}]");
            on_road(&format!("{at}.from_m"), b.from_m)?;
            on_road(&format!("{at}.to_m"), b.to_m)?;
            if b.to_m <= b.from_m {
                return f(
                    &format!("{at}.to_m"),
                    format!("must be beyond from_m ({}), got {}", b.from_m, b.to_m),
                );
            }
            positive(&format!("{at}.speed_limit_mps"), b.speed_limit_mps)?;
            if b.speed_limit_mps >= road.speed_limit_mps {
                return f(
                    &format!("{at}.speed_limit_mps"),
                    format!(
                        "must be below the road's limit ({}), got {}",
                        road.speed_limit_mps, b.speed_limit_mps
                    ),
                );
            }
            window(&at, b.from_s, b.until_s)?;
        }
        let quality = |field: &str, q: &LinkQuality| -> Result<(), (String, String)> {
            if !(q.bandwidth_bps.is_finite() && q.bandwidth_bps >= 0.0) {
                return f(
                    &format!("{field}.bandwidth_bps"),
                    format!("must be at least 0, got {}", q.bandwidth_bps),
                );
            }
            if !(q.latency_ms.is_finite() && (0.0..=10_000.0).contains(&q.latency_ms)) {
                return f(
                    &format!("{field}.latency_ms"),
                    format!("must be within 0..=10000, got {}", q.latency_ms),
                );
            }
            share(&format!("{field}.loss"), q.loss)
        };
        quality("coverage.default", &self.coverage.default)?;
        for (i, b) in self.coverage.base_stations.iter().enumerate() {
            let at = format!("coverage.base_stations[{i}]");
            if !b.s_m.is_finite() {
                return f(
                    &format!("{at}.s_m"),
                    format!("must be a position, got {}", b.s_m),
                );
            }
            if !(b.offset_m.is_finite() && b.offset_m >= 0.0) {
                return f(
                    &format!("{at}.offset_m"),
                    format!("must be at least 0, got {}", b.offset_m),
                );
            }
            positive(&format!("{at}.range_m"), b.range_m)?;
            if b.offset_m >= b.range_m {
                return f(
                    &format!("{at}.range_m"),
                    format!(
                        "must reach the road (beyond offset_m {}), got {}",
                        b.offset_m, b.range_m
                    ),
                );
            }
            positive(&format!("{at}.bandwidth_bps"), b.bandwidth_bps)?;
            if !(b.latency_ms.is_finite() && (0.0..=10_000.0).contains(&b.latency_ms)) {
                return f(
                    &format!("{at}.latency_ms"),
                    format!("must be within 0..=10000, got {}", b.latency_ms),
                );
            }
        }
        for (i, z) in self.coverage.zones.iter().enumerate() {
            let at = format!("coverage.zones[{i}]");
            on_road(&format!("{at}.from_m"), z.from_m)?;
            on_road(&format!("{at}.to_m"), z.to_m)?;
            if z.to_m <= z.from_m {
                return f(
                    &format!("{at}.to_m"),
                    format!("must be beyond from_m ({}), got {}", z.from_m, z.to_m),
                );
            }
            match (z.kind, &z.quality) {
                (ZoneKind::Weak, Some(q)) => quality(&format!("{at}.quality"), q)?,
                (ZoneKind::Weak, None) => {
                    return f(
                        &format!("{at}.quality"),
                        "a weak zone needs its quality".into(),
                    )
                }
                (_, Some(_)) => {
                    return f(
                        &format!("{at}.quality"),
                        "only a weak zone has a quality (tunnels and dead zones have none)".into(),
                    )
                }
                (_, None) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name: t\nduration_s: 10\nroad: { length_m: 1000, lanes: 2, speed_limit_mps: 30 }\ntraffic: { vehicles: 10 }\n";

    fn invalid(text: &str) -> ScenarioError {
        Scenario::parse(text, "test.yaml").expect_err("must be refused")
    }

    #[test]
    fn a_minimal_scenario_takes_the_documented_defaults() {
        let s = Scenario::parse(MINIMAL, "m").unwrap();
        assert_eq!(s.seed, 1);
        assert_eq!(s.step_s, 0.1);
        assert_eq!(s.road.lane_width_m, 3.5);
        assert_eq!(s.traffic.connected_share, 0.3);
        assert!(s.hazards.is_empty());
        assert!(s.coverage.at(500.0).is_covered());
    }

    #[test]
    fn unknown_missing_and_mistyped_fields_are_named() {
        let e = invalid(&format!("{MINIMAL}colour: red\n")).to_string();
        assert!(e.contains("colour"), "{e}");
        let e = invalid("name: t\nduration_s: 10\ntraffic: { vehicles: 10 }\n").to_string();
        assert!(e.contains("road"), "{e}");
        let e = invalid(&MINIMAL.replace("lanes: 2", "lanes: two")).to_string();
        assert!(e.contains("lanes") || e.contains("two"), "{e}");
        let e = invalid(&format!(
            "{MINIMAL}hazards:\n  - {{ kind: meteor, s_m: 5, lane: 0 }}\n"
        ))
        .to_string();
        assert!(e.contains("meteor"), "{e}");
    }

    #[test]
    fn values_out_of_range_name_their_field() {
        let cases = [
            (MINIMAL.replace("duration_s: 10", "duration_s: -1"), "duration_s"),
            (MINIMAL.replace("lanes: 2", "lanes: 0"), "road.lanes"),
            (MINIMAL.replace("vehicles: 10", "vehicles: 10000"), "traffic.vehicles"),
            (MINIMAL.replace("vehicles: 10", "vehicles: 10, connected_share: 1.5"), "traffic.connected_share"),
            (format!("{MINIMAL}hazards:\n  - {{ kind: debris, s_m: 500, lane: 0 }}\n  - {{ kind: stalled_vehicle, s_m: 600, lane: 2 }}\n"), "hazards[1].lane"),
            (format!("{MINIMAL}hazards:\n  - {{ kind: debris, s_m: 5000, lane: 0 }}\n"), "hazards[0].s_m"),
            (format!("{MINIMAL}hazards:\n  - {{ kind: debris, s_m: 50, lane: 0, from_s: 30, until_s: 20 }}\n"), "hazards[0].until_s"),
            (format!("{MINIMAL}bottlenecks:\n  - {{ from_m: 600, to_m: 500, speed_limit_mps: 10 }}\n"), "bottlenecks[0].to_m"),
            (format!("{MINIMAL}bottlenecks:\n  - {{ from_m: 500, to_m: 600, speed_limit_mps: 40 }}\n"), "bottlenecks[0].speed_limit_mps"),
            (format!("{MINIMAL}coverage:\n  zones:\n    - {{ kind: weak, from_m: 100, to_m: 200 }}\n"), "coverage.zones[0].quality"),
            (format!("{MINIMAL}coverage:\n  zones:\n    - {{ kind: tunnel, from_m: 100, to_m: 200, quality: {{ bandwidth_bps: 1 }} }}\n"), "coverage.zones[0].quality"),
            (format!("{MINIMAL}coverage:\n  default: {{ bandwidth_bps: 1e6, loss: 2 }}\n"), "coverage.default.loss"),
        ];
        for (text, field) in cases {
            let e = invalid(&text);
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(
                e.to_string().starts_with(&format!("test.yaml: {field}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn base_stations_give_quality_that_falls_with_distance_and_ends_at_their_range() {
        let s = Scenario::parse(
            &format!(
                "{MINIMAL}coverage:\n  base_stations:\n    - {{ s_m: 0, offset_m: 50, range_m: 800, bandwidth_bps: 40e6 }}\n  zones:\n    - {{ kind: tunnel, from_m: 100, to_m: 150 }}\n"
            ),
            "b",
        )
        .unwrap();
        let near = s.coverage.at(0.0);
        let mid = s.coverage.at(400.0);
        let edge = s.coverage.at(780.0);
        assert!((near.bandwidth_bps - 40e6).abs() < 1.0, "{near:?}");
        assert!(near.loss < 0.001 && near.latency_ms < 16.0, "{near:?}");
        assert!(mid.bandwidth_bps < near.bandwidth_bps && mid.bandwidth_bps > edge.bandwidth_bps);
        assert!(
            edge.loss > mid.loss && edge.latency_ms > mid.latency_ms,
            "{edge:?}"
        );
        assert!(edge.is_covered());
        assert!(!s.coverage.at(900.0).is_covered(), "beyond the range");
        assert!(
            !s.coverage.at(120.0).is_covered(),
            "a zone overrides the cell"
        );
        // The radio map the link applies samples the same.
        let map = s.coverage.radio_map(1000.0, 10.0);
        assert_eq!(map.samples.len(), 100);
        map.validate().unwrap();
        assert!(!map.at(120.0).is_covered() && !map.at(950.0).is_covered());
        assert!((map.at(400.0).bandwidth_bps - s.coverage.at(405.0).bandwidth_bps).abs() < 1.0);
        let e = invalid(&format!(
            "{MINIMAL}coverage:\n  base_stations:\n    - {{ s_m: 0, offset_m: 500, range_m: 400 }}\n"
        ));
        assert!(
            e.to_string().contains("coverage.base_stations[0].range_m"),
            "{e}"
        );
    }

    #[test]
    fn coverage_zones_apply_where_they_lie_and_the_later_one_wins() {
        let text = format!(
            "{MINIMAL}coverage:\n  default: {{ bandwidth_bps: 2e6 }}\n  zones:\n    - {{ kind: weak, from_m: 100, to_m: 400, quality: {{ bandwidth_bps: 64000, latency_ms: 80 }} }}\n    - {{ kind: tunnel, from_m: 300, to_m: 500 }}\n"
        );
        let s = Scenario::parse(&text, "c").unwrap();
        assert_eq!(s.coverage.at(50.0).bandwidth_bps, 2e6);
        assert_eq!(s.coverage.at(150.0).bandwidth_bps, 64000.0);
        assert_eq!(s.coverage.at(150.0).latency_ms, 80.0);
        assert!(!s.coverage.at(350.0).is_covered());
        assert!(!s.coverage.at(499.0).is_covered());
        assert!(s.coverage.at(500.0).is_covered());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = Scenario::load(Path::new("/nonexistent/x.yaml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/x.yaml: "), "{e}");
    }
}
