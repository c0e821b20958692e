//! Schemathesis against a live runner: property-based requests generated from `/v1/openapi.json`
//! (valid and invalid ones), checking that the runner never answers 5xx for input, answers only
//! documented statuses and content types with bodies that match their schemas, and rejects invalid
//! data with a 4xx.
//!
//! `VIVARIUM_SCHEMATHESIS` names the `schemathesis` executable (scripts/test.sh installs it in its
//! venv). Without it the test is skipped, except under `CI=true`, where it fails.
//!
//! The fixture: one busybox sandbox whose id every generated `{id}` path parameter takes, so the
//! operations on a sandbox reach a real one; busybox is also the default image, so generated
//! creates that name no image make real sandboxes. Two operations are left out because they would
//! destroy the fixture and turn the rest of the run into 404s: `DELETE /v1/runs/{id}` and
//! `POST /v1/runs/{id}/timeout` (a generated `timeout_s: 1` expires it); and `POST
//! /v1/images/default`, which builds or imports the desktop image (minutes, gigabytes). Registries
//! are made unreachable (a proxy on a closed loopback port), so generated image references fail at
//! once instead of reaching out to the internet.
//!
//! Checks: all of schemathesis's, except `positive_data_acceptance` (a request valid by the
//! schema can still be refused: an image reference that names no image, a relative path, a port
//! nothing listens on), and, for `GET /v1/runs` only, `negative_data_rejection`: its `metadata`
//! filter is a deepObject of strings, and schemathesis's "wrong type" values for it (`18`, `true`)
//! are the same strings on the wire. The malformed filters that can be told apart are tested in
//! tests/faults.rs and in the runner's unit tests.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{Runner, KEY};
use vivarium_api::{CreateRunRequest, RunState};

const IMAGE: &str = "local/busybox:1.0";

fn schemathesis() -> Option<String> {
    match std::env::var("VIVARIUM_SCHEMATHESIS") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("VIVARIUM_SCHEMATHESIS is not set (scripts/test.sh installs schemathesis)")
        }
        _ => {
            eprintln!("VIVARIUM_SCHEMATHESIS unset: skipping the schemathesis run");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let Some(st) = schemathesis() else { return };
    let mut r = Runner::start_with_env(&[
        ("VIVARIUM_DEFAULT_IMAGE", &format!("docker.io/{IMAGE}")),
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
        ("HTTP_PROXY", "http://127.0.0.1:9"),
        ("ALL_PROXY", "http://127.0.0.1:9"),
    ])
    .await;
    // Generated creates make real sandboxes (a hundred or more): a /21 (512 sandboxes) instead of
    // the harness's /24, so the run never meets `capacity_exhausted`.
    r.kill9();
    r.subnet = format!("10.90.{}.0/21", (std::process::id() % 32) * 8);
    r.spawn().await;
    r.import_busybox(IMAGE).await;
    let fixture = r
        .client
        .create_run(&CreateRunRequest {
            image: Some(IMAGE.into()),
            vcpus: Some(1.0),
            mem_mib: Some(256),
            timeout_s: Some(3600),
            ..Default::default()
        })
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[checks]\npositive_data_acceptance.enabled = false\nmax_response_time = 30\n\n\
             [parameters]\n\"path.id\" = \"{}\"\n\n\
             [[operations]]\ninclude-operation-id = \"list\"\n\
             checks.negative_data_rejection.enabled = false\n",
            fixture.id
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", r.url()))
        .args(["--url", &r.url()])
        .args(["--max-examples", "10"])
        .args(["--max-time", "100"])
        .args(["--request-timeout", "60"])
        // One worker: hypothesis's source introspection is not thread-safe (it raised internal
        // errors with two).
        .args(["--workers", "1"])
        .args(["--seed", "8"])
        .args(["--suppress-health-check", "filter_too_much,too_slow"])
        .args(["--exclude-operation-id", "delete"])
        .args(["--exclude-operation-id", "set_timeout"])
        .args(["--exclude-operation-id", "prepare_default_image"])
        .args(["--header", &format!("Authorization: Bearer {KEY}")])
        .arg("--no-color")
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("running {st}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "schemathesis took {:.0} s:\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{text}\nrunner log:\n{}",
        out.status,
        r.log_text()
    );
    // The fixture was not disturbed.
    let after = r.client.get_run(&fixture.id).await.unwrap();
    assert_eq!(after.state, RunState::Running);
}
