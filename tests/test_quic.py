"""QUIC Initial decryption (dpi.quic): RFC vectors, real aioquic first flights, crafted shapes (GQ-1, GQ-3, T22-4).

The parser must read everything correct QUIC allows and *report* the shape (version, packets, packet-number
length, frames, interleaving) from which the GFW profile decides what its limited parser would have missed.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpi import quic
from dpi.quic import InitialAssembler, initial_secrets, parse_initial
from tests.realstack.quic import (
    DRAFT_29,
    PING,
    V1,
    V2,
    ack_frame,
    aioquic_client_hello,
    aioquic_initial_datagrams,
    client_initial_keys,
    crypto_frame,
    padding,
    protect_initial,
    split,
    varint,
)

STATUSES = {"ok", "not-quic", "not-initial", "unsupported-version", "truncated", "decrypt-failed", "no-crypto",
            "incomplete"}
DCID = bytes.fromhex("8394c8f03e515708")  # RFC 9001 appendix A
SCID = bytes.fromhex("c0ffee01")


HELLO = aioquic_client_hello("blocked.example", alpn=("h3",))


def initial(frames: bytes, **kw: object) -> bytes:
    """A crafted client Initial padded to 1200 bytes, as clients send them (RFC 9000 section 14.1)."""
    kw.setdefault("dcid", DCID)
    kw.setdefault("scid", SCID)
    kw.setdefault("pad_to", 1200)
    return protect_initial(frames, **kw)  # type: ignore[arg-type]


def assert_reads_hello(info: quic.InitialInfo) -> None:
    """The crafted ClientHello (SNI blocked.example, ALPN h3) was read whole."""
    assert info.status == "ok"
    assert info.client_hello_complete
    assert info.crypto.startswith(HELLO)
    assert info.sni == ("blocked.example",)
    assert info.alpn == ("h3",)


# --- RFC test vectors ---------------------------------------------------------------------------------------------
def test_rfc9001_a1_client_initial_keys() -> None:
    key, iv, hp = initial_secrets(DCID, 1)
    assert key == bytes.fromhex("1f369613dd76d5467730efcbe3b1a22d")
    assert iv == bytes.fromhex("fa044b2f42a3fd3b46fb255c")
    assert hp == bytes.fromhex("9f50449e04a0e810283a1e9933adedd2")


def test_rfc9369_a1_client_initial_keys_v2() -> None:
    key, iv, hp = initial_secrets(DCID, 0x6B3343CF)
    assert key == bytes.fromhex("8b1a0bc121284290a29e0971b5cd045d")
    assert iv == bytes.fromhex("91f73e2351d8fa91660e909f")
    assert hp == bytes.fromhex("45b95e15235d6f45a6b19cbcb0294ba9")


@pytest.mark.parametrize("version", [V1, V2, DRAFT_29])
@pytest.mark.parametrize("dcid", [b"", b"\x01", os.urandom(8), os.urandom(20)])
def test_key_schedule_agrees_with_aioquic(version: int, dcid: bytes) -> None:
    assert initial_secrets(dcid, version) == client_initial_keys(dcid, version)


def test_unknown_version_has_no_keys() -> None:
    with pytest.raises(ValueError):
        initial_secrets(DCID, 0x1A2A3A4A)


# RFC 9001 appendix A.2: the client's CRYPTO frame (a 241-byte ClientHello for example.com, ALPN "alpn").
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)


@pytest.mark.parametrize(
    ("version", "prefix", "suffix"),
    [
        (  # RFC 9001 A.2
            V1,
            "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11d242b123dc9bd8bab936b47d92ec356c0bab7df59"
            "76d27cd449f63300099f3991c260ec4c60d17b31f8429157bb35a12",
            "e221af44860018ab0856972e194cd934",
        ),
        (  # RFC 9369 A.2
            V2,
            "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485dd04de806071bf03dceebfa162e75d6c96058bd"
            "bfb127cdfcbf903388e99ad049f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d250f2c4f0e0202b7",
            None,
        ),
    ],
)
def test_rfc_sample_client_initial(version: int, prefix: str, suffix: str | None) -> None:
    packet = protect_initial(RFC_CRYPTO_FRAME, dcid=DCID, version=version, pn=2, pn_length=4, pad_to=1200)
    assert packet.hex().startswith(prefix)  # our crafting tool reproduces the RFC's protected packet
    if suffix:
        assert packet.hex().endswith(suffix)
    info = parse_initial(packet)
    assert info.status == "ok"
    assert (info.version, info.dcid, info.scid, info.packets, info.pn_length) == (version, DCID, b"", 1, 4)
    assert info.frames == ("CRYPTO", "PADDING")
    assert info.crypto == RFC_CRYPTO_FRAME[4:]
    assert info.client_hello_complete and not info.interleaved
    assert info.sni == ("example.com",)
    assert info.alpn == ("alpn",)


# --- real aioquic clients -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [V1, V2])
@pytest.mark.parametrize(
    ("server_name", "alpn"),
    [("twitter.com", ("h3",)), ("a-rather-long-label-for-a-name.cdn.example.org", ("h3", "h3-29", "hq-interop"))],
)
def test_gq1_aioquic_initial_read(version: int, server_name: str, alpn: tuple[str, ...]) -> None:
    (datagram,) = aioquic_initial_datagrams(server_name, version=version, alpn=alpn)
    info = parse_initial(datagram)
    assert info.status == "ok"
    assert info.version == version  # a profile ignores v2 by this (GQ-3, GQ-E), the classifier still reads it
    assert len(info.dcid) == 8 and len(info.scid) == 8
    assert info.packets == 1
    assert info.pn_length == 2  # aioquic sends 2-byte packet numbers
    assert info.frames == ("CRYPTO",)  # aioquic pads after the packet, outside it
    assert info.crypto_frames == 1 and not info.interleaved
    assert info.client_hello_complete
    assert info.crypto[0] == 1 and len(info.crypto) == 4 + int.from_bytes(info.crypto[1:4], "big")
    assert info.sni == (server_name,)
    assert info.alpn == alpn


def test_gq3_aioquic_zero_length_connection_ids() -> None:
    (datagram,) = aioquic_initial_datagrams("twitter.com", cid_length=0)
    info = parse_initial(datagram)
    assert (info.status, info.dcid, info.scid, info.sni) == ("ok", b"", b"", ("twitter.com",))


def test_aioquic_initial_with_token_and_20_byte_cids() -> None:
    (datagram,) = aioquic_initial_datagrams("twitter.com", cid_length=20, token=b"retry-token" * 5)
    info = parse_initial(datagram)
    assert (info.status, len(info.dcid), info.sni) == ("ok", 20, ("twitter.com",))


def test_aioquic_initial_without_sni() -> None:
    (datagram,) = aioquic_initial_datagrams(None)
    info = parse_initial(datagram)
    assert info.status == "ok" and info.client_hello_complete
    assert info.sni == ()


@pytest.mark.parametrize("version", [V1, V2])
def test_gq3_aioquic_client_hello_over_several_datagrams(version: int) -> None:
    """A long ALPN list makes aioquic spread its ClientHello over several Initial datagrams: one datagram alone
    is "incomplete" (the GFW does not reassemble, GQ-3), the assembler reads it as a server would."""
    alpn = tuple(f"proto-{i:03d}-" + "x" * 180 for i in range(12))
    datagrams = aioquic_initial_datagrams("twitter.com", version=version, alpn=alpn)
    assert len(datagrams) >= 2
    first = parse_initial(datagrams[0])
    assert first.status == "incomplete" and not first.client_hello_complete and first.sni == ()
    assert first.crypto[0] == 1
    later = parse_initial(datagrams[1])
    assert later.status == "incomplete" and later.crypto == b""  # its CRYPTO data does not start at offset 0
    assembler = InitialAssembler()
    infos = [assembler.feed(d) for d in datagrams]
    assert [i.status for i in infos] == ["incomplete"] * (len(datagrams) - 1) + ["ok"]
    final = infos[-1]
    assert final.packets == len(datagrams) and final.crypto_frames == len(datagrams)
    assert final.dcid == first.dcid and final.version == version
    assert final.sni == ("twitter.com",) and final.alpn == alpn


# --- crafted: packet numbers, versions, connection IDs ------------------------------------------------------------
@pytest.mark.parametrize("pn_length", [1, 2, 3, 4])
def test_gq3_packet_number_lengths(pn_length: int) -> None:
    info = parse_initial(initial(crypto_frame(0, HELLO), pn_length=pn_length, pn=0))
    assert info.pn_length == pn_length
    assert_reads_hello(info)


def test_draft29_initial() -> None:
    info = parse_initial(initial(crypto_frame(0, HELLO), version=DRAFT_29))
    assert info.version == 0xFF00001D
    assert_reads_hello(info)


def test_gq3_zero_length_connection_ids_crafted() -> None:
    info = parse_initial(initial(crypto_frame(0, HELLO), dcid=b"", scid=b""))
    assert (info.dcid, info.scid) == (b"", b"")
    assert_reads_hello(info)


def test_version_2_uses_its_own_packet_type_bits() -> None:
    """RFC 9369 3.2: in v2 the Initial type is 0b01 and 0b00 is Retry; the type bits are not header-protected."""
    v2 = initial(crypto_frame(0, HELLO), version=V2)
    assert (v2[0] >> 4) & 3 == 0b01
    assert parse_initial(v2).status == "ok"
    as_retry = bytes((v2[0] & ~0x30,)) + v2[1:]
    assert parse_initial(as_retry).status == "not-initial"
    v1 = initial(crypto_frame(0, HELLO))
    as_zero_rtt = bytes((v1[0] | 0x10,)) + v1[1:]
    assert parse_initial(as_zero_rtt).status == "not-initial"


# --- crafted: CRYPTO layouts (GQ-3) -------------------------------------------------------------------------------
def test_gq3_client_hello_split_over_two_crypto_frames() -> None:
    (a, first), (b, second) = split(HELLO, 40)  # the SNI sits in the second piece
    info = parse_initial(initial(crypto_frame(a, first) + crypto_frame(b, second)))
    assert_reads_hello(info)
    assert info.crypto_frames == 2
    assert info.frames == ("CRYPTO", "CRYPTO", "PADDING")
    assert not info.interleaved  # split, but not mixed with other frames


def test_gq3_crypto_frames_out_of_order() -> None:
    pieces = split(HELLO, 30, 90, 200)
    frames = b"".join(crypto_frame(o, d) for o, d in reversed(pieces))
    info = parse_initial(initial(frames))
    assert_reads_hello(info)
    assert info.crypto == HELLO and info.crypto_frames == 4


@pytest.mark.parametrize(
    ("middle", "name"), [(PING, "PING"), (padding(7), "PADDING"), (ack_frame(0), "ACK")]
)
def test_gq3_frame_between_crypto_frames_is_interleaved(middle: bytes, name: str) -> None:
    (a, first), (b, second) = split(HELLO, 100)
    info = parse_initial(initial(crypto_frame(a, first) + middle + crypto_frame(b, second)))
    assert_reads_hello(info)  # a careful parser still reads it ...
    assert info.interleaved  # ... but reports the mix the GFW's parser gives up on
    assert info.frames == ("CRYPTO", name, "CRYPTO", "PADDING")


def test_gq3_ping_before_single_crypto_frame_is_interleaved() -> None:
    info = parse_initial(initial(PING + padding(3) + crypto_frame(0, HELLO)))
    assert_reads_hello(info)
    assert info.interleaved and info.frames == ("PING", "PADDING", "CRYPTO", "PADDING")


def test_trailing_padding_and_ping_after_crypto_are_not_interleaved() -> None:
    info = parse_initial(initial(crypto_frame(0, HELLO) + PING))
    assert_reads_hello(info)
    assert not info.interleaved and info.frames == ("CRYPTO", "PING", "PADDING")


def test_gq3_client_hello_over_two_coalesced_initials() -> None:
    (a, first), (b, second) = split(HELLO, 60)
    datagram = initial(crypto_frame(a, first), pad_to=0, pn=0) + initial(crypto_frame(b, second), pn=1)
    info = parse_initial(datagram)
    assert_reads_hello(info)
    assert info.packets == 2 and info.crypto_frames == 2
    assert info.frames == ("CRYPTO", "CRYPTO", "PADDING")
    assert not info.interleaved  # interleaving is judged within a packet


def test_gq3_client_hello_over_two_datagrams() -> None:
    (a, first), (b, second) = split(HELLO, 60)
    one, two = initial(crypto_frame(a, first), pn=0, pn_length=1), initial(crypto_frame(b, second), pn=1, pn_length=1)
    info = parse_initial(one)
    assert info.status == "incomplete" and info.crypto == first and info.sni == ()
    assert parse_initial(two).status == "incomplete"
    assembler = InitialAssembler()
    assert assembler.feed(one).status == "incomplete"
    info = assembler.feed(two)
    assert_reads_hello(info)
    assert (info.packets, info.pn_length, info.crypto_frames) == (2, 1, 2)


def test_assembler_second_datagram_first_and_retransmission() -> None:
    (a, first), (b, second) = split(HELLO, 60)
    assembler = InitialAssembler()
    assert assembler.feed(initial(crypto_frame(b, second), pn=0)).status == "incomplete"
    assert_reads_hello(assembler.feed(initial(crypto_frame(a, first), pn=1)))
    info = assembler.feed(initial(crypto_frame(a, first), pn=2))  # a retransmission changes nothing
    assert_reads_hello(info)
    assert info.packets == 3 and info.crypto == HELLO


def test_assembler_decodes_truncated_packet_numbers_against_the_largest_seen() -> None:
    """RFC 9000 A.3: packet 300 sent with a 1-byte packet number (0x2c) after packet 200 is packet 300."""
    (a, first), (b, second) = split(HELLO, 60)
    assembler = InitialAssembler()
    assembler.feed(initial(crypto_frame(a, first), pn=200, pn_length=4))
    info = assembler.feed(initial(crypto_frame(b, second), pn=300, pn_length=1))
    assert_reads_hello(info)
    assert info.packets == 2 and info.pn_length == 4


def test_assembler_keeps_the_first_dcid_keys_when_the_client_switches_dcid() -> None:
    """RFC 9001 5.2: Initial keys come from the client's first DCID even after it adopts the server's CID."""
    (a, first), (b, second) = split(HELLO, 60)
    new_dcid = os.urandom(8)
    assembler = InitialAssembler()
    assembler.feed(initial(crypto_frame(a, first), pn=0))
    wrong = assembler.feed(initial(crypto_frame(b, second), pn=1, dcid=new_dcid))  # keyed by the new DCID
    assert wrong.status == "incomplete" and wrong.packets == 1
    info = assembler.feed(initial(crypto_frame(b, second), pn=2, dcid=new_dcid, keys_dcid=DCID))
    assert_reads_hello(info)
    assert info.dcid == DCID and info.packets == 2


def test_assembler_ignores_noise_once_started_and_reports_failure_before() -> None:
    assembler = InitialAssembler()
    assert assembler.feed(b"\x17" * 40).status == "not-quic"  # e.g. a dummy datagram first (GQ-E)
    (a, first), (b, second) = split(HELLO, 60)
    assert assembler.feed(initial(crypto_frame(a, first))).status == "incomplete"
    assert assembler.feed(b"\x00" * 50).status == "incomplete"
    assert assembler.feed(initial(crypto_frame(b, second), version=V2, pn=1)).status == "incomplete"  # other version
    assert_reads_hello(assembler.feed(initial(crypto_frame(b, second), pn=2)))


@pytest.mark.parametrize("order", ["real-first", "decoy-first"])
def test_overlapping_crypto_first_byte_wins(order: str) -> None:
    decoy = crypto_frame(20, b"\xee" * 30)
    real = crypto_frame(0, HELLO)
    frames = real + decoy if order == "real-first" else decoy + real
    info = parse_initial(initial(frames))
    expected = HELLO if order == "real-first" else HELLO[:20] + b"\xee" * 30 + HELLO[50:]
    assert info.crypto == expected and info.crypto_frames == 2


def test_crypto_buffer_is_capped() -> None:
    chunk = b"\x01" + (0xFFFFFF).to_bytes(3, "big") + b"\xaa" * 996  # a handshake message that never completes
    assembler = InitialAssembler()
    for pn in range(70):
        info = assembler.feed(initial(crypto_frame(pn * 1000, chunk if pn == 0 else b"\xaa" * 1000), pn=pn))
    assert info.packets == 70 and info.status == "incomplete"
    assert len(info.crypto) == quic.MAX_CRYPTO_BYTES
    far = assembler.feed(initial(crypto_frame(2**61, b"\xbb" * 100), pn=70))
    assert far.crypto_frames == 71 and len(far.crypto) == quic.MAX_CRYPTO_BYTES
    assert len(far.frames) <= quic.MAX_FRAMES


# --- crafted: statuses --------------------------------------------------------------------------------------------
def test_padding_runs_count_once_even_with_non_minimal_frame_types() -> None:
    """Frame types are varints (RFC 9000 12.4): 0x40 0x00 is a 2-byte PADDING, 0x40 0x06 a 2-byte CRYPTO."""
    frames = padding(3) + b"\x40\x00" + padding(2) + b"\x40" + crypto_frame(0, HELLO)
    info = parse_initial(initial(frames))
    assert info.frames == ("PADDING", "CRYPTO", "PADDING")
    assert_reads_hello(info)


def test_ping_only_initial_has_no_crypto() -> None:
    info = parse_initial(initial(PING))
    assert info.status == "no-crypto" and info.frames == ("PING", "PADDING") and info.packets == 1


def test_crypto_not_at_offset_zero_is_incomplete() -> None:
    info = parse_initial(initial(crypto_frame(100, HELLO[100:])))
    assert info.status == "incomplete" and info.crypto == b"" and info.crypto_frames == 1


def test_complete_non_client_hello_message() -> None:
    message = b"\x02\x00\x00\x04abcd"
    info = parse_initial(initial(crypto_frame(0, message)))
    assert info.status == "ok" and not info.client_hello_complete and info.sni == ()


def test_frame_not_allowed_in_initial_ends_the_walk() -> None:
    stream_frame = b"\x08\x00" + b"GET /"
    info = parse_initial(initial(crypto_frame(0, HELLO) + stream_frame + crypto_frame(0, b"x")))
    assert info.frames == ("CRYPTO", "STREAM")
    assert info.crypto_frames == 1
    assert_reads_hello(info)


@pytest.mark.parametrize("cut", [1, 5, 6, 9, 20, 40, 600, 1199])
def test_truncated_initial(cut: int) -> None:
    assert parse_initial(initial(crypto_frame(0, HELLO))[:cut]).status == "truncated"


def test_truncated_real_initial() -> None:
    (datagram,) = aioquic_initial_datagrams("twitter.com")
    assert parse_initial(datagram[:300]).status == "truncated"


@pytest.mark.parametrize("version", [0x1A2A3A4A, 0xFF000020, 0x00000002, 0x51303530])
def test_unknown_version(version: int) -> None:
    (datagram,) = aioquic_initial_datagrams("twitter.com")
    info = parse_initial(datagram[:1] + version.to_bytes(4, "big") + datagram[5:])
    assert info.status == "unsupported-version"
    assert info.version == version and len(info.dcid) == 8  # the invariant header is still reported
    assert info.sni == ()


def test_version_negotiation_is_not_initial() -> None:
    vn = b"\x80" + bytes(4) + b"\x08" + DCID + b"\x04" + SCID + (1).to_bytes(4, "big")
    assert parse_initial(vn).status == "not-initial"


def test_handshake_packet_is_not_initial() -> None:
    packet = b"\xe0" + (1).to_bytes(4, "big") + b"\x08" + DCID + b"\x00" + varint(30, 2) + os.urandom(30)
    assert parse_initial(packet).status == "not-initial"


def test_coalesced_zero_rtt_and_foreign_dcid_packets_are_skipped() -> None:
    zero_rtt = b"\xd0" + (1).to_bytes(4, "big") + b"\x08" + DCID + b"\x00" + varint(40, 2) + os.urandom(40)
    other = initial(crypto_frame(0, b"\x01\x00\x00\x01z"), dcid=os.urandom(8), pad_to=0, pn=1)
    info = parse_initial(initial(crypto_frame(0, HELLO), pad_to=0) + zero_rtt + other + bytes(300))
    assert info.packets == 1
    assert_reads_hello(info)


def test_wrong_keys_decrypt_failed() -> None:
    info = parse_initial(initial(crypto_frame(0, HELLO), keys_dcid=os.urandom(8)))
    assert info.status == "decrypt-failed" and info.version == 1 and info.dcid == DCID


@pytest.mark.parametrize("where", [8, 30, 100, 1199])  # header (AAD) byte, ciphertext, tag
def test_flipped_byte_decrypt_failed(where: int) -> None:
    packet = bytearray(initial(crypto_frame(0, HELLO)))
    packet[where] ^= 0x04
    assert parse_initial(bytes(packet)).status == "decrypt-failed"


@pytest.mark.parametrize(
    "datagram",
    [b"", b"\x40" + DCID + os.urandom(40), b"\x00" * 1200, b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x10"],
)
def test_not_quic(datagram: bytes) -> None:
    assert parse_initial(datagram).status == "not-quic"


def test_connection_id_longer_than_20_bytes_is_not_quic_v1() -> None:
    packet = b"\xc0" + (1).to_bytes(4, "big") + b"\x15" + bytes(21) + b"\x00" + bytes(1200)
    assert parse_initial(packet).status == "not-quic"


def test_derived_keys_are_cached() -> None:
    assert quic._initial_keys.cache_info().maxsize == quic.KEY_CACHE_SIZE
    packet = initial(crypto_frame(0, HELLO), dcid=os.urandom(8))
    parse_initial(packet)
    hits = quic._initial_keys.cache_info().hits
    parse_initial(packet)
    assert quic._initial_keys.cache_info().hits == hits + 1


# --- properties ---------------------------------------------------------------------------------------------------
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REAL = aioquic_initial_datagrams("twitter.com")[0]
REAL_V2 = aioquic_initial_datagrams("twitter.com", version=V2)[0]


def _check(info: quic.InitialInfo) -> None:
    assert isinstance(info, quic.InitialInfo) and info.status in STATUSES
    assert len(info.crypto) <= quic.MAX_CRYPTO_BYTES and len(info.frames) <= quic.MAX_FRAMES


@FUZZ
@given(st.binary(max_size=1500))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check(parse_initial(data))
    _check(InitialAssembler().feed(data))


@FUZZ
@given(st.binary(min_size=1, max_size=60), st.binary(max_size=1400))
def test_arbitrary_long_headers_never_raise(head: bytes, rest: bytes) -> None:
    for version in (b"\x00\x00\x00\x01", REAL_V2[1:5], b"\xff\x00\x00\x1d"):
        _check(parse_initial(bytes((head[0] | 0x80,)) + version + head[1:] + rest))


@FUZZ
@given(st.sampled_from([REAL, REAL_V2]), st.lists(st.tuples(st.integers(0, 1199), st.integers(0, 255)), max_size=8),
       st.integers(0, 1300))
def test_mutated_real_initials_never_raise(datagram: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutated = bytearray(datagram)
    for index, value in flips:
        mutated[index % len(mutated)] = value
    _check(parse_initial(bytes(mutated[:cut])))
    assembler = InitialAssembler()
    _check(assembler.feed(datagram))
    _check(assembler.feed(bytes(mutated)))


@FUZZ
@given(st.binary(max_size=1100), st.sampled_from([V1, V2, DRAFT_29]), st.integers(1, 4))
def test_arbitrary_decrypted_payloads_never_raise(payload: bytes, version: int, pn_length: int) -> None:
    """AEAD keeps random bytes away from the frame walker, so fuzz it through validly encrypted packets."""
    _check(parse_initial(protect_initial(payload, dcid=DCID, version=version, pn_length=pn_length)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=120)), min_size=1, max_size=8))
def test_crypto_reassembly_is_first_byte_wins(pieces: list[tuple[int, bytes]]) -> None:
    """Against a byte-by-byte model: each offset keeps the first byte received for it."""
    model: dict[int, int] = {}
    assembler = InitialAssembler()
    for pn, (offset, data) in enumerate(pieces):
        for k, byte in enumerate(data):
            model.setdefault(offset + k, byte)
        info = assembler.feed(protect_initial(crypto_frame(offset, data), dcid=DCID, pn=pn, pad_to=1200))
    n = 0
    while n in model:
        n += 1
    assert info.crypto == bytes(model[k] for k in range(n))
    assert info.packets == len(pieces) and info.crypto_frames == len(pieces)
