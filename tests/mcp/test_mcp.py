"""The gateway's MCP server (`/mcp`) driven by the official MCP Python SDK
client (PyPI `mcp`) over Streamable HTTP, against the real binaries: a
gateway and an executor on 127.0.0.1, started from ``$EXECGATE_BIN``
(default ``target/debug/execgate`` of this checkout).

Run: ``pip install -r tests/mcp/requirements.txt && pytest tests/mcp``.
"""

from __future__ import annotations

import base64
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, Tuple

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("EXECGATE_BIN") or str(ROOT / "target" / "debug" / "execgate")


def admin(data_dir: Path, *args: str) -> str:
    """``execgate admin --data-dir D ARGS…``; the last line of stdout."""
    out = subprocess.run(
        [BIN, "admin", "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"execgate admin {args}: {out.stderr}"
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, str]]:
    """(base URL, proxy token) of a gateway with one executor, `laptop`."""
    if not os.access(BIN, os.X_OK):
        pytest.exit(f"no execgate binary at {BIN}: run `cargo build -p execgate` or set EXECGATE_BIN", 2)
    root = tmp_path_factory.mktemp("execgate-mcp")
    data, work = root / "data", root / "work"
    data.mkdir()
    work.mkdir()
    admin(data, "workspace", "create", "w1")
    token = admin(data, "token", "create", "--workspace", "w1")
    exe_token = admin(data, "executor", "add", "--workspace", "w1", "--name", "laptop", "--default")

    env = {**os.environ, "EXECGATE_LOG": "info"}
    gw = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=open(root / "gateway.log", "wb"),
        env=env,
    )
    procs = [gw]
    try:
        found: "queue.Queue[str]" = queue.Queue()

        def read() -> None:
            assert gw.stdout is not None
            for raw in gw.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("execgate gateway listening on "):
                    found.put(line.rsplit(" ", 1)[1])

        threading.Thread(target=read, daemon=True).start()
        url = found.get(timeout=30)
        procs.append(
            subprocess.Popen(
                [BIN, "executor", "--gateway", url, "--token", exe_token, "--workdir", str(work)],
                stdout=subprocess.DEVNULL,
                stderr=open(root / "executor.log", "wb"),
                env=env,
            )
        )
        deadline = time.monotonic() + 40
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            envs = httpx2.post(f"{url}/api/connectors/envs/list", json={}, headers=headers).json()["envs"]
            if any(e["name"] == "laptop" for e in envs):
                break
            assert time.monotonic() < deadline, "the executor did not connect"
            time.sleep(0.1)
        yield url, token
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run(gateway: Tuple[str, str], body: Callable[[Client], Awaitable[None]], *, mode: str = "legacy",
        token: str | None = None) -> None:
    """Connects an MCP client to ``/mcp`` with the token and runs ``body``."""
    url, good = gateway

    async def main() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token or good}"}, timeout=60)
        async with http:
            async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client:
                await body(client)

    anyio.run(main)


CORE_TOOLS = {
    "list_environments", "shell", "read_file", "write_file", "apply_patch",
    "exec_command", "copy_path", "write_stdin", "read_output", "terminate",
}


def structured(result: Any) -> Dict[str, Any]:
    assert not result.is_error, result
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


def test_handshake_list_tools_and_shell(gateway: Tuple[str, str]) -> None:
    async def body(client: Client) -> None:
        # 2025-06-18 or newer.
        assert client.protocol_version >= "2025-06-18", client.protocol_version
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert CORE_TOOLS <= set(tools), sorted(tools)
        shell = tools["shell"].input_schema
        assert shell["type"] == "object"
        assert shell["required"] == ["command"]
        assert {"command", "cwd", "env", "timeout_ms", "environment_id"} <= set(shell["properties"])

        result = await client.call_tool("shell", {"command": ["sh", "-c", "echo hi; exit 3"]})
        out = structured(result)
        assert out["stdout"] == "hi\n" and out["exit_code"] == 3 and out["timed_out"] is False
        assert result.content[0].text == "hi\n[exit_code=3]"

        envs = structured(await client.call_tool("list_environments", {}))["envs"]
        assert [e["name"] for e in envs] == ["laptop"]

    run(gateway, body)


def test_exec_command_write_stdin_read_output_terminate(gateway: Tuple[str, str]) -> None:
    async def read_until(client: Client, sid: str, want: bytes) -> Tuple[bytes, Dict[str, Any]]:
        data, after = b"", 0
        deadline = time.monotonic() + 30
        while True:
            out = structured(await client.call_tool(
                "read_output", {"session_id": sid, "after_seq": after, "wait_ms": 2000}))
            for chunk in out["chunks"]:
                data += base64.b64decode(chunk["data_b64"])
                after = chunk["seq"]
            after = max(after, out.get("next_since") or 0)
            if (want and want in data) or not out["session_alive"]:
                return data, out
            assert time.monotonic() < deadline, data

    async def body(client: Client) -> None:
        sid = structured(await client.call_tool("exec_command", {"command": ["cat"]}))["session_id"]
        assert structured(await client.call_tool("write_stdin", {"session_id": sid, "chars": "ping\n"})) == {"ok": True}
        data, out = await read_until(client, sid, b"ping\n")
        assert data == b"ping\n" and out["session_alive"] is True and out["exit_code"] is None
        await client.call_tool("write_stdin", {"session_id": sid,
                                               "data_b64": base64.b64encode(b"pong\n").decode(), "eof": True})
        data, out = await read_until(client, sid, b"")
        assert data == b"ping\npong\n" and out["exit_code"] == 0 and out["session_alive"] is False

        sid = structured(await client.call_tool("exec_command", {"command": ["sleep", "300"]}))["session_id"]
        assert structured(await client.call_tool("terminate", {"session_id": sid})) == {"ok": True}
        _, out = await read_until(client, sid, b"")
        assert out["session_alive"] is False

    run(gateway, body)


def test_errors(gateway: Tuple[str, str]) -> None:
    async def body(client: Client) -> None:
        for tool, args, code, needle in [
            ("no_such_tool", {}, -32601, "no_such_tool"),
            ("shell", {"command": "true", "timeout_ms": "soon"}, -32602, "arguments.timeout_ms"),
            ("read_output", {"session_id": "ps_nope"}, -32602, "session_id"),
            ("shell", {"command": "true", "environment_id": "nowhere"}, -32602, "nowhere"),
        ]:
            with pytest.raises(MCPError) as info:
                await client.call_tool(tool, args)
            error = info.value.error
            assert error.code == code and needle in error.message, (tool, args, error)

    run(gateway, body)


def test_discover_mode_also_works(gateway: Tuple[str, str]) -> None:
    """The SDK's default: server/discover (2026-07-28), no handshake."""
    async def body(client: Client) -> None:
        assert CORE_TOOLS <= {t.name for t in (await client.list_tools()).tools}
        assert structured(await client.call_tool("shell", {"command": "printf ok"}))["stdout"] == "ok"

    run(gateway, body, mode="auto")


def test_a_bad_token_is_refused(gateway: Tuple[str, str]) -> None:
    url, _ = gateway
    # On the wire: 401 with the error envelope, before any MCP processing.
    r = httpx2.post(
        f"{url}/mcp",
        headers={"Authorization": "Bearer egp_wrong", "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "t", "version": "1"}}},
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_token"

    # Through the SDK client: connecting fails (the SDK reports the HTTP
    # error as an MCPError inside an exception group).
    connected = []

    async def body(client: Client) -> None:
        connected.append(client.protocol_version)

    with pytest.raises(BaseException) as info:
        run(gateway, body, token="egp_wrong")
    assert not connected, connected
    assert "MCPError" in repr(info.value) or "401" in repr(info.value), repr(info.value)
