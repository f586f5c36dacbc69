"""The sans-IO censor: the compiled core plus the rules of one profile.

`Censor.process(packet, ts)` is the single entry point of every feed (NFQUEUE, pcap replay, tests). The core
(`dpi._core.Core`) handles every packet in C and calls `Censor.inspect` only when a flow has first-flight bytes
to look at or a new flow starts; this module turns those bytes into observations (ClientHello, HTTP request,
DNS query, QUIC Initial, fully-encrypted-traffic features), applies the profile's parser limits, matches rules
and answers with an action that the core then enforces on the rest of the flow.
"""
from __future__ import annotations

import ipaddress
import random
import socket
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from dpi import _core, _extract
from dpi.config import Action, ListSpec, Profile, Rule
from dpi.decision import ACCEPT, DROP, Decision
from dpi.forge import AddressPool, forge_dns_response, forge_rsts
from dpi.lists import load_list, parse_list_text
from dpi.match import DomainMatcher
from dpi.residual import LocalResidualStore, ResidualStore, residual_key

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_STATE = {
    "accept": _core.STATE_ACCEPT, "blackhole": _core.STATE_DROP, "throttle": _core.STATE_THROTTLE,
    "freeze": _core.STATE_FREEZE,
}
_DIRECTION = {_core.DIR_OUTBOUND: "outbound", _core.DIR_INBOUND: "inbound", _core.DIR_DOMESTIC: "domestic",
              _core.DIR_TRANSIT: "transit"}
_PROTO = {6: "tcp", 17: "udp"}


# Decisions without forged packets or events, one per verdict code (bit 0 drop, bits 1-2 mark), shared by every
# packet that needs nothing more: their lists are empty tuples, so no consumer can change them for the others.
_PLAIN: tuple[Decision, ...] = tuple(Decision(code & 1, code >> 1, (), ()) for code in range(8))  # type: ignore[arg-type]


def ip_text(raw: bytes) -> str:
    """Packed address -> text; inet_ntop is ~20x faster than ipaddress on this (per-decision) path."""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


@dataclass(slots=True)
class Observation:
    """What the censor understood of one first flight (after its parser limits)."""

    kind: str = "unknown"  # tls, tls-partial, tls-other, http, http-partial, dns, quic, unknown
    sni: tuple[str, ...] = ()
    alpn: tuple[str, ...] = ()
    esni: bool = False
    ech: bool = False
    http_host: str | None = None
    http_path: str | None = None
    dns_qname: str | None = None
    dns_qtype: int = 0
    quic_version: int | None = None
    quic_sni: tuple[str, ...] = ()
    fet_blockable: bool | None = None  # GF-1: True when no exemption holds
    fet_exempt: str | None = None
    note: str = ""  # why a parser limit ignored what was there (for events and `classify`)

    def names(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("sni", "alpn", "quic_sni"):
            v = getattr(self, key)
            if v:
                out[key] = list(v)
        for key in ("http_host", "http_path", "dns_qname", "quic_version", "fet_exempt", "note"):
            v = getattr(self, key)
            if v not in (None, ""):
                out[key] = v
        if self.esni:
            out["esni"] = True
        if self.ech:
            out["ech"] = True
        if self.dns_qtype:
            out["dns_qtype"] = self.dns_qtype
        if self.fet_blockable is not None:
            out["fet_blockable"] = self.fet_blockable
        return out


@dataclass
class CompiledRule:
    rule: Rule
    index: int  # 1-based: 0 means "no rule" in the core
    sni: DomainMatcher | None = None
    host: DomainMatcher | None = None
    quic_sni: DomainMatcher | None = None
    qname: DomainMatcher | None = None
    paths: tuple[str, ...] | None = None
    nets: tuple[Network, ...] | None = None
    payload_level: bool = False  # needs first-flight bytes (else decided when the flow starts)
    pool_a: AddressPool | None = None
    pool_aaaa: AddressPool | None = None


@dataclass
class FlowRecord:
    """One flow as the offline classifier reports it."""

    flow_id: int
    proto: str
    client: tuple[str, int]
    server: tuple[str, int]
    direction: str
    first_ts: float
    observation: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None
    action: str = "accept"
    residual: bool = False


class Censor:
    """One profile's censor. Not thread-safe: one instance per NFQUEUE worker."""

    def __init__(self, profile: Profile, *, seed: int | None = None, inside: Iterable[Network] | None = None,
                 residual: ResidualStore | None = None, record: bool = False) -> None:
        self.profile = profile
        self.rng = random.Random(seed if seed is not None else profile.seed)
        self.residual: ResidualStore = residual if residual is not None else LocalResidualStore()
        self.counters: Counter[str] = Counter()
        self.records: dict[int, FlowRecord] | None = {} if record else None
        self._lists: dict[str, tuple[DomainMatcher | None, tuple[Network, ...]]] = {}
        self.rules: list[CompiledRule] = [self._compile(r, i + 1) for i, r in enumerate(profile.rules)]
        self._flow_rules = [r for r in self.rules if not r.payload_level]
        self._payload_rules = [r for r in self.rules if r.payload_level]
        self._has_residual = any(r.rule.residual for r in self.rules)
        self._wants_fet = any(r.rule.match.fet is not None for r in self.rules)
        self._quic_assemblers: dict[int, Any] = {}
        nets = tuple(inside) if inside is not None else profile.inside
        tcp, quic = profile.tcp, profile.quic
        # The core holds a weak reference: Censor owns Core, and a strong cycle would keep the flow table (MBs)
        # alive until the cyclic garbage collector happens to run.
        self.core = _core.Core(
            weakref.proxy(self),
            max_flows=profile.flows.max_flows,
            tcp_idle=profile.flows.idle_timeout,
            udp_idle=profile.flows.udp_idle_timeout,
            reassembly=tcp.reassembly,
            budget=tcp.budget,
            window=tcp.window,
            tcp_header_exact=tcp.tcp_header_exact,
            require_syn=tcp.require_syn,
            parse_both=tcp.parse_directions == "both",
            server_syn_unblocks=tcp.server_syn_unblocks,
            triggers_both=profile.triggers == "both",
            inside=[(n.version, n.network_address.packed, n.prefixlen) for n in nets],
            udp_window=1 if (quic.enabled and quic.first_datagram_only and not profile.dns.enabled) else 8,
            new_flow_callback=bool(self._flow_rules) or self._has_residual or record,
            max_fragments=profile.flows.max_fragments,
            max_buffer_bytes=profile.flows.max_buffer_bytes,
        )

    # ------------------------------------------------------------------ set-up
    def _list(self, name: str) -> tuple[DomainMatcher | None, tuple[Network, ...]]:
        if name not in self._lists:
            spec: ListSpec = self.profile.lists[name]
            patterns, networks = [], []
            m = self.profile.matching
            for path in spec.files:
                loaded = load_list(path, spec.format, default_form=spec.default_form, on_error=spec.on_error,
                                   case_sensitive=m.case_sensitive)
                patterns += loaded.patterns
                networks += loaded.networks
            if spec.entries:
                loaded = parse_list_text("\n".join(spec.entries), spec.format, source=f"list {name}",
                                         default_form=spec.default_form, on_error=spec.on_error,
                                         case_sensitive=m.case_sensitive)
                patterns += loaded.patterns
                networks += loaded.networks
            matcher = DomainMatcher(patterns, trailing_dot=m.trailing_dot, case_sensitive=m.case_sensitive) \
                if patterns or spec.format != "ip" else None
            self._lists[name] = (matcher, tuple(networks))
        return self._lists[name]

    def _compile(self, rule: Rule, index: int) -> CompiledRule:
        m = rule.match
        c = CompiledRule(rule, index)
        if m.tls_sni:
            c.sni = self._list(m.tls_sni)[0]
        if m.http_host:
            c.host = self._list(m.http_host)[0]
        if m.quic_sni:
            c.quic_sni = self._list(m.quic_sni)[0]
        if m.dns_qname:
            c.qname = self._list(m.dns_qname)[0]
        if m.http_path:
            spec = self.profile.lists[m.http_path]
            c.paths = tuple(spec.entries) + tuple(
                line.strip() for p in spec.files for line in open(p, encoding="utf-8")
                if line.strip() and not line.lstrip().startswith("#"))
        if m.ip:
            matcher, nets = self._list(m.ip)
            c.nets = nets
        c.payload_level = any(v is not None for v in (
            m.tls_sni, m.http_host, m.http_path, m.quic_sni, m.quic_version, m.dns_qname, m.fet, m.tls_esni,
            m.tls_ech, m.tls_any))
        a = rule.action
        if a.type == "dns-inject":
            c.pool_a = AddressPool(a.pool_a, a.pool_order, self.rng) if a.pool_a else None
            c.pool_aaaa = AddressPool(a.pool_aaaa, a.pool_order, self.rng) if a.pool_aaaa else None
        return c

    # ------------------------------------------------------------------ the feed's entry point
    def process(self, packet: bytes, ts: float) -> Decision:
        return self.decision(self.core.process(packet, ts))

    def decision(self, code: int) -> Decision:
        """The Decision for the packet the core just processed (verdict `code`), with its forged packets and
        events. Called by `process`, and by the compiled NFQUEUE callback only when the core left something."""
        core = self.core
        inject, events = core.inject, core.events
        if not inject and not events:
            return _PLAIN[code]  # the common case: no allocation per packet
        # hand the lists over and start fresh ones, so a Decision never shares a list with a later packet
        if inject:
            core.inject = []
        if events:
            core.events = []
        return Decision(code & 1, code >> 1, inject, events)

    def counters_snapshot(self) -> dict[str, int]:
        c = self.core
        out = {
            "packets": c.n_packets, "dropped": c.n_dropped, "flows": c.n_flows, "active_flows": c.n_active,
            "evicted": c.n_evicted, "expired": c.n_expired, "inspections": c.n_callbacks,
            "unparsed": c.n_unparsed, "policed": c.n_policed, "frozen": c.n_frozen, "fragments": c.n_fragments,
            "buffer_full": c.n_buffer_full, "memory_bytes": c.memory_bytes(),
        }
        out.update(self.counters)
        return out

    # ------------------------------------------------------------------ core callback
    def inspect(self, ctx: Any) -> None:
        """Called by the core; answers through ctx.result/state/verdict (see dpi._core.Inspection)."""
        if ctx.event == 1:
            self._on_new_flow(ctx)
        else:
            self._on_payload(ctx)

    def _record(self, ctx: Any) -> FlowRecord | None:
        if self.records is None:
            return None
        rec = self.records.get(ctx.flow_id)
        if rec is None:
            rec = FlowRecord(ctx.flow_id, _PROTO.get(ctx.proto, str(ctx.proto)),
                             (ip_text(ctx.client_ip), ctx.client_port), (ip_text(ctx.server_ip), ctx.server_port),
                             _DIRECTION[ctx.direction], ctx.ts)
            self.records[ctx.flow_id] = rec
        return rec

    def _on_new_flow(self, ctx: Any) -> None:
        self._record(ctx)
        if self._has_residual and ctx.from_client and self._residual_hit(ctx):
            return
        censored = ctx.direction == _core.DIR_OUTBOUND or (
            self.profile.triggers == "both" and ctx.direction != _core.DIR_DOMESTIC)
        if not censored:
            ctx.result = _core.RESULT_RELEASE
            return
        for rule in self._flow_rules:
            if self._flow_conditions(rule, ctx) and self._draw(rule):
                self._fire(rule, ctx, Observation(kind="flow"))
                return

    def _residual_hit(self, ctx: Any) -> bool:
        for rule in self.rules:
            res = rule.rule.residual
            if res is None:
                continue
            key = residual_key(res.key, ctx.proto, ctx.client_ip, ctx.server_ip, ctx.server_port)
            hit = self.residual.lookup(key, ctx.ts)
            if hit is None:
                continue
            action, rule_name = hit
            ctx.result = _core.RESULT_DECIDE
            ctx.state = _core.STATE_DROP
            ctx.verdict = DROP
            ctx.rule = rule.index
            if action == "rst" and ctx.proto == 6:
                # G-4: every new connection on the 3-tuple is reset
                client_seq = (ctx.seq + 1) & 0xFFFFFFFF
                self.core.inject.extend(forge_rsts(
                    client=(ip_text(ctx.client_ip), ctx.client_port), server=(ip_text(ctx.server_ip), ctx.server_port),
                    client_seq=client_seq, server_seq=ctx.ack, injector=rule.rule.action.injector, to="client",
                    rng=self.rng))
            self.counters[f"residual:{rule_name}:{action}"] += 1
            self._event(ctx, rule, f"residual-{action}", Observation(kind="residual"), residual=True)
            return True
        return False

    # ------------------------------------------------------------------ observation
    def _observe(self, ctx: Any) -> Observation:
        if ctx.proto == 6:
            return self._observe_tcp(ctx)
        return self._observe_udp(ctx)

    def _observe_tcp(self, ctx: Any) -> Observation:
        tcp = self.profile.tcp
        data: bytes = ctx.data
        obs = Observation()
        if self._wants_fet and ctx.from_client and ctx.first:
            # GF-1 looks at the first client data packet only
            fet = _extract.fet_features(data[:ctx.payload_len] if not tcp.reassembly else data)
            obs.fet_exempt = fet.exempt
            obs.fet_blockable = fet.exempt is None
        if ctx.server_port in self.profile.dns.ports and self.profile.dns.enabled:
            dns = _extract.parse_dns(data, True)
            if dns.status == _extract.OK and not dns.is_response:
                obs.kind, obs.dns_qname, obs.dns_qtype = "dns", dns.qname, dns.qtype
                return obs
        if data[:1] in (b"\x14", b"\x15", b"\x16", b"\x17"):
            ch = _extract.parse_tls_client_hello(data, tcp.tls_record_reassembly, tcp.skip_leading_records)
            if ch.status == _extract.OK:
                if tcp.whole_clienthello and not (
                        ch.record_count == 1 and ch.record_length + 5 <= ctx.payload_len
                        and ch.record_length >= ch.handshake_length + 4):
                    # T21-2: the ClientHello must sit whole in this one segment
                    obs.kind, obs.note = "tls-other", "clienthello not whole in one segment (T21-2)"
                    return obs
                obs.kind, obs.sni, obs.alpn = "tls", ch.sni, ch.alpn
                obs.esni, obs.ech = ch.has_esni, ch.has_ech
            elif ch.status == _extract.NEED_MORE:
                obs.kind = "tls-partial"
            else:
                obs.kind = "tls-other"
                if ch.status == _extract.FRAGMENTED:
                    obs.note = "clienthello fragmented over TLS records"
                elif ch.records_before:
                    obs.note = "another TLS record precedes the clienthello"
            return obs
        http = _extract.parse_http_request(data)
        if http.status == _extract.OK:
            obs.kind, obs.http_host, obs.http_path = "http", http.host, http.path
        elif http.status == _extract.NEED_MORE:
            obs.kind = "http-partial"
        return obs

    def _observe_udp(self, ctx: Any) -> Observation:
        data: bytes = ctx.data
        obs = Observation()
        prof = self.profile
        if prof.dns.enabled and ctx.server_port in prof.dns.ports:
            dns = _extract.parse_dns(data, False)
            if dns.status == _extract.OK and not dns.is_response:
                obs.kind, obs.dns_qname, obs.dns_qtype = "dns", dns.qname, dns.qtype
                return obs
        q = prof.quic
        if not q.enabled or (q.ports and ctx.server_port not in q.ports) or len(data) < q.min_size:
            return obs
        hdr = _extract.parse_quic_long_header(data, 0)
        if hdr.status != _extract.OK or not hdr.is_initial:
            return obs
        obs.kind, obs.quic_version = "quic", hdr.version
        if q.sport_gt_dport and not ctx.client_port > ctx.server_port:
            obs.note = "source port <= destination port (GQ-1)"
            return obs
        if hdr.version not in q.versions:
            obs.note = f"version {hdr.version:#010x} not inspected"
            return obs
        if not q.decrypt:
            return obs
        from dpi import quic as quicmod
        if q.crypto_reassembly:
            asm = self._quic_assemblers.get(ctx.flow_id)
            if asm is None:
                if len(self._quic_assemblers) > 4096:
                    self._quic_assemblers.clear()
                asm = self._quic_assemblers[ctx.flow_id] = quicmod.InitialAssembler()
            info = asm.feed(data)
        else:
            info = quicmod.parse_initial(data)
        if info.status != "ok":
            obs.note = f"initial {info.status}"
            if info.status == "incomplete" and q.crypto_reassembly:
                obs.kind = "quic-partial"
            return obs
        if not q.crypto_reassembly and (info.crypto_frames > 1 or info.packets > 1):
            obs.note = "clienthello split over CRYPTO frames / Initials (GQ-3)"
            return obs
        if not q.allow_mixed_frames and info.interleaved:
            obs.note = "CRYPTO mixed with PING/PADDING frames (GQ-3)"
            return obs
        obs.quic_sni, obs.alpn = info.sni, info.alpn
        return obs

    # ------------------------------------------------------------------ rules
    def _flow_conditions(self, c: CompiledRule, ctx: Any) -> bool:
        m = c.rule.match
        if m.protocol is not None and _PROTO.get(ctx.proto) != m.protocol:
            return False
        if m.port is not None and ctx.server_port not in m.port:
            return False
        if m.direction is not None and _DIRECTION[ctx.direction] != m.direction:
            return False
        if c.nets is not None:
            addr = ipaddress.ip_address(ctx.server_ip)
            if not any(addr in n for n in c.nets if n.version == addr.version):
                return False
        return True

    @staticmethod
    def _names_match(matcher: DomainMatcher | None, names: Iterable[str | None]) -> bool:
        if matcher is None:
            return False
        return any(n is not None and matcher.match(n) is not None for n in names)

    def _payload_conditions(self, c: CompiledRule, obs: Observation, ctx: Any) -> bool:
        m = c.rule.match
        if m.tls_sni is not None and not (obs.kind == "tls" and self._names_match(c.sni, obs.sni)):
            return False
        if m.tls_any is not None and (obs.kind == "tls") != m.tls_any:
            return False
        if m.tls_esni is not None and (obs.kind != "tls" or obs.esni != m.tls_esni):
            return False
        if m.tls_ech is not None and (obs.kind != "tls" or obs.ech != m.tls_ech):
            return False
        if m.http_host is not None and not (obs.kind == "http" and self._names_match(c.host, [obs.http_host])):
            return False
        if m.http_path is not None and not (obs.kind == "http" and obs.http_path is not None
                                            and any(p in obs.http_path for p in c.paths or ())):
            return False
        if m.quic_version is not None and not (obs.kind == "quic" and obs.quic_version in m.quic_version
                                               and not obs.note):
            return False
        if m.quic_sni is not None and not self._names_match(c.quic_sni, obs.quic_sni):
            return False
        if m.dns_qname is not None and not (obs.kind == "dns" and self._names_match(c.qname, [obs.dns_qname])):
            return False
        if m.fet is not None and obs.fet_blockable != m.fet:
            return False
        return True

    def _draw(self, c: CompiledRule) -> bool:
        p = c.rule.probability
        return p >= 1.0 or self.rng.random() < p

    def _on_payload(self, ctx: Any) -> None:
        obs = self._observe(ctx)
        rec = self._record(ctx)
        if rec is not None and (obs.kind != "unknown" or not rec.observation):
            rec.observation = obs.names()
        injected_dns = False
        for rule in self._payload_rules:
            if self._flow_conditions(rule, ctx) and self._payload_conditions(rule, obs, ctx) and self._draw(rule):
                if rule.rule.action.type == "dns-inject":
                    # GD-1: several injectors race; every matching dns-inject rule sends its own answer
                    self._fire(rule, ctx, obs)
                    injected_dns = True
                    continue
                if injected_dns:
                    continue
                self._fire(rule, ctx, obs)
                return
        if not injected_dns:
            ctx.result = self._undecided(ctx, obs)

    def _undecided(self, ctx: Any, obs: Observation) -> int:
        """No rule fired: keep looking (partial first flight, inspection window) or release the flow."""
        tcp = self.profile.tcp
        if ctx.proto != 6:
            if obs.kind in ("dns", "quic-partial"):
                return _core.RESULT_CONTINUE
            return _core.RESULT_RELEASE
        if obs.kind in ("tls-partial", "http-partial") and tcp.reassembly:
            return _core.RESULT_CONTINUE
        if tcp.window:
            # T21-3: a >= 101-byte first packet that parses as nothing releases the flow for good; anything
            # else (another TLS record, a non-matching ClientHello, proxy traffic) keeps it under inspection
            if (ctx.first and tcp.release_unparsed and obs.kind == "unknown"
                    and ctx.payload_len >= tcp.release_unparsed):
                return _core.RESULT_RELEASE
            return _core.RESULT_CONTINUE
        return _core.RESULT_RELEASE

    # ------------------------------------------------------------------ actions
    def _fire(self, c: CompiledRule, ctx: Any, obs: Observation) -> None:
        a: Action = c.rule.action
        ctx.result = _core.RESULT_DECIDE
        ctx.rule = c.index
        ctx.verdict = ACCEPT
        t = a.type
        if t == "accept":
            ctx.state = _core.STATE_ACCEPT
        elif t == "drop":
            ctx.state = _core.STATE_INSPECT if ctx.proto == 6 else _core.STATE_ACCEPT
            ctx.verdict = DROP
        elif t == "blackhole":
            ctx.state = _core.STATE_DROP if a.blackhole_direction == "both" else _core.STATE_DROP_UP
            ctx.verdict = DROP if a.include_trigger else ACCEPT
        elif t == "rst":
            self._inject_rsts(ctx, a)
            ctx.state = _core.STATE_DROP if a.drop_trigger else _core.STATE_ACCEPT
            ctx.verdict = DROP if a.drop_trigger else ACCEPT
        elif t == "dns-inject":
            lo, hi = a.injector.ttl
            forged = forge_dns_response(ctx.packet, a_pool=c.pool_a, aaaa_pool=c.pool_aaaa, ttl=a.dns_ttl,
                                        ip_ttl=self.rng.randint(lo, hi), rng=self.rng) if ctx.from_client else None
            if forged is not None:
                self.core.inject.append((0.0, forged))
            # a DNS flow stays under inspection: the next query on the same ports is judged again
            ctx.state = _core.STATE_INSPECT
            ctx.verdict = DROP if a.dns_mode == "in-path" else ACCEPT
        elif t == "throttle":
            ctx.state = _core.STATE_THROTTLE
            ctx.rate = a.rate_bps / 8.0
            ctx.burst = float(a.burst_bytes)
        elif t == "freeze":
            ctx.state = _core.STATE_FREEZE
            ctx.freeze_after = a.after_bytes
        residual = c.rule.residual
        if residual is not None:
            key = residual_key(residual.key, ctx.proto, ctx.client_ip, ctx.server_ip, ctx.server_port)
            self.residual.add(key, ctx.ts + residual.seconds, residual.action, c.rule.name)
        self.counters[f"rule:{c.rule.name}:{t}"] += 1
        self._event(ctx, c, t, obs)

    def _inject_rsts(self, ctx: Any, a: Action) -> None:
        plen = ctx.payload_len
        if ctx.from_client:
            client_seq = (ctx.seq + plen) & 0xFFFFFFFF
            server_seq = ctx.ack
        else:
            server_seq = (ctx.seq + plen) & 0xFFFFFFFF
            client_seq = ctx.ack
        self.core.inject.extend(forge_rsts(
            client=(ip_text(ctx.client_ip), ctx.client_port), server=(ip_text(ctx.server_ip), ctx.server_port),
            client_seq=client_seq, server_seq=server_seq, injector=a.injector, to=a.rst_to, rng=self.rng))

    def _event(self, ctx: Any, c: CompiledRule, action: str, obs: Observation, residual: bool = False) -> None:
        event = {
            "ts": round(ctx.ts, 6),
            "event": "residual" if residual else "rule",
            "proto": _PROTO.get(ctx.proto, ctx.proto),
            "client": f"{ip_text(ctx.client_ip)}:{ctx.client_port}",
            "server": f"{ip_text(ctx.server_ip)}:{ctx.server_port}",
            "direction": _DIRECTION[ctx.direction],
            "rule": c.rule.name,
            "action": action,
            "implements": list(c.rule.implements),
            "names": obs.names(),
            "profile": self.profile.name,
        }
        self.core.events.append(event)
        rec = self._record(ctx)
        if rec is not None:
            rec.rule, rec.action, rec.residual = c.rule.name, action, residual
            if obs.kind not in ("flow", "residual"):
                rec.observation = obs.names()
