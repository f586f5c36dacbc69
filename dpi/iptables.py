"""iptables rule lifecycle for the live censor: install, verify, remove, and clean up after a killed run.

The kernel under this project has no native nftables `queue` statement (PLATFORM.md), so the censor hooks in with
the xtables `NFQUEUE` target through `iptables`/`ip6tables` (iptables-nft with xt compat, or iptables-legacy).

Everything RedWeb adds lives in one chain per family, `REDWEB` in the filter table, reached by one jump from
FORWARD (an inline router, the default) or from INPUT and OUTPUT (`local` mode: the censor runs on the client's
host); with `interfaces`, by one jump per interface and direction instead, so only traffic crossing those links
is censored (a DPI box sits on one link of a router, not on all of them). The chain implements the fast path
that keeps decided flows out of user space (DESIGN.md, "Performance design"):

0. packets of decided connections are accepted/dropped by the connmark, first, so the bulk of the traffic
   leaves the chain after one rule;
1. a packet the worker gave back with NF_REPEAT carries an nfmark bit saying how its flow was decided; a
   rule copies that bit into the connmark, so the *rest* of the flow never reaches the queue;
2. packets marked PASS are accepted at once: the injector's own forged packets (they must never be censored
   again, which matters in local mode where they cross OUTPUT), and the one packet of a flow whose future is
   "drop" but which itself passes (GQ-2: the triggering QUIC Initial passes, later datagrams are dropped);
3. the repeated packet itself is accepted/dropped by its nfmark (this also covers untracked packets, whose
   connmark cannot be saved: without these rules they would loop back into the queue);
5. everything else of TCP and UDP goes to NFQUEUE (`--queue-bypass` unless fail-closed: with no worker bound
   the kernel then accepts instead of dropping).

NF_REPEAT re-runs the *same* hook entry (filter at this hook), which is why the mark-saving rule sits in the
filter chain itself and no mangle chain is needed.

Every rule carries `-m comment --comment redweb`, so `cleanup()` finds what any run added (also a run killed
with SIGKILL) in both families, and leaves everybody else's rules alone.

A profile whose censor forwards IP fragments uninspected (`flows.fragments: forward`, T22-5) also gets the
nftables table of `dpi.nodefrag`, which keeps conntrack from reassembling fragments before the queue; it is
installed, verified and removed with the chains, and `cleanup()` removes it too.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

from dpi import nodefrag

CHAIN = "REDWEB"
COMMENT = "redweb"
TABLE = "filter"

# nfmark/connmark bits (all inside 0x00520000, 'R' << 16): clear of the low bits that policy routing, wg-quick
# and Kubernetes (0x4000/0x8000) use and of Tailscale's 0x40000/0x80000.
FLOW_ACCEPT = 0x00020000  # connmark: this flow is decided, accept it in the kernel
FLOW_DROP = 0x00100000  # connmark: this flow is decided, drop it in the kernel
FLOW_MASK = FLOW_ACCEPT | FLOW_DROP
PASS = 0x00400000  # nfmark only: accept this one packet without queueing it (forged packets, pass-once)
MARK_MASK = FLOW_MASK | PASS

Mode = Literal["forward", "local"]

_RUN_TIMEOUT = 20.0
_COMMENT_RE = re.compile(r"(^|\s)--comment\s+(\"redweb\"|redweb)(\s|$)")
_QUEUE_RE = re.compile(r"--queue-(?:num\s+(\d+)|balance\s+(\d+):(\d+))")


class SetupError(Exception):
    """Installing the rules failed; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class _Rule:
    """One rule as (chain, match-and-target args); rendered with -A/-I/-C/-D."""

    chain: str
    spec: tuple[str, ...]
    insert: bool = False  # jumps go first in the built-in chain: RedWeb must see packets before other rules

    def text(self, binary: str) -> str:
        return f"{binary} -t {TABLE} -A {self.chain} " + " ".join(shlex.quote(a) for a in self.spec)


def _hex(v: int) -> str:
    return f"{v:#x}"


def _tag(*args: str) -> tuple[str, ...]:
    """Insert the comment match before the target, where iptables -S prints it (so -C/-D match reliably)."""
    j = args.index("-j")
    return (*args[:j], "-m", "comment", "--comment", COMMENT, *args[j:])


class _Cmd:
    """Runs iptables-family commands, optionally inside a named network namespace."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _exec(self, argv: list[str], timed_out: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`argv` in the namespace; a missing program or a timeout is a failed result, never an exception."""
        cmd = [*self.prefix(), *argv]
        try:
            return subprocess.run(cmd, text=True, capture_output=True, timeout=_RUN_TIMEOUT, input=stdin)
        except FileNotFoundError as e:
            return subprocess.CompletedProcess(cmd, 127, "", f"{e.filename}: not found")
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", timed_out)

    def run(self, binary: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self._exec([binary, "-w", "5", *args], f"{binary} timed out (xtables lock held?)")

    def nft(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`nft ARGS` in the namespace (dpi.nodefrag's runner)."""
        return self._exec(["nft", *args], "nft timed out", stdin)

    def read(self, path: str) -> str:
        """Read a per-namespace /proc file (as seen from inside the namespace)."""
        if not self.netns:
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    return f.read()
            except OSError:
                return ""
        r = subprocess.run([*self.prefix(), "cat", path], text=True, capture_output=True, timeout=_RUN_TIMEOUT)
        return r.stdout if r.returncode == 0 else ""


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "(no message)"


class RuleSet:
    """The rules of one `redweb run`, for IPv4 and (unless ipv6=False) IPv6.

    `queues` is the inclusive range of queue numbers the workers bind; more than one queue uses
    `--queue-balance`, which hashes the address pair, so both directions of a flow reach the same worker.
    `defragment=False` adds dpi.nodefrag's table: fragments reach the queue as fragments (T22-5).
    `interfaces`: censor only packets entering or leaving through these (iptables names: `eth+` is a wildcard).
    """

    def __init__(self, queues: tuple[int, int] = (0, 0), *, mode: Mode = "forward", fail_closed: bool = False,
                 ipv6: bool = True, netns: str | None = None, defragment: bool = True,
                 interfaces: tuple[str, ...] = (),
                 binaries: tuple[str, str] = ("iptables", "ip6tables")) -> None:
        lo, hi = queues
        if not (0 <= lo <= hi <= 65535):
            raise ValueError(f"bad queue range {lo}-{hi}: need 0 <= A <= B <= 65535")
        if mode not in ("forward", "local"):
            raise ValueError(f"bad mode {mode!r}: 'forward' or 'local'")
        self.queues = (lo, hi)
        self.mode: Mode = mode
        self.fail_closed = fail_closed
        self.ipv6 = ipv6
        self.binaries = binaries if ipv6 else (binaries[0],)
        self.defragment = defragment
        self.interfaces = tuple(interfaces)
        self._cmd = _Cmd(netns)

    # -- the plan ------------------------------------------------------------------------------------------
    def queue_args(self) -> tuple[str, ...]:
        lo, hi = self.queues
        q = ("--queue-num", str(lo)) if lo == hi else ("--queue-balance", f"{lo}:{hi}")
        return (*q, "--queue-bypass") if not self.fail_closed else q

    def chain_rules(self) -> list[_Rule]:
        fm, fa, fd, p = _hex(FLOW_MASK), _hex(FLOW_ACCEPT), _hex(FLOW_DROP), _hex(PASS)
        specs = [
            # decided connections first: the bulk of all packets leaves the chain after one rule
            _tag("-m", "connmark", "--mark", f"{fa}/{fm}", "-j", "ACCEPT"),
            _tag("-m", "connmark", "--mark", f"{fd}/{fm}", "-j", "DROP"),
            _tag("-m", "mark", "!", "--mark", f"0x0/{fm}",
                 "-j", "CONNMARK", "--save-mark", "--nfmask", fm, "--ctmask", fm),
            _tag("-m", "mark", "--mark", f"{p}/{p}", "-j", "ACCEPT"),
            _tag("-m", "mark", "--mark", f"{fd}/{fd}", "-j", "DROP"),
            _tag("-m", "mark", "--mark", f"{fa}/{fa}", "-j", "ACCEPT"),
            _tag("-p", "tcp", "-j", "NFQUEUE", *self.queue_args()),
            _tag("-p", "udp", "-j", "NFQUEUE", *self.queue_args()),
        ]
        return [_Rule(CHAIN, s) for s in specs]

    def jump_rules(self) -> list[_Rule]:
        if self.interfaces:
            # Both directions of a flow cross the interface, one as -i and one as -o, so flows stay whole.
            ins, outs = ("FORWARD", "FORWARD") if self.mode == "forward" else ("INPUT", "OUTPUT")
            return [_Rule(chain, _tag(flag, iface, "-j", CHAIN), insert=True)
                    for iface in self.interfaces for chain, flag in ((ins, "-i"), (outs, "-o"))]
        if self.mode == "forward":
            return [_Rule("FORWARD", _tag("-j", CHAIN), insert=True)]
        # Local mode: loopback stays uncensored (the metrics endpoint, local services talking to themselves).
        return [_Rule("INPUT", _tag("!", "-i", "lo", "-j", CHAIN), insert=True),
                _Rule("OUTPUT", _tag("!", "-o", "lo", "-j", CHAIN), insert=True)]

    def describe(self) -> list[str]:
        """The rules as iptables command lines, for logs and error messages."""
        out = []
        for b in self.binaries:
            out.append(f"{b} -t {TABLE} -N {CHAIN}")
            out += [r.text(b) for r in self.chain_rules() + self.jump_rules()]
        if not self.defragment:
            out += ["nft -f - <<EOF", *nodefrag.ruleset(self.ipv6).splitlines(), "EOF"]
        return out

    # -- lifecycle -----------------------------------------------------------------------------------------
    def install(self) -> None:
        """Add the chain and jumps for every family; on any failure undo what this call added and raise SetupError.

        The undo touches only what this call created, so a failed install over another run's rules leaves them.
        """
        for b in self.binaries:
            if shutil.which(b) is None:
                raise SetupError(f"{b} not found: install it (apt-get install iptables)"
                                 + ("" if b == self.binaries[0] else " or run with --no-ipv6"))
        added: list[tuple[str, _Rule | None]] = []  # (binary, jump) or (binary, None) for a created chain
        nft_added = False
        try:
            if not self.defragment:  # first: no fragment may be reassembled once packets are queued
                try:
                    nodefrag.install(self._cmd.nft, self.ipv6)
                except nodefrag.NoDefragError as e:
                    raise SetupError(str(e)) from None
                nft_added = True
            for b in self.binaries:
                self._install_family(b, added)
        except BaseException:
            if nft_added:
                nodefrag.remove(self._cmd.nft)
            for b, rule in reversed(added):
                if rule is None:
                    self._cmd.run(b, "-t", TABLE, "-F", CHAIN)
                    self._cmd.run(b, "-t", TABLE, "-X", CHAIN)
                else:
                    self._cmd.run(b, "-t", TABLE, "-D", rule.chain, *rule.spec)
            raise

    def _install_family(self, b: str, added: list[tuple[str, _Rule | None]]) -> None:
        fam_fix = " or run with --no-ipv6" if b.startswith("ip6") else ""
        r = self._cmd.run(b, "-t", TABLE, "-N", CHAIN)
        if r.returncode != 0:
            if "exists" in r.stderr:
                raise SetupError(f"chain {CHAIN} already exists ({b}): a previous run left rules; "
                                 "run `redweb cleanup` first")
            raise SetupError(f"{b} cannot create chain {CHAIN}: {_first_line(r.stderr)}: "
                             f"check that {b} works here (root? iptables-nft or -legacy installed?){fam_fix}")
        added.append((b, None))
        for rule in self.chain_rules():
            r = self._cmd.run(b, "-t", TABLE, "-A", rule.chain, *rule.spec)
            if r.returncode != 0:
                raise SetupError(self._explain(b, rule, r.stderr) + fam_fix)
        for rule in self.jump_rules():
            r = self._cmd.run(b, "-t", TABLE, "-I", rule.chain, "1", *rule.spec)
            if r.returncode != 0:
                raise SetupError(self._explain(b, rule, r.stderr) + fam_fix)
            added.append((b, rule))

    @staticmethod
    def _explain(b: str, rule: _Rule, stderr: str) -> str:
        msg = _first_line(stderr)
        if "NFQUEUE" in rule.spec:
            return (f"the kernel refused the NFQUEUE rule ({b}: {msg}): load the modules "
                    "(modprobe nfnetlink_queue xt_NFQUEUE) or use a kernel with CONFIG_NETFILTER_XT_TARGET_NFQUEUE")
        if "connmark" in rule.spec or "CONNMARK" in rule.spec:
            return (f"the kernel refused the connmark rule ({b}: {msg}): load the modules "
                    "(modprobe xt_connmark nf_conntrack) or use a kernel with CONFIG_NETFILTER_XT_CONNMARK")
        return f"{b} refused a rule ({msg}): `{rule.text(b)}` must work here"

    def remove(self) -> None:
        """Remove this rule set's jumps and chain in every family. Idempotent; never raises."""
        for b in self.binaries:
            for rule in self.jump_rules():
                for _ in range(64):  # a jump inserted twice by hand is removed too
                    if self._cmd.run(b, "-t", TABLE, "-D", rule.chain, *rule.spec).returncode != 0:
                        break
            self._cmd.run(b, "-t", TABLE, "-F", CHAIN)
            self._cmd.run(b, "-t", TABLE, "-X", CHAIN)
        if not self.defragment:
            nodefrag.remove(self._cmd.nft)

    def queue_rule_hits(self) -> int:
        """Packets that reached this rule set's NFQUEUE rules so far, all families (-1 if they cannot be read).

        Set against the packets the kernel handed to the queues, this tells how many the censor never saw: passed
        by the kernel (fail-open: a full queue, or nobody bound) or dropped (fail-closed).
        """
        total = 0
        for b in self.binaries:
            r = self._cmd.run(b, "-t", TABLE, "-L", CHAIN, "-n", "-v", "-x")
            if r.returncode != 0:
                return -1
            for line in r.stdout.splitlines():
                parts = line.split()
                if len(parts) > 2 and parts[2] == "NFQUEUE" and parts[0].isdigit():
                    total += int(parts[0])
        return total

    def verify(self) -> list[str]:
        """Rules that should be present and are not (e.g. deleted by hand), as iptables command lines."""
        missing: list[str] = []
        for b in self.binaries:
            if self._cmd.run(b, "-t", TABLE, "-S", CHAIN).returncode != 0:
                missing.append(f"{b} -t {TABLE} -N {CHAIN}")
            for rule in self.chain_rules() + self.jump_rules():
                if self._cmd.run(b, "-t", TABLE, "-C", rule.chain, *rule.spec).returncode != 0:
                    missing.append(rule.text(b))
        if not self.defragment and not nodefrag.present(self._cmd.nft):
            missing.append(nodefrag.NAME)
        return missing


# -- stale rules of earlier (killed) runs ----------------------------------------------------------------------
_TABLES = ("filter", "mangle", "raw", "nat")


def _binaries(cmd: _Cmd) -> list[str]:
    """The iptables front-ends that may hold RedWeb rules here.

    The default `iptables`/`ip6tables` (whatever the alternatives point to); plus the legacy front-ends when
    legacy tables exist in this namespace, so rules of a run made under the other back-end are found too.
    Legacy is only asked when its tables already exist, because asking would create them.
    """
    out = []
    for default, legacy, names in (("iptables", "iptables-legacy", "/proc/net/ip_tables_names"),
                                   ("ip6tables", "ip6tables-legacy", "/proc/net/ip6_tables_names")):
        if shutil.which(default):
            out.append(default)
        real = os.path.realpath(shutil.which(default) or "")
        if shutil.which(legacy) and "legacy" not in real and cmd.read(names).strip():
            out.append(legacy)
    return out


def _tables(cmd: _Cmd, binary: str) -> list[str]:
    if "legacy" in binary:
        names = "/proc/net/ip6_tables_names" if binary.startswith("ip6") else "/proc/net/ip_tables_names"
        return [t for t in cmd.read(names).split() if t in _TABLES]
    return list(_TABLES)


def _ours(line: str) -> bool:
    parts = line.split()
    if len(parts) >= 2 and parts[0] == "-N" and parts[1].startswith(CHAIN):
        return True
    return parts[:1] == ["-A"] and (_COMMENT_RE.search(line) is not None
                                    or (len(parts) > 1 and parts[1].startswith(CHAIN)))


def _scan(cmd: _Cmd) -> list[tuple[str, str, str]]:
    """(binary, table, iptables -S line) for every RedWeb chain and rule."""
    found = []
    for b in _binaries(cmd):
        for t in _tables(cmd, b):
            r = cmd.run(b, "-t", t, "-S")
            if r.returncode != 0:
                continue
            found += [(b, t, line) for line in r.stdout.splitlines() if _ours(line)]
    return found


def stale_rules(netns: str | None = None) -> list[str]:
    """Every RedWeb rule and chain present now, as `binary -t table <iptables -S line>`, and the nftables
    fragment table (dpi.nodefrag) as `nft table inet redweb`."""
    cmd = _Cmd(netns)
    found = [f"{b} -t {t} {line}" for b, t, line in _scan(cmd)]
    if nodefrag.present(cmd.nft):
        found.append(nodefrag.NAME)
    return found


def stale_queues(netns: str | None = None, *, lines: list[str] | None = None) -> set[int]:
    """Queue numbers that present RedWeb rules (or the given `stale_rules()` lines) send packets to.

    Together with the queues bound right now, this tells a live run's rules from a dead run's.
    """
    out: set[int] = set()
    for line in stale_rules(netns) if lines is None else lines:
        for m in _QUEUE_RE.finditer(line):
            if m.group(1) is not None:
                out.add(int(m.group(1)))
            else:
                out.update(range(int(m.group(2)), int(m.group(3)) + 1))
    return out


def cleanup(netns: str | None = None) -> int:
    """Remove every RedWeb rule and chain (both families, every back-end in use) and the nftables fragment
    table; return how many were removed.

    Jumps (tagged rules in built-in or foreign chains) go first, then RedWeb's own chains are flushed and
    deleted. Idempotent: a second call returns 0.
    """
    cmd = _Cmd(netns)
    removed = 0
    found = _scan(cmd)
    for b, t, line in found:
        parts = shlex.split(line)
        if parts[0] == "-A" and not parts[1].startswith(CHAIN):
            if cmd.run(b, "-t", t, "-D", *parts[1:]).returncode == 0:
                removed += 1
    for b, t, line in found:
        parts = line.split()
        if parts[0] == "-N":
            n_rules = sum(1 for bb, tt, ll in found if (bb, tt) == (b, t) and ll.split()[:2] == ["-A", parts[1]])
            cmd.run(b, "-t", t, "-F", parts[1])
            if cmd.run(b, "-t", t, "-X", parts[1]).returncode == 0:
                removed += 1 + n_rules
    return removed + nodefrag.remove(cmd.nft)


def parse_queues(text: str) -> tuple[int, int]:
    """`"A"` or `"A-B"` (also `A:B`) → (A, B); raises ValueError with a message fit for the user."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*(?:[-:]\s*(\d{1,5})\s*)?", text)
    if not m:
        raise ValueError(f"bad queue range {text!r}: write N or A-B, e.g. 0 or 0-1")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if hi > 65535 or lo > hi:
        raise ValueError(f"bad queue range {text!r}: need 0 <= A <= B <= 65535")
    return lo, hi


_IFNAMSIZ = 16  # linux/if.h, with the terminating NUL


def parse_interface(text: str) -> str:
    """An --interface name that exists here (`eth+`: any interface whose name starts with eth); ValueError names
    the fix. Looked up in the current network namespace (if_nameindex), which /sys may not reflect."""
    import socket
    name = text.strip()
    base = name[:-1] if name.endswith("+") else name
    if not name or len(name) >= _IFNAMSIZ or name in (".", "..") or any(c in name for c in "/: \t") \
            or "+" in base:
        raise ValueError(f"{text!r} is not an interface name: up to 15 characters, no '/', ':' or spaces "
                         "(a trailing + matches every name that starts with the rest, e.g. eth+)")
    here = [n for _i, n in socket.if_nameindex()]
    if not any(n == name or (name.endswith("+") and n.startswith(base)) for n in here):
        raise ValueError(f"no interface {name!r} here (this host has {', '.join(sorted(here))}): "
                         "`ip link` lists them")
    return name


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR for --inside; raises ValueError naming the fix (host bits set → the network it probably meant)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"bad CIDR {text!r}: {e}; write e.g. 10.0.0.0/8 or fd00::/8") from None
        raise ValueError(f"bad CIDR {text!r}: host bits are set; did you mean {net}?") from None
