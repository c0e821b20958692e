"""Python SDK for vivarium: sandboxes for AI agents that use computers.

from vivarium import Sandbox

with Sandbox.create() as sbx:
    print(sbx.commands.run("echo hi").stdout)
    png = sbx.screenshot()
"""

from ._async import AsyncCommandHandle, AsyncSandbox
from ._errors import (
    AuthenticationError,
    ConflictError,
    ConnectionError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    SandboxFailedError,
    TimeoutError,
    VivariumError,
)
from ._models import (
    CommandResult,
    EntryInfo,
    ProcessInfo,
    SandboxFailure,
    SandboxInfo,
    Window,
)
from ._sync import CommandHandle, Sandbox

__version__ = "0.1.0"

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AuthenticationError",
    "CommandHandle",
    "CommandResult",
    "ConflictError",
    "ConnectionError",
    "EntryInfo",
    "InvalidArgumentError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProcessInfo",
    "Sandbox",
    "SandboxFailedError",
    "SandboxFailure",
    "SandboxInfo",
    "TimeoutError",
    "VivariumError",
    "Window",
]
