"""schemathesis (PyPI) against the gateway's own ``/openapi.json``: generated
requests to every documented operation, with a valid proxy token, must get
no 5xx and answers that conform to the document (status, content type,
headers, body schema). The gateway and executor are the real binaries (the
``gateway`` fixture of tests/conftest.py). A second run is against a replica
on PostgreSQL that holds no executor (``replica_gateway``: its executor is
linked to the other replica), so that every call reaching the executor is
forwarded over the peer channel.

Run: ``pip install -r tests/openapi/requirements.txt && pytest tests/openapi``.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from conftest import call, eventually

HERE = Path(__file__).resolve().parent

# Generated paths and commands must not touch the CI machine outside the
# executor's temporary working directory (see schemathesis.toml).
EXECUTOR_ARGS = ["--root", "{work}"]


def exited_session(url: str, token: str) -> str:
    """A session whose process has exited: the {sid} routes then answer
    promptly (the SSE stream ends with `exit`)."""
    status, result = call(url, token, "POST", "/api/connectors/envs/laptop/tool/call",
                          {"tool": "exec_command", "arguments": {"command": ["sh", "-c", "echo fuzz"]}})
    assert status == 200, result
    sid = result["structuredContent"]["session_id"]

    def exited() -> Optional[Dict[str, Any]]:
        status, out = call(url, token, "GET", f"/api/connectors/processes/{sid}/output?wait_ms=1000")
        assert status == 200, out
        return out if out["exit_code"] is not None else None

    out = eventually(30, "the process to exit", exited)
    assert b"".join(base64.b64decode(c["data_b64"]) for c in out["chunks"]) == b"fuzz\n"
    return sid


def test_schemathesis_finds_no_server_error_or_nonconformance(gateway: Tuple[str, str], tmp_path: Path) -> None:
    run_schemathesis(*gateway, tmp_path)


def test_schemathesis_on_a_replica_that_holds_no_executor(replica_gateway: Tuple[str, str, Path],
                                                          tmp_path: Path) -> None:
    """The same run against a replica on PostgreSQL whose executor is linked
    to another replica: every call that reaches an executor is forwarded
    over the peer channel, so forwarding meets the same hostile input."""
    url, token, log = replica_gateway
    run_schemathesis(url, token, tmp_path)
    # It was forwarded: this replica opened a channel to the owner.
    assert "opened a channel to the executor through its owner" in log.read_text(), log.read_text()[-4000:]


def run_schemathesis(url: str, token: str, tmp_path: Path) -> None:
    env = {**os.environ, "EXECGATE_TOKEN": token, "EXECGATE_SID": exited_session(url, token)}
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{url}/openapi.json",
        "--seed", os.environ.get("EXECGATE_SCHEMATHESIS_SEED", "1"),
        "--phases", "coverage,fuzzing,stateful",
        "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    # It really ran: every operation the document lists was tested (counted
    # from the document, so that a new route cannot slip through untested).
    status, doc = call(url, token, "GET", "/openapi.json")
    assert status == 200, doc
    operations = sum(
        1 for item in doc["paths"].values() for method in item
        if method in ("get", "put", "post", "delete", "patch", "head", "options")
    )
    assert operations >= 13, operations
    assert f"Selected: {operations}/{operations}" in report and f"Tested: {operations}" in report, report
    assert " passed" in report and "failed" not in report.split("SUMMARY")[-1], report
