"""What every evasion strategy is: a name, the behaviour IDs it targets, typed parameters, and a plan.

A strategy never does I/O itself. It answers questions the real-stack clients ask while they build the first
flight (which SNI to send, how to cut the ClientHello into TCP writes, which fake packets to put in front, which
QUIC version and source port to use), so its effect can be checked byte for byte without a network
(tests/test_strategies.py) and then carried out on the wire by `dpi.strategies.tcpclient` and
`dpi.strategies.quicclient`.

Parameters come from the command line as `K=V` strings (`redweb probe --strategy-arg at=5`); each strategy
declares them with defaults, so a typo is a usage error naming the accepted keys, never a silent default.
"""
from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from dpi.strategies.rawtcp import ACK, FIN, PSH, RST

Transport = Literal["tcp", "quic", "any", "server"]


class StrategyError(ValueError):
    """Unknown strategy, unknown parameter or a bad value: a usage error (exit code 2)."""


@dataclass(frozen=True)
class Param:
    """One `K=V` parameter of a strategy."""

    name: str
    default: str
    help: str
    kind: Literal["int", "str", "choice", "offsets"] = "str"
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    def parse(self, strategy: str, text: str) -> object:
        """The typed value of `text`; raises StrategyError naming the strategy, key and what is accepted."""
        where = f"{strategy}: {self.name}={text!r}"
        if self.kind == "int":
            try:
                value = int(text, 0)
            except ValueError:
                raise StrategyError(f"{where}: not an integer") from None
            if self.minimum is not None and value < self.minimum:
                raise StrategyError(f"{where}: must be >= {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise StrategyError(f"{where}: must be <= {self.maximum}")
            return value
        if self.kind == "choice":
            if text not in self.choices:
                raise StrategyError(f"{where}: one of {', '.join(self.choices)}")
            return text
        if self.kind == "offsets":
            return parse_offsets(where, text)
        if not text:
            raise StrategyError(f"{where}: must not be empty")
        return text


def parse_offsets(where: str, text: str) -> tuple[int, ...] | Literal["sni"]:
    """`sni` (cut inside the server name) or a comma list of increasing positive byte offsets."""
    if text == "sni":
        return "sni"
    try:
        values = tuple(int(v, 0) for v in text.split(","))
    except ValueError:
        raise StrategyError(f"{where}: write 'sni' or byte offsets such as 5 or 5,40") from None
    if not values or any(v <= 0 for v in values) or list(values) != sorted(set(values)):
        raise StrategyError(f"{where}: offsets must be positive and increasing")
    return values


@dataclass(frozen=True)
class FakeSegment:
    """A crafted TCP segment that must reach the censor but never the server: a fake data segment sent before
    the real first flight (fake-first), or a RST / FIN meant to tear down the censor's state (tcb-teardown).

    `ttl`: IP TTL / hop limit that expires between the censor and the server (None: the system default).
    `bad_checksum`: the TCP checksum is wrong, so the server's stack drops it while a censor that does not
    verify checksums still reads it. `flags`: the TCP flags byte (default PSH/ACK, a data segment).
    """

    payload: bytes
    ttl: int | None = None
    bad_checksum: bool = False
    flags: int = PSH | ACK

    def describe(self) -> str:
        names = "/".join(n for bit, n in ((FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK")) if self.flags & bit)
        how = f"ttl {self.ttl}" if self.ttl else "bad checksum" if self.bad_checksum else "plain"
        return f"{names} segment of {len(self.payload)} bytes ({how})"


@dataclass(frozen=True)
class TcpPlan:
    """How the TLS first flight goes on the wire.

    `writes`: the bytes of each send() call, in order; each one leaves as its own TCP segment (TCP_NODELAY and
    a wait until the kernel has sent it). `fakes`: crafted segments sent first from a raw socket, with the
    connection's own sequence numbers; `after`: the same, sent once the first flight has left (the censor has
    decided by then). `tcp_timestamps`: the segments must carry the TCP timestamp option. `drop_rst`: a
    firewall rule on the client drops matching RSTs for this connection only. `idle`: seconds the connection
    stays silent between the TLS handshake and the request (added to the fetch's deadline). `fragment_size`:
    the (single) write leaves as IP fragments of that many bytes from a raw socket, the socket only marking
    it sent; 0: as TCP segments.
    """

    writes: tuple[bytes, ...]
    fakes: tuple[FakeSegment, ...] = ()
    after: tuple[FakeSegment, ...] = ()
    tcp_timestamps: bool = False
    drop_rst: bytes | None = None  # drop incoming RSTs on this connection carrying these bytes (b"": every RST)
    gap: float = 0.0  # seconds to wait between writes (after each one has left)
    idle: float = 0.0
    fragment_size: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuicPlan:
    """How the QUIC connection starts: version of the first Initial, UDP source port, datagrams sent before it."""

    version: int | None = None  # None: the stack's default (version 1)
    source_ports: tuple[int, ...] = ()  # UDP source ports to try in order, the first free one is used; () = ephemeral
    before: tuple[bytes, ...] = ()  # datagrams sent from the same socket before the first Initial
    rewrite_first: Callable[[bytes], bytes] | None = field(default=None, repr=False)  # applied to the first Initial
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flight:
    """What a TCP strategy plans from: the real ClientHello records and a way to make more (decoys)."""

    hello: bytes  # the TLS records the real stack wrote first (a whole ClientHello)
    server_name: str  # the SNI in `hello`
    make_hello: Callable[[str], bytes] = field(repr=False, default=lambda name: b"")


class Strategy:
    """Base class. Subclasses set the class attributes and override the hooks that concern them.

    The docstring's first line is the one-line summary `redweb probe --list` prints; the rest says which
    behaviours of CENSOR-MODELS.md the strategy targets and why it works.
    """

    name: ClassVar[str] = ""
    transport: ClassVar[Transport] = "any"
    targets: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, args: Mapping[str, str] | None = None) -> None:
        args = dict(args or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(args) - set(known))
        if unknown:
            accepted = ", ".join(known) or "none"
            raise StrategyError(f"{self.name}: unknown parameter(s) {', '.join(unknown)} (accepted: {accepted})")
        self.values: dict[str, object] = {
            p.name: p.parse(self.name, args[p.name] if p.name in args else p.default) for p in self.params}
        self.args = {p.name: args.get(p.name, p.default) for p in self.params}

    # typed views of the parsed parameters (each Param's kind fixes the type of its value)
    def int_arg(self, name: str) -> int:
        value = self.values[name]
        assert isinstance(value, int)
        return value

    def str_arg(self, name: str) -> str:
        return str(self.values[name])

    def offsets_arg(self, name: str) -> tuple[int, ...] | Literal["sni"]:
        value = self.values[name]
        if value == "sni":
            return "sni"
        assert isinstance(value, tuple)
        return value

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    # -- TLS over TCP ----------------------------------------------------------------------------------------
    def server_name(self, host: str) -> str:
        """The SNI to send for a URL whose host is `host` (certificate checks always use `host`)."""
        return host

    def idle_seconds(self) -> float:
        """Seconds this strategy keeps a connection silent on purpose: callers add them to their timeouts."""
        return 0.0

    def configure(self, ctx: ssl.SSLContext, measure: Callable[[ssl.SSLContext], int]) -> None:
        """Adjust the client's TLS context; `measure(ctx)` is the size of the ClientHello that ctx produces."""

    def plan(self, flight: Flight) -> TcpPlan:
        """The writes (and fakes) that carry `flight.hello`; the default is one write, as a normal client does."""
        return TcpPlan(writes=(flight.hello,))

    # -- QUIC ------------------------------------------------------------------------------------------------
    def quic_plan(self, server_port: int) -> QuicPlan:
        return QuicPlan()


def cut(data: bytes, offsets: tuple[int, ...]) -> tuple[bytes, ...]:
    """`data` cut at the given offsets (those outside 1..len-1 are ignored); no piece is empty."""
    points = [o for o in offsets if 0 < o < len(data)]
    pieces, last = [], 0
    for o in points:
        pieces.append(data[last:o])
        last = o
    pieces.append(data[last:])
    return tuple(pieces)


def sni_offset(hello: bytes, server_name: str) -> int | None:
    """Offset in `hello` of the first byte of the server_name host name (RFC 6066 HostName), or None.

    The name is looked for with its 1-byte type (host_name = 0) and 2-byte length in front, so a name that also
    appears elsewhere (e.g. inside an ALPN string) is not mistaken for it.
    """
    name = server_name.encode("ascii", "replace")
    if not name:
        return None
    at = hello.find(b"\x00" + len(name).to_bytes(2, "big") + name)
    return at + 3 if at >= 0 else None


def inside_sni(hello: bytes, server_name: str) -> int | None:
    """An offset that falls in the middle of the SNI host name (both pieces hold part of the name)."""
    at = sni_offset(hello, server_name)
    if at is None:
        return None
    return at + max(1, len(server_name) // 2)
