"""Fixtures: a real `vivarium serve` with its own data dir, port, instance name and address pool,
and the desktop image imported into it. `tests/run.sh` sets VIVARIUM_BIN, VIVARIUM_AGENT and
VIVARIUM_DESKTOP_LAYOUT."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

KEY = "mcp-test-key-0123456789"
DESKTOP_TAG = "vivarium/desktop:mcp-test"


def _env_path(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run crates/vivarium-mcp/tests/run.sh")
    return value


@dataclass
class Runner:
    url: str
    key: str
    bin: str
    desktop_image: str

    def api(self, method: str, path: str, body: dict | None = None, key: str | None = KEY):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if key is not None:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def client_env(self) -> dict[str, str]:
        """Environment for `vivarium mcp` (stdio)."""
        env = {k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME", "LANG"))}
        env["VIVARIUM_URL"] = self.url
        env["VIVARIUM_API_KEY"] = self.key
        return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def runner():
    binary = _env_path("VIVARIUM_BIN")
    agent = _env_path("VIVARIUM_AGENT")
    layout = _env_path("VIVARIUM_DESKTOP_LAYOUT")
    data_dir = Path(tempfile.mkdtemp(prefix="vivarium-mcp-test-", dir="/var/tmp"))
    port = _free_port()
    n = random.randrange(1 << 20)
    instance = f"vvm{n:05x}"
    # 10.91.0.0/16 is this suite's pool (the Rust harness uses 10.89/16): one /24 per runner.
    subnet = f"10.91.{n % 250 + 1}.0/24"
    log = open(data_dir / "runner.log", "ab")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
         "--agent", agent, "--instance", instance, "--subnet", subnet],
        env={**os.environ, "VIVARIUM_API_KEY": KEY, "RUST_LOG": "info,tower_http=warn"},
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    r = Runner(url=f"http://127.0.0.1:{port}", key=KEY, bin=binary, desktop_image=DESKTOP_TAG)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if r.api("GET", "/healthz", key=None)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("runner did not start:\n" + (data_dir / "runner.log").read_text())
            time.sleep(0.05)
        status, body = r.api("POST", "/v1/images/import", {"path": layout, "tag": DESKTOP_TAG})
        assert status == 200 or status == 201, body
        yield r
    finally:
        # Sandboxes outlive a stopped runner on purpose (a restarted runner adopts them): delete
        # whatever a failed test left before stopping it.
        try:
            status, body = r.api("GET", "/v1/runs")
            for run in (body or {}).get("runs", []) if status == 200 else []:
                r.api("DELETE", f"/v1/runs/{run['id']}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            # A stopped runner keeps its instance's nftables table and cgroup parents (a restart
            # adopts them); this instance is gone for good, so remove them.
            subprocess.run(["nft", "delete", "table", "inet", instance], capture_output=True)
            for parent in Path("/sys/fs/cgroup").glob(f"*/{instance}"):
                try:
                    parent.rmdir()
                except OSError:
                    pass
            if os.environ.get("VIVARIUM_KEEP_TEST_DIRS"):
                print(f"runner data dir kept: {data_dir}")
            else:
                shutil.rmtree(data_dir, ignore_errors=True)
