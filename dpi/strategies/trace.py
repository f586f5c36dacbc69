"""What happened during one fetch, as the client saw it: timestamps of each phase, bytes, and how it ended.

The clients (`tcpclient`, `quicclient`) only record facts; `dpi.probe` turns a trace into an outcome
(ok / reset / timeout / throttled / error). Keeping the two apart lets the classification be tested on
hand-made traces and keeps each client free of policy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["connect", "first-flight", "handshake", "idle", "request", "response", "body", "done"]
Ending = Literal["done", "reset", "timeout", "closed", "tls-error", "refused", "unreachable", "error"]


@dataclass
class Trace:
    """Times are seconds since `start` (monotonic clock); None when the phase was never reached."""

    transport: str  # "tls" or "quic"
    start: float = field(default_factory=time.monotonic)
    phase: Phase = "connect"
    connected: float | None = None  # TCP handshake done / UDP socket ready
    first_flight: float | None = None  # the strategy's first flight is out
    handshake: float | None = None  # TLS / QUIC handshake complete
    request: float | None = None  # HTTP request written
    response: float | None = None  # response status line / headers received
    last_byte: float | None = None  # last body byte received
    ended: float | None = None
    ending: Ending | None = None
    reason: str = ""  # human-readable cause of the ending (exception text, alert, ...)
    server_rejected: bool = False  # the server itself refused the first flight (e.g. a TLS alert)
    http_status: int | None = None
    received: int = 0  # application bytes received (headers and body)
    body: int = 0  # body bytes received
    expected_body: int | None = None  # Content-Length, when the server sent one
    progress: list[tuple[float, int]] = field(default_factory=list)  # (time, body bytes so far)
    local: tuple[str, int] | None = None
    remote: tuple[str, int] | None = None
    sni: str | None = None
    notes: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.start

    def mark(self, phase: Phase) -> float:
        """Enter `phase`; return the time."""
        self.phase = phase
        return self.now()

    def body_bytes(self, n: int) -> None:
        if n <= 0:
            return
        t = self.now()
        self.body += n
        self.last_byte = t
        self.progress.append((t, self.body))

    def end(self, ending: Ending, reason: str = "") -> "Trace":
        if self.ending is None:
            self.ending, self.reason, self.ended = ending, reason, self.now()
        return self
