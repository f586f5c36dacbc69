"""HTTPS over a TCP socket we drive by hand, so a strategy decides how the first flight goes on the wire.

Python's ssl runs over MemoryBIOs: OpenSSL writes its ClientHello into a buffer instead of a socket, the
strategy turns those bytes into writes (segments), records, fakes and socket options, and this module puts them
on a plain TCP socket with TCP_NODELAY, waiting after each write until the kernel has sent it. The rest of the
handshake and the HTTP/1.1 exchange then run normally, and every step is timed into a `Trace`.

The certificate chain is verified by OpenSSL; the host name is checked here against the URL's host, not against
the SNI, because strategies send altered names (`twitter.com.`, `TwItTeR.CoM`) for the same host.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from dpi.strategies import rawtcp
from dpi.strategies.base import FakeSegment, Flight, Strategy, StrategyError, TcpPlan
from dpi.strategies.firewall import DropRst, FirewallError
from dpi.strategies.trace import Trace

USER_AGENT = "redweb-probe/1"
RECV = 65536


@dataclass(frozen=True)
class Target:
    """Where to fetch from: the URL's host (Host header, certificate), port and path, and the address to use."""

    host: str
    port: int
    path: str
    address: str

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ipaddress.ip_address(self.address).version == 6 else socket.AF_INET

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


class _Deadline(Exception):
    pass


def tls_context(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # checked against the URL's host in `hostname_matches`
    if insecure:
        ctx.verify_mode = ssl.CERT_NONE
    elif cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.load_default_certs()
    return ctx


def client_hello(ctx: ssl.SSLContext, server_name: str) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A client SSLObject for `server_name` and the first flight it wrote (its ClientHello records)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return tls, incoming, outgoing, outgoing.read()


def hostname_matches(der: bytes, host: str) -> bool:
    """RFC 6125 check of a certificate against a host: SAN DNS names (one leftmost wildcard) or SAN IPs."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    name = host.rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    for pattern in san.get_values_for_type(x509.DNSName):
        p = pattern.rstrip(".").lower()
        if p == name:
            return True
        if p.startswith("*.") and "." in name and name.split(".", 1)[1] == p[2:]:
            return True
    return False


def _raise_if_past(trace: Trace, deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Deadline()
    return left


def _recv(sock: socket.socket, trace: Trace, deadline: float) -> bytes:
    sock.settimeout(_raise_if_past(trace, deadline))
    try:
        return sock.recv(RECV)
    except (socket.timeout, TimeoutError):
        raise _Deadline() from None


class _Crafter:
    """Builds segments of this connection at its current sequence numbers (read once, with TCP_REPAIR) and
    with its own TCP options, so that crafted packets look like the connection's own to a censor."""

    def __init__(self, sock: socket.socket, target: Target) -> None:
        self.state = rawtcp.read_sequence(sock)
        self.options = rawtcp.timestamp_option(sock)  # the same TCP header length as the real segments
        self.src, self.sport = sock.getsockname()[:2]
        self.target = target

    def segment(self, payload: bytes, **kw: Any) -> bytes:
        s = self.state
        return rawtcp.tcp_packet(self.src, self.target.address, self.sport, self.target.port, s.snd_nxt,
                                 s.rcv_nxt, payload, window=s.window, options=self.options, **kw)


def _send_fakes(sock: socket.socket, fakes: tuple[FakeSegment, ...], target: Target, trace: Trace,
                when: str) -> None:
    """Crafted segments at the connection's current sequence numbers, from a raw socket."""
    crafter = _Crafter(sock, target)
    for fake in fakes:
        rawtcp.send_raw(crafter.segment(fake.payload, flags=fake.flags, ttl=fake.ttl or 64,
                                        bad_checksum=fake.bad_checksum))
        trace.notes.append(f"fake {fake.describe()} sent {when}, seq {crafter.state.snd_nxt}")


def _send_fragmented(sock: socket.socket, data: bytes, size: int, target: Target, trace: Trace) -> None:
    """`data` as one TCP segment cut into IP fragments, sent from a raw socket; the socket counts it as sent."""
    crafter = _Crafter(sock, target)
    rawtcp.queue_as_sent(sock, data)
    fragments = rawtcp.ip_fragments(crafter.segment(data), size)
    rawtcp.send_raw(*fragments)
    trace.notes.append(f"first flight of {len(data)} bytes sent as {len(fragments)} IP fragments of "
                       f"<= {size - size % 8} bytes, seq {crafter.state.snd_nxt}")


def _write_first_flight(sock: socket.socket, plan: TcpPlan, trace: Trace) -> None:
    for i, data in enumerate(plan.writes):
        sock.sendall(data)
        if i + 1 < len(plan.writes):
            if not rawtcp.wait_sent(sock):
                trace.notes.append(f"write {i + 1} still queued after 1 s: segments may have merged")
            if plan.gap:
                time.sleep(plan.gap)
    if len(plan.writes) > 1:
        trace.notes.append("first flight written as " + "+".join(str(len(w)) for w in plan.writes) + " bytes")


def fetch_tls(target: Target, strategy: Strategy, *, cafile: str | None = None, insecure: bool = False,
              timeout: float = 10.0, download: int | None = None) -> Trace:
    """GET https://host/path with `strategy` shaping the first flight; never raises for network outcomes.

    `download`: stop after that many body bytes (the goodput is measured on them). A step the strategy needs
    and the host refuses (raw sockets, TCP_REPAIR, iptables without root) ends the trace as an `error`; only
    a strategy that cannot apply to this ClientHello at all raises StrategyError.
    """
    trace = Trace("tls")
    deadline = trace.start + timeout
    ctx = tls_context(cafile, insecure)
    sni = strategy.server_name(target.host)
    trace.sni = sni
    strategy.configure(ctx, lambda c: len(client_hello(c, sni)[3]))
    tls, incoming, outgoing, hello = client_hello(ctx, sni)
    plan = strategy.plan(Flight(hello, sni, make_hello=lambda name: client_hello(ctx, name)[3]))
    trace.notes.extend(plan.notes)
    deadline += plan.idle  # the strategy's own silence does not count against the timeout
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    firewall: DropRst | None = None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if plan.drop_rst is not None:
            firewall = _drop_rst(sock, plan.drop_rst, target, trace)
        _run(sock, tls, incoming, outgoing, plan, target, trace, deadline, insecure, download)
    except _Deadline:
        trace.end("timeout", f"no progress within {timeout:g} s ({trace.phase})")
    except (ConnectionResetError, BrokenPipeError) as e:
        trace.end("reset", f"{e.strerror or e} ({trace.phase})")
    except ConnectionRefusedError:
        trace.end("refused", "connection refused")
    except ssl.SSLCertVerificationError as e:
        trace.end("tls-error", f"certificate: {e.verify_message or e.reason}")
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        alert = "ALERT" in reason.upper()
        trace.server_rejected = alert and trace.handshake is None
        trace.end("tls-error", f"server sent TLS alert {_alert_name(reason)}" if alert else f"TLS: {reason}")
    except (rawtcp.RawTcpError, FirewallError) as e:
        trace.end("error", f"the strategy could not run here: {e.strerror or e}")
    except OSError as e:
        if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            trace.end("unreachable", e.strerror or str(e))
        elif e.errno == errno.ECONNRESET:
            trace.end("reset", f"{e.strerror} ({trace.phase})")
        else:
            trace.end("error", f"{e.strerror or e} ({trace.phase})")
    finally:
        sock.close()
        if firewall is not None:
            firewall.remove()
    return trace


def _drop_rst(sock: socket.socket, payload: bytes, target: Target, trace: Trace) -> DropRst:
    """Bind to a source port first, so the firewall rule can name this connection alone; install it."""
    route = socket.socket(target.family, socket.SOCK_DGRAM)  # which local address reaches the target
    try:
        route.connect((target.address, target.port))
        local_ip = route.getsockname()[0]
    finally:
        route.close()
    sock.bind((local_ip, 0))
    rule = DropRst((local_ip, sock.getsockname()[1]), (target.address, target.port), payload)
    rule.install()
    what = f"RSTs carrying {payload.hex()}" if payload else "every RST"
    trace.notes.append(f"incoming {what} dropped by the client's firewall for this connection")
    return rule


def _alert_name(reason: str) -> str:
    """'SSLV3_ALERT_UNEXPECTED_MESSAGE' -> 'unexpected_message'."""
    upper = reason.upper()
    return reason[upper.index("ALERT_") + 6:].lower() if "ALERT_" in upper else reason


def _run(sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, plan: TcpPlan,
         target: Target, trace: Trace, deadline: float, insecure: bool, download: int | None) -> None:
    sock.settimeout(_raise_if_past(trace, deadline))
    try:
        sock.connect((target.address, target.port))
    except (socket.timeout, TimeoutError):
        raise _Deadline() from None
    trace.connected = trace.now()
    trace.local = sock.getsockname()[:2]
    trace.remote = (target.address, target.port)
    trace.mark("first-flight")
    if plan.tcp_timestamps:
        if rawtcp.has_timestamps(sock):
            trace.notes.append("TCP timestamps negotiated by the system")
        else:
            rawtcp.force_timestamps(sock)
            trace.notes.append("TCP timestamps forced on this socket (TCP_REPAIR_OPTIONS)")
    if plan.fakes:
        _send_fakes(sock, plan.fakes, target, trace, "before the first flight")
    if plan.fragment_size:
        _send_fragmented(sock, b"".join(plan.writes), plan.fragment_size, target, trace)
    else:
        _write_first_flight(sock, plan, trace)
    trace.first_flight = trace.now()
    if plan.after:
        if not rawtcp.wait_sent(sock):
            trace.notes.append("first flight still queued after 1 s")
        _send_fakes(sock, plan.after, target, trace, "after the first flight")

    trace.mark("handshake")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            data = _recv(sock, trace, deadline)
            if not data:
                trace.end("closed", "the server closed the connection during the TLS handshake")
                return
            incoming.write(data)
    pending = outgoing.read()
    if pending:
        sock.sendall(pending)
    trace.handshake = trace.now()
    if not insecure:
        der = tls.getpeercert(binary_form=True)
        if der is None or not hostname_matches(der, target.host):
            trace.end("tls-error", f"certificate: not valid for {target.host}")
            return
    if plan.idle:
        trace.mark("idle")
        time.sleep(plan.idle)  # nothing is read or sent: the path sees a silent connection
        trace.notes.append(f"connection silent for {plan.idle:g} s after the handshake")

    trace.mark("request")
    request = (f"GET {target.path} HTTP/1.1\r\nHost: {target.authority}\r\nUser-Agent: {USER_AGENT}\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n").encode()
    tls.write(request)
    sock.sendall(outgoing.read())
    trace.request = trace.now()
    trace.mark("response")
    _read_response(sock, tls, incoming, outgoing, trace, deadline, download)


def _read_response(sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                   trace: Trace, deadline: float, download: int | None) -> None:
    head = b""
    while True:
        try:
            data = tls.read(RECV)
        except ssl.SSLWantReadError:
            pending = outgoing.read()  # e.g. TLS 1.3 key updates
            if pending:
                sock.sendall(pending)
            raw = _recv(sock, trace, deadline)
            if not raw:
                incoming.write_eof()
            else:
                incoming.write(raw)
            continue
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        if not data:
            _finish_at_eof(trace)
            return
        trace.received += len(data)
        if trace.response is None:
            head += data
            if b"\r\n\r\n" not in head:
                if len(head) > 65536:
                    trace.end("error", "no end of the HTTP response header in 64 KB")
                    return
                continue
            header, _, rest = head.partition(b"\r\n\r\n")
            _parse_header(trace, header)
            trace.response = trace.now()
            trace.mark("body")
            data = rest
        trace.body_bytes(len(data))
        if download is not None and trace.body >= download:
            trace.end("done", f"stopped after {trace.body} body bytes (--download)")
            return
        if trace.expected_body is not None and trace.body >= trace.expected_body:
            trace.end("done")
            return


def _parse_header(trace: Trace, header: bytes) -> None:
    lines = header.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
        trace.http_status = int(parts[1])
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length" and value.strip().isdigit():
            trace.expected_body = int(value.strip())


def _finish_at_eof(trace: Trace) -> None:
    if trace.response is None:
        trace.end("closed", "the server closed the connection before a complete HTTP response header")
    elif trace.expected_body is not None and trace.body < trace.expected_body:
        trace.end("closed", f"the server closed the connection after {trace.body} of {trace.expected_body} "
                  "body bytes")
    else:
        trace.end("done")


__all__ = ["Target", "fetch_tls", "hostname_matches", "client_hello", "tls_context", "StrategyError"]
