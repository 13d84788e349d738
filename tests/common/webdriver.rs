//! A small WebDriver client over raw HTTP (no extra crate) for tests that drive Debian's
//! headless Chromium through chromedriver: start, navigate, find, click, type, read.
//! chromedriver and the browser are ended (their process group) when the test ends,
//! passed or failed. `OUTPOST_CHROMEDRIVER` and `OUTPOST_CHROMIUM` point elsewhere.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn tool(env_var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        p.is_file(),
        "{} not found: this test needs a real browser. Install Debian's packages with \
         `apt-get install -y chromium chromium-driver` (scripts/test.sh does), or set {env_var}.",
        p.display(),
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct DriverGuard {
    child: Child,
    port: u16,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

fn raw_delete(port: u16, path: &str) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            s,
            "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            raw_delete(self.port, &format!("/session/{id}"));
        }
        // chromedriver runs in its own process group: end the group, by its id.
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _guard: DriverGuard,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub async fn start() -> Browser {
        let driver = tool("OUTPOST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = tool("OUTPOST_CHROMIUM", "/usr/bin/chromium");
        let port = free_port();
        let profile = tempfile::tempdir().unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let mut guard = DriverGuard {
            child,
            port,
            session: None,
            _profile: profile,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        break;
                    }
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--window-size=1400,1000", "--force-device-scale-factor=1",
                        format!("--user-data-dir={}", guard._profile.path().display()),
                    ]
                }
            }}
        });
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("cannot start Chromium over WebDriver: {r}"))
            .to_string();
        guard.session = Some(session.clone());
        Browser {
            http,
            base,
            session,
            _guard: guard,
        }
    }

    async fn try_cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("chromedriver answers");
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err(v)
        }
    }

    /// A WebDriver command that must succeed.
    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_cmd(method, path, body).await {
            Ok(v) => v,
            Err(v) => panic!("WebDriver {path}: {v}"),
        }
    }

    /// Navigates to `url`.
    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's HTML as the browser has it.
    pub async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs a script in the page and returns its result.
    pub async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// The element matching a CSS selector, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> String {
        let t0 = Instant::now();
        loop {
            if let Ok(v) = self
                .try_cmd(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await
            {
                if let Some(id) = v[ELEMENT].as_str() {
                    return id.to_string();
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let text = self
                    .js("return document.body ? document.body.innerText : ''")
                    .await;
                panic!("no element {css:?} on {}: {text}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many elements match a CSS selector now.
    pub async fn count(&self, css: &str) -> usize {
        self.cmd(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
    }

    /// The text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Clicks the element matching `css` (as a person would: it must be visible).
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Clears the field matching `css` and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Waits until `<body data-page>` is `page` (a navigation finished).
    pub async fn wait_page(&self, page: &str) {
        let t0 = Instant::now();
        loop {
            let v = self
                .try_cmd(
                    reqwest::Method::POST,
                    "/execute/sync",
                    Some(json!({"script": "return document.body ? document.body.dataset.page || '' : ''", "args": []})),
                )
                .await
                .unwrap_or(Value::Null);
            if v.as_str() == Some(page) {
                return;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let text = self
                    .js("return document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "page {page:?} did not load; at {} ({v}): {text}",
                    self.url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a cookie the browser holds (HttpOnly ones too).
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.try_cmd(reqwest::Method::GET, &format!("/cookie/{name}"), None)
            .await
            .ok()
            .and_then(|v| v["value"].as_str().map(String::from))
    }

    /// A PNG screenshot of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 screenshot"))
            .expect("valid base64 screenshot")
    }
}
