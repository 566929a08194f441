"""Starts the real ``execgate`` gateway and executors on 127.0.0.1 with a
temporary data dir, once per test session, with the kit the repository's
Python suites share: tests/execgate_fixtures.py (the Rust twin is
crates/testkit).

The binary is ``$EXECGATE_BIN``, by default ``target/debug/execgate`` of
this checkout (``cargo build -p execgate``).

The world: workspace ``w1`` with environments ``laptop`` (default, with
the custom tools of tests/fixtures/custom-tools.toml), ``gpu`` (a second
executor), ``tiny`` (small output buffers, short retention), plus
``offline`` (added but never started); workspace ``w2`` with its own token.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Set

import httpx

import pytest

import execgate

ROOT = Path(__file__).resolve().parents[3]
# The kit the repository's Python suites share (not part of the package).
sys.path.append(str(ROOT / "tests"))
from execgate_fixtures import (  # noqa: E402
    BIN,
    CUSTOM_TOOLS,
    add_executor,
    admin,
    eventually,
    kill_all,
    require_bin,
    start_executor,
    start_gateway,
)

__all__ = ["BIN", "World", "admin", "eventually"]


@dataclass
class World:
    url: str
    token: str
    other_token: str
    root: Path
    laptop_dir: Path
    gpu_dir: Path
    procs: List[subprocess.Popen] = field(default_factory=list)
    #: What this build of the gateway and executor has (see `probe`).
    features: Set[str] = field(default_factory=set)
    gpu_token: str = ""

    def restart_gpu(self) -> None:
        """Kills the `gpu` executor (its processes die with their session
        when a new one starts) and starts a fresh one; waits until it is
        connected again."""
        old = self.procs[2]
        old.kill()
        old.wait()
        self.procs[2] = _start_executor(self.url, self.gpu_token, self.gpu_dir)

    def client(self) -> execgate.Client:
        return execgate.Client(self.url, self.token)

    def needs(self, *features: str) -> None:
        """Fails the test, saying which, if this build lacks a feature.
        (Everything the SDK uses has landed; a route that vanishes is a
        regression, not a reason to skip.)"""
        missing = [f for f in features if f not in self.features]
        if missing:
            pytest.fail(f"this execgate build has no {', '.join(missing)}")


def executor_flags() -> Set[str]:
    out = subprocess.run([BIN, "executor", "--help"], capture_output=True, text=True, timeout=30)
    return set(re.findall(r"--([a-z][a-z-]+)", out.stdout))


def probe(url: str, token: str) -> Set[str]:
    """Which routes and tools the running gateway has. A route that is not
    there answers the router's fallback 404 ``not_found``; one that is
    answers something else (here: ``session_not_found``/``file_not_found``)."""
    found: Set[str] = set()
    h = {"Authorization": f"Bearer {token}"}
    api = f"{url}/api/connectors"
    checks = {
        "processes-list": ("GET", f"{api}/processes"),
        "stream": ("GET", f"{api}/processes/ps_probe/stream"),
        "signal": ("POST", f"{api}/processes/ps_probe/signal"),
        "resize": ("POST", f"{api}/processes/ps_probe/resize"),
        "files": ("GET", f"{api}/envs/laptop/files?path=/nonexistent-probe"),
    }
    with httpx.Client(headers=h, timeout=30) as c:
        for name, (method, u) in checks.items():
            body = {"signal": "interrupt"} if name == "signal" else {"cols": 1, "rows": 1}
            r = c.request(method, u, json=body if method == "POST" else None)
            code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
            if code != "not_found":
                found.add(name)
        envs = c.post(f"{api}/envs/list", json={}).json()["envs"]
        for env in envs:
            found.update(f"tool:{t['name']}" for t in env["tools"] if t["kind"] == "core")
    return found


def _start_executor(url: str, token: str, workdir: Path, *extra: str) -> subprocess.Popen:
    return start_executor(url, token, workdir, *extra, log=workdir.parent / f"{workdir.name}-executor.log")


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_bin()
    root = tmp_path_factory.mktemp("execgate")
    data = root / "data"
    laptop_dir = root / "laptop"
    gpu_dir = root / "gpu"
    tiny_dir = root / "tiny"
    for d in (data, laptop_dir, gpu_dir, tiny_dir):
        d.mkdir()

    admin(data, "workspace", "create", "w1")
    token = admin(data, "token", "create", "--workspace", "w1")
    laptop_token = add_executor(data, "w1", "laptop", default=True)
    gpu_token = add_executor(data, "w1", "gpu")
    tiny_token = add_executor(data, "w1", "tiny")
    add_executor(data, "w1", "offline")
    admin(data, "workspace", "create", "w2")
    other_token = admin(data, "token", "create", "--workspace", "w2")

    gateway, url = start_gateway(data)
    procs = [gateway]
    try:
        procs.append(_start_executor(url, laptop_token, laptop_dir, "--tools", str(CUSTOM_TOOLS)))
        procs.append(_start_executor(url, gpu_token, gpu_dir))
        # Keeps 4 KiB of output per process and nothing on disk, and forgets
        # exited processes after 2 s: for lost output and expired sessions.
        flags = executor_flags()
        tiny_args = ["--retain-bytes", "4096"]
        if "spill-bytes" in flags:
            tiny_args += ["--spill-bytes", "0"]
        features = set()
        if "exited-retention-secs" in flags:
            tiny_args += ["--exited-retention-secs", "2"]
            features.add("exited-retention")
        procs.append(_start_executor(url, tiny_token, tiny_dir, *tiny_args))
        w = World(url, token, other_token, root, laptop_dir, gpu_dir, procs, features, gpu_token)
        with w.client() as c:
            eventually(40, "laptop, gpu and tiny to connect", lambda: {"laptop", "gpu", "tiny"} <= {e.name for e in c.envs()})
        w.features |= probe(url, token)
        yield w
    finally:
        kill_all(procs)


@pytest.fixture()
def client(world: World) -> Iterator[execgate.Client]:
    with world.client() as c:
        yield c


@pytest.fixture()
def laptop(client: execgate.Client) -> execgate.Env:
    return client.env("laptop")


@pytest.fixture()
def gpu(client: execgate.Client) -> execgate.Env:
    return client.env("gpu")
