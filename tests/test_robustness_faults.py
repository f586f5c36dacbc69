"""Faults of the live censor (issue 7): workers killed or stuck, the censor killed or restarted, rules deleted.

What must hold: a dead worker is restarted with its rules intact and residual blocking kept (G-4: the residual
table is shared, so it outlives the worker), up to a restart limit; a stuck worker is killed by the watchdog; a
SIGKILLed censor lets traffic through when fail-open, blocks it when fail-closed, and `redweb cleanup` restores
the exact netfilter state of before; a censor restarted mid-connection handles existing flows as the profile says
(`require_syn`, G-1/T22-1: a connection whose SYN it did not see is never censored); a rule deleted by hand is
reported within the configured check interval.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import PY, WAIT, wait_for
from tests.test_robustness_lab import Lab, events, free_port, leave_clean, make_lab, needs_root, scrape, workers

pytestmark = [pytest.mark.netns, needs_root]

RESET = (52, 56)  # curl: empty reply / connection reset by peer (G-3 RSTs)
REFUSED = 7  # curl: couldn't connect (the SYN answered with a forged RST, G-4)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from make_lab()


@pytest.fixture(autouse=True)
def clean(lab: Lab) -> Iterator[None]:
    yield
    leave_clean(lab)


@pytest.mark.parametrize("queues", ["0", "0-1"])
def test_killed_worker_is_restarted_rules_intact_residual_kept_G_4(lab: Lab, tmp_path: Path, queues: str) -> None:
    log, port = tmp_path / "events.jsonl", free_port()
    live = lab.censor("--queues", queues, "--log", str(log), "--metrics", f"127.0.0.1:{port}")
    try:
        rules_before = lab.rules()
        assert lab.curl(f"{lab.http(4)}/small", host="blocked.example")[0] in RESET
        assert lab.curl(f"{lab.http(4)}/small", host="allowed.example")[0] == REFUSED  # residual on the 3-tuple
        # A SIGKILLed worker loses what it counted since its last heartbeat (0.5 s): let it publish first.
        wait_for(lambda: scrape(lab, port).get("redweb_rule_actions_total") == 1, "the rule counter")
        before = workers(live)
        for pid in before.values():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(events(log, "worker-restart")) == len(before), "every worker to be restarted")
        after = workers(live)
        assert set(after) == set(before) and not set(after.values()) & set(before.values())
        assert lab.rules() == rules_before  # the rules were never touched
        # Residual blocking survived the workers (the table lives in the manager process).
        assert lab.curl(f"{lab.http(4)}/small", host="allowed.example")[0] == REFUSED
        # The new workers censor and pass like the old ones: another 3-tuple (IPv6) is free, a listed Host is reset.
        assert lab.curl(f"{lab.http(6)}/small", host="allowed.example") == (0, "200 6")
        assert lab.curl(f"{lab.http(6)}/small", host="blocked.example")[0] in RESET
        wait_for(lambda: scrape(lab, port).get("redweb_worker_restarts_total") == len(before), "restart metric")
    finally:
        rc, out, err = live.finish()
    assert rc == 0, err
    assert out.count("restarted it") == len(before) and "worker restarts" in out
    stop = events(log, "stop")[-1]
    assert stop["counters"]["nfq:restarts"] == len(before)
    assert stop["counters"]["rule:host-reset:rst"] == 2  # banked across the restart: the totals never go back
    assert lab.rules() == []


def test_restart_limit_stops_the_run_and_removes_rules(lab: Lab, tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    live = lab.censor("--restart-limit", "1", "--log", str(log))
    try:
        os.kill(workers(live)[0], signal.SIGKILL)
        wait_for(lambda: events(log, "worker-restart"), "the first restart")
        os.kill(workers(live)[0], signal.SIGKILL)
        rc, out, err = live.finish(None)  # the supervisor gives up on its own
    finally:
        if live.proc.poll() is None:
            live.finish(signal.SIGKILL)
    assert rc == 1
    assert "died more than 1 times within 60 s" in err and "--restart-limit" in err
    assert lab.rules() == []
    assert events(log, "worker-died")[0]["restarted"] is False


def test_stuck_worker_is_killed_by_the_watchdog_and_replaced(lab: Lab, tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    live = lab.censor("--watchdog", "1", "--log", str(log))
    try:
        (old,) = workers(live).values()
        os.kill(old, signal.SIGSTOP)  # alive but answering nothing: an endless loop in a parser looks like this
        wait_for(lambda: events(log, "worker-restart"), "the watchdog")
        assert "stuck" in events(log, "worker-restart")[0]["message"]
        assert workers(live)[0] != old and not os.path.exists(f"/proc/{old}/status")
        assert lab.curl(f"{lab.http(4)}/small", host="allowed.example") == (0, "200 6")
        assert lab.curl(f"{lab.http(4)}/small", host="blocked.example")[0] in RESET
    finally:
        rc, _, err = live.finish()
    assert rc == 0, err


@pytest.mark.parametrize("fail_closed", [False, True])
def test_sigkilled_censor_fail_open_or_closed_and_cleanup_restores_the_box(lab: Lab, fail_closed: bool) -> None:
    before = lab.netfilter_state()
    live = lab.censor(*(["--fail-closed"] if fail_closed else []))
    procs = [live.proc.pid, *live.children()]
    rc, _, _ = live.finish(signal.SIGKILL)
    assert rc == -9
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}/status") for p in procs), "workers and manager to die")
    assert len(lab.rules()) == 20  # killed: its rules stay
    code = lab.curl(f"{lab.http(4)}/small", host="blocked.example", max_time=1)
    if fail_closed:
        assert code[0] == 28  # nobody bound and no --queue-bypass: the kernel drops, curl times out
    else:
        assert code == (0, "200 6")  # --queue-bypass: traffic flows, uncensored
    r = lab.router.run([PY, "-m", "dpi.cli", "cleanup"], check=False)
    assert r.returncode == 0 and "removed 20" in r.stdout
    assert lab.netfilter_state() == before
    assert lab.curl(f"{lab.http(4)}/small", host="blocked.example") == (0, "200 6")


CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=10)
print("connected", flush=True)
sys.stdin.readline()
s.sendall(b"GET /small HTTP/1.1\\r\\nHost: blocked.example\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print("response", data.split(b"\\r\\n")[0].decode(), flush=True)
except ConnectionResetError:
    print("reset", flush=True)
except socket.timeout:
    print("timeout", flush=True)
"""


@pytest.mark.parametrize("require_syn, expected", [(True, "response HTTP/1.0 200 OK"), (False, "reset")])
def test_censor_restarted_mid_connection_require_syn_G_1_T22_1(lab: Lab, require_syn: bool, expected: str) -> None:
    """A connection opened under one run and used under the next: the new censor never saw its SYN.

    With `require_syn` (G-1, T22-1) it is never censored, even with a listed Host; without it the Host is read
    mid-connection and the flow is reset. Control: a fresh connection is reset under both profiles.
    """
    profile = lab.profile(require_syn=require_syn, residual=1.0)
    first = lab.censor(profile=profile)
    client = lab.client.popen([PY, "-c", CLIENT, lab.path.SERVER_V4], stdin=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        assert first.finish()[0] == 0  # the handshake was seen by the first run only
        second = lab.censor(profile=profile)
        try:
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
            got = client.stdout.readline().strip()
            assert got == expected, got
            time.sleep(1.2)  # let the 1 s residual of the second case expire (not a measurement)
            assert lab.curl(f"{lab.http(4)}/small", host="blocked.example")[0] in RESET
        finally:
            assert second.finish()[0] == 0
    finally:
        client.kill()
        client.wait()


def test_rule_removed_by_hand_is_reported_within_the_check_interval(lab: Lab, tmp_path: Path) -> None:
    log, port = tmp_path / "events.jsonl", free_port()
    live = lab.censor("--verify-interval", "1", "--log", str(log), "--metrics", f"127.0.0.1:{port}")
    jump = ["-m", "comment", "--comment", "redweb", "-j", "REDWEB"]
    try:
        lab.router.run(["ip6tables", "-D", "FORWARD", *jump])
        wait_for(lambda: events(log, "rules-missing"), "the missing rule to be reported")
        missing = events(log, "rules-missing")[0]["missing"]
        assert missing == ["ip6tables -t filter -A FORWARD -m comment --comment redweb -j REDWEB"]
        assert scrape(lab, port)["redweb_rules_missing"] == 1
        lab.router.run(["ip6tables", "-I", "FORWARD", "1", *jump])
        wait_for(lambda: events(log, "rules-restored"), "the rule to be seen again")
        assert scrape(lab, port)["redweb_rules_missing"] == 0
    finally:
        rc, out, err = live.finish()
    assert rc == 0, err
    assert err.count("removed behind our back") == 1 and "every RedWeb rule is installed again" in out
    assert lab.rules() == []


def test_verify_interval_and_restart_flags_are_validated() -> None:
    from dpi.cli import build_parser
    args = build_parser().parse_args(["run", "--profile", "gfw", "--verify-interval", "0.5", "--restart-limit", "3",
                                      "--watchdog", "0", "--queue-maxlen", "64"])
    assert (args.verify_interval, args.restart_limit, args.watchdog, args.queue_maxlen) == (0.5, 3, 0.0, 64)
    for bad in (["--verify-interval", "0"], ["--verify-interval", "x"], ["--restart-limit", "-1"],
                ["--queue-maxlen", "0"], ["--watchdog", "-2"]):
        r = subprocess.run([PY, "-m", "dpi.cli", "run", "--profile", "gfw", *bad], capture_output=True, text=True,
                           timeout=WAIT)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("redweb: error:"), r.stderr
