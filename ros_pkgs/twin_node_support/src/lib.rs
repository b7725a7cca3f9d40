//! What every twinlink ROS 2 node shares, so that each node is a thin layer over its
//! ROS-free library in `crates/twinlink-vehicle`:
//!
//! - [`declare_parameters`]: reads what `--ros-args -p` / `--params-file` gave, validates it
//!   against the node's declared table (errors name the parameter), and serves the result
//!   through the standard parameter services (`ros2 param list/get`). Values are read at
//!   start: a change at run time is refused with a reason.
//! - [`qos`]: the profiles of the project's topics (sensor data, reliable, latched).
//! - [`CdrPublisher`] and [`subscribe_cdr`]: publish and receive messages through
//!   twinlink's CDR codec (byte-equal to rcl's), so that malformed input is a counted,
//!   typed decode error instead of a crash.
//! - [`Refusals`]: counters of refused input by reason, with rate-limited warnings.
//! - [`Diagnostics`]: a `diagnostic_msgs/DiagnosticArray` on `/diagnostics`.
//! - [`Shutdown`]: SIGINT/SIGTERM as a flag the spin loop checks.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use indexmap::IndexMap;
use r2r::{Parameter, ParameterValue, QosProfile, RosParams};
use twinlink_msgs::codec::{self, DecodeError};
use twinlink_msgs::Message;
use twinlink_vehicle::params::{resolve, Given, ParamErrors, ParamSpec, ParamValue, Params};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as every twinlink binary does.
pub fn init_logging() {
    twinlink_link::cli::init_tracing();
}

/// QoS profiles of twinlink's topics.
pub mod qos {
    use r2r::QosProfile;

    /// Sensor data (REP-2003): best effort, keep the newest 5, volatile.
    pub fn sensor_data() -> QosProfile {
        QosProfile::sensor_data()
    }

    /// Reliable, keep the newest `depth`, volatile (summaries, recommendations).
    pub fn reliable(depth: usize) -> QosProfile {
        QosProfile::default().reliable().keep_last(depth).volatile()
    }

    /// Reliable and transient local: late subscribers get the newest `depth` messages
    /// (status, markers).
    pub fn latched(depth: usize) -> QosProfile {
        QosProfile::default()
            .reliable()
            .keep_last(depth)
            .transient_local()
    }
}

fn to_ours(name: &str, value: &ParameterValue) -> Result<Option<ParamValue>, String> {
    Ok(match value {
        ParameterValue::NotSet => None,
        ParameterValue::Bool(b) => Some(ParamValue::Bool(*b)),
        ParameterValue::Integer(i) => Some(ParamValue::Int(*i)),
        ParameterValue::Double(d) => Some(ParamValue::Double(*d)),
        ParameterValue::String(s) => Some(ParamValue::Str(s.clone())),
        other => {
            return Err(format!(
                "parameter '{name}': arrays are not accepted, got {other:?}"
            ))
        }
    })
}

fn to_r2r(value: &ParamValue) -> ParameterValue {
    match value {
        ParamValue::Bool(b) => ParameterValue::Bool(*b),
        ParamValue::Int(i) => ParameterValue::Integer(*i),
        ParamValue::Double(d) => ParameterValue::Double(*d),
        ParamValue::Str(s) => ParameterValue::String(s.clone()),
    }
}

/// The validated parameters of a node, served read-only through the parameter services.
struct Frozen {
    specs: Vec<ParamSpec>,
    values: Params,
}

impl RosParams for Frozen {
    fn register_parameters(
        &mut self,
        _prefix: &str,
        _param: Option<Parameter>,
        params: &mut IndexMap<String, Parameter>,
    ) -> r2r::Result<()> {
        for spec in &self.specs {
            let value = self
                .values
                .iter()
                .find(|(name, _)| *name == spec.name)
                .map(|(_, v)| to_r2r(v))
                .unwrap_or(ParameterValue::NotSet);
            params.insert(
                spec.name.to_string(),
                Parameter {
                    value,
                    description: spec.description,
                },
            );
        }
        Ok(())
    }

    fn get_parameter(&mut self, name: &str) -> r2r::Result<ParameterValue> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| to_r2r(v))
            .ok_or_else(|| r2r::Error::InvalidParameterName {
                name: name.to_string(),
            })
    }

    fn set_parameter(&mut self, name: &str, _value: &ParameterValue) -> r2r::Result<()> {
        Err(r2r::Error::ParameterValueConv {
            name: name.to_string(),
            msg: "parameters are read at start; restart the node with the new value".into(),
        })
    }

    fn check_parameter(&self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        let _ = value;
        Err(r2r::Error::ParameterValueConv {
            name: name.to_string(),
            msg: "parameters are read at start; restart the node with the new value".into(),
        })
    }
}

/// Validates the parameters given to `node` against `specs` and serves them. Returns the
/// values and the parameter services' future, to be spawned on the node's executor.
pub fn declare_parameters(
    node: &mut r2r::Node,
    specs: Vec<ParamSpec>,
) -> anyhow::Result<(Params, impl std::future::Future<Output = ()> + Send)> {
    let mut given = Given::new();
    let mut problems = Vec::new();
    for (name, p) in node.params.lock().expect("parameter lock").iter() {
        match to_ours(name, &p.value) {
            Ok(Some(v)) => {
                given.insert(name.clone(), v);
            }
            Ok(None) => {}
            Err(e) => problems.push(e),
        }
    }
    let values = match resolve(&specs, &given) {
        Ok(v) if problems.is_empty() => v,
        Ok(_) => anyhow::bail!("invalid parameters: {}", problems.join("; ")),
        Err(ParamErrors(mut errors)) => {
            let mut text: Vec<String> = errors
                .drain(..)
                .map(|e| format!("parameter '{}': {}", e.name, e.problem))
                .collect();
            text.extend(problems);
            anyhow::bail!("invalid parameters: {}", text.join("; "))
        }
    };
    let frozen = Arc::new(Mutex::new(Frozen {
        specs,
        values: values.clone(),
    }));
    let (serve, _changes) = node
        .make_derived_parameter_handler(frozen)
        .map_err(|e| anyhow::anyhow!("parameter services: {e}"))?;
    for (name, value) in values.iter() {
        tracing::debug!(parameter = name, %value, "parameter");
    }
    Ok((values, serve))
}

/// A publisher that serializes with twinlink's codec.
pub struct CdrPublisher<M> {
    inner: r2r::PublisherUntyped,
    topic: String,
    _message: PhantomData<M>,
}

impl<M: Message> CdrPublisher<M> {
    /// Advertises `topic` with `qos`.
    pub fn new(node: &mut r2r::Node, topic: &str, qos: QosProfile) -> anyhow::Result<Self> {
        let inner = node
            .create_publisher_untyped(topic, M::TYPE_NAME, qos)
            .map_err(|e| anyhow::anyhow!("advertising {topic} ({}): {e}", M::TYPE_NAME))?;
        Ok(CdrPublisher {
            inner,
            topic: topic.to_string(),
            _message: PhantomData,
        })
    }

    /// Publishes one message.
    pub fn publish(&self, message: &M) -> anyhow::Result<()> {
        let bytes = codec::encode(message)
            .map_err(|e| anyhow::anyhow!("encoding {} for {}: {e}", M::TYPE_NAME, self.topic))?;
        self.inner
            .publish_raw(&bytes)
            .map_err(|e| anyhow::anyhow!("publishing on {}: {e}", self.topic))
    }
}

/// One received message: decoded (or the reason it is not), its CDR bytes, and when it was
/// taken from ROS [us since the epoch].
pub struct Received<M> {
    /// The message, or why its bytes are not one.
    pub message: Result<M, DecodeError>,
    /// The serialized message as it arrived (a node forwarding it unchanged reuses these
    /// instead of encoding it again).
    pub raw: Vec<u8>,
    /// When the node got it [us since the epoch].
    pub arrived_us: u64,
}

/// Subscribes to `topic`, decoding each message with twinlink's codec.
pub fn subscribe_cdr<M: Message>(
    node: &mut r2r::Node,
    topic: &str,
    qos: QosProfile,
) -> anyhow::Result<impl Stream<Item = Received<M>> + Unpin> {
    let raw = node
        .subscribe_raw(topic, M::TYPE_NAME, qos)
        .map_err(|e| anyhow::anyhow!("subscribing to {topic} ({}): {e}", M::TYPE_NAME))?;
    Ok(raw.map(|bytes| {
        let arrived_us = now_us();
        Received {
            message: codec::decode::<M>(&bytes),
            raw: bytes,
            arrived_us,
        }
    }))
}

/// Counters of refused input by reason, with warnings limited to one per reason per
/// `interval` (the lines not logged are counted and reported with the next one).
#[derive(Debug)]
pub struct Refusals {
    counts: BTreeMap<String, u64>,
    last_logged: BTreeMap<String, (Instant, u64)>,
    interval: Duration,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            counts: BTreeMap::new(),
            last_logged: BTreeMap::new(),
            interval: Duration::from_secs(1),
        }
    }
}

impl Refusals {
    /// Counts one refusal under `reason` and warns (rate-limited) with `detail`.
    pub fn refuse(&mut self, reason: &str, detail: &dyn std::fmt::Display) {
        *self.counts.entry(reason.to_string()).or_default() += 1;
        let now = Instant::now();
        let entry = self
            .last_logged
            .entry(reason.to_string())
            .or_insert((now - self.interval * 2, 0));
        if now.duration_since(entry.0) >= self.interval {
            tracing::warn!(reason, suppressed = entry.1, "refused input: {detail}");
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }

    /// The decoded message, or `None` after counting and reporting its decode error.
    pub fn accept<M>(&mut self, message: Result<M, DecodeError>) -> Option<M> {
        match message {
            Ok(m) => Some(m),
            Err(e) => {
                self.refuse(e.kind(), &e);
                None
            }
        }
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Refusals by reason.
    pub fn by_reason(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }
}

/// Publishes a node's health on `/diagnostics`.
pub struct Diagnostics {
    publisher: r2r::Publisher<r2r::diagnostic_msgs::msg::DiagnosticArray>,
    name: String,
    hardware_id: String,
}

impl Diagnostics {
    /// A publisher for the status named `name` (normally `<namespace>/<node>`).
    pub fn new(node: &mut r2r::Node, name: &str, hardware_id: &str) -> anyhow::Result<Self> {
        let publisher = node
            .create_publisher("/diagnostics", qos::reliable(10))
            .map_err(|e| anyhow::anyhow!("advertising /diagnostics: {e}"))?;
        Ok(Diagnostics {
            publisher,
            name: name.to_string(),
            hardware_id: hardware_id.to_string(),
        })
    }

    /// Publishes one status: WARN if anything was refused in the last period, else OK.
    pub fn publish(&self, refused_recently: bool, message: &str, values: &[(String, String)]) {
        use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
        let us = now_us();
        let status = DiagnosticStatus {
            level: if refused_recently {
                DiagnosticStatus::WARN as u8
            } else {
                DiagnosticStatus::OK as u8
            },
            name: self.name.clone(),
            message: message.to_string(),
            hardware_id: self.hardware_id.clone(),
            values: values
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        };
        let array = DiagnosticArray {
            header: r2r::std_msgs::msg::Header {
                stamp: r2r::builtin_interfaces::msg::Time {
                    sec: (us / 1_000_000) as i32,
                    nanosec: ((us % 1_000_000) * 1000) as u32,
                },
                frame_id: String::new(),
            },
            status: vec![status],
        };
        if let Err(e) = self.publisher.publish(&array) {
            tracing::warn!(error = %e, "publishing diagnostics");
        }
    }
}

/// SIGINT or SIGTERM received.
#[derive(Clone)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Installs the handlers.
    pub fn install() -> anyhow::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, flag.clone())
                .map_err(|e| anyhow::anyhow!("installing the handler of signal {signal}: {e}"))?;
        }
        Ok(Shutdown(flag))
    }

    /// True once a signal arrived.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The node's fully qualified name's namespace, e.g. `/car_1` (from `__ns` remapping).
pub fn namespace(node: &r2r::Node) -> String {
    node.namespace().unwrap_or_else(|_| "/".into())
}

/// Spins `node` and runs `pool`'s tasks until shutdown, waking at least every `tick`.
pub fn spin(
    node: &mut r2r::Node,
    pool: &mut futures::executor::LocalPool,
    shutdown: &Shutdown,
    tick: Duration,
) {
    while !shutdown.requested() {
        node.spin_once(tick);
        pool.run_until_stalled();
    }
}

/// Output side of a summarizer node: the summary topic, the optional debug markers, and the
/// node's health on `/diagnostics`.
pub struct SummaryOutput {
    summaries: CdrPublisher<twinlink_msgs::twin_msgs::msg::PerceptionSummary>,
    markers: Option<CdrPublisher<twinlink_msgs::visualization_msgs::msg::MarkerArray>>,
    marker_color: twinlink_msgs::std_msgs::msg::ColorRGBA,
    diagnostics: Diagnostics,
    /// Refused inputs by reason.
    pub refusals: Refusals,
    frames: u64,
    objects_last: usize,
    processing_ms_last: f64,
    refused_at_last_report: u64,
}

impl SummaryOutput {
    /// Advertises `summary_topic`, `~/debug/markers` (if `markers`) and `/diagnostics`.
    pub fn new(
        node: &mut r2r::Node,
        summary_topic: &str,
        markers: bool,
        marker_color: twinlink_msgs::std_msgs::msg::ColorRGBA,
        sensor_id: &str,
    ) -> anyhow::Result<Self> {
        let name = format!(
            "{}/{}",
            namespace(node).trim_end_matches('/'),
            node.name().unwrap_or_default()
        );
        Ok(SummaryOutput {
            summaries: CdrPublisher::new(node, summary_topic, qos::reliable(10))?,
            markers: if markers {
                Some(CdrPublisher::new(
                    node,
                    "~/debug/markers",
                    qos::reliable(2),
                )?)
            } else {
                None
            },
            marker_color,
            diagnostics: Diagnostics::new(node, &name, sensor_id)?,
            refusals: Refusals::default(),
            frames: 0,
            objects_last: 0,
            processing_ms_last: 0.0,
            refused_at_last_report: 0,
        })
    }

    /// Publishes a summary (its processing_time set from `arrived_us` to now) and its markers.
    pub fn publish(
        &mut self,
        mut summary: twinlink_msgs::twin_msgs::msg::PerceptionSummary,
        arrived_us: u64,
    ) {
        summary.processing_time = now_us().saturating_sub(arrived_us) as f32 / 1e6;
        self.frames += 1;
        self.objects_last = summary.objects.len();
        self.processing_ms_last = summary.processing_time as f64 * 1e3;
        if let Err(e) = self.summaries.publish(&summary) {
            tracing::warn!(error = %e, "publishing a summary");
        }
        if let Some(markers) = &self.markers {
            let view = twinlink_vehicle::markers::objects(
                &summary,
                &summary.sensor_id,
                self.marker_color.clone(),
                0.5,
            );
            if let Err(e) = markers.publish(&view) {
                tracing::warn!(error = %e, "publishing markers");
            }
        }
    }

    /// Publishes the node's health: frames, objects, processing time, refusals by reason.
    pub fn report(&mut self) {
        let total = self.refusals.total();
        let recent = total > self.refused_at_last_report;
        self.refused_at_last_report = total;
        let mut values = vec![
            ("frames".to_string(), self.frames.to_string()),
            ("objects_last".to_string(), self.objects_last.to_string()),
            (
                "processing_ms_last".to_string(),
                format!("{:.3}", self.processing_ms_last),
            ),
            ("refused_total".to_string(), total.to_string()),
        ];
        for (reason, n) in self.refusals.by_reason() {
            values.push((format!("refused_{reason}"), n.to_string()));
        }
        let message = if recent {
            "input refused since the last report"
        } else {
            "ok"
        };
        self.diagnostics.publish(recent, message, &values);
    }
}

/// The boilerplate of a node: logging, the ROS context and node (named `name`, namespace
/// from `__ns`), parameters declared from `specs`, SIGINT/SIGTERM handling, and the spin
/// loop. `build` creates the node's topics and tasks; the node then spins until shutdown.
/// A start-up error (invalid parameters, say) is printed and the process exits with 1.
/// Whatever `build` returns is kept until the spin loop ends, then dropped (a node with
/// work outside ROS returns its guard, e.g. a runtime that closes its link on drop).
pub fn run_node<G>(
    name: &str,
    specs: Vec<ParamSpec>,
    build: impl FnOnce(&mut r2r::Node, &Params, &futures::executor::LocalSpawner) -> anyhow::Result<G>,
) {
    if let Err(e) = try_run_node(name, specs, build) {
        tracing::error!("{e:#}");
        eprintln!("{name}: {e:#}");
        std::process::exit(1);
    }
}

fn try_run_node<G>(
    name: &str,
    specs: Vec<ParamSpec>,
    build: impl FnOnce(&mut r2r::Node, &Params, &futures::executor::LocalSpawner) -> anyhow::Result<G>,
) -> anyhow::Result<()> {
    use futures::task::LocalSpawnExt;
    init_logging();
    let shutdown = Shutdown::install()?;
    let ctx = r2r::Context::create().map_err(|e| anyhow::anyhow!("ROS context: {e}"))?;
    let mut node = r2r::Node::create(ctx, name, "")
        .map_err(|e| anyhow::anyhow!("creating node {name}: {e}"))?;
    let (params, serve) = declare_parameters(&mut node, specs)?;
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    spawner
        .spawn_local(serve)
        .map_err(|e| anyhow::anyhow!("spawning the parameter services: {e}"))?;
    let guard = build(&mut node, &params, &spawner)?;
    tracing::info!(node = name, namespace = %namespace(&node), "running");
    spin(&mut node, &mut pool, &shutdown, Duration::from_millis(20));
    tracing::info!(node = name, "shutting down");
    drop(guard);
    Ok(())
}
