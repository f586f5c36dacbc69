"""Bad configuration (issue 7): every malformed profile or list, wrong flag, missing privilege or kernel feature
gives one line naming the problem and the fix, exit code 2, and changes nothing on the system.

Each case runs `redweb run` for real, in a fresh network namespace, and the netfilter state of that namespace
(every table, both families), its bound queues and the files the run was asked to write are compared before and
after. `python -m tests.test_robustness_config` prints the same cases as the README's Markdown table
("bad input | what redweb says"), from the real outputs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BAD_PROFILES = sorted((ROOT / "tests" / "bad_profiles").glob("*.yaml"))

GOOD_PROFILE = """name: lists-{n}
lists:
  blocked: {{format: {fmt}, files: [{file}]}}
rules:
  - name: reset-it
    match: {{{key}: blocked}}
    action: rst
"""


@dataclass
class Case:
    name: str  # what the user got wrong, as the README table says it
    args: list[str]  # after `redweb run`
    expect: str  # a piece of the one line redweb must print
    files: dict[str, str] = field(default_factory=dict)  # name → content, written to the case's directory
    wrap: str = ""  # how the command is run: "", "nobody", "no-nfqueue", "no-ip6tables", "no-iptables", "no-nfq-pkg"
    holds_port: bool = False


CASES: list[Case] = [
    *[Case(f"profile `{p.name}`", ["--profile", f"tests/bad_profiles/{p.name}"],
           p.read_text().split("expect-message:", 1)[1].splitlines()[0].strip()) for p in BAD_PROFILES],
    Case("unknown profile name", ["--profile", "no-such-profile"], "no-such-profile"),
    Case("empty profile file", ["--profile", "{dir}/empty.yaml"], "empty.yaml", files={"empty.yaml": ""}),
    Case("profile is a directory", ["--profile", "{dir}"], "{dir}"),
    Case("list with a malformed line", ["--profile", "{dir}/p.yaml"], "bad.txt:2",
         files={"p.yaml": GOOD_PROFILE.format(n=1, fmt="plain", file="bad.txt", key="tls.sni"),
                "bad.txt": "example.com\nexa mple.com\n"}),
    Case("list of networks with a bad CIDR", ["--profile", "{dir}/p.yaml"], "bad.txt:1",
         files={"p.yaml": GOOD_PROFILE.format(n=2, fmt="ip", file="bad.txt", key="ip"),
                "bad.txt": "10.0.0.0/33\n"}),
    Case("list with an invalid regex", ["--profile", "{dir}/p.yaml"], "bad.txt:1",
         files={"p.yaml": GOOD_PROFILE.format(n=3, fmt="plain", file="bad.txt", key="http.host"),
                "bad.txt": "/^(unclosed/\n"}),
    Case("list file that is binary", ["--profile", "{dir}/p.yaml"], "bad.txt",
         files={"p.yaml": GOOD_PROFILE.format(n=4, fmt="plain", file="bad.txt", key="tls.sni"),
                "bad.txt": "\udcff\udcfe\x00\x01garbage\n"}),
    Case("`--queues 5-2`", ["--profile", "gfw", "--queues", "5-2"], "bad queue range"),
    Case("`--queues abc`", ["--profile", "gfw", "--queues", "abc"], "bad queue range"),
    Case("`--queues 0-70000`", ["--profile", "gfw", "--queues", "0-70000"], "bad queue range"),
    Case("`--inside 10.0.0.0/33`", ["--profile", "gfw", "--inside", "10.0.0.0/33"], "bad CIDR"),
    Case("`--inside 10.1.2.3/8`", ["--profile", "gfw", "--inside", "10.1.2.3/8"], "did you mean 10.0.0.0/8"),
    Case("`--inside nonsense`", ["--profile", "gfw", "--inside", "nonsense"], "bad CIDR"),
    Case("`--interface nosuch0`", ["--profile", "gfw", "--interface", "nosuch0"], "no interface 'nosuch0' here"),
    Case("`--interface a/b`", ["--profile", "gfw", "--interface", "a/b"], "is not an interface name"),
    Case("`--metrics localhost`", ["--profile", "gfw", "--metrics", "localhost"], "bad metrics address"),
    Case("`--metrics 127.0.0.1:99999`", ["--profile", "gfw", "--metrics", "127.0.0.1:99999"], "bad metrics address"),
    Case("`--metrics` on a port in use", ["--profile", "gfw", "--metrics", "127.0.0.1:{port}"],
         "cannot serve metrics", holds_port=True),
    Case("`--log` in a missing directory", ["--profile", "gfw", "--log", "/nonexistent/dir/events.jsonl"],
         "does not exist"),
    Case("`--pcap` not writable", ["--profile", "gfw", "--pcap", "/proc/redweb.pcap"], "not writable"),
    Case("unknown flag `--frobnicate`", ["--profile", "gfw", "--frobnicate"], "unrecognized argument --frobnicate"),
    Case("`--queues` without a value", ["--profile", "gfw", "--queues"], "expected one argument"),
    Case("`--queue-bypass` with `--fail-closed`", ["--profile", "gfw", "--queue-bypass", "--fail-closed"],
         "not allowed with argument"),
    Case("`--seed x`", ["--profile", "gfw", "--seed", "x"], "invalid int value"),
    Case("`--verify-interval 0`", ["--profile", "gfw", "--verify-interval", "0"], "must be more than 0"),
    Case("`--restart-limit -1`", ["--profile", "gfw", "--restart-limit", "-1"], "between 0 and 1000"),
    Case("`--queue-maxlen 0`", ["--profile", "gfw", "--queue-maxlen", "0"], "between 1 and"),
    Case("no `--profile`", [], "the following arguments are required: --profile"),
    Case("not root (`setpriv --reuid=65534`)", ["--profile", "gfw"], "must run as root", wrap="nobody"),
    Case("kernel without NFQUEUE", ["--profile", "gfw"], "no nfnetlink_queue", wrap="no-nfqueue"),
    Case("`iptables` not installed", ["--profile", "gfw"], "iptables not found", wrap="no-iptables"),
    Case("`ip6tables` not installed", ["--profile", "gfw"], "or run with --no-ipv6", wrap="no-ip6tables"),
    Case("`nft` not installed, profile forwards fragments (T22-5)", ["--profile", "tspu-2022"],
         "nft not found: install nftables", wrap="no-nft"),
    Case("Python package NetfilterQueue missing", ["--profile", "gfw"], "NetfilterQueue is missing",
         wrap="no-nfq-pkg"),
]


class Namespace:
    def __init__(self) -> None:
        self.name = f"rwcfg{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.exec(["ip", "link", "set", "lo", "up"])

    def exec(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *args], text=True, capture_output=True,
                              **kw)  # type: ignore[call-overload]

    def state(self) -> str:
        """Every netfilter rule of every table in both families, and the bound queues."""
        out = []
        for b in ("iptables", "ip6tables"):
            for t in ("filter", "mangle", "raw", "nat"):
                out.append(self.exec([b, "-t", t, "-S"]).stdout)
        out.append(self.exec(["nft", "list", "ruleset"]).stdout)
        out.append(self.exec(["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout)
        return "".join(out)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def command(case: Case, d: Path, port: int) -> tuple[list[str], dict[str, str]]:
    args = [a.replace("{dir}", str(d)).replace("{port}", str(port)) for a in case.args]
    cmd = [PY, "-m", "dpi.cli", "run", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    if case.wrap == "nobody":
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    elif case.wrap == "no-nfqueue":
        # a kernel without nfnetlink_queue: /proc hidden (an empty tmpfs) in a private mount namespace
        cmd = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "sh", *cmd]
    elif case.wrap in ("no-iptables", "no-ip6tables", "no-nft"):
        bindir = d / "bin"
        bindir.mkdir(exist_ok=True)
        present = {"no-iptables": (), "no-ip6tables": ("iptables",), "no-nft": ("iptables", "ip6tables")}[case.wrap]
        for tool in ("ip", "modprobe", "setpriv", *present):
            if shutil.which(tool):
                os.symlink(shutil.which(tool), bindir / tool)  # type: ignore[arg-type]
        env["PATH"] = str(bindir)
    elif case.wrap == "no-nfq-pkg":
        stub = d / "stub"
        stub.mkdir(exist_ok=True)
        (stub / "netfilterqueue.py").write_text("raise ImportError('No module named netfilterqueue')\n")
        env["PYTHONPATH"] = f"{stub}:{ROOT}"
    return cmd, env


def run_case(case: Case, ns: Namespace, d: Path) -> tuple[int, str, str]:
    for name, content in case.files.items():
        (d / name).write_text(content, errors="surrogateescape")
    holder = None
    port = 0
    if case.holds_port:
        holder = subprocess.Popen(["ip", "netns", "exec", ns.name, PY, "-c",
                                   "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
                                   "print(s.getsockname()[1],flush=True); time.sleep(60)"],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
    try:
        cmd, env = command(case, d, port)
        r = ns.exec(cmd, cwd=str(ROOT), env=env, timeout=60)
        return r.returncode, r.stdout, r.stderr
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()


@pytest.fixture(scope="module")
def ns() -> Iterator[Namespace]:
    n = Namespace()
    try:
        yield n
    finally:
        n.close()


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("iptables") is None or shutil.which("setpriv") is None,
                    reason="needs root, iptables and setpriv")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, ns: Namespace, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    before = ns.state()
    rc, out, err = run_case(case, ns, tmp_path)
    expect = case.expect.replace("{dir}", str(tmp_path))
    assert rc == 2, (rc, out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("redweb: "), err
    assert expect in err, err
    assert "Traceback" not in err
    assert ns.state() == before  # no rule, no chain, no bound queue
    assert not Path("/nonexistent").exists() and not Path("/proc/redweb.pcap").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        set(case.files) | ({"bin"} if case.wrap in ("no-iptables", "no-ip6tables", "no-nft") else set())
        | ({"stub"} if case.wrap == "no-nfq-pkg" else set()))  # nothing written next to the inputs


def test_every_bad_profile_in_the_repository_is_a_case() -> None:
    assert len(BAD_PROFILES) >= 15
    assert all(any(p.name in c.name for c in CASES) for p in BAD_PROFILES)
    assert socket  # the port-in-use case binds one in the namespace


def markdown_table() -> str:
    """The README table, from real runs (root needed)."""
    import tempfile
    n = Namespace()
    rows = ["| bad input | what redweb says (exit code 2) |", "|---|---|"]
    try:
        for case in CASES:
            with tempfile.TemporaryDirectory() as d:
                os.chmod(d, 0o755)
                rc, out, err = run_case(case, n, Path(d))
                said = (err.strip() or out.strip()).replace(d, "DIR").replace("|", "\\|")
                rows.append(f"| {case.name} | `` {said} `` |" if rc == 2 else f"| {case.name} | (exit {rc}) {said} |")
    finally:
        n.close()
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
