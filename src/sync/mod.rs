//! The agent's side of sync: enrollment, and pushing the feedback outbox to the server.
//!
//! Delivery is at-least-once on the wire and exactly-once in effect: the agent sends pending
//! outbox rows in compressed batches and marks them synced only after the server's
//! acknowledgement names them; the server stores each feedback id once. A batch cut off
//! anywhere (before, during or after the server commits) is simply sent again.

pub mod drift;

use crate::identity::DeviceKey;
use crate::protocol::{
    self, EnrollRequest, EnrollResponse, ErrorBody, ErrorCode, UploadAck, UploadBatch,
    PROTOCOL_VERSION,
};
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Records per upload batch (`OUTPOST_SYNC_BATCH` overrides it, for tests of many batches).
pub const BATCH_RECORDS: usize = 200;

fn batch_records() -> usize {
    std::env::var("OUTPOST_SYNC_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(BATCH_RECORDS)
}

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No enrollment yet.
    #[error("this agent is not enrolled: ask the operator for a code and run `outpost enroll <server-url> <code>`")]
    NotEnrolled,
    /// The server could not be reached (no network, server down, cut connection).
    #[error("the server at {url} is unreachable: {reason}")]
    Unreachable {
        /// Server URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered with an error.
    #[error("the server refused ({status}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server revoked this device (the operator's decision; enrolling again needs a
    /// new code).
    #[error("the server revoked this device: ask the operator; item data is wiped per retention.on_revoked")]
    Revoked,
    /// The server speaks another protocol version.
    #[error("protocol mismatch: {0}")]
    Protocol(String),
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Feedback store failure.
    #[error(transparent)]
    Feedback(#[from] crate::store::feedback::FeedbackError),
    /// The device key failed.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

impl SyncError {
    /// Whether trying again later may help (network or server trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Unreachable { .. } => true,
            SyncError::Server { status, .. } => {
                *status >= 500 || matches!(*status, 408 | 409 | 429)
            }
            _ => false,
        }
    }
}

/// Where the agent keeps its identity.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("device.key")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

fn unreachable(url: &str, e: reqwest::Error) -> SyncError {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        reason = format!("{reason}: {s}");
        src = s.source();
    }
    SyncError::Unreachable {
        url: url.to_string(),
        reason,
    }
}

/// A transport error as a [`SyncError::Unreachable`] (with every cause).
pub fn transport_error(url: &str, e: reqwest::Error) -> SyncError {
    unreachable(url, e)
}

/// Largest error body the agent reads (a server's message is a line or two).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Reads an error response's body (at most [`MAX_ERROR_BODY`] bytes) as an [`ErrorBody`].
async fn error_body(mut res: reqwest::Response) -> Option<ErrorBody> {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        if buf.len() + chunk.len() > MAX_ERROR_BODY {
            return None;
        }
        buf.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&buf).ok()
}

/// Turns an error response into a [`SyncError`] with the server's message. Revocation is
/// told by the body's `code` (`revoked`); servers older than codes are recognised by
/// their message.
pub async fn error_from(res: reqwest::Response) -> SyncError {
    let status = res.status().as_u16();
    error_from_parts(status, error_body(res).await)
}

fn error_from_parts(status: u16, body: Option<ErrorBody>) -> SyncError {
    let code = body.as_ref().and_then(|b| b.code.clone());
    let message = body.map(|b| b.error).unwrap_or_else(|| "no details".into());
    let revoked = match code.as_deref() {
        Some(c) => c == ErrorCode::Revoked.as_str(),
        None => status == 403 && message == crate::protocol::REVOKED_MESSAGE,
    };
    if status == 426 {
        SyncError::Protocol(message)
    } else if revoked {
        SyncError::Revoked
    } else {
        SyncError::Server { status, message }
    }
}

/// Enrolls this agent with a one-time code and records the server and device id.
pub async fn enroll(
    store_path: &Path,
    data_dir: &Path,
    server_url: &str,
    code: &str,
) -> Result<EnrollResponse, SyncError> {
    let key = DeviceKey::load_or_create(&key_path(data_dir))?;
    let base = server_url.trim_end_matches('/').to_string();
    let res = client()
        .post(format!("{base}/v1/enroll"))
        .header(protocol::HEADER_PROTOCOL, PROTOCOL_VERSION)
        .json(&EnrollRequest {
            code: code.to_string(),
            public_key: key.public_key_b64(),
        })
        .send()
        .await
        .map_err(|e| unreachable(&base, e))?;
    if !res.status().is_success() {
        return Err(error_from(res).await);
    }
    let r: EnrollResponse = res.json().await.map_err(|e| unreachable(&base, e))?;
    let store = Store::open(store_path)?;
    store.set_state("server_url", &base)?;
    store.set_state("device_id", &r.device_id)?;
    store.set_state("device_name", &r.name)?;
    store.set_state("device_group", &r.group)?;
    // Kept in the (encrypted, when set up) database: it seals USB feedback files.
    store.set_state("export_key", r.export_key.as_deref().unwrap_or(""))?;
    Ok(r)
}

/// What one push did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PushReport {
    /// Batches sent.
    pub batches: usize,
    /// Records acknowledged.
    pub acked: usize,
    /// Of those, already on the server (retries).
    pub duplicates: usize,
    /// Records the server refused (kept in the outbox).
    pub refused: Vec<protocol::Refused>,
    /// Compressed bytes sent.
    pub bytes_sent: usize,
}

/// A signed connection to the server.
pub struct SyncClient {
    http: reqwest::Client,
    base: String,
    device_id: String,
    key: DeviceKey,
    /// Server clock minus device clock, learnt from responses (a field laptop's clock is
    /// often wrong; signatures carry the corrected time).
    offset: AtomicI64,
}

impl SyncClient {
    /// From the enrollment stored in the agent's database.
    pub fn from_store(store: &Store, data_dir: &Path) -> Result<SyncClient, SyncError> {
        let (Some(base), Some(device_id)) = (store.state("server_url")?, store.state("device_id")?)
        else {
            return Err(SyncError::NotEnrolled);
        };
        Ok(SyncClient {
            http: client(),
            base,
            device_id,
            key: DeviceKey::load_or_create(&key_path(data_dir))?,
            offset: AtomicI64::new(0),
        })
    }

    /// The server URL.
    pub fn server_url(&self) -> &str {
        &self.base
    }

    fn learn_clock(&self, res: &reqwest::Response) {
        if let Some(t) = res
            .headers()
            .get(protocol::HEADER_SERVER_TIME)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
        {
            self.offset
                .store(t - crate::server::unix_now(), Ordering::Relaxed);
        }
    }

    /// POSTs a signed body; on a 401 that says the clock is off, corrects and retries once.
    async fn signed_post(&self, path: &str, body: Vec<u8>) -> Result<reqwest::Response, SyncError> {
        self.signed_post_as(path, body, "application/zstd").await
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Server clock minus device clock in seconds, as learnt from the last response.
    pub fn clock_offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// POSTs a signed JSON body and decodes the JSON answer (errors as [`SyncError`]).
    pub async fn signed_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, SyncError> {
        let body = serde_json::to_vec(body).map_err(|e| SyncError::Protocol(e.to_string()))?;
        let res = self.signed_post_as(path, body, "application/json").await?;
        if !res.status().is_success() {
            return Err(error_from(res).await);
        }
        res.json().await.map_err(|e| unreachable(&self.base, e))
    }

    /// A plain GET of a public path (update metadata and files), optionally from byte
    /// `range_start` on. Non-success statuses are returned as they are, for the caller
    /// to judge (404: no such metadata).
    pub async fn get(
        &self,
        path: &str,
        range_start: Option<u64>,
        timeout: Duration,
    ) -> Result<reqwest::Response, SyncError> {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header(protocol::HEADER_PROTOCOL, PROTOCOL_VERSION)
            .timeout(timeout);
        if let Some(s) = range_start {
            req = req.header(reqwest::header::RANGE, format!("bytes={s}-"));
        }
        let res = req.send().await.map_err(|e| unreachable(&self.base, e))?;
        self.learn_clock(&res);
        Ok(res)
    }

    async fn signed_post_as(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<reqwest::Response, SyncError> {
        for attempt in 0..2 {
            let ts = crate::server::unix_now() + self.offset.load(Ordering::Relaxed);
            let (ts, nonce, sig) = self.key.sign_request("POST", path, &body, ts);
            let res = self
                .http
                .post(format!("{}{path}", self.base))
                .header(protocol::HEADER_PROTOCOL, PROTOCOL_VERSION)
                .header(protocol::HEADER_DEVICE, &self.device_id)
                .header(protocol::HEADER_TIMESTAMP, ts)
                .header(protocol::HEADER_NONCE, nonce)
                .header(protocol::HEADER_SIGNATURE, sig)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body.clone())
                .send()
                .await
                .map_err(|e| unreachable(&self.base, e))?;
            let before = self.offset.load(Ordering::Relaxed);
            self.learn_clock(&res);
            if res.status() == reqwest::StatusCode::UNAUTHORIZED
                && attempt == 0
                && self.offset.load(Ordering::Relaxed) != before
            {
                tracing::warn!(
                    offset_secs = self.offset.load(Ordering::Relaxed),
                    "the device clock differs from the server's; retrying with the server's time"
                );
                continue;
            }
            return Ok(res);
        }
        unreachable_retry()
    }

    /// Sends the whole outbox, batch by batch, marking rows synced as they are acknowledged.
    pub async fn push(&self, store_path: &Path) -> Result<PushReport, SyncError> {
        self.push_paced(store_path, None).await
    }

    /// [`Self::push`], pausing between batches to stay under `cap` bytes per second.
    pub async fn push_paced(
        &self,
        store_path: &Path,
        cap: Option<u64>,
    ) -> Result<PushReport, SyncError> {
        let mut report = PushReport::default();
        let mut refused_ids = std::collections::HashSet::new();
        loop {
            let path = store_path.to_path_buf();
            let skip = refused_ids.len();
            let batch = batch_records();
            let records = tokio::task::spawn_blocking(move || -> Result<_, SyncError> {
                let store = Store::open(&path)?;
                Ok(store.pending_records(batch + skip)?)
            })
            .await
            .map_err(|e| SyncError::Protocol(e.to_string()))??;
            let records: Vec<_> = records
                .into_iter()
                .filter(|r| !refused_ids.contains(&r.feedback_id))
                .take(batch)
                .collect();
            if records.is_empty() {
                break;
            }
            let sent_ids: std::collections::HashSet<String> =
                records.iter().map(|r| r.feedback_id.clone()).collect();
            let json = serde_json::to_vec(&UploadBatch {
                protocol: PROTOCOL_VERSION,
                records,
            })
            .map_err(|e| SyncError::Protocol(e.to_string()))?;
            let body =
                zstd::bulk::compress(&json, 9).map_err(|e| SyncError::Protocol(e.to_string()))?;
            report.bytes_sent += body.len();
            let started = std::time::Instant::now();
            let sent = body.len() as f64;
            let res = self.signed_post("/v1/feedback", body).await?;
            if !res.status().is_success() {
                let status = res.status().as_u16();
                let body = error_body(res).await;
                // One record the server finds invalid: set it aside (kept in the outbox and
                // reported) and send the rest, rather than retrying the same batch forever.
                let named = body.as_ref().and_then(invalid_record);
                if let Some(r) = named.filter(|r| sent_ids.contains(&r.feedback_id)) {
                    tracing::warn!(feedback_id = %r.feedback_id, reason = %r.reason, "the server refused a feedback record; it stays in the outbox");
                    refused_ids.insert(r.feedback_id.clone());
                    report.refused.push(r);
                    continue;
                }
                return Err(error_from_parts(status, body));
            }
            let ack: UploadAck = res.json().await.map_err(|e| unreachable(&self.base, e))?;
            report.batches += 1;
            report.duplicates += ack.duplicates;
            report.acked += ack.acked.len();
            for r in &ack.refused {
                refused_ids.insert(r.feedback_id.clone());
            }
            report.refused.extend(ack.refused.clone());
            let path = store_path.to_path_buf();
            tokio::task::spawn_blocking(move || -> Result<(), SyncError> {
                let mut store = Store::open(&path)?;
                store.ack_outbox(&ack.acked)?;
                Ok(())
            })
            .await
            .map_err(|e| SyncError::Protocol(e.to_string()))??;
            if let Some(cap) = cap.filter(|&c| c > 0) {
                let due = Duration::from_secs_f64(sent / cap as f64);
                if let Some(rest) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        }
        Ok(report)
    }
}

/// The record a `400 invalid_record` names, as a refusal.
fn invalid_record(b: &ErrorBody) -> Option<protocol::Refused> {
    if b.code.as_deref() != Some(ErrorCode::InvalidRecord.as_str()) {
        return None;
    }
    Some(protocol::Refused {
        feedback_id: b.feedback_id.clone()?,
        reason: b.error.clone(),
    })
}

fn unreachable_retry<T>() -> Result<T, SyncError> {
    Err(SyncError::Server {
        status: 401,
        message: "the server refused the request even after correcting for the clock".into(),
    })
}

/// One sync: push the outbox; record the outcome for `outpost status` and the review page.
pub async fn sync_once(store_path: &Path, data_dir: &Path) -> Result<PushReport, SyncError> {
    let client = {
        let store = Store::open(store_path)?;
        SyncClient::from_store(&store, data_dir)?
    };
    let result = client.push(store_path).await;
    if result.is_ok() {
        // Drift summaries are small and best effort: a failure is logged and retried next time.
        if let Err(e) = client.push_drift(store_path).await {
            tracing::warn!(error = %e, "could not send drift summaries");
        }
    }
    let store = Store::open(store_path)?;
    match &result {
        Ok(_) => {
            store.set_state("last_sync", &crate::store::now())?;
            store.set_state("last_sync_error", "")?;
        }
        Err(e) => {
            store.set_state(
                "last_sync_error",
                &format!("{} at {}", e, crate::store::now()),
            )?;
        }
    }
    result
}

/// What a revoked device does (`retention.on_revoked`): wipes item data and its key, and
/// remembers why, for `outpost status`.
pub fn after_revocation(
    store_path: &Path,
    data_dir: &Path,
    policy: crate::store::retention::RevokedPolicy,
) -> Result<crate::store::retention::WipeReport, SyncError> {
    let store = Store::open(store_path)?;
    let r = crate::store::retention::wipe_after_revocation(&store, data_dir, policy)?;
    store.set_state(
        "last_sync_error",
        &format!(
            "revoked by the server at {}: {} items wiped, {} kept (decisions never synced)",
            crate::store::now(),
            r.items,
            r.kept_unsynced
        ),
    )?;
    Ok(r)
}

/// Settings of the background sync loop (`outpost run`).
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// First wait after a failure.
    pub min_backoff: Duration,
    /// Longest wait between tries while the server is unreachable.
    pub max_backoff: Duration,
    /// How often to look at the outbox when nothing wakes the loop.
    pub idle_check: Duration,
    /// Upload cap in bytes per second (pauses between batches), if any.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// What to wipe when the server says this device was revoked.
    pub on_revoked: crate::store::retention::RevokedPolicy,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(600),
            idle_check: Duration::from_secs(60),
            bandwidth_bytes_per_sec: None,
            on_revoked: crate::store::retention::RevokedPolicy::WipeSynced,
        }
    }
}

/// Exponential backoff with full jitter: a random wait between 0 and
/// `min(max, min * 2^failures)`, so a hundred agents coming back online at once do not
/// knock on the server in step.
pub fn backoff(opts: &LoopOptions, failures: u32) -> Duration {
    use ring::rand::SecureRandom;
    let cap = opts
        .min_backoff
        .saturating_mul(1u32 << failures.min(20))
        .min(opts.max_backoff);
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    let frac = u32::from_le_bytes(b) as f64 / u32::MAX as f64;
    cap.mul_f64(frac).max(Duration::from_millis(100))
}

/// The outcome of the last try, for the status line.
#[derive(Debug, Clone, Default)]
pub struct LoopStatus {
    /// Consecutive failures.
    pub failures: u32,
    /// Last error, if the last try failed.
    pub last_error: Option<String>,
}

/// Runs until `shutdown` resolves: waits for work (a `wake` from a local action, or the idle
/// check), probes the server cheaply, pushes, and backs off while the server is out of reach.
pub async fn run_loop(
    store_path: PathBuf,
    data_dir: PathBuf,
    opts: LoopOptions,
    wake: std::sync::Arc<tokio::sync::Notify>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let pending = {
            let p = store_path.clone();
            tokio::task::spawn_blocking(move || {
                Store::open(&p).map(|s| s.counters().map(|c| c.waiting_to_sync).unwrap_or(0))
            })
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
        };
        let wait = if pending == 0 {
            failures = 0;
            opts.idle_check
        } else {
            match try_push(&store_path, &data_dir, &opts).await {
                Ok(r) => {
                    failures = 0;
                    if r.acked > 0 {
                        tracing::info!(
                            sent = r.acked,
                            duplicates = r.duplicates,
                            bytes = r.bytes_sent,
                            "feedback synced"
                        );
                    }
                    if r.refused.is_empty() {
                        Duration::from_millis(0)
                    } else {
                        opts.idle_check
                    }
                }
                Err(SyncError::Revoked) => {
                    let (p, d, policy) = (store_path.clone(), data_dir.clone(), opts.on_revoked);
                    match tokio::task::spawn_blocking(move || after_revocation(&p, &d, policy))
                        .await
                    {
                        Ok(Ok(r)) => tracing::warn!(
                            wiped = r.items,
                            kept_unsynced = r.kept_unsynced,
                            "the server revoked this device; sync stops"
                        ),
                        Ok(Err(e)) => tracing::error!(error = %e, "revoked, but the wipe failed"),
                        Err(e) => tracing::error!(error = %e, "revoked, but the wipe panicked"),
                    }
                    return;
                }
                Err(e) if e.is_transient() => {
                    failures += 1;
                    let w = backoff(&opts, failures);
                    tracing::info!(error = %e, retry_in_secs = w.as_secs_f64(), "sync failed; will retry");
                    w
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "sync failed");
                    opts.max_backoff
                }
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

async fn try_push(
    store_path: &Path,
    data_dir: &Path,
    opts: &LoopOptions,
) -> Result<PushReport, SyncError> {
    let client = {
        let store = Store::open(store_path)?;
        SyncClient::from_store(&store, data_dir)?
    };
    // A cheap probe first: no batch is built while the link is down.
    let probe = client
        .http
        .get(format!("{}/v1/health", client.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| unreachable(&client.base, e))?;
    if !probe.status().is_success() {
        return Err(error_from(probe).await);
    }
    let result = client
        .push_paced(store_path, opts.bandwidth_bytes_per_sec)
        .await;
    if result.is_ok() {
        if let Err(e) = client.push_drift(store_path).await {
            tracing::warn!(error = %e, "could not send drift summaries");
        }
    }
    let store = Store::open(store_path)?;
    match &result {
        Ok(_) => {
            store.set_state("last_sync", &crate::store::now())?;
            store.set_state("last_sync_error", "")?;
        }
        Err(e) => store.set_state(
            "last_sync_error",
            &format!("{} at {}", e, crate::store::now()),
        )?,
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's reading of one error answer from a one-shot server on loopback.
    async fn reading_of(status: u16, body: &'static str) -> SyncError {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        let res = reqwest::get(format!("http://{addr}/")).await.unwrap();
        error_from(res).await
    }

    #[tokio::test]
    async fn revocation_is_told_by_the_code_and_by_an_old_servers_text() {
        let by_code = reading_of(
            403,
            r#"{"error":"worded differently now","code":"revoked"}"#,
        );
        assert!(matches!(by_code.await, SyncError::Revoked));
        let old = reading_of(403, r#"{"error":"this device has been revoked"}"#);
        assert!(matches!(old.await, SyncError::Revoked));
        let other = reading_of(
            403,
            r#"{"error":"this device has been revoked","code":"forbidden"}"#,
        );
        assert!(matches!(other.await, SyncError::Server { status: 403, .. }));
    }
}
