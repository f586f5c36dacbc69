"""Fuzzing every parser the live censor feeds attacker bytes to (issue 7), short version; `bench/fuzz.py` runs long.

Each target of `bench.fuzz` (IP/TCP/UDP headers, the whole censor over packet sequences with every bundled
profile, TLS, HTTP, DNS, QUIC Initial decryption) is driven by hypothesis from the seed corpus in
tests/corpus/<target>/ (real first flights: Python's ssl, openssl, curl, dnslib, aioquic; packets around them)
with mutations, under a per-input time budget and an allocation budget. Every kept regression input in
tests/corpus/regressions/<target>/ is replayed. The budgets themselves are tested: they must be able to fail.
"""
from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import (CENSOR_PROFILES, TARGETS, Budget, Hang, corpus, join_packets, mutate, regressions, run_one,
                        split_packets)

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def mutated(target: str) -> st.SearchStrategy[bytes]:
    """A seed of the target with a few mutations (bench.fuzz.mutate), or raw bytes."""
    seeds = corpus(target)
    assert seeds, f"no seed corpus for {target}: run `python -m bench.fuzz seed`"
    return st.one_of(
        st.tuples(st.sampled_from(seeds), st.integers(0, 2**32 - 1), st.integers(1, 8)).map(
            lambda t: mutate(t[0], random.Random(t[1]), t[2])),
        st.binary(max_size=1500))


def test_every_target_has_a_seed_corpus_from_real_stacks() -> None:
    for target in TARGETS:
        assert len(corpus(target)) >= 3, target
    tls = corpus("tls")
    assert all(s[:1] == b"\x16" for s in tls)  # records of real ClientHellos
    assert any(s[0] & 0xC0 == 0xC0 and len(s) >= 1200 for s in corpus("quic"))  # padded Initials (aioquic)


@pytest.mark.parametrize("target", ["packet", "tls", "http", "dns"])
@FUZZ
@given(data=st.data())
def test_extractors_return_a_status_within_budget(target: str, data: st.DataObject) -> None:
    run_one(target, data.draw(mutated(target)))


@SLOW
@given(mutated("quic"))
def test_quic_initial_decryption_never_raises_hangs_or_grows_GQ_3(datagram: bytes) -> None:
    run_one("quic", datagram)


@st.composite
def packet_sequences(draw: st.DrawFn) -> bytes:
    """A bundled profile and a sequence of real packets (mutated), some repeated or reordered."""
    pool = corpus("packet")
    index = draw(st.integers(0, len(CENSOR_PROFILES) - 1))
    seq = draw(st.lists(st.tuples(st.sampled_from(pool), st.integers(0, 2**32 - 1), st.integers(0, 4)),
                        min_size=1, max_size=24))
    packets = [p if n == 0 else mutate(p, random.Random(r), n) for p, r, n in seq]
    return join_packets(index, packets)


@SLOW
@given(st.one_of(packet_sequences(), mutated("censor")))
def test_censor_over_packet_sequences_keeps_decisions_and_memory_bounded(data: bytes) -> None:
    run_one("censor", data)


@pytest.mark.parametrize("target, path", list(regressions()), ids=lambda v: getattr(v, "name", v))
def test_kept_regression_inputs_pass(target: str, path) -> None:  # type: ignore[no-untyped-def]
    run_one(target, path.read_bytes())


def test_regression_corpus_covers_every_parser() -> None:
    assert {t for t, _ in regressions()} >= {"packet", "censor", "tls", "dns", "quic"}


def test_the_budgets_can_fail() -> None:
    with pytest.raises(Hang):
        with Budget(seconds=0.2, trace=False):
            time.sleep(2)
    with pytest.raises(AssertionError, match="allocated"):
        with Budget(alloc=1 << 20):
            blob = [bytes(4096) for _ in range(1024)]
            assert blob


def test_censor_input_format_round_trips() -> None:
    pkts = [b"\x45" + bytes(19), b"", b"\x60" * 40]
    assert split_packets(join_packets(3, pkts)) == (3, pkts)
    assert split_packets(b"") == (0, [])
