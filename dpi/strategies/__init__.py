"""The catalogue of evasion strategies that `redweb probe` can try against a censor.

A strategy changes how a client sends its first flight (or, for the server-side ones, how the server answers)
to step around one measured parser limit of CENSOR-MODELS.md. Modules, one concern each:

    base        the Strategy class, typed K=V parameters, the plans strategies return
    tls         TLS-over-TCP strategies (tcp-segment, tls-record-frag, ccs-first, padding, fake-first, ...)
    quic        QUIC strategies (quic-dummy-first, quic-low-sport, quic-v2, quic-crypto-split)
    server      server-side strategies and their helpers (server-window, split-handshake)
    rawtcp      TCP below the socket API: TCP_REPAIR sequence numbers and options, crafted segments
    firewall    client-side firewall rules for one connection (drop-rst)
    tcpclient   HTTPS over a TCP socket driven by hand (Python ssl over MemoryBIO)
    quicclient  HTTP/3 over a UDP socket driven by hand (aioquic's QuicConnection)
    trace       what one fetch did, phase by phase

    from dpi.strategies import build, catalogue
    strategy = build("tcp-segment", {"at": "5"})
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from dpi.strategies.base import (FakeSegment, Flight, Param, QuicPlan, Strategy, StrategyError, TcpPlan,
                                 Transport)
from dpi.strategies.quic import QUIC_STRATEGIES
from dpi.strategies.server import SERVER_STRATEGIES
from dpi.strategies.tls import TLS_STRATEGIES

CATALOGUE: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (*TLS_STRATEGIES, *QUIC_STRATEGIES, *SERVER_STRATEGIES)}


def catalogue() -> list[type[Strategy]]:
    """Every strategy class, in catalogue order (baseline first)."""
    return list(CATALOGUE.values())


def build(name: str, args: Mapping[str, str] | None = None) -> Strategy:
    """The strategy `name` with its `K=V` parameters; raises StrategyError (a usage error) on any mistake."""
    cls = CATALOGUE.get(name)
    if cls is None:
        raise StrategyError(f"unknown strategy {name!r} (known: {', '.join(CATALOGUE)})")
    return cls(args)


def idle_seconds(name: str, pairs: Sequence[str]) -> float:
    """How long strategy `name` with `K=V` pairs keeps its connection silent on purpose (0 for a bad name or
    argument: the probe reports that itself); whoever waits for a probe adds it to the timeout."""
    try:
        return build(name, parse_args(list(pairs))).idle_seconds()
    except StrategyError:
        return 0.0


def parse_args(pairs: list[str] | None) -> dict[str, str]:
    """`["at=5", "delay_ms=10"]` -> {"at": "5", "delay_ms": "10"}; raises StrategyError on `K` without `=V`."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StrategyError(f"bad --strategy-arg {pair!r}: write K=V, e.g. at=5")
        if key.strip() in out:
            raise StrategyError(f"--strategy-arg {key.strip()} given twice")
        out[key.strip()] = value.strip()
    return out


__all__ = ["CATALOGUE", "FakeSegment", "Flight", "Param", "QuicPlan", "Strategy", "StrategyError", "TcpPlan",
           "Transport", "build", "catalogue", "idle_seconds", "parse_args"]
