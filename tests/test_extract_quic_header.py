"""QUIC long-header parsing (T22-4 reads only the header; GQ-1/GQ-3 start here), on aioquic's real datagrams."""
from __future__ import annotations

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import encode_quic_retry, encode_quic_version_negotiation, pull_quic_header

from dpi._extract import MALFORMED, NOT_THIS, OK, parse_quic_long_header
from tests.realstack import aioquic_initial_datagram
from tests.realstack.quic import VERSION_1, VERSION_2

DRAFT_29 = 0xFF00001D


def varint(value: int) -> bytes:
    for length, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * length - 2):
            return (value | prefix << (8 * length - 8)).to_bytes(length, "big")
    raise ValueError(value)


def long_packet(first_byte: int, version: int, dcid: bytes = b"\x11" * 8, scid: bytes = b"\x22" * 4,
                token: bytes | None = b"", payload: bytes = bytes(40), length: int | None = None) -> bytes:
    """A long-header packet; `token` None for types without a token field; `length` overrides Length."""
    head = bytes([first_byte]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if token is not None:
        head += varint(len(token)) + token
    return head + varint(len(payload) if length is None else length) + payload


def test_aioquic_v1_initial_T22_4() -> None:
    data = aioquic_initial_datagram("quic.example")
    hdr = parse_quic_long_header(data)
    assert hdr.status == OK
    assert hdr.version == 1 and hdr.packet_type == 0 and hdr.is_initial
    assert data[1:5] == b"\x00\x00\x00\x01" and len(data) >= 1200
    ref = pull_quic_header(Buffer(data=data), host_cid_length=8)
    assert hdr.dcid == ref.destination_cid and hdr.scid == ref.source_cid and hdr.token == ref.token == b""
    assert hdr.packet_end == ref.packet_length
    assert hdr.first_byte == data[0]
    # 1 first byte + 4 version + 1+dcid + 1+scid + 1 token length + 2 Length (varint for ~1000 bytes)
    assert hdr.pn_offset == 1 + 4 + 1 + len(hdr.dcid) + 1 + len(hdr.scid) + 1 + 2
    assert hdr.packet_end == hdr.pn_offset + hdr.length <= len(data)
    if hdr.packet_end < len(data):  # aioquic pads the datagram after the packet with zero bytes
        assert parse_quic_long_header(data, hdr.packet_end).status == NOT_THIS


def test_aioquic_v2_initial_uses_v2_type_numbering() -> None:
    data = aioquic_initial_datagram("quic.example", version=VERSION_2)
    hdr = parse_quic_long_header(data)
    assert hdr.status == OK and hdr.version == VERSION_2
    assert hdr.packet_type == 1 and hdr.is_initial
    assert hdr.packet_end == pull_quic_header(Buffer(data=data), host_cid_length=8).packet_length


def test_v2_type_zero_is_retry_not_initial() -> None:
    data = encode_quic_retry(VERSION_2, b"\x01" * 8, b"\x02" * 8, b"\x03" * 8, b"retry-token")
    hdr = parse_quic_long_header(data)
    assert hdr.status == OK and hdr.packet_type == 0 and not hdr.is_initial and hdr.token == b"retry-token"


def test_v1_retry() -> None:
    data = encode_quic_retry(VERSION_1, b"\x01" * 8, b"\x02" * 5, b"\x03" * 8, b"tok")
    hdr = parse_quic_long_header(data)
    assert (hdr.status, hdr.packet_type, hdr.is_initial, hdr.token, hdr.packet_end) == (OK, 3, False, b"tok",
                                                                                        len(data))
    assert hdr.dcid == b"\x02" * 5


def test_version_negotiation() -> None:
    data = encode_quic_version_negotiation(b"\x05" * 8, b"\x06" * 8, [VERSION_1, VERSION_2])
    hdr = parse_quic_long_header(data)
    assert hdr.status == OK and hdr.version == 0 and not hdr.is_initial
    assert hdr.dcid == b"\x06" * 8 and hdr.packet_end == len(data)


def test_initial_with_token_and_zero_length_cids_GQ_3() -> None:
    data = long_packet(0xC0, VERSION_1, dcid=b"", scid=b"", token=b"T" * 70, payload=bytes(1100))
    hdr = parse_quic_long_header(data)
    assert hdr.status == OK and hdr.dcid == b"" and hdr.scid == b"" and hdr.token == b"T" * 70
    assert hdr.length == 1100 and hdr.packet_end == len(data)
    assert hdr.pn_offset == len(data) - 1100


def test_handshake_packet_has_no_token() -> None:
    data = long_packet(0xE0, VERSION_1, token=None, payload=bytes(30))
    hdr = parse_quic_long_header(data)
    assert (hdr.status, hdr.packet_type, hdr.is_initial, hdr.token, hdr.length) == (OK, 2, False, b"", 30)


def test_coalesced_packets() -> None:
    first = long_packet(0xC1, VERSION_1, token=b"", payload=bytes(50))
    second = long_packet(0xE1, VERSION_1, token=None, payload=bytes(20))
    data = first + second + b"\x40short-header"
    one = parse_quic_long_header(data)
    assert one.status == OK and one.packet_end == len(first)
    two = parse_quic_long_header(data, one.packet_end)
    assert two.status == OK and two.packet_type == 2 and two.packet_end == len(first) + len(second)
    assert parse_quic_long_header(data, two.packet_end).status == NOT_THIS  # a short header (1-RTT) follows


def test_draft_29_has_the_v1_layout_T22_4() -> None:
    # T22-4 lets draft-29 through by version, not by failing to parse it.
    hdr = parse_quic_long_header(long_packet(0xC0, DRAFT_29, payload=bytes(1200)))
    assert hdr.status == OK and hdr.version == DRAFT_29 and hdr.is_initial and hdr.length == 1200


def test_unknown_version_follows_only_the_invariants() -> None:
    data = bytes([0xC0]) + bytes.fromhex("1a2a3a4a") + b"\x19" + b"D" * 25 + b"\x00" + b"opaque"
    hdr = parse_quic_long_header(data)
    assert hdr.status == OK and hdr.version == 0x1A2A3A4A and not hdr.is_initial
    assert hdr.dcid == b"D" * 25 and hdr.packet_end == len(data) and hdr.length == 0


@pytest.mark.parametrize("data", [b"\x40" + bytes(30), b"\x00", b"GET / HTTP/1.1\r\n"])
def test_short_header_or_not_quic(data: bytes) -> None:
    assert parse_quic_long_header(data).status == NOT_THIS


@pytest.mark.parametrize("offset", [-1, 10_000])
def test_offset_out_of_range(offset: int) -> None:
    assert parse_quic_long_header(aioquic_initial_datagram(), offset).status == NOT_THIS


def test_truncated_datagram() -> None:
    data = aioquic_initial_datagram()
    hdr = parse_quic_long_header(data)
    for k in range(1, hdr.packet_end):
        assert parse_quic_long_header(data[:k]).status == MALFORMED, k


@pytest.mark.parametrize("cid_len", [21, 255])
def test_connection_id_too_long(cid_len: int) -> None:
    assert parse_quic_long_header(long_packet(0xC0, VERSION_1, dcid=b"x" * cid_len)).status == MALFORMED
    assert parse_quic_long_header(long_packet(0xC0, VERSION_1, scid=b"x" * cid_len)).status == MALFORMED
    assert parse_quic_long_header(long_packet(0xC0, VERSION_1, dcid=b"x" * 20, scid=b"y" * 20)).status == OK


def test_length_beyond_the_datagram() -> None:
    assert parse_quic_long_header(long_packet(0xC0, VERSION_1, payload=bytes(40), length=41)).status == MALFORMED
    assert parse_quic_long_header(long_packet(0xC0, VERSION_1, payload=bytes(40), length=0)).status == MALFORMED


def test_token_length_lies() -> None:
    data = bytes([0xC0]) + b"\x00\x00\x00\x01" + b"\x00\x00" + varint(5000) + bytes(100)
    assert parse_quic_long_header(data).status == MALFORMED
    assert parse_quic_long_header(b"\xc0\x00\x00\x00\x01\x00\x00\x80\x01").status == MALFORMED  # cut varint


def test_eight_byte_varint_length() -> None:
    data = bytes([0xC0]) + b"\x00\x00\x00\x01" + b"\x00\x00" + b"\x00" + b"\xc0" + (20).to_bytes(7, "big") + bytes(20)
    hdr = parse_quic_long_header(data)
    assert hdr.status == OK and hdr.length == 20 and hdr.packet_end == len(data)
