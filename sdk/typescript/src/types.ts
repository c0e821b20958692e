/** Wire shapes of the runner's `/v1` API (snake_case, as sent) and their camelCase SDK forms. */

/** `Run` as the API sends it. */
/** A sandbox's egress rules: deny_out wins over allow_out; with allow_out, only those (and DNS). */
export interface NetworkPolicy {
  mode?: "nat" | "none";
  allow_out?: string[];
  deny_out?: string[];
}

export interface RunWire {
  id: string;
  state: "creating" | "running" | "deleting" | "failed";
  image: string;
  image_digest: string;
  vcpus: number;
  mem_mib: number;
  disk_mib?: number | null;
  network: "nat" | "none";
  ip?: string | null;
  env: Record<string, string>;
  metadata: Record<string, string>;
  created_at: string;
  expires_at: string;
  oom_kills?: number;
  access_token?: string;
  desktop?: { width: number; height: number } | null;
  cdp_url?: string | null;
  vnc_url?: string | null;
  failure?: FailureWire | null;
  on_failure?: "keep" | "delete";
}

/** `Failure` as the API sends it. */
export interface FailureWire {
  reason: "oom_killed" | "killed" | "exited" | "lost";
  message: string;
  at: string;
  signal?: number | null;
  exit_code?: number | null;
}

/** Why a `failed` sandbox died. */
export interface SandboxFailure {
  /** `oom_killed` (past its memory limit), `killed` (`signal`), `exited` (`exitCode`), `lost`. */
  reason: "oom_killed" | "killed" | "exited" | "lost";
  message: string;
  at: Date;
  signal?: number;
  exitCode?: number;
}

/** A sandbox as the SDK shows it. */
export interface SandboxInfo {
  sandboxId: string;
  state: "creating" | "running" | "deleting" | "failed";
  image: string;
  imageDigest: string;
  vcpus: number;
  memMib: number;
  diskMib?: number;
  network: "nat" | "none";
  /** The sandbox's address on its veth (reachable from the runner's host only). */
  ip?: string;
  envs: Record<string, string>;
  metadata: Record<string, string>;
  startedAt: Date;
  /** When the runner deletes the sandbox unless `setTimeout` extends it. */
  endAt: Date;
  oomKills: number;
  /** Opens the sandbox's port proxy without the API key (`?token=` or `X-Vivarium-Token`). */
  accessToken: string;
  /** Desktop sandboxes: the screen size. */
  desktop?: { width: number; height: number };
  cdpUrl?: string;
  vncUrl?: string;
  /** `state: "failed"`: why the sandbox died. */
  failure?: SandboxFailure;
  /** What the runner does when the sandbox dies on its own: `keep` (default) or `delete`. */
  onFailure: "keep" | "delete";
}

export function sandboxInfo(r: RunWire): SandboxInfo {
  const info: SandboxInfo = {
    sandboxId: r.id,
    state: r.state,
    image: r.image,
    imageDigest: r.image_digest,
    vcpus: r.vcpus,
    memMib: r.mem_mib,
    network: r.network,
    envs: r.env ?? {},
    metadata: r.metadata ?? {},
    startedAt: new Date(r.created_at),
    endAt: new Date(r.expires_at),
    oomKills: r.oom_kills ?? 0,
    accessToken: r.access_token ?? "",
    onFailure: r.on_failure ?? "keep",
  };
  if (r.failure != null) {
    const f: SandboxFailure = { reason: r.failure.reason, message: r.failure.message, at: new Date(r.failure.at) };
    if (r.failure.signal != null) f.signal = r.failure.signal;
    if (r.failure.exit_code != null) f.exitCode = r.failure.exit_code;
    info.failure = f;
  }
  if (r.disk_mib != null) info.diskMib = r.disk_mib;
  if (r.ip != null) info.ip = r.ip;
  if (r.desktop != null) info.desktop = { width: r.desktop.width, height: r.desktop.height };
  if (r.cdp_url != null) info.cdpUrl = r.cdp_url;
  if (r.vnc_url != null) info.vncUrl = r.vnc_url;
  return info;
}

/** `ExecResponse` as the API sends it. */
export interface ExecWire {
  exit_code: number | null;
  signal?: number | null;
  stdout: string;
  stderr: string;
  timed_out?: boolean;
  oom_killed?: boolean;
  truncated?: boolean;
  duration_ms?: number;
}

/** What a finished command printed and how it ended. */
export interface CommandResult {
  stdout: string;
  stderr: string;
  /** Exit status; `null` when a signal killed the process. */
  exitCode: number | null;
  /** The signal that killed it, if one did. */
  signal?: number;
  /** The command ran past its `timeout` and was killed (then `run` throws a TimeoutError). */
  timedOut: boolean;
  /** The kernel's OOM killer ended it (the sandbox went past its memory limit). */
  oomKilled: boolean;
  /** Output was cut to the runner's capture limit. */
  truncated: boolean;
  durationMs?: number;
}

/** `Process` (a background command) as the API sends it. */
export interface ProcessWire {
  pid: number;
  argv: string[];
  running: boolean;
  exit_code?: number | null;
  signal?: number | null;
  stdout?: string;
  stderr?: string;
}

export interface ProcessInfo {
  pid: number;
  argv: string[];
  running: boolean;
  exitCode?: number;
  signal?: number;
  stdout: string;
  stderr: string;
}

export function processInfo(p: ProcessWire): ProcessInfo {
  const info: ProcessInfo = {
    pid: p.pid,
    argv: p.argv,
    running: p.running,
    stdout: p.stdout ?? "",
    stderr: p.stderr ?? "",
  };
  if (p.exit_code != null) info.exitCode = p.exit_code;
  if (p.signal != null) info.signal = p.signal;
  return info;
}

/** `FileInfo` as the API sends it. */
export interface FileInfoWire {
  name: string;
  path: string;
  type: "file" | "dir" | "symlink" | "other";
  size: number;
  mode: number;
  modified_at?: string | null;
}

/** One file or directory in a sandbox. */
export interface EntryInfo {
  name: string;
  path: string;
  type: "file" | "dir" | "symlink" | "other";
  size: number;
  /** Permission bits, e.g. `0o644`. */
  mode: number;
  modifiedTime?: Date;
}

export function entryInfo(f: FileInfoWire): EntryInfo {
  const e: EntryInfo = { name: f.name, path: f.path, type: f.type, size: f.size, mode: f.mode };
  if (f.modified_at != null) e.modifiedTime = new Date(f.modified_at);
  return e;
}

/** A window on a sandbox's desktop. */
export interface WindowInfo {
  id: number;
  title: string;
  /** WM_CLASS class, e.g. `Chromium`. */
  app: string;
  pid?: number;
  x: number;
  y: number;
  width: number;
  height: number;
  focused: boolean;
}

/** What one desktop action answers (`{"type": …}`). */
export type ActionResult =
  | { type: "ok" }
  | { type: "screenshot"; format: "png" | "jpeg" | "webp"; width: number; height: number; data: string }
  | { type: "position"; x: number; y: number }
  | { type: "size"; width: number; height: number }
  | { type: "clipboard"; text: string | null }
  | { type: "windows"; windows: WindowInfo[] }
  | { type: "launched"; pid: number };

/** One desktop action as the API takes it, e.g. `{action: "click", x: 10, y: 20}`. */
export type DesktopAction = { action: string } & Record<string, unknown>;

export type MouseButton = "left" | "right" | "middle" | "back" | "forward";
export type ScrollDirection = "up" | "down" | "left" | "right";
export type ImageFormat = "png" | "jpeg" | "webp";
