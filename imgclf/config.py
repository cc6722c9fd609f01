"""Typed pipeline parameters (params.yaml) and every path the pipeline derives.

Only this module knows the params file format; everything else receives values.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = PROJECT_ROOT / "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadParams(_Section):
    source: str
    sha256: str | None = None
    # K >= 2 class names (label index = position), or `auto`: the source's class folders, sorted
    classes: Annotated[list[str], Field(min_length=2)] | Literal["auto"]
    max_per_class: int | None = Field(default=None, ge=1)
    seed: int = 42
    s3_endpoint_url: str | None = None
    cache_dir: Path = Path(".cache/downloads")
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    max_pixels: int = Field(default=40_000_000, ge=1)
    min_side: int = Field(default=32, ge=1)
    max_image_bytes: int = Field(default=50_000_000, ge=1)  # one file, read no further
    workers: int = Field(default=0, ge=0)
    # Caps on what one source's archives (nested ones counted together) may extract to.
    max_archive_bytes: int = Field(default=10_000_000_000, ge=1)  # uncompressed
    max_members: int = Field(default=200_000, ge=1)
    max_ratio: float = Field(default=100.0, ge=1)  # uncompressed / compressed, per member and all
    max_depth: int = Field(default=32, ge=1)  # path components of a member's name
    # Who decodes: this machine's processes, or a Ray cluster (data.cluster_download); same output.
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # the cluster's head, host:port; None: $RAY_ADDRESS, or local


class DedupeParams(_Section):
    algorithm: Literal["phash", "dhash", "ahash", "whash"] = "phash"
    hash_size: int = Field(default=8, ge=4, le=16)
    threshold: int = Field(default=6, ge=0)
    workers: int = Field(default=0, ge=0)
    contact_sheet_groups: int = Field(default=12, ge=0)
    decode_size: int = Field(default=128, ge=0)  # JPEG draft decode: both sides >= this; 0 = full
    # Who hashes: local processes, or a Ray cluster (data.cluster_dedupe); the same hashes.
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # the cluster's head, host:port; None: $RAY_ADDRESS, or local


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


class AugmentParams(_Section):
    """Keras preprocessing-layer factors; active in training only."""

    enabled: bool = False
    rotation: float = Field(default=0.05, ge=0, le=0.5)  # fraction of a full turn
    shift: float = Field(default=0.1, ge=0, le=0.5)  # fraction of width/height
    zoom: float = Field(default=0.1, ge=0, le=0.5)
    flip: bool = True  # horizontal
    brightness: float = Field(default=0.1, ge=0, le=1)
    contrast: float = Field(default=0.1, ge=0, le=1)


class FineTuneParams(_Section):
    blocks: int = Field(default=0, ge=0)  # top backbone blocks unfrozen after the head phase
    epochs: int = Field(default=3, ge=0)
    lr: float = Field(default=1e-5, gt=0)


# Backbones with ImageNet weights (EfficientNet-Lite ported by the pretrained stage; the others
# from keras.applications): the ones whose features a list `arch` may concatenate.
PretrainedArch = Literal[
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
]
Arch = Literal[PretrainedArch, "seed_cnn", "small_cnn"]


class LinearHeadParams(_Section):
    """The head on cached features (a pretrained backbone with cache_features) fitted as an
    L2-regularised logistic regression (scikit-learn) instead of Adam epochs; its strength is the
    candidate with the lowest validation log loss."""

    enabled: bool = True
    # inverse L2 strengths tried, on standardised features
    c: list[Annotated[float, Field(gt=0)]] = Field([0.01, 0.03, 0.1, 0.3, 1.0], min_length=1)


class TrainParams(_Section):
    # one arch, or a list of pretrained backbones whose pooled features are concatenated
    arch: Arch | Annotated[list[PretrainedArch], Field(min_length=2)] = "efficientnet_lite2"
    weights: Literal["imagenet"] | None = "imagenet"  # pretrained backbones only; null = random
    image_size: int = Field(default=260, ge=32)
    batch_size: int = Field(default=32, ge=1)
    epochs: int = Field(default=30, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    early_stopping_patience: int = Field(default=5, ge=1)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    # auto: one sigmoid unit (P(second class)) for two classes, a softmax over K for more
    head: Literal["auto", "softmax"] = "auto"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)  # targets pulled toward uniform
    class_weights: Literal["auto", "none"] = "auto"
    cache_features: bool = True  # frozen pretrained backbone + no augmentation: extract once
    strategy: Literal["default", "mirrored"] = "default"
    seed: int = 42
    augment: AugmentParams = AugmentParams()
    fine_tune: FineTuneParams = FineTuneParams()
    linear_head: LinearHeadParams = LinearHeadParams()
    # Both need a backbone + head: seed_cnn keeps its own output.
    tta: Literal["none", "flip"] = "flip"  # flip: the saved model averages image and mirror
    calibration: Literal["none", "temperature"] = "temperature"  # T fitted on validation
    feature_engine: Literal["litert", "keras"] = "litert"  # runs the frozen backbone once

    @property
    def backbones(self) -> tuple[str, ...]:
        """The arch as a tuple of names (one, or the concatenated backbones)."""
        return (self.arch,) if isinstance(self.arch, str) else tuple(self.arch)

    @property
    def arch_name(self) -> str:
        return "-".join(self.backbones)  # a valid Keras model name

    @model_validator(mode="after")
    def _backbones_differ(self) -> TrainParams:
        if len(set(self.backbones)) != len(self.backbones):
            raise ValueError(f"arch lists a backbone twice: {self.arch}")
        return self


class EvaluateParams(_Section):
    threshold: float = Field(default=0.5, gt=0, lt=1)  # two classes: P(second class) to predict it
    calibration_bins: int = Field(default=15, ge=2)
    misclassified_grid: int = Field(default=16, ge=0)  # worst test mistakes drawn in a grid
    batch_size: int = Field(default=64, ge=1)
    top_k: int = Field(default=3, ge=1)  # top_{k}_accuracy, reported when there are more classes


class ExportParams(_Section):
    engine: Literal["litert", "onnx"] = "litert"  # what evaluate, batch prediction and serving run
    check_images: int = Field(default=200, ge=1)  # real photos compared with Keras
    tolerance: float = Field(default=1e-5, gt=0)  # largest |p_engine - p_keras| accepted
    threads: int = Field(default=0, ge=0)  # engine threads; 0 = all cores
    # float16 (LiteRT) / int8: smaller weights; gated on the test metric instead of tolerance
    precision: Literal["float32", "float16", "int8"] = "float32"
    max_metric_drop: float = Field(default=0.001, ge=0)  # engine's test metric below the float's

    @model_validator(mode="after")
    def _float16_needs_litert(self) -> ExportParams:
        if self.precision == "float16" and self.engine != "litert":
            raise ValueError("export.precision float16 needs engine litert")
        return self


class MlflowParams(_Section):
    """Where runs go. $MLFLOW_TRACKING_URI wins over tracking_uri; neither reruns a stage."""

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"  # for a local store; relative to the project root
    experiment: str = "imgclf"


class ServeParams(_Section):
    """The service (imgclf/serving): one declaration per setting. imgclf.serving.settings lays
    the environment over these keys; here they are plain params.yaml values."""

    model_name: str | None = None  # registered model to serve; null = register.model_name
    alias: str = "champion"  # registry alias served and polled
    poll_seconds: float = Field(default=30.0, gt=0)  # how often the alias is re-resolved
    max_bytes: int = Field(default=10_000_000, ge=1)  # per uploaded image
    max_pixels: int = Field(default=25_000_000, ge=1)  # width x height, checked from the header
    max_images_per_request: int = Field(default=32, ge=1)  # /predict_batch
    max_batch_bytes: int = Field(default=32_000_000, ge=1)  # a whole /predict_batch body
    max_decoded_pixels: int = Field(default=100_000_000, ge=1)  # one request's images, decoded
    max_in_flight: int = Field(default=32, ge=1)  # requests one worker handles at once; 503 past
    body_timeout_seconds: float = Field(default=30.0, gt=0)  # a request body must arrive by then
    max_token_lifetime_seconds: int = Field(default=86_400, ge=1)  # JWT exp - iat (or exp - now)
    registry_timeout_seconds: int = Field(default=10, ge=1)  # each HTTP call to the registry
    max_batch_size: int = Field(default=8, ge=1)  # adaptive batching: images per forward pass
    prediction_db: str = "predictions.db"  # prediction log: SQLAlchemy URL or SQLite file (cwd)
    feedback_window: int = Field(default=500, ge=1)  # live accuracy: last N labelled predictions
    log_format: Literal["json", "text"] = "json"  # the service's own log lines
    tracing: bool = False  # BentoML's OpenTelemetry span per request (export: BentoML's config)


class RegisterParams(_Section):
    """Model registry gate (stages/register.py; the rule: imgclf/registry/gate.py)."""

    model_name: str = Field(default="dogs-vs-cats", min_length=1)
    metric: str = Field(default="accuracy", min_length=1)  # a key of metrics.json's "test"
    # higher | lower is better; auto: lower for loss/error metrics (log_loss, ece, fp, fn, ...)
    direction: Literal["auto", "higher", "lower"] = "auto"
    min_delta: float = Field(default=0.0, ge=0)  # must beat the champion by more than this
    min_value: float | None = None  # absolute bar (a ceiling when lower is better); null = none
    auto_promote: bool = True  # false: the gate only reports; a person moves `champion`


class MonitorParams(_Section):
    """Drift report: the last `days` of the prediction log against the test split
    (`imgclf monitor`, imgclf/monitoring/drift/). Not a DVC stage: changing it reruns nothing."""

    days: int = Field(default=7, ge=1)  # live window: the last N days before now
    psi_threshold: float = Field(default=0.2, gt=0)  # population stability index: a material shift
    p_value: float = Field(default=0.01, gt=0, lt=1)  # chi-square / KS: a significant shift
    min_rows: int = Field(default=200, ge=1)  # fewer live predictions: "insufficient data"
    min_labelled: int = Field(default=100, ge=1)  # fewer labelled: no accuracy verdict
    accuracy_drop: float = Field(default=0.02, ge=0, le=1)  # flag live accuracy this far below test
    bins: int = Field(default=10, ge=2)  # PSI bins (confidence, image size)


# `register` (the params.yaml section) shadows ABCMeta.register on the class, which pydantic
# warns about when it builds the class; Params is never used as an ABC, so instances read the
# field as usual. The filter covers only the class statement: importing changes no global state.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", 'Field name "register" in "Params"', UserWarning)

    class Params(_Section):
        download: DownloadParams
        dedupe: DedupeParams
        split: SplitParams
        train: TrainParams
        export: ExportParams = ExportParams()
        evaluate: EvaluateParams
        mlflow: MlflowParams
        register: RegisterParams = RegisterParams()
        serve: ServeParams = ServeParams()
        monitor: MonitorParams = MonitorParams()


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
        self.split_classes = self.split_dir / "classes.json"  # the resolved class list, in order
        self.split_report = self.reports / "split.json"

        self.pretrained_dir = self.artifacts / "pretrained"
        self.pretrained_weights = self.pretrained_dir / "efficientnet_lite0.weights.h5"
        self.pretrained_info = self.pretrained_dir / "efficientnet_lite0.json"

        self.train_dir = self.artifacts / "train"
        self.model = self.train_dir / "model.keras"
        self.history = self.train_dir / "history.csv"
        self.mlflow_run = self.train_dir / "mlflow_run.json"

        self.export_dir = self.artifacts / "export"  # the inference engine's file
        self.export_report = self.reports / "export.json"  # its agreement with Keras

        self.evaluate_dir = self.artifacts / "evaluate"
        self.predictions = self.evaluate_dir / "predictions.tsv"  # every split, every file
        self.metrics = self.reports / "metrics.json"

        self.register_report = self.reports / "register.json"

    def split_manifest(self, split: str) -> Path:
        return self.split_dir / f"{split}.tsv"

    def resolve(self, path: Path | str) -> Path:
        """A params path is relative to the project root unless absolute."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path
