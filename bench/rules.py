"""Benchmark of the domain matcher against the naive baseline, measured in the same run.

For each list size a synthetic GFW-like blocklist is generated with G-2's form shares (85 % name-and-subdomains,
9 % exact, 4 % name-and-subdomains without end anchor, 1 % raw suffix, 0.3 % raw substring; the remaining 0.7 %
are subdomains-only), loaded through the real `plain` list parser and compiled into a `DomainMatcher`. Then the same
names (half built to hit a listed pattern, half fresh random names, nearly all misses) are looked up with the
matcher and with the baseline: a Python loop over one compiled `re` regex per pattern, stopping at the first match,
which is how a censor list "of regexes" (G-2's notation) would be checked naively.

Compiling a million regexes would take minutes and gigabytes, so above `baseline_max` patterns the baseline runs
on a random subset and its speed is extrapolated: the measured cost of one regex test times N tests for a miss and
N/2 for a hit (a hit's pattern sits anywhere in the list). Rows say `baseline: measured` or `extrapolated`.

Run: `python -m bench.rules [--sizes 1000,100000,1000000] [--json]`.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import sys
import time
from collections.abc import Sequence

from dpi.lists import parse_list_text
from dpi.match import DomainMatcher, Pattern, form_regex

__all__ = ["bench_rules", "format_table", "generate_list", "main"]

# G-2's shares of the GFW blocklist; the 0.7 % G-2 leaves unexplained go to subdomains-only.
FORM_SHARES: tuple[tuple[str, float], ...] = (
    ("subdomains", 0.85),
    ("exact", 0.09),
    ("prefix-subdomains", 0.04),
    ("suffix", 0.01),
    ("substring", 0.003),
    ("subdomains-only", 0.007),
)
_SYLLABLES = ("ka", "zo", "mi", "tor", "net", "go", "lu", "an", "shi", "web", "bo", "ya", "ru", "qin", "da", "xi",
              "pe", "fa", "lo", "tu", "vid", "co", "ne", "sa", "hu", "li", "ma", "pro", "ex", "dy", "fe", "ri",
              "jo", "ba", "cu", "zen", "mo", "wi", "ta", "ke")
_TLDS = (("com", 45), ("net", 8), ("org", 7), ("cn", 5), ("ru", 5), ("io", 3), ("info", 3), ("tw", 3), ("hk", 2),
         ("jp", 2), ("de", 2), ("co.uk", 2), ("xyz", 2), ("me", 2), ("top", 2), ("com.hk", 1), ("fr", 1),
         ("app", 1), ("dev", 1), ("tv", 1))
_SUBS = ("www", "m", "api", "cdn", "img", "mail", "static", "news", "video", "login")
_LIST_SYNTAX = {"subdomains": "{}", "exact": "={}", "prefix-subdomains": "{}*", "suffix": "*{}",
                "substring": "*{}*", "subdomains-only": ".{}"}


class _Names:
    """Random, pronounceable, mostly unique names (a seeded generator: the same list every run)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        tlds, weights = zip(*_TLDS)
        self._tlds = rng.choices(tlds, weights=weights, k=4096)

    def label(self, low: int = 3, high: int = 5) -> str:
        rng = self.rng
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(low, high))) + (
            str(rng.randint(0, 99)) if rng.random() < 0.15 else "")

    def domain(self) -> str:
        return f"{self.label()}.{self.rng.choice(self._tlds)}"


def generate_list(size: int, seed: int = 1) -> tuple[str, list[tuple[str, str]]]:
    """`size` list lines in `plain` syntax, and (form, keyword) for each, in list order."""
    rng = random.Random(seed)
    names = _Names(rng)
    forms = [form for form, _ in FORM_SHARES]
    shares = [share for _, share in FORM_SHARES]
    entries: list[tuple[str, str]] = []
    for form in rng.choices(forms, weights=shares, k=size):
        if form == "exact":
            keyword = f"{rng.choice(_SUBS)}.{names.domain()}" if rng.random() < 0.5 else names.domain()
        elif form == "prefix-subdomains":
            keyword = names.domain().rsplit(".", 1)[0] + "."  # `google.*`-style: any TLD
        elif form == "suffix":
            keyword = names.domain()
        elif form == "substring":
            keyword = names.label(4, 5)
        else:
            keyword = names.domain()
        entries.append((form, keyword))
    text = "\n".join(_LIST_SYNTAX[form].format(keyword) for form, keyword in entries)
    return text + "\n", entries


def _hit_name(form: str, keyword: str, rng: random.Random) -> str:
    """A name that the pattern (form, keyword) matches."""
    if form == "exact":
        return keyword
    if form == "subdomains":
        return keyword if rng.random() < 0.3 else f"{rng.choice(_SUBS)}.{keyword}"
    if form == "subdomains-only":
        return f"{rng.choice(_SUBS)}.{keyword}"
    if form == "prefix-subdomains":
        return f"{rng.choice(_SUBS)}.{keyword}{rng.choice(('com', 'com.hk', 'co.jp'))}"
    if form == "suffix":
        return f"x{keyword}"
    return f"www.a{keyword}b.com"  # substring


def _lookup_names(entries: list[tuple[str, str]], count: int, seed: int) -> list[str]:
    rng = random.Random(seed + 7)
    fresh = _Names(random.Random(seed + 13))
    names: list[str] = []
    for i in range(count):
        if i % 2 == 0:
            names.append(_hit_name(*rng.choice(entries), rng))
        else:
            names.append(f"{rng.choice(_SUBS)}.{fresh.domain()}")
    return names


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _baseline(patterns: list[Pattern], names: list[str], baseline_max: int, seed: int) -> dict:
    """Naive loop over compiled regexes; measured, or extrapolated from a subset (labelled)."""
    total = len(patterns)
    subset = patterns if total <= baseline_max else random.Random(seed + 3).sample(patterns, baseline_max)
    compiled = [re.compile(form_regex(p)) for p in subset]
    evals = hits = 0
    start = time.perf_counter()
    for name in names:
        for regex in compiled:
            evals += 1
            if regex.search(name) is not None:
                hits += 1
                break
    elapsed = time.perf_counter() - start
    if total <= baseline_max:
        return {"baseline": "measured", "baseline_lookups_per_s": len(names) / elapsed if elapsed else 0.0,
                "baseline_patterns": total}
    per_eval = elapsed / evals
    return {"baseline": f"extrapolated from {len(subset)} regexes", "baseline_per_eval_s": per_eval,
            "baseline_patterns": len(subset), "_per_eval": per_eval}


def bench_rules(sizes: Sequence[int] = (1_000, 100_000, 1_000_000), *, lookups: int = 20_000,
                baseline_lookups: int = 1_000, baseline_max: int = 2_000, seed: int = 1) -> list[dict]:
    """One row per list size: load and build time, memory, and lookups/s of the matcher and of the baseline."""
    rows: list[dict] = []
    for size in sizes:
        text, entries = generate_list(size, seed)
        gc.collect()
        rss0 = _rss_bytes()
        start = time.perf_counter()
        loaded = parse_list_text(text, "plain", source="synthetic")
        load_s = time.perf_counter() - start
        del text
        gc.collect()
        rss1 = _rss_bytes()
        start = time.perf_counter()
        matcher = DomainMatcher(loaded.patterns)
        build_s = time.perf_counter() - start
        gc.collect()
        rss2 = _rss_bytes()

        names = _lookup_names(entries, lookups, seed)
        match = matcher.match
        start = time.perf_counter()
        matched = sum(1 for name in names if match(name) is not None)
        elapsed = time.perf_counter() - start
        rate = lookups / elapsed if elapsed else 0.0

        base_names = names[:baseline_lookups]
        base = _baseline(loaded.patterns, base_names, baseline_max, seed)
        per_eval = base.pop("_per_eval", None)
        if per_eval is not None:
            # A miss tests all N regexes, a hit N/2 on average; hits counted with the matcher (same answers).
            base_hits = sum(1 for name in base_names if match(name) is not None)
            evals = (len(base_names) - base_hits) * size + base_hits * (size + 1) / 2
            base["baseline_lookups_per_s"] = len(base_names) / (evals * per_eval)
        row = {
            "bench": "rules",
            "patterns": size,
            "load_s": round(load_s, 3),
            "build_s": round(build_s, 3),
            "patterns_mb": round((rss1 - rss0) / 2**20, 1),
            "matcher_mb": round((rss2 - rss1) / 2**20, 1),
            "lookups": lookups,
            "hit_fraction": round(matched / lookups, 3),
            "lookups_per_s": round(rate),
            **base,
        }
        row["baseline_lookups_per_s"] = round(row["baseline_lookups_per_s"], 2)
        row["speedup"] = round(rate / row["baseline_lookups_per_s"], 1) if row["baseline_lookups_per_s"] else None
        rows.append(row)
        del matcher, loaded, entries, names
        gc.collect()
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of `bench_rules` rows."""
    header = ("patterns", "load s", "build s", "patterns MB", "matcher MB", "lookups/s", "baseline/s", "speedup",
              "baseline")
    body = [(f"{r['patterns']:,}", f"{r['load_s']:.2f}", f"{r['build_s']:.2f}", f"{r['patterns_mb']:.1f}",
             f"{r['matcher_mb']:.1f}", f"{r['lookups_per_s']:,}", f"{r['baseline_lookups_per_s']:,.2f}",
             f"{r['speedup']:,}x" if r["speedup"] is not None else "-", r["baseline"]) for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in body]
    lines.append("memory: RSS growth while loading the list (Pattern objects) and while building the matcher")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rules", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="comma-separated list sizes")
    parser.add_argument("--lookups", type=int, default=20_000, help="names looked up with the matcher")
    parser.add_argument("--baseline-lookups", type=int, default=1_000, help="names looked up with the baseline")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: not a list of integers: {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.lookups < 1 or args.baseline_lookups < 1:
        parser.error("sizes and lookup counts must be positive")
    rows = bench_rules(sizes, lookups=args.lookups, baseline_lookups=args.baseline_lookups, seed=args.seed)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
