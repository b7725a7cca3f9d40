#!/usr/bin/env python3
"""Trains and exports twinlink's congestion speed advisor (models/speed_advisor/speed_advisor.onnx).

The model advises the speed at which to approach the first slow region of traffic ahead
that regional data report, from the newest two regional snapshots of the lane: where the
region started then and now, how slow, long and dense it was, how fast and dense the
traffic feeding it is, how old the data are. It estimates how fast the region's front
moves (c, m/s, negative upstream) and the advice follows by physics: the speed from which
braking at the planner's harmonize_decel meets the moving front at the region's speed.
Contract `speed_advisor/1` (models/README.md): input `features` float32 [N, 13]
(traffic_sim.FEATURES, SI units), outputs `advice` float32 [N, 1] (advised speed now,
m/s) and `front_speed` float32 [N, 1] (c, m/s).

Data: traffic_sim.py (seeded IDM traffic with bottleneck queues and stop-and-go waves,
the regional service's tiles over it, the features exactly as the DR computes them, and
hindsight labels). Network: an MLP 14-32-32-1 with tanh on the standardized features
that stay constant between two regional updates (not the distances to the region nor the
data's age, which change while the vehicle drives, so that the estimated front speed and
the braking profile stay consistent between updates) and the region start's apparent
speed of travel; c = 10 tanh(output); then the physics head
    advice = min(limit, c + sqrt((v_jam - c)^2 + 2 b max(d + c (age + window / 2) - margin, 0))).
Loss: Huber on (advice - label) / limit, advising too fast weighted 3 times (`--over`);
Adam with cosine decay, numpy float64, seeded (data, initialization, batch order). The
normalization, the derived input and the physics head are part of the ONNX graph, so the
model takes the raw features; after export the script checks that ONNX Runtime's output
equals the numpy model's.

    python models/speed_advisor/train.py            # about 1 min on 2 cores
    python models/speed_advisor/train.py --quick    # a smoke run

Needs numpy, onnx and onnxruntime (requirements.txt, a subset of the camera detector's, so
scripts/train-env.sh provides them):
    scripts/train-env.sh python models/speed_advisor/train.py
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traffic_sim as ts  # noqa: E402

CONTRACT = "speed_advisor/1"
F = len(ts.FEATURES)
IX = {name: i for i, name in enumerate(ts.FEATURES)}
HIDDEN = 32
C_MAX = 10.0  # the front speed the model can estimate, +-10 m/s
# Features the MLP sees (1) or not (0): not the ego's distance to the region now and
# before, nor the snapshot's age (they change while the vehicle drives).
MASK = np.array([0.0 if n in ("tail_distance", "tail_distance_prev", "snapshot_age") else 1.0 for n in ts.FEATURES])
CANDIDATES = 14  # ego positions tried per run and decision time
DECIDE_EVERY = 10.0  # s between decision times in a run


def situations(rng, runs, batch=16, log=print):
    """Simulates `runs` runs; returns features X [n, F], labels y [n] (advised speed, m/s),
    the baseline's advice [n], and the run of each sample."""
    X, y, base, run_of = [], [], [], []
    done = 0
    while done < runs:
        b = min(batch, runs - done)
        params, rec_x, rec_v = ts.simulate(rng, b)
        for r in range(b):
            limit = float(params["limit"][r])
            tail_x, tail_v = ts.truth(rec_x[r], rec_v[r], limit)
            tl = ts.tiles(rng, rec_x[r], rec_v[r], limit)
            t0 = 60.0
            while t0 <= ts.T_SIM - ts.HORIZON:
                got = [t for t in tl if t["arrival"] <= t0]
                if len(got) >= 2:
                    now, prev = got[-1], got[-2]
                    now_st, prev_st = ts.stretches(now), ts.stretches(prev)
                    k0 = int(round(t0 / ts.RECORD))
                    xs = rec_x[r, k0]
                    for s0 in rng.uniform(0.0, 9500.0, CANDIDATES):
                        f = ts.features(now_st, prev_st, s0, limit, now["stamp"], prev["stamp"], t0, now["window"])
                        if f is None or not (0.0 <= f[0] <= ts.LOOKAHEAD):
                            continue
                        # The ego is behind the nearest vehicle ahead of s0 (at least 3 m).
                        ahead = np.nonzero(xs - 4.0 > s0 + 3.0)[0]
                        if ahead.size == 0:
                            continue
                        i = int(ahead[-1])
                        X.append(f)
                        y.append(ts.label(tail_x, tail_v, k0, i, s0, limit))
                        base.append(ts.baseline_advice(now_st, s0, limit))
                        run_of.append(done + r)
                t0 += DECIDE_EVERY
        done += b
        log(f"  simulated {done}/{runs} runs, {len(y)} situations", flush=True)
    return np.array(X), np.array(y), np.array(base), np.array(run_of)


def derived(X):
    """The slow region start's apparent speed of travel between the two snapshots [m/s],
    clipped to [-10, 10] (also built in the ONNX graph)."""
    motion = (X[:, IX["tail_distance"]] - X[:, IX["tail_distance_prev"]]) / np.maximum(X[:, IX["snapshot_interval"]], 1.0)
    return np.clip(motion, -10.0, 10.0)


def inputs(X, mean, std):
    """The MLP's inputs: the standardized features that stay constant between two
    snapshots (MASK), and the apparent motion. The ego's distance and the data's age enter
    only through the physics head, so the estimated front speed stays the same while the
    vehicle drives between two regional updates and the advice follows one consistent
    braking profile."""
    return np.concatenate([(X - mean) / std * MASK, derived(X)[:, None] / 3.0], axis=1)


def init(rng, n_in):
    def layer(i, o):
        return rng.normal(0.0, np.sqrt(1.0 / i), (i, o)), np.zeros(o)
    w3, b3 = layer(HIDDEN, 1)
    return [layer(n_in, HIDDEN), layer(HIDDEN, HIDDEN), (w3 * 0.1, b3)]


def forward(params, Z, keep=False):
    h1 = np.tanh(Z @ params[0][0] + params[0][1])
    h2 = np.tanh(h1 @ params[1][0] + params[1][1])
    out = (h2 @ params[2][0] + params[2][1])[:, 0]
    return (out, (Z, h1, h2)) if keep else out


def front(X, c):
    """The physics head: the speed from which braking at `harmonize_decel` meets the slow
    region's front, moving at c [m/s] since the middle of the newest snapshot's window,
    at the region's speed: c + sqrt((v_jam - c)^2 + 2 b max(d + c (age + window / 2) -
    margin, 0)), at most the limit. Returns (advice, d advice / d c, capped)."""
    b = ts.HARMONIZE
    v = X[:, IX["jam_speed"]]
    lag = X[:, IX["snapshot_age"]] + 0.5 * X[:, IX["window"]]
    room = X[:, IX["tail_distance"]] + c * lag - ts.MARGIN
    pos = room > 0.0
    q = (v - c) ** 2 + 2.0 * b * np.where(pos, room, 0.0)
    root = np.sqrt(np.maximum(q, 1e-9))
    raw = c + root
    lim = X[:, IX["speed_limit"]]
    slope = 1.0 + (c - v + np.where(pos, b * lag, 0.0)) / root
    return np.minimum(raw, lim), slope, raw > lim


def predict(params, X, mean, std, with_c=False):
    """Advised speed [m/s] (and the front speed c), as the ONNX graph computes them."""
    c = C_MAX * np.tanh(forward(params, inputs(X, mean, std)))
    advice = front(X, c)[0]
    return (advice, c) if with_c else advice


def train(rng, X, y, epochs, batch=256, lr0=3e-3, delta=0.05, over=1.0, log=print):
    mean, std = X.mean(0), X.std(0) + 1e-6
    Z = inputs(X, mean, std)
    lim = X[:, IX["speed_limit"]]
    params = init(rng, Z.shape[1])
    flat = [p for layer in params for p in layer]
    m = [np.zeros_like(p) for p in flat]
    v = [np.zeros_like(p) for p in flat]
    steps = epochs * (len(Z) // batch)
    t = 0
    for epoch in range(epochs):
        order = rng.permutation(len(Z))
        total = 0.0
        for k in range(len(Z) // batch):
            idx = order[k * batch:(k + 1) * batch]
            out, (z, h1, h2) = forward(params, Z[idx], keep=True)
            th = np.tanh(out)
            advice, slope, capped = front(X[idx], C_MAX * th)
            err = (advice - y[idx]) / lim[idx]
            # Asymmetric Huber loss on the advice as a fraction of the limit: advising too
            # fast costs `over` times as much as too slow.
            wgt = np.where(err > 0.0, over, 1.0)
            total += (wgt * np.where(np.abs(err) <= delta, 0.5 * err ** 2, delta * (np.abs(err) - 0.5 * delta))).sum()
            g_adv = wgt * np.clip(err, -delta, delta) / lim[idx]
            # Above the limit the advice is capped; while it is too fast the gradient still
            # passes (straight through), so c can come down.
            g_c = g_adv * slope * np.where(capped & (err <= 0.0), 0.0, 1.0)
            g = (g_c * C_MAX * (1.0 - th ** 2))[:, None] / len(idx)
            g3w, g3b = h2.T @ g, g.sum(0)
            d2 = (g @ params[2][0].T) * (1 - h2 ** 2)
            g2w, g2b = h1.T @ d2, d2.sum(0)
            d1 = (d2 @ params[1][0].T) * (1 - h1 ** 2)
            g1w, g1b = z.T @ d1, d1.sum(0)
            grads = [g1w, g1b, g2w, g2b, g3w, g3b]
            lr = lr0 * 0.5 * (1 + np.cos(np.pi * t / steps))
            t += 1
            for j, (p, gr) in enumerate(zip(flat, grads)):
                m[j] = 0.9 * m[j] + 0.1 * gr
                v[j] = 0.999 * v[j] + 0.001 * gr * gr
                p -= lr * (m[j] / (1 - 0.9 ** t)) / (np.sqrt(v[j] / (1 - 0.999 ** t)) + 1e-8)
        if epoch % 5 == 4 or epoch == epochs - 1:
            log(f"  epoch {epoch + 1}/{epochs}: loss {total / len(Z):.6f}", flush=True)
    return params, mean, std


def rules(X):
    """Hand-written alternatives, for comparison: extrapolate the region's start at its
    apparent speed over the data's age and plan against a front moving at that speed
    (clipped to [-7, 3] m/s), or at the textbook -15 km/h of stop-and-go waves."""
    lim = X[:, IX["speed_limit"]]
    out = {}
    motion = derived(X)
    for name, c in [("extrapolated", np.clip(motion, -7.0, 3.0)), ("wave_-15kmh", np.full(len(X), -15 / 3.6))]:
        d = X[:, IX["tail_distance"]] + c * X[:, IX["snapshot_age"]]
        out[name] = np.minimum(lim, ts.moving_front_speed(d - ts.MARGIN, X[:, IX["jam_speed"]], c))
    return out


def export_onnx(params, mean, std, ranges, path, meta_extra=None):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    inits = {
        "mean": f32(mean), "inv_std": f32(1.0 / std),
        "w1": f32(params[0][0]), "b1": f32(params[0][1]),
        "w2": f32(params[1][0]), "b2": f32(params[1][1]),
        "w3": f32(params[2][0]), "b3": f32(params[2][1]),
        "margin": f32(ts.MARGIN), "zero": f32(0.0), "half": f32(0.5), "two_b": f32(2.0 * ts.HARMONIZE),
        "min_interval": f32(1.0), "lo": f32(-10.0), "hi": f32(10.0), "third": f32(1.0 / 3.0),
        "c_max": f32(C_MAX), "mask": f32(MASK),
    }
    used = ["tail_distance", "tail_distance_prev", "jam_speed", "speed_limit", "snapshot_interval",
            "snapshot_age", "window"]
    for name in used:
        inits[f"i_{name}"] = np.array([IX[name]], np.int64)
    nodes = [helper.make_node("Gather", ["features", f"i_{n}"], [f"c_{n}"], axis=1) for n in used]
    nodes += [
        # Apparent motion of the region's start, clipped, scaled by 1/3.
        helper.make_node("Sub", ["c_tail_distance", "c_tail_distance_prev"], ["moved"]),
        helper.make_node("Max", ["c_snapshot_interval", "min_interval"], ["interval"]),
        helper.make_node("Div", ["moved", "interval"], ["motion_raw"]),
        helper.make_node("Clip", ["motion_raw", "lo", "hi"], ["motion"]),
        helper.make_node("Mul", ["motion", "third"], ["motion_s"]),
        # Standardized features and the derived input, the MLP, the front speed c.
        helper.make_node("Sub", ["features", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_std"], ["standard_all"]),
        helper.make_node("Mul", ["standard_all", "mask"], ["standard"]),
        helper.make_node("Concat", ["standard", "motion_s"], ["z"], axis=1),
        helper.make_node("Gemm", ["z", "w1", "b1"], ["a1"]),
        helper.make_node("Tanh", ["a1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["a2"]),
        helper.make_node("Tanh", ["a2"], ["h2"]),
        helper.make_node("Gemm", ["h2", "w3", "b3"], ["out"]),
        helper.make_node("Tanh", ["out"], ["t_out"]),
        helper.make_node("Mul", ["t_out", "c_max"], ["front_speed"]),
        # The physics head: min(limit, c + sqrt((v_jam - c)^2 + 2 b max(d + c lag - margin, 0))),
        # lag = age + window / 2.
        helper.make_node("Mul", ["c_window", "half"], ["half_window"]),
        helper.make_node("Add", ["c_snapshot_age", "half_window"], ["lag"]),
        helper.make_node("Mul", ["front_speed", "lag"], ["moved_since"]),
        helper.make_node("Add", ["c_tail_distance", "moved_since"], ["d_now"]),
        helper.make_node("Sub", ["d_now", "margin"], ["room_raw"]),
        helper.make_node("Max", ["room_raw", "zero"], ["room"]),
        helper.make_node("Mul", ["room", "two_b"], ["room_2b"]),
        helper.make_node("Sub", ["c_jam_speed", "front_speed"], ["rel"]),
        helper.make_node("Mul", ["rel", "rel"], ["rel2"]),
        helper.make_node("Add", ["rel2", "room_2b"], ["q"]),
        helper.make_node("Sqrt", ["q"], ["root"]),
        helper.make_node("Add", ["front_speed", "root"], ["raw"]),
        helper.make_node("Min", ["raw", "c_speed_limit"], ["advice"]),
    ]
    graph = helper.make_graph(
        nodes, "twinlink_speed_advisor",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", F])],
        [helper.make_tensor_value_info("advice", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("front_speed", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="twinlink")
    model.ir_version = 8
    meta = {
        "twinlink.contract": CONTRACT,
        "twinlink.features": ",".join(ts.FEATURES),
        "twinlink.feature_ranges": ",".join(f"{lo:.6g}:{hi:.6g}" for lo, hi in ranges),
        "twinlink.harmonize_decel": f"{ts.HARMONIZE}",
        "twinlink.arrive_margin": f"{ts.MARGIN}",
        "twinlink.lookahead": f"{ts.LOOKAHEAD}",
        "input": "features float32 [N,13] SI units, order of twinlink.features",
        "output": "advice float32 [N,1] advised speed now [m/s]; front_speed float32 [N,1] estimated speed of the slow region's front [m/s], negative upstream",
    }
    meta.update(meta_extra or {})
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, path)


def summary(pred, y):
    err = pred - y
    return {"mae": round(float(np.abs(err).mean()), 3), "rmse": round(float(np.sqrt((err ** 2).mean())), 3),
            "p90_abs": round(float(np.percentile(np.abs(err), 90)), 3),
            "too_fast_by_2_or_more": round(float((err >= 2.0).mean()), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=320, help="simulated runs for training")
    parser.add_argument("--test-runs", type=int, default=96, help="held-out runs (another seed)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=20260611)
    parser.add_argument("--over", type=float, default=3.0, help="weight of advising too fast in the loss")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the pipeline")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args()
    if args.quick:
        args.runs, args.test_runs, args.epochs = 32, 16, 3
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    print(f"simulating {args.runs} training runs (seed {args.seed})", flush=True)
    X, y, base, _ = situations(np.random.default_rng(args.seed), args.runs)
    print(f"simulating {args.test_runs} held-out runs (seed {args.seed + 1})", flush=True)
    Xt, yt, base_t, _ = situations(np.random.default_rng(args.seed + 1), args.test_runs)
    print(f"{len(y)} training and {len(yt)} held-out situations ({time.time() - t_start:.0f} s)", flush=True)
    params, mean, std = train(np.random.default_rng(args.seed + 2), X, y, args.epochs, over=args.over)
    pred_t = predict(params, Xt, mean, std)
    lo, hi = X.min(0), X.max(0)
    onnx_path = os.path.join(args.out, "speed_advisor.onnx")
    export_onnx(params, mean, std, list(zip(lo, hi)), onnx_path,
                {"twinlink.seed": str(args.seed), "twinlink.trained_on": f"{len(y)} situations of {args.runs} simulated runs"})
    check_export(onnx_path, params, mean, std, Xt[:2000])
    advisors = {"model": pred_t, "baseline_cap": np.minimum(base_t, Xt[:, IX["speed_limit"]])}
    advisors.update(rules(Xt))
    held = {name: summary(pr, yt) for name, pr in advisors.items()}
    dist = Xt[:, IX["tail_distance"]]
    by_distance = {}
    for lo, hi in [(0, 500), (500, 1000), (1000, 2000), (2000, 3000)]:
        sel = (dist >= lo) & (dist < hi if hi < 3000 else dist <= hi)
        by_distance[f"{lo}-{hi} m"] = {"situations": int(sel.sum()),
                                        **{name: round(float(np.abs(pr[sel] - yt[sel]).mean()), 3) for name, pr in advisors.items()}}
    metrics = {
        "contract": CONTRACT, "seed": args.seed, "train_runs": args.runs, "test_runs": args.test_runs,
        "train_situations": int(len(y)), "test_situations": int(len(yt)), "epochs": args.epochs,
        "held_out_advice_error_mps": held,
        "held_out_mae_by_distance_mps": by_distance,
        "label_mean_mps": round(float(yt.mean()), 3),
        "train_seconds": round(time.time() - t_start),
    }
    old = os.path.join(args.out, "metrics.json")
    if os.path.exists(old):
        # The closed-loop figures are written by the Rust gain test's report (README).
        with open(old) as f:
            prev = json.load(f)
        if "closed_loop" in prev:
            metrics["closed_loop"] = prev["closed_loop"]
    with open(old, "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))


def check_export(path, params, mean, std, X):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    advice, c = session.run(None, {"features": X.astype(np.float32)})
    want, want_c = predict(params, X.astype(np.float32).astype(np.float64), mean, std, with_c=True)
    worst = max(float(np.abs(advice[:, 0] - want).max()), float(np.abs(c[:, 0] - want_c).max()))
    assert worst < 1e-3, worst
    print(f"export check: ONNX Runtime output equals the numpy model's (max difference {worst:.2e} m/s on {len(X)} situations)")


if __name__ == "__main__":
    main()
