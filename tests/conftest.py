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
    admin_url,
    call,
    eventually,
    kill_all,
    pg_cluster,
    require_bin,
    start_executor,
    start_gateway,
    start_replica,
    wait_for_envs,
)

__all__ = ["BIN", "admin", "call", "eventually", "gateway", "replica_gateway"]


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


@pytest.fixture(scope="module")
def replica_gateway(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, str, Path]]:
    """(base URL, proxy token, its log) of a replica that holds no executor: two
    replicas on one PostgreSQL database (a throwaway cluster), executor
    `laptop` linked to the other one, so that every call to this one is
    forwarded. Skipped when PostgreSQL cannot start here, failed with
    ``EXECGATE_REQUIRE_POSTGRES=1``. ``EXECUTOR_ARGS`` as for ``gateway``.
    """
    require_bin()
    root: Path = tmp_path_factory.mktemp("replicas")
    data_a, data_b, work = root / "data-a", root / "data-b", root / "work"
    for d in (data_a, data_b, work):
        d.mkdir()
    secret = root / "cluster-secret"
    secret.write_text("a-shared-cluster-secret-of-32-bytes\n")
    cluster = pg_cluster()
    procs = []
    try:
        db = cluster.create_database()
        admin_url(db, "workspace", "create", "w1")
        token = admin_url(db, "token", "create", "--workspace", "w1")
        exe_token = admin_url(db, "executor", "add", "--workspace", "w1", "--name", "laptop", "--default")
        extra: List[str] = [a.replace("{work}", str(work)) for a in getattr(request.module, "EXECUTOR_ARGS", [])]
        owner, owner_url = start_replica(data_a, db, secret)
        procs.append(owner)
        other, url = start_replica(data_b, db, secret)
        procs.append(other)
        procs.append(start_executor(owner_url, exe_token, work, *extra))
        wait_for_envs(owner_url, token, "laptop")
        # The other replica lists it too (it reads who holds what every 0.5 s).
        wait_for_envs(url, token, "laptop")
        yield url, token, data_b / "gateway.log"
    finally:
        kill_all(procs)
        cluster.stop()
