//! The host's operator endpoint: HTTP/1.1 (axum) for loopback or a management network.
//!
//! | method and path | role | what |
//! |---|---|---|
//! | `GET /metrics` | viewer | Prometheus metrics (OpenMetrics text) |
//! | `GET /twins` | viewer | every hosted twin: id, active or dormant, counters (JSON) |
//! | `GET /twins/<vehicle>` | viewer | one twin as a document: reported state, advice, link (JSON) |
//! | `GET /twins/<vehicle>/policy` | viewer | the sharing policy in force, its version and origin (JSON) |
//! | `PUT /twins/<vehicle>/policy` | operator | replaces the sharing policy (a [`PolicyDocument`]); durable, audited |
//! | `GET /view` | none (the page holds no data) | the live fleet view: a web page that reads `/view/data` every second |
//! | `GET /view/data` | viewer | the fleet view's data: the road, every host of the fleet with its key metrics, every twin's state document placed on the road (`?scope=host`: this host only) |
//!
//! **Access.** With a token file (`twin-dr-host --admin-tokens FILE`), every request needs
//! `Authorization: Bearer <token>` of a role that may make it (`operator` may do what
//! `viewer` may): 401 without a known token, 403 with one of too low a role. Without a
//! token file, reads are open (bind the endpoint where only operators reach it) and
//! changes are refused. A token file has one line per token, `<role> <name> <token>`
//! (`#` starts a comment); the name is what the audit log records; tokens are at least
//! 16 characters.
//!
//! Request bodies are limited to 16 KiB; each connection carries one request, whose head
//! must arrive within 5 s and which must be done within 30 s; at most 64 connections are
//! served at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get as get_route;
use axum::Router;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use twinlink_msgs::twin_msgs::msg::SharingPolicy;
use twinlink_share::PolicyDocument;

use crate::metrics::HostMetrics;

/// A question or change for the host's registry.
#[derive(Debug)]
pub enum AdminRequest {
    /// Every twin.
    List(oneshot::Sender<Value>),
    /// One twin; `None` when it is not hosted.
    Get(String, oneshot::Sender<Option<Value>>),
    /// One twin's sharing policy; `None` when it is not hosted.
    GetPolicy(String, oneshot::Sender<Option<Value>>),
    /// Replace one twin's sharing policy.
    SetPolicy(PolicyChange, oneshot::Sender<Result<Value, AdminError>>),
    /// The newest records of one twin's history; `None` when it is not hosted.
    History(
        HistoryQuery,
        oneshot::Sender<Option<Result<Value, AdminError>>>,
    ),
    /// One twin's state document; `None` when it is not hosted.
    GetState(String, oneshot::Sender<Option<Value>>),
    /// Replace what an operator wants of one twin.
    SetDesired(DesiredChange, oneshot::Sender<Result<Value, AdminError>>),
    /// The admin endpoint of the fleet's host that serves a vehicle now, if another one.
    Owner(String, oneshot::Sender<Option<String>>),
    /// The fleet's hosts and this host's shards (`null` outside a fleet).
    Fleet(oneshot::Sender<Result<Value, AdminError>>),
    /// Drain this host (by the named operator): its twins move to the fleet's other hosts.
    Drain(String, oneshot::Sender<Result<Value, AdminError>>),
    /// What the fleet view shows of this host: its road and every twin's state document,
    /// placed on the road (a [`ViewDocument`] as JSON).
    View(oneshot::Sender<Value>),
}

/// Header naming the admin endpoint of the fleet's host that serves a twin asked for on
/// another host (with status 404); [`request`] follows it once.
pub const OWNER_HEADER: &str = "x-twinlink-owner";

/// An operator's new sharing policy for one twin.
#[derive(Debug, Clone)]
pub struct PolicyChange {
    /// The twin's vehicle.
    pub vehicle: String,
    /// The policy (names checked; values are checked by the twin's consent).
    pub policy: SharingPolicy,
    /// The operator's name from the token file.
    pub operator: String,
}

/// Which records of a twin's history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The twin's vehicle.
    pub vehicle: String,
    /// At most this many, the newest.
    pub limit: usize,
    /// Of this kind only (`policy`, `lifecycle`, `disclosure`, ...).
    pub kind: Option<String>,
}

/// Most records one history request returns.
pub const MAX_HISTORY: usize = 1000;

/// The history query of `GET /twins/<v>/history?limit=N&kind=K` (default 20, any kind).
pub fn parse_history_query(vehicle: &str, query: Option<&str>) -> Result<HistoryQuery, String> {
    let mut q = HistoryQuery {
        vehicle: vehicle.to_string(),
        limit: 20,
        kind: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_HISTORY).contains(n))
                    .ok_or_else(|| format!("limit must be 1 to {MAX_HISTORY}, got {value:?}"))?
            }
            "kind" => {
                let known = [
                    "genesis",
                    "exchange_in",
                    "exchange_out",
                    "disclosure",
                    "policy",
                    "lifecycle",
                    "checkpoint",
                ];
                if !known.contains(&value) {
                    return Err(format!(
                        "kind must be one of {}, got {value:?}",
                        known.join(", ")
                    ));
                }
                q.kind = Some(value.to_string());
            }
            other => return Err(format!("unknown query parameter {other:?} (limit, kind)")),
        }
    }
    Ok(q)
}

/// An operator's new desired state for one twin.
#[derive(Debug, Clone)]
pub struct DesiredChange {
    /// The twin's vehicle.
    pub vehicle: String,
    /// Highest speed the twin may advise [m/s] (`None`: no cap).
    pub max_speed_mps: Option<f64>,
    /// The version the operator read (`If-Match`): refused with 409 if it moved on.
    pub if_version: Option<u64>,
    /// The operator's name from the token file.
    pub operator: String,
}

/// The body of `PUT /twins/<vehicle>/desired`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredDocument {
    /// Highest speed the twin may advise [m/s]; null or absent: no cap.
    #[serde(default)]
    pub max_speed_mps: Option<f64>,
    /// The version this change follows (as the `If-Match` header): refused with 409 if the
    /// desired state moved on since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
}

/// A refused request: its HTTP status and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    /// HTTP status code.
    pub status: u16,
    /// Message for the operator.
    pub message: String,
}

impl AdminError {
    /// A refusal with `status` and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        AdminError {
            status,
            message: message.into(),
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read metrics, twins and policies.
    Viewer,
    /// Also change policies.
    Operator,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The operators' tokens (see the module documentation), kept as SHA-256 digests.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], (Role, String)>,
}

impl Tokens {
    /// Reads a token file; errors name the line and what is wrong with it.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the token file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a token file.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [role, name, token] = fields[..] else {
                return Err(format!(
                    "line {}: expected `<role> <name> <token>`, got {} fields",
                    n + 1,
                    fields.len()
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "line {}: role {role:?} is not one of viewer, operator",
                    n + 1
                )
            })?;
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {}: the token of {name:?} is shorter than {MIN_TOKEN_LEN} characters",
                    n + 1
                ));
            }
            if tokens
                .by_digest
                .insert(digest(token), (role, name.to_string()))
                .is_some()
            {
                return Err(format!("line {}: a token given twice", n + 1));
            }
        }
        if tokens.by_digest.is_empty() {
            return Err("no tokens".into());
        }
        Ok(tokens)
    }

    /// The role and name of `token`, if it is one.
    pub fn lookup(&self, token: &str) -> Option<(Role, &str)> {
        self.by_digest
            .get(&digest(token))
            .map(|(r, n)| (*r, n.as_str()))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Most admin connections served at once (more are closed at once).
const MAX_CONNECTIONS: usize = 64;

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<HostMetrics>,
    requests: mpsc::Sender<AdminRequest>,
    tokens: Option<Arc<Tokens>>,
}

impl AdminState {
    /// Who asks, if they may do what needs `need`; the refusal otherwise.
    fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<String, Response> {
        let Some(tokens) = &self.tokens else {
            return if need == Role::Viewer {
                Ok("anonymous".into())
            } else {
                Err(text(
                    StatusCode::FORBIDDEN,
                    "changes need operator tokens: start the host with --admin-tokens FILE\n",
                ))
            };
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some((role, name)) = token.and_then(|t| tokens.lookup(t)) else {
            return Err(text(
                StatusCode::UNAUTHORIZED,
                "a known token is needed: Authorization: Bearer <token> (twinctl --token or TWINLINK_ADMIN_TOKEN)\n",
            ));
        };
        if role < need {
            return Err(text(
                StatusCode::FORBIDDEN,
                &format!("{name:?} is a {role:?}; this needs an operator token\n").to_lowercase(),
            ));
        }
        Ok(name.to_string())
    }

    /// Sends a request to the host and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
    ) -> Result<T, Response> {
        let (tx, rx) = oneshot::channel();
        let stopping = || {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the host or the twin is stopping; nothing was changed: try again\n",
            )
        };
        self.requests.send(make(tx)).await.map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())
    }
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn json(value: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value:#}\n"),
    )
        .into_response()
}

/// 404 for a twin this host does not serve; in a fleet, naming the host that does.
async fn not_hosted(s: &AdminState, vehicle: &str) -> Response {
    let owner = s
        .ask(|tx| AdminRequest::Owner(vehicle.to_string(), tx))
        .await
        .ok()
        .flatten();
    match owner {
        Some(addr) => {
            let mut r = text(
                StatusCode::NOT_FOUND,
                &format!("the twin {vehicle:?} is served by the fleet's host at {addr}\n"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&addr) {
                r.headers_mut().insert(OWNER_HEADER, v);
            }
            r
        }
        None => text(
            StatusCode::NOT_FOUND,
            &format!("no twin {vehicle:?} on this host\n"),
        ),
    }
}

async fn history(
    State(s): State<AdminState>,
    UrlPath(vehicle): UrlPath<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = s.authorize(&headers, Role::Viewer) {
        return r;
    }
    let q = match parse_history_query(&vehicle, query.as_deref()) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    match s.ask(|tx| AdminRequest::History(q, tx)).await {
        Ok(Some(Ok(v))) => json(&v),
        Ok(Some(Err(e))) => refused(e),
        Ok(None) => not_hosted(&s, &vehicle).await,
        Err(r) => r,
    }
}

async fn get_state(
    State(s): State<AdminState>,
    UrlPath(vehicle): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    one_twin(&s, &headers, vehicle, AdminRequest::GetState).await
}

async fn put_desired(
    State(s): State<AdminState>,
    UrlPath(vehicle): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let operator = match s.authorize(&headers, Role::Operator) {
        Ok(name) => name,
        Err(r) => return r,
    };
    let document: DesiredDocument = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a desired state ({{\"max_speed_mps\": 25.0}}): {e}\n"),
            )
        }
    };
    if let Err(e) = crate::twin::DesiredState::check(document.max_speed_mps) {
        return text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
    }
    let if_version = match headers.get(header::IF_MATCH).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match v.trim().trim_matches('"').parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "If-Match must be the desired state's version (a number), got {v:?}\n"
                    ),
                )
            }
        },
        Some(Err(_)) => {
            return text(StatusCode::BAD_REQUEST, "If-Match is not text\n");
        }
    }
    .or(document.if_version);
    let change = DesiredChange {
        vehicle: vehicle.clone(),
        max_speed_mps: document.max_speed_mps,
        if_version,
        operator,
    };
    match s.ask(|tx| AdminRequest::SetDesired(change, tx)).await {
        Ok(Ok(v)) => json(&v),
        Ok(Err(e)) if e.status == 404 => not_hosted(&s, &vehicle).await,
        Ok(Err(e)) => refused(e),
        Err(r) => r,
    }
}

async fn fleet(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.authorize(&headers, Role::Viewer) {
        return r;
    }
    match s.ask(AdminRequest::Fleet).await {
        Ok(Ok(v)) => json(&v),
        Ok(Err(e)) => refused(e),
        Err(r) => r,
    }
}

async fn drain(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let operator = match s.authorize(&headers, Role::Operator) {
        Ok(name) => name,
        Err(r) => return r,
    };
    match s.ask(|tx| AdminRequest::Drain(operator, tx)).await {
        Ok(Ok(v)) => json(&v),
        Ok(Err(e)) => refused(e),
        Err(r) => r,
    }
}

/// The fleet view's page and script (no data: what it shows comes from `/view/data`).
const VIEW_PAGE: &str = include_str!("view/index.html");
const VIEW_SCRIPT: &str = include_str!("view/app.js");

/// Only the page's own script and requests to its own origin.
const VIEW_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn view_page() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, VIEW_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        VIEW_PAGE,
    )
        .into_response()
}

async fn view_script() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        VIEW_SCRIPT,
    )
        .into_response()
}

/// The metrics the fleet view shows of a host, from its Prometheus text.
pub fn key_metrics(text: &str) -> Value {
    let mut sums: HashMap<&str, f64> = HashMap::new();
    // Inputs refused anywhere: the twins' own refusals, and other twins' disclosures and
    // queries and regional tiles refused (by the gate or their checks).
    let mut refused = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        *sums.entry(name).or_default() += v;
        let accepted =
            series.contains("result=\"verified\"") || series.contains("result=\"received\"");
        if name == "twinlink_dr_rejected_total"
            || (matches!(
                name,
                "twinlink_dr_relay_received_total"
                    | "twinlink_dr_queries_received_total"
                    | "twinlink_dr_regional_tiles_total"
            ) && !accepted)
        {
            refused += v;
        }
    }
    let get = |n: &str| sums.get(n).copied().unwrap_or(0.0);
    let count = get("twinlink_dr_latency_seconds_count");
    serde_json::json!({
        "provisioned": get("twinlink_dr_provisioned"),
        "active": get("twinlink_dr_active"),
        "owned_shards": get("twinlink_dr_owned_shards"),
        "messages_total": get("twinlink_dr_messages_total"),
        "recommendations_total": get("twinlink_dr_recommendations_total"),
        "rejected_total": refused,
        "mean_latency_ms": (count > 0.0).then(|| 1e3 * get("twinlink_dr_latency_seconds_sum") / count),
    })
}

async fn view_data(
    State(s): State<AdminState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = s.authorize(&headers, Role::Viewer) {
        return r;
    }
    let host_only = match query.as_deref() {
        None | Some("") => false,
        Some("scope=host") => true,
        Some(q) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("unknown query {q:?}: /view/data takes nothing or scope=host\n"),
            )
        }
    };
    let mut local = match s.ask(AdminRequest::View).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    local["metrics"] = key_metrics(&s.metrics.render());
    if host_only {
        return json(&local);
    }
    // In a fleet, every other live host's part too (asked with the caller's token).
    // The fleet's database unreadable: this host's part, saying so.
    let (fleet, fleet_error) = match s.ask(AdminRequest::Fleet).await {
        Ok(Ok(v)) => (v, None),
        Ok(Err(e)) => (Value::Null, Some(e.message)),
        Err(r) => return r,
    };
    let this = local["host"].as_str().map(str::to_string);
    let others: Vec<crate::fleet::FleetHost> = fleet["fleet"]["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter_map(|h| serde_json::from_value(h.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let mut hosts = Vec::new();
    let mut twins: Vec<Value> = local["twins"].as_array().cloned().unwrap_or_default();
    let mut asks = Vec::new();
    for h in others {
        if Some(&h.name) == this.as_ref() || !h.live {
            let metrics = if Some(&h.name) == this.as_ref() {
                local["metrics"].clone()
            } else {
                Value::Null
            };
            let reachable = h.live;
            hosts.push(view_host(&h, reachable, metrics));
            continue;
        }
        let token = token.clone();
        asks.push(tokio::task::spawn_blocking(move || {
            let answer = request_once(
                "GET",
                &h.admin,
                "/view/data?scope=host",
                token.as_deref(),
                None,
                Duration::from_secs(1),
            );
            // Only an answer from the host asked for counts (a recorded address may now
            // belong to another host, or to this one).
            let part = match answer {
                Ok((200, body, _)) => serde_json::from_str::<Value>(&body)
                    .ok()
                    .filter(|p| p["host"].as_str() == Some(h.name.as_str())),
                _ => None,
            };
            (h, part)
        }));
    }
    for ask in asks {
        let Ok((h, part)) = ask.await else { continue };
        let reachable = part.is_some();
        let metrics = part
            .as_ref()
            .map(|p| p["metrics"].clone())
            .unwrap_or(Value::Null);
        if let Some(Value::Array(more)) = part.map(|p| p["twins"].clone()) {
            twins.extend(more);
        }
        hosts.push(view_host(&h, reachable, metrics));
    }
    if hosts.is_empty() {
        hosts.push(
            serde_json::json!({"name": this, "admin": null, "live": true, "draining": false,
            "shards": null, "reachable": true, "metrics": local["metrics"].clone()}),
        );
    }
    // A twin moving between hosts may show on both for a moment: keep the active one.
    twins.sort_by(|a, b| {
        a["vehicle"].as_str().cmp(&b["vehicle"].as_str()).then(
            b["active"]
                .as_bool()
                .unwrap_or(false)
                .cmp(&a["active"].as_bool().unwrap_or(false)),
        )
    });
    twins.dedup_by(|b, a| a["vehicle"] == b["vehicle"]);
    json(&serde_json::json!({
        "generated_us": twinlink_link::link::now_us(),
        "road": local["road"].clone(),
        "hosts": hosts,
        "twins": twins,
        "fleet_error": fleet_error,
    }))
}

/// One host as the fleet view lists it.
fn view_host(h: &crate::fleet::FleetHost, reachable: bool, metrics: Value) -> Value {
    serde_json::json!({"name": h.name, "admin": h.admin, "live": h.live, "draining": h.draining,
        "shards": h.shards, "reachable": reachable, "metrics": metrics})
}

fn refused(e: AdminError) -> Response {
    text(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &format!("{}\n", e.message),
    )
}

async fn metrics_page(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.authorize(&headers, Role::Viewer) {
        return r;
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn twins(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.authorize(&headers, Role::Viewer) {
        return r;
    }
    match s.ask(AdminRequest::List).await {
        Ok(v) => json(&v),
        Err(r) => r,
    }
}

async fn twin(
    State(s): State<AdminState>,
    UrlPath(vehicle): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    one_twin(&s, &headers, vehicle, AdminRequest::Get).await
}

async fn get_policy(
    State(s): State<AdminState>,
    UrlPath(vehicle): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    one_twin(&s, &headers, vehicle, AdminRequest::GetPolicy).await
}

/// A viewer's question about one twin: its answer as JSON, or 404 when it is not hosted.
async fn one_twin(
    s: &AdminState,
    headers: &HeaderMap,
    vehicle: String,
    request: fn(String, oneshot::Sender<Option<Value>>) -> AdminRequest,
) -> Response {
    if let Err(r) = s.authorize(headers, Role::Viewer) {
        return r;
    }
    match s.ask(|tx| request(vehicle.clone(), tx)).await {
        Ok(Some(v)) => json(&v),
        Ok(None) => not_hosted(s, &vehicle).await,
        Err(r) => r,
    }
}

async fn put_policy(
    State(s): State<AdminState>,
    UrlPath(vehicle): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let operator = match s.authorize(&headers, Role::Operator) {
        Ok(name) => name,
        Err(r) => return r,
    };
    let document: PolicyDocument = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a sharing policy document: {e}\n"),
            )
        }
    };
    let policy = match document.to_policy() {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    let change = PolicyChange {
        vehicle: vehicle.clone(),
        policy,
        operator,
    };
    match s.ask(|tx| AdminRequest::SetPolicy(change, tx)).await {
        Ok(Ok(v)) => json(&v),
        Ok(Err(e)) if e.status == 404 => not_hosted(&s, &vehicle).await,
        Ok(Err(e)) => refused(e),
        Err(r) => r,
    }
}

async fn fallback() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "paths: /metrics, /twins, /twins/<vehicle>, /twins/<vehicle>/policy, /twins/<vehicle>/state, /twins/<vehicle>/history, /twins/<vehicle>/desired (PUT), /fleet, /drain (POST), /view, /view/data\n",
    )
}

/// Binds `addr` and serves until the host stops; returns the bound address at once.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<HostMetrics>,
    requests: mpsc::Sender<AdminRequest>,
    tokens: Option<Arc<Tokens>>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let state = AdminState {
        metrics,
        requests,
        tokens,
    };
    let app = Router::new()
        .route("/metrics", get_route(metrics_page))
        .route("/twins", get_route(twins))
        .route("/twins/{vehicle}", get_route(twin))
        .route(
            "/twins/{vehicle}/policy",
            get_route(get_policy).put(put_policy),
        )
        .route("/twins/{vehicle}/state", get_route(get_state))
        .route("/twins/{vehicle}/history", get_route(history))
        .route("/twins/{vehicle}/desired", axum::routing::put(put_desired))
        .route("/fleet", get_route(fleet))
        .route("/drain", axum::routing::post(drain))
        .route("/view", get_route(view_page))
        .route("/view/app.js", get_route(view_script))
        .route("/view/data", get_route(view_data))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    // One request per connection, its head within 5 s and all of it within 30 s, at most
    // MAX_CONNECTIONS at once: a slow or idle client cannot hold the host's sockets.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "the admin endpoint could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // dropped: too many connections
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
                drop(permit);
            });
        }
    });
    Ok(bound)
}

/// An HTTP client for the admin endpoint (used by `twinctl` and tests): sends `method`
/// to `path` with an optional bearer `token` and JSON `body`; returns the status code and
/// the body.
pub fn request(
    method: &str,
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    match request_once(method, addr, path, token, body, timeout)? {
        (404, _, Some(owner)) if owner != addr => {
            request_once(method, &owner, path, token, body, timeout).map(|(s, t, _)| (s, t))
        }
        (status, text, _) => Ok((status, text)),
    }
}

fn request_once(
    method: &str,
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String, Option<String>)> {
    let io = |e: ureq::Error| match e {
        ureq::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    };
    let _: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("admin address {addr:?}: {e}"),
        )
    })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut response = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call().map_err(io)?
        }
        "PUT" => {
            let mut r = agent.put(&url).content_type("application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body.unwrap_or("")).map_err(io)?
        }
        "POST" => {
            let mut r = agent.post(&url).content_type("application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body.unwrap_or("")).map_err(io)?
        }
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("method {other} is not used by the admin endpoint"),
            ))
        }
    };
    let status = response.status().as_u16();
    let owner = response
        .headers()
        .get(OWNER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = response.body_mut().read_to_string().map_err(io)?;
    Ok((status, text, owner))
}

/// `GET path` without a token (see [`request`]).
pub fn get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    request("GET", addr, path, None, None, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "op-secret-0123456789";
    const VIEWER: &str = "view-secret-0123456789";

    async fn serve_fake(tokens: Option<Tokens>) -> String {
        let metrics = HostMetrics::new();
        metrics.provisioned.set(2);
        let (tx, mut rx) = mpsc::channel(4);
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics,
            tx,
            tokens.map(Arc::new),
        )
        .await
        .unwrap();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                match req {
                    AdminRequest::List(reply) => {
                        let _ = reply.send(serde_json::json!([{"vehicle": "veh-1"}]));
                    }
                    AdminRequest::Get(v, reply)
                    | AdminRequest::GetPolicy(v, reply)
                    | AdminRequest::GetState(v, reply) => {
                        let _ =
                            reply.send((v == "veh-1").then(|| serde_json::json!({"vehicle": v})));
                    }
                    AdminRequest::SetPolicy(change, reply) => {
                        let _ = reply.send(if change.policy.rules.is_empty() {
                            Err(AdminError::new(400, "no rules"))
                        } else {
                            Ok(serde_json::json!({"by": change.operator}))
                        });
                    }
                    AdminRequest::Owner(_, reply) => {
                        let _ = reply.send(None);
                    }
                    AdminRequest::History(q, reply) => {
                        let _ = reply.send(
                            (q.vehicle == "veh-1")
                                .then(|| Ok(serde_json::json!([{"limit": q.limit}]))),
                        );
                    }
                    AdminRequest::SetDesired(change, reply) => {
                        let _ = reply.send(match change.if_version {
                            Some(v) if v != 3 => Err(AdminError::new(409, "version moved on")),
                            _ => Ok(serde_json::json!({"by": change.operator, "max_speed_mps": change.max_speed_mps})),
                        });
                    }
                    AdminRequest::Fleet(reply) => {
                        let _ = reply.send(Ok(serde_json::json!({"fleet": null})));
                    }
                    AdminRequest::Drain(_, reply) => {
                        let _ = reply.send(Err(AdminError::new(409, "not in a fleet")));
                    }
                    AdminRequest::View(reply) => {
                        let _ = reply.send(serde_json::json!({
                            "host": null,
                            "road": {"length": 1000.0, "lanes": 2},
                            "twins": [{"vehicle": "veh-1", "active": true}],
                        }));
                    }
                }
            }
        });
        addr.to_string()
    }

    fn call(
        addr: &str,
        method: &'static str,
        path: &'static str,
        token: Option<&'static str>,
        body: Option<&'static str>,
    ) -> tokio::task::JoinHandle<(u16, String)> {
        let addr = addr.to_string();
        tokio::task::spawn_blocking(move || {
            request(method, &addr, path, token, body, Duration::from_secs(2)).unwrap()
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_metrics_twins_and_errors_and_refuses_changes_without_tokens() {
        let a = serve_fake(None).await;
        let r = call(&a, "GET", "/metrics", None, None).await.unwrap();
        assert_eq!(r.0, 200);
        assert!(r.1.contains("twinlink_dr_provisioned 2"));
        let r = call(&a, "GET", "/twins", None, None).await.unwrap();
        assert_eq!(r.0, 200);
        assert!(r.1.contains("veh-1"));
        assert_eq!(
            call(&a, "GET", "/twins/veh-1", None, None).await.unwrap().0,
            200
        );
        let r = call(&a, "GET", "/twins/veh-9", None, None).await.unwrap();
        assert_eq!(r.0, 404);
        assert!(r.1.contains("veh-9"));
        assert_eq!(call(&a, "GET", "/nope", None, None).await.unwrap().0, 404);
        let r = call(&a, "PUT", "/twins/veh-1/policy", None, Some("{}"))
            .await
            .unwrap();
        assert_eq!(r.0, 403);
        assert!(r.1.contains("--admin-tokens"), "{}", r.1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_the_fleet_view_and_its_data_to_viewers() {
        let tokens = Tokens::parse(&format!("viewer wall {VIEWER}\n")).unwrap();
        let a = serve_fake(Some(tokens)).await;
        // The page and its script hold no data: served to anyone, with a strict policy.
        let r = call(&a, "GET", "/view", None, None).await.unwrap();
        assert_eq!(r.0, 200);
        assert!(r.1.contains("<script src=\"/view/app.js\">"));
        let r = call(&a, "GET", "/view/app.js", None, None).await.unwrap();
        assert!(r.0 == 200 && r.1.contains("/view/data"));
        // The data needs a viewer.
        assert_eq!(
            call(&a, "GET", "/view/data", None, None).await.unwrap().0,
            401
        );
        let r = call(&a, "GET", "/view/data", Some(VIEWER), None)
            .await
            .unwrap();
        assert_eq!(r.0, 200, "{}", r.1);
        let v: Value = serde_json::from_str(&r.1).unwrap();
        assert_eq!(v["twins"][0]["vehicle"], "veh-1");
        assert_eq!(v["road"]["lanes"], 2);
        // Outside a fleet: this host alone, with its metrics.
        assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
        assert_eq!(v["hosts"][0]["metrics"]["provisioned"], 2.0);
        let r = call(&a, "GET", "/view/data?scope=host", Some(VIEWER), None)
            .await
            .unwrap();
        assert_eq!(r.0, 200);
        assert!(r.1.contains("\"metrics\""));
        let r = call(&a, "GET", "/view/data?scope=all", Some(VIEWER), None)
            .await
            .unwrap();
        assert_eq!(r.0, 400);
        assert!(r.1.contains("scope=host"), "{}", r.1);
    }

    #[test]
    fn key_metrics_sum_labelled_series_and_average_the_latency() {
        let m = key_metrics(
            "# HELP x\ntwinlink_dr_active 3\ntwinlink_dr_messages_total{type=\"a\"} 5\ntwinlink_dr_messages_total{type=\"b\"} 7\ntwinlink_dr_latency_seconds_sum 0.02\ntwinlink_dr_latency_seconds_count 4\ntwinlink_dr_rejected_total{reason=\"x\"} 1\ntwinlink_dr_relay_received_total{result=\"verified\"} 9\ntwinlink_dr_relay_received_total{result=\"rate_limited\"} 2\ntwinlink_dr_regional_tiles_total{result=\"received\"} 4\ntwinlink_dr_regional_tiles_total{result=\"name_mismatch\"} 3\n",
        );
        assert_eq!(m["active"], 3.0);
        assert_eq!(m["messages_total"], 12.0);
        assert_eq!(m["rejected_total"], 6.0);
        assert!((m["mean_latency_ms"].as_f64().unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(key_metrics("")["mean_latency_ms"], Value::Null);
    }

    #[test]
    fn history_queries_are_checked() {
        let q = parse_history_query("veh-1", None).unwrap();
        assert_eq!((q.limit, q.kind), (20, None));
        let q = parse_history_query("veh-1", Some("limit=5&kind=policy")).unwrap();
        assert_eq!((q.limit, q.kind.as_deref()), (5, Some("policy")));
        for (bad, says) in [
            ("limit=0", "limit"),
            ("limit=5000", "limit"),
            ("limit=x", "limit"),
            ("kind=../etc", "kind"),
            ("since=1", "unknown"),
        ] {
            let e = parse_history_query("veh-1", Some(bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn desired_states_are_checked_and_versioned() {
        let tokens =
            Tokens::parse(&format!("operator alice {OPERATOR}\nviewer bob {VIEWER}\n")).unwrap();
        let a = serve_fake(Some(tokens)).await;
        let put = |token, body| call(&a, "PUT", "/twins/veh-1/desired", Some(token), Some(body));
        let r = put(VIEWER, r#"{"max_speed_mps": 20}"#).await.unwrap();
        assert_eq!(r.0, 403, "{}", r.1);
        let r = put(OPERATOR, r#"{"max_speed_mps": 20}"#).await.unwrap();
        assert_eq!(r.0, 200, "{}", r.1);
        assert!(r.1.contains("alice"), "{}", r.1);
        let r = put(OPERATOR, r#"{"max_speed_mps": 500}"#).await.unwrap();
        assert_eq!(r.0, 400, "{}", r.1);
        assert!(r.1.contains("max_speed_mps"), "{}", r.1);
        let r = put(OPERATOR, r#"{"speed": 20}"#).await.unwrap();
        assert_eq!(r.0, 400, "{}", r.1);
        assert!(r.1.contains("unknown field"), "{}", r.1);
        let r = put(OPERATOR, r#"{"max_speed_mps": null, "if_version": 2}"#)
            .await
            .unwrap();
        assert_eq!(r.0, 409, "the host refuses a stale version: {}", r.1);
        let r = put(OPERATOR, r#"{"if_version": 3}"#).await.unwrap();
        assert_eq!(r.0, 200, "{}", r.1);
        let r = call(&a, "GET", "/twins/veh-1/state", Some(VIEWER), None)
            .await
            .unwrap();
        assert_eq!(r.0, 200, "{}", r.1);
        let r = call(&a, "GET", "/twins/veh-9/state", Some(VIEWER), None)
            .await
            .unwrap();
        assert_eq!(r.0, 404, "{}", r.1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_gate_reads_and_changes() {
        let tokens = Tokens::parse(&format!(
            "# roles\noperator alice {OPERATOR}\nviewer bob {VIEWER}  # read only\n"
        ))
        .unwrap();
        let a = serve_fake(Some(tokens)).await;
        assert_eq!(call(&a, "GET", "/twins", None, None).await.unwrap().0, 401);
        assert_eq!(
            call(&a, "GET", "/twins", Some("wrong-token-0123456789"), None)
                .await
                .unwrap()
                .0,
            401
        );
        assert_eq!(
            call(&a, "GET", "/twins", Some(VIEWER), None)
                .await
                .unwrap()
                .0,
            200
        );
        let body = Some(
            r#"{"rules": [{"category": "hazards", "audience": "any_twin", "precision_m": 10, "max_age_s": 30}]}"#,
        );
        let r = call(&a, "PUT", "/twins/veh-1/policy", Some(VIEWER), body)
            .await
            .unwrap();
        assert_eq!(r.0, 403, "{}", r.1);
        let r = call(&a, "PUT", "/twins/veh-1/policy", Some(OPERATOR), body)
            .await
            .unwrap();
        assert_eq!(r.0, 200, "{}", r.1);
        assert!(
            r.1.contains("alice"),
            "the operator's name goes with the change"
        );
        // What the host refuses comes back with its status and reason.
        let r = call(&a, "PUT", "/twins/veh-1/policy", Some(OPERATOR), Some("{}"))
            .await
            .unwrap();
        assert_eq!((r.0, r.1.as_str()), (400, "no rules\n"));
        // Bodies that are not a policy document say what is wrong.
        let r = call(
            &a,
            "PUT",
            "/twins/veh-1/policy",
            Some(OPERATOR),
            Some(r#"{"rules": [{"category": "gossip", "audience": "any_twin", "precision_m": 1, "max_age_s": 1}]}"#),
        )
        .await
        .unwrap();
        assert_eq!(r.0, 400);
        assert!(r.1.contains("gossip"), "{}", r.1);
        let r = call(
            &a,
            "PUT",
            "/twins/veh-1/policy",
            Some(OPERATOR),
            Some("not json"),
        )
        .await
        .unwrap();
        assert_eq!(r.0, 400);
        assert!(r.1.contains("not a sharing policy document"), "{}", r.1);
    }

    #[test]
    fn token_files_name_what_is_wrong() {
        assert!(Tokens::parse("").unwrap_err().contains("no tokens"));
        let e = Tokens::parse("admin carol 0123456789abcdef0123").unwrap_err();
        assert!(e.contains("line 1") && e.contains("\"admin\""), "{e}");
        let e = Tokens::parse("viewer dave short").unwrap_err();
        assert!(e.contains("shorter than 16"), "{e}");
        let e = Tokens::parse("viewer dave").unwrap_err();
        assert!(e.contains("expected `<role> <name> <token>`"), "{e}");
        let e = Tokens::parse(&format!("viewer a {VIEWER}\noperator b {VIEWER}")).unwrap_err();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
        let t = Tokens::parse(&format!("operator alice {OPERATOR}")).unwrap();
        assert_eq!(t.lookup(OPERATOR), Some((Role::Operator, "alice")));
        assert_eq!(t.lookup(VIEWER), None);
    }
}
