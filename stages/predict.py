"""Batch prediction: a folder (searched recursively) or a .zip/.tar archive of images -> a Kaggle
submission CSV `id,label` (label 1 = classes[1]), optionally with `<classes[1]>_probability`.

python -m stages.predict <folder|archive> --out submission.csv [--proba]
                         [--model PATH | models:/NAME@champion | runs:/ID/model] [--batch-size N]

The id is the numeric part of the file name (`123.jpg`, `cat.123.jpg` -> 123; other names keep
their stem); rows are sorted by id, numbers first. Each file is standardised first, as the
download stage and the service do (EXIF rotation applied, any mode made RGB): a corrupt or
non-image file is reported on stderr with its reason and skipped, never fatal. Probabilities come
from `imgclf.model.inference.predict_probabilities`, the function evaluate uses, and labels from
THE decision rule (`imgclf.model.decision`).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgclf.model.batch_predict import (
    find_images,
    input_folder,
    standardised_inputs,
    submission_id,
    submission_order,
    write_submission,
)


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
    from imgclf.data.sources import SourceError
    from imgclf.data.standardise import Limits
    from imgclf.model.decision import predicted_indices
    from imgclf.model.inference import load_model, predict_probabilities

    params, paths = load_params(), Paths()
    classes = params.download.classes
    batch_size = args.batch_size or params.evaluate.batch_size
    try:
        with input_folder(args.input) as folder:
            candidates, ignored = find_images(folder)
            # The download stage's pixel limit: nothing larger ever reached training either.
            limits = Limits(params.download.max_pixels)
            with standardised_inputs(candidates, limits) as (good, rejected):
                for path, reason in rejected:
                    print(f"skipped {path.relative_to(folder)}: {reason}", file=sys.stderr)
                if not good:
                    print(f"predict: no usable images in {args.input}", file=sys.stderr)
                    return 1
                model = load_model(args.model or paths.model)
                files = [image.file for image in good]
                probabilities = predict_probabilities(model, files, batch_size, desc="predict")
            relative = [image.source.relative_to(folder).as_posix() for image in good]
    except (SourceError, OSError) as exc:  # FileNotFoundError is an OSError
        print(f"predict: {exc}", file=sys.stderr)
        return 1

    rows = sorted(
        (
            (submission_id(rel), rel, float(prob))
            for rel, prob in zip(relative, probabilities, strict=True)
        ),
        key=lambda row: submission_order(row[:2]),
    )
    duplicates = [i for i, n in Counter(row[0] for row in rows).items() if n > 1]
    if duplicates:
        print(
            f"warning: {len(duplicates)} ids occur more than once (e.g. {duplicates[0]}); "
            "file names should be unique",
            file=sys.stderr,
        )
    probability_column = f"{classes[1]}_probability" if args.proba else None
    threshold = params.evaluate.threshold
    write_submission(
        args.out, [(ident, prob) for ident, _, prob in rows], threshold, probability_column
    )

    positives = int(predicted_indices(np.array([prob for _, _, prob in rows]), threshold).sum())
    print(
        f"predict: {len(rows)} images -> {args.out} ({positives} {classes[1]}, "
        f"{len(rows) - positives} {classes[0]}); skipped {len(rejected)} unreadable, "
        f"ignored {ignored} non-image files"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
