"""The SDK's logic, written once for the sync and the async client.

Every operation is a generator (an *op*) that does no I/O itself: it yields
*effects* (send this request, open this event stream, read a line, sleep,
hand this item to the caller…) and receives their results. ``Client`` and
``AsyncClient`` each have a small *driver* that performs the effects, with
httpx's sync or async API, and throws I/O errors back into the op. So paging
through a file, resuming an event stream, or mapping errors is the same code
for both clients; only the drivers differ.
"""

from __future__ import annotations

import base64
import json as _json
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Generator, List, Mapping, Optional, Sequence, TypeVar, Union
from urllib.parse import quote

from .errors import (
    ExecgateError,
    TransportError,
    error_class,
    error_from_response,
)
from .models import (
    Chunk,
    CopyResult,
    DirListing,
    LostOutput,
    PatchResult,
    ProcessInfo,
    ShellResult,
    Tool,
    ToolResult,
)

API = "/api/connectors"
#: How much one read_file call asks for (the gateway caps a call at 32 MiB).
READ_PAGE = 8 * 1024 * 1024
#: Chunks of a streamed upload or download.
FILE_CHUNK = 1024 * 1024
#: Long-poll wait of ``/output`` (the gateway caps it at 30 s).
POLL_WAIT_MS = 25_000
#: The gateway sends a keepalive comment every 15 s; a silent stream for this
#: long is dead and gets reconnected.
SSE_READ_TIMEOUT = 45.0
#: Extra seconds on top of a tool's own timeout for the HTTP answer.
SLACK = 30.0
#: The binary form of the output stream (``Accept`` asks for it first; a
#: gateway without it answers SSE, which is read instead).
BINARY_STREAM = "application/octet-stream"
#: The most payload bytes one binary frame may carry.
MAX_FRAME_PAYLOAD = 16 << 20
#: Output frame types by stream (see :func:`read_frames`).
_FRAME_STREAMS = {1: "stdout", 2: "stderr", 3: "pty"}
#: Attempts to reconnect a broken output stream before giving up.
RECONNECTS = 5
#: Retries of a mutating request after a connection error, a timeout, a
#: 503 or a 502 (each with the same ``Idempotency-Key``, so it is done
#: once), and of a read (a read-only tool, output, envs/list, the process
#: list: as it is, without a key), as the Rust client does.
DEFAULT_RETRIES = 3
#: Tools that change nothing: called without an idempotency key (a key
#: would make the gateway keep their answer, up to 1 MiB, for 24 h), and
#: retried as they are (the gateway's ``policy::READ_ONLY_TOOLS``).
READ_ONLY_TOOLS = frozenset({"read_file", "list_dir", "read_output", "list_environments"})

Command = Union[str, Sequence[str]]
#: A local path.
StrPath = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------
# Effects: what an op asks its driver to do.


@dataclass
class Request:
    """Send one request; the result is the answer's parsed JSON. A non-2xx
    answer raises the matching :class:`ExecgateError`."""

    method: str
    path: str
    params: Optional[Dict[str, Any]] = None
    json: Any = None
    headers: Optional[Dict[str, str]] = None
    #: Read timeout in seconds; ``None``: the client's default.
    timeout: Optional[float] = None
    #: A mutating request's ``Idempotency-Key`` (see :func:`new_key`): the
    #: driver sends it and retries the request, with the same key, after a
    #: connection error, a timeout, a 503 or a 502 (:func:`retry_delay`).
    idempotency_key: Optional[str] = None
    #: A read (it changes nothing): retried as it is, without a key, like
    #: a keyed request.
    retry: bool = False

    @property
    def retried(self) -> bool:
        """Whether the driver retries this request (:func:`retryable_status`)."""
        return self.idempotency_key is not None or self.retry


def new_key() -> str:
    """A fresh ``Idempotency-Key``: one per call, the same for its retries."""
    return "egk_" + secrets.token_hex(16)


def retry_delay(retry: int, retry_after: Optional[str] = None) -> float:
    """Seconds before retry number ``retry`` (1, 2, …): 0.25 s doubling to
    at most 4 s, with jitter, and at least a 503's ``Retry-After`` (capped
    at 10 s)."""
    delay = min(0.25 * 2 ** (retry - 1), 4.0) * (0.5 + random.random() / 2)
    if retry_after:
        try:
            delay = max(delay, min(float(retry_after), 10.0))
        except ValueError:
            pass
    return delay


def retryable_status(status: int, body: bytes = b"") -> bool:
    """An answer worth retrying a keyed request or a read on: a 503 (the
    gateway, or a load balancer with no replica ready, asks for one) or a
    502 (a load balancer whose replica went away), but not the gateway's
    own 502 ``executor_error`` (the executor answered)."""
    if status == 503:
        return True
    if status != 502:
        return False
    try:
        code = _json.loads(body)["error"]["code"]
    except Exception:
        return True
    return code != "executor_error"


@dataclass
class OpenStream:
    """Send a GET and keep the answer open; the result is a handle for
    :class:`ReadLine`. A non-2xx answer raises."""

    request: Request


@dataclass
class ReadLine:
    """The next line of an open stream (without its line ending), or
    ``None`` at its end."""

    handle: Any


@dataclass
class ReadChunk:
    """The next bytes of an open stream, as they came, or ``None`` at its
    end (the binary output stream is read this way)."""

    handle: Any


@dataclass
class CloseStream:
    handle: Any


@dataclass
class Sleep:
    seconds: float


@dataclass
class Upload:
    """PUT the local file as the request body, streamed; the result is the
    answer's JSON plus ``local_sha256``."""

    request: Request
    local_path: str


@dataclass
class Download:
    """GET into a local file, streamed; the result is ``(bytes, sha256)``."""

    request: Request
    local_path: str


@dataclass
class Emit:
    """Hand ``item`` to the caller of an iterating op."""

    item: Any


Effect = Union[Request, OpenStream, ReadLine, CloseStream, Sleep, Upload, Download, Emit]
R = TypeVar("R")
#: An op that returns an ``R``.
Op = Generator[Effect, Any, R]


# --------------------------------------------------------------------------
# Response parsing, shared by both drivers.


def parse_json(status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """The JSON of a 2xx answer; raises the mapped error otherwise."""
    if status >= 400:
        raise error_from_response(status, body, headers)
    if not body:
        return None
    try:
        return _json.loads(body)
    except ValueError as e:
        raise ExecgateError(
            f"the gateway answered {status} with a body that is not JSON: {body[:200]!r}",
            code="bad_response",
            status=status,
        ) from e


def env_path(env: str, rest: str) -> str:
    return f"{API}/envs/{quote(env, safe='')}/{rest}"


def proc_path(sid: str, rest: str = "") -> str:
    base = f"{API}/processes/{quote(sid, safe='')}"
    return f"{base}/{rest}" if rest else base


def b64(data: Union[bytes, str]) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def _command(cmd: Command) -> Union[str, List[str]]:
    if isinstance(cmd, str):
        return cmd
    return [str(a) for a in cmd]


def _ms(seconds: Optional[float]) -> Optional[int]:
    return None if seconds is None else max(1, int(seconds * 1000))


# --------------------------------------------------------------------------
# Server-Sent Events.


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: Optional[str] = None


class SSEDecoder:
    """Feeds lines of a ``text/event-stream``; returns an event at each blank
    line that ends one (per the WHATWG rules: ``:`` comments, fields
    ``event``, ``data`` (joined by newlines), ``id``; one leading space
    stripped from a value)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: List[str] = []
        self._id: Optional[str] = None

    def feed(self, line: str) -> Optional[SSEEvent]:
        if line == "":
            if not self._data and not self._event:
                return None
            ev = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


# --------------------------------------------------------------------------
# Ops: environments and tools.


def envs_list() -> Op[List[Dict[str, Any]]]:
    r = yield Request("POST", f"{API}/envs/list", json={}, retry=True)
    return list(r.get("envs", []))


def envs_page(limit: int, after: Optional[str]) -> Op["tuple[List[Dict[str, Any]], Optional[str]]"]:
    """A page of envs/list: at most ``limit`` (1 to 1000) environments named
    after ``after``, in byte order of names, and the next page's ``after``
    (None on the last page)."""
    body: Dict[str, Any] = {"limit": limit}
    if after is not None:
        body["after"] = after
    r = yield Request("POST", f"{API}/envs/list", json=body, retry=True)
    return list(r.get("envs", [])), r.get("next")


def tool_call(
    env: str,
    tool: str,
    arguments: Dict[str, Any],
    timeout: Optional[float] = None,
) -> Op[ToolResult]:
    args = {k: v for k, v in arguments.items() if v is not None}
    r = yield Request(
        "POST",
        env_path(env, "tool/call"),
        json={"tool": tool, "arguments": args},
        timeout=timeout,
        idempotency_key=None if tool in READ_ONLY_TOOLS else new_key(),
        retry=tool in READ_ONLY_TOOLS,
    )
    return ToolResult.from_json(r)


def shell(
    env: str,
    cmd: Command,
    cwd: Optional[str],
    env_vars: Optional[Mapping[str, str]],
    timeout: Optional[float],
    check: bool,
) -> Op[ShellResult]:
    r = yield from tool_call(
        env,
        "shell",
        {
            "command": _command(cmd),
            "cwd": cwd,
            "env": dict(env_vars) if env_vars else None,
            "timeout_ms": _ms(timeout),
        },
        timeout=(timeout if timeout is not None else 60.0) + SLACK,
    )
    result = ShellResult.from_tool_result(r)
    return result.check() if check else result


def custom_tool(env: str, tool: Tool, arguments: Dict[str, Any]) -> Op[ShellResult]:
    r = yield from tool_call(env, tool.name, arguments, timeout=None)
    return ShellResult.from_tool_result(r)


def read_file(env: str, path: str) -> Op[bytes]:
    out = bytearray()
    offset = 0
    while True:
        r = yield from tool_call(
            env, "read_file", {"path": path, "offset": offset, "limit": READ_PAGE}
        )
        r.check()
        s = r.structured or {}
        data = decode_content(r.text, s.get("encoding", "base64"))
        out += data
        offset += len(data)
        if s.get("eof", True) or not data:
            return bytes(out)


def list_dir(env: str, path: str, max_entries: Optional[int]) -> Op[DirListing]:
    r = yield from tool_call(env, "list_dir", {"path": path, "max_entries": max_entries})
    r.check()
    return DirListing.from_tool_result(r)


def decode_content(text: str, encoding: str) -> bytes:
    """A tool's bytes as its ``structuredContent.encoding`` says they travel:
    ``base64`` (REST's default), ``utf-8`` (text), or ``utf-8-escaped``
    (text in which ``\\xNN`` is the byte NN and ``\\\\`` a backslash)."""
    if encoding == "base64":
        return base64.b64decode(text)
    if encoding == "utf-8":
        return text.encode("utf-8")
    if encoding == "utf-8-escaped":
        out = bytearray()
        i = 0
        while i < len(text):
            if text.startswith("\\\\", i):
                out += b"\\"
                i += 2
            elif text.startswith("\\x", i):
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
            else:
                out += text[i].encode("utf-8")
                i += 1
        return bytes(out)
    raise ValueError(f"unknown encoding {encoding!r}")


def write_file(env: str, path: str, data: Union[bytes, str]) -> Op[int]:
    r = yield from tool_call(env, "write_file", {"path": path, "content_b64": b64(data)})
    r.check()
    return int((r.structured or {}).get("bytes", 0))


def apply_patch(
    env: str,
    patch: str,
    dry_run: bool,
    expected_sha256: Optional[Mapping[str, str]],
    check: bool,
) -> Op[PatchResult]:
    args: Dict[str, Any] = {"patch": patch}
    if dry_run:
        args["dry_run"] = True
    if expected_sha256:
        args["expected_sha256"] = dict(expected_sha256)
    r = yield from tool_call(env, "apply_patch", args)
    if check:
        r.check()
    return PatchResult.from_tool_result(r)


def copy_path(
    src_env: str,
    dst_env: str,
    src: str,
    dst: str,
    recursive: bool,
    timeout: Optional[float],
) -> Op[CopyResult]:
    r = yield from tool_call(
        src_env,
        "copy_path",
        {
            "source_environment_id": src_env,
            "source_path": src,
            "destination_environment_id": dst_env,
            "destination_path": dst,
            "recursive": recursive or None,
            "timeout_ms": _ms(timeout),
        },
        timeout=(timeout if timeout is not None else 600.0) + SLACK,
    )
    r.check()
    return CopyResult.from_tool_result(r)


@dataclass(frozen=True)
class TransferResult:
    """What :meth:`Env.upload` and :meth:`Env.download` answer."""

    #: The path written (remote for upload, local for download).
    path: str
    bytes: int
    sha256: str


def upload(env: str, local: StrPath, remote: str, create_parents: bool) -> Op["TransferResult"]:
    local = os.fspath(local)
    params = {"path": remote}
    if not create_parents:
        params["create_parents"] = "false"
    r = yield Upload(
        Request("PUT", env_path(env, "files"), params=params, timeout=None, idempotency_key=new_key()),
        local,
    )
    if r.get("sha256") != r.get("local_sha256"):
        raise ExecgateError(
            f"upload of {local} to {remote}: the gateway stored SHA-256 {r.get('sha256')} "
            f"but the local file had {r.get('local_sha256')} (did it change while it was sent?)",
            code="checksum_mismatch",
        )
    return TransferResult(path=remote, bytes=int(r.get("bytes", 0)), sha256=r["sha256"])


def download(env: str, remote: str, local: StrPath) -> Op["TransferResult"]:
    local = os.fspath(local)
    n, sha = yield Download(
        Request("GET", env_path(env, "files"), params={"path": remote}, timeout=None), local
    )
    return TransferResult(path=local, bytes=n, sha256=sha)


# --------------------------------------------------------------------------
# Ops: processes.


@dataclass
class ProcState:
    """What a Process object knows; shared by ``Process`` and ``AsyncProcess``."""

    sid: str
    env: Optional[str] = None
    #: The last seq that ``output()`` delivered (or reported lost).
    cursor: int = 0
    #: Where ``wait()``'s own reads got to (it does not move ``cursor``).
    wait_cursor: int = 0
    exit_code: Optional[int] = None
    #: The process has exited (``exit_code`` may still be ``None``).
    exited: bool = False
    terminated: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)


def spawn(
    env: str,
    cmd: Command,
    tty: bool,
    cwd: Optional[str],
    env_vars: Optional[Mapping[str, str]],
    pipe_stdin: bool,
    cols: Optional[int],
    rows: Optional[int],
    max_runtime: Optional[float],
) -> Op["ProcState"]:
    r = yield from tool_call(
        env,
        "exec_command",
        {
            "command": _command(cmd),
            "cwd": cwd,
            "env": dict(env_vars) if env_vars else None,
            "tty": tty or None,
            "pipe_stdin": None if pipe_stdin else False,
            "cols": cols,
            "rows": rows,
            "max_runtime_ms": _ms(max_runtime),
        },
    )
    r.check()
    sid = (r.structured or {}).get("session_id")
    if not sid:
        sid = _json.loads(r.text)["session_id"]
    return ProcState(sid=str(sid), env=env)


def write_stdin(st: ProcState, data: Union[bytes, str], eof: bool) -> Op[None]:
    body: Dict[str, Any] = {"data_b64": b64(data)}
    if eof:
        body["eof"] = True
    yield Request("POST", proc_path(st.sid, "stdin"), json=body, idempotency_key=new_key())


def terminate(st: ProcState) -> Op[None]:
    yield Request("POST", proc_path(st.sid, "terminate"), json={}, idempotency_key=new_key())
    st.terminated = True


def signal(st: ProcState, name: str) -> Op[None]:
    yield Request(
        "POST", proc_path(st.sid, "signal"), json={"signal": name}, idempotency_key=new_key()
    )


def resize(st: ProcState, cols: int, rows: int) -> Op[None]:
    yield Request("POST", proc_path(st.sid, "resize"), json={"cols": cols, "rows": rows})


def processes_list(limit: Optional[int]) -> Op[List[ProcessInfo]]:
    params = {"limit": limit} if limit is not None else None
    r = yield Request("GET", f"{API}/processes", params=params, retry=True)
    return [ProcessInfo.from_json(p) for p in r.get("processes", [])]


def _read_output(st: ProcState, since: int, wait_ms: int) -> Op[Dict[str, Any]]:
    r = yield Request(
        "GET",
        proc_path(st.sid, "output"),
        params={"since": since, "wait_ms": wait_ms},
        timeout=wait_ms / 1000 + SLACK,
        retry=True,
    )
    if r.get("exit_code") is not None:
        st.exit_code = int(r["exit_code"])
        st.exited = True
    if not r.get("session_alive", True):
        st.exited = True
    err = r.get("error")
    if err:
        code = str(err.get("code", "error"))
        raise error_class(code, 410)(str(err.get("message", "")), code=code, status=200)
    out: Dict[str, Any] = r
    return out


def output_poll(st: ProcState, since: Optional[int]) -> Op[None]:
    """Long-polls ``/output``: yields Chunk and LostOutput items."""
    cursor = st.cursor if since is None else since
    failures = 0
    while True:
        try:
            r = yield from _read_output(st, cursor, POLL_WAIT_MS)
        except TransportError:
            failures += 1
            if failures > RECONNECTS:
                raise
            yield Sleep(min(0.2 * 2**failures, 5.0))
            continue
        failures = 0
        chunks = r.get("chunks", [])
        lost_unknown = bool(r.get("lost_bytes_unknown"))
        lost = int(r.get("lost_bytes", 0))
        if lost or lost_unknown:
            first = int(chunks[0]["seq"]) if chunks else int(r.get("next_since", cursor)) + 1
            if first > cursor + 1:
                item = LostOutput(cursor + 1, first - 1, None if lost_unknown else lost)
                cursor = item.to_seq
                st.cursor = cursor
                yield Emit(item)
        for c in chunks:
            seq = int(c["seq"])
            if seq <= cursor:
                continue
            chunk = Chunk(stream=c["stream"], data=base64.b64decode(c["data_b64"]), seq=seq)
            cursor = seq
            st.cursor = cursor
            yield Emit(chunk)
        cursor = max(cursor, int(r.get("next_since") or cursor))
        st.cursor = cursor
        if not r.get("session_alive", True):
            return


def output_sse(st: ProcState, since: Optional[int], binary: bool = False) -> Op[None]:
    """Follows ``/stream`` (Server-Sent Events), reconnecting with
    ``Last-Event-ID`` when the connection breaks: yields Chunk and
    LostOutput items. With ``binary``, asks for the binary form first and
    reads whichever form the gateway answered (its ``Content-Type``)."""
    cursor = st.cursor if since is None else since
    failures = 0
    while True:
        headers = {"Last-Event-ID": str(cursor)}
        if binary:
            headers["Accept"] = f"{BINARY_STREAM}, text/event-stream;q=0.5"
        try:
            handle = yield OpenStream(
                Request("GET", proc_path(st.sid, "stream"), headers=headers, timeout=SSE_READ_TIMEOUT)
            )
        except TransportError:
            failures += 1
            if failures > RECONNECTS:
                raise
            yield Sleep(min(0.2 * 2**failures, 5.0))
            continue
        decoder = SSEDecoder()
        got_event = False
        try:
            if binary and str(getattr(handle, "content_type", "")).startswith(BINARY_STREAM):
                st.cursor = cursor
                try:
                    done, got_event = yield from read_frames(st, handle)
                finally:
                    cursor = st.cursor
                if done:
                    return
                if not got_event:
                    failures += 1
                    if failures > RECONNECTS:
                        raise TransportError(
                            f"the output stream of {st.sid} keeps ending without events",
                            code="transport",
                        )
                else:
                    failures = 0
                yield CloseStream(handle)
                yield Sleep(min(0.1 * 2**failures, 5.0) if failures else 0.05)
                continue
            while True:
                line = yield ReadLine(handle)
                if line is None:
                    # Ended without `exit`: resume, but not forever if the
                    # gateway keeps ending it with nothing.
                    if not got_event:
                        failures += 1
                        if failures > RECONNECTS:
                            raise TransportError(
                                f"the output stream of {st.sid} keeps ending without events",
                                code="transport",
                            )
                    break
                ev = decoder.feed(line)
                if ev is None:
                    continue
                got_event = True
                failures = 0
                data = _json.loads(ev.data) if ev.data else {}
                if ev.event == "output":
                    seq = int(ev.id or cursor + 1)
                    if seq <= cursor:
                        continue
                    chunk = Chunk(
                        stream=data.get("stream", "stdout"),
                        data=base64.b64decode(data.get("data_b64", "")),
                        seq=seq,
                    )
                    cursor = st.cursor = seq
                    yield Emit(chunk)
                elif ev.event == "lost":
                    item = LostOutput(
                        int(data["from_seq"]),
                        int(data["to_seq"]),
                        None if data.get("bytes") is None else int(data["bytes"]),
                    )
                    cursor = st.cursor = max(cursor, item.to_seq)
                    yield Emit(item)
                elif ev.event == "exit":
                    if ev.id:
                        cursor = st.cursor = max(cursor, int(ev.id))
                    st.exited = True
                    if data.get("exit_code") is not None:
                        st.exit_code = int(data["exit_code"])
                    yield CloseStream(handle)
                    return
                elif ev.event == "error":
                    code = str(data.get("code", "error"))
                    yield CloseStream(handle)
                    raise error_class(code, None)(
                        str(data.get("message", "")), code=code, status=200
                    )
        except TransportError:
            failures += 1
            if failures > RECONNECTS:
                raise
        yield CloseStream(handle)
        yield Sleep(min(0.1 * 2**failures, 5.0) if failures else 0.05)


def read_frames(st: ProcState, handle: Any) -> Op[Any]:
    """Reads the binary output stream (``application/octet-stream``) of an
    open handle: frames of ``[u8 type][u64 BE seq][u32 BE length][payload]``
    (types 0 keepalive, 1-3 stdout/stderr/pty raw bytes, 4 lost, 5 exit, 6
    error, the last three with the SSE event's JSON as payload; unknown
    types are skipped). Emits Chunk and LostOutput items and moves
    ``st.cursor``; returns ``(exited, got_a_frame)``: ``exited`` False means
    the connection ended first (resume from ``st.cursor``). A partial
    frame at the end is dropped, so the cursor stays at a whole frame."""
    buf = bytearray()
    got = False
    while True:
        while len(buf) >= 13:
            kind = buf[0]
            seq = int.from_bytes(buf[1:9], "big")
            n = int.from_bytes(buf[9:13], "big")
            if n > MAX_FRAME_PAYLOAD:
                raise ExecgateError(f"a binary output frame of {n} bytes", code="bad_frame")
            if len(buf) < 13 + n:
                break
            payload = bytes(buf[13 : 13 + n])
            del buf[: 13 + n]
            got = True
            if kind in _FRAME_STREAMS:
                if seq <= st.cursor:
                    continue
                st.cursor = seq
                yield Emit(Chunk(stream=_FRAME_STREAMS[kind], data=payload, seq=seq))
            elif kind == 4:
                d = _json.loads(payload)
                item = LostOutput(
                    int(d["from_seq"]),
                    int(d["to_seq"]),
                    None if d.get("bytes") is None else int(d["bytes"]),
                )
                st.cursor = max(st.cursor, item.to_seq)
                yield Emit(item)
            elif kind == 5:
                d = _json.loads(payload)
                st.cursor = max(st.cursor, seq)
                st.exited = True
                if d.get("exit_code") is not None:
                    st.exit_code = int(d["exit_code"])
                yield CloseStream(handle)
                return True, got
            elif kind == 6:
                d = _json.loads(payload)
                code = str(d.get("code", "error"))
                yield CloseStream(handle)
                raise error_class(code, None)(str(d.get("message", "")), code=code, status=200)
        chunk = yield ReadChunk(handle)
        if chunk is None:
            return False, got
        buf += chunk


def output(st: ProcState, since: Optional[int], transport: str) -> Op[None]:
    """``transport``: ``"binary"`` (the binary stream, or SSE from a gateway
    without it), ``"sse"``, ``"poll"``, or ``"auto"`` (``"binary"``, falling
    back to long-polling on a gateway without the stream route)."""
    if transport == "poll":
        return (yield from output_poll(st, since))
    if transport == "sse":
        return (yield from output_sse(st, since))
    if transport == "binary":
        return (yield from output_sse(st, since, binary=True))
    if transport != "auto":
        raise ValueError(
            f"transport must be 'auto', 'binary', 'sse' or 'poll', not {transport!r}"
        )
    if st.extra.get("no_sse"):
        return (yield from output_poll(st, since))
    try:
        return (yield from output_sse(st, since, binary=True))
    except ExecgateError as e:
        # Only a gateway that has no such route at all: its fallback 404.
        if e.code != "not_found":
            raise
        st.extra["no_sse"] = True
    return (yield from output_poll(st, since))


class WaitTimeout(ExecgateError, TimeoutError):
    """``Process.wait(timeout)`` ran out of time; the process still runs."""


def wait(st: ProcState, timeout: Optional[float]) -> Op[Optional[int]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    cursor = max(st.wait_cursor, st.cursor)
    while True:
        if st.exited and (st.exit_code is not None or st.extra.get("closed")):
            return st.exit_code
        remaining = POLL_WAIT_MS
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"process {st.sid} still runs after {timeout} s", code="wait_timeout"
                )
            remaining = min(remaining, max(1, int(left * 1000)))
        r = yield from _read_output(st, cursor, remaining)
        chunks = r.get("chunks", [])
        if chunks:
            cursor = max(cursor, int(chunks[-1]["seq"]))
        cursor = max(cursor, int(r.get("next_since") or cursor))
        st.wait_cursor = cursor
        if st.exit_code is not None:
            return st.exit_code
        if not r.get("session_alive", True):
            st.extra["closed"] = True
            return st.exit_code


def poll(st: ProcState) -> Op[Optional[int]]:
    if st.exit_code is not None:
        return st.exit_code
    cursor = max(st.wait_cursor, st.cursor)
    while True:
        r = yield from _read_output(st, cursor, 0)
        if st.exit_code is not None or not r.get("session_alive", True):
            return st.exit_code
        chunks = r.get("chunks", [])
        if not chunks:
            return None
        cursor = max(int(chunks[-1]["seq"]), int(r.get("next_since") or 0))
        st.wait_cursor = cursor


# --------------------------------------------------------------------------
# Environments.


@dataclass
class EnvInfo:
    name: str
    is_default: bool
    tools: List[Tool]
    last_seen: Optional[str]
    executor: Optional[Dict[str, Any]]
    policy: Optional[Dict[str, Any]] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "EnvInfo":
        return cls(
            name=d["name"],
            is_default=bool(d.get("is_default", False)),
            tools=[Tool.from_json(t) for t in d.get("tools", [])],
            last_seen=d.get("last_seen"),
            executor=d.get("executor"),
            policy=d.get("policy"),
        )

    @classmethod
    def named(cls, name: str) -> "EnvInfo":
        """An environment known only by name (not listed)."""
        return cls(name=name, is_default=False, tools=[], last_seen=None, executor=None)


def pick_env(envs: List[Dict[str, Any]], name: Optional[str]) -> EnvInfo:
    """The env named ``name`` (or the default one) from an envs/list answer."""
    from .errors import EnvNotFound

    infos = [EnvInfo.from_json(e) for e in envs]
    for info in infos:
        if (name is None and info.is_default) or (name is not None and info.name == name):
            return info
    connected = ", ".join(i.name for i in infos) or "none"
    if name is None:
        raise EnvNotFound(
            f"no connected environment is the default (connected: {connected})",
            code="env_not_found",
        )
    raise EnvNotFound(
        f"no connected environment named {name!r} (connected: {connected})",
        code="env_not_found",
    )
