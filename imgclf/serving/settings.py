"""Service settings, read by pydantic-settings. Precedence, highest first:
keyword arguments > environment > params.yaml > defaults.

Environment variables (all optional):
    IMGCLF_SERVE_<KEY>          any `serve:` key (imgclf.config.ServeParams), e.g.
                                IMGCLF_SERVE_POLL_SECONDS=2
    IMGCLF_PREDICTION_DB_URL    prediction log database (SQLAlchemy URL); beats prediction_db
    IMGCLF_MODEL_SOURCE         registry (poll the alias) | bento (the packaged model);
                                default: bento inside a built bento, else registry
    MLFLOW_TRACKING_URI         the registry; default: mlflow.tracking_uri of params.yaml
    IMGCLF_PARAMS_FILE          another params.yaml
    IMGCLF_AUTH, IMGCLF_JWT_*   authentication (AuthSettings)

Derived from the rest of params.yaml, below the environment: model_name (when serve.model_name
is null: register.model_name), classes (download.classes), threshold (evaluate.threshold) and
tracking_uri (the mlflow section).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    SettingsConfigDict,
)

from imgclf.config import PARAMS_FILE, PROJECT_ROOT, Params, ServeParams, load_params

BENTO_MODEL_NAME = "imgclf-champion"  # the champion packaged into a bento (bento_model.py)
S = TypeVar("S", bound=BaseSettings)


class ServeSettings(ServeParams):
    """What the service runs with: the `serve:` keys plus what it takes from the rest of
    params.yaml and the environment. Build it with load_settings()."""

    model_name: str  # serve.model_name, else register.model_name: always set here
    classes: tuple[str, ...]
    threshold: float
    tracking_uri: str = Field(validation_alias="MLFLOW_TRACKING_URI")
    model_source: Literal["registry", "bento"] = Field(validation_alias="IMGCLF_MODEL_SOURCE")

    @cached_property
    def prediction_db_url(self) -> str:
        """prediction_db as a SQLAlchemy URL; a file name is resolved once, on the first read."""
        return database_url(self.prediction_db, Path.cwd())


class AuthSettings(BaseSettings):
    """JWT authentication (imgclf.serving.auth): IMGCLF_AUTH and IMGCLF_JWT_*. Auth is off only
    when IMGCLF_AUTH=disabled; otherwise exactly one key must be configured, so the service
    never starts open by accident."""

    # extra: the other IMGCLF_* variables are not auth's; errors never echo the secret
    model_config = SettingsConfigDict(
        env_prefix="IMGCLF_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    auth: Literal["jwt", "disabled"] = "jwt"
    jwt_secret: SecretStr | None = None  # HS256 shared secret, at least 32 bytes
    jwt_public_key: str | None = None  # RS256 public key (PEM text) ...
    jwt_public_key_file: Path | None = None  # ... or a file holding it
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


class _EnvironSource(EnvSettingsSource):
    """The environment source over a given mapping, so callers and tests pass an environment
    instead of changing os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self.environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # case-insensitive names, as EnvSettingsSource; an empty value counts as unset
        return {name.lower(): value for name, value in self.environ.items() if value}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # A value found under the prefixed name (IMGCLF_SERVE_PREDICTION_DB) gets the key the
        # other sources give the field (its alias, IMGCLF_PREDICTION_DB_URL), so the merge keeps
        # the precedence instead of passing both keys on.
        value, _, is_complex = super().get_field_value(field, field_name)
        alias = field.validation_alias
        return value, alias if isinstance(alias, str) else field_name, is_complex


def _build(
    cls: type[S], environ: Mapping[str, str] | None, *lower: Mapping[str, Any], **values: Any
) -> S:
    """`cls` from keyword `values` > `environ` (default os.environ) > each of `lower` in turn."""
    sources = (
        InitSettingsSource(cls, values),
        _EnvironSource(cls, os.environ if environ is None else environ),
        *(InitSettingsSource(cls, dict(layer)) for layer in lower),
    )
    # BaseSettings' documented argument for sources built by the caller (its CliApp uses it too)
    return cls(_build_sources=(sources, values))


def load_settings(
    environ: Mapping[str, str] | None = None, params_file: Path | str | None = None, **values: Any
) -> ServeSettings:
    """The service's settings (see the module docstring); a bad value fails here with the key's
    name. `environ` defaults to os.environ; keyword `values` beat everything."""
    env = os.environ if environ is None else environ
    params_path = Path(params_file or env.get("IMGCLF_PARAMS_FILE") or PARAMS_FILE)
    params = load_params(params_path)
    # null in params.yaml means "not set here": serve.model_name: null falls through to register's
    serve = params.serve.model_dump(exclude_none=True)
    return _build(ServeSettings, env, serve, _derived(params, params_path), **values)


def load_auth_settings(environ: Mapping[str, str] | None = None) -> AuthSettings:
    return _build(AuthSettings, environ)


def _derived(params: Params, params_path: Path) -> dict[str, Any]:
    """The lowest layer: what the service takes from the rest of params.yaml."""
    from imgclf.tracking import tracking_uri

    return {
        "model_name": params.register.model_name,
        "classes": params.download.classes,
        "threshold": params.evaluate.threshold,
        "tracking_uri": tracking_uri(params.mlflow, params_path.resolve().parent),
        "model_source": "bento" if bento_tag() else "registry",
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
