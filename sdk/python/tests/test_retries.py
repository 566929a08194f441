"""Retries of mutating calls with an ``Idempotency-Key``: against the real
gateway, through a transport that loses answers (the request reaches the
gateway, the client sees a broken connection) or answers 503 once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Dict, List

import httpx
import pytest

import execgate
from execgate import _core as ops

from conftest import World


class Flaky:
    """Records every request; loses the first answer (or answers 503 in its
    place) of each request that has an idempotency key."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen: List[httpx.Request] = []
        self.failed: Dict[str, int] = {}

    def fail(self, request: httpx.Request) -> bool:
        key = request.headers.get("idempotency-key")
        self.seen.append(request)
        if key is None or key in self.failed:
            return False
        self.failed[key] = 1
        return True


class SyncFlaky(httpx.BaseTransport):
    def __init__(self, mode: str) -> None:
        self.log = Flaky(mode)
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.log.fail(request):
            if self.log.mode == "503":
                return httpx.Response(
                    503,
                    headers={"retry-after": "0"},
                    json={"error": {"code": "executor_unavailable", "message": "flaky"}},
                )
            resp = self.inner.handle_request(request)
            resp.read()
            raise httpx.ReadError("the answer was lost", request=request)
        return self.inner.handle_request(request)


class AsyncFlaky(httpx.AsyncBaseTransport):
    def __init__(self, mode: str) -> None:
        self.log = Flaky(mode)
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.log.fail(request):
            if self.log.mode == "503":
                return httpx.Response(503, json={"error": {"code": "unavailable", "message": "x"}})
            resp = await self.inner.handle_async_request(request)
            await resp.aread()
            raise httpx.ReadError("the answer was lost", request=request)
        return await self.inner.handle_async_request(request)


def sync_client(world: World, transport: SyncFlaky, **kw: object) -> execgate.Client:
    http = httpx.Client(
        base_url=world.url,
        headers={"Authorization": f"Bearer {world.token}"},
        transport=transport,
        timeout=60,
    )
    return execgate.Client(world.url, world.token, http_client=http, **kw)  # type: ignore[arg-type]


def keys(log: Flaky, path_end: str) -> List[str]:
    return [
        r.headers.get("idempotency-key", "")
        for r in log.seen
        if r.url.path.endswith(path_end)
    ]


@pytest.mark.parametrize("mode", ["lost", "503"])
def test_a_lost_answer_is_retried_with_the_same_key_and_done_once(
    world: World, mode: str
) -> None:
    t = SyncFlaky(mode)
    with sync_client(world, t) as client:
        env = client.env("laptop")
        marker = f"retry-{mode}-{uuid.uuid4().hex[:8]}"
        r = env.shell(f"echo x >> {marker}.txt; cat {marker}.txt")
        assert r.stdout == "x\n", "the shell ran once"
        sent = keys(t.log, "/tool/call")
        assert len(sent) == 2 and sent[0] == sent[1] and sent[0].startswith("egk_")

        p = env.spawn(["sh", "-c", f"sleep 30 # {marker}"])
        try:
            listed = [x for x in client.processes() if marker in " ".join(x.command)]
            assert [x.sid for x in listed] == [p.sid], "one process started"
            p.write("data")
            assert len(keys(t.log, "/stdin")) == 2
        finally:
            p.terminate()
        assert len(set(keys(t.log, "/terminate"))) == 1

        # Every call gets its own key.
        env.write_file(f"{marker}.bin", b"one")
        env.write_file(f"{marker}.bin", b"two")
        writes = keys(t.log, "/tool/call")[-4:]
        assert writes[0] == writes[1] != writes[2] == writes[3]
        # Reads carry none and are not retried here.
        assert env.read_file(f"{marker}.bin") == b"two"
        assert t.log.seen[-1].headers.get("idempotency-key") is None


def test_upload_is_retried_whole(world: World, tmp_path: Path) -> None:
    t = SyncFlaky("lost")
    local = tmp_path / "up.bin"
    local.write_bytes(b"z" * 300_000)
    with sync_client(world, t) as client:
        r = client.env("laptop").upload(local, "retries/up.bin")
        assert r.bytes == 300_000
        sent = keys(t.log, "/files")
        assert len(sent) == 2 and sent[0] == sent[1]
    assert (world.laptop_dir / "retries/up.bin").read_bytes() == b"z" * 300_000


def test_retries_are_bounded(world: World) -> None:
    class Always503(httpx.BaseTransport):
        def __init__(self) -> None:
            self.n = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            self.n += 1
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "x"}})

    t = Always503()
    http = httpx.Client(base_url=world.url, transport=t)
    with execgate.Client(world.url, world.token, http_client=http, retries=2) as client:
        with pytest.raises(execgate.ExecgateError) as e:
            client.env("laptop", check=False).write_file("x", b"x")
        assert e.value.code == "unavailable"
    assert t.n == 3


def test_async_client_retries_too(world: World) -> None:
    async def main() -> None:
        t = AsyncFlaky("lost")
        http = httpx.AsyncClient(
            base_url=world.url,
            headers={"Authorization": f"Bearer {world.token}"},
            transport=t,
            timeout=60,
        )
        async with execgate.AsyncClient(world.url, world.token, http_client=http) as client:
            env = await client.env("laptop")
            marker = f"aretry-{uuid.uuid4().hex[:8]}"
            r = await env.shell(f"echo x >> {marker}.txt; cat {marker}.txt")
            assert r.stdout == "x\n"
            sent = keys(t.log, "/tool/call")
            assert len(sent) == 2 and sent[0] == sent[1]

    asyncio.run(main())


def test_retry_delays_back_off_and_honour_retry_after() -> None:
    assert 0.125 <= ops.retry_delay(1) <= 0.25
    assert 2.0 <= ops.retry_delay(5) <= 4.0
    assert ops.retry_delay(1, "3") == 3.0
    assert ops.retry_delay(1, "999") == 10.0
    assert ops.retry_delay(1, "soon") <= 0.25


class ReadsFlaky(httpx.BaseTransport):
    """Answers the first attempt of every read (a request without an
    idempotency key) with a load balancer's bare 502, or loses its answer."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.inner = httpx.HTTPTransport()
        self.seen: List[httpx.Request] = []
        self.failed: set = set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        what = (request.method, str(request.url), request.content)
        if request.headers.get("idempotency-key") is None and what not in self.failed:
            self.failed.add(what)
            if self.mode == "502":
                return httpx.Response(502, content=b"<html>502 Bad Gateway</html>")
            resp = self.inner.handle_request(request)
            resp.read()
            raise httpx.ReadError("the answer was lost", request=request)
        return self.inner.handle_request(request)


@pytest.mark.parametrize("mode", ["502", "lost"])
def test_reads_are_retried_without_a_key(world: World, mode: str) -> None:
    t = ReadsFlaky(mode)
    http = httpx.Client(
        base_url=world.url,
        headers={"Authorization": f"Bearer {world.token}"},
        transport=t,
        timeout=60,
    )
    with execgate.Client(world.url, world.token, http_client=http) as client:
        assert "laptop" in [e.name for e in client.envs()]
        env = client.env("laptop")
        marker = f"rread-{mode}-{uuid.uuid4().hex[:8]}"
        env.write_file(f"{marker}.txt", b"read me")
        assert env.read_file(f"{marker}.txt") == b"read me"
        assert f"{marker}.txt" in env.list_dir(".").names()
        p = env.spawn(["sh", "-c", f"echo {marker}; sleep 30"])
        try:
            assert [x.sid for x in client.processes() if marker in " ".join(x.command)] == [p.sid]
        finally:
            p.terminate()
    # Every read failed once, then was sent again (envs/list, read_file,
    # list_dir, the process list).
    sent: Dict[tuple, int] = {}
    for r in t.seen:
        if r.headers.get("idempotency-key") is None:
            what = (r.method, str(r.url), r.content)
            sent[what] = sent.get(what, 0) + 1
    paths = {w[1].split("?")[0].rsplit("/", 1)[-1] for w in sent}
    assert {"list", "call", "processes"} <= paths, paths
    assert all(n >= 2 for n in sent.values()), sent


def test_a_502_is_retried_unless_the_executor_answered() -> None:
    assert ops.retryable_status(503)
    assert ops.retryable_status(502, b"<html>bad gateway</html>")
    assert ops.retryable_status(502, b'{"error":{"code":"unavailable","message":"x"}}')
    assert not ops.retryable_status(502, b'{"error":{"code":"executor_error","message":"x"}}')
    assert not ops.retryable_status(500)
    assert not ops.retryable_status(409)
