"""Synthetic road scenes seen by a forward camera, with exact 2-D labels.

The camera model twinlink's simulator and tests use: a pinhole camera (no distortion)
mounted at (x, y, z) = (1.5, 0, 1.4) m in base_link, looking along +x, 320 x 180 pixels,
fx = fy = 200 px (77 degree horizontal field of view). The world is a flat multi-lane road
(asphalt, white lane markings, grass beyond the shoulders, sky above the horizon) with
cuboid vehicles and pedestrians drawn with flat shading, painted far to near. Labels are the
image-space extents of each object's cuboid, clipped to the image, for objects of which at
least 40 % of the drawn pixels stay visible.

Only numpy is needed, so the same renderer runs in training (models/camera_detector/train.py)
and in the rclpy test peer.
"""
import numpy as np

WIDTH, HEIGHT = 320, 180
FX = FY = 200.0
CX, CY = WIDTH / 2.0, HEIGHT / 2.0
MOUNT = np.array([1.5, 0.0, 1.4])
CLASSES = ["car", "truck", "pedestrian"]
SIZES = {  # length, width, height ranges [m]
    "car": ((4.0, 4.9), (1.7, 1.95), (1.35, 1.6)),
    "truck": ((7.0, 12.0), (2.4, 2.6), (3.0, 3.8)),
    "pedestrian": ((0.4, 0.6), (0.4, 0.6), (1.55, 1.9)),
}


def camera_info():
    """K, D and size of the camera, as sensor_msgs/CameraInfo fields."""
    return {
        "width": WIDTH, "height": HEIGHT, "distortion_model": "plumb_bob", "d": [0.0] * 5,
        "k": [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0],
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [FX, 0.0, CX, 0.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0],
    }


def project(points):
    """base_link points (N x 3) -> pixels (N x 2) and depth along x (N)."""
    rel = points - MOUNT
    depth = rel[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = CX + FX * (-rel[:, 1] / depth)
        v = CY + FY * (-rel[:, 2] / depth)
    return np.stack([u, v], axis=1), depth


def cuboid(obj):
    """8 corners of an object's box standing on the ground (x, y, yaw, length, width, height)."""
    x, y, yaw, length, width, height = obj["x"], obj["y"], obj["yaw"], obj["length"], obj["width"], obj["height"]
    c, s = np.cos(yaw), np.sin(yaw)
    corners = []
    for dz in (0.0, height):
        for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            lx, ly = dx * length / 2, dy * width / 2
            corners.append([x + lx * c - ly * s, y + lx * s + ly * c, dz])
    return np.array(corners)


FACES = [(0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7)]


def fill_polygon(mask_shape, poly):
    """Boolean mask of a convex polygon (K x 2 pixel coordinates)."""
    h, w = mask_shape
    x0, y0 = np.floor(poly.min(axis=0)).astype(int)
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    mask = np.zeros(mask_shape, bool)
    if x1 < x0 or y1 < y0:
        return mask
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    px, py = xs + 0.5, ys + 0.5
    inside_pos = np.ones(px.shape, bool)
    inside_neg = np.ones(px.shape, bool)
    for i in range(len(poly)):
        ax, ay = poly[i]
        bx, by = poly[(i + 1) % len(poly)]
        cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        inside_pos &= cross >= 0
        inside_neg &= cross <= 0
    mask[y0:y1 + 1, x0:x1 + 1] = inside_pos | inside_neg
    return mask


def background(rng):
    img = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    horizon = CY
    sky = np.array([0.55, 0.7, 0.9]) * rng.uniform(0.7, 1.1)
    img[:] = sky
    below = ys >= horizon
    # Ground point of each pixel below the horizon.
    with np.errstate(divide="ignore", invalid="ignore"):
        t = MOUNT[2] / ((ys + 0.5 - CY) / FY)
        gy = -(xs + 0.5 - CX) / FX * t
    asphalt = rng.uniform(0.25, 0.42)
    road_half = rng.choice([5.25, 7.0, 8.75])
    ground = np.where(np.abs(gy) < road_half, asphalt, 0.0)[..., None] * np.ones(3)
    grass = np.array([0.25, 0.45, 0.2]) * rng.uniform(0.7, 1.2)
    ground = np.where((np.abs(gy) >= road_half)[..., None], grass, ground)
    # Dashed lane markings every 3.5 m, 3 m long, 9 m apart.
    gx = t + MOUNT[0]
    for lane_y in np.arange(-road_half + 3.5, road_half - 0.1, 3.5):
        marking = (np.abs(gy - lane_y) < 0.08) & ((gx % 12.0) < 3.0)
        ground = np.where(marking[..., None], 0.85, ground)
    for edge in (-road_half, road_half):
        ground = np.where((np.abs(gy - edge) < 0.1)[..., None], 0.85, ground)
    img = np.where(below[..., None], ground, img)
    return img.astype(np.float32), road_half


def render(objects, rng, noise=0.02):
    """Image (H x W x 3 uint8, RGB) and labels [(class index, x1, y1, x2, y2)]."""
    img, _ = background(rng)
    ids = np.full((HEIGHT, WIDTH), -1, int)
    drawn = {}
    order = sorted(range(len(objects)), key=lambda i: -np.hypot(objects[i]["x"], objects[i]["y"]))
    light = np.array([0.3, 0.5, 0.8])
    light /= np.linalg.norm(light)
    for i in order:
        obj = objects[i]
        corners = cuboid(obj)
        px, depth = project(corners)
        if np.any(depth < 0.5):
            continue
        center = corners.mean(axis=0)
        color = np.array(obj["color"])
        count = 0
        for face in FACES:
            pts = corners[list(face)]
            normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
            normal /= np.linalg.norm(normal) + 1e-9
            if np.dot(normal, pts.mean(axis=0) - center) < 0:
                normal = -normal
            if np.dot(normal, MOUNT - pts.mean(axis=0)) <= 0:
                continue  # faces away from the camera
            mask = fill_polygon((HEIGHT, WIDTH), px[list(face)])
            shade = 0.45 + 0.55 * max(0.0, float(np.dot(normal, light)))
            img[mask] = color * shade
            ids[mask] = i
            count += int(mask.sum())
        # Windows on vehicles: a dark band on the upper half of the visible faces.
        if obj["class"] != "pedestrian" and count:
            band = corners.copy()
            band[:4, 2] = obj["height"] * (0.55 if obj["class"] == "car" else 0.75)
            band[4:, 2] = obj["height"] * (0.9 if obj["class"] == "car" else 0.95)
            bpx, _ = project(band)
            for face in FACES[2:]:
                pts = band[list(face)]
                normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
                if np.dot(normal, pts.mean(axis=0) - center) < 0:
                    normal = -normal
                if np.dot(normal, MOUNT - pts.mean(axis=0)) <= 0:
                    continue
                mask = fill_polygon((HEIGHT, WIDTH), bpx[list(face)]) & (ids == i)
                img[mask] = np.array([0.1, 0.12, 0.15])
        drawn[i] = (count, px)
    labels = []
    for i, (count, px) in drawn.items():
        visible = int((ids == i).sum())
        if count == 0 or visible < 0.4 * count or visible < 12:
            continue
        x1, y1 = np.clip(px.min(axis=0), 0, [WIDTH, HEIGHT])
        x2, y2 = np.clip(px.max(axis=0), 0, [WIDTH, HEIGHT])
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        labels.append((CLASSES.index(objects[i]["class"]), float(x1), float(y1), float(x2), float(y2), i))
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0.0, noise, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8), labels


def random_object(rng, kind, road_half):
    lo_l, lo_w, lo_h = SIZES[kind]
    length, width, height = rng.uniform(*lo_l), rng.uniform(*lo_w), rng.uniform(*lo_h)
    if kind == "pedestrian":
        x = rng.uniform(5.0, 35.0)
        y = rng.choice([-1, 1]) * rng.uniform(road_half - 1.0, road_half + 3.0)
        color = rng.uniform(0.1, 0.9, 3)
        yaw = rng.uniform(-np.pi, np.pi)
    else:
        lanes = np.arange(-road_half + 1.75, road_half, 3.5)
        x = rng.uniform(6.0, 60.0)
        y = rng.choice(lanes) + rng.normal(0.0, 0.25)
        yaw = rng.normal(0.0, 0.06)
        color = rng.uniform(0.05, 0.95, 3) if kind == "car" else rng.choice([[0.9, 0.9, 0.9], [0.7, 0.2, 0.1], [0.2, 0.3, 0.7]]) * rng.uniform(0.8, 1.0)
    return {"class": kind, "x": x, "y": y, "yaw": yaw, "length": length, "width": width, "height": height, "color": list(color)}


def random_scene(rng):
    """A random scene: 0-7 vehicles on the road ahead and sometimes pedestrians beside it."""
    _, road_half = background(np.random.default_rng(int(rng.integers(1 << 30))))
    objects = []
    for _ in range(rng.integers(0, 8)):
        kind = "truck" if rng.random() < 0.2 else "car"
        o = random_object(rng, kind, road_half)
        if all(np.hypot(o["x"] - p["x"], o["y"] - p["y"]) > (o["length"] + p["length"]) / 2 + 1.0 for p in objects):
            objects.append(o)
    for _ in range(rng.integers(0, 3) if rng.random() < 0.4 else 0):
        objects.append(random_object(rng, "pedestrian", road_half))
    return objects
