"""QUIC Initial decryption: the ClientHello a censor can read from a client's first flight.

Why a censor can read it at all: Initial packets are encrypted with keys derived only from public data, the
client's Destination Connection ID and a per-version salt (RFC 9001 section 5.2; RFC 9369 for QUIC v2). The
GFW does exactly this and reads the SNI (GQ-1); the TSPU never decrypts and only looks at the header (T22-4).

This parser is deliberately *capable*: it reads everything a correct QUIC client may send (coalesced packets,
1-4 byte packet numbers, zero-length connection IDs, tokens, CRYPTO frames split, reordered, overlapping or
spread over several Initials, PING/ACK/PADDING between them, version 1, version 2 and draft-29). A limited
censor is reproduced by the *profile*, not by a weaker parser: `InitialInfo` reports the structure (version,
packets, packet-number length, frame sequence, interleaving) so that a profile can decide what the GFW's parser
would have understood (GQ-3, GQ-E) and the TSPU's header-only rule can still see the version (T22-4).

Long headers are parsed here rather than with `dpi._extract.parse_quic_long_header`: decryption needs the exact
offsets of every field (token, Length, packet number) and walks coalesced packets, and the code is small.
The ClientHello itself is read by `dpi._extract.parse_handshake_client_hello` (shared with TLS over TCP).

Nothing in this module raises on bad datagram bytes: every outcome is a status string in `InitialInfo`.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

# --- statuses ---------------------------------------------------------------------------------------------------
OK = "ok"
NOT_QUIC = "not-quic"  # no long header (short header, random bytes, empty) or a malformed invariant header
NOT_INITIAL = "not-initial"  # QUIC, but no Initial packet (version negotiation, Handshake, 0-RTT, Retry)
UNSUPPORTED_VERSION = "unsupported-version"  # long header of a version whose Initial keys we do not know
TRUNCATED = "truncated"  # the datagram ends before the Initial does (or is too short for header protection)
DECRYPT_FAILED = "decrypt-failed"  # AEAD authentication failed: wrong keys, or bytes changed in flight
NO_CRYPTO = "no-crypto"  # decrypted, but no CRYPTO frame (e.g. PING/PADDING-only Initials)
INCOMPLETE = "incomplete"  # decrypted, but the first handshake message is not complete yet

# --- versions -----------------------------------------------------------------------------------------------------
VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF  # RFC 9369
VERSION_DRAFT_29 = 0xFF00001D  # the draft that evaded TSPU's QUIC rule first (T22-4)

MAX_CRYPTO_BYTES = 65536  # CRYPTO stream bytes kept per flight: hostile offsets cannot grow memory past this
MAX_FRAMES = 256  # entries kept in InitialInfo.frames per flight
KEY_CACHE_SIZE = 256  # (version, dcid) pairs whose derived keys are kept
MAX_CID_LENGTH = 20  # RFC 9000 17.2: longer connection IDs are invalid in v1 (and v2, draft-29)
_MAX_VARINT = (1 << 62) - 1


class _VersionParams(NamedTuple):
    salt: bytes
    label_prefix: bytes  # "quic " in v1/draft-29, "quicv2 " in v2 (RFC 9369 section 3.3.2)
    initial_type: int  # long-header packet type bits of an Initial (RFC 9369 section 3.2 changed them)
    retry_type: int  # Retry packets carry no Length field, so a coalesced walk must stop at one


_VERSIONS: dict[int, _VersionParams] = {
    VERSION_1: _VersionParams(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic ", 0b00, 0b11),
    VERSION_2: _VersionParams(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 ", 0b01, 0b00),
    VERSION_DRAFT_29: _VersionParams(bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"), b"quic ", 0b00, 0b11),
}
SUPPORTED_VERSIONS: tuple[int, ...] = tuple(_VERSIONS)

# Frame types by RFC 9000 section 19 (and RFC 9221 DATAGRAM), so that an unexpected frame is reported by name.
_FRAME_NAMES: dict[int, str] = {
    0x00: "PADDING", 0x01: "PING", 0x02: "ACK", 0x03: "ACK", 0x04: "RESET_STREAM", 0x05: "STOP_SENDING",
    0x06: "CRYPTO", 0x07: "NEW_TOKEN", 0x10: "MAX_DATA", 0x11: "MAX_STREAM_DATA", 0x12: "MAX_STREAMS",
    0x13: "MAX_STREAMS", 0x14: "DATA_BLOCKED", 0x15: "STREAM_DATA_BLOCKED", 0x16: "STREAMS_BLOCKED",
    0x17: "STREAMS_BLOCKED", 0x18: "NEW_CONNECTION_ID", 0x19: "RETIRE_CONNECTION_ID", 0x1A: "PATH_CHALLENGE",
    0x1B: "PATH_RESPONSE", 0x1C: "CONNECTION_CLOSE", 0x1D: "CONNECTION_CLOSE", 0x1E: "HANDSHAKE_DONE",
    0x30: "DATAGRAM", 0x31: "DATAGRAM",
}
_FRAME_NAMES.update({t: "STREAM" for t in range(0x08, 0x10)})
_NON_ZERO = re.compile(rb"[^\x00]")


@dataclass(slots=True)
class InitialInfo:
    """What the client's Initial packets revealed, and how they were shaped (GQ-1, GQ-3, T22-4).

    `interleaved` is judged per packet: a ClientHello spread over several Initials is reported by `packets`
    and `crypto_frames`, not as interleaving (GQ-3 lists the two as separate parser failures).
    """

    status: str  # one of the status constants above
    version: int = 0  # from the first long header, even when nothing decrypted (T22-4 needs no decryption)
    dcid: bytes = b""  # the client's original DCID (the one the keys come from)
    scid: bytes = b""
    packets: int = 0  # Initial packets decrypted (coalesced in this datagram, or fed so far to an assembler)
    pn_length: int = 0  # packet number length of the first decrypted Initial (1..4; GQ-3 accepts 1)
    frames: tuple[str, ...] = ()  # frame types in order, a run of PADDING bytes as one "PADDING"
    crypto_frames: int = 0
    interleaved: bool = False  # within a packet, a non-CRYPTO frame precedes its last CRYPTO frame (GQ-3)
    crypto: bytes = b""  # CRYPTO stream bytes contiguous from offset 0
    client_hello_complete: bool = False  # `crypto` starts with a whole ClientHello (type 1 + 24-bit length)
    sni: tuple[str, ...] = ()  # filled when the ClientHello is complete
    alpn: tuple[str, ...] = ()


# --- key schedule (RFC 9001 section 5, RFC 8446 section 7.1) -----------------------------------------------------
def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"  # empty context
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def initial_secrets(dcid: bytes, version: int) -> tuple[bytes, bytes, bytes]:
    """The client's Initial (key, iv, hp) for a Destination Connection ID; ValueError for unknown versions."""
    params = _VERSIONS.get(version)
    if params is None:
        raise ValueError(f"no Initial salt known for QUIC version 0x{version:08x}")
    extract = hmac.HMAC(params.salt, hashes.SHA256())
    extract.update(bytes(dcid))
    client_secret = _hkdf_expand_label(extract.finalize(), b"client in", 32)
    prefix = params.label_prefix
    return (
        _hkdf_expand_label(client_secret, prefix + b"key", 16),
        _hkdf_expand_label(client_secret, prefix + b"iv", 12),
        _hkdf_expand_label(client_secret, prefix + b"hp", 16),
    )


class _InitialKeys(NamedTuple):
    aead: AESGCM
    iv: int
    hp: Cipher[modes.ECB]


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _initial_keys(version: int, dcid: bytes) -> _InitialKeys:
    """Derived keys, cached: retransmissions and multi-datagram flights reuse one DCID (HKDF costs ~5 HMACs)."""
    key, iv, hp = initial_secrets(dcid, version)
    return _InitialKeys(AESGCM(key), int.from_bytes(iv, "big"), Cipher(algorithms.AES(hp), modes.ECB()))


# --- byte readers -------------------------------------------------------------------------------------------------
class _Short(Exception):
    """Internal: a field runs past the end of its buffer."""


_VARINT_MASK = {1: 0x3F, 2: 0x3FFF, 4: 0x3FFFFFFF, 8: _MAX_VARINT}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    if i >= len(buf):
        raise _Short
    n = 1 << (buf[i] >> 6)
    if i + n > len(buf):
        raise _Short
    return int.from_bytes(buf[i : i + n], "big") & _VARINT_MASK[n], i + n


# --- CRYPTO stream ------------------------------------------------------------------------------------------------
class _CryptoStream:
    """CRYPTO bytes by offset. The first byte received for an offset wins, so overlapping retransmissions
    with different contents give one deterministic stream; offsets past MAX_CRYPTO_BYTES are dropped."""

    __slots__ = ("_data", "_have")

    def __init__(self) -> None:
        self._data = bytearray()
        self._have = bytearray()  # 1 where _data holds a received byte

    def add(self, offset: int, chunk: bytes) -> None:
        end = min(offset + len(chunk), MAX_CRYPTO_BYTES)
        if offset >= end:
            return
        if end > len(self._have):
            grow = end - len(self._have)
            self._data.extend(bytes(grow))
            self._have.extend(bytes(grow))
        have = self._have
        i = offset
        while i < end:
            hole = have.find(0, i, end)
            if hole < 0:
                break
            filled = have.find(1, hole, end)
            if filled < 0:
                filled = end
            self._data[hole:filled] = chunk[hole - offset : filled - offset]
            have[hole:filled] = b"\x01" * (filled - hole)
            i = filled

    def contiguous(self) -> bytes:
        n = self._have.find(0)
        return bytes(self._data[: len(self._have) if n < 0 else n])


# --- one flight: the decrypted Initials of a datagram or of a flow ------------------------------------------------
class _Flight:
    __slots__ = (
        "version", "dcid", "scid", "packets", "pn_length", "largest_pn", "frames", "crypto_frames",
        "interleaved", "stream", "hello",
    )

    def __init__(self) -> None:
        self.version = 0
        self.dcid = b""  # the DCID the keys come from: the client's first Initial (RFC 9001 section 5.2)
        self.scid = b""
        self.packets = 0
        self.pn_length = 0
        self.largest_pn = -1
        self.frames: list[str] = []
        self.crypto_frames = 0
        self.interleaved = False
        self.stream = _CryptoStream()
        self.hello: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (sni, alpn) once parsed

    def info(self, failure: str | None) -> InitialInfo:
        if self.packets == 0:
            return InitialInfo(status=failure or NOT_INITIAL, version=self.version, dcid=self.dcid, scid=self.scid)
        crypto = self.stream.contiguous()
        complete = len(crypto) >= 4 and len(crypto) >= 4 + int.from_bytes(crypto[1:4], "big")
        if self.crypto_frames == 0:
            status = NO_CRYPTO
        elif complete:
            status = OK
        else:
            status = INCOMPLETE
        is_hello = complete and crypto[0] == 1
        sni: tuple[str, ...] = ()
        alpn: tuple[str, ...] = ()
        if is_hello:
            if self.hello is None:
                self.hello = _read_client_hello(crypto[: 4 + int.from_bytes(crypto[1:4], "big")])
            sni, alpn = self.hello
        return InitialInfo(
            status=status, version=self.version, dcid=self.dcid, scid=self.scid, packets=self.packets,
            pn_length=self.pn_length, frames=tuple(self.frames), crypto_frames=self.crypto_frames,
            interleaved=self.interleaved, crypto=crypto, client_hello_complete=is_hello, sni=sni, alpn=alpn,
        )


_hello_parser: Callable[[bytes], object] | None = None


def _read_client_hello(msg: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SNI and ALPN of a whole ClientHello handshake message, via the shared extractor (imported lazily so
    this module loads before the Cython extension is built; a missing extension reads nothing)."""
    global _hello_parser
    if _hello_parser is None:
        try:
            from dpi._extract import parse_handshake_client_hello
        except ImportError:
            return (), ()
        _hello_parser = parse_handshake_client_hello
    # Names are kept even when the extractor flags the message MALFORMED (e.g. two server names): it reports
    # what a censor could match on, and the profile decides.
    hello = _hello_parser(msg)
    return tuple(getattr(hello, "sni", ())), tuple(getattr(hello, "alpn", ()))


def _read_frames(plain: bytes, flight: _Flight) -> None:
    """Walk one packet's frames; a frame that is malformed or not allowed in an Initial ends the walk
    (RFC 9000 section 12.4: only PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE may appear)."""
    names: list[str] = []
    i, n = 0, len(plain)
    try:
        while i < n:
            ftype, j = _varint(plain, i)
            if ftype == 0x00:
                run = _NON_ZERO.search(plain, j)
                i = n if run is None else run.start()
                if not names or names[-1] != "PADDING":
                    names.append("PADDING")
                continue
            if ftype == 0x01:
                i = j
            elif ftype in (0x02, 0x03):
                _, j = _varint(plain, j)  # largest acknowledged
                _, j = _varint(plain, j)  # ack delay
                ranges, j = _varint(plain, j)
                _, j = _varint(plain, j)  # first range
                for _ in range(ranges):  # each range takes >= 2 bytes, so _Short bounds this loop
                    _, j = _varint(plain, j)
                    _, j = _varint(plain, j)
                if ftype == 0x03:
                    for _ in range(3):  # ECN counts
                        _, j = _varint(plain, j)
                i = j
            elif ftype == 0x06:
                offset, j = _varint(plain, j)
                length, j = _varint(plain, j)
                if j + length > n or offset + length > _MAX_VARINT:
                    break
                flight.stream.add(offset, plain[j : j + length])
                flight.crypto_frames += 1
                i = j + length
            elif ftype == 0x1C:
                _, j = _varint(plain, j)  # error code
                _, j = _varint(plain, j)  # frame type
                reason, j = _varint(plain, j)
                if j + reason > n:
                    break
                i = j + reason
            else:
                names.append(_FRAME_NAMES.get(ftype, f"0x{ftype:x}"))
                break
            names.append(_FRAME_NAMES[ftype])
    except _Short:
        pass
    if "CRYPTO" in names:
        last = len(names) - 1 - names[::-1].index("CRYPTO")
        if any(name != "CRYPTO" for name in names[:last]):
            flight.interleaved = True  # GQ-3: CRYPTO mixed with PING/PADDING/ACK
    room = MAX_FRAMES - len(flight.frames)
    if room > 0:
        flight.frames.extend(names[:room])


def _decode_pn(truncated: int, pn_length: int, expected: int) -> int:
    """RFC 9000 appendix A.3: the full packet number closest to the one expected next."""
    win = 1 << (pn_length * 8)
    hwin = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def _feed_datagram(dg: bytes, flight: _Flight, locked: bool) -> str | None:
    """Decrypt the client Initials of one UDP payload into `flight`.

    `locked`: the flight already has its version and key DCID (a later datagram of the same flow), so
    Initials of another version are skipped and a changed DCID still uses the original keys.
    Returns the failure status when no packet of this datagram was decrypted, else None.
    """
    n = len(dg)
    if n == 0 or not dg[0] & 0x80:
        return NOT_QUIC  # short header or not QUIC: nothing a censor can decrypt
    off = 0
    first_dcid: bytes | None = None
    decrypted = 0
    failure: str | None = None
    while off < n and dg[off] & 0x80:
        try:
            b0 = dg[off]
            if off + 6 > n:
                raise _Short
            version = int.from_bytes(dg[off + 1 : off + 5], "big")
            p = off + 5
            dcid_len = dg[p]
            dcid = dg[p + 1 : p + 1 + dcid_len]
            p += 1 + dcid_len
            if p >= n:
                raise _Short
            scid_len = dg[p]
            scid = dg[p + 1 : p + 1 + scid_len]
            p += 1 + scid_len
            if p > n:
                raise _Short
            if version == 0:
                failure = failure or NOT_INITIAL  # version negotiation: only servers send it
                break
            if off == 0 and not flight.packets:
                # reported even when nothing decrypts: a header-only censor needs the version (T22-4)
                flight.version, flight.dcid, flight.scid = version, dcid, scid
            params = _VERSIONS.get(version)
            if params is None:
                failure = failure or UNSUPPORTED_VERSION
                break
            if dcid_len > MAX_CID_LENGTH or scid_len > MAX_CID_LENGTH:
                failure = failure or NOT_QUIC
                break
            if first_dcid is None:
                first_dcid = dcid
            ptype = (b0 >> 4) & 0b11
            if ptype == params.retry_type:
                failure = failure or NOT_INITIAL
                break
            is_initial = ptype == params.initial_type
            if is_initial:
                token_len, p = _varint(dg, p)
                p += token_len
            length, p = _varint(dg, p)
            end = p + length
            if end > n:
                raise _Short
            # RFC 9000 12.2: coalesced packets with another DCID are not this connection's
            if not is_initial or dcid != first_dcid or (locked and version != flight.version):
                off = end
                continue
            if length < 20:  # 4 bytes assumed packet number + 16-byte sample (RFC 9001 5.4.2)
                raise _Short
            plain = _decrypt(dg, off, p, end, flight, version, dcid, scid, locked)
            if plain is None:
                failure = failure or DECRYPT_FAILED
                break
            decrypted += 1
            locked = True
            _read_frames(plain, flight)
            off = end
        except _Short:
            failure = failure or TRUNCATED
            break
    if decrypted:
        return None
    return failure or NOT_INITIAL


def _decrypt(
    dg: bytes, off: int, pn_off: int, end: int, flight: _Flight, version: int, dcid: bytes, scid: bytes,
    locked: bool,
) -> bytes | None:
    """Remove header protection and AEAD-decrypt one Initial (RFC 9001 sections 5.3, 5.4); None on failure."""
    keys = _initial_keys(version, flight.dcid if locked else dcid)
    mask = keys.hp.encryptor().update(dg[pn_off + 4 : pn_off + 20])
    b0 = dg[off] ^ (mask[0] & 0x0F)
    pn_length = (b0 & 0x03) + 1
    pn_bytes = bytes(dg[pn_off + k] ^ mask[1 + k] for k in range(pn_length))
    pn = _decode_pn(int.from_bytes(pn_bytes, "big"), pn_length, flight.largest_pn + 1)
    header = bytes((b0,)) + dg[off + 1 : pn_off] + pn_bytes
    nonce = (keys.iv ^ pn).to_bytes(12, "big")
    try:
        plain = keys.aead.decrypt(nonce, dg[pn_off + pn_length : end], header)
    except InvalidTag:
        return None
    if not locked:
        flight.version, flight.dcid, flight.scid = version, dcid, scid
    if flight.packets == 0:
        flight.pn_length = pn_length
    flight.packets += 1
    flight.largest_pn = max(flight.largest_pn, pn)
    return plain


def parse_initial(datagram: bytes) -> InitialInfo:
    """Decrypt the client Initial packet(s) of one UDP payload, coalesced packets included; never raises.

    This is what a censor that inspects one datagram sees (GQ-1): a ClientHello split over datagrams
    gives status "incomplete" here; use `InitialAssembler` to read it as a careful server would.
    """
    flight = _Flight()
    failure = _feed_datagram(bytes(datagram), flight, locked=False)
    return flight.info(failure)


class InitialAssembler:
    """Joins CRYPTO data across several Initial datagrams of one flow (same client DCID).

    Keys come from the DCID of the first Initial that decrypts and stay in use even if the client later
    switches DCID (RFC 9001 section 5.2). Once a packet decrypted, `feed` reports the whole flight so far, and
    a later datagram that is not a decryptable Initial changes nothing. Memory is bounded by MAX_CRYPTO_BYTES
    and MAX_FRAMES whatever is fed.
    """

    __slots__ = ("_flight",)

    def __init__(self) -> None:
        self._flight = _Flight()

    def feed(self, datagram: bytes) -> InitialInfo:
        flight = self._flight
        failure = _feed_datagram(bytes(datagram), flight, locked=flight.packets > 0)
        return flight.info(None if flight.packets else failure)
