"""HTTP Host (G-1, H-1) and DNS question (GD-1) extraction, on requests from curl and queries from dnslib."""
from __future__ import annotations

import re
import shutil
import struct

import dnslib
import pytest

from dpi._extract import MALFORMED, NEED_MORE, NOT_THIS, OK, parse_dns, parse_http_request
from tests.realstack import curl_http_request, dnslib_query

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


# --- HTTP -------------------------------------------------------------------------------------------------------

@needs_curl
def test_curl_request_G_1() -> None:
    data = curl_http_request("blocked.example", "/path?q=1")
    sent_port = int(re.search(rb"\r\nHost: blocked\.example:(\d+)\r\n", data).group(1))
    req = parse_http_request(data)
    assert req.status == OK
    assert (req.method, req.path, req.version) == ("GET", "/path?q=1", "HTTP/1.1")
    assert req.host == "blocked.example" and req.port == sent_port
    assert req.headers_complete


@needs_curl
def test_curl_request_with_explicit_host() -> None:
    req = parse_http_request(curl_http_request("ignored.example", headers=("Host: Other.Example",)))
    assert req.host == "Other.Example" and req.port is None


@needs_curl
def test_curl_request_split_anywhere() -> None:
    # G-1 reassembles segments, H-1 does not: the extractor must say NEED_MORE until the Host line is whole.
    data = curl_http_request("split.example")
    host_line_end = data.index(b"\r\n", data.index(b"Host:")) + 1
    for k in range(len(data)):
        req = parse_http_request(data[:k])
        assert req.status == (OK if k > host_line_end else NEED_MORE), (k, req)
        if req.status == NEED_MORE:
            assert req.host is None


@pytest.mark.parametrize("line,host,port", [
    (b"host: lower.example", "lower.example", None),
    (b"HOST: UPPER.example", "UPPER.example", None),
    (b"Host:\t  spaced.example \t", "spaced.example", None),
    (b"Host:nospace.example", "nospace.example", None),
    (b"Host : before-colon.example", "before-colon.example", None),
    (b"Host: ported.example:8080", "ported.example", 8080),
    (b"Host: empty-port.example:", "empty-port.example", None),
    (b"Host: [::1]:8080", "[::1]", 8080),
    (b"Host: [2001:db8::1]", "[2001:db8::1]", None),
    (b"Host: 192.0.2.1:81", "192.0.2.1", 81),
    (b"Host: trailing.dot.", "trailing.dot.", None),
    (b"Host: ", "", None),
])
def test_host_header_forms(line: bytes, host: str, port: int | None) -> None:
    req = parse_http_request(b"GET / HTTP/1.1\r\n" + line + b"\r\nAccept: */*\r\n\r\n")
    assert (req.status, req.host, req.port) == (OK, host, port)


def test_host_before_end_of_headers_is_enough() -> None:
    req = parse_http_request(b"POST /upload HTTP/1.1\r\nHost: early.example\r\nContent-Le")
    assert req.status == OK and req.host == "early.example" and not req.headers_complete


def test_first_host_header_wins() -> None:
    req = parse_http_request(b"GET / HTTP/1.1\r\nHost: first.example\r\nHost: second.example\r\n\r\n")
    assert req.host == "first.example"


def test_x_host_is_not_host() -> None:
    req = parse_http_request(b"GET / HTTP/1.1\r\nX-Host: decoy.example\r\nHosts: no.example\r\n\r\n")
    assert req.status == OK and req.host is None and req.headers_complete


def test_no_host_header() -> None:
    assert parse_http_request(b"GET / HTTP/1.0\r\nAccept: */*\r\n").status == NEED_MORE
    req = parse_http_request(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert req.status == OK and req.host is None and req.headers_complete and req.version == "HTTP/1.0"


def test_bare_lf_line_ends() -> None:
    req = parse_http_request(b"GET /x HTTP/1.1\nHost: lf.example\n\n")
    assert (req.status, req.path, req.host, req.headers_complete) == (OK, "/x", "lf.example", True)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "CONNECT", "PATCH", "TRACE"])
def test_every_method(method: str) -> None:
    target = "tunnel.example:443" if method == "CONNECT" else "/"
    req = parse_http_request(f"{method} {target} HTTP/1.1\r\nHost: m.example\r\n\r\n".encode())
    assert (req.status, req.method, req.path) == (OK, method, target)


@pytest.mark.parametrize("data", [b"", b"G", b"GE", b"GET", b"POST", b"OPTIO", b"GET /", b"GET / HTTP/1.1\r"])
def test_prefixes_need_more(data: bytes) -> None:
    assert parse_http_request(data).status == NEED_MORE


@pytest.mark.parametrize("data", [b"get / HTTP/1.1\r\n", b"GETX / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00\x01",
                                  b"SSH-2.0-OpenSSH_9.2\r\n", b"GET\t/ HTTP/1.1\r\n", b"FOO / HTTP/1.1\r\n"])
def test_not_http(data: bytes) -> None:
    assert parse_http_request(data).status == NOT_THIS


@pytest.mark.parametrize("data", [
    b"GET / FTP/1.0\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET \x00\x01\x02\xff\xfe",
    b"GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.example:70000\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.example:123456\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
])
def test_malformed_http(data: bytes) -> None:
    assert parse_http_request(data).status == MALFORMED


def test_malformed_port_keeps_the_host() -> None:
    req = parse_http_request(b"GET / HTTP/1.1\r\nHost: kept.example:bad\r\n\r\n")
    assert req.status == MALFORMED and req.host == "kept.example"


# --- DNS --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,qtype", [("www.example.com", "A"), ("WwW.ExAmPlE.CoM", "AAAA"),
                                        ("_dmarc.example.org", "TXT"), ("a.b.c.d.e.f.example", "HTTPS")])
def test_dnslib_queries(name: str, qtype: str) -> None:
    data = dnslib_query(name, qtype, query_id=0xBEEF)
    msg = parse_dns(data)
    assert msg.status == OK
    assert msg.qname == name  # case as sent
    assert msg.qtype == getattr(dnslib.QTYPE, qtype) and msg.qclass == 1
    assert msg.id == 0xBEEF and not msg.is_response and msg.opcode == 0 and msg.qdcount == 1
    assert msg.flags & 0x0100  # RD
    assert msg.question_end == len(data)


def test_dnslib_response_first_question() -> None:
    query = dnslib.DNSRecord.parse(dnslib_query("poisoned.example"))
    reply = query.reply()
    reply.add_answer(dnslib.RR("poisoned.example", rdata=dnslib.A("198.51.100.7")))
    data = reply.pack()
    msg = parse_dns(data)
    assert msg.status == OK and msg.is_response and msg.qname == "poisoned.example"
    assert msg.question_end == 12 + len(b"\x08poisoned\x07example\x00") + 4 < len(data)


def test_root_query() -> None:
    msg = parse_dns(dnslib_query(".", "NS"))
    assert msg.status == OK and msg.qname == "" and msg.qtype == 2


def test_tcp_framing() -> None:
    data = dnslib_query("tcp.example", "A", tcp=True)
    assert struct.unpack("!H", data[:2])[0] == len(data) - 2
    msg = parse_dns(data, tcp=True)
    assert msg.status == OK and msg.qname == "tcp.example" and msg.question_end == len(data) - 2
    for k in range(len(data)):
        assert parse_dns(data[:k], tcp=True).status == NEED_MORE, k
    # A second pipelined query after the first does not disturb it.
    assert parse_dns(data + dnslib_query("next.example", tcp=True), tcp=True).qname == "tcp.example"
    assert parse_dns(b"\x00\x05" + bytes(5), tcp=True).status == MALFORMED  # shorter than a header


def test_udp_truncation_is_malformed() -> None:
    data = dnslib_query("cut.example")
    for k in range(len(data)):
        assert parse_dns(data[:k]).status == MALFORMED, k


HEADER = struct.pack("!6H", 0x4242, 0x0100, 1, 0, 0, 0)


def test_compression_pointer_followed() -> None:
    # The question's name continues at offset 22 (after its own qtype/qclass): legal to follow, if unusual.
    data = HEADER + b"\x03www\xc0\x16" + b"\x00\x01\x00\x01" + b"\x07example\x03com\x00"
    msg = parse_dns(data)
    assert (msg.status, msg.qname, msg.question_end) == (OK, "www.example.com", 22)


@pytest.mark.parametrize("name", [
    pytest.param(b"\xc0\x0c", id="points at itself"),
    pytest.param(b"\x03www\xc0\x12\xc0\x0c", id="two-pointer loop"),
    pytest.param(b"\xc0\x02", id="points into the header"),
    pytest.param(b"\xc0\xff", id="points past the end"),
    pytest.param(b"\xc0", id="truncated pointer"),
])
def test_compression_loops_and_bad_pointers(name: bytes) -> None:
    assert parse_dns(HEADER + name + b"\x00\x01\x00\x01").status == MALFORMED


@pytest.mark.parametrize("name", [
    pytest.param(b"\x07exa.ple\x03com\x00", id="dot inside a label"),
    pytest.param(b"\x07exa ple\x03com\x00", id="space"),
    pytest.param(b"\x07exa\x00ple\x03com\x00", id="nul byte"),
    pytest.param(b"\x07exa\xffple\x03com\x00", id="high byte"),
    pytest.param(b"\x47example\x00", id="extended label type 0x40"),
    pytest.param(b"\x87example\x00", id="extended label type 0x80"),
    pytest.param(b"\x20example\x00", id="label longer than the message"),
    pytest.param(b"\x07example", id="missing root label"),
    pytest.param((b"\x3f" + b"a" * 63) * 4 + b"\x00", id="name over 255 bytes"),
])
def test_bad_labels(name: bytes) -> None:
    assert parse_dns(HEADER + name + b"\x00\x01\x00\x01").status == MALFORMED


def test_longest_legal_name() -> None:
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00"  # 255 bytes on the wire
    msg = parse_dns(HEADER + name + b"\x00\x01\x00\x01")
    assert msg.status == OK and len(msg.qname) == 253


def test_question_without_type_and_class() -> None:
    assert parse_dns(HEADER + b"\x07example\x00\x00\x01").status == MALFORMED


def test_no_question() -> None:
    msg = parse_dns(struct.pack("!6H", 7, 0x8180, 0, 0, 0, 0))
    assert msg.status == MALFORMED and msg.id == 7 and msg.is_response


def test_opcode_and_flags() -> None:
    data = struct.pack("!6H", 1, 0x2800, 1, 0, 0, 0) + b"\x04zone\x00\x00\x06\x00\x01"  # UPDATE
    msg = parse_dns(data)
    assert msg.status == OK and msg.opcode == 5 and msg.flags == 0x2800 and msg.qname == "zone"
