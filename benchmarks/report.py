"""Writing a suite run: raw figures as JSON, tables as Markdown, plots as PNG.

A run record (built by :mod:`benchmarks.suite`) is ``{"command", "date", "device", "versions",
"host", "benchmarks": [section, ...]}``; a section is a benchmark's result (see the contract in
:mod:`benchmarks.suite`) plus ``name``, ``status`` ("ok" | "skipped"), ``reason`` and
``seconds``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from benchmarks.common import WIDE_SPREAD

FILES = {"json": "results.json", "markdown": "results.md", "png": "results.png"}
NOISY_MARK = " (!)"


def columns(spec: list) -> list[tuple[str, str]]:
    """Table columns as (row key, header); an entry may be a key or a [key, header] pair."""
    out = []
    for item in spec:
        if isinstance(item, str):
            out.append((item, item))
        else:
            key, header = item
            out.append((str(key), str(header)))
    return out


def format_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if key.endswith("err"):
            return f"{value:.1e}"
        magnitude = abs(value)
        return (f"{value:.0f}" if magnitude >= 1000 else f"{value:.1f}" if magnitude >= 10
                else f"{value:.2f}" if magnitude >= 0.01 or value == 0 else f"{value:.1e}")
    return str(value)


def markdown_table(rows: list[dict], spec: list) -> list[str]:
    """Markdown table lines; skipped rows show their reason after the label columns, and a
    spread above ``WIDE_SPREAD`` is marked ``(!)``."""
    cols = columns(spec)
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [format_value(k, row.get(k)).replace("|", "/") for k, _ in cols]
        if row.get("spread") is not None and row["spread"] > WIDE_SPREAD and "spread" in dict(cols):
            i = [k for k, _ in cols].index("spread")
            cells[i] += NOISY_MARK
        if "skipped" in row:
            empty = [i for i, (k, _) in enumerate(cols) if row.get(k) is None]
            text = "skipped: " + str(row["skipped"]).replace("|", "/")
            cells[empty[0] if empty else -1] = text
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def section_markdown(section: dict) -> list[str]:
    lines = [f"## {section['name']}", ""]
    if section["status"] != "ok":
        return lines + [f"skipped: {section['reason']}", ""]
    lines += [f"- {note}" for note in section.get("notes", [])]
    noisy = sum(1 for r in section["rows"] if (r.get("spread") or 0) > WIDE_SPREAD)
    if noisy:
        lines.append(f"- warning: {noisy} figure(s) with (max-min)/median > {WIDE_SPREAD} "
                     f"marked {NOISY_MARK.strip()}: the machine was busy, compare ratios only")
    return lines + [""] + markdown_table(section["rows"], section["table_columns"]) + [""]


def markdown(record: dict) -> str:
    head = [f"# jaxgen benchmarks: {', '.join(s['name'] for s in record['benchmarks'])}", "",
            f"- command: `{record['command']}`", f"- date: {record['date']}",
            f"- device: {record['device']}", f"- host: {record['host']}",
            "- versions: " + ", ".join(f"{k} {v or 'not installed'}"
                                       for k, v in record["versions"].items()), ""]
    body = [line for s in record["benchmarks"] for line in section_markdown(s)]
    return "\n".join(head + body) + "\n"


def _panels(section: dict) -> list[dict]:
    plot = section.get("plot") or {}
    return list(plot.get("panels", [plot] if "x" in plot else []))


def _series(rows: list[dict], panel: dict) -> dict[str, list[tuple[float, float]]]:
    where = panel.get("where", {})
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if any(r.get(k) != v for k, v in where.items()):
            continue
        x, y = r.get(panel["x"]), r.get(panel["y"])
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(y, bool):
            out.setdefault(str(r.get(panel.get("series", ""), panel["y"])), []).append((x, y))
    return {k: sorted(v) for k, v in out.items()}


def _one_point_each(series: dict[str, list[tuple[float, float]]]) -> bool:
    """Whether every series is one point at one shared x (a quick run of one size): a line
    plot of that is a scatter of dots; bars compare it."""
    return bool(series) and all(len(p) == 1 for p in series.values()) and \
        len({p[0][0] for p in series.values()}) == 1


def _draw_bars(ax: Any, series: dict[str, list[tuple[float, float]]], panel: dict) -> str:
    """One labelled bar per series (log y where the panel asks); returns the title's suffix
    naming the shared x."""
    labels = sorted(series)
    values = [series[k][0][1] for k in labels]
    bars = ax.bar(range(len(labels)), values, color=[f"C{i % 10}" for i in range(len(labels))])
    ax.bar_label(bars, labels=[format_value("", v) for v in values], fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    if panel.get("logy"):
        ax.set_yscale("log")
    x = series[labels[0]][0][0]
    return f" ({panel.get('xlabel', panel['x'])} = {format_value('', x)})"


def write_png(path: str, record: dict) -> None:
    """One subplot per plot panel of every benchmark that ran; a note when there is none."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s["name"], p, s["rows"]) for s in record["benchmarks"] if s["status"] == "ok"
              for p in _panels(s)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4.5),
                             squeeze=False)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no benchmark produced plot data", ha="center", va="center")
        axes[0][0].set_axis_off()
    for ax, (name, panel, rows) in zip(axes[0], panels):
        series = _series(rows, panel)
        title = f"{name}: {panel.get('title', '')}"
        if _one_point_each(series):
            title += _draw_bars(ax, series, panel)
        else:
            for label, points in sorted(series.items()):
                ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
            if panel.get("logx") and series:
                ax.set_xscale("log", base=2)
            if panel.get("logy") and series:
                ax.set_yscale("log")
            ax.set_xlabel(panel.get("xlabel", panel["x"]))
            if series:
                ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(panel.get("ylabel", panel["y"]))
        ax.grid(True, alpha=0.3)
        if not series:
            ax.text(0.5, 0.5, "no timed rows", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(out_dir: str, record: dict) -> dict[str, str]:
    """Writes results.json, results.md and results.png into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, name) for kind, name in FILES.items()}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=str)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown(record))
    write_png(paths["png"], record)
    return paths
