"""A `redweb run` process inside a test namespace, and small waiting helpers shared by the live tests."""
from __future__ import annotations

import json
import select
import signal
import sys
import time
from pathlib import Path

from tests.netns import Host

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
WAIT = 20.0  # safety net for waiting on a process or a packet, never a measured quantity


class Live:
    """A `redweb run` process in a namespace; waits for its one 'censoring ...' line."""

    def __init__(self, host: Host, *args: str, module: str = "dpi.cli",
                 profile: str = "plumbing", expect_ready: bool = True) -> None:
        self.proc = host.popen([PY, "-m", module, "run", "--profile", profile, *args], cwd=str(ROOT), text=True)
        self.first = ""
        if expect_ready:
            while "censoring" not in self.first:  # lines before it: e.g. stale rules being removed
                line = self._line()
                if not line:
                    raise AssertionError(self.first + self.finish(signal.SIGKILL)[2])
                self.first += line

    def _line(self) -> str:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        return self.proc.stdout.readline() if r else ""

    def children(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(p) for p in f.read().split()]

    def finish(self, sig: int | None = signal.SIGTERM) -> tuple[int, str, str]:
        """Send `sig` (None: send nothing) and wait for the exit: (exit code, stdout, stderr)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=WAIT)
        return self.proc.returncode, self.first + out, err


def wait_for(pred, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


