"""Labels, validation and standardisation of downloaded images, and the download stage's outputs.

Every file is decoded once with Pillow in worker processes. A file that cannot become a clean RGB
JPEG is quarantined with a reason; the stage never crashes on a file. Kept images are written as
`images/<label>/<name>.jpg`: a baseline RGB JPEG without rotation is copied byte-for-byte,
anything else is re-encoded, and the manifest's `converted` column says why.

Multi-frame images (animated GIF/PNG/WebP, multi-page TIFF) are quarantined as `animated` rather
than reduced to their first frame: a first frame is often blank or a title card, and the label
may describe the motion. MPO files (phone JPEGs with an embedded preview) are not animations:
their primary image is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import random
import re
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from imgclf.config import Paths, resolve_workers
from imgclf.io import atomic_dir, write_tsv

MANIFEST_COLUMNS = ("path", "label", "sha256", "width", "height", "bytes", "source", "converted")
QUARANTINE_COLUMNS = ("source", "reason", "detail")
QUARANTINE_REASONS = (
    "empty",
    "truncated",
    "not_an_image",
    "corrupt",
    "unreadable",
    "too_large",
    "too_small",
    "unlabelled",
    "animated",
)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
HIGH_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_SKIPPED_DIRS = {"__MACOSX"}  # macOS resource forks inside zips: metadata, never images


# --------------------------------------------------------------------------------------------
# Labels and names
# --------------------------------------------------------------------------------------------


def _class_lookup(classes: Sequence[str]) -> dict[str, str]:
    """Lower-case spelling -> class; exact names win over singular/plural variants."""
    lookup = {c.lower(): c for c in classes}
    for c in classes:
        low = c.lower()
        variants = {low + "s", low + "es"}
        if low.endswith("s"):
            variants.add(low[:-1])
        if low.endswith("es"):
            variants.add(low[:-2])
        if low.endswith("y"):
            variants.add(low[:-1] + "ies")
        if low.endswith("ies"):
            variants.add(low[:-3] + "y")
        for variant in sorted(variants):
            lookup.setdefault(variant, c)
    return lookup


def infer_label(relpath: str | PurePosixPath, classes: Sequence[str]) -> str | None:
    """The class of a file from its path inside the source, or None.

    Kaggle-style names first (`cat.123.jpg` -> cat), then the nearest parent folder whose name is
    a class, case-insensitive, singular or plural (`PetImages/Dog/1.jpg`, `train/cats/x.png`).
    """
    parts = PurePosixPath(relpath).parts
    if not parts:
        return None
    lookup = _class_lookup(classes)
    name_parts = parts[-1].split(".")
    if len(name_parts) >= 3 and name_parts[0].lower() in lookup:
        return lookup[name_parts[0].lower()]
    for folder in reversed(parts[:-1]):
        if folder.lower() in lookup:
            return lookup[folder.lower()]
    return None


def _safe_stem(relpath: str) -> str:
    stem = PurePosixPath(relpath).name
    stem = stem.rsplit(".", 1)[0] if "." in stem.strip(".") else stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:100] or "image"


def output_names(labelled: Mapping[str, str]) -> dict[str, str]:
    """Source path -> output file name (`<stem>.jpg`) unique within its label folder.

    Names that would collide (`train/cats/1.jpg` and `val/cats/1.png`, or names differing only in
    case) all get a hash of their source path, so the result never depends on file order.
    """
    base = {rel: _safe_stem(rel) for rel in labelled}
    groups = Counter((labelled[rel], stem.lower()) for rel, stem in base.items())
    names = {}
    for rel, stem in base.items():
        if groups[(labelled[rel], stem.lower())] > 1:
            stem = f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:10]}"
        names[rel] = f"{stem}.jpg"
    taken = Counter((labelled[rel], name.lower()) for rel, name in names.items())
    if max(taken.values(), default=1) > 1:  # a file literally named like a hashed one
        names = {rel: f"{base[rel]}-{hashlib.sha1(rel.encode()).hexdigest()}.jpg" for rel in base}
    return names


def list_files(folder: Path) -> list[str]:
    """Every file below `folder` as a sorted relative POSIX path (symlinked files included,
    symlinked folders not followed, so the walk is finite)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_file() or path.is_symlink():  # FIFOs and devices would block a read
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageResult:
    """What happened to one file: kept (with the written file's facts) or quarantined."""

    reason: str = ""  # empty when kept
    detail: str = ""
    width: int = 0
    height: int = 0
    bytes: int = 0
    sha256: str = ""
    converted: tuple[str, ...] = ()

    @property
    def kept(self) -> bool:
        return not self.reason


def _reject(reason: str, detail: object) -> ImageResult:
    return ImageResult(reason=reason, detail=" ".join(str(detail).split())[:300])


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Tie Pillow's decompression-bomb guard to `max_pixels` and silence its warnings (e.g.
    "Corrupt EXIF data") for one file. Pillow then refuses to even open an image over
    2 x max_pixels; the caller checks the header size against max_pixels itself."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def standardise_image(
    src: Path, dest: Path, *, max_pixels: int, min_side: int, jpeg_quality: int
) -> ImageResult:
    """Decode `src` fully once; write a clean RGB JPEG to `dest` or say why not. Never raises
    for a bad file."""
    try:
        data = Path(src).read_bytes()
    except OSError as exc:
        return _reject("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}")
    if not data:
        return _reject("empty", "0 bytes")
    with pixel_limit(max_pixels):
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            return _reject("too_large", f"over max_pixels {max_pixels}: {exc}")
        except UnidentifiedImageError:
            return _reject("not_an_image", f"unknown format, starts with {data[:12]!r}")
        except Exception as exc:  # Pillow raises many kinds on garbage headers
            return _reject("corrupt", f"{type(exc).__name__}: {exc}")
        width, height = image.size
        # Check the header before decoding anything: a bomb is never decoded.
        if width * height > max_pixels:
            return _reject("too_large", f"{width}x{height} > max_pixels {max_pixels}")
        if getattr(image, "is_animated", False) and image.format != "MPO":
            return _reject("animated", f"{image.format} with {image.n_frames} frames")
        if min(width, height) < min_side:
            return _reject("too_small", f"{width}x{height} < min_side {min_side}")
        try:
            image.load()
            encoded, converted = _standardise(image, jpeg_quality)
        except Image.DecompressionBombError as exc:  # a frame larger than the header said
            return _reject("too_large", f"over max_pixels {max_pixels}: {exc}")
        except OSError as exc:
            reason = "truncated" if "truncated" in str(exc) else "corrupt"
            return _reject(reason, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # decoder errors come as SyntaxError, ValueError, ...
            return _reject("corrupt", f"{type(exc).__name__}: {exc}")
    out = data if encoded is None else encoded
    dest.write_bytes(out)
    final_w, final_h = (width, height) if encoded is None else Image.open(io.BytesIO(out)).size
    return ImageResult(
        width=final_w,
        height=final_h,
        bytes=len(out),
        sha256=hashlib.sha256(out).hexdigest(),
        converted=tuple(converted),
    )


def exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)  # EXIF Orientation
    except Exception:  # unreadable EXIF: treat as upright rather than reject the pixels
        return 1
    return value if value in range(2, 9) else 1


def _standardise(image: Image.Image, quality: int) -> tuple[bytes | None, list[str]]:
    """(JPEG bytes, reasons), or (None, []) when the original bytes are already right."""
    fmt = image.format or "unknown"
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    rotated = exif_orientation(image) != 1
    if fmt == "JPEG" and image.mode == "RGB" and not progressive and not rotated:
        return None, []
    reasons = [] if fmt == "JPEG" else [fmt.lower()]
    if progressive:
        reasons.append("progressive")
    icc = image.info.get("icc_profile")
    keep_icc = isinstance(icc, bytes) and icc[16:20] == b"RGB "  # a CMYK/gray profile lies on RGB
    if rotated:
        image = ImageOps.exif_transpose(image)
        reasons.append("exif_rotated")
    image, mode_reasons = to_rgb(image)
    reasons += mode_reasons
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, icc_profile=icc if keep_icc else None)
    return buffer.getvalue(), reasons


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any Pillow mode -> 8-bit RGB, alpha flattened on white."""
    reasons = []
    if image.mode == "P":
        reasons.append("palette")
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in HIGH_BIT_MODES:
        reasons.append("16bit")
        # convert("L") would clip 16-bit values at 255 instead of scaling them.
        wide = np.asarray(image).astype(np.int64)
        image = Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))
    elif image.mode == "F":
        reasons.append("float")
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    elif image.mode == "1":
        reasons.append("bilevel")
        image = image.convert("L")
    if image.mode in ("L", "LA", "La"):
        reasons.append("grayscale")
    elif image.mode not in ("RGB", "RGBA", "RGBa"):
        reasons.append(image.mode.lower())  # cmyk, ycbcr, lab, hsv
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        reasons.append("alpha_flattened")
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat, reasons
    return image.convert("RGB"), reasons


def _process_task(task: tuple[str, str], **options: Any) -> ImageResult:
    """Pool entry point: (source file, destination file) -> result."""
    src, dest = task
    return standardise_image(Path(src), Path(dest), **options)


def _start_method() -> str:
    """fork is fastest, but forking a process that runs threads (a test's HTTP server, a tqdm
    monitor) can deadlock the child: use forkserver then."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class _Decoder:
    """Runs `standardise_image` over batches, in worker processes when more than one, with one
    progress bar for the whole stage."""

    def __init__(self, workers: int, progress: bool, **options: Any) -> None:
        self.workers = resolve_workers(workers)
        self.function = partial(_process_task, **options)
        self.progress = progress
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Decoder:
        if self.workers > 1:
            # An executor, not multiprocessing.Pool: if a worker dies (a decoder crash), Pool
            # waits forever for its task; the executor raises BrokenProcessPool.
            context = multiprocessing.get_context(_start_method())
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
            self.pool.submit(int).result()  # start the workers now, before tqdm starts a thread
        self.bar = tqdm(total=0, desc="decode", unit="img", disable=not self.progress, leave=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.bar.close()

    def run(self, tasks: list[tuple[str, str]]) -> list[ImageResult]:
        self.bar.total += len(tasks)
        self.bar.refresh()
        if self.pool is None or len(tasks) < 2:
            results = map(self.function, tasks)
        else:
            chunksize = max(1, min(32, len(tasks) // (self.workers * 8)))
            results = self.pool.map(self.function, tasks, chunksize=chunksize)
        out = []
        for result in results:
            out.append(result)
            self.bar.update()
        return out


# --------------------------------------------------------------------------------------------
# The whole source
# --------------------------------------------------------------------------------------------


@dataclass
class DownloadSummary:
    """Counts of one build; `report()` turns them into reports/download.json."""

    classes: list[str]
    files: int = 0
    kept: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    not_sampled: int = 0
    converted_files: int = 0

    def report(self, source: str, seconds: float) -> dict[str, Any]:
        """The JSON report: every class and quarantine reason present (zeros included), so
        `dvc metrics diff` always compares the same keys."""
        return {
            "source": source,
            "classes": list(self.classes),
            "read": self.files,
            "kept": {c: self.kept[c] for c in self.classes},
            "kept_total": sum(self.kept.values()),
            "quarantined": {r: self.quarantined[r] for r in QUARANTINE_REASONS},
            "quarantined_total": sum(self.quarantined.values()),
            "converted": dict(sorted(self.converted.items())),
            "converted_files": self.converted_files,
            "not_sampled": self.not_sampled,
            "seconds": round(seconds, 2),
        }


def build_dataset(
    source_dir: Path,
    paths: Paths,
    *,
    classes: Sequence[str],
    max_per_class: int | None = None,
    seed: int = 42,
    jpeg_quality: int = 95,
    max_pixels: int = 40_000_000,
    min_side: int = 32,
    workers: int = 0,
    progress: bool = True,
) -> DownloadSummary:
    """Label, validate and standardise every file under `source_dir` into `paths.download_dir`
    (images/, manifest.tsv, quarantine.tsv), all or nothing.

    With `max_per_class`, each class's files are shuffled (sorted first, seeded by `seed` and the
    class name) and decoded in that order until `max_per_class` are kept, so a quick run does not
    decode the whole source and never depends on file-system order.
    """
    classes = list(classes)
    files = list_files(source_dir)
    summary = DownloadSummary(classes=classes, files=len(files))
    labels = {rel: infer_label(rel, classes) for rel in files}
    quarantine = [
        {
            "source": rel,
            "reason": "unlabelled",
            "detail": f"no class ({', '.join(classes)}) in path",
        }
        for rel, label in labels.items()
        if label is None
    ]
    labelled = {rel: label for rel, label in labels.items() if label is not None}
    names = output_names(labelled)
    queues = {c: sorted(rel for rel, label in labelled.items() if label == c) for c in classes}
    if max_per_class is not None:
        for c, queue in queues.items():
            random.Random(f"{seed}:{c}").shuffle(queue)
    wanted = {c: len(q) if max_per_class is None else max_per_class for c, q in queues.items()}
    images_rel = Path(os.path.relpath(paths.images, paths.root)).as_posix()
    manifest: list[dict[str, Any]] = []
    options = {"max_pixels": max_pixels, "min_side": min_side, "jpeg_quality": jpeg_quality}

    with atomic_dir(paths.download_dir) as scratch, _Decoder(workers, progress, **options) as dec:
        images = scratch / paths.images.relative_to(paths.download_dir)
        for c in classes:
            (images / c).mkdir(parents=True)
        position = dict.fromkeys(classes, 0)
        kept = dict.fromkeys(classes, 0)
        while batch := _next_batch(
            queues, position, kept, wanted, sampling=max_per_class is not None
        ):
            tasks = [(str(source_dir / rel), str(images / c / names[rel])) for c, rel in batch]
            for (c, rel), result, (_, dest) in zip(batch, dec.run(tasks), tasks, strict=True):
                if not result.kept:
                    quarantine.append(
                        {"source": rel, "reason": result.reason, "detail": result.detail}
                    )
                elif kept[c] >= wanted[c]:  # decoded as slack for a sample that is already full
                    Path(dest).unlink()
                    summary.not_sampled += 1
                else:
                    kept[c] += 1
                    manifest.append(_manifest_row(rel, c, f"{images_rel}/{c}/{names[rel]}", result))
        summary.not_sampled += sum(len(queues[c]) - position[c] for c in classes)
        manifest.sort(key=lambda row: row["path"])
        quarantine.sort(key=lambda row: (row["source"], row["reason"]))
        write_tsv(scratch / paths.download_manifest.name, manifest, MANIFEST_COLUMNS)
        write_tsv(scratch / paths.quarantine.name, quarantine, QUARANTINE_COLUMNS)

    summary.kept.update(row["label"] for row in manifest)
    summary.quarantined.update(row["reason"] for row in quarantine)
    for row in manifest:
        summary.converted.update(row["converted"].split(",") if row["converted"] else [])
    summary.converted_files = sum(1 for row in manifest if row["converted"])
    return summary


def _next_batch(
    queues: Mapping[str, list[str]],
    position: dict[str, int],
    kept: Mapping[str, int],
    wanted: Mapping[str, int],
    *,
    sampling: bool,
) -> list[tuple[str, str]]:
    """The next (class, file) pairs to decode; with sampling, what each class still needs plus
    a little slack for files that will be quarantined."""
    batch = []
    for c, queue in queues.items():
        need = wanted[c] - kept[c]
        if need <= 0 or position[c] >= len(queue):
            continue
        take = need + max(4, need // 10) if sampling else need
        chunk = queue[position[c] : position[c] + take]
        position[c] += len(chunk)
        batch.extend((c, rel) for rel in chunk)
    return batch


def _manifest_row(source: str, label: str, path: str, result: ImageResult) -> dict[str, Any]:
    return {
        "path": path,
        "label": label,
        "sha256": result.sha256,
        "width": result.width,
        "height": result.height,
        "bytes": result.bytes,
        "source": source,
        "converted": ",".join(result.converted),
    }
