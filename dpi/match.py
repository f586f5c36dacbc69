"""Domain patterns and the matcher that checks a name (SNI, Host, QUIC SNI, DNS qname) against a blocklist.

Censors' lists are not lists of names but of patterns with different anchoring: G-2 measured the GFW's list as
85 % `^(.*\\.)?kw$`, 9 % `^kw$`, 4 % `^(.*\\.)?kw` (no end anchor), 1 % `kw$` and 0.3 % bare substrings, and
T21-1's TSPU list held the substring `t.co` that over-blocked reddit.com and microsoft.com. Each form here is
defined by the regex in `FORM_REGEX`; the matcher gives exactly the answer those regexes give, but fast:

* `exact`, `subdomains` and `subdomains-only` (94 % of a GFW-like list) are anchored at a label boundary and at
  the end of the name, so they are hash lookups of the name and of each of its label suffixes
  (`a.b.example.com`, `b.example.com`, `example.com`, `com`): a few dict probes per name, whatever the list size,
  and no per-character trie nodes for a million names.
* `prefix-subdomains`, `suffix` and `substring` can start or end anywhere, so they share ONE pyahocorasick
  automaton; each hit's anchoring condition is checked on its position.
* `regex` is the slow path: Python `re.search`, tried only when no fast form matched.

Names are compared as text. Every form's regex is read with `.` matching any character and `$` meaning the end
of the name (not "before a final newline"), which is what a name, having no newlines, needs anyway.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import ahocorasick

__all__ = [
    "FORMS",
    "FORM_REGEX",
    "DomainMatcher",
    "Pattern",
    "PatternError",
    "form_regex",
    "parse_pattern",
]

FORMS: Final[tuple[str, ...]] = (
    "exact", "subdomains", "subdomains-only", "prefix-subdomains", "suffix", "substring", "regex",
)
# The meaning of each form, as a regex over the normalised name; `{kw}` is `re.escape(value)` (G-2's notation).
FORM_REGEX: Final[dict[str, str]] = {
    "exact": r"^{kw}$",
    "subdomains": r"^(.*\.)?{kw}$",
    "subdomains-only": r"^.+\.{kw}$",
    "suffix": r"{kw}$",
    "prefix-subdomains": r"^(.*\.)?{kw}",
    "substring": r"{kw}",
}
# Tie-break between forms whose keywords are equally long: the more tightly anchored form wins.
_FORM_RANK: Final[dict[str, int]] = {form: rank for rank, form in enumerate(FORMS)}
_RANK_PREFIX: Final[int] = _FORM_RANK["prefix-subdomains"]
_RANK_SUFFIX: Final[int] = _FORM_RANK["suffix"]

# One DNS-ish label: letters, digits, hyphen and underscore (underscores occur in real SNIs and lists).
_LABEL: Final[str] = r"[a-z0-9_-]{1,63}"
# Domain-anchored keywords: whole labels, no empty label (`a..b`), at most one trailing dot (stripped).
_DOMAIN_RE: Final[re.Pattern[str]] = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# Raw keywords (suffix, substring, prefix-subdomains): the same characters, may start/end with a dot, no `..`.
_RAW_RE: Final[re.Pattern[str]] = re.compile(r"\.?[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\.")
_BAD_CHAR_RE: Final[re.Pattern[str]] = re.compile(r"[^a-z0-9_.-]")
_MAX_NAME: Final[int] = 253


class PatternError(ValueError):
    """A list line that is not a valid pattern; `fix` says how to write it instead (shown to users in issues)."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Pattern:
    """One blocklist pattern. `value` is what is matched; `text` and `source` say where it came from, for events."""

    text: str  # the line as written (after stripping comments/whitespace)
    form: str  # one of FORMS
    value: str  # normalised keyword (lowercase unless case_sensitive; regex source as written)
    source: str = ""  # "file:line" where it came from, for events


def form_regex(pattern: Pattern) -> str:
    """The regex that defines what `pattern` matches (search semantics on the normalised name)."""
    if pattern.form == "regex":
        return pattern.value
    return FORM_REGEX[pattern.form].replace("{kw}", re.escape(pattern.value))


def parse_pattern(text: str, *, default_form: str = "subdomains", source: str = "",
                  case_sensitive: bool = False) -> Pattern:
    """Parse one list line (already stripped of comments) into a Pattern.

    Syntax: `example.com` (default form), `=example.com` exact, `.example.com` subdomains only, `*example.com`
    raw suffix, `example.com*` name-and-subdomains without end anchor, `*t.co*` raw substring, `/regex/` or
    `~regex`. Unicode names become punycode (IDNA), because that is what travels in SNI and Host.
    Raises PatternError (a ValueError) saying what is wrong and how to fix it.
    """
    if default_form not in ("subdomains", "exact"):
        raise ValueError(f"default_form must be 'subdomains' or 'exact', not {default_form!r}")
    line = text.strip()
    if not line:
        raise PatternError("empty pattern", "remove the line")
    first = line[0]
    if first == "/":
        if len(line) < 2 or line[-1] != "/":
            raise PatternError(f"unbalanced regex {line!r}: it starts with '/' but does not end with '/'",
                               "close it with '/', or write '~regex' for a regex without slashes")
        return _regex_pattern(line, line[1:-1], source, case_sensitive)
    if first == "~":
        return _regex_pattern(line, line[1:], source, case_sensitive)

    if first == "=":
        form, keyword = "exact", line[1:]
    elif first == "*" and line[-1] == "*" and len(line) >= 2:
        form, keyword = "substring", line[1:-1]
    elif first == "*":
        form, keyword = "suffix", line[1:]
    elif line[-1] == "*":
        form, keyword = "prefix-subdomains", line[:-1]
    elif first == ".":
        form, keyword = "subdomains-only", line[1:]
    else:
        form, keyword = default_form, line
    value = _keyword(line, form, keyword, case_sensitive)
    # Share the string when the value is the line itself (the common case): one object per pattern, not two.
    return Pattern(line, form, line if value == line else value, source)


def _regex_pattern(line: str, body: str, source: str, case_sensitive: bool) -> Pattern:
    if not body:
        raise PatternError(f"empty regex {line!r}", "write a regex between the slashes, or remove the line")
    try:
        re.compile(body, 0 if case_sensitive else re.IGNORECASE)
    except re.error as exc:
        raise PatternError(f"invalid regex {line!r}: {exc}",
                           "fix the regex (Python `re` syntax), or escape special characters with '\\'") from None
    except (OverflowError, RecursionError, ValueError) as exc:
        raise PatternError(f"invalid regex {line!r}: {exc}", "simplify the regex") from None
    return Pattern(line, "regex", body, source)


def _keyword(line: str, form: str, keyword: str, case_sensitive: bool) -> str:
    """Validate and normalise the keyword of a non-regex form."""
    if not keyword:
        raise PatternError(f"pattern {line!r} has no name in it", "write a name, e.g. example.com")
    if "*" in keyword:
        raise PatternError(f"'*' inside {line!r}: a wildcard may only open or close a pattern",
                           "use a regex, e.g. /^www\\.example\\.[a-z]+$/")
    if not keyword.isascii():
        keyword = _to_punycode(line, form, keyword)
    check = keyword.lower()
    value = keyword if case_sensitive else check
    if form in ("exact", "subdomains", "subdomains-only"):
        if _DOMAIN_RE.fullmatch(check) is None:
            _explain_bad_domain(line, check, raw=False)
        if value.endswith("."):  # FQDN notation `example.com.` names example.com
            value = value[:-1]
        if len(value) > _MAX_NAME:
            raise PatternError(f"name in {line!r} is longer than {_MAX_NAME} characters", "shorten it")
    else:
        if form == "prefix-subdomains" and check.startswith("."):
            raise PatternError(f"{line!r} starts with '.' and ends with '*'",
                               "for subdomains only use '.example.com', for a substring '*example*'")
        if _RAW_RE.fullmatch(check) is None:
            _explain_bad_domain(line, check, raw=True)
    return value


def _explain_bad_domain(line: str, check: str, *, raw: bool) -> None:
    bad = _BAD_CHAR_RE.search(check)
    if bad is not None:
        char = bad.group()
        if char.isspace():
            raise PatternError(f"whitespace inside {line!r}", "one pattern per line; remove the space")
        raise PatternError(f"bad character {char!r} in {line!r}",
                           "a name holds only letters, digits, '-', '_' and '.'; use a /regex/ for anything else")
    if ".." in check:
        raise PatternError(f"empty label ('..') in {line!r}", "remove the doubled dot")
    if not raw and check.startswith("."):
        raise PatternError(f"{line!r} starts with more than one '.'", "write '.example.com' for subdomains only")
    if any(len(label) > 63 for label in check.split(".")):
        raise PatternError(f"a label in {line!r} is longer than 63 characters", "check the name")
    raise PatternError(f"{line!r} is not a valid name", "write a name such as example.com")


def _to_punycode(line: str, form: str, keyword: str) -> str:
    """IDN labels to their ASCII (xn--) form; only whole labels can be converted.

    A raw suffix/substring may start or end inside a label, and a fragment of a Unicode label has no punycode
    of its own (the encoding of a label is not the concatenation of its parts), so those are refused.
    """
    left_whole = form in ("exact", "subdomains", "subdomains-only", "prefix-subdomains") or keyword.startswith(".")
    right_whole = form in ("exact", "subdomains", "subdomains-only", "suffix") or keyword.endswith(".")
    labels = keyword.split(".")
    out: list[str] = []
    for i, label in enumerate(labels):
        if label.isascii():
            out.append(label)
            continue
        partial = (i == 0 and not left_whole) or (i == len(labels) - 1 and not right_whole)
        if partial:
            raise PatternError(f"non-ASCII text in a partial label of {line!r} cannot be turned into punycode",
                               "write the punycode (xn--...) form, or anchor the pattern at whole labels")
        try:
            out.append(label.encode("idna").decode("ascii"))
        except UnicodeError as exc:
            raise PatternError(f"cannot convert {label!r} in {line!r} to punycode: {exc}",
                               "check the internationalised name") from None
    return ".".join(out)


class DomainMatcher:
    """Checks names against many patterns at once.

    `match` returns the first matching pattern in a deterministic order: an `exact` pattern first, then the
    longest keyword; equally long keywords go to the more tightly anchored form (order of FORMS), then to the
    earlier pattern; regexes come last, in list order (they are only run when nothing else matched).

    Names are normalised as a censor would: `trailing_dot="strip"` removes one trailing dot (the DNS root), while
    `"keep"` keeps it, so `twitter.com.` does not match `twitter.com` (T21-E: TSPU-2021 missed such SNIs).
    Unless `case_sensitive`, names and keywords compare case-insensitively.
    """

    __slots__ = ("_automaton", "_case_sensitive", "_domain_max", "_exact", "_keep_dot", "_patterns",
                 "_regexes", "_subdomains", "_subonly")

    def __init__(self, patterns: Iterable[Pattern], *, trailing_dot: str = "strip",
                 case_sensitive: bool = False) -> None:
        if trailing_dot not in ("strip", "keep"):
            raise ValueError(f"trailing_dot must be 'strip' or 'keep', not {trailing_dot!r}")
        self._keep_dot = trailing_dot == "keep"
        self._case_sensitive = case_sensitive
        self._patterns: list[Pattern] = list(patterns)
        # Dicts hold the Pattern itself (a reference, no per-pattern object of ours); the first pattern with a
        # given keyword wins, which is the list order tie-break.
        self._exact: dict[str, Pattern] = {}
        self._subdomains: dict[str, Pattern] = {}
        self._subonly: dict[str, Pattern] = {}
        self._domain_max = 0
        self._regexes: list[tuple[re.Pattern[str], Pattern]] = []
        # keyword -> (len, ((form rank, pattern index), ...)) for the unanchored forms.
        raw: dict[str, list[tuple[int, int]]] = {}
        flags = 0 if case_sensitive else re.IGNORECASE
        for index, pattern in enumerate(self._patterns):
            form = pattern.form
            if form == "regex":
                self._regexes.append((re.compile(pattern.value, flags), pattern))
                continue
            value = self._fold(pattern.value)
            if form == "subdomains":
                self._subdomains.setdefault(value, pattern)
            elif form == "exact":
                self._exact.setdefault(value, pattern)
            elif form == "subdomains-only":
                self._subonly.setdefault(value, pattern)
            elif form in ("prefix-subdomains", "suffix", "substring"):
                raw.setdefault(value, []).append((_FORM_RANK[form], index))
                continue
            else:
                raise ValueError(f"unknown pattern form {form!r} in {pattern.text!r} ({pattern.source})")
            if len(value) > self._domain_max:
                self._domain_max = len(value)
        self._automaton: ahocorasick.Automaton | None = None
        if raw:
            automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY)
            for keyword, hits in raw.items():
                hits.sort()
                automaton.add_word(keyword, (len(keyword), tuple(hits)))
            automaton.make_automaton()
            self._automaton = automaton

    def _fold(self, text: str) -> str:
        if self._case_sensitive:
            return text
        folded = text.lower()
        return text if folded == text else folded

    def normalise(self, name: str | bytes) -> str:
        """The name as the matcher sees it (trailing dot and case handled); bytes are read as Latin-1."""
        if isinstance(name, (bytes, bytearray, memoryview)):
            name = bytes(name).decode("latin-1")
        if not self._keep_dot and name.endswith("."):
            name = name[:-1]
        return name if self._case_sensitive else name.lower()

    def match(self, name: str | bytes) -> Pattern | None:
        """The pattern that `name` matches (see the class docstring for which one), or None."""
        n = self.normalise(name)
        size = len(n)
        if self._exact:
            hit = self._exact.get(n)
            if hit is not None:
                return hit
        best: Pattern | None = None
        best_len = -1
        if self._subdomains or self._subonly:
            subdomains, subonly = self._subdomains, self._subonly
            best = subdomains.get(n)
            if best is not None:
                best_len = size
            else:
                # Label suffixes, longest first; only those not longer than the longest keyword can hit, which
                # also bounds the work on a huge crafted name.
                start = size - self._domain_max - 1
                dot = n.find(".", start if start > 0 else 0)
                while dot >= 0:
                    tail = n[dot + 1:]
                    best = subdomains.get(tail)
                    if best is None and dot > 0:
                        best = subonly.get(tail)
                    if best is not None:
                        best_len = size - dot - 1
                        break
                    dot = n.find(".", dot + 1)
        if self._automaton is not None and best_len < size:
            found = self._scan(n, size, best_len)
            if found is not None:
                return found
        if best is not None:
            return best
        for regex, pattern in self._regexes:
            if regex.search(n) is not None:
                return pattern
        return None

    def _scan(self, n: str, size: int, longer_than: int) -> Pattern | None:
        """The best unanchored-form hit whose keyword is longer than `longer_than` (the anchored forms win ties)."""
        assert self._automaton is not None
        best_key: tuple[int, int, int] | None = None
        last = size - 1
        for end, (length, hits) in self._automaton.iter(n):
            if length <= longer_than:
                continue
            begin = end - length + 1
            for rank, index in hits:
                if rank == _RANK_PREFIX:  # prefix-subdomains: starts the name or right after a dot
                    if begin != 0 and n[begin - 1] != ".":
                        continue
                elif rank == _RANK_SUFFIX:  # suffix: ends the name
                    if end != last:
                        continue
                key = (-length, rank, index)
                if best_key is None or key < best_key:
                    best_key = key
                break  # hits are sorted by (rank, index): the first that holds is this keyword's best
        if best_key is None:
            return None
        return self._patterns[best_key[2]]

    def __len__(self) -> int:
        return len(self._patterns)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, (str, bytes, bytearray, memoryview)):
            return False
        return self.match(name) is not None

    def __repr__(self) -> str:
        return (f"DomainMatcher({len(self._patterns)} patterns: {len(self._exact)} exact, "
                f"{len(self._subdomains)} subdomains, {len(self._subonly)} subdomains-only, "
                f"{len(self._automaton) if self._automaton is not None else 0} unanchored keywords, "
                f"{len(self._regexes)} regexes)")
