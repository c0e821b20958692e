//! The MCP server through rmcp's own client over an in-process pipe: the handshake, the tool list
//! and how failures are reported. No runner is needed: the client points at a closed port, so every
//! tool that reaches the runner fails for real, which is what the error path must report.
//! (End-to-end tests against a live runner and a desktop: `tests/run.sh`, Python MCP client.)

use rmcp::model::{CallToolRequestParams, ContentBlock};
use rmcp::ServiceExt;
use vivarium_client::Client;
use vivarium_mcp::VivariumMcp;

fn closed_port() -> u16 {
    // Bound and dropped: nothing listens there afterwards.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| match c {
            ContentBlock::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn tools_listed_and_failures_are_tool_errors() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let (server_io, client_io) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(async move {
        let running = VivariumMcp::new(Client::new(url, Some("k".into())))
            .serve(server_io)
            .await
            .expect("server handshake");
        running.waiting().await.expect("server task");
    });
    let client = ().serve(client_io).await.expect("client handshake");

    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|s| s.name.as_str()),
        Some("vivarium")
    );
    assert!(info.capabilities.tools.is_some());

    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.len() >= 24, "{} tools", tools.len());
    let shot = tools.iter().find(|t| t.name == "screenshot").unwrap();
    assert_eq!(
        serde_json::Value::Object((*shot.input_schema).clone())["required"],
        serde_json::json!(["sandbox_id"])
    );

    // The runner cannot be reached: a tool error naming where it tried.
    let r = client
        .call_tool(
            CallToolRequestParams::new("screenshot")
                .with_arguments(args(serde_json::json!({"sandbox_id": "abc"}))),
        )
        .await
        .expect("tools/call");
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("talking to the runner"), "{}", text(&r));

    // Arguments that do not fit the schema: a tool error, not a protocol error.
    let r = client
        .call_tool(
            CallToolRequestParams::new("left_click")
                .with_arguments(args(serde_json::json!({"x": 1}))),
        )
        .await
        .expect("tools/call");
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("sandbox_id"), "{}", text(&r));

    // Checked locally before any request.
    let r = client
        .call_tool(CallToolRequestParams::new("drag").with_arguments(args(
            serde_json::json!({"sandbox_id": "abc", "path": [[1, 2]]}),
        )))
        .await
        .expect("tools/call");
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("two points"), "{}", text(&r));

    // Unknown tools are protocol errors.
    assert!(client
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await
        .is_err());

    client.cancel().await.expect("client shutdown");
    server.await.expect("server task joins");
}
