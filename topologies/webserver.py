"""The lab's web server: plain HTTP and HTTPS for every lab name, with bodies of any size for throughput tests.

    python webserver.py --cert server.pem --key server.key [--http 80] [--https 443] [--bind ::]

Paths: `/` a short text naming the Host header and the SNI the server saw (handy to check what reached it);
`/bytes/N` N bytes (throughput, T21-4 throttling, T25-1's 16 KB freeze); `/health` "ok". HTTP/1.1 with
keep-alive, one thread per connection, IPv4 and IPv6 on one socket.

The TLS handshake runs in the connection's thread, not in the accept loop: a censored connection whose
ClientHello was dropped must stall only itself, never the server (a blocked name must not take the allowed
ones down with it). "ready" is printed once both ports listen, so the lab knows when to go on.
"""
from __future__ import annotations

import argparse
import signal
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = b"redweb lab payload " * 3449 + b"!!!!!"  # 65536 bytes, sent again and again for /bytes/N
MAX_BODY = 1 << 34  # 16 GiB: "practically endless" for a time-limited download
HANDSHAKE_TIMEOUT = 10.0
# How long a connection may sit silent: a throttled client (T21-4) stalls for seconds between segments, and a
# client waiting out TSPU-2021's ~10-minute idle timeout (T21-6, `redweb probe --strategy idle-wait`) sends
# nothing for 610 s between its handshake and its request: the lab server must still be there after that.
IO_TIMEOUT = 900.0


def parse_size(text: str) -> int | None:
    """`/bytes/N` size: decimal, optional k/m/g suffix (powers of 1000); None if malformed or too large."""
    t = text.strip().lower()
    mult = 1
    if t[-1:] in ("k", "m", "g"):
        mult = {"k": 10**3, "m": 10**6, "g": 10**9}[t[-1]]
        t = t[:-1]
    if not t.isdigit() or len(t) > 12:
        return None
    n = int(t) * mult
    return n if n <= MAX_BODY else None


class LabHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RedWebLab/1"
    timeout = IO_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, b"ok\n")
        elif path.startswith("/bytes/"):
            n = parse_size(path[len("/bytes/"):])
            if n is None:
                self._send(400, b"bad size: use /bytes/N with N <= 16 GiB (k, m, g suffixes allowed)\n")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            if self.command == "HEAD":
                return
            view = memoryview(CHUNK)
            left = n
            while left > 0:
                k = min(left, len(CHUNK))
                self.wfile.write(view[:k])
                left -= k
        elif path == "/":
            sni = getattr(self.connection, "lab_sni", None)
            scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
            text = (f"redweb lab web server\nscheme: {scheme}\nhost: {self.headers.get('Host', '-')}\n"
                    f"sni: {sni or '-'}\nclient: {self.client_address[0]}\n")
            self._send(200, text.encode())
        else:
            self._send(404, b"not found: try /, /bytes/N or /health\n")


class DualStackServer(ThreadingHTTPServer):
    """One IPv6 socket that also accepts IPv4 (v4-mapped), so a single server covers both families."""

    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 256
    verbose = False

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Resets and timeouts are what a censored lab is made of: they are not server errors.
        if self.verbose:
            super().handle_error(request, client_address)


class TLSServer(DualStackServer):
    """HTTPS: the handshake happens in the connection's own thread (see the module docstring)."""

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, LabHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            request.close()
            return
        tls.settimeout(IO_TIMEOUT)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


def make_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])

    def remember_sni(sock: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            sock.lab_sni = name
        except AttributeError:
            pass

    ctx.sni_callback = remember_sni
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", default="::", help="address to listen on (default :: = IPv4 and IPv6)")
    ap.add_argument("--http", type=int, default=80, help="plain HTTP port (0 = off)")
    ap.add_argument("--https", type=int, default=443, help="HTTPS port (0 = off)")
    ap.add_argument("--cert", help="certificate chain (PEM), needed for HTTPS")
    ap.add_argument("--key", help="private key (PEM), needed for HTTPS")
    ap.add_argument("--verbose", action="store_true", help="log every request and error to stderr")
    a = ap.parse_args(argv)
    if a.https and not (a.cert and a.key):
        ap.error("--https needs --cert and --key")
    DualStackServer.verbose = a.verbose
    servers: list[ThreadingHTTPServer] = []
    try:
        if a.http:
            servers.append(DualStackServer((a.bind, a.http), LabHandler))
        if a.https:
            servers.append(TLSServer((a.bind, a.https), make_context(a.cert, a.key)))
    except OSError as e:
        print(f"webserver: cannot listen: {e}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in servers]
    for t in threads:
        t.start()
    print(f"ready http={a.http} https={a.https}", flush=True)
    while not stop.wait(0.5):
        pass
    for s in servers:
        s.shutdown()
        s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
