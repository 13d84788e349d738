//! `docs/openapi.yaml` describes exactly the routes the server's protocol router serves:
//! the same paths with the same methods, no more and no fewer. The router's table is read
//! from `src/server/api/mod.rs` (its `.route(...)` calls), and a real `outpost-server serve`
//! process is asked every documented path, so the check cannot drift from what runs.

mod common;

use std::collections::BTreeSet;

/// (path, method) pairs under `paths:` in the OpenAPI file.
fn documented() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(common::repo().join("docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end().trim_end_matches(':')));
        } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
            let m = m.trim_end().trim_end_matches(':');
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                out.insert((p.clone(), m.to_string()));
            }
        }
    }
    out
}

/// (path, method) pairs of `.route("PATH", get(..).post(..))` in the protocol router.
fn routed() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(common::repo().join("src/server/api/mod.rs"))
        .expect("src/server/api/mod.rs");
    let mut out = BTreeSet::new();
    for chunk in text.split(".route(\"").skip(1) {
        let Some((path, rest)) = chunk.split_once('"') else {
            continue;
        };
        let call = rest.split_once(")\n").map_or(rest, |(c, _)| c);
        for m in ["get", "post", "put", "delete", "patch"] {
            if call.contains(&format!(" {m}(")) || call.contains(&format!(".{m}(")) {
                out.insert((path.to_string(), m.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_openapi_file_lists_exactly_the_served_routes() {
    let (doc, code) = (documented(), routed());
    assert!(code.len() >= 8, "the router table was read: {code:?}");
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let unserved: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "routes not in docs/openapi.yaml: {undocumented:?}; documented but not routed: {unserved:?}"
    );

    // Every documented route answers on a real server with something other than "no such
    // route" (404 with an empty body from the router, or 405 for a wrong method).
    let tmp = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(tmp.path(), common::free_port());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    for (path, method) in &doc {
        let concrete = path
            .replace("{name}", "timestamp.json")
            .replace("{hash}", &"0".repeat(64));
        let url = format!("{}{concrete}", server.url);
        let (status, body) = rt.block_on(async {
            let req = match method.as_str() {
                "get" => client.get(&url),
                _ => client.post(&url).body("{}"),
            };
            let r = req.send().await.expect("the server answers");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        });
        assert_ne!(status, 405, "{method} {path}: method not routed");
        assert!(
            !(status == 404 && body.is_empty()),
            "{method} {path}: not routed (404 from the router)"
        );
    }
}
