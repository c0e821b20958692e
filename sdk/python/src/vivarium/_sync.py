"""The synchronous client: :class:`Sandbox`."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload

from . import _core
from ._core import Config, Req, SyncTransport
from ._errors import NotFoundError, VivariumError
from ._models import CommandResult, EntryInfo, ProcessInfo, SandboxInfo, Window

OutputHandler = Callable[[str], Any]


class CommandHandle:
    """A command started with ``background=True``."""

    def __init__(self, sandbox: Sandbox, pid: int) -> None:
        self._sandbox = sandbox
        self.pid = pid

    def wait(self, timeout: float | None = None) -> CommandResult:
        """Blocks until the process ends (or ``timeout`` seconds pass: :class:`TimeoutError`)."""
        body: dict[str, Any] = {"timeout_s": timeout} if timeout else {}
        http_timeout = timeout + 30 if timeout else None
        req = Req(
            "POST",
            f"/v1/runs/{self._sandbox.sandbox_id}/processes/{self.pid}/wait",
            json=body,
            timeout=http_timeout,
        )
        info = ProcessInfo.from_json(self._sandbox._t.json(req))
        return info.result()

    def kill(self, signal: str | int = "KILL") -> None:
        self._sandbox.commands.kill(self.pid, signal)

    def __repr__(self) -> str:
        return f"CommandHandle(pid={self.pid})"


class Commands:
    """``sandbox.commands``: run programs in the sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._s = sandbox

    @overload
    def run(
        self,
        cmd: str | Sequence[str],
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = _core.DEFAULT_COMMAND_TIMEOUT,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        user: str | None = None,
        stdin: str | None = None,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str | Sequence[str],
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        user: str | None = None,
        stdin: str | None = None,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str | Sequence[str],
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = _core.DEFAULT_COMMAND_TIMEOUT,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        user: str | None = None,
        stdin: str | None = None,
    ) -> CommandResult | CommandHandle:
        """Runs ``cmd`` (a shell command line, or an argv list run without a shell).

        Foreground: waits and returns stdout, stderr and exit_code; a non-zero exit is *not* an
        error, a command killed by its ``timeout`` (seconds, ``0``/``None``: the runner's default)
        raises :class:`vivarium.TimeoutError`. With ``on_stdout``/``on_stderr`` the output is
        streamed (NDJSON) and handed to the callbacks as it is produced.
        ``background=True`` returns a :class:`CommandHandle` at once (no time limit by default).
        """
        sid = self._s.sandbox_id
        if background:
            body = _core.exec_body(cmd, envs, cwd, user, stdin, timeout, background=False)
            if timeout == _core.DEFAULT_COMMAND_TIMEOUT:
                # The foreground default is not meant for background processes.
                body.pop("timeout_s", None)
            info = self._s._t.json(Req("POST", f"/v1/runs/{sid}/processes", json=body))
            return CommandHandle(self._s, int(info["pid"]))
        body = _core.exec_body(cmd, envs, cwd, user, stdin, timeout, background=False)
        http_timeout = _core.exec_http_timeout(timeout)
        if on_stdout is None and on_stderr is None:
            req = Req("POST", f"/v1/runs/{sid}/exec", json=body, timeout=http_timeout)
            result = CommandResult.from_json(self._s._t.json(req))
            return _core.finish_command(result, cmd)
        req = Req("POST", f"/v1/runs/{sid}/exec/stream", json=body, timeout=http_timeout)
        out: builtins.list[str] = []
        err: builtins.list[str] = []
        end: dict[str, Any] | None = None
        with self._s._t.lines(req) as lines:
            for line in lines:
                ev = _core.parse_event(line)
                if ev is None:
                    continue
                kind = ev.get("type")
                if kind == "stdout":
                    out.append(ev["data"])
                    if on_stdout is not None:
                        on_stdout(ev["data"])
                elif kind == "stderr":
                    err.append(ev["data"])
                    if on_stderr is not None:
                        on_stderr(ev["data"])
                elif kind == "exit":
                    end = ev
        if end is None:
            raise VivariumError("the output stream ended before the command's exit status")
        result = CommandResult(
            stdout="".join(out),
            stderr="".join(err),
            exit_code=end.get("exit_code"),
            signal=end.get("signal"),
            timed_out=bool(end.get("timed_out")),
            oom_killed=bool(end.get("oom_killed")),
        )
        return _core.finish_command(result, cmd)

    def list(self) -> builtins.list[ProcessInfo]:
        """Background processes started in this sandbox."""
        d = self._s._t.json(Req("GET", f"/v1/runs/{self._s.sandbox_id}/processes"))
        return [ProcessInfo.from_json(p) for p in d.get("processes", [])]

    def kill(self, pid: int, signal: str | int = "KILL") -> None:
        self._s._t.send(
            Req(
                "POST",
                f"/v1/runs/{self._s.sandbox_id}/processes/{pid}/signal",
                json={"signal": signal},
            )
        )

    def connect(self, pid: int) -> CommandHandle:
        """A handle on a background process started earlier."""
        return CommandHandle(self._s, pid)


class Files:
    """``sandbox.files``: the sandbox's filesystem."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._s = sandbox

    def _path(self) -> str:
        return f"/v1/runs/{self._s.sandbox_id}/files"

    @overload
    def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        """The file's content: ``str`` (UTF-8) by default, ``bytes`` with ``format="bytes"``."""
        data = self._s._t.content(Req("GET", self._path(), params=_core.file_params(path)))
        return data if format == "bytes" else data.decode("utf-8")

    def write(self, path: str, data: str | bytes, mode: int | None = None) -> EntryInfo:
        """Writes (creates or replaces) a file; parent directories are created."""
        content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        params = _core.file_params(path, **_core.mode_str(mode))
        req = Req("PUT", self._path(), params=params, content=content)
        return EntryInfo.from_json(self._s._t.json(req))

    def list(self, path: str, depth: int = 1) -> builtins.list[EntryInfo]:
        params = _core.file_params(path, depth=str(depth))
        d = self._s._t.json(Req("GET", self._path() + "/list", params=params))
        return [EntryInfo.from_json(e) for e in d.get("entries", [])]

    def remove(self, path: str, recursive: bool = True) -> None:
        """Removes a file, or a directory with everything in it (``recursive=False`` refuses
        non-empty directories)."""
        params = _core.file_params(path, recursive="true" if recursive else "false")
        self._s._t.send(Req("DELETE", self._path(), params=params))

    def get_info(self, path: str) -> EntryInfo:
        req = Req("GET", self._path() + "/stat", params=_core.file_params(path))
        return EntryInfo.from_json(self._s._t.json(req))

    def exists(self, path: str) -> bool:
        try:
            self.get_info(path)
        except NotFoundError:
            return False
        return True

    def make_dir(self, path: str) -> None:
        self._s._t.send(Req("POST", self._path() + "/mkdir", json={"path": path}))


class Stream:
    """``sandbox.stream``: the live view of the desktop (noVNC through the runner's proxy)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._s = sandbox

    def get_url(self, view_only: bool = False) -> str:
        url = self._s.vnc_url
        if url is None:
            raise VivariumError(
                f"sandbox {self._s.sandbox_id} has no desktop", code="not_a_desktop"
            )
        return _core.view_only(url) if view_only else url


class Computer:
    """``sandbox.computer``: Anthropic's and OpenAI's computer tools, executed by the runner."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._s = sandbox
        #: Why the runner refused the last :meth:`openai` action (the item it answered is exactly
        #: what OpenAI accepts, so the reason travels in the ``X-Vivarium-Error`` header), or None.
        self.last_openai_error: str | None = None

    def anthropic(
        self,
        input: Mapping[str, Any],
        display_width_px: int | None = None,
        display_height_px: int | None = None,
    ) -> dict[str, Any]:
        """Runs one ``computer`` tool_use ``input``; returns ``{"content": [...], "is_error"}``,
        the blocks to put in the ``tool_result``."""
        req = _core.computer_anthropic_req(
            self._s.sandbox_id, input, display_width_px, display_height_px
        )
        result: dict[str, Any] = self._s._t.json(req)
        return result

    def openai(
        self,
        action: Mapping[str, Any],
        call_id: str | None = None,
        display_width: int | None = None,
        display_height: int | None = None,
    ) -> dict[str, Any]:
        """Runs one ``computer_call`` action; returns the ``computer_call_output`` item.

        A refused action (off-screen, unknown key…) still answers an item with the current
        screen; the reason is then in :attr:`last_openai_error`.
        """
        req = _core.computer_openai_req(
            self._s.sandbox_id, action, call_id, display_width, display_height
        )
        resp = self._s._t.send(req)
        self.last_openai_error = resp.headers.get("x-vivarium-error")
        result: dict[str, Any] = _core._json(resp)
        return result

    def anthropic_tool(
        self,
        version: str = "computer_20250124",
        display_width_px: int | None = None,
        display_height_px: int | None = None,
    ) -> dict[str, Any]:
        """The tool definition to send to the model."""
        params = {
            "version": version,
            "display_width_px": display_width_px,
            "display_height_px": display_height_px,
        }
        result: dict[str, Any] = self._s._t.json(
            _core.tool_req(self._s.sandbox_id, "anthropic", params)
        )
        return result

    def openai_tool(
        self, display_width: int | None = None, display_height: int | None = None
    ) -> dict[str, Any]:
        params = {"display_width": display_width, "display_height": display_height}
        result: dict[str, Any] = self._s._t.json(
            _core.tool_req(self._s.sandbox_id, "openai", params)
        )
        return result


class Sandbox:
    """A vivarium sandbox. ``with Sandbox.create() as sbx:`` deletes it when the block ends.

    The runner's URL and API key come from the ``url``/``api_key`` arguments or from
    ``VIVARIUM_URL`` (default ``http://127.0.0.1:7070``) and ``VIVARIUM_API_KEY``.
    """

    def __init__(self, info: SandboxInfo, transport: SyncTransport) -> None:
        self._t = transport
        self._info = info
        self.commands = Commands(self)
        self.files = Files(self)
        self.stream = Stream(self)
        self.computer = Computer(self)

    # ---- lifecycle ----

    @classmethod
    def create(
        cls,
        image: str | None = None,
        *,
        vcpus: float | None = None,
        mem_mib: int | None = None,
        timeout: int | None = None,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        resolution: tuple[int, int] | None = None,
        desktop: bool | None = None,
        network: Literal["nat", "none"] | Mapping[str, Any] | None = None,
        disk_mib: int | None = None,
        on_failure: Literal["keep", "delete"] | None = None,
        api_key: str | None = None,
        url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Creates a sandbox from ``image`` (``None``: the runner's default image).

        ``timeout`` is the sandbox's lifetime in seconds (extend it with :meth:`set_timeout`),
        ``resolution`` the desktop's ``(width, height)``.
        """
        t = SyncTransport(Config.resolve(url, api_key, request_timeout))
        try:
            req = _core.create_req(
                image,
                vcpus,
                mem_mib,
                timeout,
                metadata,
                envs,
                resolution,
                desktop,
                network,
                disk_mib,
                on_failure,
            )
            info = SandboxInfo.from_json(t.json(req))
        except BaseException:
            t.close()
            raise
        return cls(info, t)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Attaches to an existing sandbox."""
        t = SyncTransport(Config.resolve(url, api_key, request_timeout))
        try:
            info = SandboxInfo.from_json(t.json(Req("GET", f"/v1/runs/{sandbox_id}")))
        except BaseException:
            t.close()
            raise
        return cls(info, t)

    @staticmethod
    def list(
        metadata: Mapping[str, str] | None = None,
        *,
        api_key: str | None = None,
        url: str | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Every sandbox of the runner, or those whose metadata has all of ``metadata``."""
        t = SyncTransport(Config.resolve(url, api_key, None))
        try:
            d = t.json(_core.list_req(metadata))
        finally:
            t.close()
        return [SandboxInfo.from_json(r) for r in d.get("runs", [])]

    def kill(self) -> bool:
        """Deletes the sandbox; ``False`` when it was already gone."""
        try:
            self._t.send(Req("DELETE", f"/v1/runs/{self.sandbox_id}", timeout=60.0))
        except NotFoundError:
            return False
        return True

    def set_timeout(self, timeout: int) -> None:
        """The sandbox now expires ``timeout`` seconds from now."""
        req = Req("POST", f"/v1/runs/{self.sandbox_id}/timeout", json={"timeout_s": int(timeout)})
        self._info = SandboxInfo.from_json(self._t.json(req))

    def get_info(self) -> SandboxInfo:
        """Fetches the sandbox's current description."""
        self._info = SandboxInfo.from_json(self._t.json(Req("GET", f"/v1/runs/{self.sandbox_id}")))
        return self._info

    def is_running(self) -> bool:
        try:
            return self.get_info().state == "running"
        except NotFoundError:
            return False

    def close(self) -> None:
        """Closes this client's connections (the sandbox keeps running)."""
        self._t.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.kill()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"Sandbox(sandbox_id={self.sandbox_id!r})"

    # ---- properties ----

    @property
    def sandbox_id(self) -> str:
        return self._info.sandbox_id

    @property
    def id(self) -> str:
        return self._info.sandbox_id

    @property
    def info(self) -> SandboxInfo:
        """The description from creation or the last :meth:`get_info`."""
        return self._info

    @property
    def access_token(self) -> str:
        """Opens this sandbox's port proxy without the API key (``?token=``)."""
        return self._info.access_token

    @property
    def cdp_url(self) -> str | None:
        """Chrome DevTools endpoint for ``playwright.chromium.connect_over_cdp``."""
        return self._info.cdp_url

    @property
    def vnc_url(self) -> str | None:
        return self._info.vnc_url

    def get_host(self, port: int) -> str:
        """The proxy URL of ``port`` in the sandbox (also services bound to its 127.0.0.1).

        Authenticate with the API key, the header ``X-Vivarium-Token: <access_token>``, or
        :meth:`get_url` which carries the token.
        """
        return _core.proxy_url(self._t.cfg.url, self.sandbox_id, port)

    def get_url(self, port: int, path: str = "/") -> str:
        """A URL of ``port`` carrying the sandbox's access token, for a browser."""
        return f"{self.get_host(port)}/{path.lstrip('/')}?token={self.access_token}"

    # ---- desktop ----

    def _act(self, action: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._t.json(_core.desktop_req(self.sandbox_id, action, **fields))
        return result

    def screenshot(
        self,
        format: Literal["png", "jpeg", "webp"] = "png",
        *,
        quality: int | None = None,
        region: tuple[int, int, int, int] | None = None,
        scale_to: tuple[int, int] | None = None,
        cursor: bool = False,
    ) -> bytes:
        """The screen as encoded image bytes. ``region`` is ``(x, y, width, height)``."""
        req = _core.screenshot_req(self.sandbox_id, format, quality, region, scale_to, cursor)
        return self._t.content(req)

    def left_click(
        self, x: int | None = None, y: int | None = None, *, modifiers: Sequence[str] = ()
    ) -> None:
        """Clicks at ``(x, y)``, or where the pointer is. ``modifiers``: keys held (``ctrl``…)."""
        self._act("click", x=x, y=y, button="left", modifiers=list(modifiers))

    def right_click(
        self, x: int | None = None, y: int | None = None, *, modifiers: Sequence[str] = ()
    ) -> None:
        self._act("click", x=x, y=y, button="right", modifiers=list(modifiers))

    def middle_click(
        self, x: int | None = None, y: int | None = None, *, modifiers: Sequence[str] = ()
    ) -> None:
        self._act("click", x=x, y=y, button="middle", modifiers=list(modifiers))

    def double_click(
        self, x: int | None = None, y: int | None = None, *, modifiers: Sequence[str] = ()
    ) -> None:
        self._act("click", x=x, y=y, button="left", count=2, modifiers=list(modifiers))

    def triple_click(
        self, x: int | None = None, y: int | None = None, *, modifiers: Sequence[str] = ()
    ) -> None:
        self._act("click", x=x, y=y, button="left", count=3, modifiers=list(modifiers))

    def move_mouse(self, x: int, y: int) -> None:
        self._act("move", x=x, y=y)

    def mouse_press(self, button: str = "left", x: int | None = None, y: int | None = None) -> None:
        self._act("mouse_down", x=x, y=y, button=button)

    def mouse_release(
        self, button: str = "left", x: int | None = None, y: int | None = None
    ) -> None:
        self._act("mouse_up", x=x, y=y, button=button)

    def drag(
        self,
        fr: tuple[int, int],
        to: tuple[int, int],
        *,
        via: Sequence[tuple[int, int]] = (),
        button: str = "left",
    ) -> None:
        """Presses at ``fr``, moves through ``via`` to ``to`` and releases."""
        path = [list(fr), *(list(p) for p in via), list(to)]
        self._act("drag", path=path, button=button)

    def scroll(
        self,
        direction: Literal["up", "down", "left", "right"] = "down",
        amount: int = 1,
        *,
        x: int | None = None,
        y: int | None = None,
    ) -> None:
        """``amount`` wheel clicks, at ``(x, y)`` or where the pointer is."""
        self._act("scroll", x=x, y=y, direction=direction, amount=amount)

    def write(self, text: str) -> None:
        """Types ``text`` (any Unicode)."""
        self._act("type", text=text)

    def press(self, keys: str | Sequence[str]) -> None:
        """Presses a key or combination: ``"Return"``, ``"ctrl+a"`` or ``["ctrl", "a"]``."""
        self._act("key", keys=_core.keys_arg(keys))

    def key_down(self, keys: str | Sequence[str]) -> None:
        self._act("key_down", keys=_core.keys_arg(keys))

    def key_up(self, keys: str | Sequence[str]) -> None:
        self._act("key_up", keys=_core.keys_arg(keys))

    def get_cursor_position(self) -> tuple[int, int]:
        r = _core.expect(self._act("cursor_position"), "position")
        return int(r["x"]), int(r["y"])

    def get_screen_size(self) -> tuple[int, int]:
        r = _core.expect(self._act("screen_size"), "size")
        return int(r["width"]), int(r["height"])

    def wait(self, ms: int) -> None:
        """Sleeps ``ms`` milliseconds in the runner (at most 60000)."""
        self._act("wait", ms=ms)

    def launch(self, application: str, args: Sequence[str] = ()) -> int:
        """Starts a program (on PATH, or a ``.desktop`` id) on the desktop; returns its pid."""
        r = _core.expect(self._act("launch", app=application, args=list(args)), "launched")
        return int(r["pid"])

    def open(self, file_or_url: str) -> None:
        """Opens a URL in the desktop's Chromium (a new tab)."""
        self._act("open", url=file_or_url)

    def get_clipboard(self) -> str | None:
        r = _core.expect(self._act("clipboard_get"), "clipboard")
        text = r.get("text")
        return None if text is None else str(text)

    def set_clipboard(self, text: str) -> None:
        self._act("clipboard_set", text=text)

    def windows(self) -> builtins.list[Window]:
        r = _core.expect(self._act("windows"), "windows")
        return [Window.from_json(w) for w in r.get("windows", [])]

    def get_current_window_id(self) -> int | None:
        """The focused window, if any."""
        return next((w.id for w in self.windows() if w.focused), None)

    def get_application_windows(self, application: str) -> builtins.list[int]:
        """Windows whose application (WM_CLASS) is ``application``, ignoring case."""
        app = application.lower()
        return [w.id for w in self.windows() if w.app.lower() == app]

    def get_window_title(self, window_id: int) -> str:
        for w in self.windows():
            if w.id == window_id:
                return str(w.title)
        raise NotFoundError(f"no window {window_id}", code="not_found", field="window_id")

    def focus_window(self, window_id: int) -> None:
        self._act("focus_window", id=window_id)

    def move_window(self, window_id: int, x: int, y: int) -> None:
        self._act("move_window", id=window_id, x=x, y=y)

    def resize_window(self, window_id: int, width: int, height: int) -> None:
        self._act("resize_window", id=window_id, width=width, height=height)

    def maximize_window(self, window_id: int) -> None:
        self._act("maximize_window", id=window_id)

    def minimize_window(self, window_id: int) -> None:
        self._act("minimize_window", id=window_id)

    def close_window(self, window_id: int) -> None:
        self._act("close_window", id=window_id)

    def set_wallpaper(self, path: str) -> None:
        self._act("set_wallpaper", path=path)

    def set_resolution(self, width: int, height: int) -> None:
        self._act("set_resolution", width=width, height=height)

    def actions(self, actions: Sequence[Mapping[str, Any]]) -> builtins.list[dict[str, Any]]:
        """Runs several raw actions (``{"action": "click", "x": 1, "y": 2}``…) in one request,
        stopping at the first error; screenshots come back base64 in ``data``."""
        req = Req(
            "POST",
            f"/v1/runs/{self.sandbox_id}/desktop/actions",
            json={"actions": [dict(a) for a in actions]},
        )
        results: builtins.list[dict[str, Any]] = self._t.json(req)["results"]
        return results
