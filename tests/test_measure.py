"""`redweb measure`: the measurement code on small runs.

Without a lab: confidence intervals, goodput summaries, the residual bracket, JSON/CSV files, the GF-1 payloads
checked against the censor's own parser, temporary profiles loaded by the real loader, the published evasion
lines against the strategy catalogue, the goodput sampler against the lab's real web server (Python ssl on both
ends), the FET client against its sink, plots written and non-empty.

With a lab (root, Mininet): a residual run with a 2 s window through the CLI, a 20-connection FET run (structural
facts, and the exempt payloads never blocked: GF-1), a short throttled-vs-control goodput run (T21-4), and the
gfw column of the evasion matrix (G-E) through `redweb probe`. Nothing asserts wall-clock timing.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpi import _extract
from dpi.measure import (
    payloads,
    plots,
    profiles,
    published,
    results,
    sampler,
    stats,
)
from dpi.measure.results import Claim, Measurement
from dpi.measure.workloads import parse_probe_output, strategy_workloads
from dpi.profile import load_profile

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "topologies"))
import labca
import webserver

from tests.labmark import needs_lab  # noqa: E402


# ------------------------------------------------------------------------------------------------ statistics

def test_wilson_interval_matches_reference_values() -> None:
    # Reference values of the Wilson score interval (z = 1.96), as tabulated in Newcombe (1998)
    p = stats.wilson(5, 10)
    assert (round(p.low, 4), round(p.high, 4)) == (0.2366, 0.7634)
    p = stats.wilson(0, 10)
    assert p.low == 0.0 and round(p.high, 4) == 0.2775
    p = stats.wilson(10, 10)
    assert p.high == 1.0 and round(p.low, 4) == 0.7225
    # GF-2 at the paper's rate over 1000 connections: 26.3 % +- ~2.7 points
    p = stats.wilson(263, 1000)
    assert p.contains(0.263) and 0.02 < p.half_width < 0.03
    assert not stats.wilson(150, 1000).contains(0.263)
    assert stats.wilson(0, 0).n == 0 and (stats.wilson(0, 0).low, stats.wilson(0, 0).high) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson(3, 2)


@given(st.integers(0, 2000), st.integers(1, 2000))
def test_wilson_interval_contains_the_estimate_and_stays_in_0_1(k: int, n: int) -> None:
    k = min(k, n)
    p = stats.wilson(k, n)
    assert 0.0 <= p.low <= k / n <= p.high <= 1.0
    assert stats.wilson(min(4 * k, 4 * n), 4 * n).half_width <= p.half_width + 1e-12  # more data, narrower


def test_goodput_summary_of_a_policed_series() -> None:
    # T21-4's shape: a 16 KB burst, then one 1448-byte segment every 100 ms; 2 s of slow start skipped
    interval = 0.1
    bins = [16384, 0, 0, 0, 0, 0, 0, 0, 0, 0] + [1448] * 90
    g = stats.goodput(bins, interval, skip=2.0)
    assert g.total_bytes == sum(bins) and math.isclose(g.seconds, 10.0)
    assert math.isclose(g.steady_kbps, 1448 * 8 / 0.1 / 1000)  # 115.84 kbit/s
    assert g.steady_from == 2.0 and g.p10_kbps == g.p90_kbps == g.steady_kbps
    assert g.mean_kbps > g.steady_kbps  # the burst lifts the whole-run mean
    assert stats.goodput([], 0.1).total_bytes == 0
    assert stats.series_kbps([1000, 0], 0.1) == [80.0, 0.0]
    assert stats.moving_average([10, 0, 0, 10], 2) == [10.0, 5.0, 0.0, 5.0]


def test_residual_bracket() -> None:
    series = [(0.5, True), (1.0, True), (1.5, False), (2.0, False)]
    assert stats.bracket(series) == (1.0, 1.5)
    assert stats.bracket([(0.5, False)]) == (None, 0.5)
    assert stats.bracket([(0.5, True)]) == (0.5, None)


# --------------------------------------------------------------------------------------------------- results

def test_measurement_json_and_csv_round_trip(tmp_path: Path) -> None:
    m = Measurement("fetch", config={"profile": "gfw", "path": tmp_path})
    m.records = [{"name": "twitter.com", "outcome": "reset", "kbps": 1.5, "ok": False, "tags": ["a", "b"]},
                 {"name": "example.org", "outcome": "allowed", "kbps": float("nan"), "extra": None}]
    m.claims = [Claim("G-4", "residual", "180 s", "180.2 s", True), Claim("GF-2", "share", "26 %", "-", None)]
    m.series = {"x": {"bins": [1, 2]}}
    jpath, cpath = results.write(m, tmp_path)
    doc = json.loads(jpath.read_text())  # strict JSON: NaN became null
    assert doc["schema"] == results.SCHEMA and doc["kind"] == "fetch" and doc["finished"]
    assert doc["records"][1]["kbps"] is None and doc["config"]["path"] == str(tmp_path)
    assert [c["verdict"] for c in doc["claims"]] == ["agrees", "not decided"]
    assert set(doc["files"]) == {"fetch.json", "fetch.csv"}
    rows = results.read_csv(cpath)
    assert list(rows[0]) == ["name", "outcome", "kbps", "ok", "tags", "extra"]  # first-seen column order
    assert rows[0]["ok"] == "false" and json.loads(rows[0]["tags"]) == ["a", "b"] and rows[1]["kbps"] == ""
    md = results.claims_markdown(m.claims)
    assert md.splitlines()[0].startswith("| behaviour") and "| agrees |" in md and "not decided" in md


# -------------------------------------------------------------------------------------------------- payloads

def test_each_exempt_payload_meets_exactly_its_exemption_for_the_censor_too() -> None:
    """GF-1: the reference reading here and the censor's compiled parser agree on every payload we send."""
    rng = random.Random(7)
    for kind, (want, _build) in payloads.EXEMPT_KINDS.items():
        for length in (64, 200, 600, 1400):
            data = payloads.exempt_payload(kind, rng, length)
            assert len(data) == length
            assert payloads.exemptions(data) == (want,), kind
            assert _extract.fet_features(data).exempt == want, (kind, _extract.fet_features(data))
    with pytest.raises(ValueError):
        payloads.exempt_payload("ex9", rng)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=300))
def test_reference_exemptions_agree_with_the_censor_on_any_bytes(data: bytes) -> None:
    held = payloads.exemptions(data)
    assert (held[0] if held else None) == _extract.fet_features(data).exempt
    assert payloads.fully_encrypted(data) == (not held)


def test_exemption_edges_and_random_payloads() -> None:
    assert payloads.exemptions(bytes([0x07, 0x07, 0x07, 0x07, 0x0F])) == ("Ex1",)  # 17 bits / 5 = exactly 3.4
    tail = bytes([0x8B, 0x8D, 0x8E, 0x93] * 5)  # non-printable, 4 bits each: no other exemption
    assert payloads.exemptions(b"GET " + tail) == ("Ex5",)
    assert payloads.exemptions(b"\x17\x03\x09" + tail) == ("Ex5",)
    assert payloads.exemptions(b"\x16\x03\x0a" + tail) == ()  # the TLS prefix only goes up to 03 09
    rng = random.Random(1)
    sample = [payloads.random_payload(rng, payloads.random_length(rng)) for _ in range(500)]
    assert sum(payloads.fully_encrypted(d) for d in sample) > 480  # random bytes are (almost) never exempt


# -------------------------------------------------------------------------------------------------- profiles

def test_residual_seconds_scaled_in_a_profile_that_includes_the_bundled_one(tmp_path: Path) -> None:
    path = profiles.with_residual_seconds("gfw", 2, tmp_path / "p.yaml")
    text = path.read_text()
    assert "include: [gfw]" in text
    scaled, bundled = load_profile(str(path)), load_profile("gfw")
    assert [r.name for r in scaled.rules] == [r.name for r in bundled.rules]
    for s, b in zip(scaled.rules, bundled.rules):
        assert s.residual is not None and b.residual is not None
        assert s.residual.seconds == 2.0 and b.residual.seconds == 180.0  # G-4: only the window changes
        assert (s.residual.key, s.residual.action, s.match, s.action) == (b.residual.key, b.residual.action,
                                                                          b.match, b.action)
    with pytest.raises(ValueError):
        profiles.with_residual_seconds("tspu-2021", 2, tmp_path / "q.yaml")  # no residual to scale


def test_list_override_replaces_only_that_list(tmp_path: Path) -> None:
    p = load_profile(str(profiles.with_list("gfw-fet", "fet-servers", ["10.200.1.1/32"], tmp_path / "f.yaml",
                                            fmt="ip")))
    assert p.lists["fet-servers"].entries == ("10.200.1.1/32",) and p.lists["fet-servers"].files == ()
    assert [r.probability for r in p.rules] == [0.263]  # GF-2 untouched
    p = load_profile(str(profiles.with_list("tspu-2021", "twitter", ["=twitter.com", "=t.co"], tmp_path / "t.yaml")))
    assert p.lists["twitter"].entries == ("=twitter.com", "=t.co")
    assert p.matching.trailing_dot == "keep" and p.tcp.window == 17  # the T21 parser stays
    with pytest.raises(ValueError):
        profiles.with_list("gfw", "nope", ["x"], tmp_path / "n.yaml")


def test_idle_timeout_scaled_in_a_profile_that_includes_the_bundled_one(tmp_path: Path) -> None:
    scaled = load_profile(str(profiles.with_idle_timeout("tspu-2021", 3, tmp_path / "i.yaml")))
    bundled = load_profile("tspu-2021")
    assert scaled.flows.idle_timeout == 3.0 and bundled.flows.idle_timeout == 600.0  # T21-6, scaled
    assert scaled.flows.max_flows == bundled.flows.max_flows and scaled.rules == bundled.rules
    assert scaled.tcp == bundled.tcp and scaled.matching == bundled.matching


# -------------------------------------------------------------------------------------------- published lines

def test_every_published_line_names_a_real_strategy_with_valid_arguments() -> None:
    from dpi.strategies import CATALOGUE, build
    for e in published.EXPECTATIONS:
        assert e.profile in published.SETUPS, e
        assert e.strategy in CATALOGUE, e
        build(e.strategy, dict(a.split("=", 1) for a in e.args))  # raises on a bad parameter
        assert (e.transport == "quic") == (CATALOGUE[e.strategy].transport == "quic"), e
        load_profile(e.profile)
        assert any(i in load_profile(e.profile).implements for i in e.behaviour.replace(" ", "").split(",")), e
    ids = {e.behaviour.split(",")[-1].strip() for e in published.EXPECTATIONS}
    assert {"T21-E", "T22-E", "G-E", "H-E", "GQ-E"} <= ids
    assert published.agrees(True, "ok") is True and published.agrees(False, "throttled") is True
    assert published.agrees(True, "reset") is False and published.agrees(True, "error") is None


def test_t21_6_lines_run_in_the_matrix_and_the_idle_wait_follows_a_scaled_timeout() -> None:
    """Waiting out the idle timeout (must evade) and an injected RST / FIN (must NOT evade) are matrix cells:
    at the published 600 s the wait is 610 s; with the censor's idle timeout scaled down, just past it."""
    from dpi.measure.matrix import idle_wait_seconds, plan
    from dpi.strategies import idle_seconds
    cells = {c.label: c for c in plan("tspu-2021")}
    assert cells["idle-wait"].expectation.evades and idle_seconds("idle-wait", ()) == 610
    assert not cells["tcb-teardown flags=rst"].expectation.evades
    assert not cells["tcb-teardown flags=fin"].expectation.evades
    (wait,) = [c for c in plan("tspu-2021", idle_timeout=20) if c.strategy == "idle-wait"]
    assert wait.args == ("seconds=25",) and idle_seconds(wait.strategy, wait.args) == 25 > 20
    assert idle_wait_seconds(3) == 5 and idle_wait_seconds(600) == 750
    assert published.NOT_RUN == ()  # every published line runs in the lab (T22-5 since dpi.nodefrag)
    assert idle_seconds("bogus", ()) == 0 and idle_seconds("idle-wait", ("seconds=x",)) == 0


def test_strategy_workloads_and_probe_output_parsing() -> None:
    assert strategy_workloads("quic-v2") == ("quic",)
    assert strategy_workloads("tls-record-frag") == ("https",)
    assert strategy_workloads("none") == ("https", "quic")
    with pytest.raises(ValueError):
        strategy_workloads("no-such-strategy")
    doc = {"outcome": "throttled", "reason": "slow", "goodput_kbps": 131.2}
    assert parse_probe_output("noise\n" + json.dumps(doc) + "\n", "", 1)[:2] == ("throttled", "131 kbit/s")
    assert parse_probe_output(json.dumps({"outcome": "ok", "reason": "HTTP 200"}), "", 0)[:2] == ("allowed", "HTTP 200")
    for out, err in (("", "Traceback ...\nValueError: x"), ("{not json", ""), ('{"outcome": 5}', ""), ("[]", "")):
        outcome, _detail, _ = parse_probe_output(out, err, 1)  # never raises
        assert outcome == "error"


# ---------------------------------------------------------------------------------------- sampler, fetclient

@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    """The lab's own web server (topologies/webserver.py), HTTP and HTTPS on free ports of this machine."""
    d = tmp_path_factory.mktemp("web")
    certs = labca.make_lab_ca(d, ["example.org"], ["127.0.0.1"])
    http = webserver.DualStackServer(("::", 0), webserver.LabHandler)
    https = webserver.TLSServer(("::", 0), webserver.make_context(str(certs.server_cert), str(certs.server_key)))
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
               for s in (http, https)]
    for t in threads:
        t.start()
    try:
        yield http.server_address[1], https.server_address[1], certs.ca_cert
    finally:
        for s in (http, https):
            s.shutdown()
            s.server_close()


def test_sampler_counts_bytes_per_interval_over_real_tls(web: tuple[int, int, Path]) -> None:
    http_port, https_port, ca = web
    fetches = [sampler.Fetch("tls", f"https://example.org:{https_port}/bytes/3m", "127.0.0.1"),
               sampler.Fetch("plain", f"http://example.org:{http_port}/bytes/2m", "127.0.0.1"),
               sampler.Fetch("refused", f"http://example.org:{_free_port()}/bytes/1m", "127.0.0.1")]
    doc = sampler.sample(fetches, seconds=2.0, interval=0.1, cafile=str(ca))
    tls, plain, refused = doc["fetches"]
    assert doc["interval"] == 0.1 and all(len(f["bins"]) == 20 for f in (tls, plain))
    assert tls["status"] == "ok" and tls["http_status"] == 200 and tls["body"] == 3_000_000
    assert tls["total"] == sum(tls["bins"]) > tls["body"]  # TCP bytes: TLS records and headers on top
    assert plain["status"] == "ok" and plain["body"] == 2_000_000 and plain["total"] > plain["body"]
    assert refused["status"] == "reset" and refused["total"] == 0
    # an untrusted certificate is an error, not a reset or a silent success
    bad = sampler.sample([sampler.Fetch("x", f"https://example.org:{https_port}/bytes/1k", "127.0.0.1")],
                         seconds=1.0, interval=0.1, cafile=None)["fetches"][0]
    assert bad["status"] == "error" and "CERTIFICATE" in bad["error"].upper()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fet_client_outcomes_open_blocked_reset(tmp_path: Path) -> None:
    port = _free_port()
    sink = subprocess.Popen([sys.executable, "-m", "dpi.measure.fetclient", "sink", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    silent = socket.socket()  # accepts (the kernel completes the handshake) and never answers: like GF-3's drop
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        assert sink.stdout is not None and sink.stdout.readline().startswith("ready")
        payload = payloads.random_payload(random.Random(3), 300).hex()
        jobs = [{"id": 0, "addr": "127.0.0.1", "port": port, "payload": payload},
                {"id": 1, "addr": "127.0.0.1", "port": silent.getsockname()[1], "payload": payload},
                {"id": 2, "addr": "127.0.0.1", "port": _free_port(), "payload": payload}]
        (tmp_path / "jobs.json").write_text(json.dumps(jobs))
        r = subprocess.run([sys.executable, "-m", "dpi.measure.fetclient", "client", "--jobs",
                            str(tmp_path / "jobs.json"), "--reply-timeout", "0.5"], capture_output=True, text=True,
                           cwd=str(REPO), timeout=30, check=True)
        out = {d["id"]: d for d in map(json.loads, r.stdout.splitlines())}
        assert [out[i]["outcome"] for i in range(3)] == ["open", "blocked", "reset"], out
        assert out[0]["reply_ms"] is not None and out[1]["connect_ms"] is not None
    finally:
        sink.terminate()
        sink.wait(10)
        silent.close()


# ------------------------------------------------------------------------------------------------------ plots

def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path


def test_every_plot_is_written_and_non_empty(tmp_path: Path) -> None:
    g = Measurement("goodput", config={"profile": "tspu-2021", "policers": [{"rate_kbps": 140, "burst_bytes": 16384}]})
    g.series = {"throttled": {"interval": 0.1, "bins": [16384] + [0, 1448] * 50},
                "control": {"interval": 0.1, "bins": [10_000_000] * 101}}
    g.summary = {"throttled": {"url": "https://twitter.com/x", "steady_kbps": 115.8, "steady_from_s": 2.0},
                 "control": {"url": "https://example.org/x"}}
    _png_ok(plots.goodput(g, tmp_path / "goodput.png"))
    r = Measurement("residual", config={"profile": "gfw", "name": "x", "control": "y", "window": 2.0,
                                        "probe_labels": ["a", "b"]})
    r.records = [{"probe": "a", "t": t / 4, "outcome": "reset" if t < 8 else "allowed"} for t in range(1, 14)]
    r.records += [{"probe": "b", "t": t / 4, "outcome": "allowed"} for t in range(1, 14)]
    _png_ok(plots.residual(r, tmp_path / "residual.png"))
    f = Measurement("fet")
    f.summary = {"groups": [{"label": "random", "group": "random", "n": 100, "blocked": 26, "blocked_share": 0.26,
                             "ci_low": 0.18, "ci_high": 0.35},
                            {"label": "Ex2", "group": "exempt", "n": 20, "blocked": 0, "blocked_share": 0.0,
                             "ci_low": 0.0, "ci_high": 0.16}]}
    _png_ok(plots.fet(f, tmp_path / "fet.png"))
    fe = Measurement("fetch", config={"profile": "redweb", "repeat": 1})
    fe.summary = {"cells": [{"name": "twitter.com", "workload": "https", "outcomes": {"throttled": 1},
                             "majority": "throttled", "throttled_kbps_median": 131.0}]}
    _png_ok(plots.fetch(fe, tmp_path / "fetch.png"))
    mx = Measurement("matrix", config={"profiles": ["gfw", "tspu-2021"]})
    mx.records = [{"label": "none", "strategy": "none", "transport": "tls", "profile": "gfw", "outcome": "reset",
                   "published": "reset", "agrees": True},
                  {"label": "tcp-segment", "strategy": "tcp-segment", "transport": "tls", "profile": "tspu-2021",
                   "outcome": "ok", "published": "evades", "agrees": True}]
    mx.summary = {"agree": 2}
    _png_ok(plots.matrix(mx, tmp_path / "matrix.png"))
    c = Measurement("collateral")
    c.records = [{"variant": "early", "name": "reddit.com", "kbps": 131.0},
                 {"variant": "patched", "name": "reddit.com", "kbps": 500_000.0}]
    _png_ok(plots.collateral(c, tmp_path / "collateral.png", 10_000))


# -------------------------------------------------------------------------------------------- in a real lab

@needs_lab
def test_residual_window_of_2_s_through_the_cli(tmp_path: Path) -> None:
    """G-4 with the window scaled to 2 s: the 3-tuple is reset inside it and open after; port 80 never blocked."""
    from dpi.measure.cli import add_measure_arguments, measure_main
    p = argparse.ArgumentParser()
    add_measure_arguments(p)
    out = tmp_path / "residual"
    args = p.parse_args(["residual", "--profile", "gfw", "--name", "www.youtube.com", "--window", "2",
                         "--interval", "0.4", "--after", "2", "--out", str(out), "--no-progress"])
    assert measure_main(args) == 0
    doc = json.loads((out / "residual.json").read_text())
    assert doc["config"]["window"] == 2.0 and (out / "profile-residual-2s.yaml").exists()
    _png_ok(out / "residual.png")
    assert len(results.read_csv(out / "residual.csv")) == len(doc["records"])
    recs = doc["records"]
    assert all(r["outcome"] == "allowed" for r in recs if r["phase"] == "before")
    assert [r["outcome"] for r in recs if r["phase"] == "trigger"] == ["reset"]
    same = [r for r in recs if r["phase"] == "after" and r["probe"].startswith("same")]
    other = [r for r in recs if r["phase"] == "after" and r["probe"].startswith("other port")]
    assert same and other
    # edges a probe round away from the window are the ones the lab can vouch for
    assert all(r["outcome"] == "reset" for r in same if r["t"] < 2.0 - 0.5), same
    assert all(r["outcome"] == "allowed" for r in same if r["t"] > 2.0 + 0.5), same
    assert any(r["outcome"] == "reset" for r in same) and any(r["outcome"] == "allowed" for r in same)
    assert all(r["outcome"] == "allowed" for r in other), other
    verdicts = {c["statement"]: c["ok"] for c in doc["claims"]}
    assert all(verdicts.values()), doc["claims"]


@needs_lab
def test_fet_run_of_20_connections_exempt_payloads_never_blocked(tmp_path: Path) -> None:
    """GF-1: every exempt payload gets its reply; GF-2: blocking only towards the listed server; structure."""
    from dpi.measure.fet import fet_claims, measure_fet
    m = measure_fet(tmp_path, n=20, exempt_each=3, control=5, progress=False, say=lambda s: None)
    recs = m.records
    groups = {g: [r for r in recs if r["group"] == g] for g in ("random", "exempt", "control", "residual-check")}
    assert len(groups["random"]) == 20 and len(groups["control"]) == 5
    assert len(groups["exempt"]) == 3 * len(payloads.EXEMPT_KINDS)
    assert len({r["port"] for r in recs if r["group"] != "residual-check"}) == len(recs) - len(
        groups["residual-check"])  # every trial on a port of its own
    assert all(r["outcome"] == "open" for r in groups["exempt"]), groups["exempt"]  # GF-1
    assert all(r["outcome"] == "open" for r in groups["control"]), groups["control"]  # GF-2: unlisted server
    assert all(r["outcome"] in ("open", "blocked") for r in groups["random"])
    assert all(r["outcome"] == "open" for r in groups["random"] if not r["fully_encrypted"])
    main = m.summary["groups"][0]
    assert main["group"] == "random" and main["n"] == sum(r["fully_encrypted"] for r in groups["random"])
    assert main["ci_low"] <= main["blocked_share"] <= main["ci_high"]
    if main["blocked"]:  # GF-3: the blocked 3-tuple stays blocked, a fresh port of the server does not
        assert m.summary["residual_check"] == {"residual-same-port": "no-connect", "residual-fresh-port": "open"}
    claims = {c.statement: c.ok for c in fet_claims(m)}
    assert claims["payloads meeting an exemption (Ex1-Ex5) are never blocked"] is True
    (tmp_path / "profile-fet.yaml").read_text().index("include: [gfw-fet]")


@needs_lab
def test_goodput_throttled_vs_control(tmp_path: Path) -> None:
    """T21-4: the throttled download's rate is the policer's order of magnitude; the control is far above."""
    from dpi.measure.goodput import measure_goodput
    m = measure_goodput("tspu-2021", "twitter.com", "example.org", tmp_path, seconds=4, interval=0.1,
                        progress=False, say=lambda s: None)
    thr, ctl = m.summary["throttled"], m.summary["control"]
    assert thr["status"] == ctl["status"] == "ok" and thr["http_status"] == ctl["http_status"] == 200
    assert len(m.series["throttled"]["bins"]) == 40
    assert 50 < thr["steady_kbps"] < 300  # policer 140 kbit/s with a 16 KB bucket (T21-4)
    assert ctl["steady_kbps"] > 10_000  # "link speed": orders of magnitude above
    assert {r["label"] for r in m.records} == {"throttled", "control"}


@needs_lab
def test_matrix_gfw_column_agrees_with_g_e(tmp_path: Path) -> None:
    """G-E through `redweb probe`: record fragmentation evades, TCP segmentation does not; baselines hold."""
    from dpi.measure.matrix import markdown, measure_matrix
    m = measure_matrix(tmp_path, profiles=["gfw"], progress=False, say=lambda s: None)
    by = {(r["kind"], r["strategy"]): r for r in m.records}
    assert by[("baseline", "none")]["outcome"] == "reset"
    assert by[("control", "none")]["outcome"] == "ok"
    assert by[("published", "tls-record-frag")]["outcome"] == "ok"
    assert by[("published", "tcp-segment")]["outcome"] == "reset"
    assert all(r["agrees"] is True for r in m.records), m.records
    assert len({r["client"] for r in m.records}) == len(m.records)  # one client per cell: no inherited residual
    assert "| tls-record-frag | ok (evades) ✓ |" in markdown(m)
