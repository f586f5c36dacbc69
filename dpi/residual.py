"""Residual blocking state (G-4, GE-1, GF-3, GQ-2): blocking that outlives the triggering connection.

Kept apart from the flow table because it is keyed differently (3-tuple, 2-tuple or server address, not the
5-tuple) and because several NFQUEUE workers must share it: the engine only talks to the small `ResidualStore`
protocol, and the live censor passes a cross-process implementation.
"""
from __future__ import annotations

from typing import Protocol

ResidualKey = tuple


class ResidualStore(Protocol):
    def add(self, key: ResidualKey, until: float, action: str, rule: str) -> None: ...

    def lookup(self, key: ResidualKey, now: float) -> tuple[str, str] | None: ...


class LocalResidualStore:
    """In-process store: a dict with lazy expiry, bounded so a trigger flood cannot grow it without limit."""

    def __init__(self, max_entries: int = 1 << 20) -> None:
        self._entries: dict[ResidualKey, tuple[float, str, str]] = {}
        self._max = max_entries

    def add(self, key: ResidualKey, until: float, action: str, rule: str) -> None:
        if len(self._entries) >= self._max and key not in self._entries:
            # drop the entry closest to expiry: the one that would have been forgotten first
            oldest = min(self._entries, key=lambda k: self._entries[k][0])
            del self._entries[oldest]
        self._entries[key] = (until, action, rule)

    def lookup(self, key: ResidualKey, now: float) -> tuple[str, str] | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if now >= hit[0]:
            del self._entries[key]
            return None
        return hit[1], hit[2]

    def __len__(self) -> int:
        return len(self._entries)


def residual_key(kind: str, proto: int, client_ip: bytes, server_ip: bytes, server_port: int) -> ResidualKey:
    """The residual key of a flow: 3-tuple = (client IP, server IP, server port) per CENSOR-MODELS.md."""
    if kind == "3-tuple":
        return ("3", proto, client_ip, server_ip, server_port)
    if kind == "2-tuple":
        return ("2", client_ip, server_ip)
    return ("s", server_ip)
