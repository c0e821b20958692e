//! End-to-end tests of the port proxy `/sb/{id}/p/{port}/…`: the real runner binary, real crun
//! sandboxes, services inside them that listen only on the sandbox's 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{sha256, Runner, KEY};
use reqwest::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use vivarium_api::{CreateRunRequest, ExecRequest};

const CGI: &str = r#"#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "method=$REQUEST_METHOD"
echo "query=$QUERY_STRING"
echo "host=$HTTP_HOST"
echo "cookie=$HTTP_COOKIE"
head -c "${CONTENT_LENGTH:-0}"
"#;

/// Reads the request head (saving it for the test to inspect), answers 101 and echoes.
const UPGRADE_SH: &str = r#"#!/bin/sh
: > /tmp/up-headers
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  printf '%s\n' "$line" >> /tmp/up-headers
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n'
exec cat
"#;

fn create(image: &str) -> CreateRunRequest {
    CreateRunRequest {
        image: Some(image.into()),
        vcpus: Some(1.0),
        mem_mib: Some(256),
        ..Default::default()
    }
}

async fn sh(r: &Runner, id: &str, cmd: &str) -> vivarium_api::ExecResponse {
    let out = r
        .client
        .sh(id, cmd)
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"));
    assert_eq!(out.exit_code, Some(0), "{cmd}: {out:?}");
    out
}

async fn spawn(r: &Runner, id: &str, cmd: &str) {
    r.client
        .spawn(
            id,
            &ExecRequest {
                command: Some(cmd.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("error body is JSON");
    (status, body["error"].clone())
}

/// Waits until the service on `port` answers through the proxy (it starts in the background).
async fn wait_listening(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = http.get(url).bearer_auth(KEY).send().await.unwrap();
        if resp.status() != StatusCode::NOT_FOUND {
            return;
        }
        let (_, err) = error_code(resp).await;
        assert_eq!(err["code"], "port_not_listening", "{err}");
        assert!(Instant::now() < deadline, "service never listened: {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_http_upgrade_auth_and_errors() {
    let r = Runner::start().await;
    let image = r.import_busybox("local/busybox-proxy:1.0").await;
    let run = r.client.create_run(&create(&image)).await.unwrap();
    let other = r.client.create_run(&create(&image)).await.unwrap();
    let (id, token) = (run.id.as_str(), run.access_token.as_str());
    assert!(token.len() >= 32, "access token {token:?}");
    assert_ne!(token, other.access_token);

    sh(
        &r,
        id,
        "mkdir -p /www/cgi-bin && echo 'hello proxy' > /www/index.html && \
                dd if=/dev/urandom of=/www/big.bin bs=1048576 count=20 2>/dev/null",
    )
    .await;
    r.client
        .write_file(id, "/www/cgi-bin/echo", CGI, Some(0o755))
        .await
        .unwrap();
    r.client
        .write_file(id, "/up.sh", UPGRADE_SH, Some(0o755))
        .await
        .unwrap();
    // Loopback only: reachable solely from inside the sandbox's network namespace.
    spawn(&r, id, "exec busybox httpd -f -p 127.0.0.1:8080 -h /www").await;
    spawn(&r, id, "exec nc -ll -p 9000 -e sh /up.sh").await;

    let http = reqwest::Client::new();
    let base = format!("{}/sb/{id}/p", r.url());
    wait_listening(&http, &format!("{base}/8080/")).await;

    // GET with the API key, and with the token in the query (which sets the cookie).
    let resp = http
        .get(format!("{base}/8080/"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get(SET_COOKIE).is_none());
    assert_eq!(resp.text().await.unwrap(), "hello proxy\n");
    let resp = http
        .get(format!("{base}/8080/index.html?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp
        .headers()
        .get(SET_COOKIE)
        .expect("a valid ?token= sets the cookie")
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.starts_with(&format!("vv_token_{id}={token};")),
        "{cookie}"
    );
    assert!(
        cookie.contains(&format!("Path=/sb/{id}/")) && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert_eq!(resp.text().await.unwrap(), "hello proxy\n");

    // The cookie alone (as a browser would send it) is enough, and never reaches the service;
    // neither does the token query parameter. Host is the sandbox's loopback.
    let resp = http
        .get(format!(
            "{base}/8080/cgi-bin/echo?a=1&token={token}&b=x%20y"
        ))
        .header(COOKIE, format!("app=1; vv_token_{id}={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.contains("method=GET\n"), "{text}");
    assert!(text.contains("query=a=1&b=x%20y\n"), "{text}");
    assert!(text.contains("host=127.0.0.1:8080\n"), "{text}");
    assert!(text.contains("cookie=app=1\n"), "{text}");
    let resp = http
        .get(format!("{base}/8080/index.html"))
        .header(COOKIE, format!("vv_token_{id}={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "hello proxy\n");
    // The X-Vivarium-Token header works too.
    let resp = http
        .get(format!("{base}/8080/"))
        .header("x-vivarium-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // POST with a body (streamed to the CGI's stdin).
    let payload = "x".repeat(100_000) + "end";
    let resp = http
        .post(format!("{base}/8080/cgi-bin/echo?token={token}"))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("method=POST\n"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(
        text.ends_with(&payload),
        "POST body did not come back whole"
    );

    // A 20 MiB response streamed byte-exact.
    let inside = sh(&r, id, "sha256sum /www/big.bin").await.stdout;
    let resp = http
        .get(format!("{base}/8080/big.bin"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 20 * 1024 * 1024);
    assert!(inside.starts_with(&sha256(&body)), "{inside}");

    // Generic Upgrade pass-through: 101, then bytes echo both ways.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut reader, mut writer) = loop {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", r.port))
            .await
            .unwrap();
        let (rd, mut wr) = stream.into_split();
        let req = format!(
            "GET /sb/{id}/p/9000/chat?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Connection: Upgrade\r\nUpgrade: echo\r\nAuthorization: Bearer {KEY}\r\n\
             Cookie: keep=me; vv_token_{id}={token}\r\n\r\n",
            r.port
        );
        wr.write_all(req.as_bytes()).await.unwrap();
        let mut rd = BufReader::new(rd);
        let mut status = String::new();
        rd.read_line(&mut status).await.unwrap();
        let mut head = status.clone();
        loop {
            let mut line = String::new();
            rd.read_line(&mut line).await.unwrap();
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        if status.starts_with("HTTP/1.1 101") {
            let lower = head.to_ascii_lowercase();
            assert!(lower.contains("upgrade: echo"), "{head}");
            break (rd, wr);
        }
        // nc may not listen yet.
        assert!(status.contains(" 404 "), "{head}");
        assert!(Instant::now() < deadline, "upgrade never succeeded: {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for msg in ["ping\n", "héllo wörld 你好\n"] {
        writer.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut back))
            .await
            .expect("echo through the upgraded connection")
            .unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), msg);
    }
    // Figures for the record (printed, never asserted): echo round trip on an upgraded connection
    // and a small GET through the proxy (each GET opens a new connection inside the sandbox).
    let mut rtts = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        writer.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        reader.read_exact(&mut b).await.unwrap();
        rtts.push(t.elapsed());
    }
    let mut gets = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let resp = http
            .get(format!("{base}/8080/index.html"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        resp.bytes().await.unwrap();
        gets.push(t.elapsed());
    }
    rtts.sort();
    gets.sort();
    eprintln!(
        "proxy figures: upgraded echo round trip median {:?}, small GET median {:?}",
        rtts[rtts.len() / 2],
        gets[gets.len() / 2]
    );
    drop(writer);
    drop(reader);
    // What the service saw: loopback Host, Upgrade kept, none of our credentials.
    let seen = sh(&r, id, "cat /tmp/up-headers").await.stdout;
    let lower = seen.to_ascii_lowercase();
    assert!(seen.starts_with("GET /chat HTTP/1.1\n"), "{seen}");
    assert!(lower.contains("host: 127.0.0.1:9000\n"), "{seen}");
    assert!(
        lower.contains("upgrade: echo\n") && lower.contains("connection: upgrade\n"),
        "{seen}"
    );
    assert!(lower.contains("cookie: keep=me\n"), "{seen}");
    assert!(
        !lower.contains("authorization") && !seen.contains(token),
        "{seen}"
    );

    // Errors, each the API's JSON shape.
    let (status, err) = error_code(http.get(format!("{base}/8080/")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    let (status, err) = error_code(
        http.get(format!("{base}/8080/"))
            .header(AUTHORIZATION, "Bearer wrong-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    let (status, err) = error_code(
        http.get(format!("{base}/8080/?token={}", other.access_token))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let (status, err) = error_code(
        http.get(format!("{}/sb/{}/p/8080/", r.url(), other.id))
            .header(COOKIE, format!("vv_token_{}={token}", other.id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let (status, err) = error_code(
        http.get(format!("{}/sb/ffffffffffff/p/8080/", r.url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["code"], "not_found");
    let (status, err) = error_code(
        http.get(format!("{base}/8081/"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["code"], "port_not_listening");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("8081") && msg.contains(id), "{msg}");
    for bad in ["0", "70000", "http"] {
        let (status, err) = error_code(
            http.get(format!("{base}/{bad}/x"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {err}");
        assert_eq!(err["field"], "port", "{bad}: {err}");
    }

    // The sandboxes are unharmed.
    assert_eq!(sh(&r, id, "echo alive").await.stdout, "alive\n");
    assert_eq!(sh(&r, &other.id, "echo alive").await.stdout, "alive\n");
    let resp = http
        .get(format!("{base}/8080/"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    r.client.delete_run(id).await.unwrap();
    r.client.delete_run(&other.id).await.unwrap();
    let (status, _) = error_code(
        http.get(format!("{base}/8080/"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
