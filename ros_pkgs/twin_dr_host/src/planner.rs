//! Velocity and lane planning: the classical baseline, the safety filter and the
//! recommendation.
//!
//! **Speed** follows the Intelligent Driver Model (IDM; Treiber, Hennecke & Helbing,
//! "Congested traffic states in empirical observations and microscopic simulations",
//! Phys. Rev. E 62, 1805, 2000), with the free-road term of the improved IDM (Treiber &
//! Kesting, *Traffic Flow Dynamics*, Springer 2013, section 11.3.7) so that a vehicle above
//! its desired speed slows down at most comfortably. Defaults are the paper's highway set:
//! time gap T = 1.6 s, minimum gap s0 = 2 m, acceleration a = 0.73 m/s², comfortable
//! deceleration b = 1.67 m/s², exponent δ = 4. The desired speed is the speed limit.
//!
//! **Lane choice** follows MOBIL (Kesting, Treiber & Helbing, "General lane-changing model
//! MOBIL for car-following models", Transportation Research Record 1999, 86-94, 2007):
//! a change is safe when the new follower need not brake harder than b_safe = 4 m/s², and
//! worth it when the own gain plus p times the followers' gains exceeds Δa_th = 0.1 m/s²
//! plus the keep-right bias Δa_bias = 0.3 m/s² (European rules: passing on the right is
//! not an incentive); politeness p = 0.2, inside the 0 to 0.5 range the paper recommends.
//!
//! **Lookahead** is what a twin adds to a vehicle's own sensors: hazards and slow traffic
//! known from the region or from other twins, kilometres ahead. Each becomes a speed cap
//! that lets the vehicle arrive at the right speed with a gentle, constant deceleration:
//! `v ≤ sqrt(v_arrive² + 2 b_look (d - margin))`, where `v_arrive` is the speed to pass a
//! hazard in the next lane (at most 60 km/h), 0 in front of a closure of every lane, or the
//! congested traffic's speed; hazards also act as standing leaders in the IDM and MOBIL
//! evaluations, so the lane with the hazard is left early.
//!
//! **Safety filter** ([`safety_filter`]): every speed of a recommendation, now and over
//! its horizon, is bounded by the limit and by the safe following speed behind the
//! predicted leader (Gipps' stopping criterion); a lane change is withdrawn when the
//! target lane has no free gap beside the vehicle. Model outputs (ONNX) pass the same
//! filter.
//!
//! **Speed advisor (optional).** A planner given a learned congestion speed advisor
//! ([`Planner::with_speed_model`], [`crate::model`]) lets it replace the congestion caps of
//! the first slow region ahead in a lane where it applies (two regional snapshots that
//! show the region, features in the model's trained range): the advisor estimates how fast
//! the region's front moves and caps the speed to meet it, within its safety envelope; the
//! reason then ends in "(model)". Without one (the default), or where it does not apply,
//! the baseline above plans.

use std::sync::Arc;

use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::twin_msgs::msg::{HorizonPoint, Incident, Recommendation};

use crate::model::{CongestionAdvice, ModelError, SpeedModel};
use crate::world::{Obstacle, WorldModel};

/// IDM parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdmParams {
    /// Desired time gap T [s].
    pub time_gap: f64,
    /// Minimum gap s0 [m].
    pub min_gap: f64,
    /// Maximum acceleration a [m/s²].
    pub accel: f64,
    /// Comfortable deceleration b [m/s²].
    pub decel: f64,
    /// Acceleration exponent δ.
    pub delta: f64,
}

impl Default for IdmParams {
    fn default() -> Self {
        IdmParams {
            time_gap: 1.6,
            min_gap: 2.0,
            accel: 0.73,
            decel: 1.67,
            delta: 4.0,
        }
    }
}

/// MOBIL parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MobilParams {
    /// Politeness p.
    pub politeness: f64,
    /// Switching threshold Δa_th [m/s²].
    pub threshold: f64,
    /// Keep-right bias Δa_bias [m/s²].
    pub bias_right: f64,
    /// Most deceleration imposed on the new follower, b_safe [m/s²].
    pub safe_decel: f64,
    /// Incentive to leave a lane that a hazard blocks within `blocked_lane_horizon`, and
    /// disincentive to enter one [m/s²]: MOBIL's bias for a mandatory change (Kesting,
    /// Treiber & Helbing 2007, section 3, lanes that end), so the lane is left while the
    /// vehicle is still at speed and gaps beside it are easy to take.
    pub blocked_lane_bias: f64,
    /// How far ahead a hazard makes its lane's change mandatory [m].
    pub blocked_lane_horizon: f64,
}

impl Default for MobilParams {
    fn default() -> Self {
        MobilParams {
            politeness: 0.2,
            threshold: 0.1,
            bias_right: 0.3,
            safe_decel: 4.0,
            blocked_lane_bias: 1.0,
            blocked_lane_horizon: 1000.0,
        }
    }
}

/// Planner settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannerConfig {
    /// Car following.
    pub idm: IdmParams,
    /// Lane changing.
    pub mobil: MobilParams,
    /// How far ahead hazards, slow traffic and limit changes are considered [m].
    pub lookahead: f64,
    /// Deceleration the lookahead caps plan with for hazards and limits [m/s²].
    pub lookahead_decel: f64,
    /// Gentler deceleration for harmonizing with congestion downstream [m/s²].
    pub harmonize_decel: f64,
    /// Distance before a hazard or a slow stretch by which the speed is reached [m].
    pub arrive_margin: f64,
    /// Highest speed to pass a hazard in a neighbouring lane [m/s].
    pub hazard_pass_speed: f64,
    /// Time over which a larger-than-desired gap to the leader is closed [s].
    pub gap_closing_time: f64,
    /// Reaction time of the safe following speed [s].
    pub reaction_time: f64,
    /// Age of the vehicle's state beyond which advice is conservative [s].
    pub stale_after: f64,
    /// Speed factor of conservative advice.
    pub stale_speed_factor: f64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            idm: IdmParams::default(),
            mobil: MobilParams::default(),
            lookahead: 3000.0,
            lookahead_decel: 1.0,
            harmonize_decel: 0.3,
            arrive_margin: 50.0,
            hazard_pass_speed: 60.0 / 3.6,
            gap_closing_time: 5.0,
            reaction_time: 1.0,
            stale_after: 2.0,
            stale_speed_factor: 0.9,
        }
    }
}

/// What the planner is told besides the world.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanContext {
    /// Age of the vehicle's newest state [s] (large while it is offline).
    pub state_age: f64,
    /// How far ahead the horizon must reach [s] (at least 5; longer before an outage).
    pub horizon: f64,
}

/// Why a speed was chosen: the binding constraint.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    /// Speed it allows [m/s].
    pub speed: f64,
    /// One of `Recommendation::REASON_*`.
    pub reason_code: u8,
    /// Human-readable reason.
    pub reason: String,
}

/// A plan: what the recommendation carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Advised speed [m/s].
    pub target_speed: f64,
    /// Advised lane.
    pub target_lane: i32,
    /// One of `Recommendation::LANE_*`.
    pub lane_change: u8,
    /// Confidence [0, 1].
    pub confidence: f64,
    /// The binding constraint.
    pub reason_code: u8,
    /// Human-readable reason.
    pub reason: String,
    /// (time offset [s], speed [m/s], lane) ascending in time.
    pub horizon: Vec<(f64, f64, i32)>,
}

impl Plan {
    /// The recommendation message for this plan, issued at `now_us`.
    pub fn to_recommendation(&self, vehicle: &str, sequence: u64, now_us: u64) -> Recommendation {
        let last = self.horizon.last().map(|h| h.0).unwrap_or(0.0);
        Recommendation {
            header: twinlink_msgs::std_msgs::msg::Header {
                stamp: ros_time(now_us),
                frame_id: "map".into(),
            },
            vehicle_id: vehicle.into(),
            sequence,
            target_speed: self.target_speed,
            target_lane: self.target_lane,
            lane_change: self.lane_change,
            confidence: self.confidence as f32,
            valid_until: ros_time(now_us + (last.max(1.0) * 1e6) as u64),
            reason_code: self.reason_code,
            reason: self.reason.clone(),
            horizon: self
                .horizon
                .iter()
                .map(|&(t, v, lane)| HorizonPoint {
                    time_offset: t as f32,
                    speed: v as f32,
                    lane_index: lane,
                })
                .collect(),
        }
    }
}

/// A ROS time from microseconds since the Unix epoch.
pub fn ros_time(us: u64) -> Time {
    Time {
        sec: (us / 1_000_000) as i32,
        nanosec: ((us % 1_000_000) * 1000) as u32,
    }
}

/// IDM acceleration of a vehicle at speed `v` with desired speed `v0`, behind a leader at
/// bumper gap `gap` driving `v_leader` (`None`: free road) [m/s²].
pub fn idm_accel(p: &IdmParams, v: f64, v0: f64, leader: Option<(f64, f64)>) -> f64 {
    let v0 = v0.max(0.1);
    // Improved-IDM free-road term: never brakes harder than b for being too fast.
    let free = if v <= v0 {
        p.accel * (1.0 - (v / v0).powf(p.delta))
    } else {
        -p.decel * (1.0 - (v0 / v).powf(p.accel * p.delta / p.decel))
    };
    match leader {
        None => free,
        Some((gap, v_leader)) => {
            let dv = v - v_leader;
            let s_star =
                p.min_gap + (v * p.time_gap + v * dv / (2.0 * (p.accel * p.decel).sqrt())).max(0.0);
            let gap = gap.max(0.1);
            (free - p.accel * (s_star / gap).powi(2)).max(-9.0)
        }
    }
}

/// Gipps' safe speed: the highest speed from which the vehicle can still stop behind a
/// leader at bumper gap `gap` braking at `b`, with reaction time `tau` [m/s].
pub fn safe_following_speed(gap: f64, v_leader: f64, min_gap: f64, b: f64, tau: f64) -> f64 {
    let room = (gap - min_gap).max(0.0);
    (-b * tau + ((b * tau).powi(2) + v_leader.max(0.0).powi(2) + 2.0 * b * room).sqrt()).max(0.0)
}

/// Highest speed now that lets a vehicle arrive at `v_arrive` `distance` metres ahead,
/// braking at most `b` [m/s].
fn arrival_cap(v_arrive: f64, distance: f64, b: f64) -> f64 {
    (v_arrive.powi(2) + 2.0 * b * distance.max(0.0)).sqrt()
}

fn hazard_name(kind: u8) -> &'static str {
    match kind {
        Incident::INCIDENT_STALLED_VEHICLE => "stalled vehicle",
        Incident::INCIDENT_DEBRIS => "debris",
        Incident::INCIDENT_LANE_CLOSURE => "lane closure",
        Incident::INCIDENT_ACCIDENT => "accident",
        Incident::INCIDENT_ROADWORKS => "roadworks",
        Incident::INCIDENT_CONGESTION => "congestion",
        _ => "hazard",
    }
}

/// Bumper gap from a vehicle at `s` of length `len` to obstacle `o` ahead [m].
fn gap_to(o: &Obstacle, s: f64, len: f64) -> f64 {
    (o.s - o.length / 2.0) - (s + len / 2.0)
}

/// The baseline planner (IDM + MOBIL + lookahead), optionally with a speed advisor.
#[derive(Debug, Clone, Default)]
pub struct Planner {
    config: PlannerConfig,
    /// The learned congestion speed advisor, if configured (shared by every twin).
    speed_model: Option<Arc<SpeedModel>>,
}

impl Planner {
    /// A planner with `config`.
    pub fn new(config: PlannerConfig) -> Self {
        Planner {
            config,
            speed_model: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    /// This planner with the congestion speed advisor `model`; refused when the model was
    /// trained for other planner settings (`harmonize_decel`, `arrive_margin`,
    /// `lookahead`).
    pub fn with_speed_model(mut self, model: Arc<SpeedModel>) -> Result<Self, ModelError> {
        model.check_config(&self.config)?;
        self.speed_model = Some(model);
        Ok(self)
    }

    /// The speed advisor, if configured.
    pub fn speed_model(&self) -> Option<&Arc<SpeedModel>> {
        self.speed_model.as_ref()
    }

    /// The advisor's advice for the vehicle's `lanes` (empty without an advisor; a model
    /// that fails is logged and the baseline plans).
    fn advice(&self, world: &WorldModel, lanes: &[i32]) -> Vec<CongestionAdvice> {
        let Some(model) = &self.speed_model else {
            return Vec::new();
        };
        crate::model::advise(model, world, lanes, &self.config).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "speed advisor failed; planning without it");
            Vec::new()
        })
    }

    /// The leader the IDM sees in `lane` from `s`: the nearest obstacle, or a virtual one at
    /// the start of slow traffic known from the region, whichever is nearer. Returns
    /// (gap, leader speed).
    fn effective_leader(
        &self,
        world: &WorldModel,
        lane: i32,
        s: f64,
        len: f64,
    ) -> Option<(f64, f64)> {
        let c = &self.config;
        let real = world.leader(lane, s).map(|o| (gap_to(&o, s, len), o.speed));
        let slow = world
            .slow_traffic_ahead(lane, s, c.lookahead, world.road().speed_limit_at(s) * 0.8)
            .first()
            .map(|&(d, v)| ((d - len / 2.0).max(0.1), v));
        match (real, slow) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The speed caps at route position `s` in `lane`, as constraints (the limit first).
    pub fn caps(&self, world: &WorldModel, lane: i32, s: f64) -> Vec<Constraint> {
        self.caps_with(world, lane, s, &self.advice(world, &[lane]))
    }

    /// [`Planner::caps`] with the advisor's `advice` computed once per plan.
    fn caps_with(
        &self,
        world: &WorldModel,
        lane: i32,
        s: f64,
        advice: &[CongestionAdvice],
    ) -> Vec<Constraint> {
        let mut out = Vec::new();
        self.visit_caps(world, lane, s, advice, |speed, reason_code, reason| {
            out.push(Constraint {
                speed,
                reason_code,
                reason: reason(),
            })
        });
        out
    }

    /// The tightest cap at `s` in `lane` [m/s] (no reasons formatted: the horizon and
    /// MOBIL ask this many times per plan).
    fn cap_speed(&self, world: &WorldModel, lane: i32, s: f64, advice: &[CongestionAdvice]) -> f64 {
        let mut tightest = f64::INFINITY;
        self.visit_caps(world, lane, s, advice, |speed, _, _| {
            tightest = tightest.min(speed)
        });
        tightest
    }

    /// Calls `visit(speed, reason code, reason)` for each cap at `s` in `lane`, the limit
    /// first; the reason is formatted only if `visit` asks for it.
    fn visit_caps(
        &self,
        world: &WorldModel,
        lane: i32,
        s: f64,
        advice: &[CongestionAdvice],
        mut visit: impl FnMut(f64, u8, &dyn Fn() -> String),
    ) {
        let c = &self.config;
        let road = world.road();
        let limit = road.speed_limit_at(s);
        visit(limit, Recommendation::REASON_FREE_ROAD, &|| {
            format!("free road, limit {:.0} km/h", limit * 3.6)
        });
        for (d, l) in road.limit_changes_ahead(s, c.lookahead) {
            if l < limit {
                visit(
                    arrival_cap(l, d, c.lookahead_decel),
                    Recommendation::REASON_SPEED_LIMIT,
                    &|| format!("limit {:.0} km/h in {:.0} m", l * 3.6, d),
                );
            }
        }
        for h in world.hazards() {
            if h.kind == Incident::INCIDENT_CONGESTION {
                continue;
            }
            let d = h.s - h.extent / 2.0 - s;
            if d < -h.extent || d > c.lookahead {
                continue;
            }
            let all_lanes = h.lane < 0;
            let near = all_lanes || (h.lane - lane).abs() <= 1;
            if !near {
                continue;
            }
            // In front of a closure of every lane, or of a hazard in this lane: be able to
            // stop (unless the lane is left first). Else pass slowly in the next lane.
            let blocks_lane = all_lanes || h.lane == lane;
            let v_arrive = if blocks_lane {
                0.0
            } else {
                c.hazard_pass_speed.min(limit)
            };
            let margin = if blocks_lane {
                c.idm.min_gap + 10.0
            } else {
                c.arrive_margin
            };
            let code = if h.kind == Incident::INCIDENT_LANE_CLOSURE
                || h.kind == Incident::INCIDENT_ROADWORKS
            {
                Recommendation::REASON_LANE_CLOSURE
            } else {
                Recommendation::REASON_HAZARD_AHEAD
            };
            visit(
                arrival_cap(v_arrive, d - margin, c.lookahead_decel),
                code,
                &|| {
                    let where_ = if all_lanes {
                        "all lanes".to_string()
                    } else {
                        format!("lane {}", h.lane)
                    };
                    format!(
                        "{} {:.0} m ahead in {}",
                        hazard_name(h.kind),
                        d.max(0.0),
                        where_
                    )
                },
            );
        }
        // The advisor's constraint replaces the caps of its slow region.
        let advised = advice.iter().find(|a| a.lane == lane);
        if let Some(a) = advised {
            visit(
                a.cap_at(s, c),
                Recommendation::REASON_CONGESTION_AHEAD,
                &|| a.reason(s),
            );
        }
        for (d, v) in world.slow_traffic_ahead(lane, s, c.lookahead, limit * 0.8) {
            if advised.is_some_and(|a| a.replaces(s + d)) {
                continue;
            }
            visit(
                arrival_cap(v, d - c.arrive_margin, c.harmonize_decel),
                Recommendation::REASON_CONGESTION_AHEAD,
                &|| {
                    format!(
                        "traffic at {:.0} km/h {:.0} m ahead in lane {}",
                        v * 3.6,
                        d,
                        lane
                    )
                },
            );
        }
    }

    /// The speed constraint from the leader in `lane` (a road user or a hazard), if any.
    fn following(&self, world: &WorldModel, lane: i32, s: f64, len: f64) -> Option<Constraint> {
        let c = &self.config;
        let leader = world.leader(lane, s)?;
        let gap = gap_to(&leader, s, len);
        let desired = c.idm.min_gap + leader.speed.max(0.0) * c.idm.time_gap;
        let closing = (leader.speed + (gap - desired) / c.gap_closing_time).max(0.0);
        let safe = safe_following_speed(
            gap,
            leader.speed,
            c.idm.min_gap,
            c.idm.decel,
            c.reaction_time,
        );
        let (code, reason) = match leader.hazard {
            Some(kind) => (
                Recommendation::REASON_HAZARD_AHEAD,
                format!(
                    "{} {:.0} m ahead in lane {}",
                    hazard_name(kind),
                    gap.max(0.0),
                    lane
                ),
            ),
            None => (
                Recommendation::REASON_FOLLOWING,
                format!(
                    "vehicle {} ahead at {:.0} m, {:.0} km/h",
                    leader.id,
                    gap.max(0.0),
                    leader.speed * 3.6
                ),
            ),
        };
        Some(Constraint {
            speed: closing.min(safe),
            reason_code: code,
            reason,
        })
    }

    /// MOBIL's verdict for moving from `from` to `to`: `Some(incentive)` when the change is
    /// safe (the incentive may be below the threshold), `None` when it is unsafe.
    pub fn mobil(&self, world: &WorldModel, from: i32, to: i32) -> Option<f64> {
        self.mobil_with(world, from, to, &self.advice(world, &[from, to]))
    }

    /// [`Planner::mobil`] with the advisor's `advice` computed once per plan.
    fn mobil_with(
        &self,
        world: &WorldModel,
        from: i32,
        to: i32,
        advice: &[CongestionAdvice],
    ) -> Option<f64> {
        let c = &self.config;
        let ego = world.ego();
        let (s, len, v) = (ego.s, ego.length, ego.speed);
        let road = world.road();
        if !road.has_lane(to) {
            return None;
        }
        let v0 = self.cap_speed(world, to, s, advice);
        let v0_old = self.cap_speed(world, from, s, advice);
        // The gap beside the vehicle must be free.
        if let Some(l) = world.leader(to, s - len / 2.0 - 0.01) {
            if gap_to(&l, s, len) < c.idm.min_gap {
                return None;
            }
        }
        let new_follower = world.follower(to, s);
        if let Some(f) = &new_follower {
            let gap = (s - len / 2.0) - (f.s + f.length / 2.0);
            if gap < c.idm.min_gap {
                return None;
            }
            let limit_f = road.speed_limit_at(f.s);
            let after = idm_accel(&c.idm, f.speed, limit_f, Some((gap, v)));
            if after < -c.mobil.safe_decel {
                return None;
            }
        }
        let a_new = idm_accel(&c.idm, v, v0, self.effective_leader(world, to, s, len));
        if a_new < -c.mobil.safe_decel {
            return None;
        }
        let a_old = idm_accel(
            &c.idm,
            v,
            v0_old,
            self.effective_leader(world, from, s, len),
        );
        // Followers' gains: the new follower gets us as a leader, the old one loses us.
        let mut others = 0.0;
        if let Some(f) = &new_follower {
            let limit_f = road.speed_limit_at(f.s);
            let gap_now = world
                .leader(to, f.s)
                .map(|l| (gap_to(&l, f.s, f.length), l.speed));
            let gap_after = (s - len / 2.0) - (f.s + f.length / 2.0);
            others += idm_accel(&c.idm, f.speed, limit_f, Some((gap_after, v)))
                - idm_accel(&c.idm, f.speed, limit_f, gap_now);
        }
        if let Some(f) = world.follower(from, s - 0.01) {
            let limit_f = road.speed_limit_at(f.s);
            let with_us = (s - len / 2.0) - (f.s + f.length / 2.0);
            let without = world
                .leader(from, s + len / 2.0)
                .map(|l| (gap_to(&l, f.s, f.length), l.speed));
            others += idm_accel(&c.idm, f.speed, limit_f, without)
                - idm_accel(&c.idm, f.speed, limit_f, Some((with_us, v)));
        }
        let bias = if to > from {
            c.mobil.bias_right
        } else {
            -c.mobil.bias_right
        };
        let blocked = |lane: i32| {
            world.hazards().iter().any(|h| {
                let d = h.s - h.extent / 2.0 - s;
                h.kind != Incident::INCIDENT_CONGESTION
                    && h.lane == lane
                    && (0.0..c.mobil.blocked_lane_horizon).contains(&d)
            })
        };
        let mandatory = match (blocked(from), blocked(to)) {
            (true, false) => c.mobil.blocked_lane_bias,
            (false, true) => -c.mobil.blocked_lane_bias,
            _ => 0.0,
        };
        Some(a_new - a_old + c.mobil.politeness * others - bias + mandatory)
    }

    /// Plans speed, lane and horizon for the vehicle in `world`.
    pub fn plan(&self, world: &WorldModel, ctx: &PlanContext) -> Plan {
        let c = &self.config;
        let ego = *world.ego();
        let road = world.road();
        let lane = if road.has_lane(ego.lane) {
            ego.lane
        } else {
            road.lane_of(ego.d.clamp(0.0, road.lane_center(road.lanes() as i32 - 1)))
                .unwrap_or(0)
        };
        // The advisor runs once per plan, for the lane and its neighbours.
        let advice = self.advice(world, &[lane, lane + 1, lane - 1]);
        // Lane: the best safe neighbour whose incentive beats the threshold.
        let mut target_lane = lane;
        let mut best = c.mobil.threshold;
        for to in [lane + 1, lane - 1] {
            if let Some(incentive) = self.mobil_with(world, lane, to, &advice) {
                if incentive > best {
                    best = incentive;
                    target_lane = to;
                }
            }
        }
        let lane_change = match target_lane.cmp(&lane) {
            std::cmp::Ordering::Greater => Recommendation::LANE_CHANGE_LEFT,
            std::cmp::Ordering::Less => Recommendation::LANE_CHANGE_RIGHT,
            std::cmp::Ordering::Equal => Recommendation::LANE_KEEP,
        };
        // Speed: the tightest constraint of the lane the vehicle is in (and the target
        // lane's, while changing).
        let mut constraints = self.caps_with(world, lane, ego.s, &advice);
        constraints.extend(self.following(world, lane, ego.s, ego.length));
        if target_lane != lane {
            constraints.extend(
                self.caps_with(world, target_lane, ego.s, &advice)
                    .into_iter()
                    .skip(1),
            );
            constraints.extend(self.following(world, target_lane, ego.s, ego.length));
        }
        let binding = constraints
            .iter()
            .min_by(|a, b| a.speed.total_cmp(&b.speed))
            .cloned()
            .expect("the limit is always a constraint");
        let mut target = binding.speed;
        let (mut reason_code, mut reason) = (binding.reason_code, binding.reason);
        if lane_change != Recommendation::LANE_KEEP
            && reason_code == Recommendation::REASON_FREE_ROAD
        {
            reason = format!("lane {} is faster", target_lane);
        }
        let mut confidence = 0.9;
        if ctx.state_age > c.stale_after {
            target *= c.stale_speed_factor;
            confidence *= (-(ctx.state_age - c.stale_after) / 10.0).exp();
            if matches!(
                reason_code,
                Recommendation::REASON_FREE_ROAD | Recommendation::REASON_FOLLOWING
            ) {
                reason_code = Recommendation::REASON_LINK_DEGRADED;
                reason = format!("vehicle's state is {:.1} s old: {}", ctx.state_age, reason);
            }
        }
        let speed_factor = if ctx.state_age > c.stale_after {
            c.stale_speed_factor
        } else {
            1.0
        };
        let horizon = self.horizon(world, lane, target_lane, speed_factor, ctx.horizon, &advice);
        let mut plan = Plan {
            target_speed: target,
            target_lane,
            lane_change,
            confidence,
            reason_code,
            reason,
            horizon,
        };
        safety_filter(&mut plan, world, c);
        plan
    }

    /// Simulates the vehicle over `horizon_s` seconds with the IDM, leaders moving at
    /// constant speed: the desired speed is the tightest cap along the way (times
    /// `speed_factor`, below 1 for conservative advice); while a lane change from
    /// `from_lane` is under way (the first [`LANE_CHANGE_TIME`] seconds) the leaders and caps
    /// of both lanes count. Samples at 1 s up to 5 s, then every 2 s, at most 40 points.
    fn horizon(
        &self,
        world: &WorldModel,
        from_lane: i32,
        lane: i32,
        speed_factor: f64,
        horizon_s: f64,
        advice: &[CongestionAdvice],
    ) -> Vec<(f64, f64, i32)> {
        let c = &self.config;
        let ego = world.ego();
        let horizon_s = if horizon_s.is_finite() {
            horizon_s.clamp(5.0, 80.0)
        } else {
            5.0
        };
        let offsets: Vec<f64> = (1..=5)
            .map(f64::from)
            .chain(
                (1..)
                    .map(|k| 5.0 + 2.0 * f64::from(k))
                    .take_while(|t| *t <= horizon_s),
            )
            .take(40)
            .collect();
        let leader = world.leader(lane, ego.s);
        let old_leader = (from_lane != lane)
            .then(|| world.leader(from_lane, ego.s))
            .flatten();
        let cap = |lane: i32, s: f64| self.cap_speed(world, lane, s, advice);
        let (mut s, mut v, mut t) = (ego.s, ego.speed.max(0.0), 0.0);
        let dt = 0.25;
        let mut out = Vec::with_capacity(offsets.len());
        for &at in &offsets {
            while t < at - 1e-9 {
                let changing = t < LANE_CHANGE_TIME && from_lane != lane;
                let mut v0 = cap(lane, s);
                if changing {
                    v0 = v0.min(cap(from_lane, s));
                }
                v0 *= speed_factor;
                let gap = |l: &Obstacle| {
                    (
                        (l.s + l.speed * t - l.length / 2.0) - (s + ego.length / 2.0),
                        l.speed,
                    )
                };
                let mut a = idm_accel(&c.idm, v, v0, leader.as_ref().map(gap));
                if changing {
                    if let Some(l) = &old_leader {
                        a = a.min(idm_accel(&c.idm, v, v0, Some(gap(l))));
                    }
                }
                let v_next = (v + a * dt).max(0.0);
                s += (v + v_next) / 2.0 * dt;
                v = v_next;
                t += dt;
            }
            out.push((at, v, lane));
        }
        out
    }
}

/// Time a lane change takes, during which both lanes' leaders count [s].
pub const LANE_CHANGE_TIME: f64 = 4.0;

/// Bounds a plan: no speed above the limit or the safe following speed behind the
/// predicted leader, none negative; a lane change only into a free gap.
pub fn safety_filter(plan: &mut Plan, world: &WorldModel, c: &PlannerConfig) {
    let ego = world.ego();
    let road = world.road();
    if plan.target_lane != ego.lane {
        let to = plan.target_lane;
        let blocked = !road.has_lane(to)
            || world.objects().iter().any(|o| {
                let occupies = o.lane == to;
                let front = (o.s - o.length / 2.0) - (ego.s + ego.length / 2.0);
                let rear = (ego.s - ego.length / 2.0) - (o.s + o.length / 2.0);
                // Beside us, or closer than the minimum gap (the rear one also closer than
                // one second at its closing speed).
                let rear_needed = c.idm.min_gap + (o.speed - ego.speed).max(0.0);
                occupies && front < c.idm.min_gap && rear < rear_needed
            });
        if blocked && road.has_lane(ego.lane) {
            plan.target_lane = ego.lane;
            plan.lane_change = Recommendation::LANE_KEEP;
            for h in &mut plan.horizon {
                h.2 = ego.lane;
            }
        }
    }
    let lane_now = if road.has_lane(ego.lane) {
        ego.lane
    } else {
        plan.target_lane
    };
    let bound = |t: f64, v: f64, lane: i32| -> f64 {
        // Where the vehicle will be, roughly: the limit there holds.
        let mut cap = road.speed_limit_at(ego.s + ego.speed.max(0.0) * t);
        let mut lanes = vec![lane];
        if t < LANE_CHANGE_TIME && lane != lane_now {
            lanes.push(lane_now);
        }
        for l in lanes
            .into_iter()
            .filter_map(|lane| world.leader(lane, ego.s))
        {
            let gap = gap_to(&l, ego.s, ego.length) + (l.speed - ego.speed) * t;
            cap = cap.min(
                safe_following_speed(gap, l.speed, c.idm.min_gap, c.idm.decel, c.reaction_time)
                    .max(0.0),
            );
        }
        v.clamp(0.0, cap.max(0.0))
    };
    plan.target_speed = bound(0.0, plan.target_speed, plan.target_lane);
    for h in &mut plan.horizon {
        h.1 = bound(h.0, h.1, h.2);
    }
    if !plan.target_speed.is_finite() {
        plan.target_speed = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::road::Road;
    use crate::world::Source;
    use std::sync::Arc;
    use twinlink_msgs::builtin_interfaces::msg::Duration;
    use twinlink_msgs::twin_msgs::msg::{LaneTraffic, RegionalTraffic};

    const LIMIT: f64 = 120.0 / 3.6;

    fn world_at(s: f64, lane: i32, speed: f64) -> WorldModel {
        let mut w = WorldModel::new(Arc::new(Road::straight(10_000.0, 3, LIMIT).unwrap()));
        w.set_ego(s, 3.5 * lane as f64, 0.0, speed, 4.5, 1.9);
        w
    }

    fn ctx() -> PlanContext {
        PlanContext {
            state_age: 0.1,
            horizon: 10.0,
        }
    }

    fn stalled(s_on_seg: f64, segment: &str, lane: i32) -> Incident {
        Incident {
            incident_id: "stalled-1".into(),
            incident_kind: Incident::INCIDENT_STALLED_VEHICLE,
            segment_id: segment.into(),
            s: s_on_seg,
            lane_index: lane,
            extent: 5.0,
            confidence: 0.9,
            ..Default::default()
        }
    }

    #[test]
    fn idm_matches_its_definition() {
        let p = IdmParams::default();
        assert!((idm_accel(&p, 0.0, 30.0, None) - 0.73).abs() < 1e-12);
        assert!(idm_accel(&p, 30.0, 30.0, None).abs() < 1e-12);
        // Equilibrium: at gap s0 + vT behind a leader at the same speed, with v << v0,
        // the acceleration is a(1 - (v/v0)^4 - 1) ≈ 0 - small.
        let a = idm_accel(&p, 10.0, 100.0, Some((2.0 + 16.0, 10.0)));
        assert!(a.abs() < 1e-3, "{a}");
        // Too fast: comfortable braking, not the IDM's (v/v0)^4 blow-up.
        let a = idm_accel(&p, 30.0, 15.0, None);
        assert!(a < 0.0 && a >= -p.decel, "{a}");
        // Standing obstacle close ahead: hard braking.
        assert!(idm_accel(&p, 25.0, 30.0, Some((20.0, 0.0))) < -5.0);
        // Gipps: at zero gap nothing is safe; far away the leader's speed is exceeded.
        assert_eq!(safe_following_speed(2.0, 0.0, 2.0, 1.67, 1.0), 0.0);
        assert!(safe_following_speed(200.0, 10.0, 2.0, 1.67, 1.0) > 20.0);
    }

    #[test]
    fn free_road_advises_the_limit() {
        let w = world_at(100.0, 0, 20.0);
        let plan = Planner::default().plan(&w, &ctx());
        assert!(
            (plan.target_speed - LIMIT).abs() < 1e-9,
            "{}",
            plan.target_speed
        );
        assert_eq!(plan.reason_code, Recommendation::REASON_FREE_ROAD);
        assert_eq!(plan.lane_change, Recommendation::LANE_KEEP);
        // Horizon: accelerating towards the limit, never above it.
        assert!(plan.horizon.windows(2).all(|h| h[1].1 >= h[0].1));
        assert!(plan.horizon.iter().all(|h| h.1 <= LIMIT + 1e-9));
        assert!(plan.horizon[0].1 > 20.0);
        assert_eq!(plan.horizon.last().unwrap().0, 9.0);
        // Keep right (European rules): on a free road, from the middle lane back right.
        let middle = Planner::default().plan(&world_at(100.0, 1, 20.0), &ctx());
        assert_eq!(middle.lane_change, Recommendation::LANE_CHANGE_RIGHT);
        assert_eq!(middle.target_lane, 0);
        assert_eq!(middle.target_speed, LIMIT);
    }

    #[test]
    fn stopped_vehicle_beyond_sensor_range_slows_early_and_changes_lane() {
        let planner = Planner::default();
        // Stalled in the vehicle's lane (1) 1000 m ahead: far beyond any sensor.
        let mut w = world_at(1000.0, 1, LIMIT);
        w.add_incident(&stalled(0.0, "seg-2", 1), 0.0, Source::Region)
            .unwrap();
        let plan = planner.plan(&w, &ctx());
        assert_ne!(plan.lane_change, Recommendation::LANE_KEEP, "{plan:?}");
        // At 1000 m the speed is still the limit; closer it slows down early.
        let at = |s: f64| {
            let mut w = world_at(s, 1, LIMIT);
            w.add_incident(&stalled(0.0, "seg-2", 1), 0.0, Source::Region)
                .unwrap();
            planner.plan(&w, &ctx())
        };
        let near = at(1750.0);
        assert!(near.target_speed < LIMIT - 5.0, "{near:?}");
        assert_eq!(near.reason_code, Recommendation::REASON_HAZARD_AHEAD);
        assert!(near.reason.contains("stalled vehicle"), "{}", near.reason);
        // 400 m away (beyond a 150 m sensor range) the slow-down has begun.
        let early = at(1600.0);
        assert!(early.target_speed < LIMIT - 1.5, "{early:?}");
        assert_eq!(early.reason_code, Recommendation::REASON_HAZARD_AHEAD);
        // Without the regional incident the same place is free road.
        let blind = planner.plan(&world_at(1750.0, 1, LIMIT), &ctx());
        assert_eq!(blind.target_speed, LIMIT);
        assert_eq!(blind.reason_code, Recommendation::REASON_FREE_ROAD);
    }

    #[test]
    fn lane_change_never_into_an_occupied_gap() {
        let planner = Planner::default();
        let mut w = world_at(1500.0, 1, LIMIT);
        w.add_incident(&stalled(0.0, "seg-2", 1), 0.0, Source::Region)
            .unwrap();
        // Both neighbouring lanes have a car right beside the vehicle.
        w.set_objects([
            (7, 1501.0, 0.0, LIMIT, 0.0, 4.5, 1.9),
            (8, 1499.0, 7.0, LIMIT, 0.0, 4.5, 1.9),
        ]);
        let plan = planner.plan(&w, &ctx());
        assert_eq!(plan.lane_change, Recommendation::LANE_KEEP, "{plan:?}");
        assert_eq!(plan.target_lane, 1);
        // The filter alone also withdraws a change into an occupied gap.
        let mut forced = plan.clone();
        forced.target_lane = 2;
        forced.lane_change = Recommendation::LANE_CHANGE_LEFT;
        safety_filter(&mut forced, &w, planner.config());
        assert_eq!(forced.target_lane, 1);
        assert_eq!(forced.lane_change, Recommendation::LANE_KEEP);
    }

    #[test]
    fn congestion_downstream_harmonizes_speed() {
        let planner = Planner::default();
        let tile = RegionalTraffic {
            tile_id: "t".into(),
            window: Duration {
                sec: 60,
                nanosec: 0,
            },
            lanes: (0..3)
                .map(|lane| LaneTraffic {
                    segment_id: "seg-3".into(),
                    lane_index: lane,
                    start_s: 0.0,
                    end_s: 800.0,
                    mean_speed: 8.0,
                    density: 70.0,
                    flow: 2000.0,
                })
                .collect(),
            contributors: 25,
            k_threshold: 10,
            ..Default::default()
        };
        let at = |s: f64| {
            let mut w = world_at(s, 0, LIMIT);
            w.apply_regional(&tile, 0.0).unwrap();
            planner.plan(&w, &ctx())
        };
        // 1 km before the jam (at 3000 m): already slowing, for congestion.
        let p = at(2000.0);
        assert_eq!(
            p.reason_code,
            Recommendation::REASON_CONGESTION_AHEAD,
            "{p:?}"
        );
        assert!(
            p.target_speed < LIMIT - 3.0 && p.target_speed > 8.0,
            "{}",
            p.target_speed
        );
        // Speeds fall monotonically as the jam nears, and the jam's speed is reached.
        let speeds: Vec<f64> = [1000.0, 2000.0, 2500.0, 2900.0, 3100.0]
            .iter()
            .map(|&s| at(s).target_speed)
            .collect();
        assert!(speeds.windows(2).all(|w| w[1] <= w[0] + 1e-9), "{speeds:?}");
        assert!((speeds[4] - 8.0).abs() < 0.5, "{speeds:?}");
        // No lane change: every lane is jammed.
        assert_eq!(at(2500.0).lane_change, Recommendation::LANE_KEEP);
    }

    #[test]
    fn following_and_the_safety_filter_bound_every_speed() {
        let planner = Planner::default();
        let mut w = world_at(100.0, 1, 25.0);
        w.set_objects([(3, 140.0, 3.5, 15.0, 0.0, 4.5, 1.9)]);
        let plan = planner.plan(&w, &ctx());
        assert_eq!(plan.reason_code, Recommendation::REASON_FOLLOWING);
        assert!(plan.target_speed < 25.0, "{}", plan.target_speed);
        // The horizon slows down towards the leader from the first second.
        assert!(plan.horizon[0].1 < 25.0, "{:?}", plan.horizon);
        let gap = 140.0 - 2.25 - 102.25;
        let safe = safe_following_speed(gap, 15.0, 2.0, 1.67, 1.0);
        assert!(plan.target_speed <= safe + 1e-9);
        // A plan that asks for more is cut back by the filter, horizon included.
        let mut greedy = plan.clone();
        greedy.target_speed = 40.0;
        greedy.horizon.iter_mut().for_each(|h| h.1 = 40.0);
        safety_filter(&mut greedy, &w, planner.config());
        assert!(greedy.target_speed <= safe.min(LIMIT) + 1e-9);
        assert!(greedy.horizon.iter().all(|h| h.1 <= LIMIT + 1e-9));
    }

    #[test]
    fn stale_state_gives_conservative_advice() {
        let w = world_at(100.0, 1, 20.0);
        let plan = Planner::default().plan(
            &w,
            &PlanContext {
                state_age: 12.0,
                horizon: 30.0,
            },
        );
        assert_eq!(plan.reason_code, Recommendation::REASON_LINK_DEGRADED);
        assert!(plan.target_speed < LIMIT && plan.confidence < 0.5);
        assert_eq!(plan.horizon.last().unwrap().0, 29.0);
        let r = plan.to_recommendation("veh-1", 4, 1_000_000_000);
        assert_eq!(r.sequence, 4);
        assert_eq!(r.valid_until.sec, 1029);
        assert_eq!(r.horizon.len(), plan.horizon.len());
    }
}
