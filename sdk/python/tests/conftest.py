"""A live `vivarium serve` for the whole test session, with its own data dir, port, instance name
and address pool (so it can run beside other runners), and the desktop image imported.

Inputs (all optional): ``VIVARIUM_BIN`` (default ``target/debug/vivarium``), ``VIVARIUM_AGENT``
(default: the output of ``scripts/build-agent.sh``), ``VIVARIUM_DESKTOP_LAYOUT`` (default: the
output of ``images/desktop/build.sh``). Needs root, like the runner.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from vivarium import Sandbox

REPO = Path(__file__).resolve().parents[3]
KEY = "pytest-key-" + secrets.token_hex(8)
DESKTOP_TAG = "vivarium/desktop:pytest"


@dataclass
class Runner:
    url: str
    key: str
    data_dir: Path
    log: Path
    desktop_image: str

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _last_line_of(script: Path) -> str:
    out = subprocess.run(
        ["bash", str(script)], cwd=REPO, check=True, stdout=subprocess.PIPE, text=True
    )
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{script} printed no path")
    return lines[-1].strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def runner() -> Iterator[Runner]:
    binary = Path(os.environ.get("VIVARIUM_BIN") or REPO / "target/debug/vivarium")
    if not binary.is_file():
        pytest.fail(
            f"runner binary {binary} not found: cargo build -p vivarium or set VIVARIUM_BIN"
        )
    agent = os.environ.get("VIVARIUM_AGENT") or _last_line_of(REPO / "scripts/build-agent.sh")
    layout = os.environ.get("VIVARIUM_DESKTOP_LAYOUT") or _last_line_of(
        REPO / "images/desktop/build.sh"
    )
    data_dir = Path(tempfile.mkdtemp(prefix="vivarium-pytest-", dir="/var/tmp"))
    port = _free_port()
    n = secrets.randbelow(250) + 1
    instance = f"vvp{secrets.token_hex(3)[:5]}"
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "runner.log"
    env = dict(os.environ, VIVARIUM_API_KEY=KEY, RUST_LOG="info,tower_http=warn")
    # The runner reads VIVARIUM_URL as a client option only; keep the caller's out of its way.
    env.pop("VIVARIUM_URL", None)
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data_dir),
                "--agent",
                agent,
                "--instance",
                instance,
                "--subnet",
                f"10.87.{n}.0/24",
                "--default-image",
                DESKTOP_TAG,
            ],
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    r = Runner(url=url, key=KEY, data_dir=data_dir, log=log, desktop_image=DESKTOP_TAG)
    saved = {k: os.environ.get(k) for k in ("VIVARIUM_URL", "VIVARIUM_API_KEY")}
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"runner exited early ({proc.returncode}):\n{r.log_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"runner did not answer /healthz:\n{r.log_text()}")
            time.sleep(0.05)
        resp = httpx.post(
            f"{url}/v1/images/import",
            json={"path": layout, "tag": DESKTOP_TAG},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=600,
        )
        assert resp.status_code < 300, f"importing {layout}: {resp.status_code} {resp.text}"
        # The SDK reads these: every test below goes through the environment, as users do.
        os.environ["VIVARIUM_URL"] = url
        os.environ["VIVARIUM_API_KEY"] = KEY
        yield r
    finally:
        try:
            for info in Sandbox.list(url=url, api_key=KEY):
                Sandbox.connect(info.sandbox_id, url=url, api_key=KEY).kill()
        except Exception as e:  # noqa: BLE001 - cleanup must reach the runner's shutdown
            print(f"cleanup: deleting sandboxes failed: {e}")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(data_dir, ignore_errors=True)
        # A stopped runner keeps its nftables table and cgroup parents (its sandboxes outlive it);
        # this instance is gone for good, so remove them as well.
        subprocess.run(["nft", "delete", "table", "inet", instance], capture_output=True)
        for ctrl in ("memory", "cpu", "cpuacct", "pids", "freezer", "devices", "unified", ""):
            try:
                (Path("/sys/fs/cgroup") / ctrl / instance).rmdir()
            except OSError:
                pass


@pytest.fixture(scope="session")
def desktop(runner: Runner) -> Iterator[Sandbox]:
    """One desktop sandbox (1024×768) shared by the desktop tests."""
    with Sandbox.create(
        runner.desktop_image,
        vcpus=2,
        mem_mib=2048,
        resolution=(1024, 768),
        metadata={"suite": "pytest-desktop"},
    ) as sbx:
        yield sbx
