"""Forged packet output: raw IP packets sent from the censor's namespace, past its own queue."""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

from dpi.iptables import PASS


class Injector:
    """Sends forged raw IP packets from this namespace, marked PASS so the censor never queues its own packets.

    IPv4 and IPv6 go through IPPROTO_RAW sockets (header included). One case needs the link layer: Linux fills
    in a fresh IP ID when a raw IPv4 packet has ID 0 and DF clear, which would erase the GFW Type I injector's
    fingerprint (G-3: IP ID 0, DF=0); such packets are sent with AF_PACKET to the next hop's MAC address.
    """

    _ROUTE_TTL = 10.0

    def __init__(self, mark: int = PASS) -> None:
        self.mark = mark
        self._s4 = self._raw(socket.AF_INET)
        self._s6 = self._raw(socket.AF_INET6)
        self._link: socket.socket | None = None
        self._routes: dict[str, tuple[float, tuple[str, bytes] | None]] = {}
        self.link_fallbacks = 0  # ID-0/DF=0 packets sent through the IP stack (ID rewritten): no route/neighbour

    def _raw(self, family: int) -> socket.socket | None:
        try:
            s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError:
            return None
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        if family == socket.AF_INET6:
            try:
                s.setsockopt(socket.IPPROTO_IPV6, 36, 1)  # IPV6_HDRINCL (implied by IPPROTO_RAW on Linux)
            except OSError:
                pass
        return s

    def send(self, packet: bytes) -> None:
        """Send one raw IP packet; raises OSError/ValueError when it cannot go out."""
        if len(packet) < 20:
            raise ValueError("packet shorter than an IP header")
        version = packet[0] >> 4
        if version == 4:
            dst = socket.inet_ntop(socket.AF_INET, packet[16:20])
            ip_id, frag = struct.unpack_from("!HH", packet, 4)
            if ip_id == 0 and not frag & 0x4000 and self._send_link(packet, dst):
                return
            if self._s4 is None:
                raise OSError("no IPv4 raw socket")
            self._s4.sendto(packet, (dst, 0))
        elif version == 6:
            if len(packet) < 40:
                raise ValueError("packet shorter than an IPv6 header")
            if self._s6 is None:
                raise OSError("no IPv6 raw socket")
            self._s6.sendto(packet, (socket.inet_ntop(socket.AF_INET6, packet[24:40]), 0))
        else:
            raise ValueError(f"not an IP packet (version {version})")

    def _send_link(self, packet: bytes, dst: str) -> bool:
        hop = self._next_hop(dst)
        if hop is None:
            self.link_fallbacks += 1
            return False
        if self._link is None:
            self._link = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self._link.sendto(packet, (hop[0], 0x0800, 0, 0, hop[1]))
        return True

    def _next_hop(self, dst: str) -> tuple[str, bytes] | None:
        now = time.monotonic()
        cached = self._routes.get(dst)
        if cached is not None and cached[0] > now:
            return cached[1]
        hop = None
        try:
            route = json.loads(subprocess.run(["ip", "-j", "route", "get", dst], capture_output=True, text=True,
                                              timeout=5).stdout or "[]")
            if route and route[0].get("type") == "local":
                hop = ("lo", bytes(6))  # local mode: the forged packet is for this host
            elif route:
                dev, via = route[0].get("dev"), route[0].get("gateway", dst)
                neigh = json.loads(subprocess.run(["ip", "-j", "neigh", "show", "to", via, "dev", dev],
                                                  capture_output=True, text=True, timeout=5).stdout or "[]")
                mac = neigh[0].get("lladdr") if neigh else None
                if dev and mac:
                    hop = (dev, bytes.fromhex(mac.replace(":", "")))
        except (OSError, ValueError, subprocess.SubprocessError, KeyError, IndexError):
            hop = None
        self._routes[dst] = (now + self._ROUTE_TTL, hop)
        return hop

    def close(self) -> None:
        for s in (self._s4, self._s6, self._link):
            if s is not None:
                s.close()
