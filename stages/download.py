"""Stage `download`: download.source -> artifacts/download/{images/,manifest.tsv,quarantine.tsv}
and reports/download.json.

Run from the repo root: `python -m stages.download` (options only for tests and one-off runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from imgclf import config
from imgclf.data import ingest, sources
from imgclf.io import write_json


def run(params_file: Path = config.PARAMS_FILE, root: Path = config.PROJECT_ROOT) -> dict[str, Any]:
    """Build the download outputs under `root` from the params file; return the report."""
    started = time.monotonic()
    params = config.load_params(params_file).download
    paths = config.Paths(root)
    with sources.open_source(
        params.source,
        root=paths.root,
        cache_dir=paths.resolve(params.cache_dir),
        sha256=params.sha256,
        s3_endpoint_url=params.s3_endpoint_url,
    ) as source_dir:
        summary = ingest.build_dataset(
            source_dir,
            paths,
            classes=params.classes,
            max_per_class=params.max_per_class,
            seed=params.seed,
            jpeg_quality=params.jpeg_quality,
            max_pixels=params.max_pixels,
            min_side=params.min_side,
            workers=params.workers,
        )
    report = summary.report(params.source, time.monotonic() - started)
    write_json(paths.download_report, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE)
    parser.add_argument("--root", type=Path, default=config.PROJECT_ROOT)
    args = parser.parse_args(argv)
    try:
        report = run(args.params, args.root)
    except sources.SourceError as exc:
        # A user-fixable problem (offline, credentials, checksum): one line, no traceback.
        print(f"download: {exc}", file=sys.stderr)
        return 1
    kept = ", ".join(f"{label} {n}" for label, n in report["kept"].items())
    quarantined = ", ".join(f"{r} {n}" for r, n in report["quarantined"].items() if n) or "none"
    print(
        f"download: {report['read']} files read, kept {kept}; quarantined {quarantined}; "
        f"{report['converted_files']} converted; {report['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
