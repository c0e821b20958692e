//! Rust client for the vivarium runner's HTTP API (`/v1`). The CLI, the integration tests and the
//! benchmarks all go through it, so they exercise exactly what users call.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
pub use vivarium_api as api;
use vivarium_api::*;

/// Environment variable holding the runner's URL (default `http://127.0.0.1:7070`).
pub const URL_ENV: &str = "VIVARIUM_URL";
/// Environment variable holding the API key.
pub const KEY_ENV: &str = "VIVARIUM_API_KEY";
pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("talking to the runner at {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    /// The runner answered with an error body.
    #[error("{status}: {error}")]
    Api { status: u16, error: ErrorDetail },
    #[error("unexpected answer from the runner ({status}): {body}")]
    Unexpected { status: u16, body: String },
    #[error("reading {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

impl ClientError {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The API's error detail, if the runner sent one.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: impl Into<String>, api_key: Option<String>) -> Self {
        let base = base_url.into().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(16)
            .build()
            .unwrap_or_default();
        Self {
            base,
            key: api_key,
            http,
        }
    }

    /// `VIVARIUM_URL` (or the default) and `VIVARIUM_API_KEY`.
    pub fn from_env() -> Self {
        let url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_string());
        Self::new(url, std::env::var(KEY_ENV).ok())
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.base, path));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().await.map_err(|source| ClientError::Http {
            url: self.base.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => ClientError::Api {
                status,
                error: e.error,
            },
            Err(_) => ClientError::Unexpected { status, body },
        })
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let resp = self.send(rb).await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            url: self.base.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.json(self.req(Method::POST, path).json(body)).await
    }

    async fn no_content(&self, rb: RequestBuilder) -> Result<()> {
        self.send(rb).await.map(drop)
    }

    pub async fn health(&self) -> Result<Health> {
        self.json(self.req(Method::GET, "/healthz")).await
    }

    // ---- sandboxes ----

    pub async fn create_run(&self, req: &CreateRunRequest) -> Result<Run> {
        self.post("/v1/runs", req).await
    }

    pub async fn list_runs(&self, metadata: &BTreeMap<String, String>) -> Result<Vec<Run>> {
        let q: Vec<(String, String)> = metadata
            .iter()
            .map(|(k, v)| (format!("metadata.{k}"), v.clone()))
            .collect();
        let list: RunList = self
            .json(self.req(Method::GET, "/v1/runs").query(&q))
            .await?;
        Ok(list.runs)
    }

    pub async fn get_run(&self, id: &str) -> Result<Run> {
        self.json(self.req(Method::GET, &format!("/v1/runs/{id}")))
            .await
    }

    pub async fn delete_run(&self, id: &str) -> Result<()> {
        self.no_content(self.req(Method::DELETE, &format!("/v1/runs/{id}")))
            .await
    }

    pub async fn set_timeout(&self, id: &str, timeout_s: u64) -> Result<Run> {
        self.post(
            &format!("/v1/runs/{id}/timeout"),
            &SetTimeoutRequest { timeout_s },
        )
        .await
    }

    // ---- processes ----

    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse> {
        self.post(&format!("/v1/runs/{id}/exec"), req).await
    }

    /// Runs `sh -c command` and returns its result.
    pub async fn sh(&self, id: &str, command: &str) -> Result<ExecResponse> {
        self.exec(
            id,
            &ExecRequest {
                command: Some(command.into()),
                ..Default::default()
            },
        )
        .await
    }

    /// Output as it is produced.
    pub async fn exec_stream(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<impl Stream<Item = Result<ExecEvent>>> {
        let resp = self
            .send(
                self.req(Method::POST, &format!("/v1/runs/{id}/exec/stream"))
                    .json(req),
            )
            .await?;
        let base = self.base.clone();
        let bytes = resp.bytes_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::StreamReader::new(bytes);
        let lines =
            tokio_util::codec::FramedRead::new(reader, tokio_util::codec::LinesCodec::new());
        Ok(lines.map(move |line| {
            let line = line.map_err(|e| ClientError::Unexpected {
                status: 200,
                body: format!("{base}: {e}"),
            })?;
            serde_json::from_str::<ExecEvent>(&line).map_err(|_| ClientError::Unexpected {
                status: 200,
                body: line,
            })
        }))
    }

    pub async fn spawn(&self, id: &str, req: &ExecRequest) -> Result<Process> {
        self.post(&format!("/v1/runs/{id}/processes"), req).await
    }

    pub async fn processes(&self, id: &str) -> Result<Vec<Process>> {
        let l: ProcessList = self
            .json(self.req(Method::GET, &format!("/v1/runs/{id}/processes")))
            .await?;
        Ok(l.processes)
    }

    pub async fn signal(
        &self,
        id: &str,
        pid: u32,
        signal: impl Into<serde_json::Value>,
    ) -> Result<()> {
        let body = SignalRequest {
            signal: signal.into(),
        };
        self.no_content(
            self.req(
                Method::POST,
                &format!("/v1/runs/{id}/processes/{pid}/signal"),
            )
            .json(&body),
        )
        .await
    }

    pub async fn wait(&self, id: &str, pid: u32, timeout_s: Option<f64>) -> Result<Process> {
        self.post(
            &format!("/v1/runs/{id}/processes/{pid}/wait"),
            &serde_json::json!({ "timeout_s": timeout_s }),
        )
        .await
    }

    // ---- files ----

    pub async fn read_file(&self, id: &str, path: &str) -> Result<Bytes> {
        let resp = self
            .send(
                self.req(Method::GET, &format!("/v1/runs/{id}/files"))
                    .query(&[("path", path)]),
            )
            .await?;
        resp.bytes().await.map_err(|source| ClientError::Http {
            url: self.base.clone(),
            source,
        })
    }

    /// Streams a file out of the sandbox into `dest` on this machine.
    pub async fn download(&self, id: &str, path: &str, dest: &Path) -> Result<u64> {
        let resp = self
            .send(
                self.req(Method::GET, &format!("/v1/runs/{id}/files"))
                    .query(&[("path", path)]),
            )
            .await?;
        let ferr = |source| ClientError::File {
            path: dest.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(ferr)?;
        let mut reader =
            tokio_util::io::StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other));
        let n = tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(ferr)?;
        Ok(n)
    }

    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: impl Into<Bytes>,
        mode: Option<u32>,
    ) -> Result<FileInfo> {
        let mut q = vec![("path", path.to_string())];
        if let Some(m) = mode {
            q.push(("mode", format!("{m:o}")));
        }
        self.json(
            self.req(Method::PUT, &format!("/v1/runs/{id}/files"))
                .query(&q)
                .body(data.into()),
        )
        .await
    }

    /// Streams a local file into the sandbox.
    pub async fn upload(
        &self,
        id: &str,
        src: &Path,
        path: &str,
        mode: Option<u32>,
    ) -> Result<FileInfo> {
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|source| ClientError::File {
                path: src.display().to_string(),
                source,
            })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ));
        let mut q = vec![("path", path.to_string())];
        if let Some(m) = mode {
            q.push(("mode", format!("{m:o}")));
        }
        self.json(
            self.req(Method::PUT, &format!("/v1/runs/{id}/files"))
                .query(&q)
                .body(body),
        )
        .await
    }

    pub async fn list_files(&self, id: &str, path: &str, depth: u32) -> Result<Vec<FileInfo>> {
        let l: FileList = self
            .json(
                self.req(Method::GET, &format!("/v1/runs/{id}/files/list"))
                    .query(&[("path", path), ("depth", &depth.to_string())]),
            )
            .await?;
        Ok(l.entries)
    }

    pub async fn stat(&self, id: &str, path: &str) -> Result<FileInfo> {
        self.json(
            self.req(Method::GET, &format!("/v1/runs/{id}/files/stat"))
                .query(&[("path", path)]),
        )
        .await
    }

    pub async fn remove_file(&self, id: &str, path: &str, recursive: bool) -> Result<()> {
        let q = [
            ("path", path),
            ("recursive", if recursive { "true" } else { "false" }),
        ];
        self.no_content(
            self.req(Method::DELETE, &format!("/v1/runs/{id}/files"))
                .query(&q),
        )
        .await
    }

    pub async fn mkdir(&self, id: &str, path: &str) -> Result<()> {
        let body = MkdirRequest {
            path: path.into(),
            parents: true,
            mode: None,
        };
        self.no_content(
            self.req(Method::POST, &format!("/v1/runs/{id}/files/mkdir"))
                .json(&body),
        )
        .await
    }

    // ---- images ----

    pub async fn build_image(&self, image: &str) -> Result<Image> {
        self.post(
            "/v1/images/build",
            &BuildImageRequest {
                image: image.into(),
            },
        )
        .await
    }

    /// Pulls with progress lines.
    pub async fn build_image_progress(
        &self,
        image: &str,
    ) -> Result<impl Stream<Item = Result<ImageProgress>>> {
        let resp = self
            .send(
                self.req(Method::POST, "/v1/images/build")
                    .header(reqwest::header::ACCEPT, "application/x-ndjson")
                    .json(&BuildImageRequest {
                        image: image.into(),
                    }),
            )
            .await?;
        let reader =
            tokio_util::io::StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other));
        let lines =
            tokio_util::codec::FramedRead::new(reader, tokio_util::codec::LinesCodec::new());
        Ok(lines.map(|line| {
            let line = line.map_err(|e| ClientError::Unexpected {
                status: 200,
                body: e.to_string(),
            })?;
            serde_json::from_str(&line).map_err(|_| ClientError::Unexpected {
                status: 200,
                body: line,
            })
        }))
    }

    pub async fn list_images(&self) -> Result<Vec<Image>> {
        let l: ImageList = self.json(self.req(Method::GET, "/v1/images")).await?;
        Ok(l.images)
    }

    pub async fn remove_image(&self, reference: &str) -> Result<()> {
        self.no_content(self.req(Method::DELETE, &format!("/v1/images/{reference}")))
            .await
    }

    pub async fn import_image(&self, path: &str, tag: &str) -> Result<Image> {
        self.post(
            "/v1/images/import",
            &ImportImageRequest {
                path: path.into(),
                tag: tag.into(),
            },
        )
        .await
    }

    pub async fn push_image(&self, image: &str, target: &str) -> Result<serde_json::Value> {
        self.post(
            "/v1/images/push",
            &PushImageRequest {
                image: image.into(),
                target: target.into(),
            },
        )
        .await
    }

    // ---- desktop ----

    /// Runs one desktop action (`POST /v1/runs/{id}/desktop/{action}`). Screenshots come back with
    /// the image base64-encoded in `data`; [`Client::screenshot`] fetches raw bytes instead.
    pub async fn desktop_action(
        &self,
        id: &str,
        action: &desktop::DesktopAction,
    ) -> Result<desktop::ActionResult> {
        self.post(&format!("/v1/runs/{id}/desktop/{}", action.name()), action)
            .await
    }

    /// Runs several desktop actions in order in one request, stopping at the first error.
    pub async fn desktop_actions(
        &self,
        id: &str,
        actions: &[desktop::DesktopAction],
    ) -> Result<Vec<desktop::ActionResult>> {
        let batch = desktop::ActionBatch {
            actions: actions.to_vec(),
        };
        let r: desktop::BatchResult = self
            .post(&format!("/v1/runs/{id}/desktop/actions"), &batch)
            .await?;
        Ok(r.results)
    }

    /// The screen as an encoded image (`GET /v1/runs/{id}/desktop/screenshot`), no base64.
    pub async fn screenshot(
        &self,
        id: &str,
        format: desktop::ImageFormat,
        quality: Option<u8>,
    ) -> Result<Bytes> {
        let mut q: Vec<(&str, String)> = vec![(
            "format",
            match format {
                desktop::ImageFormat::Png => "png",
                desktop::ImageFormat::Jpeg => "jpeg",
                desktop::ImageFormat::Webp => "webp",
            }
            .to_string(),
        )];
        if let Some(quality) = quality {
            q.push(("quality", quality.to_string()));
        }
        let resp = self
            .send(
                self.req(Method::GET, &format!("/v1/runs/{id}/desktop/screenshot"))
                    .query(&q),
            )
            .await?;
        resp.bytes().await.map_err(|source| ClientError::Http {
            url: self.base.clone(),
            source,
        })
    }

    /// Raw request for tests that need to send malformed input.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        key: Option<&str>,
    ) -> Result<(StatusCode, String)> {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(b) = body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = rb.send().await.map_err(|source| ClientError::Http {
            url: self.base.clone(),
            source,
        })?;
        let status = resp.status();
        Ok((status, resp.text().await.unwrap_or_default()))
    }
}
