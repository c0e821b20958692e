/** `Sandbox`: one isolated Linux sandbox (and its desktop, when it has one) on a vivarium runner. */

import { Commands } from "./commands.js";
import { Computer } from "./computer.js";
import { InvalidArgumentError, NotFoundError, VivariumError } from "./errors.js";
import { ConnectionConfig, type ConnectionOptions } from "./http.js";
import { Files } from "./files.js";
import {
  type ActionResult,
  type DesktopAction,
  type ImageFormat,
  type MouseButton,
  type RunWire,
  type SandboxInfo,
  type ScrollDirection,
  type WindowInfo,
  sandboxInfo,
  type NetworkPolicy,
} from "./types.js";

/** Creating a sandbox can include pulling its image and starting a desktop. */
const CREATE_TIMEOUT_MS = 10 * 60_000;

export interface SandboxOptions extends ConnectionOptions {
  /** OCI image with a pinned tag or digest; omitted: the runner's default image. */
  image?: string;
  vcpus?: number;
  memMib?: number;
  /** Cap on the sandbox's writable layer. */
  diskMib?: number;
  /**
   * When the sandbox dies on its own (e.g. OOM-killed): `keep` (default) keeps it as `failed` with
   * its `failure` until deleted or expired; `delete` removes it at once.
   */
  onFailure?: "keep" | "delete";
  /** Seconds until the runner deletes the sandbox (default 300); extend with `setTimeout`. */
  timeout?: number;
  /** Labels; `Sandbox.list({metadata})` filters on them. */
  metadata?: Record<string, string>;
  /** Environment for every process in the sandbox. */
  envs?: Record<string, string>;
  /** Desktop screen size `[width, height]`. */
  resolution?: [number, number];
  /** Start the desktop session (default: when the image is a desktop image). */
  desktop?: boolean;
  /** `nat` (default) or `none` (loopback only). */
  /** `"nat"` (default: the public internet only), `"none"`, or egress rules (IPv4 CIDRs). */
  network?: "nat" | "none" | NetworkPolicy;
}

export interface ScreenshotOptions {
  format?: ImageFormat;
  /** JPEG/WebP quality 1–100. */
  quality?: number;
  /** Capture only this part of the screen. */
  region?: { x: number; y: number; width: number; height: number };
  /** Scale the capture to this size. */
  scaleTo?: [number, number];
  /** Draw the mouse pointer. */
  cursor?: boolean;
}

/** Pointer position for actions that default to where the pointer is. */
export interface At {
  x?: number;
  y?: number;
}

export interface ClickOptions extends At {
  /** Keys held during the click: `ctrl`, `shift`, `alt`, `super`. */
  modifiers?: string[];
}

function checkPoint(x: number | undefined, y: number | undefined): void {
  if ((x === undefined) !== (y === undefined)) {
    throw new InvalidArgumentError("give both x and y, or neither", { field: x === undefined ? "x" : "y" });
  }
}

function at(x: number | undefined, y: number | undefined): Record<string, number> {
  checkPoint(x, y);
  return x === undefined || y === undefined ? {} : { x, y };
}

/** `sandbox.stream`: the live view of a desktop (noVNC through the runner's port proxy). */
export class Stream {
  constructor(private readonly sandbox: Sandbox) {}

  /** The URL to watch (and, unless `viewOnly`, control) the desktop in a browser. */
  getUrl(opts: { viewOnly?: boolean } = {}): string {
    const url = this.sandbox.vncUrl;
    if (url === undefined) {
      throw new VivariumError(`sandbox ${this.sandbox.sandboxId} has no desktop, so no live view`);
    }
    return opts.viewOnly ? `${url}&view_only=true` : url;
  }
}

export class Sandbox {
  /** Run commands. */
  readonly commands: Commands;
  /** Read and write files. */
  readonly files: Files;
  /** Anthropic / OpenAI computer-use tools executed by the runner. */
  readonly computer: Computer;
  /** The desktop's live view. */
  readonly stream: Stream;
  private info: SandboxInfo;

  private constructor(
    private readonly conn: ConnectionConfig,
    info: SandboxInfo,
  ) {
    this.info = info;
    this.commands = new Commands(conn, info.sandboxId);
    this.files = new Files(conn, info.sandboxId);
    this.computer = new Computer(conn, info.sandboxId);
    this.stream = new Stream(this);
  }

  /** Creates a sandbox and waits until it is running. */
  static async create(opts: SandboxOptions = {}): Promise<Sandbox> {
    const conn = new ConnectionConfig(opts);
    const body: Record<string, unknown> = {};
    if (opts.image !== undefined) body["image"] = opts.image;
    if (opts.vcpus !== undefined) body["vcpus"] = opts.vcpus;
    if (opts.memMib !== undefined) body["mem_mib"] = opts.memMib;
    if (opts.diskMib !== undefined) body["disk_mib"] = opts.diskMib;
    if (opts.onFailure !== undefined) body["on_failure"] = opts.onFailure;
    if (opts.timeout !== undefined) body["timeout_s"] = opts.timeout;
    if (opts.metadata && Object.keys(opts.metadata).length > 0) body["metadata"] = opts.metadata;
    if (opts.envs && Object.keys(opts.envs).length > 0) body["env"] = opts.envs;
    if (opts.resolution !== undefined) body["resolution"] = opts.resolution;
    if (opts.desktop !== undefined) body["desktop"] = opts.desktop;
    if (opts.network !== undefined) body["network"] = opts.network;
    const run = await conn.json<RunWire>("POST", "/v1/runs", { json: body, timeoutMs: CREATE_TIMEOUT_MS });
    return new Sandbox(conn, sandboxInfo(run));
  }

  /** Attaches to an existing sandbox; throws {@link NotFoundError} when there is none. */
  static async connect(sandboxId: string, opts: ConnectionOptions = {}): Promise<Sandbox> {
    const conn = new ConnectionConfig(opts);
    const run = await conn.json<RunWire>("GET", `/v1/runs/${encodeURIComponent(sandboxId)}`);
    return new Sandbox(conn, sandboxInfo(run));
  }

  /** The runner's sandboxes, optionally only those whose metadata has all these labels. */
  static async list(opts: ConnectionOptions & { metadata?: Record<string, string> } = {}): Promise<SandboxInfo[]> {
    const conn = new ConnectionConfig(opts);
    const query: Record<string, string> = {};
    for (const [k, v] of Object.entries(opts.metadata ?? {})) query[`metadata.${k}`] = v;
    const l = await conn.json<{ runs: RunWire[] }>("GET", "/v1/runs", { query });
    return l.runs.map(sandboxInfo);
  }

  /** Deletes a sandbox by id; answers false when it did not exist. */
  static async kill(sandboxId: string, opts: ConnectionOptions = {}): Promise<boolean> {
    const conn = new ConnectionConfig(opts);
    try {
      await conn.empty("DELETE", `/v1/runs/${encodeURIComponent(sandboxId)}`, { timeoutMs: CREATE_TIMEOUT_MS });
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  get sandboxId(): string {
    return this.info.sandboxId;
  }

  /** Chrome DevTools Protocol endpoint for Playwright's `connectOverCDP` (desktops only). */
  get cdpUrl(): string | undefined {
    return this.info.cdpUrl;
  }

  /** The noVNC live view (desktops only). */
  get vncUrl(): string | undefined {
    return this.info.vncUrl;
  }

  /** The secret that opens this sandbox's port proxy without the API key. */
  get accessToken(): string {
    return this.info.accessToken;
  }

  /** The sandbox as last fetched (see {@link getInfo} to refresh). */
  get lastInfo(): SandboxInfo {
    return this.info;
  }

  /** Fetches the sandbox's current state. */
  async getInfo(): Promise<SandboxInfo> {
    this.info = sandboxInfo(await this.conn.json<RunWire>("GET", `/v1/runs/${this.sandboxId}`));
    return this.info;
  }

  /** Whether the sandbox still exists and runs. */
  async isRunning(): Promise<boolean> {
    try {
      return (await this.getInfo()).state === "running";
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  /** Deletes the sandbox; answers false when it was already gone. */
  async kill(): Promise<boolean> {
    return Sandbox.kill(this.sandboxId, {
      url: this.conn.url,
      ...(this.conn.apiKey !== undefined ? { apiKey: this.conn.apiKey } : {}),
    });
  }

  /** `await using sandbox = await Sandbox.create()` deletes it at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }

  /** Makes the sandbox expire `seconds` from now. */
  async setTimeout(seconds: number): Promise<void> {
    this.info = sandboxInfo(
      await this.conn.json<RunWire>("POST", `/v1/runs/${this.sandboxId}/timeout`, { json: { timeout_s: seconds } }),
    );
  }

  /**
   * The URL of `port` inside the sandbox through the runner's port proxy (HTTP and WebSocket,
   * also services bound to 127.0.0.1 there). Authorise requests with the API key, the
   * `X-Vivarium-Token: <accessToken>` header, or `?token=<accessToken>`.
   */
  getHost(port: number): string {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new InvalidArgumentError(`port must be 1-65535, got ${port}`, { field: "port" });
    }
    return `${this.conn.url}/sb/${this.sandboxId}/p/${port}`;
  }

  // ---- desktop ----

  /** Runs one desktop action (`POST /desktop/{action}`) and answers its raw result. */
  async action(action: DesktopAction): Promise<ActionResult> {
    const { action: name, ...fields } = action;
    return this.conn.json<ActionResult>("POST", `/v1/runs/${this.sandboxId}/desktop/${encodeURIComponent(name)}`, {
      json: fields,
      timeoutMs: 120_000,
    });
  }

  /** Runs several desktop actions in order in one request, stopping at the first error. */
  async actions(actions: DesktopAction[]): Promise<ActionResult[]> {
    const r = await this.conn.json<{ results: ActionResult[] }>("POST", `/v1/runs/${this.sandboxId}/desktop/actions`, {
      json: { actions },
      timeoutMs: 120_000,
    });
    return r.results;
  }

  private async expect<T extends ActionResult["type"]>(
    action: DesktopAction,
    type: T,
  ): Promise<Extract<ActionResult, { type: T }>> {
    const r = await this.action(action);
    if (r.type !== type) {
      throw new VivariumError(`desktop action ${action.action} answered ${r.type}, expected ${type}`);
    }
    return r as Extract<ActionResult, { type: T }>;
  }

  /** The screen as an encoded image (PNG by default). */
  async screenshot(opts: ScreenshotOptions = {}): Promise<Uint8Array> {
    const r = opts.region;
    return this.conn.bytes("GET", `/v1/runs/${this.sandboxId}/desktop/screenshot`, {
      query: {
        format: opts.format ?? "png",
        quality: opts.quality,
        region: r ? `${r.x},${r.y},${r.width},${r.height}` : undefined,
        width: opts.scaleTo?.[0],
        height: opts.scaleTo?.[1],
        cursor: opts.cursor ? "1" : undefined,
      },
      timeoutMs: 120_000,
    });
  }

  private async click(button: MouseButton, count: number, x?: number, y?: number, opts: ClickOptions = {}) {
    const body: DesktopAction = { action: "click", button, count, ...at(x ?? opts.x, y ?? opts.y) };
    if (opts.modifiers?.length) body["modifiers"] = opts.modifiers;
    await this.expect(body, "ok");
  }

  /** Left click at (x, y), or where the pointer is. */
  async leftClick(x?: number, y?: number, opts?: ClickOptions): Promise<void> {
    await this.click("left", 1, x, y, opts);
  }

  async rightClick(x?: number, y?: number, opts?: ClickOptions): Promise<void> {
    await this.click("right", 1, x, y, opts);
  }

  async middleClick(x?: number, y?: number, opts?: ClickOptions): Promise<void> {
    await this.click("middle", 1, x, y, opts);
  }

  async doubleClick(x?: number, y?: number, opts?: ClickOptions): Promise<void> {
    await this.click("left", 2, x, y, opts);
  }

  async tripleClick(x?: number, y?: number, opts?: ClickOptions): Promise<void> {
    await this.click("left", 3, x, y, opts);
  }

  async moveMouse(x: number, y: number): Promise<void> {
    await this.expect({ action: "move", x, y }, "ok");
  }

  /** Presses a mouse button (at (x, y) when given) without releasing it. */
  async mousePress(button: MouseButton = "left", pos: At = {}): Promise<void> {
    await this.expect({ action: "mouse_down", button, ...at(pos.x, pos.y) }, "ok");
  }

  async mouseRelease(button: MouseButton = "left", pos: At = {}): Promise<void> {
    await this.expect({ action: "mouse_up", button, ...at(pos.x, pos.y) }, "ok");
  }

  /** Presses at `from`, moves to `to` (through `via` points), releases. */
  async drag(
    from: [number, number],
    to: [number, number],
    opts: { via?: [number, number][]; button?: MouseButton; modifiers?: string[] } = {},
  ): Promise<void> {
    const body: DesktopAction = { action: "drag", path: [from, ...(opts.via ?? []), to], button: opts.button ?? "left" };
    if (opts.modifiers?.length) body["modifiers"] = opts.modifiers;
    await this.expect(body, "ok");
  }

  /** Turns the wheel `amount` clicks (default 1) at (x, y) or where the pointer is. */
  async scroll(direction: ScrollDirection = "down", amount = 1, opts: ClickOptions = {}): Promise<void> {
    const body: DesktopAction = { action: "scroll", direction, amount, ...at(opts.x, opts.y) };
    if (opts.modifiers?.length) body["modifiers"] = opts.modifiers;
    await this.expect(body, "ok");
  }

  /** Types Unicode text. */
  async write(text: string): Promise<void> {
    await this.expect({ action: "type", text }, "ok");
  }

  /** Presses a key or a combination: `"Return"`, `"ctrl+a"`, or `["ctrl", "shift", "t"]`. */
  async press(keys: string | string[]): Promise<void> {
    await this.expect({ action: "key", keys: Array.isArray(keys) ? keys.join("+") : keys }, "ok");
  }

  /** Holds a key (or combination) down until {@link keyUp}. */
  async keyDown(keys: string | string[]): Promise<void> {
    await this.expect({ action: "key_down", keys: Array.isArray(keys) ? keys.join("+") : keys }, "ok");
  }

  async keyUp(keys: string | string[]): Promise<void> {
    await this.expect({ action: "key_up", keys: Array.isArray(keys) ? keys.join("+") : keys }, "ok");
  }

  /** Sleeps on the runner's side (at most 60 000 ms). */
  async wait(ms: number): Promise<void> {
    await this.expect({ action: "wait", ms }, "ok");
  }

  async getCursorPosition(): Promise<{ x: number; y: number }> {
    const r = await this.expect({ action: "cursor_position" }, "position");
    return { x: r.x, y: r.y };
  }

  async getScreenSize(): Promise<{ width: number; height: number }> {
    const r = await this.expect({ action: "screen_size" }, "size");
    return { width: r.width, height: r.height };
  }

  /** Starts an application (a program on PATH or a `.desktop` id); answers its pid. */
  async launch(app: string, args: string[] = []): Promise<number> {
    const body: DesktopAction = { action: "launch", app };
    if (args.length) body["args"] = args;
    return (await this.expect(body, "launched")).pid;
  }

  /** Opens a URL in the desktop's browser (a new tab). */
  async open(url: string): Promise<void> {
    await this.expect({ action: "open", url }, "ok");
  }

  /** The clipboard's text (`null` when it holds none). */
  async getClipboard(): Promise<string | null> {
    return (await this.expect({ action: "clipboard_get" }, "clipboard")).text;
  }

  async setClipboard(text: string): Promise<void> {
    await this.expect({ action: "clipboard_set", text }, "ok");
  }

  /** The desktop's top-level windows. */
  async getWindows(): Promise<WindowInfo[]> {
    return (await this.expect({ action: "windows" }, "windows")).windows;
  }

  /** The windows of one application (WM_CLASS, case-insensitive, e.g. `chromium`). */
  async getApplicationWindows(app: string): Promise<WindowInfo[]> {
    const want = app.toLowerCase();
    return (await this.getWindows()).filter((w) => w.app.toLowerCase() === want);
  }

  /** The focused window's id, if one has the focus. */
  async getCurrentWindowId(): Promise<number | undefined> {
    return (await this.getWindows()).find((w) => w.focused)?.id;
  }

  async getWindowTitle(windowId: number): Promise<string> {
    const w = (await this.getWindows()).find((w) => w.id === windowId);
    if (!w) throw new NotFoundError(`no window ${windowId} on the desktop`, { code: "not_found" });
    return w.title;
  }

  async focusWindow(windowId: number): Promise<void> {
    await this.expect({ action: "focus_window", id: windowId }, "ok");
  }

  async moveWindow(windowId: number, x: number, y: number): Promise<void> {
    await this.expect({ action: "move_window", id: windowId, x, y }, "ok");
  }

  async resizeWindow(windowId: number, width: number, height: number): Promise<void> {
    await this.expect({ action: "resize_window", id: windowId, width, height }, "ok");
  }

  async maximizeWindow(windowId: number): Promise<void> {
    await this.expect({ action: "maximize_window", id: windowId }, "ok");
  }

  async minimizeWindow(windowId: number): Promise<void> {
    await this.expect({ action: "minimize_window", id: windowId }, "ok");
  }

  async closeWindow(windowId: number): Promise<void> {
    await this.expect({ action: "close_window", id: windowId }, "ok");
  }

  async setWallpaper(path: string): Promise<void> {
    await this.expect({ action: "set_wallpaper", path }, "ok");
  }

  async setResolution(width: number, height: number): Promise<void> {
    await this.expect({ action: "set_resolution", width, height }, "ok");
  }
}
