"""IPv6 parity (issue 7): every profile behaviour that applies to IPv6 behaves the same over IPv6, live.

Each test runs over both families with the real engine and real peers (curl, openssl s_server, dnsmasq + dig,
aioquic client and server): SNI reset (G-1, G-3) and its residual blocking (G-4), the policer (T21-4), the freeze
(T25-1), DNS injection over an IPv6 transport (GD-1, GD-2: A from the pool, AAAA from 2001::/32), and QUIC Initial
SNI blocking with the triggering Initial passing and the rest of the flow dropped (GQ-1, GQ-2).
"""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import PY, ROOT, read_log
from tests.test_robustness_lab import MID, Lab, events, leave_clean, make_lab, needs_root

pytestmark = [pytest.mark.netns, needs_root,
              pytest.mark.skipif(not all(shutil.which(t) for t in ("openssl", "dig", "dnsmasq")),
                                 reason="needs openssl, dig and dnsmasq")]

FAMILIES = [4, 6]
SERVER = {4: "10.9.2.2", 6: "fd09:2::2"}
CLIENT = {4: "10.9.1.2", 6: "fd09:1::2"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in make_lab():
        lab.tls_server()
        lab.start(lab.server, ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                               f"--listen-address={SERVER[4]}", f"--listen-address={SERVER[6]}", "--port=53",
                               f"--pid-file={lab.base}/dnsmasq.pid", "--address=/allowed.example/10.9.2.2",
                               "--address=/allowed.example/fd09:2::2", "--address=/blocked.example/10.9.2.2",
                               "--address=/blocked.example/fd09:2::2"], ready=("u", 53))
        yield lab


@pytest.fixture(autouse=True)
def clean(lab: Lab) -> Iterator[None]:
    yield
    leave_clean(lab)


def server_of(event: dict) -> str:
    return event["server"].rsplit(":", 1)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_sni_reset_and_residual_G_1_G_3_G_4(lab: Lab, tmp_path: Path, family: int) -> None:
    log = tmp_path / "events.jsonl"
    live = lab.censor("--log", str(log), residual=60.0)
    other = 6 if family == 4 else 4
    try:
        code, _, err = lab.https("blocked.example", family=family)
        assert code in (35, 56) and "reset by peer" in err, (code, err)
        assert lab.https("allowed.example", family=family)[0] == 7  # the 3-tuple is reset at the SYN now (G-4)
        assert lab.https("allowed.example", family=other)[:2] == (0, "200 6")  # the other family's 3-tuple is free
    finally:
        rc, _, err = live.finish()
    assert rc == 0, err
    rule, residual = events(log, "rule"), events(log, "residual")
    assert [e["rule"] for e in rule] == ["sni-reset"] and server_of(rule[0]) == SERVER[family]
    assert residual and all(server_of(e) == SERVER[family] for e in residual)


@pytest.mark.parametrize("family", FAMILIES)
def test_throttled_download_completes_intact_while_policed_T21_4(lab: Lab, tmp_path: Path, family: int) -> None:
    log, out = tmp_path / "events.jsonl", tmp_path / "mid"
    live = lab.censor("--log", str(log), rate_kbps=4000)
    try:
        code, result, err = lab.https("slow.example", "mid", family=family, max_time=30, out=str(out))
        assert code == 0 and result == f"200 {MID}", (code, result, err)
    finally:
        rc, _, err = live.finish()
    assert rc == 0, err
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256((lab.www / "mid").read_bytes()).digest()
    stop = events(log, "stop")[-1]["counters"]
    assert stop["policed"] > 0 and stop["rule:throttle:throttle"] == 1  # packets over the bucket were dropped
    assert server_of(events(log, "rule")[0]) == SERVER[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_after_16_kb_T25_1(lab: Lab, tmp_path: Path, family: int) -> None:
    log = tmp_path / "events.jsonl"
    live = lab.censor("--log", str(log))
    try:
        # (allowed first: s_server serves one connection at a time, and the frozen one keeps it busy)
        assert lab.https("allowed.example", "mid", family=family)[:2] == (0, f"200 {MID}")
        code, result, err = lab.https("frozen.example", "mid", family=family, max_time=3)
        assert code == 28, (code, err)  # silently frozen: a timeout, not a reset
        assert int(result.split()[1]) < 16384 + 8 * 1448
    finally:
        rc, _, err = live.finish()
    assert rc == 0, err
    assert events(log, "stop")[-1]["counters"]["frozen"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_dns_injection_over_the_family_transport_GD_1_GD_2(lab: Lab, tmp_path: Path, family: int) -> None:
    log = tmp_path / "events.jsonl"
    live = lab.censor("--log", str(log))

    def dig(name: str, qtype: str) -> list[str]:
        r = lab.client.run(["dig", "+short", "+tries=1", "+time=2", f"@{SERVER[family]}", name, qtype], check=False)
        return r.stdout.split()

    try:
        assert dig("blocked.example", "A") == ["203.0.113.7"]
        assert dig("blocked.example", "AAAA") == ["2001:0:53aa:64c:0:1:2:3"]  # Teredo, GD-2
        assert dig("allowed.example", "A") == ["10.9.2.2"]
        assert dig("allowed.example", "AAAA") == ["fd09:2::2"]
    finally:
        rc, _, err = live.finish()
    assert rc == 0, err
    injected = [e for e in events(log, "rule") if e["action"] == "dns-inject"]
    assert len(injected) == 2 and all(server_of(e) == SERVER[family] for e in injected)
    assert all(e["client"].rsplit(":", 1)[0] == CLIENT[family] for e in injected)


QUIC_PROFILE = """
name: robustness-quic
implements: [GQ-1, GQ-2]
inside: [10.9.1.0/24, fd09:1::/64]
triggers: both
quic: {enabled: true, ports: [], versions: [1], decrypt: true, first_datagram_only: true, sport_gt_dport: true}
dns: {enabled: false}
lists:
  quic: {entries: [blocked.example]}
rules:
  - name: quic-sni
    implements: [GQ-1, GQ-2]
    match: {quic.sni: quic}
    action: {type: blackhole, include_trigger: false}
    residual: {key: 3-tuple, seconds: 60, action: drop}
"""
QUIC_SERVER = """
import asyncio, sys
from aioquic.asyncio import serve
from aioquic.quic.configuration import QuicConfiguration
async def main():
    cfg = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    cfg.load_cert_chain(sys.argv[1], sys.argv[2])
    await serve("::", 443, configuration=cfg)  # dual-stack: IPv4 clients arrive as v4-mapped addresses
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
QUIC_CLIENT = """
import asyncio, ssl, sys
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
async def main():
    cfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=sys.argv[2])
    cfg.verify_mode = ssl.CERT_NONE
    try:
        async with connect(sys.argv[1], 443, configuration=cfg) as client:
            await client.ping()
        print("connected")
    except Exception as e:
        print("failed", type(e).__name__)
try:
    asyncio.run(asyncio.wait_for(main(), 3))
except asyncio.TimeoutError:
    print("timeout")
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_quic_initial_sni_blackhole_and_residual_GQ_1_GQ_2(lab: Lab, tmp_path: Path, family: int) -> None:
    server = lab.server.popen([PY, "-c", QUIC_SERVER, str(lab.base / "cert.pem"), str(lab.base / "key.pem")],
                              text=True, cwd=str(ROOT))
    lab.procs.append(server)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    profile = tmp_path / "quic.yaml"
    profile.write_text(QUIC_PROFILE)
    log = tmp_path / "events.jsonl"
    live = lab.censor("--log", str(log), profile=profile)

    def quic(name: str, fam: int) -> str:
        return lab.client.run([PY, "-c", QUIC_CLIENT, SERVER[fam], name], check=False, timeout=20).stdout.strip()

    try:
        assert quic("allowed.example", family) == "connected"
        assert quic("blocked.example", family) == "timeout"  # the Initial passes, the rest of the flow is dropped
        assert quic("allowed.example", family) == "timeout"  # GQ-2: residual on the 3-tuple, new source port
        assert quic("allowed.example", 6 if family == 4 else 4) == "connected"
    finally:
        rc, _, err = live.finish()
        server.kill()
    assert rc == 0, err
    rule = events(log, "rule")
    assert [e["rule"] for e in rule] == ["quic-sni"] and server_of(rule[0]) == SERVER[family]
    assert rule[0]["names"]["quic_sni"] == ["blocked.example"]
    assert any(server_of(e) == SERVER[family] for e in events(log, "residual"))
    assert read_log(log)[-1]["counters"]["rule:quic-sni:blackhole"] == 1
