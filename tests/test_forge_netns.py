"""Forged RSTs against the real Linux TCP stack (G-3, H-2), over IPv4 and IPv6.

client -- router -- server namespaces (tests.netns.Path3). A real connection exchanges data; the router reads the
client's next data segment off the wire (the trigger, as the censor would see it), forges RSTs from it with
`forge_rsts` and sends them from the router namespace with a raw socket. The client's recv() must then raise
ConnectionResetError: the kernel accepted the forgery, so its checksums and its exact sequence number (RFC 5961)
are right. A RST with a wrong sequence number must be ignored, which proves the acceptance is not vacuous.

Sockets are created inside each namespace by switching only the calling thread's network namespace (setns(2)),
so the whole test runs in one process without helper scripts; a socket keeps the namespace it was made in.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import select
import shutil
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from dpi.config import INJECTOR_PRESETS
from dpi.forge import TCP_RST, forge_rsts
from tests.netns import Path3

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]

CLONE_NEWNET = 0x40000000
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
TRIGGER = b"GET / HTTP/1.1\r\nHost: www.blocked.example\r\n\r\n"
WAIT = 5.0  # upper bound for a packet to appear; a safety net, never a measured quantity

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread in namespace `name`; sockets made there stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into " + name)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


@dataclass
class Segment:
    """The fields of a captured TCP segment that the tests read."""

    raw: bytes
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


def parse_segment(raw: bytes) -> Segment | None:
    """IPv4/IPv6 (no extension headers) + TCP, as captured by an AF_PACKET SOCK_DGRAM socket."""
    if len(raw) < 20:
        return None
    if raw[0] >> 4 == 4:
        ihl, total = (raw[0] & 0x0F) * 4, struct.unpack_from("!H", raw, 2)[0]
        if raw[9] != 6:
            return None
        src, dst = socket.inet_ntop(socket.AF_INET, raw[12:16]), socket.inet_ntop(socket.AF_INET, raw[16:20])
        raw, tcp = raw[:total], raw[ihl:total]
    elif raw[0] >> 4 == 6 and len(raw) >= 40:
        if raw[6] != 6:
            return None
        src, dst = socket.inet_ntop(socket.AF_INET6, raw[8:24]), socket.inet_ntop(socket.AF_INET6, raw[24:40])
        raw = raw[:40 + struct.unpack_from("!H", raw, 4)[0]]
        tcp = raw[40:]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", tcp)
    return Segment(raw, src, dst, sport, dport, seq, ack, flags, tcp[(offset >> 4) * 4:])


class Sniffer:
    """Reads real packets off one interface (both directions) with an AF_PACKET socket."""

    def __init__(self, ns: str, ifname: str) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
            self.sock.bind((ifname, 0))
        self.sock.setblocking(False)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(65535)

    def wait_for(self, predicate: Callable[[Segment], bool]) -> Segment:
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                break
            segment = parse_segment(self.sock.recv(65535))
            if segment is not None and predicate(segment):
                return segment
        raise AssertionError("expected packet not seen on the wire")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Lab:
    path: Path3
    router_tap: Sniffer  # router's client-facing interface: where the censor reads the trigger
    client_tap: Sniffer  # client's interface: what the client's stack actually received
    raw4: socket.socket
    raw6: socket.socket

    def send(self, packet: bytes, dst: str) -> None:
        """Send from the router namespace, as the NFQUEUE layer does."""
        if ":" in dst:
            self.raw6.sendto(packet, (dst, 0, 0, 0))
        else:
            self.raw4.sendto(packet, (dst, 0))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Path3() as path:
        taps: list[Sniffer] = []
        raws: list[socket.socket] = []
        try:
            taps.append(Sniffer(path.router.ns, path.router_ifs[0]))
            taps.append(Sniffer(path.client.ns, path.client_if))
            with in_netns(path.router.ns):
                raws.append(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))
                raws.append(socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW))
            yield Lab(path, taps[0], taps[1], raws[0], raws[1])
        finally:
            for tap in taps:
                tap.close()
            for raw in raws:
                raw.close()


@dataclass
class Connection:
    client: socket.socket
    server: socket.socket
    client_addr: tuple[str, int]
    server_addr: tuple[str, int]
    client_seq: int  # next sequence number the client will send (trigger seq + payload length)
    server_seq: int  # next the server will send (the trigger's ACK number)

    def close(self) -> None:
        self.client.close()
        self.server.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError("connection closed early")
        data += chunk
    return data


@contextlib.contextmanager
def connection(lab: Lab, v6: bool) -> Iterator[Connection]:
    """A real connection that has exchanged data both ways, then sent the trigger, read off the router's wire."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    server_ip = lab.path.SERVER_V6 if v6 else lab.path.SERVER_V4
    with in_netns(lab.path.server.ns):
        listener = socket.socket(family, socket.SOCK_STREAM)
    with in_netns(lab.path.client.ns):
        client = socket.socket(family, socket.SOCK_STREAM)
    server: socket.socket | None = None
    try:
        listener.bind((server_ip, 0))
        listener.listen(1)
        client.settimeout(WAIT)
        client.connect(listener.getsockname()[:2])
        server, _ = listener.accept()
        server.settimeout(WAIT)
        client.sendall(b"hello")
        assert _recv_exactly(server, 5) == b"hello"
        server.sendall(b"hello to you")
        assert _recv_exactly(client, 12) == b"hello to you"
        client_addr, server_addr = client.getsockname()[:2], listener.getsockname()[:2]
        lab.router_tap.drain()
        lab.client_tap.drain()
        client.sendall(TRIGGER)
        assert _recv_exactly(server, len(TRIGGER)) == TRIGGER
        trigger = lab.router_tap.wait_for(lambda s: s.sport == client_addr[1] and s.payload == TRIGGER)
        yield Connection(client, server, client_addr, server_addr,
                         client_seq=(trigger.seq + len(trigger.payload)) & 0xFFFFFFFF, server_seq=trigger.ack)
    finally:
        listener.close()
        client.close()
        if server is not None:
            server.close()


def _arrived_rst(lab: Lab, port: int) -> Segment:
    return lab.client_tap.wait_for(lambda s: s.dport == port and bool(s.flags & TCP_RST))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("name", ["gfw-type1", "gfw-type2", "gfw-type3", "henan"])
def test_g3_h2_forged_rst_resets_the_real_client(lab: Lab, name: str, v6: bool) -> None:
    with connection(lab, v6) as conn:
        forged = forge_rsts(client=conn.client_addr, server=conn.server_addr, client_seq=conn.client_seq,
                            server_seq=conn.server_seq, injector=INJECTOR_PRESETS[name], to="client",
                            rng=random.Random(1))
        assert len(forged) == INJECTOR_PRESETS[name].count
        for _, packet in forged:
            lab.send(packet, conn.client_addr[0])
        with pytest.raises(ConnectionResetError):
            conn.client.recv(100)
        arrived = _arrived_rst(lab, conn.client_addr[1]).raw
        packet = forged[0][1]
        if not v6 and packet[4:6] == b"\x00\x00" and not packet[6] & 0x40:
            # Linux fills in an IP ID of 0 on IP_HDRINCL raw sockets (DF clear): G-3 type I's "IP ID 0" survives
            # only when sent another way (see the AF_PACKET test below). Everything else is as forged.
            assert arrived[:4] + arrived[6:10] + arrived[12:] == packet[:4] + packet[6:10] + packet[12:]
        else:
            assert arrived == packet  # the fingerprint reaches the client byte for byte


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_g3_forged_rst_without_ack_resets_the_real_server(lab: Lab, v6: bool) -> None:
    with connection(lab, v6) as conn:
        forged = forge_rsts(client=conn.client_addr, server=conn.server_addr, client_seq=conn.client_seq,
                            server_seq=conn.server_seq, injector=INJECTOR_PRESETS["gfw-type1"], to="server",
                            rng=random.Random(2))
        for _, packet in forged:
            lab.send(packet, conn.server_addr[0])
        with pytest.raises(ConnectionResetError):
            conn.server.recv(100)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("offset", [2**31, 1000], ids=["outside-window", "in-window-not-exact"])
def test_rst_with_wrong_seq_is_ignored(lab: Lab, v6: bool, offset: int) -> None:
    with connection(lab, v6) as conn:
        forged = forge_rsts(client=conn.client_addr, server=conn.server_addr, client_seq=conn.client_seq,
                            server_seq=conn.server_seq + offset, injector=INJECTOR_PRESETS["gfw-type2"],
                            to="client", rng=random.Random(3))
        for _, packet in forged:
            lab.send(packet, conn.client_addr[0])
        arrived = _arrived_rst(lab, conn.client_addr[1])  # it did reach the client's stack...
        assert arrived.seq == (conn.server_seq + offset) & 0xFFFFFFFF
        conn.server.sendall(b"still here")  # ...which ignored it: the connection still works both ways
        assert _recv_exactly(conn.client, 10) == b"still here"
        conn.client.sendall(b"me too")
        assert _recv_exactly(conn.server, 6) == b"me too"


def test_g3_type1_ip_id_zero_survives_af_packet(lab: Lab) -> None:
    """Sent on a packet socket the kernel does not touch the IP header, so type I's IP ID 0 reaches the client."""
    mac = json.loads(lab.path.client.run(["ip", "-j", "link", "show", "dev", lab.path.client_if]).stdout)[0]["address"]
    with in_netns(lab.path.router.ns):
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    try:
        with connection(lab, v6=False) as conn:
            (_, packet), = forge_rsts(client=conn.client_addr, server=conn.server_addr, client_seq=conn.client_seq,
                                      server_seq=conn.server_seq, injector=INJECTOR_PRESETS["gfw-type1"],
                                      to="client", rng=random.Random(4))
            sender.sendto(packet, (lab.path.router_ifs[0], ETH_P_IP, 0, 0, bytes.fromhex(mac.replace(":", ""))))
            with pytest.raises(ConnectionResetError):
                conn.client.recv(100)
            arrived = _arrived_rst(lab, conn.client_addr[1]).raw
            assert arrived == packet and arrived[4:6] == b"\x00\x00"
    finally:
        sender.close()
