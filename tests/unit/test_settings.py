"""The service's settings: params.yaml with the environment on top, and only through the
documented variables (imgclf.serving.settings)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from imgclf.config import Paths, ServeParams, load_params
from imgclf.serving.settings import AuthSettings, database_url, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets: none of the machine's IMGCLF_*, MLflow or DVC ones."""
    for name in os.environ:
        if name.startswith(("IMGCLF_", "MLFLOW_", "DVC_")):
            monkeypatch.delenv(name)


def params_with_serve(tmp_path: Path, serve: str) -> Path:
    """A copy of params.yaml whose `serve:` section is `serve` (YAML lines, indented)."""
    text = (Paths().root / "params.yaml").read_text()
    head, _, rest = text.partition("\nserve:")
    tail = rest[rest.index("\nmonitor:") :]
    path = tmp_path / "params.yaml"
    path.write_text(f"{head}\nserve:\n{serve}{tail}")
    return path


def test_environment_beats_params_yaml_beats_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = params_with_serve(tmp_path, "  max_bytes: 111\n  max_pixels: 222\n")
    monkeypatch.setenv("IMGCLF_SERVE_MAX_PIXELS", "333")
    monkeypatch.setenv("IMGCLF_SERVE_ALIAS", "")  # empty counts as unset
    settings = load_settings(params)
    assert settings.max_pixels == 333
    assert settings.max_bytes == 111
    assert settings.alias == ServeParams.model_fields["alias"].default
    assert settings.poll_seconds == ServeParams.model_fields["poll_seconds"].default


def test_deployment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = params_with_serve(tmp_path, "  prediction_db: yaml.db\n")
    monkeypatch.setenv("IMGCLF_SERVE_PREDICTION_DB", "env.db")
    monkeypatch.chdir(tmp_path)
    # a file name is resolved against the working directory at load time
    assert load_settings(params).prediction_db_url == f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("IMGCLF_PREDICTION_DB_URL", "postgresql://u@h/db")  # the deployments' name
    monkeypatch.setenv("IMGCLF_MODEL_SOURCE", "bento")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    settings = load_settings(params)
    assert settings.prediction_db_url == settings.prediction_db == "postgresql://u@h/db"
    assert (settings.model_source, settings.tracking_uri) == ("bento", "http://127.0.0.1:5000")


def test_derived_values_come_from_the_rest_of_params_yaml(tmp_path: Path) -> None:
    params = params_with_serve(tmp_path, "  model_name: null\n")
    settings = load_settings(params)
    assert settings.model_name == load_params(params).register.model_name  # null falls through
    # the classes of a model that carries none (served models name their own)
    assert settings.fallback_classes == ("cat", "dog") and settings.threshold == 0.5
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # next to params.yaml
    assert settings.model_source == "registry"  # not inside a built bento


def test_classes_auto_leaves_no_fallback(tmp_path: Path) -> None:
    """`download.classes: auto` names no classes before the data is read: a model that carries
    none then has nothing to fall back on (holder.model_classes refuses to load it)."""
    params = params_with_serve(tmp_path, "  alias: champion\n")
    text = params.read_text()
    line = next(line for line in text.splitlines() if line.startswith("  classes:"))
    params.write_text(text.replace(line, "  classes: auto"))
    assert load_settings(params).fallback_classes is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IMGCLF_SERVE_THRESHOLD", "0.9"),
        ("IMGCLF_SERVE_FALLBACK_CLASSES", '["a", "b", "c"]'),
        ("IMGCLF_SERVE_TRACKING_URI", "http://elsewhere:5000"),
        ("IMGCLF_SERVE_MODEL_SOURCE", "bento"),
        ("IMGCLF_SERVE_PREDICTION_DB_URL", "postgresql://u@h/db"),
    ],
)
def test_derived_values_ignore_the_serve_prefix(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service labels with evaluate's threshold (and falls back on download's classes), as
    predict and the drift report do: only the documented variables change the derived values."""
    expected = load_settings().model_dump()
    monkeypatch.setenv(variable, value)
    assert load_settings().model_dump() == expected


def test_serve_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLF_SERVE_MODEL_NAME", "other")
    monkeypatch.setenv("IMGCLF_SERVE_POLL_SECONDS", "2.5")
    settings = load_settings()
    assert (settings.model_name, settings.poll_seconds) == ("other", 2.5)


def test_params_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLF_PARAMS_FILE", str(params_with_serve(tmp_path, "  max_bytes: 7\n")))
    assert load_settings().max_bytes == 7


def test_a_bad_value_names_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="log_format"):
        load_settings(params_with_serve(tmp_path, "  log_format: xml\n"))
    monkeypatch.setenv("IMGCLF_SERVE_POLL_SECONDS", "-1")
    with pytest.raises(ValidationError, match="poll_seconds"):
        load_settings()
    assert load_params().serve.poll_seconds == 30.0  # the pipeline reads no environment


def test_the_body_deadline_ends_before_bentomls_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from imgclf.serving.settings import REQUEST_TIMEOUT_SECONDS

    monkeypatch.setenv("IMGCLF_SERVE_BODY_TIMEOUT_SECONDS", str(REQUEST_TIMEOUT_SECONDS - 1))
    assert load_settings().body_timeout_seconds == REQUEST_TIMEOUT_SECONDS - 1
    monkeypatch.setenv("IMGCLF_SERVE_BODY_TIMEOUT_SECONDS", str(REQUEST_TIMEOUT_SECONDS))
    with pytest.raises(ValidationError, match="body_timeout_seconds"):
        load_settings()


def test_an_unknown_serve_key_is_refused(tmp_path: Path) -> None:
    params = params_with_serve(tmp_path, "  max_byte: 5\n")
    with pytest.raises(ValidationError, match="max_byte"):
        load_settings(params)


def test_database_url_keeps_a_url_and_anchors_a_file_name(tmp_path: Path) -> None:
    assert database_url("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"
    assert database_url("p.db", tmp_path) == f"sqlite:///{tmp_path / 'p.db'}"


# ------------------------------------------------------------------------ auth settings

SECRET = "s" * 32


def test_auth_is_on_by_default_and_needs_exactly_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        AuthSettings()
    (tmp_path / "pub.pem").write_text("PEM")
    monkeypatch.setenv("IMGCLF_JWT_PUBLIC_KEY_FILE", str(tmp_path / "pub.pem"))
    settings = AuthSettings()
    assert (settings.algorithm, settings.key) == ("RS256", "PEM")
    monkeypatch.setenv("IMGCLF_JWT_SECRET", SECRET)
    with pytest.raises(ValidationError, match="exactly one of"):
        AuthSettings()
    monkeypatch.setenv("IMGCLF_AUTH", "disabled")
    assert AuthSettings().auth == "disabled"


def test_auth_settings_read_every_variable_and_never_echo_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "IMGCLF_JWT_SECRET": SECRET,
        "IMGCLF_JWT_AUDIENCE": "aud",
        "IMGCLF_JWT_ISSUER": "iss",
        "IMGCLF_JWT_LEEWAY": "2.5",
        "IMGCLF_SERVE_MAX_BYTES": "1",  # another settings class's variable: not an error here
    }.items():
        monkeypatch.setenv(name, value)
    settings = AuthSettings()
    assert (settings.algorithm, settings.key) == ("HS256", SECRET)
    assert (settings.jwt_audience, settings.jwt_issuer, settings.jwt_leeway) == ("aud", "iss", 2.5)
    assert SECRET not in repr(settings)
    monkeypatch.setenv("IMGCLF_JWT_SECRET", "short-secret")
    with pytest.raises(ValidationError, match="32 bytes") as short:
        AuthSettings()
    assert "short-secret" not in str(short.value)


def test_a_missing_public_key_file_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGCLF_JWT_PUBLIC_KEY_FILE", str(tmp_path / "absent.pem"))
    with pytest.raises(ValidationError, match="jwt_public_key_file") as missing:
        AuthSettings()
    assert [error["type"] for error in missing.value.errors()] == ["path_not_file"]
