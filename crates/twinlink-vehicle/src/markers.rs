//! visualization_msgs/MarkerArray views for RViz and Foxglove: what a summarizer found, and
//! what the twin knows and advises.
//!
//! Every array starts with a DELETEALL for its namespace, so objects that disappeared
//! disappear from the view too.

use twinlink_msgs::builtin_interfaces::msg::{Duration, Time};
use twinlink_msgs::geometry_msgs::msg::{Point, Pose, Vector3};
use twinlink_msgs::std_msgs::msg::{ColorRGBA, Header};
use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary, Recommendation};
use twinlink_msgs::visualization_msgs::msg::{Marker, MarkerArray};

use crate::geometry::quaternion_from_yaw;

/// A color from red, green, blue, alpha in [0, 1].
pub fn rgba(r: f32, g: f32, b: f32, a: f32) -> ColorRGBA {
    ColorRGBA { r, g, b, a }
}

/// Short name of a DetectedObject class.
pub fn class_name(class: u8) -> &'static str {
    match class {
        DetectedObject::CLASS_CAR => "car",
        DetectedObject::CLASS_TRUCK => "truck",
        DetectedObject::CLASS_MOTORCYCLE => "motorcycle",
        DetectedObject::CLASS_BICYCLE => "bicycle",
        DetectedObject::CLASS_PEDESTRIAN => "pedestrian",
        DetectedObject::CLASS_STATIC_OBSTACLE => "obstacle",
        _ => "unknown",
    }
}

fn marker(header: &Header, ns: &str, id: i32, kind: i32, lifetime_s: f64) -> Marker {
    Marker {
        header: header.clone(),
        ns: ns.to_string(),
        id,
        type_: kind,
        action: Marker::ADD,
        lifetime: Duration {
            sec: lifetime_s.trunc() as i32,
            nanosec: (lifetime_s.fract() * 1e9) as u32,
        },
        ..Default::default()
    }
}

fn delete_all(header: &Header, ns: &str) -> Marker {
    Marker {
        header: header.clone(),
        ns: ns.to_string(),
        action: Marker::DELETEALL,
        ..Default::default()
    }
}

/// Boxes, labels and velocity arrows of a summary's objects, in its frame.
pub fn objects(
    summary: &PerceptionSummary,
    ns: &str,
    color: ColorRGBA,
    lifetime_s: f64,
) -> MarkerArray {
    let header = &summary.header;
    let mut markers = vec![delete_all(header, ns)];
    for (k, o) in summary.objects.iter().enumerate() {
        let id = 3 * k as i32;
        let mut cube = marker(header, ns, id, Marker::CUBE, lifetime_s);
        cube.pose = Pose {
            position: o.position.clone(),
            orientation: quaternion_from_yaw(o.yaw),
        };
        cube.scale = Vector3 {
            x: o.dimensions.x.max(0.05),
            y: o.dimensions.y.max(0.05),
            z: o.dimensions.z.max(0.05),
        };
        cube.color = color.clone();
        markers.push(cube);

        let mut label = marker(header, ns, id + 1, Marker::TEXT_VIEW_FACING, lifetime_s);
        label.pose.position = Point {
            z: o.position.z + o.dimensions.z / 2.0 + 0.6,
            ..o.position.clone()
        };
        label.pose.orientation.w = 1.0;
        label.scale.z = 0.8;
        label.color = rgba(1.0, 1.0, 1.0, 1.0);
        label.text = if o.has_velocity {
            format!(
                "{} #{} {:.1} m/s",
                class_name(o.classification),
                o.id,
                o.velocity.x.hypot(o.velocity.y)
            )
        } else {
            format!("{} #{}", class_name(o.classification), o.id)
        };
        markers.push(label);

        if o.has_velocity {
            let mut arrow = marker(header, ns, id + 2, Marker::ARROW, lifetime_s);
            arrow.pose.orientation.w = 1.0;
            arrow.points = vec![
                o.position.clone(),
                Point {
                    x: o.position.x + o.velocity.x,
                    y: o.position.y + o.velocity.y,
                    z: o.position.z,
                },
            ];
            arrow.scale = Vector3 {
                x: 0.2,
                y: 0.4,
                z: 0.4,
            };
            arrow.color = rgba(1.0, 0.9, 0.2, 1.0);
            markers.push(arrow);
        }
    }
    MarkerArray { markers }
}

/// The twin's advice drawn in base_link at `stamp`: the advised speed profile as a line
/// ahead of the vehicle (where it would be at each horizon point, colored from red = slow
/// to green = the first point's speed or more), and the advice as text.
pub fn recommendation(
    rec: &Recommendation,
    stamp: &Time,
    ns: &str,
    lifetime_s: f64,
) -> MarkerArray {
    let header = Header {
        stamp: stamp.clone(),
        frame_id: "base_link".into(),
    };
    let mut markers = vec![delete_all(&header, ns)];
    let mut line = marker(&header, ns, 0, Marker::LINE_STRIP, lifetime_s);
    line.pose.orientation.w = 1.0;
    line.scale.x = 0.4;
    let reference = (rec.target_speed as f32).max(1.0);
    let (mut x, mut t_prev, mut v_prev) = (0.0f64, 0.0f32, rec.target_speed as f32);
    line.points.push(Point {
        x: 0.0,
        y: 0.0,
        z: 0.1,
    });
    line.colors.push(rgba(0.2, 0.9, 0.2, 0.9));
    let lane_width = 3.5;
    let lane_now = rec
        .horizon
        .first()
        .map(|p| p.lane_index)
        .unwrap_or(rec.target_lane);
    for p in &rec.horizon {
        x += f64::from((p.speed + v_prev) / 2.0 * (p.time_offset - t_prev));
        t_prev = p.time_offset;
        v_prev = p.speed;
        let f = (p.speed / reference).clamp(0.0, 1.0);
        line.points.push(Point {
            x,
            // Lanes are numbered from the right: a higher lane is to the left (+y).
            y: f64::from(p.lane_index - lane_now) * lane_width,
            z: 0.1,
        });
        line.colors.push(rgba(1.0 - f, f, 0.2, 0.9));
    }
    line.color = rgba(0.2, 0.9, 0.2, 0.9);
    markers.push(line);

    let mut text = marker(&header, ns, 1, Marker::TEXT_VIEW_FACING, lifetime_s);
    text.pose.position = Point {
        x: 0.0,
        y: 0.0,
        z: 3.0,
    };
    text.pose.orientation.w = 1.0;
    text.scale.z = 0.9;
    text.color = rgba(0.6, 0.9, 1.0, 1.0);
    let maneuver = match rec.lane_change {
        Recommendation::LANE_CHANGE_LEFT => "change left",
        Recommendation::LANE_CHANGE_RIGHT => "change right",
        _ => "keep lane",
    };
    text.text = format!(
        "twin #{}: {:.1} km/h, {maneuver} (lane {}) - {}",
        rec.sequence,
        rec.target_speed * 3.6,
        rec.target_lane,
        rec.reason
    );
    markers.push(text);
    MarkerArray { markers }
}

/// Appends `more` to `to` (used to put several views on one topic).
pub fn extend(to: &mut MarkerArray, more: MarkerArray) {
    to.markers.extend(more.markers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_msgs::twin_msgs::msg::HorizonPoint;

    #[test]
    fn one_box_label_and_arrow_per_moving_object() {
        let mut s = PerceptionSummary::default();
        s.header.frame_id = "base_link".into();
        let mut o = DetectedObject {
            id: 4,
            classification: DetectedObject::CLASS_CAR,
            ..Default::default()
        };
        o.dimensions = Vector3 {
            x: 4.5,
            y: 1.8,
            z: 1.5,
        };
        s.objects.push(o.clone());
        o.has_velocity = true;
        o.velocity.x = 3.0;
        s.objects.push(o);
        let m = objects(&s, "lidar", rgba(0.0, 0.5, 1.0, 0.5), 0.3);
        assert_eq!(m.markers[0].action, Marker::DELETEALL);
        assert_eq!(m.markers.len(), 1 + 2 + 3);
        assert_eq!(m.markers[2].text, "car #4");
        assert_eq!(m.markers[5].type_, Marker::ARROW);
        let ids: std::collections::BTreeSet<i32> = m.markers[1..].iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), 5, "ids are unique within the namespace");
        assert!(twinlink_msgs::codec::encode(&m).is_ok());
    }

    #[test]
    fn the_horizon_is_drawn_where_the_vehicle_would_be() {
        let rec = Recommendation {
            target_speed: 10.0,
            horizon: (1..=3)
                .map(|t| HorizonPoint {
                    time_offset: t as f32,
                    speed: 10.0,
                    lane_index: 1,
                })
                .collect(),
            ..Default::default()
        };
        let m = recommendation(&rec, &Time::default(), "advice", 1.0);
        let line = &m.markers[1];
        assert_eq!(line.points.len(), 4);
        // 10 m/s from t=0 (at 10 m/s) to t=3 s: 30 m.
        assert!((line.points[3].x - 30.0).abs() < 1e-6, "{:?}", line.points);
        assert!(m.markers[2].text.contains("36.0 km/h, keep lane"));
    }
}
