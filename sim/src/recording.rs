//! The demo's recording: an MCAP file that Foxglove opens, with the road as a 3D scene
//! (`foxglove.SceneUpdate`: every vehicle a box in `map`, coloured by speed, twinned
//! vehicles blue, hazards black), the road's vehicles as data, and each twinned vehicle's
//! recommendations and link status. Messages are JSON (`jsonschema` schemas).

use std::collections::BTreeMap;
use std::path::Path;

use mcap::records::MessageHeader;
use serde_json::{json, Value};

use crate::realtime::{Snapshot, TraceRecord};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn stamp(ns: u64) -> Value {
    json!({"sec": ns / 1_000_000_000, "nsec": ns % 1_000_000_000})
}

fn cube(x: f64, y: f64, length: f64, width: f64, height: f64, rgba: [f64; 4]) -> Value {
    json!({
        "pose": {"position": {"x": x, "y": y, "z": height / 2.0},
                 "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}},
        "size": {"x": length, "y": width, "z": height},
        "color": {"r": rgba[0], "g": rgba[1], "b": rgba[2], "a": rgba[3]},
    })
}

/// The road at one instant as a `foxglove.SceneUpdate`.
pub fn scene_update(s: &Snapshot, ns: u64, lane_width: f64, limit: f64) -> Value {
    let mut cubes = Vec::new();
    for v in &s.vehicles {
        let (length, width, height) = if v.truck {
            (12.0, 2.5, 3.5)
        } else {
            (4.5, 1.9, 1.5)
        };
        let f = (v.v / limit).clamp(0.0, 1.0);
        let rgba = if v.driven.is_some() {
            [0.1, 0.3, 1.0, 1.0]
        } else {
            [1.0 - f, f, 0.1, 0.9]
        };
        cubes.push(cube(
            v.s - length / 2.0,
            v.lane as f64 * lane_width,
            length,
            width,
            height,
            rgba,
        ));
    }
    for &(lane, back, front) in &s.hazards {
        cubes.push(cube(
            (back + front) / 2.0,
            lane as f64 * lane_width,
            (front - back).max(1.0),
            2.0,
            1.5,
            [0.0, 0.0, 0.0, 1.0],
        ));
    }
    let empty: Vec<Value> = Vec::new();
    json!({
        "deletions": [],
        "entities": [{
            "timestamp": stamp(ns),
            "frame_id": "map",
            "id": "road",
            "lifetime": {"sec": 0, "nsec": 0},
            "frame_locked": false,
            "metadata": empty,
            "arrows": empty, "cubes": cubes, "spheres": empty, "cylinders": empty,
            "lines": empty, "triangles": empty, "texts": empty, "models": empty,
        }],
    })
}

/// A loose JSON schema naming an object's fields (enough for Foxglove's panels).
fn schema(properties: &[&str]) -> Vec<u8> {
    let props: serde_json::Map<String, Value> = properties
        .iter()
        .map(|p| (p.to_string(), json!({})))
        .collect();
    serde_json::to_vec(&json!({"type": "object", "properties": props})).expect("a JSON value")
}

/// Writes `trace` (simulated time 0 at `epoch_us` on the wall clock) to `path`; returns the
/// number of messages written.
pub fn write_mcap(
    path: &Path,
    trace: &[TraceRecord],
    epoch_us: u64,
    lane_width: f64,
    limit: f64,
) -> Result<u64, String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = mcap::Writer::new(std::io::BufWriter::new(file)).map_err(err)?;
    let none = BTreeMap::new();
    let scene_schema = w
        .add_schema(
            "foxglove.SceneUpdate",
            "jsonschema",
            &schema(&["deletions", "entities"]),
        )
        .map_err(err)?;
    let scene = w
        .add_channel(scene_schema, "/sim/scene", "json", &none)
        .map_err(err)?;
    let snapshot_schema = w
        .add_schema(
            "twinlink.sim.Snapshot",
            "jsonschema",
            &schema(&["t", "vehicles", "hazards"]),
        )
        .map_err(err)?;
    let vehicles = w
        .add_channel(snapshot_schema, "/sim/vehicles", "json", &none)
        .map_err(err)?;
    let advice_schema = w
        .add_schema(
            "twinlink.sim.AdviceSample",
            "jsonschema",
            &schema(&[
                "t",
                "vehicle",
                "target_speed",
                "target_lane",
                "reason_code",
                "reason",
                "latency_ms",
            ]),
        )
        .map_err(err)?;
    let link_schema = w
        .add_schema(
            "twinlink.sim.LinkSample",
            "jsonschema",
            &schema(&[
                "t",
                "vehicle",
                "link_state",
                "rtt_s",
                "measured_bandwidth_bps",
                "uplink_bytes",
                "downlink_bytes",
                "buffered",
            ]),
        )
        .map_err(err)?;
    let mut per_vehicle: BTreeMap<(String, bool), u16> = BTreeMap::new();
    let mut sequence = 0u32;
    let mut written = 0u64;
    for record in trace {
        let (t, channel, data) = match record {
            TraceRecord::Snapshot(s) => {
                let ns = (epoch_us + (s.t.max(0.0) * 1e6) as u64) * 1000;
                let update =
                    serde_json::to_vec(&scene_update(s, ns, lane_width, limit)).map_err(err)?;
                sequence += 1;
                w.write_to_known_channel(
                    &MessageHeader {
                        channel_id: scene,
                        sequence,
                        log_time: ns,
                        publish_time: ns,
                    },
                    &update,
                )
                .map_err(err)?;
                written += 1;
                (s.t, vehicles, serde_json::to_vec(s).map_err(err)?)
            }
            TraceRecord::Advice(a) => {
                let key = (a.vehicle.clone(), true);
                let id = match per_vehicle.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = w
                            .add_channel(
                                advice_schema,
                                &format!("/{}/twin/recommendation", a.vehicle),
                                "json",
                                &none,
                            )
                            .map_err(err)?;
                        per_vehicle.insert(key, id);
                        id
                    }
                };
                (a.t, id, serde_json::to_vec(a).map_err(err)?)
            }
            TraceRecord::Link(l) => {
                let key = (l.vehicle.clone(), false);
                let id = match per_vehicle.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = w
                            .add_channel(
                                link_schema,
                                &format!("/{}/twin/status", l.vehicle),
                                "json",
                                &none,
                            )
                            .map_err(err)?;
                        per_vehicle.insert(key, id);
                        id
                    }
                };
                (l.t, id, serde_json::to_vec(l).map_err(err)?)
            }
        };
        let ns = (epoch_us + (t.max(0.0) * 1e6) as u64) * 1000;
        sequence += 1;
        w.write_to_known_channel(
            &MessageHeader {
                channel_id: channel,
                sequence,
                log_time: ns,
                publish_time: ns,
            },
            &data,
        )
        .map_err(err)?;
        written += 1;
    }
    w.finish().map_err(err)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::{AdviceSample, VehicleSample};

    #[test]
    fn the_recording_reads_back_with_its_channels_and_messages() {
        let snap = Snapshot {
            t: 0.5,
            vehicles: vec![VehicleSample {
                id: 1,
                s: 50.0,
                lane: 1,
                v: 20.0,
                truck: false,
                driven: Some("car_1".into()),
                advised: Some(18.0),
            }],
            hazards: vec![(0, 300.0, 305.0)],
        };
        let trace = vec![
            TraceRecord::Snapshot(snap.clone()),
            TraceRecord::Advice(AdviceSample {
                t: 0.7,
                vehicle: "car_1".into(),
                target_speed: 18.0,
                target_lane: 1,
                reason_code: 1,
                reason: "following".into(),
                latency_ms: 2.0,
                refused: None,
            }),
        ];
        let dir = std::env::temp_dir().join(format!("twinlink-mcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.mcap");
        let n = write_mcap(&path, &trace, 1_800_000_000_000_000, 3.5, 30.0).unwrap();
        assert_eq!(n, 3);
        let bytes = std::fs::read(&path).unwrap();
        let messages: Vec<_> = mcap::MessageStream::new(&bytes)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let topics: Vec<&str> = messages.iter().map(|m| m.channel.topic.as_str()).collect();
        assert_eq!(
            topics,
            ["/sim/scene", "/sim/vehicles", "/car_1/twin/recommendation"]
        );
        let scene: Value = serde_json::from_slice(&messages[0].data).unwrap();
        let cubes = scene["entities"][0]["cubes"].as_array().unwrap();
        assert_eq!(cubes.len(), 2, "the vehicle and the hazard");
        assert_eq!(cubes[0]["pose"]["position"]["y"], 3.5);
        assert_eq!(messages[0].log_time, 1_800_000_000_500_000_000);
        assert_eq!(
            messages[0].channel.schema.as_ref().unwrap().name,
            "foxglove.SceneUpdate"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
