"""A computer-use agent: OpenAI's computer-use model (Responses API) drives a vivarium desktop.

    pip install openai vivarium   # vivarium: sdk/python in this repository
    export OPENAI_API_KEY=... VIVARIUM_URL=http://127.0.0.1:7070 VIVARIUM_API_KEY=...
    python examples/openai_loop.py "Open example.com in Chromium and read me its heading"

Each `computer_call` is executed by the runner (`sbx.computer.openai`), which answers the
`computer_call_output` item (a screenshot after the action); the loop ends when the model answers
without a computer_call. Needs the internet, so CI does not run it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from vivarium import Sandbox

MODEL = os.environ.get("OPENAI_MODEL", "computer-use-preview")
MAX_STEPS = 50


def main() -> int:
    try:
        import openai
    except ImportError:
        print(
            "this example needs the openai package: pip install openai", file=sys.stderr
        )
        return 2
    task = (
        " ".join(sys.argv[1:])
        or "Open https://example.com in Chromium and tell me its heading."
    )
    client = openai.OpenAI()  # reads OPENAI_API_KEY
    with Sandbox.create(vcpus=2, mem_mib=2048, resolution=(1280, 800)) as sbx:
        print(
            f"sandbox {sbx.sandbox_id}; watch it at {sbx.stream.get_url(view_only=True)}"
        )
        # {"type": "computer_use_preview", "display_width", "display_height", "environment"}
        tools = [sbx.computer.openai_tool()]
        items: list[Any] = [{"role": "user", "content": task}]
        previous: str | None = None
        for _ in range(MAX_STEPS):
            response = client.responses.create(
                model=MODEL,
                tools=tools,
                truncation="auto",
                reasoning={"summary": "concise"},
                input=items,
                previous_response_id=previous,
            )
            outputs = []
            for item in response.output:
                if item.type == "message":
                    print(
                        f"model: {''.join(getattr(c, 'text', '') for c in item.content)}"
                    )
                elif item.type == "computer_call":
                    action = item.action.to_dict()
                    print(f"action: {action}")
                    # A refused action (e.g. an unknown key) still answers a screenshot of the
                    # unchanged screen; the SDK keeps the reason in last_openai_error.
                    out = sbx.computer.openai(action, call_id=item.call_id)
                    if sbx.computer.last_openai_error:
                        print(f"refused: {sbx.computer.last_openai_error}")
                    if item.pending_safety_checks:
                        # Production code asks a human before acknowledging these.
                        print(
                            f"safety checks: {[c.message for c in item.pending_safety_checks]}"
                        )
                        out["acknowledged_safety_checks"] = [
                            c.to_dict() for c in item.pending_safety_checks
                        ]
                    outputs.append(out)
            if not outputs:  # no computer_call: the model is done
                print("done")
                return 0
            items, previous = outputs, response.id
        print(f"gave up after {MAX_STEPS} steps", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
