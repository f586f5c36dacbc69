"""TCP below the socket API: the connection's sequence numbers, per-socket timestamps, crafted segments.

Some strategies need packets a socket cannot produce: a fake data segment with the connection's own sequence
numbers but a bad checksum or a short TTL (fake-first, T21-3), timestamps on one socket while the host has
them off (tcp-timestamps, H-1), or the first flight as IP fragments (ip-fragment, T22-5). Linux's TCP_REPAIR
(made for checkpoint/restore, needs CAP_NET_ADMIN) gives all three without sniffing: in repair mode the socket
reports its send/receive sequence numbers, accepts option changes, and takes data into its send queue as if it
had been transmitted; leaving repair mode without a window probe (TCP_REPAIR_OFF_NO_WP) puts nothing on the wire.

`tcp_packet` is pure (it builds bytes; tests check them); the rest are thin syscalls.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from dpi.forge import checksum, ipv4_checksummed  # RFC 1071, shared with the censor's own forging

# linux/tcp.h
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_REPAIR_WINDOW = 29
TCP_TIMESTAMP = 24
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2
TCP_REPAIR_ON = 1
TCP_REPAIR_OFF = 0
TCP_REPAIR_OFF_NO_WP = -1
TCPOPT_TIMESTAMP = 8
TCPI_OPT_TIMESTAMPS = 1
SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in the send queue not sent yet
IP_NODEFRAG = 22  # linux/in.h: netfilter on this host leaves the raw socket's fragments alone (no reassembly)
IP_MF = 0x2000
IPV6_FRAGMENT_HEADER = 44

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class RawTcpError(OSError):
    """A raw-TCP operation failed; the message names the cause (usually: needs root / CAP_NET_ADMIN)."""


@dataclass(frozen=True)
class SeqState:
    """Where an established connection stands: the next sequence number to send and to receive, and the
    window field the kernel would put in its own segments (receive window, scaled down)."""

    snd_nxt: int
    rcv_nxt: int
    window: int


@contextlib.contextmanager
def _repair(sock: socket.socket) -> Iterator[None]:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    except PermissionError:
        raise RawTcpError(errno.EPERM, "TCP_REPAIR needs root (CAP_NET_ADMIN)") from None
    except OSError as e:
        raise RawTcpError(e.errno, f"TCP_REPAIR refused: {e.strerror}") from None
    try:
        yield
    finally:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
        except OSError:  # kernels before 4.19 know only TCP_REPAIR_OFF (which sends a window probe)
            sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)


def _tcp_info(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)


def rcv_wscale(sock: socket.socket) -> int:
    """The connection's receive window scale (struct tcp_info: byte 6, high nibble)."""
    return _tcp_info(sock)[6] >> 4


def has_timestamps(sock: socket.socket) -> bool:
    """True when the connection sends TCP timestamps (negotiated, or forced by `force_timestamps`)."""
    return bool(_tcp_info(sock)[5] & TCPI_OPT_TIMESTAMPS)


def read_sequence(sock: socket.socket) -> SeqState:
    """Sequence numbers of an established socket with nothing queued yet (call before the first send)."""
    with _repair(sock):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        snd = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        rcv = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF
        try:
            _, _, _, rcv_wnd, _ = struct.unpack("5I", sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, 20))
        except OSError:
            rcv_wnd = 64240
    window = min(0xFFFF, rcv_wnd >> rcv_wscale(sock))
    return SeqState(snd, rcv, window)


def force_timestamps(sock: socket.socket) -> None:
    """Make an established socket send the TCP timestamp option although it was not negotiated (H-1).

    TCP_REPAIR_OPTIONS with TCPOPT_TIMESTAMP sets the socket's timestamp flag; from then on every segment
    carries the 10-byte option (12 with padding). The peer ignores timestamps it did not negotiate (RFC 7323).
    """
    with _repair(sock):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, struct.pack("II", TCPOPT_TIMESTAMP, 0))


def timestamp_option(sock: socket.socket) -> bytes:
    """NOP, NOP, timestamp (RFC 7323) as the socket's own segments carry it; b"" when it sends none.

    TSval is the socket's clock (TCP_TIMESTAMP). TSecr, the peer's last timestamp, is not readable from user
    space and is left 0: a fake with it looks like the connection's segments to a censor that counts header
    bytes or option kinds (H-1), which is what matters.
    """
    if not has_timestamps(sock):
        return b""
    tsval = sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) & 0xFFFFFFFF
    return b"\x01\x01" + struct.pack("!BBII", TCPOPT_TIMESTAMP, 10, tsval, 0)


def unsent(sock: socket.socket) -> int:
    """Bytes written to the socket that TCP has not sent yet."""
    buf = fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, struct.pack("i", 0))
    return int(struct.unpack("i", buf)[0])


def wait_sent(sock: socket.socket, limit: float = 1.0) -> bool:
    """Wait until everything written has left as segments, so the next write starts a new segment.

    TCP_NODELAY alone is not enough: autocorking holds a small write back while an earlier segment is still
    in the device queue, and would merge it with the next one.
    """
    deadline = time.monotonic() + limit
    while unsent(sock) > 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


def tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """Checksum of a TCP segment (its checksum field zeroed) with the IPv4 or IPv6 pseudo-header."""
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(segment), socket.IPPROTO_TCP)
    return checksum(pseudo + segment)


def tcp_packet(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, payload: bytes = b"", *,
               flags: int = PSH | ACK, window: int = 502, ttl: int = 64, options: bytes = b"",
               bad_checksum: bool = False, ip_id: int | None = None) -> bytes:
    """A whole IPv4 or IPv6 packet carrying one TCP segment; `bad_checksum` makes the TCP checksum wrong."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) != len(d):
        raise ValueError("source and destination are of different address families")
    if len(options) % 4:
        options += b"\x01" * (4 - len(options) % 4)  # NOP padding
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, offset << 4, flags,
                         window & 0xFFFF, 0, 0) + options
    segment = header + payload
    csum = tcp_checksum(s, d, segment)
    if bad_checksum:
        csum ^= 0xFFFF if csum not in (0x0000, 0xFFFF) else 0x1234  # wrong for sure, never the 0/FFFF alias
    segment = segment[:16] + struct.pack("!H", csum) + segment[18:]
    if len(s) == 4:
        ident = ip_id if ip_id is not None else int.from_bytes(os.urandom(2), "big") or 1
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), ident, 0x4000, ttl, socket.IPPROTO_TCP, 0,
                         s, d)
        return ipv4_checksummed(ip) + segment
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(segment), socket.IPPROTO_TCP, ttl, s, d)
    return ip6 + segment


def queue_as_sent(sock: socket.socket, data: bytes) -> None:
    """Put `data` into the socket's send queue as transmitted, without a packet on the wire.

    In repair mode with the send queue selected, the kernel "sends" by advancing snd_nxt only; the bytes wait in
    the retransmission queue for their ACK like any sent segment. The caller delivers them itself (as IP
    fragments from a raw socket); the peer's ACK then clears them, and if it never comes TCP retransmits them
    normally after its timeout.
    """
    with _repair(sock):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        view = memoryview(data)
        while view:
            view = view[sock.send(view):]


def ip_fragments(packet: bytes, size: int, *, ident: int | None = None) -> list[bytes]:
    """`packet` (IPv4 or IPv6, no extension headers) cut into IP fragments of `size` payload bytes each.

    `size` is rounded down to a multiple of 8 (fragment offsets count 8-byte units, RFC 791 / RFC 8200 4.5);
    IPv4 fragments have DF cleared and their own checksums, IPv6 ones carry a Fragment header. A packet that
    fits in one fragment is still sent as a (single, atomic) fragment, so the receiver sees fragment framing.
    """
    size -= size % 8
    if size < 8:
        raise ValueError("fragment size must be at least 8 bytes")
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        header, body = bytearray(packet[:ihl]), packet[ihl:]
        if ident is not None:
            struct.pack_into("!H", header, 4, ident & 0xFFFF)
        out = []
        for off in range(0, len(body), size):
            chunk = body[off:off + size]
            h = bytearray(header)
            struct.pack_into("!H", h, 2, ihl + len(chunk))
            struct.pack_into("!H", h, 6, (IP_MF if off + size < len(body) else 0) | (off // 8))  # DF cleared
            out.append(ipv4_checksummed(h) + chunk)
        return out
    fixed, body = packet[:40], packet[40:]
    next_header = fixed[6]
    ident = int.from_bytes(os.urandom(4), "big") if ident is None else ident
    out = []
    for off in range(0, len(body), size):
        chunk = body[off:off + size]
        more = 1 if off + size < len(body) else 0
        frag = struct.pack("!BBHI", next_header, 0, off | more, ident & 0xFFFFFFFF)
        h = bytearray(fixed)
        struct.pack_into("!HB", h, 4, len(frag) + len(chunk), IPV6_FRAGMENT_HEADER)
        out.append(bytes(h) + frag + chunk)
    return out


def send_raw(*packets: bytes) -> None:
    """Send whole IP packets (header included) as they are, one family per call; raises RawTcpError when not allowed.

    IP_NODEFRAG keeps this host's own connection tracking (if any) from reassembling fragments on their way out.
    """
    if not packets:
        return
    v6 = packets[0][0] >> 4 == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            if not v6:
                s.setsockopt(socket.IPPROTO_IP, IP_NODEFRAG, 1)
            for packet in packets:
                dst = socket.inet_ntop(family, packet[24:40] if v6 else packet[16:20])
                s.sendto(packet, (dst, 0))
    except PermissionError:
        raise RawTcpError(errno.EPERM, "raw sockets need root (CAP_NET_RAW)") from None
