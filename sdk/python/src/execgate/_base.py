"""What ``Client``/``AsyncClient``, ``Env``/``AsyncEnv`` and
``Process``/``AsyncProcess`` share that is not an op: configuration,
environment metadata and the custom-tool attribute lookup."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Type, TypeVar

import httpx

from ._core import DEFAULT_RETRIES, EnvInfo, ProcState
from .errors import ExecgateError
from .models import Tool

__version__ = "0.1.0"

T = TypeVar("T", bound="ClientBase")

#: Default read timeout of a request, in seconds. Tools that run longer
#: (``shell`` with a ``timeout``, ``copy_path``, long-polls) get their own.
DEFAULT_TIMEOUT = 60.0


class ClientBase:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if not url:
            raise ValueError("url is required, e.g. http://127.0.0.1:6060")
        if not token:
            raise ValueError("token is required: a proxy token (egp_…)")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        #: Retries of a mutating call (same ``Idempotency-Key``) or a read
        #: (a read-only tool, output, envs, processes) after a connection
        #: error, a timeout, a 503 or a 502; 0 turns them off.
        self.retries = max(0, retries)

    @classmethod
    def from_env(cls: Type[T], **kwargs: Any) -> T:
        """A client for ``$EXECGATE_URL`` with the token ``$EXECGATE_TOKEN``
        (as ``execgate up`` prints them). Other keyword arguments go to the
        constructor."""
        url = os.environ.get("EXECGATE_URL", "")
        token = os.environ.get("EXECGATE_TOKEN", "")
        missing = [n for n, v in (("EXECGATE_URL", url), ("EXECGATE_TOKEN", token)) if not v]
        if missing:
            raise ExecgateError(
                f"{' and '.join(missing)} not set; `execgate up` prints both",
                code="not_configured",
            )
        return cls(url, token, **kwargs)

    def _headers(self) -> Dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "User-Agent": f"execgate-python/{__version__}",
        }

    @staticmethod
    def _with_key(headers: Optional[Dict[str, str]], key: Optional[str]) -> Optional[Dict[str, str]]:
        if key is None:
            return headers
        return {**(headers or {}), "Idempotency-Key": key}

    def _timeout(self, read: Optional[float]) -> httpx.Timeout:
        return httpx.Timeout(self.timeout if read is None else read, connect=10.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class EnvBase:
    """Metadata of one environment, and custom tools as attributes."""

    def __init__(self, client: Any, info: EnvInfo) -> None:
        self._client = client
        self._info = info

    @property
    def name(self) -> str:
        """The environment's name (``laptop``, ``gpu-1``…)."""
        return self._info.name

    @property
    def is_default(self) -> bool:
        """Whether this is the workspace's default environment."""
        return self._info.is_default

    @property
    def tools(self) -> List[Tool]:
        """Its tools, core and custom, as of the last listing."""
        return list(self._info.tools)

    @property
    def last_seen(self) -> Optional[str]:
        """When the gateway last heard from its executor (RFC 3339, UTC)."""
        return self._info.last_seen

    @property
    def executor(self) -> Optional[Dict[str, Any]]:
        """``{"kind": "execgate"|"codex", "version", "os"}``."""
        return self._info.executor

    @property
    def policy(self) -> Optional[Dict[str, Any]]:
        """The executor's limits, ``{"root", "allow_tools", "read_only",
        "max_processes"}`` (null: no limit), or ``None`` when it has none."""
        return self._info.policy

    @property
    def custom_tools(self) -> List[Tool]:
        """The tools of kind ``custom``; each is also a method of this object."""
        return [t for t in self._info.tools if t.kind == "custom"]

    def tool(self, name: str) -> Optional[Tool]:
        """The tool called ``name``, or ``None``."""
        for t in self._info.tools:
            if t.name == name:
                return t
        return None

    def _make_custom_method(self, tool: Tool) -> Any:  # pragma: no cover
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup failed: custom tools live here.
        if name.startswith("_") or "_info" not in self.__dict__:
            raise AttributeError(name)
        tool = self.tool(name)
        if tool is None:
            names = ", ".join(t.name for t in self.custom_tools) or "none"
            raise AttributeError(
                f"environment {self.name!r} has no attribute or custom tool {name!r} "
                f"(its custom tools: {names}; env.refresh() reloads the list)"
            )
        if tool.kind != "custom":
            raise AttributeError(
                f"{name!r} is a core tool of {self.name!r} without a method of its own; "
                f"use env.call({name!r}, {{...}})"
            )
        return self._make_custom_method(tool)

    def __dir__(self) -> List[str]:
        names = set(super().__dir__())
        names.update(t.name for t in self.custom_tools if t.name.isidentifier())
        return sorted(names)

    def __repr__(self) -> str:
        default = ", default" if self.is_default else ""
        return f"<{type(self).__name__} {self.name!r}{default}>"


def custom_doc(tool: Tool) -> str:
    import json

    doc = tool.description or f"The custom tool {tool.name!r}."
    if tool.input_schema:
        doc += "\n\nArguments (JSON Schema):\n" + json.dumps(tool.input_schema, indent=2)
    return doc + "\n\nReturns a ShellResult (it does not raise on a non-zero exit)."


class ProcessBase:
    """What a process handle knows without asking the gateway."""

    def __init__(self, client: Any, state: ProcState) -> None:
        self._client = client
        self._st = state

    @property
    def sid(self) -> str:
        """The session id (``ps_…``); ``client.process(sid)`` attaches to it again."""
        return self._st.sid

    @property
    def env(self) -> Optional[str]:
        """The environment's name, when known."""
        return self._st.env

    @property
    def exit_code(self) -> Optional[int]:
        """The exit code once known (from ``wait``, ``poll`` or the end of
        ``output``); ``None`` while it runs or before anyone asked."""
        return self._st.exit_code

    @property
    def exited(self) -> bool:
        """Whether the process is known to have exited."""
        return self._st.exited

    @property
    def cursor(self) -> int:
        """The last seq ``output()`` delivered; ``output()`` resumes after it."""
        return self._st.cursor

    def __repr__(self) -> str:
        state = "running" if not self._st.exited else f"exited {self._st.exit_code}"
        return f"<{type(self).__name__} {self.sid} on {self.env!r} ({state})>"
