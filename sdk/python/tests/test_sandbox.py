"""Lifecycle, commands, files and errors against the live runner (no desktop session)."""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Iterator

import pytest

import vivarium
from vivarium import Sandbox

from .conftest import Runner


@pytest.fixture(scope="module")
def sbx(runner: Runner) -> Iterator[Sandbox]:
    with Sandbox.create(runner.desktop_image, vcpus=1, mem_mib=512, desktop=False) as s:
        yield s


def test_with_block_creates_and_deletes(runner: Runner) -> None:
    tag = secrets.token_hex(4)
    with Sandbox.create(
        runner.desktop_image,
        vcpus=1,
        mem_mib=256,
        timeout=120,
        metadata={"test": tag},
        envs={"GREETING": "bonjour"},
        desktop=False,
    ) as s:
        sid = s.sandbox_id
        assert s.info.state == "running" and s.info.metadata == {"test": tag}
        assert [i.sandbox_id for i in Sandbox.list(metadata={"test": tag})] == [sid]
        assert s.commands.run("echo $GREETING").stdout == "bonjour\n"
        before = s.get_info().end_at
        s.set_timeout(3600)
        after = s.info.end_at
        assert before is not None and after is not None and after > before
        again = Sandbox.connect(sid)
        assert again.sandbox_id == sid and again.is_running()
        again.close()
    assert Sandbox.list(metadata={"test": tag}) == []
    with pytest.raises(vivarium.NotFoundError):
        Sandbox.connect(sid)


def test_default_image_and_explicit_kill(runner: Runner) -> None:
    # No image: the runner's default (here the desktop image, as --default-image says).
    s = Sandbox.create(desktop=False, mem_mib=256)
    try:
        assert s.info.image == runner.desktop_image
    finally:
        assert s.kill() is True
        s.close()


def test_run_returns_output_and_exit_code(sbx: Sandbox) -> None:
    r = sbx.commands.run("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3)
    r = sbx.commands.run(["sh", "-c", 'echo "$0"', "no shell here; $HOME"])
    assert r.stdout == "no shell here; $HOME\n" and r.exit_code == 0
    r = sbx.commands.run("pwd; echo $A", envs={"A": "1"}, cwd="/tmp")
    assert r.stdout == "/tmp\n1\n"
    assert sbx.commands.run("cat", stdin="from stdin").stdout == "from stdin"


def test_on_stdout_streams(sbx: Sandbox) -> None:
    out: list[str] = []
    err: list[str] = []
    r = sbx.commands.run(
        "for i in 1 2 3; do echo line$i; echo e$i >&2; sleep 0.3; done; exit 2",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == r.stdout == "line1\nline2\nline3\n"
    assert "".join(err) == r.stderr == "e1\ne2\ne3\n"
    assert r.exit_code == 2
    # The lines came as separate events while the command ran, not as one blob at the end.
    assert len(out) >= 2


def test_timeout_raises_with_partial_output(sbx: Sandbox) -> None:
    with pytest.raises(vivarium.TimeoutError) as ei:
        sbx.commands.run("echo started; sleep 30", timeout=1)
    assert isinstance(ei.value, builtins.TimeoutError)
    assert ei.value.result is not None and ei.value.result.stdout == "started\n"
    with pytest.raises(vivarium.TimeoutError):
        sbx.commands.run("sleep 30", timeout=1, on_stdout=lambda _: None)


def test_background(sbx: Sandbox) -> None:
    h = sbx.commands.run("sleep 0.5; echo done", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    r = h.wait()
    assert (r.stdout, r.exit_code) == ("done\n", 0)
    long = sbx.commands.run("sleep 300", background=True)
    long.kill()
    r = long.wait(timeout=10)
    assert r.exit_code is None and r.signal == 9


def test_files(sbx: Sandbox) -> None:
    info = sbx.files.write("/work/dir/hello.txt", "héllo\n", mode=0o600)
    assert info.size == len("héllo\n".encode()) and info.mode & 0o777 == 0o600
    assert sbx.files.read("/work/dir/hello.txt") == "héllo\n"
    blob = bytes(range(256)) * 64
    sbx.files.write("/work/dir/blob.bin", blob)
    assert sbx.files.read("/work/dir/blob.bin", format="bytes") == blob
    sbx.files.make_dir("/work/dir/sub")
    entries = {e.name: e for e in sbx.files.list("/work/dir")}
    assert set(entries) == {"hello.txt", "blob.bin", "sub"}
    assert entries["sub"].type == "dir" and entries["blob.bin"].size == len(blob)
    # Files written through the API are the ones commands see.
    assert sbx.commands.run("cat /work/dir/hello.txt").stdout == "héllo\n"
    sbx.files.remove("/work/dir/hello.txt")
    assert not sbx.files.exists("/work/dir/hello.txt")
    sbx.files.remove("/work/dir")
    assert not sbx.files.exists("/work/dir/blob.bin")
    with pytest.raises(vivarium.NotFoundError) as ei:
        sbx.files.read("/work/nope")
    assert ei.value.status == 404 and ei.value.message


def test_errors(runner: Runner, sbx: Sandbox) -> None:
    with pytest.raises(vivarium.NotFoundError) as nf:
        Sandbox.connect("0123456789abcdef")
    assert nf.value.code == "not_found" and nf.value.message
    with pytest.raises(vivarium.AuthenticationError) as auth:
        Sandbox.list(api_key="wrong-key")
    assert auth.value.status == 401
    with pytest.raises(vivarium.InvalidArgumentError) as bad:
        Sandbox.create(runner.desktop_image, mem_mib=1)
    assert bad.value.field == "mem_mib" and "mem_mib" in str(bad.value)
    with pytest.raises(vivarium.InvalidArgumentError):
        Sandbox.create("busybox:latest")
    with pytest.raises(vivarium.InvalidArgumentError) as bad_timeout:
        sbx.set_timeout(0)
    assert bad_timeout.value.field == "timeout_s"
    with pytest.raises(vivarium.ConnectionError):
        Sandbox.list(url="http://127.0.0.1:9")
    with pytest.raises(vivarium.VivariumError):
        sbx.commands.connect(999_999).wait(timeout=1)
