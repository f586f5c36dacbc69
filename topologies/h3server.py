"""The lab's HTTP/3 server (aioquic): QUIC version 1 on UDP 443 for every lab name.

    python h3server.py --cert server.pem --key server.key [--port 443] [--bind ADDR ...]

Same paths as the TCP web server: `/`, `/bytes/N` (at most 64 MiB: aioquic buffers a whole response), `/health`.
It exists so that the QUIC rules (GQ-1..GQ-3: SNI of the decrypted Initial; T22-4: version-1 Initials of 1001+
bytes to UDP 443) meet a real QUIC stack, with real Initials, on the wire.

One socket per server address (`--bind` repeated, one per lab name): a UDP socket bound to `::` answers from
the interface's primary address, not from the address the client wrote to, and a QUIC client drops datagrams
from an address it never contacted.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

MAX_BODY = 64 * 1024 * 1024
CHUNK = b"redweb lab payload " * 3449 + b"!!!!!"  # 65536 bytes, as the TCP server sends


def parse_size(text: str) -> int | None:
    """`/bytes/N`: decimal with an optional k/m suffix (powers of 1000); None if malformed or over 64 MiB."""
    t = text.strip().lower()
    mult = 1
    if t[-1:] in ("k", "m"):
        mult = 10**3 if t[-1] == "k" else 10**6
        t = t[:-1]
    if not t.isdigit() or len(t) > 10:
        return None
    n = int(t) * mult
    return n if n <= MAX_BODY else None


def respond(path: str, authority: str) -> tuple[int, bytes]:
    """Status and body for a request path (pure: the protocol class only moves bytes)."""
    path = path.split("?", 1)[0]
    if path == "/health":
        return 200, b"ok\n"
    if path.startswith("/bytes/"):
        n = parse_size(path[len("/bytes/"):])
        if n is None:
            return 400, b"bad size: use /bytes/N with N <= 64 MiB\n"
        whole, rest = divmod(n, len(CHUNK))
        return 200, CHUNK * whole + CHUNK[:rest]
    if path == "/":
        return 200, f"redweb lab web server\nscheme: h3\nhost: {authority or '-'}\n".encode()
    return 404, b"not found: try /, /bytes/N or /health\n"


class H3Server(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._h3 = H3Connection(self._quic)
        if self._h3 is None:
            return
        for h3_event in self._h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived) or self._h3 is None:
            return
        headers = dict(event.headers)
        method = headers.get(b":method", b"GET").decode(errors="replace")
        path = headers.get(b":path", b"/").decode(errors="replace")
        authority = headers.get(b":authority", b"").decode(errors="replace")
        status, body = respond(path, authority)
        self._h3.send_headers(event.stream_id, [(b":status", str(status).encode()),
                                                (b"server", b"RedWebLab/1"),
                                                (b"content-length", str(len(body)).encode())],
                              end_stream=method == "HEAD")
        if method != "HEAD":
            self._h3.send_data(event.stream_id, body, end_stream=True)
        self.transmit()


async def run(binds: list[str], port: int, cert: str, key: str) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_size=1350,
                               max_data=32 * 1024 * 1024, max_stream_data=16 * 1024 * 1024)
    config.load_cert_chain(cert, key)
    servers = [await serve(b, port, configuration=config, create_protocol=H3Server) for b in binds]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    print(f"ready h3={port}", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", action="append", metavar="ADDR",
                    help="address to listen on, repeatable (default :: = IPv4 and IPv6, primary address replies)")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--cert", required=True, help="certificate chain (PEM)")
    ap.add_argument("--key", required=True, help="private key (PEM)")
    a = ap.parse_args(argv)
    try:
        asyncio.run(run(a.bind or ["::"], a.port, a.cert, a.key))
    except OSError as e:
        print(f"h3server: cannot listen: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
