#!/usr/bin/env python3
"""Trains and exports twinlink's camera detector (models/camera_detector/detector.onnx).

A small fully convolutional detector for the camera model of scene_render.py: input
float32 [1, 3, 192, 320] (RGB in [0, 1]; the 320 x 180 image letterboxed with 6 grey rows
above and below), output float32 [1, 240, 8]: for each cell of a 12 x 20 grid (stride 16)
the box center x, y and width, height in input pixels, the objectness and the
probabilities of the classes car, truck, pedestrian (YOLOv5 layout; the decoding is part
of the graph).

Training data are rendered scenes (scene_render.random_scene), seeded: the same command
gives the same model. Held-out scenes (another seed) measure precision, recall and AP@0.5
per class; the figures go to metrics.json and the README.

    python models/camera_detector/train.py            # about 30 min on 2 cores
    python models/camera_detector/train.py --quick    # a smoke run

Needs jax, onnx, onnxruntime and numpy:
    scripts/train-env.sh python models/camera_detector/train.py
installs them (pinned in requirements.txt) into .deps/train first.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scene_render as sr  # noqa: E402

IN_W, IN_H, PAD_Y = 320, 192, 6
STRIDE = 16
GRID_W, GRID_H = IN_W // STRIDE, IN_H // STRIDE
ANCHOR = 32.0
NUM_CLASSES = len(sr.CLASSES)
CHANNELS = [3, 16, 32, 48, 64, 64]
STRIDES = [2, 2, 2, 2, 1]


def make_dataset(count, seed):
    rng = np.random.default_rng(seed)
    images = np.zeros((count, sr.HEIGHT, sr.WIDTH, 3), np.uint8)
    labels = []
    for i in range(count):
        objects = sr.random_scene(rng)
        img, lab = sr.render(objects, rng)
        images[i] = img
        labels.append([(c, x1, y1 + PAD_Y, x2, y2 + PAD_Y) for c, x1, y1, x2, y2, _ in lab])
    return images, labels


def to_input(images):
    """uint8 N x 180 x 320 x 3 -> float32 N x 3 x 192 x 320 with grey letterbox rows."""
    x = np.full((len(images), 3, IN_H, IN_W), 0.5, np.float32)
    x[:, :, PAD_Y:PAD_Y + sr.HEIGHT, :] = images.transpose(0, 3, 1, 2) / 255.0
    return x


def targets(labels):
    """Per-cell training targets: mask, offsets (2), log sizes (2), class (one-hot)."""
    n = len(labels)
    mask = np.zeros((n, GRID_H, GRID_W), np.float32)
    off = np.zeros((n, GRID_H, GRID_W, 2), np.float32)
    size = np.zeros((n, GRID_H, GRID_W, 2), np.float32)
    cls = np.zeros((n, GRID_H, GRID_W, NUM_CLASSES), np.float32)
    for b, lab in enumerate(labels):
        # Larger boxes last, so that they win a shared cell.
        for c, x1, y1, x2, y2 in sorted(lab, key=lambda l: (l[3] - l[1]) * (l[4] - l[2])):
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            gx, gy = cx / STRIDE, cy / STRIDE
            ix, iy = int(gx), int(gy)
            cells = [(ix, iy)]
            # The two nearest neighbouring cells share the box (offsets up to 1.5 cells).
            cells.append((ix - 1 if gx - ix < 0.5 else ix + 1, iy))
            cells.append((ix, iy - 1 if gy - iy < 0.5 else iy + 1))
            for jx, jy in cells:
                if 0 <= jx < GRID_W and 0 <= jy < GRID_H:
                    mask[b, jy, jx] = 1.0
                    off[b, jy, jx] = (gx - jx, gy - jy)
                    size[b, jy, jx] = (math.log(max(w, 1.0) / ANCHOR), math.log(max(h, 1.0) / ANCHOR))
                    cls[b, jy, jx] = 0.0
                    cls[b, jy, jx, c] = 1.0
    return mask, off, size, cls


def init_params(rng):
    params = []
    for i, (cin, cout) in enumerate(zip(CHANNELS[:-1], CHANNELS[1:])):
        fan_in = cin * 9
        params.append((rng.normal(0, math.sqrt(2.0 / fan_in), (cout, cin, 3, 3)).astype(np.float32), np.zeros(cout, np.float32)))
    head_w = rng.normal(0, 0.01, (5 + NUM_CLASSES, CHANNELS[-1], 1, 1)).astype(np.float32)
    head_b = np.zeros(5 + NUM_CLASSES, np.float32)
    head_b[4] = -4.0  # objectness starts low: most cells are empty
    head_b[5:] = -2.0
    params.append((head_w, head_b))
    return params


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=5000, help="training scenes")
    parser.add_argument("--test", type=int, default=500, help="held-out scenes")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the pipeline")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.epochs = 128, 64, 1

    import jax
    import jax.numpy as jnp

    def forward(params, x):
        for (w, b), s in zip(params[:-1], STRIDES):
            x = jax.lax.conv_general_dilated(x, w, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
            x = jax.nn.relu(x + b[None, :, None, None])
        w, b = params[-1]
        x = jax.lax.conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return x + b[None, :, None, None]  # N x 8 x GRID_H x GRID_W, raw

    def loss_fn(params, x, mask, off, size, cls):
        raw = forward(params, x).transpose(0, 2, 3, 1)  # N x H x W x 8
        pred_off = jax.nn.sigmoid(raw[..., 0:2]) * 2.0 - 0.5
        pred_size = raw[..., 2:4]
        obj_logit = raw[..., 4]
        cls_logit = raw[..., 5:]
        pos = mask.sum() + 1.0
        box = (jnp.abs(pred_off - off).sum(-1) + jnp.abs(pred_size - size).sum(-1)) * mask
        bce = lambda logit, t: jnp.maximum(logit, 0) - logit * t + jnp.log1p(jnp.exp(-jnp.abs(logit)))
        # Objectness learns how well the cell's box fits its object (IoU, as YOLOv5 does),
        # so that a partial box from a neighbouring cell scores low and NMS keeps the good one.
        pw, tw = jnp.exp(pred_size) * (ANCHOR / STRIDE), jnp.exp(size) * (ANCHOR / STRIDE)
        lo = jnp.maximum(pred_off - pw / 2, off - tw / 2)
        hi = jnp.minimum(pred_off + pw / 2, off + tw / 2)
        inter = jnp.prod(jnp.clip(hi - lo, 0.0), axis=-1)
        iou = inter / (jnp.prod(pw, -1) + jnp.prod(tw, -1) - inter + 1e-9)
        obj_target = mask * jax.lax.stop_gradient(jnp.clip(iou, 0.0, 1.0))
        obj = bce(obj_logit, obj_target)
        obj = (obj * (1.0 + 4.0 * mask)).sum() / pos
        c = (bce(cls_logit, cls).sum(-1) * mask).sum() / pos
        return 2.0 * box.sum() / pos + obj + c

    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    train_images, train_labels = make_dataset(args.train, args.seed)
    test_images, test_labels = make_dataset(args.test, args.seed + 1)
    print(f"rendered {args.train} + {args.test} scenes in {time.time() - t0:.0f} s", flush=True)
    mask, off, size, cls = targets(train_labels)

    params = [tuple(jnp.asarray(p) for p in layer) for layer in init_params(rng)]
    steps_per_epoch = args.train // args.batch
    total = steps_per_epoch * args.epochs
    lr0 = 2e-3
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)

    @jax.jit
    def step(params, m, v, t, x, mask, off, size, cls):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, mask, off, size, cls)
        lr = lr0 * 0.5 * (1 + jnp.cos(jnp.pi * t / total))
        m = jax.tree_util.tree_map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
        v = jax.tree_util.tree_map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grads)
        mh = jax.tree_util.tree_map(lambda a: a / (1 - 0.9 ** (t + 1)), m)
        vh = jax.tree_util.tree_map(lambda a: a / (1 - 0.999 ** (t + 1)), v)
        params = jax.tree_util.tree_map(lambda p, a, b: p - lr * a / (jnp.sqrt(b) + 1e-8), params, mh, vh)
        return params, m, v, loss

    t = 0
    for epoch in range(args.epochs):
        order = rng.permutation(args.train)
        losses = []
        for k in range(steps_per_epoch):
            idx = order[k * args.batch:(k + 1) * args.batch]
            x = to_input(train_images[idx])
            bm, bo, bs, bc = mask[idx], off[idx].copy(), size[idx], cls[idx]
            # Horizontal flip of half the batch (road scenes are left-right symmetric).
            flip = rng.random(len(idx)) < 0.5
            x[flip] = x[flip][..., ::-1]
            bm = np.where(flip[:, None, None], bm[:, :, ::-1], bm)
            bc = np.where(flip[:, None, None, None], bc[:, :, ::-1], bc)
            bs = np.where(flip[:, None, None, None], bs[:, :, ::-1], bs)
            fo = bo[:, :, ::-1].copy()
            fo[..., 0] = 1.0 - fo[..., 0]
            bo = np.where(flip[:, None, None, None], fo, bo)
            params, m, v, loss = step(params, m, v, t, jnp.asarray(x), bm, bo, bs, bc)
            losses.append(float(loss))
            t += 1
        print(f"epoch {epoch + 1}/{args.epochs}: loss {np.mean(losses):.4f} ({time.time() - t0:.0f} s)", flush=True)

    params_np = [tuple(np.asarray(p) for p in layer) for layer in params]
    onnx_path = os.path.join(args.out, "detector.onnx")
    export_onnx(params_np, onnx_path)
    metrics = evaluate(onnx_path, test_images, test_labels)
    metrics.update({"train_scenes": args.train, "test_scenes": args.test, "epochs": args.epochs, "seed": args.seed,
                    "train_seconds": round(time.time() - t0)})
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))
    # The graph's decoding must agree with the training decoding.
    check_export(onnx_path, params_np, forward, test_images[:4])


def export_onnx(params, path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "images"
    for i, ((w, b), s) in enumerate(zip(params[:-1], STRIDES)):
        inits += [numpy_helper.from_array(w, f"conv{i}.w"), numpy_helper.from_array(b, f"conv{i}.b")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"], kernel_shape=[3, 3], strides=[s, s], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x = f"relu{i}"
    w, b = params[-1]
    inits += [numpy_helper.from_array(w, "head.w"), numpy_helper.from_array(b, "head.b")]
    nodes.append(helper.make_node("Conv", [x, "head.w", "head.b"], ["head"], kernel_shape=[1, 1]))
    cells = GRID_H * GRID_W
    gy, gx = np.mgrid[0:GRID_H, 0:GRID_W]
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)[None]  # 1 x cells x 2
    consts = {
        "shape": np.array([1, 5 + NUM_CLASSES, cells], np.int64), "grid": grid,
        "two": np.array(2.0, np.float32), "half": np.array(0.5, np.float32),
        "stride": np.array(float(STRIDE), np.float32), "anchor": np.array(ANCHOR, np.float32),
        "split": np.array([2, 2, 1, NUM_CLASSES], np.int64),
    }
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    nodes += [
        helper.make_node("Reshape", ["head", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["rows"], perm=[0, 2, 1]),
        helper.make_node("Split", ["rows", "split"], ["t_xy", "t_wh", "t_obj", "t_cls"], axis=2),
        helper.make_node("Sigmoid", ["t_xy"], ["s_xy"]),
        helper.make_node("Mul", ["s_xy", "two"], ["s_xy2"]),
        helper.make_node("Sub", ["s_xy2", "half"], ["off_xy"]),
        helper.make_node("Add", ["off_xy", "grid"], ["cell_xy"]),
        helper.make_node("Mul", ["cell_xy", "stride"], ["xy"]),
        helper.make_node("Exp", ["t_wh"], ["e_wh"]),
        helper.make_node("Mul", ["e_wh", "anchor"], ["wh"]),
        helper.make_node("Sigmoid", ["t_obj"], ["obj"]),
        helper.make_node("Sigmoid", ["t_cls"], ["cls"]),
        helper.make_node("Concat", ["xy", "wh", "obj", "cls"], ["detections"], axis=2),
    ]
    graph = helper.make_graph(
        nodes, "twinlink_camera_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, IN_H, IN_W])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, cells, 5 + NUM_CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="twinlink")
    model.ir_version = 8
    for k, v in {"twinlink.contract": "camera_detector/1", "classes": ",".join(sr.CLASSES),
                 "input": "images float32 [1,3,192,320] RGB 0..1 letterboxed",
                 "output": "detections float32 [1,240,8] cx,cy,w,h (input px), objectness, class probabilities"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, path)


def detect(session, images, threshold=0.4, iou=0.45):
    out = []
    x = to_input(images)
    for i in range(len(images)):
        rows = session.run(None, {"images": x[i:i + 1]})[0][0]
        score = rows[:, 4:5] * rows[:, 5:]
        cls = score.argmax(1)
        best = score.max(1)
        keep = best >= threshold
        boxes = [(float(best[k]), int(cls[k]), *xyxy(rows[k, :4])) for k in np.nonzero(keep)[0]]
        boxes.sort(reverse=True)
        kept = []
        for b in boxes:
            if all(k[1] != b[1] or box_iou(k[2:], b[2:]) <= iou for k in kept):
                kept.append(b)
        out.append(kept)
    return out


def xyxy(r):
    return (r[0] - r[2] / 2, r[1] - r[3] / 2, r[0] + r[2] / 2, r[1] + r[3] / 2)


def box_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def evaluate(path, images, labels):
    """AP@0.5 per class (all-point interpolation), and precision/recall at score 0.4."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    dets_low = detect(session, images, threshold=0.05)
    result = {"classes": {}}
    for c, name in enumerate(sr.CLASSES):
        scored, n_true = [], 0
        tp40 = fp40 = 0
        for dets, lab in zip(dets_low, labels):
            truth = [l[1:] for l in lab if l[0] == c]
            n_true += len(truth)
            used = set()
            for score, cls, *box in dets:
                if cls != c:
                    continue
                best, best_j = 0.0, -1
                for j, t in enumerate(truth):
                    if j not in used and box_iou(box, t) > best:
                        best, best_j = box_iou(box, t), j
                hit = best >= 0.5
                if hit:
                    used.add(best_j)
                scored.append((score, hit))
                if score >= 0.4:
                    tp40 += hit
                    fp40 += not hit
        scored.sort(reverse=True)
        tps = np.cumsum([h for _, h in scored]) if scored else np.zeros(0)
        precision = tps / np.arange(1, len(scored) + 1) if scored else np.zeros(0)
        recall = tps / max(n_true, 1) if scored else np.zeros(0)
        ap = 0.0
        prev_r = 0.0
        for k in range(len(scored)):
            ap += (recall[k] - prev_r) * precision[k:].max()
            prev_r = recall[k]
        result["classes"][name] = {
            "objects": n_true, "ap50": round(float(ap), 3),
            "precision_at_0.4": round(tp40 / max(tp40 + fp40, 1), 3), "recall_at_0.4": round(tp40 / max(n_true, 1), 3),
        }
    result["map50"] = round(float(np.mean([v["ap50"] for v in result["classes"].values()])), 3)
    return result


def check_export(path, params, forward, images):
    import onnxruntime as ort
    import jax.numpy as jnp

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = to_input(images)
    raw = np.asarray(forward([tuple(jnp.asarray(p) for p in l) for l in params], jnp.asarray(x)))
    for i in range(len(images)):
        rows = session.run(None, {"images": x[i:i + 1]})[0][0]
        r = raw[i].reshape(5 + NUM_CLASSES, -1).T
        gy, gx = np.mgrid[0:GRID_H, 0:GRID_W]
        sig = lambda a: 1 / (1 + np.exp(-a))
        xy = (sig(r[:, 0:2]) * 2 - 0.5 + np.stack([gx.ravel(), gy.ravel()], 1)) * STRIDE
        expect = np.concatenate([xy, np.exp(r[:, 2:4]) * ANCHOR, sig(r[:, 4:])], axis=1)
        assert np.allclose(rows, expect, rtol=1e-3, atol=1e-2), np.abs(rows - expect).max()
    print("export check: ONNX Runtime output equals the training decoding")


if __name__ == "__main__":
    main()
