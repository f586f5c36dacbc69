"""Tests of dpi.lists: each list format users bring, malformed lines, and a million-pattern list (T22-3 for `ip`).

Fixtures are small texts written here in each format's real syntax; the GFWList is base64-encoded here as it is
published, and the registry dump is written in cp1251 as zapret-info ships it.
"""
from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest

from dpi.lists import ListError, ListIssue, detect_format, load_list, parse_list_text
from dpi.match import DomainMatcher


def forms(loaded) -> list[tuple[str, str]]:
    return [(p.form, p.value) for p in loaded.patterns]


# --- plain -----------------------------------------------------------------------------------------------------

PLAIN = """\
# TSPU-2021 throttling list (T21-1)
*t.co*
*.twimg.com   # pictures
twitter.com

=exact.example
.subs.example
google.*
/^www\\d+\\./
~^cdn-
"""


def test_plain_every_form_comments_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "twitter.txt"
    path.write_text(PLAIN)
    loaded = load_list(path, "plain")
    assert forms(loaded) == [
        ("substring", "t.co"), ("suffix", ".twimg.com"), ("subdomains", "twitter.com"), ("exact", "exact.example"),
        ("subdomains-only", "subs.example"), ("prefix-subdomains", "google."), ("regex", "^www\\d+\\."),
        ("regex", "^cdn-"),
    ]
    assert [p.source for p in loaded.patterns][:3] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert loaded.patterns[1].text == "*.twimg.com"  # the comment is gone
    assert loaded.networks == [] and loaded.issues == []
    matcher = DomainMatcher(loaded.patterns)
    assert matcher.match("reddit.com").text == "*t.co*"
    assert matcher.match("www7.example.org").form == "regex"
    assert "example.org" not in matcher


def test_plain_default_form_exact() -> None:
    loaded = parse_list_text("example.com\n.sub.example\n", "plain", default_form="exact")
    assert forms(loaded) == [("exact", "example.com"), ("subdomains-only", "sub.example")]


PLAIN_BAD = """\
good.example
bad domain.example
# comment
/unbalanced
also-good.example
/a(b/
x*y.example
a..b
"""


def test_plain_malformed_lines_skip_mode_reports_right_lines() -> None:
    loaded = parse_list_text(PLAIN_BAD, "plain", source="bad.txt", on_error="skip")
    assert [p.value for p in loaded.patterns] == ["good.example", "also-good.example"]
    assert [(i.file, i.line) for i in loaded.issues] == [("bad.txt", 2), ("bad.txt", 4), ("bad.txt", 6),
                                                          ("bad.txt", 7), ("bad.txt", 8)]
    assert "unbalanced regex" in loaded.issues[1].message
    assert "invalid regex" in loaded.issues[2].message
    assert all(issue.fix for issue in loaded.issues)


def test_plain_malformed_lines_reject_mode_raises_all_issues(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(PLAIN_BAD)
    with pytest.raises(ListError) as caught:
        load_list(path, "plain")
    issues = caught.value.issues
    assert [i.line for i in issues] == [2, 4, 6, 7, 8]
    lines = str(caught.value).splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(f"{path}:2: whitespace inside 'bad domain.example' (fix: ")


def test_line_numbers_count_newlines_only() -> None:
    """A form feed or U+2028 inside a comment is not a line break for an editor, so it is not one here."""
    loaded = parse_list_text("# a\x0cb\u2028c\r\nok.example\r\nbad!\n", "plain", on_error="skip")
    assert [p.value for p in loaded.patterns] == ["ok.example"]
    assert [i.line for i in loaded.issues] == [3]


def test_issue_format() -> None:
    assert str(ListIssue("l.txt", 3, "bad thing", "do this")) == "l.txt:3: bad thing (fix: do this)"
    assert str(ListIssue("l.txt", 3, "bad thing", "")) == "l.txt:3: bad thing"


# --- ip --------------------------------------------------------------------------------------------------------

def test_ip_addresses_and_cidrs_t22_3() -> None:
    text = "# blocked servers\n192.0.2.1\n198.51.100.0/24  # a hosting range\n\n2001:db8::/32\n2001:db8::7\n"
    loaded = parse_list_text(text, "ip")
    assert loaded.networks == [ipaddress.ip_network(n) for n in
                               ("192.0.2.1/32", "198.51.100.0/24", "2001:db8::/32", "2001:db8::7/128")]
    assert loaded.patterns == []


def test_ip_bad_lines() -> None:
    text = "10.0.0.1/24\n10.0.0.0/33\nexample.com\n10.0.0.1-10.0.0.9\n192.0.2.0/24\n"
    loaded = parse_list_text(text, "ip", source="ips.txt", on_error="skip")
    assert loaded.networks == [ipaddress.ip_network("192.0.2.0/24")]
    assert [i.line for i in loaded.issues] == [1, 2, 3, 4]
    assert "host bits" in loaded.issues[0].message and loaded.issues[0].fix == "write 10.0.0.0/24"
    assert "range" in loaded.issues[3].message
    with pytest.raises(ListError) as caught:
        parse_list_text(text, "ip", source="ips.txt")
    assert len(caught.value.issues) == 4


# --- gfwlist ---------------------------------------------------------------------------------------------------

GFWLIST = """\
[AutoProxy 0.2.9]
! Checksum: abc
! Expires: 6h
! Title: GFWList4LL
||google.com
||example.org^
.030buy.com
.blogspot.com/search
|http://0rz.tw/foo
|https://*.dropbox.com
|http://85.17.73.31:8080/
1000giri.net
@@||baidu.com
@@|http://www.qq.com
/^https?:\\/\\/[^\\/]+blogspot\\.(.*)/
.google.*/falun
||bad_ch@r.example
/unbalanced
"""


def gfwlist_base64(text: str) -> str:
    """As published: base64 of the list, wrapped at 64 columns."""
    encoded = base64.b64encode(text.encode()).decode()
    return "\n".join(encoded[i:i + 64] for i in range(0, len(encoded), 64)) + "\n"


def test_gfwlist_base64_rules_and_whitelist(tmp_path: Path) -> None:
    path = tmp_path / "gfwlist.txt"
    path.write_text(gfwlist_base64(GFWLIST))
    assert detect_format(path) == "gfwlist"
    loaded = load_list(path, on_error="skip")
    assert forms(loaded) == [
        ("subdomains", "google.com"),
        ("subdomains", "example.org"),
        ("subdomains", "030buy.com"),
        ("subdomains", "blogspot.com"),
        ("exact", "0rz.tw"),
        ("subdomains-only", "dropbox.com"),
        ("exact", "85.17.73.31"),
        ("substring", "1000giri.net"),
        ("regex", "^[^\\/]+blogspot\\.(.*)"),  # the URL regex reduced to the host: the scheme part is gone
        ("prefix-subdomains", "google."),
    ]
    assert loaded.skipped == {"whitelist": 2}
    # Line numbers refer to the decoded text, and the file name says so.
    assert [(i.file, i.line) for i in loaded.issues] == [(f"{path} (base64-decoded)", 17),
                                                         (f"{path} (base64-decoded)", 18)]
    matcher = DomainMatcher(loaded.patterns)
    assert matcher.match("www.blogspot.com") is not None
    assert matcher.match("google.com.hk").value == "google."
    assert matcher.match("www.1000giri.net.cn").value == "1000giri.net"
    assert "baidu.com" not in matcher and "www.0rz.tw" not in matcher


def test_gfwlist_decoded_text_is_accepted() -> None:
    decoded = parse_list_text(GFWLIST, "gfwlist", source="g.txt", on_error="skip")
    encoded = parse_list_text(gfwlist_base64(GFWLIST), "gfwlist", source="g.txt", on_error="skip")
    assert forms(decoded) == forms(encoded)
    assert [(i.file, i.line) for i in decoded.issues] == [("g.txt", 17), ("g.txt", 18)]
    assert detect_format(GFWLIST) == "gfwlist"


def test_gfwlist_garbage_is_an_issue() -> None:
    with pytest.raises(ListError):
        parse_list_text("just some words\n", "gfwlist")


# --- v2fly -----------------------------------------------------------------------------------------------------

V2FLY = """\
# twitter, as in domain-list-community data/twitter
include:twitter-ads
domain:twitter.com @!cn
full:api.x.com
keyword:twimg   # trailing comment
regexp:^video\\d+\\.twimg\\.com$
t.co @ads @cn
domain:bad_ch@r.com
regexp:(unclosed
"""


def test_v2fly_kinds_attributes_and_include() -> None:
    loaded = parse_list_text(V2FLY, "v2fly", source="data/twitter", on_error="skip")
    assert forms(loaded) == [("subdomains", "twitter.com"), ("exact", "api.x.com"), ("substring", "twimg"),
                             ("regex", "^video\\d+\\.twimg\\.com$"), ("subdomains", "t.co")]
    assert [(i.line, i.message.split()[0]) for i in loaded.issues] == [(2, "cannot"), (8, "bad"), (9, "invalid")]
    assert "include:twitter-ads" in loaded.issues[0].message
    assert loaded.skipped == {"include": 1}
    assert detect_format(V2FLY) == "v2fly"
    with pytest.raises(ListError) as caught:
        parse_list_text(V2FLY, "v2fly", source="data/twitter")
    assert [i.line for i in caught.value.issues] == [2, 8, 9]
    matcher = DomainMatcher(loaded.patterns)
    assert matcher.match("video12.twimg.com") is not None and "t.co" in matcher and "x.com" not in matcher


# --- registry-csv ----------------------------------------------------------------------------------------------

REGISTRY = """\
Updated: 2024-05-01 10:00:00 +0000
192.0.2.1 | 198.51.100.0/24;example.com;http://example.com/page;Роскомнадзор;27-31-2018/Ид2971-18;2018-04-16
2001:db8::1;*.rutracker.org;;Мосгорсуд;3-1234/2015;2015-10-01
203.0.113.5;пример.рф;http://пример.рф/;ФНС;2-6-27;2013-01-01
203.0.113.6;;http://203.0.113.6/x;Генпрокуратура;27-31-2020;2020-01-01
999.1.1.1;bad domain.ru;;ФНС;1;2013-01-01
a row without separators
"""


def test_registry_csv_cp1251_names_and_networks(tmp_path: Path) -> None:
    path = tmp_path / "dump.csv"
    path.write_bytes(REGISTRY.encode("cp1251"))
    assert detect_format(path) == "registry-csv"
    loaded = load_list(path, on_error="skip")
    assert forms(loaded) == [("subdomains", "example.com"), ("subdomains", "rutracker.org"),
                             ("subdomains", "xn--e1afmkfd.xn--p1ai")]
    assert loaded.networks == [ipaddress.ip_network(n) for n in
                               ("192.0.2.1/32", "198.51.100.0/24", "2001:db8::1/128", "203.0.113.5/32",
                                "203.0.113.6/32")]
    assert [i.line for i in loaded.issues] == [6, 6, 7]
    assert loaded.patterns[0].source == f"{path}:2"


def test_registry_csv_default_form_exact_keeps_mask_entries_wide(tmp_path: Path) -> None:
    path = tmp_path / "dump.csv"
    path.write_text(REGISTRY, encoding="utf-8")  # newer dumps are UTF-8: both decode
    loaded = load_list(path, "registry-csv", default_form="exact", on_error="skip")
    assert forms(loaded)[:2] == [("exact", "example.com"), ("subdomains", "rutracker.org")]
    matcher = DomainMatcher(loaded.patterns)
    assert "www.rutracker.org" in matcher and "www.example.com" not in matcher


# --- detection and errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("example.com\n*t.co*\n", "plain"),
    ("192.0.2.1\n10.0.0.0/8 # lan\n2001:db8::/32\n", "ip"),
    ("||google.com\n@@||baidu.com\n", "gfwlist"),
    ("full:a.com\nkeyword:b\n", "v2fly"),
    ("Updated: 2024-01-01\n1.2.3.4;a.ru;;x;1;2020-01-01\n", "registry-csv"),
    ("", "plain"),
])
def test_detect_format(text: str, expected: str) -> None:
    assert detect_format(text) == expected
    assert parse_list_text(text, "auto", on_error="skip") is not None


def test_missing_file_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ListError) as caught:
        load_list(tmp_path / "nope.txt")
    assert caught.value.issues[0].line == 0 and "cannot read" in caught.value.issues[0].message
    with pytest.raises(ValueError):
        parse_list_text("x.com", "hosts")
    with pytest.raises(ValueError):
        parse_list_text("x.com", "plain", on_error="ignore")


def test_binary_garbage_never_raises_unexpected(tmp_path: Path) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(bytes(range(256)) * 4)
    for fmt in ("auto", "plain", "ip", "gfwlist", "v2fly", "registry-csv"):
        loaded = load_list(path, fmt, on_error="skip")
        assert loaded.issues, fmt


# --- scale: SLOW, about 10 s on a 2-core machine (select with -k slow, skip with -k "not slow") ------------------

def test_slow_one_million_patterns_load() -> None:
    """1,000,000 generated patterns of every fast form load through the plain parser into one matcher."""
    templates = ("{}", "{}", "{}", "{}", "{}", "{}", "{}", "{}", "={}", "{}*", "*{}", ".{}")
    lines = [templates[i % len(templates)].format(f"n{i}x.example{i % 97}.com") for i in range(1_000_000)]
    lines[123_457] = "*zq7t.co*"
    loaded = parse_list_text("\n".join(lines), "plain", source="million.txt")
    del lines
    assert len(loaded.patterns) == 1_000_000 and not loaded.issues
    matcher = DomainMatcher(loaded.patterns)
    assert len(matcher) == 1_000_000
    assert matcher.match("www.n0x.example0.com").source == "million.txt:1"
    assert matcher.match("n8x.example8.com").form == "exact"
    assert matcher.match("n9x.example9.com.cn").form == "prefix-subdomains"
    assert matcher.match("moren10x.example10.com").form == "suffix"
    assert "n11x.example11.com" not in matcher  # subdomains only
    assert matcher.match("api.n11x.example11.com").form == "subdomains-only"
    assert matcher.match("a-zq7t.com").text == "*zq7t.co*"
    assert "n1x.example2.com" not in matcher
    assert "unlisted.example" not in matcher
