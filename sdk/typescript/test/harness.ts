/**
 * Test harness: a real `vivarium serve` process with its own data dir, port, instance name and
 * address pool (the recipe of crates/vivarium/tests/common/mod.rs), and the desktop image.
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, rmdirSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve, basename } from "node:path";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

export const KEY = "ts-test-key-0123456789";

/** The repository root (this file runs from sdk/typescript/dist-test/test/). */
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

function runnerBinary(): string {
  const p = process.env["VIVARIUM_BIN"] ?? join(REPO, "target/debug/vivarium");
  if (!existsSync(p)) throw new Error(`runner binary not found at ${p}: run cargo build -p vivarium or set VIVARIUM_BIN`);
  return p;
}

function agentBinary(): string {
  const fromEnv = process.env["VIVARIUM_AGENT"];
  if (fromEnv) return fromEnv;
  const built = join(REPO, "target/x86_64-unknown-linux-gnu/release/vivarium-agent");
  if (existsSync(built)) return built;
  const out = execFileSync("bash", [join(REPO, "scripts/build-agent.sh")], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  return out.trim().split("\n").pop()!.trim();
}

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => ok(port));
    });
  });
}

export class Runner {
  readonly url: string;
  private child: ChildProcess | undefined;

  private constructor(
    readonly port: number,
    readonly dataDir: string,
    readonly instance: string,
    readonly subnet: string,
    readonly logPath: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
  }

  static async start(): Promise<Runner> {
    const dataDir = mkdtempSync("/var/tmp/vivarium-ts-test-");
    const n = randomBytes(4).readUInt32LE(0);
    const instance = `vts${(n & 0xfffff).toString(16).padStart(5, "0")}`;
    const subnet = `10.93.${(n % 250) + 1}.0/24`;
    const r = new Runner(await freePort(), dataDir, instance, subnet, join(dataDir, "runner.log"));
    await r.spawn();
    return r;
  }

  private async spawn(): Promise<void> {
    const log = openSync(this.logPath, "a");
    const child = spawn(
      runnerBinary(),
      [
        "serve",
        "--listen",
        `127.0.0.1:${this.port}`,
        "--data-dir",
        this.dataDir,
        "--agent",
        agentBinary(),
        "--instance",
        this.instance,
        "--subnet",
        this.subnet,
      ],
      {
        env: { ...process.env, VIVARIUM_API_KEY: KEY, RUST_LOG: "info,tower_http=warn" },
        stdio: ["ignore", log, log],
      },
    );
    closeSync(log);
    this.child = child;
    let exited: string | undefined;
    child.once("exit", (code, sig) => {
      exited = `code ${code} signal ${sig}`;
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        const r = await fetch(`${this.url}/healthz`);
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      if (exited) throw new Error(`runner exited early (${exited}); log:\n${this.log()}`);
      if (Date.now() > deadline) throw new Error(`runner did not answer /healthz; log:\n${this.log()}`);
      await sleep(50);
    }
  }

  log(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  async api(method: string, path: string, body?: unknown): Promise<unknown> {
    const init: RequestInit = { method, headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" } };
    if (body !== undefined) init.body = JSON.stringify(body);
    const r = await fetch(`${this.url}${path}`, init);
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  }

  /** Builds (cached) and imports the desktop image; answers its tag. */
  async importDesktop(): Promise<string> {
    const out = execFileSync("bash", [join(REPO, "images/desktop/build.sh")], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
      maxBuffer: 64 * 1024 * 1024,
    });
    const layout = out.trim().split("\n").pop()!.trim();
    const name = basename(layout);
    const tag = `vivarium/desktop:${name.startsWith("desktop-") ? name.slice("desktop-".length) : name}`;
    await this.api("POST", "/v1/images/import", { path: layout, tag });
    return tag;
  }

  /** Deletes every sandbox left, stops the runner and removes its data dir if nothing is mounted there. */
  async stop(): Promise<void> {
    if (!this.child) return;
    try {
      const l = (await this.api("GET", "/v1/runs")) as { runs: { id: string }[] };
      for (const r of l.runs) await this.api("DELETE", `/v1/runs/${r.id}`).catch(() => undefined);
    } catch {
      // the runner is gone already; nothing to delete through it
    }
    const child = this.child;
    this.child = undefined;
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((ok) => child.once("exit", ok));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await gone;
      clearTimeout(timer);
    }
    const mounts = readFileSync("/proc/mounts", "utf8");
    if (!mounts.includes(this.dataDir)) rmSync(this.dataDir, { recursive: true, force: true });
    // A stopped runner keeps its nftables table and cgroup parents (its sandboxes outlive it);
    // this instance is gone for good, so remove them as well.
    try {
      execFileSync("nft", ["delete", "table", "inet", this.instance], { stdio: "ignore" });
    } catch {
      // no table: nothing to remove
    }
    for (const ctrl of ["memory", "cpu", "cpuacct", "pids", "freezer", "devices", "unified", ""]) {
      try {
        rmdirSync(join("/sys/fs/cgroup", ctrl, this.instance)); // cgroup dirs go with rmdir only
      } catch {
        // not there, or not empty: leave it
      }
    }
  }
}

/** Width and height from a PNG's IHDR chunk (throws when `data` is not a PNG). */
export function pngSize(data: Uint8Array): { width: number; height: number } {
  const sig = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (data.length < 24 || sig.some((b, i) => data[i] !== b)) throw new Error("not a PNG");
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const type = String.fromCharCode(data[12]!, data[13]!, data[14]!, data[15]!);
  if (type !== "IHDR") throw new Error(`first PNG chunk is ${type}, not IHDR`);
  return { width: dv.getUint32(16), height: dv.getUint32(20) };
}

/** Polls `f` until it answers a value that is not undefined, or throws after `ms`. */
export async function until<T>(what: string, ms: number, f: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms${last ? ` (last error: ${String(last)})` : ""}`);
    await sleep(100);
  }
}
