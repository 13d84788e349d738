//! The server's HTTP listener: its own accept loop over hyper, so that nobody can hold the
//! server's memory or connections without being an enrolled device.
//!
//! `axum::serve` has no header-read timeout and no connection limits: 1,000 connections that
//! never finished their headers were all still held after 36 s. Here every connection
//! - counts against a limit overall and per peer address (beyond it the connection is closed
//!   at once, before anything is read; the agent backs off and retries);
//! - must deliver its request headers within `header_read_timeout_secs` (hyper's timer), and
//!   a keep-alive connection its next request's headers within the same time;
//! - must deliver a request body within `body_read_timeout_secs` of the headers, however
//!   slowly it drips (a total deadline, not an idle one).
//!
//! Handlers see the peer address as [`axum::extract::ConnectInfo`]. The limits are the
//! `[http]` section of `config/server.toml` ([`HttpSettings`]).

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::Router;
use http_body::Body as HttpBody;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Who may read `/metrics` (`[http] metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsAccess {
    /// Only peers on the loopback address (127.0.0.0/8, ::1) that did not come through a
    /// proxy (no `Forwarded` / `X-Forwarded-For` header): a Prometheus on the same machine.
    #[default]
    Loopback,
    /// Anyone who can reach the listener (put it behind a firewall).
    Anyone,
    /// Nobody: `/metrics` answers 404.
    Off,
}

/// `[http]`: timeouts and connection limits of the listener.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Seconds a connection has to send its request headers (also the idle time of a
    /// keep-alive connection).
    pub header_read_timeout_secs: u64,
    /// Seconds a request has to send its whole body once its headers arrived.
    pub body_read_timeout_secs: u64,
    /// Connections open at once, overall (0: no limit).
    pub max_connections: usize,
    /// Connections open at once from one peer address (0: no limit). Behind a reverse proxy
    /// every connection comes from the proxy's address: raise this or set it to 0 there.
    pub max_connections_per_peer: usize,
    /// Who may read `/metrics`.
    pub metrics: MetricsAccess,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 60,
            max_connections: 1024,
            max_connections_per_peer: 256,
            metrics: MetricsAccess::Loopback,
        }
    }
}

impl HttpSettings {
    /// The header-read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs.max(1))
    }

    /// The body-read timeout.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs.max(1))
    }
}

/// Open connections, overall and per peer address.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// A connection's place in [`ConnectionCounts`], given back when dropped.
pub struct ConnectionSlot {
    counts: Arc<Mutex<ConnectionCounts>>,
    peer: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The overall limit.
    Total,
    /// The per-peer limit.
    Peer,
}

/// Takes a slot for a connection from `peer`, or says which limit is reached.
pub fn admit(
    counts: &Arc<Mutex<ConnectionCounts>>,
    settings: &HttpSettings,
    peer: IpAddr,
) -> Result<ConnectionSlot, Refusal> {
    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
    if settings.max_connections > 0 && c.total >= settings.max_connections {
        return Err(Refusal::Total);
    }
    let mine = c.per_peer.get(&peer).copied().unwrap_or(0);
    if settings.max_connections_per_peer > 0 && mine >= settings.max_connections_per_peer {
        return Err(Refusal::Peer);
    }
    c.total += 1;
    *c.per_peer.entry(peer).or_insert(0) += 1;
    Ok(ConnectionSlot {
        counts: counts.clone(),
        peer,
    })
}

/// A request body with a total deadline: past it, reading fails (the handler answers 408
/// or the connection closes), however the bytes were dripped.
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The error of a body whose deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body-read timeout")]
pub struct BodyTimeout;

impl DeadlineBody {
    /// `inner`, to be read within `timeout` from now.
    pub fn new(inner: Body, timeout: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if self.inner.is_end_stream() {
            return Pin::new(&mut self.inner).poll_frame(cx);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish
/// (for at most 30 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    settings: HttpSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match admit(&counts, &settings, peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                tracing::warn!(peer = %peer.ip(), limit = ?why, "connection limit reached; connection closed");
                drop(stream);
                continue;
            }
        };
        let body_timeout = settings.body_read_timeout();
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(|b| Body::new(DeadlineBody::new(Body::new(b), body_timeout)));
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout())
            .keep_alive(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("requests still open 30 s after shutdown; stopping anyway");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_overall_and_per_peer_and_free_on_drop() {
        let s = HttpSettings {
            max_connections: 3,
            max_connections_per_peer: 2,
            ..HttpSettings::default()
        };
        let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admit(&counts, &s, a).unwrap();
        let _a2 = admit(&counts, &s, a).unwrap();
        assert_eq!(admit(&counts, &s, a).err(), Some(Refusal::Peer));
        let _b1 = admit(&counts, &s, b).unwrap();
        assert_eq!(admit(&counts, &s, b).err(), Some(Refusal::Total));
        drop(a1);
        assert!(admit(&counts, &s, a).is_ok());
    }
}
