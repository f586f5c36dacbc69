"""Record the first bytes a real client sends: a one-shot TCP listener on 127.0.0.1 and a client subprocess.

The listener never answers, so the client's first flight is all that arrives; the client is killed afterwards
(by its own process handle) whatever happens.
"""
from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Sequence


class CaptureError(RuntimeError):
    """The client did not deliver a complete first flight in time."""


def capture_first_flight(
    argv_for_port: Callable[[int], Sequence[str]],
    complete: Callable[[bytes], bool],
    timeout: float = 10.0,
) -> bytes:
    """Run the client built by `argv_for_port(port)` and return what it sent once `complete(received)` holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(timeout)
        port = listener.getsockname()[1]
        proc = subprocess.Popen(list(argv_for_port(port)), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            try:
                conn, _ = listener.accept()
            except socket.timeout as exc:
                raise CaptureError(f"{argv_for_port(port)[0]} did not connect") from exc
            with conn:
                deadline = time.monotonic() + timeout
                received = b""
                while not complete(received):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise CaptureError(f"incomplete first flight ({len(received)} bytes)")
                    conn.settimeout(remaining)
                    try:
                        chunk = conn.recv(65536)
                    except socket.timeout as exc:
                        raise CaptureError(f"incomplete first flight ({len(received)} bytes)") from exc
                    if not chunk:
                        raise CaptureError(f"client closed after {len(received)} bytes")
                    received += chunk
                return received
        finally:
            proc.kill()
            proc.wait(timeout=5)
            if proc.stdin is not None:
                proc.stdin.close()


def tls_client_hello_complete(data: bytes) -> bool:
    """True once `data` holds a whole handshake message behind the TLS record layer.

    Deliberately independent of `dpi._extract` (the code under test must not decide what the fixtures are).
    """
    handshake = b""
    pos = 0
    while len(data) - pos >= 5:
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if data[pos] == 0x16:
            handshake += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            return pos <= len(data)
    return False


def http_headers_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data
