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
    PermissionDeniedError,
    TimeoutError,
    VivariumError,
)
from ._models import CommandResult, EntryInfo, ProcessInfo, SandboxInfo, Window
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
    "PermissionDeniedError",
    "ProcessInfo",
    "Sandbox",
    "SandboxInfo",
    "TimeoutError",
    "VivariumError",
    "Window",
]
