#!/usr/bin/env python3
"""rclpy side of the twinlink interop exchange: the independent ROS 2 peer.

For each message type in the fixture, publishes the listed values on <ns>/from_py/<type>
(rclpy fills the messages, rcl serializes them) and subscribes to <ns>/from_rs/<type>, where
twin_interop_node (r2r) publishes the same values. Every received message is compared field by
field with the fixture (float32 fields at float32 precision). Signals completion on
<ns>/done/py, waits for <ns>/done/rs, writes a JSON report and exits 0 only if all matched.
"""
import argparse
import array
import importlib
import json
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String


def load_class(type_name):
    """twin_msgs/msg/X -> class; twin_msgs/srv/S_Request -> S.Request."""
    pkg, kind, name = type_name.split("/")
    module = importlib.import_module(f"{pkg}.{kind}")
    if kind == "srv":
        service, part = name.rsplit("_", 1)
        return getattr(getattr(module, service), part)
    return getattr(module, name)


def split_type(field_type):
    """Returns (element type, is_array) for rosidl field type strings."""
    if field_type.startswith("sequence<"):
        inner = field_type[len("sequence<"):-1].split(",")[0].strip()
        return inner, True
    if field_type.endswith("]"):
        return field_type[: field_type.index("[")], True
    return field_type, False


def element_class(element_type):
    pkg, name = element_type.split("/")
    return load_class(f"{pkg}/msg/{name}")


def convert_primitive(element_type, value):
    if element_type in ("float", "double"):
        return float(value)
    if element_type == "boolean":
        return bool(value)
    if element_type == "octet":
        return bytes([value])
    if element_type.startswith("string"):
        return value
    return int(value)


def json_field(value, field):
    """A field of a JSON value (named as in ROS)."""
    return value[field]


def fill(msg, value):
    """Sets every field of msg from the JSON object value."""
    for field, field_type in msg.get_fields_and_field_types().items():
        v = json_field(value, field)
        element, is_array = split_type(field_type)
        if "/" in element:
            cls = element_class(element)
            if is_array:
                items = []
                for item in v:
                    m = cls()
                    fill(m, item)
                    items.append(m)
                setattr(msg, field, items)
            else:
                fill(getattr(msg, field), v)
        elif is_array:
            if element in ("uint8",) and field_type.startswith("sequence"):
                setattr(msg, field, array.array("B", v))
            else:
                setattr(msg, field, [convert_primitive(element, x) for x in v])
        else:
            setattr(msg, field, convert_primitive(element, v))
    return msg


def compare(expected, actual, field_type, path, errors):
    element, is_array = split_type(field_type)
    if is_array:
        actual_items = list(actual)
        if len(actual_items) != len(expected):
            errors.append(f"{path}: length {len(actual_items)} != expected {len(expected)}")
            return
        for i, (e, a) in enumerate(zip(expected, actual_items)):
            compare(e, a, element, f"{path}[{i}]", errors)
        return
    if "/" in element:
        for field, sub_type in actual.get_fields_and_field_types().items():
            compare(json_field(expected, field), getattr(actual, field), sub_type, f"{path}.{field}", errors)
        return
    if element == "float":
        ok = np.float32(expected) == np.float32(actual)
    elif element == "double":
        ok = float(expected) == float(actual)
    elif element == "boolean":
        ok = bool(expected) == bool(actual)
    elif element == "octet":
        ok = int(expected) == (actual[0] if isinstance(actual, bytes) else int(actual))
    elif element.startswith("string"):
        ok = expected == actual
    else:
        ok = int(expected) == int(actual)
    if not ok:
        errors.append(f"{path}: got {actual!r}, expected {expected!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--namespace", default="/twin_interop")
    parser.add_argument("--report")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args()

    with open(args.fixture) as f:
        types = json.load(f)["types"]

    rclpy.init()
    node = rclpy.create_node("twin_interop_peer", namespace=args.namespace)
    progress = {}
    keep = []
    for type_name, values in types.items():
        cls = load_class(type_name)
        suffix = type_name.replace("/", "_")
        qos = QoSProfile(
            depth=max(1, len(values)),
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        state = {"expected": len(values), "received": 0, "matched": 0, "errors": []}
        progress[type_name] = state

        def on_message(msg, type_name=type_name, values=values, state=state):
            index = state["received"]
            state["received"] += 1
            if index >= len(values):
                state["errors"].append(f"unexpected extra message #{index}")
                return
            errors = []
            for field, field_type in msg.get_fields_and_field_types().items():
                compare(json_field(values[index], field), getattr(msg, field), field_type, f"#{index}.{field}", errors)
            if errors:
                state["errors"].extend(errors)
            else:
                state["matched"] += 1

        keep.append(node.create_subscription(cls, f"from_rs/{suffix}", on_message, qos))
        publisher = node.create_publisher(cls, f"from_py/{suffix}", qos)
        keep.append(publisher)
        for value in values:
            publisher.publish(fill(cls(), value))

    done_qos = QoSProfile(
        depth=1,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    done_pub = node.create_publisher(String, "done/py", done_qos)
    peer_done = []
    keep.append(node.create_subscription(String, "done/rs", lambda m: peer_done.append(m.data), done_qos))

    deadline = time.monotonic() + args.timeout_s
    said_done = False
    timed_out = False
    while True:
        rclpy.spin_once(node, timeout_sec=0.02)
        complete = all(p["received"] >= p["expected"] for p in progress.values())
        if complete and not said_done:
            done_pub.publish(String(data="done"))
            said_done = True
        if complete and peer_done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            break
    linger_until = time.monotonic() + 0.5
    while time.monotonic() < linger_until:
        rclpy.spin_once(node, timeout_sec=0.02)

    ok = not timed_out
    print(f"{'type':<40} {'received':>9} {'matched':>8}  field check (rclpy side)")
    for type_name, p in progress.items():
        good = not p["errors"] and p["matched"] == p["expected"]
        ok = ok and good
        print(f"{type_name:<40} {p['received']:>4}/{p['expected']:<4} {p['matched']:>8}  {'ok' if good else 'FAILED'}")
        for e in p["errors"][:5]:
            print(f"  {type_name}: {e}", file=sys.stderr)
    if timed_out:
        print(f"timed out after {args.timeout_s} s (peer done: {bool(peer_done)})", file=sys.stderr)
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"ok": ok, "timed_out": timed_out, "types": progress}, f, indent=2)
    node.destroy_node()
    rclpy.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
