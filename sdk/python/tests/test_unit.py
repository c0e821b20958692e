"""Checks that need no runner: error mapping, argument shaping, sync/async parity."""

from __future__ import annotations

import builtins
import inspect

import vivarium
from vivarium import AsyncSandbox, Sandbox
from vivarium._core import Config, keys_arg, parse_event
from vivarium._errors import error_from_body


def test_errors_map_by_code_then_status() -> None:
    e = error_from_body(
        400,
        b'{"error":{"code":"invalid_argument","message":"mem_mib too small","field":"mem_mib"}}',
    )
    assert isinstance(e, vivarium.InvalidArgumentError)
    assert (e.code, e.field, e.status, e.message) == (
        "invalid_argument",
        "mem_mib",
        400,
        "mem_mib too small",
    )
    assert "mem_mib too small" in str(e)
    assert isinstance(
        error_from_body(404, b'{"error":{"code":"not_found","message":"x"}}'),
        vivarium.NotFoundError,
    )
    assert isinstance(error_from_body(401, b""), vivarium.AuthenticationError)
    t = error_from_body(408, b'{"error":{"code":"timeout","message":"slow"}}')
    assert isinstance(t, vivarium.TimeoutError) and isinstance(t, builtins.TimeoutError)
    # A body that is not the API's error shape still becomes an error carrying it.
    odd = error_from_body(502, b"bad gateway")
    assert type(odd) is vivarium.VivariumError and odd.message == "bad gateway"
    for cls in (
        vivarium.NotFoundError,
        vivarium.AuthenticationError,
        vivarium.TimeoutError,
        vivarium.InvalidArgumentError,
        vivarium.ConnectionError,
    ):
        assert issubclass(cls, vivarium.VivariumError)


def test_failed_sandbox_error_names_its_reason() -> None:
    body = (
        b'{"error":{"code":"sandbox_failed","reason":"oom_killed",'
        b'"message":"sandbox abc is failed (oom_killed) since ...: the kernel OOM killer killed"}}'
    )
    e = error_from_body(409, body)
    assert isinstance(e, vivarium.SandboxFailedError)
    assert isinstance(e, vivarium.ConflictError)
    assert e.reason == "oom_killed" and e.status == 409
    assert "oom_killed" in str(e)
    big = error_from_body(413, b'{"error":{"code":"payload_too_large","message":"too big"}}')
    assert isinstance(big, vivarium.PayloadTooLargeError)
    info = vivarium.SandboxInfo.from_json(
        {
            "id": "abc",
            "state": "failed",
            "failure": {
                "reason": "killed",
                "message": "killed by signal 9",
                "at": "2026-01-01T00:00:00Z",
                "signal": 9,
            },
            "on_failure": "keep",
        }
    )
    assert info.failure is not None and info.failure.reason == "killed"
    assert info.failure.signal == 9 and info.on_failure == "keep"
    try:
        parse_event(
            '{"type":"error","error":{"code":"sandbox_failed","reason":"killed","message":"x"}}'
        )
    except vivarium.SandboxFailedError as err:
        assert err.reason == "killed"
    else:
        raise AssertionError("an error event must raise")


def test_stream_error_event_raises() -> None:
    assert parse_event("  ") is None
    assert parse_event('{"type":"stdout","data":"x"}') == {"type": "stdout", "data": "x"}
    try:
        parse_event('{"type":"error","error":{"code":"not_found","message":"gone"}}')
    except vivarium.NotFoundError as e:
        assert e.message == "gone"
    else:
        raise AssertionError("an error event must raise")


def test_keys_and_config(monkeypatch: object) -> None:
    assert keys_arg(["ctrl", "shift", "t"]) == "ctrl+shift+t"
    assert keys_arg("Return") == "Return"
    cfg = Config.resolve("http://h:1/", "k", None)
    assert cfg.url == "http://h:1" and cfg.headers()["Authorization"] == "Bearer k"


def _public(cls: type) -> dict[str, object]:
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_")}


def test_async_client_mirrors_sync_client() -> None:
    sync, asyn = _public(Sandbox), _public(AsyncSandbox)
    assert set(sync) == set(asyn)
    for name, member in sync.items():
        if callable(member) and not isinstance(member, property):
            is_coro = inspect.iscoroutinefunction(asyn[name])
            # Only URL builders stay synchronous in the async client.
            assert is_coro == (name not in {"get_host", "get_url"}), name
