//! The runner's OpenAPI 3.1 document, served at `GET /v1/openapi.json`.
//!
//! It is generated from the handlers' `#[utoipa::path]` annotations and the `vivarium-api` types'
//! `ToSchema` derives, so request and response schemas cannot drift from the code. The tests below
//! read the router's source and fail when a registered route (or one of its methods) is missing
//! from the document, when an operation's security disagrees with the router's `require_key`
//! layer, or when the document is not structurally valid OpenAPI 3.1.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Required;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use vivarium_api::ErrorBody;

use super::{desktop, exec, files, images, runs};
use crate::error::ApiError;

/// Name of the security scheme of every `/v1` route except health and this document.
pub const BEARER: &str = "bearer";
/// Name of the security scheme of the port proxy's `?token=` (the sandbox's `access_token`).
pub const ACCESS_TOKEN: &str = "access_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vivarium",
        description = "The vivarium runner's HTTP API: sandboxes from OCI images, commands, files, \
                       desktop actions, images, and the port proxy. Every `/v1` route except \
                       `/v1/health` and `/v1/openapi.json` needs `Authorization: Bearer <API key>`. \
                       Errors are always `{\"error\": {\"code\", \"message\", \"field\"?}}`. \
                       JSON request bodies are at most 1 MiB (413 `payload_too_large` beyond); \
                       file contents go as the raw, streamed body of `PUT /v1/runs/{id}/files`, \
                       bounded by the sandbox's disk; `/mcp` takes up to 4 MiB."
    ),
    paths(
        super::health,
        serve,
        runs::create,
        runs::list,
        runs::get,
        runs::delete,
        runs::set_timeout,
        runs::logs,
        exec::exec,
        exec::exec_stream,
        exec::spawn,
        exec::processes,
        exec::process,
        exec::signal,
        exec::wait,
        files::download,
        files::upload,
        files::write_json,
        files::remove,
        files::list,
        files::stat,
        files::mkdir,
        desktop::batch,
        desktop::screenshot,
        desktop::screenshot_json,
        desktop::single,
        images::list,
        images::build,
        images::import,
        images::push,
        images::get,
        images::default_status,
        images::prepare_default,
        images::remove,
        crate::computer::anthropic,
        crate::computer::anthropic_tool_def,
        crate::computer::openai,
        crate::computer::openai_tool_def,
        crate::proxy::proxy,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security, &Aliases, &Mcp, &Statuses, &CommonErrors),
    tags(
        (name = "runs", description = "Sandbox lifecycle"),
        (name = "exec", description = "Commands and background processes"),
        (name = "files", description = "The sandbox's filesystem"),
        (name = "desktop", description = "Screenshots, mouse, keyboard, clipboard, windows"),
        (name = "images", description = "The runner's image store"),
        (name = "proxy", description = "HTTP and WebSocket ports inside a sandbox (CDP, noVNC, your servers)"),
        (name = "computer", description = "Anthropic and OpenAI computer-use tool executors"),
        (name = "mcp", description = "Model Context Protocol server (streamable HTTP)"),
        (name = "meta", description = "Health and this document"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The runner's OpenAPI 3.1 document (this one).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json",
         body = Object),
    )
)]
pub async fn serve() -> Response {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    match JSON.get_or_init(|| document().to_json().map_err(|e| e.to_string())) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        Err(e) => {
            ApiError::internal(format!("serialising the OpenAPI document: {e}")).into_response()
        }
    }
}

/// The security schemes the operations name.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The runner's API key (`VIVARIUM_API_KEY`, or `<data-dir>/api-key`)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ACCESS_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "A sandbox's `access_token` (opens only that sandbox's port proxy; the runner \
                 then sets a cookie so relative links keep working). The API key as a bearer \
                 token works too.",
            ))),
        );
    }
}

/// Routes served by a handler that is annotated under another path: the copy gets its own
/// operation ids (they must be unique in a document).
struct Aliases;

/// `(documented path, alias path, operation id suffix, drop this path parameter)`
const ALIASES: &[(&str, &str, &str, Option<&str>)] = &[
    ("/v1/health", "/healthz", "_healthz", None),
    ("/v1/images/build", "/v1/images/pull", "_pull", None),
    (
        "/sb/{id}/p/{port}/{rest}",
        "/sb/{id}/p/{port}",
        "_root",
        Some("rest"),
    ),
    (
        "/sb/{id}/p/{port}/{rest}",
        "/sb/{id}/p/{port}/",
        "_slash",
        Some("rest"),
    ),
];

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (from, to, suffix, drop_param) in ALIASES {
            let Some(mut item) = openapi.paths.paths.get(*from).cloned() else {
                // The test `aliases_name_documented_paths` catches this; never panic in the server.
                tracing::warn!(from, "OpenAPI alias of an undocumented path");
                continue;
            };
            for_each_operation(&mut item, |op| {
                op.operation_id = op.operation_id.take().map(|id| format!("{id}{suffix}"));
                if let (Some(name), Some(params)) = (drop_param, op.parameters.as_mut()) {
                    params.retain(|p| !matches!(p, RefOr::T(p) if p.name == *name));
                }
            });
            openapi.paths.paths.insert((*to).to_string(), item);
        }
        // One handler documented for several methods (the proxy's `method(...)`) repeats its
        // operation id; suffix each with its method.
        for item in openapi.paths.paths.values_mut() {
            let methods = item_methods(item).len();
            if methods > 1 {
                let mut ids = std::collections::BTreeMap::<String, usize>::new();
                for_each_operation(item, |op| {
                    if let Some(id) = &op.operation_id {
                        *ids.entry(id.clone()).or_default() += 1;
                    }
                });
                for (method, op) in item_operations_mut(item) {
                    if let Some(id) = op.operation_id.as_mut() {
                        if ids.get(id.as_str()).copied().unwrap_or(0) > 1 {
                            *id = format!("{id}_{method}");
                        }
                    }
                }
            }
        }
    }
}

/// `/mcp` is a tower service from `vivarium-mcp` (the MCP streamable HTTP transport), not a handler
/// the path macro can annotate, so its operations are built here.
struct Mcp;

impl Modify for Mcp {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let json_rpc = || {
            ContentBuilder::new()
                .schema(Some(Schema::Object(
                    ObjectBuilder::new()
                        .description(Some("A JSON-RPC 2.0 message (or batch) of MCP"))
                        .build(),
                )))
                .build()
        };
        let op = |id: &str, summary: &str, ok: &str| {
            OperationBuilder::new()
                .operation_id(Some(id))
                .tag("mcp")
                .summary(Some(summary))
                .security(SecurityRequirement::new(BEARER, Vec::<String>::new()))
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description(ok)
                        .content("application/json", json_rpc())
                        .content("text/event-stream", ContentBuilder::new().build())
                        .build(),
                )
                .response(
                    "400",
                    ResponseBuilder::new()
                        .description("Not a valid MCP request")
                        .build(),
                )
                .response(
                    "404",
                    ResponseBuilder::new()
                        .description("Unknown or expired `Mcp-Session-Id`")
                        .build(),
                )
                .response(
                    "405",
                    ResponseBuilder::new()
                        .description("The server does not offer this method (e.g. no SSE stream)")
                        .build(),
                )
                .response(
                    "406",
                    ResponseBuilder::new()
                        .description(
                            "`Accept` must name `application/json` and/or `text/event-stream` as \
                             the transport requires",
                        )
                        .build(),
                )
        };
        let post = op(
            "mcp_post",
            "Send MCP JSON-RPC messages (initialize, tools/list, tools/call, …)",
            "The response, as JSON or as an SSE stream",
        )
        .request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", json_rpc())
                .required(Some(Required::True))
                .build(),
        ))
        .build();
        let get = op(
            "mcp_get",
            "Open the server-to-client SSE stream of a session",
            "An SSE stream",
        )
        .build();
        let delete = op("mcp_delete", "End an MCP session", "The session ended").build();
        let mut item = PathItem::new(HttpMethod::Post, post);
        item.get = Some(get);
        item.delete = Some(delete);
        openapi.paths.paths.insert("/mcp".into(), item);
    }
}

/// Answers that follow from an operation's shape, added where its annotation does not already
/// document them, so the document lists every status the runner can give:
/// - a parameter or a body that does not decode or fails a check: 400;
/// - a request body: 413 past its limit (JSON: 1 MiB; an upload: the sandbox's disk);
/// - a sandbox in the path: 404 (no such sandbox) and 409 (it is not running: `failed` with the
///   reason, or its agent went away);
/// - a request the sandbox's agent serves: 403 (`permission_denied`), 408 (`timeout`), 503
///   (`resource_exhausted`), 504 (`sandbox_timeout`: a wedged agent) and 507 (`no_space`);
/// - the port proxy: any other status is the upstream server's own answer.
///
/// And a JSON request body whose fields are all optional is not required: an empty body is read as
/// `{}`.
struct Statuses;

/// Whether `body` is JSON of a component schema without required fields.
fn all_optional(
    body: &utoipa::openapi::request_body::RequestBody,
    schemas: &std::collections::BTreeMap<String, RefOr<Schema>>,
) -> bool {
    let Some(RefOr::T(content)) = body.content.get("application/json") else {
        return false;
    };
    let Some(RefOr::Ref(r)) = &content.schema else {
        return false;
    };
    let name = r.ref_location.rsplit('/').next().unwrap_or_default();
    matches!(schemas.get(name), Some(RefOr::T(Schema::Object(o))) if o.required.is_empty())
}

impl Modify for Statuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        let schemas = openapi
            .components
            .as_ref()
            .map(|c| c.schemas.clone())
            .unwrap_or_default();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/mcp" {
                continue;
            }
            let sandbox = path.starts_with("/v1/runs/{id}");
            let agent = path.starts_with("/v1/runs/{id}/")
                && !["/v1/runs/{id}/timeout", "/v1/runs/{id}/logs"].contains(&path.as_str());
            let proxy = path.starts_with("/sb/");
            for_each_operation(item, |op| {
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let has_body = op.request_body.is_some();
                if let Some(RefOr::T(body)) = op.request_body.as_mut() {
                    if all_optional(body, &schemas) {
                        body.required = Some(Required::False);
                    }
                }
                let r = &mut op.responses.responses;
                let mut add = |status: &str, description: &str| {
                    r.entry(status.to_string())
                        .or_insert_with(|| error(description));
                };
                if has_params || has_body {
                    add(
                        "400",
                        "A parameter or field is invalid (`error.field` names it)",
                    );
                }
                if has_body {
                    add(
                        "413",
                        "The request body is too large (`payload_too_large`): JSON bodies are at \
                         most 1 MiB, uploads at most the sandbox's disk",
                    );
                }
                if sandbox {
                    add("404", "No such sandbox");
                    add(
                        "409",
                        "The sandbox is not running: `sandbox_failed` (it died; `error.reason` and \
                         the run's `failure` say why) or `sandbox_unavailable` (its agent does not \
                         answer)",
                    );
                }
                if agent {
                    add(
                        "403",
                        "The sandbox refused the operation (`permission_denied`)",
                    );
                    add("408", "The operation timed out in the sandbox (`timeout`)");
                    add(
                        "503",
                        "The sandbox is at its process or memory limit (`resource_exhausted`); \
                         retrying later can succeed",
                    );
                    add("507", "The sandbox's disk is full (`no_space`)");
                    add(
                        "504",
                        "The sandbox's agent did not answer in time (`sandbox_timeout`)",
                    );
                }
                if proxy {
                    r.entry("default".to_string()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description("The upstream server's own answer (any status)")
                                .build(),
                        )
                    });
                }
            });
        }
    }
}

/// Answers every operation can give: 401 on the key-protected ones, 500 everywhere. Added here so
/// no annotation can forget them.
struct CommonErrors;

const UNAUTHORIZED: &str = "Unauthorized";
const INTERNAL: &str = "Internal";

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error_response = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.responses.insert(
            UNAUTHORIZED.into(),
            RefOr::T(error_response(
                "Missing or wrong credentials (`unauthorized`)",
            )),
        );
        components.responses.insert(
            INTERNAL.into(),
            RefOr::T(error_response("The runner failed (`internal`)")),
        );
        for item in openapi.paths.paths.values_mut() {
            for_each_operation(item, |op| {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let responses = &mut op.responses.responses;
                if secured {
                    responses
                        .entry("401".into())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(UNAUTHORIZED)));
                }
                responses
                    .entry("500".into())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name(INTERNAL)));
            });
        }
    }
}

fn item_operations_mut(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
}

fn for_each_operation(item: &mut PathItem, mut f: impl FnMut(&mut Operation)) {
    for (_, op) in item_operations_mut(item) {
        f(op);
    }
}

fn item_methods(item: &PathItem) -> Vec<&'static str> {
    [
        ("get", &item.get),
        ("put", &item.put),
        ("post", &item.post),
        ("delete", &item.delete),
        ("options", &item.options),
        ("head", &item.head),
        ("patch", &item.patch),
        ("trace", &item.trace),
    ]
    .into_iter()
    .filter(|(_, op)| op.is_some())
    .map(|(m, _)| m)
    .collect()
}

#[cfg(test)]
mod tests {
    //! The router is read from its source with `syn`: axum cannot list its routes at run time, and
    //! the source is the one table every engineer adds lines to.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use serde_json::Value;
    use syn::visit::Visit;
    use syn::{Expr, ExprCall, ExprMethodCall, Lit};

    use super::*;

    /// Methods a route answers for `any(...)`.
    const ANY: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    const METHOD_FNS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace", "any",
    ];

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    struct Route {
        /// OpenAPI form: `{*rest}` becomes `{rest}`.
        path: String,
        methods: BTreeSet<String>,
        /// Behind the `require_key` route layer.
        keyed: bool,
    }

    fn src_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    /// `crate::a::b` → the file of module `a::b`.
    fn module_file(segments: &[String]) -> PathBuf {
        let mut p = src_dir();
        for s in segments {
            p.push(s);
        }
        let flat = p.with_extension("rs");
        if flat.is_file() {
            flat
        } else {
            p.join("mod.rs")
        }
    }

    fn openapi_path(axum_path: &str) -> String {
        axum_path.replace("{*", "{")
    }

    /// The methods a method router expression (`post(a).get(b)`, `any(c)`) answers.
    fn methods_of(expr: &Expr) -> BTreeSet<String> {
        struct V(BTreeSet<String>);
        impl<'a> Visit<'a> for V {
            fn visit_expr_call(&mut self, c: &'a ExprCall) {
                if let Expr::Path(p) = &*c.func {
                    if let Some(last) = p.path.segments.last() {
                        self.add(&last.ident.to_string());
                    }
                }
                syn::visit::visit_expr_call(self, c);
            }
            fn visit_expr_method_call(&mut self, c: &'a ExprMethodCall) {
                self.add(&c.method.to_string());
                syn::visit::visit_expr_method_call(self, c);
            }
        }
        impl V {
            fn add(&mut self, name: &str) {
                if name == "any" {
                    self.0.extend(ANY.iter().map(|m| m.to_string()));
                } else if METHOD_FNS.contains(&name) {
                    self.0.insert(name.to_string());
                }
            }
        }
        let mut v = V(BTreeSet::new());
        // Only the outermost calls name methods; handler arguments are paths, not calls.
        v.visit_expr(expr);
        v.0
    }

    fn lit_str(e: &Expr) -> Option<String> {
        match e {
            Expr::Lit(l) => match &l.lit {
                Lit::Str(s) => Some(s.value()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Routes of a builder chain `Router::new().route(..).nest(..).merge(..)...`, in order.
    fn chain_routes(expr: &Expr, vars: &BTreeMap<String, Vec<Route>>, out: &mut Vec<Route>) {
        let Expr::MethodCall(mc) = expr else {
            return;
        };
        chain_routes(&mc.receiver, vars, out);
        let args: Vec<&Expr> = mc.args.iter().collect();
        match mc.method.to_string().as_str() {
            "route" => {
                let path = lit_str(args[0]).expect("route path must be a string literal");
                out.push(Route {
                    path: openapi_path(&path),
                    methods: methods_of(args[1]),
                    keyed: false,
                });
            }
            // A service answers the methods it chooses: the path must be documented with at
            // least one method, and any documented method counts as routed.
            "route_service" => {
                let path = lit_str(args[0]).expect("route path must be a string literal");
                out.push(Route {
                    path: openapi_path(&path),
                    methods: BTreeSet::new(),
                    keyed: false,
                });
            }
            "route_layer" => {
                let tokens = quote_tokens(args[0]);
                if tokens.contains("require_key") {
                    for r in out.iter_mut() {
                        r.keyed = true;
                    }
                }
            }
            "nest" => {
                let prefix = lit_str(args[0]).expect("nest prefix must be a string literal");
                let inner = match args[1] {
                    Expr::Path(p) => vars
                        .get(&p.path.segments.last().unwrap().ident.to_string())
                        .cloned()
                        .expect("nest of an unknown router variable"),
                    other => {
                        let mut v = Vec::new();
                        chain_routes(other, vars, &mut v);
                        v
                    }
                };
                out.extend(inner.into_iter().map(|r| Route {
                    path: format!("{prefix}{}", r.path),
                    ..r
                }));
            }
            "merge" => match args[0] {
                // Its own vector: a `route_layer` inside covers only the merged routes.
                inline @ Expr::MethodCall(_) => {
                    let mut merged = Vec::new();
                    chain_routes(inline, vars, &mut merged);
                    out.extend(merged);
                }
                Expr::Call(c) => {
                    let Expr::Path(p) = &*c.func else {
                        panic!("merge of an expression the test cannot follow")
                    };
                    let segs: Vec<String> = p
                        .path
                        .segments
                        .iter()
                        .map(|s| s.ident.to_string())
                        .collect();
                    let (func, module) = segs.split_last().unwrap();
                    let module: Vec<String> = match module.first().map(String::as_str) {
                        Some("crate") => module[1..].to_vec(),
                        Some("super") => module[1..].to_vec(),
                        _ => module.to_vec(),
                    };
                    out.extend(router_routes(&module_file(&module), func));
                }
                Expr::Path(p) => out.extend(
                    vars.get(&p.path.segments.last().unwrap().ident.to_string())
                        .cloned()
                        .expect("merge of an unknown router variable"),
                ),
                _ => panic!("merge of an expression the test cannot follow"),
            },
            "nest_service" => panic!(
                "nest_service({:?}, ..) registers routes the OpenAPI test cannot enumerate",
                lit_str(args[0])
            ),
            _ => {}
        }
    }

    fn quote_tokens(e: &Expr) -> String {
        use syn::__private::ToTokens;
        e.to_token_stream().to_string()
    }

    /// Every route registered by `fn <func>` in `file`, following `let` bindings, `nest` and
    /// `merge(module::router())`.
    fn router_routes(file: &Path, func: &str) -> Vec<Route> {
        let src = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let ast =
            syn::parse_file(&src).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        let f = ast
            .items
            .iter()
            .find_map(|i| match i {
                syn::Item::Fn(f) if f.sig.ident == func => Some(f),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no fn {func} in {}", file.display()));
        let mut vars = BTreeMap::new();
        let mut routes = Vec::new();
        for stmt in &f.block.stmts {
            match stmt {
                syn::Stmt::Local(l) => {
                    if let (syn::Pat::Ident(id), Some(init)) = (&l.pat, &l.init) {
                        let mut v = Vec::new();
                        chain_routes(&init.expr, &vars, &mut v);
                        vars.insert(id.ident.to_string(), v);
                    }
                }
                syn::Stmt::Expr(e, None) => chain_routes(e, &vars, &mut routes),
                _ => {}
            }
        }
        routes
    }

    fn registered() -> Vec<Route> {
        let routes = router_routes(&src_dir().join("routes/mod.rs"), "router");
        assert!(routes.len() > 20, "the router parser found only {routes:?}");
        routes
    }

    fn doc_json() -> Value {
        serde_json::from_str(&document().to_json().unwrap()).unwrap()
    }

    #[test]
    fn parser_reads_the_shapes_the_router_uses() {
        let routes = registered();
        let find = |p: &str| routes.iter().find(|r| r.path == p).cloned();
        let runs = find("/v1/runs").expect("/v1/runs");
        assert_eq!(runs.methods, BTreeSet::from(["get".into(), "post".into()]));
        assert!(runs.keyed);
        assert!(!find("/healthz").unwrap().keyed);
        let proxy = find("/sb/{id}/p/{port}/{rest}").expect("proxy routes are merged");
        assert_eq!(proxy.methods.len(), ANY.len());
        assert!(find("/v1/images/{reference}").is_some());
        if let Some(mcp) = find("/mcp") {
            assert!(mcp.keyed, "/mcp sits behind require_key");
        }
    }

    #[test]
    fn every_route_is_documented_with_its_methods() {
        let doc = doc_json();
        let paths = doc["paths"].as_object().unwrap();
        let mut missing = Vec::new();
        for r in registered() {
            let Some(item) = paths.get(&r.path) else {
                missing.push(format!("{} (all of {:?})", r.path, r.methods));
                continue;
            };
            if r.methods.is_empty() && !ANY.iter().any(|m| item.get(*m).is_some()) {
                missing.push(format!(
                    "{} (a service: document at least one method)",
                    r.path
                ));
            }
            for m in &r.methods {
                if item.get(m.as_str()).is_none() {
                    missing.push(format!("{} {}", m.to_uppercase(), r.path));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "routes registered in the router but missing from /v1/openapi.json (annotate the \
             handler with #[utoipa::path] and list it in ApiDoc): {missing:#?}"
        );
    }

    #[test]
    fn every_documented_operation_is_routed() {
        let doc = doc_json();
        let routes: BTreeMap<String, Route> = registered()
            .into_iter()
            .map(|r| (r.path.clone(), r))
            .collect();
        let mut extra = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in ANY {
                if item.get(*m).is_some()
                    && !routes
                        .get(path)
                        .is_some_and(|r| r.methods.is_empty() || r.methods.contains(*m))
                {
                    extra.push(format!("{} {path}", m.to_uppercase()));
                }
            }
        }
        assert!(extra.is_empty(), "documented but not routed: {extra:#?}");
    }

    #[test]
    fn security_matches_the_key_layer() {
        let doc = doc_json();
        let mut wrong = Vec::new();
        for r in registered() {
            let methods: Vec<String> = if r.methods.is_empty() {
                ANY.iter().map(|m| m.to_string()).collect()
            } else {
                r.methods.iter().cloned().collect()
            };
            for m in &methods {
                let Some(op) = doc["paths"][&r.path].get(m.as_str()) else {
                    continue;
                };
                let schemes: BTreeSet<String> = op["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|req| req.as_object().unwrap().keys().cloned())
                    .collect();
                let bearer_only = schemes == BTreeSet::from([BEARER.to_string()]);
                // The proxy is outside the key layer but takes the key or the access token.
                let proxy = r.path.starts_with("/sb/");
                if r.keyed != bearer_only && (r.keyed || !proxy) {
                    wrong.push(format!(
                        "{m} {} keyed={} security={schemes:?}",
                        r.path, r.keyed
                    ));
                }
                if r.path.starts_with("/sb/") && !schemes.contains(ACCESS_TOKEN) {
                    wrong.push(format!("{m} {}: the proxy takes the access token", r.path));
                }
                if r.keyed && op["responses"].get("401").is_none() {
                    wrong.push(format!("{m} {}: no 401", r.path));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Resolves a local `$ref` (`#/components/...`) as a JSON pointer into the document.
    fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        doc.pointer(pointer)
    }

    fn collect_refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.push((
                            at.to_string(),
                            v.as_str().unwrap_or("<not a string>").into(),
                        ));
                    } else {
                        collect_refs(v, &format!("{at}/{k}"), out);
                    }
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    collect_refs(v, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn document_is_structurally_valid_openapi_3_1() {
        let doc = doc_json();
        let version = doc["openapi"].as_str().unwrap();
        assert!(version.starts_with("3.1."), "openapi = {version}");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

        let mut refs = Vec::new();
        collect_refs(&doc, "#", &mut refs);
        assert!(
            refs.len() > 50,
            "expected schema refs, found {}",
            refs.len()
        );
        let dangling: Vec<_> = refs
            .iter()
            .filter(|(_, r)| resolve(&doc, r).is_none())
            .collect();
        assert!(
            dangling.is_empty(),
            "$refs that do not resolve: {dangling:#?}"
        );

        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        let mut op_ids = BTreeMap::<String, String>::new();
        let mut problems = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            assert!(path.starts_with('/'), "{path}");
            let templated: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_string)
                .collect();
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    ANY.contains(&method.as_str()),
                    "{method} {path}: unknown key"
                );
                let here = format!("{} {path}", method.to_uppercase());
                match op["operationId"].as_str() {
                    Some(id) => {
                        if let Some(prev) = op_ids.insert(id.to_string(), here.clone()) {
                            problems.push(format!("operationId {id} used by {prev} and {here}"));
                        }
                    }
                    None => problems.push(format!("{here}: no operationId")),
                }
                let responses = op["responses"].as_object();
                if responses.is_none_or(|r| r.is_empty()) {
                    problems.push(format!("{here}: no responses"));
                }
                for (status, resp) in responses.into_iter().flatten() {
                    let ok = status == "default"
                        || (status.len() == 3 && status.chars().all(|c| c.is_ascii_digit()));
                    if !ok {
                        problems.push(format!("{here}: bad status {status}"));
                    }
                    let resp = match resp.get("$ref").and_then(Value::as_str) {
                        Some(r) => resolve(&doc, r).unwrap_or(&Value::Null),
                        None => resp,
                    };
                    if !resp["description"].is_string() {
                        problems.push(format!("{here} {status}: no description"));
                    }
                }
                let params: Vec<&Value> =
                    op["parameters"].as_array().into_iter().flatten().collect();
                let path_params: BTreeSet<String> = params
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| {
                        if p["required"] != true {
                            problems
                                .push(format!("{here}: path parameter {} not required", p["name"]));
                        }
                        p["name"].as_str().unwrap().to_string()
                    })
                    .collect();
                if path_params != templated {
                    problems.push(format!(
                        "{here}: path parameters {path_params:?} but the template has {templated:?}"
                    ));
                }
                for p in &params {
                    let loc = p["in"].as_str().unwrap_or("");
                    if !["path", "query", "header", "cookie"].contains(&loc) {
                        problems.push(format!("{here}: parameter in {loc:?}"));
                    }
                }
                for req in op["security"].as_array().into_iter().flatten() {
                    for name in req.as_object().unwrap().keys() {
                        if !schemes.contains_key(name) {
                            problems.push(format!("{here}: unknown security scheme {name}"));
                        }
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn statuses_follow_from_each_operations_shape() {
        let doc = doc_json();
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            if path == "/mcp" {
                continue;
            }
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                let mut want = Vec::new();
                if op.get("requestBody").is_some() {
                    want.extend(["400", "413"]);
                }
                if path.starts_with("/v1/runs/{id}") {
                    want.extend(["404", "409"]);
                }
                for s in want {
                    if !responses.contains_key(s) {
                        missing.push(format!("{method} {path}: {s}"));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
        // The metadata filter is documented as the runner reads it.
        let p = &doc["paths"]["/v1/runs"]["get"]["parameters"][0];
        assert_eq!(
            (&p["name"], &p["style"], &p["explode"]),
            (&"metadata".into(), &"deepObject".into(), &true.into())
        );
        // All-optional bodies may be left out; others may not.
        assert_eq!(
            doc["paths"]["/v1/runs"]["post"]["requestBody"]["required"],
            false
        );
        assert_eq!(
            doc["paths"]["/v1/runs/{id}/timeout"]["post"]["requestBody"]["required"],
            true
        );
        // Limits are stated where a client reads them.
        let create = &doc["components"]["schemas"]["CreateRunRequest"]["properties"];
        assert_eq!(create["vcpus"]["minimum"], vivarium_api::limits::MIN_VCPUS);
        assert_eq!(create["vcpus"]["maximum"], vivarium_api::limits::MAX_VCPUS);
        assert_eq!(
            create["mem_mib"]["minimum"],
            vivarium_api::limits::MIN_MEM_MIB
        );
        assert_eq!(
            create["mem_mib"]["maximum"],
            vivarium_api::limits::MAX_MEM_MIB
        );
        assert_eq!(
            create["disk_mib"]["minimum"],
            vivarium_api::limits::MIN_DISK_MIB
        );
        assert_eq!(
            create["disk_mib"]["maximum"],
            vivarium_api::limits::MAX_DISK_MIB
        );
        assert_eq!(
            create["timeout_s"]["maximum"],
            vivarium_api::limits::MAX_TIMEOUT_S
        );
        assert_eq!(
            create["image"]["maxLength"],
            vivarium_api::limits::MAX_IMAGE_REF_BYTES
        );
    }

    #[test]
    fn aliases_name_documented_paths() {
        let doc = ApiDoc::openapi();
        for (from, to, _, _) in ALIASES {
            assert!(doc.paths.paths.contains_key(*from), "alias source {from}");
            assert!(doc.paths.paths.contains_key(*to), "alias {to}");
        }
        let doc = doc_json();
        assert_eq!(
            doc["paths"]["/v1/images/pull"]["post"]["operationId"],
            "build_image_pull"
        );
        assert!(doc["paths"]["/sb/{id}/p/{port}"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "rest"));
    }

    #[test]
    fn schemas_follow_the_wire_format() {
        let doc = doc_json();
        let schemas = &doc["components"]["schemas"];
        // Internally tagged enums: every variant names its tag.
        let actions = schemas["DesktopAction"]["oneOf"].as_array().expect("oneOf");
        let tags: BTreeSet<&str> = actions
            .iter()
            .filter_map(|v| v["properties"]["action"]["enum"][0].as_str())
            .collect();
        for t in [
            "click",
            "screenshot",
            "type",
            "key",
            "cursor_position",
            "set_resolution",
        ] {
            assert!(tags.contains(t), "DesktopAction tag {t} missing: {tags:?}");
        }
        assert_eq!(tags.len(), actions.len());
        // Field renames and docs come through.
        assert!(schemas["FileInfo"]["properties"]["type"].is_object());
        assert!(
            schemas["CreateRunRequest"]["properties"]["image"]["description"]
                .as_str()
                .unwrap()
                .contains("OCI image")
        );
        assert_eq!(
            schemas["ErrorBody"]["required"],
            serde_json::json!(["error"])
        );
    }

    /// Full validation against the official OpenAPI 3.1 JSON Schema with the Python
    /// `openapi-spec-validator` (`VIVARIUM_OAS_VALIDATOR` = its executable; scripts/test.sh installs
    /// it in a venv and sets it). Without the variable only the structural checks above run.
    #[test]
    fn document_passes_openapi_spec_validator() {
        let Ok(validator) = std::env::var("VIVARIUM_OAS_VALIDATOR") else {
            eprintln!("VIVARIUM_OAS_VALIDATOR unset: skipping openapi-spec-validator");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("openapi.json");
        std::fs::write(&file, document().to_pretty_json().unwrap()).unwrap();
        let out = std::process::Command::new(&validator)
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("running {validator}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "openapi-spec-validator: {text}");
        assert!(text.contains("OK"), "openapi-spec-validator: {text}");
    }

    #[tokio::test]
    async fn served_document_parses() {
        let resp = serve().await;
        assert_eq!(resp.status(), axum::http::StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, doc_json());
    }
}
