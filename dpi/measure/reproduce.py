"""`redweb measure reproduce`: the four reproductions of published measurements, and one summary of them.

    1 tspu-2021  T21-4: a throttled download converges to 130-150 kbit/s while a control download on the same
                 path runs at link speed. T21-1: reddit.com and microsoft.com are throttled by the early `t.co`
                 substring rule and not by the patched list (exact names, the 2 Apr 2021 narrowing).
    2 residual   G-4: after a trigger, new connections on the 3-tuple are reset for the residual window and work
                 after it; other ports of the same server work throughout.
    3 fet        GF-2: the blocked share of fully encrypted connections is ~26.3 % (95 % CI); GF-1: payloads
                 meeting an exemption are never blocked; GF-3: the residual keeps the 3-tuple only.
    4 matrix     every must-evade / must-NOT-evade line of CENSOR-MODELS.md that a client strategy carries out.

Each writes its JSON, CSV and PNG files into its own directory; `summary.md` and `summary.json` collect every
claim with the published value, the measured one and whether they agree. Exit code 0 when every claim agrees,
1 otherwise: a reproduction that does not reproduce is a failure to look at, not a footnote.

`--quick` scales the run down (a 20 s residual window instead of 180 s, 200 FET connections instead of 1000,
a 15 s goodput run) for a first look; the numbers of the full run are the ones to compare with the papers.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpi import demo
from dpi.lab import Lab, LabConfig
from dpi.measure import plots, profiles, results
from dpi.measure.fet import fet_claims, measure_fet
from dpi.measure.goodput import PUBLISHED_KBPS, goodput_claims, measure_goodput
from dpi.measure.matrix import markdown as matrix_markdown
from dpi.measure.matrix import matrix_claims, measure_matrix
from dpi.measure.residual import measure_residual, residual_claims
from dpi.measure.results import Claim, Measurement
from dpi.measure.workloads import run_trial

REPRODUCTIONS: tuple[str, ...] = ("tspu-2021", "residual", "fet", "matrix")

# T21-1: the names of the collateral check, and the list after the 2 Apr 2021 narrowing (exact names; the
# `.twimg.com` suffix had no collateral and stays).
COLLATERAL_NAMES: tuple[str, ...] = ("twitter.com", "www.twitter.com", "t.co", "abs.twimg.com", "reddit.com",
                                     "microsoft.com", "example.org")
PATCHED_LIST: tuple[str, ...] = ("=twitter.com", "=www.twitter.com", "=api.twitter.com", "=mobile.twitter.com",
                                 "=t.co", "*.twimg.com")
COLLATERAL_TIME = 4.0  # seconds per HTTPS fetch: a throttled one is measured over this long
EARLY, PATCHED = "early (Mar 2021, bundled)", "patched (2 Apr 2021, exact names)"


@dataclass(frozen=True)
class Scale:
    goodput_seconds: float
    residual_window: float | None  # None: the bundled profile's own (180 s)
    fet_n: int
    fet_exempt_each: int
    idle_timeout: float | None  # of the matrix's censors; None: the bundled profile's own (T21-6: 600 s)


FULL = Scale(goodput_seconds=30.0, residual_window=None, fet_n=1000, fet_exempt_each=20, idle_timeout=None)
QUICK = Scale(goodput_seconds=15.0, residual_window=20.0, fet_n=200, fet_exempt_each=5, idle_timeout=20.0)


def _fetch_names(profile: str, variant: str, names: Sequence[str], out: Path) -> list[dict[str, Any]]:
    cfg = LabConfig(topo="isp", profile=profile, names=tuple(names), clients=1, workdir=out)
    rows = []
    with Lab(cfg) as lab:
        client = lab.layout.clients[0]
        for name in names:
            t = run_trial(lab, client, name, "https", max_time=COLLATERAL_TIME)
            rows.append(t.record(variant=variant))
    return rows


def collateral(out: Path, say: Callable[[str], None]) -> Measurement:
    """T21-1: the same names under the bundled (early) list and under the patched one."""
    patched = profiles.with_list("tspu-2021", "twitter", PATCHED_LIST, out / "profile-tspu-2021-patched.yaml",
                                 name="tspu-2021-patched",
                                 summary="tspu-2021 after the 2 Apr 2021 narrowing: exact Twitter names",
                                 comment="Measurement variant written by `redweb measure reproduce`: tspu-2021 with "
                                         "the T21-1 list narrowed to exact names (2 Apr 2021).")
    m = Measurement("collateral", config={"names": list(COLLATERAL_NAMES), "early_profile": "tspu-2021",
                                          "patched_profile": str(patched), "patched_list": list(PATCHED_LIST),
                                          "throttled_below_kbps": demo.THROTTLE_BITS / 1000})
    say(f"T21-1: fetching {len(COLLATERAL_NAMES)} names under the early and the patched list")
    m.records += _fetch_names("tspu-2021", EARLY, COLLATERAL_NAMES, out / "lab-early")
    m.records += _fetch_names(str(patched), PATCHED, COLLATERAL_NAMES, out / "lab-patched")
    m.summary = {v: {r["name"]: r["outcome"] for r in m.records if r["variant"] == v} for v in (EARLY, PATCHED)}
    m.finish()
    return m


def collateral_claims(m: Measurement) -> list[Claim]:
    early, patched = m.summary.get(EARLY, {}), m.summary.get(PATCHED, {})

    def show(d: dict[str, str], names: Sequence[str]) -> str:
        return ", ".join(f"{n} {d.get(n, '-')}" for n in names)

    coll = ("reddit.com", "microsoft.com")
    twitter = ("twitter.com", "t.co")
    return [
        Claim("T21-1", "the early `t.co` substring rule throttles reddit.com and microsoft.com (collateral)",
              "throttled", show(early, coll), all(early.get(n) == "throttled" for n in coll)),
        Claim("T21-1", "the patched list (exact names) no longer throttles them", "allowed", show(patched, coll),
              all(patched.get(n) == "allowed" for n in coll)),
        Claim("T21-1", "the patched list still throttles Twitter's own names", "throttled", show(patched, twitter),
              all(patched.get(n) == "throttled" for n in twitter)),
        Claim("T21-1", "a name on neither list is never throttled", "allowed",
              f"early {early.get('example.org', '-')}, patched {patched.get('example.org', '-')}",
              early.get("example.org") == "allowed" and patched.get("example.org") == "allowed"),
    ]


def _write(m: Measurement, out: Path, plot: Callable[[Measurement, Path], Any] | None, stem: str | None = None) -> None:
    stem = stem or m.kind
    if plot is not None:
        plot(m, out / f"{stem}.png")
        m.files.append(f"{stem}.png")
    results.write(m, out, stem)


def run_reproductions(out: Path, *, only: Sequence[str] = REPRODUCTIONS, quick: bool = False,
                      progress: bool = True,
                      say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Measurement:
    """Run the chosen reproductions into `out/<name>/`; returns the summary measurement (all claims)."""
    scale = QUICK if quick else FULL
    summary = Measurement("reproduce", config={"only": list(only), "quick": quick, "scale": scale.__dict__})
    sections: list[tuple[str, list[Claim], list[str], str]] = []  # title, claims, figures, extra markdown
    t0 = time.monotonic()
    if "tspu-2021" in only:
        d = out / "tspu-2021"
        say("== 1/4 TSPU-2021 throttling (T21-1, T21-4)")
        g = measure_goodput("tspu-2021", "twitter.com", "example.org", d, seconds=scale.goodput_seconds,
                            progress=progress, say=say)
        g.claims = goodput_claims(g)
        _write(g, d, plots.goodput)
        c = collateral(d, say)
        c.claims = collateral_claims(c)
        _write(c, d, lambda m, p: plots.collateral(m, p, demo.THROTTLE_BITS / 1000))
        sections.append(("TSPU-2021: Twitter throttling", g.claims + c.claims,
                         ["tspu-2021/goodput.png", "tspu-2021/collateral.png"], ""))
    if "residual" in only:
        d = out / "gfw-residual"
        say("== 2/4 GFW residual blocking (G-4)")
        r = measure_residual("gfw", "www.youtube.com", d, window=scale.residual_window, progress=progress, say=say)
        r.claims = residual_claims(r)
        _write(r, d, plots.residual)
        sections.append(("GFW: residual blocking", r.claims, ["gfw-residual/residual.png"], ""))
    if "fet" in only:
        d = out / "gfw-fet"
        say("== 3/4 GFW fully encrypted traffic (GF-1 .. GF-3)")
        f = measure_fet(d, n=scale.fet_n, exempt_each=scale.fet_exempt_each, progress=progress, say=say)
        f.claims = fet_claims(f)
        _write(f, d, plots.fet)
        sections.append(("GFW-FET: fully encrypted traffic", f.claims, ["gfw-fet/fet.png"], ""))
    if "matrix" in only:
        d = out / "matrix"
        say("== 4/4 evasion matrix (T21-E, T22-E, G-E, H-E, GQ-E)")
        mx = measure_matrix(d, idle_timeout=scale.idle_timeout, progress=progress, say=say)
        mx.claims = matrix_claims(mx)
        _write(mx, d, plots.matrix)
        extra = matrix_markdown(mx)
        if mx.config.get("not_run"):
            extra += "\n\nNot run (not a client strategy in the lab):\n" + "\n".join(
                f"- {n['profile']} {n['behaviour']}: {n['line']} ({n['why']})" for n in mx.config["not_run"])
        sections.append(("Evasion matrix vs CENSOR-MODELS.md", mx.claims, ["matrix/matrix.png"], extra))
    for _title, claims, _figs, _extra in sections:
        summary.claims += claims
    summary.summary = {"claims": len(summary.claims), "agree": sum(1 for c in summary.claims if c.ok),
                       "differ": sum(1 for c in summary.claims if c.ok is False),
                       "minutes": round((time.monotonic() - t0) / 60, 1)}
    summary.finish()
    (out / "summary.md").write_text(summary_markdown(sections, summary, quick))
    results.write_json(out / "summary.json", summary.to_json())
    return summary


def summary_markdown(sections: Sequence[tuple[str, list[Claim], list[str], str]], summary: Measurement,
                     quick: bool) -> str:
    s = summary.summary
    lines = [f"# RedWeb reproductions{' (quick run: scaled down)' if quick else ''}", "",
             (f"{s['agree']} of {s['claims']} claims agree with the published measurements "
              f"({s['minutes']} min)."), ""]
    for title, claims, figs, extra in sections:
        lines += [f"## {title}", "", results.claims_markdown(claims), ""]
        lines += [f"Figure: `{f}`" for f in figs] + [""]
        if extra:
            lines += [extra, ""]
    return "\n".join(lines)


__all__ = [
    "FULL",
    "PUBLISHED_KBPS",
    "QUICK",
    "REPRODUCTIONS",
    "collateral",
    "collateral_claims",
    "run_reproductions",
]
