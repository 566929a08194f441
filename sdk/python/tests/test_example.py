"""Runs examples/quickstart.py the way a notebook would: cell by cell
(`# %%`) in one namespace, against the real gateway."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from conftest import World

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def cells(source: str) -> "list[str]":
    out, cur = [], []
    for line in source.splitlines(keepends=True):
        if line.startswith("# %%") and cur:
            out.append("".join(cur))
            cur = []
        cur.append(line)
    out.append("".join(cur))
    return out


def test_quickstart_runs_cell_by_cell(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.needs("tool:apply_patch")
    monkeypatch.setenv("EXECGATE_URL", world.url)
    monkeypatch.setenv("EXECGATE_TOKEN", world.token)
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    parts = cells(EXAMPLE.read_text())
    assert len(parts) >= 6
    with contextlib.redirect_stdout(out):
        for i, cell in enumerate(parts):
            exec(compile(cell, f"{EXAMPLE.name}[cell {i}]", "exec"), namespace)
    text = out.getvalue()
    assert "laptop" in text and "default=True" in text
    assert "'Linux\\n' 'oops\\n' 3 False" in text
    assert "hello, world" in text
    assert "stdout: HELLO FROM PYTHON" in text and "stderr: bye" in text
    assert "exit code: 0" in text
    assert text.rstrip().endswith("done")
    assert not (world.laptop_dir / "execgate-demo").exists()
