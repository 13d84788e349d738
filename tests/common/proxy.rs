//! A fault-injecting HTTP proxy for sync tests: it sits between agents and the server on
//! loopback and, per request, passes it through or breaks it in one of the ways a bad field
//! link does. Faults are drawn from a seeded generator so a failing run can be repeated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy did to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passed through.
    Pass,
    /// The server saw only part of the body; the client got no answer.
    CutRequest,
    /// The server handled it; the client got half of the response.
    TruncateResponse,
    /// Answered 503 without asking the server.
    ServerError,
    /// Passed through after a delay.
    Delay,
    /// Sent to the server twice; the client got the second answer.
    Repeat,
}

/// Counts of what the proxy did.
#[derive(Default)]
pub struct Stats {
    /// Per fault, how often.
    pub counts: [AtomicU64; 6],
}

fn index(f: Fault) -> usize {
    f as usize
}

/// Starts the proxy on 127.0.0.1:0 in front of `upstream`; returns its port.
pub async fn start(upstream: u16, seed: u64, stats: Arc<Stats>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = Arc::new(AtomicU64::new(seed));
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            let stats = stats.clone();
            tokio::spawn(async move {
                let _ = handle(client, upstream, pick(n), stats).await;
            });
        }
    });
    port
}

fn pick(n: u64) -> Fault {
    // xorshift of the counter: a fixed, seed-dependent sequence.
    let mut x = n ^ (n >> 31);
    x ^= x << 17;
    x ^= x >> 7;
    match x % 10 {
        0 => Fault::CutRequest,
        1 => Fault::TruncateResponse,
        2 => Fault::ServerError,
        3 => Fault::Delay,
        4 => Fault::Repeat,
        _ => Fault::Pass,
    }
}

async fn read_request(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        let n = client.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = client.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    // One request per connection keeps the fault bookkeeping simple.
    let text = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let rewritten = text.replacen("\r\n", "\r\nconnection: close\r\n", 1);
    let mut out = rewritten.into_bytes();
    out.extend_from_slice(&buf[header_end..]);
    Ok(out)
}

async fn forward(request: &[u8], upstream: u16) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", upstream)).await?;
    s.write_all(request).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    Ok(resp)
}

async fn handle(
    mut client: TcpStream,
    upstream: u16,
    fault: Fault,
    stats: Arc<Stats>,
) -> std::io::Result<()> {
    let request = read_request(&mut client).await?;
    stats.counts[index(fault)].fetch_add(1, Ordering::Relaxed);
    match fault {
        Fault::Pass | Fault::Delay => {
            if fault == Fault::Delay {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            let resp = forward(&request, upstream).await?;
            client.write_all(&resp).await?;
        }
        Fault::CutRequest => {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", upstream)).await {
                let _ = s.write_all(&request[..request.len() * 2 / 3]).await;
            }
            // Drop both ends without an answer.
        }
        Fault::TruncateResponse => {
            let resp = forward(&request, upstream).await?;
            client.write_all(&resp[..resp.len() / 2]).await?;
        }
        Fault::ServerError => {
            client
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await?;
        }
        Fault::Repeat => {
            let _ = forward(&request, upstream).await?;
            let resp = forward(&request, upstream).await?;
            client.write_all(&resp).await?;
        }
    }
    client.shutdown().await
}
