"""Traffic generator: captures whose first flights come from real protocol stacks.

The ClientHellos are written by Python's `ssl` (OpenSSL) through a MemoryBIO, QUIC Initials by aioquic, DNS
queries by dnslib; only the TCP/IP framing around them is built here, with correct sequence numbers. Used by the
demo capture, the classify benchmark and tests that need many flows.
"""
from __future__ import annotations

import functools
import random
import ssl
from dataclasses import dataclass, field

from dpi.forge import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, tcp_packet, udp_packet


@functools.lru_cache(maxsize=512)
def client_hello(server_name: str, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> bytes:
    """The TLS records of a real OpenSSL ClientHello for `server_name` (as Python's ssl module sends it)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    from dpi.strategies.tcpclient import client_hello as first_flight
    return first_flight(ctx, server_name)[3]


@functools.lru_cache(maxsize=512)
def quic_initial(server_name: str, version: int = 1) -> bytes:
    """The first datagram of a real aioquic client (a QUIC Initial carrying the ClientHello)."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    cfg = QuicConfiguration(is_client=True, server_name=server_name, alpn_protocols=["h3"])
    if version != 1:
        cfg.supported_versions = [version]
    conn = QuicConnection(configuration=cfg)
    conn.connect(("192.0.2.1", 443), now=0.0)
    return conn.datagrams_to_send(now=0.0)[0][0]


def dns_query(name: str, qtype: str = "A", qid: int = 0x1234) -> bytes:
    import dnslib

    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = qid
    return q.pack()


def http_request(host: str, path: str = "/") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n").encode()


@dataclass
class TcpConversation:
    """Builds the packets of one TCP connection with consistent sequence numbers."""

    client: str
    server: str
    cport: int
    sport: int
    ts: float = 0.0
    step: float = 0.0005
    cseq: int = 1000
    sseq: int = 500000
    packets: list[tuple[float, bytes]] = field(default_factory=list)

    def _add(self, pkt: bytes) -> None:
        self.packets.append((self.ts, pkt))
        self.ts += self.step

    def handshake(self) -> "TcpConversation":
        self._add(tcp_packet(self.client, self.server, self.cport, self.sport, self.cseq, 0, TCP_SYN, window=64240))
        self._add(tcp_packet(self.server, self.client, self.sport, self.cport, self.sseq, self.cseq + 1,
                             TCP_SYN | TCP_ACK, window=65160))
        self.cseq += 1
        self.sseq += 1
        self._add(tcp_packet(self.client, self.server, self.cport, self.sport, self.cseq, self.sseq, TCP_ACK,
                             window=502))
        return self

    def client_send(self, data: bytes, segment: int = 1448) -> "TcpConversation":
        for i in range(0, len(data), segment):
            chunk = data[i:i + segment]
            self._add(tcp_packet(self.client, self.server, self.cport, self.sport, self.cseq, self.sseq,
                                 TCP_ACK | TCP_PSH, window=502, payload=chunk))
            self.cseq += len(chunk)
        return self

    def server_send(self, data: bytes, segment: int = 1448) -> "TcpConversation":
        for i in range(0, len(data), segment):
            chunk = data[i:i + segment]
            self._add(tcp_packet(self.server, self.client, self.sport, self.cport, self.sseq, self.cseq,
                                 TCP_ACK | TCP_PSH, window=509, payload=chunk))
            self.sseq += len(chunk)
        return self

    def close(self) -> "TcpConversation":
        self._add(tcp_packet(self.client, self.server, self.cport, self.sport, self.cseq, self.sseq,
                             TCP_FIN | TCP_ACK, window=502))
        return self


def mixed_capture(flows: int, *, blocked: list[str], allowed: list[str], bulk_segments: int = 20,
                  seed: int = 1, client_net: str = "10.0.1.", server_net: str = "198.51.100.") -> list[tuple[float, bytes]]:
    """Many interleaved flows: TLS (with bulk download), HTTP, DNS and QUIC first flights, in time order."""
    rng = random.Random(seed)
    names = blocked + allowed
    out: list[tuple[float, bytes]] = []
    body = bytes(rng.getrandbits(8) for _ in range(1448)) * bulk_segments
    http_body = body[: 1448 * max(1, bulk_segments // 5)]
    for i in range(flows):
        client = f"{client_net}{2 + i % 200}"
        server = f"{server_net}{1 + (i * 7) % 250}"
        cport = 20000 + (i % 40000)
        start = i * 0.001
        name = names[rng.randrange(len(names))]
        kind = i % 4
        if kind in (0, 1):
            conv = TcpConversation(client, server, cport, 443, ts=start).handshake()
            conv.client_send(client_hello(name)).server_send(body).close()
            out += conv.packets
        elif kind == 2:
            conv = TcpConversation(client, server, cport, 80, ts=start).handshake()
            conv.client_send(http_request(name)).server_send(http_body).close()
            out += conv.packets
        else:
            if i % 8 == 3:
                out.append((start, udp_packet(client, "198.51.100.53", cport, 53, dns_query(name, "A", i & 0xFFFF))))
            else:
                out.append((start, udp_packet(client, server, cport, 443, quic_initial(name))))
    out.sort(key=lambda p: p[0])
    return out
