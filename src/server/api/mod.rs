//! The API agents talk to (protocol version 1, every response carries `x-outpost-protocol` and
//! `x-outpost-server-time`; the OpenAPI description is `docs/openapi.yaml`):
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `GET /v1/health` | anyone (and load balancers) | protocol version; 200 if the store answers, 503 if not |
//! | `GET /metrics` | the operator's Prometheus (loopback only by default: `[http] metrics`) | requests, sync batches, ingest lag, training, devices by version, drift ([`metrics`]) |
//! | `POST /v1/enroll` | a device with a one-time code | registers its Ed25519 public key |
//! | `POST /v1/feedback` | a signed, enrolled, unrevoked device | a zstd-compressed [`UploadBatch`]; answers an [`UploadAck`] |
//! | `POST /v1/device/models` | a signed device | JSON [`protocol::DeviceModelsReport`] (versions running, updates refused or rolled back); answers its group |
//! | `GET /v1/metadata/{name}` | anyone | signed update metadata (`root.json`, `N.root.json`, `timestamp.json`, ...) |
//! | `GET /v1/targets/sha256/{hash}` | anyone | a bundle file by content, `Range: bytes=N-` resumes |
//! | `GET /v1/tuf/metadata/{name}` | anyone | the repository in TUF 1.0's format (`1.root.json`, `timestamp.json`, `N.snapshot.json`, ...) |
//! | `GET /v1/tuf/targets/{dir}/{sha256}.{name}` | anyone | a TUF target file by content (consistent snapshots), `Range` resumes |
//! | `/admin/...` | a signed-in operator | the operators' dashboard ([`dashboard`]) |
//!
//! Authentication of devices: every request is signed with the device key over method,
//! path, body hash, timestamp and nonce (`protocol::signing_payload`). The server refuses
//! a timestamp outside ±5 minutes of its clock (and says its time, so an agent with a wrong
//! clock corrects itself and retries), a nonce seen before or not hex, an unknown or revoked
//! device, or a bad signature. The headers and the device are checked before the body is
//! read (under a per-endpoint size limit and the body timeout, [`http`]); the signature over
//! the body's hash after. A device can only write feedback under its own id and supersede
//! only its own decisions; every record is checked against the protocol first ([`ingest`]).
//! Errors are [`ApiError`]s: a status, a machine-readable `code` and a message.

mod auth;

use super::store::{ServerStore, Via};
use super::{export_key, http, ingest, metrics, repository, store};
use crate::protocol::{
    self, EnrollRequest, EnrollResponse, ErrorBody, ErrorCode, UploadAck, PROTOCOL_VERSION,
};
use auth::{authenticated_body, read_body};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// Largest accepted request body (compressed), bytes: a feedback batch.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Largest drift upload or device models report, bytes (they carry numbers and names).
pub const MAX_SMALL_BODY_BYTES: usize = 1 << 20;
/// Largest accepted batch after decompression, bytes.
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Storage.
    pub store: Arc<dyn ServerStore>,
    /// The blob store of the signed repository (metadata and content-addressed bundle
    /// files), if any: read on every request, so what any process published is served.
    pub repo: Option<repository::blob::BlobStore>,
    /// This process's counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The secret each device's export key (sealed USB feedback files) is derived from; a
    /// device enrolled without it writes unsealed files.
    pub export_secret: Option<export_key::ExportSecret>,
    /// The data folder holding the online keys: its timestamp key signs each device's
    /// group in answer to its report ([`protocol::DeviceAssignment`]). `None`: answers
    /// are unsigned, and agents keep the group they last verified.
    pub keys_dir: Option<std::path::PathBuf>,
    /// Timeouts, connection limits and who may read `/metrics`.
    pub http: http::HttpSettings,
}

impl AppState {
    /// State over `store`, serving `repo`, with fresh metrics.
    pub fn new(store: Arc<dyn ServerStore>, repo: Option<repository::blob::BlobStore>) -> AppState {
        AppState {
            store,
            repo,
            metrics: Arc::new(metrics::Metrics::new()),
            export_secret: None,
            keys_dir: None,
            http: http::HttpSettings::default(),
        }
    }

    /// Uses `http` for body timeouts and `/metrics` access.
    pub fn with_http(mut self, http: http::HttpSettings) -> AppState {
        self.http = http;
        self
    }

    /// Signs device assignments with the timestamp key under `data_dir/keys/online/`.
    pub fn with_keys_dir(mut self, data_dir: &std::path::Path) -> AppState {
        self.keys_dir = Some(data_dir.to_path_buf());
        self
    }

    /// Gives enrolling devices export keys derived from `secret`.
    pub fn with_export_secret(mut self, secret: export_key::ExportSecret) -> AppState {
        self.export_secret = Some(secret);
        self
    }
}

/// An API error: a status, a machine-readable [`ErrorCode`] and a message that says what
/// to do. Every error response of the agents' API is one of these, as an [`ErrorBody`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not what the endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a feedback record breaks the protocol.
    #[error("invalid feedback record: {0}")]
    InvalidRecord(#[from] ingest::Invalid),
    /// 401: not a valid signed request of an enrolled device.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the device was revoked.
    #[error("{}", protocol::REVOKED_MESSAGE)]
    Revoked,
    /// 403: an unknown, used or expired enrollment code.
    #[error("{0}")]
    BadEnrollmentCode(String),
    /// 403: not allowed from where the request came (`/metrics` from another machine).
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 408: the body did not arrive in time.
    #[error("{0}")]
    Timeout(String),
    /// 409: a nonce seen before.
    #[error("replayed request (nonce already used); send a new request")]
    Replayed,
    /// 413: a body over the endpoint's limit.
    #[error("{0}")]
    TooLarge(String),
    /// 416: a range past the end of the file.
    #[error("range starts past the end of the file")]
    RangeNotSatisfiable,
    /// 426: another protocol version.
    #[error("{0}")]
    ProtocolMismatch(String),
    /// 500: logged where it happened; the client gets no detail.
    #[error("internal server error; the operator can see the cause in the server log")]
    Internal,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidRecord(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Revoked | ApiError::BadEnrollmentCode(_) | ApiError::Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Replayed => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::ProtocolMismatch(_) => StatusCode::UPGRADE_REQUIRED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::InvalidRecord(_) => ErrorCode::InvalidRecord,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Revoked => ErrorCode::Revoked,
            ApiError::BadEnrollmentCode(_) => ErrorCode::BadEnrollmentCode,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Timeout(_) => ErrorCode::Timeout,
            ApiError::Replayed => ErrorCode::Replayed,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::RangeNotSatisfiable => ErrorCode::RangeNotSatisfiable,
            ApiError::ProtocolMismatch(_) => ErrorCode::ProtocolMismatch,
            ApiError::Internal => ErrorCode::Internal,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (field, feedback_id) = match &self {
            ApiError::InvalidRecord(i) => (Some(i.field.clone()), i.feedback_id.clone()),
            _ => (None, None),
        };
        let body = ErrorBody {
            error: self.to_string(),
            code: Some(self.code().as_str().to_string()),
            field,
            feedback_id,
        };
        (self.status(), Json(body)).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!("internal error: {e}");
    ApiError::Internal
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::BadRequest(m.into())
}

/// Current unix time in seconds.
use crate::clock::unix_now;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/enroll", post(enroll))
        .route("/v1/feedback", post(upload))
        .route("/v1/drift", post(drift_upload))
        .route("/v1/device/models", post(device_models))
        .route("/v1/metadata/{name}", get(metadata))
        .route("/v1/targets/sha256/{hash}", get(target))
        .route("/v1/tuf/metadata/{name}", get(tuf_metadata))
        .route("/v1/tuf/targets/{*path}", get(tuf_target))
        .route("/metrics", get(metrics_text))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(stamp))
        .with_state(state)
}

/// Adds the protocol version and server time to every response.
async fn stamp(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        protocol::HEADER_PROTOCOL,
        HeaderValue::from(PROTOCOL_VERSION),
    );
    h.insert(protocol::HEADER_SERVER_TIME, HeaderValue::from(unix_now()));
    res
}

fn check_protocol(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(protocol::HEADER_PROTOCOL).and_then(|v| v.to_str().ok()) {
        None => Ok(()),
        Some(v) if v == PROTOCOL_VERSION.to_string() => Ok(()),
        Some(v) => Err(ApiError::ProtocolMismatch(
            format!("this server speaks protocol {PROTOCOL_VERSION}, the agent speaks {v}; upgrade the older of the two"),
        )),
    }
}

/// Counts each request and its latency by route (the route pattern, not the path, so ids in
/// paths do not make a new series each).
async fn track(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    st.metrics
        .latency
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    st.metrics
        .requests
        .with_label_values(&[route.as_str(), method.as_str(), res.status().as_str()])
        .inc();
    res
}

/// How long the health check waits for the store.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// 200 `{"status":"ok"}` when the store answers within 3 s; 503 otherwise, so a load
/// balancer stops sending agents to a process that lost its database.
async fn health(State(st): State<AppState>) -> Response {
    let store = st.store.clone();
    let ping = tokio::time::timeout(HEALTH_TIMEOUT, blocking(move || store.ping())).await;
    let problem = match ping {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(_)) => Some("the store check could not run".to_string()),
        Err(_) => Some(format!(
            "the store did not answer within {HEALTH_TIMEOUT:?}"
        )),
    };
    match problem {
        None => {
            Json(serde_json::json!({ "status": "ok", "protocol": PROTOCOL_VERSION, "store": "ok" }))
                .into_response()
        }
        Some(p) => {
            tracing::warn!(problem = %p, "health check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "unavailable", "protocol": PROTOCOL_VERSION, "store": p })),
            )
                .into_response()
        }
    }
}

/// `/metrics`: the Prometheus text exposition, to whom `[http] metrics` allows.
async fn metrics_text(
    State(st): State<AppState>,
    peer: Option<axum::extract::Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_metrics_access(st.http.metrics, peer.map(|p| p.0 .0), &headers)?;
    let (store, metrics) = (st.store.clone(), st.metrics.clone());
    let text = blocking(move || metrics.render(store.as_ref())).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        text,
    )
        .into_response())
}

/// Whether a request for `/metrics` from `peer` (unknown: served without our listener) is
/// allowed under `access`.
fn check_metrics_access(
    access: http::MetricsAccess,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let proxied = headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for");
    match access {
        http::MetricsAccess::Anyone => Ok(()),
        http::MetricsAccess::Off => Err(ApiError::NotFound(
            "/metrics is off on this server ([http] metrics = \"off\")".into(),
        )),
        http::MetricsAccess::Loopback
            if peer.is_some_and(|p| p.ip().is_loopback()) && !proxied =>
        {
            Ok(())
        }
        http::MetricsAccess::Loopback => Err(ApiError::Forbidden(
            "/metrics is served only to this machine (loopback, not through a proxy); set [http] metrics = \"anyone\" in the server config to open it".into(),
        )),
    }
}

/// Largest enrollment request (a code and a public key), bytes: it is read unauthenticated.
const MAX_ENROLL_BYTES: usize = 8 << 10;

async fn enroll(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EnrollResponse>, ApiError> {
    use base64::Engine;
    check_protocol(&headers)?;
    let body = read_body(&st, &headers, body, MAX_ENROLL_BYTES).await?;
    let req: EnrollRequest = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("body is not an enrollment request: {e}")))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(&req.public_key)
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| bad("public_key must be a base64 Ed25519 public key (32 bytes)"))?;
    let code_hash = crate::hash::sha256_hex(normalise_code(&req.code).as_bytes());
    let store = st.store.clone();
    let d = blocking(move || store.enroll(&code_hash, &key))
        .await?
        .map_err(|e| match e {
            store::ServerStoreError::BadCode => ApiError::BadEnrollmentCode(e.to_string()),
            other => internal(other),
        })?;
    let store = st.store.clone();
    let detail = format!("{} ({})", d.name, d.device_id);
    let _ = blocking(move || store.audit("device", "enroll", &detail)).await;
    tracing::info!(device = %d.name, "device enrolled");
    let export_key = st
        .export_secret
        .as_ref()
        .map(|s| crate::protocol::b64(&s.key_for(&d.device_id).0));
    Ok(Json(EnrollResponse {
        device_id: d.device_id,
        name: d.name,
        group: d.group,
        export_key,
    }))
}

/// Codes are shown in groups (`ABCD-EFGH-...`); dashes, spaces and case do not matter.
pub fn normalise_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

async fn upload(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<UploadAck>, ApiError> {
    let (device_id, body) =
        authenticated_body(&st, &method, &uri, &headers, body, MAX_BODY_BYTES).await?;
    let batch = checked_batch(&st, &device_id, &body)?;
    let store = st.store.clone();
    let n = batch.records.len();
    let id = device_id.clone();
    let repo = st.repo.clone();
    let stored = blocking(move || {
        // Labels against the published release's label set (the repository is read on a
        // blocking thread: it may be S3).
        if let Some(blobs) = &repo {
            let mut published = ingest::PublishedLabels::new(blobs);
            if let Err(e) =
                ingest::check_known_labels(&batch, &mut |m, v| published.labels_of(m, v))
            {
                return Ok(Err(e));
            }
        }
        store
            .ingest(&id, &batch.records, Via::Http)
            .map(|r| Ok((r, batch.records)))
    })
    .await?
    .map_err(internal)?;
    let (r, records) = match stored {
        Ok(x) => x,
        Err(e) => {
            st.metrics
                .ingest_refusals
                .with_label_values(&["invalid_record"])
                .inc();
            tracing::warn!(device = %device_id, field = %e.field, problem = %e.problem, "feedback batch refused: a label the model does not have");
            return Err(e.into());
        }
    };
    for (id, target) in &r.foreign_supersedes {
        st.metrics
            .ingest_refusals
            .with_label_values(&["foreign_supersedes"])
            .inc();
        tracing::warn!(device = %device_id, feedback_id = %id, supersedes = %target, "a record's supersedes names another device's decision; stored without it");
    }
    let lags = ingest_lags(&records, &r.stored_now);
    st.metrics.record_batch(
        r.acked.len() - r.duplicates,
        r.duplicates,
        r.refused.len(),
        &lags,
    );
    tracing::info!(device = %device_id, records = n, new = r.acked.len() - r.duplicates, duplicates = r.duplicates, refused = r.refused.len(), "feedback batch");
    Ok(Json(UploadAck {
        acked: r.acked,
        duplicates: r.duplicates,
        refused: r.refused,
    }))
}

/// The uploaded batch, decompressed within its bound and checked field by field; a
/// refused record is counted and logged.
fn checked_batch(
    st: &AppState,
    device_id: &str,
    body: &[u8],
) -> Result<crate::protocol::UploadBatch, ApiError> {
    let raw = decompress_limited(body, MAX_BATCH_BYTES)
        .map_err(|e| bad(format!("body is not a zstd-compressed batch: {e}")))?;
    let checked = ingest::parse_batch(&raw).and_then(|b| {
        if b.protocol != PROTOCOL_VERSION {
            return Ok(Err(b.protocol));
        }
        ingest::check_batch(&b).map(|()| Ok(b))
    });
    match checked {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(p)) => Err(ApiError::ProtocolMismatch(format!(
            "batch protocol {p} is not {PROTOCOL_VERSION}"
        ))),
        Err(e) if !e.field.starts_with("records") => {
            Err(bad(format!("body is not a feedback batch: {e}")))
        }
        Err(e) => {
            st.metrics
                .ingest_refusals
                .with_label_values(&["invalid_record"])
                .inc();
            tracing::warn!(device = %device_id, field = %e.field, problem = %e.problem, "feedback batch refused: invalid record");
            Err(e.into())
        }
    }
}

/// Seconds from each newly stored decision (device clock) to now, for the lag histogram.
fn ingest_lags(records: &[crate::protocol::FeedbackRecord], stored_now: &[String]) -> Vec<f64> {
    let now = time::OffsetDateTime::now_utc();
    let fresh: std::collections::HashSet<&str> = stored_now.iter().map(String::as_str).collect();
    records
        .iter()
        .filter(|x| fresh.contains(x.feedback_id.as_str()))
        .filter_map(|x| {
            time::OffsetDateTime::parse(
                &x.created_at,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
        })
        .map(|t| (now - t).as_seconds_f64())
        .collect()
}

/// Drift summaries from a device (small: numbers and names, no raw data).
async fn drift_upload(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<protocol::DriftAck>, ApiError> {
    let (device_id, body) =
        authenticated_body(&st, &method, &uri, &headers, body, MAX_SMALL_BODY_BYTES).await?;
    let raw = decompress_limited(&body, MAX_BATCH_BYTES)
        .map_err(|e| bad(format!("body is not zstd-compressed: {e}")))?;
    let up: protocol::DriftUpload = serde_json::from_slice(&raw)
        .map_err(|e| bad(format!("body is not a drift upload: {e}")))?;
    for (_, w) in &up.windows {
        w.check_languages().map_err(bad)?;
    }
    let up_to = up.windows.iter().map(|w| w.0).max().unwrap_or(0);
    let store = st.store.clone();
    let id = device_id.clone();
    let stored = blocking(move || store.store_drift(&id, &up.windows))
        .await?
        .map_err(internal)?;
    tracing::info!(device = %device_id, stored, "drift windows");
    Ok(Json(protocol::DriftAck { up_to, stored }))
}

/// A device reports which model versions it runs and which updates it refused or rolled
/// back; the answer tells it its group (release targeting needs it).
async fn device_models(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<protocol::DeviceStatus>, ApiError> {
    let (device_id, body) =
        authenticated_body(&st, &method, &uri, &headers, body, MAX_SMALL_BODY_BYTES).await?;
    let report: protocol::DeviceModelsReport = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("body is not a device models report: {e}")))?;
    if report.models.len() > 1000 || report.failures.len() > 1000 {
        return Err(bad("report lists more than 1000 models or failures"));
    }
    let challenge = report.challenge.clone();
    if challenge
        .as_deref()
        .is_some_and(|c| !protocol::valid_challenge(c))
    {
        return Err(bad("challenge must be 32 to 128 lower-case hex characters"));
    }
    let store = st.store.clone();
    let id = device_id.clone();
    let failures = report.failures.len();
    let device = blocking(move || {
        store.record_device_models(&id, &report)?;
        store.device(&id)
    })
    .await?
    .map_err(internal)?
    .ok_or_else(|| ApiError::Unauthorized("unknown device".into()))?;
    if failures > 0 {
        tracing::warn!(device = %device.name, failures, "device reported refused or rolled-back model updates");
    }
    let assignment = match (&st.keys_dir, challenge) {
        (Some(dir), Some(c)) => {
            let (dir, id, group) = (dir.clone(), device_id.clone(), device.group.clone());
            blocking(move || sign_assignment(&dir, id, group, c)).await?
        }
        _ => None,
    };
    Ok(Json(protocol::DeviceStatus {
        device_id,
        group: device.group,
        assignment,
    }))
}

/// The device's group signed with the timestamp key, bound to the report's challenge
/// (`None`, logged, if the key cannot be read: the agent then keeps its verified group).
fn sign_assignment(
    keys_dir: &std::path::Path,
    device_id: String,
    group: String,
    challenge: String,
) -> Option<crate::trust::Signed<protocol::DeviceAssignment>> {
    let key = match repository::keys::online_key(keys_dir, "timestamp") {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "device assignment not signed");
            return None;
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let expires = (now + time::Duration::seconds(protocol::DEVICE_ASSIGNMENT_SECS))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let a = protocol::DeviceAssignment {
        type_: protocol::DEVICE_ASSIGNMENT_TYPE.into(),
        device_id,
        group,
        challenge,
        issued_at: now.unix_timestamp().max(0) as u64,
        expires,
    };
    Some(crate::trust::sign(a, &[&key]))
}

async fn metadata(
    State(st): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let ok = name.ends_with(".json") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
    serve_metadata(st, ok, "metadata", name).await
}

/// TUF 1.0 metadata (`repository::tuf`); delegated role names may hold `-` and `_`.
async fn tuf_metadata(
    State(st): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let ok = name.ends_with(".json")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
    serve_metadata(st, ok, repository::tuf::PREFIX, name).await
}

async fn serve_metadata(
    st: AppState,
    ok: bool,
    prefix: &str,
    name: String,
) -> Result<Response, ApiError> {
    let Some(repo) = st.repo.filter(|_| ok) else {
        return Err(ApiError::NotFound(format!("no metadata {name:?}")));
    };
    match repo.get_from(&format!("{prefix}/{name}"), 0).await {
        Ok(Some(r)) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r.bytes,
        )
            .into_response()),
        Ok(None) => Err(ApiError::NotFound(format!(
            "no metadata {name:?} (nothing published yet?)"
        ))),
        Err(e) => Err(internal(e)),
    }
}

/// A content-addressed bundle file, with `Range: bytes=N-` so an interrupted download
/// resumes where it stopped.
async fn target(
    State(st): State<AppState>,
    axum::extract::Path(hash): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve_target(st, &hash, &headers).await
}

/// A TUF target file, fetched by content as consistent snapshots name it:
/// `<dir>/<sha256>.<name>` is the bundle file `targets/sha256/<sha256>` (the client checks
/// the length and hashes its signed targets give; the server only serves by content).
async fn tuf_target(
    State(st): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let file = path.rsplit('/').next().unwrap_or_default();
    let hash = file.split_once('.').map(|(h, _)| h).unwrap_or_default();
    serve_target(st, hash, &headers).await
}

async fn serve_target(st: AppState, hash: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let ok = hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit());
    let Some(repo) = st.repo.filter(|_| ok) else {
        return Err(ApiError::NotFound("no such file".into()));
    };
    let key = format!("targets/sha256/{}", hash.to_ascii_lowercase());
    let not_found = || ApiError::NotFound("no such file".into());
    let start = headers
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok());
    let octets = (
        axum::http::header::CONTENT_TYPE,
        "application/octet-stream".to_string(),
    );
    match start {
        None | Some(0) => {
            let r = repo.get_from(&key, 0).await.map_err(internal)?;
            let r = r.ok_or_else(not_found)?;
            if start.is_none() {
                return Ok(([octets], r.bytes).into_response());
            }
            let range = format!("bytes 0-{}/{}", r.size.saturating_sub(1), r.size);
            Ok((
                StatusCode::PARTIAL_CONTENT,
                [(axum::http::header::CONTENT_RANGE, range), octets],
                r.bytes,
            )
                .into_response())
        }
        Some(s) => {
            // The size first: a start past the end is the client's error, not the store's.
            let size = repo.size(&key).await.map_err(internal)?;
            let size = size.ok_or_else(not_found)?;
            if s >= size {
                return Err(ApiError::RangeNotSatisfiable);
            }
            let r = repo.get_from(&key, s).await.map_err(internal)?;
            let r = r.ok_or_else(not_found)?;
            let range = format!("bytes {s}-{}/{}", r.size - 1, r.size);
            Ok((
                StatusCode::PARTIAL_CONTENT,
                [(axum::http::header::CONTENT_RANGE, range), octets],
                r.bytes,
            )
                .into_response())
        }
    }
}

/// zstd decompression that stops at `limit` bytes (a small body must not expand without end).
pub fn decompress_limited(body: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    let dec = zstd::stream::read::Decoder::new(body)?;
    dec.take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::other(format!(
            "batch larger than {limit} bytes"
        )));
    }
    Ok(out)
}

/// Runs the server until Ctrl-C, with the limits of `state.http`.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    let settings = state.http.clone();
    serve_app(listener, router(state), settings).await
}

/// Runs a router (the agents' API, with the operators' dashboard merged in by
/// `outpost-server serve`) until Ctrl-C, with the timeouts and connection limits of
/// `settings` ([`http::serve`]).
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    settings: http::HttpSettings,
) -> std::io::Result<()> {
    http::serve(listener, app, settings, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_access_follows_the_setting_and_the_peer() {
        let h = HeaderMap::new();
        let local = Some("127.0.0.1:5000".parse().unwrap());
        let remote = Some("10.1.2.3:5000".parse().unwrap());
        let check = |a, p| check_metrics_access(a, p, &h).map_err(|e| e.code());
        assert_eq!(check(http::MetricsAccess::Loopback, local), Ok(()));
        assert_eq!(
            check(http::MetricsAccess::Loopback, remote),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            check(http::MetricsAccess::Loopback, None),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(check(http::MetricsAccess::Anyone, remote), Ok(()));
        assert_eq!(
            check(http::MetricsAccess::Off, local),
            Err(ErrorCode::NotFound)
        );
    }
}
