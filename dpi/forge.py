"""Packets the censor puts on the wire: forged TCP RSTs and forged DNS answers, as raw IP packets.

A censor is recognised by its forgeries (G-3: three GFW injectors; H-2: Henan), so every header field that the
measurements describe is under the control of an `Injector` fingerprint here, and nothing else varies. The
functions are pure (no I/O, randomness only from the `random.Random` passed in): the engine calls them, the
NFQUEUE layer sends the bytes with a raw socket, and tests and offline replay get the same packets for one seed.

IPv4 or IPv6 is chosen from the address type; IPv6 has no IP ID and no DF bit, and the TTL becomes the hop limit.
Every checksum is correct, because a real stack silently drops a forgery with a bad one.
"""
from __future__ import annotations

import ipaddress
import math
import random
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dpi.config import Injector

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

IPPROTO_TCP = 6
IPPROTO_UDP = 17

_IPV4_DF = 0x4000
_IPV4_MF = 0x2000
_IPV4_OFFSET_MASK = 0x1FFF

_DNS_TYPE_A = 1
_DNS_TYPE_AAAA = 28
_DNS_CLASS_IN = 1
_DNS_HEADER = struct.Struct("!HHHHHH")
_DNS_QR = 0x8000
_DNS_OPCODE_MASK = 0x7800
_DNS_RD = 0x0100
_DNS_RA = 0x0080

# IPv6 extension headers that may sit between the fixed header and UDP in a query (hop-by-hop, routing,
# destination options). A Fragment header (44) means a fragment: not a whole query, so no answer.
_IPV6_SKIPPABLE = frozenset({0, 43, 60})
_IPV6_MAX_EXTENSIONS = 8


# --------------------------------------------------------------------------------------------------------------
# IP / TCP / UDP building


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum (one's complement of the one's complement sum of 16-bit words)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_checksummed(header: bytes | bytearray) -> bytes:
    """An IPv4 header (options included) with its checksum field recomputed, whatever the field held."""
    h = bytes(header[:10]) + b"\x00\x00" + bytes(header[12:])
    return h[:10] + struct.pack("!H", checksum(h)) + h[12:]


def _addresses(src: str, dst: str) -> tuple[int, bytes, bytes]:
    """(IP version, packed source, packed destination); both ends must be of one family."""
    # inet_pton instead of ipaddress: this runs for every forged packet and is ~10x faster
    try:
        if ":" in src:
            return 6, socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
        return 4, socket.inet_pton(socket.AF_INET, src), socket.inet_pton(socket.AF_INET, dst)
    except OSError:
        ipaddress.ip_address(src), ipaddress.ip_address(dst)  # raises ValueError naming the bad address
        raise ValueError(f"mixed address families: {src} -> {dst}") from None


def _pseudo_header(version: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if version == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def _ip_packet(version: int, src: bytes, dst: bytes, proto: int, l4: bytes, *, ttl: int, ip_id: int,
               df: bool) -> bytes:
    """Wrap a finished transport segment in an IPv4 (no options) or IPv6 (no extension headers) header."""
    if not 0 <= ttl <= 255:
        raise ValueError(f"TTL out of range: {ttl}")
    if version == 6:
        if len(l4) > 0xFFFF:
            raise ValueError("payload too long for IPv6 without a jumbogram")
        return struct.pack("!IHBB", 6 << 28, len(l4), proto, ttl) + src + dst + l4
    if not 0 <= ip_id <= 0xFFFF:
        raise ValueError(f"IP ID out of range: {ip_id}")
    total = 20 + len(l4)
    if total > 0xFFFF:
        raise ValueError("packet too long for IPv4")
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ip_id, _IPV4_DF if df else 0, ttl, proto, 0, src, dst)
    return ipv4_checksummed(header) + l4


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")


def tcp_packet(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, *,
               ttl: int = 64, ip_id: int = 0, df: bool = False, window: int = 0, payload: bytes = b"") -> bytes:
    """One TCP segment with a 20-byte header (no options: none of the measured injectors sends any).

    `seq` and `ack` are taken modulo 2**32 so callers can do sequence arithmetic without wrapping by hand.
    `ip_id` and `df` are ignored for IPv6.
    """
    version, s, d = _addresses(src, dst)
    _check_port(sport)
    _check_port(dport)
    if not 0 <= window <= 0xFFFF:
        raise ValueError(f"window out of range: {window}")
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags & 0xFF,
                         window, 0, 0)
    segment = header + payload
    csum = checksum(_pseudo_header(version, s, d, IPPROTO_TCP, len(segment)) + segment)
    segment = segment[:16] + struct.pack("!H", csum) + segment[18:]
    return _ip_packet(version, s, d, IPPROTO_TCP, segment, ttl=ttl, ip_id=ip_id, df=df)


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = 64, ip_id: int = 0,
               df: bool = False) -> bytes:
    """One UDP datagram with its checksum always filled in (mandatory over IPv6, and harmless over IPv4)."""
    version, s, d = _addresses(src, dst)
    _check_port(sport)
    _check_port(dport)
    length = 8 + len(payload)
    if length > 0xFFFF:
        raise ValueError("UDP payload too long")
    datagram = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = checksum(_pseudo_header(version, s, d, IPPROTO_UDP, length) + datagram) or 0xFFFF
    datagram = datagram[:6] + struct.pack("!H", csum) + datagram[8:]
    return _ip_packet(version, s, d, IPPROTO_UDP, datagram, ttl=ttl, ip_id=ip_id, df=df)


# --------------------------------------------------------------------------------------------------------------
# Injector fingerprints (G-3, H-2)


def _parse_int(text: str) -> int:
    text = text.strip()
    return int(text, 16) if text[:2] in ("0x", "0X") else int(text, 10)


def draw_ip_id(spec: str, rng: random.Random) -> int:
    """Draw one IPv4 ID from an injector's rule: "random", "zero", a fixed "N" or an inclusive range "A-B".

    Numbers are decimal or 0x hex (G-3 type III: "0x9916-0x9933"). A malformed spec is a profile error and
    raises ValueError; the profile loader calls this once to validate.
    """
    text = spec.strip().lower()
    if text == "random":
        return rng.randrange(0x10000)
    if text == "zero":
        return 0
    try:
        if "-" in text:
            low_text, high_text = text.split("-", 1)
            low, high = _parse_int(low_text), _parse_int(high_text)
        else:
            low = high = _parse_int(text)
    except ValueError:
        raise ValueError(f"bad IP ID rule {spec!r}: expected random, zero, N or A-B") from None
    if not 0 <= low <= high <= 0xFFFF:
        raise ValueError(f"bad IP ID rule {spec!r}: values must satisfy 0 <= A <= B <= 65535")
    return low if low == high else rng.randint(low, high)


def draw_delay(injector: Injector, rng: random.Random) -> float:
    """Seconds between the trigger and the forged packets.

    Modelling choice: the measurements give only a range and, for the GFW, a mean (G-3: 11-445 ms, mean 18 ms),
    and the published latency histograms are sharply skewed towards the minimum. We model that as
    min + an exponential whose mean is (max - min) / 60, truncated at max. For G-3's range the mean is
    11 + 434/60 = 18.2 ms, i.e. the measured 18 ms; the truncation removes a mass of e**-60 and does not move
    it. A degenerate range (min >= max) is a fixed delay of exactly min. Sampling is by the inverse CDF of the
    truncated distribution, so one `rng.random()` per draw and never a value outside [min, max].
    """
    low, high = injector.delay
    if not low < high:
        return float(low)
    span = high - low
    mean = span / 60.0
    mass = -math.expm1(-span / mean)  # probability an untruncated draw stays below max
    value = low - mean * math.log1p(-rng.random() * mass)
    return min(max(value, low), high)


def _forge_rst(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, injector: Injector,
               rng: random.Random) -> bytes:
    """One forged RST per the fingerprint; TTL and IP ID are drawn once, so copies of it are byte-identical."""
    with_ack = injector.flags == "RA"
    low_ttl, high_ttl = injector.ttl
    return tcp_packet(src[0], dst[0], src[1], dst[1], seq, ack if with_ack else 0,
                      TCP_RST | (TCP_ACK if with_ack else 0), ttl=rng.randint(low_ttl, high_ttl),
                      ip_id=draw_ip_id(injector.ip_id, rng), df=injector.df, window=injector.window,
                      payload=injector.payload)


def forge_rsts(*, client: tuple[str, int], server: tuple[str, int], client_seq: int, server_seq: int,
               injector: Injector, to: str, rng: random.Random) -> list[tuple[float, bytes]]:
    """Forged RSTs that tear down one connection, as (delay seconds, raw IP packet) pairs.

    `client_seq` / `server_seq` are the next sequence numbers each side will send. A RST is accepted by a modern
    stack only when its sequence number is exactly the receiver's next expected one (RFC 5961), which is why the
    RST to the client spoofs the server with seq = server_seq, and vice versa. `to` is "client", "server" or
    "both" (client first). Each direction draws its own delay; the `injector.count` copies of one RST share it
    and are byte-identical (G-3 type II: three identical RST/ACKs).
    """
    if to not in ("client", "server", "both"):
        raise ValueError(f"bad RST direction {to!r}: expected client, server or both")
    if injector.flags not in ("R", "RA"):
        raise ValueError(f"bad injector flags {injector.flags!r}: expected R or RA")
    out: list[tuple[float, bytes]] = []
    if to in ("client", "both"):
        delay = draw_delay(injector, rng)
        packet = _forge_rst(server, client, server_seq, client_seq, injector, rng)
        out.extend((delay, packet) for _ in range(injector.count))
    if to in ("server", "both"):
        delay = draw_delay(injector, rng)
        packet = _forge_rst(client, server, client_seq, server_seq, injector, rng)
        out.extend((delay, packet) for _ in range(injector.count))
    return out


# --------------------------------------------------------------------------------------------------------------
# Forged DNS answers (GD-1, GD-2)


class AddressPool:
    """Forged-answer addresses (GD-2): one injector cycles through its pool in order, another draws at random."""

    def __init__(self, addresses: Sequence[str], order: str = "cycle", rng: random.Random | None = None) -> None:
        if order not in ("cycle", "random"):
            raise ValueError(f"bad pool order {order!r}: expected cycle or random")
        self._addresses = tuple(str(ipaddress.ip_address(a)) for a in addresses)
        if not self._addresses:
            raise ValueError("empty address pool")
        self._order = order
        self._rng = rng if rng is not None else random.Random()
        self._index = 0

    def __len__(self) -> int:
        return len(self._addresses)

    def next(self) -> str:
        """The address for the next forged answer."""
        if self._order == "random":
            return self._rng.choice(self._addresses)
        address = self._addresses[self._index]
        self._index = (self._index + 1) % len(self._addresses)
        return address


@dataclass(frozen=True, slots=True)
class _Query:
    """The few facts of a DNS query packet that a forged answer needs."""

    src: str
    dst: str
    sport: int
    dport: int
    dns_id: int
    rd: bool
    question: bytes  # QNAME + QTYPE + QCLASS exactly as sent (0x20 case randomisation included)
    qtype: int
    qclass: int


def _udp_of_ipv4(packet: bytes) -> tuple[str, str, bytes] | None:
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    frag = struct.unpack_from("!H", packet, 6)[0]
    if ihl < 20 or total < ihl or total > len(packet) or packet[9] != IPPROTO_UDP:
        return None
    if frag & (_IPV4_MF | _IPV4_OFFSET_MASK):
        return None  # a fragment is not a whole query
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return src, dst, packet[ihl:total]


def _udp_of_ipv6(packet: bytes) -> tuple[str, str, bytes] | None:
    if len(packet) < 40:
        return None
    payload_len = struct.unpack_from("!H", packet, 4)[0]
    end = 40 + payload_len
    if payload_len == 0 or end > len(packet):
        return None  # 0 would be a jumbogram
    next_header, offset = packet[6], 40
    for _ in range(_IPV6_MAX_EXTENSIONS):
        if next_header not in _IPV6_SKIPPABLE:
            break
        if offset + 8 > end:
            return None
        next_header, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
    if next_header != IPPROTO_UDP or offset > end:
        return None
    src = str(ipaddress.IPv6Address(packet[8:24]))
    dst = str(ipaddress.IPv6Address(packet[24:40]))
    return src, dst, packet[offset:end]


def _question_end(dns: bytes, offset: int) -> int | None:
    """Offset just past QNAME at `offset`, or None. A query's only name is uncompressed, so pointers are invalid."""
    name_length = 0
    while True:
        if offset >= len(dns):
            return None
        label = dns[offset]
        if label == 0:
            return offset + 1
        if label > 63:
            return None  # compression pointer or reserved label type
        name_length += label + 1
        if name_length > 255:
            return None
        offset += 1 + label


def _parse_query(packet: bytes) -> _Query | None:
    """Minimal, never-raising parse of an IP/UDP packet carrying a standard DNS query with one question."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        found = _udp_of_ipv4(packet)
    elif version == 6:
        found = _udp_of_ipv6(packet)
    else:
        return None
    if found is None:
        return None
    src, dst, udp = found
    if len(udp) < 8:
        return None
    sport, dport, udp_length = struct.unpack_from("!HHH", udp, 0)
    if udp_length < 8 + _DNS_HEADER.size or udp_length > len(udp):
        return None
    dns = udp[8:udp_length]
    dns_id, flags, qdcount, _an, _ns, _ar = _DNS_HEADER.unpack_from(dns, 0)
    if flags & (_DNS_QR | _DNS_OPCODE_MASK) or qdcount != 1:
        return None  # a response, a non-QUERY opcode, or not exactly one question
    name_end = _question_end(dns, _DNS_HEADER.size)
    if name_end is None or name_end + 4 > len(dns):
        return None
    qtype, qclass = struct.unpack_from("!HH", dns, name_end)
    return _Query(src=src, dst=dst, sport=sport, dport=dport, dns_id=dns_id, rd=bool(flags & _DNS_RD),
                  question=dns[_DNS_HEADER.size:name_end + 4], qtype=qtype, qclass=qclass)


def forge_dns_response(query_packet: bytes, *, a_pool: AddressPool | None, aaaa_pool: AddressPool | None,
                       ttl: int = 60, ip_ttl: int = 64, rng: random.Random | None = None) -> bytes | None:
    """A forged answer to one DNS query (GD-1, GD-2), as a raw IP packet from the resolver to the asker.

    Same DNS id, QR=1, AA=0, RD copied, RA=1, RCODE 0, the question copied verbatim, and one answer RR (name by
    pointer 0xC00C) of type A from `a_pool` or AAAA from `aaaa_pool`. Returns None for anything else: other
    qtypes or classes, a missing pool, or a packet that is not a well-formed single-question query; packet input
    never raises. A pool holding an address of the wrong family is a profile error and raises ValueError.
    The IP ID is drawn from `rng` when given (0 otherwise) so a seeded run forges the same bytes.
    """
    try:
        query = _parse_query(query_packet)
    except (struct.error, IndexError, ValueError):  # defence in depth: the parser checks bounds itself
        return None
    if query is None or query.qclass != _DNS_CLASS_IN:
        return None
    if query.qtype == _DNS_TYPE_A and a_pool is not None:
        address = ipaddress.ip_address(a_pool.next())
        if address.version != 4:
            raise ValueError(f"A pool holds a non-IPv4 address: {address}")
    elif query.qtype == _DNS_TYPE_AAAA and aaaa_pool is not None:
        address = ipaddress.ip_address(aaaa_pool.next())
        if address.version != 6:
            raise ValueError(f"AAAA pool holds a non-IPv6 address: {address}")
    else:
        return None
    flags = _DNS_QR | (_DNS_RD if query.rd else 0) | _DNS_RA
    answer = struct.pack("!HHHIH", 0xC00C, query.qtype, _DNS_CLASS_IN, ttl & 0xFFFFFFFF,
                         len(address.packed)) + address.packed
    dns = _DNS_HEADER.pack(query.dns_id, flags, 1, 1, 0, 0) + query.question + answer
    ip_id = rng.randrange(0x10000) if rng is not None else 0
    return udp_packet(query.dst, query.src, query.dport, query.sport, dns, ttl=ip_ttl, ip_id=ip_id)
