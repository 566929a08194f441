"""A gateway's and an executor's ``GET /metrics`` (``--metrics-listen``),
read by the Prometheus project's own parser, ``prometheus_client.parser``
(#19): the exposition must parse, every sample line must be read, each
family must be typed and documented, histograms must be well formed, and
every family the issue names must be there with its labels; then known
traffic must move the counters by exactly what it did.

The Rust e2e tests (crates/cli/tests/e2e/metrics.rs) check more counters
with a strict parser of their own; this suite checks the text against the
reference parser, so that what Prometheus reads is what we think we wrote.
"""

from __future__ import annotations

import math
import socket
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from execgate_fixtures import (
    add_executor,
    admin,
    call,
    kill_all,
    require_bin,
    start_executor,
    start_gateway,
    wait_for_envs,
)

CALL_ROUTE = "/api/connectors/envs/{name}/tool/call"

#: The gateway's families the issue names (and the replica ones that exist
#: on every gateway): name as the parser gives it (a counter's without
#: ``_total``) → (type, label names).
GATEWAY_FAMILIES: Dict[str, Tuple[str, frozenset]] = {
    "execgate_http_requests": ("counter", frozenset({"route", "method", "status"})),
    "execgate_http_request_duration_seconds": ("histogram", frozenset({"route"})),
    "execgate_tool_calls": ("counter", frozenset({"tool", "outcome"})),
    "execgate_tool_call_duration_seconds": ("histogram", frozenset({"tool"})),
    "execgate_executors_connected": ("gauge", frozenset({"kind"})),
    "execgate_executor_links": ("counter", frozenset({"event"})),
    "execgate_process_sessions": ("gauge", frozenset({"status"})),
    "execgate_output_bytes": ("counter", frozenset()),
    "execgate_output_lost_bytes": ("counter", frozenset()),
    "execgate_audit_queue_depth": ("gauge", frozenset()),
    "execgate_audit_records_dropped": ("counter", frozenset()),
    "execgate_auth_cache_requests": ("counter", frozenset({"result"})),
    "execgate_auth_upstream_errors": ("counter", frozenset()),
    "execgate_rate_limited": ("counter", frozenset({"reason"})),
    "execgate_link_request_duration_seconds": ("histogram", frozenset({"method"})),
    "execgate_forwarded_calls": ("counter", frozenset({"outcome"})),
    "execgate_peer_relayed_requests": ("counter", frozenset()),
}

#: The executor's own: processes running, spawn duration, output log and
#: spill bytes, descriptors open (and its requests).
EXECUTOR_FAMILIES: Dict[str, Tuple[str, frozenset]] = {
    "execgate_executor_requests": ("counter", frozenset({"method", "outcome"})),
    "execgate_executor_request_duration_seconds": ("histogram", frozenset({"method"})),
    "execgate_executor_spawn_duration_seconds": ("histogram", frozenset()),
    "execgate_executor_processes_running": ("gauge", frozenset()),
    "execgate_executor_output_log_bytes": ("gauge", frozenset()),
    "execgate_executor_spill_bytes": ("gauge", frozenset()),
    "execgate_executor_output_bytes": ("counter", frozenset()),
    "execgate_executor_open_fds": ("gauge", frozenset()),
    "execgate_executor_connected": ("gauge", frozenset()),
}

Sample = Tuple[str, Tuple[Tuple[str, str], ...]]


def parse_exposition(text: str) -> Tuple[Dict[str, object], Dict[Sample, float]]:
    """Parses ``text`` with ``prometheus_client.parser`` and checks it:
    every sample line read (none skipped or merged), every family typed
    (not ``unknown``: a sample whose name does not match a ``# TYPE``) and
    documented, no sample twice, each histogram's buckets cumulative and
    ending at ``+Inf`` = ``_count``. Returns (families by name, samples by
    (name, sorted labels)). Raises ``AssertionError`` or the parser's
    ``ValueError`` on anything else."""
    families = list(text_string_to_metric_families(text))
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    parsed = sum(len(f.samples) for f in families)
    assert parsed == len(lines), f"{len(lines)} sample lines, the parser read {parsed}"
    by_name: Dict[str, object] = {}
    samples: Dict[Sample, float] = {}
    for f in families:
        assert f.name not in by_name, f"family {f.name} twice"
        by_name[f.name] = f
        assert f.type in ("counter", "gauge", "histogram"), f"{f.name} is {f.type}"
        assert f.documentation, f"{f.name} has no HELP"
        for s in f.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"sample twice: {key}"
            assert not math.isnan(s.value), f"NaN: {key}"
            samples[key] = s.value
        if f.type == "histogram":
            check_histogram(f)
    return by_name, samples


def check_histogram(f) -> None:
    """Per label set: buckets non-decreasing in ``le``, the last ``+Inf``
    and equal to ``_count``; a ``_sum`` present."""
    series: Dict[tuple, List[Tuple[float, float]]] = {}
    counts: Dict[tuple, float] = {}
    sums = set()
    for s in f.samples:
        labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        if s.name == f.name + "_bucket":
            series.setdefault(labels, []).append((float(s.labels["le"]), s.value))
        elif s.name == f.name + "_count":
            counts[labels] = s.value
        elif s.name == f.name + "_sum":
            sums.add(labels)
        else:
            raise AssertionError(f"{s.name} in histogram {f.name}")
    assert series, f"histogram {f.name} has no buckets"
    for labels, buckets in series.items():
        les = [le for le, _ in buckets]
        assert les == sorted(les) and les[-1] == math.inf, f"{f.name}{labels}: buckets {les}"
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{f.name}{labels}: not cumulative {values}"
        assert counts.get(labels) == values[-1], f"{f.name}{labels}: +Inf {values[-1]} != _count"
        assert labels in sums, f"{f.name}{labels}: no _sum"


def check_families(families: Dict[str, object], wanted: Dict[str, Tuple[str, frozenset]]) -> None:
    for name, (kind, labels) in wanted.items():
        assert name in families, f"{name} is missing from /metrics"
        f = families[name]
        assert f.type == kind, f"{name} is a {f.type}, not a {kind}"
        for s in f.samples:
            got = set(s.labels) - {"le"}
            assert got == labels, f"{s.name} has labels {sorted(got)}, not {sorted(labels)}"


def free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain"), r.headers["Content-Type"]
        return r.read().decode("utf-8")


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, str, str, str, Path]]:
    """(API URL, proxy token, gateway metrics address, executor metrics
    address, the executor's workdir) of a gateway and executor `laptop`,
    both with ``--metrics-listen``."""
    require_bin()
    root: Path = tmp_path_factory.mktemp("metrics")
    data, work = root / "data", root / "work"
    data.mkdir()
    work.mkdir()
    admin(data, "workspace", "create", "w1")
    token = admin(data, "token", "create", "--workspace", "w1")
    exe_token = add_executor(data, "w1", "laptop")
    gw_metrics, exe_metrics = free_addr(), free_addr()
    gw, url = start_gateway(data, "--metrics-listen", gw_metrics)
    procs = [gw]
    try:
        procs.append(start_executor(url, exe_token, work, "--metrics-listen", exe_metrics))
        wait_for_envs(url, token, "laptop")
        yield url, token, gw_metrics, exe_metrics, work
    finally:
        kill_all(procs)


def test_the_parser_rejects_what_is_not_the_format() -> None:
    """The checks above fail on a malformed or incomplete exposition."""
    good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n"
    families, samples = parse_exposition(good)
    assert samples[("a_total", (("x", "1"),))] == 2
    bad = [
        good + "a_total{x=\"1\" 3\n",  # unclosed braces
        good + "a_total{x=\"2\"} three\n",  # not a number
        good + "b 1\n",  # a sample of no declared type
        "# TYPE c counter\nc_total 1\n",  # no HELP
        good + "a_total{x=\"1\"} 4\n",  # a sample twice
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\nh_sum 0\n",
    ]
    for text in bad:
        with pytest.raises((AssertionError, ValueError)):
            parse_exposition(text)
    with pytest.raises(AssertionError):
        check_families(families, {"a": ("counter", frozenset({"y"}))})
    with pytest.raises(AssertionError):
        check_families(families, {"missing": ("gauge", frozenset())})


def test_gateway_and_executor_expositions_parse_and_have_every_family(metered) -> None:
    url, token, gw_metrics, exe_metrics, _ = metered
    # Some traffic first, so that labelled families have samples.
    status, r = call(url, token, "POST", "/api/connectors/envs/laptop/tool/call",
                     {"tool": "shell", "arguments": {"command": ["echo", "hi"]}})
    assert status == 200 and r["isError"] is False, r
    families, _ = parse_exposition(scrape(gw_metrics))
    check_families(families, GATEWAY_FAMILIES)
    families, _ = parse_exposition(scrape(exe_metrics))
    check_families(families, EXECUTOR_FAMILIES)


def test_known_traffic_moves_each_counter_by_exactly_that(metered) -> None:
    url, token, gw_metrics, exe_metrics, work = metered
    (work / "f.txt").write_text("one\n")
    _, g0 = parse_exposition(scrape(gw_metrics))
    _, e0 = parse_exposition(scrape(exe_metrics))

    tool_call = "/api/connectors/envs/laptop/tool/call"
    for _ in range(2):
        status, r = call(url, token, "POST", tool_call,
                         {"tool": "shell", "arguments": {"command": ["echo", "hi"]}})
        assert status == 200 and r["isError"] is False, r
    status, r = call(url, token, "POST", tool_call, {"tool": "read_file", "arguments": {"path": "f.txt"}})
    assert status == 200 and r["isError"] is False, r
    status, r = call(url, token, "POST", tool_call, {"tool": "read_file", "arguments": {"path": "nope.txt"}})
    assert status == 200 and r["isError"] is True, r
    status, r = call(url, token, "POST", "/api/connectors/envs/nowhere/tool/call",
                     {"tool": "shell", "arguments": {"command": ["true"]}})
    assert status == 404, r

    _, g1 = parse_exposition(scrape(gw_metrics))
    _, e1 = parse_exposition(scrape(exe_metrics))

    def delta(before: Dict[Sample, float], after: Dict[Sample, float], name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    calls = "execgate_tool_calls_total"
    assert delta(g0, g1, calls, tool="shell", outcome="ok") == 2
    assert delta(g0, g1, calls, tool="read_file", outcome="ok") == 1
    assert delta(g0, g1, calls, tool="read_file", outcome="tool_error") == 1
    assert delta(g0, g1, calls, tool="shell", outcome="env_not_found") == 1
    assert delta(g0, g1, "execgate_tool_call_duration_seconds_count", tool="shell") == 3
    assert delta(g0, g1, "execgate_tool_call_duration_seconds_count", tool="read_file") == 2
    http = "execgate_http_requests_total"
    assert delta(g0, g1, http, route=CALL_ROUTE, method="POST", status="200") == 4
    assert delta(g0, g1, http, route=CALL_ROUTE, method="POST", status="404") == 1
    assert delta(g0, g1, "execgate_http_request_duration_seconds_count", route=CALL_ROUTE) == 5
    assert delta(g0, g1, "execgate_link_request_duration_seconds_count", method="process/start") == 2
    assert delta(g0, g1, "execgate_output_bytes_total") >= 6  # "hi\n" twice
    for outcome in ("ok", "error", "timeout", "disconnected", "unreachable", "cancelled"):
        # A single gateway forwards nothing.
        assert delta(g0, g1, "execgate_forwarded_calls_total", outcome=outcome) == 0
    assert g1[("execgate_executors_connected", (("kind", "execgate"),))] == 1

    requests = "execgate_executor_requests_total"
    assert delta(e0, e1, requests, method="process/start", outcome="ok") == 2
    assert delta(e0, e1, "execgate_executor_spawn_duration_seconds_count") == 2
    assert delta(e0, e1, "execgate_executor_output_bytes_total") >= 6
    assert e1[("execgate_executor_connected", ())] == 1
    assert e1[("execgate_executor_open_fds", ())] > 0
