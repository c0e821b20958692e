//! MCP over streamable HTTP (rmcp's `StreamableHttpService`, a tower service to mount in axum).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use vivarium_client::Client;

use crate::VivariumMcp;

/// The MCP endpoint as a tower service (mount it with `Router::route_service("/mcp", …)`).
pub type McpHttpService = StreamableHttpService<VivariumMcp, LocalSessionManager>;

fn config() -> StreamableHttpServerConfig {
    // rmcp by default accepts only loopback `Host` headers (a guard against DNS rebinding of
    // unauthenticated local servers). Vivarium mounts `/mcp` behind its bearer key, which a
    // rebinding page cannot present, and runners are reached under any host name, so the host
    // allowlist is off.
    StreamableHttpServerConfig::default().disable_allowed_hosts()
}

/// MCP over streamable HTTP talking to the runner behind `client`.
pub fn http_service(client: Client) -> McpHttpService {
    StreamableHttpService::new(
        move || Ok(VivariumMcp::new(client.clone())),
        Default::default(),
        config(),
    )
}

/// MCP over streamable HTTP for the runner itself: `api` is the runner's own API router (serving
/// `/v1/...` with its key check) and `api_key` its key.
///
/// The tools call that router through [`vivarium_client::Client`] over a private listener on an
/// ephemeral 127.0.0.1 port, opened on the first MCP session. Why a loopback listener rather than
/// the runner's public address: the runner's router does not know the address it is served on
/// (and `--public-url` may sit behind a proxy or TLS); why HTTP at all rather than calling the
/// runner's internals: the tools then take exactly the path every SDK takes (auth, validation,
/// error bodies), through the one Rust client, at ~0.1 ms per call on loopback.
pub fn in_process_http_service(api: axum::Router, api_key: String) -> McpHttpService {
    let loopback = Arc::new(Loopback {
        api,
        api_key,
        client: Mutex::new(None),
    });
    StreamableHttpService::new(
        move || loopback.client().map(VivariumMcp::new),
        Default::default(),
        config(),
    )
}

struct Loopback {
    api: axum::Router,
    api_key: String,
    client: Mutex<Option<Client>>,
}

impl Loopback {
    /// The client of the private listener, starting it on first use. Called by rmcp for each new
    /// MCP session, inside the runtime that serves the request.
    fn client(&self) -> std::io::Result<Client> {
        let mut slot = self
            .client
            .lock()
            .map_err(|_| std::io::Error::other("MCP loopback state poisoned by a panic"))?;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let api = self.api.clone();
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, api).await {
                tracing::error!(%addr, error = %e, "MCP loopback listener stopped");
            }
        });
        tracing::info!(%addr, "MCP endpoint reaches the API over a private loopback listener");
        let client = Client::new(format!("http://{addr}"), Some(self.api_key.clone()));
        *slot = Some(client.clone());
        Ok(client)
    }
}
