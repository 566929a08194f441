"""Plain data returned by the SDK: results, environment and process info,
and the items of a process's output stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Union

from .errors import CommandFailed, ToolError

__all__ = [
    "Tool",
    "ToolResult",
    "ShellResult",
    "PatchResult",
    "CopyResult",
    "ProcessInfo",
    "Chunk",
    "LostOutput",
    "OutputItem",
]


@dataclass(frozen=True)
class Tool:
    """One tool of an environment, as ``envs/list`` shows it."""

    name: str
    description: str
    #: ``"core"`` or ``"custom"``.
    kind: str
    #: A custom tool's JSON Schema for its arguments.
    input_schema: Optional[Dict[str, Any]] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Tool":
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            kind=d.get("kind", "core"),
            input_schema=d.get("input_schema"),
        )


@dataclass(frozen=True)
class ToolResult:
    """An MCP CallToolResult, as ``tool/call`` answers it."""

    #: The text of the first content item.
    text: str
    structured: Optional[Dict[str, Any]]
    is_error: bool
    #: The whole answer, as JSON.
    raw: Dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ToolResult":
        content = d.get("content") or []
        text = content[0].get("text", "") if content else ""
        return cls(
            text=text,
            structured=d.get("structuredContent"),
            is_error=bool(d.get("isError", False)),
            raw=d,
        )

    def check(self) -> "ToolResult":
        """Raises :class:`ToolError` if the tool failed; returns ``self``."""
        if self.is_error:
            raise ToolError(self.text or "the tool failed", self)
        return self


@dataclass(frozen=True)
class ShellResult:
    """What ``shell`` (and every custom tool) answers."""

    stdout: str
    stderr: str
    #: ``None`` when the process was killed before it exited normally.
    exit_code: Optional[int]
    timed_out: bool
    duration_ms: int = 0
    #: Output the executor dropped before the gateway read it.
    lost_bytes: int = 0
    #: Output beyond what ``shell`` captures (16 MiB).
    dropped_bytes: int = 0
    tool_result: Optional[ToolResult] = field(default=None, repr=False, compare=False)

    @classmethod
    def from_tool_result(cls, r: ToolResult) -> "ShellResult":
        s = r.structured or {}
        if "stdout" not in s:
            # The executor refused to start the command (no such program…).
            raise ToolError(r.text or "the command could not be run", r)
        return cls(
            stdout=s.get("stdout", ""),
            stderr=s.get("stderr", ""),
            exit_code=s.get("exit_code"),
            timed_out=bool(s.get("timed_out", False)),
            duration_ms=int(s.get("duration_ms", 0)),
            lost_bytes=int(s.get("lost_bytes", 0)),
            dropped_bytes=int(s.get("dropped_bytes", 0)),
            tool_result=r,
        )

    @property
    def ok(self) -> bool:
        """Exit code 0 and no timeout."""
        return self.exit_code == 0 and not self.timed_out

    def check(self) -> "ShellResult":
        """Raises :class:`CommandFailed` unless :attr:`ok`; returns ``self``."""
        if not self.ok:
            why = (
                "timed out"
                if self.timed_out
                else f"exited with code {self.exit_code}"
            )
            tail = self.stderr.strip().splitlines()[-1:] or [""]
            raise CommandFailed(
                f"the command {why}" + (f": {tail[0]}" if tail[0] else ""), self
            )
        return self


@dataclass(frozen=True)
class PatchResult:
    """What ``apply_patch`` answers: one entry per file."""

    #: ``[{"path", "action", "ok", "error"?, "to"?}, …]``
    files: List[Dict[str, Any]]
    applied: bool
    dry_run: bool
    text: str
    tool_result: Optional[ToolResult] = field(default=None, repr=False, compare=False)

    @classmethod
    def from_tool_result(cls, r: ToolResult) -> "PatchResult":
        s = r.structured or {}
        return cls(
            files=list(s.get("files", [])),
            applied=bool(s.get("applied", False)),
            dry_run=bool(s.get("dry_run", False)),
            text=r.text,
            tool_result=r,
        )


@dataclass(frozen=True)
class CopyResult:
    """What ``copy_path`` answers."""

    bytes: int
    files: int
    duration_ms: int
    #: The file's SHA-256 (single files only), when it was verified by
    #: SHA-256 (an end was a stock codex).
    sha256: Optional[str] = None
    #: The file's BLAKE3 (single files only), when it was verified by
    #: BLAKE3 (both ends were execgate executors).
    blake3: Optional[str] = None

    @classmethod
    def from_tool_result(cls, r: ToolResult) -> "CopyResult":
        s = r.structured or {}
        return cls(
            bytes=int(s.get("bytes", 0)),
            files=int(s.get("files", 0)),
            duration_ms=int(s.get("duration_ms", 0)),
            sha256=s.get("sha256"),
            blake3=s.get("blake3"),
        )


@dataclass(frozen=True)
class DirEntry:
    """One entry of a directory listing (``list_dir``)."""

    name: str
    #: ``"file"``, ``"directory"`` or ``"other"``. Symbolic links are
    #: followed; a dangling one (or one out of the executor's root), a FIFO,
    #: a socket or a device is ``"other"``.
    kind: str

    @property
    def is_dir(self) -> bool:
        return self.kind == "directory"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


@dataclass(frozen=True)
class DirListing:
    """What ``list_dir`` answers: entries sorted by name."""

    path: str
    entries: List[DirEntry]
    #: Every entry of the directory, returned or not.
    total: int
    #: Whether entries were left out (``max_entries``).
    truncated: bool

    def names(self) -> List[str]:
        return [e.name for e in self.entries]

    def __iter__(self) -> Iterator[DirEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def from_tool_result(cls, r: ToolResult) -> "DirListing":
        s = r.structured or {}
        entries = [DirEntry(name=str(e["name"]), kind=str(e["kind"])) for e in s.get("entries", [])]
        return cls(
            path=str(s.get("path", "")),
            entries=entries,
            total=int(s.get("total", len(entries))),
            truncated=bool(s.get("truncated", False)),
        )


@dataclass(frozen=True)
class ProcessInfo:
    """One process session of the workspace (``GET /processes``)."""

    sid: str
    env: str
    command: List[str]
    started_at: str
    #: ``None`` when the executor is not connected.
    session_alive: Optional[bool]
    exit_code: Optional[int]
    #: ``running``, ``exited``, ``expired``, ``executor_restarted`` or
    #: ``executor_unavailable``.
    status: str

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ProcessInfo":
        return cls(
            sid=d["sid"],
            env=d.get("env", ""),
            command=list(d.get("command", [])),
            started_at=d.get("started_at", ""),
            session_alive=d.get("session_alive"),
            exit_code=d.get("exit_code"),
            status=d.get("status", ""),
        )


@dataclass(frozen=True)
class Chunk:
    """A piece of a process's output."""

    #: ``"stdout"``, ``"stderr"`` or ``"pty"``.
    stream: str
    data: bytes
    #: Its sequence number; resume after it with ``output(since=seq)``.
    seq: int

    @property
    def text(self) -> str:
        """``data`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class LostOutput:
    """Output the executor had to drop (its buffers were full): seqs
    ``from_seq`` to ``to_seq`` will never be delivered. ``bytes`` is how many
    bytes that was, or ``None`` when the gateway cannot know (a stock codex
    executor after a gateway restart). Output is never lost silently: the
    iterator yields this item where the gap is."""

    from_seq: int
    to_seq: int
    bytes: Optional[int]

    @property
    def seq(self) -> int:
        """The last lost seq (the cursor moves past it)."""
        return self.to_seq


#: What ``Process.output()`` yields.
OutputItem = Union[Chunk, LostOutput]
