"""Offline computer-use loop: a scripted "model" fills a web form in a vivarium desktop.

The loop is the one a real agent runs (see anthropic_loop.py): the model looks at the last
tool result and answers the next Anthropic ``computer`` tool_use input, which vivarium executes
with ``sbx.computer.anthropic(...)``. Here the model is a fixed list of inputs, so this runs
without a network or an API key and serves as an end-to-end test.

    VIVARIUM_URL=http://127.0.0.1:7070 VIVARIUM_API_KEY=... python examples/scripted_form.py

Exits 0 when the form's server received exactly the typed values, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from vivarium import Sandbox

NAME, EMAIL = "Ada Lovelace", "ada@example.com"
WIDTH, HEIGHT = 1280, 800
# Chromium maximized at 1280x800 shows the page 87 px below the screen's top (tabs + toolbar).
# The fields are 70-80 px tall and absolutely placed, so the clicks below hit their middles.
TOP = 87
FORM = """<!doctype html><html><head><meta charset="utf-8"><title>vivarium form</title>
<style>body{margin:0;font:28px sans-serif} input,button{position:absolute;left:340px;width:600px;
box-sizing:border-box;font:28px sans-serif} label{position:absolute;left:100px}</style></head><body>
<form method="post" action="/submit">
<label style="top:140px">Name</label><input name="name" style="top:120px;height:70px">
<label style="top:260px">Email</label><input name="email" style="top:240px;height:70px">
<button type="submit" style="top:380px;height:80px">Submit</button>
</form></body></html>"""
# Serves /srv and records a POSTed form in /tmp/submitted.json, then shows a page titled "thanks".
SERVER = """import http.server, json, urllib.parse
class H(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
        with open("/tmp/submitted.json", "w") as f:
            json.dump(form, f)
        page = b"<!doctype html><title>thanks</title><p>received</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), lambda *a: H(*a, directory="/srv"))
srv.serve_forever()
"""


class ScriptedModel:
    """Stands in for a computer-use model: same shape, ``next_action(last_result) -> input``."""

    def __init__(self) -> None:
        self._script: list[dict[str, Any]] = [
            {"action": "screenshot"},
            {"action": "left_click", "coordinate": [640, TOP + 155]},  # the Name field
            {"action": "type", "text": NAME},
            {"action": "key", "text": "Tab"},  # to the Email field
            {"action": "type", "text": EMAIL},
            {"action": "left_click", "coordinate": [640, TOP + 420]},  # Submit
            {"action": "screenshot"},
        ]

    def next_action(
        self, screenshot: list[dict[str, Any]] | None
    ) -> dict[str, Any] | None:
        # A real model would read the screenshot; the script only checks that there is one.
        if screenshot is not None and not any(
            b.get("type") == "image" for b in screenshot
        ):
            raise RuntimeError(f"tool result without a screenshot: {screenshot}")
        return self._script.pop(0) if self._script else None


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def chromium_title(sbx: Sandbox) -> str:
    return next((w.title for w in sbx.windows() if w.app.lower() == "chromium"), "")


def main() -> int:
    image = os.environ.get("VIVARIUM_IMAGE")  # default: the runner's default image
    with Sandbox.create(
        image, vcpus=2, mem_mib=2048, resolution=(WIDTH, HEIGHT)
    ) as sbx:
        print(f"sandbox {sbx.sandbox_id}", flush=True)
        sbx.files.write("/srv/form.html", FORM)
        sbx.files.write("/srv/server.py", SERVER)
        sbx.commands.run("python3 /srv/server.py", background=True)
        probe = "python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8000/form.html')\""
        wait_for("the form server", lambda: sbx.commands.run(probe).exit_code == 0)
        sbx.open("http://127.0.0.1:8000/form.html")
        wait_for(
            "the form page", lambda: chromium_title(sbx).startswith("vivarium form")
        )
        window = sbx.get_application_windows("chromium")[0]
        sbx.maximize_window(window)
        wait_for(
            "a maximized window",
            lambda: any(
                w.id == window and (w.width, w.height) == (WIDTH, HEIGHT)
                for w in sbx.windows()
            ),
        )

        tool = sbx.computer.anthropic_tool()  # what a real loop sends to the model
        print(
            f"tool {tool['type']} {tool['display_width_px']}x{tool['display_height_px']}"
        )
        model, last = ScriptedModel(), None
        while (action := model.next_action(last)) is not None:
            result = sbx.computer.anthropic(action)
            print(f"{json.dumps(action)} -> is_error={result['is_error']}", flush=True)
            if result["is_error"]:
                print(f"FAIL: the executor refused {action}: {result['content']}")
                return 1
            last = result["content"]

        wait_for("the thanks page", lambda: chromium_title(sbx).startswith("thanks"))
        got = json.loads(sbx.files.read("/tmp/submitted.json"))
        print(f"submitted: {json.dumps(got, sort_keys=True)}")
        if got != {"name": NAME, "email": EMAIL}:
            print(f"FAIL: expected name={NAME!r} email={EMAIL!r}")
            return 1
        print("OK: the form received the typed values")
        return 0


if __name__ == "__main__":
    sys.exit(main())
