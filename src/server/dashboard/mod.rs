//! The operators' dashboard: web pages served by `outpost-server serve` under `/admin/` for
//! headquarters staff: the fleet, the models and their releases, the learning loop, and the
//! audit log, with the operator actions (publish, stage, withdraw, train now, revoke).
//!
//! Pages are rendered on the server ([`views`]) with plots drawn as SVG ([`plots`]); the
//! only asset is a stylesheet embedded in the binary. No script runs on the page, and the
//! Content-Security-Policy forbids any.
//!
//! Access (see [`auth`]): every page needs a signed-in operator (`outpost-server admin add
//! NAME` creates one); without a session, pages redirect to the sign-in form and POSTs are
//! refused (401) with nothing done. Every POST carries the session's CSRF token.
//! The accounts themselves are created, given new passwords and removed by
//! [`accounts`] (`outpost-server admin add|passwd|remove`).
//!
//! Actions take two steps: the action's form (`POST /admin/actions/{action}`) only
//! *proposes* it and answers a confirmation page that says exactly what will happen, with a
//! one-time token; `POST /admin/confirm` with that token (same session, within 5 minutes)
//! does it. Each action calls the same library function as its command
//! ([`crate::server::ops`]), which writes the audit record with actor `operator:<name>`.
//!
//! Privacy: pages show device names, groups and counts, never device keys, embeddings or
//! raw feedback; one item's raw content is shown only on an explicit "show item" POST,
//! recorded in the audit log (`show item`).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /admin/login`, `POST /admin/login`, `POST /admin/logout` | sign in and out |
//! | `GET /admin/` | the fleet: filters and sorting by query (`group`, `state`, `drift`, `problems`, `q`, `sort`, `desc`) |
//! | `GET /admin/devices/{id}` | a device and its history |
//! | `GET /admin/models` | releases, candidates, metrics from version to version |
//! | `GET /admin/runs/{id}` | a training run's evaluation report |
//! | `GET /admin/loop` | feedback per day and label, labels new to the model, feedback-to-release time |
//! | `GET /admin/audit` | the audit log |
//! | `POST /admin/actions/{publish,stage,withdraw,train,revoke}` | propose an action (confirmation page) |
//! | `POST /admin/confirm` | do a proposed action |
//! | `POST /admin/feedback/{id}/show` | one feedback item's raw content (audited) |
//! | `GET /admin/style.css` | the stylesheet |

pub mod accounts;
pub mod auth;
pub mod plots;
mod views;

use super::config::ServerConfig;
use super::ops;
use super::repository::Repository;
use super::store::{AdminSession, ServerStore};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a proposed action waits for its confirmation.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(300);

const STYLE_CSS: &str = include_str!("assets/style.css");

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// An operator action, as proposed and then confirmed (kept as JSON in the database in
/// between, so any server process can confirm it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// `models publish VERSION --model MODEL`: a candidate kept by a training run.
    Publish {
        /// Model.
        model: String,
        /// Candidate version.
        version: String,
        /// Channel.
        channel: String,
        /// Groups (empty: every group).
        groups: Vec<String>,
        /// Share of devices.
        percent: u8,
    },
    /// `models stage`: who a release goes to.
    Stage {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Only on this channel.
        channel: Option<String>,
        /// New groups (`None`: unchanged; empty: every group).
        groups: Option<Vec<String>>,
        /// New share of devices.
        percent: u8,
    },
    /// `models withdraw`.
    Withdraw {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Only on this channel.
        channel: Option<String>,
    },
    /// `train MODEL`.
    Train {
        /// Model.
        model: String,
    },
    /// `devices revoke`.
    Revoke {
        /// Device id.
        device_id: String,
        /// Its name (shown).
        name: String,
    },
}

impl Action {
    /// The command this action is (also its audit action).
    pub fn command(&self) -> &'static str {
        match self {
            Action::Publish { .. } => "models publish",
            Action::Stage { .. } => "models stage",
            Action::Withdraw { .. } => "models withdraw",
            Action::Train { .. } => "train",
            Action::Revoke { .. } => "devices revoke",
        }
    }

    /// What will happen, in a sentence.
    pub fn describe(&self) -> String {
        let groups = |g: &[String]| {
            if g.is_empty() {
                "every group".to_string()
            } else {
                format!("groups {}", g.join(", "))
            }
        };
        let channel = |c: &Option<String>| match c {
            Some(c) => format!("on channel {c}"),
            None => "on every channel it is on".to_string(),
        };
        match self {
            Action::Publish { model, version, channel, groups: g, percent } => format!(
                "Publish candidate {model} {version} to channel {channel}, {}, {percent}% of devices. It is signed and agents see it at their next check.",
                groups(g)
            ),
            Action::Stage { model, version, channel: c, groups: g, percent } => format!(
                "Stage release {model} {version} {}: {}, {percent}% of devices.",
                channel(c),
                match g {
                    None => "groups unchanged".to_string(),
                    Some(g) => groups(g),
                }
            ),
            Action::Withdraw { model, version, channel: c } => format!(
                "Withdraw release {model} {version} {}. Devices stop installing it, and those running it move to the newest release that applies to them.",
                channel(c)
            ),
            Action::Train { model } => format!(
                "Queue a training job for {model}: one server process trains it on its base data and every field decision, evaluates it against the current model and publishes it if it passes the gate (as configured). The page does not wait for the run; it appears on this page when it ends."
            ),
            Action::Revoke { name, .. } => format!(
                "Revoke device {name}. It is refused from its next request and must be enrolled again to come back."
            ),
        }
    }

    /// Reads an action from its form.
    fn from_form(action: &str, f: &HashMap<String, String>) -> Result<Action, String> {
        let get = |k: &str| {
            f.get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let need = |k: &str| get(k).ok_or_else(|| format!("the form lacks {k}"));
        let percent = || -> Result<u8, String> {
            need("percent")?
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| "percent is a whole number from 0 to 100".to_string())
        };
        let groups = || -> Vec<String> {
            get("groups")
                .map(|g| {
                    g.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(match action {
            "publish" => Action::Publish {
                model: need("model")?,
                version: need("version")?,
                channel: need("channel")?,
                groups: groups(),
                percent: percent()?,
            },
            "stage" => Action::Stage {
                model: need("model")?,
                version: need("version")?,
                channel: get("channel"),
                groups: if get("all_groups").is_some() {
                    Some(vec![])
                } else {
                    Some(groups()).filter(|g| !g.is_empty())
                },
                percent: percent()?,
            },
            "withdraw" => Action::Withdraw {
                model: need("model")?,
                version: need("version")?,
                channel: get("channel"),
            },
            "train" => Action::Train {
                model: need("model")?,
            },
            "revoke" => Action::Revoke {
                device_id: need("device_id")?,
                name: String::new(),
            },
            other => return Err(format!("no action {other:?}")),
        })
    }
}

/// The dashboard's state.
pub struct Dashboard {
    store: Arc<dyn ServerStore>,
    cfg: ServerConfig,
    repo: Repository,
    throttle: auth::Throttle,
    flash: Mutex<HashMap<String, String>>,
}

impl Dashboard {
    /// The dashboard over `store`, acting on the server configured by `cfg` and its signed
    /// repository `repo`.
    pub fn new(store: Arc<dyn ServerStore>, cfg: ServerConfig, repo: Repository) -> Dashboard {
        Dashboard {
            store,
            cfg,
            repo,
            throttle: auth::Throttle::default(),
            flash: Mutex::new(HashMap::new()),
        }
    }

    fn take_flash(&self, session: &str) -> Option<String> {
        self.flash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session)
    }

    fn set_flash(&self, session: &str, message: String) {
        self.flash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.to_string(), message);
    }
}

type Shared = Arc<Dashboard>;

/// The dashboard's routes (merge them into the server's router).
pub fn router(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route("/admin/", get(fleet))
        .route("/admin/style.css", get(style))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/devices/{id}", get(device))
        .route("/admin/models", get(models))
        .route("/admin/runs/{id}", get(run))
        .route("/admin/loop", get(learning_loop))
        .route("/admin/audit", get(audit))
        .route("/admin/actions/{action}", post(propose))
        .route("/admin/confirm", post(confirm))
        .route("/admin/feedback/{id}/show", post(show_item))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::map_response(headers))
        .with_state(Arc::new(dashboard))
}

/// Security headers on every dashboard response.
async fn headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// An error page.
struct PageError(StatusCode, String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!("dashboard: {}", self.1);
        }
        (self.0, Html(views::error_page(self.0, &self.1))).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> PageError {
    PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PageError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}

/// The signed-in operator, or a redirect to the sign-in page.
async fn page_session(d: &Shared, headers: &HeaderMap) -> Result<(String, AdminSession), Response> {
    let (store, h) = (d.store.clone(), headers.clone());
    match blocking(move || auth::session(store.as_ref(), &h)).await {
        Ok(Ok(Some(s))) => Ok(s),
        Ok(Ok(None)) => Err(Redirect::to("/admin/login").into_response()),
        Ok(Err(e)) => Err(internal(e).into_response()),
        Err(e) => Err(e.into_response()),
    }
}

/// The signed-in operator of a POST whose CSRF token matches, or a refusal.
async fn post_session(
    d: &Shared,
    headers: &HeaderMap,
    csrf: Option<&String>,
) -> Result<(String, AdminSession), PageError> {
    if auth::foreign_origin(headers) {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            "refused: this request came from another site".into(),
        ));
    }
    let (store, h) = (d.store.clone(), headers.clone());
    let s = blocking(move || auth::session(store.as_ref(), &h))
        .await?
        .map_err(internal)?
        .ok_or_else(|| {
            PageError(
                StatusCode::UNAUTHORIZED,
                "sign in first: nothing was done".into(),
            )
        })?;
    if !csrf.is_some_and(|c| auth::same(c, &s.1.csrf)) {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            "the form's security token is missing or stale: reload the page; nothing was done"
                .into(),
        ));
    }
    Ok(s)
}

fn actor(s: &AdminSession) -> String {
    format!("operator:{}", s.admin)
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
}

async fn login_page() -> Html<String> {
    Html(views::login_page(None))
}

async fn login(
    State(d): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    if auth::foreign_origin(&headers) {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            "refused: this request came from another site".into(),
        ));
    }
    let name = f
        .get("name")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    if d.throttle.locked(&name) {
        tracing::warn!(admin = %name, "dashboard sign-in refused: too many wrong passwords");
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            Html(views::login_page(Some(
                "Too many wrong passwords for this name: try again in 15 minutes.",
            ))),
        )
            .into_response());
    }
    let (store, n) = (d.store.clone(), name.clone());
    let ok = blocking(move || auth::check_password(store.as_ref(), &n, &password))
        .await?
        .map_err(internal)?;
    if !ok {
        d.throttle.failed(&name);
        tracing::warn!(admin = %name, "dashboard sign-in failed");
        return Ok((
            StatusCode::UNAUTHORIZED,
            Html(views::login_page(Some("Wrong name or password."))),
        )
            .into_response());
    }
    d.throttle.succeeded(&name);
    let token = auth::new_token();
    let (store, n, hash) = (d.store.clone(), name.clone(), auth::token_hash(&token));
    blocking(move || -> Result<(), super::store::ServerStoreError> {
        store.create_session(
            &hash,
            &n,
            &auth::new_token(),
            super::unix_now() + auth::SESSION_SECS,
        )?;
        store.audit(&format!("operator:{n}"), "sign in", "dashboard")
    })
    .await?
    .map_err(internal)?;
    tracing::info!(admin = %name, "dashboard sign-in");
    let mut res = Redirect::to("/admin/").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&token, &headers)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

async fn logout(
    State(d): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let (hash, _) = post_session(&d, &headers, f.get("csrf")).await?;
    let store = d.store.clone();
    blocking(move || store.delete_session(&hash))
        .await?
        .map_err(internal)?;
    let mut res = Redirect::to("/admin/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// Renders a page for a signed-in operator: `render` gets the store, the config and the
/// page frame.
async fn page(
    d: Shared,
    headers: HeaderMap,
    render: impl FnOnce(&dyn ServerStore, &Repository, &views::Frame) -> Result<String, String>
        + Send
        + 'static,
) -> Response {
    let (hash, s) = match page_session(&d, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let frame = views::Frame {
        admin: s.admin.clone(),
        csrf: s.csrf.clone(),
        flash: d.take_flash(&hash),
    };
    let d2 = d.clone();
    match blocking(move || render(d2.store.as_ref(), &d2.repo, &frame)).await {
        Ok(Ok(html)) => Html(html).into_response(),
        Ok(Err(e)) if e.starts_with("404 ") => {
            PageError(StatusCode::NOT_FOUND, e[4..].to_string()).into_response()
        }
        Ok(Err(e)) => internal(e).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn fleet(
    State(d): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<views::FleetQuery>,
) -> Response {
    page(d, headers, move |store, _, frame| {
        views::fleet(store, frame, &q)
    })
    .await
}

async fn device(State(d): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    page(d, headers, move |store, _, frame| {
        views::device(store, frame, &id)
    })
    .await
}

async fn models(
    State(d): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<views::PageQuery>,
) -> Response {
    page(d, headers, move |store, cfg, frame| {
        views::models(store, cfg, frame, &q)
    })
    .await
}

async fn run(State(d): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    page(d, headers, move |store, cfg, frame| {
        views::run(store, cfg, frame, id)
    })
    .await
}

async fn learning_loop(State(d): State<Shared>, headers: HeaderMap) -> Response {
    page(d, headers, move |store, cfg, frame| {
        views::learning_loop(store, cfg, frame)
    })
    .await
}

async fn audit(State(d): State<Shared>, headers: HeaderMap) -> Response {
    page(d, headers, move |store, _, frame| {
        views::audit(store, frame)
    })
    .await
}

/// Step one of an action: check it, remember it under a one-time token, and show what it
/// will do. Nothing changes here.
async fn propose(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let (hash, s) = post_session(&d, &headers, f.get("csrf")).await?;
    let mut action =
        Action::from_form(&name, &f).map_err(|e| PageError(StatusCode::BAD_REQUEST, e))?;
    if let Action::Revoke { device_id, name } = &mut action {
        let (store, id) = (d.store.clone(), device_id.clone());
        let dev = blocking(move || store.device(&id))
            .await?
            .map_err(internal)?
            .ok_or_else(|| PageError(StatusCode::NOT_FOUND, format!("no device {device_id}")))?;
        *name = dev.name;
    }
    let token = auth::new_token();
    let json = serde_json::to_string(&action).map_err(internal)?;
    let (store, token_hash) = (d.store.clone(), crate::hash::sha256_hex(token.as_bytes()));
    let expires = crate::server::unix_now() + CONFIRM_WITHIN.as_secs() as i64;
    blocking(move || store.put_confirmation(&token_hash, &hash, &json, expires))
        .await?
        .map_err(internal)?;
    let frame = views::Frame {
        admin: s.admin,
        csrf: s.csrf,
        flash: None,
    };
    Ok(Html(views::confirm_page(&frame, &action, &token)).into_response())
}

/// Step two: do the proposed action once, for the session that proposed it.
async fn confirm(
    State(d): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let (hash, s) = post_session(&d, &headers, f.get("csrf")).await?;
    let token = f.get("token").cloned().unwrap_or_default();
    let (store, token_hash, session) = (
        d.store.clone(),
        crate::hash::sha256_hex(token.as_bytes()),
        hash.clone(),
    );
    let taken =
        blocking(move || store.take_confirmation(&token_hash, &session, crate::server::unix_now()))
            .await?
            .map_err(internal)?;
    let action: Action = taken
        .and_then(|j| serde_json::from_str(&j).ok())
        .ok_or_else(|| {
            PageError(
                StatusCode::CONFLICT,
                "this confirmation is unknown, used already or expired: propose the action again; nothing was done".into(),
            )
        })?;
    let who = actor(&s);
    let d2 = d.clone();
    let a = action.clone();
    let outcome = blocking(move || execute(&d2, &a, &who)).await?;
    let (back, message) = match outcome {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(action = action.command(), error = %e, "dashboard action failed");
            (
                back_of(&action),
                format!("{} failed: {e}", action.command()),
            )
        }
    };
    d.set_flash(&hash, message);
    Ok(Redirect::to(&back).into_response())
}

fn back_of(action: &Action) -> String {
    match action {
        Action::Revoke { device_id, .. } => format!("/admin/devices/{}", views::url(device_id)),
        _ => "/admin/models".into(),
    }
}

/// Does an action through the library function its command uses; answers where to go
/// next and what to say.
fn execute(d: &Dashboard, action: &Action, actor: &str) -> Result<(String, String), ops::OpsError> {
    let store = d.store.as_ref();
    let repo = &d.repo;
    let back = back_of(action);
    let msg = match action {
        Action::Publish {
            model,
            version,
            channel,
            groups,
            percent,
        } => {
            let p = ops::publish(
                store,
                repo,
                version,
                Some(model.as_str()),
                channel,
                groups,
                *percent,
                actor,
            )?;
            format!(
                "published {model} {version} on {channel} (targets version {})",
                p.targets_version
            )
        }
        Action::Stage {
            model,
            version,
            channel,
            groups,
            percent,
        } => {
            let (what, v) = ops::stage(
                store,
                repo,
                model,
                version,
                channel.as_deref(),
                groups.as_deref(),
                *percent,
                actor,
            )?;
            format!("staged {what} (targets version {v})")
        }
        Action::Withdraw {
            model,
            version,
            channel,
        } => {
            let v = ops::withdraw(store, repo, model, version, channel.as_deref(), actor)?;
            format!("withdrew {model} {version} (targets version {v})")
        }
        Action::Train { model } => {
            // Queued, not run here: the page answers at once, and exactly one server
            // process (whichever claims the job) trains.
            match ops::enqueue_train(store, model, &d.cfg.training, actor)? {
                ops::Queued::New(job) => format!(
                    "training of {model} queued as job #{job}; a server process takes it within seconds (see `outpost-server jobs`); its run appears below when it ends"
                ),
                ops::Queued::AlreadyOpen(job) => format!(
                    "a training job for {model} is already queued or running (job #{job}); nothing new was queued"
                ),
            }
        }
        Action::Revoke { device_id, .. } => {
            let dev = ops::revoke(store, device_id, actor)?;
            format!("revoked {}", dev.name)
        }
    };
    Ok((back, msg))
}

/// Shows one feedback item's raw content, and records who looked.
async fn show_item(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let (_, s) = post_session(&d, &headers, f.get("csrf")).await?;
    let (store, who, fid) = (d.store.clone(), actor(&s), id.clone());
    let item = blocking(move || -> Result<_, super::store::ServerStoreError> {
        let item = store.feedback_item(&fid)?;
        if let Some(i) = &item {
            let dev = store
                .device(&i.device_id)?
                .map(|d| d.name)
                .unwrap_or_default();
            store.audit(
                &who,
                "show item",
                &format!(
                    "feedback {fid} from {dev} ({} {})",
                    i.summary.model, i.item_id
                ),
            )?;
        }
        Ok(item)
    })
    .await?
    .map_err(internal)?
    .ok_or_else(|| PageError(StatusCode::NOT_FOUND, format!("no feedback {id}")))?;
    let frame = views::Frame {
        admin: s.admin,
        csrf: s.csrf,
        flash: None,
    };
    Ok(Html(views::item_page(&frame, &item)).into_response())
}
