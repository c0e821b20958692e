/**
 * Errors thrown by the SDK. Every one extends {@link VivariumError} and carries the runner's
 * machine-readable `code`, its `message` and the HTTP `status` when the runner answered.
 */

export interface VivariumErrorOptions {
  /** HTTP status of the runner's answer, when there was one. */
  status?: number;
  /** The runner's error code (`not_found`, `invalid_argument`, `unauthorized`, `timeout`, …). */
  code?: string;
  /** The request field at fault, when the runner named one. */
  field?: string;
  cause?: unknown;
}

/** Base class of every error the SDK throws. */
export class VivariumError extends Error {
  readonly status: number | undefined;
  readonly code: string | undefined;
  readonly field: string | undefined;

  constructor(message: string, options: VivariumErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = options.status;
    this.code = options.code;
    this.field = options.field;
  }
}

/** The API key is missing or wrong (HTTP 401). */
export class AuthenticationError extends VivariumError {}

/** The sandbox, process, file or image does not exist (HTTP 404). */
export class NotFoundError extends VivariumError {}

/** The request was refused as malformed; `field` names the culprit when the runner knows it. */
export class InvalidArgumentError extends VivariumError {}

/**
 * Something took too long: the runner's `timeout` error, a command that ran past its `timeout`
 * (then `result` holds what it printed), or an HTTP request past the client's request timeout.
 */
export class TimeoutError extends VivariumError {
  /** For commands that timed out: their output up to the kill. */
  readonly result: unknown;

  constructor(message: string, options: VivariumErrorOptions & { result?: unknown } = {}) {
    super(message, options);
    this.result = options.result;
  }
}

/** The request conflicts with the current state (HTTP 409, e.g. `already_exists`). */
export class ConflictError extends VivariumError {}

/**
 * The sandbox died on its own (HTTP 409 `sandbox_failed`): `reason` is its `failure.reason`,
 * `oom_killed` (past its memory limit), `killed` (by a signal), `exited` or `lost` (it stopped while
 * the runner was not running). `sandbox.getInfo()` has the details in `failure`.
 */
export class SandboxFailedError extends ConflictError {
  readonly reason: string | undefined;

  constructor(message: string, options: VivariumErrorOptions & { reason?: string } = {}) {
    super(message, options);
    this.reason = options.reason;
  }
}

/** The request body is past its limit (HTTP 413): JSON bodies 1 MiB, uploads the sandbox's disk. */
export class PayloadTooLargeError extends InvalidArgumentError {}

/** The shape of every error body the runner sends: `{"error": {"code", "message", "field"?}}`. */
interface ErrorBody {
  error: { code: string; message: string; field?: string | null; reason?: string | null };
}

function isErrorBody(v: unknown): v is ErrorBody {
  if (typeof v !== "object" || v === null) return false;
  const e = (v as { error?: unknown }).error;
  return (
    typeof e === "object" &&
    e !== null &&
    typeof (e as { code?: unknown }).code === "string" &&
    typeof (e as { message?: unknown }).message === "string"
  );
}

/** Builds the error class that fits a runner error `code` and HTTP `status`. */
export function errorFromCode(
  status: number | undefined,
  code: string | undefined,
  message: string,
  field?: string,
  reason?: string,
): VivariumError {
  const opts: VivariumErrorOptions = { status, code, field };
  const text = field ? `${code ?? "error"} (${field}): ${message}` : `${code ?? "error"}: ${message}`;
  if (status === 401 || code === "unauthorized") return new AuthenticationError(text, opts);
  if (code === "sandbox_failed") return new SandboxFailedError(text, { ...opts, reason });
  if (code === "payload_too_large" || status === 413) return new PayloadTooLargeError(text, opts);
  if (code === "timeout" || code === "sandbox_timeout" || status === 408 || status === 504) {
    return new TimeoutError(text, opts);
  }
  if (status === 404 || code === "not_found" || code === "image_not_found") {
    return new NotFoundError(text, opts);
  }
  if (status === 409 || code === "already_exists" || code === "conflict") {
    return new ConflictError(text, opts);
  }
  if (status === 400 || status === 422 || code === "invalid_argument") {
    return new InvalidArgumentError(text, opts);
  }
  return new VivariumError(text, opts);
}

/** Turns a non-2xx answer's status and body text into the matching error. */
export function errorFromResponse(status: number, bodyText: string): VivariumError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bodyText);
  } catch {
    parsed = undefined;
  }
  if (isErrorBody(parsed)) {
    return errorFromCode(
      status,
      parsed.error.code,
      parsed.error.message,
      parsed.error.field ?? undefined,
      parsed.error.reason ?? undefined,
    );
  }
  const snippet = bodyText.length > 500 ? `${bodyText.slice(0, 500)}…` : bodyText;
  return errorFromCode(status, undefined, `HTTP ${status} from the runner: ${snippet || "(empty body)"}`);
}
