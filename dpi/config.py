"""The profile model: typed, validated configuration of one censor.

`dpi.profile` turns YAML into these objects (with file:line errors); the engine and the compiled core read
only these. Keeping the model in one small module of frozen dataclasses is what lets the offline classifier,
the live censor and the tests agree: they are all driven by the same values.

Every field that reproduces a measured behaviour names the behaviour ID from CENSOR-MODELS.md.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ActionType = Literal["accept", "drop", "blackhole", "rst", "dns-inject", "throttle", "freeze"]
ACTION_TYPES: tuple[str, ...] = ("accept", "drop", "blackhole", "rst", "dns-inject", "throttle", "freeze")
LIST_FORMATS: tuple[str, ...] = ("plain", "gfwlist", "v2fly", "registry-csv", "ip")


@dataclass(frozen=True)
class FlowTableConfig:
    """Bounds of the flow table: a censor's state is finite, and so is ours (LRU eviction past `max_flows`)."""

    max_flows: int = 65536
    idle_timeout: float = 600.0  # T21-6: throttling state released after ~10 min idle
    udp_idle_timeout: float = 60.0  # GQ-1: QUIC flow state lasts 60 s
    # T22-5: "forward" = IP fragments pass one by one, never reassembled for inspection (a ClientHello sent as
    # fragments is not read); "reassemble" = the censor sees whole IP packets (live: the kernel reassembles in
    # front of the queue; offline: `redweb classify` does the same before the core).
    fragments: Literal["reassemble", "forward"] = "reassemble"
    max_fragments: int = 0  # T22-5: with fragments: forward, packets of more than this many are dropped; 0 = no limit
    # All first-flight buffers together (each flow under reassembly holds 2 x tcp.budget per direction): past it,
    # new flows are released uninspected, as an overloaded censor fails open. Bounds memory under a flood of
    # half-sent requests, which the flow-table size alone does not (65536 flows x 64 KB would be 4 GB).
    max_buffer_bytes: int = 64 << 20


@dataclass(frozen=True)
class TcpInspection:
    """How the censor reads the first flight of a TCP connection.

    The defaults describe a careful censor (the GFW, G-1); the TSPU and Henan profiles switch parts off to
    reproduce their parser quirks.
    """

    reassembly: bool = True  # G-1: in-order TCP reassembly of the first flight; False = each segment alone (T21-2, H-1)
    budget: int = 16384  # bytes of first flight buffered per direction before the flow is released
    tls_record_reassembly: bool = False  # G-1, G-E: TLS records are NOT reassembled by the GFW
    skip_leading_records: bool = False  # False: a record before the ClientHello hides it (T21-E, T22-E)
    whole_clienthello: bool = False  # T21-2: record length < payload and >= handshake length + 4, in one segment
    window: int = 0  # data packets per flow that are parsed (T21-3: the first one plus 15-20 more); 0 = until decided
    release_unparsed: int = 0  # T21-3: a first packet of >= this many bytes that parses as nothing releases; 0 = off
    tcp_header_exact: int = 0  # H-1: only segments whose TCP header is exactly this long are parsed; 0 = any
    require_syn: bool = True  # G-1, T22-1: flows whose client SYN was not seen are never censored
    parse_directions: Literal["client", "both"] = "client"  # T21-5, G-1: a ClientHello from either side triggers
    server_syn_unblocks: bool = False  # T22-1: a SYN from the server side (split handshake) un-blocks


@dataclass(frozen=True)
class QuicInspection:
    """QUIC Initial inspection (GQ-*, T22-4)."""

    enabled: bool = False
    ports: tuple[int, ...] = (443,)  # destination ports inspected; () = any
    min_size: int = 0  # T22-4: UDP payload >= 1001 bytes
    versions: tuple[int, ...] = (1,)  # T22-4, GQ-3: only version 1 is recognised
    decrypt: bool = True  # GQ-1 decrypts the Initial for the SNI; T22-4 only looks at the header
    first_datagram_only: bool = True  # T22-4, GQ-1: only the first datagram of a flow is inspected
    sport_gt_dport: bool = False  # GQ-1: only when source port > destination port
    crypto_reassembly: bool = False  # GQ-3: a ClientHello split over CRYPTO frames / Initials is not read
    allow_mixed_frames: bool = False  # GQ-3: CRYPTO mixed with PING/PADDING frames is not read


@dataclass(frozen=True)
class DnsInspection:
    """DNS queries over UDP (and the first query of a TCP flow) on these server ports."""

    enabled: bool = True
    ports: tuple[int, ...] = (53,)


@dataclass(frozen=True)
class MatchOptions:
    """Name normalisation before matching."""

    trailing_dot: Literal["strip", "keep"] = "strip"  # T21-E: TSPU-2021 keeps it, so `twitter.com.` evades
    case_sensitive: bool = False


@dataclass(frozen=True)
class ListSpec:
    """A named list of patterns (domains) or networks (format `ip`), from files and/or inline entries."""

    name: str
    format: str = "plain"
    files: tuple[Path, ...] = ()
    entries: tuple[str, ...] = ()
    default_form: Literal["subdomains", "exact"] = "subdomains"  # what a bare `example.com` line means
    on_error: Literal["skip", "reject"] = "reject"


@dataclass(frozen=True)
class Match:
    """Conditions of a rule; all given conditions must hold. List-valued fields name a `ListSpec`."""

    tls_sni: str | None = None
    http_host: str | None = None
    http_path: str | None = None  # patterns matched as substrings of the request path
    quic_sni: str | None = None
    quic_version: tuple[int, ...] | None = None  # T22-4: header-only QUIC rule
    dns_qname: str | None = None
    ip: str | None = None  # list (format ip) of server addresses, T22-3
    port: tuple[int, ...] | None = None  # server ports
    protocol: Literal["tcp", "udp"] | None = None
    fet: bool | None = None  # GF-1: first client payload is fully-encrypted-looking (no exemption holds)
    tls_esni: bool | None = None  # GE-1
    tls_ech: bool | None = None
    tls_any: bool | None = None  # any TLS ClientHello (T25-1: all TLS to listed networks)
    direction: Literal["outbound", "inbound"] | None = None


@dataclass(frozen=True)
class Injector:
    """Fingerprint of forged TCP packets (G-3, H-2): what makes one censor's RSTs recognisable."""

    name: str = "generic"
    flags: Literal["R", "RA"] = "RA"
    count: int = 1
    ttl: tuple[int, int] = (64, 64)  # inclusive range, drawn per packet
    ip_id: str = "random"  # "random" | "zero" | "N" (fixed) | "A-B" (range, inclusive); decimal or 0x hex
    df: bool = False
    window: int = 0
    payload: bytes = b""
    delay: tuple[float, float] = (0.0, 0.0)  # seconds after the trigger (G-3: 11-445 ms); 0 = at once


@dataclass(frozen=True)
class Residual:
    """Blocking that outlives the triggering connection (G-4, GE-1, GF-3, GQ-2)."""

    key: Literal["3-tuple", "2-tuple", "server-ip"] = "3-tuple"
    seconds: float = 180.0
    action: Literal["rst", "drop"] = "rst"


@dataclass(frozen=True)
class Action:
    type: str = "accept"
    # rst
    rst_to: Literal["client", "server", "both"] = "both"
    injector: Injector = field(default_factory=Injector)
    drop_trigger: bool = False  # in-path censors may also drop the packet that triggered
    # blackhole
    include_trigger: bool = True  # GQ-2: False lets the triggering Initial pass
    blackhole_direction: Literal["both", "client-to-server"] = "both"  # GE-1 dropped client-to-server only
    # dns-inject
    dns_mode: Literal["on-path", "in-path"] = "on-path"  # GD-1: on-path races; in-path replaces the answer
    pool_a: tuple[str, ...] = ()
    pool_aaaa: tuple[str, ...] = ()
    pool_order: Literal["cycle", "random"] = "cycle"  # GD-2
    dns_ttl: int = 60
    # throttle (T21-4): policing per direction, packets over the bucket are dropped
    rate_bps: int = 140_000
    burst_bytes: int = 16384
    # freeze (T25-1)
    after_bytes: int = 16384


@dataclass(frozen=True)
class Rule:
    name: str
    match: Match
    action: Action
    residual: Residual | None = None
    probability: float = 1.0  # GF-2
    implements: tuple[str, ...] = ()
    line: int = 0  # where it was defined, for events and errors


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str = ""
    year: str = ""
    sources: tuple[str, ...] = ()
    implements: tuple[str, ...] = ()
    evasions: tuple[str, ...] = ()
    inside: tuple[Network, ...] = ()  # () = every address is inside (every connection is outbound)
    triggers: Literal["outbound", "both"] = "outbound"  # T21-5, T22-1, H-1: outbound only; G-1: both
    seed: int | None = None
    flows: FlowTableConfig = field(default_factory=FlowTableConfig)
    tcp: TcpInspection = field(default_factory=TcpInspection)
    quic: QuicInspection = field(default_factory=QuicInspection)
    dns: DnsInspection = field(default_factory=DnsInspection)
    matching: MatchOptions = field(default_factory=MatchOptions)
    lists: dict[str, ListSpec] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    path: Path | None = None


# G-3 measured the first RST 11-445 ms (mean 18 ms) after the trigger. That delay is NOT in the presets: on a lab
# path with sub-millisecond RTT a delayed RST arrives after the server's answer, lands outside the client's receive
# window and is ignored, which no real client experiences (real paths have RTTs far above 18 ms). Profiles that
# want the timing set `delay_ms: [11, 445]` on a lab whose links have delay.
# Named injector fingerprints measured in the wild. Profiles refer to them by name (`injector: gfw-type2`)
# or spell out their own. Values: G-3 (three GFW injectors) and H-2 (Henan).
INJECTOR_PRESETS: dict[str, Injector] = {
    "gfw-type1": Injector(name="gfw-type1", flags="R", count=1, ttl=(55, 118), ip_id="zero", df=False),
    "gfw-type2": Injector(name="gfw-type2", flags="RA", count=3, ttl=(39, 238), ip_id="random", df=True),
    "gfw-type3": Injector(name="gfw-type3", flags="RA", count=1, ttl=(248, 248), ip_id="0x9916-0x9933", df=False),
    "henan": Injector(name="henan", flags="RA", count=1, ttl=(58, 58), ip_id="1", df=False,
                      payload=bytes.fromhex("01020304050607080900")),
    "tspu": Injector(name="tspu", flags="RA", count=1, ttl=(64, 64), ip_id="random", df=True),
}
