"""`redweb measure ...`: arguments and the entry point. Every subcommand starts a lab (root), runs its workload,
writes `KIND.json`, `KIND.csv` and `KIND.png` into --out, and prints the claims it checked.

    redweb measure fetch     --profile P --names N... [--workloads dns,http,quic,https,bulk] [--repeat N]
                             [--strategy S [--strategy-arg K=V]...]
    redweb measure goodput   --profile tspu-2021 --name twitter.com --control example.org --seconds S
    redweb measure residual  --profile gfw --name www.youtube.com [--window S]
    redweb measure fet       --n N [--exempt-each K] [--control M]
    redweb measure matrix    [--profiles P,...] [--cells published|all] [--idle-timeout S]
    redweb measure reproduce --out DIR [--quick] [--only tspu-2021,residual,fet,matrix]

Exit codes: 0 the measurement ran (reproduce: and every claim agrees), 1 it failed (reproduce: or a claim
differs), 2 bad usage, not root, or a bad profile.
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dpi.lab import (
    LAB_NAMES,
    TOPOLOGIES,
    LabError,
    Terminated,
    install_signal_handlers,
    require_root,
)

DEFAULT_OUT = Path("out/measure")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive(text: str) -> float:
    """A number of seconds > 0 (argparse prints the message as a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
    return value


def add_measure_arguments(p: argparse.ArgumentParser) -> None:
    """Wire `redweb measure` into a parser (dpi/cli.py calls this on its `measure` subparser)."""
    sub = p.add_subparsers(dest="measure", metavar="MEASUREMENT")
    sub.required = True

    def common(s: argparse.ArgumentParser, out: str) -> None:
        s.add_argument("--out", type=Path, default=DEFAULT_OUT / out, metavar="DIR",
                       help=f"results directory (default {DEFAULT_OUT / out})")
        s.add_argument("--topo", choices=TOPOLOGIES, default="isp", help="lab topology (default isp)")
        s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    s = sub.add_parser("fetch", help="fetch names with real clients (DNS, HTTP, HTTPS, QUIC, bulk), N times")
    s.add_argument("--profile", default="redweb", help="censor profile, or `none` for no censor (default redweb)")
    s.add_argument("--names", nargs="+", default=["example.org", "twitter.com", "www.youtube.com", "facebook.com"],
                   metavar="NAME", help="lab names to fetch (any DNS names; the lab serves them all)")
    s.add_argument("--workloads", type=_csv, default=None, metavar="W,W",
                   help="of dns,http,quic,https,bulk (default dns,http,quic,https)")
    s.add_argument("--repeat", type=int, default=1, metavar="N", help="rounds over all names (default 1)")
    s.add_argument("--gap", type=float, default=0.0, metavar="S", help="pause between rounds")
    s.add_argument("--strategy", metavar="NAME", help="fetch with `redweb probe --strategy NAME` instead")
    s.add_argument("--strategy-arg", action="append", default=[], metavar="K=V", help="strategy parameter")
    s.add_argument("--seed", type=int, default=None, help="censor seed (probabilistic rules)")
    common(s, "fetch")

    s = sub.add_parser("goodput", help="goodput over time of a throttled and a control download (T21-4)")
    s.add_argument("--profile", default="tspu-2021")
    s.add_argument("--name", default="twitter.com", help="the name expected to be throttled")
    s.add_argument("--control", default="example.org", help="a name on no list, same path")
    s.add_argument("--seconds", type=float, default=30.0, metavar="S")
    s.add_argument("--interval", type=float, default=0.1, metavar="S", help="sampling interval (default 0.1)")
    common(s, "goodput")

    s = sub.add_parser("residual", help="connection outcomes over time around a residual window (G-4)")
    s.add_argument("--profile", default="gfw")
    s.add_argument("--name", default="www.youtube.com", help="a name whose HTTPS fetch triggers the profile")
    s.add_argument("--control", default="example.org", help="innocuous SNI/Host for the probes")
    s.add_argument("--window", type=float, default=None, metavar="S",
                   help="set every residual of the profile to S seconds (default: the profile's own, 180 s for gfw)")
    s.add_argument("--interval", type=float, default=None, metavar="S", help="seconds between probe rounds")
    s.add_argument("--after", type=float, default=None, metavar="S", help="keep probing this long past the window")
    common(s, "residual")

    s = sub.add_parser("fet", help="GF-2 blocked share with its 95 %% CI; exempt payloads (GF-1) never blocked")
    s.add_argument("--n", type=int, default=1000, help="random first payloads to the listed server (default 1000)")
    s.add_argument("--exempt-each", type=int, default=20, metavar="K", help="payloads per exemption kind")
    s.add_argument("--control", type=int, default=None, metavar="M",
                   help="random payloads to an unlisted server (default n/10)")
    s.add_argument("--seed", type=int, default=1, help="payload seed (default 1)")
    s.add_argument("--censor-seed", type=int, default=1, help="the censor's seed for GF-2's draw (default 1)")
    s.add_argument("--concurrency", type=int, default=32)
    s.add_argument("--reply-timeout", type=float, default=2.0, metavar="S",
                   help="no reply within S seconds = blocked (default 2; the lab's RTT is sub-millisecond)")
    common(s, "fet")

    s = sub.add_parser("matrix", help="evasion strategies x profiles, observed next to CENSOR-MODELS.md")
    s.add_argument("--profiles", type=_csv, default=None, metavar="P,P",
                   help="default: every profile with published evasion lines")
    s.add_argument("--cells", choices=("published", "all"), default="published",
                   help="published: the must/must-NOT lines only; all: every strategy against every profile")
    s.add_argument("--timeout", type=float, default=4.0, metavar="S", help="per probe (default 4)")
    s.add_argument("--idle-timeout", type=_positive, default=None, metavar="S",
                   help="run the censors with their idle timeout scaled to S seconds, so the idle-wait cell "
                        "(T21-6) waits S + a margin instead of ~10 minutes (default: as published)")
    common(s, "matrix")

    s = sub.add_parser("reproduce", help="the four reproductions and a summary table (what `make reproduce` runs)")
    s.add_argument("--quick", action="store_true", help="scaled down: 20 s residual window, 200 FET connections, 20 s idle timeout")
    s.add_argument("--only", type=_csv, default=None, metavar="R,R",
                   help="of tspu-2021,residual,fet,matrix (default all)")
    common(s, "reproduce")


def _say(text: str) -> None:
    print(f"redweb measure: {text}", file=sys.stderr, flush=True)


def _report(m: Any, out: Path) -> None:
    from dpi.measure.results import claims_markdown
    if m.claims:
        print(claims_markdown(m.claims))
    print(f"results: {', '.join(str(out / f) for f in m.files)}")


def _finish(m: Any, out: Path, plot: Callable[[Any, Path], Any] | None, claims: Callable[[Any], Any] | None) -> int:
    from dpi.measure import results
    if claims is not None:
        m.claims = claims(m)
    if plot is not None:
        plot(m, out / f"{m.kind}.png")
        m.files.append(f"{m.kind}.png")
    results.write(m, out)
    _report(m, out)
    return 0


def _run(args: argparse.Namespace) -> int:
    from dpi.measure import plots
    progress = not args.no_progress
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    what = args.measure
    if what == "fetch":
        from dpi.measure.workloads import DEFAULT_WORKLOADS, measure_fetch
        if args.repeat < 1:
            raise ValueError("--repeat must be >= 1")
        profile = None if args.profile == "none" else args.profile
        m = measure_fetch(profile, args.names, out, workloads=args.workloads or DEFAULT_WORKLOADS,
                          repeat=args.repeat, gap=args.gap, strategy=args.strategy,
                          strategy_args=args.strategy_arg, topo=args.topo, seed=args.seed, progress=progress,
                          say=_say)
        rc = _finish(m, out, plots.fetch, None)
        for c in m.summary["cells"]:
            counts = ", ".join(f"{k} {v}" for k, v in c["outcomes"].items())
            print(f"{c['name']:<20} {c['workload']:<6} {counts}")
        return rc
    if what == "goodput":
        from dpi.measure.goodput import goodput_claims, measure_goodput
        m = measure_goodput(args.profile, args.name, args.control, out, seconds=args.seconds,
                            interval=args.interval, topo=args.topo, progress=progress, say=_say)
        return _finish(m, out, plots.goodput, goodput_claims)
    if what == "residual":
        from dpi.measure.residual import measure_residual, residual_claims
        m = measure_residual(args.profile, args.name, out, control=args.control, window=args.window,
                             interval=args.interval, after=args.after, topo=args.topo, progress=progress, say=_say)
        return _finish(m, out, plots.residual, residual_claims)
    if what == "fet":
        from dpi.measure.fet import fet_claims, measure_fet
        m = measure_fet(out, n=args.n, exempt_each=args.exempt_each, control=args.control, seed=args.seed,
                        censor_seed=args.censor_seed, concurrency=args.concurrency,
                        reply_timeout=args.reply_timeout, topo=args.topo, progress=progress, say=_say)
        return _finish(m, out, plots.fet, fet_claims)
    if what == "matrix":
        from dpi.measure.matrix import markdown, matrix_claims, measure_matrix
        m = measure_matrix(out, profiles=args.profiles, cells=args.cells, topo=args.topo, timeout=args.timeout,
                           idle_timeout=args.idle_timeout, progress=progress, say=_say)
        print(markdown(m))
        return _finish(m, out, plots.matrix, matrix_claims)
    if what == "reproduce":
        from dpi.measure.reproduce import REPRODUCTIONS, run_reproductions
        only = args.only or list(REPRODUCTIONS)
        unknown = [o for o in only if o not in REPRODUCTIONS]
        if unknown:
            raise ValueError(f"unknown reproduction(s) {', '.join(unknown)}: of {', '.join(REPRODUCTIONS)}")
        s = run_reproductions(out, only=only, quick=args.quick, progress=progress, say=_say)
        print((out / "summary.md").read_text())
        print(f"results: {out}/ (summary.md, summary.json, one directory per reproduction)")
        return 0 if s.claims and all(c.ok for c in s.claims) else 1
    raise ValueError(f"unknown measurement {what!r}")


def measure_main(args: argparse.Namespace) -> int:
    """`redweb measure ...`. Exit codes: 0 ran (reproduce: all claims agree), 1 failed / a claim differs, 2 usage."""
    from dpi.profile import ProfileError
    try:
        require_root()
    except LabError as e:
        print(f"redweb: measure: {e}", file=sys.stderr)
        return 2
    old = install_signal_handlers()  # SIGTERM/SIGHUP unwind through the lab's tear-down like Ctrl-C
    try:
        return _run(args)
    except LabError as e:
        print(f"redweb: measure: {e}", file=sys.stderr)
        return e.code
    except (ValueError, ProfileError, FileNotFoundError) as e:
        print(f"redweb: measure: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated):
        print("\nredweb: measure: interrupted (the lab was torn down)", file=sys.stderr)
        return 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dpi.measure.cli ...` (until `redweb measure` is wired into dpi/cli.py)."""
    p = argparse.ArgumentParser(prog="redweb measure", description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_measure_arguments(p)
    return measure_main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["LAB_NAMES", "add_measure_arguments", "measure_main"]
