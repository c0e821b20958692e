"""Runs examples/scripted_form.py (the offline computer-use loop) against the session's runner."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO, Runner


def run_example(runner: Runner, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VIVARIUM_URL=runner.url, VIVARIUM_API_KEY=runner.key)
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def test_scripted_form_fills_and_submits(runner: Runner) -> None:
    out = run_example(runner, "scripted_form.py")
    assert out.returncode == 0, f"exit {out.returncode}:\n{out.stdout}\n{runner.log_text()[-4000:]}"
    assert "tool computer_20250124 1280x800" in out.stdout, out.stdout
    assert out.stdout.count("is_error=False") == 7, out.stdout
    assert 'submitted: {"email": "ada@example.com", "name": "Ada Lovelace"}' in out.stdout
    assert "OK: the form received the typed values" in out.stdout


def test_model_examples_explain_a_missing_package(runner: Runner) -> None:
    # CI has no anthropic/openai packages and no keys: the examples must say what is missing.
    for name, package in (("anthropic_loop.py", "anthropic"), ("openai_loop.py", "openai")):
        probe = subprocess.run([sys.executable, "-c", f"import {package}"], capture_output=True)
        if probe.returncode == 0:
            continue  # installed here: running it would need a key and the internet
        out = run_example(runner, name)
        assert out.returncode == 2, out.stdout
        assert f"pip install {package}" in out.stdout, out.stdout
