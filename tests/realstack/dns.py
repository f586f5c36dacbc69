"""DNS queries packed by dnslib."""
from __future__ import annotations

import dnslib


def dnslib_query(name: str, qtype: str = "A", *, tcp: bool = False, query_id: int = 0x1234) -> bytes:
    """A recursive query for `name` as dnslib packs it; with `tcp`, behind the 2-byte length prefix (RFC 1035)."""
    record = dnslib.DNSRecord.question(name, qtype)
    record.header.id = query_id
    wire = record.pack()
    return len(wire).to_bytes(2, "big") + wire if tcp else wire
