//! Medians of desktop actions on a real session (Xvfb + openbox + Chromium showing a text page).
//! Run: cargo run --release -p vivarium-desktop --example desktop_bench

use std::time::{Duration, Instant};

use vivarium_desktop::session::{ChromiumConfig, Session, SessionConfig};
use vivarium_desktop::{Desktop, ImageFormat, MouseButton, Point, ScreenshotOptions};

fn median<T, E: std::fmt::Debug>(mut f: impl FnMut() -> Result<T, E>, n: usize) -> Duration {
    f().expect("action");
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f().expect("action");
            t.elapsed()
        })
        .collect();
    v.sort();
    v[n / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("vivarium-bench-{}", std::process::id()));
    let page = "data:text/html,<h1>vivarium bench</h1><p>".to_string()
        + &"The quick brown fox jumps over the lazy dog. ".repeat(60);
    let cdp_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let t = Instant::now();
    let session = Session::start(SessionConfig {
        display: None,
        runtime_dir: dir.join("run"),
        vnc: None,
        chromium: Some(ChromiumConfig {
            debugging_port: cdp_port,
            user_data_dir: dir.join("profile"),
            start_url: page,
            ..Default::default()
        }),
        ..Default::default()
    })
    .or_else(|_| {
        Session::start(SessionConfig {
            display: None,
            runtime_dir: dir.join("run"),
            vnc: None,
            chromium: None,
            ..Default::default()
        })
    })?;
    println!(
        "session start (Xvfb→dbus→openbox→chromium ready): {} ms",
        t.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    let d = Desktop::connect(Some(&session.display()))?;
    println!("XShm: {}", d.uses_shm());
    let n = 30;
    let raw = median(|| d.capture_rgb(None, false), n);
    println!(
        "grab 1280x800 RGB:      {:>7.2} ms",
        raw.as_secs_f64() * 1e3
    );
    for (name, format, q) in [
        ("PNG", ImageFormat::Png, 80),
        ("JPEG q80", ImageFormat::Jpeg, 80),
        ("WebP lossless", ImageFormat::Webp, 80),
    ] {
        let opts = ScreenshotOptions {
            format,
            quality: q,
            ..Default::default()
        };
        let size = d.screenshot(&opts)?.data.len();
        let m = median(|| d.screenshot(&opts), n);
        println!(
            "screenshot {name:<13} {:>7.2} ms  ({} KiB)",
            m.as_secs_f64() * 1e3,
            size / 1024
        );
    }
    let scaled = ScreenshotOptions {
        format: ImageFormat::Jpeg,
        scale_to: Some((640, 400)),
        ..Default::default()
    };
    println!(
        "screenshot JPEG→640x400 {:>6.2} ms",
        median(|| d.screenshot(&scaled), n).as_secs_f64() * 1e3
    );
    let click = median(
        || d.click(Some(Point { x: 600, y: 700 }), MouseButton::Left, 1, &[]),
        n,
    );
    println!(
        "click:                  {:>7.2} ms",
        click.as_secs_f64() * 1e3
    );
    println!(
        "mouse move:             {:>7.2} ms",
        median(|| d.mouse_move(500, 500), n).as_secs_f64() * 1e3
    );
    println!(
        "key ctrl+a:             {:>7.2} ms",
        median(|| d.key("ctrl+a"), n).as_secs_f64() * 1e3
    );
    println!(
        "type 'héllo 你好' (8 ch): {:>6.2} ms",
        median(|| d.type_text("héllo 你好"), n).as_secs_f64() * 1e3
    );
    println!(
        "clipboard set+get:      {:>7.2} ms",
        median(|| d.set_clipboard("x").and_then(|_| d.get_clipboard()), n).as_secs_f64() * 1e3
    );
    println!(
        "list windows:           {:>7.2} ms",
        median(|| d.list_windows(), n).as_secs_f64() * 1e3
    );
    std::fs::write(
        dir.join("bench.png"),
        d.screenshot(&ScreenshotOptions::default())?.data,
    )?;
    println!("screenshot saved to {}", dir.join("bench.png").display());
    drop(d);
    session.stop();
    Ok(())
}
