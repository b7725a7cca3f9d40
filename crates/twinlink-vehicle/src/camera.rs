//! The camera summarizer: sensor_msgs/Image + CameraInfo in, objects on the road out.
//!
//! Stages:
//! 1. **Image check and pre-processing**: encodings `rgb8`, `bgr8`, `rgba8`, `bgra8` and
//!    `mono8` are read (anything else is refused, naming the encoding); the image is
//!    letterboxed into the detector's input size (bilinear, grey padding) as float RGB in
//!    [0, 1], NCHW.
//! 2. **Detection** with an ONNX model through ONNX Runtime (`ort`). Two YOLO output layouts
//!    are decoded, recognized by shape: `[1, N, 5 + C]` (center x, center y, width, height in
//!    input pixels, objectness, C class probabilities; YOLOv5 style) and `[1, 4 + C, N]`
//!    (no objectness; YOLOv8 style). The model's contract is checked when it is loaded.
//! 3. **Non-maximum suppression** per class.
//! 4. **Ground-plane projection**: the bottom center of each box is the point where the
//!    object meets the road; its pixel is undistorted (plumb_bob), turned into a ray with the
//!    camera's intrinsics K from CameraInfo and the camera's mounting, and intersected with
//!    the ground plane. The object's center lies half its class's typical length farther
//!    along the ray (a camera sees the near face); its width comes from the box's width.

use std::path::Path;
use std::time::Instant;

use twinlink_msgs::geometry_msgs::msg::{Point, Vector3};
use twinlink_msgs::sensor_msgs::msg::{CameraInfo, Image};
use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary};

use crate::geometry::{fold_half_turn, Mounting};
use crate::identity::IdAssigner;
use crate::lidar::class_prior;
use crate::params::{ParamSpec, Params};

/// Largest image accepted, in pixels (8K).
pub const MAX_PIXELS: usize = 7680 * 4320;

/// Why an image cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    /// An encoding the summarizer does not read.
    #[error("image encoding {0:?} is not supported (use rgb8, bgr8, rgba8, bgra8 or mono8)")]
    Encoding(String),
    /// Zero or too many pixels.
    #[error("image size {width}x{height} is outside 1..={max} pixels")]
    Size {
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
        /// Most pixels accepted.
        max: usize,
    },
    /// step is smaller than a row of pixels.
    #[error("image step {step} is smaller than width {width} x {channels} bytes")]
    Step {
        /// Bytes per row given.
        step: u32,
        /// Columns.
        width: u32,
        /// Bytes per pixel.
        channels: u32,
    },
    /// data is shorter than step * height.
    #[error("image data has {actual} bytes, step x height needs {expected}")]
    DataSize {
        /// Bytes needed.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The calibration cannot be used.
    #[error("camera_info: {0}")]
    Calibration(String),
}

impl ImageError {
    /// Counter name.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageError::Encoding(_) => "unsupported_encoding",
            ImageError::Size { .. } => "bad_image_size",
            ImageError::Step { .. } => "bad_image_step",
            ImageError::DataSize { .. } => "image_data_size",
            ImageError::Calibration(_) => "bad_camera_info",
        }
    }
}

/// A validated view of an image's pixels.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    data: &'a [u8],
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    step: usize,
    channels: usize,
    /// Byte offsets of red, green and blue within a pixel.
    rgb: [usize; 3],
}

impl<'a> ImageView<'a> {
    /// Checks an Image message and returns a view of it.
    pub fn new(image: &'a Image) -> Result<Self, ImageError> {
        let (channels, rgb) = match image.encoding.as_str() {
            "rgb8" => (3, [0, 1, 2]),
            "bgr8" => (3, [2, 1, 0]),
            "rgba8" => (4, [0, 1, 2]),
            "bgra8" => (4, [2, 1, 0]),
            "mono8" => (1, [0, 0, 0]),
            other => return Err(ImageError::Encoding(other.to_string())),
        };
        let pixels = image.width as usize * image.height as usize;
        if pixels == 0 || pixels > MAX_PIXELS {
            return Err(ImageError::Size {
                width: image.width,
                height: image.height,
                max: MAX_PIXELS,
            });
        }
        if (image.step as usize) < image.width as usize * channels {
            return Err(ImageError::Step {
                step: image.step,
                width: image.width,
                channels: channels as u32,
            });
        }
        let expected = image.step as usize * image.height as usize;
        if image.data.len() < expected {
            return Err(ImageError::DataSize {
                expected,
                actual: image.data.len(),
            });
        }
        Ok(ImageView {
            data: &image.data,
            width: image.width as usize,
            height: image.height as usize,
            step: image.step as usize,
            channels,
            rgb,
        })
    }

    /// Red, green, blue of pixel (x, y), each 0..=255.
    #[inline]
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let at = y * self.step + x * self.channels;
        [
            self.data[at + self.rgb[0]],
            self.data[at + self.rgb[1]],
            self.data[at + self.rgb[2]],
        ]
    }
}

/// How an image was fitted into the detector's input: input = image * scale + pad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Scale from image to input pixels.
    pub scale: f32,
    /// Left padding [input pixels].
    pub pad_x: f32,
    /// Top padding [input pixels].
    pub pad_y: f32,
}

impl Letterbox {
    /// An input-pixel coordinate back in the image.
    pub fn to_image(&self, x: f32, y: f32) -> (f32, f32) {
        ((x - self.pad_x) / self.scale, (y - self.pad_y) / self.scale)
    }
}

/// Letterboxes `image` into `width` x `height` (bilinear), as NCHW float RGB in [0, 1] with
/// grey (0.5) padding, into `out`.
pub fn preprocess(image: &ImageView, width: usize, height: usize, out: &mut Vec<f32>) -> Letterbox {
    let scale = (width as f32 / image.width as f32).min(height as f32 / image.height as f32);
    let (w, h) = (
        (image.width as f32 * scale).round() as usize,
        (image.height as f32 * scale).round() as usize,
    );
    let (pad_x, pad_y) = ((width - w.min(width)) / 2, (height - h.min(height)) / 2);
    out.clear();
    out.resize(3 * width * height, 0.5);
    let plane = width * height;
    let inv = 1.0 / scale;
    for oy in 0..h.min(height) {
        let sy = ((oy as f32 + 0.5) * inv - 0.5).clamp(0.0, (image.height - 1) as f32);
        let (y0, fy) = (sy.floor() as usize, sy.fract());
        let y1 = (y0 + 1).min(image.height - 1);
        for ox in 0..w.min(width) {
            let sx = ((ox as f32 + 0.5) * inv - 0.5).clamp(0.0, (image.width - 1) as f32);
            let (x0, fx) = (sx.floor() as usize, sx.fract());
            let x1 = (x0 + 1).min(image.width - 1);
            let (a, b, c, d) = (
                image.rgb(x0, y0),
                image.rgb(x1, y0),
                image.rgb(x0, y1),
                image.rgb(x1, y1),
            );
            let at = (oy + pad_y) * width + ox + pad_x;
            for ch in 0..3 {
                let top = a[ch] as f32 * (1.0 - fx) + b[ch] as f32 * fx;
                let bottom = c[ch] as f32 * (1.0 - fx) + d[ch] as f32 * fx;
                out[ch * plane + at] = (top * (1.0 - fy) + bottom * fy) / 255.0;
            }
        }
    }
    Letterbox {
        scale,
        pad_x: pad_x as f32,
        pad_y: pad_y as f32,
    }
}

/// A 2-D detection in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Box2d {
    /// Left [px].
    pub x1: f32,
    /// Top [px].
    pub y1: f32,
    /// Right [px].
    pub x2: f32,
    /// Bottom [px].
    pub y2: f32,
    /// Objectness times class probability.
    pub score: f32,
    /// Class index in the model's output.
    pub class: usize,
}

impl Box2d {
    fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    /// Intersection over the smaller box's area (1 when one box holds the other).
    pub fn overlap_of_smaller(&self, other: &Box2d) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let smaller = self.area().min(other.area());
        if smaller > 0.0 {
            w * h / smaller
        } else {
            0.0
        }
    }

    /// Intersection over union with another box.
    pub fn iou(&self, other: &Box2d) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// Output layouts of YOLO-style detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLayout {
    /// `[1, N, 5 + C]`: box, objectness, class probabilities per row.
    RowsWithObjectness,
    /// `[1, 4 + C, N]`: box and class probabilities per column, no objectness.
    ColumnsWithoutObjectness,
}

/// Which layout an output of `shape` has for `classes` classes, or why none fits.
pub fn output_layout(shape: &[i64], classes: usize) -> Result<OutputLayout, String> {
    match shape {
        [1, _, c] if *c == 5 + classes as i64 => Ok(OutputLayout::RowsWithObjectness),
        [1, c, _] if *c == 4 + classes as i64 => Ok(OutputLayout::ColumnsWithoutObjectness),
        _ => Err(format!(
            "output shape {shape:?} fits neither [1, N, 5 + {classes}] nor [1, 4 + {classes}, N] for the {classes} classes in class_names"
        )),
    }
}

/// Decodes a YOLO output into boxes scoring at least `threshold` (input pixels).
pub fn decode(
    output: &[f32],
    shape: &[i64],
    layout: OutputLayout,
    classes: usize,
    threshold: f32,
) -> Vec<Box2d> {
    let mut boxes = Vec::new();
    let (n, stride) = match layout {
        OutputLayout::RowsWithObjectness => (shape[1] as usize, 5 + classes),
        OutputLayout::ColumnsWithoutObjectness => (shape[2] as usize, 4 + classes),
    };
    for i in 0..n {
        let get = |k: usize| match layout {
            OutputLayout::RowsWithObjectness => output[i * stride + k],
            OutputLayout::ColumnsWithoutObjectness => output[k * n + i],
        };
        let (objectness, first_class) = match layout {
            OutputLayout::RowsWithObjectness => (get(4), 5),
            OutputLayout::ColumnsWithoutObjectness => (1.0, 4),
        };
        if objectness < threshold {
            continue;
        }
        let (class, p) = (0..classes)
            .map(|c| (c, get(first_class + c)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let score = objectness * p;
        if score.is_nan() || score < threshold {
            continue;
        }
        let (cx, cy, w, h) = (get(0), get(1), get(2), get(3));
        if ![cx, cy, w, h].iter().all(|v| v.is_finite()) || w <= 0.0 || h <= 0.0 {
            continue;
        }
        boxes.push(Box2d {
            x1: cx - w / 2.0,
            y1: cy - h / 2.0,
            x2: cx + w / 2.0,
            y2: cy + h / 2.0,
            score,
            class,
        });
    }
    boxes
}

/// Non-maximum suppression: keeps the best box of each overlapping group, per class or
/// (`across_classes`) over all classes, so that one object is not reported as both a car
/// and a truck. A box of the same class lying mostly (over 75 %) inside a better one is a
/// part of the same object and is suppressed too.
pub fn nms(
    mut boxes: Vec<Box2d>,
    iou_threshold: f32,
    max_detections: usize,
    across_classes: bool,
) -> Vec<Box2d> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Box2d> = Vec::new();
    for b in boxes {
        if kept.len() >= max_detections {
            break;
        }
        if kept.iter().all(|k| {
            let same = k.class == b.class;
            let overlapping = (same || across_classes) && k.iou(&b) > iou_threshold;
            let part = same && k.overlap_of_smaller(&b) > 0.75;
            !(overlapping || part)
        }) {
            kept.push(b);
        }
    }
    kept
}

/// twin_msgs class of a detector class name (COCO and common names).
pub fn class_of_name(name: &str) -> u8 {
    match name.trim().to_ascii_lowercase().as_str() {
        "car" | "van" => DetectedObject::CLASS_CAR,
        "truck" | "bus" | "trailer" => DetectedObject::CLASS_TRUCK,
        "motorcycle" | "motorbike" => DetectedObject::CLASS_MOTORCYCLE,
        "bicycle" | "cyclist" => DetectedObject::CLASS_BICYCLE,
        "person" | "pedestrian" => DetectedObject::CLASS_PEDESTRIAN,
        "debris" | "cone" | "obstacle" | "traffic cone" => DetectedObject::CLASS_STATIC_OBSTACLE,
        _ => DetectedObject::CLASS_UNKNOWN,
    }
}

/// Pinhole camera with plumb_bob distortion, mounted on the vehicle.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraGeometry {
    /// Focal lengths and principal point [px].
    pub fx: f64,
    /// [px]
    pub fy: f64,
    /// [px]
    pub cx: f64,
    /// [px]
    pub cy: f64,
    /// plumb_bob k1, k2, p1, p2, k3 (zeros when the image is rectified).
    pub distortion: [f64; 5],
    /// The camera body frame (x forward, y left, z up) in base_link.
    pub mounting: Mounting,
}

impl CameraGeometry {
    /// From CameraInfo's K and D (`plumb_bob`, or no distortion).
    pub fn from_info(info: &CameraInfo, mounting: Mounting) -> Result<Self, ImageError> {
        let k = &info.k;
        if !(k[0] > 0.0 && k[4] > 0.0 && k.iter().all(|v| v.is_finite())) {
            return Err(ImageError::Calibration(format!(
                "K {k:?} has no positive focal lengths"
            )));
        }
        let mut distortion = [0.0; 5];
        match info.distortion_model.as_str() {
            "" | "none" => {}
            "plumb_bob" | "rational_polynomial" => {
                for (d, v) in distortion.iter_mut().zip(&info.d) {
                    *d = *v;
                }
                if !distortion.iter().all(|v| v.is_finite()) {
                    return Err(ImageError::Calibration("D is not finite".into()));
                }
            }
            other => {
                return Err(ImageError::Calibration(format!(
                    "distortion model {other:?} is not supported"
                )))
            }
        }
        Ok(CameraGeometry {
            fx: k[0],
            fy: k[4],
            cx: k[2],
            cy: k[5],
            distortion,
            mounting,
        })
    }

    /// Normalized, undistorted image coordinates of pixel (u, v) (iterative inverse of
    /// plumb_bob).
    pub fn undistort(&self, u: f64, v: f64) -> (f64, f64) {
        let (xd, yd) = ((u - self.cx) / self.fx, (v - self.cy) / self.fy);
        let [k1, k2, p1, p2, k3] = self.distortion;
        if self.distortion.iter().all(|d| *d == 0.0) {
            return (xd, yd);
        }
        let (mut x, mut y) = (xd, yd);
        for _ in 0..10 {
            let r2 = x * x + y * y;
            let radial = 1.0 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2;
            let dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x);
            let dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y;
            x = (xd - dx) / radial;
            y = (yd - dy) / radial;
        }
        (x, y)
    }

    /// The ray through pixel (u, v) in base_link (not normalized).
    pub fn ray(&self, u: f64, v: f64) -> [f64; 3] {
        let (x, y) = self.undistort(u, v);
        // Optical frame (x right, y down, z forward) -> camera body (x forward, y left, z up).
        self.mounting.rotate([1.0, -x, -y])
    }

    /// Where the ray through pixel (u, v) meets the ground plane z = `ground_z`, if it
    /// points down.
    pub fn ground_point(&self, u: f64, v: f64, ground_z: f64) -> Option<[f64; 3]> {
        let d = self.ray(u, v);
        let height = self.mounting.z - ground_z;
        if d[2] >= -1e-6 || height <= 0.0 {
            return None;
        }
        let t = height / -d[2];
        Some([
            self.mounting.x + t * d[0],
            self.mounting.y + t * d[1],
            ground_z,
        ])
    }

    /// Projects a point in base_link to a pixel (no distortion), if in front of the camera.
    pub fn project(&self, p: [f64; 3]) -> Option<(f64, f64)> {
        let iso = self.mounting.isometry();
        let local = iso.inverse_transform_point(&nalgebra::Point3::new(p[0], p[1], p[2]));
        if local.x <= 0.1 {
            return None;
        }
        Some((
            self.cx + self.fx * (-local.y / local.x),
            self.cy + self.fy * (-local.z / local.x),
        ))
    }
}

/// Places a 2-D detection on the road: center, yaw (along the ray), width and covariance.
pub fn place(
    b: &Box2d,
    class: u8,
    geometry: &CameraGeometry,
    ground_z: f64,
) -> Option<DetectedObject> {
    let bottom = ((b.x1 + b.x2) / 2.0) as f64;
    let contact = geometry.ground_point(bottom, b.y2 as f64, ground_z)?;
    let (dx, dy) = (
        contact[0] - geometry.mounting.x,
        contact[1] - geometry.mounting.y,
    );
    let range = dx.hypot(dy);
    let (ux, uy) = (dx / range, dy / range);
    let [length, width_prior, height_prior] =
        class_prior(class).unwrap_or([1.0, 1.0, 1.0]).map(f64::from);
    // The visible face is the near one: the center is half a length beyond.
    let depth = if class == DetectedObject::CLASS_PEDESTRIAN {
        width_prior
    } else {
        length
    };
    let (x, y) = (contact[0] + ux * depth / 2.0, contact[1] + uy * depth / 2.0);
    let width = ((b.x2 - b.x1) as f64 * range / geometry.fx).max(0.2);
    let height = ((b.y2 - b.y1) as f64 * range / geometry.fy).max(0.2);
    // One pixel of error at the bottom edge moves the contact point by range^2 / (fy h).
    let cam_height = (geometry.mounting.z - ground_z).max(0.1);
    let along = 2.0 * range * range / (geometry.fy * cam_height) + 0.3;
    let across = 2.0 * range / geometry.fx + 0.2;
    let (s2a, s2c) = (along * along, across * across);
    let cov_xx = s2a * ux * ux + s2c * uy * uy;
    let cov_yy = s2a * uy * uy + s2c * ux * ux;
    let cov_xy = (s2a - s2c) * ux * uy;
    Some(DetectedObject {
        id: 0,
        classification: class,
        class_confidence: b.score,
        existence_probability: b.score,
        position: Point {
            x,
            y,
            z: ground_z + height_prior / 2.0,
        },
        yaw: fold_half_turn(uy.atan2(ux)),
        dimensions: Vector3 {
            x: length.max(width),
            y: width.min(length.max(width)),
            z: height.max(0.2),
        },
        has_velocity: false,
        velocity: Vector3::default(),
        position_covariance: [
            cov_xx as f32,
            cov_xy as f32,
            0.0,
            cov_xy as f32,
            cov_yy as f32,
            0.0,
            0.0,
            0.0,
            0.25,
        ],
    })
}

/// Why the detector cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file is missing.
    #[error("model file {0} does not exist")]
    Missing(String),
    /// ONNX Runtime refused the file or the run.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The model's inputs or outputs do not match the contract.
    #[error("model {path} does not match the detector contract: {problem}")]
    Contract {
        /// Model file.
        path: String,
        /// What differs, and what is expected.
        problem: String,
    },
}

impl ModelError {
    /// Counter name.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Missing(_) => "model_missing",
            ModelError::Runtime(_) => "model_runtime",
            ModelError::Contract { .. } => "model_contract",
        }
    }
}

/// An ONNX YOLO-style detector: one float32 input `[1, 3, H, W]`, one float32 output in
/// either [`OutputLayout`].
pub struct OnnxDetector {
    session: ort::session::Session,
    input_name: String,
    /// Input width [px].
    pub width: usize,
    /// Input height [px].
    pub height: usize,
    classes: usize,
    layout: Option<OutputLayout>,
    input: Vec<f32>,
}

fn ort_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Runtime(e.to_string())
}

impl OnnxDetector {
    /// Loads and checks a model for `classes` classes, on one thread.
    pub fn load(path: &Path, classes: usize) -> Result<Self, ModelError> {
        if !path.exists() {
            return Err(ModelError::Missing(path.display().to_string()));
        }
        let contract = |problem: String| ModelError::Contract {
            path: path.display().to_string(),
            problem,
        };
        let env = ort::environment::init()
            .with_name("twinlink")
            .build()
            .map_err(ort_err)?;
        let mut builder = ort::session::Session::builder(&env).map_err(ort_err)?;
        builder = builder.with_intra_threads(1).map_err(ort_err)?;
        let session = builder.commit_from_file(path).map_err(ort_err)?;
        if session.inputs().len() != 1 || session.outputs().len() != 1 {
            return Err(contract(format!(
                "{} inputs and {} outputs; expected one input [1, 3, H, W] and one output",
                session.inputs().len(),
                session.outputs().len()
            )));
        }
        let input = &session.inputs()[0];
        let shape = input
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let ty = input.dtype().tensor_type();
        if ty != Some(ort::value::TensorElementType::Float32) {
            return Err(contract(format!(
                "input {:?} is {ty:?}; expected float32",
                input.name()
            )));
        }
        let (height, width) = match shape.as_slice() {
            [1 | -1, 3, h, w] if *h > 0 && *w > 0 => (*h as usize, *w as usize),
            other => {
                return Err(contract(format!(
                    "input {:?} has shape {other:?}; expected [1, 3, H, W] with fixed H and W",
                    input.name()
                )))
            }
        };
        let output = &session.outputs()[0];
        let out_shape = output
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        // Dynamic dimensions (-1) are settled on the first run.
        let layout = if out_shape.iter().all(|d| *d > 0) {
            Some(output_layout(&out_shape, classes).map_err(contract)?)
        } else {
            None
        };
        Ok(OnnxDetector {
            input_name: input.name().to_string(),
            session,
            width,
            height,
            classes,
            layout,
            input: Vec::new(),
        })
    }

    /// Detects objects in `image`: boxes in image pixels after NMS.
    pub fn detect(
        &mut self,
        image: &ImageView,
        threshold: f32,
        iou: f32,
        max: usize,
        across_classes: bool,
    ) -> Result<Vec<Box2d>, ModelError> {
        let letterbox = preprocess(image, self.width, self.height, &mut self.input);
        let tensor = ort::value::TensorRef::from_array_view((
            [1usize, 3, self.height, self.width],
            self.input.as_slice(),
        ))
        .map_err(ort_err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(ort_err)?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(ort_err)?;
        let shape: Vec<i64> = shape.to_vec();
        let layout = match self.layout {
            Some(l) => l,
            None => {
                let l = output_layout(&shape, self.classes).map_err(|problem| {
                    ModelError::Contract {
                        path: "(loaded model)".into(),
                        problem,
                    }
                })?;
                self.layout = Some(l);
                l
            }
        };
        let boxes = nms(
            decode(data, &shape, layout, self.classes, threshold),
            iou,
            max,
            across_classes,
        );
        Ok(boxes
            .into_iter()
            .map(|b| {
                let (x1, y1) = letterbox.to_image(b.x1, b.y1);
                let (x2, y2) = letterbox.to_image(b.x2, b.y2);
                Box2d {
                    x1: x1.clamp(0.0, image.width as f32),
                    y1: y1.clamp(0.0, image.height as f32),
                    x2: x2.clamp(0.0, image.width as f32),
                    y2: y2.clamp(0.0, image.height as f32),
                    ..b
                }
            })
            .collect())
    }
}

/// Settings of the camera pipeline (the node's parameters; see the package README).
#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    /// Name of the sensor in summaries.
    pub sensor_id: String,
    /// The camera body frame (x forward, y left, z up) in base_link.
    pub mounting: Mounting,
    /// The ONNX model.
    pub model_path: String,
    /// Class names of the model's outputs, in order.
    pub class_names: Vec<String>,
    /// Smallest score kept.
    pub score_threshold: f32,
    /// NMS overlap.
    pub iou_threshold: f32,
    /// Most detections per image.
    pub max_detections: usize,
    /// Suppress overlapping boxes across classes, not only within one.
    pub nms_across_classes: bool,
    /// Farthest object reported [m].
    pub max_range: f32,
    /// Ground height at base_link's origin [m].
    pub ground_z: f32,
    /// Largest move between frames that keeps an id [m].
    pub association_gate: f32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            sensor_id: "camera_front".into(),
            mounting: Mounting {
                x: 1.5,
                z: 1.4,
                ..Default::default()
            },
            model_path: "models/camera_detector/detector.onnx".into(),
            class_names: vec!["car".into(), "truck".into(), "pedestrian".into()],
            score_threshold: 0.4,
            iou_threshold: 0.45,
            max_detections: 100,
            nms_across_classes: true,
            max_range: 80.0,
            ground_z: 0.0,
            association_gate: 3.0,
        }
    }
}

/// The camera summarizer node's parameters, with defaults and ranges.
pub fn parameters() -> Vec<ParamSpec> {
    let d = CameraConfig::default();
    let mut specs = vec![
        ParamSpec::string("sensor_id", &d.sensor_id, &[], "name of the sensor in summaries"),
        ParamSpec::string("model_path", &d.model_path, &[], "ONNX detector (YOLO-style output); relative paths start at the working directory"),
        ParamSpec::string("class_names", &d.class_names.join(","), &[], "the model's classes in output order, comma separated (car, truck, bus, person, bicycle, motorcycle, ... map onto twin_msgs classes)"),
        ParamSpec::double("score_threshold", d.score_threshold as f64, 0.01, 1.0, "smallest objectness x class probability kept"),
        ParamSpec::double("iou_threshold", d.iou_threshold as f64, 0.05, 0.95, "boxes of one class overlapping more are suppressed"),
        ParamSpec::int("max_detections", d.max_detections as i64, 1, 1000, "most detections per image"),
        ParamSpec::bool(
            "nms_across_classes",
            d.nms_across_classes,
            "suppress overlapping boxes across classes (one object is not both a car and a truck)",
        ),
        ParamSpec::double("max_range", d.max_range as f64, 5.0, 300.0, "farthest object reported [m]"),
        ParamSpec::double("ground_z", d.ground_z as f64, -3.0, 3.0, "ground height at base_link's origin [m]"),
        ParamSpec::double("association_gate", d.association_gate as f64, 0.1, 20.0, "largest move between frames that keeps an id [m]"),
        ParamSpec::double("model_retry_period", 5.0, 0.5, 600.0, "while the model cannot be loaded, try again this often [s]"),
        ParamSpec::double("camera_info_timeout", 5.0, 0.1, 600.0, "images are refused while no CameraInfo newer than this arrived [s]"),
        ParamSpec::bool("publish_debug_markers", true, "publish ~/debug/markers"),
    ];
    specs.extend(crate::params::mounting_specs(d.mounting));
    specs
}

impl CameraConfig {
    /// The configuration from validated parameters (see [`parameters`]).
    pub fn from_params(p: &Params) -> Result<Self, String> {
        let class_names: Vec<String> = p
            .str("class_names")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if class_names.is_empty() {
            return Err("parameter 'class_names': give at least one class".into());
        }
        Ok(CameraConfig {
            sensor_id: p.str("sensor_id").to_string(),
            mounting: crate::params::mounting_from(p),
            model_path: p.str("model_path").to_string(),
            class_names,
            score_threshold: p.f32("score_threshold"),
            iou_threshold: p.f32("iou_threshold"),
            max_detections: p.usize("max_detections"),
            nms_across_classes: p.bool("nms_across_classes"),
            max_range: p.f32("max_range"),
            ground_z: p.f32("ground_z"),
            association_gate: p.f32("association_gate"),
        })
    }
}

/// What one frame went through.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameStats {
    /// Boxes after NMS.
    pub boxes: usize,
    /// Boxes whose bottom does not meet the road within range (above the horizon).
    pub not_on_ground: usize,
    /// Objects reported.
    pub objects: usize,
    /// Detector time [s].
    pub inference_seconds: f64,
    /// Whole frame [s].
    pub seconds: f64,
}

/// Why a frame produced no summary.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// The image or calibration is unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The detector is unavailable or failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl CameraError {
    /// Counter name.
    pub fn kind(&self) -> &'static str {
        match self {
            CameraError::Image(e) => e.kind(),
            CameraError::Model(e) => e.kind(),
        }
    }
}

/// The camera summarizer; the detector is loaded by the caller (it may be missing).
pub struct CameraSummarizer {
    config: CameraConfig,
    classes: Vec<u8>,
    ids: IdAssigner,
}

impl CameraSummarizer {
    /// A summarizer with these settings.
    pub fn new(config: CameraConfig) -> Self {
        CameraSummarizer {
            classes: config
                .class_names
                .iter()
                .map(|n| class_of_name(n))
                .collect(),
            ids: IdAssigner::new(config.association_gate as f64),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &CameraConfig {
        &self.config
    }

    /// Loads the configured model.
    pub fn load_detector(&self) -> Result<OnnxDetector, ModelError> {
        OnnxDetector::load(
            Path::new(&self.config.model_path),
            self.config.class_names.len(),
        )
    }

    /// Summarizes one image with its calibration.
    pub fn summarize(
        &mut self,
        image: &Image,
        info: &CameraInfo,
        detector: &mut OnnxDetector,
    ) -> Result<(PerceptionSummary, FrameStats), CameraError> {
        let started = Instant::now();
        let view = ImageView::new(image)?;
        let geometry = CameraGeometry::from_info(info, self.config.mounting)?;
        let c = &self.config;
        let t0 = Instant::now();
        let boxes = detector.detect(
            &view,
            c.score_threshold,
            c.iou_threshold,
            c.max_detections,
            c.nms_across_classes,
        )?;
        let mut stats = FrameStats {
            boxes: boxes.len(),
            inference_seconds: t0.elapsed().as_secs_f64(),
            ..Default::default()
        };
        let mut objects = Vec::new();
        for b in &boxes {
            let class = self
                .classes
                .get(b.class)
                .copied()
                .unwrap_or(DetectedObject::CLASS_UNKNOWN);
            match place(b, class, &geometry, c.ground_z as f64) {
                Some(o) if o.position.x.hypot(o.position.y) <= c.max_range as f64 => {
                    objects.push(o)
                }
                _ => stats.not_on_ground += 1,
            }
        }
        self.ids.assign(&mut objects);
        stats.objects = objects.len();
        stats.seconds = started.elapsed().as_secs_f64();
        let hfov = 2.0 * (view.width as f64 / (2.0 * geometry.fx)).atan();
        let vfov = 2.0 * (view.height as f64 / (2.0 * geometry.fy)).atan();
        Ok((
            PerceptionSummary {
                header: twinlink_msgs::std_msgs::msg::Header {
                    stamp: image.header.stamp.clone(),
                    frame_id: "base_link".into(),
                },
                sensor_id: c.sensor_id.clone(),
                sensor_kind: PerceptionSummary::SENSOR_CAMERA,
                sensor_pose: c.mounting.pose(),
                horizontal_fov: hfov as f32,
                vertical_fov: vfov as f32,
                min_range: 0.0,
                max_range: c.max_range,
                objects,
                raw_bytes: image.data.len() as u64,
                processing_time: stats.seconds as f32,
            },
            stats,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> CameraGeometry {
        CameraGeometry {
            fx: 400.0,
            fy: 400.0,
            cx: 320.0,
            cy: 240.0,
            distortion: [0.0; 5],
            mounting: Mounting {
                x: 1.5,
                z: 1.4,
                ..Default::default()
            },
        }
    }

    #[test]
    fn images_are_checked_and_letterboxed() {
        let mut img = Image {
            width: 4,
            height: 2,
            encoding: "bgr8".into(),
            step: 12,
            data: vec![0; 24],
            ..Default::default()
        };
        img.data[0] = 255; // blue of pixel (0, 0)
        let view = ImageView::new(&img).unwrap();
        assert_eq!(view.rgb(0, 0), [0, 0, 255]);
        let mut out = Vec::new();
        let lb = preprocess(&view, 8, 8, &mut out);
        assert_eq!(
            lb,
            Letterbox {
                scale: 2.0,
                pad_x: 0.0,
                pad_y: 2.0
            }
        );
        assert_eq!(out.len(), 3 * 64);
        assert_eq!(out[0], 0.5, "padding is grey");
        assert_eq!(lb.to_image(4.0, 4.0), (2.0, 1.0));
        let bad = Image {
            encoding: "yuv422".into(),
            ..img.clone()
        };
        assert_eq!(
            ImageView::new(&bad).unwrap_err().kind(),
            "unsupported_encoding"
        );
        let short = Image {
            data: vec![0; 10],
            ..img.clone()
        };
        assert_eq!(
            ImageView::new(&short).unwrap_err().kind(),
            "image_data_size"
        );
        let step = Image {
            step: 5,
            ..img.clone()
        };
        assert_eq!(ImageView::new(&step).unwrap_err().kind(), "bad_image_step");
        let empty = Image { width: 0, ..img };
        assert_eq!(ImageView::new(&empty).unwrap_err().kind(), "bad_image_size");
    }

    #[test]
    fn both_yolo_layouts_decode_and_nms_keeps_the_best() {
        // Rows: two overlapping boxes of class 0 and one of class 1.
        let rows = [
            [50.0, 50.0, 20.0, 20.0, 0.9, 0.8, 0.2],
            [52.0, 50.0, 20.0, 20.0, 0.8, 0.9, 0.1],
            [52.0, 50.0, 20.0, 20.0, 0.9, 0.1, 0.9],
            [10.0, 10.0, 5.0, 5.0, 0.1, 0.9, 0.1],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let shape = [1, 4, 7];
        let layout = output_layout(&shape, 2).unwrap();
        assert_eq!(layout, OutputLayout::RowsWithObjectness);
        let boxes = nms(decode(&flat, &shape, layout, 2, 0.3), 0.45, 10, false);
        assert_eq!(boxes.len(), 2);
        assert_eq!((boxes[0].class, boxes[1].class), (1, 0));
        assert!((boxes[1].score - 0.72).abs() < 1e-6);
        // The same boxes as columns, without objectness.
        let mut cols = vec![0.0f32; 6 * 4];
        for (i, r) in rows.iter().enumerate() {
            for k in 0..4 {
                cols[k * 4 + i] = r[k];
            }
            cols[4 * 4 + i] = r[4] * r[5];
            cols[5 * 4 + i] = r[4] * r[6];
        }
        let shape = [1, 6, 4];
        let layout = output_layout(&shape, 2).unwrap();
        assert_eq!(layout, OutputLayout::ColumnsWithoutObjectness);
        assert_eq!(
            nms(decode(&cols, &shape, layout, 2, 0.3), 0.45, 10, false).len(),
            2
        );
        // Across classes, the class-1 box suppresses the overlapping class-0 one.
        assert_eq!(
            nms(decode(&cols, &shape, layout, 2, 0.3), 0.45, 10, true).len(),
            1
        );
        assert!(output_layout(&[1, 10, 10], 3)
            .unwrap_err()
            .contains("fits neither"));
    }

    #[test]
    fn ground_projection_inverts_projection() {
        let g = geometry();
        for p in [[20.0, 0.0, 0.0], [35.0, -4.0, 0.0], [8.0, 3.0, 0.0]] {
            let (u, v) = g.project(p).unwrap();
            let back = g.ground_point(u, v, 0.0).unwrap();
            assert!(
                (back[0] - p[0]).abs() < 1e-6 && (back[1] - p[1]).abs() < 1e-6,
                "{p:?} -> {back:?}"
            );
        }
        assert!(
            g.ground_point(320.0, 100.0, 0.0).is_none(),
            "above the horizon"
        );
        // Distortion: undistort inverts plumb_bob.
        let mut d = g.clone();
        d.distortion = [-0.2, 0.05, 0.001, -0.001, 0.0];
        let (x, y) = (0.3, -0.2);
        let r2: f64 = x * x + y * y;
        let radial = 1.0 - 0.2 * r2 + 0.05 * r2 * r2;
        let xd = x * radial + 2.0 * 0.001 * x * y + -0.001 * (r2 + 2.0 * x * x);
        let yd = y * radial + 0.001 * (r2 + 2.0 * y * y) + 2.0 * -0.001 * x * y;
        let (ux, uy) = d.undistort(d.cx + d.fx * xd, d.cy + d.fy * yd);
        assert!((ux - x).abs() < 1e-9 && (uy - y).abs() < 1e-9);
    }

    #[test]
    fn a_box_becomes_a_car_on_the_road() {
        let g = geometry();
        // A car whose rear face (1.85 wide, 1.5 high) stands at x = 20 m.
        let (u1, v2) = g.project([20.0, 0.925, 0.0]).unwrap();
        let (u2, v1) = g.project([20.0, -0.925, 1.5]).unwrap();
        let b = Box2d {
            x1: u1 as f32,
            y1: v1 as f32,
            x2: u2 as f32,
            y2: v2 as f32,
            score: 0.9,
            class: 0,
        };
        let o = place(&b, DetectedObject::CLASS_CAR, &g, 0.0).unwrap();
        assert!((o.position.x - 22.25).abs() < 1e-3, "{o:?}");
        assert!(o.position.y.abs() < 1e-3);
        assert!((o.dimensions.y - 1.85).abs() < 0.01, "{o:?}");
        assert!(
            o.position_covariance[0] > o.position_covariance[4],
            "deeper uncertainty along the ray"
        );
        assert_eq!(class_of_name("Person"), DetectedObject::CLASS_PEDESTRIAN);
        assert_eq!(class_of_name("bus"), DetectedObject::CLASS_TRUCK);
    }

    #[test]
    fn missing_models_and_bad_calibration_are_named() {
        let e = OnnxDetector::load(Path::new("/nonexistent/model.onnx"), 3)
            .err()
            .unwrap();
        assert_eq!(e.kind(), "model_missing");
        assert!(e.to_string().contains("/nonexistent/model.onnx"));
        let info = CameraInfo {
            k: [0.0; 9],
            ..Default::default()
        };
        assert_eq!(
            CameraGeometry::from_info(&info, Mounting::default())
                .unwrap_err()
                .kind(),
            "bad_camera_info"
        );
        let p = crate::params::resolve(&parameters(), &Default::default()).unwrap();
        assert_eq!(
            CameraConfig::from_params(&p).unwrap(),
            CameraConfig::default()
        );
    }
}
