"""Bearer-token rules beyond signature, audience and expiry (imgclf/serving/auth.py): one
`Authorization` header only, `exp` (and `iat`) as numbers, a bounded lifetime; and the caller a
verified token describes (imgclf/serving/caller.py). The live service applies them too
(tests/integration/test_service.py)."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest

from imgclf.serving.auth import AuthError, JWTAuthMiddleware, JWTVerifier, verifier_from_env
from imgclf.serving.caller import ANYONE, FEEDBACK_ANY, Caller, caller_of

SECRET = "s" * 32
LIFETIME = 3600


def verifier(max_lifetime: float | None = LIFETIME) -> JWTVerifier:
    return JWTVerifier(key=SECRET, algorithm="HS256", audience="imgclf", max_lifetime=max_lifetime)


def signed(**claims: object) -> str:
    return jwt.encode({"aud": "imgclf", **claims}, SECRET, "HS256")


@pytest.mark.parametrize(
    "claims",
    [
        lambda now: {"exp": str(int(now) + 60)},  # PyJWT itself takes any int()-able value
        lambda now: {"exp": f"{now + 60:.3f}"},
        lambda now: {"exp": now + 60, "iat": str(int(now))},
    ],
    ids=["exp digits", "exp decimal string", "iat digits"],
)
def test_exp_and_iat_must_be_numbers(claims) -> None:
    with pytest.raises(AuthError, match=r"not a number|invalid token"):
        verifier().verify(signed(**claims(time.time())))


def test_a_token_may_live_at_most_the_limit() -> None:
    now = time.time()
    assert verifier().verify(signed(iat=now - 100, exp=now - 100 + LIFETIME))
    assert verifier().verify(signed(exp=now + LIFETIME - 60))  # no iat: from now
    for claims in ({"iat": now - 100, "exp": now + LIFETIME}, {"exp": now + LIFETIME + 60}):
        with pytest.raises(AuthError, match="lifetime"):
            verifier().verify(signed(**claims))
    assert verifier(max_lifetime=None).verify(signed(exp=now + 100 * LIFETIME))


def test_the_service_verifier_carries_the_lifetime_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLF_AUTH", "jwt")
    monkeypatch.setenv("IMGCLF_JWT_SECRET", SECRET)
    monkeypatch.delenv("IMGCLF_JWT_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("IMGCLF_JWT_PUBLIC_KEY_FILE", raising=False)
    configured = verifier_from_env(LIFETIME)
    assert configured is not None and configured.max_lifetime == LIFETIME


def call(headers: list[tuple[bytes, bytes]]) -> tuple[int, dict, Caller | None]:
    """POST /predict through the middleware: the status, the error body, the caller passed on."""
    seen: list[Caller] = []

    async def app(scope, receive, send) -> None:
        seen.append(caller_of(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    middleware = JWTAuthMiddleware(app, verifier_factory=verifier)
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    asyncio.run(middleware(scope, receive, send))
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    return sent[0]["status"], body, seen[0] if seen else None


def bearer(token: str) -> tuple[bytes, bytes]:
    return b"authorization", f"Bearer {token}".encode()


def test_two_authorization_headers_are_refused() -> None:
    good = signed(exp=time.time() + 60, sub="alice")
    assert call([bearer(good)])[0] == 200
    for second in (good, "not.a.jwt"):
        status, body, passed = call([bearer(good), (b"Authorization", f"Bearer {second}".encode())])
        assert (status, body["error"], passed) == (401, "unauthorized", None)
        assert "2 Authorization headers" in body["detail"]


def test_the_caller_is_the_tokens_subject_and_scopes() -> None:
    exp = time.time() + 60
    _, _, alice = call([bearer(signed(exp=exp, sub="alice"))])
    assert alice == Caller("alice", frozenset()) and not alice.labels_any
    _, _, team = call([bearer(signed(exp=exp, sub="team", scope=f"read {FEEDBACK_ANY}"))])
    assert team.subject == "team" and team.labels_any
    _, _, nobody = call([bearer(signed(exp=exp))])
    assert nobody == Caller(None, frozenset())
    status, body, _ = call([bearer(signed(exp=exp, scope=["feedback:any"]))])
    assert (status, body["error"]) == (401, "unauthorized")  # scope is a string, as in OAuth 2.0


def test_without_auth_anyone_may_label() -> None:
    assert caller_of({"type": "http"}) == ANYONE and ANYONE.labels_any
