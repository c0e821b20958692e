/**
 * `sandbox.computer`: Anthropic's and OpenAI's computer-use tools, executed by the runner
 * (`/v1/runs/{id}/computer/anthropic|openai`). Inputs and outputs keep the model APIs' own
 * snake_case shapes so they pass between the model and the sandbox unchanged.
 */

import { ConnectionConfig } from "./http.js";

/** A `tool_result` content block as Anthropic's Messages API takes it. */
export type AnthropicContentBlock =
  | { type: "text"; text: string }
  | { type: "image"; source: { type: "base64"; media_type: string; data: string } };

/** What the Anthropic executor answers: the `tool_result`'s content and error flag. */
export interface AnthropicToolResult {
  content: AnthropicContentBlock[];
  is_error: boolean;
}

/** What the OpenAI executor answers: a `computer_call_output` input item. */
export interface OpenAIComputerCallOutput {
  type: "computer_call_output";
  call_id?: string;
  output: { type: "computer_screenshot"; image_url: string };
  [key: string]: unknown;
}

export type AnthropicComputerVersion = "computer_20250124" | "computer_20251124";

export interface AnthropicDisplay {
  /** The display size the model sees (default: the real screen); coordinates are scaled. */
  displayWidthPx?: number;
  displayHeightPx?: number;
}

export interface OpenAIDisplay {
  /** The display size the model sees (default: the real screen); coordinates are scaled. */
  displayWidth?: number;
  displayHeight?: number;
}

export class Computer {
  constructor(
    private readonly conn: ConnectionConfig,
    private readonly sandboxId: string,
  ) {}

  private path(rest: string): string {
    return `/v1/runs/${this.sandboxId}/computer/${rest}`;
  }

  /**
   * Executes an Anthropic `computer` tool_use `input` (e.g. `{action: "left_click", coordinate:
   * [100, 200]}`). Bad inputs come back as `is_error: true` results for the model, not as throws.
   */
  async anthropic(input: Record<string, unknown>, display: AnthropicDisplay = {}): Promise<AnthropicToolResult> {
    const json: Record<string, unknown> = { input };
    if (display.displayWidthPx !== undefined) json["display_width_px"] = display.displayWidthPx;
    if (display.displayHeightPx !== undefined) json["display_height_px"] = display.displayHeightPx;
    return this.conn.json<AnthropicToolResult>("POST", this.path("anthropic"), { json, timeoutMs: 120_000 });
  }

  /** Executes an OpenAI `computer_call`'s `action`; answers the `computer_call_output` to send back. */
  async openai(
    action: Record<string, unknown>,
    opts: OpenAIDisplay & { callId?: string } = {},
  ): Promise<OpenAIComputerCallOutput> {
    const json: Record<string, unknown> = { action };
    if (opts.callId !== undefined) json["call_id"] = opts.callId;
    if (opts.displayWidth !== undefined) json["display_width"] = opts.displayWidth;
    if (opts.displayHeight !== undefined) json["display_height"] = opts.displayHeight;
    return this.conn.json<OpenAIComputerCallOutput>("POST", this.path("openai"), { json, timeoutMs: 120_000 });
  }

  /** The Anthropic tool definition to put in `tools` (default version `computer_20250124`). */
  async anthropicTool(
    opts: AnthropicDisplay & { version?: AnthropicComputerVersion } = {},
  ): Promise<Record<string, unknown>> {
    return this.conn.json<Record<string, unknown>>("GET", this.path("anthropic/tool"), {
      query: {
        version: opts.version,
        display_width_px: opts.displayWidthPx,
        display_height_px: opts.displayHeightPx,
      },
    });
  }

  /** The OpenAI `computer_use_preview` tool definition to put in `tools`. */
  async openaiTool(opts: OpenAIDisplay = {}): Promise<Record<string, unknown>> {
    return this.conn.json<Record<string, unknown>>("GET", this.path("openai/tool"), {
      query: { display_width: opts.displayWidth, display_height: opts.displayHeight },
    });
  }
}

/** Wraps an executor result as the `tool_result` block for the next user message. */
export function anthropicToolResult(
  toolUseId: string,
  result: AnthropicToolResult,
): { type: "tool_result"; tool_use_id: string; content: AnthropicContentBlock[]; is_error: boolean } {
  return { type: "tool_result", tool_use_id: toolUseId, content: result.content, is_error: result.is_error };
}
