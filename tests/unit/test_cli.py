"""The `imgclf` command's verbs that need no model and no server: help, tokens, monitor's exit
status, a bad params.yaml. The registry verbs: tests/integration/test_cli_registry.py; predict:
tests/model/test_predict.py; monitor on a real log: tests/integration/test_monitor.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jwt
import pytest
import yaml
from click.testing import CliRunner

from imgclf.cli import cli
from imgclf.config import PARAMS_FILE, load_params
from imgclf.serving.auth import AuthError, JWTVerifier, verifier_from_env

SECRET = "s" * 32
VERBS = ("predict", "select", "promote", "rollback", "history", "monitor", "bento", "token")
# Every auth variable, so the caller's own environment cannot leak in (None: unset).
AUTH_ENV = {
    "IMGCLF_AUTH": None,
    "IMGCLF_JWT_SECRET": SECRET,
    "IMGCLF_JWT_PUBLIC_KEY": None,
    "IMGCLF_JWT_PUBLIC_KEY_FILE": None,
    "IMGCLF_JWT_AUDIENCE": None,
    "IMGCLF_JWT_ISSUER": None,
    "IMGCLF_JWT_LEEWAY": None,
}


def invoke(*args: str, **env: str | None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={**AUTH_ENV, **env})
    return result.exit_code, result.output


def service_verifier(monkeypatch: pytest.MonkeyPatch, **env: str) -> JWTVerifier | None:
    """The service's verifier under AUTH_ENV updated with `env`."""
    for name, value in {**AUTH_ENV, **env}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return verifier_from_env()


def test_help_lists_every_verb() -> None:
    code, output = invoke("--help")
    listed = {line.split()[0] for line in output.split("Commands:")[1].strip().splitlines()}
    assert code == 0 and listed == set(VERBS), output


@pytest.mark.parametrize(
    ("candidate", "error"),
    [
        ("{arch: resnet9000}", "Error: arch"),
        ("efficientnet_lite2", "Error: --candidate 'efficientnet_lite2' is not a mapping"),
        ("{arch: [", "Error: while parsing a flow"),
    ],
)
def test_select_refuses_a_bad_candidate_in_one_line(candidate: str, error: str) -> None:
    code, output = invoke("select", "--candidate", candidate)
    assert code == 1 and output.startswith(error) and output.count("\n") == 1, output


def test_token_is_accepted_by_the_service_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = invoke("token", "--subject", "alice", "--ttl", "60")
    assert code == 0
    claims = service_verifier(monkeypatch).verify(output.strip())
    assert claims["sub"] == "alice" and claims["aud"] == "imgclf"
    assert claims["exp"] - claims["iat"] == 60


def test_token_scopes_and_its_lifetime_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = invoke("token", "--scope", "feedback:any", "--scope", "extra")
    assert code == 0
    assert service_verifier(monkeypatch).verify(output.strip())["scope"] == "feedback:any extra"
    longest = load_params().serve.max_token_lifetime_seconds
    code, output = invoke("token", "--ttl", str(longest + 1))
    assert code == 1 and f"over serve.max_token_lifetime_seconds {longest}" in output


def test_token_is_refused_with_another_secret_or_audience(monkeypatch: pytest.MonkeyPatch) -> None:
    token = invoke("token", "--audience", "other")[1].strip()
    with pytest.raises(AuthError, match="audience"):
        service_verifier(monkeypatch).verify(token)
    other_secret = service_verifier(
        monkeypatch, IMGCLF_JWT_SECRET="t" * 32, IMGCLF_JWT_AUDIENCE="other"
    )
    with pytest.raises(AuthError, match="InvalidSignatureError"):
        other_secret.verify(token)


def test_token_follows_the_configured_audience_and_issuer(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"IMGCLF_JWT_AUDIENCE": "api", "IMGCLF_JWT_ISSUER": "https://issuer"}
    token = invoke("token", **env)[1].strip()
    claims = service_verifier(monkeypatch, **env).verify(token)
    assert (claims["aud"], claims["iss"]) == ("api", "https://issuer")


def test_token_needs_the_shared_secret(tmp_path: Path) -> None:
    (tmp_path / "pub.pem").write_text("PEM")
    code, output = invoke(
        "token", IMGCLF_JWT_SECRET=None, IMGCLF_JWT_PUBLIC_KEY_FILE=str(tmp_path / "pub.pem")
    )
    assert code == 1 and "IMGCLF_JWT_SECRET" in output
    code, output = invoke("token", IMGCLF_JWT_SECRET="tiny-secret-value")
    assert code == 1 and "32 bytes" in output and "tiny-secret-value" not in output
    assert output.count("\n") == 1  # one line, not pydantic's report
    assert jwt.get_unverified_header(invoke("token")[1].strip())["alg"] == "HS256"


def test_monitor_without_a_reference_is_bad_input(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS_FILE, params)  # a project folder with no pipeline outputs yet
    code, output = invoke("--params", str(params), "monitor", "--db", "sqlite:///none.db")
    assert code == 2 and str(tmp_path / "artifacts" / "split" / "test.tsv") in output


def test_monitor_reports_a_bad_setting_on_one_line_naming_the_key() -> None:
    code, output = invoke("monitor", IMGCLF_SERVE_POLL_SECONDS="-1")
    assert (code, output) == (1, "Error: poll_seconds: Input should be greater than 0\n")


def test_a_bad_params_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    params = yaml.safe_load(PARAMS_FILE.read_text())
    params["evaluate"]["threshold"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code, output = invoke("--params", str(tmp_path / "params.yaml"), "history")
    assert (code, output) == (1, "Error: evaluate.threshold: Input should be less than 1\n")


def test_a_params_file_that_is_not_yaml_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("serve: [unclosed\n")
    code, output = invoke("--params", str(tmp_path / "params.yaml"), "history")
    assert code == 1 and output.startswith("Error: ") and output.count("\n") == 1, output


def test_tensorflow_start_up_lines_are_off_unless_the_user_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    invoke("history", "--help")
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    invoke("history", "--help")
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
