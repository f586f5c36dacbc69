"""Residual blocking shared across queue workers.

Residual entries (G-4, GE-1, GF-3, GQ-2: a `server-ip` key spans clients that hash to different queues) live in
one table served by a manager process; it is consulted on new connections only, so its IPC cost stays off the
per-packet path, and it outlives a worker that dies, so a restarted worker keeps blocking what was blocked.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.managers
import signal
import time
from typing import Any

from dpi.proc import set_name, set_pdeathsig
from dpi.residual import LocalResidualStore, ResidualStore


class _ResidualManager(multiprocessing.managers.BaseManager):
    pass


class SnapshotResidualStore(LocalResidualStore):
    """The manager's store: the engine's, plus `snapshot()` so a restarted worker can rebuild its local copy."""

    def snapshot(self, now: float) -> list[tuple[Any, float, str, str]]:
        return [(k, until, action, rule) for k, (until, action, rule) in list(self._entries.items()) if until > now]


_ResidualManager.register("ResidualStore", SnapshotResidualStore, exposed=("add", "lookup", "__len__", "snapshot"))


class MirroredResidual:
    """One worker's residual store when it is the only worker: lookups stay in-process, adds are written through.

    With one queue no other process adds entries, so a local lookup is exact and a new connection costs no IPC
    (a SYN flood stays cheap); writing every add through to the manager is what lets a restarted worker start
    from the same residual table (G-4, GE-1, GF-3, GQ-2 blocking must outlive a crash of the worker).
    """

    def __init__(self, shared: Any) -> None:
        self._shared = shared
        self._local = LocalResidualStore()
        try:
            for key, until, action, rule in shared.snapshot(time.monotonic()):
                self._local.add(key, until, action, rule)
        except Exception:  # the manager is gone: start empty rather than not at all
            pass

    def add(self, key: Any, until: float, action: str, rule: str) -> None:
        self._local.add(key, until, action, rule)
        try:
            self._shared.add(key, until, action, rule)
        except Exception:
            pass

    def lookup(self, key: Any, now: float) -> tuple[str, str] | None:
        return self._local.lookup(key, now)

    def __len__(self) -> int:
        return len(self._local)


def _manager_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    set_pdeathsig(signal.SIGKILL)
    set_name("redweb-residual")


class SharedResidual:
    """The engine's `LocalResidualStore`, served by a manager process; `.store` is a proxy for every worker.

    Lookups happen on new connections only (and adds on triggers), so one IPC round trip each is affordable;
    entries use the workers' CLOCK_MONOTONIC timestamps, which agree across processes.
    """

    def __init__(self, max_entries: int = 1 << 20) -> None:
        self._manager = _ResidualManager(ctx=multiprocessing.get_context("fork"))
        self._manager.start(initializer=_manager_init)
        self.store: ResidualStore = self._manager.ResidualStore(max_entries)  # type: ignore[attr-defined]

    def close(self) -> None:
        try:
            self._manager.shutdown()
        except Exception:
            pass
