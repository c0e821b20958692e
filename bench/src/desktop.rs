//! `vivarium-bench desktop`: inside one desktop sandbox, our API beside the tools agents use without
//! it: screenshots beside `scrot` (a process per shot) and CDP `Page.captureScreenshot`; click and
//! key beside `xdotool` (a process per action); and create → desktop ready, cold.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use vivarium_api::desktop::{DesktopAction, ImageFormat, MouseButton};
use vivarium_api::{CreateRunRequest, ExecRequest};
use vivarium_client::Client;

use crate::{median, ms, row, start_runner, Args};

fn desktop_layout(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let out = std::process::Command::new("images/desktop/build.sh")
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("images/desktop/build.sh failed");
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(PathBuf::from(path))
}

/// Runs `cmd` N times inside the sandbox and returns each run's wall time measured in the sandbox
/// (so the baseline pays no HTTP or agent overhead: the comparison is conservative for us).
async fn in_sandbox_times(c: &Client, id: &str, cmd: &str, n: usize) -> Result<Vec<Duration>> {
    let script = format!(
        "for i in $(seq {n}); do s=$(date +%s%N); {cmd} >/dev/null 2>&1 || exit 1; e=$(date +%s%N); echo $((e-s)); done"
    );
    let r = c
        .exec(
            id,
            &ExecRequest {
                command: Some(script),
                timeout_s: Some(300.0),
                ..Default::default()
            },
        )
        .await?;
    if r.exit_code != Some(0) {
        bail!("baseline `{cmd}` failed: {}", r.stderr);
    }
    Ok(r.stdout
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .map(Duration::from_nanos)
        .collect())
}

async fn cdp_ready(http: &reqwest::Client, cdp_url: &str) -> bool {
    let (base, query) = cdp_url.split_once('?').unwrap_or((cdp_url, ""));
    matches!(http.get(format!("{base}/json/version?{query}")).send().await, Ok(r) if r.status().is_success())
}

async fn timed<F, Fut, T>(n: usize, mut f: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        v.push(t.elapsed());
    }
    Ok(v)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `Page.captureScreenshot` n times, each timed from send to its reply.
async fn cdp_screenshots(ws: &mut Ws, n: usize, format: &str) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for id in 1..=n as u64 {
        let msg = serde_json::json!({"id": id, "method": "Page.captureScreenshot", "params": {"format": format}});
        let t = Instant::now();
        ws.send(Message::text(msg.to_string())).await?;
        loop {
            if let Message::Text(s) = ws.next().await.context("CDP closed")?? {
                let reply: serde_json::Value = serde_json::from_str(&s)?;
                if reply["id"] == id {
                    anyhow::ensure!(reply["result"]["data"].is_string(), "CDP error: {reply}");
                    break;
                }
            }
        }
        times.push(t.elapsed());
    }
    Ok(times)
}

pub async fn bench(
    args: &Args,
    layout: Option<PathBuf>,
    creates: usize,
    samples: usize,
) -> Result<()> {
    let layout = desktop_layout(layout)?;
    let runner = start_runner(args).await?;
    let c = &runner.client;
    let tag = "bench/desktop:1";
    c.import_image(&layout.to_string_lossy(), tag)
        .await
        .context("importing the desktop image")?;
    let http = reqwest::Client::new();
    let req = CreateRunRequest {
        image: Some(tag.into()),
        vcpus: Some(2.0),
        mem_mib: Some(2048),
        ..Default::default()
    };

    // Create → desktop ready: a screenshot works and CDP answers through the port proxy.
    let mut ready = Vec::new();
    for _ in 0..creates {
        let t = Instant::now();
        let run = c.create_run(&req).await?;
        let cdp = run.cdp_url.clone().context("desktop run has no cdp_url")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if c.screenshot(&run.id, ImageFormat::Jpeg, None).await.is_ok()
                && cdp_ready(&http, &cdp).await
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("desktop {} not ready after 60 s", run.id);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ready.push(t.elapsed());
        c.delete_run(&run.id).await?;
    }

    let run = c.create_run(&req).await?;
    let id = run.id.clone();
    let cdp = run.cdp_url.clone().context("no cdp_url")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(c.screenshot(&id, ImageFormat::Png, None).await.is_ok() && cdp_ready(&http, &cdp).await)
    {
        anyhow::ensure!(Instant::now() < deadline, "desktop not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A busy page (text over a gradient), not about:blank: PNG cost depends on content.
    let page = "data:text/html,<body style='margin:0;background:linear-gradient(135deg,rgb(230,100,101),rgb(145,152,229))'>\
        <h1 style='font:48px serif'>vivarium desktop benchmark</h1>\
        <p style='font:16px sans-serif;columns:4'>"
        .to_string()
        + &"The quick brown fox jumps over the lazy dog 0123456789. ".repeat(120)
        + "</p></body>";
    c.desktop_action(&id, &DesktopAction::Open { url: page })
        .await?;
    // Let the page paint so every method encodes the same picture.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sample = c.screenshot(&id, ImageFormat::Png, None).await?;
    std::fs::write("/tmp/vivarium-bench-desktop.png", &sample)?;

    let png = timed(samples, || async {
        Ok(c.screenshot(&id, ImageFormat::Png, None).await?)
    })
    .await?;
    let jpeg = timed(samples, || async {
        Ok(c.screenshot(&id, ImageFormat::Jpeg, Some(80)).await?)
    })
    .await?;
    let click_action = DesktopAction::Click {
        x: Some(640),
        y: Some(400),
        button: MouseButton::Left,
        count: 1,
        modifiers: vec![],
    };
    let click = timed(samples, || async {
        Ok(c.desktop_action(&id, &click_action).await?)
    })
    .await?;
    let key_action = DesktopAction::Key {
        keys: "shift".into(),
    };
    let key = timed(samples, || async {
        Ok(c.desktop_action(&id, &key_action).await?)
    })
    .await?;

    let scrot = in_sandbox_times(c, &id, "scrot -o /tmp/bench.png", samples.min(20)).await?;
    let xdo_click =
        in_sandbox_times(c, &id, "xdotool mousemove 640 400 click 1", samples.min(20)).await?;
    let xdo_key = in_sandbox_times(c, &id, "xdotool key shift", samples.min(20)).await?;

    // CDP Page.captureScreenshot on the page target, through the port proxy.
    let (base, query) = cdp.split_once('?').unwrap_or((&cdp, ""));
    let targets: serde_json::Value = http
        .get(format!("{base}/json/list?{query}"))
        .send()
        .await?
        .json()
        .await?;
    let ws_url = targets
        .as_array()
        .and_then(|a| a.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .context("no page target")?
        .to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .context("CDP websocket")?;
    let cdp_png = cdp_screenshots(&mut ws, samples.min(20), "png").await?;
    let cdp_jpeg = cdp_screenshots(&mut ws, samples.min(20), "jpeg").await?;
    c.delete_run(&id).await?;

    println!(
        "vivarium desktop benchmark (medians; 1280x800 text page, {} KiB as PNG; {samples} samples, baselines in the same sandbox; {creates} creates of new sandboxes)",
        sample.len() / 1024
    );
    row(
        "screenshot PNG (HTTP API)",
        median(png.clone()),
        "scrot (process)",
        median(scrot.clone()),
        "≤ 15 ms",
    );
    row(
        "screenshot PNG (HTTP API)",
        median(png),
        "CDP captureScreenshot png",
        median(cdp_png),
        "≤ 15 ms",
    );
    row(
        "screenshot JPEG q80 (HTTP API)",
        median(jpeg),
        "CDP captureScreenshot jpeg",
        median(cdp_jpeg),
        "≤ 6 ms",
    );
    row(
        "click (HTTP API)",
        median(click),
        "xdotool mousemove+click",
        median(xdo_click),
        "≤ 3 ms, ≥ 20x faster",
    );
    row(
        "key (HTTP API)",
        median(key),
        "xdotool key",
        median(xdo_key),
        "≥ 20x faster",
    );
    println!(
        "{:<34} {:>10}   target ≤ 1 s (cold)",
        "create → desktop ready",
        ms(median(ready))
    );
    Ok(())
}
