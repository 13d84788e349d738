//! A proxy for update download tests: passes requests to the server, but cuts every
//! bundle-file response (`/v1/targets/...`) after `cut_after` body bytes and closes the
//! connection, as a link that drops mid-download does. `cut_after = 0`: no cuts. Counts
//! the body bytes of file responses it passed on.
#![allow(dead_code)]

use loopback::read_request;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "loopback.rs"]
mod loopback;

/// Settings and counters, shared with the test.
#[derive(Default)]
pub struct Cut {
    /// Body bytes after which a file response is cut (0: never).
    pub cut_after: AtomicU64,
    /// File responses cut.
    pub cuts: AtomicU64,
    /// Body bytes of file responses passed on.
    pub file_bytes: AtomicU64,
}

/// Starts the proxy in front of `upstream` on its own runtime thread; returns its port.
pub fn start(upstream: u16, cut: Arc<Cut>) -> u16 {
    loopback::start(upstream, cut, |client, upstream, cut| async move {
        let _ = handle(client, upstream, cut).await;
        Ok(())
    })
}

async fn handle(mut client: TcpStream, upstream: u16, cut: Arc<Cut>) -> std::io::Result<()> {
    let (request, path) = read_request(&mut client).await?;
    let mut s = TcpStream::connect(("127.0.0.1", upstream)).await?;
    s.write_all(&request).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    if !path.starts_with("/v1/targets/") {
        client.write_all(&resp).await?;
        return client.shutdown().await;
    }
    let body_start = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(resp.len());
    let limit = cut.cut_after.load(Ordering::Relaxed) as usize;
    let body_len = resp.len() - body_start;
    let passed = if limit > 0 && body_len > limit {
        cut.cuts.fetch_add(1, Ordering::Relaxed);
        limit
    } else {
        body_len
    };
    cut.file_bytes.fetch_add(passed as u64, Ordering::Relaxed);
    client.write_all(&resp[..body_start + passed]).await?;
    client.flush().await?;
    // Drop the connection without a clean end when cut.
    Ok(())
}
