"""Replays through a bundled profile: load rules/NAME.yaml, scale its timers, feed packets, summarise decisions.

A profile is loaded once per test session (`bundled`) and changed only through `dataclasses.replace` (`scaled`),
so the values under test are the YAML's own except the timers a test shrinks on purpose (10 min idle timeouts and
180 s residuals become seconds of synthetic timestamps; nothing here reads the clock).
"""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from scapy.layers.inet import IP, TCP

from dpi.config import Action, Profile, Rule
from dpi.decision import DROP, Decision
from dpi.engine import Censor
from dpi.forge import TCP_ACK, TCP_SYN, tcp_packet
from dpi.profile import load_profile
from dpi.traffic import TcpConversation



@functools.lru_cache(maxsize=None)
def bundled(name: str) -> Profile:
    """The bundled profile rules/NAME.yaml, as the loader builds it."""
    return load_profile(name)


def scaled(profile: Profile, *, idle: float | None = None, udp_idle: float | None = None,
           residual: float | None = None, probability: float | None = None, after_bytes: int | None = None,
           action: dict[str, Action] | None = None) -> Profile:
    """`profile` with timers and knobs replaced: flow idle timeouts, every rule's residual seconds, probabilities,
    freeze thresholds, or whole actions by rule name."""
    flows = profile.flows
    if idle is not None:
        flows = replace(flows, idle_timeout=idle)
    if udp_idle is not None:
        flows = replace(flows, udp_idle_timeout=udp_idle)
    rules: list[Rule] = []
    for rule in profile.rules:
        if residual is not None and rule.residual is not None:
            rule = replace(rule, residual=replace(rule.residual, seconds=residual))
        if probability is not None and rule.probability < 1.0:
            rule = replace(rule, probability=probability)
        if after_bytes is not None and rule.action.type == "freeze":
            rule = replace(rule, action=replace(rule.action, after_bytes=after_bytes))
        if action and rule.name in action:
            rule = replace(rule, action=action[rule.name])
        rules.append(rule)
    return replace(profile, flows=flows, rules=tuple(rules))


def censor(profile: str | Profile, *, inside: Sequence[str] | None = None, seed: int = 1) -> Censor:
    prof = bundled(profile) if isinstance(profile, str) else profile
    nets = None if inside is None else [ipaddress.ip_network(n) for n in inside]
    return Censor(prof, seed=seed, inside=nets)


@dataclass
class Outcome:
    """What the censor did to a sequence of packets."""

    packets: list[bytes]
    decisions: list[Decision]

    @property
    def events(self) -> list[dict]:
        return [e for d in self.decisions for e in d.events]

    @property
    def fired(self) -> list[tuple[str, str]]:
        """(rule, action) of every event, residual hits as action `residual-drop` / `residual-rst`."""
        return [(e["rule"], e["action"]) for e in self.events]

    @property
    def injected(self) -> list[bytes]:
        return [pkt for d in self.decisions for _, pkt in d.inject]

    def dropped(self, start: int = 0) -> list[int]:
        return [i for i, d in enumerate(self.decisions) if i >= start and d.verdict == DROP]

    @property
    def all_passed(self) -> bool:
        return not self.dropped() and not self.injected and not self.events

    def passed_payload(self, src: str, start: int = 0) -> int:
        """TCP/UDP payload bytes from `src` that the censor let through (from packet index `start` on)."""
        total = 0
        for pkt, d in list(zip(self.packets, self.decisions))[start:]:
            ip = IP(pkt)
            if ip.src == src and d.verdict != DROP:
                total += len(bytes(ip.payload.payload))
        return total


def replay(c: Censor, packets: Iterable[tuple[float, bytes]]) -> Outcome:
    pkts = list(packets)
    return Outcome([p for _, p in pkts], [c.process(p, ts) for ts, p in pkts])


@dataclass
class Flow:
    """A TCP conversation plus the index of its first data packet, for tests that look at what comes after."""

    conv: TcpConversation
    marks: dict[str, int] = field(default_factory=dict)

    def mark(self, name: str) -> "Flow":
        self.marks[name] = len(self.conv.packets)
        return self


def tcp_flow(client: str, server: str, first_flight: bytes | Sequence[bytes], *, cport: int = 40000,
             sport: int = 443, t0: float = 0.0, segment: int = 1448, server_bytes: int = 4000,
             handshake: bool = True) -> Flow:
    """Handshake, the client's first flight (one send per element), then `server_bytes` from the server and one
    more client segment. Marks: `data` = first client data packet, `after` = the first packet after the flight."""
    conv = TcpConversation(client, server, cport, sport, ts=t0)
    flow = Flow(conv)
    if handshake:
        conv.handshake()
    flow.mark("data")
    for part in ([first_flight] if isinstance(first_flight, bytes) else first_flight):
        conv.client_send(part, segment=segment)
    flow.mark("after")
    if server_bytes:
        conv.server_send(bytes(range(256)) * (server_bytes // 256) + bytes(server_bytes % 256))
    conv.client_send(b"\x17\x03\x03\x00\x20" + bytes(32))
    return flow


def _emit(conv: TcpConversation, packet: bytes) -> None:
    conv.packets.append((conv.ts, packet))
    conv.ts += conv.step


def split_handshake(client: str, server: str, cport: int, sport: int, t0: float = 0.0) -> TcpConversation:
    """A TCP split handshake (T22-1): SYN, the server answers with a bare SYN, the client SYN/ACKs, the server ACKs."""
    conv = TcpConversation(client, server, cport, sport, ts=t0)
    _emit(conv, tcp_packet(client, server, cport, sport, conv.cseq, 0, TCP_SYN, window=64240))
    _emit(conv, tcp_packet(server, client, sport, cport, conv.sseq, 0, TCP_SYN, window=65160))
    _emit(conv, tcp_packet(client, server, cport, sport, conv.cseq, conv.sseq + 1, TCP_SYN | TCP_ACK, window=64240))
    conv.cseq += 1
    conv.sseq += 1
    _emit(conv, tcp_packet(server, client, sport, cport, conv.sseq, conv.cseq, TCP_ACK, window=65160))
    return conv


def small_window_handshake(client: str, server: str, cport: int, sport: int, window: int,
                           t0: float = 0.0) -> TcpConversation:
    """A handshake whose SYN/ACK advertises a tiny receive window (server-side window shrinking, T22-E)."""
    conv = TcpConversation(client, server, cport, sport, ts=t0)
    _emit(conv, tcp_packet(client, server, cport, sport, conv.cseq, 0, TCP_SYN, window=64240))
    _emit(conv, tcp_packet(server, client, sport, cport, conv.sseq, conv.cseq + 1, TCP_SYN | TCP_ACK, window=window))
    conv.cseq += 1
    conv.sseq += 1
    _emit(conv, tcp_packet(client, server, cport, sport, conv.cseq, conv.sseq, TCP_ACK, window=502))
    return conv


def tcp_fields(pkt: bytes) -> tuple[str, str, int, int, str]:
    ip = IP(pkt)
    return ip.src, ip.dst, ip[TCP].sport, ip[TCP].dport, str(ip[TCP].flags)
