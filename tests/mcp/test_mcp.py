"""The gateway's MCP server (`/mcp`) driven by the official MCP Python SDK
client (PyPI `mcp`) over Streamable HTTP, against the real binaries: a
gateway and an executor on 127.0.0.1 (the ``gateway`` fixture of
tests/conftest.py).

Run: ``pip install -r tests/mcp/requirements.txt && pytest tests/mcp``.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Awaitable, Callable, Dict, Tuple

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


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
    "exec_command", "copy_path", "list_dir", "write_stdin", "read_output", "terminate",
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

        # list_dir, on the executor's working directory.
        await client.call_tool("shell", {"command": "mkdir -p ls_here/d && : > ls_here/f"})
        listing = structured(await client.call_tool("list_dir", {"path": "ls_here"}))
        assert listing["entries"] == [{"name": "d", "kind": "directory"}, {"name": "f", "kind": "file"}]
        assert (listing["total"], listing["truncated"]) == (2, False)
        assert tools["list_dir"].input_schema["required"] == ["path"]

    run(gateway, body)


def test_exec_command_write_stdin_read_output_terminate(gateway: Tuple[str, str]) -> None:
    async def read_until(client: Client, sid: str, want: bytes) -> Tuple[bytes, Dict[str, Any]]:
        data, after = b"", 0
        deadline = time.monotonic() + 30
        while True:
            out = structured(await client.call_tool(
                "read_output", {"session_id": sid, "after_seq": after, "wait_ms": 2000}))
            for chunk in out["chunks"]:
                # Text by default, marked by its encoding.
                assert chunk["encoding"] == "utf-8", chunk
                data += chunk["text"].encode()
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


def test_files_round_trip_as_text_or_base64(gateway: Tuple[str, str]) -> None:
    """A model reads and writes text: a UTF-8 file round-trips as text, a
    binary file as base64, each marked by structuredContent.encoding."""

    async def body(client: Client) -> None:
        text = "# COMPASS\n\nnaïve → café \\ no base64 here\n"
        wrote = structured(await client.call_tool("write_file", {"path": "rt/notes.md", "content": text}))
        assert wrote["bytes"] == len(text.encode())
        result = await client.call_tool("read_file", {"path": "rt/notes.md"})
        out = structured(result)
        assert out["encoding"] == "utf-8" and out["content"] == text, out
        assert result.content[0].text == text

        binary = bytes(range(256)) * 3
        await client.call_tool("write_file", {"path": "rt/blob.bin",
                                              "content_b64": base64.b64encode(binary).decode()})
        result = await client.call_tool("read_file", {"path": "rt/blob.bin"})
        out = structured(result)
        assert out["encoding"] == "base64" and "content" not in out, out
        assert base64.b64decode(result.content[0].text) == binary

        # A line range, numbered, as coding agents read; past the end: empty.
        result = await client.call_tool("read_file", {"path": "rt/notes.md", "start_line": 2,
                                                      "line_count": 2, "line_numbers": True})
        out = structured(result)
        assert result.content[0].text == "     2\t\n     3\tnaïve → café \\ no base64 here\n"
        assert out["total_lines"] == 3 and out["eof"] is True and out["lines"] == 2, out
        out = structured(await client.call_tool("read_file", {"path": "rt/notes.md", "start_line": 7}))
        assert out["content"] == "" and out["lines"] == 0 and out["total_lines"] == 3, out

        # Exactly one of content and content_b64.
        with pytest.raises(MCPError) as info:
            await client.call_tool("write_file", {"path": "rt/x", "content": "a", "content_b64": "YQ=="})
        assert info.value.error.code == -32602 and "content_b64" in info.value.error.message

    run(gateway, body)


def test_a_50_mb_output_comes_back_bounded_with_the_exact_count_left_out(gateway: Tuple[str, str]) -> None:
    """`shell` that prints 50 MB answers a head and a tail within the default
    budget (64 KiB), and says exactly how many bytes it left out and how to
    read them: never a silent cut, never a 50 MB answer."""
    total = 50 * 1000 * 1000

    async def body(client: Client) -> None:
        # Numbered lines, so that head and tail can be checked against the real output.
        script = f"seq 1 100000000 | head -c {total}; echo done >&2"
        result = await client.call_tool("shell", {"command": script, "timeout_ms": 120000})
        out = structured(result)
        assert out["exit_code"] == 0, out
        assert out["max_output_bytes"] == 65536, out
        assert out["stderr"] == "done\n"
        stdout = out["stdout"]
        head, rest = stdout.split("[... ", 1)
        marker, tail = rest.split("...]\n", 1)
        omitted = out["omitted_bytes"]
        assert marker.startswith(f"{omitted} bytes of stdout omitted: {total} bytes in all"), marker
        assert "exec_command" in marker and "read_output" in marker
        # The head is the output's first bytes (a newline may end it before the marker).
        first = int(marker.split("the first ")[1].split(" ")[0])
        last = int(marker.split("the last ")[1].split(" ")[0])
        assert len(tail) == last and len(head) in (first, first + 1), (len(head), first, len(tail), last)
        assert first + last + omitted == total
        expected = "\n".join(map(str, range(1, 7_000_001))).encode()[:total]
        assert head[:first].encode() == expected[:first]
        assert tail.encode() == expected[total - last:]
        assert len(result.content[0].text) < 70 * 1024
        assert f"{omitted} bytes of stdout omitted" in result.content[0].text

        # A budget of one's own; small output is left whole.
        out = structured(await client.call_tool("shell", {"command": "seq 1 1000", "max_output_bytes": 100}))
        assert out["omitted_bytes"] == 3893 - 100 and out["max_output_bytes"] == 100, out
        out = structured(await client.call_tool("shell", {"command": "seq 1 3"}))
        assert out["stdout"] == "1\n2\n3\n" and "omitted_bytes" not in out

    run(gateway, body)


def test_errors(gateway: Tuple[str, str]) -> None:
    async def body(client: Client) -> None:
        for tool, args, code, needle in [
            ("no_such_tool", {}, -32601, "no_such_tool"),
            ("shell", {"command": "true", "timeout_ms": "soon"}, -32602, "arguments.timeout_ms"),
            ("read_output", {"session_id": "ps_nope"}, -32602, "session_id"),
            ("list_dir", {"path": ".", "recursive": True}, -32602, "unknown field"),
            ("list_dir", {"path": ".", "max_entries": 0}, -32602, "arguments.max_entries"),
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
