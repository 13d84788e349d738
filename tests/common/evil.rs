//! A hostile network on loopback for update tests: a proxy in front of the real server that
//! can, per setting, rewrite the JSON answer to the device report (a man in the middle),
//! drip bundle files a byte at a time or hold them without an answer (slow retrieval), end
//! one file cleanly short of its length (no `Content-Length`, connection closed), or answer
//! with a huge body (300 MB, streamed: never held in memory here).
#![allow(dead_code)]

use loopback::read_request;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "loopback.rs"]
mod loopback;

/// A rewrite of the device report's answer (parsed JSON, changed in place).
pub type Rewrite = Box<dyn Fn(&mut serde_json::Value) + Send + Sync>;

/// What the proxy does; change it between agent runs.
#[derive(Default)]
pub struct Evil {
    /// Rewrites the answer to `POST /v1/device/models`.
    pub rewrite: Mutex<Option<Rewrite>>,
    /// Bundle files are sent a byte every this many milliseconds (0: at full speed).
    pub drip_ms: AtomicU64,
    /// Bundle-file requests get no answer at all (the connection is held open).
    pub hang: AtomicBool,
    /// (target path, n): that file's body ends cleanly at byte n of the file.
    pub short: Mutex<Option<(String, u64)>>,
    /// Huge bodies: 1 = the device report answer (200), 2 = every other answer (500),
    /// 3 = every answer (200).
    pub huge: AtomicU8,
    /// Body bytes of huge answers written (the client stopped reading after that).
    pub huge_written: AtomicU64,
    /// Device report answers rewritten.
    pub rewritten: AtomicU64,
}

/// 300 MB.
pub const HUGE: u64 = 300 << 20;

/// Starts the proxy in front of `upstream` on its own runtime thread; returns its port.
pub fn start(upstream: u16, evil: Arc<Evil>) -> u16 {
    loopback::start(upstream, evil, |client, upstream, evil| async move {
        let _ = handle(client, upstream, evil).await;
        Ok(())
    })
}

async fn forward(request: &[u8], upstream: u16) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", upstream)).await?;
    s.write_all(request).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    Ok(resp)
}

/// (status line and headers without the blank line, body).
fn split(resp: &[u8]) -> (String, &[u8]) {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..end]).to_string();
    (head, resp.get(end + 4..).unwrap_or(&[]))
}

/// The head without `content-length` (the body then ends when the connection closes).
fn without_length(head: &str) -> String {
    head.lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

async fn handle(mut client: TcpStream, upstream: u16, evil: Arc<Evil>) -> std::io::Result<()> {
    let (request, path) = read_request(&mut client).await?;
    let huge = evil.huge.load(Ordering::Relaxed);
    let report = path == "/v1/device/models";
    if huge == 1 && report || huge == 2 && !report || huge == 3 {
        let status = if huge == 2 {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        return send_huge(client, status, &evil).await;
    }
    let file = path.starts_with("/v1/targets/");
    if file && evil.hang.load(Ordering::Relaxed) {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        return Ok(());
    }
    let resp = forward(&request, upstream).await?;
    if report {
        return rewrite_report(client, &resp, &evil).await;
    }
    let short = evil.short.lock().unwrap().clone();
    if let Some((_, n)) = short.filter(|(p, _)| *p == path) {
        return send_short(client, &resp, n).await;
    }
    let drip = evil.drip_ms.load(Ordering::Relaxed);
    if file && drip > 0 {
        let (head, body) = split(&resp);
        client
            .write_all(format!("{head}\r\n\r\n").as_bytes())
            .await?;
        for b in body {
            client.write_all(&[*b]).await?;
            client.flush().await?;
            tokio::time::sleep(std::time::Duration::from_millis(drip)).await;
        }
        return client.shutdown().await;
    }
    client.write_all(&resp).await?;
    client.shutdown().await
}

async fn rewrite_report(mut client: TcpStream, resp: &[u8], evil: &Evil) -> std::io::Result<()> {
    let (head, body) = split(resp);
    let rewritten = {
        let rewrite = evil.rewrite.lock().unwrap();
        match (
            rewrite.as_ref(),
            serde_json::from_slice::<serde_json::Value>(body),
        ) {
            (Some(f), Ok(mut v)) => {
                f(&mut v);
                Some(serde_json::to_vec(&v).unwrap())
            }
            _ => None,
        }
    };
    let Some(body) = rewritten else {
        client.write_all(resp).await?;
        return client.shutdown().await;
    };
    evil.rewritten.fetch_add(1, Ordering::Relaxed);
    let head = format!(
        "{}\r\ncontent-length: {}\r\n\r\n",
        without_length(&head),
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(&body).await?;
    client.shutdown().await
}

/// Passes the file's bytes below offset `n` only, then closes cleanly.
async fn send_short(mut client: TcpStream, resp: &[u8], n: u64) -> std::io::Result<()> {
    let (head, body) = split(resp);
    let start: u64 = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-range: bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let keep = n.saturating_sub(start).min(body.len() as u64) as usize;
    client
        .write_all(format!("{}\r\n\r\n", without_length(&head)).as_bytes())
        .await?;
    client.write_all(&body[..keep]).await?;
    client.shutdown().await
}

/// A 300 MB body without a length (it ends with the connection), written in 64 KiB
/// pieces until done or until the client stops reading and closes.
async fn send_huge(mut client: TcpStream, status: &str, evil: &Evil) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\nx-outpost-protocol: 1\r\n\r\n{{\"error\":\""
    );
    client.write_all(head.as_bytes()).await?;
    let piece = vec![b'a'; 64 << 10];
    let mut sent = 0u64;
    while sent < HUGE {
        if client.write_all(&piece).await.is_err() {
            break;
        }
        sent += piece.len() as u64;
        evil.huge_written
            .fetch_add(piece.len() as u64, Ordering::Relaxed);
    }
    let _ = client.write_all(b"\"}").await;
    let _ = client.shutdown().await;
    Ok(())
}
