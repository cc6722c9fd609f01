"""Batch prediction over a folder or archive: find images, screen out unusable files, name rows.

The probabilities themselves come from `imgclf.evaluation.report.predict_probabilities`, the
function evaluate uses, so a file gets the same probability in both.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
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


def screen_images(candidates: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split candidates into usable files and (file, reason) for the rest; decodes in threads
    (Pillow releases the GIL while decoding)."""
    workers = min(8, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, candidates))
    usable = [path for path, reason in zip(candidates, reasons, strict=True) if reason is None]
    rejected = [(p, r) for p, r in zip(candidates, reasons, strict=True) if r is not None]
    return usable, rejected


def submission_id(path: Path | str) -> int | str:
    """`123.jpg` / `cat.123.jpg` / `img_123.png` -> 123; any other name -> its stem."""
    stem = Path(path).stem
    match = _NUMERIC_ID.match(stem)
    return int(match.group(1)) if match else stem


def submission_order(item: tuple[int | str, str]) -> tuple[int, int, str, str]:
    """Sort key of (id, relative path): numeric ids first, in numeric order, then names."""
    ident, rel = item
    return (0, ident, "", rel) if isinstance(ident, int) else (1, 0, ident, rel)


@contextlib.contextmanager
def input_folder(source: Path) -> Iterator[Path]:
    """A folder as is; an archive extracted (safely) into a temporary folder."""
    if source.is_dir():
        yield source
        return
    from imgclf.data.sources import expand_nested_archives, is_archive, safe_extract

    if not (source.is_file() and is_archive(source)):
        raise FileNotFoundError(f"{source} is neither a folder nor a .zip/.tar archive")
    with tempfile.TemporaryDirectory(prefix="imgclf-predict-") as tmp:
        safe_extract(source, Path(tmp))
        expand_nested_archives(Path(tmp))
        yield Path(tmp)


def write_submission(
    out: Path,
    rows: Sequence[tuple[int | str, float]],
    threshold: float,
    probability_column: str | None,
) -> None:
    """Write `id,label[,probability]` atomically; label = 1 when probability >= threshold."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.tmp")
    with open(scratch, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "label"] + ([probability_column] if probability_column else []))
        for ident, prob in rows:
            extra = [format(prob, ".9g")] if probability_column else []
            writer.writerow([ident, int(prob >= threshold), *extra])
    os.replace(scratch, out)
