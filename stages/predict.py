"""Batch prediction: a folder (searched recursively) or a .zip/.tar archive of images -> a Kaggle
submission CSV `id,label` (label 1 = classes[1]), optionally with `<classes[1]>_probability`.

python -m stages.predict <folder|archive> --out submission.csv [--proba]
                         [--model PATH | models:/NAME@champion | runs:/ID/model] [--batch-size N]

The id is the numeric part of the file name (`123.jpg`, `cat.123.jpg` -> 123; other names keep
their stem); rows are sorted by id, numbers first. Each file is decoded with Pillow first: a
corrupt or non-image file is reported on stderr and skipped, never fatal. Probabilities come from
`imgclf.evaluation.predict_probabilities`, the function evaluate uses.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Files with these suffixes are candidates (and reported if unusable); others are ignored.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".gif",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
)
# What Pillow may call a file that `tf.io.decode_image` (THE preprocessing) can decode.
DECODABLE_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "BMP"}
_SKIPPED_DIRS = {"__MACOSX"}
_NUMERIC_ID = re.compile(r"^(?:.*[._\-\s])?(\d+)$")


def find_images(folder: Path) -> tuple[list[Path], int]:
    """Candidate image files below `folder` (recursive, sorted) and how many other files there
    were."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_file():
                continue
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("._"):
                found.append(path)
            else:
                ignored += 1
    return sorted(found), ignored


def check_image(path: Path) -> str | None:
    """None if THE preprocessing can decode the file, else a one-line reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"unsupported image format {image.format}"
            image.load()  # full decode: truncated or corrupt data fails here
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"cannot decode: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def submission_id(path: Path | str) -> int | str:
    """`123.jpg` / `cat.123.jpg` / `img_123.png` -> 123; any other name -> its stem."""
    stem = Path(path).stem
    match = _NUMERIC_ID.match(stem)
    return int(match.group(1)) if match else stem


def _sort_key(item: tuple[int | str, str]) -> tuple[int, int, str, str]:
    ident, rel = item
    return (0, ident, "", rel) if isinstance(ident, int) else (1, 0, ident, rel)


@contextlib.contextmanager
def _input_folder(source: Path) -> Iterator[Path]:
    """A folder as is; an archive extracted (safely) into a temporary folder."""
    if source.is_dir():
        yield source
        return
    from imgclf.sources import expand_nested_archives, is_archive, safe_extract

    if not (source.is_file() and is_archive(source)):
        raise FileNotFoundError(f"{source} is neither a folder nor a .zip/.tar archive")
    with tempfile.TemporaryDirectory(prefix="imgclf-predict-") as tmp:
        safe_extract(source, Path(tmp))
        expand_nested_archives(Path(tmp))
        yield Path(tmp)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("input", type=Path, help="folder (searched recursively) or archive")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), help="CSV to write")
    parser.add_argument("--proba", action="store_true", help="add a <class>_probability column")
    parser.add_argument(
        "--model",
        default=None,
        help="a .keras file, or an MLflow URI (models:/NAME@champion, runs:/ID/model); "
        "default: artifacts/train/model.keras",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: evaluate.batch_size")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.config import Paths, load_params
    from imgclf.evaluation import load_model, predict_probabilities
    from imgclf.sources import SourceError

    params, paths = load_params(), Paths()
    classes = params.download.classes
    batch_size = args.batch_size or params.evaluate.batch_size
    try:
        with _input_folder(args.input) as folder:
            candidates, ignored = find_images(folder)
            workers = min(8, len(os.sched_getaffinity(0)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                reasons = list(pool.map(check_image, candidates))
            good, skipped = [], 0
            for path, reason in zip(candidates, reasons, strict=True):
                if reason is None:
                    good.append(path)
                else:
                    skipped += 1
                    print(f"skipped {path.relative_to(folder)}: {reason}", file=sys.stderr)
            if not good:
                print(f"predict: no usable images in {args.input}", file=sys.stderr)
                return 1
            model = load_model(args.model or paths.model)
            probabilities = predict_probabilities(model, good, batch_size, desc="predict")
            relative = [p.relative_to(folder).as_posix() for p in good]
    except (SourceError, FileNotFoundError, OSError) as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 1

    rows = sorted(
        (
            (submission_id(rel), rel, float(prob))
            for rel, prob in zip(relative, probabilities, strict=True)
        ),
        key=lambda row: _sort_key(row[:2]),
    )
    duplicates = [i for i, n in Counter(row[0] for row in rows).items() if n > 1]
    if duplicates:
        print(
            f"warning: {len(duplicates)} ids occur more than once (e.g. {duplicates[0]}); "
            "file names should be unique",
            file=sys.stderr,
        )
    columns = ["id", "label"] + ([f"{classes[1]}_probability"] if args.proba else [])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = args.out.with_name(f".{args.out.name}.tmp")
    with open(scratch, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for ident, _, prob in rows:
            label = int(prob >= params.evaluate.threshold)
            writer.writerow([ident, label] + ([format(prob, ".9g")] if args.proba else []))
    os.replace(scratch, args.out)

    positives = sum(prob >= params.evaluate.threshold for _, _, prob in rows)
    print(
        f"predict: {len(rows)} images -> {args.out} ({positives} {classes[1]}, "
        f"{len(rows) - positives} {classes[0]}); skipped {skipped} unreadable, "
        f"ignored {ignored} non-image files"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
