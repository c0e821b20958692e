"""Exceptions raised by the SDK.

Every error the runner answers (``{"error": {"code", "message", "field"}}``) becomes a subclass of
:class:`VivariumError` carrying that code, message, field and the HTTP status.
"""

from __future__ import annotations

import builtins
import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from ._models import CommandResult


class VivariumError(Exception):
    """Base class of every SDK error.

    ``code`` is the runner's stable machine-readable code (``not_found``, ``invalid_argument``…),
    ``message`` its human-readable message, ``status`` the HTTP status (``None`` when no answer
    came), ``field`` the request field at fault when the runner named one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.field = field

    def __str__(self) -> str:
        parts = [p for p in (str(self.status) if self.status else None, self.code) if p]
        prefix = " ".join(parts)
        where = f" ({self.field})" if self.field else ""
        return f"{prefix}{where}: {self.message}" if prefix else self.message


class NotFoundError(VivariumError):
    """The sandbox, file, process or image does not exist."""


class AuthenticationError(VivariumError):
    """The API key is missing or wrong (HTTP 401)."""


class PermissionDeniedError(VivariumError):
    """The credentials are valid but not for this resource (HTTP 403)."""


class InvalidArgumentError(VivariumError):
    """The request was rejected as malformed; ``field`` names the part at fault."""


class ConflictError(VivariumError):
    """The resource already exists or is in the wrong state (HTTP 409)."""


class SandboxFailedError(ConflictError):
    """The sandbox died on its own (HTTP 409 ``sandbox_failed``): its init exited or was killed.

    ``reason`` is the run's ``failure.reason``: ``oom_killed`` (it went past its memory limit),
    ``killed`` (by a signal, e.g. from the host), ``exited``, or ``lost`` (it stopped while the
    runner was not running). ``Sandbox.get_info().failure`` has the details.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, field=field)
        self.reason = reason

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} [reason: {self.reason}]" if self.reason else base


class PayloadTooLargeError(InvalidArgumentError):
    """The request body is past its limit (HTTP 413): JSON bodies are at most 1 MiB, uploads at
    most the sandbox's disk."""


class TimeoutError(VivariumError, builtins.TimeoutError):
    """Something took longer than allowed: a command's ``timeout``, a wait, or the HTTP request.

    Also a subclass of the built-in :class:`TimeoutError`. When a command timed out, ``result``
    holds the output it produced before it was killed.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
        result: CommandResult | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, field=field)
        self.result = result


class ConnectionError(VivariumError, builtins.ConnectionError):
    """The runner could not be reached (also a built-in :class:`ConnectionError`)."""


_BY_CODE: dict[str, type[VivariumError]] = {
    "not_found": NotFoundError,
    "image_not_found": NotFoundError,
    "unauthorized": AuthenticationError,
    "permission_denied": PermissionDeniedError,
    "invalid_argument": InvalidArgumentError,
    "unpinned_tag": InvalidArgumentError,
    "is_a_directory": InvalidArgumentError,
    "not_a_directory": InvalidArgumentError,
    "already_exists": ConflictError,
    "conflict": ConflictError,
    "sandbox_failed": SandboxFailedError,
    "payload_too_large": PayloadTooLargeError,
    "timeout": TimeoutError,
    "sandbox_timeout": TimeoutError,
}

_BY_STATUS: dict[int, type[VivariumError]] = {
    400: InvalidArgumentError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: TimeoutError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidArgumentError,
    504: TimeoutError,
}


def error_from_body(status: int, body: bytes) -> VivariumError:
    """The exception for an error answer: by the body's ``code`` first, then by HTTP status."""
    code: str | None = None
    field: str | None = None
    reason: str | None = None
    message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        detail = parsed["error"]
        code = detail.get("code") if isinstance(detail.get("code"), str) else None
        message = str(detail.get("message", message))
        field = detail.get("field") if isinstance(detail.get("field"), str) else None
        reason = detail.get("reason") if isinstance(detail.get("reason"), str) else None
    return error_from_detail(status, code, message, field, reason)


def error_from_detail(
    status: int | None,
    code: str | None,
    message: str,
    field: str | None,
    reason: str | None = None,
) -> VivariumError:
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status or 0) or VivariumError
    if cls is SandboxFailedError:
        return SandboxFailedError(message, code=code, status=status, field=field, reason=reason)
    return cls(message, code=code, status=status, field=field)


def error_from_transport(exc: httpx.TransportError, url: str) -> VivariumError:
    """The exception for a request that got no answer."""
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError(f"request to the runner at {url} timed out: {exc}", code="timeout")
    return ConnectionError(f"cannot reach the runner at {url}: {exc}")
