"""Background programs inside lab hosts (the FET sink), stopped by their own pid when the measurement ends.

The lab kills whatever is left in its namespaces at tear-down, but a measurement that runs several experiments
in one lab must stop its helpers itself, and only them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dpi.lab import Lab, LabError


class HostProcess:
    def __init__(self, lab: Lab, host: str, argv: Sequence[str], log: Path) -> None:
        self.host, self.argv, self.log = host, list(argv), log
        with open(log, "wb") as out:
            self.popen: subprocess.Popen[bytes] = lab.node(host).popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=lab.env(),
                cwd=str(lab.workdir))

    def wait_ready(self, marker: bytes = b"ready", timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log.read_bytes():
                return
            if self.popen.poll() is not None:
                raise LabError(f"{' '.join(self.argv[:4])} on {self.host} exited: "
                               f"{self.log.read_text(errors='replace').strip()[-300:]}")
            time.sleep(0.05)
        raise LabError(f"{' '.join(self.argv[:4])} on {self.host} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.popen.kill()
            self.popen.wait(5)


@contextmanager
def running(lab: Lab, host: str, argv: Sequence[str], log: Path, marker: bytes = b"ready") -> Iterator[HostProcess]:
    """Start `argv` in `host`, wait for `marker` in its output, stop it on leaving the block."""
    p = HostProcess(lab, host, argv, log)
    try:
        p.wait_ready(marker)
        yield p
    finally:
        p.stop()


def python_module(module: str, *args: Any) -> list[str]:
    """argv running `python -m module args...` with this interpreter (the lab hosts see the repository on
    PYTHONPATH: dpi.lab sets it)."""
    return [sys.executable, "-m", module, *[str(a) for a in args]]
