"""HTTP/3 over a UDP socket we own, driven through aioquic's sans-IO `QuicConnection`.

Owning the socket is what QUIC strategies need: the source port is ours to bind (quic-low-sport, GQ-1), a
datagram can go out before the first Initial (quic-dummy-first, T22-4, GQ-1), and the version of the first
Initial is set before `connect` (quic-v2). aioquic does the real QUIC and TLS 1.3; this module moves its
datagrams, runs its timers and records a `Trace` of the exchange.
"""
from __future__ import annotations

import errno
import select
import socket
import ssl
import time

from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted

from dpi.strategies.base import QuicPlan
from dpi.strategies.tcpclient import USER_AGENT, Target
from dpi.strategies.trace import Trace


def _configuration(target: Target, plan: QuicPlan, cafile: str | None, insecure: bool) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=target.host)
    if insecure:
        config.verify_mode = ssl.CERT_NONE
    elif cafile:
        config.load_verify_locations(cafile)
    if plan.version is not None:
        config.original_version = plan.version
        if plan.version not in config.supported_versions:
            config.supported_versions = [plan.version, *config.supported_versions]
    return config


def _bind(target: Target, plan: QuicPlan) -> socket.socket:
    """A UDP socket on the first free port of `plan.source_ports` (an ephemeral one when there are none)."""
    any_address = "::" if target.family == socket.AF_INET6 else "0.0.0.0"
    ports = plan.source_ports or (0,)
    for i, port in enumerate(ports):
        sock = socket.socket(target.family, socket.SOCK_DGRAM)
        try:
            sock.bind((any_address, port))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE and i + 1 < len(ports):
                continue
            raise
        sock.setblocking(False)
        return sock
    raise OSError(errno.EADDRINUSE, "no free source port")  # unreachable: the loop returns or raises


def fetch_h3(target: Target, plan: QuicPlan, *, cafile: str | None = None, insecure: bool = False,
             timeout: float = 10.0, download: int | None = None) -> Trace:
    """GET https://host/path over HTTP/3 as `plan` says; never raises for network outcomes.

    A socket that cannot be bound (e.g. a low source port without root) ends the trace as an `error`.
    """
    trace = Trace("quic")
    trace.notes.extend(plan.notes)
    deadline = trace.start + timeout
    remote = (target.address, target.port)
    conn = QuicConnection(configuration=_configuration(target, plan, cafile, insecure))
    try:
        sock = _bind(target, plan)
    except OSError as e:
        return trace.end("error", f"cannot bind the UDP socket: {e.strerror or e}")
    try:
        sock.connect(remote)  # fixes the local address (for the trace) and lets ICMP errors through
    except OSError as e:
        sock.close()
        return trace.end("unreachable", e.strerror or str(e))
    trace.local = sock.getsockname()[:2]
    trace.remote = remote
    trace.sni = target.host
    try:
        trace.connected = trace.mark("first-flight")
        for datagram in plan.before:
            sock.sendto(datagram, remote)
            trace.notes.append(f"{len(datagram)}-byte datagram sent before the first Initial")
        conn.connect(remote, now=time.monotonic())
        if plan.version is not None:
            trace.notes.append(f"first Initial in QUIC version {plan.version:#010x}")
        _loop(conn, sock, plan, target, trace, deadline, download)
    except ConnectionRefusedError:
        trace.end("refused", "ICMP port unreachable")
    except OSError as e:
        trace.end("error", f"{e.strerror or e} ({trace.phase})")
    finally:
        try:
            conn.close()
            for data, addr in conn.datagrams_to_send(now=time.monotonic()):
                sock.sendto(data, addr)
        except OSError:
            pass
        sock.close()
    return trace


def _loop(conn: QuicConnection, sock: socket.socket, plan: QuicPlan, target: Target, trace: Trace,
          deadline: float, download: int | None) -> None:
    h3: H3Connection | None = None
    stream_id: int | None = None
    first = True
    rewrite = plan.rewrite_first
    while trace.ending is None:
        now = time.monotonic()
        for data, addr in conn.datagrams_to_send(now=now):
            if rewrite is not None:  # the very first datagram: the client's first Initial
                data, rewrite = rewrite(data), None
                trace.notes.append("first Initial rewritten by the strategy")
            sock.sendto(data, addr)
        if first:
            trace.first_flight = trace.now()
            trace.mark("handshake")
            first = False
        if now >= deadline:
            trace.end("timeout", f"no progress within {deadline - trace.start:g} s ({trace.phase})")
            return
        timer = conn.get_timer()
        wait = deadline - now if timer is None else max(0.0, min(timer, deadline) - now)
        readable, _, _ = select.select([sock], [], [], wait)
        now = time.monotonic()
        if readable:
            while True:
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                conn.receive_datagram(data, addr[:2], now=now)
        elif timer is not None and now >= timer:
            conn.handle_timer(now=now)
        event = conn.next_event()
        while event is not None:
            if isinstance(event, HandshakeCompleted):
                trace.handshake = trace.now()
                h3 = H3Connection(conn)
                stream_id = conn.get_next_available_stream_id()
                h3.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"),
                                            (b":authority", target.authority.encode()),
                                            (b":path", target.path.encode()),
                                            (b"user-agent", USER_AGENT.encode())], end_stream=True)
                trace.request = trace.mark("response")
            elif isinstance(event, ConnectionTerminated):
                if trace.ending is None:
                    why = event.reason_phrase or f"error code {event.error_code:#x}"
                    trace.server_rejected = trace.handshake is None
                    trace.end("closed" if trace.handshake else "tls-error", f"connection closed: {why}")
            if h3 is not None:
                for h3_event in h3.handle_event(event):
                    if trace.ending is not None or getattr(h3_event, "stream_id", None) != stream_id:
                        continue
                    if isinstance(h3_event, HeadersReceived):
                        headers = dict(h3_event.headers)
                        status = headers.get(b":status", b"")
                        trace.http_status = int(status) if status.isdigit() else None
                        length = headers.get(b"content-length", b"")
                        trace.expected_body = int(length) if length.isdigit() else None
                        trace.response = trace.mark("body")
                        if h3_event.stream_ended:
                            trace.end("done")
                    elif isinstance(h3_event, DataReceived):
                        trace.received += len(h3_event.data)
                        trace.body_bytes(len(h3_event.data))
                        if download is not None and trace.body >= download:
                            trace.end("done", f"stopped after {trace.body} body bytes (--download)")
                        elif h3_event.stream_ended:
                            trace.end("done")
            event = conn.next_event()


__all__ = ["fetch_h3"]
