"""The download stage (`run_download`): fetch `download.source` (`imgclf.data.sources`), label
every file, standardise it (`imgclf.data.standardise`) into `images/<label>/<name>.jpg`, and
write the manifest, the quarantine list and the report.

Every file is decoded once, in worker processes. A file that cannot become a clean RGB JPEG is
quarantined with its reason; the stage never crashes on a file. A baseline RGB JPEG without
rotation is copied byte-for-byte, anything else is re-encoded, and the manifest's `converted`
column says why.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from imgclf.config import DownloadParams, Paths, resolve_workers
from imgclf.data.labels import infer_label, resolve_classes
from imgclf.data.listing import list_files
from imgclf.data.sources import ArchiveLimits, open_source
from imgclf.data.standardise import ImageRejected, Limits, Reason, standardise
from imgclf.io import atomic_dir, write_json, write_tsv

MANIFEST_COLUMNS = ("path", "label", "sha256", "width", "height", "bytes", "source", "converted")
QUARANTINE_COLUMNS = ("source", "reason", "detail")
UNREADABLE = "unreadable"  # the file itself cannot be read (a dangling link, permissions)
TOO_LARGE = "too_large"  # more bytes than download.max_image_bytes
UNLABELLED = "unlabelled"  # no class in its path
# Every reason the download's limits can give (the report lists each, zeros included).
QUARANTINE_REASONS = (
    Reason.EMPTY,
    Reason.TRUNCATED,
    Reason.NOT_AN_IMAGE,
    Reason.CORRUPT,
    UNREADABLE,
    TOO_LARGE,
    Reason.TOO_MANY_PIXELS,
    Reason.TOO_SMALL,
    UNLABELLED,
    Reason.ANIMATED,
)


# --------------------------------------------------------------------------------------------
# Output names
# --------------------------------------------------------------------------------------------


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
    return ImageResult(reason=str(reason), detail=" ".join(str(detail).split())[:300])


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """At most `max_bytes` + 1 bytes of `path`: one more than the cap says it is over, without
    reading a huge file (or a device) whole."""
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)


def ingest_file(
    src: Path, dest: Path, *, limits: Limits, jpeg_quality: int, max_bytes: int
) -> ImageResult:
    """Standardise `src` (at most `max_bytes`) into a clean RGB JPEG at `dest`, or say why not.
    Never raises for a bad file."""
    try:
        data = read_bounded(Path(src), max_bytes)
    except OSError as exc:
        return _reject(UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}")
    result, clean = ingest_bytes(
        data, limits=limits, jpeg_quality=jpeg_quality, max_bytes=max_bytes
    )
    if result.kept:
        dest.write_bytes(clean)
    return result


def ingest_bytes(
    data: bytes, *, limits: Limits, jpeg_quality: int, max_bytes: int
) -> tuple[ImageResult, bytes]:
    """`ingest_file` on bytes read by `read_bounded`: the result, and the clean JPEG (empty when
    quarantined). The ray engine runs it on a worker (imgclf.data.cluster_download)."""
    if len(data) > max_bytes:
        return _reject(TOO_LARGE, f"over download.max_image_bytes ({max_bytes} bytes)"), b""
    try:
        clean = standardise(data, limits, jpeg_quality=jpeg_quality)
    except ImageRejected as exc:
        return _reject(exc.reason, exc.detail), b""
    result = ImageResult(
        width=clean.width,
        height=clean.height,
        bytes=len(clean.data),
        sha256=hashlib.sha256(clean.data).hexdigest(),
        converted=clean.changes,
    )
    return result, clean.data


def _process_task(task: tuple[str, str], **options: Any) -> ImageResult:
    """Pool entry point: (source file, destination file) -> result."""
    src, dest = task
    return ingest_file(Path(src), Path(dest), **options)


def _start_method() -> str:
    """fork is fastest, but forking a process that runs threads (a test's HTTP server, a tqdm
    monitor) can deadlock the child: use forkserver then."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class _Decoder:
    """Runs `ingest_file` over batches, in worker processes when more than one, with one
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
            "quarantined": {str(r): self.quarantined[r] for r in QUARANTINE_REASONS},
            "quarantined_total": sum(self.quarantined.values()),
            "converted": dict(sorted(self.converted.items())),
            "converted_files": self.converted_files,
            "not_sampled": self.not_sampled,
            "seconds": round(seconds, 2),
        }


def run_download(paths: Paths, params: DownloadParams, *, progress: bool = True) -> dict[str, Any]:
    """Fetch `params.source`, build artifacts/download from it (`build_dataset`) and write
    reports/download.json (its `classes`: the resolved class list); return the report. A source
    that cannot be fetched raises `SourceError`, a class list that cannot label it
    `ClassListError`, each with one line that says what to do, and leaves no output."""
    started = time.monotonic()
    with open_source(
        params.source,
        root=paths.root,
        cache_dir=paths.resolve(params.cache_dir),
        sha256=params.sha256,
        s3_endpoint_url=params.s3_endpoint_url,
        limits=ArchiveLimits.of(params),
        progress=progress,
    ) as source_dir:
        summary = build_dataset(
            source_dir,
            paths,
            classes=params.classes,
            max_per_class=params.max_per_class,
            seed=params.seed,
            jpeg_quality=params.jpeg_quality,
            max_image_bytes=params.max_image_bytes,
            max_pixels=params.max_pixels,
            min_side=params.min_side,
            workers=params.workers,
            engine=params.engine,
            ray_address=params.ray_address,
            progress=progress,
        )
    report = summary.report(params.source, time.monotonic() - started)
    write_json(paths.download_report, report)
    return report


def build_dataset(
    source_dir: Path,
    paths: Paths,
    *,
    classes: Sequence[str] | str,
    max_per_class: int | None = None,
    seed: int = 42,
    jpeg_quality: int = 95,
    max_pixels: int = 40_000_000,
    max_image_bytes: int = 50_000_000,
    min_side: int = 32,
    workers: int = 0,
    engine: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
) -> DownloadSummary:
    """Label, validate and standardise every file under `source_dir` into `paths.download_dir`
    (images/, manifest.tsv, quarantine.tsv), all or nothing. `classes` is a list of names or
    `auto` (the source's class folders: `imgclf.data.labels.resolve_classes`); the summary holds
    the resolved list.

    With `max_per_class`, each class's files are shuffled (sorted first, seeded by `seed` and the
    class name) and decoded in that order until `max_per_class` are kept, so a quick run does not
    decode the whole source and never depends on file-system order. `engine` "ray" decodes on
    the Ray cluster at `ray_address` (imgclf.data.cluster_download) instead of `workers`
    processes here: the same output.
    """
    files, _ = list_files(source_dir)
    classes = resolve_classes(classes, files)
    summary = DownloadSummary(classes=classes, files=len(files))
    labels = {rel: infer_label(rel, classes) for rel in files}
    quarantine = [
        {
            "source": rel,
            "reason": UNLABELLED,
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
    options = {
        "limits": Limits(max_pixels, min_side),
        "jpeg_quality": jpeg_quality,
        "max_bytes": max_image_bytes,
    }

    if engine == "ray":
        from imgclf.data.cluster_download import RayDecoder

        decoder = RayDecoder(ray_address, progress, **options)
    else:
        decoder = _Decoder(workers, progress, **options)
    with atomic_dir(paths.download_dir) as scratch, decoder as dec:
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
