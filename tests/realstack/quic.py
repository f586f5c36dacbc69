"""Client Initial datagrams from a real QUIC stack (aioquic), and crafted Initials for the cases no client sends.

Real first: `aioquic_initial_datagrams` runs aioquic's client until its first flight is ready and returns the UDP
payloads it would send (`aioquic_initial_datagram`: just the first one, cached). Crafted second: `protect_initial`
wraps frames of our choosing (CRYPTO split, reordered, PING in between, 1-byte packet numbers, empty connection
IDs ...) in an Initial with aioquic's packet protection (AEAD + header protection), so even crafted packets are
encrypted by a real stack, not by the code under test. `aioquic_client_hello` gives a ClientHello from aioquic's
TLS 1.3 client to put in them.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import (
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoContext,
    derive_key_iv_hp,
)
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import cipher_suite_hash, hkdf_expand_label, hkdf_extract

V1 = VERSION_1 = int(QuicProtocolVersion.VERSION_1)
V2 = VERSION_2 = int(QuicProtocolVersion.VERSION_2)
DRAFT_29 = 0xFF00001D
_SALTS = {
    V1: INITIAL_SALT_VERSION_1,
    V2: INITIAL_SALT_VERSION_2,
    DRAFT_29: bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"),  # draft-ietf-quic-tls-29 section 5.2
}
PING = b"\x01"
SERVER = ("127.0.0.1", 443)


def aioquic_initial_datagrams(
    server_name: str | None,
    *,
    version: int = V1,
    alpn: Sequence[str] = ("h3",),
    cid_length: int = 8,
    token: bytes = b"",
    max_datagram_size: int = 1200,
) -> list[bytes]:
    """The UDP payloads of an aioquic client's first flight: its Initial packets, padded to >= 1200 bytes
    (aioquic pads with zero bytes after the packet). More than one datagram when the ClientHello does not fit,
    e.g. with a long ALPN list. `cid_length` sets both connection IDs (0 is allowed)."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=list(alpn),
        server_name=server_name,
        supported_versions=[version],
        connection_id_length=cid_length,
        max_datagram_size=max_datagram_size,
        token=token,
    )
    conn = QuicConnection(configuration=config)
    conn.connect(SERVER, now=0.0)
    return [data for data, _addr in conn.datagrams_to_send(now=0.0)]


def aioquic_initial_datagram(
    server_name: str = "example.com", *, version: int = VERSION_1, alpn: Sequence[str] = ("h3",)
) -> bytes:
    """The first UDP datagram an aioquic client sends (a padded Initial, >= 1200 bytes); cached per arguments."""
    return _aioquic_initial_datagram(server_name, version, tuple(alpn))


@functools.lru_cache(maxsize=None)
def _aioquic_initial_datagram(server_name: str, version: int, alpn: tuple[str, ...]) -> bytes:
    return aioquic_initial_datagrams(server_name, version=version, alpn=alpn)[0]


def _client_secret(dcid: bytes, version: int) -> bytes:
    algorithm = cipher_suite_hash(INITIAL_CIPHER_SUITE)
    initial = hkdf_extract(algorithm, _SALTS[version], dcid)
    return hkdf_expand_label(algorithm, initial, b"client in", b"", algorithm.digest_size)


def client_initial_keys(dcid: bytes, version: int = V1) -> tuple[bytes, bytes, bytes]:
    """Client Initial (key, iv, hp) computed with aioquic's HKDF (an implementation independent of dpi.quic)."""
    return derive_key_iv_hp(cipher_suite=INITIAL_CIPHER_SUITE, secret=_client_secret(dcid, version), version=version)


# --- frames -------------------------------------------------------------------------------------------------------
def varint(value: int, size: int | None = None) -> bytes:
    """RFC 9000 section 16 variable-length integer, minimal unless `size` (1, 2, 4, 8) is given."""
    if size is None:
        size = 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return (value | (prefix << (8 * size - 2))).to_bytes(size, "big")


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def ack_frame(largest: int = 0) -> bytes:
    return b"\x02" + varint(largest) + varint(0) + varint(0) + varint(0)


def padding(count: int) -> bytes:
    return bytes(count)


# --- packets ------------------------------------------------------------------------------------------------------
def initial_header_length(dcid: bytes, scid: bytes, token: bytes, pn_length: int) -> int:
    """Bytes before the payload, with the 2-byte Length field that `protect_initial` always writes."""
    return 7 + len(dcid) + len(scid) + len(varint(len(token))) + len(token) + 2 + pn_length


def protect_initial(
    frames: bytes,
    *,
    dcid: bytes,
    scid: bytes = b"",
    version: int = V1,
    pn: int = 0,
    pn_length: int = 4,
    token: bytes = b"",
    keys_dcid: bytes | None = None,
    pad_to: int = 0,
) -> bytes:
    """One client Initial packet carrying `frames`, protected by aioquic's packet protection.

    `keys_dcid` encrypts with the keys of another DCID (a wrong-key packet). `pad_to` appends PADDING frames so
    the packet is that many bytes long (clients pad Initial datagrams to >= 1200 bytes, RFC 9000 section 14.1).
    """
    if pad_to:
        frames += padding(max(0, pad_to - initial_header_length(dcid, scid, token, pn_length) - 16 - len(frames)))
    frames += padding(max(0, 4 - len(frames)))  # header protection samples 16 bytes past a 4-byte packet number
    initial_type = 0b01 if version == V2 else 0b00
    header = (
        bytes((0xC0 | initial_type << 4 | (pn_length - 1),))
        + version.to_bytes(4, "big")
        + bytes((len(dcid),)) + dcid
        + bytes((len(scid),)) + scid
        + varint(len(token)) + token
        + varint(pn_length + len(frames) + 16, 2)
        + (pn & ((1 << (8 * pn_length)) - 1)).to_bytes(pn_length, "big")
    )
    context = CryptoContext()
    secret = _client_secret(dcid if keys_dcid is None else keys_dcid, version)
    context.setup(cipher_suite=INITIAL_CIPHER_SUITE, secret=secret, version=version)
    return context.encrypt_packet(header, frames, pn)


def split(data: bytes, *cuts: int) -> list[tuple[int, bytes]]:
    """(offset, chunk) pieces of `data` cut at the given offsets: material for CRYPTO frames."""
    bounds = [0, *cuts, len(data)]
    return [(a, data[a:b]) for a, b in zip(bounds, bounds[1:])]


def aioquic_client_hello(server_name: str = "example.com", *, alpn: Sequence[str] = ("h3",)) -> bytes:
    """The bare TLS handshake message (no record layer) aioquic's TLS stack puts in a client's CRYPTO frames.

    Carries a `quic_transport_parameters` extension (0x39) as QUIC requires; its content here is a token
    `initial_max_data` parameter, the rest of the message is aioquic's own.
    """
    return _aioquic_client_hello(server_name, tuple(alpn))


@functools.lru_cache(maxsize=None)
def _aioquic_client_hello(server_name: str, alpn: tuple[str, ...]) -> bytes:

    context = tls.Context(is_client=True, server_name=server_name, alpn_protocols=list(alpn))
    context.handshake_extensions = [(tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS, bytes.fromhex("04044000ffff"))]
    buffers = {epoch: Buffer(capacity=8192) for epoch in tls.Epoch}
    context.handle_message(b"", buffers)
    return buffers[tls.Epoch.INITIAL].data
