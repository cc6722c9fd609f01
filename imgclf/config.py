"""Typed pipeline parameters (params.yaml) and every path the pipeline derives.

Only this module knows the params file format; everything else receives values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = PROJECT_ROOT / "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadParams(_Section):
    source: str
    sha256: str | None = None
    classes: list[str] = Field(min_length=2)
    max_per_class: int | None = Field(default=None, ge=1)
    seed: int = 42
    s3_endpoint_url: str | None = None
    cache_dir: Path = Path(".cache/downloads")
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    max_pixels: int = Field(default=40_000_000, ge=1)
    min_side: int = Field(default=32, ge=1)
    workers: int = Field(default=0, ge=0)


class DedupeParams(_Section):
    algorithm: Literal["phash", "dhash", "ahash", "whash"] = "phash"
    hash_size: int = Field(default=8, ge=4, le=16)
    threshold: int = Field(default=4, ge=0)
    workers: int = Field(default=0, ge=0)
    contact_sheet_groups: int = Field(default=12, ge=0)


class SplitParams(_Section):
    train: float = Field(gt=0, lt=1)
    val: float = Field(ge=0, lt=1)
    test: float = Field(gt=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:.4f}")
        return self


class Params(_Section):
    download: DownloadParams
    dedupe: DedupeParams
    split: SplitParams


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; a bad value fails here with the field's name."""
    with open(path, encoding="utf-8") as fh:
        return Params.model_validate(yaml.safe_load(fh))


def resolve_workers(requested: int) -> int:
    """0 means every core this process may use."""
    return requested or len(os.sched_getaffinity(0))


class Paths:
    """Every file the stages read or write, derived from one root (the repo by default)."""

    def __init__(self, root: Path | str = PROJECT_ROOT) -> None:
        self.root = Path(root)
        self.artifacts = self.root / "artifacts"
        self.reports = self.root / "reports"  # small JSON metrics, committed to git (cache: false)

        self.download_dir = self.artifacts / "download"
        self.images = self.download_dir / "images"
        self.download_manifest = self.download_dir / "manifest.tsv"
        self.quarantine = self.download_dir / "quarantine.tsv"
        self.download_report = self.reports / "download.json"

        self.dedupe_dir = self.artifacts / "dedupe"
        self.dedupe_manifest = self.dedupe_dir / "manifest.tsv"
        self.dedupe_conflicts = self.dedupe_dir / "conflicts.tsv"
        self.dedupe_report = self.reports / "dedupe.json"
        self.contact_sheet = self.dedupe_dir / "contact_sheet.png"

        self.split_dir = self.artifacts / "split"
        self.split_report = self.reports / "split.json"

    def split_manifest(self, split: str) -> Path:
        return self.split_dir / f"{split}.tsv"

    def resolve(self, path: Path | str) -> Path:
        """A params path is relative to the project root unless absolute."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path
