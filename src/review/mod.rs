//! `outpost review`: the local web page where staff confirm or correct predictions.
//!
//! The agent serves one page (HTML, JavaScript and CSS embedded in the binary: no CDN, no
//! build step, nothing fetched from the network) and a small JSON API over the agent's SQLite
//! database. The page shows the review queue least confident first (see
//! [`crate::store::queue`]), each image tile large with its place in the source scene, each
//! report as text, and records decisions with [`Store::give_feedback`] (one transaction:
//! feedback row + outbox row) so they travel to the server at the next sync. Everything is
//! driven by the keyboard; the keys are listed at the bottom of the page.
//!
//! Label names, the multi-label flag and thresholds come from the bundle manifests in the
//! models folder (read with [`crate::model::bundle::read_manifest`]; ONNX Runtime is not
//! needed to review).
//!
//! # Safety of a page on localhost
//!
//! The server listens on 127.0.0.1 by default and has no login, so it must not be usable by
//! other web sites the reviewer happens to open:
//!
//! - **DNS rebinding.** A request is refused (403) unless its `Host` header names this
//!   server by IP address or as `localhost`, with the port it listens on. A rebinding attack
//!   needs the attacker's own host name in `Host`, which is therefore refused.
//! - **Cross-site requests.** Every POST must be `Content-Type: application/json` (415
//!   otherwise). A browser only sends that cross-origin after a CORS preflight, which this
//!   server never grants, so a foreign page cannot post decisions; a POST whose `Origin` is
//!   not this server is refused (403) as well.
//! - Responses carry `X-Content-Type-Options: nosniff`, a strict `Content-Security-Policy`
//!   (only this server's own scripts, styles and images; no framing) and `Cache-Control:
//!   no-store` on the API. The page inserts data with `textContent`, never as HTML.
//!
//! The store is one rusqlite connection behind a mutex; database work runs in
//! `spawn_blocking` so the async workers never wait on SQLite.
//!
//! # JSON API
//!
//! Every error is `{"error": "..."}` with a 4xx/5xx status, and nothing is written.
//!
//! | Method and path | What |
//! |---|---|
//! | `GET /` , `/app.js`, `/style.css` | the page |
//! | `GET /api/session` | annotator, whether raw content travels with feedback, paths |
//! | `GET /api/lock` | `{"locked": bool}`: whether the encrypted data still waits for its passphrase |
//! | `POST /api/unlock` | `{"passphrase"}`: unlocks (401 and a one-second pause if wrong) |
//! | `GET /api/models` | installed bundles: name, version, task, labels, multi_label, thresholds |
//! | `GET /api/filters` | models, labels, source folders and days present, for the filter menus |
//! | `GET /api/queue?model=&label=&folder=&from=&to=&kind=&reviewed=1&offset=&limit=` | a page of the queue, least confident first (`from`/`to`: `YYYY-MM-DD`; `kind`: `image` or `text`; `limit` up to 1000, default 200) |
//! | `GET /api/items/{id}` | an item: metadata, report text, every label's score per model, scene box, feedback history |
//! | `GET /api/items/{id}/content` | the stored tile or report, with its stored content type |
//! | `GET /api/items/{id}/scene` | PNG overview (at most 512 px) of the scene a tile was cut from, if the file is still there (404 with the reason if not) |
//! | `GET /api/counters` | reviewed today, waiting to sync, synced, last sync |
//! | `GET /api/feedback/undoable` | the newest decision that can still be undone (`{"feedback": null}` if none) |
//! | `POST /api/feedback` | `{"item_id", "model_name", "labels": [...]}` or `{"item_id", "model_name", "confirm": true}`: records a decision; returns `{"feedback", "counters"}` |
//! | `POST /api/undo` | `{"feedback_id"}`: takes back a decision still in the outbox; returns `{"undone", "item_id", "model_name", "restored", "counters"}` |
//! | `GET /api/serving` | models serving classification now: `{"models": {name: version}}` (`outpost run` only) |
//! | `POST /api/classify` | `{"model", "image_base64"}` or `{"model", "text"}`: runs the serving model; returns `{"model", "version", "labels", "scores"}`. A request runs to its end on the model it started with, even if an update swaps in another meanwhile |
//!
//! While the agent is locked (see [`crate::store::vault`]), every call that reads or
//! writes items answers 423 with the reason; the page then shows the passphrase form.
//!
//! Status codes: 400 malformed JSON, missing fields, invalid labels, several labels for a
//! single-label model; 403 foreign `Host` or `Origin`; 404 unknown item, feedback, or no
//! prediction of that model for the item; 409 undo of a decision already synced or replaced,
//! or a model that is not installed (its labels cannot be checked); 415 POST without JSON.

mod api;
mod scene;

use crate::infer::image::ImageLimits;
use crate::store::Store;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The port `outpost review` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8470;

/// How the review server runs.
#[derive(Debug, Clone)]
pub struct ReviewOptions {
    /// Address to listen on (default 127.0.0.1:8470; port 0 picks a free port).
    pub listen: SocketAddr,
    /// The agent database.
    pub database: PathBuf,
    /// The folder of model bundles (for label names, multi-label flags and thresholds).
    pub models_dir: PathBuf,
    /// Name recorded with each decision.
    pub annotator: String,
    /// Whether image tiles travel with their feedback.
    pub send_images: bool,
    /// Whether report text travels with its feedback.
    pub send_reports: bool,
    /// Limits for decoding source scenes (overviews).
    pub image_limits: ImageLimits,
    /// Woken after each decision is stored (the sync loop of `outpost run` listens).
    pub on_feedback: Option<Arc<tokio::sync::Notify>>,
    /// Models loaded in ONNX Runtime for `POST /api/classify` (`outpost run`; swapped in
    /// place by over-the-air updates). `None`: classification is not served.
    pub serving: Option<Arc<crate::update::ActiveModels>>,
}

impl ReviewOptions {
    /// Options with the defaults: 127.0.0.1:8470, the login name as annotator, no raw
    /// content sent with feedback.
    pub fn new(database: PathBuf, models_dir: PathBuf) -> ReviewOptions {
        ReviewOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            database,
            models_dir,
            annotator: default_annotator(),
            send_images: false,
            send_reports: false,
            image_limits: ImageLimits::default(),
            on_feedback: None,
            serving: None,
        }
    }
}

impl ReviewOptions {
    /// The options the agent's configuration gives, with the command line's listen
    /// address, annotator and content choice on top. A fresh data folder gets an empty
    /// database: the page says to analyse first.
    pub fn from_config(
        cfg: &crate::config::AgentConfig,
        listen: SocketAddr,
        annotator: Option<String>,
        include_content: bool,
    ) -> ReviewOptions {
        let mut opts = ReviewOptions::new(cfg.database_path(), cfg.models_dir());
        opts.listen = listen;
        opts.annotator = annotator.unwrap_or_else(|| cfg.feedback.annotator());
        opts.send_images = include_content || cfg.feedback.send_images;
        opts.send_reports = include_content || cfg.feedback.send_reports;
        opts.image_limits = ImageLimits {
            max_pixels: cfg.limits.max_image_pixels,
            max_file_bytes: cfg.limits.max_file_bytes,
        };
        opts
    }
}

/// The login name (`$USER`, `$LOGNAME`), or `reviewer`.
pub fn default_annotator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "reviewer".into())
}

/// Shared by every request.
pub(crate) struct App {
    /// `None` while the agent is locked (encrypted data, passphrase not typed yet).
    pub(crate) store: Mutex<Option<Store>>,
    pub(crate) opts: ReviewOptions,
    /// The port actually listened on (for the `Host` check).
    pub(crate) port: u16,
    pub(crate) scenes: scene::SceneCache,
}

/// A bound review server, not yet serving: lets the caller learn the address first.
pub struct ReviewServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    router: axum::Router,
}

impl ReviewServer {
    /// Opens the database and binds the listening socket. If the data is encrypted and
    /// locked, the page starts locked: it asks for the passphrase, and every API call
    /// that reads items answers 423 until then.
    pub async fn bind(opts: ReviewOptions) -> anyhow::Result<ReviewServer> {
        let db = opts.database.clone();
        let store = match tokio::task::spawn_blocking(move || Store::open(&db))
            .await
            .context("opening the database")?
        {
            Ok(s) => Some(s),
            Err(crate::store::StoreError::Vault(crate::store::vault::VaultError::Locked {
                ..
            })) => {
                tracing::warn!(
                    "the agent's data is encrypted and locked: unlock it on the review page"
                );
                None
            }
            Err(e) => return Err(e.into()),
        };
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (is another `outpost review` running? try --listen 127.0.0.1:0)",
                    opts.listen
                )
            })?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "the review page listens on {addr}: anyone who can reach this address can read items and record decisions"
            );
        }
        let app = Arc::new(App {
            store: Mutex::new(store),
            opts,
            port: addr.port(),
            scenes: scene::SceneCache::default(),
        });
        Ok(ReviewServer {
            listener,
            addr,
            router: api::router(app),
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL (`http://127.0.0.1:PORT/` when listening on every interface).
    pub fn url(&self) -> String {
        let ip = if self.addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            self.addr.ip()
        };
        format!("http://{}/", SocketAddr::new(ip, self.addr.port()))
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("review server failed")
    }
}

/// Runs `outpost review`: binds, prints the page's URL on standard output, serves until
/// Ctrl-C.
pub async fn serve(opts: ReviewOptions) -> anyhow::Result<()> {
    let server = ReviewServer::bind(opts).await?;
    println!(
        "Review page: {}  (works offline; Ctrl-C to stop)",
        server.url()
    );
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
