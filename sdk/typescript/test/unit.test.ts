/** Unit tests of the pure parts: error mapping, configuration, NDJSON framing. No runner needed. */

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  AuthenticationError,
  ConflictError,
  ConnectionConfig,
  InvalidArgumentError,
  NotFoundError,
  PayloadTooLargeError,
  SandboxFailedError,
  TimeoutError,
  VivariumError,
  errorFromResponse,
} from "../src/index.js";
import { sandboxInfo, type RunWire } from "../src/types.js";
import { ndjsonLines } from "../src/http.js";

const body = (code: string, message: string, field?: string) =>
  JSON.stringify({ error: field ? { code, message, field } : { code, message } });

test("runner error bodies map to their classes with code, field and message", () => {
  const inv = errorFromResponse(400, body("invalid_argument", "mem_mib must be ≥ 32", "mem_mib"));
  assert.ok(inv instanceof InvalidArgumentError && inv instanceof VivariumError && inv instanceof Error);
  assert.equal(inv.field, "mem_mib");
  assert.equal(inv.code, "invalid_argument");
  assert.equal(inv.status, 400);
  assert.match(inv.message, /mem_mib must be ≥ 32/);
  assert.equal(inv.name, "InvalidArgumentError");

  assert.ok(errorFromResponse(400, body("unpinned_tag", "pin a tag", "image")) instanceof InvalidArgumentError);
  assert.ok(errorFromResponse(401, body("unauthorized", "bad key")) instanceof AuthenticationError);
  assert.ok(errorFromResponse(404, body("not_found", "no run x")) instanceof NotFoundError);
  assert.ok(errorFromResponse(404, body("image_not_found", "no image")) instanceof NotFoundError);
  assert.ok(errorFromResponse(408, body("timeout", "slow")) instanceof TimeoutError);
  assert.ok(errorFromResponse(409, body("already_exists", "exists")) instanceof ConflictError);
  const internal = errorFromResponse(500, body("internal", "boom"));
  assert.equal(internal.constructor, VivariumError);
  const odd = errorFromResponse(502, "<html>bad gateway</html>");
  assert.equal(odd.constructor, VivariumError);
  assert.match(odd.message, /HTTP 502.*bad gateway/);
  assert.ok(errorFromResponse(404, "") instanceof NotFoundError);
});

test("a failed sandbox's errors and info name the failure's reason", () => {
  const failed = errorFromResponse(
    409,
    JSON.stringify({ error: { code: "sandbox_failed", reason: "oom_killed", message: "sandbox x is failed" } }),
  );
  assert.ok(failed instanceof SandboxFailedError && failed instanceof ConflictError);
  assert.equal((failed as SandboxFailedError).reason, "oom_killed");
  assert.ok(errorFromResponse(413, body("payload_too_large", "too big", "body")) instanceof PayloadTooLargeError);
  const wire = {
    id: "x",
    state: "failed",
    image: "i",
    image_digest: "d",
    vcpus: 1,
    mem_mib: 64,
    network: "nat",
    env: {},
    metadata: {},
    created_at: "2026-01-01T00:00:00Z",
    expires_at: "2026-01-01T00:05:00Z",
    failure: { reason: "killed", message: "killed by signal 9", at: "2026-01-01T00:01:00Z", signal: 9 },
    on_failure: "keep",
  } satisfies RunWire;
  const info = sandboxInfo(wire);
  assert.equal(info.state, "failed");
  assert.equal(info.failure?.reason, "killed");
  assert.equal(info.failure?.signal, 9);
  assert.equal(info.onFailure, "keep");
});

test("connection settings come from options, then the environment, then defaults", () => {
  const saved = { url: process.env["VIVARIUM_URL"], key: process.env["VIVARIUM_API_KEY"] };
  try {
    delete process.env["VIVARIUM_URL"];
    delete process.env["VIVARIUM_API_KEY"];
    const d = new ConnectionConfig();
    assert.equal(d.url, "http://127.0.0.1:7070");
    assert.equal(d.apiKey, undefined);
    process.env["VIVARIUM_URL"] = "http://runner.example:9000/";
    process.env["VIVARIUM_API_KEY"] = "k1";
    const e = new ConnectionConfig();
    assert.equal(e.url, "http://runner.example:9000");
    assert.equal(e.apiKey, "k1");
    const o = new ConnectionConfig({ url: "http://other:1", apiKey: "k2" });
    assert.equal(o.url, "http://other:1");
    assert.equal(o.apiKey, "k2");
    assert.equal(
      o.urlFor("/v1/runs/x/files", { path: "/a b/ü", depth: 2, skip: undefined }),
      "http://other:1/v1/runs/x/files?path=%2Fa+b%2F%C3%BC&depth=2",
    );
  } finally {
    for (const [k, v] of [
      ["VIVARIUM_URL", saved.url],
      ["VIVARIUM_API_KEY", saved.key],
    ] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});

function streamOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(c) {
      for (const ch of chunks) c.enqueue(ch);
      c.close();
    },
  });
}

test("NDJSON lines are split across chunk boundaries, also inside a UTF-8 character", async () => {
  const text = '{"type":"stdout","data":"你好"}\n\n{"type":"exit","exit_code":0}';
  const bytes = new TextEncoder().encode(text);
  // Cut inside the first multi-byte character and at every other awkward spot.
  const cuts = [3, 27, 28, 33, bytes.length];
  const chunks: Uint8Array[] = [];
  let prev = 0;
  for (const c of cuts) {
    chunks.push(bytes.slice(prev, c));
    prev = c;
  }
  const got: unknown[] = [];
  for await (const v of ndjsonLines(streamOf(chunks))) got.push(v);
  assert.deepEqual(got, [
    { type: "stdout", data: "你好" },
    { type: "exit", exit_code: 0 },
  ]);
});

test("a malformed NDJSON line is a VivariumError", async () => {
  const s = streamOf([new TextEncoder().encode('{"ok":1}\nnot json\n')]);
  await assert.rejects(async () => {
    for await (const _ of ndjsonLines(s)) void _;
  }, VivariumError);
});
