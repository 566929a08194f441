"""Shared harness of the Python suites under tests/ (MCP, OpenAPI): the real
binaries, a gateway and an executor on 127.0.0.1, started from
``$EXECGATE_BIN`` (default ``target/debug/execgate`` of this checkout).
Standard library only, so each suite brings just its own client.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = os.environ.get("EXECGATE_BIN") or str(ROOT / "target" / "debug" / "execgate")


def admin(data_dir: Path, *args: str) -> str:
    """``execgate admin --data-dir D ARGS…``; the last line of stdout."""
    out = subprocess.run(
        [BIN, "admin", "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"execgate admin {args}: {out.stderr}"
    return out.stdout.strip().splitlines()[-1]


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


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, str]]:
    """(base URL, proxy token) of a gateway with one executor, `laptop`.

    A test module may set ``EXECUTOR_ARGS`` (a list of extra arguments for
    ``execgate executor``); ``{work}`` in them becomes the executor's
    working directory.
    """
    if not os.access(BIN, os.X_OK):
        pytest.exit(f"no execgate binary at {BIN}: run `cargo build -p execgate` or set EXECGATE_BIN", 2)
    root = tmp_path_factory.mktemp("execgate")
    data, work = root / "data", root / "work"
    data.mkdir()
    work.mkdir()
    admin(data, "workspace", "create", "w1")
    token = admin(data, "token", "create", "--workspace", "w1")
    exe_token = admin(data, "executor", "add", "--workspace", "w1", "--name", "laptop", "--default")
    extra: List[str] = [a.replace("{work}", str(work)) for a in getattr(request.module, "EXECUTOR_ARGS", [])]

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
                [BIN, "executor", "--gateway", url, "--token", exe_token, "--workdir", str(work), *extra],
                stdout=subprocess.DEVNULL,
                stderr=open(root / "executor.log", "wb"),
                env=env,
            )
        )
        deadline = time.monotonic() + 40
        while True:
            _, listed = call(url, token, "POST", "/api/connectors/envs/list", {})
            if any(e["name"] == "laptop" for e in listed.get("envs", [])):
                break
            assert time.monotonic() < deadline, "the executor did not connect"
            time.sleep(0.1)
        yield url, token
    finally:
        for p in procs:
            p.kill()
            p.wait()
