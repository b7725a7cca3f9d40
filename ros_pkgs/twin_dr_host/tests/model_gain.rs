//! What the congestion speed advisor (`models/speed_advisor/speed_advisor.onnx`, through
//! real ONNX Runtime) gains over the baseline lookahead, measured in closed loop.
//!
//! **Traffic.** Single-lane IDM traffic on a 10 km route, fed at 1100-2000 veh/h, with a
//! bottleneck (vehicles slow to 2-10 m/s over a 700 m zone for 2-10 minutes) and/or a
//! stop (one vehicle brakes to 0-3 m/s for 30-120 s): queues whose front travels upstream
//! while they grow and stop-and-go waves. The same model family as the training script's
//! simulator (`models/speed_advisor/traffic_sim.py`), written again here, with its own
//! random streams (seeds the training never used).
//!
//! **Regional data.** Every 30-60 s (the run's window) a tile of 100 m cells: the mean
//! speed of the probe vehicles (20-100 %) over the window, the density of all; stamped at
//! the window's end, arriving 1-8 s later, 5 % lost.
//!
//! **The DR and the vehicle.** A vehicle is put into the traffic stream 1-2 km into the
//! route; its twin's world model ([`WorldModel`]) takes the tiles as they arrive and, from
//! the vehicle's own sensors, the vehicle ahead within 150 m; the planner recommends once a
//! second; the vehicle drives the IDM with the recommended speed as its desired speed,
//! behind the real vehicle ahead (which does not react to it). Two planners: the baseline,
//! and the baseline with the speed advisor.
//!
//! **Measures.**
//! 1. *Anticipation* (asserted): at every recommendation of the baseline-driven vehicles
//!    where the advisor applies, the baseline planner's congestion advice (the lowest of
//!    its congestion constraints and the limit) and the model's answer, against the
//!    hindsight-ideal advice (the speed from which braking at `harmonize_decel` meets the
//!    slow traffic the vehicle actually meets, at its speed, when it gets there; the
//!    training script's label). The model's mean absolute error must be at least 15 % and
//!    0.15 m/s below the baseline's. The advised planner's (after the safety envelope) is
//!    reported.
//! 2. *Safety filter* (asserted): every recommendation of the advised planner is at most
//!    the limit and the safe following speed behind the sensed vehicle ahead, its horizon
//!    at most the limit, and no vehicle ever touches the one ahead.
//! 3. *Driving* (reported, not asserted): brake energy beyond coasting, largest
//!    deceleration, time braking harder than 1.5 m/s² (until the vehicle has joined the
//!    slow traffic), distance covered; for the baseline, the planner with the advisor, and
//!    a hindsight oracle (the planner without regional data, capped at the ideal advice).
//!    The advisor does not improve these: with it the vehicle brakes more than with the
//!    baseline, while the oracle brakes about a third less (numbers and discussion in
//!    `models/speed_advisor/README.md`).
//!
//! Needs ONNX Runtime: `source scripts/env.sh` (sets `ORT_DYLIB_PATH`); `make test` does.
//!
//! ```sh
//! source scripts/env.sh && cargo test -p twin_dr_host --test model_gain -- --nocapture
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};
use twin_dr_host::model::advise;
use twin_dr_host::planner::{
    idm_accel, ros_time, safe_following_speed, IdmParams, Plan, PlanContext, Planner,
};
use twin_dr_host::road::Road;
use twin_dr_host::world::WorldModel;
use twinlink_msgs::builtin_interfaces::msg::Duration;
use twinlink_msgs::twin_msgs::msg::{LaneTraffic, Recommendation, RegionalTraffic};

const DT: f64 = 0.5;
const RECORD_EVERY: usize = 2; // records every 1 s
const RECORD: f64 = DT * RECORD_EVERY as f64;
const CELL: f64 = 100.0;
const ROAD: f64 = 10_000.0;
const CELLS: usize = (ROAD / CELL) as usize;
const T_SIM: f64 = 960.0;
const N: usize = 820;
const MIN_GAP: f64 = 2.0;
const HORIZON: f64 = 300.0;
/// Start of the simulated day [s since the Unix epoch].
const T0: f64 = 1_750_000_000.0;
const EGO_LENGTH: f64 = 4.5;
const SENSOR_RANGE: f64 = 150.0;

/// One simulated run: positions (front bumper) and speeds every RECORD seconds, vehicle 0
/// first downstream.
struct Traffic {
    limit: f64,
    length: Vec<f64>,
    x: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

fn simulate(rng: &mut StdRng) -> Traffic {
    let limit: f64 = rng.random_range(25.0..36.0);
    let inflow: f64 = rng.random_range(1100.0..2000.0) / 3600.0;
    let idm = IdmParams {
        time_gap: rng.random_range(1.2..1.8),
        min_gap: MIN_GAP,
        accel: rng.random_range(0.6..1.2),
        decel: rng.random_range(1.5..2.5),
        delta: 4.0,
    };
    let mut length = vec![0.0; N];
    let mut v0 = vec![0.0; N];
    for i in 0..N {
        let truck = rng.random::<f64>() < 0.1;
        length[i] = if truck {
            12.0
        } else {
            rng.random_range(4.0..5.0)
        };
        v0[i] = limit * rng.random_range(0.95..1.05);
        if truck {
            v0[i] = v0[i].min((0.85 * limit).max(22.0));
        }
    }
    let mut x = vec![0.0; N];
    x[0] = 14_000.0;
    for i in 1..N {
        let h_min = idm.time_gap + (MIN_GAP + length[i - 1]) / v0[i] + 0.3;
        let extra = (1.0 / inflow - h_min).max(0.2);
        let h = h_min + Exp::new(1.0 / extra).unwrap().sample(rng);
        x[i] = x[i - 1] - h * v0[i];
    }
    let mut v = v0.clone();
    // Events: 0 bottleneck, 1 stop, 2 both.
    let kind = match rng.random::<f64>() {
        p if p < 0.4 => 0,
        p if p < 0.8 => 1,
        _ => 2,
    };
    let (bn_x, bn_v) = (
        rng.random_range(5000.0..8500.0),
        rng.random_range(2.0..10.0),
    );
    let bn_on = rng.random_range(0.0..300.0);
    let bn_off = bn_on + rng.random_range(120.0..600.0);
    let (st_x, st_v) = (rng.random_range(4500.0..9000.0), rng.random_range(0.0..3.0));
    let st_on = rng.random_range(60.0..400.0);
    let st_off = st_on + rng.random_range(30.0..120.0);
    let mut st_who: Option<usize> = None;
    let steps = (T_SIM / DT) as usize;
    let mut rec_x = vec![x.clone()];
    let mut rec_v = vec![v.clone()];
    let mut acc = vec![0.0; N];
    for k in 1..=steps {
        let t = (k - 1) as f64 * DT;
        if kind != 0 && st_who.is_none() && t >= st_on {
            st_who = (0..N)
                .filter(|&i| x[i] <= st_x)
                .max_by(|&a, &b| x[a].total_cmp(&x[b]));
        }
        for i in 0..N {
            let mut desired = v0[i];
            if kind != 1 && t >= bn_on && t < bn_off && x[i] > bn_x - 400.0 && x[i] < bn_x + 300.0 {
                let into = ((bn_x - x[i]) / 400.0).clamp(0.0, 1.0);
                desired = desired.min(bn_v + (desired - bn_v) * into);
            }
            if st_who == Some(i) && t < st_off {
                desired = st_v;
            }
            let leader = (i > 0).then(|| (x[i - 1] - length[i - 1] - x[i], v[i - 1]));
            acc[i] = idm_accel(&idm, v[i], desired, leader);
        }
        for i in 0..N {
            let v_new = (v[i] + acc[i] * DT).max(0.0);
            x[i] += if v_new > 0.0 {
                (v[i] + v_new) / 2.0 * DT
            } else if acc[i] < 0.0 {
                -v[i] * v[i] / (2.0 * acc[i])
            } else {
                0.0
            };
            v[i] = v_new;
            if i > 0 {
                x[i] = x[i].min(x[i - 1] - length[i - 1] - 0.5);
            }
        }
        if k % RECORD_EVERY == 0 {
            rec_x.push(x.clone());
            rec_v.push(v.clone());
        }
    }
    Traffic {
        limit,
        length,
        x: rec_x,
        v: rec_v,
    }
}

/// A regional tile: stamp and arrival [s of the run], window [s], speed and density per
/// cell.
struct Tile {
    stamp: f64,
    arrival: f64,
    window: f64,
    speed: Vec<f64>,
    density: Vec<f64>,
}

fn tiles(rng: &mut StdRng, tr: &Traffic) -> Vec<Tile> {
    let window = [30.0, 40.0, 50.0, 60.0][rng.random_range(0..4)];
    let phase = rng.random_range(0.0..window);
    let latency_max: f64 = rng.random_range(1.0..8.0);
    let share = rng.random_range(0.2..1.0);
    let probe: Vec<bool> = (0..N).map(|_| rng.random::<f64>() < share).collect();
    let mut out = Vec::new();
    let mut stamp = phase + window;
    let last = (tr.x.len() - 1) as f64 * RECORD;
    while stamp <= last {
        let (mut count, mut pcount, mut psum) =
            (vec![0.0; CELLS], vec![0.0; CELLS], vec![0.0; CELLS]);
        let mut rows = 0.0;
        for (k, (xs, vs)) in tr.x.iter().zip(&tr.v).enumerate() {
            let t = k as f64 * RECORD;
            if !(t > stamp - window && t <= stamp) {
                continue;
            }
            rows += 1.0;
            for i in 0..N {
                let c = (xs[i] / CELL).floor();
                if c < 0.0 || c >= CELLS as f64 {
                    continue;
                }
                let c = c as usize;
                count[c] += 1.0;
                if probe[i] {
                    pcount[c] += 1.0;
                    psum[c] += vs[i];
                }
            }
        }
        let speed = (0..CELLS)
            .map(|c| {
                if pcount[c] > 0.0 {
                    (psum[c] / pcount[c]) as f32 as f64
                } else {
                    tr.limit as f32 as f64
                }
            })
            .collect();
        let density = count
            .iter()
            .map(|n| (n / rows / CELL * 1000.0) as f32 as f64)
            .collect();
        let arrival = stamp + rng.random_range(1.0..latency_max.max(1.0 + 1e-9));
        if rng.random::<f64>() >= 0.05 {
            out.push(Tile {
                stamp,
                arrival,
                window,
                speed,
                density,
            });
        }
        stamp += window;
    }
    out
}

fn message(tile: &Tile) -> RegionalTraffic {
    let mut m = RegionalTraffic {
        tile_id: "route".into(),
        window: Duration {
            sec: tile.window as i32,
            nanosec: 0,
        },
        lanes: (0..CELLS)
            .map(|c| {
                let a = c as f64 * CELL;
                let seg = (a / 1000.0).floor();
                LaneTraffic {
                    segment_id: format!("seg-{}", seg as i64),
                    lane_index: 0,
                    start_s: a - seg * 1000.0,
                    end_s: a + CELL - seg * 1000.0,
                    mean_speed: tile.speed[c] as f32,
                    density: tile.density[c] as f32,
                    flow: (tile.speed[c] * tile.density[c] * 3.6) as f32,
                }
            })
            .collect(),
        contributors: 40,
        k_threshold: 10,
        ..Default::default()
    };
    m.header.stamp = ros_time(((T0 + tile.stamp) * 1e6).round() as u64);
    m.header.frame_id = "map".into();
    m
}

/// In hindsight, per record and vehicle index i: where the slow traffic that a vehicle
/// behind vehicle i meets begins (the most upstream vehicle with index <= i below 80 % of
/// the limit whose two predecessors are too) and its speed (the slowest 100 m cell mean
/// over the 500 m from there); NaN when nothing ahead is slow.
struct Truth {
    x: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

fn truth(tr: &Traffic) -> Truth {
    let below = 0.8 * tr.limit;
    let mut tx = Vec::with_capacity(tr.x.len());
    let mut tv = Vec::with_capacity(tr.x.len());
    for (xs, vs) in tr.x.iter().zip(&tr.v) {
        let lo = xs.iter().fold(f64::INFINITY, |a, &b| a.min(b));
        let base = (lo / CELL).floor().min(0.0);
        let width = ((xs[0] / CELL).floor() - base) as usize + 6;
        let (mut cnt, mut sum) = (vec![0.0; width], vec![0.0; width]);
        for i in 0..N {
            let c = ((xs[i] / CELL).floor() - base) as usize;
            cnt[c] += 1.0;
            sum[c] += vs[i];
        }
        let (mut row_x, mut row_v) = (vec![f64::NAN; N], vec![f64::NAN; N]);
        let mut tail: Option<usize> = None;
        for i in 0..N {
            if i >= 2 && vs[i] < below && vs[i - 1] < below && vs[i - 2] < below {
                tail = Some(i);
            }
            if let Some(j) = tail {
                row_x[i] = xs[j];
                let c0 = ((xs[j] / CELL).floor() - base) as usize;
                let mut speed = f64::INFINITY;
                for c in c0..(c0 + 5).min(width) {
                    if cnt[c] > 0.0 {
                        speed = speed.min(sum[c] / cnt[c]);
                    }
                }
                row_v[i] = if speed.is_finite() { speed } else { vs[j] };
            }
        }
        tx.push(row_x);
        tv.push(row_v);
    }
    Truth { x: tx, v: tv }
}

/// The hindsight-ideal advice for a vehicle at s0 behind vehicle i at record k0.
fn ideal(truth: &Truth, k0: usize, i: usize, s0: f64, limit: f64, b: f64, margin: f64) -> f64 {
    let steps = (HORIZON / RECORD) as usize;
    let mut prev: Option<(f64, f64, f64)> = None; // (tau, f, V)
    for k in k0..(k0 + steps + 1).min(truth.x.len()) {
        let tau = (k - k0) as f64 * RECORD;
        let (x, v) = (truth.x[k][i], truth.v[k][i]);
        let f = if x.is_nan() {
            f64::INFINITY
        } else {
            x - margin - s0 - v * tau - 0.5 * b * tau * tau
        };
        if f <= 0.0 {
            let (t_star, v_star) = match prev {
                None => return limit.min(v),
                Some((pt, pf, pv)) if pf.is_finite() => {
                    let w = pf / (pf - f);
                    (pt + w * RECORD, pv + w * (v - pv))
                }
                Some(_) => (tau, v),
            };
            return limit.min(v_star + b * t_star);
        }
        prev = Some((tau, f, v));
    }
    limit
}

/// The lowest of the limit and a planner's congestion constraints at the vehicle's
/// position.
fn congestion_advice(planner: &Planner, world: &WorldModel) -> f64 {
    let ego = world.ego();
    let caps = planner.caps(world, ego.lane, ego.s);
    caps.iter()
        .filter(|c| c.reason_code == Recommendation::REASON_CONGESTION_AHEAD)
        .map(|c| c.speed)
        .fold(caps[0].speed, f64::min)
}

#[derive(Default)]
struct Drive {
    brake_energy: f64,
    peak_decel: f64,
    hard_braking: f64,
    distance: f64,
    recommendations: usize,
    advised: usize,
    /// Errors against the hindsight-ideal advice where the advisor applies: (baseline
    /// planner's, model's answer, planner with the advisor's) [m/s].
    errors: Vec<[f64; 3]>,
}

/// Deceleration of a coasting car (rolling resistance and air drag) at speed v [m/s²].
fn coasting(v: f64) -> f64 {
    0.1 + 2.6e-4 * v * v
}

struct Setup<'a> {
    tr: &'a Traffic,
    tiles: &'a [Tile],
    truth: &'a Truth,
    road: Arc<Road>,
}

/// Drives a vehicle behind vehicle `i` from record `k_start`, `gap` metres behind it,
/// with `planner`; scores `score`'s two planners' congestion advice on the way. An
/// `oracle` drive gives its twin no regional data and caps the plan at the hindsight-ideal
/// advice instead: what perfect anticipation would do.
fn drive(
    set: &Setup,
    planner: &Planner,
    i: usize,
    k_start: usize,
    gap: f64,
    score: Option<(&Planner, &Planner)>,
    oracle: bool,
) -> Drive {
    let tr = set.tr;
    let c = planner.config();
    let mut world = WorldModel::new(set.road.clone());
    let mut s = tr.x[k_start][i] - tr.length[i] - gap;
    let mut v = tr.v[k_start][i];
    let start = s;
    let mut t = k_start as f64 * RECORD;
    let mut next_tile = 0;
    let mut target = tr.limit;
    let mut joined = false;
    let mut out = Drive::default();
    let ctx = PlanContext {
        state_age: 0.1,
        horizon: 10.0,
    };
    let k_end = tr.x.len() - 1;
    while t < T_SIM - 1e-9 && s < 9500.0 {
        let k = (t / RECORD).floor() as usize;
        let w = t / RECORD - k as f64;
        let k1 = (k + 1).min(k_end);
        let lx = (1.0 - w) * tr.x[k][i] + w * tr.x[k1][i];
        let lv = (1.0 - w) * tr.v[k][i] + w * tr.v[k1][i];
        let lead_gap = lx - tr.length[i] - s;
        assert!(lead_gap > 0.0, "collision at t = {t}");
        if (t - t.round()).abs() < 1e-9 {
            // A recommendation, once a second.
            while !oracle && next_tile < set.tiles.len() && set.tiles[next_tile].arrival <= t {
                world
                    .apply_regional(&message(&set.tiles[next_tile]), T0 + t)
                    .unwrap();
                next_tile += 1;
            }
            world.set_ego(s - EGO_LENGTH / 2.0, 0.0, 0.0, v, EGO_LENGTH, 1.9);
            let seen: Vec<_> = (lead_gap < SENSOR_RANGE)
                .then_some((
                    7u64,
                    lx - tr.length[i] / 2.0,
                    0.0,
                    lv,
                    0.0,
                    tr.length[i],
                    1.9,
                ))
                .into_iter()
                .collect();
            world.set_objects(seen);
            world.expire(T0 + t);
            let plan: Plan = planner.plan(&world, &ctx);
            target = plan.target_speed;
            if oracle {
                let c = planner.config();
                target = target.min(ideal(
                    set.truth,
                    k,
                    i,
                    s,
                    tr.limit,
                    c.harmonize_decel,
                    c.arrive_margin,
                ));
            }
            out.recommendations += 1;
            out.advised += plan.reason.ends_with("(model)") as usize;
            // The safety filter bounds every recommendation.
            assert!(plan.target_speed <= tr.limit + 1e-9, "{plan:?}");
            assert!(
                plan.horizon.iter().all(|h| h.1 <= tr.limit + 1e-9),
                "{plan:?}"
            );
            if lead_gap < SENSOR_RANGE {
                let safe =
                    safe_following_speed(lead_gap, lv, c.idm.min_gap, c.idm.decel, c.reaction_time);
                assert!(plan.target_speed <= safe + 1e-6, "{plan:?} above {safe}");
            }
            if let Some((base, advised)) = score {
                let model = advised
                    .speed_model()
                    .expect("the advised planner has a model");
                if let Some(answer) = advise(model, &world, &[0], c).unwrap().first() {
                    let ideal = ideal(
                        set.truth,
                        k,
                        i,
                        s,
                        tr.limit,
                        c.harmonize_decel,
                        c.arrive_margin,
                    );
                    out.errors.push([
                        (congestion_advice(base, &world) - ideal).abs(),
                        (answer.model_advice - ideal).abs(),
                        (congestion_advice(advised, &world) - ideal).abs(),
                    ]);
                }
            }
        }
        let acc = idm_accel(&c.idm, v, target, Some((lead_gap, lv)));
        let v_new = (v + acc * DT).max(0.0);
        if !joined {
            out.brake_energy += (-acc - coasting(v)).max(0.0) * v * DT;
            out.peak_decel = out.peak_decel.max(-acc);
            if acc < -1.5 {
                out.hard_braking += DT;
            }
            joined = v < 0.5 * tr.limit && lead_gap < 100.0;
        }
        s += if v_new > 0.0 {
            (v + v_new) / 2.0 * DT
        } else if acc < 0.0 {
            -v * v / (2.0 * acc)
        } else {
            0.0
        };
        v = v_new;
        t += DT;
    }
    out.distance = s - start;
    out
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (n, s) = v.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    s / n.max(1) as f64
}

#[test]
fn the_advisor_anticipates_the_ideal_approach_and_stays_within_the_safety_filter() {
    let Some(_) = std::env::var_os("ORT_DYLIB_PATH") else {
        panic!(
            "ORT_DYLIB_PATH is not set: this test runs the committed model through ONNX \
             Runtime. `source scripts/env.sh` first (make test does)."
        );
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/speed_advisor/speed_advisor.onnx");
    let model = Arc::new(twin_dr_host::model::SpeedModel::load(&path).unwrap());
    let base = Planner::default();
    let advised = Planner::default().with_speed_model(model).unwrap();
    // (start [s], vehicle nearest to x [m], gap behind it [m]).
    let starts = [
        (60, 1000.0, 60.0),
        (150, 2000.0, 250.0),
        (240, 1000.0, 60.0),
        (330, 2000.0, 250.0),
    ];
    let runs = 12;
    let (mut with_base, mut with_model, mut with_oracle) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let mut rng = StdRng::seed_from_u64(0x5eed_0000 + run);
        let tr = simulate(&mut rng);
        let tl = tiles(&mut rng, &tr);
        let tru = truth(&tr);
        let set = Setup {
            tr: &tr,
            tiles: &tl,
            truth: &tru,
            road: Arc::new(Road::straight(ROAD, 1, tr.limit).unwrap()),
        };
        for &(t_start, x0, gap) in &starts {
            let k = (t_start as f64 / RECORD) as usize;
            let i = (1..N)
                .min_by(|&a, &b| (tr.x[k][a] - x0).abs().total_cmp(&(tr.x[k][b] - x0).abs()))
                .unwrap();
            with_base.push(drive(
                &set,
                &base,
                i,
                k,
                gap,
                Some((&base, &advised)),
                false,
            ));
            with_model.push(drive(&set, &advised, i, k, gap, None, false));
            with_oracle.push(drive(&set, &base, i, k, gap, None, true));
        }
    }
    let errors: Vec<[f64; 3]> = with_base.iter().flat_map(|d| d.errors.clone()).collect();
    let mae_base = mean(errors.iter().map(|e| e[0]));
    let mae_model = mean(errors.iter().map(|e| e[1]));
    let mae_planner = mean(errors.iter().map(|e| e[2]));
    let report = |name: &str, d: &[Drive]| {
        eprintln!(
            "{name:>22}: brake energy {:6.1} J/kg, largest deceleration {:.2} m/s² (worst {:.2}), \
             braking > 1.5 m/s² {:.2} s, distance {:6.0} m, advisor used in {} of {} recommendations",
            mean(d.iter().map(|x| x.brake_energy)),
            mean(d.iter().map(|x| x.peak_decel)),
            d.iter().map(|x| x.peak_decel).fold(0.0, f64::max),
            mean(d.iter().map(|x| x.hard_braking)),
            mean(d.iter().map(|x| x.distance)),
            d.iter().map(|x| x.advised).sum::<usize>(),
            d.iter().map(|x| x.recommendations).sum::<usize>(),
        );
    };
    eprintln!(
        "anticipation: {} recommendations where the advisor applies; congestion advice vs the \
         hindsight ideal (MAE): baseline {mae_base:.3} m/s, the model's answer {mae_model:.3} m/s \
         ({:+.0} %), the planner with the advisor (safety envelope) {mae_planner:.3} m/s ({:+.0} %)",
        errors.len(),
        100.0 * (mae_model / mae_base - 1.0),
        100.0 * (mae_planner / mae_base - 1.0),
    );
    eprintln!("driving ({} vehicles each):", with_base.len());
    report("baseline", &with_base);
    report("with the advisor", &with_model);
    report("hindsight oracle", &with_oracle);
    assert!(
        errors.len() >= 500,
        "only {} scored recommendations",
        errors.len()
    );
    assert!(
        mae_model <= 0.85 * mae_base && mae_base - mae_model >= 0.15,
        "the model's advice is not clearly closer to the hindsight ideal than the baseline's: \
         MAE {mae_model:.3} vs {mae_base:.3} m/s"
    );
}
