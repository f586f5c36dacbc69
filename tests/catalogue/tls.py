"""Real ClientHellos re-shaped: an extension inserted with every length fixed (padding past one packet, ESNI).

Python's ssl gives no control over OpenSSL's extensions, so the bytes OpenSSL wrote are taken apart at the
record, handshake and extensions-block lengths, the new extension is appended to the block, and the three lengths
are written again. Everything else (random, key shares, cipher suites, the SNI) stays OpenSSL's.
"""
from __future__ import annotations

EXT_PADDING = 21  # RFC 7685
EXT_ESNI = 0xFFCE  # draft-ietf-tls-esni encrypted_server_name (GE-1)
EXT_ECH = 0xFE0D  # encrypted_client_hello


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _extensions_offset(body: bytes) -> int:
    """Offset of the 2-byte extensions length inside a ClientHello body."""
    pos = 2 + 32  # legacy_version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")  # cipher suites
    pos += 1 + body[pos]  # compression methods
    return pos


def _split(first_flight: bytes) -> tuple[bytes, bytes, bytes]:
    """(ClientHello body up to the extensions block, the extensions block, bytes after the first record)."""
    if first_flight[0] != 0x16 or first_flight[5] != 0x01:
        raise ValueError("not a ClientHello record")
    record_len = int.from_bytes(first_flight[3:5], "big")
    record, rest = first_flight[5:5 + record_len], first_flight[5 + record_len:]
    if int.from_bytes(record[1:4], "big") + 4 != record_len:
        raise ValueError("the ClientHello does not fill its record")
    body = record[4:]
    ext_at = _extensions_offset(body)
    block_len = int.from_bytes(body[ext_at:ext_at + 2], "big")
    return body[:ext_at], body[ext_at + 2:ext_at + 2 + block_len], rest


def _extensions(block: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(block):
        ext_type, length = int.from_bytes(block[pos:pos + 2], "big"), int.from_bytes(block[pos + 2:pos + 4], "big")
        out.append((ext_type, block[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return out


def _join(first_flight: bytes, head: bytes, extensions: list[tuple[int, bytes]], rest: bytes) -> bytes:
    block = b"".join(_u16(t) + _u16(len(d)) + d for t, d in extensions)
    body = head + _u16(len(block)) + block
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    if len(handshake) > 1 << 14:
        raise ValueError("a TLS record holds at most 16384 bytes")
    return first_flight[:3] + _u16(len(handshake)) + handshake + rest


def extension_types(first_flight: bytes) -> list[int]:
    """The extension types of a ClientHello record, in order."""
    return [t for t, _ in _extensions(_split(first_flight)[1])]


def insert_extension(first_flight: bytes, ext_type: int, data: bytes) -> bytes:
    """`first_flight` (one TLS record holding a whole ClientHello) with one more extension at the end of the block.

    Anything after the first record (there is nothing for Python's ssl) is kept as it was.
    """
    head, block, rest = _split(first_flight)
    extensions = _extensions(block)
    if any(t == ext_type for t, _ in extensions):
        raise ValueError(f"extension {ext_type:#x} is already there")
    return _join(first_flight, head, extensions + [(ext_type, data)], rest)


def pad_client_hello(first_flight: bytes, total: int) -> bytes:
    """The ClientHello grown to `total` bytes on the wire (record header included) by padding (extension 21).

    OpenSSL adds a padding extension of its own to some ClientHellos; it is grown then (a second one would be a
    duplicate extension), else one is appended. Padding past one packet (T21-E, T22-E) is what OpenSSL itself
    cannot be told to do from Python.
    """
    head, block, rest = _split(first_flight)
    extensions = _extensions(block)
    grow = total - len(first_flight)
    for i, (ext_type, data) in enumerate(extensions):
        if ext_type == EXT_PADDING:
            extensions[i] = (ext_type, data + bytes(grow))
            break
    else:
        grow -= 4
        extensions.append((EXT_PADDING, bytes(grow)))
    if grow < 0:
        raise ValueError(f"the ClientHello is already {len(first_flight)} bytes")
    return _join(first_flight, head, extensions, rest)


def with_esni(first_flight: bytes) -> bytes:
    """A ClientHello carrying a draft-ESNI extension as Firefox sent it in 2020 (GE-1): cipher suite, an X25519
    key share, a record digest and an encrypted SNI; the contents are opaque to the censor, only the type counts."""
    key_share = _u16(0x001D) + _u16(32) + bytes(range(32))
    record_digest = bytes(range(100, 132))
    encrypted_sni = bytes((i * 7) & 0xFF for i in range(260))
    data = (_u16(0x1301) + _u16(len(key_share)) + key_share + _u16(len(record_digest)) + record_digest
            + _u16(len(encrypted_sni)) + encrypted_sni)
    return insert_extension(first_flight, EXT_ESNI, data)


def ccs_record() -> bytes:
    """A ChangeCipherSpec record (TLS 1.3 middlebox-compatibility style), to put in front of a ClientHello (T21-E)."""
    return b"\x14\x03\x03\x00\x01\x01"


def tls12_first_flights(server_name: str, certificate_name: str) -> tuple[bytes, bytes]:
    """(ClientHello, server's first flight) of a real TLS 1.2 handshake between Python's ssl client and server,
    run in memory; the server presents a self-signed certificate for `certificate_name` (TLS 1.2 sends it in the
    clear, so a censor could read it: T21-1 says the TSPU never did)."""
    import datetime
    import ssl
    import tempfile
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certificate_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(certificate_name)]), critical=False)
            .sign(key, hashes.SHA256()))
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert_path, key_path)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    hello = b""  # the client speaks first and fills it
    for side in (client, server):
        if side is server:
            s_in.write(hello)
        try:
            side.do_handshake()
        except ssl.SSLWantReadError:
            pass
        if side is client:
            hello = c_out.read()
    return hello, s_out.read()
