"""Typed exceptions that mirror the gateway's error codes.

Every 4xx/5xx answer of the gateway is ``{"error": {"code", "message"}}``
with a stable ``code``; :func:`error_from_response` turns it into the
matching subclass of :class:`ExecgateError`. Catch the base class to handle
everything, or a subclass to handle one case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Type

if TYPE_CHECKING:  # pragma: no cover
    from .models import ShellResult, ToolResult

__all__ = [
    "ExecgateError",
    "TransportError",
    "AuthError",
    "Forbidden",
    "PolicyDenied",
    "ToolNotAllowed",
    "NotFound",
    "EnvNotFound",
    "SessionNotFound",
    "FileNotFound",
    "BadRequest",
    "BadArguments",
    "UnknownTool",
    "Conflict",
    "StdinClosed",
    "NotATerminal",
    "SessionGone",
    "SessionExpired",
    "ExecutorRestarted",
    "PayloadTooLarge",
    "RateLimited",
    "TooManyProcesses",
    "ServerError",
    "ExecutorUnavailable",
    "ExecutorError",
    "GatewayTimeout",
    "NotSupported",
    "ToolError",
    "CommandFailed",
    "error_from_response",
]


class ExecgateError(Exception):
    """Base class of every error this SDK raises.

    Attributes:
        code: the gateway's stable error code (``"env_not_found"``, …), or an
            SDK code for errors that did not come from an error envelope
            (``"transport"``, ``"tool_error"``, ``"command_failed"``).
        status: the HTTP status, or ``None`` when there was no HTTP answer.
        message: the human-readable message.
        retry_after: seconds from a ``Retry-After`` header, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: Optional[int] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"


class TransportError(ExecgateError):
    """The gateway could not be reached, or the connection broke."""


class AuthError(ExecgateError):
    """401: ``missing_bearer`` or ``invalid_token``. Retrying will not help."""


class Forbidden(ExecgateError):
    """403 ``forbidden``: refused for this caller (the base of the policy
    refusals below). A session of another workspace is ``SessionNotFound``."""


class PolicyDenied(Forbidden):
    """403 ``policy_denied``: the executor's policy refuses it: a path outside
    its ``--root`` (the message names the path and the root), or a change
    on a ``--read-only`` executor."""


class ToolNotAllowed(Forbidden):
    """403 ``tool_not_allowed``: the executor's ``--allow-tools`` does not
    include this tool (the message lists the allowed ones)."""


class NotFound(ExecgateError):
    """404: something does not exist."""


class EnvNotFound(NotFound):
    """404 ``env_not_found``: the workspace has no such environment (or, from
    :meth:`Client.env`, none by that name is connected)."""


class SessionNotFound(NotFound):
    """404 ``session_not_found``: no process session with that id."""


class FileNotFound(NotFound):
    """404 ``file_not_found`` from the ``/files`` routes."""


class BadRequest(ExecgateError):
    """400: ``bad_request``, ``bad_json``, ``bad_base64``…"""


class BadArguments(BadRequest):
    """400 ``bad_arguments``: a tool argument is wrong; the message names it."""


class UnknownTool(BadRequest):
    """400 ``unknown_tool``: the environment has no such tool."""


class Conflict(ExecgateError):
    """409: the request conflicts with the process's state."""


class StdinClosed(Conflict):
    """409 ``stdin_closed``: after EOF, after exit, or without ``pipe_stdin``."""


class NotATerminal(Conflict):
    """409 ``not_a_terminal``: resizing a process that has no pty."""


class IdempotencyConflict(Conflict):
    """409 ``idempotency_key_in_doubt`` (the first attempt was cut off by its
    gateway's death, or ended 503 with its outcome unknown when the
    executor's link went away mid-call: it may or may not have happened) or
    ``idempotency_answer_too_large`` (it was done; its answer was not kept).
    Not done again: check the result."""


class IdempotencyKeyReused(ExecgateError):
    """422 ``idempotency_key_reused``: the call's ``Idempotency-Key`` was used
    for a different request."""


class SessionGone(ExecgateError):
    """410: the process is gone from its executor."""


class SessionExpired(SessionGone):
    """410 ``session_expired``: the executor forgot the exited process."""


class ExecutorRestarted(SessionGone):
    """410 ``executor_restarted``: the executor restarted; its processes are gone."""


class PayloadTooLarge(ExecgateError):
    """413 ``payload_too_large``: use :meth:`Env.upload` for large files."""


class RateLimited(ExecgateError):
    """429: too many requests; wait ``retry_after`` seconds."""


class TooManyProcesses(RateLimited):
    """429 ``too_many_processes``: the executor runs its ``--max-processes``
    already; retry when one has exited."""


class TooManySessions(RateLimited):
    """429 ``too_many_sessions``: the workspace has its cap of live process
    sessions (``--max-sessions-per-workspace``); terminate one, or retry
    when one has exited."""


class ServerError(ExecgateError):
    """5xx that has no more specific class (``internal``…)."""


class AuthUnavailable(ServerError):
    """503 ``auth_unavailable``: the gateway's token authority cannot answer
    right now; the token may well be good. Retry after ``retry_after``."""


class AuditUnavailable(ServerError):
    """503 ``audit_unavailable``: the gateway audits fail-closed and cannot
    write the call's record; nothing ran. Retry after ``retry_after``."""


class ExecutorUnavailable(ServerError):
    """503 ``executor_unavailable``: the environment's executor is not
    connected. ``retry_after`` says when to try again."""


class ExecutorError(ServerError):
    """502 ``executor_error``: the executor answered something unexpected."""


class GatewayTimeout(ServerError):
    """504 ``gateway_timeout``: the executor did not answer in time."""


class NotSupported(ExecgateError):
    """501 ``not_supported_by_executor``: e.g. closing stdin on a stock codex."""


class ToolError(ExecgateError):
    """A tool ran and failed (its CallToolResult had ``isError: true``) and
    raising was asked for. ``result`` is the :class:`ToolResult`."""

    def __init__(self, message: str, result: "ToolResult") -> None:
        super().__init__(message, code="tool_error", status=200)
        self.result = result


class CommandFailed(ExecgateError):
    """``shell(..., check=True)``: the command exited non-zero or timed out.
    ``result`` is the :class:`ShellResult`."""

    def __init__(self, message: str, result: "ShellResult") -> None:
        super().__init__(message, code="command_failed", status=200)
        self.result = result


_BY_CODE: Dict[str, Type[ExecgateError]] = {
    "missing_bearer": AuthError,
    "invalid_token": AuthError,
    "forbidden": Forbidden,
    "policy_denied": PolicyDenied,
    "tool_not_allowed": ToolNotAllowed,
    "not_found": NotFound,
    "env_not_found": EnvNotFound,
    "session_not_found": SessionNotFound,
    "file_not_found": FileNotFound,
    "bad_request": BadRequest,
    "bad_json": BadRequest,
    "bad_base64": BadRequest,
    "range_not_satisfiable": BadRequest,
    "unsupported_media_type": BadRequest,
    "method_not_allowed": BadRequest,
    "bad_arguments": BadArguments,
    "unknown_tool": UnknownTool,
    "conflict": Conflict,
    "stdin_closed": StdinClosed,
    "not_a_terminal": NotATerminal,
    "idempotency_key_in_doubt": IdempotencyConflict,
    "idempotency_answer_too_large": IdempotencyConflict,
    "idempotency_key_reused": IdempotencyKeyReused,
    "session_expired": SessionExpired,
    "executor_restarted": ExecutorRestarted,
    "payload_too_large": PayloadTooLarge,
    "rate_limited": RateLimited,
    "too_many_processes": TooManyProcesses,
    "too_many_sessions": TooManySessions,
    "auth_unavailable": AuthUnavailable,
    "audit_unavailable": AuditUnavailable,
    "executor_unavailable": ExecutorUnavailable,
    "executor_error": ExecutorError,
    "gateway_timeout": GatewayTimeout,
    "internal": ServerError,
    "not_supported_by_executor": NotSupported,
}

_BY_STATUS: Dict[int, Type[ExecgateError]] = {
    400: BadRequest,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: SessionGone,
    413: PayloadTooLarge,
    429: RateLimited,
    501: NotSupported,
    502: ExecutorError,
    503: ExecutorUnavailable,
    504: GatewayTimeout,
}


def error_class(code: str, status: Optional[int]) -> Type[ExecgateError]:
    """The exception class for an error ``code`` (falling back on ``status``)."""
    cls = _BY_CODE.get(code)
    if status == 429:
        return cls if cls is not None and issubclass(cls, RateLimited) else RateLimited
    if cls is None and status is not None:
        cls = _BY_STATUS.get(status)
        if cls is None:
            cls = ServerError if status >= 500 else ExecgateError
    return cls or ExecgateError


def error_from_response(
    status: int, body: bytes, headers: Optional[Any] = None
) -> ExecgateError:
    """Builds the exception for a non-2xx answer (``headers``: any mapping
    with ``.get``)."""
    import json

    code = f"http_{status}"
    message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        env = json.loads(body)
        err = env["error"]
        code = str(err["code"])
        message = str(err.get("message", ""))
    except (ValueError, KeyError, TypeError):
        pass
    retry_after: Optional[float] = None
    if headers is not None:
        raw = headers.get("retry-after")
        if raw is not None:
            try:
                retry_after = float(raw)
            except ValueError:
                retry_after = None
    return error_class(code, status)(
        message, code=code, status=status, retry_after=retry_after
    )
