"""DVC stage `register` (after evaluate): register train's run in the model registry with the
split's class list (artifacts/split/classes.json: the version's `classes` tag), run the promotion
gate, write reports/register.json.

python -m stages.register

The registry is MLflow's: params.yaml's mlflow.tracking_uri, or $MLFLOW_TRACKING_URI (a server).
A problem is reported as one line on stderr, exit status 1. A person moves `champion` with
`imgclf promote|rollback|history`. See imgclf/registry/.
"""

from __future__ import annotations

import sys

from imgclf.config import Paths, load_params
from imgclf.data.labels import read_classes
from imgclf.registry.client import RegistryError
from imgclf.registry.commands import run_register


def main() -> int:
    params, paths = load_params(), Paths()
    try:
        classes = read_classes(paths.split_classes)
        report = run_register(paths, params.register, classes, params.mlflow)
    except (RegistryError, FileNotFoundError) as exc:
        print(f"register: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"register: {params.register.model_name} v{report['version']} "
        f"[{', '.join(report['aliases'])}] {report['decision']}: {report['reason']} "
        f"-> {paths.register_report}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
