//! Sensor mounting and small geometric helpers shared by the summarizers.

use nalgebra::{Isometry3, Point3, Translation3, UnitQuaternion, Vector3};
use twinlink_msgs::geometry_msgs::msg::{Point, Pose, Quaternion};

/// Where a sensor sits on the vehicle: its frame's pose in base_link (REP-103: x forward,
/// y left, z up; angles in radians, applied as roll about x, then pitch about y, then yaw
/// about z).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Mounting {
    /// Position of the sensor frame's origin in base_link [m].
    pub x: f64,
    /// [m]
    pub y: f64,
    /// [m]
    pub z: f64,
    /// Rotation about x [rad].
    pub roll: f64,
    /// Rotation about y [rad].
    pub pitch: f64,
    /// Rotation about z [rad].
    pub yaw: f64,
}

impl Mounting {
    /// The transform from sensor coordinates to base_link.
    pub fn isometry(&self) -> Isometry3<f64> {
        Isometry3::from_parts(
            Translation3::new(self.x, self.y, self.z),
            UnitQuaternion::from_euler_angles(self.roll, self.pitch, self.yaw),
        )
    }

    /// True if the transform is the identity (points need no transform).
    pub fn is_identity(&self) -> bool {
        *self == Mounting::default()
    }

    /// The mounting as a geometry_msgs/Pose (for PerceptionSummary.sensor_pose).
    pub fn pose(&self) -> Pose {
        let q = UnitQuaternion::from_euler_angles(self.roll, self.pitch, self.yaw);
        Pose {
            position: Point {
                x: self.x,
                y: self.y,
                z: self.z,
            },
            orientation: Quaternion {
                x: q.i,
                y: q.j,
                z: q.k,
                w: q.w,
            },
        }
    }

    /// Transforms points in place from the sensor frame to base_link.
    pub fn apply(&self, points: &mut [[f32; 3]]) {
        if self.is_identity() {
            return;
        }
        let iso = self.isometry().cast::<f32>();
        for p in points {
            let q = iso * Point3::new(p[0], p[1], p[2]);
            *p = [q.x, q.y, q.z];
        }
    }

    /// Rotates a vector (a velocity, a direction) from the sensor frame to base_link.
    pub fn rotate(&self, v: [f64; 3]) -> [f64; 3] {
        let r = self.isometry().rotation * Vector3::new(v[0], v[1], v[2]);
        [r.x, r.y, r.z]
    }
}

/// Yaw of a quaternion [rad].
pub fn yaw_of(q: &Quaternion) -> f64 {
    (2.0 * (q.w * q.z + q.x * q.y)).atan2(1.0 - 2.0 * (q.y * q.y + q.z * q.z))
}

/// A quaternion for a rotation of `yaw` about z.
pub fn quaternion_from_yaw(yaw: f64) -> Quaternion {
    let (s, c) = (yaw / 2.0).sin_cos();
    Quaternion {
        x: 0.0,
        y: 0.0,
        z: s,
        w: c,
    }
}

/// An angle folded into (-pi/2, pi/2]: a box's heading is only known up to a half turn.
pub fn fold_half_turn(angle: f64) -> f64 {
    let mut a = angle.rem_euclid(std::f64::consts::PI);
    if a > std::f64::consts::FRAC_PI_2 {
        a -= std::f64::consts::PI;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn mounting_moves_sensor_points_into_base_link() {
        let m = Mounting {
            x: 1.0,
            z: 2.0,
            yaw: std::f64::consts::FRAC_PI_2,
            ..Default::default()
        };
        let mut p = [[1.0f32, 0.0, 0.0]];
        m.apply(&mut p);
        assert_relative_eq!(p[0][0], 1.0, epsilon = 1e-6);
        assert_relative_eq!(p[0][1], 1.0, epsilon = 1e-6);
        assert_relative_eq!(p[0][2], 2.0, epsilon = 1e-6);
        assert_relative_eq!(
            yaw_of(&m.pose().orientation),
            std::f64::consts::FRAC_PI_2,
            epsilon = 1e-12
        );
        assert_relative_eq!(yaw_of(&quaternion_from_yaw(-0.3)), -0.3, epsilon = 1e-12);
        assert_relative_eq!(
            fold_half_turn(3.0),
            3.0 - std::f64::consts::PI,
            epsilon = 1e-12
        );
        assert_relative_eq!(
            fold_half_turn(-2.0),
            -2.0 + std::f64::consts::PI,
            epsilon = 1e-12
        );
    }
}
