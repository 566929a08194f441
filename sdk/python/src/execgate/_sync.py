"""The synchronous client: ``Client``, ``Env`` and ``Process``, and the
driver that performs the ops of :mod:`execgate._core` with httpx."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from types import TracebackType
from typing import Any, Callable, Dict, Generator, Iterator, List, Mapping, Optional, Type, Union

import httpx

from . import _core as ops
from ._base import ClientBase, EnvBase, ProcessBase, custom_doc, DEFAULT_TIMEOUT
from ._core import (
    R,
    CloseStream,
    Command,
    Download,
    Emit,
    OpenStream,
    ReadChunk,
    ReadLine,
    Request,
    Sleep,
    StrPath,
    TransferResult,
    Upload,
    parse_json,
)
from .errors import (
    ExecgateError,
    SessionGone,
    SessionNotFound,
    TransportError,
    error_from_response,
)
from .models import CopyResult, DirListing, OutputItem, PatchResult, ProcessInfo, ShellResult, Tool, ToolResult

#: Read timeout for the answer to an upload (sent after the whole body and
#: the executor's hash check).
UPLOAD_ANSWER_TIMEOUT = 600.0


class _Stream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.chunks = response.iter_bytes()
        self.content_type = response.headers.get("content-type", "")


def _transport_error(e: httpx.HTTPError) -> ExecgateError:
    if isinstance(e, httpx.TimeoutException):
        return TransportError(f"timed out: {e or type(e).__name__}", code="timeout")
    return TransportError(str(e) or type(e).__name__, code="transport")


def part_path(local: str) -> str:
    """A temporary name beside ``local`` for a download in progress."""
    d, base = os.path.split(os.path.abspath(local))
    return os.path.join(d, f".{base}.{secrets.token_hex(4)}.part")


class Client(ClientBase):
    """A synchronous client for an execgate gateway.

    >>> client = Client("http://127.0.0.1:6060", "egp_…")   # or Client.from_env()
    >>> env = client.default_env()
    >>> env.shell("uname -a").stdout

    Use it as a context manager (or call :meth:`close`) to close its
    connections. ``http_client`` may be an ``httpx.Client`` of your own
    (its base URL and headers are then yours to set).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = ops.DEFAULT_RETRIES,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(url, token, timeout=timeout, retries=retries)
        self._http = http_client or httpx.Client(
            base_url=self.url, headers=self._headers(), timeout=self._timeout(None)
        )

    # -- the driver ---------------------------------------------------------

    def _drive(self, op: "ops.Op[Any]") -> Generator[Any, None, Any]:
        """Performs ``op``'s effects; yields what it emits; returns its value."""
        streams: Dict[int, _Stream] = {}
        value: Any = None
        error: Optional[BaseException] = None
        try:
            while True:
                try:
                    effect = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.item
                    continue
                try:
                    value = self._perform(effect, streams)
                except ExecgateError as e:
                    error = e
        finally:
            for s in streams.values():
                s.response.close()
            op.close()

    def _run(self, op: "ops.Op[R]") -> R:
        gen = self._drive(op)
        try:
            item = next(gen)
        except StopIteration as stop:
            value: R = stop.value
            return value
        gen.close()
        raise RuntimeError(f"an op emitted {item!r} outside an iteration")

    def _perform(self, eff: Any, streams: Dict[int, _Stream]) -> Any:
        try:
            if isinstance(eff, Request):
                resp = self._retrying(
                    eff.retried,
                    lambda: self._http.request(
                        eff.method,
                        eff.path,
                        params=eff.params,
                        json=eff.json,
                        headers=self._with_key(eff.headers, eff.idempotency_key),
                        timeout=self._timeout(eff.timeout),
                    ),
                )
                return parse_json(resp.status_code, resp.headers, resp.content)
            if isinstance(eff, ReadLine):
                line = next(eff.handle.lines, None)
                return None if line is None else line.rstrip("\r\n")
            if isinstance(eff, ReadChunk):
                return next(eff.handle.chunks, None)
            if isinstance(eff, OpenStream):
                r = eff.request
                req = self._http.build_request(
                    r.method, r.path, params=r.params, headers=r.headers,
                    timeout=self._timeout(r.timeout),
                )
                resp = self._http.send(req, stream=True)
                if resp.status_code >= 400:
                    try:
                        body = resp.read()
                    finally:
                        resp.close()
                    raise error_from_response(resp.status_code, body, resp.headers)
                handle = _Stream(resp)
                streams[id(handle)] = handle
                return handle
            if isinstance(eff, CloseStream):
                streams.pop(id(eff.handle), None)
                eff.handle.response.close()
                return None
            if isinstance(eff, Sleep):
                time.sleep(eff.seconds)
                return None
            if isinstance(eff, Upload):
                return self._upload(eff)
            if isinstance(eff, Download):
                return self._download(eff)
        except httpx.HTTPError as e:
            raise _transport_error(e) from e
        raise TypeError(f"unknown effect {eff!r}")

    def _retrying(self, retried: bool, send: Callable[[], httpx.Response]) -> httpx.Response:
        """``send()``; for a keyed request or a read (``retried``), again
        (the same request, the same key) after a connection error, a timeout,
        a 503 or a 502 (:func:`ops.retryable_status`), up to ``retries``
        times."""
        retry = 0
        while True:
            try:
                resp = send()
            except httpx.TransportError:
                if not retried or retry >= self.retries:
                    raise
                retry += 1
                time.sleep(ops.retry_delay(retry))
                continue
            if (
                retried
                and retry < self.retries
                and ops.retryable_status(resp.status_code, resp.content)
            ):
                retry += 1
                time.sleep(ops.retry_delay(retry, resp.headers.get("retry-after")))
                continue
            return resp

    def _upload(self, eff: Upload) -> Any:
        digest = hashlib.sha256()

        def send() -> httpx.Response:
            nonlocal digest
            digest = hashlib.sha256()
            size = os.path.getsize(eff.local_path)

            def body() -> Iterator[bytes]:
                with open(eff.local_path, "rb") as f:
                    while True:
                        chunk = f.read(ops.FILE_CHUNK)
                        if not chunk:
                            return
                        digest.update(chunk)
                        yield chunk

            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            return self._http.request(
                "PUT", r.path, params=r.params, content=body(),
                headers=self._with_key(headers, r.idempotency_key),
                timeout=self._timeout(UPLOAD_ANSWER_TIMEOUT),
            )

        r = eff.request
        resp = self._retrying(r.idempotency_key is not None, send)
        out = parse_json(resp.status_code, resp.headers, resp.content)
        out["local_sha256"] = digest.hexdigest()
        return out

    def _download(self, eff: Download) -> Any:
        r = eff.request
        tmp = part_path(eff.local_path)
        digest = hashlib.sha256()
        n = 0
        try:
            with self._http.stream(
                "GET", r.path, params=r.params, timeout=self._timeout(None)
            ) as resp:
                if resp.status_code >= 400:
                    raise error_from_response(resp.status_code, resp.read(), resp.headers)
                expected = resp.headers.get("content-length")
                with open(tmp, "xb") as f:
                    for chunk in resp.iter_bytes(ops.FILE_CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        n += len(chunk)
            if expected is not None and int(expected) != n:
                raise TransportError(
                    f"the download ended after {n} of {expected} bytes", code="transport"
                )
            os.replace(tmp, eff.local_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return n, digest.hexdigest()

    # -- the API ------------------------------------------------------------

    def envs(self) -> List["Env"]:
        """The workspace's connected environments."""
        return [Env(self, ops.EnvInfo.from_json(e)) for e in self._run(ops.envs_list())]

    def envs_page(self, limit: int, after: Optional[str] = None) -> "tuple[List[Env], Optional[str]]":
        """A page of the connected environments, for large workspaces: at most
        ``limit`` (1 to 1000) named after ``after``, in byte order of names,
        and the ``after`` of the next page (None on the last one)."""
        envs, next_after = self._run(ops.envs_page(limit, after))
        return [Env(self, ops.EnvInfo.from_json(e)) for e in envs], next_after

    def env(self, name: str, *, check: bool = True) -> "Env":
        """The connected environment ``name``; :class:`EnvNotFound` if none
        is connected. ``check=False`` skips the listing and returns a handle
        without tool metadata (calls then fail as the gateway says: 404
        ``env_not_found``, 503 ``executor_unavailable``)."""
        if not check:
            return Env(self, ops.EnvInfo.named(name))
        return Env(self, ops.pick_env(self._run(ops.envs_list()), name))

    def default_env(self) -> "Env":
        """The workspace's default environment; :class:`EnvNotFound` if it is
        not connected (or none is marked default)."""
        return Env(self, ops.pick_env(self._run(ops.envs_list()), None))

    def processes(self, limit: Optional[int] = None) -> List[ProcessInfo]:
        """The workspace's process sessions, newest first (``limit`` ≤ 1000)."""
        return self._run(ops.processes_list(limit))

    def process(self, sid: str, env: Optional[str] = None) -> "Process":
        """A handle on an existing process session (e.g. from another
        program); ``output()`` then starts at the beginning."""
        return Process(self, ops.ProcState(sid=sid, env=env))

    def close(self) -> None:
        """Closes the HTTP connections."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Env(EnvBase):
    """One environment (a machine running an executor). Get it from
    :meth:`Client.envs`, :meth:`Client.env` or :meth:`Client.default_env`.

    Custom tools of the environment are methods: ``env.echo_arg(text="hi")``
    returns a :class:`ShellResult`.
    """

    _client: Client

    def refresh(self) -> "Env":
        """Reloads tools and ``last_seen`` from the gateway; returns ``self``."""
        self._info = ops.pick_env(self._client._run(ops.envs_list()), self.name)
        return self

    def call(
        self,
        tool: str,
        arguments: Optional[Mapping[str, Any]] = None,
        *,
        check: bool = False,
        timeout: Optional[float] = None,
    ) -> ToolResult:
        """Calls any tool by name with raw ``arguments``. With ``check=True``
        a result with ``isError`` raises :class:`ToolError`. ``timeout`` is
        the HTTP read timeout in seconds."""
        r = self._client._run(ops.tool_call(self.name, tool, dict(arguments or {}), timeout))
        return r.check() if check else r

    def shell(
        self,
        cmd: Command,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        check: bool = False,
    ) -> ShellResult:
        """Runs a command to completion.

        ``cmd`` is an argv list, or a string run with ``sh -c``. ``env`` is
        set on top of the executor's environment. ``timeout`` (seconds,
        default 60) kills the whole process group; the result then has
        ``timed_out=True``. A non-zero exit does not raise unless
        ``check=True`` (then :class:`CommandFailed`, also on a timeout).
        A command that cannot be started at all raises :class:`ToolError`.
        """
        return self._client._run(ops.shell(self.name, cmd, cwd, env, timeout, check))

    def read_file(self, path: str) -> bytes:
        """The file's bytes, read in pages of 8 MiB (for files of hundreds
        of MiB prefer :meth:`download`). Relative paths resolve against the
        executor's working directory. A missing file raises :class:`ToolError`."""
        return self._client._run(ops.read_file(self.name, path))

    def list_dir(self, path: str = ".", *, max_entries: Optional[int] = None) -> DirListing:
        """The directory's entries, sorted by name, each with a ``kind``
        (``file``, ``directory`` or ``other``; links are followed). Relative
        paths resolve against the executor's working directory. At most
        ``max_entries`` (the gateway's default 1000, at most 10000) come back;
        beyond that ``truncated`` is true and ``total`` counts them all. A
        missing path or a file raises :class:`ToolError`."""
        return self._client._run(ops.list_dir(self.name, path, max_entries))

    def write_file(self, path: str, data: Union[bytes, str]) -> int:
        """Writes the file atomically (``str`` as UTF-8), creating parents;
        returns the bytes written. The gateway's body limit (16 MiB by
        default) applies: use :meth:`upload` for large files."""
        return self._client._run(ops.write_file(self.name, path, data))

    def apply_patch(
        self,
        patch: str,
        *,
        dry_run: bool = False,
        expected_sha256: Optional[Mapping[str, str]] = None,
        check: bool = True,
    ) -> PatchResult:
        """Applies a patch in Codex's grammar (``*** Begin Patch`` …),
        atomically across files. A patch that does not apply raises
        :class:`ToolError` (nothing was changed) unless ``check=False``."""
        return self._client._run(
            ops.apply_patch(self.name, patch, dry_run, expected_sha256, check)
        )

    def upload(self, local: StrPath, remote: str, *, create_parents: bool = True) -> TransferResult:
        """Streams a local file to ``remote`` (any size; constant memory).
        The remote file appears atomically, verified by SHA-256."""
        return self._client._run(ops.upload(self.name, local, remote, create_parents))

    def download(self, remote: str, local: StrPath) -> TransferResult:
        """Streams ``remote`` into the local file ``local`` (any size;
        constant memory). It is written under a temporary name and renamed
        into place once complete."""
        return self._client._run(ops.download(self.name, remote, local))

    def copy_to(
        self,
        other: Union["Env", str],
        src: str,
        dst: str,
        *,
        recursive: bool = False,
        timeout: Optional[float] = None,
    ) -> CopyResult:
        """Copies ``src`` here to ``dst`` on ``other`` (an Env or a name;
        may be this one) with ``copy_path``: streamed, verified by SHA-256,
        nothing at ``dst`` unless complete. ``recursive=True`` for a
        directory. A failure raises :class:`ToolError`."""
        dst_env = other if isinstance(other, str) else other.name
        return self._client._run(
            ops.copy_path(self.name, dst_env, src, dst, recursive, timeout)
        )

    def spawn(
        self,
        cmd: Command,
        tty: bool = False,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        pipe_stdin: bool = True,
        cols: Optional[int] = None,
        rows: Optional[int] = None,
        max_runtime: Optional[float] = None,
    ) -> "Process":
        """Starts a long-running process (``exec_command``) and returns its
        :class:`Process`. ``tty=True`` runs it under a pseudo-terminal
        (output stream ``pty``); ``max_runtime`` (seconds) terminates it."""
        st = self._client._run(
            ops.spawn(self.name, cmd, tty, cwd, env, pipe_stdin, cols, rows, max_runtime)
        )
        return Process(self._client, st)

    def _make_custom_method(self, tool: Tool) -> Any:
        client, name = self._client, self.name

        def method(**arguments: Any) -> ShellResult:
            return client._run(ops.custom_tool(name, tool, arguments))

        method.__name__ = tool.name
        method.__doc__ = custom_doc(tool)
        return method


class Process(ProcessBase):
    """A process started by :meth:`Env.spawn`. As a context manager it
    terminates the process on exit (unless it has exited)."""

    _client: Client

    def write(self, data: Union[bytes, str]) -> None:
        """Writes to its stdin (``str`` as UTF-8)."""
        self._client._run(ops.write_stdin(self._st, data, False))

    def close_stdin(self) -> None:
        """Closes its stdin (EOF). A stock codex executor raises :class:`NotSupported`."""
        self._client._run(ops.write_stdin(self._st, b"", True))

    def output(
        self, since: Optional[int] = None, *, transport: str = "auto"
    ) -> Iterator[OutputItem]:
        """Iterates over its output until the process has exited and all of
        it was delivered: :class:`Chunk` items (``.stream``, ``.data``,
        ``.seq``) and, where the executor had to drop output,
        :class:`LostOutput` items (never a silent gap).

        Resumable: it starts after ``since`` (default: after the last item
        an earlier ``output()`` of this object delivered), and a broken
        connection is resumed where it stopped; an executor that stays
        away raises :class:`ExecutorUnavailable` (call ``output()`` again
        later to go on). ``transport``: ``"binary"`` (the stream in its
        binary form, raw bytes in length-prefixed frames; SSE from a gateway
        without it), ``"sse"`` (the event stream), ``"poll"``
        (long-polling ``/output``), or ``"auto"`` (``"binary"``, else
        polling)."""
        return self._client._drive(ops.output(self._st, since, transport))

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Waits until it exits and returns its exit code (``None`` if it
        has none, e.g. killed). Raises :class:`WaitTimeout` (a
        ``TimeoutError``) after ``timeout`` seconds."""
        return self._client._run(ops.wait(self._st, timeout))

    def poll(self) -> Optional[int]:
        """Its exit code if it has exited, else ``None``, without waiting."""
        return self._client._run(ops.poll(self._st))

    def terminate(self) -> None:
        """Terminates it (its whole process group)."""
        self._client._run(ops.terminate(self._st))

    def signal(self, name: str) -> None:
        """Sends ``interrupt``, ``terminate``, ``kill`` or ``hangup`` to its
        process group."""
        self._client._run(ops.signal(self._st, name))

    def resize(self, cols: int, rows: int) -> None:
        """Sets the terminal size of a ``tty`` process."""
        self._client._run(ops.resize(self._st, cols, rows))

    def __enter__(self) -> "Process":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._st.exited:
            return
        try:
            self.terminate()
        except (SessionGone, SessionNotFound):
            pass
        except ExecgateError:
            if exc is None:
                raise
