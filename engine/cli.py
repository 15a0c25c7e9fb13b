"""Command line: `engine <command>`.

Each sub-command lives in a small function; commands whose capability is not
built yet say so and exit non-zero rather than pretend.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_NO_MATCH = 1
EXIT_ERROR = 2
EXIT_NOT_IMPLEMENTED = 3


def _not_implemented(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"engine {name}: not implemented yet", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED

    return run


def _cmd_eval(args: argparse.Namespace) -> int:
    from engine.language.tester import render_json, test_rule

    try:
        if args.event == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.event, "rb") as f:
                data = f.read()
    except OSError as e:
        print(f"engine eval: cannot read event: {e}", file=sys.stderr)
        return EXIT_ERROR
    result = test_rule(args.select, args.where, data)
    if result.error is not None:
        print(result.error, file=sys.stderr)
        return EXIT_ERROR
    if result.event_error is not None:
        print(f"engine eval: {args.event}: {result.event_error}", file=sys.stderr)
        return EXIT_ERROR
    if not result.matched:
        print("no match")
        return EXIT_NO_MATCH
    print(render_json(result.output))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    print("engine demo: the demo arrives with the runtime (forwarding worker); nothing to run yet.")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    """Validate and compile rule files: every problem, one per line, exit 2."""
    from engine.config import ConfigError, load_config

    try:
        config = load_config(args.files)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        count = len(err.issues)
        print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
        return EXIT_ERROR
    active = sum(rule.active for rule in config.rules)
    print(
        f"OK: {len(config.rules)} rules ({active} active), {len(config.actions)} actions, "
        f"{len(config.flowcontrol_policies)} flow control policies, "
        f"{len(config.backlog_policies)} backlog policies, {len(config.sources)} sources"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="IoT data-forwarding engine: evaluates IoTDA-style forwarding rules "
        "on device notifications and delivers the matches.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("eval", help="evaluate one rule on one event (the rule debugger)")
    p.add_argument("--select", default=None, help="SELECT text (default: *)")
    p.add_argument("--where", default=None, help="WHERE text (default: always true)")
    p.add_argument("event", metavar="EVENT.json", help="event file, or - for stdin")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("check", help="validate and compile rule files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("run", help="run the forwarding worker")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_not_implemented("run"))

    p = sub.add_parser("replay", help="replay an NDJSON file through rules")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--rules", required=True, metavar="RULES.yaml")
    p.set_defaults(func=_not_implemented("replay"))

    p = sub.add_parser("demo", help="run the built-in demo (no external service needed)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("export", help="write the stored configuration as a rule file")
    p.set_defaults(func=_not_implemented("export"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)
