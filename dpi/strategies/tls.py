"""Client-side strategies for TLS over TCP: they reshape the first flight a real TLS stack wrote.

Each one exploits a parser limit measured in CENSOR-MODELS.md: no TCP reassembly (T21-2, T22-E, H-1), no
TLS-record reassembly (G-1, G-E), only the first record looked at (T21-2, T21-E), a first packet that parses as
nothing releasing the flow (T21-3), header-length checks (H-1), exact-string matching of the SNI (T21-E).
The ClientHello itself always comes from Python's ssl (OpenSSL): the strategies only move its bytes between
records and segments, or change what the stack is asked to send (SNI, ALPN list), so the server still
completes a valid handshake.
"""
from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping

from dpi.strategies.base import (Flight, FakeSegment, Param, Strategy, StrategyError, TcpPlan, cut, inside_sni,
                                 sni_offset)
from dpi.strategies.rawtcp import ACK, FIN, RST

RECORD_HEADER = 5
HANDSHAKE = 0x16
CHANGE_CIPHER_SPEC = 0x14
# RFC 8446 5: the compatibility-mode ChangeCipherSpec record, the single byte 0x01 (record version 0x0303).
CCS_RECORD = bytes([CHANGE_CIPHER_SPEC, 0x03, 0x03, 0x00, 0x01, 0x01])
# A handshake record with no content: a TLS record that is not a ClientHello (T21-2: byte 5 is not 0x01), which
# OpenSSL skips (RFC 8446 forbids it, but the OpenSSL record layer ignores empty records before the handshake).
EMPTY_HANDSHAKE_RECORD = bytes([HANDSHAKE, 0x03, 0x01, 0x00, 0x00])


def records(flight: bytes) -> list[tuple[int, int, bytes]]:
    """The TLS records of `flight` as (content type, record version, payload); a trailing partial is dropped."""
    out, pos = [], 0
    while len(flight) - pos >= RECORD_HEADER:
        length = int.from_bytes(flight[pos + 3:pos + 5], "big")
        if len(flight) - pos - RECORD_HEADER < length:
            break
        out.append((flight[pos], int.from_bytes(flight[pos + 1:pos + 3], "big"),
                    flight[pos + RECORD_HEADER:pos + RECORD_HEADER + length]))
        pos += RECORD_HEADER + length
    return out


def record(content_type: int, version: int, payload: bytes) -> bytes:
    return bytes([content_type]) + version.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload


class NoStrategy(Strategy):
    """Baseline: the first flight exactly as the TLS (or QUIC) stack sends it.

    Measure this first: every strategy's outcome means something only next to the baseline's (a blocked name
    is blocked, an allowed one is not).
    """

    name = "none"
    transport = "any"


class TcpSegment(Strategy):
    """ClientHello split over TCP segments at byte offsets (default: in the middle of the SNI).

    Targets censors that parse each segment alone: T21-2 (the ClientHello must sit whole in the first data
    packet), T22-E (no TCP reassembly), H-1/H-E (the SNI split across segments). The GFW reassembles TCP
    (G-1), so against it this must NOT evade (G-E). Offsets count from the first byte of the TLS record.
    """

    name = "tcp-segment"
    transport = "tcp"
    targets = ("T21-2", "T21-E", "T22-E", "H-1", "H-E", "G-E")
    params = (
        Param("at", "sni", "where to cut: 'sni' (middle of the server name) or byte offsets, e.g. 1 or 5,40",
              kind="offsets"),
        Param("delay_ms", "0", "pause after each segment has left (some censors time out reassembly)",
              kind="int", minimum=0, maximum=60_000),
    )

    def plan(self, flight: Flight) -> TcpPlan:
        at = self.offsets_arg("at")
        notes: tuple[str, ...] = ()
        if at == "sni":
            mid = inside_sni(flight.hello, flight.server_name)
            if mid is None:
                mid = len(flight.hello) // 2
                notes = ("no SNI in the ClientHello: cut in the middle",)
            at = (mid,)
        return TcpPlan(writes=cut(flight.hello, at), gap=self.int_arg("delay_ms") / 1000.0, notes=notes)


class TlsRecordFrag(Strategy):
    """ClientHello split over several TLS records, all in one TCP segment (default: cut inside the SNI).

    Targets censors that do not reassemble TLS records: G-1/G-E (the GFW reassembles TCP but not records),
    T21-2 (only the first record is looked at), T22-E, GE-1. Servers must accept a handshake message spread
    over records (RFC 8446 5.1 allows it; OpenSSL does). Offsets count from the start of the handshake message.
    """

    name = "tls-record-frag"
    transport = "tcp"
    targets = ("G-1", "G-E", "T21-2", "T22-E", "GE-1")
    params = (
        Param("at", "sni", "where records end: 'sni' or offsets into the handshake message, e.g. 4 or 4,100",
              kind="offsets"),
    )

    def plan(self, flight: Flight) -> TcpPlan:
        return TcpPlan(writes=(fragment_records(flight.hello, self._offsets(flight)),))

    def _offsets(self, flight: Flight) -> tuple[int, ...]:
        at = self.offsets_arg("at")
        if at != "sni":
            return at
        mid = inside_sni(flight.hello, flight.server_name)
        if mid is None:
            raise StrategyError(f"{self.name}: at=sni but the ClientHello has no SNI; give offsets")
        return (mid - RECORD_HEADER,)  # the real stack wrote one record: its header is 5 bytes


def fragment_records(flight: bytes, offsets: tuple[int, ...]) -> bytes:
    """The handshake bytes of `flight` re-framed into records that end at `offsets` (record version kept)."""
    recs = records(flight)
    if not recs or recs[0][0] != HANDSHAKE:
        raise StrategyError("tls-record-frag: the first flight does not start with a handshake record")
    version = recs[0][1]
    message = b"".join(payload for ctype, _, payload in recs if ctype == HANDSHAKE)
    return b"".join(record(HANDSHAKE, version, piece) for piece in cut(message, offsets))


class CcsFirst(Strategy):
    """Another TLS record (ChangeCipherSpec by default) before the ClientHello, in the same segment.

    Targets censors that read only the first record of the first packet: T21-E and T22-E ("a TLS record before
    the ClientHello"), T21-2 (byte 5 must be 0x01). The server may reject it: OpenSSL answers a CCS before the
    ClientHello with an unexpected_message alert (the probe then reports `error`, server_rejected), while it
    skips an empty handshake record (`record=empty-handshake`), which hides the ClientHello just as well.
    """

    name = "ccs-first"
    transport = "tcp"
    targets = ("T21-2", "T21-E", "T22-E")
    params = (
        Param("record", "ccs", "the record put first: ccs (14 03 03 00 01 01) or empty-handshake (16 03 01 00 00)",
              kind="choice", choices=("ccs", "empty-handshake")),
    )

    def plan(self, flight: Flight) -> TcpPlan:
        prefix = CCS_RECORD if self.str_arg("record") == "ccs" else EMPTY_HANDSHAKE_RECORD
        return TcpPlan(writes=(prefix + flight.hello,))


PAD_PREFIX = "x-redweb-pad-"


class Padding(Strategy):
    """ClientHello made larger than one packet by a long ALPN list of unknown protocols (default >= 1800 bytes).

    Targets T21-2 (the ClientHello must sit whole in one segment) and T22-E ("TLS padding"). Python's ssl cannot
    add the padding extension (RFC 7685), so the size comes from ALPN entries the server does not know: it
    ignores them (RFC 7301), `http/1.1` stays first, and the handshake transcript stays valid. The kernel then
    cuts the one write at the MSS like any large write.
    """

    name = "padding"
    transport = "tcp"
    targets = ("T21-2", "T21-E", "T22-E")
    params = (
        Param("size", "1800", "minimum size of the ClientHello record in bytes", kind="int",
              minimum=64, maximum=60_000),
    )

    def configure(self, ctx: ssl.SSLContext, measure: Callable[[ssl.SSLContext], int]) -> None:
        target = self.int_arg("size")
        protocols = ["http/1.1"]
        for _ in range(4):  # measure, top up; the first guess is usually exact within a few bytes
            ctx.set_alpn_protocols(protocols)
            size = measure(ctx)
            if size >= target:
                return
            protocols += padding_protocols(target - size, start=len(protocols))
        raise StrategyError(f"{self.name}: could not grow the ClientHello to {target} bytes")


def padding_protocols(extra: int, start: int = 0) -> list[str]:
    """ALPN protocol names that add at least `extra` bytes to the ALPN list (each entry costs 1 + its length)."""
    out, left, k = [], extra, start
    while left > 0:
        base = f"{PAD_PREFIX}{k:03d}-"
        length = max(len(base) + 1, min(255, left - 1))
        out.append((base + "x" * length)[:length])
        left -= length + 1
        k += 1
    return out


class FakeFirst(Strategy):
    """A fake first data packet that the censor reads and the server never gets (random bytes or a decoy).

    `kind=random`: >= 101 random bytes, which T21-3 measured to release the flow for good (must evade T21-E).
    `kind=decoy`: a real ClientHello for an innocuous name (`decoy=`), which keeps TSPU-2021 inspecting for
    15-20 more packets (T21-3), so the real ClientHello is still caught (must NOT evade T21-E).
    `via=checksum` gives the fake a wrong TCP checksum (the server's stack drops it; a censor that does not
    verify checksums reads it); `via=ttl` gives it a TTL that expires between the censor and the server (needs
    a hop after the censor: on a client-router-server lab the router is the last hop, so use checksum there).
    The fake carries the connection's own sequence numbers (read with TCP_REPAIR), so it needs root.
    """

    name = "fake-first"
    transport = "tcp"
    targets = ("T21-3", "T21-E", "GF-1")
    params = (
        Param("kind", "random", "random bytes or a decoy ClientHello", kind="choice", choices=("random", "decoy")),
        Param("size", "120", "bytes of a random fake (T21-3: >= 101 releases the flow)", kind="int",
              minimum=1, maximum=1400),
        Param("decoy", "example.org", "SNI of the decoy ClientHello (kind=decoy)"),
        Param("via", "checksum", "how the fake misses the server", kind="choice", choices=("checksum", "ttl")),
        Param("ttl", "2", "TTL / hop limit of the fake (via=ttl): it must reach the censor, not the server",
              kind="int", minimum=1, maximum=255),
    )

    def plan(self, flight: Flight) -> TcpPlan:
        if self.str_arg("kind") == "random":
            payload = os.urandom(self.int_arg("size"))
            # a first byte >= 0x80 is neither a TLS content type nor a letter of an HTTP method, so the fake
            # parses as nothing (T21-3) whatever the other bytes are
            payload = bytes([0x80 | payload[0]]) + payload[1:]
        else:
            payload = flight.make_hello(self.str_arg("decoy"))
            if not payload:
                raise StrategyError(f"{self.name}: no decoy ClientHello could be made")
        via = self.str_arg("via")
        fake = FakeSegment(payload, ttl=self.int_arg("ttl") if via == "ttl" else None, bad_checksum=via == "checksum")
        return TcpPlan(writes=(flight.hello,), fakes=(fake,))


class TrailingDot(Strategy):
    """SNI with a trailing dot (`twitter.com.`): the same host to servers, another string to a literal matcher.

    Targets T21-E (TSPU-2021 did not strip the dot, so `*twitter.com` missed `twitter.com.`). Censors that
    normalise names (the other profiles: `trailing_dot: strip`) are not fooled. The certificate is still
    checked against the URL's host.
    """

    name = "trailing-dot"
    transport = "tcp"
    targets = ("T21-E",)

    def server_name(self, host: str) -> str:
        return host if host.endswith(".") else host + "."


class SniCase(Strategy):
    """SNI in mixed case (`TwItTeR.CoM`): DNS names are case-insensitive, a case-sensitive matcher is not.

    No measured censor in CENSOR-MODELS.md matches case-sensitively (profiles default to `case_sensitive:
    false`), so this is a control: it shows a normalising matcher at work. `pattern=upper` sends all capitals.
    """

    name = "sni-case"
    transport = "tcp"
    targets = ()
    params = (Param("pattern", "alternate", "alternate (TwItTeR.CoM) or upper", kind="choice",
                    choices=("alternate", "upper")),)

    def server_name(self, host: str) -> str:
        if self.str_arg("pattern") == "upper":
            return host.upper()
        return "".join(c.upper() if i % 2 == 0 else c.lower() for i, c in enumerate(host))


class TcpTimestamps(Strategy):
    """The ClientHello segment carries the TCP timestamp option (RFC 7323), making its TCP header 32 bytes.

    Targets H-1/H-E: Henan parses only segments whose TCP header is exactly 20 bytes. Linux sends timestamps
    whenever they were negotiated (sysctl net.ipv4.tcp_timestamps=1, the default); with them switched off the
    probe turns them on for its own socket only (TCP_REPAIR_OPTIONS, needs root), the server ignores a
    timestamp it never negotiated (RFC 7323 3.2). Compare with `none` on a client with timestamps off.
    """

    name = "tcp-timestamps"
    transport = "tcp"
    targets = ("H-1", "H-E")

    def plan(self, flight: Flight) -> TcpPlan:
        return TcpPlan(writes=(flight.hello,), tcp_timestamps=True)


HENAN_RST_PAYLOAD = bytes.fromhex("01020304050607080900")  # H-2


class DropRst(Strategy):
    """Incoming RSTs carrying a censor's fingerprint are dropped on the client (default: Henan's 10-byte payload).

    Targets H-2/H-E: Henan sends one RST/ACK to the client only and drops nothing, so a client that ignores
    it completes the connection. A firewall rule (iptables, root) for this connection only drops RSTs that
    carry `payload` (hex, `henan`, or `any` for every RST); the server's own RSTs without it still arrive.
    Against the GFW (G-3) this is not enough: its RSTs also reach the server, and the residual (G-4) follows.
    """

    name = "drop-rst"
    transport = "tcp"
    targets = ("H-2", "H-E")
    params = (Param("payload", "henan", "RST payload to drop: henan, any, or hex bytes"),)

    def __init__(self, args: dict[str, str] | None = None) -> None:
        super().__init__(args)
        text = self.str_arg("payload")
        if text == "henan":
            self.payload = HENAN_RST_PAYLOAD
        elif text == "any":
            self.payload = b""
        else:
            try:
                self.payload = bytes.fromhex(text)
            except ValueError:
                raise StrategyError(f"{self.name}: payload={text!r}: henan, any or hex bytes") from None
            if not self.payload:
                raise StrategyError(f"{self.name}: payload must not be empty (use payload=any)")

    def plan(self, flight: Flight) -> TcpPlan:
        return TcpPlan(writes=(flight.hello,), drop_rst=self.payload)


class TcbTeardown(Strategy):
    """A RST or FIN the server never gets, sent so the censor forgets the connection (TCB teardown).

    Khattak et al. (FOCI 2013) and Wang et al. (IMC 2017) tore down the GFW's state of a connection this way.
    Against TSPU-2021 it must NOT evade (T21-E): the throttling state survives RST and FIN and is released only
    after ~10 minutes of silence (T21-6). `when=after` sends it once the ClientHello has left (the censor has
    decided: does the decision survive?); `when=before` between the TCP handshake and the ClientHello (does the
    censor still inspect?). The segment carries the connection's own sequence numbers and misses the server by
    a wrong checksum (`via=checksum`) or an expiring TTL (`via=ttl`, needs a hop after the censor), as fake-first.
    """

    name = "tcb-teardown"
    transport = "tcp"
    targets = ("T21-6", "T21-E")
    params = (
        Param("flags", "rst", "the teardown segment: rst, rst-ack or fin (FIN/ACK)", kind="choice",
              choices=("rst", "rst-ack", "fin")),
        Param("when", "after", "after the ClientHello, or before it (right after the TCP handshake)",
              kind="choice", choices=("after", "before")),
        Param("via", "checksum", "how the segment misses the server", kind="choice", choices=("checksum", "ttl")),
        Param("ttl", "2", "TTL / hop limit (via=ttl): it must reach the censor, not the server", kind="int",
              minimum=1, maximum=255),
    )
    FLAGS = {"rst": RST, "rst-ack": RST | ACK, "fin": FIN | ACK}

    def plan(self, flight: Flight) -> TcpPlan:
        via = self.str_arg("via")
        segment = FakeSegment(b"", ttl=self.int_arg("ttl") if via == "ttl" else None,
                              bad_checksum=via == "checksum", flags=self.FLAGS[self.str_arg("flags")])
        if self.str_arg("when") == "before":
            return TcpPlan(writes=(flight.hello,), fakes=(segment,))
        return TcpPlan(writes=(flight.hello,), after=(segment,))


class IdleWait(Strategy):
    """The connection stays silent between the TLS handshake and the request until the censor forgets it.

    Targets T21-6 / T21-E: TSPU-2021 released a throttled connection after about ten minutes without packets;
    to the censor the request after the wait is the middle of a flow whose start it never saw, which it leaves
    alone (the profile's `tcp.require_syn`). The default waits 610 s; against a profile with a shorter
    `flows.idle_timeout` wait a little longer than that. Timeouts of the fetch are counted without the wait.
    """

    name = "idle-wait"
    transport = "tcp"
    targets = ("T21-6", "T21-E")
    params = (Param("seconds", "610", "how long the connection stays silent (T21-6: ~600 s)", kind="int",
                    minimum=0, maximum=7200),)

    def idle_seconds(self) -> float:
        return float(self.int_arg("seconds"))

    def plan(self, flight: Flight) -> TcpPlan:
        return TcpPlan(writes=(flight.hello,), idle=self.idle_seconds())


class IpFragment(Strategy):
    """The ClientHello leaves as IP fragments: a censor that does not reassemble IP never sees it whole.

    Targets T22-5 / T22-E: the TSPU forwards fragments uninspected (and drops packets of more than 45
    fragments: `size=8` turns a ClientHello into ~70 fragments). The socket writes the ClientHello as if sent
    (TCP_REPAIR) and a raw socket sends the same segment, with the connection's sequence numbers and TCP
    options, cut into fragments of `size` bytes; the server reassembles them. A censor that reassembles (the
    kernel does, in front of profiles with `flows.fragments: reassemble`) still reads the SNI.
    """

    name = "ip-fragment"
    transport = "tcp"
    targets = ("T22-5", "T22-E")
    params = (Param("size", "64", "payload bytes per fragment, a multiple of 8 (T22-5: > 45 fragments are dropped)",
                    kind="int", minimum=8, maximum=1400),)

    def __init__(self, args: Mapping[str, str] | None = None) -> None:
        super().__init__(args)
        if self.int_arg("size") % 8:
            raise StrategyError(f"ip-fragment: size={self.args['size']}: must be a multiple of 8 "
                                "(fragment offsets count 8-byte units)")

    def plan(self, flight: Flight) -> TcpPlan:
        return TcpPlan(writes=(flight.hello,), fragment_size=self.int_arg("size"))


TLS_STRATEGIES: tuple[type[Strategy], ...] = (
    NoStrategy, TcpSegment, TlsRecordFrag, CcsFirst, Padding, FakeFirst, TrailingDot, SniCase, TcpTimestamps,
    DropRst, TcbTeardown, IdleWait, IpFragment)

__all__ = ["CCS_RECORD", "EMPTY_HANDSHAKE_RECORD", "TLS_STRATEGIES", "fragment_records", "padding_protocols",
           "records", "sni_offset"]
