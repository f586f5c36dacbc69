"""`redweb run` (the inline censor on NFQUEUE) and `redweb cleanup` (rules left by a killed run).

`run` is a supervisor: it checks everything it can before touching the system (each failure is one line and
exit code 2), forks one worker per queue (`dpi.nfqueue`), installs the rules (`dpi.iptables`) only once every
worker has bound its queue, serves metrics, and on SIGINT/SIGTERM/SIGHUP, on a worker's death or on any error
removes every rule it added before it exits. A run killed with SIGKILL cannot do that: its workers die with it
(PR_SET_PDEATHSIG), its rules stay and `--queue-bypass` (the default) lets traffic through until
`redweb cleanup` or the next `redweb run` removes them.

While it runs, the supervisor keeps the censor up (issue 7): a worker that dies or stops answering is restarted
(at most `--restart-limit` times a minute per queue, then the run stops); every `--verify-interval` seconds it
checks that its rules are all still installed and compares the packets that reached the queue rules with those
the workers received, so that an overloaded queue (packets passed uninspected when fail-open, dropped when
fail-closed) is counted, logged once when it starts and once when it is over.

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

from dpi import iptables, nodefrag
from dpi.eventlog import EventLog, write_pcap_header
from dpi.iptables import RuleSet, SetupError, parse_interface, parse_network, parse_queues
from dpi.metrics import MetricsServer, parse_address, split_rule_counter
from dpi.nfqueue import DEFAULT_QUEUE_MAXLEN, CensorFactory, WorkerPool
from dpi.queueinfo import (QueueBusy, QueueError, QueueStats, busy_message, nfqueue_available, queue_holders,
                           queue_stats)
from dpi.residual import ResidualStore

VERIFY_INTERVAL = 10.0  # seconds between checks that nobody removed our rules by hand (and of queue overload)
RESTART_LIMIT = 5  # worker restarts per queue within RESTART_WINDOW before the run gives up
RESTART_WINDOW = 60.0
WATCHDOG = 10.0  # seconds without a heartbeat after which a worker counts as stuck


class _OneLineErrors:
    """argparse prints its usage block before an error; `redweb run` says one line naming the fix instead."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.parse_known_args = parser.parse_known_args

    def error(self, message: str) -> None:  # pragma: no cover - exercised through the CLI
        print(f"redweb: error: {message} (`redweb {self.parser.prog.split()[-1]} --help` lists the options)",
              file=sys.stderr, flush=True)
        sys.exit(2)

    def parse_known_args_strict(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        # As a subcommand, unknown arguments would be reported by the top-level parser with its usage block.
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized argument{'s' if len(extras) > 1 else ''} {' '.join(extras)}")
        return ns, extras


def _one_line_errors(p: argparse.ArgumentParser) -> None:
    h = _OneLineErrors(p)
    p.error = h.error  # type: ignore[method-assign]
    p.parse_known_args = h.parse_known_args_strict  # type: ignore[method-assign]


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, e.g. 10 or 0.5") from None
    if not 0 < v <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 86400 seconds")
    return v


def _seconds_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _positive_float(text)


def _count(lo: int, hi: int) -> Any:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} must be between {lo} and {hi}")
        return v
    return parse


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
    p.add_argument("--interface", action="append", default=[], metavar="IFACE",
                   help="censor only traffic entering or leaving through IFACE (repeatable; eth+ matches every "
                        "name starting with eth); default: every interface")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--queue-bypass", dest="fail_closed", action="store_false", default=False,
                      help="if no worker listens or its queue is full, the kernel lets packets through "
                           "uninspected (default; counted and logged)")
    mode.add_argument("--fail-closed", dest="fail_closed", action="store_true",
                      help="if no worker listens, its queue is full or the engine fails on a packet, drop it "
                           "(counted and logged)")
    p.add_argument("--seed", type=int, default=None, help="random seed (probabilistic rules, injector fields)")
    p.add_argument("--no-ipv6", action="store_true", help="leave IPv6 alone (no ip6tables rules)")
    p.add_argument("--no-offload", dest="offload", action="store_false", default=True,
                   help="keep every packet of every flow in user space (no connmark fast path): for "
                        "benchmarks and debugging")
    p.add_argument("--queue-maxlen", type=_count(1, 1 << 20), default=DEFAULT_QUEUE_MAXLEN, metavar="N",
                   help="packets the kernel holds per queue before the policy applies: fail-open passes the rest "
                        f"uninspected, fail-closed drops them (default {DEFAULT_QUEUE_MAXLEN})")
    p.add_argument("--restart-limit", type=_count(0, 1000), default=RESTART_LIMIT, metavar="N",
                   help=f"restart a dead or stuck worker at most N times a minute per queue, then stop (default "
                        f"{RESTART_LIMIT}; 0: a dead worker stops the run)")
    p.add_argument("--watchdog", type=_seconds_or_zero, default=WATCHDOG, metavar="SECONDS",
                   help=f"a worker silent this long is stuck: kill and restart it (default {WATCHDOG:g}; 0: off)")
    p.add_argument("--verify-interval", type=_positive_float, default=VERIFY_INTERVAL, metavar="SECONDS",
                   help="how often to check that every rule is still installed and whether the queues overflow "
                        f"(default {VERIFY_INTERVAL:g})")
    _one_line_errors(p)


def add_cleanup_arguments(p: argparse.ArgumentParser) -> None:
    """`redweb cleanup` takes no options; kept for symmetry with the other commands."""


def _err(msg: str) -> None:
    print(f"redweb: error: {msg}", file=sys.stderr, flush=True)


def _warn(msg: str) -> None:
    print(f"redweb: warning: {msg}", file=sys.stderr, flush=True)


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
    """Open the file as the run will; a file that did not exist is removed again (a failed run changes nothing).

    access() is not enough: root passes it for /proc, a read-only mount or a full disk."""
    if path is None or path == "-":
        return
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise _Preflight(f"{what} {path!r}: directory {d!r} does not exist: create it or choose another path")
    existed = os.path.exists(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | (0 if existed else os.O_CREAT | os.O_EXCL), 0o644)
    except OSError as e:
        raise _Preflight(f"{what} {path!r} is not writable ({e.strerror}): choose another path") from None
    os.close(fd)
    if not existed:
        try:
            os.unlink(path)
        except OSError:
            pass


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
    factory = EngineFactory(profile, args.seed, inside)
    # Build the censor once here: its lists are read and compiled now, so a malformed list is a preflight error
    # (exit 2, nothing changed) instead of a worker dying after the rules went in.
    try:
        factory(None)
    except Exception as e:
        lines = str(e).splitlines() or [type(e).__name__]
        more = f" (and {len(lines) - 1} more issues)" if len(lines) > 1 else ""
        raise _Preflight(f"profile {args.profile!r} cannot be compiled: {lines[0]}{more}")
    return factory


def _defragments(factory: Any) -> bool:
    """Whether the kernel may reassemble IP fragments in front of this censor (flows.fragments, T22-5); a
    censor without a profile (the tests' plumbing) leaves the kernel as it is."""
    profile = getattr(factory, "profile", None)
    return getattr(getattr(profile, "flows", None), "fragments", "reassemble") != "forward"


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
    extra = []
    if g("nfq:restarts", 0):
        extra.append(f"{g('nfq:restarts')} worker restarts")
    if g("evicted", 0):
        extra.append(f"{g('evicted')} flows evicted from the full flow table")
    if extra:
        lines.append("  " + "; ".join(extra))
    rules = sorted((ra, v) for k, v in tot.items() if (ra := split_rule_counter(k)) is not None)
    lines += [f"  rule {rule}: {action} x{v}" for (rule, action), v in rules]
    return lines


class RestartPolicy:
    """At most `limit` restarts of one queue's worker within `window` seconds: a worker that keeps dying (a bad
    profile, a packet of death replayed by the sender) must not turn the censor into a fork loop."""

    def __init__(self, limit: int, window: float = RESTART_WINDOW) -> None:
        self.limit, self.window = limit, window
        self._times: dict[int, list[float]] = {}

    def allow(self, queue: int, now: float) -> bool:
        recent = [t for t in self._times.get(queue, []) if now - t < self.window]
        if len(recent) >= self.limit:
            self._times[queue] = recent
            return False
        self._times[queue] = recent + [now]
        return True


class QueueAccounting:
    """Packets the censor never saw, counted on the kernel's side: queue-rule hits minus packets handed to a queue.

    A packet that reaches an NFQUEUE rule is either given an id by the queue instance (`id_sequence`) or not:
    not when no worker is bound (--queue-bypass passes it, fail-closed drops it) or when the queue is full
    (NFQA_CFG_F_FAIL_OPEN passes it, else the kernel drops and counts it). Fail-closed adds the packets the
    socket buffer could not take (`user_dropped`, which did get an id). Only kernel counters are used: the
    workers' own snapshots lag, which would make packets look lost that were not. The rule counters are read
    before the queue counters, so an estimate can only be low, and the next check corrects it.

    Counters of a queue instance die with it (a restarted worker binds a new one): they are banked whenever the
    port id of a queue changes. Packets a killed worker received after the last check are lost from the bank and
    counted as unserved (packets it held without a verdict really were dropped by the kernel).
    """

    def __init__(self, queues: list[int], fail_closed: bool) -> None:
        self.queues, self.fail_closed = queues, fail_closed
        self._bank: dict[int, tuple[int, int, int]] = {q: (0, 0, 0) for q in queues}
        self._last: dict[int, QueueStats] = {}
        self.unserved = 0
        self.kernel: dict[int, dict[str, int]] = {q: {} for q in queues}
        self.overloaded = False
        self.overload_started = 0

    def kernel_counters(self, stats: dict[int, QueueStats]) -> dict[int, dict[str, int]]:
        for q in self.queues:
            st, last = stats.get(q), self._last.get(q)
            if last is not None and (st is None or st.portid != last.portid):
                d, u, n = self._bank[q]
                self._bank[q] = (d + last.dropped, u + last.user_dropped, n + last.id_sequence)
            if st is not None:
                self._last[q] = st
            else:
                self._last.pop(q, None)
            d, u, n = self._bank[q]
            self.kernel[q] = {"kernel:backlog": st.backlog if st else 0,
                              "kernel:dropped": d + (st.dropped if st else 0),
                              "kernel:user_dropped": u + (st.user_dropped if st else 0),
                              "kernel:queued": n + (st.id_sequence if st else 0)}
        return self.kernel

    def update(self, hits: int) -> int:
        """New total of unserved packets from the rule hits (read before `kernel_counters`); returns the increase."""
        if hits < 0:
            return 0
        queued = sum(k.get("kernel:queued", 0) for k in self.kernel.values())
        socket_drops = sum(k.get("kernel:user_dropped", 0) for k in self.kernel.values()) if self.fail_closed else 0
        total = max(self.unserved, hits - queued + socket_drops)
        added, self.unserved = total - self.unserved, total
        return added

    def supervisor_values(self) -> dict[str, int]:
        key = "unserved:dropped" if self.fail_closed else "unserved:passed"
        return {key: self.unserved}


def run_main(args: argparse.Namespace, *, censor_factory: CensorFactory | None = None) -> int:
    """`redweb run`. `censor_factory` replaces the profile's engine (tests drive the plumbing with it)."""
    started = time.monotonic()
    try:
        queues = parse_queues(args.queues)
        inside = tuple(parse_network(c) for c in args.inside)
        interfaces = tuple(dict.fromkeys(parse_interface(i) for i in getattr(args, "interface", [])))
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
        defragment = _defragments(factory)
        if not defragment:
            try:
                nodefrag.require_nft(f"profile {args.profile}")
            except nodefrag.NoDefragError as e:
                raise _Preflight(str(e)) from None
        stale = iptables.stale_rules()
        live = iptables.stale_queues(lines=stale) & set(holders)
        if stale and live:
            raise _Preflight(f"another redweb run is active (queues {sorted(live)} are bound and RedWeb rules are "
                             "installed): stop it first, or run `redweb cleanup` if it is not RedWeb")
        metrics = None
        if metrics_addr is not None:
            try:
                metrics = MetricsServer(metrics_addr, lambda: all_counters(), lambda: supervisor_values)
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
                    ipv6=not args.no_ipv6, defragment=defragment, interfaces=interfaces)
    if args.pcap:
        write_pcap_header(args.pcap)
    pool = WorkerPool(queues, factory, fail_closed=args.fail_closed, log_path=args.log, pcap_path=args.pcap,
                      offload=getattr(args, "offload", True),
                      queue_maxlen=getattr(args, "queue_maxlen", DEFAULT_QUEUE_MAXLEN))
    accounting = QueueAccounting(pool.queues, args.fail_closed)
    supervisor_values: dict[str, int] = {}
    policy = RestartPolicy(getattr(args, "restart_limit", RESTART_LIMIT))
    watchdog = float(getattr(args, "watchdog", WATCHDOG))
    verify_interval = float(getattr(args, "verify_interval", VERIFY_INTERVAL))

    def all_counters() -> dict[int, dict[str, int]]:
        out = pool.counters()
        for q, extra in accounting.kernel.items():
            out.setdefault(q, {}).update(extra)
        return out

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
        if interfaces:
            parts.append("on " + ",".join(interfaces))
        if metrics is not None:
            host, port = metrics.address
            parts.append(f"metrics http://{'[' + host + ']' if ':' in host else host}:{port}/metrics")
        if args.log:
            parts.append(f"events to {'stdout' if args.log == '-' else args.log}")
        _say("; ".join(parts) + "; Ctrl-C stops and removes the rules")
        log.write({"event": "start", "time": time.time(), "profile": args.profile, "queues": list(queues),
                   "mode": "local" if args.local else "forward", "fail_closed": args.fail_closed,
                   "inside": [str(n) for n in inside], "interfaces": list(interfaces), "pid": os.getpid()})
        next_verify = time.monotonic() + verify_interval
        reported_missing: list[str] = []
        checks = 0
        while not stop_reason:
            for death in pool.poll(min(1.0, verify_interval), extra=[wake_r], watchdog=watchdog):
                q = death.queue
                if not policy.allow(q, time.monotonic()):
                    limit = policy.limit
                    _err(death.message + (f"; it died more than {limit} times within {RESTART_WINDOW:g} s"
                                          if limit else "") + ": removing the rules and stopping "
                         "(--restart-limit sets how often a worker is restarted)")
                    log.write({"event": "worker-died", "time": time.time(), "queue": q, "message": death.message,
                               "restarted": False})
                    rc = 1
                    stop_reason.append("worker-died")
                    break
                try:
                    pool.restart(q)
                except QueueError as e:
                    _err(f"{death.message}; restarting it failed: {e}: removing the rules and stopping")
                    rc = 1
                    stop_reason.append("worker-died")
                    break
                _say(f"{death.message}; restarted it (restart {pool.restarts[q]}; flows it held are re-learned, "
                     "residual blocking is kept)")
                log.write({"event": "worker-restart", "time": time.time(), "queue": q, "message": death.message,
                           "restarts": pool.restarts[q], "pid": pool.pids().get(q)})
            if stop_reason:
                break
            if time.monotonic() >= next_verify:
                next_verify = time.monotonic() + verify_interval
                checks += 1
                missing = rules.verify()
                if missing and missing != reported_missing:
                    _err(f"{len(missing)} RedWeb rules were removed behind our back; traffic is not censored as "
                         f"configured (restart redweb run): first missing: {missing[0]}")
                    log.write({"event": "rules-missing", "time": time.time(), "missing": missing})
                elif reported_missing and not missing:
                    _say("every RedWeb rule is installed again")
                    log.write({"event": "rules-restored", "time": time.time()})
                reported_missing = missing
                _check_overload(rules, accounting, args.fail_closed, log)
                supervisor_values.clear()
                supervisor_values.update(accounting.supervisor_values())
                supervisor_values.update({"rules:missing": len(missing), "rules:checks": checks})
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
            try:
                _check_overload(rules, accounting, args.fail_closed, log)  # final numbers for the summary
            except Exception:
                pass
            rules.remove()
            left = iptables.stale_rules()
        counters = pool.stop()
        for q, extra in accounting.kernel.items():
            counters.setdefault(q, {}).update(extra)
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
            totals.update(accounting.supervisor_values())
            log.write({"event": "stop", "time": time.time(), "reason": stop_reason[0] if stop_reason else
                       ("worker-died" if rc else "exit"), "seconds": round(elapsed, 3), "counters": totals,
                       "queues": {str(q): c for q, c in counters.items()}})
        if left:
            _err(f"{len(left)} RedWeb rules could not be removed (first: {left[0]}): run `redweb cleanup`")
            rc = rc or 1
        log.close()
    return rc


def _check_overload(rules: RuleSet, accounting: QueueAccounting, fail_closed: bool, log: EventLog) -> None:
    """Count packets the censor never saw since the last check; say so once when it starts and once when it ends.

    See `QueueAccounting` for what is counted and why only kernel counters are used.
    """
    hits = rules.queue_rule_hits()
    kernel = accounting.kernel_counters(queue_stats())
    backlog = sum(k.get("kernel:backlog", 0) for k in kernel.values())
    added = accounting.update(hits)
    what = "dropped (fail-closed)" if fail_closed else "passed uninspected (fail-open)"
    if added > 0 and not accounting.overloaded:
        accounting.overloaded, accounting.overload_started = True, accounting.unserved - added
        _warn(f"queue overload: {added} packets reached the queues faster than the workers decide and were {what}; "
             f"kernel backlog {backlog}: add workers (--queues), or enlarge --queue-maxlen")
        log.write({"event": "overload", "time": time.time(), "packets": added, "backlog": backlog,
                   "policy": "fail-closed" if fail_closed else "fail-open"})
    elif added == 0 and accounting.overloaded:
        accounting.overloaded = False
        n = accounting.unserved - accounting.overload_started
        _say(f"queue overload over: every packet is inspected again ({n} packets were {what})")
        log.write({"event": "overload-end", "time": time.time(), "packets": n})


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
