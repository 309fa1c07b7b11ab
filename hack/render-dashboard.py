#!/usr/bin/env python3
"""Renders the panels of a Grafana dashboard JSON from a real Prometheus into one PNG.

Usage: render-dashboard.py DASHBOARD PROMETHEUS_URL START END NAMESPACE OUT.png

Every panel's queries run against PROMETHEUS_URL over [START, END] (Unix seconds) with the
dashboard's variables set to: namespace = NAMESPACE, group = all, $__rate_interval = 1m. Panels
are drawn where the dashboard's gridPos puts them (24 columns), as time series, stat values or
state timelines, with the dashboard's value mappings and units. Grafana itself is not used (its
licence); what is drawn is what its queries return. Called by hack/dashboard-snapshot.sh.
"""

import json
import sys
import urllib.parse
import urllib.request
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]
UNIT_HEIGHT = 0.36  # inches per gridPos row


def query_range(url, expr, start, end, step):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    out = fmt or "{{__name__}}"
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def mapped(mappings, value):
    """(text, colour) of a value under the panel's value mappings, or None."""
    for m in mappings or []:
        option = m.get("options", {}).get(str(int(value))) if value == int(value) else None
        if option:
            return option.get("text", str(value)), option.get("color")
    return None


def formatted(value, unit, decimals):
    if unit == "s":
        return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"
    if unit == "d":
        return f"{value:.0f} days"
    if decimals == 0 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2f}"


def main():
    dashboard_path, url, start, end, namespace, out = sys.argv[1:7]
    start, end = int(start), int(end)
    step = max(5, (end - start) // 300)
    dashboard = json.load(open(dashboard_path))
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(24 * 0.75, rows * UNIT_HEIGHT + 0.8), facecolor=BACKGROUND)
    height = rows * UNIT_HEIGHT + 0.8
    title = (
        f"{dashboard['title']}: namespace {namespace}, "
        f"{datetime.fromtimestamp(start, timezone.utc):%Y-%m-%d %H:%M}"
        f"–{datetime.fromtimestamp(end, timezone.utc):%H:%M} UTC (test bed run)"
    )
    fig.text(0.01, 1 - 0.3 / height, title, color=TEXT, fontsize=14, weight="bold", va="center")

    def axes_for(p, pad=0.08):
        g = p["gridPos"]
        left = g["x"] / 24 + 0.004
        width = g["w"] / 24 - 0.008
        top = 1 - (0.6 + g["y"] * UNIT_HEIGHT) / height
        h = g["h"] * UNIT_HEIGHT / height
        return fig.add_axes([left, top - h + pad * h, width, h * (1 - 2 * pad)])

    for p in panels:
        if p["type"] == "row":
            g = p["gridPos"]
            fig.text(0.005, 1 - (0.6 + (g["y"] + 0.5) * UNIT_HEIGHT) / height, p["title"],
                     color=TEXT, fontsize=12, weight="bold", va="center")
            continue
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        unit, decimals, mappings = defaults.get("unit"), defaults.get("decimals"), defaults.get("mappings")
        series = []
        for t in p["targets"]:
            expr = (t["expr"].replace("$namespace", namespace).replace("$group", ".*")
                    .replace("$__rate_interval", "1m"))
            for r in query_range(url, expr, start, end, step):
                points = [(float(ts), float(v)) for ts, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    series.append((legend(t.get("legendFormat"), r["metric"]), points))
        ax = axes_for(p)
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.set_title(p["title"], color=TEXT, fontsize=10, loc="left")
        ax.tick_params(colors=TEXT, labelsize=7)
        if not series:
            ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if p["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            # The value now, as Grafana's stat shows it: series that ended earlier (an old
            # primary's, a replaced pod's) are not current.
            series = [x for x in series if x[1][-1][0] >= end - 3 * step] or series
            text_mode = p.get("options", {}).get("textMode")
            lines = []
            for i, (name, points) in enumerate(series):
                value = points[-1][1]
                shown = mapped(mappings, value)
                if text_mode == "name":
                    lines.append((name, PALETTE[i % len(PALETTE)]))
                elif shown:
                    lines.append((f"{name}: {shown[0]}", shown[1] or TEXT))
                else:
                    lines.append((f"{name}: {formatted(value, unit, decimals)}", TEXT))
            for i, (line, colour) in enumerate(lines[:6]):
                ax.text(0.5, 0.75 - i * 0.5 / max(1, len(lines[:6]) - 1 or 1), line, color=colour,
                        fontsize=13 if len(lines) == 1 else 10, ha="center", va="center",
                        transform=ax.transAxes, weight="bold")
            continue
        if p["type"] == "state-timeline":
            ax.set_yticks(range(len(series)))
            ax.set_yticklabels([name for name, _ in series], color=TEXT, fontsize=7)
            for i, (_, points) in enumerate(series):
                for (t0, v), (t1, _) in zip(points, points[1:] + [(points[-1][0] + step, 0)]):
                    shown = mapped(mappings, v)
                    colour = (shown[1] if shown and shown[1] else PALETTE[int(v) % len(PALETTE)])
                    colour = {"green": "#73bf69", "red": "#f2495c"}.get(colour, colour)
                    ax.barh(i, t1 - t0, left=t0, height=0.7, color=colour, linewidth=0)
            ax.set_xlim(start, end)
        else:
            for i, (name, points) in enumerate(series):
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], linewidth=1.4, label=name,
                        drawstyle="steps-post" if defaults.get("custom", {}).get("drawStyle") == "bars" else "default")
            ax.set_xlim(start, end)
            ax.grid(color=GRID, linewidth=0.5)
            if unit == "s":
                ax.set_ylabel("seconds", color=TEXT, fontsize=7)
            ax.legend(fontsize=6, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, loc="upper left")
        # Whole minutes, so that the labels are exact.
        first = (start // 60 + 1) * 60
        ticks = list(range(first, end + 1, 60 * max(1, (end - start) // 360)))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{datetime.fromtimestamp(t, timezone.utc):%H:%M}" for t in ticks])
    fig.savefig(out, dpi=80, facecolor=BACKGROUND)


if __name__ == "__main__":
    main()
