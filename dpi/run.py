"""`redweb run` (the inline censor on NFQUEUE) and `redweb cleanup` (rules left by a killed run).

`run` is a supervisor: it checks everything it can before touching the system (each failure is one line and
exit code 2), forks one worker per queue (`dpi.nfqueue`), installs the rules (`dpi.iptables`) only once every
worker has bound its queue, serves metrics, and on SIGINT/SIGTERM/SIGHUP, on a worker's death or on any error
removes every rule it added before it exits. A run killed with SIGKILL cannot do that: its workers die with it
(PR_SET_PDEATHSIG), its rules stay and `--queue-bypass` (the default) lets traffic through until
`redweb cleanup` or the next `redweb run` removes them.

Exit codes (DESIGN.md): 0 stopped normally, 1 the censor failed while running, 2 bad usage or a failed preflight.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import time
from typing import Any, Sequence

from dpi import iptables
from dpi.iptables import RuleSet, SetupError, parse_network, parse_queues
from dpi.metrics import MetricsServer, parse_address, split_rule_counter
from dpi.nfqueue import (CensorFactory, EventLog, QueueBusy, QueueError, ResidualStore, WorkerPool, busy_message,
                         nfqueue_available, queue_holders, write_pcap_header)

VERIFY_INTERVAL = 10.0  # seconds between checks that nobody removed our rules by hand


class _Preflight(Exception):
    """A check failed before anything was changed (exit 2)."""


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, metavar="NAME", help="bundled profile name or path to a YAML profile")
    p.add_argument("--queues", default="0", metavar="A-B",
                   help="NFQUEUE numbers, one worker process each (default 0; e.g. 0-1 for two cores)")
    p.add_argument("--inside", action="append", default=[], metavar="CIDR",
                   help="censored network (repeatable); overrides the profile's inside networks")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics over HTTP, e.g. 127.0.0.1:9100")
    p.add_argument("--log", metavar="FILE", help="append censorship events as JSON lines ('-' for stdout)")
    p.add_argument("--pcap", metavar="FILE", help="write the packets of censored flows (LINKTYPE_RAW pcap)")
    p.add_argument("--local", action="store_true",
                   help="censor this host's own traffic (INPUT/OUTPUT) instead of forwarded traffic")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--queue-bypass", dest="fail_closed", action="store_false", default=False,
                      help="if no worker listens, the kernel lets packets through (default)")
    mode.add_argument("--fail-closed", dest="fail_closed", action="store_true",
                      help="if no worker listens or the engine fails on a packet, drop it")
    p.add_argument("--seed", type=int, default=None, help="random seed (probabilistic rules, injector fields)")
    p.add_argument("--no-ipv6", action="store_true", help="leave IPv6 alone (no ip6tables rules)")
    p.add_argument("--no-offload", dest="offload", action="store_false", default=True,
                   help="keep every packet of every flow in user space (no connmark fast path): for "
                        "benchmarks and debugging")


def add_cleanup_arguments(p: argparse.ArgumentParser) -> None:
    """`redweb cleanup` takes no options; kept for symmetry with the other commands."""


def _err(msg: str) -> None:
    print(f"redweb: error: {msg}", file=sys.stderr, flush=True)


def _say(msg: str) -> None:
    print(f"redweb: {msg}", flush=True)


def _check_system(ipv6: bool) -> None:
    if os.geteuid() != 0:
        raise _Preflight("must run as root (iptables and NFQUEUE need CAP_NET_ADMIN): run it with sudo")
    for b in ("iptables", "ip6tables") if ipv6 else ("iptables",):
        if shutil.which(b) is None:
            extra = " or run with --no-ipv6" if b == "ip6tables" else ""
            raise _Preflight(f"{b} not found: install it (apt-get install iptables){extra}")


def _check_writable(path: str | None, what: str) -> None:
    if path is None or path == "-":
        return
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise _Preflight(f"{what} {path!r}: directory {d!r} does not exist: create it or choose another path")
    if os.path.exists(path) and not os.access(path, os.W_OK) or not os.access(d, os.W_OK):
        raise _Preflight(f"{what} {path!r} is not writable: choose another path")


class EngineFactory:
    """Builds `dpi.engine.Censor` in each worker (after the fork) from a profile loaded once in the supervisor."""

    def __init__(self, profile: Any, seed: int | None, inside: tuple) -> None:
        self.profile, self.seed, self.inside = profile, seed, inside

    def __call__(self, residual: ResidualStore | None) -> Any:
        from dpi.engine import Censor
        kw: dict[str, Any] = {"seed": self.seed, "inside": self.inside or None}
        if residual is not None:
            kw["residual"] = residual
        return Censor(self.profile, **kw)


def _load_engine(args: argparse.Namespace, inside: tuple) -> EngineFactory:
    try:
        from dpi.profile import ProfileError, load_profile
    except ImportError as e:
        raise _Preflight(f"the profile loader is missing ({e}): reinstall RedWeb (make setup)")
    try:
        profile = load_profile(args.profile)
    except ProfileError as e:
        lines = str(e).splitlines() or [f"bad profile {args.profile!r}"]
        more = f" (and {len(lines) - 1} more issues: `redweb check` lists them)" if len(lines) > 1 else ""
        raise _Preflight(lines[0] + more)
    except OSError as e:
        raise _Preflight(f"cannot read profile {args.profile!r}: {e.strerror}: `redweb profiles` lists the names")
    try:
        import dpi.engine  # noqa: F401
    except ImportError as e:
        raise _Preflight(f"the censor engine is missing ({e}): reinstall RedWeb (make setup)")
    return EngineFactory(profile, args.seed, inside)


def _summary(counters: dict[int, dict[str, int]], seconds: float) -> list[str]:
    tot: dict[str, int] = {}
    for c in counters.values():
        for k, v in c.items():
            tot[k] = tot.get(k, 0) + v
    g = tot.get
    lines = [f"stopped after {seconds:.1f} s: {g('nfq:packets', 0)} packets queued "
             f"({g('nfq:accept', 0)} accepted, {g('nfq:drop', 0)} dropped); "
             f"{g('nfq:offload:accept', 0) + g('nfq:offload:drop', 0)} flows offloaded to the kernel "
             f"({g('nfq:offload:accept', 0)} accept, {g('nfq:offload:drop', 0)} drop); "
             f"{g('nfq:injected', 0)} forged packets sent; {g('nfq:errors', 0)} engine errors"]
    rules = sorted((ra, v) for k, v in tot.items() if (ra := split_rule_counter(k)) is not None)
    lines += [f"  rule {rule}: {action} x{v}" for (rule, action), v in rules]
    return lines


def run_main(args: argparse.Namespace, *, censor_factory: CensorFactory | None = None) -> int:
    """`redweb run`. `censor_factory` replaces the profile's engine (tests drive the plumbing with it)."""
    started = time.monotonic()
    try:
        queues = parse_queues(args.queues)
        inside = tuple(parse_network(c) for c in args.inside)
        metrics_addr = parse_address(args.metrics) if args.metrics else None
        _check_system(not args.no_ipv6)
        reason = nfqueue_available()
        if reason:
            raise _Preflight(reason)
        holders = queue_holders()
        for q in range(queues[0], queues[1] + 1):
            if q in holders:
                raise _Preflight(busy_message(q, holders[q]))
        _check_writable(args.log, "log file")
        _check_writable(args.pcap, "pcap file")
        factory = censor_factory if censor_factory is not None else _load_engine(args, inside)
        stale = iptables.stale_rules()
        live = iptables.stale_queues(lines=stale) & set(holders)
        if stale and live:
            raise _Preflight(f"another redweb run is active (queues {sorted(live)} are bound and RedWeb rules are "
                             "installed): stop it first, or run `redweb cleanup` if it is not RedWeb")
        metrics = None
        if metrics_addr is not None:
            try:
                metrics = MetricsServer(metrics_addr, lambda: pool.counters())
            except OSError as e:
                raise _Preflight(f"cannot serve metrics on {args.metrics}: {e.strerror}: choose another address")
    except (_Preflight, ValueError) as e:
        _err(str(e))
        return 2

    # From here on the system changes; every path out goes through the finally below.
    if stale:
        _say(f"found {len(stale)} stale RedWeb rules/chains from an earlier run; removing them first")
        iptables.cleanup()
    rules = RuleSet(queues, mode="local" if args.local else "forward", fail_closed=args.fail_closed,
                    ipv6=not args.no_ipv6)
    if args.pcap:
        write_pcap_header(args.pcap)
    pool = WorkerPool(queues, factory, fail_closed=args.fail_closed, log_path=args.log, pcap_path=args.pcap,
                      offload=getattr(args, "offload", True))
    log = EventLog(args.log)
    stop_reason: list[str] = []
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def on_signal(signum: int, _frame: object) -> None:
        stop_reason.append(signal.Signals(signum).name)
        try:
            wake_w.send(b"x")
        except OSError:
            pass

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    rc = 0
    installed = False
    try:
        # Workers bind before any rule exists, so no packet is ever queued to nobody (this matters fail-closed).
        pool.start()
        if stop_reason:
            return 0
        rules.install()
        installed = True
        if metrics is not None:
            metrics.start()
        qtext = f"{queues[0]}" if queues[0] == queues[1] else f"{queues[0]}-{queues[1]}"
        where = "this host's traffic (INPUT/OUTPUT)" if args.local else "forwarded traffic"
        parts = [f"censoring {where} with profile {args.profile} on queue{'s' if queues[1] > queues[0] else ''} "
                 f"{qtext} ({'IPv4' if args.no_ipv6 else 'IPv4+IPv6'}, "
                 f"{'fail-closed' if args.fail_closed else 'fail-open'})"]
        if inside:
            parts.append("inside " + ",".join(map(str, inside)))
        if metrics is not None:
            host, port = metrics.address
            parts.append(f"metrics http://{'[' + host + ']' if ':' in host else host}:{port}/metrics")
        if args.log:
            parts.append(f"events to {'stdout' if args.log == '-' else args.log}")
        _say("; ".join(parts) + "; Ctrl-C stops and removes the rules")
        log.write({"event": "start", "time": time.time(), "profile": args.profile, "queues": list(queues),
                   "mode": "local" if args.local else "forward", "fail_closed": args.fail_closed,
                   "inside": [str(n) for n in inside], "pid": os.getpid()})
        next_verify = time.monotonic() + VERIFY_INTERVAL
        reported_missing: list[str] = []
        while not stop_reason:
            dead = pool.poll(1.0, extra=[wake_r])
            if dead:
                for line in dead:
                    _err(line)
                _err("removing the rules and stopping")
                rc = 1
                break
            if time.monotonic() >= next_verify:
                next_verify = time.monotonic() + VERIFY_INTERVAL
                missing = rules.verify()
                if missing and missing != reported_missing:
                    _err(f"{len(missing)} RedWeb rules were removed behind our back; traffic is not censored as "
                         f"configured (restart redweb run): first missing: {missing[0]}")
                    log.write({"event": "rules-missing", "time": time.time(), "missing": missing})
                reported_missing = missing
    except SetupError as e:
        _err(str(e))
        rc = 2
    except QueueBusy as e:
        _err(str(e))
        rc = 2
    except QueueError as e:
        _err(str(e))
        rc = 1
    finally:
        # Rules first, so new packets stop being queued; then the workers drain and stop. Nothing installed,
        # nothing to remove (a failed install has undone itself): never touch rules this run did not add.
        left: list[str] = []
        if installed:
            rules.remove()
            left = iptables.stale_rules()
        counters = pool.stop()
        if metrics is not None:
            metrics.stop()
        for s, h in old.items():
            signal.signal(s, h)
        wake_r.close()
        wake_w.close()
        if installed:
            elapsed = time.monotonic() - started
            for line in _summary(counters, elapsed):
                _say(line)
            totals: dict[str, int] = {}
            for c in counters.values():
                for k, v in c.items():
                    totals[k] = totals.get(k, 0) + v
            log.write({"event": "stop", "time": time.time(), "reason": stop_reason[0] if stop_reason else
                       ("worker-died" if rc else "exit"), "seconds": round(elapsed, 3), "counters": totals,
                       "queues": {str(q): c for q, c in counters.items()}})
        if left:
            _err(f"{len(left)} RedWeb rules could not be removed (first: {left[0]}): run `redweb cleanup`")
            rc = rc or 1
        log.close()
    return rc


def cleanup_main(args: argparse.Namespace) -> int:
    """`redweb cleanup`: remove every RedWeb rule and chain (IPv4 and IPv6) left by a killed run."""
    try:
        _check_system(ipv6=False)
    except _Preflight as e:
        _err(str(e))
        return 2
    live = iptables.stale_queues(lines=iptables.stale_rules()) & set(queue_holders())
    n = iptables.cleanup()
    left = iptables.stale_rules()
    if left:
        _err(f"{len(left)} RedWeb rules could not be removed, first: {left[0]}")
        return 1
    _say(f"removed {n} RedWeb rules and chains" if n else "no RedWeb rules found")
    if live and n:
        _say(f"note: queues {sorted(live)} are still bound: a redweb run is alive; its traffic now bypasses it")
    return 0


def main(argv: Sequence[str] | None = None, *, censor_factory: CensorFactory | None = None) -> int:
    """`python -m dpi.run run|cleanup ...` (the `redweb` CLI calls run_main/cleanup_main directly)."""
    p = argparse.ArgumentParser(prog="redweb")
    sub = p.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="inline censor on NFQUEUE"))
    add_cleanup_arguments(sub.add_parser("cleanup", help="remove rules left by a killed run"))
    args = p.parse_args(argv)
    if args.command == "run":
        return run_main(args, censor_factory=censor_factory)
    return cleanup_main(args)


if __name__ == "__main__":
    sys.exit(main())
