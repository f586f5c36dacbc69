"""This process and others, seen from the kernel: prctl settings a worker needs and memory read from /proc."""
from __future__ import annotations

import ctypes
import os


def set_pdeathsig(sig: int) -> None:
    """Die with the parent: a SIGKILLed supervisor must not leave workers bound to queues."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def set_name(name: str) -> None:
    """Name this process in /proc/PID/comm (ps, top, tests): redweb-qN for a queue worker, redweb-residual."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def process_rss(pid: int | str = "self") -> int:
    """Resident set size of a process in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
