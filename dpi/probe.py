"""`redweb probe`: one fetch with one evasion strategy, and what the censor made of it.

    redweb probe --strategy NAME [--strategy-arg K=V ...] URL [--resolve NAME:IP] [--cacert FILE]
                 [--timeout S] [--download N] [--quic] [--json]
    redweb probe --list
    python -m dpi.probe server-side window|split-handshake ...      (the server-side helpers, on the server)

Circumvention developers run it on a client behind a censor (a lab's client host, or a real network) to see
which strategies defeat which censor. The fetch runs on real stacks (Python's ssl over a socket we drive,
aioquic over a UDP socket we own; see dpi.strategies) and ends in one outcome:

    ok         handshake and HTTP response completed (at a goodput above --slow-kbps when --download is given)
    reset      a TCP RST ended the connection (G-3, H-2, T22-2's RST variant)
    timeout    no progress before --timeout: dropped packets (T22-2, GQ-2, GE-1), or a stall after some data
    throttled  data flows, but below --slow-kbps (T21-4): needs --download N to measure a body of N bytes
    error      anything else, with the reason (e.g. the server rejected the strategy's first flight)

plus the bytes received and the time of each phase. Exit code: 0 when the outcome is ok, 1 for every other
outcome, 2 for bad usage. Always compare with `--strategy none` on the same URL: an outcome only means
something next to the baseline's.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from dpi.strategies import Strategy, StrategyError, build, catalogue, parse_args
from dpi.strategies.tcpclient import Target
from dpi.strategies.trace import Trace

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
OUTCOMES = ("ok", "reset", "timeout", "throttled", "error")
DEFAULT_SLOW_KBPS = 1000.0


class UsageError(Exception):
    """Bad input: one line, exit code 2."""


@dataclass
class ProbeResult:
    """One probe, as printed with --json (one object on one line)."""

    outcome: str
    reason: str
    strategy: str
    args: dict[str, str]
    url: str
    transport: str
    address: str
    port: int
    sni: str | None
    local: str | None
    http_status: int | None
    bytes_received: int
    body_bytes: int
    goodput_kbps: float | None
    server_rejected: bool
    timings_ms: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


# -- outcome ---------------------------------------------------------------------------------------------------
def goodput_kbps(trace: Trace) -> float | None:
    """Body bytes per second (kbit/s) from the request to the last body byte (or the end, if still flowing)."""
    if trace.request is None or trace.body <= 0:
        return None
    end = trace.last_byte if trace.ending == "done" and trace.last_byte is not None else trace.ended
    if end is None:
        return None
    seconds = max(end - trace.request, 1e-6)
    return trace.body * 8 / seconds / 1000.0


def classify(trace: Trace, *, timeout: float, download: int | None = None,
             slow_kbps: float = DEFAULT_SLOW_KBPS) -> tuple[str, str]:
    """(outcome, reason) for a finished trace.

    A fetch that ran out of time while body bytes were still arriving is `throttled` (T21-4 policing: data
    flows, slowly); one whose last byte came more than min(1 s, timeout/2) before the end is a `timeout` that
    stalled (T25-1's freeze, a blackhole after some data). `throttled` for a completed fetch needs --download:
    a few hundred bytes say nothing about the rate.
    """
    rate = goodput_kbps(trace)
    ending = trace.ending
    if ending == "reset":
        return "reset", trace.reason
    if ending == "timeout":
        if trace.body > 0 and trace.last_byte is not None and trace.ended is not None:
            idle = trace.ended - trace.last_byte
            if idle > min(1.0, timeout / 2):
                return "timeout", f"stalled after {trace.body} body bytes (nothing for {idle:.1f} s)"
            if rate is not None and rate < slow_kbps:
                return "throttled", f"{rate:.0f} kbit/s when the time ran out ({trace.body} body bytes)"
            return "ok", f"still downloading at {rate or 0:.0f} kbit/s when the time ran out"
        return "timeout", trace.reason
    if ending == "done":
        if download is not None and rate is not None and rate < slow_kbps:
            return "throttled", f"{rate:.0f} kbit/s for {trace.body} body bytes (below {slow_kbps:g})"
        return "ok", trace.reason or f"HTTP {trace.http_status}"
    return "error", trace.reason or str(ending)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 3)


def result_of(trace: Trace, strategy: Strategy, url: str, target: Target, *, timeout: float,
              download: int | None, slow_kbps: float) -> ProbeResult:
    outcome, reason = classify(trace, timeout=timeout, download=download, slow_kbps=slow_kbps)
    rate = goodput_kbps(trace)
    return ProbeResult(
        outcome=outcome, reason=reason, strategy=strategy.name, args=dict(strategy.args), url=url,
        transport=trace.transport, address=target.address, port=target.port, sni=trace.sni,
        local=f"{trace.local[0]}:{trace.local[1]}" if trace.local else None, http_status=trace.http_status,
        bytes_received=trace.received, body_bytes=trace.body, goodput_kbps=round(rate, 1) if rate else None,
        server_rejected=trace.server_rejected,
        timings_ms={"connect": _ms(trace.connected), "first_flight": _ms(trace.first_flight),
                    "handshake": _ms(trace.handshake), "response": _ms(trace.response),
                    "last_byte": _ms(trace.last_byte), "total": _ms(trace.ended)},
        notes=list(trace.notes))


# -- target ----------------------------------------------------------------------------------------------------
def parse_resolve(entry: str) -> tuple[str, int | None, str]:
    """`NAME:IP` or curl's `NAME:PORT:IP` (IPv6 plain or in brackets) -> (name, port or None, address)."""
    name, sep, rest = entry.partition(":")
    if not sep or not name or not rest:
        raise UsageError(f"bad --resolve {entry!r}: write NAME:IP, e.g. twitter.com:10.9.2.2")
    port: int | None = None
    head, sep2, tail = rest.partition(":")
    if sep2 and head.isdigit() and _is_ip(tail.strip("[]")):
        port, rest = int(head), tail
    address = rest.strip("[]")
    if not _is_ip(address):
        raise UsageError(f"bad --resolve {entry!r}: {address!r} is not an IP address")
    return name.lower(), port, address


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def make_target(url: str, resolve: Sequence[str], quic: bool) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"bad URL {url!r}: write https://NAME[:PORT]/PATH")
    try:
        port = parts.port or 443
    except ValueError:
        raise UsageError(f"bad port in {url!r}") from None
    host = parts.hostname
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    for entry in resolve:
        name, rport, address = parse_resolve(entry)
        if name == host.lower() and (rport is None or rport == port):
            return Target(host, port, path, address)
    if _is_ip(host):
        return Target(host, port, path, host)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM if quic else socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"cannot resolve {host}: {e.strerror} (give --resolve {host}:IP)") from None
    return Target(host, port, path, str(info[0][4][0]))


# -- the probe -------------------------------------------------------------------------------------------------
def run_probe(url: str, strategy: Strategy, *, resolve: Sequence[str] = (), cafile: str | None = None,
              insecure: bool = False, timeout: float = 10.0, download: int | None = None,
              slow_kbps: float = DEFAULT_SLOW_KBPS, quic: bool = False) -> ProbeResult:
    """Run one fetch; raises UsageError/StrategyError for bad input, never for a network outcome."""
    if strategy.transport == "quic":
        quic = True
    elif quic and strategy.transport != "any":
        raise UsageError(f"strategy {strategy.name} works on TLS over TCP, not with --quic")
    target = make_target(url, resolve, quic)
    try:
        if quic:
            from dpi.strategies.quicclient import fetch_h3
            trace = fetch_h3(target, strategy.quic_plan(target.port), cafile=cafile, insecure=insecure,
                             timeout=timeout, download=download)
        else:
            from dpi.strategies.tcpclient import fetch_tls
            trace = fetch_tls(target, strategy, cafile=cafile, insecure=insecure, timeout=timeout,
                              download=download)
    except StrategyError as e:  # the strategy cannot apply to this first flight (e.g. at=sni without an SNI)
        trace = Trace("quic" if quic else "tls")
        trace.end("error", str(e))
    if strategy.transport == "server":
        trace.notes.append(f"{strategy.name} acts on the server: run `python -m dpi.probe server-side` there")
    return result_of(trace, strategy, url, target, timeout=timeout, download=download, slow_kbps=slow_kbps)


def format_text(r: ProbeResult) -> str:
    args = " ".join(f"{k}={v}" for k, v in r.args.items())
    t = r.timings_ms
    rate = f"{r.goodput_kbps:.0f} kbit/s" if r.goodput_kbps else "-"

    def ms(key: str) -> str:
        return "-" if t.get(key) is None else f"{t[key]:.1f} ms"

    lines = [f"{r.outcome:<9} {r.strategy}{' ' + args if args else ''}  {r.url} via {r.address}:{r.port} "
             f"({r.transport}{', sni ' + r.sni if r.sni else ''}{', from ' + r.local if r.local else ''})",
             f"  reason: {r.reason or '-'}" + ("  [the server rejected the first flight]" if r.server_rejected else ""),
             f"  received {r.bytes_received} B (body {r.body_bytes} B, HTTP {r.http_status or '-'}), goodput {rate}; "
             f"connect {ms('connect')}, handshake {ms('handshake')}, response {ms('response')}, total {ms('total')}"]
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


def format_catalogue() -> str:
    out = []
    for cls in catalogue():
        targets = ", ".join(cls.targets) or "-"
        out.append(f"{cls.name:<17} {cls.transport:<6} {cls.summary()}")
        out.append(f"{'':<24}targets: {targets}")
        for p in cls.params:
            out.append(f"{'':<24}{p.name}={p.default}: {p.help}")
    return "\n".join(out)


# -- command line ----------------------------------------------------------------------------------------------
def add_probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", nargs="?", metavar="URL", help="https://NAME[:PORT]/PATH")
    p.add_argument("--strategy", default="none", metavar="NAME", help="evasion strategy (default none; --list)")
    p.add_argument("--strategy-arg", action="append", default=[], metavar="K=V", help="strategy parameter")
    p.add_argument("--resolve", action="append", default=[], metavar="NAME:IP",
                   help="use IP for NAME (also curl's NAME:PORT:IP), repeatable")
    p.add_argument("--cacert", metavar="FILE", help="CA certificate(s) to trust (PEM)")
    p.add_argument("-k", "--insecure", action="store_true", help="do not verify the server certificate")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="give up after S seconds (default 10)")
    p.add_argument("--download", type=int, metavar="N",
                   help="measure goodput on N body bytes (stop there); needed to tell `throttled` from `ok`")
    p.add_argument("--slow-kbps", type=float, default=DEFAULT_SLOW_KBPS, metavar="K",
                   help=f"goodput below K kbit/s is `throttled` (default {DEFAULT_SLOW_KBPS:g})")
    p.add_argument("--quic", action="store_true", help="HTTP/3 over QUIC (implied by the quic-* strategies)")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    p.add_argument("--list", action="store_true", help="list the strategies with their parameters and targets")


def probe_main(args: argparse.Namespace) -> int:
    if args.list:
        print(format_catalogue())
        return EXIT_OK
    try:
        if not args.url:
            raise UsageError("give a URL, e.g. https://twitter.com/ (or --list)")
        if args.timeout <= 0:
            raise UsageError("--timeout must be > 0")
        if args.download is not None and args.download <= 0:
            raise UsageError("--download must be > 0")
        strategy = build(args.strategy, parse_args(args.strategy_arg))
        result = run_probe(args.url, strategy, resolve=args.resolve, cafile=args.cacert, insecure=args.insecure,
                           timeout=args.timeout, download=args.download, slow_kbps=args.slow_kbps,
                           quic=args.quic)
    except (UsageError, StrategyError) as e:
        print(f"redweb probe: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(result.to_json() if args.json else format_text(result), flush=True)
    return EXIT_OK if result.outcome == "ok" else EXIT_FAIL


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["server-side"]:
        from dpi.strategies.server import add_server_side_arguments, server_side_main
        sp = argparse.ArgumentParser(prog="python -m dpi.probe server-side",
                                     description="server-side strategies: run on the server's host (root)")
        add_server_side_arguments(sp)
        return server_side_main(sp.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="redweb probe", description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_probe_arguments(p)
    try:
        return probe_main(p.parse_args(argv))
    except BrokenPipeError:  # `| head`: the reader went away, which is not a failure of the probe
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
