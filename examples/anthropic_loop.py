"""A computer-use agent: Claude (Anthropic Messages API) drives a vivarium desktop.

    pip install anthropic vivarium   # vivarium: sdk/python in this repository
    export ANTHROPIC_API_KEY=... VIVARIUM_URL=http://127.0.0.1:7070 VIVARIUM_API_KEY=...
    python examples/anthropic_loop.py "Open example.com in Chromium and read me its heading"

Each `computer` tool_use block is executed by the runner (`sbx.computer.anthropic`), which
answers the tool_result content (a screenshot after every action); the loop ends when the model
answers without tool calls. Needs the internet, so CI does not run it (scripted_form.py does the
same loop offline).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from vivarium import Sandbox

MODEL = os.environ.get("ANTHROPIC_MODEL", "claude-sonnet-4-5")
# computer_20250124 goes with this beta flag (Claude 4 models up to Sonnet 4.5 / Opus 4.1);
# newer models use computer_20251124 with "computer-use-2025-11-24".
TOOL_VERSION, BETA = "computer_20250124", "computer-use-2025-01-24"
MAX_STEPS = 50


def main() -> int:
    try:
        import anthropic
    except ImportError:
        print(
            "this example needs the anthropic package: pip install anthropic",
            file=sys.stderr,
        )
        return 2
    task = (
        " ".join(sys.argv[1:])
        or "Open https://example.com in Chromium and tell me its heading."
    )
    client = anthropic.Anthropic()  # reads ANTHROPIC_API_KEY
    with Sandbox.create(vcpus=2, mem_mib=2048, resolution=(1280, 800)) as sbx:
        print(
            f"sandbox {sbx.sandbox_id}; watch it at {sbx.stream.get_url(view_only=True)}"
        )
        tool = sbx.computer.anthropic_tool(
            version=TOOL_VERSION
        )  # display size = the screen's
        messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
        for _ in range(MAX_STEPS):
            response = client.beta.messages.create(
                model=MODEL,
                max_tokens=4096,
                tools=[tool],
                messages=messages,
                betas=[BETA],
            )
            messages.append({"role": "assistant", "content": response.content})
            results = []
            for block in response.content:
                if block.type == "text":
                    print(f"model: {block.text}")
                elif block.type == "tool_use":
                    print(f"action: {block.input}")
                    out = sbx.computer.anthropic(block.input)
                    results.append(
                        {
                            "type": "tool_result",
                            "tool_use_id": block.id,
                            "content": out["content"],
                            "is_error": out["is_error"],
                        }
                    )
            if not results:  # no tool calls: the model is done (stop_reason "end_turn")
                print(f"done ({response.stop_reason})")
                return 0
            messages.append({"role": "user", "content": results})
        print(f"gave up after {MAX_STEPS} steps", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
