/** `sandbox.commands`: run commands in a sandbox, in the foreground, streamed or in the background. */

import { InvalidArgumentError, TimeoutError, VivariumError, errorFromCode } from "./errors.js";
import { ConnectionConfig, ndjsonLines } from "./http.js";
import {
  type CommandResult,
  type ExecWire,
  type ProcessInfo,
  type ProcessWire,
  processInfo,
} from "./types.js";

/** The runner's own default limit on a foreground command, in seconds. */
const DEFAULT_COMMAND_TIMEOUT_S = 60;
/** Added to a command's own timeout for the HTTP request that carries it. */
const REQUEST_MARGIN_MS = 30_000;

export interface CommandOptions {
  /** Extra environment variables for this command. */
  envs?: Record<string, string>;
  /** Working directory inside the sandbox. */
  cwd?: string;
  /** User name or `uid[:gid]` to run as. */
  user?: string;
  /** Text written to the command's standard input, which is then closed. */
  stdin?: string;
  /**
   * Seconds after which the command is killed (foreground default 60; background: none).
   * A foreground command killed this way makes `run` throw a {@link TimeoutError}.
   */
  timeout?: number;
}

export interface RunOptions extends CommandOptions {
  background?: false;
  /** Called with each chunk of standard output as it is produced (uses the streaming endpoint). */
  onStdout?: (data: string) => void;
  /** Called with each chunk of standard error as it is produced. */
  onStderr?: (data: string) => void;
}

export interface BackgroundRunOptions extends CommandOptions {
  /** Start the command and return a handle at once. */
  background: true;
}

/** The wire form of `ExecRequest`. */
function execBody(cmd: string | string[], opts: CommandOptions, background: boolean): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (typeof cmd === "string") {
    body["command"] = cmd;
  } else {
    if (cmd.length === 0) throw new InvalidArgumentError("the command is empty", { field: "argv" });
    body["argv"] = cmd;
  }
  if (opts.envs && Object.keys(opts.envs).length > 0) body["env"] = opts.envs;
  if (opts.cwd !== undefined) body["cwd"] = opts.cwd;
  if (opts.user !== undefined) body["user"] = opts.user;
  if (opts.stdin !== undefined) body["stdin"] = opts.stdin;
  if (opts.timeout !== undefined) {
    if (!(opts.timeout > 0)) {
      throw new InvalidArgumentError(`timeout must be a positive number of seconds, got ${opts.timeout}`, {
        field: "timeout",
      });
    }
    body["timeout_s"] = opts.timeout;
  }
  if (background) body["background"] = true;
  return body;
}

function commandResult(w: ExecWire): CommandResult {
  const r: CommandResult = {
    stdout: w.stdout,
    stderr: w.stderr,
    exitCode: w.exit_code,
    timedOut: w.timed_out ?? false,
    oomKilled: w.oom_killed ?? false,
    truncated: w.truncated ?? false,
  };
  if (w.signal != null) r.signal = w.signal;
  if (w.duration_ms !== undefined) r.durationMs = w.duration_ms;
  return r;
}

function checkTimedOut(cmd: string | string[], r: CommandResult, timeoutS: number): CommandResult {
  if (r.timedOut) {
    const shown = typeof cmd === "string" ? cmd : cmd.join(" ");
    throw new TimeoutError(`command ${JSON.stringify(shown)} ran past its timeout of ${timeoutS} s and was killed`, {
      code: "timeout",
      result: r,
    });
  }
  return r;
}

/** A command running in the background. */
export class CommandHandle {
  constructor(
    private readonly conn: ConnectionConfig,
    private readonly sandboxId: string,
    /** The process id inside the sandbox. */
    readonly pid: number,
  ) {}

  /**
   * Waits for the command to end and answers its captured output.
   * @param opts.timeout seconds to wait at most; past it a {@link TimeoutError} is thrown and the
   *   command keeps running.
   */
  async wait(opts: { timeout?: number } = {}): Promise<CommandResult> {
    const body: Record<string, unknown> = {};
    if (opts.timeout !== undefined) body["timeout_s"] = opts.timeout;
    const p = await this.conn.json<ProcessWire>("POST", `/v1/runs/${this.sandboxId}/processes/${this.pid}/wait`, {
      json: body,
      timeoutMs: opts.timeout === undefined ? 0 : opts.timeout * 1000 + REQUEST_MARGIN_MS,
    });
    if (p.running) {
      throw new TimeoutError(`process ${this.pid} still runs after ${opts.timeout ?? "?"} s`, { code: "timeout" });
    }
    return {
      stdout: p.stdout ?? "",
      stderr: p.stderr ?? "",
      exitCode: p.exit_code ?? null,
      ...(p.signal != null ? { signal: p.signal } : {}),
      timedOut: false,
      oomKilled: false,
      truncated: false,
    };
  }

  /** Sends a signal (default `KILL`) to the command. */
  async kill(signal: string | number = "KILL"): Promise<void> {
    await this.conn.empty("POST", `/v1/runs/${this.sandboxId}/processes/${this.pid}/signal`, {
      json: { signal },
    });
  }

  /** The process as the runner sees it now (running, exit status, output so far). */
  async info(): Promise<ProcessInfo> {
    return processInfo(
      await this.conn.json<ProcessWire>("GET", `/v1/runs/${this.sandboxId}/processes/${this.pid}`),
    );
  }
}

type ExecEvent =
  | { type: "started"; pid: number }
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | { type: "exit"; exit_code: number | null; signal: number | null; timed_out: boolean; oom_killed: boolean }
  | { type: "error"; error: { code: string; message: string; field?: string | null; reason?: string | null } };

export class Commands {
  constructor(
    private readonly conn: ConnectionConfig,
    private readonly sandboxId: string,
  ) {}

  /**
   * Runs a shell command line (`/bin/sh -c`) or, given an array, a program without a shell.
   * Foreground: answers stdout, stderr and exitCode once it ends (a non-zero exit is not an error).
   * With `background: true`: answers a {@link CommandHandle} at once.
   */
  run(cmd: string | string[], opts?: RunOptions): Promise<CommandResult>;
  run(cmd: string | string[], opts: BackgroundRunOptions): Promise<CommandHandle>;
  async run(cmd: string | string[], opts: RunOptions | BackgroundRunOptions = {}): Promise<CommandResult | CommandHandle> {
    if (opts.background) {
      const o = opts as { onStdout?: unknown; onStderr?: unknown };
      if (o.onStdout || o.onStderr) {
        throw new InvalidArgumentError(
          "onStdout/onStderr need a foreground command; a background command's output comes from handle.wait()",
          { field: "onStdout" },
        );
      }
      const p = await this.conn.json<ProcessWire>("POST", `/v1/runs/${this.sandboxId}/processes`, {
        json: execBody(cmd, opts, false),
      });
      return new CommandHandle(this.conn, this.sandboxId, p.pid);
    }
    const o = opts as RunOptions;
    const timeoutS = o.timeout ?? DEFAULT_COMMAND_TIMEOUT_S;
    const timeoutMs = timeoutS * 1000 + REQUEST_MARGIN_MS;
    const body = execBody(cmd, o, false);
    if (o.onStdout || o.onStderr) {
      return checkTimedOut(cmd, await this.stream(body, timeoutMs, o), timeoutS);
    }
    const w = await this.conn.json<ExecWire>("POST", `/v1/runs/${this.sandboxId}/exec`, { json: body, timeoutMs });
    return checkTimedOut(cmd, commandResult(w), timeoutS);
  }

  /** `POST /exec/stream`: NDJSON events as the command produces output. */
  private async stream(body: Record<string, unknown>, timeoutMs: number, o: RunOptions): Promise<CommandResult> {
    const resp = await this.conn.request("POST", `/v1/runs/${this.sandboxId}/exec/stream`, { json: body, timeoutMs });
    if (!resp.body) throw new VivariumError("the runner answered the exec stream without a body");
    let stdout = "";
    let stderr = "";
    const started = Date.now();
    for await (const raw of ndjsonLines(resp.body)) {
      const ev = raw as ExecEvent;
      switch (ev.type) {
        case "stdout":
          stdout += ev.data;
          o.onStdout?.(ev.data);
          break;
        case "stderr":
          stderr += ev.data;
          o.onStderr?.(ev.data);
          break;
        case "exit": {
          const r: CommandResult = {
            stdout,
            stderr,
            exitCode: ev.exit_code,
            timedOut: ev.timed_out,
            oomKilled: ev.oom_killed,
            truncated: false,
            durationMs: Date.now() - started,
          };
          if (ev.signal != null) r.signal = ev.signal;
          return r;
        }
        case "error":
          throw errorFromCode(
            undefined,
            ev.error.code,
            ev.error.message,
            ev.error.field ?? undefined,
            ev.error.reason ?? undefined,
          );
        default:
          break;
      }
    }
    throw new VivariumError("the exec stream ended before the command's exit was reported");
  }

  /** Background commands started in this sandbox, running or finished. */
  async list(): Promise<ProcessInfo[]> {
    const l = await this.conn.json<{ processes: ProcessWire[] }>("GET", `/v1/runs/${this.sandboxId}/processes`);
    return l.processes.map(processInfo);
  }

  /** Sends a signal (default `KILL`) to a background command. */
  async kill(pid: number, signal: string | number = "KILL"): Promise<void> {
    await new CommandHandle(this.conn, this.sandboxId, pid).kill(signal);
  }

  /** A handle to a background command started earlier (e.g. by another client). */
  connect(pid: number): CommandHandle {
    return new CommandHandle(this.conn, this.sandboxId, pid);
  }
}
