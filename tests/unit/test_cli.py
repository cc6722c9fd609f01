"""The `imgclf` command's verbs that need no model and no server: help, tokens, monitor's exit
status. The registry verbs: tests/integration/test_cli.py; predict: tests/model/test_predict.py;
monitor on a real log: tests/integration/test_monitor.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from imgclf.cli import cli
from imgclf.config import PARAMS_FILE
from imgclf.serving.auth import AuthError, verifier_from_env

SECRET = "s" * 32
VERBS = ("predict", "promote", "rollback", "history", "monitor", "bento", "token")
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


def test_help_lists_every_verb() -> None:
    code, output = invoke("--help")
    listed = {line.split()[0] for line in output.split("Commands:")[1].strip().splitlines()}
    assert code == 0 and listed == set(VERBS), output


def test_token_is_accepted_by_the_service_verifier() -> None:
    code, output = invoke("token", "--subject", "alice", "--ttl", "60")
    assert code == 0
    claims = verifier_from_env({"IMGCLF_JWT_SECRET": SECRET}).verify(output.strip())
    assert claims["sub"] == "alice" and claims["aud"] == "imgclf"
    assert claims["exp"] - claims["iat"] == 60


def test_token_is_refused_with_another_secret_or_audience() -> None:
    token = invoke("token", "--audience", "other")[1].strip()
    with pytest.raises(AuthError, match="audience"):
        verifier_from_env({"IMGCLF_JWT_SECRET": SECRET}).verify(token)
    with pytest.raises(AuthError, match="InvalidSignatureError"):
        verifier_from_env({"IMGCLF_JWT_SECRET": "t" * 32, "IMGCLF_JWT_AUDIENCE": "other"}).verify(
            token
        )


def test_token_follows_the_configured_audience_and_issuer() -> None:
    env = {"IMGCLF_JWT_AUDIENCE": "api", "IMGCLF_JWT_ISSUER": "https://issuer"}
    token = invoke("token", **env)[1].strip()
    claims = verifier_from_env({"IMGCLF_JWT_SECRET": SECRET, **env}).verify(token)
    assert (claims["aud"], claims["iss"]) == ("api", "https://issuer")


def test_token_needs_the_shared_secret(tmp_path: Path) -> None:
    (tmp_path / "pub.pem").write_text("PEM")
    code, output = invoke(
        "token", IMGCLF_JWT_SECRET=None, IMGCLF_JWT_PUBLIC_KEY_FILE=str(tmp_path / "pub.pem")
    )
    assert code == 1 and "IMGCLF_JWT_SECRET" in output
    code, output = invoke("token", IMGCLF_JWT_SECRET="tiny-secret-value")
    assert code == 1 and "32 bytes" in output and "tiny-secret-value" not in output
    assert jwt.get_unverified_header(invoke("token")[1].strip())["alg"] == "HS256"


def test_monitor_without_a_reference_is_bad_input(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS_FILE, params)  # a project folder with no pipeline outputs yet
    code, output = invoke("--params", str(params), "monitor", "--db", "sqlite:///none.db")
    assert code == 2 and str(tmp_path / "artifacts" / "split" / "test.tsv") in output
