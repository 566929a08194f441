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


def start_gateway(data_dir: Path, *args: str, listen: str = "127.0.0.1:0") -> Tuple[subprocess.Popen, str]:
    """``execgate serve`` on ``listen`` (default: a free port of 127.0.0.1),
    logging to ``<data-dir>/gateway.log``: (process, base URL) once it listens."""
    log = data_dir / "gateway.log"
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", listen, "--data-dir", str(data_dir), *args],
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


# --- PostgreSQL and replicas (the twin of crates/testkit/src/pg.rs) ---------

#: Set to 1 to make an unavailable PostgreSQL a failure, not a skip.
REQUIRE_POSTGRES = "EXECGATE_REQUIRE_POSTGRES"


def free_port() -> int:
    """A free port of 127.0.0.1 (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin_dir() -> Path:
    import glob
    import shutil

    initdb = shutil.which("initdb")
    if initdb:
        real = Path(initdb).resolve().parent
        if (real / "pg_ctl").is_file():
            return real
    found = sorted(
        (int(Path(d).parent.name), Path(d).parent)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if Path(d).parent.name.isdigit() and (Path(d) / "initdb").is_file()
    )
    if not found:
        raise RuntimeError("no initdb on PATH nor under /usr/lib/postgresql/*/bin (install Debian's postgresql)")
    return found[-1][1] / "bin"


class PgCluster:
    """A throwaway PostgreSQL cluster in a temp dir of its own (in the system
    temp dir: the cluster's user must reach it) (initdb, then pg_ctl start
    on a free port of 127.0.0.1, trust authentication, fsync off), as the
    Rust kit starts them. PostgreSQL refuses to run as root: then the
    cluster belongs to ``postgres`` (or ``nobody``) and its programs run
    through ``setpriv``. :meth:`stop` stops it (immediate) and removes it."""

    def __init__(self) -> None:
        import pwd
        import tempfile

        self.bin = _pg_bin_dir()
        root = Path(tempfile.mkdtemp(prefix="execgate-pg-"))
        self.dir = root
        self.data = root / "data"
        self.prefix: list = []
        self.port = 0
        self._next = 0
        if os.geteuid() == 0:
            for user in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(user)
                except KeyError:
                    continue
                os.chown(root, pw.pw_uid, pw.pw_gid)
                self.prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
                break
            else:
                raise RuntimeError("running as root, and neither a postgres nor a nobody user exists")

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, str(self.bin / program), *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)

    def start(self) -> "PgCluster":
        out = self._run("initdb", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", str(self.data))
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stdout}{out.stderr}")
        last = ""
        for _ in range(5):
            port = free_port()
            options = (f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            out = self._run("pg_ctl", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.dir / "server.log"),
                            "-o", options, "start")
            if out.returncode == 0:
                self.port = port
                return self
            last = f"pg_ctl start failed: {out.stdout}{out.stderr}"
        raise RuntimeError(last)

    def url(self, name: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run([str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-d", self.url(db), "-c", sql], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"psql {sql!r}: {out.stderr}"
        return out.stdout

    def create_database(self) -> str:
        """A new empty database: its URL."""
        self._next += 1
        name = f"t{os.getpid()}_{self._next}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.port:
            self._run("pg_ctl", "-w", "-m", "immediate", "-D", str(self.data), "stop")
            self.port = 0
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def pg_cluster() -> PgCluster:
    """A started :class:`PgCluster`; skips the test when
    PostgreSQL cannot start here, or fails it with
    ``EXECGATE_REQUIRE_POSTGRES=1`` (CI)."""
    cluster = None
    try:
        cluster = PgCluster()
        return cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        if cluster is not None:
            cluster.stop()
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"PostgreSQL is required ({REQUIRE_POSTGRES}=1) but cannot start: {e}")
        pytest.skip(f"PostgreSQL cannot start here: {e}")


def admin_url(database_url: str, *args: str) -> str:
    """``execgate admin --database-url URL ARGS…``; the last line of stdout."""
    out = subprocess.run(
        [BIN, "admin", "--database-url", database_url, *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"execgate admin {args}: {out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def start_replica(data_dir: Path, database_url: str, secret_file: Path, *args: str) -> Tuple[subprocess.Popen, str]:
    """A replica (``execgate serve --database-url … --advertise-url …
    --cluster-secret-file …``) on a free port: (process, base URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return start_gateway(data_dir, "--database-url", database_url, "--advertise-url", url,
                         "--cluster-secret-file", str(secret_file), *args, listen=f"127.0.0.1:{port}")
