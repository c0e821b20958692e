//! A small Chrome DevTools Protocol client for the tests: it reaches a sandbox's Chromium the way
//! users do, through the runner's port proxy (`/sb/{id}/p/9222`), and checks that the proxy
//! rewrote `webSocketDebuggerUrl` to point back through itself.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Cdp {
    /// Waits for a page whose URL contains `url_part` and connects to it.
    pub async fn connect(r: &super::Runner, id: &str, url_part: &str) -> Cdp {
        let http = reqwest::Client::new();
        let list_url = format!("{}/sb/{id}/p/9222/json/list", r.url());
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            if let Ok(resp) = http.get(&list_url).bearer_auth(super::KEY).send().await {
                if resp.status().is_success() {
                    let list: Vec<Value> = resp.json().await.expect("json/list is JSON");
                    let page = list.iter().find(|t| {
                        t["type"] == "page" && t["url"].as_str().unwrap_or("").contains(url_part)
                    });
                    if let Some(ws) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                        break ws.to_string();
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no CDP page with {url_part:?} appeared"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            ws_url.contains(&format!("/sb/{id}/p/9222/")),
            "webSocketDebuggerUrl is not rewritten through the proxy: {ws_url}"
        );
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                ws_url.as_str(),
            )
            .expect("ws request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", super::KEY).parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("CDP WebSocket through the proxy");
        Cdp { ws, next_id: 1 }
    }

    /// One CDP command; answers its `result` (a CDP error fails the test).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::Text(msg.into()))
            .await
            .expect("CDP send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("CDP answer in time")
                .expect("CDP connection open")
                .expect("CDP frame");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).expect("CDP JSON");
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method} failed: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// `Runtime.evaluate` of `expr`, by value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it equals `want` (20 s at most); answers the last value.
    pub async fn wait_eval(&mut self, expr: &str, want: &Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(expr).await;
            if &v == want || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
