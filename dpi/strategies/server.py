"""Server-side strategies: the server's host changes its own TCP behaviour so censored clients get through.

These need no change in the client: `redweb probe --strategy server-window` (or `split-handshake`) just fetches
and labels the result, while the helper runs on the server's host (root):

    python -m dpi.probe server-side window --client 10.9.1.0/24 --bytes 64      # until Ctrl-C / SIGTERM
    python -m dpi.probe server-side split-handshake --port 443                 # until Ctrl-C / SIGTERM

Both print one JSON line `{"event": "ready", ...}` when active, undo everything they changed when stopped, and
can be used as context managers from Python (`WindowClamp`, `SplitHandshake`).

- server-window (T22-E): a route to the clients with `window N` makes the server advertise an N-byte receive
  window, so the client's ClientHello leaves in segments of at most N bytes; a censor without TCP reassembly
  never sees it whole (T22-E, T21-2, H-1).
- split-handshake (T22-1): the server answers a SYN with a bare SYN first, then its SYN/ACK. The client's
  stack takes the SYN as a simultaneous open and the connection completes; the TSPU saw a SYN from the remote
  side, which un-blocks the connection (T22-1).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from dpi.forge import ipv4_checksummed
from dpi.strategies import rawtcp
from dpi.strategies.base import Param, Strategy

COMMENT = "redweb-probe"  # not "redweb": `redweb cleanup` must not take the server helper's rules


class ServerWindow(Strategy):
    """Server-side: the server advertises a tiny TCP window (`ip route ... window N`), so the ClientHello is split.

    Targets T22-E ("server-side TCP window shrinking") and every censor without TCP reassembly (T21-2, H-1).
    Run `python -m dpi.probe server-side window --client CIDR --bytes N` on the server; the probe just fetches.
    """

    name = "server-window"
    transport = "server"
    targets = ("T22-E", "T21-2", "H-1")
    params = (Param("bytes", "64", "the window the server helper advertises (informational for the probe)",
                    kind="int", minimum=1, maximum=65535),)


class SplitHandshakeStrategy(Strategy):
    """Server-side: the server sends a bare SYN before its SYN/ACK (TCP split handshake / simultaneous open).

    Targets T22-1: a SYN from the remote side un-blocks the connection at the TSPU. Run
    `python -m dpi.probe server-side split-handshake --port PORT` on the server; the probe just fetches.
    """

    name = "split-handshake"
    transport = "server"
    targets = ("T22-1", "T22-E")


SERVER_STRATEGIES: tuple[type[Strategy], ...] = (ServerWindow, SplitHandshakeStrategy)


def _ip(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], text=True, capture_output=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"`ip {shlex.join(args)}` failed: {r.stderr.strip()}")
    return r


_ROUTE_FLAGS = {"linkdown", "dead", "offload", "trap", "rt_offload", "rt_trap", "rt_offload_failed"}


class WindowClamp:
    """`ip route ... window N` towards the client networks; `undo` restores the routes that were there.

    The route goes in at the family's default metric (0 for IPv4, 1024 for IPv6), where a plain `ip route add`
    would put it: an existing route for the same prefix and metric is replaced and put back afterwards, one at
    another metric is left alone (ours, at the default metric, is preferred over it while the helper runs).
    """

    DEFAULT_METRIC = {4: 0, 6: 1024}

    def __init__(self, clients: Sequence[str], window: int) -> None:
        self.clients = [ipaddress.ip_network(c, strict=False) for c in clients]
        self.window = window
        self._undo: list[list[str]] = []

    def apply(self) -> None:
        try:
            for net in self.clients:
                self._apply(net)
        except BaseException:
            self.undo()
            raise

    def _apply(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        fam = f"-{net.version}"
        metric = str(self.DEFAULT_METRIC[net.version])
        probe = str(net.network_address + (1 if net.num_addresses > 1 else 0))
        route = json.loads(_ip([fam, "-j", "route", "get", probe]).stdout)[0]
        spec = [str(net)] + (["via", route["gateway"]] if route.get("gateway") else []) + ["dev", route["dev"]]
        old = [line for line in _ip([fam, "route", "show", "exact", str(net)]).stdout.splitlines()
               if _metric(line, net.version) == int(metric)]
        _ip([fam, "route", "replace", *spec, "metric", metric, "window", str(self.window)])
        if old:
            words = [w for w in shlex.split(old[0]) if w not in _ROUTE_FLAGS]
            self._undo.append([fam, "route", "replace", str(net), *words[1:]])
        else:
            self._undo.append([fam, "route", "del", *spec, "metric", metric])

    def undo(self) -> None:
        while self._undo:
            _ip(self._undo.pop(), check=False)

    def __enter__(self) -> "WindowClamp":
        self.apply()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.undo()


def _metric(line: str, version: int) -> int:
    """The metric of an `ip route show` line (IPv4 prints none for 0)."""
    words = line.split()
    if "metric" in words and words.index("metric") + 1 < len(words):
        try:
            return int(words[words.index("metric") + 1])
        except ValueError:
            pass
    return WindowClamp.DEFAULT_METRIC[version]


def bare_syn(syn_ack: bytes) -> bytes | None:
    """The SYN that goes before a SYN/ACK: same addresses, ports, sequence number and options, no ACK.

    None when `syn_ack` is not an IPv4/IPv6 TCP SYN/ACK (without extension headers). Checksums are recomputed
    in full (a packet taken from OUTPUT may carry only the pseudo-header sum for checksum offload).
    """
    if len(syn_ack) < 40:
        return None
    version = syn_ack[0] >> 4
    if version == 4:
        ihl = (syn_ack[0] & 0x0F) * 4
        if syn_ack[9] != 6 or ihl < 20:
            return None
        src, dst = syn_ack[12:16], syn_ack[16:20]
    elif version == 6:
        ihl = 40
        if syn_ack[6] != 6 or len(syn_ack) < 60:
            return None
        src, dst = syn_ack[8:24], syn_ack[24:40]
    else:
        return None
    tcp = bytearray(syn_ack[ihl:])
    if len(tcp) < 20 or (tcp[13] & (rawtcp.SYN | rawtcp.ACK)) != (rawtcp.SYN | rawtcp.ACK):
        return None
    tcp[13] = rawtcp.SYN
    tcp[8:12] = b"\x00\x00\x00\x00"  # no acknowledgment number without ACK
    tcp[16:18] = b"\x00\x00"
    tcp[16:18] = struct.pack("!H", rawtcp.tcp_checksum(src, dst, bytes(tcp)))
    ip = syn_ack[:ihl]
    return (ipv4_checksummed(ip) if version == 4 else bytes(ip)) + bytes(tcp)


class SplitHandshake:
    """NFQUEUE on the server's OUTPUT: every SYN/ACK from `ports` is preceded by a bare SYN (T22-1)."""

    def __init__(self, ports: Sequence[int], queue: int = 7, ipv6: bool = True,
                 on_event: Callable[[dict[str, object]], None] | None = None) -> None:
        self.ports = list(ports)
        self.queue = queue
        self.binaries = ["iptables", "ip6tables"] if ipv6 else ["iptables"]
        self.on_event = on_event or (lambda e: None)
        self.sent = 0
        self._rules: list[tuple[str, list[str]]] = []
        self._nfq: Any = None  # netfilterqueue.NetfilterQueue once installed

    def _spec(self, port: int) -> list[str]:
        return ["OUTPUT", "-p", "tcp", "--sport", str(port), "--tcp-flags", "SYN,ACK", "SYN,ACK",
                "-m", "comment", "--comment", COMMENT, "-j", "NFQUEUE", "--queue-num", str(self.queue),
                "--queue-bypass"]

    def install(self) -> None:
        from netfilterqueue import NetfilterQueue
        self._nfq = NetfilterQueue()
        self._nfq.bind(self.queue, self._on_packet)
        try:
            for b in self.binaries:
                for port in self.ports:
                    spec = self._spec(port)
                    r = subprocess.run([b, "-w", "5", "-I", *spec], text=True, capture_output=True, timeout=20)
                    if r.returncode != 0:
                        raise RuntimeError(f"{b} refused the NFQUEUE rule: {r.stderr.strip()}")
                    self._rules.append((b, spec))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        while self._rules:
            b, spec = self._rules.pop()
            subprocess.run([b, "-w", "5", "-D", *spec], capture_output=True, timeout=20)
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None

    def _on_packet(self, pkt: Any) -> None:
        data = pkt.get_payload()
        syn = bare_syn(data)
        if syn is not None:
            try:
                rawtcp.send_raw(syn)
                self.sent += 1
                v6 = data[0] >> 4 == 6
                dst = socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, data[24:40] if v6 else data[16:20])
                dport = struct.unpack_from("!H", data, (40 if v6 else (data[0] & 0x0F) * 4) + 2)[0]
                self.on_event({"event": "syn-sent", "client": f"{dst}:{dport}", "count": self.sent})
            except OSError as e:
                self.on_event({"event": "error", "reason": str(e)})
        pkt.accept()  # the SYN/ACK follows the SYN

    def serve(self, stop: threading.Event) -> None:
        assert self._nfq is not None, "install() first"
        fd = self._nfq.get_fd()
        while not stop.is_set():
            readable, _, _ = select.select([fd], [], [], 0.2)
            if readable:
                self._nfq.run(block=False)

    def __enter__(self) -> "SplitHandshake":
        self.install()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()


# -- `python -m dpi.probe server-side ...` ---------------------------------------------------------------------
def add_server_side_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="helper", metavar="HELPER", required=True)
    w = sub.add_parser("window", help="advertise a tiny TCP window to the clients (server-window, T22-E)")
    w.add_argument("--client", action="append", required=True, metavar="CIDR",
                   help="client network (repeatable); routes towards it get `window N`")
    w.add_argument("--bytes", type=int, default=64, metavar="N", help="advertised window in bytes (default 64)")
    s = sub.add_parser("split-handshake", help="send a SYN before every SYN/ACK (split-handshake, T22-1)")
    s.add_argument("--port", action="append", type=int, metavar="PORT",
                   help="server TCP port (repeatable, default 443)")
    s.add_argument("--queue", type=int, default=7, help="NFQUEUE number in this namespace (default 7)")
    s.add_argument("--no-ipv6", action="store_true", help="leave IPv6 alone")


def _emit(event: dict[str, object]) -> None:
    print(json.dumps(event), flush=True)


def server_side_main(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        if args.helper == "window":
            if not 1 <= args.bytes <= 65535:
                print("redweb probe server-side: --bytes must be 1-65535", file=sys.stderr)
                return 2
            with WindowClamp(args.client, args.bytes):
                _emit({"event": "ready", "helper": "window", "bytes": args.bytes, "clients": args.client})
                stop.wait()
        else:
            helper = SplitHandshake(args.port or [443], args.queue, ipv6=not args.no_ipv6, on_event=_emit)
            with helper:
                _emit({"event": "ready", "helper": "split-handshake", "ports": helper.ports})
                helper.serve(stop)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"redweb probe server-side: {e}", file=sys.stderr)
        return 1
    _emit({"event": "stopped"})
    return 0
