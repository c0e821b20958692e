//! The OpenAPI document served by a live runner: it parses, is OpenAPI 3.1, needs no key, and the
//! parameterless GET operations it documents answer one of their documented statuses with a body
//! that has the documented required fields.

mod common;

use serde_json::Value;

#[tokio::test]
async fn live_runner_serves_its_openapi_document() {
    let runner = common::Runner::start().await;
    let http = reqwest::Client::new();

    // No key needed: tools fetch the document before they have one.
    let resp = http
        .get(format!("{}/v1/openapi.json", runner.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = resp.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/runs",
        "/v1/runs/{id}/exec",
        "/v1/runs/{id}/desktop/actions",
        "/v1/images/{reference}",
        "/v1/openapi.json",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the served document"
        );
    }

    // Every documented GET without path parameters answers a documented status, and a JSON
    // object answer has the fields its schema requires.
    let mut checked = 0;
    for (path, item) in paths {
        let Some(op) = item.get("get") else { continue };
        if path.contains('{') {
            continue;
        }
        let keyed = op["security"].as_array().is_some_and(|s| !s.is_empty());
        let mut req = http.get(format!("{}{path}", runner.url()));
        if keyed {
            // Without the key: the documented 401.
            let resp = req.try_clone().unwrap().send().await.unwrap();
            assert_eq!(resp.status(), 401, "GET {path} without the key");
            assert!(
                op["responses"].get("401").is_some(),
                "GET {path}: 401 undocumented"
            );
            req = req.bearer_auth(common::KEY);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16().to_string();
        let documented = &op["responses"][&status];
        assert!(
            documented.is_object(),
            "GET {path} answered {status}, not in {:?}",
            op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>()
        );
        if let Some(schema_ref) =
            documented["content"]["application/json"]["schema"]["$ref"].as_str()
        {
            let schema = doc
                .pointer(schema_ref.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{schema_ref} does not resolve"));
            let body: Value = resp.json().await.unwrap();
            for field in schema["required"].as_array().into_iter().flatten() {
                let field = field.as_str().unwrap();
                assert!(
                    body.get(field).is_some(),
                    "GET {path}: required field {field} missing from {body}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} parameterless GETs checked");
}
