"""The Python test kit, shared by the suites under tests/ (MCP, OpenAPI:
through tests/conftest.py) and the SDK's (sdk/python/tests/conftest.py);
the Rust twin is crates/testkit.

It starts the real binaries on 127.0.0.1, ``$EXECGATE_BIN`` (default
``target/debug/execgate`` of this checkout): ``execgate admin`` for
workspaces, tokens and executors, ``execgate serve`` on a free port (the
OS picks it; the gateway says which), ``execgate executor``. Every process
it starts is killed by :func:`kill_all`. Standard library and pytest only,
so that each suite brings just its own client.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = os.environ.get("EXECGATE_BIN") or str(ROOT / "target" / "debug" / "execgate")
#: The custom tools every suite shares (`echo_arg`, `add`); the Rust tests
#: read the same file (crates/testkit, ``CUSTOM_TOOLS_TOML``).
CUSTOM_TOOLS = ROOT / "tests" / "fixtures" / "custom-tools.toml"
LISTENING = "execgate gateway listening on "

T = TypeVar("T")


def require_bin() -> None:
    """Stops the run (exit 2) when there is no binary to test."""
    if not os.access(BIN, os.X_OK):
        pytest.exit(f"no execgate binary at {BIN}: run `cargo build -p execgate` or set EXECGATE_BIN", 2)


def eventually(timeout: float, what: str, poll: Callable[[], Optional[T]], interval: float = 0.1) -> T:
    """Calls ``poll`` every ``interval`` seconds until it returns something
    other than ``None`` or ``False``, and returns that; fails naming
    ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = poll()
        if got is not None and got is not False:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def admin(data_dir: Path, *args: str) -> str:
    """``execgate admin --data-dir D ARGS…``; the last line of stdout."""
    out = subprocess.run(
        [BIN, "admin", "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"execgate admin {args}: {out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def add_executor(data_dir: Path, workspace: str, name: str, default: bool = False) -> str:
    """``execgate admin executor add``: the executor's token."""
    return admin(data_dir, "executor", "add", "--workspace", workspace, "--name", name,
                 *(["--default"] if default else []))


def _env() -> Dict[str, str]:
    return {**os.environ, "EXECGATE_LOG": "info"}


def start_gateway(data_dir: Path, *args: str) -> Tuple[subprocess.Popen, str]:
    """``execgate serve`` on a free port of 127.0.0.1, logging to
    ``<data-dir>/gateway.log``: (process, base URL) once it listens."""
    log = data_dir / "gateway.log"
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=open(log, "ab"),
        env=_env(),
    )
    found: "queue.Queue[str]" = queue.Queue()

    def read() -> None:
        # To the end, so that the gateway never writes to a full pipe.
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith(LISTENING):
                found.put(line[len(LISTENING):])

    threading.Thread(target=read, daemon=True).start()
    try:
        return proc, found.get(timeout=30)
    except queue.Empty:
        proc.kill()
        proc.wait()
        raise RuntimeError("the gateway did not start: " + log.read_text())


def start_executor(url: str, token: str, workdir: Path, *extra: str, log: Optional[Path] = None) -> subprocess.Popen:
    """``execgate executor`` in ``workdir``, logging to ``log`` (default
    ``<workdir>/../executor.log``)."""
    log = log or workdir.parent / "executor.log"
    return subprocess.Popen(
        [BIN, "executor", "--gateway", url, "--token", token, "--workdir", str(workdir), *extra],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),
        env=_env(),
    )


def kill_all(procs: Iterable[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def call(url: str, token: str, method: str, path: str, body: Any = None) -> Tuple[int, Dict[str, Any]]:
    """One JSON request to the gateway: (status, decoded body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def env_names(url: str, token: str) -> set:
    """The names of the connected environments (envs/list)."""
    _, listed = call(url, token, "POST", "/api/connectors/envs/list", {})
    return {e["name"] for e in listed.get("envs", [])}


def wait_for_envs(url: str, token: str, *names: str, timeout: float = 40) -> None:
    """Waits until every environment of ``names`` is connected."""
    eventually(timeout, f"{', '.join(names)} to connect", lambda: set(names) <= env_names(url, token))
