"""Tests of dpi.match: every pattern form matches exactly what its regex (G-2's notation) matches.

The regex equivalents are written out again here, from the pattern table of the design, so that the matcher is
checked against an independent statement of the forms and not against its own FORM_REGEX.
"""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpi.match import FORMS, DomainMatcher, Pattern, PatternError, form_regex, parse_pattern

# form -> (list syntax, regex over the normalised name); {} is the keyword.
EQUIVALENT: dict[str, tuple[str, str]] = {
    "subdomains": ("{}", r"^(.*\.)?{}$"),
    "exact": ("={}", r"^{}$"),
    "subdomains-only": (".{}", r"^.+\.{}$"),
    "suffix": ("*{}", r"{}$"),
    "prefix-subdomains": ("{}*", r"^(.*\.)?{}"),
    "substring": ("*{}*", r"{}"),
}
REGEXES = ["/^a/", "/b-$/", r"~a\.b", "/(ab|ba)+/", "/^[a-b]{3}$/"]

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

label = st.text(alphabet="ab-", min_size=1, max_size=3)
domain_keyword = st.lists(label, min_size=1, max_size=3).map(".".join)
raw_keyword = st.builds(lambda lead, body, trail: lead + body + trail,
                        st.sampled_from(["", "."]), domain_keyword, st.sampled_from(["", "."]))


@st.composite
def patterns(draw: st.DrawFn) -> Pattern:
    form = draw(st.sampled_from([*EQUIVALENT, "regex"]))
    if form == "regex":
        return parse_pattern(draw(st.sampled_from(REGEXES)))
    if form in ("exact", "subdomains", "subdomains-only"):
        keyword = draw(domain_keyword)
    elif form == "prefix-subdomains":
        keyword = draw(domain_keyword) + draw(st.sampled_from(["", "."]))
    else:
        keyword = draw(raw_keyword)
    keyword = "".join(c.upper() if draw(st.booleans()) and c.isalpha() else c for c in keyword)
    pattern = parse_pattern(EQUIVALENT[form][0].format(keyword))
    assert pattern.form == form
    return pattern


@st.composite
def names_around(draw: st.DrawFn, keywords: list[str]) -> str:
    """Names built from the keywords and from noise, so that hits, near-misses and misses all occur."""
    pieces = draw(st.lists(st.one_of(st.sampled_from(keywords or ["a"]),
                                     st.sampled_from(["a", "b", ".", "-", "A", "x.", ".b", "é"])),
                           max_size=5))
    return "".join(pieces)


def regex_matches(pattern: Pattern, name: str) -> bool:
    """The definition: the form's regex on the normalised (lower-case) name."""
    if pattern.form == "regex":
        return re.search(pattern.value, name, re.IGNORECASE) is not None
    template = EQUIVALENT[pattern.form][1]
    return re.search(template.replace("{}", re.escape(pattern.value.lower())), name) is not None


def priority(pattern: Pattern, index: int) -> tuple:
    """The documented order: exact first, then the longest keyword, then form order, then list order; regex last."""
    if pattern.form == "regex":
        return (2, 0, 0, index)
    return (0 if pattern.form == "exact" else 1, -len(pattern.value), FORMS.index(pattern.form), index)


@PROPERTY
@given(data=st.data(), keep=st.booleans())
def test_each_form_matches_exactly_its_regex(data: st.DataObject, keep: bool) -> None:
    pattern = data.draw(patterns())
    name = data.draw(names_around([pattern.value, pattern.value.upper()]))
    name += data.draw(st.sampled_from(["", "", "."]))
    matcher = DomainMatcher([pattern], trailing_dot="keep" if keep else "strip")
    normalised = name.lower() if keep or not name.endswith(".") else name[:-1].lower()
    assert (matcher.match(name) is not None) == regex_matches(pattern, normalised), (pattern, name)


@PROPERTY
@given(data=st.data())
def test_many_patterns_give_the_best_regex_match(data: st.DataObject) -> None:
    """With many patterns at once the answer is the best (by the documented order) of those whose regex matches."""
    plist = data.draw(st.lists(patterns(), min_size=1, max_size=12))
    matcher = DomainMatcher(plist)
    keywords = [p.value for p in plist if p.form != "regex"]
    for _ in range(5):
        name = data.draw(names_around(keywords))
        normalised = name.lower()[:-1] if name.endswith(".") else name.lower()
        candidates = [(priority(p, i), p) for i, p in enumerate(plist) if regex_matches(p, normalised)]
        found = matcher.match(name)
        if not candidates:
            assert found is None, (name, found)
        else:
            assert found is min(candidates, key=lambda c: c[0])[1], (name, found, candidates)


def test_form_regex_states_the_design_table() -> None:
    for form, (syntax, regex) in EQUIVALENT.items():
        pattern = parse_pattern(syntax.format("example.com"))
        assert pattern.form == form
        assert form_regex(pattern) == regex.replace("{}", re.escape("example.com"))


# --- T21-1: the TSPU's March 2021 Twitter patterns and their collateral damage ----------------------------------

def test_t21_1_substring_t_co_overblocks_reddit_and_microsoft() -> None:
    matcher = DomainMatcher([parse_pattern("*t.co*")])
    assert matcher.match("t.co") is not None
    assert matcher.match("reddit.com") is not None  # reddi[t.co]m
    assert matcher.match("www.microsoft.com") is not None  # microsof[t.co]m
    assert "twitter.com" not in matcher  # t-w-i-t-t-e-r-.-c-o-m holds no "t.co"
    assert "example.com" not in matcher


def test_t21_1_suffixes_twimg_and_twitter() -> None:
    matcher = DomainMatcher([parse_pattern("*.twimg.com"), parse_pattern("*twitter.com")])
    assert matcher.match("pbs.twimg.com").value == ".twimg.com"
    assert "twimg.com" not in matcher  # the dot is part of the raw suffix
    assert matcher.match("api.twitter.com").value == "twitter.com"
    assert matcher.match("nottwitter.com").value == "twitter.com"  # raw suffix: no label boundary
    assert "twitter.com.evil" not in matcher


def test_t21_1_narrowed_to_exact_names() -> None:
    matcher = DomainMatcher([parse_pattern("=twitter.com"), parse_pattern("=abs.twimg.com")])
    assert "twitter.com" in matcher and "abs.twimg.com" in matcher
    assert "api.twitter.com" not in matcher and "pbs.twimg.com" not in matcher


# --- normalisation ---------------------------------------------------------------------------------------------

def test_t21_e_trailing_dot_kept_evades_and_stripped_matches() -> None:
    rules = [parse_pattern("twitter.com"), parse_pattern("=t.co")]
    kept = DomainMatcher(rules, trailing_dot="keep")
    stripped = DomainMatcher(rules, trailing_dot="strip")
    for name in ("twitter.com.", "api.twitter.com.", "t.co."):
        assert name not in kept, name
        assert name in stripped, name
    assert "twitter.com" in kept
    assert "twitter.com.." not in stripped  # only one trailing dot is the root


def test_case_insensitive_by_default_and_sensitive_on_request() -> None:
    matcher = DomainMatcher([parse_pattern("Example.COM"), parse_pattern("/^WWW\\./")])
    assert matcher.match("WWW.EXAMPLE.com").text == "Example.COM"
    assert matcher.match("Www.Other.org").form == "regex"
    strict = DomainMatcher([parse_pattern("Example.com", case_sensitive=True), parse_pattern("/^WWW\\./")],
                           case_sensitive=True)
    assert "Example.com" in strict and "a.Example.com" in strict
    assert "example.com" not in strict
    assert "www.other.org" not in strict and "WWW.other.org" in strict


def test_parse_pattern_normalises() -> None:
    assert parse_pattern("  Example.COM. ").value == "example.com"  # FQDN notation, case
    assert parse_pattern("Example.com", case_sensitive=True).value == "Example.com"
    assert parse_pattern("example.com", source="l.txt:3").source == "l.txt:3"
    assert parse_pattern("example.com", default_form="exact").form == "exact"
    assert parse_pattern("/Ab\\d/").value == "Ab\\d"  # a regex is never lower-cased (\D is not \d)
    assert parse_pattern("~^x").value == "^x"
    # IDN names become punycode, which is what travels in SNI and Host.
    assert parse_pattern("пример.рф").value == "xn--e1afmkfd.xn--p1ai"
    assert parse_pattern("*.рф").value == ".xn--p1ai"
    assert parse_pattern("bücher.*").value == "xn--bcher-kva."


@pytest.mark.parametrize(("line", "words"), [
    ("", "empty"),
    ("/abc", "unbalanced regex"),
    ("/a(b/", "invalid regex"),
    ("~[z-a]", "invalid regex"),
    ("//", "empty regex"),
    ("exa mple.com", "whitespace"),
    ("exa$mple.com", "bad character '$'"),
    ("a..b.com", "empty label"),
    ("..example.com", "more than one '.'"),
    ("ex*ample.com", "'*' inside"),
    ("*", "no name"),
    ("=", "no name"),
    ("**", "no name"),
    (".*", "starts with '.' and ends with '*'"),
    ("*при*", "punycode"),
    ("a" * 64 + ".com", "longer than 63"),
])
def test_bad_patterns_raise_with_a_fix(line: str, words: str) -> None:
    with pytest.raises(PatternError) as caught:
        parse_pattern(line)
    assert words in caught.value.message
    assert isinstance(caught.value, ValueError)
    assert caught.value.fix


# --- choice among several matches ----------------------------------------------------------------------------

def test_exact_wins_then_longest_keyword_then_regex_last() -> None:
    rules = [parse_pattern(x) for x in
             ("/mail/", "*google.com", "google.com", "*w.google.com", "mail.google.com", "=mail.google.com",
              "*mail*")]
    matcher = DomainMatcher(rules)
    assert matcher.match("mail.google.com").text == "=mail.google.com"
    assert matcher.match("x.mail.google.com").text == "mail.google.com"
    assert matcher.match("www.google.com").text == "*w.google.com"  # the longer keyword, though a raw suffix
    assert matcher.match("api.google.com").text == "google.com"  # as long as *google.com: the anchored form
    assert matcher.match("mail.example.org").text == "*mail*"  # a fast form beats the regex
    only_regex = DomainMatcher([parse_pattern("/mail/"), parse_pattern("/ail/")])
    assert only_regex.match("mail.org").text == "/mail/"  # regexes in list order


def test_duplicates_resolve_to_the_first_listed() -> None:
    first = parse_pattern("example.com", source="a.txt:1")
    second = parse_pattern("example.com", source="b.txt:9")
    assert DomainMatcher([first, second]).match("www.example.com") is first
    sub1, sub2 = parse_pattern("*t.co*", source="a:1"), parse_pattern("*t.co*", source="a:2")
    assert DomainMatcher([sub1, sub2]).match("reddit.com") is sub1


# --- robustness: names are attacker-controlled --------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=80) | st.binary(max_size=80))
def test_any_name_is_answered_without_error(name: str | bytes) -> None:
    matcher = DomainMatcher([parse_pattern(x) for x in ("example.com", "=a.b", ".c.d", "*t.co*", "x.*", "*e.f",
                                                        "/^z+$/")])
    result = matcher.match(name)
    assert result is None or isinstance(result, Pattern)


def test_huge_crafted_name_still_matches_its_listed_suffix() -> None:
    matcher = DomainMatcher([parse_pattern("example.com"), parse_pattern(".blocked.org")])
    name = "a." * 30000 + "example.com"
    assert matcher.match(name).value == "example.com"
    assert matcher.match("a." * 30000 + "blocked.org").value == "blocked.org"
    assert ("a." * 30000 + "example.net") not in matcher


def test_bytes_names_and_container_protocol() -> None:
    matcher = DomainMatcher([parse_pattern("example.com"), parse_pattern("*t.co*")])
    assert len(matcher) == 2
    assert b"www.example.com" in matcher
    assert matcher.match(b"\xffreddit.com") is not None
    assert 42 not in matcher
    assert len(DomainMatcher([])) == 0 and "example.com" not in DomainMatcher([])


def test_bad_options_and_forms_are_refused() -> None:
    with pytest.raises(ValueError):
        DomainMatcher([], trailing_dot="drop")
    with pytest.raises(ValueError):
        DomainMatcher([Pattern("x", "glob", "x")])
    with pytest.raises(ValueError):
        parse_pattern("example.com", default_form="suffix")
