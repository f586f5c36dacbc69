"""NFQUEUE workers: feed queued packets to the sans-IO censor and carry out its decisions.

One worker process per queue (forked, so a profile loaded once is shared copy-on-write), each with its own
`Censor`. `--queue-balance` hashes the address pair symmetrically, so both directions of a flow reach the same
worker and per-flow state never has to cross processes. Residual blocking does (G-4, GE-1, GF-3, GQ-2: a
`server-ip` key spans clients that hash to different queues), so residual entries live in one table served by a
manager process (`dpi.sharedresidual`).

The per-packet callback is compiled (`dpi._verdict`); this module is what surrounds it: the poll loop, the timer
heap of delayed injections (`dpi.inject`), the event log and pcap (`dpi.eventlog`), counters, and the supervisor's
`WorkerPool`. The kernel's side of the queue (bound? by whom? fail-open flag) is `dpi.queueinfo`.

A worker applies a `Decision` as follows:
- undecided flow (MARK_NONE): accept or drop this packet;
- decided flow: give the packet an nfmark bit and NF_REPEAT; the chain of `dpi.iptables` saves the bit into the
  connmark and settles the rest of the flow in the kernel (the fast path);
- forged packets go out through raw sockets marked PASS (never queued again), at their delay, from a timer
  heap serviced by the same poll loop that reads the queue;
- events become JSON lines in the event log; packets of flows with an event may be written to a pcap.

A callback never raises into netfilterqueue: an exception in the censor is counted, logged once with the
packet in hex, and the packet is accepted (fail-open) or dropped (fail-closed).

Overload and faults (issue 7): a censor in the path of all traffic must never become the outage.
- A full queue: fail-open runs set NFQA_CFG_F_FAIL_OPEN on their queue (netfilterqueue does not expose it, so
  the config message is sent on its netlink socket), so the kernel accepts what does not fit instead of
  dropping it; `--queue-bypass` alone only covers "nobody bound". Fail-closed runs let the kernel drop and count.
- A worker that dies (or stops answering: every worker sends a heartbeat) is restarted by `WorkerPool` with a
  fresh censor; residual state survives because it lives in the manager process, and the flows the dead worker
  held are re-learned as the profile says (mid-connection packets: with `require_syn` never censored).
"""
from __future__ import annotations

import heapq
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.managers
import os
import select
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from dpi.decision import MARK_ACCEPT, MARK_DROP, Decision
from dpi.eventlog import CensoredFlowRecorder, EventLog
from dpi.inject import Injector
from dpi.iptables import FLOW_ACCEPT, FLOW_DROP, PASS
from dpi.proc import process_rss, set_name, set_pdeathsig
from dpi.queueinfo import (
    QueueBusy,
    QueueError,
    busy_message,
    queue_holders,
    set_queue_fail_open,
)
from dpi.residual import ResidualStore
from dpi.sharedresidual import MirroredResidual, SharedResidual

PUBLISH_INTERVAL = 0.5  # seconds between counter snapshots (also the heartbeat) sent to the supervisor
DEFAULT_QUEUE_MAXLEN = 4096  # packets the kernel holds for one queue before the fail-open/closed policy applies
# Worker counters that are levels, not totals: the supervisor does not add them up across restarts.
GAUGES = frozenset({"nfq:pending_injections", "worker:rss_bytes", "core:memory_bytes", "core:capacity",
                    "active_flows"})


class CensorLike(Protocol):
    """What a worker needs from `dpi.engine.Censor` (and from the tests' plumbing censor).

    Counters come from `counters_snapshot()` when the censor has it (the engine keeps `counters` as a Counter
    attribute), else from a `counters()` method; see `censor_counters`.
    """

    def process(self, packet: bytes, ts: float) -> Decision: ...


CensorFactory = Callable[["ResidualStore | None"], CensorLike]


def censor_counters(censor: Any) -> dict[str, int]:
    """The censor's counters as a plain dict, whichever way it exposes them."""
    snap = getattr(censor, "counters_snapshot", None)
    if callable(snap):
        return {str(k): int(v) for k, v in snap().items()}
    c = getattr(censor, "counters", None)
    if callable(c):
        c = c()
    return {str(k): int(v) for k, v in (c or {}).items()}


# -- the worker ----------------------------------------------------------------------------------------------------
READ_BATCH = 256  # packets read from the queue before the worker looks at its timers and heartbeat again


class _BatchDone(Exception):
    """Raised by the callback after READ_BATCH packets: netfilterqueue propagates it out of its read loop, so the
    worker gets back to its poll loop (timers, heartbeat) even when packets keep coming. Raising once per batch
    from the callback costs less than a Python-level recv() per packet."""


@dataclass(frozen=True)
class WorkerConfig:
    queue: int
    fail_closed: bool = False
    log_path: str | None = None
    pcap_path: str | None = None
    offload: bool = True  # give decided flows to the kernel (connmark); False keeps every packet in user space
    max_logged_errors: int = 10
    queue_maxlen: int = DEFAULT_QUEUE_MAXLEN  # kernel backlog of the queue; past it fail-open passes, else drops


class Worker:
    """Serves one queue: the netfilterqueue callback, the timer heap of delayed injections, counter snapshots."""

    def __init__(self, censor: CensorLike, config: WorkerConfig,
                 publish: Callable[[dict[str, int]], None] | None = None) -> None:
        self.censor = censor
        self.cfg = config
        self._publish = publish
        self._injector = Injector()
        self._log = EventLog(config.log_path)
        self._pcap = CensoredFlowRecorder(config.pcap_path) if config.pcap_path else None
        self._timers: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._seen_errors: set[str] = set()
        self._nfq: Any = None
        self.stopping = False
        # What only Python does (forged packets, events, pcap) is counted here; the per-packet verdict counters
        # live in the compiled callback (`counters()` names them all).
        self.injected = self.inject_errors = self.apply_errors = 0
        self.fail_open_problem: str | None = None  # why NFQA_CFG_F_FAIL_OPEN could not be set (None: it is)
        # The netfilterqueue callback. For the compiled engine an ordinary packet never runs Python; `_slow`
        # is called for packets with forged packets or events (and for every packet when recording a pcap).
        self._decision = getattr(censor, "decision", None)
        from dpi import (
            _verdict,  # here, not at the top: it needs netfilterqueue, which `redweb run` checks first
        )
        self.path = _verdict.VerdictPath(
            censor, slow=self._slow, failed=self._failed, batch_done=_BatchDone, offload=config.offload,
            fail_closed=config.fail_closed, always_slow=self._pcap is not None, mark_accept=MARK_ACCEPT,
            mark_drop=MARK_DROP, flow_accept=FLOW_ACCEPT, flow_drop=FLOW_DROP, pass_mark=PASS)

    def _slow(self, data: bytes, what: Decision | int) -> None:
        """The rare packets that do more than pass or drop. `what` is the censor's Decision, or for the compiled
        engine the verdict code, from which the engine hands over this packet's forged packets and events."""
        try:
            d = what if isinstance(what, Decision) else self._decision(what)
            if self._pcap is not None:  # first: the flow must be known as censored before its RSTs go out
                self._pcap.packet(data, bool(d.events))
            if d.inject:
                self._schedule(d.inject)
            if d.events:
                self._events(d.events)
        except Exception as e:
            self.apply_errors += 1
            self._log_once(e, data, "apply")

    def _failed(self, e: BaseException, data: bytes) -> None:
        self._log_once(e, data, "process")

    def _log_once(self, e: BaseException, data: bytes, where: str) -> None:
        """Each distinct error is logged once (stderr and event log), with the packet that raised it."""
        sig = f"{where}:{type(e).__name__}:{e}"
        if sig in self._seen_errors or len(self._seen_errors) >= self.cfg.max_logged_errors:
            return
        self._seen_errors.add(sig)
        action = "dropped" if self.cfg.fail_closed and where == "process" else "accepted"
        print(f"redweb: queue {self.cfg.queue}: {where} failed: {type(e).__name__}: {e}; packet {action} "
              f"(further identical errors are only counted); packet: {data.hex()}", file=sys.stderr, flush=True)
        self._log.write({"event": "error", "time": time.time(), "queue": self.cfg.queue, "where": where,
                         "error": f"{type(e).__name__}: {e}", "packet": data.hex()})

    def _events(self, events: list[dict]) -> None:
        if not self._log.enabled:
            return
        now = time.time()
        for ev in events:
            line = dict(ev)
            line.setdefault("time", now)
            line.setdefault("queue", self.cfg.queue)
            self._log.write(line)

    def _schedule(self, inject: list[tuple[float, bytes]]) -> None:
        now = time.monotonic()
        for delay, packet in inject:
            if delay <= 0:
                self._send(packet)
            else:
                heapq.heappush(self._timers, (now + delay, next(self._seq), packet))

    def _send(self, packet: bytes) -> None:
        try:
            self._injector.send(packet)
            self.injected += 1
            if self._pcap is not None:
                self._pcap.forged(packet)
        except (OSError, ValueError) as e:
            self.inject_errors += 1
            self._log_once(e, packet, "inject")

    def _fire_timers(self) -> float | None:
        """Send the forged packets that are due; return seconds until the next one (None: none pending)."""
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            self._send(heapq.heappop(self._timers)[2])
        return self._timers[0][0] - now if self._timers else None

    def counters(self) -> dict[str, int]:
        v = self.path
        out = {
            "nfq:packets": v.packets, "nfq:accept": v.accepted, "nfq:drop": v.dropped,
            "nfq:offload:accept": v.offload_accept, "nfq:offload:drop": v.offload_drop,
            "nfq:fallthrough": v.fallthrough, "nfq:python": v.python, "nfq:injected": self.injected,
            "nfq:inject_errors": self.inject_errors, "nfq:errors": v.errors,
            "nfq:apply_errors": self.apply_errors + v.verdict_errors, "nfq:pending_injections": len(self._timers),
            "nfq:pcap_packets": self._pcap.written if self._pcap else 0,
            "worker:rss_bytes": process_rss(),
        }
        try:
            out.update(censor_counters(self.censor))
            core = getattr(self.censor, "core", None)
            if core is not None and callable(getattr(core, "memory_bytes", None)):
                # the flow table's bound (flows.max_flows) and what it holds now, for the pressure metrics
                out["core:memory_bytes"] = int(core.memory_bytes())
                out["core:capacity"] = int(core.capacity)
        except Exception as e:
            self._log_once(e, b"", "counters")
        return out

    # The queue and the loop.
    def bind(self) -> None:
        """Bind the queue; raise QueueError with a one-line message when that is impossible."""
        try:
            from netfilterqueue import NetfilterQueue
        except ImportError as e:
            raise QueueError(f"the Python package NetfilterQueue is missing ({e}): pip install NetfilterQueue")
        try:
            nfq = NetfilterQueue()
        except OSError as e:
            raise QueueError(f"cannot open nfnetlink_queue ({e}): run as root, and load it "
                             "(modprobe nfnetlink_queue)") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Socket rcvbuf limit" warning: a smaller buffer still works
            try:
                # The socket buffer must hold what the queue may hold, or a burst overflows it before the queue
                # is full (~2 KB of buffer per queued packet: netfilterqueue copies at most 4 KB of each).
                nfq.bind(self.cfg.queue, self.path, max_len=self.cfg.queue_maxlen,
                         sock_len=min(max(self.cfg.queue_maxlen * 2048, 1 << 21), 1 << 28))
            except OSError:
                holder = queue_holders().get(self.cfg.queue)
                if holder is not None:
                    raise QueueBusy(busy_message(self.cfg.queue, holder)) from None
                raise QueueError(f"cannot bind queue {self.cfg.queue}: is nfnetlink_queue available "
                                 "(modprobe nfnetlink_queue)?") from None
        self._nfq = nfq
        # --queue-bypass only covers "no process bound"; a full queue is fail-open only with this flag.
        self.fail_open_problem = set_queue_fail_open(nfq.get_fd(), self.cfg.queue, not self.cfg.fail_closed)
        if self.fail_open_problem and not self.cfg.fail_closed:
            print(f"redweb: queue {self.cfg.queue}: {self.fail_open_problem}; when the queue is full the kernel "
                  "drops packets (counted)", file=sys.stderr, flush=True)

    def run(self, wakeup_fd: int | None = None) -> None:
        """Serve the queue until `stopping` is set (from a signal handler; `wakeup_fd` makes poll return)."""
        assert self._nfq is not None, "bind() first"
        fd = self._nfq.get_fd()
        # Packets are read in batches (netfilterqueue's own loop reads until the socket is empty, which under a
        # flood is never): between batches the worker sends its heartbeat and fires due injections. The reading
        # is netfilterqueue's C loop (`run(block=False)`: recv with MSG_DONTWAIT into a stack buffer), not
        # `run_socket`, which pays a Python socket.recv and a fresh bytes object for every packet.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if wakeup_fd is not None:
            poller.register(wakeup_fd, select.POLLIN)
        next_publish = time.monotonic() + PUBLISH_INTERVAL
        ppid = os.getppid()
        while not self.stopping:
            until_timer = self._fire_timers()
            now = time.monotonic()
            wait = min(next_publish - now, until_timer if until_timer is not None else PUBLISH_INTERVAL)
            for rfd, _ in poller.poll(max(0, int(wait * 1000) + 1)):
                if rfd == fd:
                    self.path.batch_left = READ_BATCH
                    try:
                        self._nfq.run(False)  # returns at EAGAIN (queue empty) or when a batch is done
                    except _BatchDone:
                        pass
                elif wakeup_fd is not None:
                    try:
                        os.read(wakeup_fd, 512)
                    except OSError:
                        pass
            if time.monotonic() >= next_publish:
                next_publish = time.monotonic() + PUBLISH_INTERVAL
                if os.getppid() != ppid:  # supervisor gone (and PDEATHSIG missed): stop
                    break
                # Published every interval even when unchanged: it is also the heartbeat the supervisor's
                # watchdog waits for (a worker stuck in a callback stops sending it).
                if self._publish is not None:
                    self._publish(self.counters())
        # Drain what is still queued (the rules are removed first, so nothing new arrives).
        while True:
            self.path.batch_left = READ_BATCH
            try:
                self._nfq.run(False)
                break
            except _BatchDone:
                continue
            except OSError:
                break

    def close(self) -> None:
        if self._nfq is not None:
            try:
                self._nfq.unbind()
            except Exception:
                pass
            self._nfq = None
        self._injector.close()
        self._log.close()
        if self._pcap is not None:
            self._pcap.close()


def _worker_main(factory: CensorFactory, shared: Any, mirror: bool, cfg: WorkerConfig,
                 conn: multiprocessing.connection.Connection) -> None:
    """Entry point of a forked worker process: build the censor, bind, report ready, serve, report final counters.

    `shared` is the manager's residual store (None: the engine keeps its own); `mirror` gives this worker a
    local copy of it (one queue: no other writer), see `MirroredResidual`.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_pdeathsig(signal.SIGTERM)
    set_name(f"redweb-q{cfg.queue}")
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    worker: Worker | None = None

    def stop(_sig: int, _frm: object) -> None:
        if worker is not None:
            worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        residual = MirroredResidual(shared) if (shared is not None and mirror) else shared
        censor = factory(residual)
        worker = Worker(censor, cfg, publish=lambda snap: conn.send(("counters", cfg.queue, snap)))
        worker.bind()
        conn.send(("ready", cfg.queue, None))
        worker.run(wakeup_fd=rfd)
        conn.send(("final", cfg.queue, worker.counters()))
    except QueueBusy as e:
        _send_quiet(conn, ("busy", cfg.queue, str(e)))
    except QueueError as e:
        _send_quiet(conn, ("error", cfg.queue, str(e)))
    except BaseException as e:
        _send_quiet(conn, ("error", cfg.queue, f"worker for queue {cfg.queue} failed: {type(e).__name__}: {e}"))
    finally:
        if worker is not None:
            worker.close()


def _send_quiet(conn: multiprocessing.connection.Connection, msg: tuple) -> None:
    try:
        conn.send(msg)
    except OSError:
        pass


# -- the supervisor's side -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerDeath:
    """A worker that is gone (or was killed for not answering), with the one line that says why."""

    queue: int
    message: str


class WorkerPool:
    """One forked worker per queue in [A, B]; collects their counter snapshots, notices deaths and restarts.

    Residual state lives in a manager process whatever the number of queues, so that a restarted worker finds
    it (with one queue the worker keeps a mirrored local copy, see `MirroredResidual`). Counters of a worker that
    died are banked, so the totals the supervisor reports never go backwards across a restart.
    """

    def __init__(self, queues: tuple[int, int], factory: CensorFactory, *, fail_closed: bool = False,
                 log_path: str | None = None, pcap_path: str | None = None, offload: bool = True,
                 queue_maxlen: int = DEFAULT_QUEUE_MAXLEN, shared_residual: bool = True) -> None:
        self.queues = list(range(queues[0], queues[1] + 1))
        self._factory = factory
        self._cfgs = {q: WorkerConfig(q, fail_closed=fail_closed, log_path=log_path, pcap_path=pcap_path,
                                      offload=offload, queue_maxlen=queue_maxlen) for q in self.queues}
        self._procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self._conns: dict[int, multiprocessing.connection.Connection] = {}
        self._counters: dict[int, dict[str, int]] = {q: {} for q in self.queues}
        self._banked: dict[int, dict[str, int]] = {q: {} for q in self.queues}
        self._heard: dict[int, float] = {}
        self._final: set[int] = set()
        self._residual: SharedResidual | None = None
        self._shared_residual = shared_residual
        self.restarts: dict[int, int] = {q: 0 for q in self.queues}

    def _spawn(self, q: int) -> None:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        shared = self._residual.store if self._residual is not None else None
        p = ctx.Process(target=_worker_main, args=(self._factory, shared, len(self.queues) == 1, self._cfgs[q],
                                                   child), name=f"redweb-q{q}", daemon=True)
        p.start()
        child.close()
        self._procs[q], self._conns[q] = p, parent
        self._final.discard(q)
        self._heard[q] = time.monotonic()

    def _await_ready(self, pending: set[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QueueError(f"workers for queues {sorted(pending)} did not start within {timeout:.0f} s")
            ready = multiprocessing.connection.wait([self._conns[q] for q in pending], timeout=left)
            for conn in ready:
                q = next(q for q, c in self._conns.items() if c is conn)
                try:
                    kind, _, payload = conn.recv()
                except (EOFError, OSError):
                    raise QueueError(f"worker for queue {q} died while starting "
                                     f"(exit code {self._procs[q].exitcode})") from None
                if kind == "busy":
                    raise QueueBusy(str(payload))
                if kind == "error":
                    raise QueueError(str(payload))
                if kind == "ready":
                    pending.discard(q)
                    self._heard[q] = time.monotonic()

    def start(self, timeout: float = 30.0) -> None:
        """Fork the workers and wait until each has bound its queue; raise QueueError (all stopped) if one cannot."""
        if self._shared_residual or len(self.queues) > 1:
            self._residual = SharedResidual()
        for q in self.queues:
            self._spawn(q)
        try:
            self._await_ready(set(self.queues), timeout)
        except BaseException:
            self.stop()
            raise

    def restart(self, q: int, timeout: float = 30.0) -> None:
        """Replace the dead worker of queue `q` by a fresh one (new censor, same residual store); raise QueueError
        (one line) when the new worker cannot bind."""
        old = self._procs.get(q)
        if old is not None:
            if old.is_alive():
                old.kill()
            old.join(5.0)
        conn = self._conns.pop(q, None)
        if conn is not None:
            conn.close()
        for k, v in self._counters[q].items():  # bank the dead worker's totals (levels die with it)
            if k not in GAUGES:
                self._banked[q][k] = self._banked[q].get(k, 0) + v
        self._counters[q] = {}
        self._spawn(q)
        self.restarts[q] += 1
        try:
            self._await_ready({q}, timeout)
        except QueueError:
            self._final.add(q)
            raise

    def poll(self, timeout: float, extra: list[Any] | None = None, watchdog: float = 0.0) -> list[WorkerDeath]:
        """Wait up to `timeout` for messages (or an `extra` waitable); return the workers that died since the last
        call. With `watchdog` > 0 a live worker silent for that long (stuck: no heartbeat) is killed and reported."""
        waitables: list[Any] = list(self._conns.values()) + [p.sentinel for q, p in self._procs.items()
                                                             if q not in self._final]
        multiprocessing.connection.wait(waitables + list(extra or ()), timeout=timeout)
        dead = self._drain()
        now = time.monotonic()
        for q, p in self._procs.items():
            if q in self._final:
                continue
            if not p.is_alive():
                self._final.add(q)
                if not any(d.queue == q for d in dead):
                    dead.append(WorkerDeath(q, f"worker for queue {q} died (exit code {p.exitcode})"))
            elif watchdog > 0 and now - self._heard.get(q, now) > watchdog:
                p.kill()
                p.join(2.0)
                self._final.add(q)
                dead.append(WorkerDeath(q, f"worker for queue {q} sent nothing for {watchdog:g} s (stuck): killed"))
        return dead

    def _drain(self) -> list[WorkerDeath]:
        problems = []
        for q, conn in self._conns.items():
            try:
                while conn.poll():
                    kind, _, payload = conn.recv()
                    self._heard[q] = time.monotonic()
                    if kind in ("counters", "final"):
                        self._counters[q] = payload
                    if kind in ("error", "busy") and q not in self._final:
                        self._final.add(q)
                        problems.append(WorkerDeath(q, str(payload)))
            except (EOFError, OSError):
                continue
        return problems

    def counters(self) -> dict[int, dict[str, int]]:
        """Counters of each queue: the live worker's latest snapshot plus the totals of the workers it replaced."""
        out: dict[int, dict[str, int]] = {}
        for q in self.queues:
            c = dict(self._banked[q])
            for k, v in self._counters[q].items():
                c[k] = c.get(k, 0) + v if k not in GAUGES else v
            if self.restarts[q]:
                c["nfq:restarts"] = self.restarts[q]
            out[q] = c
        return out

    def pids(self) -> dict[int, int]:
        """Process id of each queue's current worker."""
        return {q: p.pid for q, p in self._procs.items() if p.pid is not None}

    def stop(self, timeout: float = 5.0) -> dict[int, dict[str, int]]:
        """SIGTERM every worker, collect their final counters, reap them; then stop the residual manager."""
        for p in self._procs.values():
            if p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)  # type: ignore[arg-type]
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for q, p in self._procs.items():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
        self._drain()
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        if self._residual is not None:
            self._residual.close()
            self._residual = None
        return self.counters()
