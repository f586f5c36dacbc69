"""`redweb demo` (what `make demo` runs): one lab, one profile, real clients, one table of what got through.

It starts the `isp` lab with the censor on the border router, then, from a client, asks for a set of names over
DNS, HTTP, HTTPS and HTTP/3 with real programs (dig, curl, the aioquic client) and classifies each outcome from
what the *client* saw — curl's exit code and its measured `%{speed_download}` — never from the censor's own log:

    allowed     the transfer completed at lab speed
    reset       the connection was torn down by a RST (curl 7 refused / 35 / 52 / 55 / 56)
    timed out   nothing came back (curl 28 with no body; the QUIC client's timeout)
    throttled   data came, but slower than THROTTLE_BITS (the measured kbit/s is shown; T21-4)
    frozen      data came, then stopped (curl's --speed-time; T25-1's 16 KB freeze)
    poisoned    the DNS answer differs from the lab's real address (GD-1, GD-2)

The censor's event log is then read only to name, per row, the profile rules that fired (by the names the censor
read or, for rules decided on addresses alone, by the row's server address). Each name has its own server
address, so a residual block on one name (G-4) never spills onto another; HTTP, HTTPS and QUIC go to the name's
real address, so each column shows one protocol's censorship, independent of the DNS column.

Two rows are there for the IP-based rules: `cdn.example` and `banned-ip.example` are served from documentation
ranges that the profiles list as hosting/CDN networks and blocked addresses (dpi.lab.HOSTED_NAMES): tspu-2025
freezes HTTPS to cdn.example after 16 KB (T25-1), tspu-2022 drops everything to banned-ip.example (T22-3).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from dpi.lab import (HOSTED_NAMES, CurlResult, DigResult, Lab, LabConfig, LabError, Terminated,
                     bundled_profile_names, install_signal_handlers, require_root)

DEFAULT_PROFILE = "redweb"
FALLBACK_PROFILE = "gfw"

# Names chosen to show the bundled profiles' behaviours side by side: a control name on no list; the GFW's
# exact-name form (=www.bbc.com blocks www.bbc.com but not bbc.com, G-2); separate TLS and HTTP lists
# (=duckduckgo.com is only on the TLS list, G-1); the TSPU's Twitter patterns and their collateral (T21-1:
# `t.co` inside reddit.com); the names everybody blocks; `blocked.example`, on every list of the `redweb` profile;
# the hosted names, whose server addresses are on the IP-based lists (T22-3, T25-1, GF-2).
DEMO_NAMES: tuple[str, ...] = ("example.org", "bbc.com", "www.bbc.com", "duckduckgo.com", "wikipedia.org",
                               "www.youtube.com", "facebook.com", "twitter.com", "abs.twimg.com", "reddit.com",
                               "blocked.example", *HOSTED_NAMES)
DOMESTIC_ROW = "twitter.com"  # fetched from the domestic server: inside <-> inside is never censored

PROTOCOLS = ("DNS", "HTTP", "HTTPS", "QUIC")
THROTTLE_BITS = 10_000_000  # TCP slower than this (bit/s) is "throttled"; the lab runs at 100+ Mbit/s
QUIC_THROTTLE_BITS = 1_000_000  # aioquic in Python is slower (tens of Mbit/s), so its bar is lower
BODY_BYTES = 3_000_000  # big enough to measure a rate, small enough to finish at once when allowed
QUIC_BODY_BYTES = 1_000_000
MAX_TIME = 6.0  # seconds per TCP transfer: a throttled one is measured over this long
QUIC_TIMEOUT = 4.0  # the lab's QUIC handshake takes milliseconds; a blackholed flow (GQ-2) waits this long
STALL_TIME = 3  # seconds without a byte = frozen
CONNECT_TIMEOUT = 3.0
RESET_CODES = {35, 52, 55, 56}  # curl: TLS handshake / empty reply / send / recv failure, all by a RST here


@dataclass(frozen=True)
class Outcome:
    kind: str  # allowed | reset | timeout | throttled | frozen | poisoned | error | skipped
    detail: str = ""

    def cell(self) -> str:
        label = {"timeout": "timed out"}.get(self.kind, self.kind)
        return f"{label} {self.detail}".strip()


def _kbit(bytes_per_second: float) -> str:
    return f"{bytes_per_second * 8 / 1000:.0f} kbit/s"


def _kb(n: int) -> str:
    return f"{n / 1000:.0f} KB" if n >= 1000 else f"{n} B"


def classify_curl(r: CurlResult, throttle_bits: float = THROTTLE_BITS,
                  connect_timeout: float = CONNECT_TIMEOUT) -> Outcome:
    """Outcome of one curl transfer, from its exit code, body size and measured speed.

    curl 7.88 (Debian 12) reports a connection refused by a RST as "Couldn't connect to server" (the word
    "refused" is only in its verbose output): a curl 7 that failed well before the connect timeout was answered,
    and in the lab that answer is a RST (G-4's residual resets new connections at their SYN).
    """
    slow = r.speed_bps * 8 < throttle_bits
    if r.rc == 0:
        if 200 <= r.http_code < 400:
            return Outcome("throttled", _kbit(r.speed_bps)) if slow else Outcome("allowed")
        return Outcome("error", f"HTTP {r.http_code}")
    err = r.error.lower()
    refused = "refused" in err or ("couldn't connect to server" in err and r.seconds < 0.5 * connect_timeout)
    if r.rc in RESET_CODES or (r.rc == 7 and refused):
        return Outcome("reset", f"after {_kb(r.size)}" if r.size else "")
    if r.rc == 28:
        stalled = "too slow" in r.error.lower()
        if r.size == 0 and stalled and r.http_code > 0:
            # The response began (status line and headers arrived), then nothing more: frozen (T25-1). The body
            # count is 0 because the freeze lands inside the first body TLS record (up to 16 KB), which the
            # client can never decrypt; the freeze itself counts bytes on the wire.
            return Outcome("frozen", "after the headers")
        if r.size == 0:
            return Outcome("timeout")
        if stalled:
            return Outcome("frozen", f"after {_kb(r.size)}")
        return Outcome("throttled", _kbit(r.speed_bps)) if slow else Outcome("allowed", "(slow)")
    if r.rc in (51, 60):
        return Outcome("error", "certificate rejected")
    return Outcome("error", f"curl {r.rc}" + (f": {r.error[:40]}" if r.error else ""))


def classify_quic(res: dict[str, Any], throttle_bits: float = QUIC_THROTTLE_BITS) -> Outcome:
    """Outcome of one HTTP/3 fetch by the lab's aioquic client (its JSON result)."""
    result, n = res.get("result"), int(res.get("bytes") or 0)
    speed = float(res.get("speed_bps") or 0.0)
    if result == "ok":
        return Outcome("throttled", _kbit(speed)) if speed * 8 < throttle_bits else Outcome("allowed")
    if result == "timeout":
        if n:
            return Outcome("frozen", f"after {_kb(n)}")
        return Outcome("timeout", "after handshake" if res.get("handshake") else "")
    return Outcome("error", str(res.get("error") or "failed")[:40])


def classify_dns(r: DigResult, real: str) -> Outcome:
    """Outcome of one DNS query: allowed only if the one answer is the lab's real address."""
    if r.rc != 0 or not r.status:
        return Outcome("timeout")
    if r.status != "NOERROR":
        return Outcome("poisoned", r.status)
    if not r.answers:
        return Outcome("poisoned", "empty answer")
    if real in r.answers:
        return Outcome("allowed")
    return Outcome("poisoned", r.answers[0])


def resolve_profile(name: str) -> tuple[str, str | None]:
    """(profile to use, note for the user). The default `redweb` falls back to `gfw` until it is bundled."""
    bundled = bundled_profile_names()
    if name in bundled or Path(name).is_file():
        return name, None
    if name == DEFAULT_PROFILE and FALLBACK_PROFILE in bundled:
        return FALLBACK_PROFILE, (f"profile {DEFAULT_PROFILE!r} is not bundled (yet): showing "
                                  f"{FALLBACK_PROFILE!r} instead")
    raise LabError(f"no profile {name!r}: bundled profiles are {', '.join(bundled) or 'none'}", 2)


def _server_address(server: object) -> str:
    """`10.0.0.1:443` / `2001:db8::1:443` (the engine's `server` field) -> the address."""
    return server.rpartition(":")[0] if isinstance(server, str) else ""


def read_events(event_log: Path) -> list[dict]:
    """The JSON objects of an event log, skipping lines a killed censor left half-written; [] if it is missing."""
    try:
        lines = event_log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


def rules_by_name(event_log: Path, names: Iterable[str],
                  addrs: Mapping[str, Iterable[str]] | None = None) -> dict[str, list[str]]:
    """Which rules fired for which lab name, from the censor's event log (JSON lines; unknown lines ignored).

    An event is credited to the lab names the censor read in it (SNI, Host, QUIC SNI, DNS name). An event that
    names none of them (a rule decided on the server address alone, T22-3 or T25-1, or a residual) is credited
    to the name whose server address it went to, when `addrs` (lab name -> its addresses) is given: every lab
    name has its own address, so that attribution is unambiguous.
    """
    names = list(names)
    wanted = {n.lower(): n for n in names}
    by_addr = {a: n for n in names for a in (addrs or {}).get(n, ()) if a}
    out: dict[str, list[str]] = {n: [] for n in names}
    for ev in read_events(event_log):
        if not ev.get("rule"):
            continue
        seen: set[str] = set()
        for v in (ev.get("names") or {}).values() if isinstance(ev.get("names"), dict) else ():
            for s in (v if isinstance(v, list) else [v]):
                if isinstance(s, str) and s.lower().rstrip(".") in wanted:
                    seen.add(wanted[s.lower().rstrip(".")])
        if not seen and (n := by_addr.get(_server_address(ev.get("server")))):
            seen.add(n)
        for n in seen:
            if ev["rule"] not in out[n]:
                out[n].append(str(ev["rule"]))
    return out


def event_summary(event_log: Path) -> str:
    counts: dict[str, int] = {}
    try:
        for line in event_log.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            key = str(ev.get("action") or ev.get("event") or "?") if isinstance(ev, dict) else "?"
            counts[key] = counts.get(key, 0) + 1
    except OSError:
        return "no event log"
    total = sum(counts.values())
    return f"{total} events (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")" if total else "empty"


def probe(lab: Lab, client: str, name: str, addr: str | None = None) -> dict[str, Outcome]:
    """DNS, HTTP, QUIC, HTTPS for one name (QUIC before HTTPS: a TCP residual on port 443 must not be what the
    QUIC column shows). `addr` sends HTTP/HTTPS/QUIC elsewhere than the name's lab address (and skips DNS)."""
    row: dict[str, Outcome] = {}
    if addr is None:
        row["DNS"] = classify_dns(lab.dig(client, name), lab.addr(name))
    else:
        row["DNS"] = Outcome("skipped", "-")
    kw = {"max_time": MAX_TIME, "connect_timeout": CONNECT_TIMEOUT, "stall_seconds": STALL_TIME, "addr": addr}
    row["HTTP"] = classify_curl(lab.curl(client, f"http://{name}/bytes/{BODY_BYTES}", **kw))  # type: ignore[arg-type]
    row["QUIC"] = classify_quic(lab.h3(client, f"https://{name}/bytes/{QUIC_BODY_BYTES}", addr=addr,
                                       timeout=QUIC_TIMEOUT))
    row["HTTPS"] = classify_curl(lab.curl(client, f"https://{name}/bytes/{BODY_BYTES}", **kw))  # type: ignore[arg-type]
    return row


def format_table(rows: Sequence[tuple[str, dict[str, Outcome], list[str]]]) -> str:
    header = ["name", *PROTOCOLS, "rules that fired"]
    body = [[label, *[("-" if row[p].kind == "skipped" else row[p].cell()) for p in PROTOCOLS],
             ", ".join(rules) or "-"] for label, row, rules in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*r) for r in body]
    return "\n".join(line.rstrip() for line in lines)


def run_demo(profile: str, out: Path, names: Sequence[str] | None = None, topo: str = "isp",
             say: Any = print) -> list[tuple[str, dict[str, Outcome], list[str]]]:
    """Start the lab, probe every name, stop the lab; returns the rows (label, outcomes, rules that fired)."""
    names = tuple(names or DEMO_NAMES)
    config = LabConfig(topo=topo, profile=profile, names=tuple(names), clients=1, workdir=out)
    results: list[tuple[str, dict[str, Outcome]]] = []
    metrics = ""
    addrs: dict[str, tuple[str, str]] = {}
    with Lab(config) as lab:
        addrs = dict(lab.names)
        client = lab.layout.clients[0]
        say(f"lab up: topology {topo}, censor {profile!r} on {lab.layout.censor}, client {client} "
            f"({lab.layout.node_addrs[client][0]}); probing {len(names)} names over {', '.join(PROTOCOLS)}...")
        for name in names:
            results.append((name, probe(lab, client, name)))
        if lab.layout.domestic_addr and DOMESTIC_ROW in names:
            results.append((f"{DOMESTIC_ROW} @domestic", probe(lab, client, DOMESTIC_ROW,
                                                                addr=lab.layout.domestic_addr[0])))
        metrics = lab.metrics_text()
    (out / "metrics.prom").write_text(metrics)
    fired = rules_by_name(out / "events.jsonl", names, addrs)
    return [(label, row, [] if label.endswith("@domestic") else fired.get(label, [])) for label, row in results]


def main(args: argparse.Namespace) -> int:
    """`redweb demo [--profile NAME]`. Exit codes: 0 shown, 1 the lab failed, 2 not root / no such profile."""
    t0 = time.monotonic()
    try:
        require_root()
        profile, note = resolve_profile(getattr(args, "profile", None) or DEFAULT_PROFILE)
    except LabError as e:
        print(f"redweb: demo: {e}", file=sys.stderr)
        return e.code
    if note:
        print(f"redweb: demo: {note}")
    out = Path(getattr(args, "out", None) or os.environ.get("REDWEB_DEMO_OUT") or "out/demo").resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"redweb: demo: cannot create {out}: {e.strerror}", file=sys.stderr)
        return 2
    old = install_signal_handlers()  # SIGTERM/SIGHUP unwind through the lab's tear-down like Ctrl-C
    try:
        rows = run_demo(profile, out, names=getattr(args, "names", None))
    except LabError as e:
        print(f"redweb: demo: {e}", file=sys.stderr)
        return e.code
    except (KeyboardInterrupt, Terminated):
        print("\nredweb: demo: interrupted (the lab was torn down)", file=sys.stderr)
        return 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print()
    print(f"What profile {profile!r} did to a client on the inside (client -> censor -> transit -> servers):")
    print(format_table(rows))
    print()
    print(f"allowed = completed at lab speed; reset = RST (curl 7/35/52/55/56); timed out = no answer; "
          f"throttled = below {THROTTLE_BITS // 1_000_000} Mbit/s (QUIC {QUIC_THROTTLE_BITS // 1_000_000}); "
          "frozen = data stopped; poisoned = DNS answer is not the lab's address")
    hosted = [label for label, _row, _rules in rows if label in HOSTED_NAMES]
    if hosted:
        print(f"{' and '.join(hosted)}: served from documentation ranges that the IP-based rules list (hosting/CDN "
              "networks T25-1 and GF-2, blocked addresses T22-3); every other name sits in the lab's private "
              "foreign network")
    print(f"event log: {out / 'events.jsonl'} ({event_summary(out / 'events.jsonl')})")
    print(f"metrics:   {out / 'metrics.prom'} (snapshot of http://127.0.0.1:9100/metrics, served in the censor's "
          "namespace while the lab ran)")
    print(f"lab files: {out}/ (lab CA, censor.log, server logs); done in {time.monotonic() - t0:.0f} s")
    return 0
