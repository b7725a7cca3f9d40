#!/usr/bin/env python3
"""rclpy side of the vehicle-node tests: the independent publisher and subscriber.

Sensor data is generated here, with its own sensor models (numpy ray casting of boxes
standing on a flat road), so that the Rust nodes are checked against truth computed by a
separate implementation. Every mode prints one JSON report on stdout and exits 0; the
Rust test decides pass or fail.

Modes:
  lidar      publish LiDAR clouds of a known scene; match each summary to the truth.
  radar      publish radar detections (carla-ros-bridge and plain layouts) and odometry;
             match targets and their velocities over ground.
  bad_input  publish malformed clouds, then a good one; report what came back and the
             node's /diagnostics counters.
  camera     publish rendered camera images and CameraInfo of known scenes; match objects.
  bad_camera publish an image before CameraInfo, an unsupported encoding and a good
             image; report the node's /diagnostics counters.
  link       publish odometry and summaries at 20 Hz; record the recommendations.
  drive      all sensors of a vehicle in traffic at 10 Hz (camera 5 Hz), for the demo;
             report raw and summary bytes and what the twin sent back.
  graph      wait until the given nodes (and topics) are on the graph; report topics and nodes.
"""
import argparse
import json
import sys
import time

import os

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from twin_msgs.msg import DetectedObject, PerceptionSummary, Recommendation, TwinStatus

# The camera model of the project's detector (models/camera_detector/scene_render.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "camera_detector"))

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Boxes (x, y, yaw, length, width, height, class, vx, vy) in base_link, on the ground (z = 0).
LIDAR_SCENE = [
    (22.0, 0.2, 0.0, 4.6, 1.9, 1.5, DetectedObject.CLASS_CAR, 0.0, 0.0),
    (14.0, -3.6, 0.04, 4.4, 1.8, 1.45, DetectedObject.CLASS_CAR, 0.0, 0.0),
    (26.0, 3.7, 0.0, 10.0, 2.5, 3.4, DetectedObject.CLASS_TRUCK, 0.0, 0.0),
    (-16.0, -0.3, 0.0, 4.5, 1.85, 1.5, DetectedObject.CLASS_CAR, 0.0, 0.0),
    (9.0, 8.5, 0.0, 0.5, 0.5, 1.8, DetectedObject.CLASS_PEDESTRIAN, 0.0, 0.0),
]


def box_hits(origin, dirs, box, ground=0.0):
    """Distance along each ray (dirs: N x 3) to the box, inf where it misses (slab test)."""
    x, y, yaw, length, width, height = box[:6]
    c, s = np.cos(yaw), np.sin(yaw)
    o = np.array([origin[0] - x, origin[1] - y, origin[2] - ground])
    o = np.array([o[0] * c + o[1] * s, -o[0] * s + o[1] * c, o[2]])
    d = np.stack([dirs[:, 0] * c + dirs[:, 1] * s, -dirs[:, 0] * s + dirs[:, 1] * c, dirs[:, 2]], axis=1)
    lo = np.array([-length / 2, -width / 2, 0.0])
    hi = np.array([length / 2, width / 2, height])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - o) / d
        t2 = (hi - o) / d
    tmin = np.nanmax(np.where(np.isnan(np.minimum(t1, t2)), -np.inf, np.minimum(t1, t2)), axis=1)
    tmax = np.nanmin(np.where(np.isnan(np.maximum(t1, t2)), np.inf, np.maximum(t1, t2)), axis=1)
    hit = (tmax >= tmin) & (tmin > 0)
    return np.where(hit, tmin, np.inf)


def lidar_scan(scene, height=1.8, beams=32, columns=1024, noise=0.02, rng=None):
    """A spinning LiDAR at `height`: returns N x 4 float32 (x, y, z, intensity) in its frame."""
    elevations = np.radians(np.linspace(-25.0, 3.0, beams))
    azimuths = np.linspace(-np.pi, np.pi, columns, endpoint=False)
    el, az = np.meshgrid(elevations, azimuths, indexing="ij")
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)
    origin = np.array([0.0, 0.0, height])
    with np.errstate(divide="ignore"):
        t = np.where(dirs[:, 2] < 0, -height / dirs[:, 2], np.inf)
    intensity = np.full(len(dirs), 5.0)
    for box in scene:
        tb = box_hits(origin, dirs, box)
        closer = tb < t
        t = np.where(closer, tb, t)
        intensity = np.where(closer, 60.0, intensity)
    keep = t < 120.0
    r = t[keep] + rng.normal(0.0, noise, keep.sum())
    pts = dirs[keep] * r[:, None]
    return np.column_stack([pts, intensity[keep]]).astype(np.float32)


def make_cloud(node, frame, fields, rows, stamp):
    """PointCloud2 of float32 `fields` (name list) from an N x len(fields) array."""
    msg = PointCloud2()
    msg.header.stamp = stamp
    msg.header.frame_id = frame
    msg.height = 1
    msg.width = len(rows)
    msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate(fields)]
    msg.is_bigendian = False
    msg.point_step = 4 * len(fields)
    msg.row_step = msg.point_step * len(rows)
    msg.data = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
    msg.is_dense = True
    return msg


def stamp_key(stamp):
    return (stamp.sec, stamp.nanosec)


def match(objects, truth, gate):
    """Greedy nearest matching in the ground plane: (pairs, unmatched objects, missed truth)."""
    pairs, used = [], set()
    candidates = sorted(
        (np.hypot(o.position.x - t[0], o.position.y - t[1]), i, j)
        for i, o in enumerate(objects) for j, t in enumerate(truth))
    taken_o = set()
    for d, i, j in candidates:
        if d <= gate and i not in taken_o and j not in used:
            taken_o.add(i)
            used.add(j)
            pairs.append((i, j, d))
    return pairs, [i for i in range(len(objects)) if i not in taken_o], [j for j in range(len(truth)) if j not in used]


def matched(node, got, truths, sent, gate):
    """Waits for the summaries of every sent frame, then yields (summary, truth, pairs,
    phantoms, missed) for each summary whose stamp is a sent frame's."""
    spin_for(node, 5.0, lambda: len(got) >= sent)
    for key, summary in sorted(got.items()):
        truth = truths.get(key)
        if truth is not None:
            yield (summary, truth, *match(summary.objects, truth, gate))


def summaries_by_stamp(node, sensor):
    """Summaries of `sensor` received on perception/objects/<sensor>, keyed by stamp."""
    got = {}
    node.create_subscription(PerceptionSummary, f"perception/objects/{sensor}",
                             lambda m: got.__setitem__(stamp_key(m.header.stamp), m), RELIABLE)
    return got


def wait_subscribed(node, *publishers):
    """Waits (up to 30 s) until the node under test subscribes to every publisher."""
    spin_for(node, 30.0, lambda: all(p.get_subscription_count() > 0 for p in publishers))


def watch_diagnostics(node, name_suffix):
    """The newest /diagnostics values of the status whose name ends with name_suffix."""
    values = {}

    def on_diag(msg):
        for status in msg.status:
            if status.name.endswith(name_suffix):
                values.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, RELIABLE)
    return values


def spin_for(node, seconds, until=None):
    end = time.time() + seconds
    while time.time() < end:
        rclpy.spin_once(node, timeout_sec=0.02)
        if until is not None and until():
            return True
    return until() if until is not None else True


def run_lidar(node, args):
    rng = np.random.default_rng(7)
    pub = node.create_publisher(PointCloud2, "lidar/points", qos_profile_sensor_data)
    got = summaries_by_stamp(node, "lidar")
    wait_subscribed(node, pub)
    truths, sent = {}, 0
    for frame in range(args.frames):
        scene = [(x + 0.5 * frame, y, yaw, l, w, h, c, vx, vy) for (x, y, yaw, l, w, h, c, vx, vy) in LIDAR_SCENE]
        rows = lidar_scan(scene, rng=rng)
        stamp = node.get_clock().now().to_msg()
        truths[stamp_key(stamp)] = scene
        pub.publish(make_cloud(node, "lidar_top", ["x", "y", "z", "intensity"], rows, stamp))
        sent += 1
        spin_for(node, 0.1)
    frames = []
    for summary, truth, pairs, phantoms, missed in matched(node, got, truths, sent, 1.5):
        frames.append({
            "objects": len(summary.objects),
            "max_error_m": max((d for _, _, d in pairs), default=0.0),
            "errors_m": {str(j): round(d, 3) for _, j, d in pairs},
            "phantoms": [[summary.objects[i].position.x, summary.objects[i].position.y] for i in phantoms],
            "missed": [truth[j][:2] for j in missed],
            "class_errors": sum(1 for i, j, _ in pairs if summary.objects[i].classification != truth[j][6]),
            "frame_id": summary.header.frame_id,
            "raw_bytes": summary.raw_bytes,
            "processing_time": summary.processing_time,
        })
    return {"sent": sent, "received": len(got), "frames": frames}


RADAR_SCENE = [
    (40.0, 0.0, 0.0, 4.5, 1.8, 1.5, DetectedObject.CLASS_CAR, 14.0, 0.0),
    (25.0, 3.5, 0.0, 4.5, 1.8, 1.5, DetectedObject.CLASS_CAR, 27.0, 0.0),
    (70.0, -3.5, 0.0, 4.5, 1.8, 1.5, DetectedObject.CLASS_CAR, 0.0, 0.0),
]


def radar_scan(scene, ego_vx, mount=(3.7, 0.0, 0.5), fov=np.radians(30.0), rays=90, rng=None, carla=True):
    az = np.linspace(-fov / 2, fov / 2, rays)
    dirs = np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], axis=1)
    origin = np.array(mount)
    t = np.full(rays, np.inf)
    owner = np.full(rays, -1)
    for k, box in enumerate(scene):
        tb = box_hits(origin, dirs, box)
        closer = tb < t
        t = np.where(closer, tb, t)
        owner = np.where(closer, k, owner)
    rows = []
    for i in np.nonzero(np.isfinite(t))[0]:
        box = scene[owner[i]]
        rel = np.array([box[7] - ego_vx, box[8]])
        range_rate = float(rel @ dirs[i, :2]) + rng.normal(0.0, 0.1)
        x, y = t[i] * np.cos(az[i]), t[i] * np.sin(az[i])
        if carla:
            rows.append([x, y, 0.0, t[i], range_rate, az[i], 0.0])
        else:
            rows.append([12.5, x, y, 0.0, range_rate])
    return rows


def run_radar(node, args):
    rng = np.random.default_rng(11)
    pub = node.create_publisher(PointCloud2, "radar/points", qos_profile_sensor_data)
    odom_pub = node.create_publisher(Odometry, "odom", qos_profile_sensor_data)
    got = summaries_by_stamp(node, "radar")
    wait_subscribed(node, pub, odom_pub)
    ego_vx = 20.0
    truths, sent = {}, 0
    for frame in range(args.frames):
        odom = Odometry()
        odom.header.stamp = node.get_clock().now().to_msg()
        odom.header.frame_id = "map"
        odom.child_frame_id = "base_link"
        odom.pose.pose.orientation.w = 1.0
        odom.twist.twist.linear.x = ego_vx
        odom_pub.publish(odom)
        spin_for(node, 0.03)
        carla = frame % 2 == 0
        rows = radar_scan(RADAR_SCENE, ego_vx, rng=rng, carla=carla)
        fields = ["x", "y", "z", "Range", "Velocity", "AzimuthAngle", "ElevationAngle"] if carla else ["rcs", "x", "y", "z", "radial_velocity"]
        stamp = node.get_clock().now().to_msg()
        # Truth: the center of each target's face nearest the radar, and its velocity.
        truths[stamp_key(stamp)] = [(b[0] - b[3] / 2, b[1], 0, 0, 0, 0, 0, b[7], b[8], "carla" if carla else "plain") for b in RADAR_SCENE]
        pub.publish(make_cloud(node, "radar_front", fields, np.array(rows, dtype=np.float32), stamp))
        sent += 1
        spin_for(node, 0.07)
    frames = []
    for summary, truth, pairs, phantoms, missed in matched(node, got, truths, sent, 3.0):
        frames.append({
            "layout": truth[0][9],
            "objects": len(summary.objects),
            "position_errors_m": [round(d, 3) for _, _, d in pairs],
            "velocity_errors_mps": [round(float(np.hypot(summary.objects[i].velocity.x - truth[j][7], summary.objects[i].velocity.y - truth[j][8])), 3) for i, j, _ in pairs],
            "has_velocity": all(summary.objects[i].has_velocity for i, _, _ in pairs),
            "phantoms": len(phantoms),
            "missed": len(missed),
        })
    return {"sent": sent, "received": len(got), "frames": frames}


def run_bad_camera(node, args):
    import scene_render as sr

    rng = np.random.default_rng(9)
    image_pub = node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, "camera/camera_info", qos_profile_sensor_data)
    diags = watch_diagnostics(node, "camera_summarizer")
    wait_subscribed(node, image_pub)
    rgb, _ = sr.render(sr.random_scene(rng), rng)
    stamp = node.get_clock().now().to_msg()
    # An image before any CameraInfo.
    img, info = camera_messages(node, rgb, stamp)
    image_pub.publish(img)
    spin_for(node, 0.2)
    info_pub.publish(info)
    spin_for(node, 0.2)
    # An encoding the node does not read.
    odd, _ = camera_messages(node, rgb, stamp, encoding="yuv422")
    image_pub.publish(odd)
    spin_for(node, 0.2)
    # A good image (refused as model_missing when the node has no model).
    image_pub.publish(img)
    spin_for(node, 2.5)
    return {"diagnostics": diags}


def run_bad_input(node, args):
    rng = np.random.default_rng(3)
    pub = node.create_publisher(PointCloud2, "lidar/points", qos_profile_sensor_data)
    got = []
    node.create_subscription(PerceptionSummary, "perception/objects/lidar", lambda m: got.append(m), RELIABLE)
    diags = watch_diagnostics(node, "lidar_summarizer")
    wait_subscribed(node, pub)
    stamp = node.get_clock().now().to_msg()
    good = lidar_scan(LIDAR_SCENE[:2], rng=rng, beams=16, columns=512)
    bad = []
    # x declared as uint16 (wrong field size for a coordinate).
    m = make_cloud(node, "lidar_top", ["x", "y", "z", "intensity"], good, stamp)
    m.fields[0].datatype = PointField.UINT16
    bad.append(("wrong_datatype", m))
    # Data shorter than row_step says.
    m = make_cloud(node, "lidar_top", ["x", "y", "z", "intensity"], good, stamp)
    m.data = bytes(m.data)[: len(m.data) // 2]
    bad.append(("data_size", m))
    # A field that reaches past point_step.
    m = make_cloud(node, "lidar_top", ["x", "y", "z", "intensity"], good, stamp)
    m.fields[3].offset = 14
    bad.append(("field_outside_point", m))
    # More points than max_points (the test sets max_points low).
    bad.append(("too_many_points", make_cloud(node, "lidar_top", ["x", "y", "z"], np.zeros((args.oversized, 3), np.float32), stamp)))
    # No z field.
    bad.append(("missing_field", make_cloud(node, "lidar_top", ["x", "y", "intensity"], good[:, [0, 1, 3]], stamp)))
    for _, msg in bad:
        pub.publish(msg)
        spin_for(node, 0.1)
    # Accepted, not refused: every coordinate NaN, and an empty cloud.
    nan_rows = np.full((100, 4), np.nan, np.float32)
    pub.publish(make_cloud(node, "lidar_top", ["x", "y", "z", "intensity"], nan_rows, stamp))
    spin_for(node, 0.1)
    pub.publish(make_cloud(node, "lidar_top", ["x", "y", "z", "intensity"], np.zeros((0, 4), np.float32), stamp))
    spin_for(node, 0.1)
    after = len(got)
    pub.publish(make_cloud(node, "lidar_top", ["x", "y", "z", "intensity"], good, node.get_clock().now().to_msg()))
    spin_for(node, 5.0, lambda: len(got) > after)
    spin_for(node, 2.5)
    return {
        "summaries": len(got),
        "objects_after_bad_input": len(got[-1].objects) if len(got) > after else -1,
        "last_objects": [[o.position.x, o.position.y, o.dimensions.x, o.dimensions.y, o.dimensions.z, o.classification] for o in got[-1].objects] if got else [],
        "empty_summaries": sum(1 for s in got if not s.objects),
        "sent_bad": [k for k, _ in bad],
        "diagnostics": diags,
    }


def camera_messages(node, rgb, stamp, encoding="rgb8"):
    import scene_render as sr

    info = CameraInfo()
    info.header.stamp = stamp
    info.header.frame_id = "camera_front_optical"
    for key, value in sr.camera_info().items():
        setattr(info, key, value)
    img = Image()
    img.header = info.header
    img.height, img.width = rgb.shape[:2]
    img.encoding = encoding
    img.step = rgb.shape[1] * (rgb.shape[2] if rgb.ndim == 3 else 1)
    img.data = rgb.tobytes()
    return img, info


CAMERA_SCENES = [
    [("car", 14.0, 0.1, 4.5), ("car", 24.0, -3.5, 4.3), ("truck", 30.0, 3.6, 9.0)],
    [("car", 10.0, -3.4, 4.6), ("car", 20.0, 0.2, 4.4), ("pedestrian", 12.0, 7.5, 0.5)],
    [("car", 18.0, 3.5, 4.5), ("truck", 22.0, -3.6, 10.0), ("car", 28.0, 0.0, 4.6)],
]


def run_camera(node, args):
    import scene_render as sr

    rng = np.random.default_rng(5)
    image_pub = node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, "camera/camera_info", qos_profile_sensor_data)
    got = summaries_by_stamp(node, "camera")
    wait_subscribed(node, image_pub, info_pub)
    truths, sent = {}, 0
    for frame in range(args.frames):
        scene = []
        for kind, x, y, length in CAMERA_SCENES[frame % len(CAMERA_SCENES)]:
            o = sr.random_object(rng, kind, 7.0)
            o.update({"x": x, "y": y, "yaw": 0.0, "length": length})
            scene.append(o)
        rgb, labels = sr.render(scene, rng)
        visible = {l[5] for l in labels}
        stamp = node.get_clock().now().to_msg()
        truths[stamp_key(stamp)] = [(o["x"], o["y"], o["class"]) for i, o in enumerate(scene) if i in visible]
        img, info = camera_messages(node, rgb, stamp)
        info_pub.publish(info)
        spin_for(node, 0.02)
        image_pub.publish(img)
        sent += 1
        spin_for(node, 0.3)
    frames = []
    for summary, truth, pairs, phantoms, missed in matched(node, got, truths, sent, 6.0):
        names = {DetectedObject.CLASS_CAR: "car", DetectedObject.CLASS_TRUCK: "truck", DetectedObject.CLASS_PEDESTRIAN: "pedestrian"}
        frames.append({
            "objects": len(summary.objects),
            "truth": len(truth),
            "errors": [{"range_m": round(float(np.hypot(truth[j][0], truth[j][1])), 2), "error_m": round(d, 2),
                        "class_ok": names.get(summary.objects[i].classification) == truth[j][2]} for i, j, d in pairs],
            "phantoms": len(phantoms),
            "phantom_objects": [[round(summary.objects[i].position.x, 1), round(summary.objects[i].position.y, 1), summary.objects[i].classification, round(summary.objects[i].existence_probability, 2)] for i in phantoms],
            "missed": [truth[j] for j in missed],
            "raw_bytes": summary.raw_bytes,
        })
    return {"sent": sent, "received": len(got), "frames": frames}


def call_services(node):
    """Calls twin/get_status, then twin/set_sharing_policy with a valid and an invalid policy."""
    from twin_msgs.msg import SharedObservation, SharingPolicy, SharingRule
    from twin_msgs.srv import GetTwinStatus, SetSharingPolicy

    def call(client, request):
        if not client.wait_for_service(timeout_sec=10.0):
            return None
        future = client.call_async(request)
        spin_for(node, 10.0, future.done)
        return future.result()

    status = call(node.create_client(GetTwinStatus, "twin/get_status"), GetTwinStatus.Request())
    set_policy = node.create_client(SetSharingPolicy, "twin/set_sharing_policy")
    rule = SharingRule(category=SharedObservation.CATEGORY_HAZARDS, audience=SharingRule.AUDIENCE_ANY_TWIN,
                       spatial_precision=25.0, max_age=60.0)
    good = call(set_policy, SetSharingPolicy.Request(policy=SharingPolicy(rules=[rule])))
    bad = call(set_policy, SetSharingPolicy.Request(policy=SharingPolicy(rules=[rule, rule])))
    return {
        "status_vehicle": None if status is None else status.status.vehicle_id,
        "status_link_state": None if status is None else status.status.link_state,
        "good_policy": None if good is None else {"accepted": good.accepted, "version": good.version},
        "bad_policy": None if bad is None else {"accepted": bad.accepted, "message": bad.message, "version": bad.version},
    }


def run_link(node, args):
    odom_pub = node.create_publisher(Odometry, "odom", qos_profile_sensor_data)
    sum_pub = node.create_publisher(PerceptionSummary, "perception/objects/lidar", RELIABLE)
    recs, statuses = [], []
    node.create_subscription(Recommendation, "twin/recommendation", lambda m: recs.append(m), LATCHED)
    node.create_subscription(TwinStatus, "twin/status", lambda m: statuses.append(m), LATCHED)
    wait_subscribed(node, odom_pub, sum_pub)
    end = time.time() + args.seconds
    k = 0
    while time.time() < end:
        now = node.get_clock().now().to_msg()
        odom = Odometry()
        odom.header.stamp = now
        odom.header.frame_id = "map"
        odom.child_frame_id = "base_link"
        odom.pose.pose.position.x = 100.0 + k
        odom.pose.pose.position.y = -2.0
        odom.pose.pose.orientation.w = 1.0
        odom.twist.twist.linear.x = 21.5
        odom_pub.publish(odom)
        s = PerceptionSummary()
        s.header.stamp = now
        s.header.frame_id = "base_link"
        s.sensor_id = "lidar_top"
        s.sensor_kind = PerceptionSummary.SENSOR_LIDAR
        s.raw_bytes = 2_000_000
        for i in range(3):
            o = DetectedObject()
            o.id = i + 1
            o.classification = DetectedObject.CLASS_CAR
            o.class_confidence = 0.8
            o.existence_probability = 0.9
            o.position.x = 20.0 + 10.0 * i
            o.position.y = 0.5 * i
            o.dimensions.x, o.dimensions.y, o.dimensions.z = 4.5, 1.8, 1.5
            s.objects.append(o)
        sum_pub.publish(s)
        k += 1
        spin_for(node, 0.05)
    spin_for(node, 1.0)
    services = call_services(node)
    last = recs[-1] if recs else None
    return {
        "services": services,
        "published": k,
        "recommendations": len(recs),
        "last": None if last is None else {
            "vehicle_id": last.vehicle_id,
            "sequence": last.sequence,
            "target_speed": last.target_speed,
            "target_lane": last.target_lane,
            "lane_change": last.lane_change,
            "reason_code": last.reason_code,
            "reason": last.reason,
            "horizon": [[p.time_offset, p.speed, p.lane_index] for p in last.horizon],
        },
        "status": None if not statuses else {
            "link_state": statuses[-1].link_state,
            "uplink_bytes": statuses[-1].uplink_bytes,
            "rtt": statuses[-1].rtt,
            "vehicle_id": statuses[-1].vehicle_id,
        },
    }


def run_drive(node, args):
    """All sensors of a vehicle driving at 20 m/s behind slower traffic, for the demo."""
    import scene_render as sr
    from rclpy.serialization import serialize_message

    rng = np.random.default_rng(21)
    lidar_pub = node.create_publisher(PointCloud2, "lidar/points", qos_profile_sensor_data)
    radar_pub = node.create_publisher(PointCloud2, "radar/points", qos_profile_sensor_data)
    image_pub = node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, "camera/camera_info", qos_profile_sensor_data)
    odom_pub = node.create_publisher(Odometry, "odom", qos_profile_sensor_data)
    summaries = {"lidar": [], "radar": [], "camera": []}
    for sensor in summaries:
        node.create_subscription(PerceptionSummary, f"perception/objects/{sensor}",
                                 lambda m, s=sensor: summaries[s].append((len(serialize_message(m)), m.processing_time, len(m.objects))), RELIABLE)
    recs, statuses = [], []
    node.create_subscription(Recommendation, "twin/recommendation", lambda m: recs.append(m), LATCHED)
    node.create_subscription(TwinStatus, "twin/status", lambda m: statuses.append(m), LATCHED)
    wait_subscribed(node, lidar_pub, radar_pub, image_pub, info_pub, odom_pub)
    raw = {"lidar": 0, "radar": 0, "camera": 0}
    ego_x, ego_v = 0.0, 20.0
    # Traffic ahead: (x in map, lane y, speed).
    traffic = [(45.0, 0.0, 18.0), (30.0, 3.5, 24.0), (70.0, -3.5, 17.0), (-20.0, 0.0, 21.0)]
    t0 = time.time()
    k = 0
    while time.time() - t0 < args.seconds:
        t = k * 0.1
        ego_x = ego_v * t
        stamp = node.get_clock().now().to_msg()
        odom = Odometry()
        odom.header.stamp = stamp
        odom.header.frame_id = "map"
        odom.child_frame_id = "base_link"
        odom.pose.pose.position.x = ego_x
        odom.pose.pose.orientation.w = 1.0
        odom.twist.twist.linear.x = ego_v
        odom_pub.publish(odom)
        boxes = [(x0 + v * t - ego_x, y, 0.0, 4.5, 1.85, 1.5, DetectedObject.CLASS_CAR, v, 0.0) for x0, y, v in traffic]
        rows = lidar_scan(boxes, rng=rng)
        cloud = make_cloud(node, "lidar_top", ["x", "y", "z", "intensity"], rows, stamp)
        raw["lidar"] += len(cloud.data)
        lidar_pub.publish(cloud)
        det = np.array(radar_scan(boxes, ego_v, rng=rng), dtype=np.float32).reshape(-1, 7)
        rc = make_cloud(node, "radar_front", ["x", "y", "z", "Range", "Velocity", "AzimuthAngle", "ElevationAngle"], det, stamp)
        raw["radar"] += len(rc.data)
        radar_pub.publish(rc)
        if k % 2 == 0:
            scene = []
            for bx, by, *_ in boxes:
                o = sr.random_object(np.random.default_rng(int(abs(by) * 10)), "car", 7.0)
                o.update({"x": bx, "y": by, "yaw": 0.0, "length": 4.5})
                scene.append(o)
            rgb, _ = sr.render(scene, rng)
            img, info = camera_messages(node, rgb, stamp)
            raw["camera"] += len(img.data)
            info_pub.publish(info)
            image_pub.publish(img)
        k += 1
        next_tick = t0 + k * 0.1
        spin_for(node, max(0.0, next_tick - time.time()))
    spin_for(node, 1.5)
    last = recs[-1] if recs else None
    status = statuses[-1] if statuses else None
    return {
        "seconds": args.seconds,
        "frames": k,
        "raw_bytes": raw,
        "summaries": {s: len(v) for s, v in summaries.items()},
        "summary_bytes": {s: sum(b for b, _, _ in v) for s, v in summaries.items()},
        "processing_ms_median": {s: round(float(np.median([p for _, p, _ in v])) * 1e3, 2) if v else None for s, v in summaries.items()},
        "objects_mean": {s: round(float(np.mean([n for _, _, n in v])), 1) if v else None for s, v in summaries.items()},
        "recommendations": len(recs),
        "last": None if last is None else {"target_speed": last.target_speed, "reason": last.reason, "sequence": last.sequence},
        "status": None if status is None else {
            "link_state": status.link_state, "uplink_bytes": status.uplink_bytes, "downlink_bytes": status.downlink_bytes,
            "rtt_ms": status.rtt * 1e3, "rejected": status.rejected_messages,
        },
    }


def run_graph(node, args):
    # Nodes show up on the graph before all their publishers and subscriptions do: wait
    # for both the nodes and the topics asked for.
    want = set(filter(None, args.nodes.split(",")))
    want_topics = set(filter(None, args.topics.split(",")))

    def present():
        names = {ns.rstrip("/") + "/" + n for n, ns in node.get_node_names_and_namespaces()}
        topics = {t for t, _ in node.get_topic_names_and_types()}
        return want <= names and want_topics <= topics

    ok = spin_for(node, args.seconds, present)
    names = sorted(ns.rstrip("/") + "/" + n for n, ns in node.get_node_names_and_namespaces())
    topics = sorted(t for t, _ in node.get_topic_names_and_types())
    return {"all_present": ok, "nodes": names, "topics": topics}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["lidar", "radar", "camera", "bad_input", "bad_camera", "link", "drive", "graph"])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--oversized", type=int, default=5000)
    parser.add_argument("--nodes", default="")
    parser.add_argument("--topics", default="", help="graph: topics to wait for as well, comma-separated")
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("vehicle_peer", namespace=args.namespace)
    try:
        report = {
            "lidar": run_lidar, "radar": run_radar, "camera": run_camera, "bad_input": run_bad_input, "bad_camera": run_bad_camera,
            "link": run_link, "drive": run_drive, "graph": run_graph,
        }[args.mode](node, args)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
