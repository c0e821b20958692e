"""Plain data returned by the SDK (the runner's JSON, typed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _time(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    # The runner writes RFC 3339 with a `Z` suffix; fromisoformat accepts it from Python 3.11.
    try:
        return datetime.fromisoformat(v)
    except ValueError:
        return None


@dataclass(frozen=True)
class SandboxFailure:
    """Why a ``failed`` sandbox died: ``reason`` is ``oom_killed``, ``killed`` (``signal``),
    ``exited`` (``exit_code``) or ``lost``."""

    reason: str
    message: str
    at: datetime | None
    signal: int | None = None
    exit_code: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SandboxFailure:
        return cls(
            reason=str(d.get("reason", "")),
            message=str(d.get("message", "")),
            at=_time(d.get("at")),
            signal=d.get("signal"),
            exit_code=d.get("exit_code"),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the runner describes it (``GET /v1/runs/{id}``)."""

    sandbox_id: str
    state: str
    image: str
    image_digest: str
    vcpus: float
    mem_mib: int
    envs: dict[str, str]
    metadata: dict[str, str]
    started_at: datetime | None
    end_at: datetime | None
    access_token: str
    ip: str | None = None
    resolution: tuple[int, int] | None = None
    cdp_url: str | None = None
    vnc_url: str | None = None
    oom_kills: int = 0
    #: ``state == "failed"``: why the sandbox died.
    failure: SandboxFailure | None = None
    #: ``keep`` (default) or ``delete``: what the runner does when the sandbox dies on its own.
    on_failure: str = "keep"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SandboxInfo:
        desktop = d.get("desktop")
        resolution = (int(desktop["width"]), int(desktop["height"])) if desktop else None
        return cls(
            sandbox_id=str(d["id"]),
            state=str(d.get("state", "")),
            image=str(d.get("image", "")),
            image_digest=str(d.get("image_digest", "")),
            vcpus=float(d.get("vcpus", 0)),
            mem_mib=int(d.get("mem_mib", 0)),
            envs=dict(d.get("env") or {}),
            metadata=dict(d.get("metadata") or {}),
            started_at=_time(d.get("created_at")),
            end_at=_time(d.get("expires_at")),
            access_token=str(d.get("access_token", "")),
            ip=d.get("ip"),
            resolution=resolution,
            cdp_url=d.get("cdp_url"),
            vnc_url=d.get("vnc_url"),
            oom_kills=int(d.get("oom_kills", 0)),
            failure=SandboxFailure.from_json(d["failure"])
            if isinstance(d.get("failure"), dict)
            else None,
            on_failure=str(d.get("on_failure", "keep")),
            raw=d,
        )


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: ``exit_code`` is ``None`` when a signal killed it."""

    stdout: str
    stderr: str
    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    duration_ms: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CommandResult:
        return cls(
            stdout=str(d.get("stdout", "")),
            stderr=str(d.get("stderr", "")),
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            timed_out=bool(d.get("timed_out", False)),
            oom_killed=bool(d.get("oom_killed", False)),
            truncated=bool(d.get("truncated", False)),
            duration_ms=d.get("duration_ms"),
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A background process (``GET /v1/runs/{id}/processes``)."""

    pid: int
    cmd: list[str]
    running: bool
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(d["pid"]),
            cmd=list(d.get("argv") or []),
            running=bool(d.get("running", False)),
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            stdout=str(d.get("stdout", "")),
            stderr=str(d.get("stderr", "")),
        )

    def result(self) -> CommandResult:
        return CommandResult(
            stdout=self.stdout, stderr=self.stderr, exit_code=self.exit_code, signal=self.signal
        )


@dataclass(frozen=True)
class EntryInfo:
    """A directory entry; ``type`` is ``file``, ``dir``, ``symlink`` or ``other``."""

    name: str
    path: str
    type: str
    size: int
    mode: int
    modified_time: datetime | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EntryInfo:
        return cls(
            name=str(d["name"]),
            path=str(d["path"]),
            type=str(d.get("type", "other")),
            size=int(d.get("size", 0)),
            mode=int(d.get("mode", 0)),
            modified_time=_time(d.get("modified_at")),
        )


@dataclass(frozen=True)
class Window:
    """A top-level window on the desktop."""

    id: int
    title: str
    app: str
    pid: int | None
    x: int
    y: int
    width: int
    height: int
    focused: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Window:
        return cls(
            id=int(d["id"]),
            title=str(d.get("title", "")),
            app=str(d.get("app", "")),
            pid=d.get("pid"),
            x=int(d.get("x", 0)),
            y=int(d.get("y", 0)),
            width=int(d.get("width", 0)),
            height=int(d.get("height", 0)),
            focused=bool(d.get("focused", False)),
        )
