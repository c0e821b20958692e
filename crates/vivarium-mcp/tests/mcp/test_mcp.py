"""The vivarium MCP server driven by the official Python MCP client, over stdio (`vivarium mcp`)
and over streamable HTTP (`/mcp` on the runner, bearer key), against a real desktop sandbox."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import urllib.request
from contextlib import asynccontextmanager

import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import KEY

EXPECTED_TOOLS = {
    "create_sandbox", "list_sandboxes", "get_sandbox", "delete_sandbox", "set_timeout",
    "run_command", "read_file", "write_file", "list_files",
    "screenshot", "left_click", "right_click", "middle_click", "double_click", "move_mouse",
    "drag", "scroll", "type_text", "press_key", "cursor_position", "screen_size",
    "clipboard_get", "clipboard_set", "list_windows", "open_url", "launch",
}

TRANSPORTS = ["stdio", "http"]


@asynccontextmanager
async def session(runner, transport: str):
    if transport == "stdio":
        params = StdioServerParameters(command=runner.bin, args=["mcp"], env=runner.client_env())
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                await s.initialize()
                yield s
    else:
        headers = {"Authorization": f"Bearer {runner.key}"}
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(runner.url + "/mcp", http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as s:
                    await s.initialize()
                    yield s


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def json_of(result):
    assert not result.is_error, text_of(result)
    return json.loads(text_of(result))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lists_tools_with_schemas(runner, transport):
    async def go():
        async with session(runner, transport) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            missing = EXPECTED_TOOLS - tools.keys()
            assert not missing, f"missing tools: {missing}"
            click = tools["left_click"].input_schema
            assert click["required"] == ["sandbox_id"], click
            assert {"x", "y", "modifiers"} <= click["properties"].keys(), click
            create = tools["create_sandbox"].input_schema["properties"]
            assert {"image", "resolution", "vcpus", "mem_mib", "timeout"} <= create.keys()
            for t in tools.values():
                assert t.description, t.name

    asyncio.run(go())


def test_http_endpoint_requires_the_key(runner):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    for key in (None, "wrong-key"):
        req = urllib.request.Request(runner.url + "/mcp", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json, text/event-stream")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 401
        assert "API key" in json.loads(e.value.read())["error"]["message"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_desktop_sandbox_round_trip(runner, transport):
    async def go():
        async with session(runner, transport) as s:
            run = json_of(await s.call_tool("create_sandbox", {
                "image": runner.desktop_image, "vcpus": 2, "mem_mib": 2048,
                "resolution": [1024, 768], "timeout": 600,
                "metadata": {"suite": "mcp", "transport": transport},
            }))
            sid = run["id"]
            try:
                assert run["desktop"] == {"width": 1024, "height": 768}, run

                listed = json_of(await s.call_tool("list_sandboxes", {"metadata": {"transport": transport}}))
                assert [r["id"] for r in listed] == [sid]

                shot = await s.call_tool("screenshot", {"sandbox_id": sid})
                assert not shot.is_error, text_of(shot)
                images = [c for c in shot.content if c.type == "image"]
                assert len(images) == 1 and images[0].mime_type == "image/png"
                assert png_size(base64.b64decode(images[0].data)) == (1024, 768)

                size = json_of(await s.call_tool("screen_size", {"sandbox_id": sid}))
                assert (size["width"], size["height"]) == (1024, 768)

                click = await s.call_tool("left_click", {"sandbox_id": sid, "x": 321, "y": 234})
                assert not click.is_error, text_of(click)
                pos = json_of(await s.call_tool("cursor_position", {"sandbox_id": sid}))
                assert (pos["x"], pos["y"]) == (321, 234)

                out = json_of(await s.call_tool("run_command", {
                    "sandbox_id": sid, "command": "echo hi-$X; exit 3", "env": {"X": transport}}))
                assert (out["exit_code"], out["stdout"]) == (3, f"hi-{transport}\n")

                w = await s.call_tool("write_file", {
                    "sandbox_id": sid, "path": "/tmp/mcp/note.txt", "content": "héllo\n", "mode": "600"})
                assert not w.is_error, text_of(w)
                r = await s.call_tool("read_file", {"sandbox_id": sid, "path": "/tmp/mcp/note.txt"})
                assert text_of(r) == "héllo\n"
                entries = json_of(await s.call_tool("list_files", {"sandbox_id": sid, "path": "/tmp/mcp"}))
                note = [e for e in entries if e["name"] == "note.txt"]
                assert note and note[0]["mode"] == 0o600 and note[0]["size"] == len("héllo\n".encode())

                assert not (await s.call_tool("clipboard_set", {"sandbox_id": sid, "text": "clip-" + transport})).is_error
                clip = json_of(await s.call_tool("clipboard_get", {"sandbox_id": sid}))
                assert clip["text"] == "clip-" + transport

                t = json_of(await s.call_tool("set_timeout", {"sandbox_id": sid, "timeout": 900}))
                assert t["id"] == sid
            finally:
                deleted = await s.call_tool("delete_sandbox", {"sandbox_id": sid})
            assert not deleted.is_error, text_of(deleted)
            gone = await s.call_tool("get_sandbox", {"sandbox_id": sid})
            assert gone.is_error and "not_found" in text_of(gone), text_of(gone)

    asyncio.run(go())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_calls_are_tool_errors(runner, transport):
    async def go():
        async with session(runner, transport) as s:
            # The runner's own error, passed through with its code and message.
            r = await s.call_tool("screenshot", {"sandbox_id": "no-such-sandbox"})
            assert r.is_error
            assert "404" in text_of(r) and "not_found" in text_of(r), text_of(r)
            # Arguments that do not fit the schema: a tool error the model can read, not a crash.
            r = await s.call_tool("left_click", {"x": 1, "y": 2})
            assert r.is_error and "sandbox_id" in text_of(r), text_of(r)
            r = await s.call_tool("scroll", {"sandbox_id": "x", "direction": "sideways"})
            assert r.is_error and "sideways" in text_of(r), text_of(r)
            r = await s.call_tool("create_sandbox", {"image": "busybox:latest"})
            assert r.is_error and "latest" in text_of(r), text_of(r)
            # An unknown tool is a protocol error.
            with pytest.raises(MCPError):
                await s.call_tool("fly_to_the_moon", {})
            # The session still works after all that.
            assert (await s.list_tools()).tools

    asyncio.run(go())
