"""Desktop methods against a real desktop sandbox; page effects are checked over CDP."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

import vivarium
from vivarium import Sandbox

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>vivarium-sdk-test</title>
<style>html,body{margin:0;height:100%}
textarea{box-sizing:border-box;width:100vw;height:100vh;font-size:24px}</style></head>
<body><textarea id="t"></textarea><script>
window.clicks = []; window.downs = []; window.dbl = 0; window.ctx = 0;
document.addEventListener('mousedown', e => downs.push([e.button, e.screenX, e.screenY]));
document.addEventListener('click', e => clicks.push([e.button, e.screenX, e.screenY]));
document.addEventListener('dblclick', () => dbl++);
document.addEventListener('contextmenu', e => { e.preventDefault(); ctx++; });
</script></body></html>"""


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def eventually(check: Any, what: str, timeout: float = 15.0) -> Any:
    """Polls ``check`` until it returns something truthy (the desktop acts asynchronously)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: last value {last!r}")


class Cdp:
    """A minimal CDP client over the runner's proxy (one page target)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._id = 0

    def evaluate(self, expr: str) -> Any:
        self._id += 1
        self._ws.send(
            json.dumps(
                {
                    "id": self._id,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expr, "returnByValue": True},
                }
            )
        )
        while True:
            msg = json.loads(self._ws.recv(timeout=30))
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg["result"]["result"].get("value")


def cdp_targets(cdp_url: str) -> list[dict[str, Any]]:
    u = urlsplit(cdp_url)
    url = urlunsplit((u.scheme, u.netloc, u.path.rstrip("/") + "/json/list", u.query, ""))
    resp = httpx.get(url, timeout=10)
    resp.raise_for_status()
    targets: list[dict[str, Any]] = resp.json()
    return targets


@pytest.fixture(scope="module")
def page(desktop: Sandbox) -> Iterator[Cdp]:
    desktop.files.write("/srv/index.html", PAGE)
    desktop.commands.run("python3 -m http.server --bind 127.0.0.1 8000 -d /srv", background=True)
    probe = "python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8000/')\""
    eventually(lambda: desktop.commands.run(probe).exit_code == 0, "page server up")
    desktop.open("http://127.0.0.1:8000/index.html")
    assert desktop.cdp_url is not None

    def target() -> dict[str, Any] | None:
        return next(
            (
                t
                for t in cdp_targets(str(desktop.cdp_url))
                if t.get("type") == "page" and t.get("url", "").endswith(":8000/index.html")
            ),
            None,
        )

    t = eventually(target, "page target in CDP")
    with ws_connect(t["webSocketDebuggerUrl"], max_size=None) as ws:
        cdp = Cdp(ws)
        eventually(lambda: cdp.evaluate("document.readyState") == "complete", "page loaded")
        # A loaded page is not yet a clickable one: Chromium drops mouse input that reaches a
        # freshly navigated page before its first frame is presented (a click sent right after
        # readyState turned "complete" never fired mousedown, one sent 1.5 s later did; the same
        # without any window-manager call). Wait for the first paint and a frame after it.
        eventually(
            lambda: cdp.evaluate("performance.getEntriesByType('paint').length > 0"), "first paint"
        )
        cdp.evaluate(
            "window.framed = false;"
            " requestAnimationFrame(() => requestAnimationFrame(() => { window.framed = true; }))"
        )
        eventually(lambda: cdp.evaluate("window.framed"), "a frame presented after load")
        # The page must cover the screen point the tests click: maximize Chromium first.
        wid = eventually(lambda: desktop.get_application_windows("chromium"), "chromium window")[0]
        desktop.maximize_window(wid)
        eventually(lambda: cdp.evaluate("window.innerWidth") >= 1000, "maximized page")
        yield cdp


def test_screen_and_screenshot(desktop: Sandbox) -> None:
    assert desktop.info.resolution == (1024, 768)
    assert desktop.get_screen_size() == (1024, 768)
    assert png_size(desktop.screenshot()) == (1024, 768)
    jpg = desktop.screenshot("jpeg", quality=50)
    assert jpg[:3] == b"\xff\xd8\xff"
    assert png_size(desktop.screenshot(scale_to=(512, 384))) == (512, 384)
    assert png_size(desktop.screenshot(region=(10, 20, 300, 200))) == (300, 200)
    with pytest.raises(vivarium.InvalidArgumentError) as e:
        desktop.screenshot("jpeg", quality=0)
    assert e.value.field == "quality"


def test_mouse_position(desktop: Sandbox) -> None:
    desktop.move_mouse(100, 200)
    assert desktop.get_cursor_position() == (100, 200)


def test_click_and_type_in_page(desktop: Sandbox, page: Cdp) -> None:
    page.evaluate("clicks.length = downs.length = dbl = ctx = 0")
    page.evaluate("document.getElementById('t').value = ''")
    desktop.left_click(512, 400)
    downs = eventually(lambda: page.evaluate("downs"), "mouse button reached the page")
    assert downs[-1] == [0, 512, 400]
    clicks = eventually(lambda: page.evaluate("clicks"), "click reached the page")
    assert clicks[-1] == [0, 512, 400]
    desktop.write("héllo vivarium ✓")
    eventually(
        lambda: page.evaluate("document.getElementById('t').value") == "héllo vivarium ✓",
        "typed text in the textarea",
    )
    desktop.press(["ctrl", "a"])
    desktop.press("BackSpace")
    eventually(lambda: page.evaluate("document.getElementById('t').value") == "", "cleared")
    desktop.double_click(300, 300)
    eventually(lambda: page.evaluate("dbl") == 1, "double click")
    desktop.right_click(300, 300)
    eventually(lambda: page.evaluate("ctx") == 1, "right click")
    desktop.scroll("down", 2, x=300, y=300)


def test_clipboard(desktop: Sandbox, page: Cdp) -> None:
    desktop.set_clipboard("presse-papiers ✓")
    assert desktop.get_clipboard() == "presse-papiers ✓"
    page.evaluate("document.getElementById('t').value = ''")
    desktop.left_click(512, 400)
    desktop.press("ctrl+v")
    eventually(
        lambda: page.evaluate("document.getElementById('t').value") == "presse-papiers ✓",
        "pasted clipboard in the page",
    )


def test_windows(desktop: Sandbox, page: Cdp) -> None:
    ids = eventually(lambda: desktop.get_application_windows("chromium"), "chromium window")
    wid = ids[0]
    assert "vivarium-sdk-test" in desktop.get_window_title(wid)
    desktop.focus_window(wid)
    eventually(lambda: desktop.get_current_window_id() == wid, "focused window")
    desktop.maximize_window(wid)
    eventually(lambda: next(w for w in desktop.windows() if w.id == wid).width >= 1000, "maximized")
    with pytest.raises(vivarium.NotFoundError):
        desktop.get_window_title(0)


def test_launch(desktop: Sandbox) -> None:
    pid = desktop.launch("sleep", ["30"])
    assert pid > 0


def test_urls(runner: Any, desktop: Sandbox, page: Cdp) -> None:
    assert desktop.cdp_url and desktop.cdp_url.startswith(runner.url)
    vnc = desktop.stream.get_url()
    assert vnc == desktop.vnc_url and vnc.startswith(runner.url)
    assert desktop.stream.get_url(view_only=True).endswith("view_only=true")
    assert httpx.get(vnc, timeout=10).status_code == 200
    # get_host: the proxy URL of a port inside the sandbox (here the page server on 127.0.0.1).
    host = desktop.get_host(8000)
    r = httpx.get(host + "/index.html", headers={"X-Vivarium-Token": desktop.access_token})
    assert r.status_code == 200 and "vivarium-sdk-test" in r.text
    assert "vivarium-sdk-test" in httpx.get(desktop.get_url(8000, "/index.html")).text


def test_batch_actions(desktop: Sandbox) -> None:
    results = desktop.actions([{"action": "move", "x": 7, "y": 9}, {"action": "cursor_position"}])
    assert results[1] == {"type": "position", "x": 7, "y": 9}


def test_openai_item_stays_exact_and_refusals_are_reported(desktop: Sandbox) -> None:
    item = desktop.computer.openai({"type": "click", "x": 99999, "y": 5}, call_id="off")
    assert item["type"] == "computer_call_output" and item["call_id"] == "off"
    assert set(item) <= {"type", "call_id", "output", "acknowledged_safety_checks"}, item
    assert item["output"]["image_url"].startswith("data:image/png;base64,")
    assert desktop.computer.last_openai_error, "an off-screen click must be refused with a reason"
    desktop.computer.openai({"type": "move", "x": 10, "y": 10}, call_id="ok")
    assert desktop.computer.last_openai_error is None
