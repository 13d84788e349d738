//! Downloading one content-addressed file: resumable, capped at the signed length, verified,
//! and bounded in time.
//!
//! Why the time bounds: a server (or a man in the middle) that drips a file at a byte a
//! second would otherwise hold the update, and its lock, for the whole per-file timeout.
//! A try ends, resumably, when the server's headers do not come within the stall period or
//! fewer than the minimum rate arrived over one ([`UpdateLimits`]); the partial file stays
//! for the next try and the current model keeps serving.
//!
//! Why the length checks: a file that ends short of its signed length looks like a network
//! cut, and would be retried for ever. A server whose stated length (`Content-Length`,
//! `Content-Range`, or a 416 to a resume) is below the signed one is refused at once; a
//! body that ends cleanly at the same short length `short_tries` times in a row (counted in
//! `.partial/<hash>.short`) is refused too. Refusals are recorded and reported like any.

use super::local::Installed;
use super::{io, UpdateError, UpdateLimits};
use crate::sync::SyncClient;
use crate::trust::TargetFile;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

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

/// How one try ended.
enum End {
    /// The body ended normally (the server says that is all).
    Clean,
    /// Cut off (network error, too slow): resumes next time.
    Cut(String),
}

/// One file being fetched.
struct Job<'a> {
    client: &'a SyncClient,
    target: &'a str,
    entry: &'a TargetFile,
    hash: String,
    partial: PathBuf,
    data_dir: &'a Path,
    limits: &'a UpdateLimits,
}

impl Job<'_> {
    fn refuse(&self, reason: String) -> UpdateError {
        UpdateError::File {
            target: self.target.to_string(),
            reason,
        }
    }

    fn cut(&self, reason: String) -> UpdateError {
        UpdateError::Sync(crate::sync::SyncError::Unreachable {
            url: self.client.server_url().to_string(),
            reason,
        })
    }

    fn shorter(&self, what: &str, stated: u64) -> UpdateError {
        self.refuse(format!(
            "{what} {stated} bytes, the signed metadata {}: the server's copy is short (not a network cut)",
            self.entry.length
        ))
    }
}

/// Makes sure the store holds `target` (`sha256/<hash>`): nothing to do if it does; else
/// downloads it to `.partial/`, resuming from what is there, reading at most
/// `entry.length` bytes, and moves it into the store once its sha256 matches.
pub async fn fetch(
    client: &SyncClient,
    store: &Installed,
    target: &str,
    entry: &TargetFile,
    data_dir: &Path,
    limits: &UpdateLimits,
    received: &mut u64,
) -> Result<Fetched, UpdateError> {
    let hash = entry.sha256.to_ascii_lowercase();
    let job = Job {
        client,
        target,
        entry,
        partial: store.partial_path(&hash),
        hash,
        data_dir,
        limits,
    };
    if job.hash.len() != 64 || !job.hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(job.refuse("not a sha256".into()));
    }
    if store.has_blob(&job.hash) {
        return Ok(Fetched {
            cached: true,
            ..Default::default()
        });
    }
    let partial = job.partial.clone();
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
        let end = job.receive(&mut have, &mut out, received).await?;
        if have < entry.length {
            return Err(match end {
                End::Cut(why) => job.cut(format!(
                    "download of {target} {why} at {have} of {} bytes; it resumes from there",
                    entry.length
                )),
                End::Clean => job.ended_short(have)?,
            });
        }
    }
    let _ = std::fs::remove_file(short_path(&partial));
    let (sha, len) = crate::hash::sha256_file(&partial).map_err(io(&partial))?;
    if len != entry.length || sha != job.hash {
        let _ = std::fs::remove_file(&partial);
        return Err(job.refuse(format!(
            "{len} bytes with sha256 {sha}; the signed metadata says {} bytes with sha256 {} (tampered or corrupted; deleted)",
            entry.length, job.hash
        )));
    }
    store.add_blob(&job.hash, &partial, true)?;
    Ok(out)
}

/// `.partial/<hash>.short`: "<length> <tries>" of tries that ended cleanly short.
fn short_path(partial: &Path) -> PathBuf {
    partial.with_extension("short")
}

impl Job<'_> {
    /// A try ended cleanly at `have` < the signed length: counts it, and refuses once
    /// `short_tries` tries in a row ended at that same length. Returns the error to give.
    fn ended_short(&self, have: u64) -> Result<UpdateError, UpdateError> {
        let p = short_path(&self.partial);
        let (len, tries) = std::fs::read_to_string(&p)
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((u64::MAX, 0));
        let tries = if len == have { tries + 1 } else { 1 };
        super::local::write_atomic(&p, format!("{have} {tries}").as_bytes())?;
        let length = self.entry.length;
        if tries >= u64::from(self.limits.short_tries) {
            return Ok(self.refuse(format!(
                "the server ended it at {have} of {length} signed bytes {tries} tries in a row, as if complete: its copy is short (not a network cut)"
            )));
        }
        Ok(self.cut(format!(
            "download of {} ended at {have} of {length} bytes ({tries} of {} tries at that length before it is refused); it resumes from there",
            self.target, self.limits.short_tries
        )))
    }

    /// One try: requests the rest of the file and appends what comes, within the time
    /// bounds. `have` is updated to the bytes on disk.
    async fn receive(
        &self,
        have: &mut u64,
        out: &mut Fetched,
        received: &mut u64,
    ) -> Result<End, UpdateError> {
        let stall = self.limits.stall;
        let path = format!("/v1/targets/sha256/{}", self.hash);
        let range = (*have > 0).then_some(*have);
        let sent = self.client.get(&path, range, Duration::from_secs(3600));
        let res = match tokio::time::timeout(stall, sent).await {
            Ok(r) => r?,
            Err(_) => {
                return Ok(End::Cut(format!(
                    "got no answer within {} s",
                    stall.as_secs()
                )))
            }
        };
        let append = match res.status().as_u16() {
            206 => {
                self.check_range(&res, *have)?;
                true
            }
            200 => {
                if let Some(n) = res.content_length().filter(|&n| n < self.entry.length) {
                    return Err(self.shorter("the server says the file is", n));
                }
                false
            }
            // Nothing from byte `have` on: the server's copy ends before the signed length.
            416 => return Err(self.shorter("the server has nothing after", *have)),
            _ => return Err(crate::sync::error_from(res).await.into()),
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&self.partial)
            .map_err(io(&self.partial))?;
        if !append {
            *have = 0;
        }
        let end = self.stream(res, &mut f, have, out, received).await;
        let _ = f.flush();
        f.sync_all().map_err(io(&self.partial))?;
        end
    }

    /// A 206 must start at `have` and, if it states the total, not contradict the signed length.
    fn check_range(&self, res: &reqwest::Response, have: u64) -> Result<(), UpdateError> {
        let v = res
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .unwrap_or("");
        let start = v.split('-').next().and_then(|v| v.parse::<u64>().ok());
        if start != Some(have) {
            return Err(self.refuse(format!(
                "the server resumed at {start:?}, not at byte {have}"
            )));
        }
        let total = v.rsplit('/').next().and_then(|t| t.parse::<u64>().ok());
        match total {
            Some(t) if t < self.entry.length => Err(self.shorter("the server says the file is", t)),
            _ => Ok(()),
        }
    }

    /// Appends the body to `f`, at most up to the signed length, ending the try if fewer
    /// than `min_rate` bytes per second arrive over a stall period.
    async fn stream(
        &self,
        mut res: reqwest::Response,
        f: &mut std::fs::File,
        have: &mut u64,
        out: &mut Fetched,
        received: &mut u64,
    ) -> Result<End, UpdateError> {
        let stall = self.limits.stall;
        let need = self
            .limits
            .min_rate
            .saturating_mul(stall.as_secs().max(1))
            .max(1);
        let slow = |got: u64| {
            End::Cut(format!(
                "was too slow ({got} bytes in {} s; at least {} bytes per second are needed)",
                stall.as_secs(),
                self.limits.min_rate
            ))
        };
        let (mut window, mut got) = (Instant::now(), 0u64);
        let mut paused = false;
        loop {
            let chunk = match tokio::time::timeout_at(window + stall, res.chunk()).await {
                Err(_) if got >= need => {
                    (window, got) = (Instant::now(), 0);
                    continue;
                }
                Err(_) => return Ok(slow(got)),
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => return Ok(End::Clean),
                Ok(Err(e)) => {
                    let e = crate::sync::transport_error(self.client.server_url(), e);
                    return Ok(End::Cut(format!("was cut off ({e})")));
                }
            };
            let room = self.entry.length - *have;
            let take = (chunk.len() as u64).min(room) as usize;
            f.write_all(&chunk[..take]).map_err(io(&self.partial))?;
            *have += take as u64;
            got += chunk.len() as u64;
            out.bytes += chunk.len() as u64;
            *received += chunk.len() as u64;
            if take < chunk.len() {
                tracing::warn!(
                    target = self.target,
                    length = self.entry.length,
                    "the server sent more than the signed length; stopped reading (endless data refused)"
                );
                return Ok(End::Clean);
            }
            if *have == self.entry.length {
                // Read no further than the signed length, whatever the server offers.
                return Ok(End::Clean);
            }
            if Instant::now() >= window + stall {
                if got < need {
                    return Ok(slow(got));
                }
                (window, got) = (Instant::now(), 0);
            }
            if !paused && *have * 2 >= self.entry.length {
                paused = true;
                let dd = self.data_dir.to_path_buf();
                let _ =
                    tokio::task::spawn_blocking(move || super::pause_point(&dd, "download")).await;
                (window, got) = (Instant::now(), 0);
            }
        }
    }
}
