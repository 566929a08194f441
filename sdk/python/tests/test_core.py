"""The shared core without a gateway: error mapping, SSE decoding, and an
op driven by hand (what both clients' drivers do)."""

from __future__ import annotations

import base64
import json

import pytest

import execgate
from execgate import _core as ops
from execgate.errors import error_from_response


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (401, "missing_bearer", execgate.AuthError),
        (401, "invalid_token", execgate.AuthError),
        (403, "forbidden", execgate.Forbidden),
        (404, "env_not_found", execgate.EnvNotFound),
        (404, "session_not_found", execgate.SessionNotFound),
        (400, "bad_arguments", execgate.BadArguments),
        (400, "bad_base64", execgate.BadRequest),
        (400, "unknown_tool", execgate.UnknownTool),
        (409, "stdin_closed", execgate.StdinClosed),
        (409, "not_a_terminal", execgate.NotATerminal),
        (409, "idempotency_key_in_doubt", execgate.IdempotencyConflict),
        (409, "idempotency_answer_too_large", execgate.IdempotencyConflict),
        (422, "idempotency_key_reused", execgate.IdempotencyKeyReused),
        (410, "session_expired", execgate.SessionExpired),
        (410, "executor_restarted", execgate.ExecutorRestarted),
        (413, "payload_too_large", execgate.PayloadTooLarge),
        (429, "anything", execgate.RateLimited),
        (429, "too_many_processes", execgate.TooManyProcesses),
        (429, "too_many_sessions", execgate.TooManySessions),
        (503, "auth_unavailable", execgate.AuthUnavailable),
        (503, "audit_unavailable", execgate.AuditUnavailable),
        (403, "policy_denied", execgate.PolicyDenied),
        (403, "tool_not_allowed", execgate.ToolNotAllowed),
        (501, "not_supported_by_executor", execgate.NotSupported),
        (503, "executor_unavailable", execgate.ExecutorUnavailable),
        (504, "gateway_timeout", execgate.GatewayTimeout),
        (500, "internal", execgate.ServerError),
        (418, "brand_new_code", execgate.ExecgateError),
        (502, "brand_new_code", execgate.ExecutorError),
    ],
)
def test_error_mapping(status: int, code: str, cls: type) -> None:
    body = json.dumps({"error": {"code": code, "message": "m"}}).encode()
    e = error_from_response(status, body, {"retry-after": "7"})
    assert type(e) is cls
    assert (e.code, e.status, e.message, e.retry_after) == (code, status, "m", 7.0)


def test_error_without_envelope() -> None:
    e = error_from_response(502, b"<html>bad gateway</html>", {})
    assert isinstance(e, execgate.ExecutorError)
    assert e.code == "http_502" and "bad gateway" in e.message


def test_sse_decoder() -> None:
    d = ops.SSEDecoder()
    lines = [": keepalive", "", "event: output", "id: 3", "data: {\"a\":", "data: 1}", "", "data:x", ""]
    events = [e for e in map(d.feed, lines) if e]
    assert [(e.event, e.id, e.data) for e in events] == [
        ("output", "3", "{\"a\":\n1}"),
        ("message", None, "x"),
    ]


def test_sse_op_reports_loss_and_resumes_after_a_broken_stream() -> None:
    """Drives ``output_sse`` by hand: a stream that breaks after seq 1 is
    reopened with Last-Event-ID 1; a `lost` event becomes a LostOutput."""
    st = ops.ProcState(sid="ps_x")
    op = ops.output_sse(st, None)
    eff = next(op)
    assert isinstance(eff, ops.OpenStream) and eff.request.headers == {"Last-Event-ID": "0"}
    b64 = base64.b64encode(b"hi").decode()
    first = ["event: output", "id: 1", f'data: {{"stream":"stdout","data_b64":"{b64}"}}', ""]
    eff = op.send("h1")
    items = []
    for line in first:
        assert isinstance(eff, ops.ReadLine)
        eff = op.send(line)
        if isinstance(eff, ops.Emit):
            items.append(eff.item)
            eff = next(op)
    # The connection breaks.
    eff = op.throw(execgate.TransportError("reset", code="transport"))
    assert isinstance(eff, ops.CloseStream)
    eff = next(op)
    assert isinstance(eff, ops.Sleep)
    eff = next(op)
    assert isinstance(eff, ops.OpenStream) and eff.request.headers == {"Last-Event-ID": "1"}
    eff = op.send("h2")
    second = ["event: lost", "id: 4", 'data: {"from_seq":2,"to_seq":4,"bytes":100}', "",
              "event: exit", "id: 5", 'data: {"exit_code":0}', ""]
    for line in second:
        eff = op.send(line)
        if isinstance(eff, ops.Emit):
            items.append(eff.item)
            eff = next(op)
    assert isinstance(eff, ops.CloseStream)
    with pytest.raises(StopIteration):
        next(op)
    assert items == [execgate.Chunk("stdout", b"hi", 1), execgate.LostOutput(2, 4, 100)]
    assert (st.cursor, st.exit_code, st.exited) == (5, 0, True)


def test_auto_output_falls_back_to_polling_without_the_stream_route() -> None:
    st = ops.ProcState(sid="ps_x")
    op = ops.output(st, None, "auto")
    assert isinstance(next(op), ops.OpenStream)
    # An older gateway: the router's fallback 404 (not session_not_found).
    eff = op.throw(execgate.NotFound("no such route", code="not_found", status=404))
    assert isinstance(eff, ops.Request) and eff.path == "/api/connectors/processes/ps_x/output"
    assert eff.params == {"since": 0, "wait_ms": ops.POLL_WAIT_MS}
    answer = {
        "chunks": [{"stream": "stderr", "data_b64": base64.b64encode(b"e").decode(), "seq": 7}],
        "exit_code": 1, "session_alive": False, "truncated": True, "lost_bytes": 0,
        "lost_bytes_unknown": True, "next_since": 9,
    }
    eff = op.send(answer)
    # Output lost before seq 7, of unknown size (a codex executor): said so.
    assert isinstance(eff, ops.Emit) and eff.item == execgate.LostOutput(1, 6, None)
    eff = next(op)
    assert isinstance(eff, ops.Emit) and eff.item == execgate.Chunk("stderr", b"e", 7)
    with pytest.raises(StopIteration):
        next(op)
    assert (st.cursor, st.exit_code, st.exited, st.extra["no_sse"]) == (9, 1, True, True)


def test_a_session_gone_is_not_mistaken_for_a_missing_route() -> None:
    st = ops.ProcState(sid="ps_x")
    op = ops.output(st, None, "auto")
    next(op)
    with pytest.raises(execgate.SessionNotFound):
        op.throw(execgate.SessionNotFound("gone", code="session_not_found", status=404))


def test_tool_bytes_decode_by_their_encoding() -> None:
    """read_file's answer is decoded by structuredContent.encoding, so the
    SDK stays correct whichever encoding the gateway answers."""
    assert ops.decode_content(base64.b64encode(b"\xff\x00").decode(), "base64") == b"\xff\x00"
    assert ops.decode_content("café\n", "utf-8") == "café\n".encode()
    assert ops.decode_content("a\\xff\\\\b é", "utf-8-escaped") == b"a\xff\\b " + "é".encode()
    with pytest.raises(ValueError):
        ops.decode_content("x", "latin-1")


def _frame(kind: int, seq: int, payload: bytes) -> bytes:
    return bytes([kind]) + seq.to_bytes(8, "big") + len(payload).to_bytes(4, "big") + payload


class _Handle:
    def __init__(self, content_type: str) -> None:
        self.content_type = content_type


def test_binary_op_reads_frames_split_anywhere_and_resumes() -> None:
    """Drives ``output(transport="binary")`` by hand: it asks for the binary
    form; frames cut at any byte give Chunk/LostOutput items; a connection
    that ends mid-frame is reopened after the last whole frame."""
    st = ops.ProcState(sid="ps_x")
    op = ops.output(st, None, "binary")
    eff = next(op)
    assert isinstance(eff, ops.OpenStream)
    assert eff.request.headers == {
        "Last-Event-ID": "0",
        "Accept": "application/octet-stream, text/event-stream;q=0.5",
    }
    wire = (
        _frame(1, 2, b"\xff\x00out")
        + _frame(0, 0, b"")
        + _frame(9, 3, b"a future frame type")
        + _frame(4, 6, b'{"from_seq":3,"to_seq":6,"bytes":10}')
        + _frame(2, 7, b"err")
    )
    cut = _frame(1, 9, b"never whole")[:15]
    eff = op.send(_Handle("application/octet-stream"))
    items = []
    pieces = [wire[i : i + 5] for i in range(0, len(wire), 5)] + [cut]
    for piece in pieces:
        while isinstance(eff, ops.Emit):
            items.append(eff.item)
            eff = next(op)
        assert isinstance(eff, ops.ReadChunk)
        eff = op.send(piece)
    while isinstance(eff, ops.Emit):
        items.append(eff.item)
        eff = next(op)
    # The connection ends inside the last frame.
    assert isinstance(eff, ops.ReadChunk)
    eff = op.send(None)
    assert isinstance(eff, ops.CloseStream)
    assert isinstance(next(op), ops.Sleep)
    eff = next(op)
    assert isinstance(eff, ops.OpenStream) and eff.request.headers["Last-Event-ID"] == "7"
    eff = op.send(_Handle("application/octet-stream"))
    eff = op.send(_frame(1, 9, b"whole") + _frame(5, 10, b'{"exit_code":3}'))
    while isinstance(eff, ops.Emit):
        items.append(eff.item)
        eff = next(op)
    assert isinstance(eff, ops.CloseStream)
    with pytest.raises(StopIteration):
        next(op)
    assert items == [
        execgate.Chunk("stdout", b"\xff\x00out", 2),
        execgate.LostOutput(3, 6, 10),
        execgate.Chunk("stderr", b"err", 7),
        execgate.Chunk("stdout", b"whole", 9),
    ]
    assert (st.cursor, st.exit_code, st.exited) == (10, 3, True)


def test_binary_op_reads_an_sse_answer_from_an_older_gateway() -> None:
    """A gateway that answers SSE whatever the Accept: the same items."""
    st = ops.ProcState(sid="ps_x")
    op = ops.output(st, None, "auto")
    eff = next(op)
    assert eff.request.headers["Accept"].startswith("application/octet-stream")
    eff = op.send(_Handle("text/event-stream"))
    b64 = base64.b64encode(b"\xffhi").decode()
    lines = ["event: output", "id: 1", f'data: {{"stream":"stdout","data_b64":"{b64}"}}', "",
             "event: exit", "id: 2", 'data: {"exit_code":0}', ""]
    items = []
    for line in lines:
        assert isinstance(eff, ops.ReadLine)
        eff = op.send(line)
        while isinstance(eff, ops.Emit):
            items.append(eff.item)
            eff = next(op)
    assert isinstance(eff, ops.CloseStream)
    with pytest.raises(StopIteration):
        next(op)
    assert items == [execgate.Chunk("stdout", b"\xffhi", 1)]
    assert (st.cursor, st.exit_code) == (2, 0)


def test_binary_op_raises_an_error_frame() -> None:
    st = ops.ProcState(sid="ps_x")
    op = ops.output(st, None, "binary")
    next(op)
    op.send(_Handle("application/octet-stream"))
    eff = op.send(_frame(6, 0, b'{"code":"executor_restarted","message":"gone"}'))
    assert isinstance(eff, ops.CloseStream)
    with pytest.raises(execgate.ExecutorRestarted):
        next(op)
