"""The kernel's side of NFQUEUE: is it there, who holds a queue, its counters, and its fail-open flag.

Everything here reads /proc/net/netfilter/nfnetlink_queue or talks nfnetlink directly, for what netfilterqueue
does not expose; the workers and the supervisor (`redweb run`) share it.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

QUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"


class QueueError(Exception):
    """A queue cannot be served (NFQUEUE missing, a worker failed to start); the message is one line."""


class QueueBusy(QueueError):
    """Another process has bound the queue."""


def queue_holders() -> dict[int, int]:
    """Queues bound in this network namespace → netlink port id of the holder (usually its pid)."""
    return {q: s.portid for q, s in queue_stats().items()}


@dataclass(frozen=True)
class QueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue: the kernel's view of a bound queue."""

    queue: int
    portid: int
    backlog: int  # packets queued, waiting for a verdict
    dropped: int  # dropped because the queue was full (fail-closed)
    user_dropped: int  # dropped because the netlink socket buffer was full (fail-closed)
    id_sequence: int  # packets handed to this instance so far


def queue_stats() -> dict[int, QueueStats]:
    """Kernel counters of every queue bound in this network namespace (empty when none or no NFQUEUE)."""
    try:
        with open(QUEUE_PROC, encoding="ascii") as f:
            return parse_queue_stats(f.read())
    except OSError:
        return {}


def parse_queue_stats(text: str) -> dict[int, QueueStats]:
    """The lines of /proc/net/netfilter/nfnetlink_queue (read here, or in another namespace by a test) by queue."""
    out: dict[int, QueueStats] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 8 and all(p.lstrip("-").isdigit() for p in parts[:8]):
            q, portid, total, _mode, _range, dropped, udropped, seq = (int(p) for p in parts[:8])
            out[q] = QueueStats(q, portid, total, dropped, udropped, seq)
    return out


_NFNL_SUBSYS_QUEUE, _NFQNL_MSG_CONFIG = 3, 2
_NFQA_CFG_MASK, _NFQA_CFG_FLAGS, _NFQA_CFG_F_FAIL_OPEN = 4, 5, 1
_NLMSG_ERROR, _NLM_F_REQUEST, _NLM_F_ACK = 2, 1, 4


def set_queue_fail_open(fd: int, queue: int, enabled: bool, timeout: float = 1.0) -> str | None:
    """Set or clear NFQA_CFG_F_FAIL_OPEN on `queue`, bound on netlink socket `fd`; None on success, else why not.

    The kernel only accepts queue configuration from the socket that bound the queue, so the message goes out on
    the library's own fd (a dup of it: same socket, same port id). The acknowledgement is read only if it is the
    next message waiting; a packet that arrives first is left for the library (which ignores a late ack).
    """
    try:
        sock = socket.fromfd(fd, socket.AF_NETLINK, socket.SOCK_RAW)
    except OSError as e:
        return f"cannot use the queue's netlink socket: {e.strerror or e}"
    try:
        seq = int(time.monotonic() * 1000) & 0x7FFFFFFF
        flags = _NFQA_CFG_F_FAIL_OPEN if enabled else 0
        attrs = struct.pack("=HH", 8, _NFQA_CFG_MASK) + struct.pack("!I", _NFQA_CFG_F_FAIL_OPEN)
        attrs += struct.pack("=HH", 8, _NFQA_CFG_FLAGS) + struct.pack("!I", flags)
        body = struct.pack("=BB", 0, 0) + struct.pack("!H", queue) + attrs  # nfgenmsg: AF_UNSPEC, v0, res_id
        msg = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG,
                          _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + body
        sock.sendto(msg, (0, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            head = sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if len(head) < 20:
                break
            _len, mtype, _fl, mseq, _pid = struct.unpack_from("=IHHII", head, 0)
            if mtype != _NLMSG_ERROR or mseq != seq:
                return None  # a packet came first: leave it to the library; the ack follows it harmlessly
            sock.recv(65536)
            err = struct.unpack_from("=i", head, 16)[0]
            return None if err == 0 else f"the kernel refused NFQA_CFG_F_FAIL_OPEN ({os.strerror(-err)})"
        return None
    except OSError as e:
        return f"cannot configure fail-open on queue {queue}: {e.strerror or e}"
    finally:
        sock.close()


def nfqueue_available() -> str | None:
    """None when the kernel can queue packets to user space here, else a one-line reason with the fix."""
    if not os.path.exists(QUEUE_PROC):
        subprocess.run(["modprobe", "nfnetlink_queue"], capture_output=True, check=False)
    if not os.path.exists(QUEUE_PROC):
        return ("the kernel has no nfnetlink_queue (NFQUEUE): load it (modprobe nfnetlink_queue) or use a kernel "
                "with CONFIG_NETFILTER_NETLINK_QUEUE")
    try:
        import netfilterqueue  # noqa: F401
    except ImportError as e:
        return f"the Python package NetfilterQueue is missing ({e}): pip install NetfilterQueue"
    return None


def busy_message(queue: int, portid: int | None) -> str:
    who = f" (netlink port id {portid}, usually its pid)" if portid else ""
    return (f"queue {queue} is already bound by another process{who}: stop it, or choose other queues "
            "with --queues")
