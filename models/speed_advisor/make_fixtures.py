#!/usr/bin/env python3
"""Writes the speed advisor's test fixtures (models/speed_advisor/fixtures/):

- features.json: regional snapshots from the simulator and ego positions with the
  features traffic_sim.features computes for them (None where the model does not apply);
  the DR's Rust extraction (ros_pkgs/twin_dr_host/src/model.rs) must give the same;
- tiny ONNX models that break the speed_advisor/1 contract in one way each (and one that
  keeps it), for the loader's refusal tests.

    scripts/train-env.sh python models/speed_advisor/make_fixtures.py
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import traffic_sim as ts  # noqa: E402
import train  # noqa: E402

OUT = os.path.join(HERE, "fixtures")


def feature_fixture(seed=7):
    rng = np.random.default_rng(seed)
    params, rec_x, rec_v = ts.simulate(rng, 8)
    cases = []
    for r in range(8):
        limit = float(params["limit"][r])
        tl = ts.tiles(rng, rec_x[r], rec_v[r], limit)
        # A pair of consecutive tiles with a slow region, and egos around it.
        for k in range(1, len(tl)):
            prev, now = tl[k - 1], tl[k]
            if now["stamp"] < 200.0:
                continue
            now_st, prev_st = ts.stretches(now), ts.stretches(prev)
            slow = np.nonzero(now["speed"] < ts.SLOW_FRACTION * limit)[0]
            if slow.size == 0:
                continue
            r0 = slow[0] * ts.CELL
            t_now = now["arrival"] + 3.0
            egos = [e for e in [r0 - 2500.0, r0 - 1200.0, r0 - 333.3, r0 - 10.0, r0 + 50.0, r0 - 3500.0] if e >= 0.0]
            situations = []
            for ego in egos:
                f = ts.features(now_st, prev_st, ego, limit, now["stamp"], prev["stamp"], t_now, now["window"])
                situations.append({"ego_s": ego, "features": f})
            if sum(x["features"] is not None for x in situations) < 3:
                continue
            cells = lambda t: [[float(a), float(b), float(c), float(d)] for a, b, c, d in zip(*ts.stretches(t))]  # noqa: E731
            cases.append({
                "limit": limit, "now": t_now,
                "previous": {"stamp": prev["stamp"], "arrival": prev["arrival"], "window": prev["window"], "stretches": cells(prev)},
                "newest": {"stamp": now["stamp"], "arrival": now["arrival"], "window": now["window"], "stretches": cells(now)},
                "situations": situations,
            })
            break
        if len(cases) == 3:
            break
    return {"features": ts.FEATURES, "cases": cases}


def tiny_model(path, contract=train.CONTRACT, features=None, width=None, dtype=None, outputs=("advice", "front_speed"),
               meta=True):
    """A model that passes its input's speed_limit column through as the advice and 0 as the
    front speed, declared as asked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = width or train.F
    dtype = dtype or TensorProto.FLOAT
    np_type = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    inits = [numpy_helper.from_array(np.array([min(train.IX["speed_limit"], width - 1)], np.int64), "col"),
             numpy_helper.from_array(np.array(0.0, np_type), "zero")]
    nodes = [helper.make_node("Gather", ["features", "col"], [outputs[0]], axis=1),
             helper.make_node("Mul", [outputs[0], "zero"], [outputs[1]])]
    graph = helper.make_graph(
        nodes, "twinlink_speed_advisor_fixture",
        [helper.make_tensor_value_info("features", dtype, ["N", width])],
        [helper.make_tensor_value_info(outputs[0], dtype, ["N", 1]), helper.make_tensor_value_info(outputs[1], dtype, ["N", 1])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="twinlink-fixture")
    model.ir_version = 8
    if meta:
        names = features or ts.FEATURES
        entries = {"twinlink.features": ",".join(names),
                   "twinlink.feature_ranges": ",".join("-1e9:1e9" for _ in names),
                   "twinlink.harmonize_decel": str(ts.HARMONIZE), "twinlink.arrive_margin": str(ts.MARGIN),
                   "twinlink.lookahead": str(ts.LOOKAHEAD)}
        if contract is not None:
            entries["twinlink.contract"] = contract
        for k, v in entries.items():
            e = model.metadata_props.add()
            e.key, e.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    from onnx import TensorProto

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "features.json"), "w") as f:
        json.dump(feature_fixture(), f, separators=(",", ":"))
    swapped = list(ts.FEATURES)
    i, j = swapped.index("jam_speed"), swapped.index("jam_speed_prev")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    tiny_model(os.path.join(OUT, "valid_tiny.onnx"))
    tiny_model(os.path.join(OUT, "wrong_contract.onnx"), contract="speed_advisor/2")
    tiny_model(os.path.join(OUT, "no_contract.onnx"), contract=None)
    tiny_model(os.path.join(OUT, "wrong_features.onnx"), features=swapped)
    tiny_model(os.path.join(OUT, "wrong_width.onnx"), width=train.F - 1, features=ts.FEATURES[:-1])
    tiny_model(os.path.join(OUT, "wrong_type.onnx"), dtype=TensorProto.DOUBLE)
    tiny_model(os.path.join(OUT, "wrong_outputs.onnx"), outputs=("speed", "front_speed"))
    for name in sorted(os.listdir(OUT)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


if __name__ == "__main__":
    main()
