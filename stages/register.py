"""DVC stage `register` (after evaluate), plus the commands a person uses on the registry.

    python -m stages.register                        register train's run, run the gate,
                                                     write reports/register.json
    python -m stages.register promote --version N [--reason TEXT]
    python -m stages.register rollback [--reason TEXT]
    python -m stages.register history                every recorded move of `champion`

The registry is MLflow's: params.yaml's mlflow.tracking_uri, or $MLFLOW_TRACKING_URI (a server).
promote/rollback change the registry only (not reports/register.json, which is the stage's
output). Problems are reported as one line on stderr, exit status 1. See imgclf/registry/.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from imgclf.config import PROJECT_ROOT, Paths, load_params
from imgclf.registry import commands
from imgclf.registry.client import RegistryError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stages.register",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help=argparse.SUPPRESS)
    subcommands = parser.add_subparsers(dest="command")
    promote = subcommands.add_parser("promote", help="point `champion` at a version")
    promote.add_argument("--version", required=True, type=int)
    promote.add_argument("--reason", default="")
    back = subcommands.add_parser("rollback", help="point `champion` back at the previous champion")
    back.add_argument("--reason", default="")
    subcommands.add_parser("history", help="print the promotion history (JSON lines)")
    return parser


def run(args: argparse.Namespace) -> None:
    paths = Paths(args.root)
    params = load_params(paths.root / "params.yaml")
    name = params.register.model_name
    if args.command == "promote":
        out = commands.run_promote(paths, params, args.version, args.reason)
        if out["event"] is None:
            print(f"register: {name} v{out['version']} is the champion already")
        else:
            note = f" ({out['note']})" if out["note"] else ""
            previous = f"v{out['previous']}" if out["previous"] else "none"
            print(f"register: {name} champion {previous} -> v{out['version']}{note}")
    elif args.command == "rollback":
        out = commands.run_rollback(paths, params, args.reason)
        print(f"register: {name} champion rolled back v{out['previous']} -> v{out['version']}")
    elif args.command == "history":
        for event in commands.run_history(paths, params):
            print(json.dumps(event, sort_keys=True))
    else:
        report = commands.run_register(paths, params)
        print(
            f"register: {name} v{report['version']} [{', '.join(report['aliases'])}] "
            f"{report['decision']}: {report['reason']} -> {paths.reports / 'register.json'}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (RegistryError, FileNotFoundError) as exc:
        print(f"register: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
