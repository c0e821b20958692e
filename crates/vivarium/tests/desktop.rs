//! End-to-end tests of desktop sandboxes with real parts only: the runner binary, crun, the static
//! guest agent as PID 1, the desktop image from `images/desktop/build.sh` (Xvfb, openbox, Chromium,
//! x11vnc), native X11 actions through the HTTP API, and CDP reached through the runner's port proxy.
//! Screenshots are saved as /tmp/vivarium-desktop-*.png for a person to look at.

mod common;

use std::time::{Duration, Instant};

use common::cdp::Cdp;
use serde_json::{json, Value};
use vivarium_api::desktop::{ActionResult, DesktopAction, ImageFormat, MouseButton};
use vivarium_api::CreateRunRequest;
use vivarium_client::Client;

const TEXT: &str = "héllo wörld 你好";

const FORM: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>vivarium form</title>
<style>body{margin:0;background:#fff}
#q{position:absolute;left:40px;top:60px;width:600px;height:60px;font-size:28px}</style></head>
<body><form id="f"><input id="q" name="q" autocomplete="off"></form>
<script>
document.getElementById('f').addEventListener('submit', function (e) {
  e.preventDefault();
  window.submitted = document.getElementById('q').value;
  document.title = 'done: ' + window.submitted;
});
</script></body></html>
"#;

async fn create_desktop(r: &common::Runner, image: &str, width: u32, height: u32) -> String {
    let run = r
        .client
        .create_run(&CreateRunRequest {
            image: Some(image.to_string()),
            vcpus: Some(2.0),
            mem_mib: Some(2048),
            resolution: Some([width, height]),
            desktop: Some(true),
            ..Default::default()
        })
        .await
        .expect("create desktop sandbox");
    run.id
}

fn decode_png(data: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(data));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn distinct_colours(rgb: &[u8], channels: usize) -> usize {
    let mut seen = std::collections::HashSet::new();
    for px in rgb.chunks_exact(channels).step_by(7) {
        seen.insert((px[0], px[1], px[2]));
        if seen.len() > 64 {
            break;
        }
    }
    seen.len()
}

async fn save_screenshot(c: &Client, id: &str, name: &str) -> Vec<u8> {
    let png = c
        .screenshot(id, ImageFormat::Png, None)
        .await
        .expect("screenshot");
    std::fs::write(format!("/tmp/vivarium-desktop-{name}.png"), &png).expect("save screenshot");
    png.to_vec()
}

/// A CDP session to one page target, through `/sb/{id}/p/9222`.
/// Serves [`FORM`] on 127.0.0.1:8000 inside the sandbox and opens it in the desktop's Chromium.
async fn open_form(r: &common::Runner, id: &str) -> Cdp {
    let c = &r.client;
    common::serve_srv(c, id, &[("/srv/form.html", FORM)]).await;
    let r1 = c
        .desktop_action(
            id,
            &DesktopAction::Open {
                url: "http://127.0.0.1:8000/form.html".into(),
            },
        )
        .await
        .expect("open the form");
    assert_eq!(r1, ActionResult::Ok);
    let mut cdp = Cdp::connect(r, id, "form.html").await;
    cdp.call("Page.bringToFront", json!({})).await;
    let state = cdp
        .wait_eval("document.readyState", &json!("complete"))
        .await;
    assert_eq!(state, json!("complete"));
    cdp
}

/// Screen coordinates of the centre of `#q`: the window's screen position plus the browser's
/// top chrome (outer minus inner height) plus the element's client rect.
async fn input_centre(cdp: &mut Cdp) -> (i32, i32) {
    let v = cdp
        .eval(
            "(() => { const r = document.getElementById('q').getBoundingClientRect();
               return [window.screenX + (window.outerWidth - window.innerWidth) / 2 + r.left + r.width / 2,
                       window.screenY + (window.outerHeight - window.innerHeight) + r.top + r.height / 2]; })()",
        )
        .await;
    let x = v[0].as_f64().expect("x") as i32;
    let y = v[1].as_f64().expect("y") as i32;
    (x, y)
}

async fn type_into_form(c: &Client, id: &str, cdp: &mut Cdp, text: &str) {
    let (x, y) = input_centre(cdp).await;
    // A freshly opened tab drops input until its first frame is committed; like an agent looking at
    // the screen, click again until the input has the focus.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        c.desktop_action(
            id,
            &DesktopAction::Click {
                x: Some(x),
                y: Some(y),
                button: MouseButton::Left,
                count: 1,
                modifiers: vec![],
            },
        )
        .await
        .expect("click the input");
        if cdp
            .eval("document.activeElement && document.activeElement.id")
            .await
            == json!("q")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clicking at ({x}, {y}) never focused the input"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.desktop_actions(
        id,
        &[
            DesktopAction::Type { text: text.into() },
            DesktopAction::Key {
                keys: "Return".into(),
            },
        ],
    )
    .await
    .expect("type, Return");
}

fn api_error(e: vivarium_client::ClientError) -> (u16, String, Option<String>) {
    match e {
        vivarium_client::ClientError::Api { status, error } => (status, error.code, error.field),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_end_to_end() {
    let r = common::Runner::start().await;
    let image = r.import_desktop().await;
    let c = &r.client;
    let id = create_desktop(&r, &image, 1024, 768).await;

    // First screenshot: the requested size and real content.
    let png = save_screenshot(c, &id, "first").await;
    let (w, h, pixels) = decode_png(&png);
    assert_eq!((w, h), (1024, 768));
    let colours = distinct_colours(&pixels, pixels.len() / (w * h) as usize);
    assert!(
        colours > 3,
        "first screenshot looks blank ({colours} colours)"
    );
    let size = c
        .desktop_action(&id, &DesktopAction::ScreenSize)
        .await
        .expect("screen size");
    assert_eq!(
        size,
        ActionResult::Size {
            width: 1024,
            height: 768
        }
    );

    // Exec'd processes see the desktop.
    let env = c
        .sh(&id, "echo $DISPLAY $DBUS_SESSION_BUS_ADDRESS")
        .await
        .expect("env");
    assert_eq!(
        env.stdout.trim(),
        ":99 unix:path=/run/vivarium-desktop/bus-99"
    );

    // The form: click, type Unicode, Enter, read back over CDP.
    let mut cdp = open_form(&r, &id).await;
    type_into_form(c, &id, &mut cdp, TEXT).await;
    let got = cdp.wait_eval("window.submitted", &json!(TEXT)).await;
    save_screenshot(c, &id, "form").await;
    let state = cdp
        .eval(
            "JSON.stringify({active: document.activeElement && document.activeElement.id, \
             value: document.getElementById('q').value, focus: document.hasFocus(), \
             sx: window.screenX, sy: window.screenY, ow: window.outerWidth, iw: window.innerWidth, \
             oh: window.outerHeight, ih: window.innerHeight})",
        )
        .await;
    let centre = input_centre(&mut cdp).await;
    assert_eq!(
        got,
        json!(TEXT),
        "value read back over CDP (clicked at {centre:?}; page state {state})"
    );

    // Clipboard round trip with non-Latin text.
    let clip = "κόσμε 世界 🎉 ok";
    c.desktop_action(&id, &DesktopAction::ClipboardSet { text: clip.into() })
        .await
        .expect("clipboard set");
    let got = c
        .desktop_action(&id, &DesktopAction::ClipboardGet)
        .await
        .expect("clipboard get");
    assert_eq!(
        got,
        ActionResult::Clipboard {
            text: Some(clip.into())
        }
    );

    // Windows: Chromium is listed with the page title, and can be moved and resized.
    // The X window title follows document.title asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    let win = loop {
        let windows = match c
            .desktop_action(&id, &DesktopAction::Windows)
            .await
            .expect("windows")
        {
            ActionResult::Windows { windows } => windows,
            other => panic!("windows answered {other:?}"),
        };
        if let Some(w) = windows
            .iter()
            .find(|w| w.title.contains(&format!("done: {TEXT}")))
        {
            break w.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no window titled with the submitted form: {windows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(win.app, "Chromium");
    c.desktop_actions(
        &id,
        &[
            DesktopAction::MoveWindow {
                id: win.id,
                x: 60,
                y: 50,
            },
            DesktopAction::ResizeWindow {
                id: win.id,
                width: 700,
                height: 500,
            },
        ],
    )
    .await
    .expect("move and resize");
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        let ws = match c
            .desktop_action(&id, &DesktopAction::Windows)
            .await
            .expect("windows")
        {
            ActionResult::Windows { windows } => windows,
            other => panic!("windows answered {other:?}"),
        };
        let w = ws
            .into_iter()
            .find(|w| w.id == win.id)
            .expect("window still listed");
        if (w.x, w.y, w.width, w.height) == (60, 50, 700, 500) || Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    save_screenshot(c, &id, "moved").await;
    assert_eq!(
        (moved.x, moved.y, moved.width, moved.height),
        (60, 50, 700, 500)
    );

    // Bad input: each a 4xx naming the field; the sandbox keeps working.
    let off = c
        .desktop_action(
            &id,
            &DesktopAction::Click {
                x: Some(5000),
                y: Some(10),
                button: MouseButton::Left,
                count: 1,
                modifiers: vec![],
            },
        )
        .await
        .expect_err("off-screen click");
    assert_eq!(
        api_error(off),
        (400, "invalid_argument".into(), Some("x".into()))
    );
    let off = c
        .desktop_action(&id, &DesktopAction::Move { x: 10, y: -1 })
        .await
        .expect_err("off-screen move");
    assert_eq!(
        api_error(off),
        (400, "invalid_argument".into(), Some("y".into()))
    );
    let key = c
        .desktop_action(
            &id,
            &DesktopAction::Key {
                keys: "ctrl+NoSuchKey".into(),
            },
        )
        .await
        .expect_err("unknown key");
    assert_eq!(
        api_error(key),
        (400, "invalid_argument".into(), Some("keys".into()))
    );
    let win = c
        .desktop_action(&id, &DesktopAction::FocusWindow { id: 0x1fff_fff0 })
        .await
        .expect_err("no such window");
    // The window is named by a body field: a bad request (the sandbox itself exists).
    assert_eq!(api_error(win), (400, "not_found".into(), Some("id".into())));
    let (status, body) = c
        .raw(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/desktop/fly"),
            Some("{}".into()),
            Some(common::KEY),
        )
        .await
        .expect("raw");
    assert_eq!(status.as_u16(), 400, "{body}");
    let v: Value = serde_json::from_str(&body).expect("error JSON");
    assert_eq!(v["error"]["field"], "action", "{body}");
    let pos = c
        .desktop_action(&id, &DesktopAction::Move { x: 5, y: 6 })
        .await
        .and(c.desktop_action(&id, &DesktopAction::CursorPosition).await)
        .expect("sandbox still works");
    assert_eq!(pos, ActionResult::Position { x: 5, y: 6 });

    c.delete_run(&id).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_desktops_are_independent() {
    let r = common::Runner::start().await;
    let image = r.import_desktop().await;
    let c = &r.client;
    let a = create_desktop(&r, &image, 1024, 768).await;
    let b = create_desktop(&r, &image, 800, 600).await;

    let mut cdp_a = open_form(&r, &a).await;
    let mut cdp_b = open_form(&r, &b).await;
    type_into_form(c, &a, &mut cdp_a, "only in A").await;
    assert_eq!(
        cdp_a
            .wait_eval("window.submitted", &json!("only in A"))
            .await,
        json!("only in A")
    );
    // B saw none of it: its input is empty and nothing was submitted.
    assert_eq!(
        cdp_b.eval("document.getElementById('q').value").await,
        json!("")
    );
    assert_eq!(
        cdp_b.eval("window.submitted === undefined").await,
        json!(true)
    );

    type_into_form(c, &b, &mut cdp_b, "B 二").await;
    assert_eq!(
        cdp_b.wait_eval("window.submitted", &json!("B 二")).await,
        json!("B 二")
    );
    assert_eq!(cdp_a.eval("window.submitted").await, json!("only in A"));

    // Each keeps its own size and pointer.
    c.desktop_action(&a, &DesktopAction::Move { x: 11, y: 12 })
        .await
        .expect("move a");
    c.desktop_action(&b, &DesktopAction::Move { x: 21, y: 22 })
        .await
        .expect("move b");
    assert_eq!(
        c.desktop_action(&a, &DesktopAction::CursorPosition)
            .await
            .expect("pos a"),
        ActionResult::Position { x: 11, y: 12 }
    );
    assert_eq!(
        c.desktop_action(&b, &DesktopAction::ScreenSize)
            .await
            .expect("size b"),
        ActionResult::Size {
            width: 800,
            height: 600
        }
    );
    save_screenshot(c, &a, "a").await;
    save_screenshot(c, &b, "b").await;
    c.delete_run(&a).await.expect("delete a");
    c.delete_run(&b).await.expect("delete b");
}
