"""The lab topologies (`topologies/inline.py`, `topologies/isp.py`): their address plans, loading them the way
`mn --custom` does, and real Mininet networks built from them (IPv4 + IPv6 reachability, the transit hop after
the censor, offloads off on the censor's interfaces, nothing left behind)."""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOPOLOGIES = REPO / "topologies"

mininet = pytest.importorskip("mininet.topo", reason="Mininet (Debian package) is not importable")

from dpi.lab import build_topology  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mnexec") is None,
                                reason="needs root and Mininet's mnexec")


def _root_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _all_layout_addresses(layout) -> list[str]:
    out = [a for pair in layout.node_addrs.values() for a in pair]
    out += [a for pair in layout.name_addrs for a in pair]
    out += [a for h in layout.hosted for a in h.addr]
    return out


def _list_networks(name: str) -> list:
    """The networks of an `ip`-format list in rules/lists/ (what the profiles' IP rules match)."""
    text = (REPO / "rules" / "lists" / name).read_text()
    return [ipaddress.ip_network(ln.split("#")[0].strip()) for ln in text.splitlines() if ln.split("#")[0].strip()]


def _listed(addr: str, nets: list) -> bool:
    ip = ipaddress.ip_address(addr)
    return any(ip.version == n.version and ip in n for n in nets)


# ------------------------------------------------------------------------------------------- address plans

@pytest.mark.parametrize("name", ["inline", "isp"])
def test_layout_addresses_are_private_unique_and_complete(name: str) -> None:
    topo = build_topology(name, names=12)
    L = topo.layout
    addrs = _all_layout_addresses(L)
    assert all(ipaddress.ip_address(a).is_private for a in addrs), "lab addresses must stay in private ranges"
    assert len(addrs) == len(set(addrs)), "every node and every lab name needs its own address"
    assert len(L.name_addrs) == 12
    assert {L.censor, L.web, L.resolver, *L.clients} <= set(topo.hosts())
    # Interface names live in the kernel: IFNAMSIZ allows 15 characters.
    for n in topo.nodes():
        for iface in topo.nodeInfo(n).get("ifaces", ()):
            assert len(iface.name) <= 15


@pytest.mark.parametrize("name", ["inline", "isp"])
def test_inside_covers_clients_and_domestic_but_not_the_servers(name: str) -> None:
    L = build_topology(name).layout
    inside = [ipaddress.ip_network(c) for c in L.inside]

    def is_inside(a: str) -> bool:
        ip = ipaddress.ip_address(a)
        return any(ip.version == n.version and ip in n for n in inside)

    for c in L.clients:
        assert all(is_inside(a) for a in L.node_addrs[c])
    if L.domestic:
        assert all(is_inside(a) for a in L.domestic_addr)
    for a in (*L.web_addr, *L.resolver_addr, *[x for pair in L.name_addrs for x in pair],
              *[x for h in L.hosted for x in h.addr]):
        assert not is_inside(a), f"{a} is a foreign server: the censor must see it as outside"


@pytest.mark.parametrize("name", ["inline", "isp"])
def test_hosted_names_sit_in_the_ranges_the_ip_rules_list(name: str) -> None:
    """The point of the hosted names: their default addresses are on the bundled IP lists, so T22-3 (tspu-2022),
    T25-1 (tspu-2025) and GF-2 (gfw-fet) act on them in the lab; the ordinary lab names are on none."""
    L = build_topology(name).layout
    hosted = {h.name: h.addr for h in L.hosted}
    assert hosted == {"cdn.example": ("198.51.100.10", "2001:db8:cd::10"),
                      "banned-ip.example": ("203.0.113.10", "2001:db8:bad::10")}
    t22, t25, gf2 = (_list_networks(f) for f in ("tspu-2022-ip.txt", "tspu-2025-hosting.txt",
                                                 "gfw-fet-servers.txt"))
    assert all(_listed(a, t25) for a in hosted["cdn.example"]) and not any(_listed(a, t22) for a in
                                                                           hosted["cdn.example"])
    assert _listed(hosted["cdn.example"][0], gf2)
    assert all(_listed(a, t22) for a in hosted["banned-ip.example"])
    ordinary = [a for pair in (*L.name_addrs, L.web_addr, L.resolver_addr) for a in pair]
    assert not any(_listed(a, nets) for a in ordinary for nets in (t22, t25, gf2))
    # The lab's list of hosted names (dpi.lab) and the topology's agree.
    from dpi.lab import HOSTED_NAMES
    assert set(HOSTED_NAMES) == set(hosted)


def test_hosted_networks_are_parameters() -> None:
    L = build_topology("isp", hosting="192.0.2.0/24", hosting6="2001:db8:aa::/48", banned="", banned6="").layout
    assert [(h.name, h.addr) for h in L.hosted] == [("cdn.example", ("192.0.2.10", "2001:db8:aa::10"))]
    topo = build_topology("inline", banned="203.0.113.64/26")
    assert [h.addr[0] for h in topo.layout.hosted] == ["198.51.100.10", "203.0.113.74"]
    # The server carries the addresses, the router in front of it routes them to it: host routes only, so the
    # rest of each range (where GD-2's forged DNS answers point) stays unreachable.
    srv = topo.nodeInfo("srv")["ifaces"][0]
    assert "198.51.100.10/32" in srv.v4 and "2001:db8:bad::10/128" in srv.v6
    assert ("203.0.113.74/32", topo.layout.web_addr[0]) in topo.nodeInfo("censor")["routes"]
    isp = build_topology("isp")
    assert ("2001:db8:cd::10/128", isp.layout.web_addr[1]) in isp.nodeInfo("transit")["routes"]
    assert not any(dst.startswith("198.51.100.0") for dst, _via in isp.nodeInfo("transit")["routes"])


@pytest.mark.parametrize("params, match", [
    ({"hosting": "10.200.5.0/24"}, "overlaps"),           # inside the foreign network: would shadow lab names
    ({"banned": "10.1.0.0/25"}, "overlaps"),             # inside the access network: the censor would see it inside
    ({"hosting6": ""}, "go together"),
    ({"banned": "2001:db8:bad::/48"}, "IPv4"),
    ({"banned": "198.51.100.0/24"}, "share"),            # the same address for both names
    ({"hosting": "not-a-net"}, "not a network"),
])
def test_hosted_networks_reject_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_topology("isp", **params)


def test_isp_parameters_change_the_plan() -> None:
    topo = build_topology("isp", clients=3, names=4, access="10.77.0.0/24", foreign="10.78.0.0/16", tag="rzz")
    L = topo.layout
    assert L.clients == ("c1", "c2", "c3")
    assert L.node_addrs["c3"][0].startswith("10.77.0.")
    assert all(a.startswith("10.78.") for a, _ in L.name_addrs)
    assert "10.77.0.0/24" in L.inside
    assert sorted(topo.switches()) == ["rzzacc1", "rzzdom1", "rzzwan1"]


def test_isp_rejects_impossible_parameters() -> None:
    with pytest.raises(ValueError, match="too small"):
        build_topology("isp", names=300, foreign="10.200.0.0/24")
    with pytest.raises(ValueError, match="tag"):
        build_topology("isp", tag="toolong")


@pytest.mark.parametrize("name", ["inline", "isp"])
def test_loads_like_mn_custom_without_dunder_file(name: str) -> None:
    """`mn --custom` exec()s the file with neither __file__ nor the topologies folder on sys.path."""
    path = TOPOLOGIES / f"{name}.py"
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TOPOLOGIES]
    try:
        customs: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), customs, customs)  # noqa: S102 - what mn does
    finally:
        sys.path[:] = saved
    assert name in customs["topos"]
    assert customs["topos"][name]().layout.topo == name


# ---------------------------------------------------------------------------------------- real networks

@needs_root
@pytest.mark.mininet
@pytest.mark.parametrize("name", ["inline", "isp"])
def test_mn_custom_pingall(name: str) -> None:
    """The documented command line works as is: `--switch lxbr` needs no extra flags (the topology's own
    bridges already are Linux bridges, and the lab turns bridge netfilter off)."""
    before = _root_links()
    r = subprocess.run(["mn", "--custom", str(TOPOLOGIES / f"{name}.py"), "--topo", name, "--switch", "lxbr",
                        "--controller", "none", "--test", "pingall"], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    m = re.search(r"Results: (\d+)% dropped \((\d+)/(\d+) received\)", out)
    assert m and m.group(1) == "0" and m.group(2) == m.group(3), out
    assert _root_links() - before == set(), "mn left links behind"


@pytest.fixture
def isp_net():
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from dpi.lab import _topo_tool
    labnet = _topo_tool("labnet")
    setLogLevel("warning")
    before = _root_links()
    topo = build_topology("isp", clients=1, names=2, tag="rtst")
    net = Mininet(topo=topo, controller=None, switch=labnet.LabBridge, build=True, autoSetMacs=True,
                  waitConnected=False)
    try:
        net.start()
        yield net, topo.layout
    finally:
        net.stop()
    assert _root_links() - before == set(), "links left behind after net.stop()"


def _cmd(node, line: str) -> tuple[int, str]:
    out = node.cmd(line + "; echo __rc=$?")
    body, _, rc = out.rpartition("__rc=")
    return int(rc.strip() or 1), body


@needs_root
@pytest.mark.mininet
def test_isp_routes_ipv4_and_ipv6_end_to_end(isp_net) -> None:
    net, L = isp_net
    c1, web = net["c1"], net["web"]
    # IPv6 is usable at once: no address is left tentative (nodad / accept_dad=0).
    for n in (c1, web, net["censor"], net["transit"]):
        assert n.cmd("ip -6 addr show tentative").strip() == ""
    rc, out = _cmd(c1, f"ping -c1 -W3 {L.web_addr[0]}")
    assert rc == 0, out
    rc, out = _cmd(c1, f"ping -6 -c1 -W3 {L.web_addr[1]}")
    assert rc == 0, out
    # Every per-name address answers too (they are aliases on the web server).
    rc, out = _cmd(c1, f"ping -c1 -W3 {L.name_addrs[1][0]} && ping -6 -c1 -W3 {L.name_addrs[1][1]}")
    assert rc == 0, out
    # Domestic traffic crosses the censor without leaving the country.
    rc, out = _cmd(c1, f"ping -c1 -W3 {L.domestic_addr[0]}")
    assert rc == 0, out



@needs_root
@pytest.mark.mininet
def test_isp_routes_the_hosted_names_inside_the_lab_only(isp_net) -> None:
    """cdn.example / banned-ip.example addresses answer through censor and transit (IPv4 and IPv6), from the web
    host; the machine's own namespace gets neither the addresses nor routes to them."""
    net, L = isp_net
    c1 = net["c1"]
    for h in L.hosted:
        rc, out = _cmd(c1, f"ping -c1 -W3 {h.addr[0]} && ping -6 -c1 -W3 {h.addr[1]}")
        assert rc == 0, out
        assert f"via {L.web_addr[0]}" in net["transit"].cmd(f"ip route get {h.addr[0]}")
        assert h.addr[0] in net["web"].cmd("ip -4 addr show dev web-eth0")
        # Only the served address: a neighbour in its range (a GD-2 forged answer, e.g. .25) is unreachable.
        neighbour = str(ipaddress.ip_address(h.addr[0]) + 15)
        rc, out = _cmd(c1, f"ping -c1 -W1 {neighbour}")
        assert rc != 0, out
        for family, a in (("-4", h.addr[0]), ("-6", h.addr[1])):
            root = subprocess.run(["ip", family, "route", "show", "match", a], capture_output=True, text=True)
            assert not any(ln.split()[0] != "default" for ln in root.stdout.splitlines()), root.stdout
            addrs = subprocess.run(["ip", family, "addr", "show"], capture_output=True, text=True).stdout
            assert f" {a}/" not in addrs


@needs_root
@pytest.mark.mininet
def test_isp_ttl_expires_after_the_censor(isp_net) -> None:
    """A packet with TTL 2 passes the censor and dies at the transit router, before the servers."""
    net, L = isp_net
    c1 = net["c1"]
    censor_addr, transit_addr = L.node_addrs["censor"][0], L.node_addrs["transit"][0]
    _rc, out1 = _cmd(c1, f"ping -c1 -W2 -t 1 {L.web_addr[0]}")
    _rc, out2 = _cmd(c1, f"ping -c1 -W2 -t 2 {L.web_addr[0]}")
    assert "exceeded" in out1.lower() and censor_addr in out1, out1
    assert "exceeded" in out2.lower() and transit_addr in out2, out2
    rc, out3 = _cmd(c1, f"ping -c1 -W2 -t 3 {L.web_addr[0]}")
    assert rc == 0, out3


@needs_root
@pytest.mark.mininet
def test_censor_interfaces_have_offloads_off(isp_net) -> None:
    net, _L = isp_net
    censor = net["censor"]
    for intf in censor.intfNames():
        if intf == "lo":
            continue
        feats = censor.cmd(f"ethtool -k {intf}")
        for feature in ("tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload"):
            m = re.search(rf"^{feature}: (\w+)", feats, re.M)
            assert m and m.group(1) == "off", f"{intf} {feature}: {feats}"
    assert censor.cmd("sysctl -n net.ipv4.ip_forward").strip() == "1"
    assert censor.cmd("sysctl -n net.ipv6.conf.all.forwarding").strip() == "1"
