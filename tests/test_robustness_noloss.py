"""No loss (issue 7): for accepted flows every byte sent arrives, and arrives intact, across the live censor.

The sha256 of a multi-megabyte download equals the source's, over both families, with the connmark fast path and
with every packet through user space (`--no-offload`), also while a flood of new flows churns the flow table;
iperf3 UDP (both directions, every datagram through the queue) reports no datagram lost, and the censor dropped
nothing.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpi.queueinfo import QUEUE_PROC, parse_queue_stats
from tests.live import PY, ROOT
from tests.netns import Host
from tests.test_robustness_lab import BIG, Lab, events, leave_clean, make_lab, needs_root, sha256_file

pytestmark = [pytest.mark.netns, needs_root]
FLOOD_SOURCES = "10.9.1.100+4"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in make_lab():
        for i in range(4):
            lab.client.run(["ip", "addr", "add", f"10.9.1.{100 + i}/24", "dev", lab.path.client_if])
        yield lab


@pytest.fixture(autouse=True)
def clean(lab: Lab) -> Iterator[None]:
    yield
    leave_clean(lab)


@pytest.mark.parametrize("offload", [True, False], ids=["fast-path", "no-offload"])
def test_checksummed_downloads_arrive_intact_over_both_families(lab: Lab, tmp_path: Path, offload: bool) -> None:
    log = tmp_path / "events.jsonl"
    live = lab.censor("--log", str(log), *([] if offload else ["--no-offload"]))
    try:
        for family in (4, 6):
            out = tmp_path / f"big{family}"
            assert lab.curl(f"{lab.http(family)}/big", host="allowed.example", max_time=60, out=str(out)) == \
                (0, f"200 {BIG}")
            assert sha256_file(out) == lab.big_sha
    finally:
        rc, _, err = live.finish()
    assert rc == 0, err
    stop = events(log, "stop")[-1]["counters"]
    assert stop["nfq:drop"] == 0 and stop["nfq:errors"] == 0
    if not offload:
        assert stop["nfq:packets"] > 2 * BIG // 1500  # really every packet of both downloads went through the queue
        # ... and the compiled callback decided them: Python ran only for the few packets with events
        assert stop["nfq:python"] * 100 < stop["nfq:packets"], stop


def test_download_intact_while_the_flow_table_churns(lab: Lab, tmp_path: Path) -> None:
    live = lab.censor("--no-offload", "--queue-maxlen", "65536", max_flows=500)
    gen = lab.client.popen([PY, "-m", "bench.pressure", "flood", "--dst", lab.path.SERVER_V4, "--dport", "9",
                            "--count", "20000", "--rate", "8000", "--proto", "mix", "--sources", FLOOD_SOURCES],
                           cwd=str(ROOT), text=True)
    try:
        out = tmp_path / "big"
        assert lab.curl(f"{lab.http(4)}/big", max_time=60, out=str(out)) == (0, f"200 {BIG}")
        assert sha256_file(out) == lab.big_sha
        assert gen.wait(60) == 0
    finally:
        gen.kill()
        rc, stdout, err = live.finish()
    assert rc == 0, err
    assert "flows evicted" in stdout  # the download's flow lived through a table that turned over many times


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3")
@pytest.mark.parametrize("mode", [[], ["-R"]], ids=["udp", "udp-reverse"])
def test_iperf3_udp_through_the_queue_loses_no_datagram(lab: Lab, tmp_path: Path, mode: list[str]) -> None:
    log = tmp_path / "events.jsonl"
    server = lab.start(lab.server, ["iperf3", "-s", "-1", "-p", "5201"], ready=("t", 5201))
    live = lab.censor("--log", str(log), "--no-offload")
    receiver = lab.client if mode else lab.server
    overflows = udp_receive_overflows(receiver)
    try:
        # -w 4M: a receive buffer that holds ~1 s of this stream, so a receiver descheduled on a busy 2-core machine
        # cannot overflow it (the kernel's default, 208 KiB, holds ~90 datagrams): a datagram lost is the path's.
        r = lab.client.run(["iperf3", "-c", lab.path.SERVER_V4, "-p", "5201", "-J", "-u", "-t", "2",
                            "-b", "20M", "-l", "1200", "-w", "4M", *mode], timeout=60)
        result = json.loads(r.stdout)["end"]
        overflows = udp_receive_overflows(receiver) - overflows
        kernel = parse_queue_stats(lab.router.run(["cat", QUEUE_PROC]).stdout)  # before the queue is unbound
    finally:
        rc, _, err = live.finish()
        server.kill()
    assert rc == 0, err
    # Datagrams are counted exactly (TCP byte integrity is what the sha256 downloads above prove: iperf3's TCP
    # byte counts are cut at the end of a test while data is still in flight, so they differ without any loss).
    s = result["sum"]
    # Who lost what, so a failure names the culprit: the kernel's queue (full, or user space too slow to read),
    # the censor's verdicts, or the receiving socket.
    where = {"receiver socket overflows": overflows,
             "queue dropped (kernel)": sum(q.dropped for q in kernel.values()),
             "queue user-dropped (kernel)": sum(q.user_dropped for q in kernel.values())}
    assert s["lost_packets"] == 0 and s["packets"] > 1000, (s, where)
    assert kernel and not any(where.values()), (kernel, where)  # `kernel` empty: the queue was not read
    stop = events(log, "stop")[-1]["counters"]
    assert stop["nfq:drop"] == 0 and stop["nfq:errors"] == 0


def udp_receive_overflows(host: Host) -> int:
    """UDP datagrams `host`'s kernel dropped because a socket's receive buffer was full (/proc/net/snmp)."""
    rows = [line.split() for line in host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
            if line.startswith("Udp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:]))["RcvbufErrors"])
