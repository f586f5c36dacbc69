"""A small HTTP/3 client (aioquic) for the lab: fetch one URL and say whether it worked, failed or timed out.

    python h3client.py https://twitter.com/bytes/100000 --connect 10.200.1.5 --cafile ca.pem [--timeout 5]

`--connect` plays the part of curl's `--resolve`: Mininet hosts share the machine's /etc/hosts, so lab names
are not resolvable there; the SNI and :authority still carry the URL's name, which is what a censor reads
(GQ-1). One JSON object is printed on stdout:

    {"result": "ok"|"timeout"|"error", "status": 200, "bytes": N, "seconds": T, "speed_bps": B,
     "handshake": true|false, "error": "..."}

Exit codes mirror curl's where they overlap, so the lab classifies both alike: 0 ok (2xx), 28 timed out (with
or without a handshake: a censor that drops the flow after the Initial, GQ-2, looks like this), 1 any other
failure, 2 bad usage.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 28


@dataclass
class Result:
    result: str = "error"
    status: int = 0
    bytes: int = 0
    seconds: float = 0.0
    speed_bps: float = 0.0  # bytes per second of the body, like curl's %{speed_download}
    handshake: bool = False
    error: str = ""


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)
        self.status = 0
        self.received = 0
        self.done = asyncio.Event()
        self.closed_reason = ""

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.closed_reason = event.reason_phrase or f"connection closed (error {event.error_code})"
            self.done.set()
        for h3_event in self._h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            for k, v in event.headers:
                if k == b":status":
                    self.status = int(v)
            if event.stream_ended:
                self.done.set()
        elif isinstance(event, DataReceived):
            self.received += len(event.data)
            if event.stream_ended:
                self.done.set()

    def get(self, authority: str, path: str) -> None:
        stream_id = self._quic.get_next_available_stream_id()
        self._h3.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"),
                                          (b":authority", authority.encode()), (b":path", path.encode()),
                                          (b"user-agent", b"redweb-lab-h3client")], end_stream=True)
        self.transmit()


async def fetch(url: str, connect_to: str | None, cafile: str | None, insecure: bool, timeout: float) -> Result:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("the URL must be https://NAME[:PORT]/PATH")
    host, port = parts.hostname, parts.port or 443
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = host if port == 443 else f"{host}:{port}"
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host, idle_timeout=timeout,
                               max_data=32 * 1024 * 1024, max_stream_data=16 * 1024 * 1024)
    if insecure:
        config.verify_mode = ssl.CERT_NONE
    elif cafile:
        config.load_verify_locations(cafile)
    res = Result()
    start = time.monotonic()
    client: H3Client | None = None
    finished: list[float] = []  # when the response ended: closing the connection afterwards is not transfer time

    async def run() -> None:
        nonlocal client
        async with connect(connect_to or host, port, configuration=config, create_protocol=H3Client,
                           wait_connected=True) as proto:
            client = proto  # type: ignore[assignment]
            res.handshake = True
            proto.get(authority, path)
            await proto.done.wait()
            finished.append(time.monotonic())
            proto.close()

    try:
        await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        res.result, res.error = "timeout", "timed out" + (" after the handshake" if res.handshake else "")
    except ConnectionError as e:
        res.result, res.error = "error", str(e) or type(e).__name__
    except OSError as e:
        res.result, res.error = "error", e.strerror or str(e)
    else:
        if client is not None and client.status:
            res.result = "ok" if 200 <= client.status < 300 else "error"
            if res.result == "error":
                res.error = f"HTTP status {client.status}"
        else:
            res.result = "error"
            res.error = (client.closed_reason if client is not None else "") or "no response"
    res.seconds = round((finished[0] if finished else time.monotonic()) - start, 4)
    if client is not None:
        res.status, res.bytes = client.status, client.received
    res.speed_bps = round(res.bytes / res.seconds, 1) if res.seconds > 0 else 0.0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="https://NAME[:PORT]/PATH")
    ap.add_argument("--connect", metavar="ADDR", help="server address to use instead of resolving NAME")
    ap.add_argument("--cafile", help="CA certificate to trust (the lab CA)")
    ap.add_argument("-k", "--insecure", action="store_true", help="do not verify the certificate")
    ap.add_argument("--timeout", type=float, default=10.0, help="whole fetch, seconds (default 10)")
    a = ap.parse_args(argv)
    try:
        res = asyncio.run(fetch(a.url, a.connect, a.cafile, a.insecure, a.timeout))
    except ValueError as e:
        print(f"h3client: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(asdict(res)), flush=True)
    return {"ok": EXIT_OK, "timeout": EXIT_TIMEOUT}.get(res.result, EXIT_FAIL)


if __name__ == "__main__":
    sys.exit(main())
