"""Goodput over time of a throttled download next to a control download on the same path (T21-4).

Both downloads run at once from one client host, through the same censor, on one clock (`sampler`), so the
only difference between the two curves is the SNI: the throttled name matches the profile's throttle rule, the
control name matches nothing. The steady goodput (after slow start and the first bucket) is what the published
130-150 kbit/s is compared with.

A lab note that matters for the number: the lab's RTT is a fraction of a millisecond, and TCP against a policer
with a small bucket (T21-4's 16 KB) loses whole windows and waits for retransmission timeouts, so the goodput
sits somewhat under the policer's configured rate. The measurement reports what it sees; it does not correct.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dpi.lab import Lab, LabConfig, LabError
from dpi.measure import stats
from dpi.measure.hostprocs import python_module
from dpi.measure.progress import Progress
from dpi.measure.results import Measurement
from dpi.profile import load_profile

BODY = "16g"  # "practically endless": the run is limited by time, not size
PUBLISHED_KBPS = (130.0, 150.0)  # T21-4: ~130-150 kbit/s per direction
LINK_FACTOR = 10.0  # "link speed": the control runs at least this many times faster than the throttled flow


def throttle_rules(profile: str) -> list[dict[str, Any]]:
    """The profile's throttle rules and their policer settings (for the plot's reference line)."""
    p = load_profile(profile)
    return [{"rule": r.name, "rate_kbps": r.action.rate_bps / 1000, "burst_bytes": r.action.burst_bytes}
            for r in p.rules if r.action.type == "throttle"]


def run_ticking(fn: Callable[[], Any], seconds: float, bar: Progress | None) -> Any:
    """Run `fn` in a thread, advancing `bar` once a second (a long blocking step still shows progress)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t0 = time.monotonic()
    ticks = 0
    while t.is_alive():
        t.join(1.0)
        if bar is not None and ticks < int(seconds) and time.monotonic() - t0 >= ticks + 1:
            ticks += 1
            bar.update(1)
    if "error" in box:
        raise box["error"]
    if bar is not None and ticks < int(seconds):
        bar.update(int(seconds) - ticks)
    return box.get("value")


def sample_in_lab(lab: Lab, client: str, fetches: Sequence[tuple[str, str, str]], seconds: float,
                  interval: float, bar: Progress | None = None) -> dict[str, Any]:
    """Run the sampler on `client` for (label, url, addr) downloads; its parsed JSON."""
    argv = python_module("dpi.measure.sampler", "--seconds", seconds, "--interval", interval, "--cafile", lab.ca,
                         *[x for f in fetches for x in ("--fetch", *f)])
    r = run_ticking(lambda: lab.run(client, argv, timeout=seconds + 90), seconds, bar)
    try:
        doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise LabError(f"goodput sampler failed ({r.status()}): {(r.stderr.strip().splitlines() or ['-'])[-1]}")
    return doc


def analyse(doc: dict[str, Any], m: Measurement) -> None:
    """Fill records (one per label and bin), series and summary from the sampler's output."""
    interval = float(doc["interval"])
    for f in doc["fetches"]:
        bins = [int(b) for b in f["bins"]]
        kbps = stats.series_kbps(bins, interval)
        for i, (b, k) in enumerate(zip(bins, kbps)):
            m.records.append({"label": f["label"], "url": f["url"], "t": round((i + 1) * interval, 4), "bytes": b,
                              "kbps": round(k, 3)})
        g = stats.goodput(bins, interval)
        m.series[f["label"]] = {"interval": interval, "bins": bins}
        m.summary[f["label"]] = {"url": f["url"], "status": f["status"], "error": f["error"],
                                 "http_status": f["http_status"], "total_bytes": g.total_bytes,
                                 "seconds": g.seconds, "mean_kbps": round(g.mean_kbps, 2),
                                 "steady_kbps": round(g.steady_kbps, 2), "steady_from_s": g.steady_from,
                                 "p10_kbps": round(g.p10_kbps, 2), "p90_kbps": round(g.p90_kbps, 2)}


def measure_goodput(profile: str, name: str, control: str, out: Path, *, seconds: float = 30.0,
                    interval: float = 0.1, topo: str = "isp", progress: bool = True,
                    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Measurement:
    """Throttled (`name`) and control (`control`) HTTPS downloads at once for `seconds`, sampled per `interval`."""
    if name == control:
        raise ValueError("the throttled and the control name must differ")
    m = Measurement("goodput", config={"profile": profile, "name": name, "control": control, "seconds": seconds,
                                       "interval": interval, "topo": topo, "policers": throttle_rules(profile)})
    cfg = LabConfig(topo=topo, profile=profile, names=(control, name), clients=1, workdir=out / "lab")
    with Lab(cfg) as lab:
        client = lab.layout.clients[0]
        say(f"lab up: {topo}, censor {profile}; downloading https://{name}/ (throttled?) and https://{control}/ "
            f"(control) at once for {seconds:g} s")
        bar = Progress(int(seconds), "goodput", enabled=progress)
        doc = sample_in_lab(lab, client, [("throttled", f"https://{name}/bytes/{BODY}", lab.addr(name)),
                                          ("control", f"https://{control}/bytes/{BODY}", lab.addr(control))],
                            seconds, interval, bar)
        bar.close()
    analyse(doc, m)
    m.finish()
    return m


def goodput_claims(m: Measurement) -> list[Any]:
    """T21-4 as two checkable statements: the throttled rate, and the control at link speed."""
    from dpi.measure.results import Claim
    thr, ctl = m.summary.get("throttled", {}), m.summary.get("control", {})
    lo, hi = PUBLISHED_KBPS
    steady = float(thr.get("steady_kbps") or 0.0)
    control = float(ctl.get("steady_kbps") or 0.0)
    return [
        Claim("T21-4", f"throttled download ({m.config['name']}) converges to the policer rate",
              f"{lo:.0f}-{hi:.0f} kbit/s",
              f"{steady:.0f} kbit/s steady (from {thr.get('steady_from_s', 0):g} s; 1-s windows p10-p90 "
              f"{thr.get('p10_kbps', 0):.0f}-{thr.get('p90_kbps', 0):.0f})",
              lo <= steady <= hi if thr.get("total_bytes") else False),
        Claim("T21-4", f"control download ({m.config['control']}) on the same path is not throttled",
              "link speed", f"{control / 1000:.0f} Mbit/s steady",
              control >= LINK_FACTOR * max(steady, hi) if ctl.get("total_bytes") else False),
    ]
