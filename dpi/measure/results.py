"""What a measurement produces: one `Measurement` (configuration, per-trial records, summary, claims), written
as JSON (everything, for programs) and CSV (the records, one row each, for spreadsheets and pandas).

Every measurement file says how it was made (command line, profile, versions, start and end times), because a
number without its conditions cannot be compared with the published one it reproduces.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "redweb-measure/1"


@dataclass
class Claim:
    """One published statement checked by a measurement: what the paper says, what the lab showed, agreement.

    `ok` is None when the measurement could not decide (e.g. the strategy was not run).
    """

    behaviour: str  # ID(s) from CENSOR-MODELS.md, e.g. "T21-4"
    statement: str  # the published behaviour, in a few words
    published: str
    measured: str
    ok: bool | None

    @property
    def verdict(self) -> str:
        return {True: "agrees", False: "DIFFERS", None: "not decided"}[self.ok]


@dataclass
class Measurement:
    """A measurement run. `records` are flat dicts (one per trial or sample); `series` holds time series that
    do not fit one row per record (kept in the JSON only)."""

    kind: str  # fetch | goodput | residual | fet | matrix | reproduce-...
    config: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    files: list[str] = field(default_factory=list)  # what was written, relative to the output directory

    def finish(self) -> None:
        self.finished = time.time()

    def to_json(self) -> dict[str, Any]:
        from dpi import __version__
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "redweb": __version__,
            "python": platform.python_version(),
            "kernel": platform.release(),
            "argv": sys.argv,
            "started": _iso(self.started),
            "finished": _iso(self.finished) if self.finished else None,
            "config": self.config,
            "summary": self.summary,
            "claims": [asdict(c) | {"verdict": c.verdict} for c in self.claims],
            "records": self.records,
            "series": self.series,
            "files": self.files,
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: they become null instead of invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def columns(records: Iterable[dict[str, Any]]) -> list[str]:
    """CSV columns: every key, in the order keys first appear (so related columns stay together)."""
    seen: dict[str, None] = {}
    for r in records:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(round(value, 6))
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_clean(value), separators=(",", ":"))
    return str(value)


def write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    cols = columns(records)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in records:
            w.writerow([_cell(r.get(c)) for c in cols])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_clean(data), indent=1, allow_nan=False) + "\n")


def write(m: Measurement, out: Path, stem: str | None = None) -> tuple[Path, Path]:
    """Write `STEM.json` and `STEM.csv` (stem defaults to the kind) into `out`; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or m.kind
    if m.finished is None:
        m.finish()
    jpath, cpath = out / f"{stem}.json", out / f"{stem}.csv"
    for p in (jpath, cpath):
        if p.name not in m.files:
            m.files.append(p.name)
    write_csv(cpath, m.records)
    write_json(jpath, m.to_json())
    return jpath, cpath


def claims_markdown(claims: Sequence[Claim]) -> str:
    """A Markdown table of claims (the README shows these)."""
    lines = ["| behaviour | published | measured in the lab | verdict |", "|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.behaviour}: {c.statement} | {c.published} | {c.measured} | {c.verdict} |")
    return "\n".join(lines)
