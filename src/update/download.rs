//! Downloading one content-addressed file: resumable, capped at the signed length, verified.

use super::local::Installed;
use super::{io, UpdateError};
use crate::sync::SyncClient;
use crate::trust::TargetFile;
use std::io::Write;
use std::time::Duration;

/// What fetching one file did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fetched {
    /// Bytes received over the network for it (this call).
    pub bytes: u64,
    /// It was in the store already.
    pub cached: bool,
    /// It resumed a partial download.
    pub resumed: bool,
}

/// Makes sure the store holds `target` (`sha256/<hash>`): nothing to do if it does; else
/// downloads it to `.partial/`, resuming from what is there, reading at most
/// `entry.length` bytes, and moves it into the store once its sha256 matches.
pub async fn fetch(
    client: &SyncClient,
    store: &Installed,
    target: &str,
    entry: &TargetFile,
    data_dir: &std::path::Path,
    received: &mut u64,
) -> Result<Fetched, UpdateError> {
    let refuse = |reason: String| UpdateError::File {
        target: target.to_string(),
        reason,
    };
    let hash = entry.sha256.to_ascii_lowercase();
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(refuse("not a sha256".into()));
    }
    if store.has_blob(&hash) {
        return Ok(Fetched {
            cached: true,
            ..Default::default()
        });
    }
    let partial = store.partial_path(&hash);
    if let Some(d) = partial.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if have > entry.length {
        let _ = std::fs::remove_file(&partial);
        have = 0;
    }
    let mut out = Fetched {
        resumed: have > 0,
        ..Default::default()
    };
    if have < entry.length {
        let res = client
            .get(
                &format!("/v1/targets/sha256/{hash}"),
                (have > 0).then_some(have),
                Duration::from_secs(3600),
            )
            .await?;
        let status = res.status().as_u16();
        let append = match status {
            206 => {
                let start = res
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(have) {
                    return Err(refuse(format!(
                        "the server resumed at {start:?}, not at byte {have}"
                    )));
                }
                true
            }
            200 => false,
            416 => {
                // The server says we have it all: verify what we have.
                true
            }
            _ => return Err(crate::sync::error_from(res).await.into()),
        };
        if status != 416 {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&partial)
                .map_err(io(&partial))?;
            if !append {
                have = 0;
            }
            let mut res = res;
            let mut paused = false;
            loop {
                let chunk = match res.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = f.flush();
                        return Err(crate::sync::transport_error(client.server_url(), e).into());
                    }
                };
                let room = entry.length - have;
                let take = (chunk.len() as u64).min(room) as usize;
                f.write_all(&chunk[..take]).map_err(io(&partial))?;
                have += take as u64;
                out.bytes += chunk.len() as u64;
                *received += chunk.len() as u64;
                if take < chunk.len() {
                    tracing::warn!(
                        target,
                        length = entry.length,
                        "the server sent more than the signed length; stopped reading (endless data refused)"
                    );
                    break;
                }
                if have == entry.length {
                    // Read no further than the signed length, whatever the server offers.
                    break;
                }
                if !paused && have * 2 >= entry.length {
                    paused = true;
                    let dd = data_dir.to_path_buf();
                    let _ =
                        tokio::task::spawn_blocking(move || super::pause_point(&dd, "download"))
                            .await;
                }
            }
            f.sync_all().map_err(io(&partial))?;
        }
    }
    if have < entry.length {
        return Err(UpdateError::Sync(crate::sync::SyncError::Unreachable {
            url: client.server_url().to_string(),
            reason: format!(
                "download of {target} cut off at {have} of {} bytes; it resumes from there",
                entry.length
            ),
        }));
    }
    let (sha, len) = crate::hash::sha256_file(&partial).map_err(io(&partial))?;
    if len != entry.length || sha != hash {
        let _ = std::fs::remove_file(&partial);
        return Err(refuse(format!(
            "{len} bytes with sha256 {sha}; the signed metadata says {} bytes with sha256 {hash} (tampered or corrupted; deleted)",
            entry.length
        )));
    }
    store.add_blob(&hash, &partial, true)?;
    Ok(out)
}
