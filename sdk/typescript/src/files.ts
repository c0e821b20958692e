/** `sandbox.files`: read, write, list and remove files in a sandbox. */

import { NotFoundError } from "./errors.js";
import { ConnectionConfig } from "./http.js";
import { type EntryInfo, type FileInfoWire, entryInfo } from "./types.js";

/** Large files may take a while; transfers get this long by default. */
const TRANSFER_TIMEOUT_MS = 10 * 60_000;

export class Files {
  constructor(
    private readonly conn: ConnectionConfig,
    private readonly sandboxId: string,
  ) {}

  private get base(): string {
    return `/v1/runs/${this.sandboxId}/files`;
  }

  /** Reads a file as UTF-8 text (default) or, with `{format: "bytes"}`, as bytes. */
  read(path: string, opts?: { format?: "text" }): Promise<string>;
  read(path: string, opts: { format: "bytes" }): Promise<Uint8Array>;
  async read(path: string, opts: { format?: "text" | "bytes" } = {}): Promise<string | Uint8Array> {
    const data = await this.conn.bytes("GET", this.base, { query: { path }, timeoutMs: TRANSFER_TIMEOUT_MS });
    return opts.format === "bytes" ? data : new TextDecoder().decode(data);
  }

  /**
   * Writes a file (streamed raw body), creating parent directories.
   * @param opts.mode permission bits, e.g. `0o755`.
   */
  async write(
    path: string,
    data: string | Uint8Array | ArrayBuffer | Blob,
    opts: { mode?: number } = {},
  ): Promise<EntryInfo> {
    const body = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const w = await this.conn.json<FileInfoWire>("PUT", this.base, {
      query: { path, mode: opts.mode === undefined ? undefined : opts.mode.toString(8) },
      body,
      timeoutMs: TRANSFER_TIMEOUT_MS,
    });
    return entryInfo(w);
  }

  /** The entries of a directory (`depth` levels deep, default 1). */
  async list(path: string, opts: { depth?: number } = {}): Promise<EntryInfo[]> {
    const l = await this.conn.json<{ entries: FileInfoWire[] }>("GET", `${this.base}/list`, {
      query: { path, depth: opts.depth ?? 1 },
    });
    return l.entries.map(entryInfo);
  }

  /** Removes a file, or a directory (with `{recursive: true}` when it is not empty). */
  async remove(path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    await this.conn.empty("DELETE", this.base, { query: { path, recursive: opts.recursive ?? false } });
  }

  /** The file's type, size, mode and modification time. */
  async getInfo(path: string): Promise<EntryInfo> {
    return entryInfo(await this.conn.json<FileInfoWire>("GET", `${this.base}/stat`, { query: { path } }));
  }

  /** Whether the path exists. */
  async exists(path: string): Promise<boolean> {
    try {
      await this.getInfo(path);
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  /** Creates a directory and its parents. */
  async makeDir(path: string, opts: { mode?: number } = {}): Promise<void> {
    const json: Record<string, unknown> = { path, parents: true };
    if (opts.mode !== undefined) json["mode"] = opts.mode.toString(8);
    await this.conn.empty("POST", `${this.base}/mkdir`, { json });
  }
}
