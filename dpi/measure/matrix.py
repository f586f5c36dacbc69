"""The evasion matrix: strategies x profiles, each cell the observed outcome next to the published one.

For every profile of `published.SETUPS` one lab runs the bundled profile; the blocked name (`twitter.com`, on
every list used here) is fetched with `redweb probe --strategy S` for:

    baseline   `none` per transport: must show the profile's blocking (throttled / reset / timeout)
    control    `none` to the allowed name: must be `ok` (the lab itself works)
    published  every "Must evade" / "Must NOT evade" line of CENSOR-MODELS.md for that profile
    extra      (--cells all) every other strategy of the catalogue with its defaults: observed only

Every cell runs from a client host of its own: residual blocking (G-4, GQ-2) is keyed on the client address, so
no cell inherits the residual left by the baseline's block. Server-side strategies get their helper on the
server host for their cell only (the window clamp applies to that cell's client address only).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpi.lab import Lab, LabConfig
from dpi.measure.profiles import with_idle_timeout
from dpi.measure import published as pub
from dpi.measure.progress import Progress
from dpi.measure.results import Claim, Measurement
from dpi.measure.workloads import PROBE_TIMEOUT, probe_trial, strategy_helper


@dataclass(frozen=True)
class Cell:
    profile: str
    strategy: str
    args: tuple[str, ...]
    transport: str  # tls | quic
    name: str
    kind: str  # baseline | control | published | extra
    expectation: pub.Expectation | None = None

    @property
    def label(self) -> str:
        text = self.strategy + (f" {' '.join(self.args)}" if self.args else "")
        if self.kind == "control":
            text += f" ({self.name})"
        if self.strategy == "none" or self.kind == "extra":
            text += " [quic]" if self.transport == "quic" and not self.strategy.startswith("quic") else ""
        return text


def idle_wait_seconds(idle_timeout: float) -> int:
    """How long the idle-wait cell stays silent against a censor forgetting flows after `idle_timeout` s."""
    return int(idle_timeout + max(2.0, idle_timeout / 4) + 0.999)


def plan(profile: str, cells: str = "published", idle_timeout: float | None = None) -> list[Cell]:
    """The cells of one profile's column (see the module docstring). `idle_timeout`: the lab's censor forgets
    idle flows after that many seconds (a scaled-down T21-6), so the idle-wait cell waits just past it."""
    if profile not in pub.SETUPS:
        raise ValueError(f"no published evasion lines for profile {profile!r}: one of {', '.join(pub.SETUPS)}")
    setup = pub.SETUPS[profile]
    out: list[Cell] = []
    for transport in setup.baseline:
        out.append(Cell(profile, "none", (), transport, pub.BLOCKED_NAME, "baseline"))
        if transport not in setup.no_control:
            out.append(Cell(profile, "none", (), transport, pub.ALLOWED_NAME, "control"))
    for e in pub.expectations_for(profile):
        args = e.args
        if e.strategy == "idle-wait" and idle_timeout is not None:
            args = (f"seconds={idle_wait_seconds(idle_timeout)}",)
        out.append(Cell(profile, e.strategy, args, e.transport, pub.BLOCKED_NAME, "published", e))
    if cells == "all":
        from dpi.strategies import CATALOGUE
        covered = {(c.strategy, c.transport) for c in out}
        for name, cls in CATALOGUE.items():
            transport = "quic" if cls.transport == "quic" else "tls"
            if name != "none" and (name, transport) not in covered:
                out.append(Cell(profile, name, (), transport, pub.BLOCKED_NAME, "extra"))
    elif cells != "published":
        raise ValueError("cells: 'published' or 'all'")
    return out


def _raw_outcome(trial_outcome: str, doc: dict[str, Any]) -> str:
    """The probe's own vocabulary (ok, reset, timeout, throttled, error), as CENSOR-MODELS.md is compared in."""
    raw = doc.get("outcome")
    if isinstance(raw, str) and raw:
        return raw
    return "ok" if trial_outcome == "allowed" else trial_outcome


def run_profile(profile: str, cells: Sequence[Cell], out: Path, *, topo: str = "isp",
                timeout: float = PROBE_TIMEOUT, idle_timeout: float | None = None, bar: Progress | None = None,
                say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[dict[str, Any]]:
    """One lab with `profile` (with its idle timeout scaled to `idle_timeout` if given), one client per cell;
    a record per cell."""
    setup = pub.SETUPS[profile]
    run = profile
    if idle_timeout is not None:
        run = str(with_idle_timeout(profile, idle_timeout, out / f"profile-{profile}-idle.yaml"))
    cfg = LabConfig(topo=topo, profile=run, names=(pub.ALLOWED_NAME, pub.BLOCKED_NAME), clients=len(cells),
                    workdir=out / f"lab-{profile}")
    records: list[dict[str, Any]] = []
    with Lab(cfg) as lab:
        clients = lab.layout.clients
        for c in clients:
            for sysctl in setup.client_sysctls:
                lab.run(c, ["sysctl", "-qw", sysctl], timeout=10)
        say(f"lab up: censor {profile}, {len(cells)} cells, one client each")
        for cell, client in zip(cells, clients):
            caddr = lab.layout.node_addrs[client][0]
            with strategy_helper(lab, cell.strategy, cell.args, [f"{caddr}/32"],
                                 lab.workdir / f"helper-{client}.log"):
                trial, doc = probe_trial(lab, client, cell.name, cell.strategy, strategy_args=cell.args,
                                         quic=cell.transport == "quic", timeout=timeout)
            raw = _raw_outcome(trial.outcome, doc)
            e = cell.expectation
            if cell.kind == "baseline":
                expected, agree = setup.baseline[cell.transport], raw == setup.baseline[cell.transport]
            elif cell.kind == "control":
                expected, agree = "ok", raw == "ok"
            elif e is not None:
                expected, agree = e.published, pub.agrees(e.evades, raw)
            else:
                expected, agree = "", None
            records.append({"profile": profile, "strategy": cell.strategy, "args": " ".join(cell.args),
                            "label": cell.label, "transport": cell.transport, "name": cell.name, "kind": cell.kind,
                            "client": client, "outcome": raw, "reason": trial.detail,
                            "goodput_kbps": trial.kbps, "published": expected,
                            "behaviour": e.behaviour if e else "", "line": e.line if e else "", "agrees": agree,
                            "local": doc.get("local"), "server_rejected": doc.get("server_rejected")})
            if bar is not None:
                bar.update(1, f"{profile} {cell.label}: {raw}")
    return records


def measure_matrix(out: Path, *, profiles: Sequence[str] | None = None, cells: str = "published",
                   topo: str = "isp", timeout: float = PROBE_TIMEOUT, idle_timeout: float | None = None,
                   progress: bool = True,
                   say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Measurement:
    """The matrix of `profiles`. `idle_timeout`: run every profile with its idle timeout scaled to that many
    seconds (T21-6's 10 minutes would make the idle-wait cell a 10-minute wait); None: as published."""
    chosen = list(profiles or pub.SETUPS)
    plans = {p: plan(p, cells, idle_timeout) for p in chosen}
    m = Measurement("matrix", config={"profiles": chosen, "cells": cells, "topo": topo, "timeout": timeout,
                                      "idle_timeout": idle_timeout,
                                      "blocked_name": pub.BLOCKED_NAME, "allowed_name": pub.ALLOWED_NAME,
                                      "not_run": [{"profile": p, "behaviour": b, "line": ln, "why": why}
                                                  for p, b, ln, why in pub.NOT_RUN if p in chosen]})
    bar = Progress(sum(len(c) for c in plans.values()), "matrix", enabled=progress)
    for p in chosen:
        m.records += run_profile(p, plans[p], out, topo=topo, timeout=timeout, idle_timeout=idle_timeout, bar=bar,
                                 say=say)
    bar.close()
    summarise(m)
    m.finish()
    return m


def summarise(m: Measurement) -> None:
    judged = [r for r in m.records if r["kind"] in ("baseline", "control", "published")]
    m.summary = {
        "cells": len(m.records),
        "published_lines": sum(1 for r in m.records if r["kind"] == "published"),
        "agree": sum(1 for r in judged if r["agrees"] is True),
        "differ": [f"{r['profile']}: {r['label']} ({r['transport']}) observed {r['outcome']}, published "
                   f"{r['published']}" for r in judged if r["agrees"] is False],
        "undecided": [f"{r['profile']}: {r['label']} ({r['transport']}): {r['outcome']} {r['reason']}".strip()
                      for r in judged if r["agrees"] is None],
    }


def matrix_claims(m: Measurement) -> list[Claim]:
    claims = []
    for kind, statement in (("baseline", "without a strategy the blocked name is blocked (each profile)"),
                            ("control", "the allowed name is fetched (each profile)")):
        rows = [r for r in m.records if r["kind"] == kind]
        bad = [f"{r['profile']} {r['transport']}: {r['outcome']}" for r in rows if r["agrees"] is not True]
        claims.append(Claim("baselines", statement, "blocked" if kind == "baseline" else "ok",
                            f"{len(rows) - len(bad)}/{len(rows)} as expected" + (f" ({'; '.join(bad)})" if bad else ""),
                            bool(rows) and not bad))
    rows = [r for r in m.records if r["kind"] == "published"]
    ok = sum(1 for r in rows if r["agrees"] is True)
    bad = [f"{r['profile']}: {r['label']} -> {r['outcome']}" for r in rows if r["agrees"] is not True]
    claims.append(Claim("T21-E, T22-E, G-E, H-E, GQ-E", "every must-evade / must-NOT-evade line run in the lab",
                        f"{len(rows)} lines", f"{ok}/{len(rows)} agree" + (f"; differ: {'; '.join(bad)}" if bad else ""),
                        bool(rows) and not bad))
    return claims


KIND_ORDER = {"baseline": 0, "control": 1, "published": 2, "extra": 3}


def row_label(r: dict[str, Any]) -> str:
    """A record's row in the matrix: the strategy and its arguments ([quic] for `none` over QUIC)."""
    return str(r["label"]) + (" [quic]" if r["transport"] == "quic" and "[quic]" not in r["label"]
                              and not r["strategy"].startswith("quic") else "")


def rows_in_order(records: Sequence[dict[str, Any]]) -> list[str]:
    """Row labels: baselines and controls first, then the published lines, then the rest, each in run order."""
    first: dict[str, tuple[int, int]] = {}
    for i, r in enumerate(records):
        label = row_label(r)
        rank = (KIND_ORDER.get(str(r.get("kind")), 9), i)
        first[label] = min(first.get(label, rank), rank)
    return sorted(first, key=lambda k: first[k])


def markdown(m: Measurement) -> str:
    """strategies x profiles as a Markdown table: `observed (published)` with a mark."""
    profiles = list(m.config.get("profiles", []))
    rows: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in rows_in_order(m.records)}
    for r in m.records:
        rows[row_label(r)][r["profile"]] = r
    lines = ["| strategy | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
    for label, by_profile in rows.items():
        cells = []
        for p in profiles:
            r = by_profile.get(p)
            if r is None:
                cells.append("")
                continue
            mark = {True: " ✓", False: " ✗", None: ""}[r["agrees"]]
            pubtext = f" ({r['published']})" if r["published"] else ""
            cells.append(f"{r['outcome']}{pubtext}{mark}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
