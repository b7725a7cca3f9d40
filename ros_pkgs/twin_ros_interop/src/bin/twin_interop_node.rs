//! `twin_interop_node`: exchanges every message of a fixture with another ROS 2 node.
//!
//! For each message type in the fixture it publishes the listed values on
//! `<ns>/from_rs/<type>` (through r2r, so rcl serializes them) and subscribes to the raw bytes
//! on `<ns>/from_py/<type>`. Each received buffer is checked against the value expected at its
//! position: twinlink's codec decodes it to that value, rcl decodes it to that value, and the
//! bytes equal twinlink's encoding outside alignment padding. When everything has arrived it
//! says so on `<ns>/done/rs` and waits for the peer's `<ns>/done/py`, then writes a JSON
//! report and exits 0 only if every value matched.
//!
//! Topics use reliable, transient-local QoS with a history as deep as the fixture, so neither
//! side has to start first.

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use r2r::QosProfile;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twin_ros_interop::{find, topic_suffix};

/// Exchange the messages of a fixture with a ROS 2 peer and check every byte.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// JSON fixture: {"types": {"<ros type>": [value, ...]}}.
    #[arg(long)]
    fixture: std::path::PathBuf,
    /// ROS namespace for the exchange topics, e.g. /interop_1234.
    #[arg(long, default_value = "/twin_interop")]
    namespace: String,
    /// Where to write the JSON report.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
}

/// Progress of one message type.
#[derive(Default)]
struct TypeProgress {
    expected: usize,
    received: usize,
    matched: usize,
    bytes: usize,
    errors: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.namespace.starts_with('/') {
        bail!("--namespace must start with '/', got {:?}", args.namespace);
    }
    let text = std::fs::read_to_string(&args.fixture)
        .with_context(|| format!("reading fixture {}", args.fixture.display()))?;
    let fixture: Value = serde_json::from_str(&text)
        .with_context(|| format!("fixture {} is not JSON", args.fixture.display()))?;
    let types = fixture
        .get("types")
        .and_then(Value::as_object)
        .context("fixture needs an object \"types\" mapping ROS type names to value lists")?;

    let ctx = r2r::Context::create()?;
    let mut node = r2r::Node::create(ctx, "twin_interop_node", &args.namespace)?;
    let progress: Arc<Mutex<BTreeMap<String, TypeProgress>>> = Arc::default();
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    let mut publishers = Vec::new();

    for (type_name, values) in types {
        let values = values
            .as_array()
            .with_context(|| format!("fixture: {type_name} must map to a list of values"))?
            .clone();
        let support = find(type_name)
            .with_context(|| format!("fixture: {type_name} is not a twinlink message type"))?;
        let depth = values.len().max(1);
        let qos = QosProfile::default()
            .reliable()
            .transient_local()
            .keep_last(depth);
        let suffix = topic_suffix(type_name);

        let publisher =
            node.create_publisher_untyped(&format!("from_rs/{suffix}"), type_name, qos.clone())?;
        for value in &values {
            publisher
                .publish(value.clone())
                .with_context(|| format!("publishing {type_name}"))?;
        }
        publishers.push(publisher);

        progress.lock().unwrap().insert(
            type_name.clone(),
            TypeProgress {
                expected: values.len(),
                ..Default::default()
            },
        );
        let mut raw = node.subscribe_raw(&format!("from_py/{suffix}"), type_name, qos)?;
        let progress = progress.clone();
        let type_name = type_name.clone();
        spawner.spawn_local(async move {
            while let Some(bytes) = raw.next().await {
                let mut all = progress.lock().unwrap();
                let entry = all.get_mut(&type_name).expect("registered above");
                let index = entry.received;
                entry.received += 1;
                entry.bytes += bytes.len();
                match values.get(index) {
                    None => entry
                        .errors
                        .push(format!("unexpected extra message #{index}")),
                    Some(expected) => match support.check_wire(expected, &bytes) {
                        Ok(()) => entry.matched += 1,
                        Err(e) => entry.errors.push(format!("message #{index}: {e}")),
                    },
                }
            }
        })?;
    }

    let done_qos = QosProfile::default()
        .reliable()
        .transient_local()
        .keep_last(1);
    let done_publisher =
        node.create_publisher::<r2r::std_msgs::msg::String>("done/rs", done_qos.clone())?;
    let mut peer_done_stream = node.subscribe::<r2r::std_msgs::msg::String>("done/py", done_qos)?;
    let peer_done = Arc::new(Mutex::new(false));
    {
        let peer_done = peer_done.clone();
        spawner.spawn_local(async move {
            if peer_done_stream.next().await.is_some() {
                *peer_done.lock().unwrap() = true;
            }
        })?;
    }

    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout_s);
    let mut said_done = false;
    let timed_out = loop {
        node.spin_once(Duration::from_millis(20));
        pool.run_until_stalled();
        let complete = progress
            .lock()
            .unwrap()
            .values()
            .all(|p| p.received >= p.expected);
        if complete && !said_done {
            done_publisher.publish(&r2r::std_msgs::msg::String {
                data: "done".into(),
            })?;
            said_done = true;
        }
        if complete && *peer_done.lock().unwrap() {
            break false;
        }
        if Instant::now() > deadline {
            break true;
        }
    };

    // Keep serving our history and done flag briefly so the peer is not cut off mid-delivery.
    let linger_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < linger_until {
        node.spin_once(Duration::from_millis(20));
        pool.run_until_stalled();
    }

    let all = progress.lock().unwrap();
    let mut ok = !timed_out;
    let mut report_types = serde_json::Map::new();
    println!(
        "{:<40} {:>9} {:>8} {:>9}  wire check (r2r side)",
        "type", "received", "matched", "bytes"
    );
    for (type_name, p) in all.iter() {
        ok &= p.errors.is_empty() && p.matched == p.expected;
        println!(
            "{:<40} {:>4}/{:<4} {:>8} {:>9}  {}",
            type_name,
            p.received,
            p.expected,
            p.matched,
            p.bytes,
            if p.errors.is_empty() && p.matched == p.expected {
                "ok"
            } else {
                "FAILED"
            }
        );
        for e in &p.errors {
            eprintln!("  {type_name}: {e}");
        }
        report_types.insert(
            type_name.clone(),
            json!({"expected": p.expected, "received": p.received, "matched": p.matched, "bytes": p.bytes, "errors": p.errors}),
        );
    }
    if timed_out {
        eprintln!(
            "timed out after {} s (peer done: {})",
            args.timeout_s,
            *peer_done.lock().unwrap()
        );
    }
    if let Some(path) = &args.report {
        let report = json!({"ok": ok, "timed_out": timed_out, "types": report_types});
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    drop(publishers);
    if ok {
        Ok(())
    } else {
        bail!("interop exchange failed")
    }
}
