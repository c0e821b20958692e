//! End-to-end tests of the computer-tool executors (`/v1/runs/{id}/computer/anthropic|openai`)
//! against a real runner and one real desktop sandbox: every recorded tool call in
//! `tests/fixtures/computer/` answers the right block shapes (images decode as PNGs of the model's
//! display size), malformed calls answer error results and leave the sandbox usable, and actions
//! have real effects (typing into a page served in the sandbox is read back over CDP, scrolling
//! moves it, the cursor lands where the model said, in model coordinates).
//!
//! The screen is 1280x800; the model is told its display is 1024x640 (factor 1.25).

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::cdp::Cdp;
use serde_json::{json, Value};
use vivarium_api::desktop::{ActionResult, DesktopAction};
use vivarium_api::CreateRunRequest;

const SCREEN: (u32, u32) = (1280, 800);
const MODEL: (u32, u32) = (1024, 640);

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>computer tool page</title>
<style>body{margin:0;background:#fff}
#q{position:absolute;left:40px;top:60px;width:600px;height:60px;font-size:28px}
#tall{height:4000px;background:linear-gradient(#fff,#36c)}</style></head>
<body><form id="f"><input id="q" name="q" autocomplete="off"></form><div id="tall"></div>
<script>
document.getElementById('f').addEventListener('submit', function (e) {
  e.preventDefault();
  window.submitted = document.getElementById('q').value;
});
</script></body></html>
"#;

fn fixtures(name: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/computer")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read fixture");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn decode_png(data: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(data));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    (info.width, info.height)
}

struct Api {
    http: reqwest::Client,
    base: String,
    id: String,
}

impl Api {
    async fn post(&self, route: &str, body: &Value) -> (u16, Value) {
        let (status, v, _) = self.post_with_error(route, body).await;
        (status, v)
    }

    /// Also answers the `x-vivarium-error` header (why an OpenAI call was refused).
    async fn post_with_error(&self, route: &str, body: &Value) -> (u16, Value, Option<String>) {
        let resp = self
            .http
            .post(format!(
                "{}/v1/runs/{}/computer/{route}",
                self.base, self.id
            ))
            .bearer_auth(common::KEY)
            .json(body)
            .send()
            .await
            .expect("POST computer route");
        let status = resp.status().as_u16();
        let error = resp
            .headers()
            .get("x-vivarium-error")
            .map(|v| v.to_str().expect("ASCII header").to_string());
        (status, resp.json().await.expect("JSON answer"), error)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/v1/runs/{}/computer/{path}", self.base, self.id))
            .bearer_auth(common::KEY)
            .send()
            .await
            .expect("GET computer route");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON answer"))
    }

    /// An Anthropic tool call with the model's 1024x640 display; answers the tool result.
    async fn anthropic(&self, input: Value) -> Value {
        let (status, v) = self
            .post(
                "anthropic",
                &json!({"input": input, "display_width_px": MODEL.0, "display_height_px": MODEL.1}),
            )
            .await;
        assert_eq!(status, 200, "anthropic {input}: {v}");
        v
    }

    async fn openai(&self, action: Value, call_id: &str) -> (Value, Option<String>) {
        let (status, v, error) = self
            .post_with_error(
                "openai",
                &json!({"action": action, "call_id": call_id, "display_width": MODEL.0, "display_height": MODEL.1}),
            )
            .await;
        assert_eq!(status, 200, "openai {action}: {v}");
        assert!(
            v.get("error").is_none(),
            "the item must be exactly OpenAI's shape: {v}"
        );
        (v, error)
    }
}

/// Checks an Anthropic image result and answers the PNG's size.
fn anthropic_image(v: &Value, what: &str) -> (u32, u32) {
    assert_eq!(v["is_error"], json!(false), "{what}: {v}");
    let content = v["content"].as_array().expect("content array");
    assert_eq!(content.len(), 1, "{what}: one block: {v}");
    let block = &content[0];
    assert_eq!(block["type"], "image", "{what}");
    assert_eq!(block["source"]["type"], "base64", "{what}");
    assert_eq!(block["source"]["media_type"], "image/png", "{what}");
    let data = base64::engine::general_purpose::STANDARD
        .decode(block["source"]["data"].as_str().expect("data"))
        .expect("base64");
    decode_png(&data)
}

fn anthropic_error(v: &Value, what: &str) -> String {
    assert_eq!(v["is_error"], json!(true), "{what}: {v}");
    let content = v["content"].as_array().expect("content array");
    assert_eq!(content.len(), 1, "{what}: {v}");
    assert_eq!(content[0]["type"], "text", "{what}");
    content[0]["text"].as_str().expect("text").to_string()
}

fn openai_image(v: &Value, call_id: &str, what: &str) -> (u32, u32) {
    assert_eq!(v["type"], "computer_call_output", "{what}: {v}");
    assert_eq!(v["call_id"], call_id, "{what}");
    assert_eq!(v["output"]["type"], "computer_screenshot", "{what}");
    let url = v["output"]["image_url"].as_str().expect("image_url");
    let data = url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("{what}: not a PNG data URL: {}", &url[..40.min(url.len())]));
    decode_png(
        &base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64"),
    )
}

/// The centre of `#q` in MODEL coordinates.
async fn input_centre_model(cdp: &mut Cdp) -> (i64, i64) {
    let v = cdp
        .eval(
            "(() => { const r = document.getElementById('q').getBoundingClientRect();
               return [window.screenX + (window.outerWidth - window.innerWidth) / 2 + r.left + r.width / 2,
                       window.screenY + (window.outerHeight - window.innerHeight) + r.top + r.height / 2]; })()",
        )
        .await;
    let sx = v[0].as_f64().expect("x");
    let sy = v[1].as_f64().expect("y");
    (
        (sx * f64::from(MODEL.0) / f64::from(SCREEN.0)).round() as i64,
        (sy * f64::from(MODEL.1) / f64::from(SCREEN.1)).round() as i64,
    )
}

async fn open_page(r: &common::Runner, id: &str) -> Cdp {
    let c = &r.client;
    common::serve_srv(c, id, &[("/srv/page.html", PAGE)]).await;
    c.desktop_action(
        id,
        &DesktopAction::Open {
            url: "http://127.0.0.1:8000/page.html".into(),
        },
    )
    .await
    .expect("open the page");
    let mut cdp = Cdp::connect(r, id, "page.html").await;
    let state = cdp
        .wait_eval("document.readyState", &json!("complete"))
        .await;
    assert_eq!(state, json!("complete"));
    cdp
}

/// Clicks `#q` through the given executor until it has the focus (a fresh tab drops input until
/// its first frame is committed, so an agent looking at the screen would click again too).
async fn focus_input(api: &Api, cdp: &mut Cdp, openai: bool) {
    // The fixtures scrolled the page; bring the input back into view.
    cdp.eval("window.scrollTo(0, 0)").await;
    let (x, y) = input_centre_model(cdp).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if openai {
            let (v, error) = api
                .openai(
                    json!({"type": "click", "x": x, "y": y, "button": "left"}),
                    "c1",
                )
                .await;
            assert_eq!(error, None);
            assert_eq!(openai_image(&v, "c1", "click input"), MODEL);
        } else {
            let v = api
                .anthropic(json!({"action": "left_click", "coordinate": [x, y]}))
                .await;
            assert_eq!(anthropic_image(&v, "click input"), MODEL);
        }
        if cdp
            .eval("document.activeElement && document.activeElement.id")
            .await
            == json!("q")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "clicking ({x}, {y}) never focused #q"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computer_tool_executors() {
    let r = common::Runner::start().await;
    let image = r.import_desktop().await;
    let run = r
        .client
        .create_run(&CreateRunRequest {
            image: Some(image),
            vcpus: Some(2.0),
            mem_mib: Some(2048),
            resolution: Some([SCREEN.0, SCREEN.1]),
            desktop: Some(true),
            ..Default::default()
        })
        .await
        .expect("create desktop sandbox");
    let id = run.id.clone();
    let api = Api {
        http: reqwest::Client::new(),
        base: r.url(),
        id: id.clone(),
    };

    // Tool definitions: the real screen by default, the model's size when given.
    let (s, v) = api.get("anthropic/tool").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"type": "computer_20250124", "name": "computer", "display_width_px": 1280, "display_height_px": 800})
    );
    let (s, v) = api
        .get("anthropic/tool?version=computer_20251124&display_width_px=1024&display_height_px=640")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"type": "computer_20251124", "name": "computer", "display_width_px": 1024,
               "display_height_px": 640, "enable_zoom": true})
    );
    let (s, v) = api.get("anthropic/tool?version=computer_1999").await;
    assert_eq!((s, v["error"]["field"].clone()), (400, json!("version")));
    let (s, v) = api
        .get("openai/tool?display_width=1024&display_height=640")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"type": "computer_use_preview", "display_width": 1024, "display_height": 640, "environment": "linux"})
    );

    // Without a display size the model sees the real screen.
    let (s, v) = api
        .post("anthropic", &json!({"input": {"action": "screenshot"}}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(anthropic_image(&v, "full-size screenshot"), SCREEN);

    let mut cdp = open_page(&r, &id).await;

    // Every recorded Anthropic tool call.
    for f in fixtures("anthropic.json") {
        let input = f["tool_use"]["input"].clone();
        let what = format!("anthropic fixture {}", f["tool_use"]["id"]);
        let v = api.anthropic(input).await;
        match f["expect"].as_str().expect("expect") {
            "image" => {
                let want = f
                    .get("size")
                    .map(|s| (s[0].as_u64().unwrap() as u32, s[1].as_u64().unwrap() as u32))
                    .unwrap_or(MODEL);
                assert_eq!(anthropic_image(&v, &what), want, "{what}");
            }
            "cursor" => {
                assert_eq!(v["is_error"], json!(false), "{what}: {v}");
                let text = v["content"][0]["text"].as_str().expect("text");
                assert_eq!(v["content"][0]["type"], "text");
                assert!(
                    text.starts_with("X=") && text.contains(",Y="),
                    "{what}: {text}"
                );
            }
            "error" => {
                let msg = anthropic_error(&v, &what);
                let want = f["error_contains"].as_str().expect("error_contains");
                assert!(msg.contains(want), "{what}: {msg:?} lacks {want:?}");
            }
            other => panic!("unknown expectation {other}"),
        }
    }

    // Every recorded OpenAI computer call.
    for f in fixtures("openai.json") {
        let call = &f["computer_call"];
        let call_id = call["call_id"].as_str().expect("call_id");
        let what = format!("openai fixture {call_id}");
        let (v, error) = api.openai(call["action"].clone(), call_id).await;
        assert_eq!(openai_image(&v, call_id, &what), MODEL, "{what}");
        match f["expect"].as_str().expect("expect") {
            "image" => assert!(error.is_none(), "{what}: {error:?}"),
            "error" => {
                let msg = error.unwrap_or_else(|| panic!("{what}: no error"));
                let want = f["error_contains"].as_str().expect("error_contains");
                assert!(msg.contains(want), "{what}: {msg:?} lacks {want:?}");
            }
            other => panic!("unknown expectation {other}"),
        }
    }

    // The cursor lands where the model said, and is reported in model coordinates.
    api.anthropic(json!({"action": "mouse_move", "coordinate": [400, 300]}))
        .await;
    let v = api.anthropic(json!({"action": "cursor_position"})).await;
    assert_eq!(
        v,
        json!({"content": [{"type": "text", "text": "X=400,Y=300"}], "is_error": false})
    );
    let real = r
        .client
        .desktop_action(&id, &DesktopAction::CursorPosition)
        .await
        .expect("cursor");
    assert_eq!(real, ActionResult::Position { x: 500, y: 375 });
    api.openai(json!({"type": "move", "x": 100, "y": 80}), "m")
        .await;
    let real = r
        .client
        .desktop_action(&id, &DesktopAction::CursorPosition)
        .await
        .expect("cursor");
    assert_eq!(real, ActionResult::Position { x: 125, y: 100 });

    // Typing through the Anthropic executor reaches the page.
    let text = "héllo from claude";
    focus_input(&api, &mut cdp, false).await;
    api.anthropic(json!({"action": "key", "text": "ctrl+a BackSpace"}))
        .await;
    api.anthropic(json!({"action": "type", "text": text})).await;
    api.anthropic(json!({"action": "key", "text": "Return"}))
        .await;
    assert_eq!(
        cdp.wait_eval("window.submitted", &json!(text)).await,
        json!(text)
    );

    // And through the OpenAI executor, with OpenAI key names.
    let text = "typed by openai";
    focus_input(&api, &mut cdp, true).await;
    api.openai(json!({"type": "keypress", "keys": ["CTRL", "A"]}), "k1")
        .await;
    api.openai(json!({"type": "keypress", "keys": ["BACKSPACE"]}), "k2")
        .await;
    api.openai(json!({"type": "type", "text": text}), "t").await;
    api.openai(json!({"type": "keypress", "keys": ["ENTER"]}), "k3")
        .await;
    assert_eq!(
        cdp.wait_eval("window.submitted", &json!(text)).await,
        json!(text)
    );

    // Scrolling moves the page (both executors), and back.
    let (x, y) = (512, 500);
    cdp.eval("window.scrollTo(0, 0)").await;
    api.anthropic(json!({"action": "scroll", "coordinate": [x, y], "scroll_direction": "down", "scroll_amount": 5}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut scrolled = 0.0;
    while scrolled <= 0.0 && Instant::now() < deadline {
        scrolled = cdp.eval("window.scrollY").await.as_f64().unwrap_or(0.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(scrolled > 0.0, "anthropic scroll did not move the page");
    api.openai(
        json!({"type": "scroll", "x": x, "y": y, "scroll_x": 0, "scroll_y": -10000}),
        "s",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrolled > 0.0 && Instant::now() < deadline {
        scrolled = cdp.eval("window.scrollY").await.as_f64().unwrap_or(1.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(scrolled, 0.0, "openai scroll up did not return to the top");

    // API-level errors stay API errors.
    let (s, v) = api
        .post(
            "anthropic",
            &json!({"input": {"action": "screenshot"}, "display_width_px": 1024}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("display_height_px"))
    );
    let (s, v) = api.post("anthropic", &json!({"nput": {}})).await;
    assert_eq!(s, 400, "{v}");
    let ghost = Api {
        http: reqwest::Client::new(),
        base: r.url(),
        id: "no-such-run".into(),
    };
    let (s, _) = ghost
        .post("anthropic", &json!({"input": {"action": "screenshot"}}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = ghost
        .post("openai", &json!({"action": {"type": "screenshot"}}))
        .await;
    assert_eq!(s, 404);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/runs/{id}/computer/anthropic", r.url()))
        .bearer_auth("wrong-key")
        .json(&json!({"input": {"action": "screenshot"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 401);

    // After all of that, the sandbox still answers.
    let v = api.anthropic(json!({"action": "screenshot"})).await;
    assert_eq!(anthropic_image(&v, "final screenshot"), MODEL);
    r.client.delete_run(&id).await.expect("delete");
}
