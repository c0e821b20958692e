/** The HTTP layer: base URL and key from options or the environment, and error mapping. */

import { TimeoutError, VivariumError, errorFromResponse } from "./errors.js";

/** Environment variable holding the runner's URL. */
export const URL_ENV = "VIVARIUM_URL";
/** Environment variable holding the API key. */
export const KEY_ENV = "VIVARIUM_API_KEY";
/** The runner's default address. */
export const DEFAULT_URL = "http://127.0.0.1:7070";
/** Default limit on one HTTP request (commands get their own timeout plus a margin). */
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;

/** How to reach the runner. Omitted fields come from `VIVARIUM_URL` / `VIVARIUM_API_KEY`. */
export interface ConnectionOptions {
  /** The runner's base URL, e.g. `http://127.0.0.1:7070`. */
  url?: string;
  /** The API key sent as `Authorization: Bearer`. */
  apiKey?: string;
  /** Limit on each HTTP request in milliseconds (default 60 000). */
  requestTimeoutMs?: number;
}

type QueryValue = string | number | boolean | undefined;

export interface RequestOptions {
  query?: Record<string, QueryValue>;
  /** Sent as JSON. */
  json?: unknown;
  /** Sent as is (raw uploads). */
  body?: Uint8Array | ArrayBuffer | Blob | string;
  headers?: Record<string, string>;
  /** Overrides the connection's request timeout; `0` means none. */
  timeoutMs?: number;
}

function env(name: string): string | undefined {
  // No dependency on Node's types: `process` exists on Node, Bun and Deno, not in browsers.
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const v = proc?.env?.[name];
  return v === undefined || v === "" ? undefined : v;
}

/** A resolved connection to one runner. */
export class ConnectionConfig {
  readonly url: string;
  readonly apiKey: string | undefined;
  readonly requestTimeoutMs: number;

  constructor(opts: ConnectionOptions = {}) {
    this.url = (opts.url ?? env(URL_ENV) ?? DEFAULT_URL).replace(/\/+$/, "");
    this.apiKey = opts.apiKey ?? env(KEY_ENV);
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /** `path` (starting with `/`) under the runner's URL, with the query's defined values. */
  urlFor(path: string, query?: Record<string, QueryValue>): string {
    const u = new URL(this.url + path);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined) u.searchParams.set(k, String(v));
    }
    return u.toString();
  }

  /** Sends a request; answers the response when it is 2xx, throws the mapped error otherwise. */
  async request(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const url = this.urlFor(path, opts.query);
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (this.apiKey !== undefined) headers["authorization"] = `Bearer ${this.apiKey}`;
    let body: BodyInit | undefined;
    if (opts.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.body !== undefined) {
      headers["content-type"] ??= "application/octet-stream";
      body = opts.body as BodyInit;
    }
    const timeoutMs = opts.timeoutMs ?? this.requestTimeoutMs;
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = body;
    if (timeoutMs > 0) init.signal = AbortSignal.timeout(timeoutMs);
    let resp: Response;
    try {
      resp = await fetch(url, init);
    } catch (e) {
      throw transportError(e, method, url, timeoutMs);
    }
    if (resp.ok) return resp;
    let text = "";
    try {
      text = await resp.text();
    } catch {
      // The body could not be read; the status alone still says what went wrong.
    }
    throw errorFromResponse(resp.status, text);
  }

  /** A request whose 2xx answer is JSON. */
  async json<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const resp = await this.request(method, path, opts);
    const text = await readBody(resp, method, path);
    try {
      return JSON.parse(text) as T;
    } catch (e) {
      throw new VivariumError(`${method} ${path}: the runner answered invalid JSON: ${text.slice(0, 200)}`, {
        status: resp.status,
        cause: e,
      });
    }
  }

  /** A request whose 2xx answer carries no body we need. */
  async empty(method: string, path: string, opts: RequestOptions = {}): Promise<void> {
    const resp = await this.request(method, path, opts);
    // Drain the body so the connection can be reused.
    await resp.arrayBuffer().catch(() => undefined);
  }

  /** A request whose 2xx answer is raw bytes. */
  async bytes(method: string, path: string, opts: RequestOptions = {}): Promise<Uint8Array> {
    const resp = await this.request(method, path, opts);
    try {
      return new Uint8Array(await resp.arrayBuffer());
    } catch (e) {
      throw transportError(e, method, path, opts.timeoutMs ?? this.requestTimeoutMs);
    }
  }
}

async function readBody(resp: Response, method: string, path: string): Promise<string> {
  try {
    return await resp.text();
  } catch (e) {
    throw transportError(e, method, path, 0);
  }
}

function transportError(e: unknown, method: string, url: string, timeoutMs: number): VivariumError {
  const name = (e as { name?: string } | null)?.name;
  if (name === "TimeoutError" || name === "AbortError") {
    return new TimeoutError(`${method} ${url}: no answer within ${timeoutMs} ms`, { code: "timeout", cause: e });
  }
  const detail = e instanceof Error ? (e.cause instanceof Error ? `${e.message}: ${e.cause.message}` : e.message) : String(e);
  return new VivariumError(`${method} ${url}: talking to the runner failed: ${detail}`, { cause: e });
}

/**
 * Splits a byte stream into lines (NDJSON). Hand-written over `getReader()` rather than async
 * iteration of the body because `ReadableStream` async iteration is not in every runtime's types.
 */
export async function* ndjsonLines(body: ReadableStream<Uint8Array>): AsyncGenerator<unknown> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        break;
      }
      buf += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) yield parseLine(line);
      }
    }
    buf += decoder.decode();
    if (buf.trim()) yield parseLine(buf.trim());
  } finally {
    // Stopped early (the caller broke out or a line was malformed): close the stream.
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}

function parseLine(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch (e) {
    throw new VivariumError(`the runner sent a malformed stream line: ${line.slice(0, 200)}`, { cause: e });
  }
}
