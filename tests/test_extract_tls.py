"""TLS ClientHello extraction: real stacks (Python ssl, openssl, curl, aioquic) and the evasions of T21-E, G-E.

The record-layer facts (records_before, record_count, FRAGMENTED, NEED_MORE on prefixes) are what the censor
profiles key on, so they are asserted exactly, not just "it parsed".
"""
from __future__ import annotations

import shutil

import pytest

from dpi._extract import (
    FRAGMENTED,
    MALFORMED,
    NEED_MORE,
    NOT_THIS,
    OK,
    ClientHello,
    parse_handshake_client_hello,
    parse_tls_client_hello,
)
from tests.realstack import (
    aioquic_client_hello,
    curl_client_hello,
    openssl_client_hello,
    python_ssl_client_hello,
)
from tests.realstack.craft import (
    alpn_data,
    client_hello_body,
    client_hello_record,
    extension,
    handshake_bytes,
    handshake_message,
    server_name_data,
    split_tls_records,
    supported_versions_data,
    tls_record,
)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")

TLS13, TLS12 = 0x0304, 0x0303
CCS = tls_record(b"\x01", content_type=0x14, version=0x0303)


def whole(data: bytes, **kw: bool) -> ClientHello:
    ch = parse_tls_client_hello(data, **kw)
    assert ch.status == OK, ch
    return ch


# --- real stacks ------------------------------------------------------------------------------------------------

def test_python_ssl_tls13_sni_alpn_versions() -> None:
    data = python_ssl_client_hello("www.example.com", ["h2", "http/1.1"])
    ch = whole(data)
    assert ch.sni == ("www.example.com",)
    assert ch.alpn == ("h2", "http/1.1")
    assert ch.supported_versions[0] == TLS13 and TLS12 in ch.supported_versions
    assert 0x0000 in ch.extensions and 0x0010 in ch.extensions
    assert ch.records_before == 0 and ch.record_count == 1
    assert ch.record_length == len(data) - 5 and ch.handshake_length == len(data) - 9
    assert ch.end == len(data)
    assert ch.legacy_version == TLS12 and ch.record_version in (0x0301, 0x0303)
    assert not ch.has_esni and not ch.has_ech


def test_python_ssl_tls12_only_has_no_supported_versions() -> None:
    ch = whole(python_ssl_client_hello("legacy.example", tls_version="1.2"))
    assert ch.sni == ("legacy.example",)
    assert ch.supported_versions == () and 0x002B not in ch.extensions


def test_python_ssl_tls13_only() -> None:
    ch = whole(python_ssl_client_hello("modern.example", ["h2"], tls_version="1.3"))
    assert ch.supported_versions == (TLS13,)
    assert ch.alpn == ("h2",)


def test_python_ssl_without_sni() -> None:
    ch = whole(python_ssl_client_hello(None))
    assert ch.sni == () and 0x0000 not in ch.extensions


def test_trailing_dot_sni_is_kept_as_sent_T21_E() -> None:
    # T21-E: `twitter.com.` evades TSPU-2021 because it does not strip the dot; the extractor must not either.
    ch = whole(python_ssl_client_hello("Twitter.com."))
    assert ch.sni == ("Twitter.com.",)


@needs_openssl
@pytest.mark.parametrize("version", [None, "1.2", "1.3"])
def test_openssl_s_client(version: str | None) -> None:
    data = openssl_client_hello("blocked.example.org", alpn=["h2", "http/1.1"], tls_version=version)
    ch = whole(data)
    assert ch.sni == ("blocked.example.org",)
    assert ch.alpn == ("h2", "http/1.1")
    if version == "1.2":
        assert TLS13 not in ch.supported_versions
    else:
        assert TLS13 in ch.supported_versions
    assert ch.end == len(data)


@needs_curl
def test_curl() -> None:
    data = curl_client_hello("twitter.com")
    ch = whole(data)
    assert ch.sni == ("twitter.com",)
    assert ch.alpn == ("h2", "http/1.1")
    assert TLS13 in ch.supported_versions
    assert ch.end == len(data)


def test_bytes_like_inputs() -> None:
    data = python_ssl_client_hello("buf.example")
    for view in (bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        assert parse_tls_client_hello(view).sni == ("buf.example",)


def test_trailing_bytes_after_the_client_hello_do_not_matter() -> None:
    data = python_ssl_client_hello("trail.example")
    ch = whole(data + tls_record(b"\x00" * 40, content_type=0x17) + b"\x17\x03")
    assert ch.sni == ("trail.example",) and ch.end == len(data)


# --- TCP segmentation: every prefix is a valid prefix (T21-E, H-E) ----------------------------------------------

@pytest.mark.parametrize("reassemble", [False, True])
def test_every_prefix_needs_more(reassemble: bool) -> None:
    data = python_ssl_client_hello("split.example", ["h2"])
    for k in range(len(data)):
        ch = parse_tls_client_hello(data[:k], reassemble_records=reassemble)
        assert ch.status == NEED_MORE, (k, ch)
        assert ch.sni == ()
    # What is known is filled in: the record header from 5 bytes on, the handshake length from 9 on.
    ch = parse_tls_client_hello(data[:9])
    assert ch.record_length == len(data) - 5 and ch.handshake_length == len(data) - 9


# --- TLS record fragmentation (G-E) -----------------------------------------------------------------------------

@pytest.mark.parametrize("first", [1, 2, 3, 4, 40, 100])
def test_record_fragmentation_G_E(first: int) -> None:
    original = python_ssl_client_hello("fragmented.example", ["h2"])
    data = split_tls_records(original, [first])
    assert parse_tls_client_hello(data).status == FRAGMENTED
    ch = whole(data, reassemble_records=True)
    ref = whole(original)
    assert (ch.sni, ch.alpn, ch.extensions, ch.supported_versions) == (ref.sni, ref.alpn, ref.extensions,
                                                                         ref.supported_versions)
    assert ch.record_count == 2 and ch.record_length == first
    assert ch.handshake_length == ref.handshake_length
    assert ch.end == len(data)


def test_record_fragmentation_second_record_missing() -> None:
    data = split_tls_records(python_ssl_client_hello("missing.example"), [100])
    first_record = data[:105]
    assert parse_tls_client_hello(first_record, reassemble_records=True).status == NEED_MORE
    assert parse_tls_client_hello(first_record + data[105:110], reassemble_records=True).status == NEED_MORE
    # Without reassembly the answer is known from the first record's header and the handshake length on.
    assert parse_tls_client_hello(first_record).status == FRAGMENTED
    assert parse_tls_client_hello(data[:9]).status == FRAGMENTED
    assert parse_tls_client_hello(data[:8]).status == NEED_MORE
    for k in range(len(data)):
        assert parse_tls_client_hello(data[:k], reassemble_records=True).status == NEED_MORE, k


def test_many_records_counted() -> None:
    original = python_ssl_client_hello("many.example")
    data = split_tls_records(original, [50] * 9)
    ch = whole(data, reassemble_records=True)
    assert ch.record_count == 10 and ch.sni == ("many.example",)
    frag = parse_tls_client_hello(data)
    assert frag.status == FRAGMENTED and frag.record_count == 10


def test_reassembly_rejects_other_content_in_the_middle() -> None:
    data = split_tls_records(python_ssl_client_hello("interleaved.example"), [100])
    interleaved = data[:105] + CCS + data[105:]
    assert parse_tls_client_hello(interleaved, reassemble_records=True).status == MALFORMED


# --- a record before the ClientHello (T21-3, T21-E, T22-E) ------------------------------------------------------

def test_change_cipher_spec_first_hides_the_client_hello_T21_E() -> None:
    hello = python_ssl_client_hello("ccs.example")
    data = CCS + hello
    ch = parse_tls_client_hello(data)
    assert ch.status == NOT_THIS and ch.records_before == 1 and ch.sni == ()
    skipped = whole(data, skip_leading_records=True)
    assert skipped.records_before == 1 and skipped.sni == ("ccs.example",)
    assert skipped.end == len(data)


def test_several_leading_records_are_counted() -> None:
    hello = python_ssl_client_hello("lead.example")
    data = CCS + tls_record(b"\x01\x00", content_type=0x15) + tls_record(b"junk", content_type=0x17) + hello
    assert parse_tls_client_hello(data).records_before == 3
    assert whole(data, skip_leading_records=True).records_before == 3


def test_leading_record_not_followed_by_a_handshake() -> None:
    ch = parse_tls_client_hello(CCS + b"GET / HTTP/1.1\r\n")
    assert ch.status == NOT_THIS and ch.records_before == 0
    assert parse_tls_client_hello(CCS + b"GET / HTTP/1.1\r\n", skip_leading_records=True).status == NOT_THIS


def test_leading_record_prefixes_with_skipping() -> None:
    data = CCS + python_ssl_client_hello("prefix.example")
    for k in range(len(data)):
        assert parse_tls_client_hello(data[:k], skip_leading_records=True).status == NEED_MORE, k
    # Without skipping the verdict is NOT_THIS as soon as byte 0 is seen.
    assert parse_tls_client_hello(data[:1]).status == NOT_THIS


# --- padding past one packet (T21-E) ----------------------------------------------------------------------------

def test_padding_extension_past_one_packet() -> None:
    data = client_hello_record(extension(0, server_name_data(b"padded.example")), extension(21, bytes(1600)))
    assert len(data) > 1500
    ch = whole(data)
    assert ch.sni == ("padded.example",) and ch.extensions == (0, 21)
    # The first 1460-byte segment alone is a prefix, nothing more.
    assert parse_tls_client_hello(data[:1460]).status == NEED_MORE


# --- crafted structures -----------------------------------------------------------------------------------------

def test_crafted_baseline() -> None:
    ch = whole(client_hello_record(extension(0, server_name_data(b"a.example")), extension(16, alpn_data(b"h2")),
                                   extension(43, supported_versions_data(TLS13, TLS12))))
    assert ch.sni == ("a.example",) and ch.alpn == ("h2",) and ch.supported_versions == (TLS13, TLS12)
    assert ch.extensions == (0, 16, 43)


def test_no_extensions_block_is_legal_before_tls13() -> None:
    ch = whole(tls_record(handshake_message(client_hello_body(None))))
    assert ch.extensions == () and ch.sni == ()


def test_esni_detected_GE_1() -> None:
    ch = whole(client_hello_record(extension(0xFFCE, bytes(40))))
    assert ch.has_esni and not ch.has_ech


def test_ech_detected() -> None:
    ch = whole(client_hello_record(extension(0, server_name_data(b"public.example")), extension(0xFE0D, bytes(90))))
    assert ch.has_ech and not ch.has_esni and ch.sni == ("public.example",)


def test_several_names_in_sni_are_malformed_but_reported() -> None:
    ch = parse_tls_client_hello(client_hello_record(extension(0, server_name_data(b"a.example", b"b.example"))))
    assert ch.status == MALFORMED
    assert ch.sni == ("a.example", "b.example")


def test_empty_name_in_sni() -> None:
    ch = parse_tls_client_hello(client_hello_record(extension(0, server_name_data(b""))))
    assert ch.status == MALFORMED and ch.sni == ("",)


def test_duplicate_server_name_extension() -> None:
    sni = extension(0, server_name_data(b"one.example"))
    assert parse_tls_client_hello(client_hello_record(sni, sni)).status == MALFORMED


@pytest.mark.parametrize("ext", [
    pytest.param(extension(0, b""), id="zero-length server_name"),
    pytest.param(extension(0, server_name_data()), id="empty server_name list"),
    pytest.param(extension(0, server_name_data(b"x.example", list_length=40)), id="server_name list oversized"),
    pytest.param(extension(0, server_name_data(b"x.example", list_length=5)), id="server_name list undersized"),
    pytest.param(extension(0, b"\x00\x0c\x00\x00\x20x.example"), id="host_name length lies"),
    pytest.param(extension(16, b""), id="zero-length alpn"),
    pytest.param(extension(16, b"\x00\x00"), id="empty alpn list"),
    pytest.param(extension(16, b"\x00\x03\x00\x01h"), id="empty protocol name"),
    pytest.param(extension(16, b"\x00\x03\x05h2"), id="protocol name length lies"),
    pytest.param(extension(43, b""), id="zero-length supported_versions"),
    pytest.param(extension(43, b"\x03\x03\x04\x03"), id="odd supported_versions"),
    pytest.param(extension(43, b"\x04\x03\x04"), id="supported_versions list oversized"),
])
def test_inner_lengths_that_lie(ext: bytes) -> None:
    assert parse_tls_client_hello(client_hello_record(ext)).status == MALFORMED


def test_oversized_extension() -> None:
    body = client_hello_body([extension(0, server_name_data(b"o.example"), length=500)])
    assert parse_tls_client_hello(tls_record(handshake_message(body))).status == MALFORMED


def test_truncated_extension_header() -> None:
    body = client_hello_body([extension(0, server_name_data(b"t.example")), b"\x00\x10\x00"])
    assert parse_tls_client_hello(tls_record(handshake_message(body))).status == MALFORMED


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_extensions_block_length_lies(delta: int) -> None:
    exts = [extension(0, server_name_data(b"b.example"))]
    body = client_hello_body(exts, extensions_length=len(exts[0]) + delta)
    assert parse_tls_client_hello(tls_record(handshake_message(body))).status == MALFORMED


@pytest.mark.parametrize("kwargs", [
    pytest.param({"session_id": bytes(33)}, id="session_id > 32"),
    pytest.param({"cipher_suites": b"\x13\x01\x13"}, id="odd cipher_suites"),
    pytest.param({"cipher_suites": b""}, id="no cipher_suites"),
    pytest.param({"compression": b""}, id="no compression methods"),
])
def test_fixed_fields_that_lie(kwargs: dict) -> None:
    body = client_hello_body([extension(0, server_name_data(b"f.example"))], **kwargs)
    assert parse_tls_client_hello(tls_record(handshake_message(body))).status == MALFORMED


def test_handshake_length_shorter_than_the_body() -> None:
    body = client_hello_body([extension(0, server_name_data(b"short.example"))])
    data = tls_record(handshake_message(body, length=len(body) - 3))
    ch = parse_tls_client_hello(data)
    assert ch.status == MALFORMED and ch.end == len(data) - 3


def test_handshake_length_beyond_any_client_hello() -> None:
    data = tls_record(handshake_message(b"", length=0xFFFFFF) + bytes(100))
    assert parse_tls_client_hello(data).status == MALFORMED
    assert parse_tls_client_hello(data, reassemble_records=True).status == MALFORMED


def test_handshake_length_beyond_the_record_and_data() -> None:
    body = client_hello_body([extension(0, server_name_data(b"long.example"))])
    data = tls_record(handshake_message(body, length=len(body) + 50))
    assert parse_tls_client_hello(data).status == FRAGMENTED
    assert parse_tls_client_hello(data, reassemble_records=True).status == NEED_MORE


def test_record_length_lies() -> None:
    hello = python_ssl_client_hello("record.example")
    assert parse_tls_client_hello(hello[:3] + b"\x48\x01" + hello[5:]).status == MALFORMED  # > 2^14 + 2048
    assert parse_tls_client_hello(hello[:3] + b"\x00\x00" + hello[5:]).status == NOT_THIS  # empty handshake record
    longer = hello[:3] + (len(hello) - 5 + 10).to_bytes(2, "big") + hello[5:]
    assert parse_tls_client_hello(longer).status == NEED_MORE


def test_client_hello_shorter_than_its_fixed_fields() -> None:
    assert parse_tls_client_hello(tls_record(handshake_message(bytes(20)))).status == MALFORMED


@pytest.mark.parametrize("data", [
    pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
    pytest.param(tls_record(handshake_message(bytes(50), msg_type=0x02)), id="server hello"),
    pytest.param(b"\x16\x02\x00\x00\x10\x01", id="record version 2"),
    pytest.param(b"\x80\x2e\x01\x00\x02", id="sslv2 client hello"),
    pytest.param(b"\x17\x03\x03\x00\x10" + bytes(16), id="application data"),
])
def test_not_a_client_hello(data: bytes) -> None:
    assert parse_tls_client_hello(data).status == NOT_THIS


def test_empty_input_is_a_prefix() -> None:
    ch = parse_tls_client_hello(b"")
    assert ch.status == NEED_MORE and ch.end == 0


# --- bare handshake messages (QUIC CRYPTO frames) ---------------------------------------------------------------

def test_handshake_message_from_aioquic() -> None:
    msg = aioquic_client_hello("quic.example", alpn=["h3"])
    ch = parse_handshake_client_hello(msg)
    assert ch.status == OK
    assert ch.sni == ("quic.example",) and ch.alpn == ("h3",) and ch.supported_versions == (TLS13,)
    assert 0x39 in ch.extensions  # quic_transport_parameters
    assert ch.record_count == 0 and ch.record_length == 0 and ch.record_version == 0
    assert ch.end == len(msg) and ch.handshake_length == len(msg) - 4


def test_handshake_message_prefixes_and_type() -> None:
    msg = handshake_bytes(python_ssl_client_hello("hs.example"))
    assert parse_handshake_client_hello(msg).sni == ("hs.example",)
    for k in range(len(msg)):
        assert parse_handshake_client_hello(msg[:k]).status == NEED_MORE, k
    assert parse_handshake_client_hello(b"\x02" + msg[1:]).status == NOT_THIS
    assert parse_handshake_client_hello(b"\x01\xff\xff\xff").status == MALFORMED
    ch = parse_handshake_client_hello(msg + b"\x00" * 30)  # CRYPTO data followed by padding
    assert ch.status == OK and ch.end == len(msg)


def test_repr_is_useful() -> None:
    text = repr(parse_tls_client_hello(python_ssl_client_hello("repr.example")))
    assert "status=OK" in text and "repr.example" in text
