"""T22-5 on a live router: IP fragments reach the censor as fragments, not reassembled by the kernel.

Why this exists: the connmark fast path needs connection tracking, and once conntrack is used in a network
namespace the kernel reassembles IP fragments (nf_defrag, at priority -400 of PREROUTING) before any iptables
rule or NFQUEUE sees a packet. A censor that forwards fragments one by one without inspecting them (TSPU,
T22-5) would then behave like one that reassembles, and a ClientHello sent as IP fragments would be read.

How: the kernel skips reassembly for a packet that is already marked untracked (nf_defrag_ipv4/ipv6 return
early for IP_CT_UNTRACKED), and only nftables can mark packets that early: a chain at priority -450, ahead of
nf_defrag, sets `notrack` on every IPv4 fragment (MF set or offset non-zero) and every IPv6 packet carrying a
Fragment header. Those packets then cross FORWARD one by one, untracked (no connmark, so the REDWEB chain queues
each of them), and the core counts and forwards them uninspected, dropping packets of more than
`flows.max_fragments` fragments. Everything else is tracked as before. This chain only marks: the kernel's
missing nftables `queue` statement (PLATFORM.md) does not matter here.

Installed by `dpi.iptables.RuleSet` for profiles with `flows.fragments: forward`; one table per namespace,
`inet redweb`, removed with the run's rules and by `redweb cleanup`. Untracked fragments also bypass NAT on
this box, so such a profile belongs on a router that does not NAT the censored traffic.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

FAMILY = "inet"
TABLE = "redweb"
CHAIN = "fragments"
PRIORITY = -450  # NF_IP_PRI_RAW_BEFORE_DEFRAG: ahead of nf_defrag (-400) and of conntrack (-200)
NAME = f"nft table {FAMILY} {TABLE}"

# runs `nft ARGS...` (inside the censor's namespace) with optional standard input
Runner = Callable[[list[str], str | None], subprocess.CompletedProcess[str]]


class NoDefragError(Exception):
    """The fragment chain could not be installed; the message is one line naming the problem and the fix."""


def ruleset(ipv6: bool = True) -> str:
    """The table as `nft -f` reads it."""
    rules = ['\t\tip frag-off & 0x3fff != 0 notrack comment "redweb T22-5: IPv4 fragments skip reassembly"']
    if ipv6:
        rules.append('\t\texthdr frag exists notrack comment "redweb T22-5: IPv6 fragments skip reassembly"')
    return (f"table {FAMILY} {TABLE} {{\n"
            f'\tcomment "redweb: IP fragments reach the censor unreassembled (flows.fragments: forward)"\n'
            f"\tchain {CHAIN} {{\n"
            f"\t\ttype filter hook prerouting priority {PRIORITY}; policy accept;\n"
            + "\n".join(rules) + "\n\t}\n}\n")


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "(no message)")


def present(run: Runner) -> bool:
    """Whether the table is there (False also when nft is missing: then nothing of ours can be)."""
    return run(["list", "table", FAMILY, TABLE], None).returncode == 0


def require_nft(profile: str = "this profile") -> None:
    """Raise NoDefragError naming the fix when the `nft` program is missing."""
    if shutil.which("nft") is None:
        raise NoDefragError(f"nft not found: install nftables (apt-get install nftables): {profile} forwards IP "
                            "fragments uninspected (flows.fragments: forward, T22-5), which needs an nftables "
                            "chain ahead of the kernel's reassembly")


def install(run: Runner, ipv6: bool = True) -> None:
    """Add the table; raises NoDefragError (and leaves nothing behind) when nft is missing or refuses it."""
    require_nft()
    if present(run):
        raise NoDefragError(f"{NAME} already exists: a previous run left it; run `redweb cleanup` first")
    r = run(["-f", "-"], ruleset(ipv6))
    if r.returncode != 0:
        remove(run)
        raise NoDefragError(f"the kernel refused the nftables fragment chain ({_first_line(r.stderr)}): it needs "
                            "nf_tables with notrack (CONFIG_NF_TABLES, CONFIG_NFT_CT); or use a profile with "
                            "flows.fragments: reassemble")


def remove(run: Runner) -> int:
    """Delete the table if it is there; 1 if it was removed. Never raises."""
    if not present(run):
        return 0
    return 1 if run(["delete", "table", FAMILY, TABLE], None).returncode == 0 else 0
