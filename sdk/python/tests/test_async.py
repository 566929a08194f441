"""The async client against the real gateway: the same ops as the sync
client, driven by httpx's async API."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

import execgate
from execgate import AsyncClient, Chunk, LostOutput

from conftest import World


def run(coro):
    return asyncio.run(coro)


def test_async_client_end_to_end(world: World, tmp_path: Path) -> None:
    world.needs("tool:apply_patch", "files", "tool:copy_path", "processes-list", "tool:list_dir")

    async def main() -> None:
        async with AsyncClient(world.url, world.token) as client:
            envs = {e.name: e for e in await client.envs()}
            assert envs["laptop"].is_default
            # By pages of one: the same environments, in byte order of names.
            paged, after = [], None
            while True:
                page, after = await client.envs_page(1, after)
                paged += [e.name for e in page]
                if after is None:
                    break
            assert paged == sorted(envs, key=lambda n: n.encode())
            env = await client.default_env()
            assert env.name == "laptop"

            r = await env.shell("echo hi; exit 2")
            assert (r.stdout, r.exit_code) == ("hi\n", 2)
            with pytest.raises(execgate.CommandFailed):
                await env.shell("exit 1", check=True)

            await env.write_file("async/x.txt", b"\x00\x01data")
            assert await env.read_file("async/x.txt") == b"\x00\x01data"
            await env.write_file("async/a.txt", "")
            listing = await env.list_dir("async", max_entries=1)
            assert [(e.name, e.kind) for e in listing] == [("a.txt", "file")]
            assert (listing.total, listing.truncated) == (2, True)
            assert (await env.list_dir("async")).names() == ["a.txt", "x.txt"]
            if "tool:apply_patch" in world.features:
                await env.write_file("async/p.txt", "a\n")
                pr = await env.apply_patch(
                    "*** Begin Patch\n*** Update File: async/p.txt\n@@\n-a\n+b\n*** End Patch"
                )
                assert pr.applied and await env.read_file("async/p.txt") == b"b\n"

            src = tmp_path / "up.bin"
            src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
            sha = hashlib.sha256(src.read_bytes()).hexdigest()
            if "files" in world.features:
                up = await env.upload(str(src), "async/up.bin")
                assert up.sha256 == sha
                down = await env.download("async/up.bin", str(tmp_path / "down.bin"))
                assert (tmp_path / "down.bin").read_bytes() == src.read_bytes()
                assert down.sha256 == sha

            if "files" in world.features and "tool:copy_path" in world.features:
                gpu = await client.env("gpu")
                cr = await env.copy_to(gpu, "async/up.bin", "async-up.bin")
                # Verified by BLAKE3 between two execgate executors.
                assert cr.sha256 is None and cr.blake3 is not None and len(cr.blake3) == 64
                await gpu.download("async-up.bin", str(tmp_path / "copied.bin"))
                assert (tmp_path / "copied.bin").read_bytes() == src.read_bytes()

            r = await env.echo_arg(text="from async")
            assert r.stdout == "from async"
            with pytest.raises(AttributeError):
                env.no_such_tool  # noqa: B018

            # A process with stdin, EOF and streaming.
            async with await env.spawn(["sh", "-c", "cat; exit 5"]) as p:
                await p.write("one\n")
                got = b""
                async for item in p.output():
                    assert isinstance(item, Chunk)
                    got += item.data
                    if got == b"one\n":
                        break
                await p.write(b"two\n")
                await p.close_stdin()
                rest = b"".join([i.data async for i in p.output()])
                assert got + rest == b"one\ntwo\n"
                assert await p.wait(10) == 5 and p.exit_code == 5
                with pytest.raises(execgate.StdinClosed):
                    await p.write("late")

            polled = b"".join([i.data async for i in p.output(since=0, transport="poll")])
            assert polled == b"one\ntwo\n"

            # The context manager terminates a running process.
            async with await env.spawn("sleep 60") as p2:
                assert await p2.poll() is None
                with pytest.raises(execgate.WaitTimeout):
                    await p2.wait(0.3)
            await client.process(p2.sid).wait(10)  # terminated: well before 60 s
            if "processes-list" in world.features:
                infos = {i.sid: i for i in await client.processes()}
                assert infos[p2.sid].status == "exited"

            # Lost output is an item, not a silent gap.
            tiny = await client.env("tiny")
            script = "for i in $(seq 10); do head -c 2000 /dev/zero; sleep 0.01; done; echo end"
            p3 = await tiny.spawn(["sh", "-c", script])
            await p3.wait(10)
            items = [i async for i in p3.output()]
            assert isinstance(items[0], LostOutput) and items[0].bytes

            # Errors.
            with pytest.raises(execgate.EnvNotFound):
                await client.env("nowhere")
            with pytest.raises(execgate.ExecutorUnavailable):
                await (await client.env("offline", check=False)).shell("true")
            with pytest.raises(execgate.SessionNotFound):
                await client.process("ps_nope").poll()
            with pytest.raises(execgate.UnknownTool):
                await env.call("nope")

        async with AsyncClient(world.url, "egp_bad") as bad:
            with pytest.raises(execgate.AuthError):
                await bad.envs()

    run(main())


def test_async_concurrent_calls(world: World) -> None:
    async def main() -> None:
        async with AsyncClient(world.url, world.token) as client:
            env = await client.env("laptop")
            results = await asyncio.gather(*(env.shell(f"sleep 0.5; echo {i}") for i in range(8)))
            assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]

    t = time.monotonic()
    run(main())
    assert time.monotonic() - t < 3.5  # concurrent, not 8 × 0.5 s
