"""Progress notifications and cancellation of MCP `shell` calls, driven by
the official MCP Python SDK client over Streamable HTTP (`/mcp`) and over
stdio (`execgate mcp`), in both protocol eras: "legacy" (a
`notifications/cancelled` message names the call) and "auto" (2026-07-28:
closing the request's stream cancels it).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from test_mcp import structured
from test_mcp_stdio import stdio

TRANSPORTS = ["http", "stdio"]
MODES = ["legacy", "auto"]


def connect(gateway: Tuple[str, str], transport: str, mode: str, body: Any) -> Any:
    url, token = gateway

    async def main() -> Any:
        if transport == "stdio":
            async with Client(stdio(url, token), mode=mode) as client:
                return await body(client)
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with http:
            async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client:
                return await body(client)

    return anyio.run(main)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
def test_shell_reports_progress_as_output_arrives(gateway: Tuple[str, str], transport: str, mode: str) -> None:
    updates: List[Tuple[float, Optional[float], Optional[str], float]] = []
    start = time.monotonic()

    async def on_progress(progress: float, total: Optional[float], message: Optional[str]) -> None:
        updates.append((progress, total, message, time.monotonic() - start))

    async def body(client: Client) -> Any:
        return await client.call_tool(
            "shell",
            {"command": "for i in 1 2 3 4; do echo line$i; sleep 0.4; done"},
            progress_callback=on_progress,
        )

    result = connect(gateway, transport, mode, body)
    out = structured(result)
    assert out["stdout"] == "line1\nline2\nline3\nline4\n"
    assert len(updates) >= 3, updates
    progress = [u[0] for u in updates]
    assert progress == sorted(set(progress)), "progress strictly increases"
    assert progress[-1] == len(out["stdout"]), "the last update counts all the output"
    assert updates[0][2] == "line1" and updates[-1][2] == "line4", updates
    # They came while the command ran (1.6 s), not all with the answer.
    assert updates[-1][3] - updates[0][3] >= 0.8, updates


def test_no_progress_token_no_notifications(gateway: Tuple[str, str]) -> None:
    async def body(client: Client) -> Any:
        return await client.call_tool("shell", {"command": "echo hi"})

    assert structured(connect(gateway, "http", "legacy", body))["stdout"] == "hi\n"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
def test_cancelling_a_shell_kills_its_process_group(gateway: Tuple[str, str], transport: str, mode: str) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="execgate-cancel-"))
    pids = scratch / "pids"
    after = scratch / "after"
    # A shell and a child in its process group: both must go.
    command = f"sleep 60 & echo $$ $! > {pids}; wait; touch {after}"

    async def body(client: Client) -> Any:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await client.call_tool("shell", {"command": command, "timeout_ms": 120_000})

                tg.start_soon(call)
                while not pids.exists() or not pids.read_text().strip():
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught, "the call started"
        # The client still works after a cancelled call.
        return await client.call_tool("shell", {"command": "echo still here"})

    result = connect(gateway, transport, mode, body)
    assert structured(result)["stdout"] == "still here\n"
    shell_pid, sleep_pid = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 10
    while (alive(shell_pid) or alive(sleep_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(sleep_pid), "the process group was killed"
    assert not alive(shell_pid)
    assert not after.exists()


def test_a_cancelled_notification_reaches_its_call(gateway: Tuple[str, str]) -> None:
    """A client of a protocol version before 2026-07-28 that keeps the
    call's POST open and sends `notifications/cancelled` on its own POST
    (as the specification of those versions asks): the call is cancelled
    and its process group killed, and the POST answers at once."""
    url, token = gateway
    scratch = Path(tempfile.mkdtemp(prefix="execgate-cancel-"))
    pids = scratch / "pids"
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    call = {
        "jsonrpc": "2.0", "id": "call-7", "method": "tools/call",
        "params": {"name": "shell", "arguments": {"command": f"sleep 60 & echo $! > {pids}; wait"}},
    }
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "call-7"}}

    async def main() -> float:
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            answered = anyio.Event()
            took: List[float] = []

            async def post_call() -> None:
                t0 = time.monotonic()
                await http.post(f"{url}/mcp", json=call)
                took.append(time.monotonic() - t0)
                answered.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(post_call)
                while not pids.exists() or not pids.read_text().strip():
                    await anyio.sleep(0.05)
                r = await http.post(f"{url}/mcp", json=cancel)
                assert r.status_code == 202, r.text
                with anyio.fail_after(10):
                    await answered.wait()
            return took[0]

    took = anyio.run(main)
    assert took < 30
    sleep_pid = int(pids.read_text())
    deadline = time.monotonic() + 10
    while alive(sleep_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(sleep_pid), "the process group was killed"
