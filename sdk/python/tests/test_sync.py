"""The sync client against a real gateway and executors (see conftest)."""

from __future__ import annotations

import hashlib
import os
import re
import time
import tracemalloc
from pathlib import Path
from typing import List, Optional

import httpx
import pytest

import execgate
from execgate import Chunk, LostOutput

from conftest import World, eventually


def collect(items) -> "tuple[bytes, List[object]]":
    data = b""
    seen = []
    for item in items:
        seen.append(item)
        if isinstance(item, Chunk):
            data += item.data
    return data, seen


# -- environments -------------------------------------------------------------


def test_envs_and_selection(client: execgate.Client) -> None:
    envs = {e.name: e for e in client.envs()}
    assert {"laptop", "gpu", "tiny"} <= set(envs)
    assert "offline" not in envs  # envs/list shows connected ones
    laptop = envs["laptop"]
    assert laptop.is_default and not envs["gpu"].is_default
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", laptop.last_seen or "")
    names = {t.name: t for t in laptop.tools}
    for core in ("shell", "read_file", "write_file", "exec_command", "list_dir"):
        assert names[core].kind == "core"
    assert names["echo_arg"].kind == "custom"
    assert names["echo_arg"].input_schema["required"] == ["text"]
    assert [t.name for t in laptop.custom_tools] == ["echo_arg", "add"]
    assert laptop.executor and laptop.executor["kind"] == "execgate"

    assert client.default_env().name == "laptop"
    assert client.env("gpu").name == "gpu"
    with pytest.raises(execgate.EnvNotFound, match="offline"):
        client.env("offline")
    assert "laptop" in repr(laptop)


def test_envs_by_pages_list_every_connected_env_once_in_name_order(client: execgate.Client) -> None:
    every = sorted((e.name for e in client.envs()), key=lambda n: n.encode())
    assert len(every) >= 3
    seen: List[str] = []
    after: Optional[str] = None
    pages = 0
    while True:
        page, after = client.envs_page(2, after)
        pages += 1
        assert 1 <= len(page) <= 2 or (not page and after is None)
        seen += [e.name for e in page]
        if after is None:
            break
        assert after == page[-1].name
        assert pages <= len(every)
    assert seen == every
    with pytest.raises(execgate.BadRequest) as e:
        client.envs_page(0)
    assert e.value.status == 400


def test_from_env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECGATE_URL", world.url)
    monkeypatch.setenv("EXECGATE_TOKEN", world.token)
    with execgate.Client.from_env() as c:
        assert c.default_env().name == "laptop"
    monkeypatch.delenv("EXECGATE_TOKEN")
    with pytest.raises(execgate.ExecgateError, match="EXECGATE_TOKEN"):
        execgate.Client.from_env()


# -- shell --------------------------------------------------------------------


def test_shell(laptop: execgate.Env, world: World) -> None:
    r = laptop.shell("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 3, False)
    assert not r.ok
    r = laptop.shell(["printf", "%s|%s", "a b", "$HOME"])
    assert r.stdout == "a b|$HOME" and r.ok
    r = laptop.shell("pwd; echo $GREETING", cwd=str(world.root), env={"GREETING": "hi"})
    assert r.stdout == f"{world.root}\nhi\n"
    # Relative paths resolve against the executor's --workdir.
    assert laptop.shell("pwd").stdout.strip() == str(world.laptop_dir)


def test_shell_check_and_timeout(laptop: execgate.Env) -> None:
    with pytest.raises(execgate.CommandFailed) as e:
        laptop.shell("echo boom >&2; exit 4", check=True)
    assert e.value.result.exit_code == 4 and "boom" in str(e.value)
    assert laptop.shell("true", check=True).exit_code == 0

    started = time.monotonic()
    r = laptop.shell("sleep 30", timeout=0.5)
    assert r.timed_out and not r.ok
    assert time.monotonic() - started < 10
    with pytest.raises(execgate.CommandFailed, match="timed out"):
        laptop.shell("sleep 30", timeout=0.3, check=True)


def test_shell_that_cannot_start_is_a_tool_error(laptop: execgate.Env) -> None:
    with pytest.raises(execgate.ToolError) as e:
        laptop.shell(["/no/such/program"])
    assert e.value.result.is_error


# -- files --------------------------------------------------------------------


def test_write_and_read_file(laptop: execgate.Env, world: World) -> None:
    assert laptop.write_file("notes/hello.txt", "héllo\n") == len("héllo\n".encode())
    assert (world.laptop_dir / "notes/hello.txt").read_text() == "héllo\n"
    assert laptop.read_file("notes/hello.txt") == "héllo\n".encode()
    blob = bytes(range(256)) * 4
    laptop.write_file(str(world.root / "blob.bin"), blob)
    assert laptop.read_file(str(world.root / "blob.bin")) == blob
    assert laptop.read_file("notes/../notes/hello.txt") == "héllo\n".encode()
    with pytest.raises(execgate.ToolError):
        laptop.read_file("no/such/file")


def test_list_dir(laptop: execgate.Env, world: World) -> None:
    world.needs("tool:list_dir")
    d = world.laptop_dir / "listing"
    (d / "sub").mkdir(parents=True)
    for name in ("b.txt", "A", "c"):
        (d / name).write_text(name)
    (d / "link_sub").symlink_to(d / "sub")
    (d / "dangling").symlink_to(d / "nowhere")
    os.mkfifo(d / "fifo")

    listing = laptop.list_dir("listing")
    assert isinstance(listing, execgate.DirListing)
    assert [(e.name, e.kind) for e in listing] == [
        ("A", "file"),
        ("b.txt", "file"),
        ("c", "file"),
        ("dangling", "other"),
        ("fifo", "other"),
        ("link_sub", "directory"),
        ("sub", "directory"),
    ]
    assert (listing.path, listing.total, listing.truncated, len(listing)) == ("listing", 7, False, 7)
    assert listing.entries[-1].is_dir and listing.entries[0].is_file
    # Absolute paths, and the working directory by default.
    assert laptop.list_dir(str(d)).names() == listing.names()
    assert "listing" in laptop.list_dir().names()

    short = laptop.list_dir("listing", max_entries=2)
    assert short.names() == ["A", "b.txt"]
    assert (short.total, short.truncated) == (7, True)

    with pytest.raises(execgate.ToolError):
        laptop.list_dir("listing/missing")
    with pytest.raises(execgate.ToolError):
        laptop.list_dir("listing/c")
    with pytest.raises(execgate.BadArguments, match="max_entries"):
        laptop.list_dir("listing", max_entries=0)


def test_read_file_pages(laptop: execgate.Env, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(10_000)
    laptop.write_file("paged.bin", data)
    calls = []
    real = execgate._core.tool_call

    def counting(*a, **kw):
        calls.append(a[2])
        return (yield from real(*a, **kw))

    monkeypatch.setattr(execgate._core, "READ_PAGE", 3000)
    monkeypatch.setattr(execgate._core, "tool_call", counting)
    assert laptop.read_file("paged.bin") == data
    assert [c["offset"] for c in calls] == [0, 3000, 6000, 9000]


def test_apply_patch(laptop: execgate.Env, world: World) -> None:
    world.needs("tool:apply_patch")
    laptop.write_file("p/a.txt", "one\ntwo\n")
    patch = (
        "*** Begin Patch\n*** Add File: p/b.txt\n+new\n"
        "*** Update File: p/a.txt\n@@\n one\n-two\n+TWO\n*** End Patch"
    )
    dry = laptop.apply_patch(patch, dry_run=True)
    assert dry.dry_run and not (world.laptop_dir / "p/b.txt").exists()
    r = laptop.apply_patch(patch)
    assert r.applied
    assert {f["path"]: f["action"] for f in r.files} == {"p/b.txt": "added", "p/a.txt": "updated"}
    assert laptop.read_file("p/a.txt") == b"one\nTWO\n"
    # A hunk that does not apply: nothing changes, and it raises.
    bad = (
        "*** Begin Patch\n*** Add File: p/c.txt\n+c\n"
        "*** Update File: p/a.txt\n@@\n-nope\n+x\n*** End Patch"
    )
    with pytest.raises(execgate.ToolError, match="p/a.txt") as e:
        laptop.apply_patch(bad)
    assert e.value.result.is_error
    assert not (world.laptop_dir / "p/c.txt").exists()
    r = laptop.apply_patch(bad, check=False)
    assert not r.applied and any(not f["ok"] for f in r.files)
    # expected_sha256 refuses a file that changed.
    with pytest.raises(execgate.ToolError):
        laptop.apply_patch(patch.replace("Add File: p/b.txt", "Add File: p/d.txt"),
                           expected_sha256={"p/a.txt": "0" * 64})


def test_upload_and_download_stream(
    laptop: execgate.Env, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.needs("files")
    # Chunks of 64 KiB, so that a bounded peak shows streaming on a small file.
    monkeypatch.setattr(execgate._core, "FILE_CHUNK", 64 * 1024)
    size = 6 * 1024 * 1024 + 123
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(size // 65536 + 1):
            f.write(os.urandom(65536))
        f.truncate(size)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()

    tracemalloc.start()
    try:
        up = laptop.upload(src, "up/big.bin")  # a Path or a str
        _, peak_up = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        dst = tmp_path / "copy.bin"
        down = laptop.download("up/big.bin", dst)
        _, peak_down = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (up.bytes, up.sha256, up.path) == (size, sha, "up/big.bin")
    assert (world.laptop_dir / "up/big.bin").stat().st_size == size
    assert (down.bytes, down.sha256) == (size, sha)
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == sha
    # Streamed: never the whole file in memory.
    assert peak_up < size / 3, peak_up
    assert peak_down < size / 3, peak_down
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]

    with pytest.raises(execgate.FileNotFound):
        laptop.download("no/such.bin", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_copy_to(laptop: execgate.Env, gpu: execgate.Env, world: World) -> None:
    world.needs("tool:copy_path")
    laptop.write_file("tree/a.txt", "A")
    laptop.write_file("tree/sub/b.txt", "B")
    gpu.write_file("copied/.keep", "")  # copy_path does not create parents
    r = laptop.copy_to(gpu, "tree/a.txt", "copied/a.txt")
    assert (r.bytes, r.files) == (1, 1)
    # Two execgate executors verify by BLAKE3 (the test vector of b"A").
    assert r.blake3 == "32684bfa28c0c84d6f210511aace0efc5171c7889148ba89208d5aa29705fa98" and r.sha256 is None
    assert (world.gpu_dir / "copied/a.txt").read_text() == "A"
    r = laptop.copy_to("gpu", "tree", "tree2", recursive=True)
    assert r.files == 2
    assert gpu.read_file("tree2/sub/b.txt") == b"B"
    with pytest.raises(execgate.ToolError, match="recursive"):
        laptop.copy_to(gpu, "tree", "tree3")
    with pytest.raises(execgate.ToolError):
        laptop.copy_to(gpu, "no/such", "x")


# -- custom tools -------------------------------------------------------------


def test_custom_tools_are_methods(laptop: execgate.Env, gpu: execgate.Env) -> None:
    r = laptop.echo_arg(text="$(touch pwned); hi")
    assert r.stdout == "$(touch pwned); hi" and r.exit_code == 0
    assert laptop.add(a=2, b=40).stdout == "42\n"
    assert "echo one argument" in (laptop.echo_arg.__doc__ or "")
    assert "echo_arg" in dir(laptop)
    with pytest.raises(execgate.BadArguments, match="text"):
        laptop.echo_arg(wrong=1)
    with pytest.raises(AttributeError, match="no attribute or custom tool 'nope'"):
        laptop.nope  # noqa: B018
    with pytest.raises(AttributeError, match="core tool"):
        laptop.exec_command  # noqa: B018
    with pytest.raises(AttributeError):
        gpu.echo_arg  # noqa: B018
    # The generic call, for any tool.
    r = laptop.call("echo_arg", {"text": "x"}, check=True)
    assert r.structured and r.structured["stdout"] == "x"


# -- processes ----------------------------------------------------------------


def test_process_stdin_eof_and_output(laptop: execgate.Env) -> None:
    with laptop.spawn(["sh", "-c", "cat; echo done >&2; exit 7"]) as p:
        assert p.sid.startswith("ps_") and p.env == "laptop"
        assert p.exit_code is None
        p.write("hello ")
        p.write(b"world\n")
        p.close_stdin()
        items = list(p.output())
        assert all(isinstance(i, Chunk) for i in items)
        out = b"".join(i.data for i in items if i.stream == "stdout")
        err = b"".join(i.data for i in items if i.stream == "stderr")
        assert (out, err) == (b"hello world\n", b"done\n")
        seqs = [i.seq for i in items]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert p.wait(10) == 7
        assert p.exit_code == 7 and p.exited
        with pytest.raises(execgate.StdinClosed):
            p.write("late")


def test_output_streams_before_exit(laptop: execgate.Env) -> None:
    p = laptop.spawn(["sh", "-c", "echo first; sleep 1.5; echo second"])
    started = time.monotonic()
    arrivals = []
    for item in p.output():
        arrivals.append((item.data, time.monotonic() - started))
    assert b"".join(d for d, _ in arrivals) == b"first\nsecond\n"
    assert arrivals[0][1] < 1.2, arrivals  # came before the process ended
    assert p.exit_code == 0


@pytest.mark.parametrize("transport", ["binary", "sse", "poll"])
def test_output_is_resumable(
    laptop: execgate.Env, client: execgate.Client, transport: str, world: World
) -> None:
    if transport == "sse":
        world.needs("stream")
    p = laptop.spawn(["sh", "-c", "for i in 1 2 3 4 5; do echo $i; sleep 0.1; done"])
    it = p.output(transport=transport)
    first = next(it)
    it.close()  # stop reading, as a crashed reader would
    assert isinstance(first, Chunk) and first.data == b"1\n" and p.cursor == first.seq
    rest, _ = collect(p.output(transport=transport))
    assert first.data + rest == b"1\n2\n3\n4\n5\n"
    # From the start again, and from another handle on the same session.
    again, _ = collect(p.output(since=0, transport=transport))
    assert again == b"1\n2\n3\n4\n5\n"
    other = client.process(p.sid)
    assert collect(other.output(transport=transport))[0] == again
    assert other.wait(5) == 0


@pytest.mark.parametrize("transport", ["binary", "sse", "poll"])
def test_lost_output_is_surfaced(client: execgate.Client, transport: str, world: World) -> None:
    if transport == "sse":
        world.needs("stream")
    tiny = client.env("tiny")
    # 40 KB through a 4 KiB buffer with nothing on disk: most is dropped.
    script = "for i in $(seq 20); do head -c 2000 /dev/zero | tr '\\0' x; sleep 0.01; done; echo end"
    p = tiny.spawn(["sh", "-c", script])
    assert p.wait(10) == 0
    data, items = collect(p.output(transport=transport))
    lost = [i for i in items if isinstance(i, LostOutput)]
    assert len(lost) == 1, items
    assert lost[0].from_seq == 1 and lost[0].bytes and lost[0].bytes > 0
    assert isinstance(items[0], LostOutput)
    assert data.endswith(b"end\n")
    assert lost[0].bytes + len(data) == 40000 + 4


@pytest.mark.parametrize("transport", ["binary", "sse"])
def test_output_is_raw_bytes_in_either_stream_form(
    laptop: execgate.Env, world: World, transport: str
) -> None:
    """8 MiB that are not UTF-8 and both streams, through the binary form
    (frames as the gateway wrote them) and SSE: the same bytes."""
    data = bytes((i * 7 + (i >> 11)) % 256 for i in range(8 << 20))
    (world.laptop_dir / "noise.bin").write_bytes(data)
    p = laptop.spawn(["sh", "-c", "cat noise.bin; printf 'e\\377' >&2; exit 4"])
    items = list(p.output(transport=transport))
    out = b"".join(i.data for i in items if isinstance(i, Chunk) and i.stream == "stdout")
    err = b"".join(i.data for i in items if isinstance(i, Chunk) and i.stream == "stderr")
    assert out == data and err == b"e\xff"
    assert not [i for i in items if isinstance(i, LostOutput)]
    seqs = [i.seq for i in items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert p.exit_code == 4
    if transport == "binary":
        # Coalesced: far fewer items than the 64 KiB chunks SSE carries.
        assert len(items) < 128, len(items)


def test_wait_timeout_poll_and_terminate(
    laptop: execgate.Env, client: execgate.Client, world: World
) -> None:
    p = laptop.spawn("sleep 60")
    assert p.poll() is None
    with pytest.raises(execgate.WaitTimeout):
        p.wait(0.5)
    with pytest.raises(TimeoutError):
        p.wait(0.2)
    p.terminate()
    code = p.wait(10)
    assert p.exited and code == p.exit_code
    world.needs("processes-list")
    info = {i.sid: i for i in client.processes()}[p.sid]
    assert info.status == "exited" and info.env == "laptop" and info.command == ["sh", "-c", "sleep 60"]


def test_context_manager_terminates(
    laptop: execgate.Env, client: execgate.Client, world: World
) -> None:
    with laptop.spawn(["sleep", "60"]) as p:
        sid = p.sid
    # It was terminated: it ends well before its 60 s.
    client.process(sid).wait(10)
    # An exception in the block is not masked, and the process still goes.
    with pytest.raises(ZeroDivisionError):
        with laptop.spawn(["sleep", "60"]) as p2:
            1 / 0
    client.process(p2.sid).wait(10)
    if "processes-list" in world.features:
        infos = {i.sid: i for i in client.processes()}
        assert infos[sid].status == infos[p2.sid].status == "exited"


def test_tty_signal_and_resize(laptop: execgate.Env, world: World) -> None:
    world.needs("resize", "signal")
    script = "stty size; read x; stty size; echo got $x"
    with laptop.spawn(["sh", "-c", script], tty=True, cols=100, rows=30) as p:
        seen = b""
        it = p.output()
        for item in it:
            assert isinstance(item, Chunk) and item.stream == "pty"
            seen += item.data
            if b"30 100" in seen:
                break
        it.close()
        p.resize(120, 40)
        p.write("abc\n")
        data, items = collect(p.output())
        assert {i.stream for i in items if isinstance(i, Chunk)} == {"pty"}
        assert b"40 120" in data and b"got abc" in data, data
    p = laptop.spawn(["sleep", "60"])
    with pytest.raises(execgate.NotATerminal):
        p.resize(80, 24)
    p.signal("interrupt")
    assert p.wait(10) is not None


# -- errors -------------------------------------------------------------------


def test_auth_errors(world: World) -> None:
    with execgate.Client(world.url, "egp_wrong") as bad:
        with pytest.raises(execgate.AuthError) as e:
            bad.envs()
    assert (e.value.code, e.value.status) == ("invalid_token", 401)
    no_header = httpx.Client(base_url=world.url)
    with execgate.Client(world.url, "unused", http_client=no_header) as c:
        with pytest.raises(execgate.AuthError) as e:
            c.envs()
    assert e.value.code == "missing_bearer"


def test_env_errors(client: execgate.Client) -> None:
    with pytest.raises(execgate.ExecutorUnavailable) as e:
        client.env("offline", check=False).shell("true")
    assert (e.value.status, e.value.code) == (503, "executor_unavailable")
    assert e.value.retry_after and e.value.retry_after > 0
    assert "offline" in e.value.message
    with pytest.raises(execgate.EnvNotFound) as e2:
        client.env("nowhere", check=False).shell("true")
    assert (e2.value.status, e2.value.code) == (404, "env_not_found")


def test_request_errors(laptop: execgate.Env) -> None:
    with pytest.raises(execgate.UnknownTool):
        laptop.call("no_such_tool")
    with pytest.raises(execgate.BadArguments, match="command") as e:
        laptop.call("shell", {"command": 5})
    assert e.value.status == 400
    assert isinstance(e.value, execgate.BadRequest)


def test_session_errors(client: execgate.Client, laptop: execgate.Env, world: World) -> None:
    with pytest.raises(execgate.SessionNotFound):
        client.process("ps_nosuchsession").wait(1)
    p = laptop.spawn(["sleep", "60"])
    # Another workspace's session answers exactly as an unknown one: 404,
    # never a 403 that would tell a tenant it exists.
    with execgate.Client(world.url, world.other_token) as other:
        with pytest.raises(execgate.SessionNotFound):
            other.process(p.sid).terminate()
    p.terminate()
    world.needs("exited-retention")
    # An exited process is forgotten after its retention (2 s on `tiny`).
    q = client.env("tiny").spawn(["true"])
    assert q.wait(10) == 0

    def expired() -> Optional[execgate.SessionExpired]:
        try:
            client.process(q.sid).poll()
        except execgate.SessionExpired as e:
            return e
        return None

    assert eventually(15, "the session to expire", expired, interval=0.3).status == 410
    with pytest.raises(execgate.SessionExpired):
        list(client.process(q.sid).output())


def test_executor_restart_is_reported(client: execgate.Client, world: World) -> None:
    """Runs last: it restarts the `gpu` executor."""
    gpu = client.env("gpu")
    p = gpu.spawn(["sleep", "20"])
    world.restart_gpu()

    def restarted() -> Optional[execgate.ExecutorRestarted]:
        try:
            p.poll()
        except execgate.ExecutorRestarted as e:
            return e
        except execgate.ExecutorUnavailable:
            pass  # not reconnected yet
        return None

    assert eventually(30, "the new executor to connect", restarted, interval=0.2).code == "executor_restarted"
    with pytest.raises(execgate.ExecutorRestarted) as e:
        p.terminate()
    assert e.value.status == 410
    with pytest.raises(execgate.ExecutorRestarted):
        list(p.output())
    with pytest.raises(execgate.ExecutorRestarted):
        list(p.output(transport="poll"))
