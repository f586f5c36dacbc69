"""Residual blocking over time (G-4; the same shape for GE-1, GF-3, GQ-2): connection outcomes around the window.

One client fetches a blocked name over HTTPS once (the trigger). Then, until past the window, it keeps opening
new connections to the *same server address*:

    same 3-tuple   HTTPS to port 443 with an innocuous SNI (the control name): only the residual can block it
    other port     HTTP to port 80 with the control name's Host: the residual is keyed on the 3-tuple, so the
                   other ports of the same server must work throughout (G-4, GF-3)
    other server   HTTPS to the control name's own address: never affected

Each name has its own server address in the lab, and the lab's server certificate covers every lab name, so an
innocuous SNI to the blocked name's address completes a TLS handshake whenever the censor lets it.

The window is the profile's own (180 s for gfw) unless `window` is given, in which case a temporary profile that
includes the bundled one sets every residual to that many seconds (profiles.with_residual_seconds).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpi import demo
from dpi.lab import Lab, LabConfig, LabError
from dpi.measure import profiles, stats
from dpi.measure.progress import Progress
from dpi.measure.results import Claim, Measurement
from dpi.measure.workloads import classify_curl
from dpi.profile import load_profile

BLOCKED_OUTCOMES = frozenset({"reset", "timeout"})
PROBE_MAX_TIME = 3.0
PROBE_CONNECT = 2.0
PROBES = ("same 3-tuple (:443)", "other port (:80)", "other server (:443)")


def residual_seconds(profile: str) -> float | None:
    """The longest residual window of the profile's rules, None when it has none."""
    windows = [r.residual.seconds for r in load_profile(profile).rules if r.residual is not None]
    return max(windows) if windows else None


def _trigger_ts(event_log: Path, since: float, client: str) -> float | None:
    """Monotonic time of the first rule event for `client` after `since` (the censor stamps events with
    CLOCK_MONOTONIC, which this process shares): more precise than the client's view of when it was reset."""
    for ev in demo.read_events(event_log):
        if (ev.get("event") == "rule" and isinstance(ev.get("ts"), (int, float))
                and str(ev.get("client", "")).startswith(client + ":") and ev["ts"] >= since - 0.5):
            return float(ev["ts"])
    return None


def _probe(lab: Lab, client: str, url: str, addr: str) -> demo.Outcome:
    r = lab.curl(client, url, addr=addr, max_time=PROBE_MAX_TIME, connect_timeout=PROBE_CONNECT)
    return classify_curl(r, throttle_bits=0, connect_timeout=PROBE_CONNECT)  # tiny bodies: speed means nothing


def measure_residual(profile: str, name: str, out: Path, *, control: str = "example.org",
                     window: float | None = None, interval: float | None = None, after: float | None = None,
                     topo: str = "isp", progress: bool = True,
                     say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Measurement:
    """Trigger with `name`, then probe the same 3-tuple, another port and another server until past the window.

    `interval`: seconds between probe rounds (default window/40, within 0.25-5 s); `after`: how long to keep
    probing past the window (default a quarter of it, at least 2 s).
    """
    if name == control:
        raise ValueError("the blocked and the control name must differ")
    out.mkdir(parents=True, exist_ok=True)
    run_profile = profile
    if window is not None:
        if window <= 0:
            raise ValueError("--window must be > 0")
        run_profile = str(profiles.with_residual_seconds(profile, window, out / f"profile-residual-{window:g}s.yaml"))
    configured = residual_seconds(run_profile)
    horizon = configured if configured is not None else (window or 10.0)
    interval = interval or min(5.0, max(0.25, horizon / 40))
    after = after if after is not None else max(2.0, horizon / 4)
    m = Measurement("residual", config={"profile": profile, "run_profile": run_profile, "name": name,
                                        "control": control, "window": configured, "interval": interval,
                                        "after": after, "topo": topo, "probe_labels": list(PROBES)})
    cfg = LabConfig(topo=topo, profile=run_profile, names=(control, name), clients=1, workdir=out / "lab")
    with Lab(cfg) as lab:
        client = lab.layout.clients[0]
        caddr = lab.layout.node_addrs[client][0]
        baddr, oaddr = lab.addr(name), lab.addr(control)
        probes = ((PROBES[0], f"https://{control}/", baddr), (PROBES[1], f"http://{control}/", baddr),
                  (PROBES[2], f"https://{control}/", oaddr))
        say(f"lab up: {topo}, censor {Path(run_profile).name}; residual window {configured} s; trigger "
            f"https://{name}/ then probes every {interval:g} s for {horizon + after:g} s")
        for label, url, addr in probes:  # before the trigger every probe must work, or nothing below means much
            o = _probe(lab, client, url, addr)
            m.records.append({"probe": label, "t": None, "phase": "before", "outcome": o.kind, "detail": o.detail})
        t_start = time.monotonic()
        trig = lab.curl(client, f"https://{name}/", max_time=PROBE_MAX_TIME, connect_timeout=PROBE_CONNECT)
        t_end = time.monotonic()
        trig_outcome = classify_curl(trig, throttle_bits=0, connect_timeout=PROBE_CONNECT)
        time.sleep(0.2)  # let the censor's event reach its log
        t0 = _trigger_ts(lab.event_log, t_start, caddr) or (t_start + t_end) / 2
        m.summary["trigger"] = {"outcome": trig_outcome.kind, "detail": trig_outcome.detail,
                                "from_event_log": _trigger_ts(lab.event_log, t_start, caddr) is not None}
        m.records.append({"probe": f"trigger https://{name}/", "t": round(t_end - t0, 3), "phase": "trigger",
                          "outcome": trig_outcome.kind, "detail": trig_outcome.detail})
        total = horizon + after
        bar = Progress(int(total / interval) + 1, "residual", enabled=progress)
        k = 0
        while True:
            tick = t0 + (k + 1) * interval
            now = time.monotonic()
            if tick - t0 > total:
                break
            if tick > now:
                time.sleep(tick - now)
            for label, url, addr in probes:
                ts = time.monotonic() - t0
                o = _probe(lab, client, url, addr)
                m.records.append({"probe": label, "t": round(ts, 3), "phase": "after", "outcome": o.kind,
                                  "detail": o.detail})
            k = max(k + 1, int((time.monotonic() - t0) / interval))  # a slow probe round skips ticks, no backlog
            bar.update(1, m.records[-3]["outcome"])
        bar.close()
    _summarise(m)
    m.finish()
    return m


def _summarise(m: Measurement) -> None:
    after = [r for r in m.records if r["phase"] == "after"]
    for label in PROBES:
        series = [(float(r["t"]), r["outcome"] in BLOCKED_OUTCOMES) for r in after if r["probe"] == label]
        last_blocked, first_open = stats.bracket(series)
        m.summary[label] = {"probes": len(series), "blocked": sum(b for _, b in series),
                            "last_blocked_s": last_blocked, "first_open_after_s": first_open}
    before = [r for r in m.records if r["phase"] == "before"]
    m.summary["before_all_allowed"] = all(r["outcome"] == "allowed" for r in before)


def residual_claims(m: Measurement, tolerance: float | None = None) -> list[Claim]:
    """G-4 (and GF-3's "other ports unaffected") as statements checked against the probes.

    `tolerance`: how far from the configured window the observed edge may be (default one probe interval plus
    half a second: the edge is only known to within a probe round)."""
    window = m.config.get("window")
    same, other, server = (m.summary.get(p, {}) for p in PROBES)
    tol = tolerance if tolerance is not None else float(m.config.get("interval", 1.0)) + 0.5
    trig = m.summary.get("trigger", {})
    claims = [Claim("G-1/G-3", f"the trigger (https://{m.config['name']}/) is reset", "reset",
                    trig.get("outcome", "-"), trig.get("outcome") == "reset")]
    if window is None:
        claims.append(Claim("G-4", "new connections on the 3-tuple are reset after a trigger",
                            "a residual window", "the profile has no residual", None))
        return claims
    lb, fo = same.get("last_blocked_s"), same.get("first_open_after_s")
    edge_ok = (lb is not None and fo is not None and lb <= window + tol and fo >= window - tol)
    blocked_until = all(r["outcome"] in BLOCKED_OUTCOMES for r in m.records
                        if r["phase"] == "after" and r["probe"] == PROBES[0] and lb is not None and r["t"] <= lb)
    measured = (f"blocked {same.get('blocked', 0)}/{same.get('probes', 0)} probes; last blocked at "
                f"{_s(lb)}, open again from {_s(fo)}")
    claims.append(Claim("G-4", "new connections on the same 3-tuple are reset for the residual window, then work",
                        f"{window:g} s", measured, bool(edge_ok and blocked_until and m.summary.get(
                            "before_all_allowed"))))
    claims.append(Claim("G-4/GF-3", "other ports of the same server work throughout", "never blocked",
                        f"blocked {other.get('blocked', 0)}/{other.get('probes', 0)} probes",
                        other.get("probes", 0) > 0 and other.get("blocked", 1) == 0))
    claims.append(Claim("G-4", "other servers work throughout", "never blocked",
                        f"blocked {server.get('blocked', 0)}/{server.get('probes', 0)} probes",
                        server.get("probes", 0) > 0 and server.get("blocked", 1) == 0))
    return claims


def _s(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f} s"


__all__ = ["LabError", "measure_residual", "residual_claims", "residual_seconds"]
