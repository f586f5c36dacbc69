"""Client-side firewall rules that live exactly as long as one probe connection.

Some evasions are not about what the client sends but about what it refuses to hear: Henan's injector sends one
RST/ACK with a fixed payload to the client and touches nothing else (H-2), so a client whose firewall drops that
RST just carries on (H-E). The rule matches this connection only (addresses and both ports), is tagged with the
comment `redweb-probe` and is removed when the fetch ends, whatever the outcome.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
from types import TracebackType

COMMENT = "redweb-probe"


class FirewallError(OSError):
    """iptables is missing or refused the rule (needs root)."""


class DropRst:
    """`iptables -I INPUT ... --tcp-flags RST RST [-m string --hex-string |PAYLOAD|] -j DROP` for one connection."""

    def __init__(self, local: tuple[str, int], remote: tuple[str, int], payload: bytes = b"") -> None:
        v6 = ipaddress.ip_address(remote[0]).version == 6
        self.binary = "ip6tables" if v6 else "iptables"
        spec = ["INPUT", "-p", "tcp", "-s", remote[0], "--sport", str(remote[1]), "-d", local[0],
                "--dport", str(local[1]), "--tcp-flags", "RST", "RST"]
        if payload:
            spec += ["-m", "string", "--algo", "bm", "--hex-string", f"|{payload.hex()}|"]
        self.spec = [*spec, "-m", "comment", "--comment", COMMENT, "-j", "DROP"]
        self._installed = False

    def _run(self, op: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, "-w", "5", op, *self.spec], text=True, capture_output=True, timeout=20)

    def install(self) -> None:
        if shutil.which(self.binary) is None:
            raise FirewallError(f"{self.binary} not found (apt-get install iptables)")
        r = self._run("-I")
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["no message"])[0]
            raise FirewallError(f"{self.binary} refused the rule (root needed?): {why}")
        self._installed = True

    def remove(self) -> None:
        if self._installed:
            self._run("-D")
            self._installed = False

    def __enter__(self) -> "DropRst":
        self.install()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()
