"""The export stage: the trained Keras model converted to the inference engine (`export.engine`)
and checked against Keras on real validation photos.

Evaluate measures the exported engine, batch prediction and the service run it, and the register
stage refuses a version whose check failed, so what was measured is what answers.
"""

from __future__ import annotations

import time
from typing import Any

from imgclf.config import ExportParams, Paths
from imgclf.io import atomic_dir, read_json, write_json
from imgclf.model.dataset import read_split
from imgclf.model.decision import class_probabilities
from imgclf.model.engines import (
    ENGINE_FILES,
    Engine,
    KerasEngine,
    agreement,
    export_engine,
    load_engine,
)
from imgclf.model.inference import load_model
from imgclf.model.preprocess import load_images

CHECK_THRESHOLD = 0.5  # the binary rule's default; a flip at any threshold shows in max_abs_diff


def run_export(paths: Paths, params: ExportParams, classes: list[str]) -> dict[str, Any]:
    """Export artifacts/train/model.keras to artifacts/export/<engine file> and write
    reports/export.json: the engine, its precision, its file, and its agreement with Keras on
    the first `check_images` validation photos (`passed`: within `tolerance` with no label
    changed; None at reduced precision, whose gate is `max_metric_drop`)."""
    started = time.monotonic()
    model = load_model(paths.model)
    photos = read_split(paths.split_manifest("val"), classes, paths.root).files
    with atomic_dir(paths.export_dir) as out:
        path = export_engine(
            model, params.engine, out / ENGINE_FILES[params.engine], params.precision
        )
        engine = load_engine(path, params.threads)
        images = load_images(photos[: params.check_images], engine.image_size)
        check = agreement(
            class_probabilities(KerasEngine(model)(images)),
            class_probabilities(engine(images)),
            CHECK_THRESHOLD,
        )
    full_precision = params.precision == "float32"
    report = {
        "engine": params.engine,
        "precision": params.precision,
        "file": path.name,
        "bytes": (paths.export_dir / path.name).stat().st_size,
        "images": check.images,
        "max_abs_diff": check.max_abs_diff,
        "flipped": check.flipped,
        "tolerance": params.tolerance,
        # Reduced precision moves the numbers by design: the check is reported, and register
        # judges the engine by its test metric against the float model's instead (evaluate).
        "passed": check.within(params.tolerance) if full_precision else None,
        "max_metric_drop": None if full_precision else params.max_metric_drop,
        "seconds": round(time.monotonic() - started, 3),
    }
    write_json(paths.export_report, report)
    return report


def exported_engine(paths: Paths, threads: int = 0) -> Engine:
    """The engine the export stage wrote (the file its report names)."""
    report = read_json(paths.export_report)
    return load_engine(paths.export_dir / report["file"], threads)
