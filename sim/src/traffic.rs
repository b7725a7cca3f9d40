//! The drivers: the Intelligent Driver Model for speed and MOBIL for lane choice.
//!
//! These are the simulator's own implementations, independent of the twin's planner
//! (`twin_dr_host::planner`), so that the world the twin is judged in does not share its
//! code. Parameters follow Treiber & Kesting, *Traffic Flow Dynamics* (2013), tables 11.2
//! (IDM, highway) and 14.3 (MOBIL).

/// IDM parameters of one driver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Idm {
    /// Desired time gap T [s].
    pub time_gap: f64,
    /// Minimum bumper gap s0 [m].
    pub min_gap: f64,
    /// Maximum acceleration a [m/s²].
    pub accel: f64,
    /// Comfortable deceleration b [m/s²].
    pub decel: f64,
    /// Acceleration exponent δ.
    pub delta: f64,
}

impl Idm {
    /// A car on a highway (T 1.0 s, s0 2 m, a 1.0 m/s², b 1.5 m/s², δ 4; Treiber & Kesting
    /// table 11.2 gives T 1.0 s, a 1.0, b 1.5 for highway traffic).
    pub fn car() -> Idm {
        Idm {
            time_gap: 1.0,
            min_gap: 2.0,
            accel: 1.0,
            decel: 1.5,
            delta: 4.0,
        }
    }

    /// A truck (T 1.5 s, a 0.5 m/s², b 1.0 m/s²).
    pub fn truck() -> Idm {
        Idm {
            time_gap: 1.5,
            min_gap: 2.0,
            accel: 0.5,
            decel: 1.0,
            delta: 4.0,
        }
    }

    /// Acceleration at speed `v` with desired speed `v0`, behind a leader at bumper gap
    /// `gap` driving at `v_leader` (`None`: free road). Never below -9 m/s² (a vehicle's
    /// physical limit).
    pub fn accel(&self, v: f64, v0: f64, leader: Option<(f64, f64)>) -> f64 {
        let v0 = v0.max(0.1);
        // Above the desired speed (a lower limit ahead), the improved IDM's free-road term
        // (Treiber & Kesting, section 11.3.6): slow down at most at b, not at the plain
        // IDM's a(1 - (v/v0)^δ), which is tens of m/s² at twice the desired speed.
        let free = if v <= v0 {
            self.accel * (1.0 - (v / v0).powf(self.delta))
        } else {
            -self.decel * (1.0 - (v0 / v).powf(self.accel * self.delta / self.decel))
        };
        let a = match leader {
            None => free,
            Some((gap, v_leader)) => {
                let dv = v - v_leader;
                let s_star = self.min_gap
                    + (v * self.time_gap + v * dv / (2.0 * (self.accel * self.decel).sqrt()))
                        .max(0.0);
                free - self.accel * (s_star / gap.max(0.1)).powi(2)
            }
        };
        a.max(-9.0)
    }
}

/// MOBIL parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mobil {
    /// Politeness p: weight of the others' advantage.
    pub politeness: f64,
    /// Changing threshold Δa_th [m/s²].
    pub threshold: f64,
    /// Largest deceleration imposed on the new follower [m/s²].
    pub safe_decel: f64,
    /// Keep-right bias a_bias [m/s²]: moving left needs this much more, moving right this
    /// much less.
    pub keep_right_bias: f64,
}

impl Default for Mobil {
    /// p 0.2, Δa_th 0.1 m/s², b_safe 4 m/s², a_bias 0.3 m/s² (Treiber & Kesting table 14.3).
    fn default() -> Self {
        Mobil {
            politeness: 0.2,
            threshold: 0.1,
            safe_decel: 4.0,
            keep_right_bias: 0.3,
        }
    }
}

/// The accelerations MOBIL weighs for one candidate lane change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneChangeCase {
    /// The changing vehicle's acceleration staying.
    pub own_now: f64,
    /// Its acceleration after the change.
    pub own_after: f64,
    /// The new follower's acceleration now and after (none: 0, 0).
    pub new_follower: (f64, f64),
    /// The old follower's acceleration now and after (none: 0, 0).
    pub old_follower: (f64, f64),
    /// Whether the change is to the left (away from lane 0).
    pub to_left: bool,
}

impl Mobil {
    /// The incentive of a change (above zero: worth it), or `None` when it is unsafe (the
    /// new follower would have to brake harder than `safe_decel`).
    pub fn incentive(&self, c: &LaneChangeCase) -> Option<f64> {
        if c.new_follower.1 < -self.safe_decel {
            return None;
        }
        let others = (c.new_follower.1 - c.new_follower.0) + (c.old_follower.1 - c.old_follower.0);
        let bias = if c.to_left {
            -self.keep_right_bias
        } else {
            self.keep_right_bias
        };
        Some(c.own_after - c.own_now + self.politeness * others - self.threshold + bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idm_reaches_its_desired_speed_and_keeps_the_equilibrium_gap() {
        let idm = Idm::car();
        assert!((idm.accel(0.0, 30.0, None) - 1.0).abs() < 1e-12);
        assert!(idm.accel(30.0, 30.0, None).abs() < 1e-12);
        assert!(idm.accel(35.0, 30.0, None) < 0.0);
        // Far above the desired speed it slows down at most at b.
        let over = idm.accel(30.0, 10.0, None);
        assert!(over < -1.0 && over >= -idm.decel, "{over}");
        // Behind a leader at the same speed the equilibrium gap is (s0 + vT) / sqrt(1 -
        // (v/v0)^δ): zero acceleration there.
        let (v, v0) = (20.0, 30.0);
        let gap = (idm.min_gap + v * idm.time_gap) / (1.0 - (v / v0).powf(4.0)).sqrt();
        assert!(idm.accel(v, v0, Some((gap, v))).abs() < 1e-9);
        // Closing in on a standing obstacle brakes, harder when nearer, at most 9 m/s².
        let far = idm.accel(25.0, 30.0, Some((200.0, 0.0)));
        let near = idm.accel(25.0, 30.0, Some((40.0, 0.0)));
        assert!(near < far && far < 0.0);
        assert_eq!(idm.accel(25.0, 30.0, Some((1.0, 0.0))), -9.0);
    }

    #[test]
    fn mobil_changes_for_a_real_advantage_keeps_right_and_refuses_unsafe_gaps() {
        let m = Mobil::default();
        let case = |own_now, own_after, to_left| LaneChangeCase {
            own_now,
            own_after,
            new_follower: (0.0, 0.0),
            old_follower: (0.0, 0.0),
            to_left,
        };
        // A blocked lane: a large advantage is taken either way.
        assert!(m.incentive(&case(-3.0, 0.5, true)).unwrap() > 0.0);
        // A small advantage is worth moving right, not left.
        assert!(m.incentive(&case(0.0, 0.1, false)).unwrap() > 0.0);
        assert!(m.incentive(&case(0.0, 0.1, true)).unwrap() < 0.0);
        // Cutting in so that the new follower brakes at 5 m/s² is refused.
        let mut unsafe_case = case(-3.0, 1.0, true);
        unsafe_case.new_follower = (0.0, -5.0);
        assert_eq!(m.incentive(&unsafe_case), None);
        // Politeness: the others' loss counts against the change.
        let mut rude = case(0.0, 0.6, false);
        rude.new_follower = (0.0, -3.0);
        assert!(m.incentive(&rude).unwrap() < m.incentive(&case(0.0, 0.6, false)).unwrap());
    }
}
