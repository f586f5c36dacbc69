"""The command line as a user runs it: output, exit codes, and one clear line (never a traceback) on bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dpi.pcap import write_pcap
from dpi.traffic import TcpConversation, client_hello, http_request

REPO = Path(__file__).resolve().parent.parent


def redweb(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpi.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    packets = []
    packets += TcpConversation("10.0.0.2", "198.51.100.7", 40000, 443, ts=0.0).handshake() \
        .client_send(client_hello("www.twitter.com")).server_send(b"x" * 3000).packets
    packets += TcpConversation("10.0.0.2", "198.51.100.8", 40001, 443, ts=1.0).handshake() \
        .client_send(client_hello("example.org")).server_send(b"y" * 3000).packets
    packets += TcpConversation("10.0.0.3", "198.51.100.9", 40002, 80, ts=2.0).handshake() \
        .client_send(http_request("www.youtube.com")).packets
    path = tmp_path_factory.mktemp("cap") / "mixed.pcap"
    write_pcap(path, packets)
    return path


def test_profiles_lists_bundled_profiles_with_summaries():
    r = redweb("profiles")
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert "gfw" in names and "tspu-2021" in names


def test_profiles_long_prints_a_markdown_table():
    r = redweb("profiles", "--long")
    assert r.returncode == 0 and r.stdout.startswith("| profile |")
    assert "`gfw`" in r.stdout and "G-3" in r.stdout


def test_classify_text_and_json_agree(capture):
    text = redweb("classify", str(capture), "--profile", "gfw")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any("sni=www.twitter.com" in ln and "sni-reset" in ln and ln.rstrip().endswith("rst") for ln in lines)
    assert any("sni=example.org" in ln and ln.rstrip().endswith("accept") for ln in lines)
    assert lines[-1] == "3 flows, 2 censored"
    js = redweb("classify", str(capture), "--profile", "gfw", "--json")
    rows = [json.loads(x) for x in js.stdout.splitlines()]
    assert [(r["rule"], r["action"]) for r in rows] == [("sni-reset", "rst"), (None, "accept"), ("host-reset", "rst")]
    assert rows[0]["observation"]["sni"] == ["www.twitter.com"] and rows[0]["direction"] == "outbound"


def test_classify_same_capture_different_profile(capture):
    r = redweb("classify", str(capture), "--profile", "tspu-2021", "--json")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [row["action"] for row in rows] == ["throttle", "accept", "accept"]


@pytest.mark.parametrize("args, needle", [
    (["classify", "/nonexistent.pcap", "--profile", "gfw"], "no such capture"),
    (["classify", "PCAP", "--profile", "no-such-profile"], "no-such-profile"),
    (["classify", "GARBAGE", "--profile", "gfw"], "not a pcap file"),
    (["check", "/nonexistent.yaml"], "no such file"),
    (["check", "BADPROFILE"], "fix:"),
    (["run"], "--profile"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_clear_error_with_exit_2(args, needle, capture, tmp_path):
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a capture at all, just text" * 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrules:\n  - name: x\n    match: {tls.sni: nowhere}\n    action: rst\n")
    subst = {"PCAP": str(capture), "GARBAGE": str(garbage), "BADPROFILE": str(bad)}
    r = redweb(*[subst.get(a, a) for a in args])
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
