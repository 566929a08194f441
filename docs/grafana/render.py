#!/usr/bin/env python3
"""Renders docs/grafana/execgate.json's panels to a PNG from a real
Prometheus, the way Grafana would lay them out, for docs/grafana/execgate.png.

Grafana itself could not be installed where the picture was made (it is not
in Debian, and its own download site was out of reach), so this script
stands in for its renderer: it reads the dashboard, sends each panel's
PromQL queries, as written in the JSON, to Prometheus' HTTP API
(``/api/v1/query_range``), and draws the answers with matplotlib on the
dashboard's grid (``gridPos``: 24 columns), with each panel's title, unit
and legend format. ``$__rate_interval`` becomes ``--rate-interval``
(Grafana's own would be 4 scrape intervals). Nothing is computed here but
the drawing: every number is Prometheus' answer.

    python3 docs/grafana/render.py --prometheus http://127.0.0.1:19090 \\
        --out docs/grafana/execgate.png

The time range defaults to the span over which the gateway's
``execgate_tool_calls_total`` has samples. How the picture in docs/ was
made, step by step: docs/grafana/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

HERE = Path(__file__).resolve().parent
BG, PANEL, GRID, TEXT, DIM = "#111217", "#181b1f", "#2c3036", "#d8d9da", "#8e8e8e"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9",
          "#8ab8ff", "#ff780a", "#96d98d", "#ca95e5", "#fade2a", "#c4162a"]

Series = Tuple[str, List[float], List[Optional[float]]]


def api(base: str, path: str, params: Dict[str, str]) -> dict:
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=60) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def data_span(base: str, metric: str) -> Tuple[float, float]:
    """The first and last sample times of ``metric`` (any series) in the
    last 24 hours."""
    data = api(base, "/api/v1/query", {"query": f"{metric}[24h]"})
    times = [float(t) for s in data["result"] for t, _ in s["values"]]
    if not times:
        raise SystemExit(f"Prometheus has no samples of {metric}: did it scrape a bench run?")
    return min(times), max(times)


def legend(fmt: str, labels: Dict[str, str]) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def query(base: str, expr: str, start: float, end: float, step: float, rate: str) -> List[Tuple[Dict[str, str], List[float], List[Optional[float]]]]:
    expr = expr.replace("$__rate_interval", rate).replace("$__interval", rate)
    data = api(base, "/api/v1/query_range",
               {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"})
    out = []
    for s in data["result"]:
        ts = [float(t) for t, _ in s["values"]]
        vs: List[Optional[float]] = []
        for _, v in s["values"]:
            f = float(v)
            vs.append(None if f != f or f in (float("inf"), float("-inf")) else f)
        out.append((s["metric"], ts, vs))
    return out


def fmt_value(unit: str, v: float) -> str:
    a = abs(v)
    if unit == "s":
        if a == 0:
            return "0"
        if a < 1e-3:
            return f"{v * 1e6:.0f} µs"
        if a < 1:
            return f"{v * 1e3:.3g} ms"
        return f"{v:.3g} s"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for div, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if a >= div:
                return f"{v / div:.3g} {name}{suffix}"
        return f"{v:.3g} B{suffix}"
    if unit == "ops":
        return f"{v:.3g}/s" if a < 1000 else f"{v / 1000:.3g}k/s"
    return f"{v:.3g}" if a < 1000 else f"{v / 1000:.3g}k"


def draw_timeseries(ax, panel: dict, series: List[Series]) -> None:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    if not series:
        ax.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center",
                transform=ax.transAxes, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    for i, (name, ts, vs) in enumerate(series):
        xs = [dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in ts]
        ax.plot(xs, [float("nan") if v is None else v for v in vs],
                color=COLORS[i % len(COLORS)], linewidth=1.2, label=name)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(unit, v)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=dt.timezone.utc))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_ylim(bottom=0)
    leg = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6.5, frameon=False,
                    labelcolor=TEXT, handlelength=1.2, borderaxespad=0)
    for line in leg.get_lines():
        line.set_linewidth(3)


def draw_stat(ax, panel: dict, series: List[Series]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if not series:
        ax.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center", transform=ax.transAxes)
        return
    n = len(series)
    for i, (name, _, vs) in enumerate(series):
        last = next((v for v in reversed(vs) if v is not None), None)
        x = (i + 0.5) / n
        ax.text(x, 0.55, "—" if last is None else f"{last:g}", color=COLORS[i % len(COLORS)],
                ha="center", va="center", fontsize=26, fontweight="bold", transform=ax.transAxes)
        ax.text(x, 0.15, name, color=TEXT, ha="center", va="center", fontsize=9, transform=ax.transAxes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:19090")
    ap.add_argument("--dashboard", default=str(HERE / "execgate.json"))
    ap.add_argument("--out", default=str(HERE / "execgate.png"))
    ap.add_argument("--start", type=float, help="Unix seconds (default: the data's first sample)")
    ap.add_argument("--end", type=float, help="Unix seconds (default: the data's last sample)")
    ap.add_argument("--step", type=float, default=2.0, help="seconds between points")
    ap.add_argument("--rate-interval", default="10s", help="what $__rate_interval becomes")
    ap.add_argument("--caption", default="", help="a line under the title: what run this is")
    a = ap.parse_args()

    board = json.loads(Path(a.dashboard).read_text())
    first, last = data_span(a.prometheus, "execgate_tool_calls_total")
    start = a.start if a.start is not None else first
    end = a.end if a.end is not None else last

    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width = 22.0
    row_in = width / 24 * 0.42
    fig = plt.figure(figsize=(width, rows * row_in + 0.9), facecolor=BG)
    top = 1 - 0.9 / (rows * row_in + 0.9)
    stamp = dt.datetime.fromtimestamp(start, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    span = end - start
    fig.text(0.005, 1 - 0.25 / (rows * row_in + 0.9),
             f"{board.get('title', 'dashboard')}  ·  {Path(a.dashboard).name}, {len(panels)} panels  ·  "
             f"{stamp} UTC + {span:.0f} s  ·  rate interval {a.rate_interval}, step {a.step:g} s",
             color=TEXT, fontsize=12, fontweight="bold", va="top")
    caption = a.caption or (f"Every value from Prometheus ({a.prometheus}) queried with the dashboard's own "
                            "PromQL; drawn by docs/grafana/render.py (Grafana stand-in).")
    fig.text(0.005, 1 - 0.55 / (rows * row_in + 0.9), caption, color=DIM, fontsize=9, va="top")

    missing = []
    for p in panels:
        g = p["gridPos"]
        # Grid cell → figure fraction, leaving room for title and legend.
        left = g["x"] / 24 + 0.004
        w = g["w"] / 24 - 0.008
        y_top = top - g["y"] / rows * top
        h = g["h"] / rows * top
        bg = fig.add_axes([left, y_top - h + 0.004, w, h - 0.008])
        bg.set_facecolor(PANEL)
        bg.set_xticks([])
        bg.set_yticks([])
        for s in bg.spines.values():
            s.set_color(GRID)
        bg.text(0.01, 0.985, p.get("title", ""), color=TEXT, fontsize=9.5, fontweight="bold",
                va="top", transform=bg.transAxes)
        series: List[Series] = []
        for t in p.get("targets", []):
            for labels, ts, vs in query(a.prometheus, t["expr"], start, end, a.step, a.rate_interval):
                if any(v is not None for v in vs):
                    series.append((legend(t.get("legendFormat", ""), labels), ts, vs))
        if not series:
            missing.append(p.get("title", ""))
        if p["type"] == "stat":
            ax = fig.add_axes([left + 0.01 * w, y_top - h + 0.01, w * 0.98, h - 0.04])
            ax.set_facecolor(PANEL)
            ax.axis("off")
            draw_stat(ax, p, series)
            continue
        # Plot on the left 62 %, the legend to its right.
        ax = fig.add_axes([left + w * 0.09, y_top - h + h * 0.16, w * 0.55, h * 0.66])
        ax.set_facecolor(PANEL)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.tick_params(colors=DIM, labelsize=6.5)
        draw_timeseries(ax, p, series)

    fig.savefig(a.out, dpi=90, facecolor=BG)
    print(f"wrote {a.out}: {len(panels)} panels, {start:.0f}..{end:.0f}"
          + (f"; no data: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
