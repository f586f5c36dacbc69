"""`redweb`: the command line. Exit codes: 0 ok, 1 the job failed, 2 bad usage or bad input.

Each subcommand lives in the module that owns its concern; this file only wires arguments to them and turns
expected errors (bad profile, unreadable capture, missing privileges) into one clear line instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _load_profile(name: str):
    from dpi.profile import ProfileError, load_profile
    try:
        return load_profile(name)
    except ProfileError as exc:
        raise UsageError(f"profile {name!r} has errors:\n{exc}") from None
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def cmd_profiles(args: argparse.Namespace) -> int:
    from dpi.profile import bundled_profiles
    profiles = bundled_profiles()
    if not args.long:
        width = max((len(n) for n, _, _ in profiles), default=4)
        for name, _path, summary in profiles:
            print(f"{name.ljust(width)}  {summary}")
        return EXIT_OK
    from dpi.profile import load_profile
    print("| profile | models | source | year | behaviours | known evasions |")
    print("|---|---|---|---|---|---|")
    for name, _path, summary in profiles:
        p = load_profile(name)
        sources = "; ".join(p.sources) or "-"
        print(f"| `{name}` | {summary} | {sources} | {p.year or '-'} | {', '.join(p.implements) or '-'} | "
              f"{'; '.join(p.evasions) or '-'} |")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from dpi.profile import check_profile
    bad = 0
    for f in args.files:
        if not Path(f).exists():
            print(f"{f}: no such file (fix: give the path of a profile YAML, e.g. rules/gfw.yaml)", file=sys.stderr)
            bad += 1
            continue
        issues = check_profile(f)
        for issue in issues:
            print(issue, file=sys.stderr)
        if issues:
            bad += 1
        else:
            print(f"{f}: ok")
    return EXIT_USAGE if bad else EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    from dpi.classify import classify_file, write_json, write_text
    from dpi.pcap import PcapError
    profile = _load_profile(args.profile)
    if not Path(args.capture).is_file():
        raise UsageError(f"{args.capture}: no such capture (fix: give a pcap file, e.g. from tcpdump -w)")
    try:
        records = classify_file(args.capture, profile, seed=args.seed)
    except PcapError as exc:
        raise UsageError(str(exc)) from None
    (write_json if args.json else write_text)(records, sys.stdout)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    repo = Path(__file__).resolve().parent.parent
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    if args.what == "classify":
        from bench.classify import main as bench_main
    elif args.what == "rules":
        from bench.rules import main as bench_main
    else:
        from bench.inline import main as bench_main
    argv = ["--json"] if args.json else []
    return bench_main(argv + list(args.extra))


def cmd_demo(args: argparse.Namespace) -> int:
    from dpi.demo import main as demo_main
    return demo_main(args)


def _run_module(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def call(args: argparse.Namespace) -> int:
        import importlib
        return getattr(importlib.import_module(module), func)(args)
    return call


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redweb", description="RedWeb: a censorship middlebox emulator "
                                "(Russia's TSPU and China's Great Firewall, as measured).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("profiles", help="list the bundled censor profiles")
    s.add_argument("--long", action="store_true", help="a table: what each models, sources, behaviours, evasions")
    s.set_defaults(func=cmd_profiles)

    s = sub.add_parser("check", help="validate profile files; every error names file:line and the fix")
    s.add_argument("files", nargs="+", metavar="PROFILE.yaml")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("classify", help="offline: replay a capture through a profile, one decision per flow")
    s.add_argument("capture", metavar="CAPTURE.pcap")
    s.add_argument("--profile", required=True, help="bundled profile name or path to a YAML file")
    s.add_argument("--json", action="store_true", help="one JSON object per flow and line")
    s.add_argument("--seed", type=int, default=None, help="seed for probabilistic rules (GF-2)")
    s.set_defaults(func=cmd_classify)

    from dpi.run import add_cleanup_arguments, add_run_arguments
    s = sub.add_parser("run", help="inline censor on NFQUEUE (needs root); Ctrl-C/SIGTERM removes its rules")
    add_run_arguments(s)
    s.set_defaults(func=_run_module("dpi.run", "run_main"))

    s = sub.add_parser("cleanup", help="remove iptables rules left by a killed `redweb run`")
    add_cleanup_arguments(s)
    s.set_defaults(func=_run_module("dpi.run", "cleanup_main"))

    from dpi.probe import add_probe_arguments
    s = sub.add_parser("probe", help="one fetch with one evasion strategy: did it get through the censor?")
    add_probe_arguments(s)
    s.set_defaults(func=_run_module("dpi.probe", "probe_main"))

    from dpi.measure.cli import add_measure_arguments  # stdlib + dpi.lab only at import: cheap
    s = sub.add_parser("measure", help="run workloads through a lab: results as JSON/CSV, plots as PNG (needs root)")
    add_measure_arguments(s)
    s.set_defaults(func=_run_module("dpi.measure.cli", "measure_main"))

    from dpi.lab import add_lab_arguments  # standard library only: cheap to import
    s = sub.add_parser("lab", help="Mininet lab with real services and the censor (needs root)")
    add_lab_arguments(s)
    s.set_defaults(func=_run_module("dpi.lab", "lab_main"))

    s = sub.add_parser("bench", help="benchmarks, each with its baseline measured in the same run")
    s.add_argument("what", choices=["classify", "rules", "inline"])
    s.add_argument("--json", action="store_true")
    s.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", help="show what the default profile does to real traffic")
    s.add_argument("--profile", default="redweb")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"redweb: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
