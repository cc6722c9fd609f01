"""params.yaml is the source of every knob; the code's defaults must not silently disagree. The
service's settings layer the environment over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from imgclf.config import Paths, ServeParams, load_params
from imgclf.serving.settings import load_auth_settings, load_settings


def _mismatches(section: BaseModel, prefix: str) -> list[str]:
    found = []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            found += _mismatches(value, f"{prefix}{name}.")
        elif not field.is_required() and value != field.get_default(call_default_factory=True):
            found.append(f"{prefix}{name}: params.yaml {value!r}, code {field.get_default()!r}")
    return found


def test_code_defaults_equal_params_yaml() -> None:
    assert _mismatches(load_params(), "") == []


def test_a_bad_value_names_its_field(tmp_path: Path) -> None:
    text = (Paths().root / "params.yaml").read_text().replace("train: 0.70", "train: 0.90")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ValidationError, match="split fractions must sum to 1"):
        load_params(tmp_path / "params.yaml")


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    text = (
        (Paths().root / "params.yaml").read_text().replace("  lr: 1.0e-3", "  lr: 1.0e-3\n  lrr: 1")
    )
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ValidationError, match="lrr"):
        load_params(tmp_path / "params.yaml")


# ------------------------------------------------------------------ service settings


def params_with_serve(tmp_path: Path, serve: str) -> Path:
    """A copy of params.yaml whose `serve:` section is `serve` (YAML lines, indented)."""
    text = (Paths().root / "params.yaml").read_text()
    head, _, rest = text.partition("\nserve:")
    tail = rest[rest.index("\nmonitor:") :]
    path = tmp_path / "params.yaml"
    path.write_text(f"{head}\nserve:\n{serve}{tail}")
    return path


def test_settings_precedence_keyword_env_params_default(tmp_path: Path) -> None:
    params = params_with_serve(tmp_path, "  max_bytes: 111\n  max_pixels: 222\n  alias: prod\n")
    env = {"IMGCLF_SERVE_MAX_PIXELS": "333", "IMGCLF_SERVE_ALIAS": "canary"}
    settings = load_settings(env, params, alias="shadow")
    assert settings.alias == "shadow"  # keyword beats environment
    assert settings.max_pixels == 333  # environment beats params.yaml
    assert settings.max_bytes == 111  # params.yaml beats the default
    assert settings.poll_seconds == ServeParams.model_fields["poll_seconds"].default  # the default


def test_settings_read_the_deployment_variable_names(tmp_path: Path) -> None:
    env = {
        "IMGCLF_PREDICTION_DB_URL": "postgresql://u@h/db",
        "IMGCLF_SERVE_PREDICTION_DB": "ignored.db",  # the deployment name wins, as documented
        "IMGCLF_MODEL_SOURCE": "bento",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    }
    settings = load_settings(env, params_with_serve(tmp_path, "  prediction_db: yaml.db\n"))
    assert settings.prediction_db_url == "postgresql://u@h/db"
    assert (settings.model_source, settings.tracking_uri) == ("bento", "http://127.0.0.1:5000")
    only_prefixed = load_settings(
        {"IMGCLF_SERVE_PREDICTION_DB": "env.db"}, tmp_path / "params.yaml"
    )
    assert only_prefixed.prediction_db == "env.db"


def test_settings_derive_from_the_rest_of_params_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    params = params_with_serve(tmp_path, "  model_name: null\n")
    settings = load_settings({}, params)
    assert settings.model_name == load_params(params).register.model_name  # null falls through
    assert settings.classes == ("cat", "dog") and settings.threshold == 0.5
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # next to params.yaml
    assert settings.model_source == "registry"  # not inside a built bento
    assert load_settings({"IMGCLF_SERVE_MODEL_NAME": "other"}, params).model_name == "other"


def test_settings_a_bad_value_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="poll_seconds"):
        load_settings({"IMGCLF_SERVE_POLL_SECONDS": "-1"})
    with pytest.raises(ValidationError, match="log_format"):
        load_settings({}, params_with_serve(tmp_path, "  log_format: xml\n"))


def test_an_unknown_serve_key_is_refused_by_the_pipeline_and_the_service(tmp_path: Path) -> None:
    params = params_with_serve(tmp_path, "  max_byte: 5\n")
    with pytest.raises(ValidationError, match="max_byte"):
        load_params(params)
    with pytest.raises(ValidationError, match="max_byte"):
        load_settings({}, params)


def test_params_yaml_is_validated_without_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLF_SERVE_POLL_SECONDS", "-1")
    assert load_params().serve.poll_seconds == 30.0
    with pytest.raises(ValidationError, match="poll_seconds"):
        load_settings()  # the service reads os.environ by default


# ------------------------------------------------------------------------ auth settings

SECRET = "s" * 32


def test_auth_is_on_by_default_and_needs_exactly_one_key(tmp_path: Path) -> None:
    assert load_auth_settings({"IMGCLF_AUTH": "disabled"}).auth == "disabled"
    (tmp_path / "pub.pem").write_text("PEM")
    both = {"IMGCLF_JWT_SECRET": SECRET, "IMGCLF_JWT_PUBLIC_KEY_FILE": str(tmp_path / "pub.pem")}
    for env in ({}, both):
        with pytest.raises(ValidationError, match="exactly one of"):
            load_auth_settings(env)
    settings = load_auth_settings({"IMGCLF_JWT_PUBLIC_KEY_FILE": str(tmp_path / "pub.pem")})
    assert (settings.algorithm, settings.key) == ("RS256", "PEM")


def test_auth_settings_read_every_variable_and_never_echo_the_secret() -> None:
    env = {
        "IMGCLF_JWT_SECRET": SECRET,
        "IMGCLF_JWT_AUDIENCE": "aud",
        "IMGCLF_JWT_ISSUER": "iss",
        "IMGCLF_JWT_LEEWAY": "2.5",
        "IMGCLF_SERVE_MAX_BYTES": "1",  # another settings class's variable: not an error here
    }
    settings = load_auth_settings(env)
    assert (settings.algorithm, settings.key) == ("HS256", SECRET)
    assert (settings.jwt_audience, settings.jwt_issuer, settings.jwt_leeway) == ("aud", "iss", 2.5)
    assert SECRET not in repr(settings)
    with pytest.raises(ValidationError, match="32 bytes") as short:
        load_auth_settings({"IMGCLF_JWT_SECRET": "short-secret"})
    assert "short-secret" not in str(short.value)
