//! External-client end-to-end tests of a desktop sandbox, with real parts only: the runner binary,
//! the desktop image, Playwright (playwright-core from npm, no browser download) connected to the
//! run's `cdp_url` through the port proxy, and headless Chromium on the host (/usr/bin/chromium)
//! opening the run's `vnc_url` (noVNC through the proxy) with the sandbox's token only.
//!
//! The node scripts live in `tests/e2e/` (`npm ci --prefix tests/e2e` installs playwright-core;
//! this test runs it itself when `node_modules` is missing). Live-view screenshots are saved as
//! /tmp/vivarium-vnc-*.png for a person to look at.
//!
//! Run: `cargo test -p vivarium --test browser -- --nocapture`

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vivarium_api::{CreateRunRequest, Run};

/// The live-view colour: a full-screen page of it in the sandbox must dominate the host's capture.
const GREEN: [u8; 3] = [0x00, 0xff, 0x7f];
/// What the page turns to once it was clicked through the (interactive) live view.
const MAGENTA: [u8; 3] = [0xff, 0x00, 0xff];

const INDEX: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>vivarium e2e 4217</title></head>
<body><h1>hello from the sandbox</h1>
<button id="go" style="font-size:24px">go</button><p id="out"></p>
<script>
let n = 0;
document.getElementById('go').addEventListener('click', () => {
  n += 1;
  document.getElementById('out').textContent = 'clicked ' + n;
});
</script></body></html>
"#;

/// Solid green until a mouse button goes down on it; counts those presses in `window.clicks`.
const SOLID: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>solid</title>
<style>html,body{margin:0;width:100%;height:100%;background:#00ff7f;overflow:hidden}</style></head>
<body><script>
window.clicks = 0;
addEventListener('mousedown', () => {
  window.clicks += 1;
  document.body.style.background = '#ff00ff';
});
</script></body></html>
"#;

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e")
}

/// Installs playwright-core from the lockfile once per process when `scripts/test.sh` has not.
fn ensure_playwright() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let dir = e2e_dir();
        if dir
            .join("node_modules/playwright-core/package.json")
            .is_file()
        {
            return;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .output()
            .expect("running npm (install nodejs and npm)");
        assert!(
            out.status.success(),
            "npm ci --prefix tests/e2e failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Runs `node tests/e2e/<script> <args…>` and parses the JSON object it prints last.
async fn node(script: &str, args: &[&str]) -> Value {
    ensure_playwright();
    let out = tokio::process::Command::new("node")
        .arg(e2e_dir().join(script))
        .args(args)
        .current_dir(e2e_dir())
        .output()
        .await
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node {script} {args:?} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("node {script} printed no JSON ({e}): {stdout}"));
    println!("node {script}: {v}");
    v
}

/// A PNG's width, height, bytes per pixel and pixels.
fn read_png(path: &str) -> (u32, u32, usize, Vec<u8>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let decoder = png::Decoder::new(std::io::Cursor::new(data));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    let channels = buf.len() / (info.width * info.height) as usize;
    assert!(channels >= 3, "{path}: {channels} channels");
    (info.width, info.height, channels, buf)
}

/// How many distinct colours a PNG has (counting stops at 1000).
fn png_colours(path: &str) -> usize {
    let (_, _, channels, buf) = read_png(path);
    let mut seen = std::collections::HashSet::new();
    for px in buf.chunks_exact(channels) {
        seen.insert((px[0], px[1], px[2]));
        if seen.len() >= 1000 {
            break;
        }
    }
    seen.len()
}

/// Share of pixels of a PNG within a small distance of `rgb`, and its size.
fn png_fraction(path: &str, rgb: [u8; 3]) -> (u32, u32, f64) {
    let (width, height, channels, buf) = read_png(path);
    let (mut hit, mut n) = (0u64, 0u64);
    for px in buf.chunks_exact(channels) {
        n += 1;
        if px[..3].iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 24) {
            hit += 1;
        }
    }
    (width, height, hit as f64 / n.max(1) as f64)
}

fn with_token(url: &str, token: &str, other: &str) -> String {
    let needle = format!("token={token}");
    assert!(url.contains(&needle), "{url} does not carry the token");
    url.replace(&needle, &format!("token={other}"))
}

/// Serves `INDEX` and `SOLID` from /srv on 127.0.0.1:8000 inside the sandbox.
async fn serve_pages(r: &common::Runner, id: &str) {
    common::serve_srv(
        &r.client,
        id,
        &[("/srv/index.html", INDEX), ("/srv/solid.html", SOLID)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playwright_and_live_view_through_the_proxy() {
    let r = common::Runner::start().await;
    let image = r.import_desktop().await;
    let c = &r.client;
    let run: Run = c
        .create_run(&CreateRunRequest {
            image: Some(image),
            vcpus: Some(2.0),
            mem_mib: Some(2048),
            resolution: Some([1280, 800]),
            desktop: Some(true),
            ..Default::default()
        })
        .await
        .expect("create desktop sandbox");
    let id = run.id.clone();
    let token = run.access_token.clone();
    assert!(!token.is_empty(), "a desktop run carries an access token");
    let cdp_url = run.cdp_url.clone().expect("desktop run has cdp_url");
    let vnc_url = run.vnc_url.clone().expect("desktop run has vnc_url");
    println!("cdp_url: {cdp_url}\nvnc_url: {vnc_url}");
    assert!(cdp_url.starts_with(&format!("{}/sb/{id}/p/9222", r.url())));
    assert!(vnc_url.contains(&format!("token={token}")));
    serve_pages(&r, &id).await;

    // 1. Playwright over cdp_url: the page served inside the sandbox, its title, a click and the
    //    DOM change it causes.
    let v = node(
        "cdp.mjs",
        &[
            &cdp_url,
            "http://127.0.0.1:8000/index.html",
            "--click",
            "#go",
            "--read",
            "#out",
        ],
    )
    .await;
    assert_eq!(v["title"], "vivarium e2e 4217");
    assert_eq!(v["text"], "clicked 1");
    assert_eq!(v["url"], "http://127.0.0.1:8000/index.html");
    assert!(v["contexts"].as_u64() >= Some(1), "{v}");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    // Playwright only disconnected: the desktop's Chromium still answers CDP with its tab open.
    let http = reqwest::Client::new();
    let list: Vec<Value> = http
        .get(format!(
            "{}/sb/{id}/p/9222/json/list?token={token}",
            r.url()
        ))
        .send()
        .await
        .expect("json/list")
        .error_for_status()
        .expect("json/list status")
        .json()
        .await
        .expect("json/list JSON");
    assert!(
        list.iter()
            .any(|t| t["url"] == "http://127.0.0.1:8000/index.html"),
        "the tab Playwright opened is gone: {list:?}"
    );

    // The live view of the desktop as it is (openbox, Chromium on the page above): mostly not
    // black, and with more than a handful of colours (text, window chrome).
    let shot = "/tmp/vivarium-vnc-desktop.png";
    let v = node("vnc.mjs", &[&vnc_url, shot]).await;
    assert_eq!(v["connected"], true, "{v}");
    assert!(v["fraction"].as_f64() > Some(0.5), "{v}");
    assert!(png_colours(shot) > 16, "{shot} looks flat");

    // A solid green page, full-screen, for the live view to show.
    let v = node(
        "cdp.mjs",
        &[&cdp_url, "http://127.0.0.1:8000/solid.html", "--fullscreen"],
    )
    .await;
    assert_eq!(v["title"], "solid");

    // 2. Live view in host Chromium, view-only first: green on the canvas and in the screenshot;
    //    its click must not reach the sandbox (checked below through the click counter).
    let view_only_url = format!("{vnc_url}&view_only=true");
    let shot = "/tmp/vivarium-vnc-view-only.png";
    let v = node(
        "vnc.mjs",
        &[&view_only_url, shot, "--rgb", "00ff7f", "--click"],
    )
    .await;
    assert_eq!(v["status"], 200);
    assert_eq!(v["connected"], true);
    assert_eq!(v["view_only"], true, "{v}");
    assert_eq!(v["canvas"]["width"], 1280);
    assert_eq!(v["canvas"]["height"], 800);
    assert!(v["fraction"].as_f64() > Some(0.9), "{v}");
    let (w, h, f) = png_fraction(shot, GREEN);
    assert_eq!((w, h), (1280, 800));
    assert!(f > 0.8, "{shot}: only {f:.3} of it is the sandbox's green");

    // Interactive live view: green, then a click through noVNC turns the page magenta.
    let shot = "/tmp/vivarium-vnc-live.png";
    let v = node(
        "vnc.mjs",
        &[
            &vnc_url,
            shot,
            "--rgb",
            "00ff7f",
            "--click",
            "--after-rgb",
            "ff00ff",
        ],
    )
    .await;
    assert_eq!(v["view_only"], false, "{v}");
    assert!(v["fraction"].as_f64() > Some(0.9), "{v}");
    assert!(v["fraction_after"].as_f64() > Some(0.9), "{v}");
    let (_, _, f) = png_fraction(shot, GREEN);
    assert!(f > 0.8, "{shot}: only {f:.3} of it is the sandbox's green");
    let after = "/tmp/vivarium-vnc-live-after.png";
    let (_, _, f) = png_fraction(after, MAGENTA);
    assert!(
        f > 0.8,
        "{after}: only {f:.3} of it is magenta after the click"
    );
    // Exactly one press reached the page: the interactive one, not the view-only one before it.
    let v = node(
        "cdp.mjs",
        &[
            &cdp_url,
            "http://127.0.0.1:8000/solid.html",
            "--reuse",
            "--eval",
            "window.clicks",
        ],
    )
    .await;
    assert_eq!(v["eval"], 1, "mouse presses seen by the page: {v}");
    assert!(v["pages_before"].as_u64() >= Some(2), "{v}");

    // 3. Auth through a browser: another sandbox's token is refused with 403 (the live view above
    //    opened with the token alone: the host browser never had the API key).
    let other = c
        .create_run(&CreateRunRequest {
            image: Some(r.import_busybox("e2e/busybox:1").await),
            vcpus: Some(1.0),
            mem_mib: Some(128),
            ..Default::default()
        })
        .await
        .expect("create a second sandbox");
    assert_ne!(other.access_token, token);
    let foreign = with_token(&vnc_url, &token, &other.access_token);
    let v = node("vnc.mjs", &[&foreign, "/tmp/vivarium-vnc-forbidden.png"]).await;
    assert_eq!(v["status"], 403, "{v}");
    // The same for CDP discovery and the noVNC WebSocket's path, and without any credential.
    for url in [
        format!(
            "{}/sb/{id}/p/9222/json/version?token={}",
            r.url(),
            other.access_token
        ),
        format!(
            "{}/sb/{id}/p/6080/websockify?token={}",
            r.url(),
            other.access_token
        ),
    ] {
        let s = http.get(&url).send().await.expect("request").status();
        assert_eq!(s.as_u16(), 403, "{url}");
    }
    let s = http
        .get(format!("{}/sb/{id}/p/6080/vnc.html", r.url()))
        .send()
        .await
        .expect("request")
        .status();
    assert!(
        matches!(s.as_u16(), 401 | 403),
        "no credential answered {s}"
    );
    // The refusals harmed nothing: the right token still opens CDP.
    let s = http
        .get(format!(
            "{}/sb/{id}/p/9222/json/version?token={token}",
            r.url()
        ))
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(s.as_u16(), 200);

    c.delete_run(&other.id).await.expect("delete second");
    c.delete_run(&id).await.expect("delete desktop");
}
