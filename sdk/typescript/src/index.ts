/**
 * vivarium's TypeScript SDK: isolated Linux sandboxes (and desktops) for AI agents.
 *
 * ```ts
 * import { Sandbox } from "@vivarium/sdk";
 * const sandbox = await Sandbox.create({ image: "python:3.12-slim" });
 * const r = await sandbox.commands.run("python3 -c 'print(6*7)'");
 * await sandbox.kill();
 * ```
 * The runner's URL and key come from `VIVARIUM_URL` and `VIVARIUM_API_KEY` unless given.
 */

export { Sandbox, Stream } from "./sandbox.js";
export type { SandboxOptions, ScreenshotOptions, ClickOptions, At } from "./sandbox.js";
export { Commands, CommandHandle } from "./commands.js";
export type { CommandOptions, RunOptions, BackgroundRunOptions } from "./commands.js";
export { Files } from "./files.js";
export { Computer, anthropicToolResult } from "./computer.js";
export type {
  AnthropicContentBlock,
  AnthropicToolResult,
  AnthropicComputerVersion,
  AnthropicDisplay,
  OpenAIComputerCallOutput,
  OpenAIDisplay,
} from "./computer.js";
export {
  VivariumError,
  AuthenticationError,
  NotFoundError,
  InvalidArgumentError,
  TimeoutError,
  ConflictError,
  SandboxFailedError,
  PayloadTooLargeError,
  errorFromCode,
  errorFromResponse,
} from "./errors.js";
export type { VivariumErrorOptions } from "./errors.js";
export { ConnectionConfig, DEFAULT_URL, URL_ENV, KEY_ENV } from "./http.js";
export type { ConnectionOptions } from "./http.js";
export type {
  SandboxInfo,
  SandboxFailure,
  CommandResult,
  ProcessInfo,
  EntryInfo,
  WindowInfo,
  ActionResult,
  DesktopAction,
  MouseButton,
  ScrollDirection,
  ImageFormat,
  NetworkPolicy,
} from "./types.js";
