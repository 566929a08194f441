"""Harness of the Python suites under tests/ (MCP, OpenAPI): a gateway and
an executor on 127.0.0.1 from the shared kit, tests/execgate_fixtures.py
(the real binaries, ``$EXECGATE_BIN``, default ``target/debug/execgate`` of
this checkout). Standard library only, so each suite brings just its own
client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

# This directory is on sys.path (pytest's rootdir conftest import).
from execgate_fixtures import (
    BIN,
    add_executor,
    admin,
    call,
    eventually,
    kill_all,
    require_bin,
    start_executor,
    start_gateway,
    wait_for_envs,
)

__all__ = ["BIN", "admin", "call", "eventually", "gateway"]


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, str]]:
    """(base URL, proxy token) of a gateway with one executor, `laptop`.

    A test module may set ``EXECUTOR_ARGS`` (a list of extra arguments for
    ``execgate executor``); ``{work}`` in them becomes the executor's
    working directory.
    """
    require_bin()
    root: Path = tmp_path_factory.mktemp("execgate")
    data, work = root / "data", root / "work"
    data.mkdir()
    work.mkdir()
    admin(data, "workspace", "create", "w1")
    token = admin(data, "token", "create", "--workspace", "w1")
    exe_token = add_executor(data, "w1", "laptop", default=True)
    extra: List[str] = [a.replace("{work}", str(work)) for a in getattr(request.module, "EXECUTOR_ARGS", [])]

    gw, url = start_gateway(data)
    procs = [gw]
    try:
        procs.append(start_executor(url, exe_token, work, *extra))
        wait_for_envs(url, token, "laptop")
        yield url, token
    finally:
        kill_all(procs)
