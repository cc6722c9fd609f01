"""DVC stage `register` (after evaluate): register train's run in the model registry, run the
promotion gate, write reports/register.json.

python -m stages.register

The registry is MLflow's: params.yaml's mlflow.tracking_uri, or $MLFLOW_TRACKING_URI (a server).
A problem is reported as one line on stderr, exit status 1. A person moves `champion` with
`imgclf promote|rollback|history`. See imgclf/registry/.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from imgclf.config import PROJECT_ROOT, Paths, load_params
from imgclf.registry import commands
from imgclf.registry.client import RegistryError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.register", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=PROJECT_ROOT,
        help="project folder (its params.yaml, artifacts/ and reports/); default: this checkout",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    paths = Paths(parse_args(argv).root)
    try:
        params = load_params(paths.root / "params.yaml")
        report = commands.run_register(paths, params)
    except (RegistryError, FileNotFoundError) as exc:
        print(f"register: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"register: {params.register.model_name} v{report['version']} "
        f"[{', '.join(report['aliases'])}] {report['decision']}: {report['reason']} "
        f"-> {paths.reports / 'register.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
