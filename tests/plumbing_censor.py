"""A stand-in with the engine's `process`/`counters` API, for testing the NFQUEUE plumbing (not a censor).

It decides from raw bytes so that the live path can be tested without the real engine:
- a TCP payload containing `Host: blocked.test` drops the packet and marks the flow MARK_DROP;
- `Host: reset.test` drops, marks MARK_DROP, forges a RST/ACK to the client (after a short delay, so the timer
  heap is exercised) and adds a residual entry on (server IP, server port) — new connections to it are reset
  at their SYN (the shape of G-4, keyed wider so that it spans queues);
- `X-Plumbing: raise` makes `process` raise (the worker must fail open/closed and log it once);
- any other first data packet marks MARK_ACCEPT (the flow leaves the queue); packets without data stay queued.

Run it like `redweb run`: `python -m tests.plumbing_censor run --profile plumbing --queues 0-1 ...`.
"""
from __future__ import annotations

import socket
import struct
import sys
from collections import Counter
from typing import Any

from dpi.decision import ACCEPT, DROP, MARK_ACCEPT, MARK_DROP, MARK_NONE, Decision
from dpi.residual import LocalResidualStore

from dpi.forge import checksum as _csum

BLOCK = b"Host: blocked.test"
RESET = b"Host: reset.test"
RAISE = b"X-Plumbing: raise"
RST_DELAY = 0.02
RESIDUAL_SECONDS = 60.0


def _tcp_packet(v6: bool, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 0, 0, 0)
    if v6:
        pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
    else:
        pseudo = src + dst + struct.pack("!xBH", 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst + tcp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x1234, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp


class PlumbingCensor:
    def __init__(self, residual: Any = None) -> None:
        self.residual = residual if residual is not None else LocalResidualStore()
        self._counts: Counter[str] = Counter()

    def process(self, packet: bytes, ts: float) -> Decision:
        self._counts["packets"] += 1
        v = packet[0] >> 4
        if v == 4:
            off, proto, src, dst = (packet[0] & 15) * 4, packet[9], packet[12:16], packet[16:20]
        elif v == 6:
            off, proto, src, dst = 40, packet[6], packet[8:24], packet[24:40]
        else:
            return Decision()
        if proto != 6 or len(packet) < off + 20:
            return Decision()
        sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", packet, off)
        payload = packet[off + (doff >> 4) * 4:]
        family = socket.AF_INET6 if v == 6 else socket.AF_INET
        flow = {"client": f"{socket.inet_ntop(family, src)}:{sport}", "server": f"{socket.inet_ntop(family, dst)}:{dport}"}
        if flags & 0x12 == 0x02:  # client SYN: a new connection
            hit = self.residual.lookup((dst, dport), ts)
            if hit is not None:
                self._counts["residual:hit"] += 1
                rst = _tcp_packet(v == 6, dst, src, dport, sport, 0, seq + 1, 0x14)
                return Decision(DROP, MARK_DROP, [(0.0, rst)],
                                [{"event": "residual", "rule": hit[1], "action": hit[0], **flow}])
            return Decision()
        if RAISE in payload:
            raise RuntimeError("plumbing censor asked to raise")
        if BLOCK in payload:
            self._counts["rule:plumbing-host:drop"] += 1
            return Decision(DROP, MARK_DROP, [], [{"event": "block", "rule": "plumbing-host", "action": "drop",
                                                   **flow}])
        if RESET in payload:
            self._counts["rule:plumbing-reset:rst"] += 1
            self.residual.add((dst, dport), ts + RESIDUAL_SECONDS, "rst", "plumbing-reset")
            rst = _tcp_packet(v == 6, dst, src, dport, sport, ack, seq + len(payload), 0x14)
            return Decision(DROP, MARK_DROP, [(RST_DELAY, rst)],
                            [{"event": "block", "rule": "plumbing-reset", "action": "rst", **flow}])
        if payload:
            return Decision(ACCEPT, MARK_ACCEPT)
        return Decision(ACCEPT, MARK_NONE)

    def counters(self) -> dict[str, int]:
        return dict(self._counts)


if __name__ == "__main__":
    from dpi.run import main

    sys.exit(main(censor_factory=PlumbingCensor))
