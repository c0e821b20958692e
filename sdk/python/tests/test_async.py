"""The async client against the live runner: the same calls as the sync one, awaited."""

from __future__ import annotations

import asyncio
import struct

import pytest

import vivarium
from vivarium import AsyncSandbox

from .conftest import Runner


def test_async_client_end_to_end(runner: Runner) -> None:
    async def main() -> str:
        sbx = await AsyncSandbox.create(
            runner.desktop_image, vcpus=2, mem_mib=2048, resolution=(800, 600)
        )
        async with sbx:
            sid = sbx.sandbox_id
            r = await sbx.commands.run("echo $((6 * 7))")
            assert (r.exit_code, r.stdout) == (0, "42\n")
            chunks: list[str] = []
            await sbx.commands.run("echo a; sleep 0.3; echo b", on_stdout=chunks.append)
            assert "".join(chunks) == "a\nb\n"
            await sbx.files.write("/tmp/async.txt", "awaited ✓")
            assert await sbx.files.read("/tmp/async.txt") == "awaited ✓"
            png = await sbx.screenshot()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert struct.unpack(">II", png[16:24]) == (800, 600)
            await sbx.set_clipboard("presse-papiers")
            assert await sbx.get_clipboard() == "presse-papiers"
            with pytest.raises(vivarium.InvalidArgumentError) as e:
                await sbx.left_click(5000, 10)
            assert e.value.field == "x"
        return sid

    sid = asyncio.run(main())

    async def gone() -> None:
        with pytest.raises(vivarium.NotFoundError):
            await AsyncSandbox.connect(sid)

    asyncio.run(gone())
