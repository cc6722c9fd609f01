"""Service settings, read by pydantic-settings: params.yaml with the environment on top.

Environment variables (all optional), each over what it replaces:
    IMGCLF_SERVE_<KEY>          a `serve:` key of params.yaml (imgclf.config.ServeParams), e.g.
                                IMGCLF_SERVE_POLL_SECONDS=2; only the `serve:` keys
    IMGCLF_PREDICTION_DB_URL    prediction log database; beats IMGCLF_SERVE_PREDICTION_DB
    IMGCLF_MODEL_SOURCE         registry (poll the alias) | bento (the packaged model);
                                default: bento inside a built bento, else registry
    MLFLOW_TRACKING_URI         the registry; default: the mlflow section of params.yaml
    IMGCLF_PARAMS_FILE          another params.yaml
    IMGCLF_AUTH, IMGCLF_JWT_*   authentication (AuthSettings)

The rest is taken from params.yaml alone, so the service decides as evaluate, predict and the
drift report do: threshold (evaluate.threshold) and model_name when serve.model_name is null
(register.model_name). The classes are the served model's own (holder.py); download.classes, when
it lists them, only stands in for a model registered before models carried their classes.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from imgclf.config import PARAMS_FILE, PROJECT_ROOT, Params, ServeParams, load_params

BENTO_MODEL_NAME = "imgclf-champion"  # the champion packaged into a bento (bento_model.py)
# BentoML's `traffic.timeout` (service.py): past it BentoML answers 504 itself, so everything
# the service bounds on its own (the body's deadline) must end before.
REQUEST_TIMEOUT_SECONDS = 60


class ServeSettings(ServeParams):
    """What the service runs with: the `serve:` keys and what is derived from the rest of
    params.yaml and the deployment variables. Build it with load_settings()."""

    model_name: str  # serve.model_name, else register.model_name: always set here
    fallback_classes: tuple[str, ...] | None  # for a model that carries no classes
    threshold: float
    tracking_uri: str
    model_source: Literal["registry", "bento"]
    prediction_db_url: str  # prediction_db as a SQLAlchemy URL

    @field_validator("body_timeout_seconds")
    @classmethod
    def _before_the_request_timeout(cls, seconds: float) -> float:
        if seconds >= REQUEST_TIMEOUT_SECONDS:
            raise ValueError(
                f"must be under the request timeout ({REQUEST_TIMEOUT_SECONDS} s), or a slow "
                "body gets BentoML's 504 instead of a 408"
            )
        return seconds


class _ServeKeys(ServeParams, BaseSettings):
    """The `serve:` keys: IMGCLF_SERVE_<KEY> > params.yaml (the keyword arguments) > defaults."""

    # an empty variable counts as unset (compose passes ${VAR:-} through)
    model_config = SettingsConfigDict(
        env_prefix="IMGCLF_SERVE_", env_ignore_empty=True, frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the keyword arguments are params.yaml's section: the environment comes first
        return env_settings, init_settings


class _Deployment(BaseSettings):
    """The variables deployments set by name, outside the IMGCLF_SERVE_ prefix
    (MLFLOW_TRACKING_URI is read by imgclf.tracking, as in the pipeline)."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True, frozen=True)

    imgclf_params_file: Path | None = None
    imgclf_prediction_db_url: str | None = None
    imgclf_model_source: Literal["registry", "bento"] | None = None


class AuthSettings(BaseSettings):
    """JWT authentication (imgclf.serving.auth): IMGCLF_AUTH and IMGCLF_JWT_*. Auth is off only
    when IMGCLF_AUTH=disabled; otherwise exactly one key must be configured, so the service
    never starts open by accident."""

    # extra: the other IMGCLF_* variables are not auth's; errors never echo the secret
    model_config = SettingsConfigDict(
        env_prefix="IMGCLF_",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    auth: Literal["jwt", "disabled"] = "jwt"
    jwt_secret: SecretStr | None = None  # HS256 shared secret, at least 32 bytes
    jwt_public_key: str | None = None  # RS256 public key (PEM text) ...
    jwt_public_key_file: FilePath | None = None  # ... or a file holding it (must exist)
    jwt_audience: str = "imgclf"  # required `aud`
    jwt_issuer: str | None = None  # required `iss`, when set
    jwt_leeway: float = Field(default=0.0, ge=0)  # seconds of clock skew allowed on exp/nbf

    @model_validator(mode="after")
    def _one_key_when_enabled(self) -> Self:
        if self.auth == "disabled":
            return self
        if (self.jwt_secret is None) == (self.public_key is None):
            raise ValueError(
                "JWT auth needs exactly one of IMGCLF_JWT_SECRET (HS256) or IMGCLF_JWT_PUBLIC_KEY"
                "[_FILE] (RS256); set IMGCLF_AUTH=disabled to run without auth"
            )
        if self.jwt_secret and len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError("IMGCLF_JWT_SECRET must be at least 32 bytes for HS256")
        return self

    @cached_property
    def public_key(self) -> str | None:
        if self.jwt_public_key or self.jwt_public_key_file is None:
            return self.jwt_public_key
        return self.jwt_public_key_file.read_text()

    @property
    def algorithm(self) -> Literal["HS256", "RS256"]:
        return "HS256" if self.jwt_secret else "RS256"

    @property
    def key(self) -> str:
        """The verification key of `algorithm`."""
        return self.jwt_secret.get_secret_value() if self.jwt_secret else self.public_key or ""


def load_settings(params_file: Path | str | None = None) -> ServeSettings:
    """The service's settings (see the module docstring) from `params_file`, default
    $IMGCLF_PARAMS_FILE or the project's; a bad value fails here with the key's name."""
    deployment = _Deployment()
    params_path = Path(params_file or deployment.imgclf_params_file or PARAMS_FILE)
    params = load_params(params_path)
    serve = _ServeKeys(**params.serve.model_dump(exclude_unset=True))
    return ServeSettings(
        **{**serve.model_dump(), **_derived(params, params_path, serve, deployment)}
    )


def _derived(
    params: Params, params_path: Path, serve: ServeParams, deployment: _Deployment
) -> dict[str, object]:
    """Every value the `serve:` keys do not give directly."""
    from imgclf.tracking import tracking_uri  # imports MLflow: only when settings are loaded

    prediction_db = deployment.imgclf_prediction_db_url or serve.prediction_db
    classes = params.download.classes
    return {
        "model_name": serve.model_name or params.register.model_name,
        # download.classes: `auto` names no classes before the data is read
        "fallback_classes": classes if isinstance(classes, list) else None,
        "threshold": params.evaluate.threshold,
        "tracking_uri": tracking_uri(params.mlflow, params_path.resolve().parent),
        "model_source": deployment.imgclf_model_source or ("bento" if bento_tag() else "registry"),
        "prediction_db": prediction_db,
        "prediction_db_url": database_url(prediction_db, Path.cwd()),
    }


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
