//! The metrics endpoint: a minimal HTTP/1.1 server answering `GET /metrics` with the
//! service's Prometheus metrics (OpenMetrics text).
//!
//! Only `GET` is served, a request may be at most 8 KiB and take at most 5 s, and each
//! connection carries one request. The metrics reveal nothing about single vehicles, but
//! bind the endpoint where only operators and Prometheus reach it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::RegionMetrics;

/// Largest request accepted \[bytes\].
const MAX_REQUEST: usize = 8192;

/// Content type of the metrics.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `/metrics` until the runtime stops; returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<RegionMetrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, for instance: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, metrics)).await;
            });
        }
    });
    Ok(bound)
}

async fn handle(mut stream: TcpStream, metrics: Arc<RegionMetrics>) -> std::io::Result<()> {
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
    match (parts.next().unwrap_or(""), parts.next().unwrap_or("")) {
        ("GET", "/metrics") => respond(&mut stream, 200, OPENMETRICS, &metrics.render()).await,
        ("GET", _) => respond(&mut stream, 404, "text/plain", "path: /metrics\n").await,
        _ => respond(&mut stream, 405, "text/plain", "only GET is served\n").await,
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
        _ => "Request Header Fields Too Large",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// A minimal blocking HTTP GET (for tests and scripts): the status code and the body.
pub fn get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("metrics address {addr:?}: {e}"),
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
    async fn serves_metrics_and_refuses_the_rest() {
        let metrics = RegionMetrics::new();
        metrics.tiles_published.inc();
        let addr = serve("127.0.0.1:0".parse().unwrap(), metrics)
            .await
            .unwrap()
            .to_string();
        let (ok, other) = tokio::task::spawn_blocking(move || {
            (
                get(&addr, "/metrics", Duration::from_secs(2)).unwrap(),
                get(&addr, "/nope", Duration::from_secs(2)).unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(ok.0, 200);
        assert!(ok.1.contains("twinlink_region_tiles_published_total 1"));
        assert_eq!(other.0, 404);
    }
}
