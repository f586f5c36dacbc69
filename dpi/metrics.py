"""Prometheus text exposition of the live censor's counters (`redweb run --metrics host:port`).

The workers publish counter snapshots to the supervisor; this module renders them per queue and serves them
with the standard library's HTTP server in a daemon thread, so scraping never touches the packet path.

Counter names: the worker's own are `nfq:*` (queued packets, verdicts, offloaded flows, injections, errors,
restarts) and `worker:*`/`core:*` (memory); the supervisor adds `kernel:*` per queue (the kernel's backlog and
drops) and run-wide values (packets no worker decided, rules found missing); the engine's are free-form, with
`rule:NAME:ACTION` for rule actions. Everything else the engine counts is
exported as `redweb_engine_total{counter=...}` so a new engine counter shows up without a change here.
"""
from __future__ import annotations

import http.server
import socket
import threading
import time
from typing import Callable, Mapping

CountersByQueue = Mapping[int, Mapping[str, int]]

# worker counter → (metric, help, extra label or None)
_WORKER: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "nfq:packets": ("redweb_packets_total", "Packets the censor read from its queues.", None),
    "nfq:accept": ("redweb_verdicts_total", "Verdicts given to queued packets.", ("verdict", "accept")),
    "nfq:drop": ("redweb_verdicts_total", "Verdicts given to queued packets.", ("verdict", "drop")),
    "nfq:offload:accept": ("redweb_offloaded_flows_total",
                           "Flows handed to the kernel through the connmark fast path.", ("decision", "accept")),
    "nfq:offload:drop": ("redweb_offloaded_flows_total",
                         "Flows handed to the kernel through the connmark fast path.", ("decision", "drop")),
    "nfq:injected": ("redweb_injected_packets_total", "Forged packets sent.", None),
    "nfq:inject_errors": ("redweb_inject_errors_total", "Forged packets that could not be sent.", None),
    "nfq:errors": ("redweb_process_errors_total", "Packets on which the engine raised (fail-open/closed).", None),
    "nfq:apply_errors": ("redweb_apply_errors_total", "Decisions that could not be fully applied.", None),
    "nfq:fallthrough": ("redweb_repeat_fallthrough_total",
                        "Repeated packets the kernel could not settle (no conntrack).", None),
    "nfq:python": ("redweb_python_packets_total", "Queued packets for which Python ran (a censor written in Python, "
                   "or the engine's packets with events or forged packets); the rest stayed in compiled code.", None),
    "nfq:pending_injections": ("redweb_pending_injections", "Forged packets waiting for their delay.", None),
    "nfq:pcap_packets": ("redweb_pcap_packets_total", "Packets written to the pcap of censored flows.", None),
    "nfq:restarts": ("redweb_worker_restarts_total", "Workers restarted after they died or got stuck.", None),
    # pressure: the flow table is bounded (flows.max_flows); these show the bound holding under a flood
    "worker:rss_bytes": ("redweb_worker_rss_bytes", "Resident memory of the worker process.", None),
    "core:memory_bytes": ("redweb_flow_table_bytes",
                          "Bytes held by the flow table and its first-flight buffers.", None),
    "core:capacity": ("redweb_flow_table_capacity", "Flows the table holds at most (flows.max_flows).", None),
    "active_flows": ("redweb_flows_active", "Flows in the table now.", None),
    "evicted": ("redweb_flows_evicted_total", "Flows evicted (least recently used) because the table was full.",
                None),
    "expired": ("redweb_flows_expired_total", "Flows forgotten after their idle timeout.", None),
    # the kernel's side of each queue (/proc/net/netfilter/nfnetlink_queue), read by the supervisor
    "kernel:backlog": ("redweb_queue_backlog", "Packets waiting in the kernel queue for a verdict.", None),
    "kernel:dropped": ("redweb_queue_kernel_dropped_total", "Packets the kernel dropped at a full queue "
                       "(fail-closed).", ("reason", "queue-full")),
    "kernel:queued": ("redweb_queue_kernel_queued_total", "Packets the kernel handed to the queue.", None),
    "kernel:user_dropped": ("redweb_queue_kernel_dropped_total", "Packets the kernel dropped at a full queue "
                            "(fail-closed).", ("reason", "socket-full")),
}
_GAUGES = {"redweb_pending_injections", "redweb_worker_rss_bytes", "redweb_flow_table_bytes",
           "redweb_flow_table_capacity", "redweb_flows_active", "redweb_queue_backlog"}
# supervisor-wide values → (metric, help, extra label or None)
_SUPERVISOR: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "unserved:passed": ("redweb_queue_unserved_packets_total", "Packets that reached the queue rule but no worker "
                        "decided: passed uninspected (fail-open) or dropped (fail-closed).", ("outcome", "passed")),
    "unserved:dropped": ("redweb_queue_unserved_packets_total", "Packets that reached the queue rule but no worker "
                         "decided: passed uninspected (fail-open) or dropped (fail-closed).", ("outcome", "dropped")),
    "rules:missing": ("redweb_rules_missing", "RedWeb rules found missing at the last check (deleted by hand).",
                      None),
    "rules:checks": ("redweb_rule_checks_total", "Periodic checks that every RedWeb rule is still installed.", None),
}
_GAUGES.add("redweb_rules_missing")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def split_rule_counter(name: str) -> tuple[str, str] | None:
    """`rule:NAME:ACTION` → (NAME, ACTION); rule names may themselves contain colons."""
    if not name.startswith("rule:"):
        return None
    rest = name[5:]
    rule, sep, action = rest.rpartition(":")
    return (rule, action) if sep and rule else None


def render(counters: CountersByQueue, *, extra: Mapping[str, float] | None = None,
           supervisor: Mapping[str, float] | None = None) -> str:
    """The counters of every queue in Prometheus text format 0.0.4 (one sample per queue and label set).

    `supervisor` holds run-wide values the supervisor measures itself (queue overload, missing rules)."""
    series: dict[str, list[str]] = {}
    helps: dict[str, str] = {}

    def add(metric: str, help_: str, labels: list[tuple[str, str]], value: float) -> None:
        helps.setdefault(metric, help_)
        series.setdefault(metric, []).append(f"{metric}{_labels(labels)} {value:g}")

    for queue in sorted(counters):
        q = ("queue", str(queue))
        for name, value in sorted(counters[queue].items()):
            if name in _WORKER:
                metric, help_, label = _WORKER[name]
                add(metric, help_, [q] + ([label] if label else []), value)
            elif (ra := split_rule_counter(name)) is not None:
                add("redweb_rule_actions_total", "Actions taken by each profile rule.",
                    [q, ("rule", ra[0]), ("action", ra[1])], value)
            elif not name.startswith("nfq:"):
                add("redweb_engine_total", "Other counters of the censor engine.", [q, ("counter", name)], value)
    for name, value in sorted((supervisor or {}).items()):
        if name in _SUPERVISOR:
            metric, help_, label = _SUPERVISOR[name]
            add(metric, help_, [label] if label else [], value)
    for name, value in (extra or {}).items():
        add(name, name.replace("_", " "), [], value)
    out = []
    for metric in series:
        kind = "gauge" if metric in _GAUGES or not metric.endswith("_total") else "counter"
        out += [f"# HELP {metric} {helps[metric]}", f"# TYPE {metric} {kind}", *series[metric]]
    return "\n".join(out) + "\n"


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all addresses) → (host, port); raises ValueError naming the fix."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad metrics address {text!r}: write host:port, e.g. 127.0.0.1:9100 or [::1]:9100")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class MetricsServer:
    """Serves `/metrics` (and `/`) from `source()`, the latest counters per queue, in a daemon thread."""

    def __init__(self, address: tuple[str, int], source: Callable[[], CountersByQueue],
                 supervisor: Callable[[], Mapping[str, float]] | None = None) -> None:
        self._source = source
        self._supervisor = supervisor
        self._started = time.monotonic()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] not in ("/", "/metrics"):
                    self.send_error(404)
                    return
                body = outer.page().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:  # keep the terminal for the censor's own lines
                pass

        host = address[0]
        server_cls = type("Server", (http.server.ThreadingHTTPServer,),
                          {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
                           "daemon_threads": True})
        self._httpd = server_cls(address, Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="redweb-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def page(self) -> str:
        counters = self._source()
        return render(counters, supervisor=self._supervisor() if self._supervisor else None,
                      extra={"redweb_up": 1, "redweb_workers": len(counters),
                             "redweb_uptime_seconds": round(time.monotonic() - self._started, 3)})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
