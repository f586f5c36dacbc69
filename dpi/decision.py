"""What the censor tells its feed to do with one packet.

A `Decision` is the only thing that crosses from the sans-IO engine to the I/O layers (NFQUEUE, pcap replay,
tests), so that every feed applies exactly the same censorship.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

ACCEPT = 0
DROP = 1

# Connection marks that let the kernel handle a decided flow without queueing it again (the fast path):
# the NFQUEUE layer saves them into the connmark, and iptables accepts/drops marked connections before the
# queue rule. MARK_NONE keeps the flow in user space (undecided, throttled or frozen flows).
MARK_NONE = 0
MARK_ACCEPT = 1
MARK_DROP = 2


@dataclass(slots=True)
class Decision:
    verdict: int = ACCEPT
    mark: int = MARK_NONE
    # Forged packets to send, each (delay in seconds after this packet, raw IP packet bytes). Read-only: the
    # engine shares one Decision (with empty tuples) between all packets that need nothing more.
    inject: Sequence[tuple[float, bytes]] = field(default_factory=list)
    # One dict per censorship event (a rule fired, a residual hit): the JSON event log's lines.
    events: Sequence[dict] = field(default_factory=list)
