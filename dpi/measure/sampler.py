"""In-host goodput sampler: body bytes received per interval for one or more concurrent HTTP(S) downloads.

    python -m dpi.measure.sampler --seconds 30 --interval 0.1 --cafile ca.pem \\
        --fetch throttled https://twitter.com/bytes/16g 10.200.1.8 \\
        --fetch control https://example.org/bytes/16g 10.200.1.1

Why not curl: curl reports one average speed, and its progress meter updates once a second with a smoothed rate.
A policer (T21-4) is a cycle of a burst and ~900 ms of drops; seeing it, and seeing the rate converge, needs the
bytes as they arrive, on one clock shared by the throttled and the control download. This is a deliberately
small HTTP/1.1 client over Python's ssl (a real TLS stack; the ClientHello carries the URL's name as SNI).

Prints one JSON object: {"interval": s, "seconds": s, "fetches": [{"label", "url", "addr", "status", "error",
"http_status", "bins": [bytes per interval ...], "total", "body"}]}. `bins` count the TCP payload bytes received
after the TLS handshake (the response, TLS records included: ~0.1 % over the body), because TLS releases
decrypted data only in whole 16 KB records, which would hide the policer's 100 ms pattern; `body` is the
decrypted body. `status`: ok (ran until the time was up or the body ended), reset, timeout (no connection or
handshake within --connect-timeout), error.
"""
from __future__ import annotations

import argparse
import json
import math
import socket
import ssl
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit


@dataclass
class Fetch:
    label: str
    url: str
    addr: str
    status: str = "error"
    error: str = ""
    http_status: int = 0
    bins: list[int] = field(default_factory=list)  # TCP payload bytes received per interval, after the handshake
    total: int = 0  # sum of bins
    body: int = 0  # decrypted response body bytes


class _Stream:
    """A TCP connection, optionally with TLS over memory BIOs: the raw bytes are counted as they arrive (TLS
    hands decrypted data over in whole 16 KB records, which would hide a policer's 100 ms pattern)."""

    def __init__(self, f: Fetch, cafile: str | None, timeout: float) -> None:
        parts = urlsplit(f.url)
        self.host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.sock = socket.create_connection((f.addr, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls: ssl.SSLObject | None = None
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=cafile)
            ctx.set_alpn_protocols(["http/1.1"])
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=self.host)
            self._handshake()

    def _flush(self) -> None:
        if self.tls is not None:
            data = self.outgoing.read()
            if data:
                self.sock.sendall(data)

    def _handshake(self) -> None:
        assert self.tls is not None
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionResetError("closed during the TLS handshake")
                self.incoming.write(data)

    def send_request(self) -> None:
        req = (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUser-Agent: redweb-measure\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n").encode()
        if self.tls is None:
            self.sock.sendall(req)
        else:
            self.tls.write(req)
            self._flush()

    def feed(self, raw: bytes) -> bytes:
        """Raw bytes in, application bytes out (raw itself without TLS)."""
        if self.tls is None:
            return raw
        self.incoming.write(raw)
        out = bytearray()
        while True:
            try:
                chunk = self.tls.read(1 << 17)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            out += chunk
        self._flush()  # key updates, alerts
        return bytes(out)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def run_fetch(f: Fetch, t0: float, seconds: float, interval: float, cafile: str | None,
              connect_timeout: float) -> None:
    """Download until `seconds` after `t0` (or the body ends), counting received bytes into `f.bins`."""
    nbins = math.ceil(seconds / interval - 1e-9)
    f.bins = [0] * nbins
    deadline = t0 + seconds
    header = b""
    in_body = False
    try:
        stream = _Stream(f, cafile, connect_timeout)
        stream.send_request()
    except TimeoutError:
        f.status, f.error = "timeout", "no connection / handshake within the connect timeout"
        return
    except ConnectionRefusedError as e:
        f.status, f.error = "reset", f"refused: {e}"
        return
    except (ConnectionResetError, BrokenPipeError) as e:
        f.status, f.error = "reset", str(e)
        return
    except (OSError, ssl.SSLError) as e:
        f.status, f.error = "error", f"{type(e).__name__}: {e}"
        return
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                f.status = "ok"
                return
            # wake up at least at every bin boundary, so empty bins (drops, T21-4) are real zeros
            stream.sock.settimeout(max(0.005, min(interval, deadline - now)))
            try:
                raw = stream.sock.recv(1 << 18)
            except TimeoutError:
                continue
            now = time.monotonic()
            if not raw:
                f.status = "ok" if in_body else "error"
                if not in_body:
                    f.error = "connection closed before the response headers"
                return
            if now < deadline:
                idx = min(nbins - 1, int((now - t0) / interval))
                f.bins[idx] += len(raw)
                f.total += len(raw)
            data = stream.feed(raw)
            if not in_body:
                header += data
                end = header.find(b"\r\n\r\n")
                if end < 0:
                    if len(header) > 65536:
                        f.status, f.error = "error", "response headers too long"
                        return
                    continue
                first = header.split(b"\r\n", 1)[0].split()
                f.http_status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
                f.body += len(header) - end - 4
                in_body = True
            else:
                f.body += len(data)
    except (ConnectionResetError, BrokenPipeError) as e:
        f.status, f.error = "reset", f"{type(e).__name__}: {e}"
    except (OSError, ssl.SSLError) as e:
        f.status, f.error = "error", f"{type(e).__name__}: {e}"
    finally:
        stream.close()


def sample(fetches: list[Fetch], seconds: float, interval: float, cafile: str | None,
           connect_timeout: float = 5.0) -> dict[str, object]:
    """Run every fetch concurrently on one clock; returns the JSON-able result."""
    t0 = time.monotonic()
    threads = [threading.Thread(target=run_fetch, args=(f, t0, seconds, interval, cafile, connect_timeout),
                                daemon=True) for f in fetches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + connect_timeout + 30)
    return {"interval": interval, "seconds": seconds, "fetches": [asdict(f) for f in fetches]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dpi.measure.sampler", description=__doc__.split("\n\n")[0])
    ap.add_argument("--fetch", nargs=3, action="append", required=True, metavar=("LABEL", "URL", "ADDR"),
                    help="a download: label, http(s) URL, server address to connect to")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--cafile", default=None, help="CA certificate to trust (the lab CA)")
    ap.add_argument("--connect-timeout", type=float, default=5.0)
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.interval <= 0 or a.interval > a.seconds:
        ap.error("need 0 < --interval <= --seconds")
    fetches = [Fetch(label, url, addr) for label, url, addr in a.fetch]
    json.dump(sample(fetches, a.seconds, a.interval, a.cafile, a.connect_timeout), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
