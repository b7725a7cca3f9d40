//! The host's operator endpoint: a small HTTP/1.1 server for loopback (or a management
//! network), serving
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `GET /twins` | every hosted twin: id, active or dormant, counters (JSON) |
//! | `GET /twins/<vehicle>` | one twin as a document: reported state, advice, link (JSON) |
//!
//! Only `GET` is served, requests are limited to 8 KiB and 5 s, and each connection
//! carries one request. Twin documents include positions: bind it where only operators
//! reach it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::HostMetrics;

/// A question for the host's registry.
#[derive(Debug)]
pub enum AdminRequest {
    /// Every twin.
    List(oneshot::Sender<Value>),
    /// One twin; `None` when it is not hosted.
    Get(String, oneshot::Sender<Option<Value>>),
}

/// Largest request accepted.
const MAX_REQUEST: usize = 8192;

/// Binds `addr` and serves until the listener fails; returns the bound address at once.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<HostMetrics>,
    requests: mpsc::Sender<AdminRequest>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, requests) = (metrics.clone(), requests.clone());
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), handle(stream, metrics, requests))
                        .await;
            });
        }
    });
    Ok(bound)
}

async fn handle(
    mut stream: TcpStream,
    metrics: Arc<HostMetrics>,
    requests: mpsc::Sender<AdminRequest>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request too large\n").await;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET is served\n").await;
    }
    let json = "application/json";
    match path {
        "/metrics" => {
            respond(
                &mut stream,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &metrics.render(),
            )
            .await
        }
        "/twins" => {
            let (tx, rx) = oneshot::channel();
            if requests.send(AdminRequest::List(tx)).await.is_err() {
                return respond(&mut stream, 503, "text/plain", "host stopping\n").await;
            }
            match rx.await {
                Ok(v) => respond(&mut stream, 200, json, &format!("{v:#}\n")).await,
                Err(_) => respond(&mut stream, 503, "text/plain", "host stopping\n").await,
            }
        }
        p if p.starts_with("/twins/") => {
            let vehicle = p.trim_start_matches("/twins/").to_string();
            let (tx, rx) = oneshot::channel();
            if requests
                .send(AdminRequest::Get(vehicle.clone(), tx))
                .await
                .is_err()
            {
                return respond(&mut stream, 503, "text/plain", "host stopping\n").await;
            }
            match rx.await {
                Ok(Some(v)) => respond(&mut stream, 200, json, &format!("{v:#}\n")).await,
                Ok(None) => {
                    respond(
                        &mut stream,
                        404,
                        "text/plain",
                        &format!("no twin {vehicle:?} on this host\n"),
                    )
                    .await
                }
                Err(_) => respond(&mut stream, 503, "text/plain", "host stopping\n").await,
            }
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                "paths: /metrics, /twins, /twins/<vehicle>\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// A minimal HTTP GET client for the admin endpoint (used by `twinctl` and tests):
/// returns the status code and the body.
pub fn get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("admin address {addr:?}: {e}"),
        )
    })?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_twins_and_errors() {
        let metrics = HostMetrics::new();
        metrics.provisioned.set(2);
        let (tx, mut rx) = mpsc::channel(4);
        let addr = serve("127.0.0.1:0".parse().unwrap(), metrics, tx)
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                match req {
                    AdminRequest::List(reply) => {
                        let _ = reply.send(serde_json::json!([{"vehicle": "veh-1"}]));
                    }
                    AdminRequest::Get(v, reply) => {
                        let _ =
                            reply.send((v == "veh-1").then(|| serde_json::json!({"vehicle": v})));
                    }
                }
            }
        });
        let a = addr.to_string();
        let r = tokio::task::spawn_blocking(move || {
            (
                get(&a, "/metrics", Duration::from_secs(2)).unwrap(),
                get(&a, "/twins", Duration::from_secs(2)).unwrap(),
                get(&a, "/twins/veh-1", Duration::from_secs(2)).unwrap(),
                get(&a, "/twins/veh-9", Duration::from_secs(2)).unwrap(),
                get(&a, "/nope", Duration::from_secs(2)).unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(r.0 .0, 200);
        assert!(r.0 .1.contains("twinlink_dr_provisioned 2"));
        assert_eq!(r.1 .0, 200);
        assert!(r.1 .1.contains("veh-1"));
        assert_eq!(r.2 .0, 200);
        assert_eq!(r.3 .0, 404);
        assert!(r.3 .1.contains("veh-9"));
        assert_eq!(r.4 .0, 404);
    }
}
