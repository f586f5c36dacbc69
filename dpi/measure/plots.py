"""Figures of the measurements (matplotlib, Agg backend: no display needed, same PNG on every machine).

One function per measurement kind, each taking the `Measurement` and a path and writing one PNG. Every figure
names its axes with units, carries a legend, and marks the published value it is compared with, so the picture
can be read without the JSON next to it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from dpi.measure import stats
from dpi.measure.results import Measurement

DPI = 110
COLOURS = {"allowed": "#2ca02c", "open": "#2ca02c", "ok": "#2ca02c", "reset": "#d62728", "timeout": "#9467bd",
           "blocked": "#d62728", "no-connect": "#9467bd", "throttled": "#ff7f0e", "frozen": "#8c564b",
           "poisoned": "#e377c2", "error": "#7f7f7f", "skipped": "#c7c7c7", "not run": "#c7c7c7"}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def goodput(m: Measurement, path: Path, published: tuple[float, float] = (130.0, 150.0)) -> Path:
    """Throttled vs control over time: both on a log scale (top), the throttled one alone, linear, against the
    configured policer and the published band (bottom)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [1, 1]})
    styles = {"throttled": "#d62728", "control": "#1f77b4"}
    for label, s in m.series.items():
        interval = float(s["interval"])
        kbps = stats.series_kbps(s["bins"], interval)
        t = [(i + 1) * interval for i in range(len(kbps))]
        avg = stats.moving_average(kbps, max(1, round(1.0 / interval)))
        colour = styles.get(label, None)
        name = m.summary.get(label, {}).get("url", label).split("/")[2]
        top.plot(t, [max(v, 1e-3) for v in avg], color=colour, lw=1.8, label=f"{label}: {name} (1-s average)")
        if label == "throttled":
            bottom.step(t, kbps, where="post", color=colour, lw=0.6, alpha=0.45,
                        label=f"{name}, per {interval * 1000:.0f} ms")
            bottom.plot(t, avg, color=colour, lw=2.0, label=f"{name}, 1-s average")
            g = m.summary.get(label, {})
            if g.get("steady_kbps"):
                bottom.axhline(g["steady_kbps"], color="black", lw=1.2, ls=":",
                               label=f"measured steady {g['steady_kbps']:.0f} kbit/s (from {g['steady_from_s']:g} s)")
    for pol in m.config.get("policers", [])[:1]:
        for ax in (top, bottom):
            ax.axhline(pol["rate_kbps"], color="black", lw=1, ls="--",
                       label=f"policer rate {pol['rate_kbps']:.0f} kbit/s, bucket {pol['burst_bytes'] // 1024} KB"
                       if ax is bottom else None)
    bottom.axhspan(*published, color="#ffbb78", alpha=0.35, label=f"published {published[0]:.0f}-{published[1]:.0f} "
                   "kbit/s (T21-4)")
    top.set_yscale("log")
    top.set_ylabel("goodput (kbit/s, log scale)")
    top.set_title(f"T21-4: throttled vs control download through `{m.config.get('profile')}`")
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="center right", fontsize=8)
    bottom.set_ylabel("goodput (kbit/s)")
    bottom.set_xlabel("time since both downloads started (s)")
    bottom.set_ylim(0, max(published[1] * 3, bottom.get_ylim()[1] * 0.6))
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def residual(m: Measurement, path: Path) -> Path:
    """Outcome of each probe connection against seconds since the trigger: the same 3-tuple, another port of
    the same server, and the configured window."""
    rows = m.config.get("probe_labels") or sorted({r["probe"] for r in m.records})
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.9 * len(rows)))
    seen: set[str] = set()
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i  # the first probe row on top
        for r in (r for r in m.records if r["probe"] == row and r.get("t") is not None):
            o = r["outcome"]
            ax.scatter(r["t"], y, marker="o" if o == "allowed" else "x", s=36, color=COLOURS.get(o, "#7f7f7f"),
                       label=o if o not in seen else None, zorder=3)
            seen.add(o)
    window = m.config.get("window")
    if window:
        ax.axvspan(0, window, color="#d62728", alpha=0.08, label=f"configured residual window ({window:g} s)")
        ax.axvline(window, color="#d62728", lw=1, ls="--")
    ax.axvline(0, color="black", lw=1.2, label="trigger (blocked name fetched)")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(rows)[::-1], fontsize=9)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("seconds since the trigger")
    scaled = " (window scaled for the run)" if m.config.get("run_profile") != m.config.get("profile") else ""
    ax.set_title(f"G-4 residual blocking after a trigger: `{m.config.get('profile')}`{scaled}, "
                 f"trigger https://{m.config.get('name')}/, probes with SNI/Host {m.config.get('control')}",
                 fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3 if len(rows) < 3 else -0.2), ncol=4, fontsize=8)
    return _save(fig, path)


def fet(m: Measurement, path: Path, published: float = 0.263) -> Path:
    """Blocked share per payload group with 95 % Wilson intervals, against GF-2's 26.3 %."""
    groups = m.summary.get("groups", [])
    labels = [g["label"] for g in groups]
    values = [g["blocked_share"] * 100 for g in groups]
    lows = [max(0.0, (g["blocked_share"] - g["ci_low"]) * 100) for g in groups]
    highs = [max(0.0, (g["ci_high"] - g["blocked_share"]) * 100) for g in groups]
    colours = ["#d62728" if g["group"] == "random" else "#1f77b4" if g["group"] == "control" else "#2ca02c"
               for g in groups]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(groups)))
    y = list(range(len(groups)))[::-1]
    ax.barh(y, values, xerr=[lows, highs], color=colours, alpha=0.85, capsize=3, height=0.6)
    ax.scatter(values, y, color=colours, s=18, zorder=3)  # a 0 % bar has no width: the dot still shows it
    for yi, g in zip(y, groups):
        ax.text(min(g["ci_high"] * 100 + 1.5, 90), yi, f"{g['blocked']}/{g['n']} blocked", va="center", fontsize=8)
    ax.axvline(published * 100, color="black", ls="--", lw=1.2, label=f"GF-2 published {published * 100:.1f} %")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("connections blocked (%), bars: 95 % Wilson CI")
    ax.set_title("GF-1/GF-2: blocked share of first payloads (random vs exempt; listed vs unlisted server)")
    ax.legend(handles=[Patch(color="#d62728", label="random payload, listed server"),
                       Patch(color="#2ca02c", label="exempt payload (Ex1-Ex5), listed server"),
                       Patch(color="#1f77b4", label="random payload, unlisted server"),
                       ax.get_legend_handles_labels()[0][0]], loc="center right", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def outcome_grid(rows: Sequence[str], cols: Sequence[str], cells: dict[tuple[str, str], tuple[str, str]],
                 path: Path, title: str, xlabel: str = "", ylabel: str = "",
                 marks: dict[tuple[str, str], str] | None = None) -> Path:
    """A table of coloured cells: `cells[(row, col)] = (outcome, text)`; `marks` adds a corner symbol."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.9 * len(cols), 0.9 + 0.42 * len(rows)))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            outcome, text = cells.get((r, c), ("", ""))
            colour = COLOURS.get(outcome, "#ffffff")
            ax.add_patch(plt.Rectangle((j, len(rows) - 1 - i), 1, 1, facecolor=colour, alpha=0.55 if outcome else 1,
                                       edgecolor="white", lw=2))
            ax.text(j + 0.5, len(rows) - 0.5 - i, text, ha="center", va="center", fontsize=7.5)
            if marks and (r, c) in marks:
                ax.text(j + 0.95, len(rows) - 0.12 - i, marks[(r, c)], ha="right", va="top", fontsize=9,
                        fontweight="bold")
    ax.set_xlim(0, len(cols))
    ax.set_ylim(0, len(rows))
    ax.set_xticks([j + 0.5 for j in range(len(cols))])
    ax.set_xticklabels(cols, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([len(rows) - 0.5 - i for i in range(len(rows))])
    ax.set_yticklabels(rows, fontsize=8)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(title, pad=24, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    used = sorted({o for o, _ in cells.values() if o})
    ax.legend(handles=[Patch(color=COLOURS.get(o, "#ffffff"), alpha=0.55, label=o) for o in used],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(6, max(1, len(used))), fontsize=8)
    return _save(fig, path)


def fetch(m: Measurement, path: Path) -> Path:
    """Names x workloads, each cell the majority outcome and the counts."""
    cells_in = m.summary.get("cells", [])
    names = list(dict.fromkeys(c["name"] for c in cells_in))
    workloads = list(dict.fromkeys(c["workload"] for c in cells_in))
    cells = {}
    for c in cells_in:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(c["outcomes"].items(), key=lambda kv: -kv[1]))
        if c.get("throttled_kbps_median") is not None:
            counts += f"\n(median {c['throttled_kbps_median']:.0f} kbit/s)"
        cells[(c["name"], c["workload"])] = (c["majority"], counts)
    strategy = m.config.get("strategy")
    title = f"Outcomes through `{m.config.get('profile') or 'no censor'}`" + (
        f" with strategy {strategy}" if strategy else "") + f" ({m.config.get('repeat', 1)} repeat(s))"
    return outcome_grid(names, workloads, cells, path, title, xlabel="", ylabel="name (cell: outcome and count)")


def collateral(m: Measurement, path: Path, throttle_kbps: float) -> Path:
    """Measured HTTPS rate per name under each profile variant (log scale), with the throttled threshold."""
    variants = list(dict.fromkeys(r["variant"] for r in m.records))
    names = list(dict.fromkeys(r["name"] for r in m.records))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(1, len(variants))
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    for k, v in enumerate(variants):
        xs, ys = [], []
        for i, n in enumerate(names):
            rec = next((r for r in m.records if r["variant"] == v and r["name"] == n), None)
            if rec is None:
                continue
            xs.append(i + (k - (len(variants) - 1) / 2) * width)
            ys.append(max(float(rec.get("kbps") or 0.0), 1.0))
        ax.bar(xs, ys, width=width * 0.95, color=palette[k % len(palette)], label=v)
        for x, y in zip(xs, ys):
            text = f"{y:.0f}" if y < 10_000 else f"{y / 1000:.0f} M"
            ax.text(x, y * 1.15, text, ha="center", va="bottom", fontsize=7)
    ax.set_ylim(10, max([r.get("kbps") or 1.0 for r in m.records] + [throttle_kbps]) * 6)
    ax.axhline(throttle_kbps, color="black", ls="--", lw=1,
               label=f"'throttled' below {throttle_kbps / 1000:.0f} Mbit/s")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=9)
    ax.set_ylabel("HTTPS download rate (kbit/s, log scale)")
    ax.set_xlabel("name in the SNI (bar labels: kbit/s; M = Mbit/s)")
    ax.set_title("T21-1: which names the Twitter rule throttles, before and after the 2 Apr 2021 narrowing")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def matrix(m: Measurement, path: Path) -> Path:
    """Strategies x profiles: colour = observed outcome, text = observed and published, mark = agreement."""
    from dpi.measure.matrix import row_label, rows_in_order
    profiles = list(m.config.get("profiles", []))
    rows = rows_in_order(m.records)
    cells: dict[tuple[str, str], tuple[str, str]] = {}
    marks: dict[tuple[str, str], str] = {}
    for r in m.records:
        label = row_label(r)
        text = r["outcome"] + (f"\n(published: {r['published']})" if r["published"] else "")
        cells[(label, r["profile"])] = (r["outcome"], text)
        if r["agrees"] is not None:
            marks[(label, r["profile"])] = "\u2713" if r["agrees"] else "\u2717"
    s = m.summary
    title = (f"Evasion matrix: observed outcome (colour) vs CENSOR-MODELS.md (text); "
             f"{s.get('agree', 0)} of {len(marks)} judged cells agree")
    return outcome_grid(rows, profiles, cells, path, title, marks=marks)
