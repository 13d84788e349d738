//! The review server's routes: the embedded page, the JSON API, and the guard that every
//! request passes (Host and Origin checks, security headers). See the module above for the
//! list of endpoints and the reasons behind the guard.

use super::scene::{scene_info, SceneError, SceneInfo};
use super::App;
use crate::model::bundle;
use crate::model::manifest::{parse_version, Manifest};
use crate::store::feedback::{Counters, Feedback, FeedbackError, LabelSpace, NewFeedback};
use crate::store::queue::{self, QueueFilter, ScoreRule, StoredPrediction};
use crate::store::Store;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

type Shared = Arc<App>;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The router with every route and the guard.
pub(crate) fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/api/session", get(session))
        .route("/api/lock", get(lock_state))
        .route("/api/unlock", post(unlock))
        .route("/api/models", get(models))
        .route("/api/filters", get(filters))
        .route("/api/queue", get(queue_page))
        .route("/api/items/{id}", get(item))
        .route("/api/items/{id}/content", get(item_content))
        .route("/api/items/{id}/scene", get(item_scene))
        .route("/api/counters", get(counters))
        .route("/api/drift", get(drift))
        .route("/api/feedback/undoable", get(undoable))
        .route("/api/feedback", post(give))
        .route("/api/undo", post(undo))
        .route("/api/serving", get(serving))
        .route("/api/classify", post(classify))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

// ---------------------------------------------------------------------------------------
// Errors

/// An error answered as `{"error": "..."}`.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// 423: the data is encrypted and no one has typed the passphrase yet.
    fn locked() -> ApiError {
        ApiError::new(
            StatusCode::LOCKED,
            "the agent is locked: its data is encrypted; type the passphrase on this page to unlock it",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!("review: {}", self.message);
        }
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<FeedbackError> for ApiError {
    fn from(e: FeedbackError) -> ApiError {
        let status = match &e {
            FeedbackError::UnknownItem(_)
            | FeedbackError::NoPrediction { .. }
            | FeedbackError::UnknownFeedback(_) => StatusCode::NOT_FOUND,
            FeedbackError::BadLabel(_)
            | FeedbackError::NoLabels
            | FeedbackError::UnknownLabel { .. }
            | FeedbackError::SingleLabel { .. } => StatusCode::BAD_REQUEST,
            FeedbackError::AlreadySynced(_) | FeedbackError::NotLatest(_) => StatusCode::CONFLICT,
            FeedbackError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        ApiError::from(FeedbackError::from(e))
    }
}

/// Runs database work on a blocking thread with the store locked.
async fn with_store<T, F>(app: &Shared, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Store, &App) -> Result<T, ApiError> + Send + 'static,
{
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = app.store.lock().map_err(|_| {
            ApiError::internal("the database lock is poisoned; restart `outpost review`")
        })?;
        let store = guard.as_mut().ok_or_else(ApiError::locked)?;
        f(store, &app)
    })
    .await
    .map_err(|e| ApiError::internal(format!("request failed: {e}")))?
}

fn item_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::bad(format!("bad item id in the URL: {}", e.body_text())))
}

// ---------------------------------------------------------------------------------------
// The guard

/// `host[:port]` names this server: an IP address or `localhost`, and our port.
pub(crate) fn host_allowed(host: &str, port: u16) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let (name, given_port) = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        let p = match after.strip_prefix(':') {
            Some(p) => p.parse::<u16>().ok(),
            None if after.is_empty() => Some(80),
            None => None,
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (String::from("ip"), p)
    } else {
        let (n, p) = match host.rsplit_once(':') {
            Some((n, p)) => (n.to_string(), p.parse::<u16>().ok()),
            None => (host.clone(), Some(80)),
        };
        let ok = n == "localhost" || n.parse::<std::net::Ipv4Addr>().is_ok();
        if !ok {
            return false;
        }
        (n, p)
    };
    !name.is_empty() && given_port == Some(port)
}

fn origin_allowed(origin: &str, port: u16) -> bool {
    origin
        .strip_prefix("http://")
        .is_some_and(|h| host_allowed(h.trim_end_matches('/'), port))
}

async fn guard(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, app.port) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "requests must address this server as http://127.0.0.1:{0}/ or http://localhost:{0}/ (Host {host:?} refused: protection against DNS rebinding)",
                app.port
            ),
        )
        .into_response();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let o = origin.to_str().unwrap_or("");
            if !origin_allowed(o, app.port) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("requests from other sites are refused (Origin {o:?})"),
                )
                .into_response();
            }
        }
    }
    let api = req.uri().path().starts_with("/api/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if api && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A JSON body: requires `Content-Type: application/json` and answers bad JSON with a
/// clear 400 (axum's own extractor would answer 422 in plain text).
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("send JSON with Content-Type: application/json (got {ct:?})"),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::bad(format!("malformed JSON: {e}"))
                }
                Category::Data => ApiError::bad(format!("invalid request: {e}")),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Serving (hot-swapped models)

async fn serving(State(app): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(s) = &app.opts.serving else {
        return Err(ApiError::not_found(
            "classification is served by `outpost run` only",
        ));
    };
    Ok(Json(serde_json::json!({ "models": s.versions() })))
}

#[derive(Deserialize)]
struct ClassifyRequest {
    model: String,
    #[serde(default)]
    image_base64: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

async fn classify(
    State(app): State<Shared>,
    ApiJson(req): ApiJson<ClassifyRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use base64::Engine;
    let Some(s) = &app.opts.serving else {
        return Err(ApiError::not_found(
            "classification is served by `outpost run` only",
        ));
    };
    // The model is fixed here: an update swapping in another one does not affect this request.
    let model = s
        .get(&req.model)
        .ok_or_else(|| ApiError::not_found(format!("no model {:?} is serving", req.model)))?;
    let image = match &req.image_base64 {
        Some(b) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| ApiError::bad(format!("image_base64: {e}")))?,
        ),
        None => None,
    };
    let text = req.text.clone();
    let out = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, String> {
        use crate::infer::classify::{classify_one, Input};
        let m = model.manifest();
        let row = match (image, text, &m.image, &model.tokenizer) {
            (Some(bytes), _, Some(_), _) => {
                let rgb = image::load_from_memory(&bytes)
                    .map_err(|e| format!("image: {e}"))?
                    .to_rgb8();
                classify_one(&*model, Input::Image(&rgb))?
            }
            (_, Some(t), _, Some(_)) => classify_one(&*model, Input::Text(&t))?,
            _ => {
                return Err(format!(
                    "{} needs {}",
                    m.id(),
                    if m.image.is_some() {
                        "image_base64"
                    } else {
                        "text"
                    }
                ))
            }
        };
        let labels: Vec<String> = model
            .decide(&row)
            .into_iter()
            .filter_map(|i| m.labels.get(i).cloned())
            .collect();
        Ok(serde_json::json!({
            "model": m.name,
            "version": m.version,
            "labels": labels,
            "scores": row,
        }))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::bad)?;
    Ok(Json(out))
}

// ---------------------------------------------------------------------------------------
// Model catalogue (manifests)

/// The installed bundles' manifests, read fresh for each request that needs them (a few
/// small files; an update installed while the page is open is seen at once).
struct Catalog {
    manifests: Vec<Manifest>,
    problems: Vec<String>,
}

impl Catalog {
    fn load(dir: &std::path::Path) -> Catalog {
        let mut manifests = Vec::new();
        let mut problems = Vec::new();
        match bundle::discover(dir) {
            Ok(dirs) => {
                for d in dirs {
                    match bundle::read_manifest(&d) {
                        Ok(m) => manifests.push(m),
                        Err(e) => problems.push(e.to_string()),
                    }
                }
            }
            Err(e) => problems.push(format!(
                "cannot read the models folder {}: {e}",
                dir.display()
            )),
        }
        Catalog {
            manifests,
            problems,
        }
    }

    fn newest(&self, name: &str) -> Option<&Manifest> {
        self.manifests
            .iter()
            .filter(|m| m.name == name)
            .max_by_key(|m| parse_version(&m.version))
    }

    /// The manifest of exactly this version, else the newest of that name.
    fn for_version(&self, name: &str, version: &str) -> Option<&Manifest> {
        self.manifests
            .iter()
            .find(|m| m.name == name && m.version == version)
            .or_else(|| self.newest(name))
    }

    fn rule(&self, name: &str, version: &str) -> Option<ScoreRule> {
        self.for_version(name, version).map(|m| ScoreRule {
            multi_label: m.multi_label,
            thresholds: m.thresholds.clone().unwrap_or_default(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Static page

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such page or endpoint: {method} {}", uri.path()))
}

// ---------------------------------------------------------------------------------------
// Read-only endpoints

#[derive(Serialize)]
struct SessionInfo {
    annotator: String,
    send_images: bool,
    send_reports: bool,
    database: String,
    models_dir: String,
}

/// `GET /api/lock`: whether item data can be read (`{"locked": bool}`).
async fn lock_state(State(app): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let locked = app
        .store
        .lock()
        .map_err(|_| ApiError::internal("the database lock is poisoned"))?
        .is_none();
    Ok(Json(serde_json::json!({ "locked": locked })))
}

#[derive(Deserialize)]
struct UnlockBody {
    passphrase: String,
}

/// `POST /api/unlock {"passphrase"}`: unwraps the data key (Argon2id, on a blocking thread)
/// and opens the database. 401 for a wrong passphrase (after a one-second pause, so
/// guessing is slow); nothing is read or written either way until it is right.
async fn unlock(
    State(app): State<Shared>,
    body: Result<Json<UnlockBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad(e.body_text()))?;
    let app2 = app.clone();
    let result = tokio::task::spawn_blocking(move || {
        let passphrase = zeroize::Zeroizing::new(body.passphrase);
        let mut guard = app2
            .store
            .lock()
            .map_err(|_| ApiError::internal("the database lock is poisoned"))?;
        if guard.is_some() {
            return Ok(false);
        }
        let data_dir = app2
            .opts
            .database
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        match crate::store::vault::unlock_with_passphrase(&data_dir, &passphrase) {
            Ok(_) => {}
            Err(e @ crate::store::vault::VaultError::WrongPassphrase) => {
                return Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))
            }
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
        let store =
            Store::open(&app2.opts.database).map_err(|e| ApiError::internal(e.to_string()))?;
        *guard = Some(store);
        tracing::info!("the agent was unlocked from the review page");
        Ok(true)
    })
    .await
    .map_err(|e| ApiError::internal(format!("request failed: {e}")))?;
    match result {
        Ok(_) => Ok(Json(serde_json::json!({ "locked": false }))),
        Err(e) => {
            if e.status == StatusCode::UNAUTHORIZED {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e)
        }
    }
}

async fn session(State(app): State<Shared>) -> Json<SessionInfo> {
    let o = &app.opts;
    Json(SessionInfo {
        annotator: o.annotator.clone(),
        send_images: o.send_images,
        send_reports: o.send_reports,
        database: o.database.display().to_string(),
        models_dir: o.models_dir.display().to_string(),
    })
}

#[derive(Serialize)]
struct ModelInfo {
    name: String,
    version: String,
    task: &'static str,
    description: String,
    multi_label: bool,
    labels: Vec<String>,
    thresholds: Option<Vec<f32>>,
}

async fn models(State(app): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let dir = app.opts.models_dir.clone();
    let cat = tokio::task::spawn_blocking(move || Catalog::load(&dir))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let list: Vec<ModelInfo> = cat
        .manifests
        .iter()
        .map(|m| ModelInfo {
            name: m.name.clone(),
            version: m.version.clone(),
            task: m.task.as_str(),
            description: m.description.clone(),
            multi_label: m.multi_label,
            labels: m.labels.clone(),
            thresholds: m.thresholds.clone(),
        })
        .collect();
    Ok(Json(serde_json::json!({
        "models": list,
        "problems": cat.problems,
        "models_dir": app.opts.models_dir.display().to_string(),
    })))
}

async fn filters(State(app): State<Shared>) -> Result<Json<queue::QueueFacets>, ApiError> {
    with_store(&app, |s, _| Ok(Json(s.queue_facets()?))).await
}

async fn counters(State(app): State<Shared>) -> Result<Json<Counters>, ApiError> {
    with_store(&app, |s, _| Ok(Json(s.counters()?))).await
}

/// Drift state per model (scored windows only; analysis and `outpost status` score new ones).
async fn drift(State(app): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    with_store(&app, |s, _| {
        let models = crate::drift::summary(s).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Json(serde_json::json!({ "models": models })))
    })
    .await
}

async fn undoable(State(app): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    with_store(&app, |s, _| {
        Ok(Json(
            serde_json::json!({ "feedback": s.last_undoable_feedback()? }),
        ))
    })
    .await
}

fn valid_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn parse_queue_query(q: &HashMap<String, String>) -> Result<(QueueFilter, usize, usize), ApiError> {
    const KNOWN: [&str; 9] = [
        "model", "label", "folder", "from", "to", "kind", "reviewed", "offset", "limit",
    ];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "unknown queue parameter {k:?} (known: {})",
            KNOWN.join(", ")
        )));
    }
    let text = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let day = |k: &str| -> Result<Option<String>, ApiError> {
        match text(k) {
            Some(d) if !valid_day(&d) => Err(ApiError::bad(format!(
                "{k}={d:?}: give a day as YYYY-MM-DD"
            ))),
            other => Ok(other),
        }
    };
    let num = |k: &str, default: usize| -> Result<usize, ApiError> {
        match text(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::bad(format!("{k}={v:?}: not a whole number"))),
        }
    };
    let kind = text("kind");
    if let Some(k) = &kind {
        if k != "image" && k != "text" {
            return Err(ApiError::bad(format!("kind={k:?}: use image or text")));
        }
    }
    let reviewed = match text("reviewed").as_deref() {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(v) => return Err(ApiError::bad(format!("reviewed={v:?}: use 1 or 0"))),
    };
    let limit = num("limit", 200)?;
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad(format!("limit={limit}: use 1 to 1000")));
    }
    Ok((
        QueueFilter {
            model: text("model"),
            label: text("label"),
            folder: text("folder"),
            date_from: day("from")?,
            date_to: day("to")?,
            kind,
            include_reviewed: reviewed,
        },
        num("offset", 0)?,
        limit,
    ))
}

async fn queue_page(
    State(app): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<queue::QueuePage>, ApiError> {
    let (filter, offset, limit) = parse_queue_query(&q)?;
    with_store(&app, move |s, app| {
        let cat = Catalog::load(&app.opts.models_dir);
        let rule = |n: &str, v: &str| cat.rule(n, v);
        Ok(Json(s.review_queue(&filter, &rule, offset, limit)?))
    })
    .await
}

/// A prediction with its label names and thresholds from the manifest.
#[derive(Serialize)]
struct PredictionView {
    #[serde(flatten)]
    stored: StoredPrediction,
    /// Label names in score order (from the manifest of that version, else the newest).
    label_names: Vec<String>,
    multi_label: bool,
    thresholds: Option<Vec<f32>>,
    /// The labels the installed model knows (what counts as a new label).
    known_labels: Vec<String>,
    /// Whether a bundle of this model is installed (else decisions cannot be checked).
    installed: bool,
    certainty: f32,
}

#[derive(Serialize)]
struct ItemView {
    #[serde(flatten)]
    detail: ItemDetailNoPreds,
    predictions: Vec<PredictionView>,
    scene: Option<SceneInfo>,
}

/// The item detail without its predictions (they are replaced by [`PredictionView`]).
#[derive(Serialize)]
struct ItemDetailNoPreds {
    item_id: String,
    kind: String,
    source: String,
    locator: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    geometry: Option<serde_json::Value>,
    content_type: Option<String>,
    content_bytes: i64,
    text: Option<String>,
    first_seen: String,
    last_seen: String,
    feedback: Vec<Feedback>,
}

async fn item(
    State(app): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ItemView>, ApiError> {
    let id = item_id(path)?;
    let detail = with_store(&app, move |s, _| {
        s.item_detail(&id)?
            .ok_or_else(|| ApiError::not_found(format!("no item {id}")))
    })
    .await?;
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || {
        let cat = Catalog::load(&app2.opts.models_dir);
        let predictions = detail
            .predictions
            .into_iter()
            .map(|p| {
                let m = cat.for_version(&p.model_name, &p.model_version);
                let newest = cat.newest(&p.model_name);
                let label_names = match m {
                    Some(m) if m.labels.len() == p.scores.len() => m.labels.clone(),
                    _ => (1..=p.scores.len()).map(|i| format!("label {i}")).collect(),
                };
                let rule = cat
                    .rule(&p.model_name, &p.model_version)
                    .unwrap_or_default();
                PredictionView {
                    certainty: queue::certainty(&p.scores, &rule),
                    label_names,
                    multi_label: m.is_some_and(|m| m.multi_label),
                    thresholds: m.and_then(|m| m.thresholds.clone()),
                    known_labels: newest.map(|m| m.labels.clone()).unwrap_or_default(),
                    installed: newest.is_some(),
                    stored: p,
                }
            })
            .collect();
        let scene = detail
            .locator
            .as_deref()
            .and_then(queue::tile_box)
            .filter(|_| detail.kind == "image")
            .map(|b| scene_info(&detail.source, b, &app2.opts.image_limits));
        Json(ItemView {
            detail: ItemDetailNoPreds {
                item_id: detail.item_id,
                kind: detail.kind,
                source: detail.source,
                locator: detail.locator,
                width: detail.width,
                height: detail.height,
                geometry: detail.geometry,
                content_type: detail.content_type,
                content_bytes: detail.content_bytes,
                text: detail.text,
                first_seen: detail.first_seen,
                last_seen: detail.last_seen,
                feedback: detail.feedback,
            },
            predictions,
            scene,
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))
}

async fn item_content(
    State(app): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = item_id(path)?;
    let content = with_store(&app, move |s, _| {
        s.item_content(&id)?
            .ok_or_else(|| ApiError::not_found(format!("no item {id}")))
    })
    .await?;
    // Only the types the agent stores; anything else is served as opaque bytes.
    let ct = match content.content_type.as_deref() {
        Some("image/png") => "image/png",
        Some("image/jpeg") => "image/jpeg",
        Some("text/plain") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    // Content is addressed by its hash: it never changes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    Ok((headers, Body::from(content.bytes)).into_response())
}

async fn item_scene(
    State(app): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = item_id(path)?;
    let png = with_store(&app, move |s, _| {
        s.item_source(&id)?
            .ok_or_else(|| ApiError::not_found(format!("no item {id}")))
    })
    .await
    .and_then(|(source, locator)| {
        if locator.as_deref().and_then(queue::tile_box).is_none() {
            Err(ApiError::not_found(
                "this item is not a tile cut from a scene; it has no overview",
            ))
        } else {
            Ok(source)
        }
    })?;
    let app2 = app.clone();
    let overview =
        tokio::task::spawn_blocking(move || app2.scenes.overview(&png, &app2.opts.image_limits))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| match e {
                SceneError::Missing(m) => ApiError::not_found(m),
                SceneError::Unreadable(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            })?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        overview.png.clone(),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------
// Decisions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    item_id: String,
    model_name: String,
    #[serde(default)]
    labels: Option<Vec<String>>,
    /// Confirm the prediction as it is (the labels the model decided).
    #[serde(default)]
    confirm: bool,
    /// Labels in `labels` that the reviewer proposes as new classes on purpose.
    #[serde(default)]
    new_labels: Vec<String>,
}

#[derive(Serialize)]
struct FeedbackReply {
    feedback: Feedback,
    counters: Counters,
}

async fn give(
    State(app): State<Shared>,
    ApiJson(body): ApiJson<FeedbackBody>,
) -> Result<Json<FeedbackReply>, ApiError> {
    if body.labels.is_some() && body.confirm {
        return Err(ApiError::bad(
            "give either \"labels\" or \"confirm\": true, not both",
        ));
    }
    if body.labels.is_none() && !body.confirm {
        return Err(ApiError::bad(
            "missing field `labels` (or \"confirm\": true to accept the prediction)",
        ));
    }
    with_store(&app, move |s, app| {
        let item: Option<String> = {
            use rusqlite::OptionalExtension;
            s.conn()
                .query_row(
                    "SELECT kind FROM items WHERE item_id = ?1",
                    [&body.item_id],
                    |r| r.get(0),
                )
                .optional()?
        };
        let Some(kind) = item else {
            return Err(FeedbackError::UnknownItem(body.item_id.clone()).into());
        };
        let predicted: Option<String> = {
            use rusqlite::OptionalExtension;
            s.conn()
                .query_row(
                    "SELECT labels FROM predictions WHERE item_id = ?1 AND model_name = ?2
                     ORDER BY created_at DESC, prediction_id DESC LIMIT 1",
                    [&body.item_id, &body.model_name],
                    |r| r.get(0),
                )
                .optional()?
        };
        let Some(predicted) = predicted else {
            return Err(FeedbackError::NoPrediction {
                item: body.item_id.clone(),
                model: body.model_name.clone(),
            }
            .into());
        };
        let cat = Catalog::load(&app.opts.models_dir);
        let m = cat.newest(&body.model_name).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "model {:?} is not installed in {}, so its labels cannot be checked; reinstall the bundle to review its predictions",
                    body.model_name,
                    app.opts.models_dir.display()
                ),
            )
        })?;
        let space = LabelSpace {
            labels: m.labels.clone(),
            multi_label: m.multi_label,
        };
        let labels = match body.labels {
            Some(l) => l,
            None => {
                let l: Vec<String> = serde_json::from_str(&predicted).unwrap_or_default();
                if l.is_empty() {
                    return Err(ApiError::bad(
                        "the model decided no label for this item, so there is nothing to confirm; give the labels instead",
                    ));
                }
                l
            }
        };
        let input = NewFeedback {
            item_id: body.item_id,
            model_name: body.model_name,
            labels,
            annotator: app.opts.annotator.clone(),
            declared_new: body.new_labels,
            include_content: if kind == "image" {
                app.opts.send_images
            } else {
                app.opts.send_reports
            },
        };
        let feedback = s.give_feedback(&input, &space)?;
        if let Some(wake) = &app.opts.on_feedback {
            // `outpost run`: a decision was queued, so try to sync now rather than at the
            // next idle check.
            wake.notify_one();
        }
        tracing::info!(
            item = %feedback.item_id,
            action = %feedback.action,
            labels = ?feedback.labels,
            "review decision recorded"
        );
        Ok(Json(FeedbackReply {
            feedback,
            counters: s.counters()?,
        }))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UndoBody {
    feedback_id: String,
}

#[derive(Serialize)]
struct UndoReply {
    undone: String,
    item_id: String,
    model_name: String,
    restored: Option<Feedback>,
    counters: Counters,
}

async fn undo(
    State(app): State<Shared>,
    ApiJson(body): ApiJson<UndoBody>,
) -> Result<Json<UndoReply>, ApiError> {
    with_store(&app, move |s, _| {
        let fb = s
            .feedback(&body.feedback_id)?
            .ok_or_else(|| FeedbackError::UnknownFeedback(body.feedback_id.clone()))?;
        let restored = s.undo_feedback(&body.feedback_id)?;
        Ok(Json(UndoReply {
            undone: fb.feedback_id,
            item_id: fb.item_id,
            model_name: fb.model_name,
            restored,
            counters: s.counters()?,
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(host_allowed("127.0.0.1:8470", 8470));
        assert!(host_allowed("localhost:8470", 8470));
        assert!(host_allowed("LOCALHOST:8470", 8470));
        assert!(host_allowed("[::1]:8470", 8470));
        assert!(host_allowed("192.168.1.20:8470", 8470));
        assert!(host_allowed("127.0.0.1", 80));
        assert!(!host_allowed("127.0.0.1:8471", 8470));
        assert!(!host_allowed("evil.example:8470", 8470));
        assert!(!host_allowed("localhost.evil.example:8470", 8470));
        assert!(!host_allowed("", 8470));
        assert!(!host_allowed("[::1", 8470));
        assert!(!host_allowed("127.0.0.1:", 8470));
        assert!(origin_allowed("http://127.0.0.1:8470", 8470));
        assert!(!origin_allowed("http://evil.example:8470", 8470));
        assert!(!origin_allowed("null", 8470));
    }

    #[test]
    fn days() {
        assert!(valid_day("2026-01-31"));
        assert!(!valid_day("2026-1-31"));
        assert!(!valid_day("yesterday"));
    }
}
