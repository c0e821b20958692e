"""What the sync and async clients share: configuration, request descriptions, answer parsing and
the two HTTP transports (``httpx.Client`` / ``httpx.AsyncClient``).

Each API call is first described as a :class:`Req` by a plain function, so :mod:`._sync` and
:mod:`._async` differ only in how they send it.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._errors import (
    InvalidArgumentError,
    TimeoutError,
    VivariumError,
    error_from_body,
    error_from_detail,
    error_from_transport,
)
from ._models import CommandResult

URL_ENV = "VIVARIUM_URL"
KEY_ENV = "VIVARIUM_API_KEY"
DEFAULT_URL = "http://127.0.0.1:7070"
#: Default limit of a foreground command, in seconds (the runner's default too).
DEFAULT_COMMAND_TIMEOUT = 60.0
#: HTTP timeout of calls that have no work-dependent duration (creating a sandbox included:
#: unpacking a large image the first time can take a while).
DEFAULT_REQUEST_TIMEOUT = 300.0
#: Extra time given to a request beyond the command's own limit before the client gives up.
_GRACE = 30.0

USER_AGENT = "vivarium-python/0.1.0"


@dataclass(frozen=True)
class Config:
    url: str
    api_key: str | None
    request_timeout: float

    @classmethod
    def resolve(cls, url: str | None, api_key: str | None, request_timeout: float | None) -> Config:
        """Explicit arguments first, then ``VIVARIUM_URL`` / ``VIVARIUM_API_KEY``."""
        u = url or os.environ.get(URL_ENV) or DEFAULT_URL
        k = api_key if api_key is not None else os.environ.get(KEY_ENV)
        return cls(
            url=u.rstrip("/"),
            api_key=k or None,
            request_timeout=request_timeout or DEFAULT_REQUEST_TIMEOUT,
        )

    def headers(self) -> dict[str, str]:
        h = {"User-Agent": USER_AGENT}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


class _Default:
    """Marker: use the transport's default timeout."""


DEFAULT = _Default()


@dataclass
class Req:
    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    json: Any = None
    content: bytes | None = None
    #: Seconds, ``None`` for no limit, or :data:`DEFAULT`.
    timeout: float | None | _Default = DEFAULT


def _timeout(req: Req, cfg: Config) -> httpx.Timeout:
    t = cfg.request_timeout if isinstance(req.timeout, _Default) else req.timeout
    return httpx.Timeout(t, connect=min(10.0, t) if t else 10.0)


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.is_error:
        raise error_from_body(resp.status_code, resp.content)
    return resp


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError as e:
        raise VivariumError(
            f"unexpected answer from the runner ({resp.status_code}): {resp.text[:200]!r}",
            status=resp.status_code,
        ) from e


class SyncTransport:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._client = httpx.Client(base_url=cfg.url, headers=cfg.headers())

    def send(self, req: Req) -> httpx.Response:
        try:
            resp = self._client.request(
                req.method,
                req.path,
                params=tuple(req.params) or None,
                json=req.json,
                content=req.content,
                timeout=_timeout(req, self.cfg),
            )
        except httpx.TransportError as e:
            raise error_from_transport(e, self.cfg.url) from e
        return _check(resp)

    def json(self, req: Req) -> Any:
        return _json(self.send(req))

    def content(self, req: Req) -> bytes:
        return self.send(req).content

    @contextmanager
    def lines(self, req: Req) -> Iterator[Iterator[str]]:
        """The answer's body line by line (NDJSON)."""
        try:
            with self._client.stream(
                req.method,
                req.path,
                params=tuple(req.params) or None,
                json=req.json,
                timeout=_timeout(req, self.cfg),
            ) as resp:
                if resp.is_error:
                    resp.read()
                    _check(resp)
                yield resp.iter_lines()
        except httpx.TransportError as e:
            raise error_from_transport(e, self.cfg.url) from e

    def close(self) -> None:
        self._client.close()


class AsyncTransport:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._client = httpx.AsyncClient(base_url=cfg.url, headers=cfg.headers())

    async def send(self, req: Req) -> httpx.Response:
        try:
            resp = await self._client.request(
                req.method,
                req.path,
                params=tuple(req.params) or None,
                json=req.json,
                content=req.content,
                timeout=_timeout(req, self.cfg),
            )
        except httpx.TransportError as e:
            raise error_from_transport(e, self.cfg.url) from e
        return _check(resp)

    async def json(self, req: Req) -> Any:
        return _json(await self.send(req))

    async def content(self, req: Req) -> bytes:
        return (await self.send(req)).content

    @asynccontextmanager
    async def lines(self, req: Req) -> AsyncIterator[AsyncIterator[str]]:
        try:
            async with self._client.stream(
                req.method,
                req.path,
                params=tuple(req.params) or None,
                json=req.json,
                timeout=_timeout(req, self.cfg),
            ) as resp:
                if resp.is_error:
                    await resp.aread()
                    _check(resp)
                yield resp.aiter_lines()
        except httpx.TransportError as e:
            raise error_from_transport(e, self.cfg.url) from e

    async def aclose(self) -> None:
        await self._client.aclose()


# ---- request descriptions ----------------------------------------------------------------------


def create_req(
    image: str | None,
    vcpus: float | None,
    mem_mib: int | None,
    timeout: int | None,
    metadata: Mapping[str, str] | None,
    envs: Mapping[str, str] | None,
    resolution: tuple[int, int] | None,
    desktop: bool | None,
    network: str | Mapping[str, Any] | None,
    disk_mib: int | None,
    on_failure: str | None = None,
) -> Req:
    body: dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if vcpus is not None:
        body["vcpus"] = vcpus
    if mem_mib is not None:
        body["mem_mib"] = mem_mib
    if disk_mib is not None:
        body["disk_mib"] = disk_mib
    if timeout is not None:
        body["timeout_s"] = int(timeout)
    if metadata:
        body["metadata"] = dict(metadata)
    if envs:
        body["env"] = dict(envs)
    if resolution is not None:
        if len(resolution) != 2:
            raise InvalidArgumentError(
                "resolution must be (width, height)", code="invalid_argument", field="resolution"
            )
        body["resolution"] = [int(resolution[0]), int(resolution[1])]
    if desktop is not None:
        body["desktop"] = desktop
    if network is not None:
        # "nat" | "none", or {"mode", "allow_out": [CIDR...], "deny_out": [CIDR...]}.
        body["network"] = network if isinstance(network, str) else dict(network)
    if on_failure is not None:
        body["on_failure"] = on_failure
    return Req("POST", "/v1/runs", json=body)


def list_req(metadata: Mapping[str, str] | None) -> Req:
    params = [(f"metadata.{k}", v) for k, v in (metadata or {}).items()]
    return Req("GET", "/v1/runs", params=params)


def exec_body(
    cmd: str | Sequence[str],
    envs: Mapping[str, str] | None,
    cwd: str | None,
    user: str | None,
    stdin: str | None,
    timeout: float | None,
    background: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if isinstance(cmd, str):
        body["command"] = cmd
    else:
        body["argv"] = list(cmd)
    if envs:
        body["env"] = dict(envs)
    if cwd is not None:
        body["cwd"] = cwd
    if user is not None:
        body["user"] = user
    if stdin is not None:
        body["stdin"] = stdin
    # 0 or None: no limit of our own (the runner applies its default to foreground commands).
    if timeout:
        body["timeout_s"] = float(timeout)
    if background:
        body["background"] = True
    return body


def exec_http_timeout(timeout: float | None) -> float | None:
    """How long the HTTP request of a foreground command may take."""
    return (timeout or DEFAULT_COMMAND_TIMEOUT) + _GRACE


def finish_command(result: CommandResult, cmd: str | Sequence[str]) -> CommandResult:
    """Raises :class:`TimeoutError` for a command killed by its timeout."""
    if result.timed_out:
        raise TimeoutError(
            f"command {cmd!r} timed out", code="timeout", field="timeout", result=result
        )
    return result


def parse_event(line: str) -> dict[str, Any] | None:
    """One NDJSON line of `/exec/stream`; ``None`` for blank lines. Raises the error of an
    ``error`` event."""
    line = line.strip()
    if not line:
        return None
    try:
        ev = json.loads(line)
    except ValueError as e:
        raise VivariumError(f"unexpected line in the output stream: {line[:200]!r}") from e
    if not isinstance(ev, dict):
        raise VivariumError(f"unexpected line in the output stream: {line[:200]!r}")
    if ev.get("type") == "error":
        detail = ev.get("error") or {}
        raise error_from_detail(
            None,
            detail.get("code"),
            str(detail.get("message", "error")),
            detail.get("field"),
            detail.get("reason"),
        )
    return ev


def desktop_req(sandbox_id: str, action: str, **fields: Any) -> Req:
    body = {k: v for k, v in fields.items() if v is not None and v != []}
    return Req("POST", f"/v1/runs/{sandbox_id}/desktop/{action}", json=body)


def screenshot_req(
    sandbox_id: str,
    format: str,
    quality: int | None,
    region: tuple[int, int, int, int] | None,
    scale_to: tuple[int, int] | None,
    cursor: bool,
) -> Req:
    params = [("format", format)]
    if quality is not None:
        params.append(("quality", str(quality)))
    if region is not None:
        params.append(("region", ",".join(str(int(v)) for v in region)))
    if scale_to is not None:
        params += [("width", str(int(scale_to[0]))), ("height", str(int(scale_to[1])))]
    if cursor:
        params.append(("cursor", "1"))
    return Req("GET", f"/v1/runs/{sandbox_id}/desktop/screenshot", params=params)


def keys_arg(keys: str | Sequence[str]) -> str:
    """``"ctrl+c"`` or ``["ctrl", "c"]`` (a combination, as E2B takes it) → ``"ctrl+c"``."""
    return keys if isinstance(keys, str) else "+".join(keys)


def expect(result: Any, kind: str) -> dict[str, Any]:
    if not isinstance(result, dict) or result.get("type") != kind:
        raise VivariumError(f"the runner answered {result!r} where a {kind!r} result was expected")
    return result


def file_params(path: str, **extra: str) -> list[tuple[str, str]]:
    return [("path", path), *extra.items()]


def mode_str(mode: int | None) -> dict[str, str]:
    return {} if mode is None else {"mode": format(mode, "o")}


def proxy_url(base: str, sandbox_id: str, port: int) -> str:
    return f"{base}/sb/{sandbox_id}/p/{int(port)}"


def view_only(vnc_url: str) -> str:
    return vnc_url + ("&" if "?" in vnc_url else "?") + "view_only=true"


def computer_anthropic_req(
    sandbox_id: str,
    tool_input: Mapping[str, Any],
    display_width_px: int | None,
    display_height_px: int | None,
) -> Req:
    body: dict[str, Any] = {"input": dict(tool_input)}
    if display_width_px is not None:
        body["display_width_px"] = display_width_px
    if display_height_px is not None:
        body["display_height_px"] = display_height_px
    return Req("POST", f"/v1/runs/{sandbox_id}/computer/anthropic", json=body)


def computer_openai_req(
    sandbox_id: str,
    action: Mapping[str, Any],
    call_id: str | None,
    display_width: int | None,
    display_height: int | None,
) -> Req:
    body: dict[str, Any] = {"action": dict(action)}
    if call_id is not None:
        body["call_id"] = call_id
    if display_width is not None:
        body["display_width"] = display_width
    if display_height is not None:
        body["display_height"] = display_height
    return Req("POST", f"/v1/runs/{sandbox_id}/computer/openai", json=body)


def tool_req(sandbox_id: str, kind: str, params: Mapping[str, Any]) -> Req:
    p = [(k, str(v)) for k, v in params.items() if v is not None]
    return Req("GET", f"/v1/runs/{sandbox_id}/computer/{kind}/tool", params=p)
