#!/usr/bin/env python3
"""Independent scorer of the DR's multi-object tracker.

Reads what ``twin-dr-track-eval`` wrote (``DIR/<scenario>/gt.csv`` and
``DIR/<scenario>/hyp.csv``, columns ``frame,id,x,y,class``, map frame metres) and scores it
with py-motmetrics (CLEAR MOT and identity metrics), matching truth and tracks per frame by
Euclidean distance in the ground plane with a 2 m threshold
(``motmetrics.distances.norm2squared_matrix(..., max_d2=4)``).

Prints one JSON object on stdout, per scenario:

- ``mota``: 1 - (misses + false positives + id switches) / truth objects;
- ``idf1``: identity F1 (truth and track ids matched globally);
- ``id_switches``: times a truth object's matched track id changed (motmetrics' count);
- ``motp_m``: mean distance of matched pairs [m] (motmetrics' own ``motp`` is the mean of
  the *squared* distances with this metric, reported as ``motp_d2_m2``);
- ``rmse_m``: root mean square position error of matched pairs [m];
- ``class_accuracy``: fraction of matched pairs whose track class equals the truth class;
- counts: frames, truth rows, matches, misses, false positives, fragmentations, truth and
  track ids, mostly tracked / lost.

Usage: ``mot_score.py DIR [--scenario NAME ...] [--max-distance M]``. Without
``--scenario`` every subdirectory of DIR holding a gt.csv is scored. Exit status 2 on bad
input (missing or malformed files), with the reason on stderr.
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path

try:
    import numpy as np
    import motmetrics as mm
except ImportError as e:  # pragma: no cover - environment problem, said plainly
    sys.exit(
        f"mot_score.py: {e}; install the pinned evaluator with scripts/setup.sh "
        "(scripts/requirements-ros.txt) and run this with .deps/ros/bin/python"
    )

COLUMNS = ["frame", "id", "x", "y", "class"]


class InputError(Exception):
    pass


def read_rows(path):
    """Rows of a gt.csv or hyp.csv grouped by frame: {frame: [(id, x, y, class)]}."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    by_frame = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != COLUMNS:
            raise InputError(f"{path}: header {header}, expected {','.join(COLUMNS)}")
        for n, row in enumerate(reader, start=2):
            if len(row) != len(COLUMNS):
                raise InputError(f"{path}:{n}: {len(row)} columns, expected {len(COLUMNS)}")
            try:
                frame, oid = int(row[0]), int(row[1])
                x, y = float(row[2]), float(row[3])
            except ValueError as e:
                raise InputError(f"{path}:{n}: {e}") from None
            if frame < 0 or not (math.isfinite(x) and math.isfinite(y)):
                raise InputError(f"{path}:{n}: bad frame or position")
            by_frame.setdefault(frame, []).append((oid, x, y, row[4]))
    return by_frame


def finite(x):
    """A float for JSON, or None when undefined (e.g. precision without any track)."""
    x = float(x)
    return x if math.isfinite(x) else None


def score(directory, max_distance):
    gt = read_rows(directory / "gt.csv")
    hyp = read_rows(directory / "hyp.csv")
    frames = sorted(set(gt) | set(hyp))
    if not frames:
        raise InputError(f"{directory}: gt.csv and hyp.csv are both empty")
    acc = mm.MOTAccumulator(auto_id=False)
    gt_class, hyp_class = {}, {}
    for frame in range(frames[0], frames[-1] + 1):
        g = gt.get(frame, [])
        h = hyp.get(frame, [])
        gp = np.array([[x, y] for _, x, y, _ in g], dtype=float).reshape(-1, 2)
        hp = np.array([[x, y] for _, x, y, _ in h], dtype=float).reshape(-1, 2)
        d2 = mm.distances.norm2squared_matrix(gp, hp, max_d2=max_distance**2)
        acc.update([o for o, *_ in g], [o for o, *_ in h], d2, frameid=frame)
        for o, _, _, c in g:
            gt_class[(frame, o)] = c
        for o, _, _, c in h:
            hyp_class[(frame, o)] = c
    mh = mm.metrics.create()
    names = [
        "num_frames", "num_objects", "num_matches", "num_misses", "num_false_positives",
        "num_switches", "num_fragmentations", "mota", "motp", "idf1", "idp", "idr",
        "num_unique_objects", "mostly_tracked", "mostly_lost",
    ]
    s = mh.compute(acc, metrics=names, name="s").iloc[0]
    events = acc.mot_events
    matched = events[events["Type"].isin(["MATCH", "SWITCH"])]
    d2 = matched["D"].to_numpy(dtype=float)
    same_class = sum(
        gt_class.get((int(f), int(o))) == hyp_class.get((int(f), int(h)))
        for (f, _), o, h in zip(matched.index, matched["OId"], matched["HId"])
    )
    n = len(d2)
    track_ids = {o for rows in hyp.values() for o, *_ in rows}
    return {
        "mota": finite(s["mota"]),
        "idf1": finite(s["idf1"]),
        "id_switches": int(s["num_switches"]),
        "motp_m": float(np.sqrt(d2).mean()) if n else None,
        "rmse_m": float(np.sqrt(d2.mean())) if n else None,
        "motp_d2_m2": float(s["motp"]) if n else None,
        "class_accuracy": same_class / n if n else None,
        "idp": finite(s["idp"]),
        "idr": finite(s["idr"]),
        "frames": int(s["num_frames"]),
        "truth_rows": int(s["num_objects"]),
        "matches": int(s["num_matches"]),
        "misses": int(s["num_misses"]),
        "false_positives": int(s["num_false_positives"]),
        "fragmentations": int(s["num_fragmentations"]),
        "truth_ids": int(s["num_unique_objects"]),
        "track_ids": len(track_ids),
        "mostly_tracked": int(s["mostly_tracked"]),
        "mostly_lost": int(s["mostly_lost"]),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="output directory of twin-dr-track-eval")
    p.add_argument("--scenario", action="append", help="scenario to score (repeatable)")
    p.add_argument("--max-distance", type=float, default=2.0,
                   help="matching threshold in the ground plane [m] (default 2)")
    a = p.parse_args(argv)
    if not (a.max_distance > 0 and math.isfinite(a.max_distance)):
        p.error("--max-distance must be a positive number")
    if not a.dir.is_dir():
        print(f"mot_score.py: {a.dir}: not a directory", file=sys.stderr)
        return 2
    scenarios = a.scenario or sorted(d.name for d in a.dir.iterdir() if (d / "gt.csv").is_file())
    if not scenarios:
        print(f"mot_score.py: {a.dir}: no <scenario>/gt.csv inside", file=sys.stderr)
        return 2
    out = {
        "evaluator": {
            "package": "motmetrics",
            "version": mm.__version__,
            "numpy": np.__version__,
            "distance": "euclidean, ground plane",
            "max_distance_m": a.max_distance,
        },
        "scenarios": {},
    }
    try:
        for name in scenarios:
            out["scenarios"][name] = score(a.dir / name, a.max_distance)
    except InputError as e:
        print(f"mot_score.py: {e}", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout, indent=2, allow_nan=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
