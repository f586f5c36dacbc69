"""IP reassembly in front of the offline censor, as the kernel does it in front of the live one.

Live, a profile with `flows.fragments: reassemble` (the default) sees whole IP packets: the router's connection
tracking reassembles fragments before NFQUEUE (dpi.nodefrag explains the other case). `redweb classify` reads a
capture as it was recorded, fragments and all, so to take the decisions the live censor would have taken it
must do the same first. This module does, in plain Python: it runs only for captures that hold fragments.

Like Linux: fragments are grouped by (source, destination, protocol, identification); a datagram is emitted,
at the timestamp of the fragment that completed it, once its last fragment has arrived and every byte before it
is covered; a fragment overlapping another one discards the whole datagram (Linux does so for both families
since 4.19; RFC 5722 for IPv6), an exact duplicate is ignored; incomplete datagrams are forgotten after 30 s
(ipfrag_time) and at most MAX_PENDING are held. Packets that are not fragments pass through unchanged.
"""
from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from dpi.forge import ipv4_checksummed
from dpi.pcap import PcapWriter, iter_packets

TIMEOUT = 30.0  # seconds, Linux's net.ipv4.ipfrag_time
MAX_PENDING = 4096  # incomplete datagrams held at once; the oldest is forgotten past it
IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: may stand before a Fragment header
IPV6_FRAGMENT = 44

Key = tuple[int, bytes, bytes, int, int]  # version, source, destination, protocol, identification


@dataclass
class _Datagram:
    first_ts: float
    head: bytes = b""  # the unfragmentable part, taken from the fragment at offset 0
    pieces: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    total: int | None = None  # length of the data, known once the last fragment (MF clear) arrived


def _fragment_of(packet: bytes) -> tuple[Key, int, bool, bytes, bytes] | None:
    """(key, offset, more fragments, head, data) of an IP fragment; None for anything else (or malformed)."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        flags = struct.unpack_from("!H", packet, 6)[0]
        if not flags & 0x3FFF or ihl < 20 or total < ihl or total > len(packet):
            return None
        key = (4, packet[12:16], packet[16:20], packet[9], struct.unpack_from("!H", packet, 4)[0])
        return key, (flags & 0x1FFF) * 8, bool(flags & 0x2000), packet[:ihl], packet[ihl:total]
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        end = min(len(packet), 40 + struct.unpack_from("!H", packet, 4)[0])
        nh_pos, nh, off = 6, packet[6], 40
        while nh in IPV6_EXTENSIONS and off + 8 <= end:
            nh_pos, nh, off = off, packet[off], off + (packet[off + 1] + 1) * 8
        if nh != IPV6_FRAGMENT or off + 8 > end:
            return None
        frag_nh, field_ = packet[off], struct.unpack_from("!H", packet, off + 2)[0]
        ident = struct.unpack_from("!I", packet, off + 4)[0]
        head = bytearray(packet[:off])
        head[nh_pos] = frag_nh  # the header before the Fragment header now points past it
        key = (6, packet[8:24], packet[24:40], frag_nh, ident)
        return key, field_ & 0xFFF8, bool(field_ & 1), bytes(head), packet[off + 8:end]
    return None


def _overlaps(d: _Datagram, offset: int, data: bytes) -> bool:
    """True when [offset, offset + len) overlaps a piece already held, other than an exact duplicate of it."""
    end = offset + len(data)
    for off, piece in d.pieces.items():
        if off == offset and piece == data:
            continue
        if off < end and offset < off + len(piece):
            return True
    return False


def _whole(d: _Datagram) -> bytes | None:
    """The reassembled packet, or None while a piece is missing."""
    if d.total is None or not d.head:
        return None
    data = bytearray()
    for off in sorted(d.pieces):
        if off != len(data):
            return None  # a hole (overlaps never get this far)
        data += d.pieces[off]
    if len(data) != d.total:
        return None
    head = bytearray(d.head)
    if head[0] >> 4 == 4:
        struct.pack_into("!H", head, 2, len(head) + len(data))
        struct.pack_into("!H", head, 6, 0)  # no flags, offset 0
        return ipv4_checksummed(head) + bytes(data)
    struct.pack_into("!H", head, 4, len(head) - 40 + len(data))
    return bytes(head) + bytes(data)


def reassemble(packets: Iterable[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
    """The packets with every complete set of IP fragments replaced by the datagram they carry."""
    pending: dict[Key, _Datagram] = {}
    for ts, packet in packets:
        frag = _fragment_of(packet)
        if frag is None:
            yield ts, packet
            continue
        key, offset, more, head, data = frag
        for k in [k for k, d in pending.items() if ts - d.first_ts > TIMEOUT]:
            del pending[k]
        d = pending.get(key)
        if d is None:
            if len(pending) >= MAX_PENDING:
                del pending[next(iter(pending))]
            d = pending[key] = _Datagram(ts)
        if _overlaps(d, offset, data) or (not more and d.total is not None and d.total != offset + len(data)):
            del pending[key]  # an overlap, or a second "last" fragment that disagrees: Linux drops the datagram
            continue
        if offset == 0:
            d.head = head
        if not more:
            d.total = offset + len(data)
        d.pieces[offset] = data
        whole = _whole(d)
        if whole is not None:
            del pending[key]
            yield ts, whole


def reassemble_capture(data: bytes, name: str = "capture") -> bytes:
    """A LINKTYPE_RAW pcap of the capture `data` with its IP fragments reassembled."""
    out = io.BytesIO()
    with PcapWriter(out) as w:
        for ts, packet in reassemble(iter_packets(data, name)):
            w.write(packet, ts)
    return out.getvalue()
