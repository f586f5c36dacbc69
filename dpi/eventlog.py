"""What the censor did, on disk: the JSON event log and the pcap of censored flows (`--log`, `--pcap`)."""
from __future__ import annotations

import json
import os
import struct
import sys
import time
from collections import OrderedDict
from typing import Any

LINKTYPE_RAW = 101


def flow_key(packet: bytes) -> tuple | None:
    """Direction-free flow identity (protocol, endpoint, endpoint) of an IPv4/IPv6 packet; None if unparsable."""
    try:
        v = packet[0] >> 4
        if v == 4:
            ihl = (packet[0] & 0x0F) * 4
            proto = packet[9]
            a, b = packet[12:16], packet[16:20]
            frag = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF
            off = ihl if frag == 0 else -1
        elif v == 6:
            proto = packet[6]
            a, b = packet[8:24], packet[24:40]
            off = 40
        else:
            return None
        if proto in (6, 17) and off > 0 and len(packet) >= off + 4:
            pa, pb = struct.unpack_from("!HH", packet, off)
        else:
            pa = pb = 0
        ea, eb = (a, pa), (b, pb)
        return (proto, ea, eb) if ea <= eb else (proto, eb, ea)
    except (IndexError, struct.error):
        return None


class EventLog:
    """JSON lines, one per event, appended with one write each (O_APPEND keeps workers' lines whole)."""

    def __init__(self, path: str | None) -> None:
        if path is None:
            self._fd = -1
        elif path == "-":
            self._fd = sys.stdout.fileno()
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._own = path not in (None, "-")

    @property
    def enabled(self) -> bool:
        return self._fd >= 0

    def write(self, event: dict) -> None:
        if self._fd < 0:
            return
        line = json.dumps(event, default=_json_default, separators=(",", ":")) + "\n"
        try:
            os.write(self._fd, line.encode())
        except OSError:
            pass

    def close(self) -> None:
        if self._own and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def write_pcap_header(path: str, snaplen: int = 65535) -> None:
    """Start (truncate) a pcap file of raw IP packets (LINKTYPE_RAW): the workers append records to it."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_RAW))


class CensoredFlowRecorder:
    """Writes the packets of censored flows (flows with an event) to a pcap.

    A flow is known to be censored only once its event fires, so the first packets of every queued flow are
    held in a small bounded buffer and flushed when the event comes; after it, every packet of the flow the
    worker still sees (and the packets it forges into the flow) is written. Each record is one O_APPEND write,
    so several workers can share the file.
    """

    def __init__(self, path: str, per_flow: int = 16, max_flows: int = 1024) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._held: OrderedDict[tuple, list[tuple[float, bytes]]] = OrderedDict()
        self._censored: OrderedDict[tuple, None] = OrderedDict()
        self._per_flow, self._max = per_flow, max_flows
        self.written = 0

    def packet(self, packet: bytes, censored_now: bool) -> None:
        key = flow_key(packet)
        if key is None:
            return
        now = time.time()
        if key in self._censored:
            self._censored.move_to_end(key)
            self._write(now, packet)
            return
        if censored_now:
            for ts, held in self._held.pop(key, ()):
                self._write(ts, held)
            self._write(now, packet)
            self._censored[key] = None
            if len(self._censored) > self._max:
                self._censored.popitem(last=False)
            return
        buf = self._held.get(key)
        if buf is None:
            buf = self._held[key] = []
            if len(self._held) > self._max:
                self._held.popitem(last=False)
        if len(buf) < self._per_flow:
            buf.append((now, packet))

    def forged(self, packet: bytes) -> None:
        key = flow_key(packet)
        if key is not None and key in self._censored:
            self._write(time.time(), packet)

    def _write(self, ts: float, packet: bytes) -> None:
        sec = int(ts)
        rec = struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(packet), len(packet)) + packet
        try:
            os.write(self._fd, rec)
            self.written += 1
        except OSError:
            pass

    def close(self) -> None:
        os.close(self._fd)
