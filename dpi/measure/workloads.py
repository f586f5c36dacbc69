"""Workloads through a lab: one trial = one real client program fetching one name one way.

    dns     dig at the lab resolver                      -> allowed | poisoned | timeout
    http    curl http://NAME/bytes/N                     -> allowed | reset | timeout | throttled | frozen
    https   curl https://NAME/bytes/N                    -> the same
    quic    the lab's aioquic HTTP/3 client              -> allowed | timeout | frozen | throttled | error
    bulk    curl https://NAME/bytes/BIG for a goodput    -> the same as https, with the rate measured longer
    probe   `redweb probe --strategy S` (an evasion)     -> allowed | reset | timeout | throttled | error
            (with --strategy, the https and quic workloads are fetched this way)

Outcomes are classified by `dpi.demo`'s classifiers (curl exit codes and measured speed, the QUIC client's
result, the DNS answer against the lab's real address), so `redweb demo` and `redweb measure` name the same
thing the same way. `measure_fetch` repeats the trials and writes one record per trial.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpi import demo
from dpi.lab import Lab, LabConfig
from dpi.measure.hostprocs import python_module, running
from dpi.measure.progress import Progress
from dpi.measure.results import Measurement

WORKLOADS: tuple[str, ...] = ("dns", "http", "quic", "https", "bulk")  # QUIC before HTTPS, as the demo: a TCP
# residual on port 443 must not be what the QUIC column shows
DEFAULT_WORKLOADS: tuple[str, ...] = ("dns", "http", "quic", "https")
BULK_BYTES = 50_000_000
BULK_TIME = 10.0
PROBE_TIMEOUT = 4.0  # seconds: a blackholed probe (T22-2, GQ-2) costs this much; a throttled one shows its rate
PROBE_DOWNLOAD = 1_000_000
BLOCKED = frozenset({"reset", "timeout", "throttled", "frozen", "poisoned"})
PROBE_OUTCOMES = {"ok": "allowed", "reset": "reset", "timeout": "timeout", "throttled": "throttled",
                  "error": "error", "frozen": "frozen"}


@dataclass(frozen=True)
class Trial:
    name: str
    workload: str
    outcome: str  # demo.Outcome.kind
    detail: str
    rc: int | None = None
    bytes: int | None = None
    kbps: float | None = None  # measured transfer rate, kbit/s
    seconds: float | None = None
    strategy: str = ""

    def record(self, **extra: Any) -> dict[str, Any]:
        return {**extra, "name": self.name, "workload": self.workload, "strategy": self.strategy,
                "outcome": self.outcome, "detail": self.detail, "rc": self.rc, "bytes": self.bytes,
                "kbps": None if self.kbps is None else round(self.kbps, 3), "seconds":
                None if self.seconds is None else round(self.seconds, 4)}


classify_curl = demo.classify_curl


def _curl_trial(lab: Lab, client: str, name: str, workload: str, url: str, max_time: float,
                addr: str | None = None, throttle_bits: float = demo.THROTTLE_BITS) -> Trial:
    r = lab.curl(client, url, addr=addr, max_time=max_time, connect_timeout=demo.CONNECT_TIMEOUT,
                 stall_seconds=demo.STALL_TIME)
    o = classify_curl(r, throttle_bits)
    return Trial(name, workload, o.kind, o.detail, r.rc, r.size, r.speed_bps * 8 / 1000, r.seconds)


def run_trial(lab: Lab, client: str, name: str, workload: str, *, addr: str | None = None,
              body_bytes: int = demo.BODY_BYTES, bulk_bytes: int = BULK_BYTES, max_time: float = demo.MAX_TIME,
              bulk_time: float = BULK_TIME) -> Trial:
    """One trial of `workload` for `name` from `client` (to `addr` instead of the name's address if given)."""
    if workload == "dns":
        r = lab.dig(client, name)
        o = demo.classify_dns(r, lab.addr(name))
        return Trial(name, workload, o.kind, o.detail, r.rc)
    if workload == "http":
        return _curl_trial(lab, client, name, workload, f"http://{name}/bytes/{body_bytes}", max_time, addr)
    if workload == "https":
        return _curl_trial(lab, client, name, workload, f"https://{name}/bytes/{body_bytes}", max_time, addr)
    if workload == "bulk":
        return _curl_trial(lab, client, name, workload, f"https://{name}/bytes/{bulk_bytes}", bulk_time, addr)
    if workload == "quic":
        t0 = time.monotonic()
        res = lab.h3(client, f"https://{name}/bytes/{demo.QUIC_BODY_BYTES}", addr=addr, timeout=demo.QUIC_TIMEOUT)
        o = demo.classify_quic(res)
        speed = float(res.get("speed_bps") or 0.0)
        return Trial(name, workload, o.kind, o.detail, int(res.get("rc", 1)), int(res.get("bytes") or 0),
                     speed * 8 / 1000, time.monotonic() - t0)
    raise ValueError(f"unknown workload {workload!r}: one of {', '.join(WORKLOADS)}")


# ------------------------------------------------------------------------------------------ evasion probe

def probe_argv(lab: Lab, name: str, addr: str, strategy: str, *, url: str | None = None,
               strategy_args: Sequence[str] = (), port: int = 443, timeout: float = PROBE_TIMEOUT,
               download: int | None = PROBE_DOWNLOAD, quic: bool = False) -> list[str]:
    """`redweb probe` (dpi/probe.py, run as `python -m dpi.probe`) as run on a lab client host.

    `--download N` is what lets the probe tell `throttled` from `ok` (T21-4): N body bytes at link speed take
    milliseconds, at ~140 kbit/s they do not finish within the timeout."""
    target = url or (f"https://{name}/bytes/{download}" if download else f"https://{name}/")
    argv = [sys.executable, "-m", "dpi.probe", "--strategy", strategy, target,
            "--resolve", f"{name}:{port}:{addr}", "--cacert", str(lab.ca), "--json", "--timeout", f"{timeout:g}"]
    if download:
        argv += ["--download", str(download)]
    if quic:
        argv.append("--quic")
    for a in strategy_args:
        argv += ["--strategy-arg", a]
    return argv


def parse_probe_output(stdout: str, stderr: str, rc: int) -> tuple[str, str, dict[str, Any]]:
    """(outcome, detail, the probe's JSON) from `redweb probe --json` output; never raises."""
    doc: dict[str, Any] = {}
    for line in reversed(stdout.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "outcome" in obj:
            doc = obj
            break
    if not doc:
        err = (stderr.strip().splitlines() or [f"exit {rc}, no JSON"])[-1]
        return "error", err[:120], {}
    outcome = PROBE_OUTCOMES.get(str(doc.get("outcome")), "error")
    detail = str(doc.get("reason") or "")
    if outcome == "throttled" and isinstance(doc.get("goodput_kbps"), (int, float)):
        detail = f"{float(doc['goodput_kbps']):.0f} kbit/s"
    return outcome, detail[:160], doc


def probe_trial(lab: Lab, client: str, name: str, strategy: str, *, addr: str | None = None,
                url: str | None = None, strategy_args: Sequence[str] = (), timeout: float = PROBE_TIMEOUT,
                download: int | None = PROBE_DOWNLOAD, quic: bool = False) -> tuple[Trial, dict[str, Any]]:
    """One fetch with an evasion strategy through `redweb probe` on the client host: the trial, and the probe's
    own JSON result (reason, timings, the client address and port it used)."""
    from dpi.strategies import idle_seconds
    addr = addr or lab.addr(name)
    t0 = time.monotonic()
    r = lab.run(client, probe_argv(lab, name, addr, strategy, url=url, strategy_args=strategy_args,
                                   timeout=timeout, download=download, quic=quic),
                timeout=timeout + 30 + idle_seconds(strategy, strategy_args))
    outcome, detail, doc = parse_probe_output(r.stdout, r.stderr, r.rc)
    kbps = doc.get("goodput_kbps")
    body = doc.get("body_bytes")
    trial = Trial(name, "quic" if quic or doc.get("transport") == "quic" else "https", outcome, detail, r.rc,
                  int(body) if isinstance(body, int) else None,
                  float(kbps) if isinstance(kbps, (int, float)) else None, time.monotonic() - t0, strategy)
    return trial, doc


# ------------------------------------------------------------------------------------------ measure fetch

@contextmanager
def strategy_helper(lab: Lab, strategy: str | None, strategy_args: Sequence[str], clients: Sequence[str],
                    log: Path) -> Iterator[None]:
    """Server-side strategies (server-window, split-handshake) need their helper running on the server host
    while the client fetches (`python -m dpi.probe server-side ...`); others need nothing. `clients`: the
    client addresses the window clamp applies to (only they are affected)."""
    if strategy == "server-window":
        args = dict(a.split("=", 1) for a in strategy_args if "=" in a)
        argv = python_module("dpi.probe", "server-side", "window",
                             *[x for c in clients for x in ("--client", c)], "--bytes", args.get("bytes", "64"))
    elif strategy == "split-handshake":
        argv = python_module("dpi.probe", "server-side", "split-handshake", "--port", "443")
    else:
        yield
        return
    with running(lab, lab.layout.web, argv, log, marker=b'"ready"'):
        yield


def strategy_workloads(strategy: str) -> tuple[str, ...]:
    """Which workloads a strategy replaces: QUIC strategies the quic fetch, TLS and server-side ones the https
    fetch, transport-neutral ones (the baseline `none`) both. Raises ValueError for an unknown strategy."""
    from dpi.strategies import CATALOGUE
    cls = CATALOGUE.get(strategy)
    if cls is None:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(CATALOGUE)}")
    return {"quic": ("quic",), "any": ("https", "quic")}.get(cls.transport, ("https",))


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per (name, workload): outcome counts and the blocked share."""
    cells: dict[str, dict[str, Any]] = {}
    for r in records:
        key = f"{r['name']} {r['workload']}"
        c = cells.setdefault(key, {"name": r["name"], "workload": r["workload"], "n": 0, "outcomes": {}})
        c["n"] += 1
        c["outcomes"][r["outcome"]] = c["outcomes"].get(r["outcome"], 0) + 1
    for c in cells.values():
        rates = sorted(r["kbps"] for r in records if f"{r['name']} {r['workload']}" == f"{c['name']} {c['workload']}"
                       and r["outcome"] == "throttled" and r.get("kbps") is not None)
        c["throttled_kbps_median"] = rates[len(rates) // 2] if rates else None
        blocked = sum(v for k, v in c["outcomes"].items() if k in BLOCKED)
        c["blocked_share"] = blocked / c["n"]
        c["majority"] = max(c["outcomes"].items(), key=lambda kv: kv[1])[0]
    return {"cells": list(cells.values())}


def measure_fetch(profile: str | None, names: Sequence[str], out: Path, *,
                  workloads: Sequence[str] = DEFAULT_WORKLOADS, repeat: int = 1, gap: float = 0.0,
                  strategy: str | None = None, strategy_args: Sequence[str] = (), topo: str = "isp",
                  seed: int | None = None, progress: bool = True,
                  say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Measurement:
    """Fetch every name with every workload, `repeat` times, through a lab running `profile`.

    Repeats are not independent where the profile has residual blocking (G-4: a reset name's 3-tuple stays
    blocked for 180 s): that is the censor's behaviour and shows in the records; `gap` spaces the rounds.
    With `strategy`, the workloads it applies to (strategy_workloads) are fetched by `redweb probe --strategy`
    instead of curl / the QUIC client, with the server-side helper running when the strategy needs one.
    """
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        raise ValueError(f"unknown workload(s) {', '.join(bad)}: choose from {', '.join(WORKLOADS)}")
    order = [w for w in WORKLOADS if w in workloads]
    m = Measurement("fetch", config={"profile": profile, "names": list(names), "workloads": order,
                                     "repeat": repeat, "gap": gap, "strategy": strategy,
                                     "strategy_args": list(strategy_args), "topo": topo, "seed": seed})
    probed = strategy_workloads(strategy) if strategy else ()
    censor_args = ("--seed", str(seed)) if seed is not None else ()
    cfg = LabConfig(topo=topo, profile=profile, names=tuple(names), clients=1, workdir=out / "lab",
                    censor_args=censor_args)
    with Lab(cfg) as lab:
        client = lab.layout.clients[0]
        say(f"lab up: {topo}, censor {profile or 'none'}; {len(names)} names x {len(order)} workloads x {repeat}")
        bar = Progress(len(names) * len(order) * repeat, "fetch", enabled=progress)
        helper = strategy_helper(lab, strategy, strategy_args, [lab.layout.node_addrs[client][0] + "/32"],
                                 lab.workdir / "strategy-helper.log")
        with helper:
            _fetch_rounds(lab, client, m, names, order, repeat, gap, strategy, strategy_args, probed, profile, bar)
        bar.close()
    m.summary = summarise(m.records)
    m.finish()
    return m


def _fetch_rounds(lab: Lab, client: str, m: Measurement, names: Sequence[str], order: Sequence[str], repeat: int,
                  gap: float, strategy: str | None, strategy_args: Sequence[str], probed: Sequence[str],
                  profile: str | None, bar: Progress) -> None:
    for rnd in range(repeat):
        if rnd and gap > 0:
            time.sleep(gap)
        for name in names:
            for w in order:
                if strategy and w in probed:
                    t, _ = probe_trial(lab, client, name, strategy, strategy_args=strategy_args, quic=w == "quic")
                else:
                    t = run_trial(lab, client, name, w)
                m.records.append(t.record(repeat=rnd + 1, profile=profile or "none"))
                bar.update(1, f"{name} {w}: {t.outcome}")
