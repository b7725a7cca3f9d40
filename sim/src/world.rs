//! The world: vehicles on a straight multi-lane highway, stepped on a virtual clock.
//!
//! Each step (`step_s`, 0.1 s by default) every vehicle finds its leader in its lane (a
//! vehicle or an active hazard), takes its IDM acceleration towards its desired speed
//! (the lower of its own and the limit here or 50 m ahead; a connected vehicle may be
//! given an advised speed that lowers it further), and considers a lane change with MOBIL
//! (at most one every 3 s). Then all move at once (ballistic update, never backwards).
//! Vehicles enter at the start of the road at the scenario's inflow and leave at its end.
//!
//! Positions `s` are of the front bumper along the road [m]; lane 0 is the rightmost.
//! Everything is deterministic for a seed: vehicles are handled in id order and every
//! random draw comes from one ChaCha stream.
//!
//! The world counts what a report needs: collisions (a front bumper past the back of what
//! is ahead), hard brakes (starting to decelerate harder than 4 m/s²), the smallest
//! time-to-collision, vehicles that left the road, and distance driven.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::scenario::{HazardKind, Scenario};
use crate::traffic::{Idm, LaneChangeCase, Mobil};

/// Deceleration that counts as a hard brake [m/s²].
pub const HARD_BRAKE: f64 = 4.0;
/// Shortest time between two lane changes of one vehicle [s].
pub const LANE_CHANGE_COOLDOWN: f64 = 3.0;
/// How much a twin's lane advice adds to MOBIL's incentive of a change towards the advised
/// lane [m/s²] (and takes from one away from it): above the threshold and keep-right bias,
/// so a driver follows advice into any safe gap, never into an unsafe one.
pub const ADVICE_LANE_BIAS: f64 = 1.0;
/// The hardest braking a change taken on advice may ask of the new follower [m/s²]
/// (MOBIL's own limit is 4).
pub const ADVICE_SAFE_DECEL: f64 = 2.0;
/// Free lane before a hazard needed for it to take its place [m] (a car at 30 m/s stops
/// in 50 m at 9 m/s²).
pub const HAZARD_CLEARANCE: f64 = 60.0;
/// How far ahead a driver sees a lower limit [m].
pub const LIMIT_LOOKAHEAD: f64 = 50.0;

/// One vehicle.
#[derive(Debug, Clone, PartialEq)]
pub struct Vehicle {
    /// Unique id, in order of appearance.
    pub id: u32,
    /// Current lane.
    pub lane: usize,
    /// Front bumper along the road [m].
    pub s: f64,
    /// Speed [m/s].
    pub v: f64,
    /// Acceleration of the last step [m/s²].
    pub a: f64,
    /// Length [m].
    pub length: f64,
    /// Width [m].
    pub width: f64,
    /// Whether it is a truck.
    pub truck: bool,
    /// Whether it has a twin.
    pub connected: bool,
    /// Its driver's own desired speed [m/s].
    pub desired_speed: f64,
    /// A speed the vehicle was advised (a twin's recommendation); it drives no faster.
    pub advised_speed: Option<f64>,
    /// A lane the vehicle was advised to change to (a twin's recommendation): its driver
    /// weighs changes towards it [`ADVICE_LANE_BIAS`] higher and changes away from it as
    /// much lower, within MOBIL's safety criterion.
    pub advised_lane: Option<usize>,
    /// Its driver.
    pub idm: Idm,
    /// Time left before it may change lanes again [s].
    cooldown: f64,
    /// Braking harder than [`HARD_BRAKE`] in the last step.
    braking_hard: bool,
}

/// A hazard active now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Obstacle {
    /// Index in the scenario's hazards.
    pub hazard: usize,
    /// What it is.
    pub kind: HazardKind,
    /// Its lane.
    pub lane: usize,
    /// Its back (upstream end) along the road [m].
    pub s_back: f64,
    /// Its front (downstream end) [m].
    pub s_front: f64,
}

/// What the world counted since the start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorldStats {
    /// Simulated time [s].
    pub time: f64,
    /// Steps taken.
    pub steps: u64,
    /// Collisions (a pair counts once while it stays in contact).
    pub collisions: u64,
    /// Hard brakes (each start of braking harder than [`HARD_BRAKE`]).
    pub hard_brakes: u64,
    /// Smallest time-to-collision seen [s] (`f64::INFINITY` when nothing ever closed in).
    pub min_ttc: f64,
    /// Hard brakes of connected vehicles (those a twin advises).
    pub hard_brakes_connected: u64,
    /// Smallest time-to-collision of a connected vehicle closing in [s].
    pub min_ttc_connected: f64,
    /// Vehicles that left at the end of the road.
    pub exited: u64,
    /// Vehicles that entered at the start.
    pub entered: u64,
    /// Lane changes.
    pub lane_changes: u64,
    /// Distance driven by all vehicles [m].
    pub distance: f64,
    /// Sum of speed × time over all vehicles [m] (mean speed = this / vehicle-time).
    pub vehicle_time: f64,
}

impl WorldStats {
    /// Mean speed over all vehicles and time [m/s].
    pub fn mean_speed(&self) -> f64 {
        if self.vehicle_time > 0.0 {
            self.distance / self.vehicle_time
        } else {
            0.0
        }
    }

    /// Vehicles leaving the road per hour.
    pub fn throughput_per_h(&self) -> f64 {
        if self.time > 0.0 {
            self.exited as f64 * 3600.0 / self.time
        } else {
            0.0
        }
    }
}

/// The simulated road and its traffic.
pub struct World {
    scenario: Scenario,
    time: f64,
    vehicles: Vec<Vehicle>,
    next_id: u32,
    rng: ChaCha8Rng,
    mobil: Mobil,
    inflow_credit: f64,
    stats: WorldStats,
    /// Pairs (follower, what is ahead) in contact in the last step.
    contacts: Vec<(u32, i64)>,
    /// When each hazard took its place (None: not yet).
    activated_at: Vec<Option<f64>>,
}

/// Something in a lane: its back and front, its speed, and who it is (a vehicle's index
/// in `vehicles`, or `None` for a hazard).
#[derive(Debug, Clone, Copy)]
struct Occupant {
    s_back: f64,
    s_front: f64,
    v: f64,
    vehicle: Option<usize>,
    /// A vehicle id, or `-1 - hazard index`.
    who: i64,
    /// How near a driver must be to see it [m].
    visible_within: f64,
}

/// Per lane, what occupies it, sorted by back position.
struct Lanes {
    lanes: Vec<Vec<Occupant>>,
    /// Length of the longest occupant [m] (how far back an overlap search must reach).
    longest: f64,
    /// The drivers' sight distance [m].
    sight: f64,
}

impl Lanes {
    /// Whether anything in `lane` other than `me` comes within `margin` of `[back, front]`.
    fn blocked(&self, lane: usize, back: f64, front: f64, margin: f64, me: i64) -> bool {
        let l = &self.lanes[lane];
        let end = l.partition_point(|o| o.s_back < front + margin);
        l[..end]
            .iter()
            .rev()
            .take_while(|o| o.s_back >= back - margin - self.longest)
            .any(|o| o.who != me && o.s_front > back - margin)
    }

    /// The first occupant of `lane` whose back is at or ahead of `s`, other than `me`, that
    /// a driver whose front is at `s` and back at `back` sees (within the sight distance and
    /// the occupant's visibility).
    fn leader(&self, lane: usize, s: f64, back: f64, me: i64) -> Option<Occupant> {
        let l = &self.lanes[lane];
        let start = l.partition_point(|o| o.s_back < s - 1e-9);
        // Something the front is already in (after a collision) stays the leader, at a gap
        // below zero, so that nothing drives through what it hit (what starts behind the
        // vehicle's back, such as a closure it was already past, does not count).
        if let Some(o) = l[..start]
            .iter()
            .rev()
            .take_while(|o| o.s_back >= s - self.longest)
            .find(|o| o.who != me && o.s_front > s && o.s_back > back)
        {
            return Some(*o);
        }
        for o in &l[start..] {
            let gap = o.s_back - s;
            if gap > self.sight {
                return None;
            }
            if o.who != me && gap <= o.visible_within {
                return Some(*o);
            }
        }
        None
    }

    /// The last vehicle of `lane` whose front is at or behind `s_back`, other than `me`,
    /// with its bumper gap to `s_back`.
    fn follower(&self, lane: usize, s_back: f64, me: i64) -> Option<(usize, f64)> {
        let l = &self.lanes[lane];
        let end = l.partition_point(|o| o.s_back < s_back + 1e-9);
        l[..end]
            .iter()
            .rev()
            .filter(|o| o.who != me && o.s_front <= s_back + 1e-9)
            .find_map(|o| o.vehicle.map(|i| (i, s_back - o.s_front)))
    }
}

impl World {
    /// The world at time 0: the scenario's initial vehicles spread over the road.
    pub fn new(scenario: &Scenario) -> World {
        let mut w = World {
            scenario: scenario.clone(),
            time: 0.0,
            vehicles: Vec::new(),
            next_id: 0,
            rng: ChaCha8Rng::seed_from_u64(scenario.seed),
            mobil: Mobil::default(),
            inflow_credit: 0.0,
            stats: WorldStats {
                min_ttc: f64::INFINITY,
                min_ttc_connected: f64::INFINITY,
                ..Default::default()
            },
            contacts: Vec::new(),
            activated_at: vec![None; scenario.hazards.len()],
        };
        w.activate_hazards();
        let n = scenario.traffic.vehicles;
        let lanes = scenario.road.lanes;
        let per_lane = n.div_ceil(lanes).max(1);
        let spacing = scenario.road.length_m / per_lane as f64;
        let at_start = w.obstacles();
        for i in 0..n {
            let lane = i % lanes;
            let slot = i / lanes;
            let jitter = w.rng.random_range(0.0..0.3) * spacing;
            let s = (slot as f64 * spacing + jitter + 12.0).min(scenario.road.length_m);
            // Nobody starts on a hazard or in the 150 m before it.
            if at_start
                .iter()
                .any(|o| o.lane == lane && s > o.s_back - 150.0 && s - 12.0 < o.s_front)
            {
                continue;
            }
            let mut v = w.new_vehicle(lane, s);
            // Start near the equilibrium speed for the spacing, so the run does not begin
            // with everyone braking.
            let gap = spacing - v.length;
            v.v = (v.desired_speed * 0.9)
                .min(w.limit_at(s))
                .min(((gap - v.idm.min_gap) / v.idm.time_gap).max(0.0));
            w.vehicles.push(v);
        }
        w.vehicles.sort_by_key(|v| v.id);
        w
    }

    fn new_vehicle(&mut self, lane: usize, s: f64) -> Vehicle {
        let t = &self.scenario.traffic;
        let truck = self.rng.random_bool(t.truck_share);
        let connected = self.rng.random_bool(t.connected_share);
        let limit = self.scenario.road.speed_limit_mps;
        let spread: f64 = self.rng.random_range(0.85..1.1);
        let (idm, length, width, cap) = if truck {
            (Idm::truck(), 12.0, 2.5, 25.0f64.min(limit))
        } else {
            (Idm::car(), 4.5, 1.9, f64::INFINITY)
        };
        let mut idm = idm;
        idm.time_gap *= self.rng.random_range(0.8..1.3);
        let id = self.next_id;
        self.next_id += 1;
        Vehicle {
            id,
            lane,
            s,
            v: 0.0,
            a: 0.0,
            length,
            width,
            truck,
            connected,
            desired_speed: (limit * t.desired_speed_factor * spread).min(cap),
            advised_speed: None,
            advised_lane: None,
            idm,
            cooldown: self.rng.random_range(0.0..LANE_CHANGE_COOLDOWN),
            braking_hard: false,
        }
    }

    /// Replaces every vehicle by the ones given as `(lane, front bumper s, truck)`, with ids
    /// 0, 1, 2... in that order, driving at 25 m/s (or their desired speed if lower): for
    /// tests and scripted situations.
    pub fn place(&mut self, placed: &[(usize, f64, bool)]) {
        self.vehicles.clear();
        self.contacts.clear();
        self.next_id = 0;
        for &(lane, s, truck) in placed {
            let mut v = self.new_vehicle(lane.min(self.scenario.road.lanes - 1), s);
            if truck != v.truck {
                v.truck = truck;
                (v.idm, v.length, v.width) = if truck {
                    (Idm::truck(), 12.0, 2.5)
                } else {
                    (Idm::car(), 4.5, 1.9)
                };
            }
            v.v = v.desired_speed.min(25.0);
            self.vehicles.push(v);
        }
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Simulated time [s].
    pub fn time(&self) -> f64 {
        self.time
    }

    /// The vehicles on the road, in id order.
    pub fn vehicles(&self) -> &[Vehicle] {
        &self.vehicles
    }

    /// The vehicle with `id`, if it is on the road.
    pub fn vehicle_mut(&mut self, id: u32) -> Option<&mut Vehicle> {
        self.vehicles
            .binary_search_by(|v| v.id.cmp(&id))
            .ok()
            .map(|i| &mut self.vehicles[i])
    }

    /// What was counted so far.
    pub fn stats(&self) -> &WorldStats {
        &self.stats
    }

    /// The hazards active at the current time.
    pub fn obstacles(&self) -> Vec<Obstacle> {
        let t = self.time;
        self.scenario
            .hazards
            .iter()
            .enumerate()
            .filter(|(i, h)| self.activated_at[*i].is_some() && h.until_s.is_none_or(|u| t < u))
            .map(|(i, h)| Obstacle {
                hazard: i,
                kind: h.kind,
                lane: h.lane,
                s_back: h.s_m,
                s_front: h.s_m + h.length(),
            })
            .collect()
    }

    /// When each of the scenario's hazards took its place on the road (`None`: not yet).
    pub fn hazard_activations(&self) -> &[Option<f64>] {
        &self.activated_at
    }

    /// A hazard due (its `from_s` passed) takes its place once its stretch of lane, and
    /// [`HAZARD_CLEARANCE`] before it, is free of vehicles: a vehicle stalls in a gap, a
    /// crew puts a closure's first 20 m of cones in a gap (vehicles already past them drive
    /// out of the closed stretch); nothing appears under a moving vehicle.
    fn activate_hazards(&mut self) {
        let t = self.time;
        for (i, h) in self.scenario.hazards.iter().enumerate() {
            if self.activated_at[i].is_some() || t + 1e-9 < h.from_s {
                continue;
            }
            // A closure starts with its first cones: vehicles already past them drive out.
            let extent = match h.kind {
                HazardKind::LaneClosure => h.length().min(20.0),
                _ => h.length(),
            };
            let (back, front) = (h.s_m - HAZARD_CLEARANCE, h.s_m + extent);
            let clear = !self
                .vehicles
                .iter()
                .any(|v| v.lane == h.lane && v.s > back && v.s - v.length < front);
            if clear {
                self.activated_at[i] = Some(t);
            }
        }
    }

    /// The speed limit at road position `s` now [m/s].
    pub fn limit_at(&self, s: f64) -> f64 {
        let t = self.time;
        self.scenario
            .bottlenecks
            .iter()
            .filter(|b| {
                t >= b.from_s && b.until_s.is_none_or(|u| t < u) && s >= b.from_m && s < b.to_m
            })
            .map(|b| b.speed_limit_mps)
            .fold(self.scenario.road.speed_limit_mps, f64::min)
    }

    /// A digest of the whole state (for determinism checks).
    pub fn digest(&self) -> u64 {
        // FNV-1a over the exact bits of every vehicle's state.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(self.time.to_bits());
        for v in &self.vehicles {
            eat(v.id as u64);
            eat(v.lane as u64);
            eat(v.s.to_bits());
            eat(v.v.to_bits());
        }
        h
    }

    /// Runs until simulated time `t` (or the scenario's end, whichever is first).
    pub fn run_until(&mut self, t: f64) {
        let end = t.min(self.scenario.duration_s);
        while self.time + 1e-9 < end {
            self.step();
        }
    }

    /// Whether the scenario's duration is over.
    pub fn finished(&self) -> bool {
        self.time + 1e-9 >= self.scenario.duration_s
    }

    /// Per lane, what stands or drives there, sorted by back position.
    fn lanes(&self, obstacles: &[Obstacle]) -> Lanes {
        let mut lanes: Vec<Vec<Occupant>> = vec![Vec::new(); self.scenario.road.lanes];
        for (i, v) in self.vehicles.iter().enumerate() {
            lanes[v.lane].push(Occupant {
                s_back: v.s - v.length,
                s_front: v.s,
                v: v.v,
                vehicle: Some(i),
                who: v.id as i64,
                visible_within: f64::INFINITY,
            });
        }
        for o in obstacles {
            lanes[o.lane].push(Occupant {
                s_back: o.s_back,
                s_front: o.s_front,
                v: 0.0,
                vehicle: None,
                who: -1 - o.hazard as i64,
                visible_within: self.scenario.hazards[o.hazard]
                    .visible_within_m
                    .unwrap_or(f64::INFINITY),
            });
        }
        let mut longest: f64 = 0.0;
        for l in &mut lanes {
            l.sort_by(|a, b| a.s_back.total_cmp(&b.s_back).then(a.who.cmp(&b.who)));
            for o in l.iter() {
                longest = longest.max(o.s_front - o.s_back);
            }
        }
        Lanes {
            lanes,
            longest,
            sight: self.scenario.traffic.sight_distance_m,
        }
    }

    /// Advances the world by one step.
    pub fn step(&mut self) {
        let dt = self.scenario.step_s;
        self.activate_hazards();
        let obstacles = self.obstacles();
        let lanes = self.lanes(&obstacles);
        let leader =
            |lane: usize, v: &Vehicle| lanes.leader(lane, v.s, v.s - v.length, v.id as i64);
        let follower = |lane: usize, s_back: f64, me: i64| lanes.follower(lane, s_back, me);
        let v0_of = |v: &Vehicle| -> f64 {
            let limit = self.limit_at(v.s).min(self.limit_at(v.s + LIMIT_LOOKAHEAD));
            let mut v0 = v.desired_speed.min(limit);
            if let Some(a) = v.advised_speed {
                v0 = v0.min(a.max(0.0));
            }
            v0
        };
        let accel_behind = |v: &Vehicle, lead: Option<Occupant>| -> f64 {
            v.idm
                .accel(v.v, v0_of(v), lead.map(|l| (l.s_back - v.s, l.v)))
        };
        let n = self.vehicles.len();
        let mut accel = vec![0.0; n];
        let mut change: Vec<Option<(usize, f64, f64)>> = vec![None; n];
        for (i, v) in self.vehicles.iter().enumerate() {
            let me = v.id as i64;
            let lead = leader(v.lane, v);
            let a_now = accel_behind(v, lead);
            accel[i] = a_now;
            if v.cooldown > 0.0 {
                continue;
            }
            let old_follower = follower(v.lane, v.s - v.length, me);
            let mut best: Option<(f64, usize, f64)> = None;
            for target in [v.lane.checked_sub(1), Some(v.lane + 1)]
                .into_iter()
                .flatten()
            {
                if target >= self.scenario.road.lanes {
                    continue;
                }
                let new_lead = leader(target, v);
                let new_follower = follower(target, v.s - v.length, me);
                // Room: nothing beside the vehicle in the target lane, nor within 1 m.
                if lanes.blocked(target, v.s - v.length, v.s, 1.0, me) {
                    continue;
                }
                if new_follower.is_some_and(|(_, gap)| gap < 1.0) {
                    continue;
                }
                let own_after = accel_behind(v, new_lead);
                let nf = new_follower.map_or((0.0, 0.0), |(j, gap)| {
                    let f = &self.vehicles[j];
                    (
                        accel_behind(f, leader(target, f)),
                        f.idm.accel(f.v, v0_of(f), Some((gap, v.v))),
                    )
                });
                let of = old_follower.map_or((0.0, 0.0), |(j, gap)| {
                    let f = &self.vehicles[j];
                    let behind_me = f.idm.accel(f.v, v0_of(f), Some((gap, v.v)));
                    (behind_me, accel_behind(f, lead))
                });
                let case = LaneChangeCase {
                    own_now: a_now,
                    own_after,
                    new_follower: nf,
                    old_follower: of,
                    to_left: target > v.lane,
                };
                if let Some(mut gain) = self.mobil.incentive(&case) {
                    if let Some(advised) = v.advised_lane.filter(|&a| a != v.lane) {
                        if (target > v.lane) == (advised > v.lane) {
                            // Taking advice, a driver waits for a gap that nobody has to
                            // brake hard for.
                            if case.new_follower.1 < -ADVICE_SAFE_DECEL {
                                continue;
                            }
                            gain += ADVICE_LANE_BIAS;
                        } else {
                            gain -= ADVICE_LANE_BIAS;
                        }
                    }
                    if gain > 0.0 && best.is_none_or(|(g, _, _)| gain > g) {
                        best = Some((gain, target, own_after));
                    }
                }
            }
            if let Some((_, target, a_after)) = best {
                change[i] = Some((target, a_now, a_after));
            }
        }
        // Changes decided at once may aim at the same gap: apply them one by one, each
        // checked again against the lanes as the ones before left them.
        let mut lane_of: Vec<usize> = self.vehicles.iter().map(|v| v.lane).collect();
        for i in 0..n {
            let Some((target, a_now, a_after)) = change[i] else {
                continue;
            };
            let v = &self.vehicles[i];
            let mut ok = true;
            let mut nearest_ahead: Option<(f64, f64)> = None;
            for (j, o) in self.vehicles.iter().enumerate() {
                if j == i || lane_of[j] != target {
                    continue;
                }
                let (ahead_gap, behind_gap) = (o.s - o.length - v.s, v.s - v.length - o.s);
                if ahead_gap < 1.0 && behind_gap < 1.0 {
                    ok = false; // overlapping, or closer than 1 m
                    break;
                }
                if ahead_gap >= 1.0 && nearest_ahead.is_none_or(|(g, _)| ahead_gap < g) {
                    nearest_ahead = Some((ahead_gap, o.v));
                }
                if (1.0..200.0).contains(&behind_gap) {
                    let a = o.idm.accel(o.v, v0_of(o), Some((behind_gap, v.v)));
                    if a < -self.mobil.safe_decel {
                        ok = false;
                        break;
                    }
                }
            }
            // A vehicle that changed into this lane ahead of it in this step counts too.
            let own = nearest_ahead.map(|lead| v.idm.accel(v.v, v0_of(v), Some(lead)));
            if own.is_some_and(|a| a < -self.mobil.safe_decel) {
                ok = false;
            }
            if ok {
                lane_of[i] = target;
                accel[i] = a_after.min(own.unwrap_or(f64::INFINITY));
            } else {
                change[i] = None;
                accel[i] = a_now;
            }
        }
        // Move everyone at once.
        let mut moved_distance = 0.0;
        for (i, v) in self.vehicles.iter_mut().enumerate() {
            if let Some((target, _, _)) = change[i] {
                v.lane = target;
                v.cooldown = LANE_CHANGE_COOLDOWN;
                self.stats.lane_changes += 1;
            } else {
                v.cooldown = (v.cooldown - dt).max(0.0);
            }
            let a = accel[i];
            let v_new = (v.v + a * dt).max(0.0);
            // Ballistic update; a vehicle that stops within the step stops where it stops.
            let ds = if v_new > 0.0 {
                v.v * dt + 0.5 * a * dt * dt
            } else {
                v.v * v.v / (2.0 * (-a).max(1e-9))
            }
            .max(0.0);
            v.s += ds;
            v.v = v_new;
            v.a = a;
            let hard = a < -HARD_BRAKE;
            if hard && !v.braking_hard {
                self.stats.hard_brakes += 1;
                self.stats.hard_brakes_connected += v.connected as u64;
            }
            v.braking_hard = hard;
            moved_distance += ds;
        }
        self.stats.distance += moved_distance;
        self.stats.vehicle_time += self.vehicles.len() as f64 * dt;
        self.time += dt;
        self.stats.time = self.time;
        self.stats.steps += 1;
        self.check_contacts(&obstacles);
        self.leave_and_enter(dt);
    }

    /// Counts collisions and the smallest time-to-collision after a move.
    fn check_contacts(&mut self, obstacles: &[Obstacle]) {
        let lanes = self.lanes(obstacles);
        let mut contacts = Vec::new();
        let mut connected_behind = Vec::new();
        // A vehicle in contact with what is ahead moves no faster than it (an inelastic
        // crash: the pair stays in contact, and counts once).
        let mut crashed: Vec<(usize, f64)> = Vec::new();
        for l in &lanes.lanes {
            for (k, o) in l.iter().enumerate() {
                let Some(i) = o.vehicle else { continue };
                let v = &self.vehicles[i];
                // What is ahead: the next occupant by back position; anything whose back
                // lies before this vehicle's front overlaps it.
                for a in &l[k + 1..] {
                    let gap = a.s_back - v.s;
                    if gap < 0.0 {
                        if v.connected {
                            connected_behind.push((v.id, a.who));
                        }
                        contacts.push((v.id, a.who));
                        crashed.push((i, a.v));
                        continue;
                    }
                    if v.v > a.v {
                        let ttc = gap / (v.v - a.v);
                        self.stats.min_ttc = self.stats.min_ttc.min(ttc);
                        if v.connected {
                            self.stats.min_ttc_connected = self.stats.min_ttc_connected.min(ttc);
                        }
                    }
                    break;
                }
            }
        }
        for c in &contacts {
            if !self.contacts.contains(c) {
                self.stats.collisions += 1;
                // At contact the time to collision is zero.
                self.stats.min_ttc = 0.0;
                if connected_behind.contains(c) {
                    self.stats.min_ttc_connected = 0.0;
                }
            }
        }
        for (i, v_ahead) in crashed {
            let v = &mut self.vehicles[i];
            v.v = v.v.min(v_ahead.max(0.0));
        }
        self.contacts = contacts;
    }

    fn leave_and_enter(&mut self, dt: f64) {
        let length = self.scenario.road.length_m;
        let before = self.vehicles.len();
        self.vehicles.retain(|v| v.s - v.length <= length);
        self.stats.exited += (before - self.vehicles.len()) as u64;
        self.inflow_credit += self.scenario.traffic.inflow_veh_per_h / 3600.0 * dt;
        while self.inflow_credit >= 1.0 {
            // Enter in the lane whose last vehicle is furthest from the start, if there is
            // room for a safe gap at the speed it would enter with.
            let lanes = self.scenario.road.lanes;
            let mut best: Option<(f64, usize, f64)> = None;
            for lane in 0..lanes {
                let last = self
                    .vehicles
                    .iter()
                    .filter(|v| v.lane == lane)
                    .min_by(|a, b| a.s.total_cmp(&b.s));
                let (room, v_lead) = match last {
                    Some(v) => (v.s - v.length, v.v),
                    None => (f64::INFINITY, self.scenario.road.speed_limit_mps),
                };
                if best.is_none_or(|(r, _, _)| room > r) {
                    best = Some((room, lane, v_lead));
                }
            }
            let Some((room, lane, v_lead)) = best else {
                break;
            };
            let mut v = self.new_vehicle(lane, 0.0);
            let speed = v.desired_speed.min(v_lead).min(self.limit_at(0.0));
            let needed = v.idm.min_gap + speed * v.idm.time_gap;
            if room < needed.max(5.0) {
                // No room now: the vehicle waits (the credit stays) and its id is spent.
                break;
            }
            v.v = speed;
            self.vehicles.push(v);
            self.stats.entered += 1;
            self.inflow_credit -= 1.0;
        }
        self.inflow_credit = self.inflow_credit.min(5.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str, vehicles: usize, inflow: f64, duration: f64) -> Scenario {
        let text = format!(
            "name: t\nseed: 7\nduration_s: {duration}\nroad: {{ length_m: 3000, lanes: 3, speed_limit_mps: 30 }}\ntraffic: {{ vehicles: {vehicles}, inflow_veh_per_h: {inflow} }}\n{extra}"
        );
        Scenario::parse(&text, "t").unwrap()
    }

    #[test]
    fn a_seed_gives_the_same_run_and_another_seed_another() {
        let s = scenario("", 60, 1800.0, 60.0);
        let run = |s: &Scenario| {
            let mut w = World::new(s);
            w.run_until(60.0);
            (w.digest(), w.stats().clone())
        };
        let (a, sa) = run(&s);
        let (b, sb) = run(&s);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        let mut other = s.clone();
        other.seed = 8;
        assert_ne!(run(&other).0, a);
    }

    #[test]
    fn free_flowing_traffic_keeps_its_speed_and_never_collides() {
        let s = scenario("", 60, 1800.0, 120.0);
        let mut w = World::new(&s);
        w.run_until(120.0);
        let st = w.stats();
        assert_eq!(st.collisions, 0, "{st:?}");
        assert_eq!(st.hard_brakes, 0, "{st:?}");
        assert!(st.mean_speed() > 24.0, "{st:?}");
        assert!(st.entered > 40 && st.exited > 40, "{st:?}");
        for v in w.vehicles() {
            assert!(v.v <= v.desired_speed.min(30.0) + 0.5, "{v:?}");
        }
    }

    #[test]
    fn a_stalled_vehicle_is_passed_in_the_other_lanes_and_nobody_hits_it() {
        let s = scenario(
            "hazards:\n  - { kind: stalled_vehicle, s_m: 2000, lane: 0 }\n",
            60,
            1800.0,
            150.0,
        );
        let mut w = World::new(&s);
        let mut behind = std::collections::HashSet::new();
        let mut passed = std::collections::HashSet::new();
        while !w.finished() {
            w.step();
            for v in w.vehicles() {
                if v.s < 2000.0 {
                    behind.insert(v.id);
                } else if v.s - v.length > 2004.5 && behind.contains(&v.id) {
                    passed.insert(v.id);
                }
                let beside = v.s > 2000.0 && v.s - v.length < 2004.5;
                assert!(
                    !(beside && v.lane == 0),
                    "{v:?} drives through the stalled vehicle"
                );
            }
        }
        let passed = passed.len();
        let st = w.stats();
        assert_eq!(st.collisions, 0, "{st:?}");
        assert!(passed > 20, "{passed} vehicles passed the hazard");
        assert!(st.lane_changes > 10, "{st:?}");
    }

    #[test]
    fn a_closed_lane_stops_its_traffic_before_it_and_a_bottleneck_slows_traffic() {
        let closure = scenario(
            "hazards:\n  - { kind: lane_closure, s_m: 1500, lane: 2, length_m: 300 }\n",
            45,
            1500.0,
            90.0,
        );
        let mut w = World::new(&closure);
        w.run_until(90.0);
        assert_eq!(w.stats().collisions, 0, "{:?}", w.stats());
        for v in w.vehicles() {
            let inside = v.s > 1500.0 && v.s - v.length < 1800.0;
            assert!(!(inside && v.lane == 2), "{v:?} drives in the closed lane");
        }
        let free = scenario("", 60, 2400.0, 120.0);
        let slow = scenario(
            "bottlenecks:\n  - { from_m: 1500, to_m: 2000, speed_limit_mps: 10 }\n",
            60,
            2400.0,
            120.0,
        );
        let mean = |s: &Scenario| {
            let mut w = World::new(s);
            w.run_until(120.0);
            assert_eq!(w.stats().collisions, 0);
            w.stats().mean_speed()
        };
        assert!(mean(&slow) < mean(&free) - 3.0);
    }

    #[test]
    fn dense_traffic_with_hazards_and_a_bottleneck_is_collision_free_over_seeds() {
        let extra = "hazards:\n  - { kind: stalled_vehicle, s_m: 1800, lane: 1, from_s: 20 }\n  - { kind: debris, s_m: 2500, lane: 0 }\n  - { kind: lane_closure, s_m: 1000, lane: 2, length_m: 250, from_s: 40, until_s: 100 }\nbottlenecks:\n  - { from_m: 2200, to_m: 2600, speed_limit_mps: 15, from_s: 30, until_s: 90 }\n";
        for seed in 1..=8 {
            let mut s = scenario(extra, 90, 3600.0, 150.0);
            s.seed = seed;
            let mut w = World::new(&s);
            w.run_until(150.0);
            let st = w.stats();
            assert_eq!(st.collisions, 0, "seed {seed}: {st:?}");
            assert!(st.exited > 50, "seed {seed}: traffic flows: {st:?}");
            assert!(
                w.hazard_activations().iter().all(Option::is_some),
                "seed {seed}: every hazard took its place: {:?}",
                w.hazard_activations()
            );
        }
    }

    #[test]
    fn a_hazard_seen_late_makes_drivers_brake_hard_and_one_seen_early_does_not() {
        let run = |visible: &str| {
            let s = scenario(
                &format!("hazards:\n  - {{ kind: stalled_vehicle, s_m: 2000, lane: 0, from_s: 5{visible} }}\n"),
                60,
                1800.0,
                150.0,
            );
            let mut w = World::new(&s);
            w.run_until(150.0);
            w.stats().clone()
        };
        let early = run("");
        let late = run(", visible_within_m: 70");
        assert!(early.hard_brakes <= 1, "{early:?}");
        assert!(
            late.hard_brakes >= early.hard_brakes + 3,
            "{late:?} vs {early:?}"
        );
        assert_eq!(late.collisions, 0, "{late:?}");
    }

    #[test]
    fn a_collision_is_counted_once_with_its_hard_brake_and_a_tiny_time_to_collision() {
        // The counters behind every "collision-free" assertion: a car 1.5 m behind a
        // standing one at 25 m/s cannot stop.
        let s = scenario("", 2, 0.0, 10.0);
        let mut w = World::new(&s);
        w.place(&[(0, 100.0, false), (0, 106.0, false)]);
        w.vehicle_mut(1).unwrap().desired_speed = 0.0;
        w.vehicle_mut(1).unwrap().v = 0.0;
        w.vehicle_mut(0).unwrap().v = 25.0;
        w.vehicle_mut(0).unwrap().cooldown = 100.0; // no escape to another lane
        w.run_until(3.0);
        let st = w.stats();
        assert_eq!(
            st.collisions, 1,
            "one pair, counted once while in contact: {st:?}"
        );
        assert_eq!(st.hard_brakes, 1, "{st:?}");
        assert_eq!(st.min_ttc, 0.0, "{st:?}");
    }

    #[test]
    fn an_advised_speed_caps_what_the_vehicle_drives() {
        let s = scenario("", 30, 0.0, 60.0);
        let mut w = World::new(&s);
        let id = w.vehicles()[5].id;
        w.vehicle_mut(id).unwrap().advised_speed = Some(12.0);
        w.run_until(60.0);
        let v = w.vehicles().iter().find(|v| v.id == id).unwrap();
        assert!((v.v - 12.0).abs() < 0.5, "{v:?}");
    }
}
