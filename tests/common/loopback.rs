//! What the loopback proxies of the update tests share: a listener on its own runtime
//! thread that hands every connection to a handler, and reading one HTTP/1 request whole
//! (headers and `Content-Length` body), rewritten to `connection: close` so each request
//! gets its own upstream connection.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Starts a listener on a free loopback port; each connection runs `handle(client,
/// upstream, state)`. Returns the port.
pub fn start<S, F, Fut>(upstream: u16, state: Arc<S>, handle: F) -> u16
where
    S: Send + Sync + 'static,
    F: Fn(TcpStream, u16, Arc<S>) -> Fut + Send + Copy + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(handle(client, upstream, state.clone()));
            }
        });
    });
    rx.recv().unwrap()
}

/// Reads one request; returns it (with `connection: close`) and its path.
pub async fn read_request(client: &mut TcpStream) -> std::io::Result<(Vec<u8>, String)> {
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
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let len: usize = head
        .to_ascii_lowercase()
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
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let mut out = head
        .replacen("\r\n", "\r\nconnection: close\r\n", 1)
        .into_bytes();
    out.extend_from_slice(&buf[header_end..]);
    Ok((out, path))
}
