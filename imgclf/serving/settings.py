"""Service settings: params.yaml's `serve:` section, then environment overrides.

Environment variables (all optional):
    IMGCLF_SERVE_<KEY>          any `serve:` key, e.g. IMGCLF_SERVE_POLL_SECONDS=2
    IMGCLF_PREDICTION_DB_URL    prediction log database (SQLAlchemy URL); beats prediction_db
    IMGCLF_MODEL_SOURCE         registry (poll the alias) | bento (the packaged model);
                                default: bento inside a built bento, else registry
    IMGCLF_PARAMS_FILE          another params.yaml
    MLFLOW_TRACKING_URI         the registry; default: mlflow.tracking_uri of params.yaml
Auth variables are read by imgclf.serving.auth.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from imgclf.config import PARAMS_FILE, PROJECT_ROOT, ServeParams, load_params

ENV_PREFIX = "IMGCLF_SERVE_"
BENTO_MODEL_NAME = "imgclf-champion"  # the champion packaged into a bento (bento_model.py)


class ServeSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_name: str
    alias: str
    poll_seconds: float
    max_bytes: int
    max_pixels: int
    max_images_per_request: int
    max_batch_size: int
    max_latency_ms: float
    prediction_db_url: str
    tracking_uri: str
    classes: tuple[str, ...]
    threshold: float
    feedback_window: int = 500
    log_format: Literal["json", "text"] = "json"
    model_source: Literal["registry", "bento"] = "registry"


def bento_tag() -> str | None:
    """The packaged champion's exact tag when this code runs from a built bento (its bento.yaml
    sits next to the source folder), else None."""
    import yaml

    manifest = PROJECT_ROOT.parent / "bento.yaml"
    if not manifest.is_file():
        return None
    for model in yaml.safe_load(manifest.read_text()).get("models") or []:
        tag = model.get("tag", "") if isinstance(model, dict) else str(model)
        if tag.split(":")[0] == BENTO_MODEL_NAME:
            return tag
    return None


def database_url(value: str, base: Path) -> str:
    """A SQLAlchemy URL as is; a bare file name -> a SQLite file under `base`."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return f"sqlite:///{path if path.is_absolute() else (base / path).resolve()}"


def load_settings(
    environ: Mapping[str, str] | None = None, params_file: Path | str | None = None
) -> ServeSettings:
    """params.yaml (serve, register.model_name, download.classes, evaluate.threshold, mlflow)
    with IMGCLF_SERVE_* overrides; a bad value fails here with the key's name."""
    from imgclf.tracking import tracking_uri

    env = os.environ if environ is None else environ
    params_path = Path(params_file or env.get("IMGCLF_PARAMS_FILE") or PARAMS_FILE)
    params = load_params(params_path)
    serve = params.serve.model_dump()
    for key in ServeParams.model_fields:
        value = env.get(ENV_PREFIX + key.upper())
        if value is not None:
            serve[key] = None if value.lower() in ("", "null", "none") else value
    serve = ServeParams.model_validate(serve).model_dump()
    register = getattr(params, "register", None)
    model_name = serve.pop("model_name") or getattr(register, "model_name", None)
    if not model_name:
        raise ValueError("no model to serve: set serve.model_name or register.model_name")
    db = env.get("IMGCLF_PREDICTION_DB_URL") or serve.pop("prediction_db")
    serve.pop("prediction_db", None)
    root = (
        params_path.resolve().parent if params_file or "IMGCLF_PARAMS_FILE" in env else PROJECT_ROOT
    )
    return ServeSettings(
        **serve,
        model_name=model_name,
        prediction_db_url=database_url(db, Path.cwd()),
        tracking_uri=env.get("MLFLOW_TRACKING_URI") or tracking_uri(params.mlflow, root),
        classes=tuple(params.download.classes),
        threshold=params.evaluate.threshold,
        model_source=env.get("IMGCLF_MODEL_SOURCE") or ("bento" if bento_tag() else "registry"),
    )
