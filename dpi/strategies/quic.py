"""Client-side strategies for QUIC: they change how a real QUIC stack (aioquic) starts its connection.

QUIC censors decide on the first datagram of a UDP flow (T22-4, GQ-1) and only recognise some shapes of it:
version 1 only (T22-4, GQ-3), source port above the destination port (GQ-1), a ClientHello whole in one
CRYPTO frame (GQ-3). Each strategy here moves the connection out of one of those shapes while the server,
a standard QUIC stack, still completes the handshake.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dpi import _extract
from dpi.strategies.base import Param, QuicPlan, Strategy, StrategyError, inside_sni

if TYPE_CHECKING:
    from aioquic.quic.packet import QuicHeader

QUIC_V2 = 0x6B3343CF  # RFC 9369
LOW_PORT_TRIES = 64


class QuicDummyFirst(Strategy):
    """A dummy UDP datagram from the same socket before the first Initial (default 64 random bytes).

    Targets GQ-1/GQ-E and T22-4/T22-E: both censors inspect only the first datagram of a 4-tuple; when it is not
    QUIC the flow is never checked again. The server's QUIC stack drops the dummy (no valid header) and
    answers the Initial that follows.
    """

    name = "quic-dummy-first"
    transport = "quic"
    targets = ("GQ-1", "GQ-E", "T22-4", "T22-E")
    params = (Param("size", "64", "bytes of the dummy datagram", kind="int", minimum=1, maximum=1400),)

    def quic_plan(self, server_port: int) -> QuicPlan:
        dummy = os.urandom(self.int_arg("size"))
        # first byte 0x00-0x3f: no long-header bit and no fixed bit, so nobody can take it for QUIC
        return QuicPlan(before=(bytes([dummy[0] & 0x3F]) + dummy[1:],))


class QuicLowSport(Strategy):
    """UDP source port <= destination port (default: equal to it, e.g. 443 -> 443).

    Targets GQ-1/GQ-E: the GFW only inspects QUIC when the source port is greater than the destination port.
    A port below 1024 needs root (or net.ipv4.ip_unprivileged_port_start).
    """

    name = "quic-low-sport"
    transport = "quic"
    targets = ("GQ-1", "GQ-E")
    params = (Param("port", "dport", "source port: 'dport' (the server's, or the next free one below) or a number"),)

    def __init__(self, args: dict[str, str] | None = None) -> None:
        super().__init__(args)
        text = self.str_arg("port")
        if text != "dport":
            try:
                port = int(text, 0)
            except ValueError:
                raise StrategyError(f"{self.name}: port={text!r}: 'dport' or a number") from None
            if not 1 <= port <= 65535:
                raise StrategyError(f"{self.name}: port={text!r}: must be 1-65535")

    def quic_plan(self, server_port: int) -> QuicPlan:
        text = self.str_arg("port")
        if text == "dport":
            # the highest free port <= the destination port (the server's own port may be taken on its host)
            return QuicPlan(source_ports=tuple(range(server_port, max(0, server_port - LOW_PORT_TRIES), -1)))
        port = int(text, 0)
        notes = () if port <= server_port else (f"source port {port} > destination port {server_port}: "
                                                "this does not test GQ-1",)
        return QuicPlan(source_ports=(port,), notes=notes)


class QuicV2(Strategy):
    """QUIC version 2 (RFC 9369) from the first Initial on.

    Targets T22-4/T22-E (only version 1 is recognised) and GQ-3/GQ-E (the GFW does not decrypt v2 Initials).
    The server must support v2 (aioquic does by default).
    """

    name = "quic-v2"
    transport = "quic"
    targets = ("T22-4", "T22-E", "GQ-3", "GQ-E")

    def quic_plan(self, server_port: int) -> QuicPlan:
        return QuicPlan(version=QUIC_V2)


class QuicCryptoSplit(Strategy):
    """The ClientHello split over two CRYPTO frames of the first Initial (default: cut inside the SNI).

    Targets GQ-3/GQ-E: the GFW reads the SNI only from a ClientHello whole in one CRYPTO frame. The Initial
    aioquic wrote is decrypted with the RFC 9001 initial keys, its CRYPTO frame cut in two (in order, or
    `order=reverse` with the second half first), the PADDING shortened by the bytes the extra frame header
    takes, and the packet encrypted again under the same packet number: the server reassembles the CRYPTO
    stream as for any Initial, and the datagram keeps its size.
    """

    name = "quic-crypto-split"
    transport = "quic"
    targets = ("GQ-3", "GQ-E")
    params = (
        Param("at", "sni", "where to cut the ClientHello: 'sni' or a byte offset into it", kind="offsets"),
        Param("order", "forward", "frame order in the packet", kind="choice", choices=("forward", "reverse")),
    )

    def __init__(self, args: dict[str, str] | None = None) -> None:
        super().__init__(args)
        at = self.offsets_arg("at")
        if at != "sni" and len(at) != 1:
            raise StrategyError(f"{self.name}: at={self.args['at']!r}: one offset (two CRYPTO frames)")

    def quic_plan(self, server_port: int) -> QuicPlan:
        at = self.offsets_arg("at")
        offset = None if at == "sni" else at[0]
        reverse = self.str_arg("order") == "reverse"
        return QuicPlan(rewrite_first=lambda d: split_crypto_frame(d, offset, reverse=reverse))


def split_crypto_frame(datagram: bytes, offset: int | None = None, *, reverse: bool = False) -> bytes:
    """`datagram`'s first client Initial with its CRYPTO frame cut at `offset` (None: inside the SNI).

    Raises StrategyError when the Initial is not the shape a client's first Initial has (one CRYPTO frame
    followed by PADDING only), or the cut would not leave two non-empty frames.
    """
    from aioquic.buffer import Buffer
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import pull_quic_header

    buf = Buffer(data=datagram)
    try:
        header = pull_quic_header(buf)
    except ValueError as e:
        raise StrategyError(f"quic-crypto-split: not a QUIC packet ({e})") from None
    if header.version is None or header.packet_type.name != "INITIAL":
        raise StrategyError("quic-crypto-split: the first datagram is not an Initial")
    end = header.packet_length
    server = CryptoPair()
    server.setup_initial(header.destination_cid, is_client=False, version=header.version)
    plain_header, payload, pn = server.decrypt_packet(datagram[:end], buf.tell(), 0)
    frames = Buffer(data=payload)
    if frames.pull_uint_var() != 0x06:
        raise StrategyError("quic-crypto-split: the Initial does not start with a CRYPTO frame")
    start = frames.pull_uint_var()
    data = frames.pull_bytes(frames.pull_uint_var())
    if any(payload[frames.tell():]):
        raise StrategyError("quic-crypto-split: the Initial carries frames other than CRYPTO and PADDING")
    if offset is None:
        name = _sni_in_hello(data)
        if name is None:
            raise StrategyError("quic-crypto-split: at=sni but the ClientHello has no SNI; give an offset")
        offset = name
    if not 0 < offset < len(data):
        raise StrategyError(f"quic-crypto-split: offset {offset} outside the {len(data)}-byte ClientHello")
    first, second = _crypto(start, data[:offset]), _crypto(start + offset, data[offset:])
    body = second + first if reverse else first + second
    rest = datagram[end:]  # aioquic pads the datagram to 1200 bytes after the packet
    grow = max(0, len(body) - len(payload))
    if grow:
        # no PADDING frame to shorten: the packet grows by the second frame header, its Length field with it,
        # and the padding after the packet shrinks by as much (the datagram keeps its size when it can)
        plain_header = _with_length(plain_header, header, header.packet_length - buf.tell() + grow)
        rest = rest[grow:] if len(rest) >= grow and not any(rest[:grow]) else rest
    client = CryptoPair()
    client.setup_initial(header.destination_cid, is_client=True, version=header.version)
    packet = client.encrypt_packet(plain_header, body + bytes(max(0, len(payload) - len(body))), pn)
    return packet + rest


def _with_length(plain_header: bytes, header: QuicHeader, length: int) -> bytes:
    """An Initial's long header with its Length field set to `length`, in a varint of the same size.

    The field sits after the token (RFC 9000 17.2.2): flags, version, DCID, SCID, token length and token.
    """
    from aioquic.buffer import size_uint_var
    dcid, scid, token = header.destination_cid, header.source_cid, header.token
    at = 1 + 4 + 1 + len(dcid) + 1 + len(scid) + size_uint_var(len(token)) + len(token)
    prefix = plain_header[at] >> 6
    size = 1 << prefix
    if length >= 1 << (8 * size - 2):
        raise StrategyError("quic-crypto-split: the grown packet does not fit its Length field")
    field = (length | (prefix << (8 * size - 2))).to_bytes(size, "big")
    return plain_header[:at] + field + plain_header[at + size:]


def _crypto(offset: int, data: bytes) -> bytes:
    from aioquic.buffer import Buffer
    buf = Buffer(capacity=len(data) + 20)
    buf.push_uint_var(0x06)
    buf.push_uint_var(offset)
    buf.push_uint_var(len(data))
    buf.push_bytes(data)
    return buf.data


def _sni_in_hello(hello: bytes) -> int | None:
    """An offset inside the SNI host name of a bare ClientHello handshake message, or None."""
    parsed = _extract.parse_handshake_client_hello(hello)
    if parsed.status != _extract.OK or not parsed.sni:
        return None
    return inside_sni(hello, parsed.sni[0])


QUIC_STRATEGIES: tuple[type[Strategy], ...] = (QuicDummyFirst, QuicLowSport, QuicV2, QuicCryptoSplit)
