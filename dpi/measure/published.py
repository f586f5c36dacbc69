"""What CENSOR-MODELS.md says each client strategy does against each censor: its "Must evade" and "Must NOT
evade" lines (T21-E, T22-E, G-E, H-E, GQ-E), as data the evasion matrix compares its observations with.

Each line is tied to the `redweb probe` strategy (dpi/strategies) that carries it out, with the parameters that
make it the published variant. Lines no client strategy can carry out in a lab are listed in NOT_RUN with the
reason, so the matrix says what it did not check instead of leaving it out silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BLOCKED_NAME = "twitter.com"  # on the blocklist of every profile below (tspu-2021 throttles it)
ALLOWED_NAME = "example.org"  # on no list


@dataclass(frozen=True)
class Expectation:
    profile: str
    strategy: str
    args: tuple[str, ...]  # --strategy-arg K=V
    transport: Literal["tls", "quic"]
    evades: bool  # True: "must evade"; False: "must NOT evade"
    behaviour: str  # IDs of CENSOR-MODELS.md
    line: str  # the published words, shortened

    @property
    def label(self) -> str:
        return self.strategy + (f" {' '.join(self.args)}" if self.args else "")

    @property
    def published(self) -> str:
        return "evades" if self.evades else "blocked"


@dataclass(frozen=True)
class ProfileSetup:
    """How a profile is checked in the lab: what the baseline (`none`) fetch of BLOCKED_NAME shows per transport
    (the outcome every "must NOT evade" line should show too), and client settings."""

    profile: str
    baseline: dict[str, str]  # transport (tls | quic) -> throttled | reset | timeout
    client_sysctls: tuple[str, ...] = ()
    no_control: tuple[str, ...] = ()  # transports the profile blocks whatever the name (no control cell there)


SETUPS: dict[str, ProfileSetup] = {
    "tspu-2021": ProfileSetup("tspu-2021", {"tls": "throttled"}),  # T21-4
    # T22-2 drop; T22-4 drops every QUIC v1 Initial to port 443 whatever the name, so QUIC has no control
    "tspu-2022": ProfileSetup("tspu-2022", {"tls": "timeout", "quic": "timeout"}, no_control=("quic",)),
    "gfw": ProfileSetup("gfw", {"tls": "reset"}),  # G-3
    # Linux sends TCP timestamps by default, which alone evades H-1 (exactly 20-byte TCP headers): the lab's
    # clients run without them, so the baseline is blocked and the tcp-timestamps strategy means something.
    "henan": ProfileSetup("henan", {"tls": "reset"}, ("net.ipv4.tcp_timestamps=0",)),  # H-2
    "gfw-quic": ProfileSetup("gfw-quic", {"quic": "timeout"}),  # GQ-2: the Initial passes, the rest is dropped
}

EXPECTATIONS: tuple[Expectation, ...] = (
    # TSPU-2021 (T21-E)
    Expectation("tspu-2021", "tcp-segment", (), "tls", True, "T21-2, T21-E", "ClientHello split over two TCP segments"),
    Expectation("tspu-2021", "padding", (), "tls", True, "T21-2, T21-E", "ClientHello padded past one packet"),
    Expectation("tspu-2021", "fake-first", ("kind=random",), "tls", True, "T21-3, T21-E",
                "a >= 101-byte random first packet"),
    Expectation("tspu-2021", "ccs-first", ("record=empty-handshake",), "tls", True, "T21-E",
                "another TLS record before the ClientHello in the same segment"),
    Expectation("tspu-2021", "trailing-dot", (), "tls", True, "T21-E", "trailing dot in the SNI (twitter.com.)"),
    Expectation("tspu-2021", "fake-first", ("kind=decoy", f"decoy={ALLOWED_NAME}"), "tls", False, "T21-3, T21-E",
                "must NOT evade: a single fake ClientHello (inspection goes on 15-20 packets)"),
    Expectation("tspu-2021", "idle-wait", (), "tls", True, "T21-6, T21-E", "waiting out the ~10 min idle timeout"),
    Expectation("tspu-2021", "tcb-teardown", ("flags=rst",), "tls", False, "T21-6, T21-E",
                "must NOT evade: an injected RST"),
    Expectation("tspu-2021", "tcb-teardown", ("flags=fin",), "tls", False, "T21-6, T21-E",
                "must NOT evade: an injected FIN"),
    # TSPU-2022 (T22-E)
    Expectation("tspu-2022", "tcp-segment", (), "tls", True, "T22-E", "TCP segmentation of the ClientHello"),
    Expectation("tspu-2022", "padding", (), "tls", True, "T22-E", "TLS padding"),
    Expectation("tspu-2022", "ip-fragment", (), "tls", True, "T22-5, T22-E", "IP fragmentation of the ClientHello"),
    Expectation("tspu-2022", "ccs-first", ("record=empty-handshake",), "tls", True, "T22-E",
                "a TLS record before the ClientHello"),
    Expectation("tspu-2022", "server-window", (), "tls", True, "T22-E", "server-side TCP window shrinking"),
    Expectation("tspu-2022", "split-handshake", (), "tls", True, "T22-1, T22-E", "TCP split handshake"),
    Expectation("tspu-2022", "quic-dummy-first", (), "quic", True, "T22-4, T22-E", "for QUIC a non-QUIC first datagram"),
    Expectation("tspu-2022", "quic-v2", (), "quic", True, "T22-4, T22-E", "for QUIC a version other than 1"),
    # GFW (G-E)
    Expectation("gfw", "tls-record-frag", (), "tls", True, "G-1, G-E", "TLS record fragmentation of the ClientHello"),
    Expectation("gfw", "tcp-segment", (), "tls", False, "G-1, G-E", "must NOT evade: plain TCP segmentation"),
    # Henan (H-E)
    Expectation("henan", "tcp-timestamps", (), "tls", True, "H-1, H-E",
                "any TCP option (e.g. timestamps) on the ClientHello segment"),
    Expectation("henan", "tcp-segment", (), "tls", True, "H-1, H-E", "SNI split across segments"),
    Expectation("henan", "drop-rst", ("payload=henan",), "tls", True, "H-2, H-E",
                "dropping RSTs that carry Henan's payload (it drops nothing itself)"),
    # GFW-QUIC (GQ-E)
    Expectation("gfw-quic", "quic-dummy-first", (), "quic", True, "GQ-1, GQ-E", "a dummy UDP datagram before the Initial"),
    Expectation("gfw-quic", "quic-low-sport", (), "quic", True, "GQ-1, GQ-E", "source port <= destination port"),
    Expectation("gfw-quic", "quic-v2", (), "quic", True, "GQ-3, GQ-E", "QUIC v2"),
    Expectation("gfw-quic", "quic-crypto-split", (), "quic", True, "GQ-3, GQ-E", "SNI split across CRYPTO frames"),
)

# Published lines that no `redweb probe` client strategy carries out in the lab, and why (none left: the last
# one, T22-5's IP fragmentation, runs since dpi.nodefrag keeps conntrack from reassembling in front of the queue).
NOT_RUN: tuple[tuple[str, str, str, str], ...] = ()

BLOCKING_OUTCOMES = frozenset({"reset", "timeout", "throttled"})


def expectations_for(profile: str) -> list[Expectation]:
    return [e for e in EXPECTATIONS if e.profile == profile]


def agrees(expectation_evades: bool, outcome: str) -> bool | None:
    """Does an observed probe outcome agree with the published line? None: the probe could not decide (error)."""
    if outcome == "ok":
        return expectation_evades
    if outcome in BLOCKING_OUTCOMES:
        return not expectation_evades
    return None
