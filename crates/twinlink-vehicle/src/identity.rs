//! Object ids that stay the same from one frame of a sensor to the next.

use twinlink_msgs::twin_msgs::msg::DetectedObject;

/// Gives each object the id of the nearest object of the previous frame within a gate
/// (closest pairs first), and a fresh id otherwise. Ids are never 0 (0 means "no identity").
#[derive(Debug, Clone)]
pub struct IdAssigner {
    gate: f64,
    previous: Vec<(u32, [f64; 2])>,
    next_id: u32,
}

impl IdAssigner {
    /// Objects that move less than `gate` metres between frames keep their id.
    pub fn new(gate: f64) -> Self {
        IdAssigner {
            gate,
            previous: Vec::new(),
            next_id: 1,
        }
    }

    /// Sets the `id` of every object in this frame.
    pub fn assign(&mut self, objects: &mut [DetectedObject]) {
        let gate2 = self.gate * self.gate;
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            for (j, (_, p)) in self.previous.iter().enumerate() {
                let d2 = (o.position.x - p[0]).powi(2) + (o.position.y - p[1]).powi(2);
                if d2 <= gate2 {
                    pairs.push((d2, i, j));
                }
            }
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut taken_new = vec![false; objects.len()];
        let mut taken_old = vec![false; self.previous.len()];
        for (_, i, j) in pairs {
            if !taken_new[i] && !taken_old[j] {
                taken_new[i] = true;
                taken_old[j] = true;
                objects[i].id = self.previous[j].0;
            }
        }
        for (i, o) in objects.iter_mut().enumerate() {
            if !taken_new[i] {
                o.id = self.next_id;
                self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            }
        }
        self.previous = objects
            .iter()
            .map(|o| (o.id, [o.position.x, o.position.y]))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f64, y: f64) -> DetectedObject {
        let mut o = DetectedObject::default();
        o.position.x = x;
        o.position.y = y;
        o
    }

    #[test]
    fn nearest_within_the_gate_keeps_its_id() {
        let mut ids = IdAssigner::new(2.0);
        let mut first = vec![at(0.0, 0.0), at(10.0, 0.0)];
        ids.assign(&mut first);
        assert_eq!((first[0].id, first[1].id), (1, 2));
        let mut second = vec![at(10.5, 0.0), at(30.0, 0.0), at(0.4, 0.0)];
        ids.assign(&mut second);
        assert_eq!((second[0].id, second[1].id, second[2].id), (2, 3, 1));
    }
}
