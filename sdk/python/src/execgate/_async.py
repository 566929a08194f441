"""The asynchronous client: ``AsyncClient``, ``AsyncEnv`` and
``AsyncProcess``. The same ops as the sync client (:mod:`execgate._core`),
performed with httpx's async API; works under asyncio (and trio, through
anyio, which httpx brings)."""

from __future__ import annotations

import hashlib
import os
from types import TracebackType
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Dict, List, Mapping, Optional, Type, Union

import anyio
import anyio.to_thread
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
from ._sync import UPLOAD_ANSWER_TIMEOUT, _transport_error, part_path
from .errors import (
    ExecgateError,
    SessionGone,
    SessionNotFound,
    TransportError,
    error_from_response,
)
from .models import CopyResult, DirListing, OutputItem, PatchResult, ProcessInfo, ShellResult, Tool, ToolResult


class _AStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.chunks = response.aiter_bytes()
        self.content_type = response.headers.get("content-type", "")


class AsyncClient(ClientBase):
    """The asynchronous twin of :class:`Client`: the same methods, as
    coroutines; ``output()`` is an async iterator.

    >>> async with AsyncClient.from_env() as client:
    ...     env = await client.default_env()
    ...     r = await env.shell("uname -a")
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = ops.DEFAULT_RETRIES,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(url, token, timeout=timeout, retries=retries)
        self._http = http_client or httpx.AsyncClient(
            base_url=self.url, headers=self._headers(), timeout=self._timeout(None)
        )

    # -- the driver ---------------------------------------------------------

    async def _drive(
        self, op: "ops.Op[Any]", result: Optional[List[Any]] = None
    ) -> AsyncGenerator[Any, None]:
        """Performs ``op``'s effects and yields what it emits; its return
        value is appended to ``result``."""
        streams: Dict[int, _AStream] = {}
        value: Any = None
        error: Optional[BaseException] = None
        try:
            while True:
                try:
                    effect = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    if result is not None:
                        result.append(stop.value)
                    return
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.item
                    continue
                try:
                    value = await self._perform(effect, streams)
                except ExecgateError as e:
                    error = e
        finally:
            for s in streams.values():
                await s.response.aclose()
            op.close()

    async def _run(self, op: "ops.Op[R]") -> R:
        result: List[Any] = []
        agen = self._drive(op, result)
        try:
            async for item in agen:
                raise RuntimeError(f"an op emitted {item!r} outside an iteration")
        finally:
            await agen.aclose()
        value: R = result[0]
        return value

    async def _perform(self, eff: Any, streams: Dict[int, _AStream]) -> Any:
        try:
            if isinstance(eff, Request):
                resp = await self._retrying(
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
                try:
                    line = await eff.handle.lines.__anext__()
                except StopAsyncIteration:
                    return None
                return line.rstrip("\r\n")
            if isinstance(eff, ReadChunk):
                try:
                    return await eff.handle.chunks.__anext__()
                except StopAsyncIteration:
                    return None
            if isinstance(eff, OpenStream):
                r = eff.request
                req = self._http.build_request(
                    r.method, r.path, params=r.params, headers=r.headers,
                    timeout=self._timeout(r.timeout),
                )
                resp = await self._http.send(req, stream=True)
                if resp.status_code >= 400:
                    try:
                        body = await resp.aread()
                    finally:
                        await resp.aclose()
                    raise error_from_response(resp.status_code, body, resp.headers)
                handle = _AStream(resp)
                streams[id(handle)] = handle
                return handle
            if isinstance(eff, CloseStream):
                streams.pop(id(eff.handle), None)
                await eff.handle.response.aclose()
                return None
            if isinstance(eff, Sleep):
                await anyio.sleep(eff.seconds)
                return None
            if isinstance(eff, Upload):
                return await self._upload(eff)
            if isinstance(eff, Download):
                return await self._download(eff)
        except httpx.HTTPError as e:
            raise _transport_error(e) from e
        raise TypeError(f"unknown effect {eff!r}")

    async def _retrying(
        self, retried: bool, send: Callable[[], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        """``send()``; for a keyed request or a read (``retried``), again
        (the same request, the same key) after a connection error, a timeout,
        a 503 or a 502 (:func:`ops.retryable_status`), up to ``retries``
        times."""
        retry = 0
        while True:
            try:
                resp = await send()
            except httpx.TransportError:
                if not retried or retry >= self.retries:
                    raise
                retry += 1
                await anyio.sleep(ops.retry_delay(retry))
                continue
            if (
                retried
                and retry < self.retries
                and ops.retryable_status(resp.status_code, resp.content)
            ):
                retry += 1
                await anyio.sleep(ops.retry_delay(retry, resp.headers.get("retry-after")))
                continue
            return resp

    async def _upload(self, eff: Upload) -> Any:
        digest = hashlib.sha256()

        async def send() -> httpx.Response:
            nonlocal digest
            digest = hashlib.sha256()
            size = os.path.getsize(eff.local_path)

            async def body() -> AsyncIterator[bytes]:
                f = await anyio.to_thread.run_sync(open, eff.local_path, "rb")
                try:
                    while True:
                        chunk = await anyio.to_thread.run_sync(f.read, ops.FILE_CHUNK)
                        if not chunk:
                            return
                        digest.update(chunk)
                        yield chunk
                finally:
                    f.close()

            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            return await self._http.request(
                "PUT", r.path, params=r.params, content=body(),
                headers=self._with_key(headers, r.idempotency_key),
                timeout=self._timeout(UPLOAD_ANSWER_TIMEOUT),
            )

        r = eff.request
        resp = await self._retrying(r.idempotency_key is not None, send)
        out = parse_json(resp.status_code, resp.headers, resp.content)
        out["local_sha256"] = digest.hexdigest()
        return out

    async def _download(self, eff: Download) -> Any:
        r = eff.request
        tmp = part_path(eff.local_path)
        digest = hashlib.sha256()
        n = 0
        try:
            async with self._http.stream(
                "GET", r.path, params=r.params, timeout=self._timeout(None)
            ) as resp:
                if resp.status_code >= 400:
                    raise error_from_response(resp.status_code, await resp.aread(), resp.headers)
                expected = resp.headers.get("content-length")
                f = await anyio.to_thread.run_sync(open, tmp, "xb")
                try:
                    async for chunk in resp.aiter_bytes(ops.FILE_CHUNK):
                        await anyio.to_thread.run_sync(f.write, chunk)
                        digest.update(chunk)
                        n += len(chunk)
                finally:
                    f.close()
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

    async def envs(self) -> List["AsyncEnv"]:
        """The workspace's connected environments."""
        return [AsyncEnv(self, ops.EnvInfo.from_json(e)) for e in await self._run(ops.envs_list())]

    async def envs_page(self, limit: int, after: Optional[str] = None) -> "tuple[List[AsyncEnv], Optional[str]]":
        """A page of the connected environments (see ``Client.envs_page``)."""
        envs, next_after = await self._run(ops.envs_page(limit, after))
        return [AsyncEnv(self, ops.EnvInfo.from_json(e)) for e in envs], next_after

    async def env(self, name: str, *, check: bool = True) -> "AsyncEnv":
        """The connected environment ``name``; see :meth:`Client.env`."""
        if not check:
            return AsyncEnv(self, ops.EnvInfo.named(name))
        return AsyncEnv(self, ops.pick_env(await self._run(ops.envs_list()), name))

    async def default_env(self) -> "AsyncEnv":
        """The workspace's default environment."""
        return AsyncEnv(self, ops.pick_env(await self._run(ops.envs_list()), None))

    async def processes(self, limit: Optional[int] = None) -> List[ProcessInfo]:
        """The workspace's process sessions, newest first."""
        return await self._run(ops.processes_list(limit))

    def process(self, sid: str, env: Optional[str] = None) -> "AsyncProcess":
        """A handle on an existing process session."""
        return AsyncProcess(self, ops.ProcState(sid=sid, env=env))

    async def aclose(self) -> None:
        """Closes the HTTP connections."""
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class AsyncEnv(EnvBase):
    """The async twin of :class:`Env`; see there for each method."""

    _client: AsyncClient

    async def refresh(self) -> "AsyncEnv":
        self._info = ops.pick_env(await self._client._run(ops.envs_list()), self.name)
        return self

    async def call(
        self,
        tool: str,
        arguments: Optional[Mapping[str, Any]] = None,
        *,
        check: bool = False,
        timeout: Optional[float] = None,
    ) -> ToolResult:
        r = await self._client._run(ops.tool_call(self.name, tool, dict(arguments or {}), timeout))
        return r.check() if check else r

    async def shell(
        self,
        cmd: Command,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        check: bool = False,
    ) -> ShellResult:
        return await self._client._run(ops.shell(self.name, cmd, cwd, env, timeout, check))

    async def read_file(self, path: str) -> bytes:
        return await self._client._run(ops.read_file(self.name, path))

    async def list_dir(self, path: str = ".", *, max_entries: Optional[int] = None) -> DirListing:
        return await self._client._run(ops.list_dir(self.name, path, max_entries))

    async def write_file(self, path: str, data: Union[bytes, str]) -> int:
        return await self._client._run(ops.write_file(self.name, path, data))

    async def apply_patch(
        self,
        patch: str,
        *,
        dry_run: bool = False,
        expected_sha256: Optional[Mapping[str, str]] = None,
        check: bool = True,
    ) -> PatchResult:
        return await self._client._run(
            ops.apply_patch(self.name, patch, dry_run, expected_sha256, check)
        )

    async def upload(
        self, local: StrPath, remote: str, *, create_parents: bool = True
    ) -> TransferResult:
        return await self._client._run(ops.upload(self.name, local, remote, create_parents))

    async def download(self, remote: str, local: StrPath) -> TransferResult:
        return await self._client._run(ops.download(self.name, remote, local))

    async def copy_to(
        self,
        other: Union["AsyncEnv", str],
        src: str,
        dst: str,
        *,
        recursive: bool = False,
        timeout: Optional[float] = None,
    ) -> CopyResult:
        dst_env = other if isinstance(other, str) else other.name
        return await self._client._run(
            ops.copy_path(self.name, dst_env, src, dst, recursive, timeout)
        )

    async def spawn(
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
    ) -> "AsyncProcess":
        st = await self._client._run(
            ops.spawn(self.name, cmd, tty, cwd, env, pipe_stdin, cols, rows, max_runtime)
        )
        return AsyncProcess(self._client, st)

    def _make_custom_method(self, tool: Tool) -> Any:
        client, name = self._client, self.name

        async def method(**arguments: Any) -> ShellResult:
            return await client._run(ops.custom_tool(name, tool, arguments))

        method.__name__ = tool.name
        method.__doc__ = custom_doc(tool)
        return method


class AsyncProcess(ProcessBase):
    """The async twin of :class:`Process`: ``async with`` terminates it,
    ``async for item in p.output()`` streams."""

    _client: AsyncClient

    async def write(self, data: Union[bytes, str]) -> None:
        await self._client._run(ops.write_stdin(self._st, data, False))

    async def close_stdin(self) -> None:
        await self._client._run(ops.write_stdin(self._st, b"", True))

    def output(
        self, since: Optional[int] = None, *, transport: str = "auto"
    ) -> AsyncIterator[OutputItem]:
        return self._client._drive(ops.output(self._st, since, transport))

    async def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        return await self._client._run(ops.wait(self._st, timeout))

    async def poll(self) -> Optional[int]:
        return await self._client._run(ops.poll(self._st))

    async def terminate(self) -> None:
        await self._client._run(ops.terminate(self._st))

    async def signal(self, name: str) -> None:
        await self._client._run(ops.signal(self._st, name))

    async def resize(self, cols: int, rows: int) -> None:
        await self._client._run(ops.resize(self._st, cols, rows))

    async def __aenter__(self) -> "AsyncProcess":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._st.exited:
            return
        try:
            await self.terminate()
        except (SessionGone, SessionNotFound):
            pass
        except ExecgateError:
            if exc is None:
                raise
