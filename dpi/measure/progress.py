"""A plain-text progress bar on stderr (no dependency): long runs (a 180 s residual window, a thousand FET
connections) must show they are alive without cluttering stdout, which carries the results.

On a terminal the bar redraws one line; elsewhere (CI logs, pipes) it prints a line at every tenth of the way,
so a log stays short and readable.
"""
from __future__ import annotations

import sys
import time
from typing import Self, TextIO

WIDTH = 28


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self.t0 = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_tenth = -1
        self._closed = False

    def line(self, note: str = "") -> str:
        """The bar as text: `label [#######.....]  12/40  30 %  8 s  note`."""
        frac = (self.done / self.total) if self.total else 1.0
        frac = min(1.0, max(0.0, frac))
        filled = round(frac * WIDTH)
        elapsed = time.monotonic() - self.t0
        text = (f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} "
                f"{frac * 100:3.0f} % {elapsed:4.0f} s")
        return f"{text}  {note}" if note else text

    def update(self, n: int = 1, note: str = "") -> None:
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r\x1b[K" + self.line(note))
            self.stream.flush()
            return
        tenth = int(10 * self.done / self.total) if self.total else 10
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self.line(note) + "\n")
            self.stream.flush()

    def close(self, note: str = "") -> None:
        if self._closed or not self.enabled:
            return
        self._closed = True
        if self._tty:
            self.stream.write("\r\x1b[K" + self.line(note) + "\n")
        elif self._last_tenth != 10 or note:
            self.stream.write(self.line(note) + "\n")
        self.stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
