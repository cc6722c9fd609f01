"""DVC stage `download`: download.source -> artifacts/download/{images/,manifest.tsv,
quarantine.tsv}, reports/download.json."""

from __future__ import annotations

import sys

from imgclf.config import Paths, load_params
from imgclf.data.ingest import run_download
from imgclf.data.labels import ClassListError
from imgclf.data.sources import SourceError


def main() -> int:
    params = load_params()
    try:
        report = run_download(Paths(), params.download)
    except (SourceError, ClassListError) as exc:
        # A user-fixable problem (offline, credentials, checksum, classes): one line, no traceback.
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
