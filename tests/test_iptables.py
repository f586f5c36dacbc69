"""Rule lifecycle of the live censor (dpi.iptables), each test in a fresh network namespace.

What matters: the fast-path chain is complete and in the right order, install/remove leave nothing behind in
either family, cleanup() finds what a killed run left (and nothing else), verify() notices a rule deleted by
hand, and every failure is a one-line SetupError that names the fix.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from dpi import iptables
from dpi.iptables import CHAIN, FLOW_ACCEPT, FLOW_DROP, PASS, RuleSet, SetupError, parse_network, parse_queues

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("iptables") is None or shutil.which("ip") is None,
                       reason="needs root, ip and iptables"),
]


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"rwipt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def rules_of(ns: str, binary: str = "iptables", table: str = "filter") -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, binary, "-t", table, "-S"], check=True, text=True,
                         capture_output=True).stdout
    return [line for line in out.splitlines() if not line.startswith("-P ")]


def test_install_builds_fast_path_chain_in_order_for_both_families(ns: str) -> None:
    rs = RuleSet((0, 0), netns=ns)
    rs.install()
    for binary in ("iptables", "ip6tables"):
        lines = rules_of(ns, binary)
        assert f"-N {CHAIN}" in lines
        assert lines.count(f"-A FORWARD -m comment --comment redweb -j {CHAIN}") == 1
        chain = [line for line in lines if line.startswith(f"-A {CHAIN} ")]
        targets = [line.split(" -j ")[1] for line in chain]
        # Order is the fast path: decided connections by connmark first (most packets stop there), then save
        # the worker's nfmark into the connmark, settle PASS / repeated packets by nfmark, then queue the rest.
        assert f"-m connmark --mark {FLOW_ACCEPT:#x}/" in chain[0] and targets[0] == "ACCEPT"
        assert f"-m connmark --mark {FLOW_DROP:#x}/" in chain[1] and targets[1] == "DROP"
        assert targets[2].startswith("CONNMARK --save-mark")
        assert targets[3:6] == ["ACCEPT", "DROP", "ACCEPT"]
        assert f"--mark {PASS:#x}/{PASS:#x}" in chain[3]
        assert f"--mark {FLOW_DROP:#x}/{FLOW_DROP:#x}" in chain[4]
        assert targets[6:] == ["NFQUEUE --queue-num 0 --queue-bypass"] * 2
        assert "-p tcp" in chain[6] and "-p udp" in chain[7]
        assert all("--comment redweb" in line for line in chain)
    assert rs.verify() == []


def test_remove_leaves_nothing_and_is_idempotent(ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-A", "FORWARD", "-s", "192.0.2.1", "-j", "DROP"],
                   check=True)
    before = rules_of(ns)
    rs = RuleSet((2, 5), netns=ns)
    rs.install()
    assert any("--queue-balance 2:5 --queue-bypass" in line for line in rules_of(ns, "ip6tables"))
    rs.remove()
    assert rules_of(ns) == before  # the foreign rule survives, ours are gone
    assert not any("redweb" in line or CHAIN in line for line in rules_of(ns, "ip6tables"))
    rs.remove()
    assert iptables.stale_rules(ns) == []


def test_local_mode_jumps_from_input_and_output_not_forward(ns: str) -> None:
    rs = RuleSet((0, 0), mode="local", fail_closed=True, netns=ns)
    rs.install()
    lines = rules_of(ns)
    assert "-A INPUT ! -i lo -m comment --comment redweb -j REDWEB" in lines
    assert "-A OUTPUT ! -o lo -m comment --comment redweb -j REDWEB" in lines
    assert not any(line.startswith("-A FORWARD") for line in lines)
    assert not any("--queue-bypass" in line for line in lines)  # fail-closed: no bypass when nobody listens
    assert rs.verify() == []
    rs.remove()
    assert rules_of(ns) == []


def test_interfaces_jump_in_and_out_per_link_and_go_away_with_the_rest(ns: str) -> None:
    rs = RuleSet((0, 0), netns=ns, interfaces=("eth0", "wg+"))
    rs.install()
    for binary in ("iptables", "ip6tables"):
        jumps = [line for line in rules_of(ns, binary) if line.startswith("-A FORWARD")]
        assert sorted(jumps) == sorted(f"-A FORWARD {flag} {i} -m comment --comment redweb -j {CHAIN}"
                                       for i in ("eth0", "wg+") for flag in ("-i", "-o"))
    assert rs.verify() == []
    rs.remove()
    assert rules_of(ns) == [] and rules_of(ns, "ip6tables") == []
    local = RuleSet((0, 0), mode="local", netns=ns, interfaces=("eth0",), ipv6=False)
    local.install()
    assert [line for line in rules_of(ns) if not line.startswith(f"-A {CHAIN}") and line != f"-N {CHAIN}"] == [
        f"-A INPUT -i eth0 -m comment --comment redweb -j {CHAIN}",
        f"-A OUTPUT -o eth0 -m comment --comment redweb -j {CHAIN}"]
    assert iptables.cleanup(ns) == 1 + 8 + 2 and rules_of(ns) == []


def test_parse_interface_checks_the_name_and_that_it_exists_here() -> None:
    assert iptables.parse_interface("lo") == "lo" and iptables.parse_interface("l+") == "l+"
    for bad, message in (("nosuch0", "no interface 'nosuch0' here"), ("a/b", "not an interface name"),
                         ("x" * 16, "not an interface name"), ("", "not an interface name"),
                         ("e+th", "not an interface name")):
        with pytest.raises(ValueError, match=message):
            iptables.parse_interface(bad)


def test_no_ipv6_touches_only_iptables(ns: str) -> None:
    rs = RuleSet((0, 0), ipv6=False, netns=ns)
    rs.install()
    assert rules_of(ns, "ip6tables") == []
    assert f"-N {CHAIN}" in rules_of(ns)
    rs.remove()


def test_verify_reports_rule_deleted_by_hand(ns: str) -> None:
    rs = RuleSet((0, 0), netns=ns)
    rs.install()
    subprocess.run(["ip", "netns", "exec", ns, "ip6tables", "-D", "FORWARD", "-m", "comment", "--comment",
                    "redweb", "-j", CHAIN], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-D", CHAIN, "7"], check=True)  # the TCP queue rule
    missing = rs.verify()
    assert len(missing) == 2
    assert any(m.startswith("ip6tables") and "-A FORWARD" in m for m in missing)
    assert any(m.startswith("iptables") and "-p tcp" in m and "NFQUEUE" in m for m in missing)
    rs.remove()
    assert iptables.stale_rules(ns) == []


def test_cleanup_removes_what_a_killed_run_left_in_both_families(ns: str) -> None:
    # A run killed with SIGKILL: its RuleSet object is gone, its rules are not.
    code = ("import sys, os; from dpi.iptables import RuleSet; "
            f"RuleSet((0, 1), mode='local', netns={ns!r}).install(); os.kill(os.getpid(), 9)")
    r = subprocess.run([os.path.abspath(".venv/bin/python") if os.path.exists(".venv/bin/python") else "python3",
                        "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True)
    assert r.returncode == -9
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-m", "comment", "--comment",
                    "redweb-not-ours", "-j", "ACCEPT"], check=True)
    stale = iptables.stale_rules(ns)
    assert any(s.startswith("iptables ") for s in stale) and any(s.startswith("ip6tables ") for s in stale)
    assert iptables.stale_queues(ns) == {0, 1}
    n = iptables.cleanup(ns)
    assert n == len(stale) == 2 * (1 + 8 + 2)  # per family: chain, 8 chain rules, 2 jumps
    assert iptables.stale_rules(ns) == []
    assert iptables.cleanup(ns) == 0
    # A rule that merely looks like ours (another tool's comment) is left alone.
    assert rules_of(ns) == ["-A INPUT -m comment --comment redweb-not-ours -j ACCEPT"]
    assert rules_of(ns, "ip6tables") == []


def test_install_over_leftover_rules_fails_with_one_line_fix_and_keeps_them(ns: str) -> None:
    RuleSet((0, 0), netns=ns).install()
    with pytest.raises(SetupError) as e:
        RuleSet((0, 0), netns=ns).install()
    msg = str(e.value)
    assert "\n" not in msg and "redweb cleanup" in msg
    # The failed install must not have removed the first run's rules, nor left extra jumps.
    assert rules_of(ns).count("-A FORWARD -m comment --comment redweb -j REDWEB") == 1


def test_missing_binary_is_a_setup_error_naming_the_fix(ns: str) -> None:
    rs = RuleSet((0, 0), netns=ns, binaries=("iptables", "/nonexistent/ip6tables"))
    with pytest.raises(SetupError) as e:
        rs.install()
    assert "not found" in str(e.value) and "--no-ipv6" in str(e.value)
    assert rules_of(ns) == []  # nothing half-installed


def test_failed_ipv6_install_rolls_back_ipv4(ns: str) -> None:
    # ip6tables pointed at a binary that exists but refuses everything: install must undo the IPv4 half.
    rs = RuleSet((0, 0), netns=ns, binaries=("iptables", "false"))
    with pytest.raises(SetupError) as e:
        rs.install()
    assert "\n" not in str(e.value)
    assert rules_of(ns) == []


def nft_tables(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], text=True, capture_output=True).stdout
    return out.splitlines()


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)")
def test_fragment_table_installed_verified_removed_and_cleaned_up_T22_5(ns: str) -> None:
    """defragment=False (flows.fragments: forward) adds dpi.nodefrag's table ahead of nf_defrag, with the chains."""
    rs = RuleSet((0, 0), netns=ns, defragment=False)
    rs.install()
    listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "redweb"], text=True,
                             capture_output=True).stdout
    assert "hook prerouting priority -450" in listing  # before nf_defrag (-400)
    assert "ip frag-off & 0x3fff != 0 notrack" in listing.replace("16383", "0x3fff")
    assert "exthdr frag exists notrack" in listing
    assert rs.verify() == [] and "nft table inet redweb" in iptables.stale_rules(ns)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "redweb"], check=True)
    assert rs.verify() == ["nft table inet redweb"]
    rs.remove()
    assert iptables.stale_rules(ns) == [] and "table inet redweb" not in nft_tables(ns)
    # A second install over a table a killed run left fails with the fix and keeps it; cleanup removes it.
    RuleSet((0, 0), netns=ns, defragment=False, ipv6=False).install()
    with pytest.raises(SetupError, match="redweb cleanup"):
        RuleSet((0, 0), netns=ns, defragment=False).install()
    assert "table inet redweb" in nft_tables(ns)
    assert iptables.cleanup(ns) == 1 + 8 + 1 + 1  # the IPv4 chain, its rules, the jump, the table
    assert "table inet redweb" not in nft_tables(ns) and iptables.stale_rules(ns) == []
    # A profile that reassembles never creates the table.
    RuleSet((0, 0), netns=ns).install()
    assert "table inet redweb" not in nft_tables(ns)


def test_parse_queues_and_networks() -> None:
    assert parse_queues("0") == (0, 0)
    assert parse_queues("2-5") == (2, 5)
    assert parse_queues("2:5") == (2, 5)
    for bad in ("", "a", "5-2", "0-70000", "-1"):
        with pytest.raises(ValueError, match="queue range"):
            parse_queues(bad)
    assert str(parse_network("10.0.0.0/8")) == "10.0.0.0/8"
    assert str(parse_network("fd00::/8")) == "fd00::/8"
    with pytest.raises(ValueError, match="did you mean 10.0.0.0/8"):
        parse_network("10.1.2.3/8")
    with pytest.raises(ValueError, match="bad CIDR"):
        parse_network("10.0.0.0/33")
    with pytest.raises(ValueError):
        RuleSet((3, 1))
