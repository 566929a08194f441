"""execgate: the Python SDK for the execgate gateway between AI agents and
real machines.

>>> from execgate import Client
>>> client = Client.from_env()              # EXECGATE_URL, EXECGATE_TOKEN
>>> env = client.default_env()
>>> env.shell("echo hi").stdout
'hi\\n'

``Client`` is synchronous, ``AsyncClient`` its asyncio twin. Both run the
same logic (:mod:`execgate._core`); see the README for a tour.
"""

from ._async import AsyncClient, AsyncEnv, AsyncProcess
from ._base import __version__
from ._core import TransferResult, WaitTimeout
from ._sync import Client, Env, Process
from .errors import (
    AuthError,
    BadArguments,
    BadRequest,
    CommandFailed,
    Conflict,
    IdempotencyConflict,
    IdempotencyKeyReused,
    EnvNotFound,
    ExecgateError,
    ExecutorError,
    ExecutorRestarted,
    ExecutorUnavailable,
    FileNotFound,
    Forbidden,
    GatewayTimeout,
    NotATerminal,
    NotFound,
    NotSupported,
    PayloadTooLarge,
    PolicyDenied,
    RateLimited,
    ServerError,
    SessionExpired,
    SessionGone,
    SessionNotFound,
    StdinClosed,
    ToolError,
    ToolNotAllowed,
    TooManyProcesses,
    TooManySessions,
    AuthUnavailable,
    AuditUnavailable,
    TransportError,
    UnknownTool,
)
from .models import (
    Chunk,
    CopyResult,
    DirEntry,
    DirListing,
    LostOutput,
    OutputItem,
    PatchResult,
    ProcessInfo,
    ShellResult,
    Tool,
    ToolResult,
)

__all__ = [
    "__version__",
    "Client",
    "Env",
    "Process",
    "AsyncClient",
    "AsyncEnv",
    "AsyncProcess",
    "Chunk",
    "LostOutput",
    "OutputItem",
    "ShellResult",
    "ToolResult",
    "PatchResult",
    "CopyResult",
    "DirEntry",
    "DirListing",
    "TransferResult",
    "ProcessInfo",
    "Tool",
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
    "IdempotencyConflict",
    "IdempotencyKeyReused",
    "StdinClosed",
    "NotATerminal",
    "SessionGone",
    "SessionExpired",
    "ExecutorRestarted",
    "PayloadTooLarge",
    "RateLimited",
    "TooManyProcesses",
    "TooManySessions",
    "AuthUnavailable",
    "AuditUnavailable",
    "ServerError",
    "ExecutorUnavailable",
    "ExecutorError",
    "GatewayTimeout",
    "NotSupported",
    "ToolError",
    "CommandFailed",
    "WaitTimeout",
]
