"""The profile loader: bundled models load with their measured values, includes merge as documented, and every
kind of mistake comes back as one `FILE:LINE: message (fix: ...)` issue at the right line, never a traceback.

The bad-profile fixtures in tests/bad_profiles/ carry their expectation in a header:
    # expect-line: N            the exact line of the issue
    # expect-message: TEXT      a substring of the message
    # expect-fix: TEXT          a substring of the fix
    # expect-file: NAME         (optional) the file the issue is in, when it is not the fixture itself
"""
from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dpi import profile as profile_mod
from dpi.config import INJECTOR_PRESETS, Injector
from dpi.profile import (
    BEHAVIOUR_IDS,
    RULES_DIR,
    ProfileError,
    ProfileIssue,
    bundled_profiles,
    check_profile,
    load_profile,
)

BAD_DIR = Path(__file__).parent / "bad_profiles"
CATALOGUE = Path("/work/shared/CENSOR-MODELS.md")


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def issues_of(path: Path) -> list[ProfileIssue]:
    issues = check_profile(path)
    for issue in issues:
        assert issue.file and issue.line > 0 and issue.message and issue.fix, issue
    return issues


# ------------------------------------------------------------------------------------------------ bundled models


def test_gfw_profile_reproduces_g1_to_g4() -> None:
    p = load_profile("gfw")
    assert p.name == "gfw" and p.path == RULES_DIR / "gfw.yaml"
    assert set(p.implements) >= {"G-1", "G-2", "G-3", "G-4"}
    # G-1: TCP reassembly on, TLS records not reassembled, SYN required, both directions trigger.
    assert p.tcp.reassembly is True
    assert p.tcp.tls_record_reassembly is False
    assert p.tcp.require_syn is True
    assert p.tcp.parse_directions == "both"
    assert p.triggers == "both"
    # G-1: separate lists for TLS and HTTP.
    assert p.lists["tls"].files == ((RULES_DIR / "lists" / "gfw-tls.txt").resolve(),)
    assert p.lists["http"].files == ((RULES_DIR / "lists" / "gfw-http.txt").resolve(),)
    assert p.lists["tls"].format == p.lists["http"].format == "plain"
    by_match = {("tls" if r.match.tls_sni else "http"): r for r in p.rules}
    assert by_match["tls"].match.tls_sni == "tls" and by_match["tls"].match.http_host is None
    assert by_match["http"].match.http_host == "http" and by_match["http"].match.tls_sni is None
    for rule in p.rules:
        # G-3: RSTs to both sides from the type II injector.
        assert rule.action.type == "rst" and rule.action.rst_to == "both"
        assert rule.action.injector == INJECTOR_PRESETS["gfw-type2"]
        # G-4: 180 s on the 3-tuple, new connections reset.
        assert rule.residual is not None
        assert (rule.residual.key, rule.residual.seconds, rule.residual.action) == ("3-tuple", 180.0, "rst")
        assert rule.line > 0


def test_tspu_2021_profile_reproduces_t21() -> None:
    p = load_profile("tspu-2021")
    assert p.name == "tspu-2021"
    assert {f"T21-{i}" for i in range(1, 7)} <= set(p.implements)
    tcp = p.tcp
    assert tcp.reassembly is False and tcp.tls_record_reassembly is False  # T21-2
    assert tcp.whole_clienthello is True  # T21-2
    assert tcp.skip_leading_records is False  # T21-E
    assert 15 <= tcp.window <= 20 and tcp.window == 17  # T21-3
    assert tcp.release_unparsed == 101  # T21-3
    assert tcp.parse_directions == "both" and p.triggers == "outbound"  # T21-5
    assert tcp.require_syn is True
    assert p.matching.trailing_dot == "keep"  # T21-E
    assert p.flows.idle_timeout == 600  # T21-6
    (rule,) = p.rules
    assert rule.match.tls_sni == "twitter"
    assert p.lists["twitter"].files == ((RULES_DIR / "lists" / "tspu-2021-twitter.txt").resolve(),)
    # T21-4: ~140 kbit/s policer per direction, 16 KB bucket.
    assert rule.action.type == "throttle"
    assert rule.action.rate_bps == 140_000 and 130_000 <= rule.action.rate_bps <= 150_000
    assert rule.action.burst_bytes == 16384
    assert rule.residual is None


def test_t21_1_list_holds_the_march_2021_forms() -> None:
    """The list file must say what T21-1 measured: substring t.co (collateral reddit.com, microsoft.com), suffix
    .twimg.com (subdomains only), raw suffix twitter.com; with trailing_dot keep, `twitter.com.` evades (T21-E)."""
    lists = pytest.importorskip("dpi.lists")
    match = pytest.importorskip("dpi.match")
    p = load_profile("tspu-2021")
    spec = p.lists["twitter"]
    loaded = lists.load_list(spec.files[0], spec.format, default_form=spec.default_form, on_error="reject")
    assert sorted(pat.text for pat in loaded.patterns) == ["*.twimg.com", "*t.co*", "*twitter.com"]
    m = match.DomainMatcher(loaded.patterns, trailing_dot=p.matching.trailing_dot)
    for name in ("twitter.com", "api.twitter.com", "nottwitter.com", "pbs.twimg.com", "t.co", "reddit.com",
                 "microsoft.com"):
        assert name in m, name
    for name in ("twimg.com", "example.com", "twitter.com.", "twitter.org"):
        assert name not in m, name


def test_gfw_lists_use_all_g2_forms() -> None:
    lists = pytest.importorskip("dpi.lists")
    p = load_profile("gfw")
    forms: set[str] = set()
    for name in ("tls", "http"):
        spec = p.lists[name]
        loaded = lists.load_list(spec.files[0], spec.format, default_form=spec.default_form, on_error="reject")
        forms |= {pat.form for pat in loaded.patterns}
        assert {"google.com", "youtube.com", "facebook.com", "twitter.com", "wikipedia.org"} <= {
            pat.value for pat in loaded.patterns}
    assert {"subdomains", "exact", "prefix-subdomains", "suffix", "substring"} <= forms  # G-2


def test_bundled_profiles_lists_both_sorted_with_summaries() -> None:
    found = bundled_profiles()
    names = [name for name, _, _ in found]
    assert names == sorted(names)
    assert {"gfw", "tspu-2021"} <= set(names)
    for name, path, summary in found:
        assert path == RULES_DIR / f"{name}.yaml" and path.is_file()
        assert summary and summary == load_profile(name).summary


@pytest.mark.parametrize("name", [name for name, _, _ in bundled_profiles()])
def test_bundled_profile_checks_clean(name: str) -> None:
    assert check_profile(RULES_DIR / f"{name}.yaml") == []


def test_behaviour_ids_are_the_catalogues() -> None:
    if not CATALOGUE.is_file():
        pytest.skip("CENSOR-MODELS.md is not on this machine")
    ids = set(re.findall(r"^\| ([A-Z0-9]+-[0-9A-Z]+) \|", CATALOGUE.read_text(encoding="utf-8"), re.MULTILINE))
    assert ids == BEHAVIOUR_IDS


def test_rules_dir_follows_redweb_rules(tmp_path: Path) -> None:
    write(tmp_path, "mini.yaml", "name: mini\nsummary: a tiny one\n")
    code = "from dpi.profile import RULES_DIR, bundled_profiles; print(RULES_DIR); print(bundled_profiles()[0][0])"
    env = {**os.environ, "REDWEB_RULES": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    assert out == [str(tmp_path), "mini"]


def test_bundled_profile_name_must_be_its_file_stem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile_mod, "RULES_DIR", tmp_path)
    write(tmp_path, "alpha.yaml", "summary: x\nname: beta\n")
    (issue,) = check_profile("alpha")
    assert issue.line == 2 and "differs from its file name" in issue.message and "name: alpha" in issue.fix


def test_unknown_bundled_name_suggests_the_close_one() -> None:
    with pytest.raises(ProfileError) as exc:
        load_profile("gfx")
    (issue,) = exc.value.issues
    assert issue.line == 1 and "did you mean 'gfw'?" in issue.fix and "tspu-2021" in issue.fix


# ------------------------------------------------------------------------------------------------ include


def test_include_gfw_overrides_field_rule_and_list(tmp_path: Path) -> None:
    child = write(tmp_path, "gfw-lab.yaml", """
        name: gfw-lab
        include: [gfw]
        tcp:
          reassembly: false
        lists:
          http:
            entries: [example.com]
        rules:
          - name: sni-reset
            match: {tls.sni: tls}
            action: drop
          - name: esni-drop
            implements: [GE-1]
            match: {tls.esni: true}
            action: drop
            residual: {key: 3-tuple, seconds: 120, action: drop}
        """)
    p = load_profile(child)
    assert p.name == "gfw-lab" and p.path == child.resolve()
    # Mappings merge key by key: one key overridden, the included others kept.
    assert p.tcp.reassembly is False
    assert p.tcp.require_syn is True and p.tcp.parse_directions == "both"
    assert p.triggers == "both" and p.implements == load_profile("gfw").implements
    # Lists merge by name: `http` replaced whole, `tls` inherited with its path resolved against rules/.
    assert p.lists["http"].entries == ("example.com",) and p.lists["http"].files == ()
    assert p.lists["tls"].files == ((RULES_DIR / "lists" / "gfw-tls.txt").resolve(),)
    # Rules: included first, a same-named rule replaced in place, new ones appended.
    assert [r.name for r in p.rules] == ["sni-reset", "host-reset", "esni-drop"]
    sni, host, esni = p.rules
    assert sni.action.type == "drop" and sni.residual is None and sni.line == 9
    assert host.action.injector.name == "gfw-type2" and host.line == load_profile("gfw").rules[1].line
    assert esni.match.tls_esni is True and esni.residual is not None and esni.residual.seconds == 120


def test_include_paths_are_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "lists").mkdir()
    write(tmp_path / "base" / "lists", "names.txt", "example.com\n")
    write(tmp_path / "base", "common.yaml", """
        name: common
        seed: 7
        lists:
          names: lists/names.txt
        """)
    # A diamond (two paths to common.yaml) is not a cycle.
    write(tmp_path / "base", "middle.yaml", "name: middle\ninclude: [common.yaml]\nquic: {enabled: true}\n")
    top = write(tmp_path, "top.yaml", """
        name: top
        include: [base/common.yaml, base/middle.yaml]
        rules:
          - name: r
            match: {dns.qname: names}
            action: drop
        """)
    assert check_profile(top) == []
    p = load_profile(top)
    assert p.seed == 7 and p.quic.enabled is True
    assert p.lists["names"].files == ((tmp_path / "base" / "lists" / "names.txt").resolve(),)
    assert p.lists["names"].format == "auto"


def test_issue_in_an_included_file_points_at_that_file(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "name: base\ntcp:\n  window: -3\n")
    top = write(tmp_path, "top.yaml", "name: top\ninclude: [./base.yaml]\n")
    (issue,) = issues_of(top)
    assert Path(issue.file).name == "base.yaml" and issue.line == 3 and "outside" in issue.message


# ------------------------------------------------------------------------------------------------ bad profiles


def fixture_expectations(path: Path) -> dict[str, str]:
    found = dict(re.findall(r"^# expect-([a-z]+): (.*)$", path.read_text(encoding="utf-8"), re.MULTILINE))
    assert {"line", "message", "fix"} <= set(found), f"{path.name} lacks its expect- header"
    return found


BAD_FIXTURES = sorted(BAD_DIR.glob("*.yaml"))


def test_every_kind_of_mistake_has_a_fixture() -> None:
    stems = {p.stem for p in BAD_FIXTURES}
    assert {"syntax_error", "unknown_top_key", "unknown_tcp_key", "wrong_type", "bad_cidr", "unknown_action",
            "unknown_injector", "probability", "missing_list_file", "unknown_list_ref", "rule_without_match",
            "duplicate_rule_names", "include_cycle_a", "unknown_behaviour_id"} <= stems


@pytest.mark.parametrize("path", BAD_FIXTURES, ids=[p.stem for p in BAD_FIXTURES])
def test_bad_profile_reports_one_issue_at_the_exact_line(path: Path) -> None:
    expect = fixture_expectations(path)
    issues = issues_of(path)
    assert len(issues) == 1, "\n".join(map(str, issues))
    (issue,) = issues
    assert Path(issue.file).name == expect.get("file", path.name)
    assert issue.line == int(expect["line"]), str(issue)
    assert expect["message"] in issue.message, str(issue)
    assert expect["fix"] in issue.fix, str(issue)
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert exc.value.issues == issues
    assert str(exc.value) == str(issue) == f"{issue.file}:{issue.line}: {issue.message} (fix: {issue.fix})"


def test_all_problems_are_reported_in_one_pass(tmp_path: Path) -> None:
    path = write(tmp_path, "many.yaml", """
        name: many
        triggers: sometimes
        tcp:
          reassembly: "yes"
        quic:
          ports: [443, 70000]
        inside: [10.1.2.3/8]
        lists:
          hosts:
            entries: [example.com]
        rules:
          - name: a
            match: {http.host: hosts, colour: red}
            action: {type: rst, burst_bytes: 10}
          - match: {tls.sni: hosts}
            action: drop
          - name: b
            match: {tls.sni: nope}
            action: throttle
        """)
    found = [(i.line, i.message) for i in issues_of(path)]
    lines = [line for line, _ in found]
    assert lines == sorted(lines) == [2, 4, 6, 7, 13, 14, 15, 18], found
    text = "\n".join(str(i) for i in check_profile(path))
    assert "triggers is 'sometimes'" in text
    assert "tcp.reassembly must be true or false" in text and "(no quotes)" in text
    assert "quic.ports is 70000, outside 1..65535" in text
    assert "host bits set (fix: write the network address: 10.0.0.0/8)" in text
    assert "unknown key 'colour' in the match of rule 'a'" in text
    assert "'burst_bytes' is a parameter of throttle; rst takes to, injector, drop_trigger" in text
    assert "a rule has no `name`" in text
    assert "names list 'nope', which is not declared" in text and "declared lists: hosts" in text


@pytest.mark.parametrize("text, line, message, fix", [
    ("name: x\nrules:\n  - name: r\n    match:\n      tls.sni:\n        - *t.co*\n    action: drop\n",
     6, "YAML syntax error", "quote values that start with *"),
    ("name: x\ntcp:\n\treassembly: true\n", 3, "YAML syntax error", "spaces, not tabs"),
    ("name: x\n---\nname: y\n", 2, "YAML syntax error", "one profile per file"),
    ("", 1, "the profile is empty", "name:"),
    ("- just\n- a list\n", 1, "the profile must be a mapping", "key: value"),
    ("name: x\nname: y\n", 2, "duplicate key 'name'", "remove one"),
    ("summary: no name\n", 1, "the profile has no `name`", "name: nameless"),
    ("name: x\nlists:\n  l:\n    format: csv\n    entries: [a.example]\n", 4, "format of list 'l' is 'csv'",
     "did you mean 'registry-csv'?"),
    ("name: x\nlists:\n  l: {}\n", 3, "has neither files nor entries", "files:"),
    ("name: x\nlists:\n  l: {entries: [a.example], file: [x.txt]}\n", 3, "unknown key 'file'", "'files'"),
    ("name: x\nlists:\n  n: {format: ip, entries: [10.0.0.0/8, 300.1.1.1]}\nrules:\n  - {name: r, match: {ip: n},"
     " action: drop}\n", 3, "'300.1.1.1' in list 'n' is not an address", "10.0.0.0/8"),
    ("name: x\nlists:\n  n: {format: ip, entries: [10.0.0.0/8]}\nrules:\n  - name: r\n    match: {tls.sni: n}\n"
     "    action: drop\n", 6, "a list of networks (format ip)", "ip: n"),
    ("name: x\nrules:\n  - name: r\n    match: {port: 0}\n    action: drop\n", 4, "match.port is 0", "1..65535"),
    ("name: x\nrules:\n  - name: r\n    match: {tls.any: true}\n    action: {type: freeze, after_bytes: many}\n",
     5, "action.after_bytes must be a whole number", "after_bytes: 1"),
    ("name: x\nrules:\n  - name: r\n    match: {tls.any: true}\n    action: {to: client}\n", 5,
     "has no `type`", "type: TYPE"),
    ("name: x\nrules:\n  - name: r\n    match: {dns.qname: [a.example]}\n    action:\n      type: dns-inject\n"
     "      pool_aaaa: [1.2.3.4]\n", 7, "not an IPv6 address", "2001::1"),
    ("name: x\nrules:\n  - name: r\n    match: {tls.sni: [a.example]}\n    action:\n      type: rst\n"
     "      injector: {ttl: [200, 100]}\n", 7, "range [200, 100] is reversed", "[100, 200]"),
    ("name: x\nrules:\n  - name: r\n    match: {tls.sni: [a.example]}\n    action:\n      type: rst\n"
     "      injector: {ip_id: 0x20000}\n", 7, "injector.ip_id '0x20000' is not random", "0x9916-0x9933"),
    ("name: x\nrules:\n  - name: r\n    match: {tls.sni: [a.example]}\n    action: drop\n    residual: {seconds: -1}\n",
     6, "residual.seconds is -1", ">= 0"),
    ("name: x\nreassembly: false\n", 2, "'reassembly' is not a top-level key", "move it under `tcp:`"),
    ("name: x\ninclude: [gwf]\n", 2, "included profile 'gwf' not found", "did you mean 'gfw'?"),
    ("name: x\nimplements: G-1\n", 2, "implements must be a list", "[a, b]"),
    ("name: x\ntcp:\n  tcp_header_exact: 21\n", 3, "tcp.tcp_header_exact must be 0", "20 to 60"),
    ("name: x\nrules:\n  - name: r\n    match: {tls.sni: [a.example]}\n    action: drop\n    probability: lots\n",
     6, "probability must be a number", "0.263"),
])
def test_specific_mistakes(tmp_path: Path, text: str, line: int, message: str, fix: str) -> None:
    path = tmp_path / "nameless.yaml"
    path.write_text(text, encoding="utf-8")
    issues = issues_of(path)
    assert len(issues) == 1, "\n".join(map(str, issues))
    assert (issues[0].line, message in issues[0].message, fix in issues[0].fix) == (line, True, True), str(issues[0])


def test_unreadable_inputs_are_issues(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"name: x\nsummary: caf\xe9\n")
    (issue,) = issues_of(tmp_path / "latin1.yaml")
    assert issue.line == 2 and "UTF-8" in issue.message
    (issue,) = issues_of(tmp_path / "absent.yaml")
    assert issue.line == 1 and "no such profile file" in issue.message
    (issue,) = issues_of(tmp_path)
    assert issue.line == 1 and "cannot read" in issue.message


# ------------------------------------------------------------------------------------------------ values


def test_every_action_type_and_parameter(tmp_path: Path) -> None:
    path = write(tmp_path, "all.yaml", """
        name: all
        seed: 3
        year: 2022
        inside: [10.0.0.0/8, "2001:db8::/32", 192.0.2.1]
        quic: {enabled: true, versions: ["0x00000001"], ports: 443, min_size: 1001}
        dns: {ports: [53, 5353]}
        rules:
          - name: throttle
            match: {tls.sni: [twitter.com], port: [443, 8443], protocol: tcp, direction: outbound}
            action: {type: throttle, rate_kbps: 128.5, burst_bytes: 8192}
          - name: henan
            match: {http.host: [example.com]}
            action:
              type: rst
              to: client
              drop_trigger: true
              injector: {preset: henan, payload: 01020304050607080900, ttl: [50, 60], delay_ms: 18}
          - name: custom-rst
            match: {tls.sni: [example.org]}
            action:
              type: rst
              injector: {flags: R, count: 2, ttl: 64, ip_id: 0x9916-0x9933, df: true, window: 1024}
          - name: quic-v1
            match: {quic.version: ["0x00000001", 0xff00001d], protocol: udp}
            action: {type: blackhole, include_trigger: false}
            residual: {key: server-ip, seconds: 180, action: drop}
          - name: dns
            match: {dns.qname: [example.net]}
            action: {type: dns-inject, mode: in-path, pool_a: [192.0.2.7], pool_aaaa: ["2001::1"], order: random,
                     ttl: 300}
          - name: freeze
            match: {ip: [203.0.113.0/24], tls.any: true}
            action: {type: freeze, after_bytes: 16000}
          - name: paths
            match: {http.path: ["/search?q=a b", "*weird*"]}
            action: accept
          - name: fet
            match: {fet: true}
            probability: 0.263
            action: drop
        """)
    assert check_profile(path) == []
    p = load_profile(path)
    assert (p.seed, p.year) == (3, "2022")
    assert p.inside == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"),
                        ipaddress.ip_network("192.0.2.1/32"))
    assert (p.quic.enabled, p.quic.versions, p.quic.ports, p.quic.min_size) == (True, (1,), (443,), 1001)
    assert p.dns.ports == (53, 5353)
    r = {rule.name: rule for rule in p.rules}
    assert r["throttle"].action.rate_bps == 128_500 and r["throttle"].action.burst_bytes == 8192
    assert r["throttle"].match.port == (443, 8443) and r["throttle"].match.protocol == "tcp"
    assert r["throttle"].match.tls_sni == "throttle:tls.sni"
    assert p.lists["throttle:tls.sni"].entries == ("twitter.com",) and p.lists["throttle:tls.sni"].format == "plain"
    henan = r["henan"].action
    assert (henan.rst_to, henan.drop_trigger) == ("client", True)
    # H-2's payload written unquoted keeps its leading zero; the other preset values stay.
    assert henan.injector == Injector(name="henan", flags="RA", count=1, ttl=(50, 60), ip_id="1",
                                      payload=bytes.fromhex("01020304050607080900"), delay=(0.018, 0.018))
    custom = r["custom-rst"].action.injector
    assert custom == Injector(name="custom", flags="R", count=2, ttl=(64, 64), ip_id="0x9916-0x9933", df=True,
                              window=1024)
    assert r["quic-v1"].match.quic_version == (1, 0xFF00001D)
    assert r["quic-v1"].action.include_trigger is False
    assert r["quic-v1"].residual is not None and r["quic-v1"].residual.key == "server-ip"
    dns = r["dns"].action
    assert (dns.dns_mode, dns.pool_a, dns.pool_aaaa, dns.pool_order, dns.dns_ttl) == (
        "in-path", ("192.0.2.7",), ("2001::1",), "random", 300)
    assert r["freeze"].match.ip == "freeze:ip" and p.lists["freeze:ip"].format == "ip"
    assert r["freeze"].action.after_bytes == 16000 and r["freeze"].match.tls_any is True
    # http.path entries are raw substrings, not domain patterns: kept as written, not pattern-checked.
    assert p.lists["paths:http.path"].entries == ("/search?q=a b", "*weird*")
    assert r["fet"].probability == pytest.approx(0.263)
    assert [rule.line for rule in p.rules] == [8, 11, 18, 23, 27, 31, 34, 37]


def test_list_contents_are_checked_by_check_not_by_load(tmp_path: Path) -> None:
    pytest.importorskip("dpi.lists")
    write(tmp_path, "names.txt", "# blocked\nexample.com\nbad..name\n")
    path = write(tmp_path, "p.yaml", """
        name: p
        lists:
          names: {format: plain, files: [names.txt]}
        rules:
          - name: r
            match: {tls.sni: names}
            action: rst
        """)
    load_profile(path)  # the engine parses list contents; load only checks that the file exists
    (issue,) = issues_of(path)
    assert Path(issue.file).name == "names.txt" and issue.line == 3
    # `on_error: skip` is the user's choice for messy third-party lists: not an issue.
    path.write_text(path.read_text().replace("format: plain,", "format: plain, on_error: skip,"))
    assert check_profile(path) == []


def test_bad_inline_pattern_is_reported_at_its_yaml_line(tmp_path: Path) -> None:
    pytest.importorskip("dpi.lists")
    path = write(tmp_path, "p.yaml", """
        name: p
        rules:
          - name: r
            match:
              tls.sni:
                - example.com
                - "bad..name"
            action: rst
        """)
    (issue,) = issues_of(path)
    assert issue.line == 7
    with pytest.raises(ProfileError):
        load_profile(path)


# ------------------------------------------------------------------------------------------------ robustness

_WORDS = ["name", "summary", "year", "sources", "implements", "evasions", "include", "inside", "triggers", "seed",
          "flows", "tcp", "quic", "dns", "matching", "lists", "rules", "match", "action", "residual", "probability",
          "type", "rst", "throttle", "injector", "gfw-type2", "tls.sni", "ip", "port", "quic.version", "entries",
          "files", "format", "window", "reassembly", "ports", "to", "pool_a", "ttl", "delay_ms", "payload", "key",
          "seconds", "G-1", "T21-4", "gfw", "10.0.0.0/8", "x"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.sampled_from(_WORDS),
                     st.text(max_size=12))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_WORDS) | st.text(max_size=6), inner, max_size=5)),
    max_leaves=25)
_YAMLISH = st.text(alphabet="name:rules-[]{}*&!|>'\"#, \n\t.0123456789tcpx<", max_size=120)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One file rewritten by every example (hypothesis examples share a module-scoped fixture)."""
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "fuzz.yaml"


def _assert_only_issues(path: Path) -> None:
    for issue in check_profile(path):
        assert isinstance(issue, ProfileIssue) and issue.line > 0 and issue.fix and issue.file, issue
        assert "internal error" not in issue.message, issue
    try:
        load_profile(path)
    except ProfileError as exc:
        assert all("internal error" not in i.message for i in exc.issues), str(exc)


@settings(max_examples=150, deadline=None)
@given(document=st.dictionaries(st.sampled_from(_WORDS), _VALUES, max_size=6))
def test_any_structure_gives_issues_never_a_traceback(scratch: Path, document: dict) -> None:
    scratch.write_text(yaml.safe_dump(document), encoding="utf-8")
    _assert_only_issues(scratch)


@settings(max_examples=150, deadline=None)
@given(text=_YAMLISH)
def test_any_text_gives_issues_never_a_traceback(scratch: Path, text: str) -> None:
    scratch.write_text(text, encoding="utf-8")
    _assert_only_issues(scratch)
