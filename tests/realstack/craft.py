"""Hand-built and re-framed TLS, for the edge cases no real client produces on its own.

Evasion tools re-frame a real ClientHello (record fragmentation, G-E; a record before it, T21-E) or pad it past
one packet; these helpers do the same to real bytes, and build ClientHellos whose every length can be made to lie.
"""
from __future__ import annotations

from collections.abc import Sequence

HANDSHAKE = 0x16
CHANGE_CIPHER_SPEC = 0x14
ALERT = 0x15
APPLICATION_DATA = 0x17


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def tls_record(payload: bytes, content_type: int = HANDSHAKE, version: int = 0x0301,
               length: int | None = None) -> bytes:
    """One TLS record; `length` overrides the length field (to make it lie)."""
    return bytes([content_type]) + u16(version) + u16(len(payload) if length is None else length) + payload


def handshake_bytes(first_flight: bytes) -> bytes:
    """The handshake-layer bytes of the leading handshake records of `first_flight` (record headers removed)."""
    out = b""
    pos = 0
    while len(first_flight) - pos >= 5 and first_flight[pos] == HANDSHAKE:
        length = int.from_bytes(first_flight[pos + 3:pos + 5], "big")
        out += first_flight[pos + 5:pos + 5 + length]
        pos += 5 + length
    return out


def split_tls_records(first_flight: bytes, sizes: Sequence[int], version: int = 0x0301) -> bytes:
    """Re-frame the handshake bytes into records carrying `sizes` bytes each; the last record takes the rest.

    Never emits an empty record (sizes beyond the payload are ignored).
    """
    payload = handshake_bytes(first_flight)
    out = b""
    pos = 0
    for size in sizes:
        if pos >= len(payload):
            break
        out += tls_record(payload[pos:pos + size], version=version)
        pos += size
    if pos < len(payload):
        out += tls_record(payload[pos:], version=version)
    return out


def handshake_message(body: bytes, msg_type: int = 0x01, length: int | None = None) -> bytes:
    return bytes([msg_type]) + (len(body) if length is None else length).to_bytes(3, "big") + body


def extension(ext_type: int, data: bytes, length: int | None = None) -> bytes:
    return u16(ext_type) + u16(len(data) if length is None else length) + data


def server_name_data(*names: bytes, list_length: int | None = None) -> bytes:
    """RFC 6066 ServerNameList with one host_name entry per name."""
    entries = b"".join(b"\x00" + u16(len(name)) + name for name in names)
    return u16(len(entries) if list_length is None else list_length) + entries


def alpn_data(*protocols: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return u16(len(entries)) + entries


def supported_versions_data(*versions: int) -> bytes:
    return bytes([2 * len(versions)]) + b"".join(u16(v) for v in versions)


def client_hello_body(extensions: Sequence[bytes] | None, *, legacy_version: int = 0x0303,
                      session_id: bytes = bytes(32), cipher_suites: bytes = bytes.fromhex("130113021303c02f"),
                      compression: bytes = b"\x00", extensions_length: int | None = None) -> bytes:
    """A ClientHello body; `extensions` are whole extensions (see `extension`), None for no extensions block."""
    body = (u16(legacy_version) + bytes(range(32)) + bytes([len(session_id)]) + session_id
            + u16(len(cipher_suites)) + cipher_suites + bytes([len(compression)]) + compression)
    if extensions is not None:
        block = b"".join(extensions)
        body += u16(len(block) if extensions_length is None else extensions_length) + block
    return body


def client_hello_record(*extensions: bytes) -> bytes:
    """A whole ClientHello in one handshake record, with the given extensions."""
    return tls_record(handshake_message(client_hello_body(list(extensions))))
