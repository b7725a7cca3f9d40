//! `twin_link_node`: the PE end of the intra-twin link on the vehicle's ROS 2 graph.
//!
//! ROS side (this thread): odometry and perception summaries are decoded, validated and
//! converted (`twinlink_vehicle::uplink`), then handed to the link; the services answer
//! from the shared state. Link side (a one-worker tokio runtime): the link end
//! (`twinlink_link::Link`), which seals and sends over Zenoh, receives recommendations and
//! publishes them, the status and the markers straight to ROS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::task::LocalSpawnExt;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use twin_node_support::{now_us, qos, run_node, subscribe_cdr, CdrPublisher, Refusals};
use twinlink_link::link::LinkStats;
use twinlink_link::minimal::{from_link, ros_time, STREAM_STATE};
use twinlink_link::{
    KeyMaterial, Link, LinkConfig, LinkEvent, Message, Role, VehicleId, ZenohSettings,
};
use twinlink_msgs::codec;
use twinlink_msgs::nav_msgs::msg::Odometry;
use twinlink_msgs::twin_msgs::msg::{
    Incident, PerceptionSummary, Recommendation, SharedObservation, SharingPolicy, TwinStatus,
};
use twinlink_msgs::visualization_msgs::msg::MarkerArray;
use twinlink_vehicle::markers;
use twinlink_vehicle::uplink::{
    self, NodeCounters, PolicyStore, UplinkConfig, STREAM_INCIDENT, STREAM_POLICY,
};

/// What both threads see.
#[derive(Default)]
struct Shared {
    counters: NodeCounters,
    refusals: Refusals,
    stats: Option<LinkStats>,
    link_state: u8,
    link_state_since_us: u64,
    /// created_us of the newest state sent while the DR was reachable.
    newest_state_us: u64,
    last_state_sent_us: u64,
    policy: PolicyStore,
    /// Newest uplinked summary of each sensor (what the twin sees).
    seen: std::collections::BTreeMap<String, PerceptionSummary>,
    /// Which objects of each summary go up.
    inclusion: twinlink_vehicle::inclusion::ObjectInclusion,
    /// The vehicle's newest forward speed from odometry [m/s].
    ego_speed: f64,
    /// Which of the vehicle's states go up.
    state_inclusion: twinlink_vehicle::inclusion::StateInclusion,
}

impl Shared {
    fn status(&self, vehicle: &str) -> TwinStatus {
        let now = now_us();
        let stats = self.stats.clone().unwrap_or_default();
        let rtt_s = stats.rtt.smoothed_us.unwrap_or(0) as f32 / 1e6;
        let sync_lag = if self.newest_state_us == 0 {
            -1.0
        } else {
            now.saturating_sub(self.newest_state_us) as f32 / 1e6 + rtt_s / 2.0
        };
        let mut counters = self.counters.clone();
        counters.rejected = self.refusals.by_reason().clone();
        uplink::twin_status(
            vehicle,
            &stats,
            &counters,
            self.link_state,
            self.link_state_since_us,
            sync_lag,
            now,
        )
    }

    fn refuse(&mut self, reason: &str, detail: &dyn std::fmt::Display) {
        self.refusals.refuse(reason, detail);
    }
}

/// Keeps the link runtime alive; on drop, closes the link (leaving the DR a clean
/// "left" instead of a timeout) and writes the report.
struct LinkGuard {
    runtime: Option<tokio::runtime::Runtime>,
    close: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        if let (Some(runtime), Some(task)) = (self.runtime.take(), self.task.take()) {
            let _ = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(3), task).await });
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn main() {
    run_node(
        "twin_link_node",
        uplink::parameters(),
        |node, params, spawner| {
            let namespace = twin_node_support::namespace(node);
            let config =
                UplinkConfig::from_params(params, &namespace).map_err(anyhow::Error::msg)?;
            let vehicle = VehicleId::new(&config.vehicle_id)?;
            let material =
                KeyMaterial::load(std::path::Path::new(&config.key_file), &vehicle, Role::Pe)
                    .map_err(|e| {
                        anyhow::anyhow!("parameter 'key_file': {}: {e}", config.key_file)
                    })?;
            let zenoh = ZenohSettings {
                mode: config.zenoh_mode.clone(),
                listen: config.zenoh_listen.clone(),
                connect: config.zenoh_connect.clone(),
            };
            let mut link_config = LinkConfig::new(material, zenoh);
            link_config.compress = config.compress_uplink;
            link_config.heartbeat = Duration::from_secs_f64(config.heartbeat_s);
            // In simulation, the coverage where the vehicle is shapes the link both ways.
            let radio = match config.radio_map_file.as_str() {
                "" => None,
                path => {
                    let map = twinlink_link::radio::RadioMap::load(std::path::Path::new(path))
                        .map_err(|e| anyhow::anyhow!("parameter 'radio_map_file': {e}"))?;
                    let radio = twinlink_link::radio::Radio::new(
                        link_config.faults.clone(),
                        link_config.inbound_faults.clone(),
                    );
                    Some((map, radio))
                }
            };
            let shared = Arc::new(Mutex::new(Shared {
                link_state: TwinStatus::LINK_CONNECTING,
                link_state_since_us: now_us(),
                inclusion: twinlink_vehicle::inclusion::ObjectInclusion::new(config.inclusion),
                state_inclusion: twinlink_vehicle::inclusion::StateInclusion::new(
                    config.state_inclusion,
                ),
                ..Default::default()
            }));

            // Publishers, used from the link thread.
            let recommendations =
                CdrPublisher::<Recommendation>::new(node, "twin/recommendation", qos::latched(1))?;
            let status_pub = CdrPublisher::<TwinStatus>::new(node, "twin/status", qos::latched(1))?;
            let relayed_pub =
                CdrPublisher::<SharedObservation>::new(node, "twin/relayed", qos::reliable(10))?;
            let marker_pub = if config.publish_markers {
                Some(CdrPublisher::<MarkerArray>::new(
                    node,
                    "twin/markers",
                    qos::reliable(2),
                )?)
            } else {
                None
            };

            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("twin-link")
                .enable_all()
                .build()?;
            let (to_link, mut uplink_rx) = mpsc::unbounded_channel::<Message>();
            let (close_tx, mut close_rx) = oneshot::channel::<()>();
            let link = runtime.block_on(Link::open(link_config))?;
            let link_shared = shared.clone();
            let link_vehicle = config.vehicle_id.clone();
            let status_period = Duration::from_secs_f64(config.status_period);
            let degraded_loss = config.degraded_loss;
            let report_file = config.report_file.clone();
            let task = runtime.spawn(async move {
            let mut link = link;
            let mut status_tick = tokio::time::interval(status_period);
            loop {
                tokio::select! {
                    _ = &mut close_rx => break,
                    Some(message) = uplink_rx.recv() => {
                        if let Err(e) = link.send(message) {
                            warn!(error = %e, "the link refused a message");
                        }
                        while let Ok(message) = uplink_rx.try_recv() {
                            if let Err(e) = link.send(message) {
                                warn!(error = %e, "the link refused a message");
                            }
                        }
                    }
                    _ = status_tick.tick() => {
                        let Ok(stats) = link.stats().await else { break };
                        let status = {
                            let mut s = link_shared.lock().expect("state lock");
                            let state = uplink::link_state(&stats, degraded_loss);
                            if state != s.link_state {
                                s.link_state = state;
                                s.link_state_since_us = now_us();
                            }
                            s.stats = Some(stats);
                            s.status(&link_vehicle)
                        };
                        if let Err(e) = status_pub.publish(&status) {
                            warn!(error = %e, "publishing the twin status");
                        }
                    }
                    event = link.recv() => {
                        let Some(event) = event else { break };
                        match event {
                            LinkEvent::Message(delivered) => {
                                let message = &delivered.message;
                                if message.type_name == <SharedObservation as twinlink_msgs::Message>::TYPE_NAME {
                                    // Another twin's observation, relayed by this vehicle's twin.
                                    match from_link::<SharedObservation>(message) {
                                        Ok(observation) => {
                                            if let Err(e) = relayed_pub.publish(&observation) {
                                                warn!(error = %e, "publishing a relayed observation");
                                            }
                                            link_shared.lock().expect("state lock").counters.relayed += 1;
                                        }
                                        Err(e) => link_shared.lock().expect("state lock").refuse("bad_relayed", &e),
                                    }
                                    continue;
                                }
                                if message.type_name != <Recommendation as twinlink_msgs::Message>::TYPE_NAME {
                                    link_shared.lock().expect("state lock").refuse("unexpected_type", &format!("stream {:?} carries {}", message.stream, message.type_name));
                                    continue;
                                }
                                match from_link::<Recommendation>(message) {
                                    Ok(rec) => {
                                        if let Err(e) = recommendations.publish(&rec) {
                                            warn!(error = %e, "publishing a recommendation");
                                        }
                                        let view = {
                                            let mut s = link_shared.lock().expect("state lock");
                                            s.counters.recommendations += 1;
                                            marker_pub.as_ref().map(|_| {
                                                let stamp = ros_time(now_us());
                                                let mut view = markers::recommendation(&rec, &stamp, "twin/advice", 2.0);
                                                for (sensor, summary) in &s.seen {
                                                    markers::extend(&mut view, markers::objects(summary, &format!("twin/{sensor}"), markers::rgba(0.7, 0.3, 1.0, 0.35), 2.0));
                                                }
                                                view
                                            })
                                        };
                                        if let (Some(publisher), Some(view)) = (&marker_pub, view) {
                                            if let Err(e) = publisher.publish(&view) {
                                                warn!(error = %e, "publishing markers");
                                            }
                                        }
                                    }
                                    Err(e) => link_shared.lock().expect("state lock").refuse("bad_recommendation", &e),
                                }
                            }
                            LinkEvent::PeerUp { session } => info!(session, "twin reachable"),
                            LinkEvent::PeerDown { reason } => info!(reason, "twin unreachable; uplink is buffered"),
                        }
                    }
                }
            }
            let stats = link.stats().await.ok();
            link.close().await;
            if !report_file.is_empty() {
                let s = link_shared.lock().expect("state lock");
                let report = serde_json::json!({
                    "node": "twin_link_node",
                    "vehicle": link_vehicle,
                    "counters": s.counters,
                    "refused": s.refusals.by_reason(),
                    "link": stats,
                });
                match serde_json::to_vec_pretty(&report) {
                    Ok(bytes) => {
                        if let Err(e) = std::fs::write(&report_file, bytes) {
                            warn!(error = %e, file = %report_file, "writing the report");
                        }
                    }
                    Err(e) => warn!(error = %e, "serializing the report"),
                }
            }
        });

            // ROS side: odometry.
            let mut odometry = subscribe_cdr::<Odometry>(node, "odom", qos::sensor_data())?;
            let (odom_shared, odom_link, odom_config) =
                (shared.clone(), to_link.clone(), config.clone());
            let mut radio = radio;
            let min_state_gap_us = (1e6 / config.state_rate) as u64;
            spawner.spawn_local(async move {
                while let Some(received) = odometry.next().await {
                    let mut s = odom_shared.lock().expect("state lock");
                    let Some(odom) = s.refusals.accept(received.message) else {
                        continue;
                    };
                    let state = match uplink::odometry_to_state(&odom, &odom_config) {
                        Ok(state) => state,
                        Err(e) => {
                            s.refuse(e.kind(), &e);
                            continue;
                        }
                    };
                    s.ego_speed = odom.twist.twist.linear.x;
                    if let Some((map, radio)) = &mut radio {
                        let quality = map.at(odom.pose.pose.position.x);
                        radio.apply(quality);
                        s.counters.radio_changes = radio.changes();
                        if !quality.is_covered() {
                            s.counters.radio_uncovered += 1;
                        }
                    }
                    if received.arrived_us.saturating_sub(s.last_state_sent_us) < min_state_gap_us {
                        s.counters.states_decimated += 1;
                        continue;
                    }
                    let due = s.state_inclusion.select(&state);
                    s.counters.state_inclusion = s.state_inclusion.stats();
                    if !due {
                        continue;
                    }
                    s.last_state_sent_us = received.arrived_us;
                    if s.link_state == TwinStatus::LINK_CONNECTED
                        || s.link_state == TwinStatus::LINK_DEGRADED
                    {
                        s.newest_state_us = received.arrived_us;
                    }
                    s.counters.uplinked += 1;
                    drop(s);
                    let message = twinlink_link::minimal::to_link(
                        STREAM_STATE,
                        uplink::priority_of(STREAM_STATE),
                        &state,
                        received.arrived_us,
                    );
                    let _ = odom_link.send(message);
                }
            })?;

            // ROS side: summaries.
            for topic in &config.summary_topics {
                let mut summaries =
                    subscribe_cdr::<PerceptionSummary>(node, topic, qos::reliable(10))?;
                let (sum_shared, sum_link, sum_config) =
                    (shared.clone(), to_link.clone(), config.clone());
                spawner.spawn_local(async move {
                    while let Some(received) = summaries.next().await {
                        let mut s = sum_shared.lock().expect("state lock");
                        let Some(summary) = s.refusals.accept(received.message) else {
                            continue;
                        };
                        if let Err(e) =
                            uplink::check_summary(&summary, &sum_config, received.arrived_us)
                        {
                            s.refuse(e.kind(), &e);
                            continue;
                        }
                        let stream =
                            uplink::stream_for_sensor(&summary.sensor_id).expect("checked above");
                        let ego_speed = s.ego_speed;
                        let selected = s.inclusion.select(&summary, ego_speed);
                        s.counters.inclusion = s.inclusion.stats();
                        let Some(selected) = selected else {
                            s.counters.summaries_unchanged += 1;
                            continue;
                        };
                        s.counters.uplinked += 1;
                        // A summary sent whole goes up as it arrived (its CDR bytes decoded
                        // and validated above, not encoded a second time).
                        let payload = if selected.objects.len() == summary.objects.len() {
                            received.raw
                        } else {
                            match twinlink_msgs::codec::encode(&selected) {
                                Ok(bytes) => bytes,
                                Err(e) => {
                                    s.refuse("encode_failed", &e);
                                    continue;
                                }
                            }
                        };
                        s.seen.insert(summary.sensor_id.clone(), summary);
                        drop(s);
                        let message = Message {
                            priority: uplink::priority_of(&stream),
                            stream,
                            type_name: <PerceptionSummary as twinlink_msgs::Message>::TYPE_NAME
                                .to_string(),
                            created_us: received.arrived_us,
                            payload,
                        };
                        let _ = sum_link.send(message);
                    }
                })?;
            }

            // ROS side: incidents the vehicle reports itself.
            let mut incidents =
                subscribe_cdr::<Incident>(node, "twin/incident_report", qos::reliable(10))?;
            let (inc_shared, inc_link) = (shared.clone(), to_link.clone());
            spawner.spawn_local(async move {
                while let Some(received) = incidents.next().await {
                    let mut s = inc_shared.lock().expect("state lock");
                    let Some(incident) = s.refusals.accept(received.message) else {
                        continue;
                    };
                    if let Err(e) = uplink::check_incident(&incident) {
                        s.refuse(e.kind(), &e);
                        continue;
                    }
                    s.counters.incidents += 1;
                    s.counters.uplinked += 1;
                    drop(s);
                    let message = twinlink_link::minimal::to_link(
                        STREAM_INCIDENT,
                        uplink::priority_of(STREAM_INCIDENT),
                        &incident,
                        received.arrived_us,
                    );
                    let _ = inc_link.send(message);
                }
            })?;

            // Services.
            let mut get_status = node
                .create_service::<r2r::twin_msgs::srv::GetTwinStatus::Service>(
                    "twin/get_status",
                    qos::reliable(10),
                )
                .map_err(|e| anyhow::anyhow!("service twin/get_status: {e}"))?;
            let (svc_shared, svc_vehicle) = (shared.clone(), config.vehicle_id.clone());
            spawner.spawn_local(async move {
                while let Some(request) = get_status.next().await {
                    let status = svc_shared.lock().expect("state lock").status(&svc_vehicle);
                    let response = r2r::twin_msgs::srv::GetTwinStatus::Response {
                        status: to_r2r(&status),
                    };
                    if let Err(e) = request.respond(response) {
                        warn!(error = %e, "answering twin/get_status");
                    }
                }
            })?;
            let mut set_policy = node
                .create_service::<r2r::twin_msgs::srv::SetSharingPolicy::Service>(
                    "twin/set_sharing_policy",
                    qos::reliable(10),
                )
                .map_err(|e| anyhow::anyhow!("service twin/set_sharing_policy: {e}"))?;
            let (policy_shared, policy_link) = (shared.clone(), to_link.clone());
            spawner.spawn_local(async move {
                while let Some(request) = set_policy.next().await {
                    let policy: Result<SharingPolicy, String> = from_r2r(&request.message.policy);
                    let mut s = policy_shared.lock().expect("state lock");
                    let outcome = policy.and_then(|p| s.policy.set(p));
                    let response = match outcome {
                        Ok(accepted) => {
                            let message = twinlink_link::minimal::to_link(
                                STREAM_POLICY,
                                uplink::priority_of(STREAM_POLICY),
                                &accepted,
                                now_us(),
                            );
                            let _ = policy_link.send(message);
                            info!(
                                version = accepted.version,
                                rules = accepted.rules.len(),
                                "sharing policy accepted"
                            );
                            r2r::twin_msgs::srv::SetSharingPolicy::Response {
                                accepted: true,
                                message: String::new(),
                                version: accepted.version,
                            }
                        }
                        Err(reason) => {
                            s.refuse("bad_policy", &reason);
                            r2r::twin_msgs::srv::SetSharingPolicy::Response {
                                accepted: false,
                                message: reason,
                                version: s.policy.current().version,
                            }
                        }
                    };
                    drop(s);
                    if let Err(e) = request.respond(response) {
                        warn!(error = %e, "answering twin/set_sharing_policy");
                    }
                }
            })?;

            Ok(LinkGuard {
                runtime: Some(runtime),
                close: Some(close_tx),
                task: Some(task),
            })
        },
    );
}

/// Moves a message into r2r's type through the CDR bytes both sides agree on.
fn to_r2r<M: twinlink_msgs::Message, R: r2r::WrappedTypesupport + Default>(message: &M) -> R {
    codec::encode(message)
        .ok()
        .and_then(|bytes| R::from_serialized_bytes(&bytes).ok())
        .unwrap_or_default()
}

/// Moves a message from r2r's type into twinlink's, or says why not.
fn from_r2r<R: r2r::WrappedTypesupport, M: twinlink_msgs::Message>(
    message: &R,
) -> Result<M, String> {
    let bytes = message
        .to_serialized_bytes()
        .map_err(|e| format!("serializing the request: {e}"))?;
    codec::decode(&bytes).map_err(|e| e.to_string())
}
