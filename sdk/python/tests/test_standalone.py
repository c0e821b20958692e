"""The runner on its own, as a developer meets it: `cargo build --release`, then
`target/release/vivarium serve` with nothing but a data dir and a port — no `--agent`, no
`--default-image`, no API key in the environment. `Sandbox.create()` without an image must give a
working desktop (the runner builds or imports its built-in desktop image on first need), a busybox
image must work (so the runner found a *static* guest agent, not the dynamic one `cargo build`
puts beside it), and the desktop's terminal must draw what is typed in any script.

Inputs: ``VIVARIUM_RELEASE_BIN`` (default ``target/release/vivarium``; `scripts/test.sh` builds it
with `cargo build --release`). Needs root, like the runner. Runs with the runner's default
instance name, so it refuses to start beside another runner that uses it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from vivarium import Sandbox

REPO = Path(__file__).resolve().parents[3]
TYPED = "héllo 你好 ✓ 🙂"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _busybox_layout(dest: Path) -> Path:
    """An OCI image layout holding Debian's static busybox and its applet links."""
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        pytest.fail("/bin/busybox is missing (apt-get install busybox-static; scripts/setup.sh does)")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "tmp", "etc", "root"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(ti)
        data = busybox.read_bytes()
        ti = tarfile.TarInfo("bin/busybox")
        ti.size, ti.mode = len(data), 0o755
        tar.addfile(ti, io.BytesIO(data))
        for applet in ("sh", "echo", "cat", "ls", "sleep", "uname", "id"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(ti)
    layer_tar = raw.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return digest

    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "WorkingDir": "/root"},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + put(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + put(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + put(manifest),
                "size": len(manifest),
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return dest


class Standalone:
    def __init__(self, url: str, key: str, data_dir: Path, log: Path) -> None:
        self.url, self.key, self.data_dir, self.log = url, key, data_dir, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="module")
def standalone() -> Iterator[Standalone]:
    binary = Path(os.environ.get("VIVARIUM_RELEASE_BIN") or REPO / "target/release/vivarium")
    if not binary.is_file():
        pytest.fail(f"{binary} not found: run `cargo build --release` (scripts/test.sh does)")
    # The default instance owns the nftables table `vivarium`: another runner using it (a quick
    # start on this machine) would have its sandboxes treated as this runner's leftovers.
    if subprocess.run(["nft", "list", "table", "inet", "vivarium"], capture_output=True).returncode == 0:
        pytest.fail("a runner with the default instance name is active on this host; stop it (or `vivarium uninstall`) first")
    data_dir = Path(tempfile.mkdtemp(prefix="vivarium-standalone-", dir="/var/tmp"))
    port = _free_port()
    log = data_dir.parent / (data_dir.name + ".log")
    # Nothing implicit: no agent path, default image or key from the test environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIVARIUM_")}
    env["RUST_LOG"] = "info,tower_http=warn"
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [str(binary), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    s = Standalone(url, "", data_dir, log)
    try:
        deadline = time.monotonic() + 600  # may build the static agent first
        while True:
            if proc.poll() is not None:
                pytest.fail(f"runner exited early ({proc.returncode}):\n{s.log_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"runner did not answer /healthz:\n{s.log_text()}"
            time.sleep(0.1)
        s.key = (data_dir / "api-key").read_text().strip()
        yield s
    finally:
        try:
            for info in Sandbox.list(url=url, api_key=s.key):
                Sandbox.connect(info.sandbox_id, url=url, api_key=s.key).kill()
        except Exception as e:  # noqa: BLE001 - cleanup must reach the runner's shutdown
            print(f"cleanup: deleting sandboxes failed: {e}")
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Uninstall as a user would: removes the default instance's nftables table and cgroups.
        out = subprocess.run(
            [str(binary), "uninstall", "--data-dir", str(data_dir), "--purge"],
            capture_output=True,
            text=True,
            env=env,
        )
        print(out.stdout, out.stderr)
        shutil.rmtree(data_dir, ignore_errors=True)
        log.unlink(missing_ok=True)
        assert out.returncode == 0, f"vivarium uninstall failed: {out.stderr}"
        assert subprocess.run(["nft", "list", "table", "inet", "vivarium"], capture_output=True).returncode != 0


def test_found_a_static_agent_and_keeps_the_key_out_of_the_log(standalone: Standalone) -> None:
    log = standalone.log_text()
    assert "guest agent" in log and "skipping this guest agent" in log, log
    assert "dynamically linked" in log, "target/release/vivarium-agent (dynamic) was not refused"
    assert standalone.key and standalone.key not in log, "the generated API key reached the log"


def test_busybox_sandbox(standalone: Standalone, tmp_path: Path) -> None:
    layout = _busybox_layout(tmp_path / "busybox")
    r = httpx.post(
        f"{standalone.url}/v1/images/import",
        json={"path": str(layout), "tag": "busybox:standalone"},
        headers={"Authorization": f"Bearer {standalone.key}"},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    with Sandbox.create("busybox:standalone", url=standalone.url, api_key=standalone.key) as sbx:
        res = sbx.commands.run("echo hello from $(uname -s)")
        assert res.exit_code == 0 and res.stdout == "hello from Linux\n", res


def _glyph_cells(png: bytes, win: tuple[int, int, int, int]) -> list[int]:
    """Ink (pixels unlike the background) in each cell between the red blocks of the terminal line
    the test printed (`█é█你█好█✓█🙂█`, blocks in red). A glyph the font cannot draw leaves its
    cell blank: zero ink."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    x0, y0, w, h = win
    crop = img.crop((max(x0, 0), max(y0, 0), x0 + w, y0 + h))
    px = crop.load()
    cw, ch = crop.size

    def red(p: tuple[int, int, int]) -> bool:
        return p[0] >= 100 and p[0] > 3 * p[1] and p[0] > 3 * p[2]

    per_col = {x: [y for y in range(ch) if red(px[x, y])] for x in range(cw)}
    tall = {x: ys for x, ys in per_col.items() if len(ys) >= 8}
    assert tall, "no red block drawn"
    top = min(min(ys) for ys in tall.values())
    bottom = max(max(ys) for ys in tall.values())
    # A block column is red over (nearly) the whole line height; emoji edges never are.
    cols = sorted(x for x, ys in tall.items() if len(ys) >= 0.8 * (bottom - top + 1))
    blocks: list[tuple[int, int]] = []
    for x in cols:
        if blocks and x <= blocks[-1][1] + 1:
            blocks[-1] = (blocks[-1][0], x)
        else:
            blocks.append((x, x))
    # The background: the most common colour of the line.
    counts: dict[tuple[int, int, int], int] = {}
    for y in range(top, bottom + 1):
        for x in range(cw):
            counts[px[x, y]] = counts.get(px[x, y], 0) + 1
    bg = max(counts, key=lambda c: counts[c])
    ink = []
    for (_, left_end), (right_start, _) in zip(blocks, blocks[1:]):
        n = 0
        for y in range(top, bottom + 1):
            for x in range(left_end + 1, right_start):
                p = px[x, y]
                if sum(abs(a - b) for a, b in zip(p, bg)) > 60:
                    n += 1
        ink.append(n)
    return ink


def test_desktop_without_an_image_and_a_terminal_that_draws_every_script(
    standalone: Standalone, tmp_path: Path
) -> None:
    with Sandbox.create(
        url=standalone.url, api_key=standalone.key, request_timeout=900, timeout=900
    ) as sbx:
        st = httpx.get(
            f"{standalone.url}/v1/images/default",
            headers={"Authorization": f"Bearer {standalone.key}"},
        ).json()
        assert st["source"] == "builtin" and st["state"] == "ready", st
        assert sbx.info.image == st["reference"]
        assert sbx.get_screen_size()[0] > 0

        pid = sbx.launch("x-terminal-emulator")  # the desktop's terminal (LXTerminal)
        deadline = time.monotonic() + 30
        term = None
        while term is None:
            term = next((w for w in sbx.windows() if w.pid == pid), None)
            assert time.monotonic() < deadline, f"no terminal window: {sbx.windows()}"
            time.sleep(0.2)
        sbx.left_click(term.x + term.width // 2, term.y + term.height // 2)
        # The window manager moves the focus on the click's button press, asynchronously: keys
        # typed before it did would reach the previous window.
        deadline = time.monotonic() + 10
        while not next(w for w in sbx.windows() if w.id == term.id).focused:
            assert time.monotonic() < deadline, f"the terminal did not take the focus: {sbx.windows()}"
            time.sleep(0.1)
        # Typed, not pasted: every character goes through the keyboard path.
        sbx.write(f"echo {TYPED} > /tmp/u8")
        sbx.press("Return")
        deadline = time.monotonic() + 15
        while sbx.commands.run("cat /tmp/u8 2>/dev/null").stdout != TYPED + "\n":
            assert time.monotonic() < deadline, sbx.commands.run("cat /tmp/u8").stdout
            time.sleep(0.2)

        # One line of glyphs between red blocks, nothing else in the window.
        sbx.write(
            "clear; printf '\\033[31m█\\033[0m%s' é 你 好 ✓ 🙂; printf '\\033[31m█\\033[0m\\n'"
        )
        sbx.press("Return")
        png = b""
        deadline = time.monotonic() + 15
        while True:
            png = sbx.screenshot()
            term = next(w for w in sbx.windows() if w.pid == pid)
            try:
                ink = _glyph_cells(png, (term.x, term.y, term.width, term.height))
            except AssertionError:
                ink = []
            if len(ink) >= 5:
                break
            assert time.monotonic() < deadline, f"glyph line not found; cells {ink}"
            time.sleep(0.3)
        (tmp_path / "terminal.png").write_bytes(png)
        shutil.copy(tmp_path / "terminal.png", "/var/tmp/vivarium-standalone-terminal.png")
        # █é█你█好█✓█🙂█: one cell per glyph, each must hold ink.
        assert len(ink) == 5 and all(n >= 8 for n in ink), f"a glyph was drawn blank: ink per cell {ink}"
