"""pcap files: the header reader that hands record bodies to the core, and a small writer.

Reading records is done in C by `Core.process_pcap` (one loop, no Python per packet); this module only
understands the global header. The writer produces LINKTYPE_RAW captures (the packets as NFQUEUE sees them),
used for `redweb run --pcap`, generated benchmark captures and test fixtures.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = {0: "null", 1: "ethernet", 12: "raw", 14: "raw", 101: "raw", 108: "loop", 113: "linux-sll",
                       228: "ipv4", 229: "ipv6", 276: "linux-sll2"}

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (False, False),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (True, False),   # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1": (False, True),   # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (True, True),    # big-endian, nanoseconds
}


class PcapError(ValueError):
    """A capture RedWeb cannot read; the message says why and what to do."""


@dataclass(frozen=True)
class PcapHeader:
    swapped: bool  # big-endian records
    nanosecond: bool
    linktype: int
    snaplen: int
    offset: int = 24  # first record


def read_header(data: bytes, name: str = "capture") -> PcapHeader:
    if len(data) >= 4 and data[:4] == b"\x0a\x0d\x0d\x0a":
        raise PcapError(f"{name} is pcapng; convert it: editcap -F pcap {name} out.pcap")
    if len(data) < 24 or data[:4] not in _MAGICS:
        raise PcapError(f"{name} is not a pcap file (bad magic); capture with tcpdump -w or convert with editcap -F pcap")
    swapped, nano = _MAGICS[data[:4]]
    endian = ">" if swapped else "<"
    _vmaj, _vmin, _tz, _sig, snaplen, linktype = struct.unpack(endian + "HHiIII", data[4:24])
    linktype &= 0x0FFFFFFF
    if linktype not in SUPPORTED_LINKTYPES:
        raise PcapError(f"{name}: link type {linktype} is not supported "
                        f"(supported: Ethernet, raw IP, Linux cooked v1/v2, loopback)")
    return PcapHeader(swapped, nano, linktype, snaplen)


def iter_packets(data: bytes, name: str = "capture") -> Iterator[tuple[float, bytes]]:
    """(timestamp, IP packet) pairs in Python: for tests and tools, not the hot path."""
    from dpi._core import link_offset
    hdr = read_header(data, name)
    endian = ">" if hdr.swapped else "<"
    off = hdr.offset
    scale = 1e-9 if hdr.nanosecond else 1e-6
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        if incl > len(data) - off:
            return
        frame = data[off:off + incl]
        off += incl
        skip = link_offset(frame, hdr.linktype)
        if skip >= 0:
            yield sec + frac * scale, frame[skip:]


class PcapWriter:
    """Writes LINKTYPE_RAW pcap (IP packets without a link header), microsecond timestamps."""

    def __init__(self, out: BinaryIO | str | Path, snaplen: int = 262144) -> None:
        self._own = not hasattr(out, "write")
        self._f: BinaryIO = open(out, "wb") if self._own else out  # type: ignore[arg-type, assignment]
        self._f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_RAW))

    def write(self, packet: bytes, ts: float) -> None:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self._f.write(struct.pack("<IIII", sec, usec, len(packet), len(packet)))
        self._f.write(packet)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._own:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_pcap(path: str | Path, packets: list[tuple[float, bytes]]) -> None:
    with PcapWriter(path) as w:
        for ts, pkt in packets:
            w.write(pkt, ts)
