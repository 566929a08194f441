"""`execgate mcp` (MCP over stdio, relayed to the gateway's `/mcp`) driven by
the official MCP Python SDK client (PyPI `mcp`, its stdio transport), against
the same gateway and executor as test_mcp.py. Each test compares what the
client gets over stdio with what it gets over Streamable HTTP: the same
tools, the same results, the same errors.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Tuple

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from execgate_fixtures import BIN
from test_mcp import CORE_TOOLS, structured


def stdio(url: str, token: str) -> StdioServerParameters:
    """`execgate mcp` as an MCP client launches it."""
    return StdioServerParameters(command=BIN, args=["mcp"], env={"EXECGATE_URL": url, "EXECGATE_TOKEN": token})


def both(gateway: Tuple[str, str], body: Callable[[Client], Awaitable[Any]], *, mode: str = "legacy",
         token: str | None = None) -> Tuple[Any, Any]:
    """Runs ``body`` over stdio, then over HTTP: (stdio's value, HTTP's)."""
    url, good = gateway
    token = token or good

    async def main() -> Tuple[Any, Any]:
        async with Client(stdio(url, token), mode=mode) as client:
            over_stdio = await body(client)
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with http:
            async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client:
                over_http = await body(client)
        return over_stdio, over_http

    return anyio.run(main)


def connect_error(main: Callable[[], Awaitable[None]]) -> Any:
    """The MCPError that connecting raised (the SDK raises it inside an
    exception group): its JSON-RPC error."""
    with pytest.raises(BaseException) as info:
        anyio.run(main)
    found, pending = [], [info.value]
    while pending:
        e = pending.pop()
        if isinstance(e, MCPError):
            found.append(e)
        pending.extend(getattr(e, "exceptions", ()))
    assert len(found) == 1, repr(info.value)
    return found[0].error


def without_duration(result: Any) -> Dict[str, Any]:
    dump = result.model_dump(mode="json")
    dump["structured_content"].pop("duration_ms")
    return dump


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_same_tools_and_shell_result_as_http(gateway: Tuple[str, str], mode: str) -> None:
    """The initialize handshake (legacy) and the SDK's default (auto:
    server/discover, 2026-07-28, per-request version headers)."""
    async def body(client: Client) -> Dict[str, Any]:
        tools = [t.model_dump(mode="json") for t in (await client.list_tools()).tools]
        result = await client.call_tool("shell", {"command": ["sh", "-c", "echo hi; echo oops >&2; exit 3"]})
        return {"version": client.protocol_version, "tools": tools, "shell": result}

    over_stdio, over_http = both(gateway, body, mode=mode)
    assert CORE_TOOLS <= {t["name"] for t in over_stdio["tools"]}, over_stdio["tools"]
    assert over_stdio["tools"] == over_http["tools"]
    assert over_stdio["version"] == over_http["version"]
    if mode == "auto":
        # The per-request version and SEP-2243 headers reached the gateway.
        assert over_stdio["version"] >= "2026-07-28", over_stdio["version"]

    out = structured(over_stdio["shell"])
    assert (out["stdout"], out["stderr"], out["exit_code"]) == ("hi\n", "oops\n", 3), out
    assert without_duration(over_stdio["shell"]) == without_duration(over_http["shell"])


def test_same_errors_as_http(gateway: Tuple[str, str]) -> None:
    cases = [
        ("no_such_tool", {}),
        ("shell", {"command": "true", "timeout_ms": "soon"}),
        ("read_output", {"session_id": "ps_nope"}),
        ("shell", {"command": "true", "environment_id": "nowhere"}),
    ]

    async def body(client: Client) -> List[Dict[str, Any]]:
        errors = []
        for tool, args in cases:
            with pytest.raises(MCPError) as info:
                await client.call_tool(tool, args)
            errors.append(info.value.error.model_dump(mode="json"))
        return errors

    over_stdio, over_http = both(gateway, body)
    assert [e["code"] for e in over_stdio] == [-32601, -32602, -32602, -32602], over_stdio
    assert "no_such_tool" in over_stdio[0]["message"], over_stdio[0]
    assert "arguments.timeout_ms" in over_stdio[1]["message"], over_stdio[1]
    assert over_stdio == over_http


def test_a_tool_error_result_is_the_same(gateway: Tuple[str, str]) -> None:
    """A tool that ran and failed is a result with isError, not a JSON-RPC error."""
    async def body(client: Client) -> Any:
        return await client.call_tool("read_file", {"path": "/no/such/file"})

    over_stdio, over_http = both(gateway, body)
    assert over_stdio.is_error, over_stdio
    assert over_stdio.model_dump(mode="json") == over_http.model_dump(mode="json")


def test_a_bad_token_is_a_clear_error(gateway: Tuple[str, str]) -> None:
    url, _ = gateway
    connected = []

    async def main() -> None:
        async with Client(stdio(url, "egp_wrong"), mode="legacy") as client:
            connected.append(client.protocol_version)

    error = connect_error(main)
    assert not connected, connected
    assert error.code == -32001, error
    assert "401 invalid_token" in error.message and "EXECGATE_TOKEN" in error.message, error
    assert error.data["http_status"] == 401 and error.data["error"]["code"] == "invalid_token", error


def test_an_unreachable_gateway_is_an_error_not_a_hang(gateway: Tuple[str, str]) -> None:
    _, token = gateway

    async def main() -> None:
        with anyio.fail_after(30):
            async with Client(stdio("http://127.0.0.1:1", token), mode="legacy"):
                pass

    error = connect_error(main)
    assert error.code == -32000 and "cannot reach the gateway at http://127.0.0.1:1/mcp" in error.message, error
