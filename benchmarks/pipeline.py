"""`dvc repro -f` on the shared photos, stage by stage, for two commits of this repo: before and
after a change, on the same machine in the same run, with the test metrics each produced (a
speed-up only counts at the same metrics).

    python -m benchmarks.pipeline --before c34f174 [--after HEAD] [--set train.arch=...]...

Each commit runs in a throwaway clone (this checkout's .venv, `download.source` pointed at the
photos), so the two see the same data and libraries. `--set KEY=VALUE` edits params.yaml in the
`after` clone only, e.g. to run the new code with the old default model. Stage times come from
the moments dvc announces each stage; a stage's time ends where the next one starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"Running stage '([\w-]+)'")


def clone(rev: str, into: Path, photos: Path, overrides: list[str]) -> Path:
    """A clone of `rev` whose params read `photos`, with `overrides` applied."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "-q", rev], check=True)
    (into / ".venv").symlink_to(ROOT / ".venv")
    (into / "data").mkdir(exist_ok=True)
    params_file = into / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    for item in [f"download.source={photos}", *overrides]:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = params
        for name in parents:
            node = node[name]
        node[leaf] = yaml.safe_load(value)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return into


def repro(project: Path) -> tuple[dict[str, float], float]:
    """Seconds per stage and in all of `dvc repro -f`, its output streamed to stderr."""
    env = os.environ | {"PATH": f"{project / '.venv/bin'}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the clone's own sqlite registry
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(
        ["dvc", "repro", "-f"], cwd=project, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as process:  # fmt: skip
        for line in process.stdout:
            sys.stderr.write(line)
            if found := STAGE_LINE.search(line):
                marks.append((found.group(1), time.perf_counter()))
    if process.returncode:
        raise SystemExit(f"dvc repro -f failed in {project}")
    total = time.perf_counter() - start
    ends = [t for _, t in marks[1:]] + [start + total]
    return {name: end - began for (name, began), end in zip(marks, ends, strict=True)}, total


def test_metrics(project: Path) -> str:
    metrics = json.loads((project / "reports/metrics.json").read_text())
    test = metrics.get("test", metrics)
    return f"test accuracy {test['accuracy']:.2%}, log loss {test['log_loss']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="commit of the baseline")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, after only")
    args = parser.parse_args()
    photos = Path(os.environ.get("IMGCLF_SAMPLE_DATA", ROOT.parent / "shared/data/dogs-vs-cats"))

    runs = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as scratch:
        for name, rev, overrides in (("before", args.before, []), ("after", args.after, args.set)):
            project = clone(rev, Path(scratch, name), photos.resolve(), overrides)
            stages, total = repro(project)
            runs[name] = (stages, total, test_metrics(project))

    (before, before_total, before_metrics), (after, after_total, after_metrics) = runs.values()
    print(f"dvc repro -f, {photos}: before {args.before}, after {args.after} {' '.join(args.set)}")
    print(f"  {'stage':<12} {'before s':>9} {'after s':>9} {'speed-up':>9}")
    for stage in dict.fromkeys([*before, *after]):
        old, new = before.get(stage), after.get(stage)
        cells = [f"{t:9.1f}" if t is not None else f"{'-':>9}" for t in (old, new)]
        ratio = f"{old / new:8.2f}x" if old and new else f"{'':>9}"
        print(f"  {stage:<12} {cells[0]} {cells[1]} {ratio}")
    print(
        f"  {'total':<12} {before_total:9.1f} {after_total:9.1f} {before_total / after_total:8.2f}x"
    )
    print(f"  before: {before_metrics}\n  after:  {after_metrics}")


if __name__ == "__main__":
    main()
