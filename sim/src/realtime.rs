//! Real-time mode, the simulator's side (no ROS here): the world stepped on the wall clock
//! and, for each vehicle driven by real ROS 2 nodes, the raw sensor data those nodes
//! consume, as CARLA's bridge would publish it.
//!
//! Per driven vehicle:
//! - **LiDAR**: a spinning multi-beam LiDAR ray-cast against the boxes of the vehicles and
//!   hazards around it and the ground ([`twinlink_vehicle::synth::LidarModel`]), with range
//!   noise; rays stop at the first box, so occlusion is the geometry's. A hazard behind a
//!   crest (`visible_within_m`) is left out of the scene until it is that near.
//! - **Radar**: detections of the same boxes in the carla-ros-bridge layout (`x, y, z,
//!   Range, Velocity, AzimuthAngle, ElevationAngle`), radial velocity with noise
//!   ([`twinlink_vehicle::synth::RadarModel`]).
//! - **Odometry**: `nav_msgs/Odometry`, pose in `map` (the road along x, lane k at
//!   y = k × lane width), twist in `base_link`.
//! - **Camera**: object detections, not images: the object-level camera model of
//!   [`crate::sensors`] (80 m, ±45°, occlusion, noise) published as the camera
//!   summarizer's `PerceptionSummary` would be, i.e. a camera with its detector on board.
//!
//! base_link is the body centre (x forward, y left). Recommendations that come back are
//! applied to the vehicle's driver: it drives no faster than the advised speed until the
//! advice's `valid_until`.

// Messages are built field by field from their defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::nav_msgs::msg::Odometry;
use twinlink_msgs::sensor_msgs::msg::PointCloud2;
use twinlink_msgs::twin_msgs::msg::{PerceptionSummary, Recommendation};
use twinlink_vehicle::geometry::Mounting;
use twinlink_vehicle::radar::EgoMotion;
use twinlink_vehicle::synth::{LidarModel, RadarModel, Scene, SceneObject};

use crate::scenario::Scenario;
use crate::sensors::{candidates, observe, SensorModel};
use crate::world::{World, WorldStats};

/// Sensor rates and models of the driven vehicles. A sensor produces at most one message
/// per world step (0.1 s by default): rates above the step rate are capped by it.
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeConfig {
    /// The LiDAR (its mounting height must match the summarizer's `mount_z`).
    pub lidar: LidarModel,
    /// LiDAR revolutions per second.
    pub lidar_hz: f64,
    /// The radar.
    pub radar: RadarModel,
    /// Where the radar sits in base_link (the radar summarizer's `mount_*`).
    pub radar_mounting: Mounting,
    /// Radar frames per second.
    pub radar_hz: f64,
    /// Odometry messages per second.
    pub odom_hz: f64,
    /// The camera with its on-board detector.
    pub camera: SensorModel,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            // A 32-beam LiDAR (-25° to +15°, 0.35° azimuth steps), 100 m, mounted at 1.9 m.
            lidar: LidarModel {
                beams: 32,
                columns: 1024,
                lowest: (-25f64).to_radians(),
                highest: 15f64.to_radians(),
                max_range: 100.0,
                ..LidarModel::default()
            },
            lidar_hz: 10.0,
            radar: RadarModel::default(),
            radar_mounting: Mounting {
                x: 3.7,
                z: 0.5,
                ..Mounting::default()
            },
            radar_hz: 10.0,
            odom_hz: 10.0,
            camera: SensorModel::camera(),
        }
    }
}

/// One message a driven vehicle's sensors produced.
#[derive(Debug, Clone, PartialEq)]
pub enum SensorOutput {
    /// A LiDAR revolution (frame `lidar_top`).
    Lidar(PointCloud2),
    /// A radar frame (frame `radar_front`).
    Radar(PointCloud2),
    /// The vehicle's odometry (boxed: its covariances make it the largest variant).
    Odometry(Box<Odometry>),
    /// The camera's detections (frame `base_link`).
    Camera(PerceptionSummary),
}

/// Why a recommendation was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdviceError {
    /// No driven vehicle has this index.
    #[error("no driven vehicle {0}")]
    UnknownVehicle(usize),
    /// The vehicle left the road.
    #[error("vehicle {0} is no longer on the road")]
    LeftRoad(String),
    /// The advice is for another vehicle.
    #[error("advice for {got} arrived on {expected}'s topic")]
    WrongVehicle {
        /// Whose topic it came on.
        expected: String,
        /// Whom it names.
        got: String,
    },
    /// Its speed is not a finite, non-negative number.
    #[error("target_speed {0} is not a finite speed >= 0")]
    BadSpeed(f64),
    /// It was no longer valid when it arrived.
    #[error("arrived {0:.3} s after its valid_until")]
    Expired(f64),
}

impl AdviceError {
    /// A stable label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            AdviceError::UnknownVehicle(_) => "unknown_vehicle",
            AdviceError::LeftRoad(_) => "left_road",
            AdviceError::WrongVehicle { .. } => "wrong_vehicle",
            AdviceError::BadSpeed(_) => "bad_speed",
            AdviceError::Expired(_) => "expired",
        }
    }
}

/// Counters of one driven vehicle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrivenStats {
    /// Its name (ROS namespace and vehicle id).
    pub name: String,
    /// Its id in the world.
    pub world_id: u32,
    /// LiDAR revolutions published.
    pub lidar_frames: u64,
    /// Their bytes (the clouds' data).
    pub lidar_bytes: u64,
    /// Radar frames published.
    pub radar_frames: u64,
    /// Their bytes.
    pub radar_bytes: u64,
    /// Odometry messages published.
    pub odometry: u64,
    /// Camera detection lists published.
    pub camera: u64,
    /// Recommendations applied to the driver.
    pub advice_applied: u64,
    /// Of those, the ones below what the driver would have driven.
    pub advice_binding: u64,
    /// Advice that lapsed at its valid_until before the next one arrived.
    pub advice_expired: u64,
    /// Advice refused, by reason.
    pub advice_refused: BTreeMap<String, u64>,
    /// Simulated time it was on the road [s].
    pub on_road_s: f64,
}

/// A vehicle at one instant, for plots and recordings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleSample {
    /// Id in the world.
    pub id: u32,
    /// Front bumper along the road [m].
    pub s: f64,
    /// Lane (0 rightmost).
    pub lane: usize,
    /// Speed [m/s].
    pub v: f64,
    /// Whether it is a truck.
    pub truck: bool,
    /// Name of the driven vehicle it is, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driven: Option<String>,
    /// The speed it was advised, while the advice holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advised: Option<f64>,
}

/// The road at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Simulated time [s].
    pub t: f64,
    /// Every vehicle on the road.
    pub vehicles: Vec<VehicleSample>,
    /// Active hazards: (lane, back, front) along the road [m].
    pub hazards: Vec<(usize, f64, f64)>,
}

/// The world counters at the end of a run, in the units of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficMeasures {
    /// Simulated time [s].
    pub simulated_s: f64,
    /// Collisions.
    pub collisions: u64,
    /// Hard brakes.
    pub hard_brakes: u64,
    /// Smallest time-to-collision [s] (null when nothing closed in).
    pub min_ttc_s: Option<f64>,
    /// Mean speed [m/s].
    pub mean_speed_mps: f64,
    /// Vehicles leaving per hour.
    pub throughput_per_h: f64,
    /// Lane changes.
    pub lane_changes: u64,
}

impl From<&WorldStats> for TrafficMeasures {
    fn from(st: &WorldStats) -> Self {
        TrafficMeasures {
            simulated_s: st.time,
            collisions: st.collisions,
            hard_brakes: st.hard_brakes,
            min_ttc_s: st.min_ttc.is_finite().then_some(st.min_ttc),
            mean_speed_mps: st.mean_speed(),
            throughput_per_h: st.throughput_per_h(),
            lane_changes: st.lane_changes,
        }
    }
}

struct Driven {
    name: String,
    id: u32,
    next_lidar: f64,
    next_radar: f64,
    next_odom: f64,
    next_camera: f64,
    advice_until: Option<f64>,
    stats: DrivenStats,
}

/// The world on the wall clock with its driven vehicles' sensors.
pub struct RealtimeSim {
    world: World,
    config: RealtimeConfig,
    driven: Vec<Driven>,
    rng: ChaCha8Rng,
    epoch_us: u64,
    seed: u64,
}

/// The connected vehicles on the road at the start that real nodes should drive: the `n`
/// farthest upstream (they have the most road ahead), in order of position.
pub fn choose_driven(world: &World, n: usize) -> Vec<u32> {
    let mut connected: Vec<(f64, u32)> = world
        .vehicles()
        .iter()
        .filter(|v| v.connected)
        .map(|v| (v.s, v.id))
        .collect();
    connected.sort_by(|a, b| a.0.total_cmp(&b.0));
    connected.into_iter().take(n).map(|(_, id)| id).collect()
}

/// The next time a sensor of `hz` is due after one due at `due`, at time `t`: one period
/// later, or the first period after `t` if the world's step is longer than the period.
fn next_tick(due: f64, hz: f64, t: f64) -> f64 {
    let period = 1.0 / hz;
    let mut next = due + period;
    if next <= t + 1e-9 {
        next += ((t - next) / period).floor().max(0.0) * period + period;
    }
    next
}

/// A ROS time from microseconds since the epoch.
pub fn ros_time(us: u64) -> Time {
    Time {
        sec: (us / 1_000_000) as i32,
        nanosec: ((us % 1_000_000) * 1000) as u32,
    }
}

impl RealtimeSim {
    /// The world of `scenario` with `driven` (name, world id) run by real nodes; simulated
    /// time 0 is `epoch_us` (microseconds since the Unix epoch) on the wall clock.
    pub fn new(
        scenario: &Scenario,
        driven: &[(String, u32)],
        epoch_us: u64,
        config: RealtimeConfig,
    ) -> RealtimeSim {
        let world = World::new(scenario);
        let driven = driven
            .iter()
            .enumerate()
            .map(|(k, (name, id))| {
                // Spread the vehicles' sensor clocks over their periods.
                let phase = k as f64 * 0.013;
                Driven {
                    name: name.clone(),
                    id: *id,
                    next_lidar: phase,
                    next_radar: phase,
                    next_odom: 0.0,
                    next_camera: phase,
                    advice_until: None,
                    stats: DrivenStats {
                        name: name.clone(),
                        world_id: *id,
                        ..DrivenStats::default()
                    },
                }
            })
            .collect();
        RealtimeSim {
            world,
            config,
            driven,
            rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x7ea1),
            epoch_us,
            seed: scenario.seed,
        }
    }

    /// The world.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Names of the driven vehicles, by index.
    pub fn driven_names(&self) -> Vec<String> {
        self.driven.iter().map(|d| d.name.clone()).collect()
    }

    /// Wall-clock time of simulated time `t` [us since the epoch].
    pub fn stamp_us(&self, t: f64) -> u64 {
        self.epoch_us + (t.max(0.0) * 1e6) as u64
    }

    /// Simulated time of a wall-clock stamp [s].
    pub fn sim_time(&self, stamp_us: u64) -> f64 {
        (stamp_us as f64 - self.epoch_us as f64) * 1e-6
    }

    /// Advances the world by one step and returns what each driven vehicle's sensors
    /// produced at the new time, by the vehicle's index.
    pub fn step(&mut self) -> Vec<(usize, SensorOutput)> {
        self.world.step();
        let t = self.world.time();
        let dt = self.world.scenario().step_s;
        let stamp_us = self.stamp_us(t);
        let lane_width = self.world.scenario().road.lane_width_m;
        let mut out = Vec::new();
        for k in 0..self.driven.len() {
            let id = self.driven[k].id;
            let Some(me) = self.world.vehicles().iter().find(|v| v.id == id).cloned() else {
                continue;
            };
            let d = &mut self.driven[k];
            d.stats.on_road_s += dt;
            if d.advice_until.is_some_and(|until| t > until) {
                d.advice_until = None;
                d.stats.advice_expired += 1;
                if let Some(v) = self.world.vehicle_mut(id) {
                    v.advised_speed = None;
                    v.advised_lane = None;
                }
            }
            let d = &mut self.driven[k];
            if t + 1e-9 >= d.next_odom {
                d.next_odom = next_tick(d.next_odom, self.config.odom_hz, t);
                d.stats.odometry += 1;
                let mut o = Odometry::default();
                o.header.stamp = ros_time(stamp_us);
                o.header.frame_id = "map".into();
                o.child_frame_id = "base_link".into();
                o.pose.pose.position.x = me.s - me.length / 2.0;
                o.pose.pose.position.y = me.lane as f64 * lane_width;
                o.pose.pose.orientation.w = 1.0;
                o.twist.twist.linear.x = me.v;
                for i in [0, 7, 14, 21, 28, 35] {
                    o.pose.covariance[i] = 0.01;
                    o.twist.covariance[i] = 0.01;
                }
                out.push((k, SensorOutput::Odometry(Box::new(o))));
            }
            let lidar_due = t + 1e-9 >= d.next_lidar;
            let radar_due = t + 1e-9 >= d.next_radar;
            let camera_due = t + 1e-9 >= d.next_camera;
            if lidar_due || radar_due {
                let reach = self.config.lidar.max_range.max(self.config.radar.max_range);
                let scene = self.scene(id, reach);
                let d = &mut self.driven[k];
                let frame_seed = self.seed ^ ((k as u64) << 48) ^ (stamp_us / 1000);
                if lidar_due {
                    d.next_lidar = next_tick(d.next_lidar, self.config.lidar_hz, t);
                    let mut cloud = self.config.lidar.scan(&scene, frame_seed);
                    cloud.header.stamp = ros_time(stamp_us);
                    d.stats.lidar_frames += 1;
                    d.stats.lidar_bytes += cloud.data.len() as u64;
                    out.push((k, SensorOutput::Lidar(cloud)));
                }
                if radar_due {
                    d.next_radar = next_tick(d.next_radar, self.config.radar_hz, t);
                    let ego = EgoMotion {
                        vx: me.v,
                        vy: 0.0,
                        yaw_rate: 0.0,
                    };
                    let mut cloud = self.config.radar.scan(
                        &scene,
                        &self.config.radar_mounting,
                        ego,
                        frame_seed ^ 1,
                    );
                    cloud.header.stamp = ros_time(stamp_us);
                    d.stats.radar_frames += 1;
                    d.stats.radar_bytes += cloud.data.len() as u64;
                    out.push((k, SensorOutput::Radar(cloud)));
                }
            }
            let d = &mut self.driven[k];
            if camera_due {
                d.next_camera = next_tick(d.next_camera, self.config.camera.rate_hz, t);
                if let Some(mut s) = observe(
                    &self.world,
                    id,
                    &self.config.camera,
                    ros_time(stamp_us),
                    &mut self.rng,
                ) {
                    s.raw_bytes = 0;
                    self.driven[k].stats.camera += 1;
                    out.push((k, SensorOutput::Camera(s)));
                }
            }
        }
        out
    }

    /// The boxes around vehicle `id` within `reach`, in its base_link.
    fn scene(&self, id: u32, reach: f64) -> Scene {
        let objects = candidates(&self.world, id, reach)
            .unwrap_or_default()
            .into_iter()
            .map(|c| SceneObject {
                x: c.x,
                y: c.y,
                yaw: 0.0,
                length: c.length,
                width: c.width,
                height: c.height,
                class: c.class,
                // Velocity over ground; the road runs along x.
                vx: c.v,
                vy: 0.0,
            })
            .collect();
        Scene { objects }
    }

    /// Applies a recommendation that arrived for driven vehicle `k` at wall-clock
    /// `arrived_us`: its driver drives no faster than `target_speed` until `valid_until`.
    pub fn apply(
        &mut self,
        k: usize,
        r: &Recommendation,
        arrived_us: u64,
    ) -> Result<(), AdviceError> {
        let result = self.try_apply(k, r, arrived_us);
        if let (Err(e), Some(d)) = (&result, self.driven.get_mut(k)) {
            *d.stats.advice_refused.entry(e.reason().into()).or_default() += 1;
        }
        result
    }

    fn try_apply(
        &mut self,
        k: usize,
        r: &Recommendation,
        arrived_us: u64,
    ) -> Result<(), AdviceError> {
        let d = self.driven.get(k).ok_or(AdviceError::UnknownVehicle(k))?;
        if r.vehicle_id != d.name {
            return Err(AdviceError::WrongVehicle {
                expected: d.name.clone(),
                got: r.vehicle_id.clone(),
            });
        }
        if !r.target_speed.is_finite() || r.target_speed < 0.0 {
            return Err(AdviceError::BadSpeed(r.target_speed));
        }
        let until_us = r.valid_until.sec as i64 * 1_000_000 + r.valid_until.nanosec as i64 / 1000;
        let late_s = (arrived_us as i64 - until_us) as f64 * 1e-6;
        if late_s > 0.0 {
            return Err(AdviceError::Expired(late_s));
        }
        let until = self.sim_time(until_us.max(0) as u64);
        let (id, name) = (d.id, d.name.clone());
        let limit = self.world.scenario().road.speed_limit_mps;
        let v = self
            .world
            .vehicle_mut(id)
            .ok_or(AdviceError::LeftRoad(name))?;
        let binding = r.target_speed < v.desired_speed.min(limit) - 0.5;
        v.advised_speed = Some(r.target_speed);
        v.advised_lane = crate::fast::advised_lane(r);
        let d = &mut self.driven[k];
        d.advice_until = Some(until);
        d.stats.advice_applied += 1;
        d.stats.advice_binding += binding as u64;
        Ok(())
    }

    /// Every vehicle now.
    pub fn snapshot(&self) -> Snapshot {
        let names: BTreeMap<u32, &str> = self
            .driven
            .iter()
            .map(|d| (d.id, d.name.as_str()))
            .collect();
        Snapshot {
            t: self.world.time(),
            vehicles: self
                .world
                .vehicles()
                .iter()
                .map(|v| VehicleSample {
                    id: v.id,
                    s: v.s,
                    lane: v.lane,
                    v: v.v,
                    truck: v.truck,
                    driven: names.get(&v.id).map(|n| n.to_string()),
                    advised: v.advised_speed,
                })
                .collect(),
            hazards: self
                .world
                .obstacles()
                .iter()
                .map(|o| (o.lane, o.s_back, o.s_front))
                .collect(),
        }
    }

    /// The driven vehicles' counters.
    pub fn driven_stats(&self) -> Vec<DrivenStats> {
        self.driven.iter().map(|d| d.stats.clone()).collect()
    }

    /// The world's measures so far.
    pub fn measures(&self) -> TrafficMeasures {
        TrafficMeasures::from(self.world.stats())
    }
}

/// A link status a driven vehicle's link node published (`twin/status`), as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkSample {
    /// Simulated time it arrived [s].
    pub t: f64,
    /// The vehicle.
    pub vehicle: String,
    /// `TwinStatus::LINK_*`.
    pub link_state: u8,
    /// Smoothed round-trip time [s].
    pub rtt_s: f64,
    /// Goodput measured over the last window [bit/s].
    pub measured_bandwidth_bps: f64,
    /// Bytes sent up since the link started.
    pub uplink_bytes: u64,
    /// Bytes sent down since the link started.
    pub downlink_bytes: u64,
    /// Messages waiting in the vehicle's buffer.
    pub buffered: u32,
}

/// A recommendation that reached a driven vehicle, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdviceSample {
    /// Simulated time it arrived [s].
    pub t: f64,
    /// The vehicle.
    pub vehicle: String,
    /// Advised speed [m/s].
    pub target_speed: f64,
    /// Advised lane.
    pub target_lane: i32,
    /// `Recommendation::REASON_*`.
    pub reason_code: u8,
    /// Its explanation.
    pub reason: String,
    /// From the twin's stamp to its arrival at the vehicle [ms] (one clock: one machine).
    pub latency_ms: f64,
    /// Why it was not applied, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// One line of a real-time run's trace (JSON Lines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceRecord {
    /// The road.
    Snapshot(Snapshot),
    /// A link status.
    Link(LinkSample),
    /// A recommendation.
    Advice(AdviceSample),
}

/// What a real-time run measured (the simulator's side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealtimeReport {
    /// Scenario name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// Wall-clock time of simulated time 0 [us since the Unix epoch].
    pub epoch_us: u64,
    /// Wall-clock time of the run [s].
    pub wall_s: f64,
    /// Steps that ran more than one step late (the machine could not keep up).
    pub late_steps: u64,
    /// Largest lag of the world behind the wall clock [s].
    pub max_lag_s: f64,
    /// The traffic's measures.
    pub measures: TrafficMeasures,
    /// The driven vehicles' counters.
    pub driven: Vec<DrivenStats>,
}

/// The same world without any advice: the baseline of a real-time run, on the same seed.
pub fn baseline(scenario: &Scenario, every_s: f64) -> (TrafficMeasures, Vec<Snapshot>) {
    let mut sim = RealtimeSim::new(scenario, &[], 0, RealtimeConfig::default());
    let mut snapshots = vec![sim.snapshot()];
    let mut next = every_s;
    while !sim.world.finished() {
        sim.world.step();
        if sim.world.time() + 1e-9 >= next {
            next += every_s;
            snapshots.push(sim.snapshot());
        }
    }
    (sim.measures(), snapshots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_msgs::codec;

    fn scenario() -> Scenario {
        Scenario::parse(
            "name: rt\nseed: 7\nduration_s: 20\nroad: { length_m: 2000, lanes: 3, speed_limit_mps: 30 }\ntraffic: { vehicles: 30, inflow_veh_per_h: 1200, connected_share: 0.3 }\nhazards:\n  - { kind: stalled_vehicle, s_m: 900, lane: 0 }\n",
            "rt",
        )
        .unwrap()
    }

    #[test]
    fn driven_vehicles_get_every_sensor_at_its_rate_in_the_bridge_layouts() {
        let s = scenario();
        let ids = choose_driven(&World::new(&s), 2);
        assert_eq!(ids.len(), 2);
        let names: Vec<(String, u32)> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| (format!("car_{k}"), *id))
            .collect();
        let epoch = 1_800_000_000_000_000;
        let mut sim = RealtimeSim::new(&s, &names, epoch, RealtimeConfig::default());
        let mut lidar = Vec::new();
        let mut radar = 0;
        let mut odom = Vec::new();
        while sim.world().time() < 2.0 - 1e-9 {
            for (k, o) in sim.step() {
                match o {
                    SensorOutput::Lidar(c) if k == 0 => lidar.push(c),
                    SensorOutput::Radar(c) if k == 0 => {
                        let names: Vec<&str> = c.fields.iter().map(|f| f.name.as_str()).collect();
                        assert_eq!(
                            names,
                            [
                                "x",
                                "y",
                                "z",
                                "Range",
                                "Velocity",
                                "AzimuthAngle",
                                "ElevationAngle"
                            ]
                        );
                        radar += 1;
                    }
                    SensorOutput::Odometry(o) if k == 0 => odom.push(o),
                    _ => {}
                }
            }
        }
        // 10 Hz LiDAR, radar and odometry over 2 s.
        assert_eq!(lidar.len(), 20);
        assert!((19..=21).contains(&odom.len()), "{}", odom.len());
        assert!((19..=21).contains(&radar), "{radar}");
        // Clouds decode as ROS messages and see more than the ground.
        let bytes = codec::encode(&lidar[0]).unwrap();
        let back: PointCloud2 = codec::decode(&bytes).unwrap();
        assert_eq!(
            back.width as usize * back.point_step as usize,
            back.data.len()
        );
        let st = &sim.driven_stats()[0];
        assert_eq!(st.lidar_frames, 20);
        assert!(st.lidar_bytes > 20 * 100_000, "{st:?}");
        // Odometry follows the vehicle in map: the road along x, its lane's centre as y.
        let v = sim
            .world()
            .vehicles()
            .iter()
            .find(|v| v.id == ids[0])
            .unwrap()
            .clone();
        let last = odom.last().unwrap();
        assert!((last.pose.pose.position.x - (v.s - v.length / 2.0)).abs() < 1e-9);
        assert_eq!(last.pose.pose.position.y, v.lane as f64 * 3.5);
        assert_eq!(last.header.frame_id, "map");
        assert_eq!(last.child_frame_id, "base_link");
    }

    #[test]
    fn sensor_clocks_keep_their_rate_or_the_steps_without_falling_behind() {
        // 10 Hz on 0.1 s steps: every step.
        assert!((next_tick(0.3, 10.0, 0.3) - 0.4).abs() < 1e-9);
        // 20 Hz on 0.1 s steps: the next due time is after the current step.
        let n = next_tick(0.3, 20.0, 0.3);
        assert!(n > 0.3 + 1e-9 && n <= 0.4 + 1e-9, "{n}");
        // 5 Hz: every other step.
        assert!((next_tick(0.2, 5.0, 0.2) - 0.4).abs() < 1e-9);
    }

    #[test]
    fn the_lidar_sees_the_vehicle_ahead_where_it_is() {
        let s = Scenario::parse(
            "name: p\nduration_s: 5\nroad: { length_m: 1000, lanes: 2, speed_limit_mps: 30 }\ntraffic: { vehicles: 2, truck_share: 0, connected_share: 1 }\n",
            "p",
        )
        .unwrap();
        let mut sim = RealtimeSim::new(&s, &[("ego".into(), 0)], 0, RealtimeConfig::default());
        sim.world.place(&[(0, 100.0, false), (0, 130.0, false)]);
        let scene = sim.scene(0, 100.0);
        assert_eq!(scene.objects.len(), 1);
        // Centre to centre: 30 m apart.
        assert!((scene.objects[0].x - 30.0).abs() < 1e-9);
        let cloud = sim.config.lidar.scan(&scene, 1);
        // Some returns lie on the other car's rear face, about 27.75 m ahead of the body centre.
        let mut on_car = 0;
        for p in cloud.data.chunks(cloud.point_step as usize) {
            let f = |i: usize| f32::from_le_bytes(p[i * 4..i * 4 + 4].try_into().unwrap());
            let (x, y, z) = (f(0) as f64, f(1) as f64, f(2) as f64 + 1.9);
            if (x - 27.75).abs() < 0.2 && y.abs() < 1.0 && z > 0.1 {
                on_car += 1;
            }
        }
        assert!(on_car > 20, "{on_car}");
    }

    #[test]
    fn advice_binds_until_it_lapses_and_bad_advice_is_refused_with_its_reason() {
        let s = scenario();
        let id = choose_driven(&World::new(&s), 1)[0];
        let epoch = 1_800_000_000_000_000u64;
        let mut sim = RealtimeSim::new(&s, &[("car".into(), id)], epoch, RealtimeConfig::default());
        let mut r = Recommendation::default();
        r.vehicle_id = "car".into();
        r.target_speed = 5.0;
        r.valid_until = ros_time(epoch + 3_000_000);
        sim.apply(0, &r, epoch).unwrap();
        for _ in 0..25 {
            sim.step();
        }
        let v = |sim: &RealtimeSim| {
            sim.world()
                .vehicles()
                .iter()
                .find(|v| v.id == id)
                .unwrap()
                .clone()
        };
        // The driver slows towards 5 m/s (comfortably, at most b = 1.5 m/s²): against the
        // same world without the advice, it is slower.
        let mut free = World::new(&s);
        free.run_until(sim.world().time());
        let unadvised = free.vehicles().iter().find(|x| x.id == id).unwrap().v;
        assert!(v(&sim).v < unadvised - 2.0, "{} vs {unadvised}", v(&sim).v);
        assert_eq!(v(&sim).advised_speed, Some(5.0));
        for _ in 0..10 {
            sim.step();
        }
        assert_eq!(v(&sim).advised_speed, None, "the advice lapsed at 3 s");
        let mut bad = r.clone();
        bad.target_speed = f64::NAN;
        assert_eq!(sim.apply(0, &bad, epoch).unwrap_err().reason(), "bad_speed");
        let mut other = r.clone();
        other.vehicle_id = "someone".into();
        assert_eq!(
            sim.apply(0, &other, epoch).unwrap_err().reason(),
            "wrong_vehicle"
        );
        assert_eq!(
            sim.apply(0, &r, epoch + 4_000_000).unwrap_err().reason(),
            "expired"
        );
        assert_eq!(
            sim.apply(3, &r, epoch).unwrap_err().reason(),
            "unknown_vehicle"
        );
        let st = &sim.driven_stats()[0];
        assert_eq!(st.advice_applied, 1);
        assert_eq!(st.advice_binding, 1);
        assert_eq!(st.advice_expired, 1);
        assert_eq!(st.advice_refused.values().sum::<u64>(), 3);
    }

    #[test]
    fn the_baseline_is_the_same_world_without_advice() {
        let s = scenario();
        let (a, snaps) = baseline(&s, 1.0);
        let (b, _) = baseline(&s, 1.0);
        assert_eq!(a, b);
        assert_eq!(snaps.len(), 21);
        let mut w = World::new(&s);
        w.run_until(s.duration_s);
        assert_eq!(a, TrafficMeasures::from(w.stats()));
    }
}
