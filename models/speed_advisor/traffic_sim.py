"""Seeded traffic for the speed advisor: single-lane IDM traffic with jams that travel
upstream, the regional service's tiles over it, the advisor's features (exactly as the DR
computes them, see `ros_pkgs/twin_dr_host/src/model.rs`) and the hindsight labels.

Traffic. Each run is one lane, 10 km of route (`s` in [0, 10000] m) fed from upstream by
vehicles at a random inflow (1100-2000 veh/h), driving the IDM with the planner's
improved free-road term (random time gap 1.2-1.8 s, acceleration 0.6-1.2 m/s^2,
deceleration 1.5-2.5 m/s^2, desired speed 95-105 % of the limit; 10 % trucks, 12 m long,
at 85 % of the limit or 22 m/s). One or two events (40 %, 40 %, 20 %: bottleneck, stop,
both) make congestion between s = 4.5 and 9 km:

- a bottleneck: vehicles slow to 2-10 m/s over 400 m and keep that speed over the next
  300 m, for 2-10 minutes (a queue whose front moves upstream at the shock speed while the
  inflow exceeds the zone's capacity, and dissolves after);
- a stop: one vehicle brakes to 0-3 m/s for 30-120 s (a stop-and-go wave that travels
  upstream and grows or dies out with the inflow).

Regional service. Every `window` seconds (30, 40, 50 or 60 s per run) it publishes, for
100 m cells of the lane, the mean speed of the probe vehicles (20-100 % of all) over the
window and the density of all vehicles; the tile's stamp is the window's end and it
arrives 1-8 s later; 5 % of tiles are lost. Cells without a probe are reported at the
limit.

Labels. For an ego vehicle at `s0` behind vehicle `i` at time `t0`: the slow traffic it
will meet is the most upstream vehicle ahead of it (index <= i, first in first out)
slower than 80 % of the limit whose two predecessors are too (a jam, not one braking
vehicle); its position X(t) - 50 m and the traffic's speed V(t) there (the slowest 100 m
cell mean over the 500 m from it) are known in hindsight. The label is the speed from
which a constant deceleration of 0.3 m/s^2 (the planner's `harmonize_decel`) meets that
front at its speed when it actually gets there: the first tau with
X(t0 + tau) - s0 - V tau - 0.3 tau^2 / 2 <= 0 gives V + 0.3 tau, capped at the limit (the
limit when there is no slow traffic to meet within 300 s).
"""
import numpy as np

DT = 0.5  # integration step [s]
RECORD = 2.0  # recording period [s]
CELL = 100.0  # regional cell length [m]
ROAD = 10000.0  # route length [m]
CELLS = int(ROAD / CELL)
T_SIM = 960.0  # simulated time [s]
HORIZON = 300.0  # label horizon [s]
MIN_GAP = 2.0

# Planner settings the labels and features depend on (PlannerConfig::default()).
MARGIN = 50.0  # arrive_margin [m]
HARMONIZE = 0.3  # harmonize_decel [m/s^2]
LOOKAHEAD = 3000.0  # lookahead [m]
SLOW_FRACTION = 0.8  # a stretch is slow below this fraction of the limit

# Feature definitions (contract speed_advisor/1).
JOIN_GAP = 100.0  # slow stretches this close belong to one slow region [m]
HEAD = 500.0  # the region's head: its first 500 m [m]
UPSTREAM = 1000.0  # the stretch upstream of the region that feeds it [m]
MATCH = 1500.0  # the previous snapshot's region must start this close [m]
LENGTH_CAP = 5000.0  # region lengths are capped here [m]

FEATURES = [
    "tail_distance",       # m, start of the first slow region ahead, newest snapshot, from the ego
    "tail_distance_prev",  # m, the same region's start in the snapshot before, from the ego now
    "jam_speed",           # m/s, slowest stretch in the region's first 500 m, newest
    "jam_speed_prev",      # m/s, the same, snapshot before
    "jam_length",          # m, region length (capped at 5000), newest
    "jam_length_prev",     # m, the same, snapshot before
    "jam_density",         # veh/km, length-weighted mean density of the region's first 500 m, newest
    "upstream_speed",      # m/s, length-weighted mean speed over the 1000 m before the region, newest
    "upstream_density",    # veh/km, the same for density
    "speed_limit",         # m/s, at the ego
    "snapshot_interval",   # s, stamp of the newest snapshot minus stamp of the one before
    "snapshot_age",        # s, now minus the newest snapshot's stamp
    "window",              # s, aggregation window of the newest snapshot
]


def idm(v, v0, gap, vl, T, a, b, delta=4.0):
    """The planner's IDM (idm_accel): improved free-road term, interaction, floor -9."""
    v0 = np.maximum(v0, 0.1)
    vs = np.maximum(v, 1e-3)
    free = np.where(v <= v0, a * (1.0 - (v / v0) ** delta), -b * (1.0 - (v0 / vs) ** (a * delta / b)))
    s_star = MIN_GAP + np.maximum(v * T + v * (v - vl) / (2.0 * np.sqrt(a * b)), 0.0)
    inter = a * (s_star / np.maximum(gap, 0.1)) ** 2
    return np.maximum(free - inter, -9.0)


def simulate(rng, runs, n=820):
    """Simulates `runs` independent runs; returns per-run parameters and records of
    position and speed every RECORD seconds (runs x times x vehicles, vehicle 0 first
    downstream)."""
    limit = rng.uniform(25.0, 36.0, runs)
    inflow = rng.uniform(1100.0, 2000.0, runs) / 3600.0
    T = rng.uniform(1.2, 1.8, runs)[:, None]
    a = rng.uniform(0.6, 1.2, runs)[:, None]
    b = rng.uniform(1.5, 2.5, runs)[:, None]
    truck = rng.random((runs, n)) < 0.1
    length = np.where(truck, 12.0, rng.uniform(4.0, 5.0, (runs, n)))
    v0 = limit[:, None] * rng.uniform(0.95, 1.05, (runs, n))
    # Trucks are slower, but not slow traffic (above 80 % of the limit).
    v0 = np.where(truck, np.minimum(v0, np.maximum(0.85 * limit, 22.0)[:, None]), v0)
    # Initial state: free flow, vehicle 0 at 14 km, headways of mean 1/inflow (shifted
    # exponential with a floor), speeds at the desired speed.
    x = np.zeros((runs, n))
    x[:, 0] = 14000.0
    for i in range(1, n):
        h_min = T[:, 0] + (MIN_GAP + length[:, i - 1]) / v0[:, i] + 0.3
        mean = 1.0 / inflow
        h = h_min + rng.exponential(np.maximum(mean - h_min, 0.2))
        x[:, i] = x[:, i - 1] - h * v0[:, i]
    v = v0.copy()
    # Events.
    kind = rng.choice(3, runs, p=[0.4, 0.4, 0.2])  # 0 bottleneck, 1 stop, 2 both
    bn = kind != 1
    bn_x = rng.uniform(5000.0, 8500.0, runs)
    bn_v = rng.uniform(2.0, 10.0, runs)
    bn_on = rng.uniform(0.0, 300.0, runs)
    bn_off = bn_on + rng.uniform(120.0, 600.0, runs)
    st = kind != 0
    st_x = rng.uniform(4500.0, 9000.0, runs)
    st_v = rng.uniform(0.0, 3.0, runs)
    st_on = rng.uniform(60.0, 400.0, runs)
    st_off = st_on + rng.uniform(30.0, 120.0, runs)
    st_who = np.full(runs, -1)

    steps = int(T_SIM / DT)
    every = int(RECORD / DT)
    rec_x = np.zeros((runs, steps // every + 1, n), np.float32)
    rec_v = np.zeros_like(rec_x)
    rec_x[:, 0], rec_v[:, 0] = x, v
    rows = np.arange(runs)
    for k in range(1, steps + 1):
        t = (k - 1) * DT
        desired = v0.copy()
        # The bottleneck: desired speed falls linearly over the 400 m before the zone
        # (about 1 m/s^2 of braking) and stays low over its 300 m.
        active = (bn & (t >= bn_on) & (t < bn_off))[:, None]
        into = np.clip((bn_x[:, None] - x) / 400.0, 0.0, 1.0)
        zone_v = bn_v[:, None] + (desired - bn_v[:, None]) * into
        in_zone = active & (x > (bn_x - 400.0)[:, None]) & (x < (bn_x + 300.0)[:, None])
        desired = np.where(in_zone, np.minimum(desired, zone_v), desired)
        pick = st & (st_who < 0) & (t >= st_on)
        if pick.any():
            # The first vehicle upstream of the stop's place.
            upstream = np.where(x <= st_x[:, None], x, -np.inf)
            st_who = np.where(pick, upstream.argmax(axis=1), st_who)
        stopping = st & (st_who >= 0) & (t < st_off)
        if stopping.any():
            r = rows[stopping]
            desired[r, st_who[r]] = st_v[r]
        gap = np.full((runs, n), np.inf)
        gap[:, 1:] = x[:, :-1] - length[:, :-1] - x[:, 1:]
        vl = np.zeros((runs, n))
        vl[:, 1:] = v[:, :-1]
        acc = idm(v, desired, gap, vl, T, a, b)
        v_new = np.maximum(v + acc * DT, 0.0)
        # Ballistic update; a vehicle that stops within the step stops where it stops.
        dx = np.where(v_new > 0.0, (v + v_new) / 2.0 * DT, np.where(acc < 0, -v * v / (2.0 * np.minimum(acc, -1e-9)), 0.0))
        x = x + dx
        v = v_new
        # No overlap (the IDM's -9 m/s^2 floor can, rarely, fall short).
        x[:, 1:] = np.minimum(x[:, 1:], np.minimum.accumulate(x[:, :-1] - length[:, :-1] - 0.5, axis=1))
        if k % every == 0:
            rec_x[:, k // every], rec_v[:, k // every] = x, v
    params = {"limit": limit, "inflow": inflow, "kind": kind}
    return params, rec_x, rec_v


def tiles(rng, rec_x, rec_v, limit):
    """The regional service over one run: a list of tiles (stamp, arrival, window, speed
    per cell, density per cell), every `window` seconds, 5 % lost."""
    times = np.arange(rec_x.shape[0]) * RECORD
    window = float(rng.choice([30.0, 40.0, 50.0, 60.0]))
    phase = rng.uniform(0.0, window)
    latency_max = rng.uniform(1.0, 8.0)
    probe = rng.random(rec_x.shape[1]) < rng.uniform(0.2, 1.0)
    out = []
    stamp = phase + window
    while stamp <= times[-1]:
        rows = (times > stamp - window) & (times <= stamp)
        xs, vs = rec_x[rows], rec_v[rows]
        cell = np.floor(xs / CELL).astype(np.int64)
        ok = (cell >= 0) & (cell < CELLS)
        count = np.bincount(cell[ok], minlength=CELLS)
        pk = ok & probe[None, :]
        pcount = np.bincount(cell[pk], minlength=CELLS)
        psum = np.bincount(cell[pk], weights=vs[pk], minlength=CELLS)
        speed = np.where(pcount > 0, psum / np.maximum(pcount, 1), limit)
        density = count / rows.sum() / CELL * 1000.0
        if rng.random() >= 0.05:
            out.append({"stamp": stamp, "arrival": stamp + rng.uniform(1.0, latency_max), "window": window,
                        "speed": speed.astype(np.float32).astype(np.float64),
                        "density": density.astype(np.float32).astype(np.float64)})
        stamp += window
    return out


def stretches(tile):
    """A tile's cells as stretches: arrays start, end, speed, density."""
    start = np.arange(CELLS) * CELL
    return start, start + CELL, tile["speed"], tile["density"]


def regions(start, end, speed, density, ego_s, below, behind_ok):
    """Slow regions: slow stretches (speed below `below`, ending after the ego unless
    `behind_ok`) in start order, merged while the next starts within JOIN_GAP of the
    region's end. Each region is (start, end, indices of its stretches)."""
    slow = speed < below
    if not behind_ok:
        slow &= end > ego_s
    idx = np.nonzero(slow)[0]
    idx = idx[np.argsort(start[idx], kind="stable")]
    out = []
    for i in idx:
        if out and start[i] <= out[-1][1] + JOIN_GAP:
            out[-1][1] = max(out[-1][1], end[i])
            out[-1][2].append(i)
        else:
            out.append([start[i], end[i], [i]])
    return out


def head(region, start, end, speed, density):
    """(slowest speed, length-weighted mean density) of the region's first HEAD metres."""
    r0 = region[0]
    sel = [i for i in region[2] if start[i] < r0 + HEAD]
    w = np.array([end[i] - start[i] for i in sel])
    return float(min(speed[i] for i in sel)), float(np.dot(w, density[sel]) / w.sum())


def upstream(r0, start, end, speed, density, limit):
    """Length-weighted mean speed and density of the stretches over [r0 - UPSTREAM, r0)."""
    lo = np.maximum(start, r0 - UPSTREAM)
    hi = np.minimum(end, r0)
    w = np.maximum(hi - lo, 0.0)
    if w.sum() <= 0.0:
        return limit, 0.0
    return float(np.dot(w, speed) / w.sum()), float(np.dot(w, density) / w.sum())


def features(now_st, prev_st, ego_s, limit, stamp_now, stamp_prev, now, window):
    """The advisor's features for an ego at `ego_s` (None when the model does not apply:
    no slow region starting within the lookahead, or none in the snapshot before within
    MATCH of it). `now_st`, `prev_st`: (start, end, speed, density) arrays."""
    below = SLOW_FRACTION * limit
    cur = regions(*now_st, ego_s, below, behind_ok=False)
    cur = [r for r in cur if r[0] < ego_s + LOOKAHEAD]
    if not cur:
        return None
    r = cur[0]
    prev = regions(*prev_st, ego_s, below, behind_ok=True)
    if not prev:
        return None
    p = min(prev, key=lambda q: abs(q[0] - r[0]))
    if abs(p[0] - r[0]) > MATCH:
        return None
    js, jd = head(r, *now_st)
    jsp, _ = head(p, *prev_st)
    us, ud = upstream(r[0], *now_st, limit)
    return [r[0] - ego_s, p[0] - ego_s, js, jsp, min(r[1] - r[0], LENGTH_CAP), min(p[1] - p[0], LENGTH_CAP),
            jd, us, ud, limit, stamp_now - stamp_prev, now - stamp_now, window]


def baseline_advice(now_st, ego_s, limit):
    """The baseline planner's congestion cap: min over slow stretches ahead within the
    lookahead of sqrt(v^2 + 2 b (d - margin)), and the limit."""
    start, end, speed, _ = now_st
    sel = (end > ego_s) & (start < ego_s + LOOKAHEAD) & (speed < SLOW_FRACTION * limit)
    d = np.maximum(start[sel] - ego_s, 0.0)
    caps = np.sqrt(speed[sel] ** 2 + 2.0 * HARMONIZE * np.maximum(d - MARGIN, 0.0))
    return float(min(limit, caps.min())) if caps.size else float(limit)


def moving_front_speed(distance, v_jam, c, b=HARMONIZE):
    """Speed now from which braking at b meets a front `distance` ahead (margin included)
    that moves at c [m/s] while its traffic drives v_jam: c + sqrt((v_jam - c)^2 + 2 b d)."""
    return c + np.sqrt(np.maximum((v_jam - c) ** 2 + 2.0 * b * np.maximum(distance, 0.0), 0.0))


def truth(rec_x, rec_v, limit):
    """Per recorded time and vehicle index i: the tail's position and traffic speed for an
    ego behind vehicle i (nan when nothing ahead is slow). Arrays times x vehicles."""
    # Slow traffic is a jam, not one braking vehicle: a vehicle below 80 % of the limit
    # with the two ahead of it below too.
    below = rec_v < SLOW_FRACTION * limit
    slow = np.zeros_like(below)
    slow[:, 2:] = below[:, 2:] & below[:, 1:-1] & below[:, :-2]
    n = rec_x.shape[1]
    j = np.where(slow, np.arange(n)[None, :], -1)
    tail = np.maximum.accumulate(j, axis=1)  # most upstream slow vehicle with index <= i
    has = tail >= 0
    tt = np.maximum(tail, 0)
    xt = np.take_along_axis(rec_x, tt, axis=1)
    # Traffic speed at the tail: slowest 100 m cell mean (all vehicles, instantaneous)
    # over the 500 m from the tail.
    cell = np.floor(rec_x / CELL).astype(np.int64)
    nt = rec_x.shape[0]
    lo_cell = int(min(cell.min(), 0))
    width = int(cell.max()) - lo_cell + 6
    flat = (cell - lo_cell) + np.arange(nt)[:, None] * width
    cnt = np.bincount(flat.ravel(), minlength=nt * width).reshape(nt, width)
    sm = np.bincount(flat.ravel(), weights=rec_v.ravel(), minlength=nt * width).reshape(nt, width)
    mean = np.where(cnt > 0, sm / np.maximum(cnt, 1), np.inf)
    c0 = np.floor(xt / CELL).astype(np.int64) - lo_cell
    vt = np.full(xt.shape, np.inf)
    for k in range(5):
        vt = np.minimum(vt, np.take_along_axis(mean, np.clip(c0 + k, 0, width - 1), axis=1))
    vt = np.where(np.isfinite(vt), vt, np.take_along_axis(rec_v, tt, axis=1))
    return np.where(has, xt, np.nan), np.where(has, vt, np.nan)


def label(tail_x, tail_v, k0, i, s0, limit, b=HARMONIZE):
    """The hindsight advised speed for an ego at s0 behind vehicle i at record k0."""
    steps = int(HORIZON / RECORD) + 1
    ks = np.arange(k0, min(k0 + steps, tail_x.shape[0]))
    tau = (ks - k0) * RECORD
    X = tail_x[ks, i] - MARGIN
    V = tail_v[ks, i]
    f = np.where(np.isnan(X), np.inf, X - s0 - V * tau - 0.5 * b * tau ** 2)
    hit = np.nonzero(f <= 0.0)[0]
    if hit.size == 0:
        return float(limit)
    k = hit[0]
    if k == 0:
        return float(min(limit, V[0]))
    if not np.isfinite(f[k - 1]):
        t_star, v_star = tau[k], V[k]
    else:
        w = f[k - 1] / (f[k - 1] - f[k])
        t_star = tau[k - 1] + w * RECORD
        v_star = V[k - 1] + w * (V[k] - V[k - 1])
    return float(min(limit, v_star + b * t_star))
