//! The port proxy: `ANY /sb/{id}/p/{port}/…` forwards HTTP (streamed both ways) and any `Upgrade:`
//! protocol (WebSocket, …) to `127.0.0.1:{port}` *inside* the sandbox's network namespace, so
//! services that bind only loopback (Chromium's CDP on 9222 always does) are reachable.
//!
//! Authentication is the proxy's own (it is not under the `/v1` key middleware): the runner's API
//! key as `Authorization: Bearer`, or the sandbox's `access_token` as `?token=`, as the cookie
//! `vv_token_{id}` or as the header `X-Vivarium-Token`. A valid `?token=` sets that cookie so a
//! browser page's later requests (assets, noVNC's WebSocket) are authorised without the query.
//! Our credentials are removed before a request goes upstream.
//!
//! CDP discovery answers (`/json/version`, `/json/list`, `/json`, `/json/new`) are rewritten so the
//! `webSocketDebuggerUrl`s they contain point back through this proxy.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::error::{ApiError, ApiResult};
use crate::routes::AppState;

/// Query parameter carrying a sandbox's access token.
pub const TOKEN_QUERY: &str = "token";
/// Header carrying a sandbox's access token.
pub const TOKEN_HEADER: &str = "x-vivarium-token";
/// Cookies named `vv_token_{id}` carry a sandbox's access token.
pub const COOKIE_PREFIX: &str = "vv_token_";

/// How long connecting to the service inside the sandbox may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest CDP discovery answer buffered for rewriting (a `/json/list` of hundreds of tabs is far
/// smaller).
const CDP_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The proxy's routes; merged into the runner's router outside the `/v1` key middleware.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/sb/{id}/p/{port}", any(proxy))
        .route("/sb/{id}/p/{port}/", any(proxy))
        .route("/sb/{id}/p/{port}/{*rest}", any(proxy))
}

/// The URLs of a sandbox through the proxy: `(cdp_url, vnc_url, vnc_view_only_url)`.
///
/// `public_base` is how clients reach the runner (e.g. `http://127.0.0.1:7070` or
/// `https://vivarium.example.com`); a trailing `/` is ignored. `cdp_url` is meant for Playwright's
/// `connect_over_cdp`, which appends `json/version/` to the URL's path and keeps its query (checked
/// in playwright-core 1.65's `urlToWSEndpoint`), so the token survives; the answer's
/// `webSocketDebuggerUrl` is rewritten by this proxy and carries the token too. `vnc_url` opens
/// noVNC (1.3) served by websockify on port 6080, connected, scaled and reconnecting.
pub fn sandbox_urls(public_base: &str, id: &str, token: &str) -> (String, String, String) {
    let base = public_base.trim_end_matches('/');
    let cdp = format!("{base}/sb/{id}/p/9222?{TOKEN_QUERY}={token}");
    let vnc = format!(
        "{base}/sb/{id}/p/6080/vnc.html?{TOKEN_QUERY}={token}&autoconnect=true&resize=scale\
         &reconnect=true&path=sb/{id}/p/6080/websockify"
    );
    let view_only = format!("{vnc}&view_only=true");
    (cdp, vnc, view_only)
}

/// The credentials a request presents for sandbox `id`.
#[derive(Debug, Default, PartialEq)]
struct Presented {
    /// `Authorization: Bearer` equals the runner's API key.
    api_key: bool,
    query_token: Option<String>,
    cookie_token: Option<String>,
    header_token: Option<String>,
}

/// How a request was let in.
#[derive(Debug, PartialEq)]
enum Access {
    ApiKey,
    /// By the sandbox's token; `from_query`: the query carried the valid token (set the cookie).
    Token {
        from_query: bool,
    },
}

impl Presented {
    fn read(headers: &HeaderMap, query: Option<&str>, id: &str, api_key: &str) -> Self {
        let api_key = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| is_bearer(v, api_key));
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Presented {
            api_key,
            query_token: query.and_then(query_token).and_then(non_empty),
            cookie_token: cookie_token(headers, id).and_then(non_empty),
            header_token: headers
                .get(TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .and_then(non_empty),
        }
    }

    fn is_empty(&self) -> bool {
        !self.api_key
            && self.query_token.is_none()
            && self.cookie_token.is_none()
            && self.header_token.is_none()
    }

    /// 403 when only tokens that are not this sandbox's were presented.
    fn authorize(&self, id: &str, expected: &str) -> ApiResult<Access> {
        if self.api_key {
            return Ok(Access::ApiKey);
        }
        // Constant-time comparisons so a token cannot be guessed byte by byte from response times.
        let ok = |t: &Option<String>| {
            t.as_deref().is_some_and(|t| {
                constant_time_eq::constant_time_eq(t.as_bytes(), expected.as_bytes())
            })
        };
        if ok(&self.query_token) {
            return Ok(Access::Token { from_query: true });
        }
        if ok(&self.cookie_token) || ok(&self.header_token) {
            return Ok(Access::Token { from_query: false });
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token presented does not open sandbox {id}"),
        ))
    }
}

fn is_bearer(value: &str, api_key: &str) -> bool {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .is_some_and(|k| {
            constant_time_eq::constant_time_eq(k.trim().as_bytes(), api_key.as_bytes())
        })
}

/// The value of the `token` query parameter (percent-decoded).
fn query_token(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == TOKEN_QUERY)
        .map(|(_, v)| v.into_owned())
}

/// The query without the `token` parameter, other parameters byte for byte as they came
/// (re-serialising with `form_urlencoded` would change their encoding, e.g. `%20` → `+`).
fn strip_token_query(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            !pair.is_empty() && {
                let key = pair.split('=').next().unwrap_or_default();
                form_urlencoded::parse(key.as_bytes())
                    .next()
                    .map(|(k, _)| k != TOKEN_QUERY)
                    .unwrap_or(true)
            }
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Cookie pairs of every `Cookie` header. Hand-split rather than with the `cookie` crate because
/// the other cookies must reach the service byte for byte, which a parse/re-encode does not promise.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let pair = pair.trim();
            let (k, v) = pair.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
}

fn cookie_token(headers: &HeaderMap, id: &str) -> Option<String> {
    let name = format!("{COOKIE_PREFIX}{id}");
    cookie_pairs(headers)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The `Set-Cookie` that lets a browser's later requests to `/sb/{id}/` in without the query.
fn token_cookie(id: &str, token: &str, secure: bool) -> String {
    format!(
        "{COOKIE_PREFIX}{id}={token}; Path=/sb/{id}/; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Headers that describe one hop of a connection and never travel further (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade:`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The headers sent to the service: hop-by-hop ones and our credentials removed, `Host` set to
/// `127.0.0.1:{port}` (Chromium answers CDP only to loopback Host headers), and for upgrades
/// `Upgrade` kept with `Connection: upgrade`.
fn upstream_headers(incoming: &HeaderMap, port: u16, upgrade: bool, api_key: &str) -> HeaderMap {
    let mut h = incoming.clone();
    let upgrade_value = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut h);
    if upgrade {
        if let Some(v) = upgrade_value {
            h.insert(header::UPGRADE, v);
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    if let Ok(host) = HeaderValue::from_str(&format!("127.0.0.1:{port}")) {
        h.insert(header::HOST, host);
    }
    let auth: Vec<HeaderValue> = h.get_all(header::AUTHORIZATION).iter().cloned().collect();
    h.remove(header::AUTHORIZATION);
    for v in auth {
        if !v.to_str().is_ok_and(|s| is_bearer(s, api_key)) {
            h.append(header::AUTHORIZATION, v);
        }
    }
    h.remove(TOKEN_HEADER);
    let cookies: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !pair.starts_with(COOKIE_PREFIX))
        .map(str::to_string)
        .collect();
    h.remove(header::COOKIE);
    if !cookies.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
            h.insert(header::COOKIE, v);
        }
    }
    h
}

/// `/sb/{id}/p/{port}{rest}` → `(id, port, rest)`; `rest` is empty or starts with `/`.
fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let tail = path.strip_prefix("/sb/")?;
    let (id, tail) = tail.split_once('/')?;
    let tail = tail.strip_prefix("p/")?;
    let (port, rest) = match tail.find('/') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    Some((id, port, rest))
}

fn parse_port(raw: &str) -> ApiResult<u16> {
    match raw.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(ApiError::invalid(
            "port",
            format!("port must be a number between 1 and 65535, got {raw:?}"),
        )),
    }
}

/// Connects to `127.0.0.1:{port}` inside the network namespace at `netns`.
///
/// `setns` changes the namespace of the calling *thread* for good. Doing it on a tokio worker or
/// blocking-pool thread would leave that pooled thread in the sandbox's namespace, and every later
/// socket any task opens on it (other sandboxes, registry pulls) would land there. So a short-lived
/// thread of our own joins the namespace, connects and exits; a socket keeps the namespace it was
/// made in, so the stream can be used from any thread afterwards.
async fn connect_in_netns(
    netns: PathBuf,
    port: u16,
) -> Result<tokio::net::TcpStream, ConnectError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vv-proxy-connect".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(&netns).map_err(ConnectError::Netns)?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| ConnectError::Netns(e.into()))?;
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                    .map_err(ConnectError::Connect)?;
                s.set_nodelay(true).map_err(ConnectError::Connect)?;
                s.set_nonblocking(true).map_err(ConnectError::Connect)?;
                Ok(s)
            })();
            // The receiver is gone only if the request was cancelled; the socket is then dropped.
            let _ = tx.send(result);
        })
        .map_err(ConnectError::Thread)?;
    let std_stream = rx
        .await
        .map_err(|_| ConnectError::Thread(std::io::Error::other("connect thread vanished")))??;
    tokio::net::TcpStream::from_std(std_stream).map_err(ConnectError::Connect)
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("joining the sandbox's network namespace: {0}")]
    Netns(std::io::Error),
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("starting the connect thread: {0}")]
    Thread(std::io::Error),
}

impl ConnectError {
    fn into_api(self, id: &str, port: u16) -> ApiError {
        use std::io::ErrorKind;
        match self {
            ConnectError::Connect(e) if e.kind() == ErrorKind::ConnectionRefused => ApiError::new(
                StatusCode::NOT_FOUND,
                "port_not_listening",
                format!("nothing listens on port {port} in sandbox {id}"),
            ),
            ConnectError::Connect(e) if e.kind() == ErrorKind::TimedOut => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("connecting to port {port} in sandbox {id} timed out"),
            ),
            ConnectError::Netns(e) if e.kind() == ErrorKind::NotFound => ApiError::not_found(
                format!("sandbox {id} has no network namespace (is it being deleted?)"),
            ),
            other => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("port {port} in sandbox {id}: {other}"),
            ),
        }
    }
}

fn upstream_error(id: &str, port: u16, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("port {port} in sandbox {id}: {e}"),
    )
}

/// How URLs in CDP discovery answers are rewritten to come back through the proxy.
#[derive(Debug, Clone)]
struct CdpRewrite {
    /// `ws` or `wss`.
    ws_scheme: &'static str,
    /// The Host the client used.
    public_host: String,
    /// `/sb/{id}/p/{port}`.
    prefix: String,
    token: String,
}

/// Whether `path` is a CDP discovery endpoint whose answer names WebSocket URLs.
fn is_cdp_listing(method: &Method, path: &str) -> bool {
    let p = path.strip_suffix('/').unwrap_or(path);
    // `/json/new` is PUT since Chromium 111 and GET before.
    (method == Method::GET || (method == Method::PUT && p == "/json/new"))
        && matches!(p, "/json/version" | "/json/list" | "/json" | "/json/new")
}

fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl CdpRewrite {
    /// `ws://127.0.0.1:9222/devtools/...` → `ws(s)://{host}/sb/{id}/p/{port}/devtools/...?token=…`;
    /// URLs that do not point at the sandbox's loopback are left alone.
    fn ws_url(&self, url: &str) -> Option<String> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("wss://"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        is_loopback_authority(authority).then(|| {
            format!(
                "{}://{}{}",
                self.ws_scheme,
                self.public_host,
                self.with_token(&format!("{}{}", self.prefix, path))
            )
        })
    }

    fn with_token(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}{TOKEN_QUERY}={}", self.token)
    }

    /// `devtoolsFrontendUrl`: its `ws=127.0.0.1:9222/devtools/page/X` parameter gets the proxy's
    /// host and path (and becomes `wss=` behind https); a relative frontend URL gets our prefix.
    fn frontend_url(&self, url: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let base = if base.starts_with('/') {
            format!("{}{base}", self.prefix)
        } else {
            base.to_string()
        };
        let Some(query) = query else { return base };
        let params: Vec<String> = query
            .split('&')
            .map(|pair| {
                let value = pair
                    .strip_prefix("ws=")
                    .or_else(|| pair.strip_prefix("wss="));
                match value.and_then(|v| self.ws_url(&format!("ws://{v}"))) {
                    Some(rewritten) => {
                        let after_scheme = rewritten.split_once("://").map_or("", |(_, r)| r);
                        format!("{}={after_scheme}", self.ws_scheme)
                    }
                    None => pair.to_string(),
                }
            })
            .collect();
        format!("{base}?{}", params.join("&"))
    }

    fn rewrite_target(&self, v: &mut serde_json::Value) {
        let Some(obj) = v.as_object_mut() else { return };
        if let Some(serde_json::Value::String(s)) = obj.get_mut("webSocketDebuggerUrl") {
            if let Some(new) = self.ws_url(s) {
                *s = new;
            }
        }
        if let Some(serde_json::Value::String(s)) = obj.get_mut("devtoolsFrontendUrl") {
            *s = self.frontend_url(s);
        }
    }

    /// The rewritten JSON body, or `None` when it is not JSON (then it is passed on unchanged).
    fn body(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
        match &mut v {
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(|t| self.rewrite_target(t))
            }
            other => self.rewrite_target(other),
        }
        serde_json::to_vec(&v).ok()
    }
}

/// The Host the client used (`X-Forwarded-Host` when a front proxy set it).
fn public_host(req: &Request) -> String {
    let h = req.headers();
    h.get("x-forwarded-host")
        .or_else(|| h.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "127.0.0.1".into())
}

fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Forwards any HTTP request or WebSocket upgrade to `port` inside the sandbox (its loopback).
///
/// Chromium's DevTools listings (`/json/version`, `/json/list`) are rewritten so their
/// `webSocketDebuggerUrl`s point back through this proxy. Authenticate with the sandbox's
/// `access_token` (`?token=`, then a cookie) or the API key as a bearer token.
#[utoipa::path(
    method(get, put, post, delete, options, head, patch, trace),
    path = "/sb/{id}/p/{port}/{rest}",
    operation_id = "proxy",
    tag = "proxy",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("port" = u16, Path, description = "TCP port inside the sandbox"),
        ("rest" = String, Path, description = "The rest of the upstream path (may contain `/`)"),
        ("token" = Option<String>, Query, description = "The sandbox's `access_token`; removed before forwarding"),
    ),
    responses(
        (status = 200, description = "Whatever the upstream server answers (any status, any content)"),
        (status = 101, description = "WebSocket upgrade accepted by the upstream server"),
        (status = 400, description = "Invalid port", body = vivarium_api::ErrorBody),
        (status = 401, description = "No or wrong token / key", body = vivarium_api::ErrorBody),
        (status = 404, description = "No such sandbox, or nothing listens on the port", body = vivarium_api::ErrorBody),
        (status = 502, description = "The upstream failed", body = vivarium_api::ErrorBody),
        (status = 504, description = "Connecting to the upstream timed out", body = vivarium_api::ErrorBody),
    ),
    security(("access_token" = []), ("bearer" = []))
)]
async fn proxy(State(state): State<Arc<AppState>>, req: Request) -> Response {
    // The methods the document lists; anything else (CONNECT, WebDAV's, made-up ones) is a 405,
    // as for every other route.
    const METHODS: &str = "GET, PUT, POST, DELETE, OPTIONS, HEAD, PATCH, TRACE";
    if !METHODS.split(", ").any(|m| m == req.method().as_str()) {
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("the port proxy forwards {METHODS}, not {}", req.method()),
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::ALLOW,
            axum::http::HeaderValue::from_static(METHODS),
        );
        return resp;
    }
    match forward(&state, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn forward(state: &AppState, mut req: Request) -> ApiResult<Response> {
    let path = req.uri().path().to_string();
    let (id, port_raw, rest) =
        split_path(&path).ok_or_else(|| ApiError::not_found(format!("no proxy route {path:?}")))?;
    let presented = Presented::read(req.headers(), req.uri().query(), id, &state.api_key);
    if presented.is_empty() {
        return Err(ApiError::unauthorized(
            "missing credentials: send `Authorization: Bearer <API key>`, or the sandbox's \
             access_token as `?token=`, as the cookie `vv_token_<id>` or as `X-Vivarium-Token`",
        ));
    }
    let token = state.runner.access_token(id)?;
    let access = presented.authorize(id, &token)?;
    let port = parse_port(port_raw)?;
    let netns = state.runner.netns_path(id)?;

    let https = forwarded_https(req.headers());
    let upgrade = wants_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let query = req.uri().query().and_then(strip_token_query);
    let path_and_query = match (rest, &query) {
        ("", None) => "/".to_string(),
        ("", Some(q)) => format!("/?{q}"),
        (p, None) => p.to_string(),
        (p, Some(q)) => format!("{p}?{q}"),
    };
    let upstream_path = if rest.is_empty() { "/" } else { rest };
    let cdp = is_cdp_listing(req.method(), upstream_path).then(|| CdpRewrite {
        ws_scheme: if https { "wss" } else { "ws" },
        public_host: public_host(&req),
        prefix: format!("/sb/{id}/p/{port}"),
        token: token.clone(),
    });
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let uri: Uri = path_and_query
        .parse()
        .map_err(|e| ApiError::invalid("path", format!("invalid path: {e}")))?;
    let (parts, body) = req.into_parts();
    let mut up = hyper::Request::new(body);
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = upstream_headers(&parts.headers, port, upgrade, &state.api_key);

    let stream = connect_in_netns(netns, port)
        .await
        .map_err(|e| e.into_api(id, port))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| upstream_error(id, port, e))?;
    {
        let (id, port) = (id.to_string(), port);
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(sandbox = %id, port, error = %e, "proxied connection ended with an error");
            }
        });
    }
    tracing::debug!(sandbox = %id, port, method = %parts.method, path = %up.uri(), upgrade, "proxying");
    let mut resp = sender
        .send_request(up)
        .await
        .map_err(|e| upstream_error(id, port, e))?;

    let mut out = if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        if let Some(client_upgrade) = client_upgrade {
            let (id, port) = (id.to_string(), port);
            tokio::spawn(async move {
                let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
                    (Ok(c), Ok(u)) => (c, u),
                    (c, u) => {
                        tracing::warn!(sandbox = %id, port, client = ?c.err(), upstream = ?u.err(), "protocol upgrade failed");
                        return;
                    }
                };
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    Ok((to_up, to_client)) => {
                        tracing::debug!(sandbox = %id, port, to_up, to_client, "upgraded connection closed")
                    }
                    Err(e) => {
                        tracing::debug!(sandbox = %id, port, error = %e, "upgraded connection ended")
                    }
                }
            });
        }
        // The 101 keeps its Upgrade/Connection headers: they are what the client switches on.
        let (parts, _) = resp.into_parts();
        Response::from_parts(parts, Body::empty())
    } else if let (Some(cdp), true) = (
        cdp,
        resp.status() == StatusCode::OK && !resp.headers().contains_key(header::CONTENT_ENCODING),
    ) {
        let (mut parts, body) = resp.into_parts();
        let bytes = http_body_util::Limited::new(body, CDP_BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| upstream_error(id, port, e))?
            .to_bytes();
        let bytes = cdp.body(&bytes).map(bytes::Bytes::from).unwrap_or(bytes);
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Response::from_parts(parts, Body::from(bytes))
    } else {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, Body::new(body))
    };
    if access == (Access::Token { from_query: true }) {
        if let Ok(v) = HeaderValue::from_str(&token_cookie(id, &token, https)) {
            out.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "the-api-key";
    const ID: &str = "0123456789ab";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn rewrite(https: bool) -> CdpRewrite {
        CdpRewrite {
            ws_scheme: if https { "wss" } else { "ws" },
            public_host: "runner.example:7070".into(),
            prefix: format!("/sb/{ID}/p/9222"),
            token: "tok".into(),
        }
    }

    #[test]
    fn urls_for_a_sandbox() {
        let (cdp, vnc, view) = sandbox_urls("http://h:7070/", "abc", "t0k");
        assert_eq!(cdp, "http://h:7070/sb/abc/p/9222?token=t0k");
        assert_eq!(
            vnc,
            "http://h:7070/sb/abc/p/6080/vnc.html?token=t0k&autoconnect=true&resize=scale\
             &reconnect=true&path=sb/abc/p/6080/websockify"
        );
        assert_eq!(view, format!("{vnc}&view_only=true"));
    }

    #[test]
    fn paths_and_ports() {
        assert_eq!(split_path("/sb/x1/p/80"), Some(("x1", "80", "")));
        assert_eq!(split_path("/sb/x1/p/80/"), Some(("x1", "80", "/")));
        assert_eq!(
            split_path("/sb/x1/p/9222/json/version/"),
            Some(("x1", "9222", "/json/version/"))
        );
        assert_eq!(split_path("/v1/runs"), None);
        assert_eq!(parse_port("8080").unwrap(), 8080);
        for bad in ["0", "70000", "-1", "http", ""] {
            let e = parse_port(bad).unwrap_err();
            assert_eq!(
                (e.status, e.field.as_deref()),
                (StatusCode::BAD_REQUEST, Some("port"))
            );
        }
    }

    #[test]
    fn credentials_are_read_from_every_place() {
        let none = Presented::read(&headers(&[]), None, ID, KEY);
        assert!(none.is_empty());
        // Someone else's Authorization is the service's business, not a credential of ours.
        let other = Presented::read(&headers(&[("authorization", "Bearer nope")]), None, ID, KEY);
        assert!(other.is_empty());
        let key = Presented::read(
            &headers(&[("authorization", "Bearer the-api-key")]),
            None,
            ID,
            KEY,
        );
        assert_eq!(key.authorize(ID, "tok").unwrap(), Access::ApiKey);

        let q = Presented::read(&headers(&[]), Some("a=1&token=tok&b=2"), ID, KEY);
        assert_eq!(
            q.authorize(ID, "tok").unwrap(),
            Access::Token { from_query: true }
        );
        let empty = Presented::read(&headers(&[]), Some("token="), ID, KEY);
        assert!(empty.is_empty());

        let c = Presented::read(
            &headers(&[("cookie", "x=1; vv_token_0123456789ab=tok; y=2")]),
            None,
            ID,
            KEY,
        );
        assert_eq!(c.cookie_token.as_deref(), Some("tok"));
        assert_eq!(
            c.authorize(ID, "tok").unwrap(),
            Access::Token { from_query: false }
        );
        // Another sandbox's cookie is not this sandbox's.
        let c = Presented::read(
            &headers(&[("cookie", "vv_token_ffffffffffff=tok")]),
            None,
            ID,
            KEY,
        );
        assert!(c.is_empty());

        let h = Presented::read(&headers(&[("x-vivarium-token", "tok")]), None, ID, KEY);
        assert_eq!(
            h.authorize(ID, "tok").unwrap(),
            Access::Token { from_query: false }
        );
        let wrong = Presented::read(
            &headers(&[("x-vivarium-token", "other")]),
            Some("token=x"),
            ID,
            KEY,
        );
        assert_eq!(
            wrong.authorize(ID, "tok").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn token_is_removed_from_the_query_only() {
        assert_eq!(strip_token_query("token=abc"), None);
        assert_eq!(
            strip_token_query("a=%20x&token=abc&b=c+d").as_deref(),
            Some("a=%20x&b=c+d")
        );
        assert_eq!(
            strip_token_query("tokens=1&%74oken=2").as_deref(),
            Some("tokens=1")
        );
        assert_eq!(query_token("x=1&token=a%2Bb").as_deref(), Some("a+b"));
    }

    #[test]
    fn cookie_is_scoped_to_the_sandbox() {
        assert_eq!(
            token_cookie(ID, "tok", false),
            "vv_token_0123456789ab=tok; Path=/sb/0123456789ab/; HttpOnly; SameSite=Lax"
        );
        assert!(token_cookie(ID, "tok", true).ends_with("; Secure"));
    }

    #[test]
    fn upstream_headers_drop_our_credentials_and_hop_by_hop() {
        let h = headers(&[
            ("host", "runner:7070"),
            ("authorization", "Bearer the-api-key"),
            ("x-vivarium-token", "tok"),
            ("cookie", "a=1; vv_token_0123456789ab=tok"),
            ("cookie", "b=2"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
        ]);
        let up = upstream_headers(&h, 9222, false, KEY);
        assert_eq!(up.get("host").unwrap(), "127.0.0.1:9222");
        assert_eq!(up.get("cookie").unwrap(), "a=1; b=2");
        assert_eq!(up.get("accept").unwrap(), "*/*");
        for gone in [
            "authorization",
            "x-vivarium-token",
            "connection",
            "x-private",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!up.contains_key(gone), "{gone} was forwarded");
        }
        // The service's own Authorization passes; only-our-cookie leaves no Cookie header.
        let h = headers(&[
            ("authorization", "Basic dTpw"),
            ("cookie", "vv_token_0123456789ab=t"),
        ]);
        let up = upstream_headers(&h, 80, false, KEY);
        assert_eq!(up.get("authorization").unwrap(), "Basic dTpw");
        assert!(!up.contains_key("cookie"));
    }

    #[test]
    fn upgrades_keep_upgrade_and_connection() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        let up = upstream_headers(&h, 6080, true, KEY);
        assert_eq!(up.get("upgrade").unwrap(), "websocket");
        assert_eq!(up.get("connection").unwrap(), "upgrade");
        assert_eq!(up.get("sec-websocket-key").unwrap(), "k");
    }

    #[test]
    fn cdp_listing_paths() {
        for p in [
            "/json/version",
            "/json/version/",
            "/json/list",
            "/json/list/",
            "/json",
            "/json/",
            "/json/new",
        ] {
            assert!(is_cdp_listing(&Method::GET, p), "{p}");
        }
        assert!(is_cdp_listing(&Method::PUT, "/json/new/"));
        assert!(!is_cdp_listing(&Method::POST, "/json/version"));
        assert!(!is_cdp_listing(&Method::GET, "/json/protocol"));
        assert!(!is_cdp_listing(&Method::GET, "/devtools/page/x"));
    }

    #[test]
    fn cdp_version_is_rewritten() {
        let body = br#"{"Browser":"Chrome/120","webSocketDebuggerUrl":"ws://127.0.0.1:9222/devtools/browser/abc-1"}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite(false).body(body).unwrap()).unwrap();
        assert_eq!(
            out["webSocketDebuggerUrl"],
            format!("ws://runner.example:7070/sb/{ID}/p/9222/devtools/browser/abc-1?token=tok")
        );
        assert_eq!(out["Browser"], "Chrome/120");
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite(true).body(body).unwrap()).unwrap();
        assert!(out["webSocketDebuggerUrl"]
            .as_str()
            .unwrap()
            .starts_with("wss://runner.example:7070/sb/"));
    }

    #[test]
    fn cdp_list_is_rewritten() {
        let body = br#"[{"id":"P1","type":"page","url":"about:blank",
            "devtoolsFrontendUrl":"/devtools/inspector.html?ws=127.0.0.1:9222/devtools/page/P1",
            "webSocketDebuggerUrl":"ws://localhost:9222/devtools/page/P1"},
            {"id":"X","webSocketDebuggerUrl":"ws://10.0.0.1:9222/devtools/page/X"}]"#;
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite(true).body(body).unwrap()).unwrap();
        assert_eq!(
            out[0]["webSocketDebuggerUrl"],
            format!("wss://runner.example:7070/sb/{ID}/p/9222/devtools/page/P1?token=tok")
        );
        assert_eq!(
            out[0]["devtoolsFrontendUrl"],
            format!(
                "/sb/{ID}/p/9222/devtools/inspector.html?wss=runner.example:7070/sb/{ID}/p/9222/devtools/page/P1?token=tok"
            )
        );
        // Not the sandbox's loopback: untouched.
        assert_eq!(
            out[1]["webSocketDebuggerUrl"],
            "ws://10.0.0.1:9222/devtools/page/X"
        );
        // Not JSON: passed on as is.
        assert!(rewrite(false).body(b"<html>").is_none());
    }

    #[test]
    fn loopback_authorities() {
        for a in [
            "127.0.0.1:9222",
            "localhost:9222",
            "[::1]:9222",
            "127.0.0.1",
            "localhost",
        ] {
            assert!(is_loopback_authority(a), "{a}");
        }
        for a in ["10.0.0.1:9222", "example.com", "[fe80::1]:1"] {
            assert!(!is_loopback_authority(a), "{a}");
        }
    }
}
