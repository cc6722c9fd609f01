"""JWT bearer authentication for the service's endpoints (an ASGI middleware).

Environment:
    IMGCLF_AUTH             jwt (default) | disabled   (auth is off only when explicitly disabled)
    IMGCLF_JWT_SECRET       HS256 shared secret, or
    IMGCLF_JWT_PUBLIC_KEY   RS256 public key (PEM text), or IMGCLF_JWT_PUBLIC_KEY_FILE (a path)
    IMGCLF_JWT_AUDIENCE     required `aud` (default: imgclf)
    IMGCLF_JWT_ISSUER       required `iss`, when set
    IMGCLF_JWT_LEEWAY       seconds of clock skew allowed on exp/nbf (default 0)

Every token must carry `aud` and a numeric `exp`, and live at most `max_lifetime` seconds
(serve.max_token_lifetime_seconds: `exp - iat`, or `exp - now` without `iat`), so a leaked token
stays usable for a bounded time; exactly one algorithm is accepted (no alg confusion). Health and
metrics paths, the API docs page (/docs) and the OpenAPI document stay open; every other path
needs exactly one `Authorization` header with a valid token: missing, repeated, malformed, badly
signed, expired, too long-lived or wrong-audience tokens get a 401 JSON answer
(`ErrorCode.UNAUTHORIZED`). The verified token's subject and scopes travel with the request
(caller.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from starlette.responses import JSONResponse

from imgclf.serving.app import BENTOML_PROBES, DOCS_OPEN_PATHS
from imgclf.serving.caller import Caller, with_caller
from imgclf.serving.errors import ErrorCode, error_json
from imgclf.serving.settings import AuthSettings

# BentoML's health and metrics routes; the API docs page, its assets and the OpenAPI document
# (a browser cannot send a token to load them, and they hold no secret). Exact paths only.
OPEN_PATHS = BENTOML_PROBES | DOCS_OPEN_PATHS


class AuthError(Exception):
    """Why a request is not authenticated (safe to show the client)."""


@dataclass(frozen=True)
class JWTVerifier:
    key: str
    algorithm: str  # HS256 or RS256
    audience: str
    issuer: str | None = None
    leeway: float = 0.0
    max_lifetime: float | None = None  # seconds; None: any

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or AuthError."""
        claims = self._decoded(token)
        self._check_lifetime(claims)
        return claims

    def _decoded(self, token: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "aud"] + (["iss"] if self.issuer else [])},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token audience not accepted") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({type(exc).__name__})") from exc

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """`exp` (and `iat`, when present) must be numbers (PyJWT takes anything int() takes,
        a string of digits too), and the token may live at most `max_lifetime` seconds."""
        for name in ("exp", "iat"):
            value = claims.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AuthError(f"token `{name}` is not a number")
        if self.max_lifetime is None:
            return
        lifetime = claims["exp"] - claims.get("iat", time.time())
        if lifetime > self.max_lifetime + self.leeway:
            raise AuthError(
                f"token lifetime {lifetime:.0f} s over the limit of {self.max_lifetime:g} s"
            )

    def verify_header(self, authorization: str | None) -> dict[str, Any]:
        if not authorization:
            raise AuthError("missing bearer token (Authorization: Bearer <JWT>)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("expected an Authorization: Bearer <JWT> header")
        return self.verify(token.strip())


def verifier_from_env(max_lifetime: float | None = None) -> JWTVerifier | None:
    """The configured verifier (AuthSettings from the environment; tokens living at most
    `max_lifetime` seconds), or None when IMGCLF_AUTH=disabled. Raises ValueError when auth is
    on but no key is configured: the service refuses to start open by accident."""
    settings = AuthSettings()
    if settings.auth == "disabled":
        return None
    return JWTVerifier(
        key=settings.key,
        algorithm=settings.algorithm,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway=settings.jwt_leeway,
        max_lifetime=max_lifetime,
    )


class JWTAuthMiddleware:
    """Pure ASGI middleware: 401 unless the request carries a valid bearer token.

    `verifier_factory` is called once, when the middleware stack is built in the worker, so a
    misconfiguration fails the start-up instead of the first request.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        verifier_factory: Callable[[], JWTVerifier | None] = verifier_from_env,
        open_paths: Collection[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.verifier = verifier_factory()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        verifier = self.verifier
        if (
            verifier is None
            or scope["type"] not in ("http", "websocket")
            or scope.get("method") == "OPTIONS"
            or scope.get("path", "").rstrip("/") in self.open_paths
        ):
            await self.app(scope, receive, send)
            return
        try:
            caller = _proven_caller(verifier, scope["headers"])
        except AuthError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _unauthorized(scope, receive, send, str(exc))
            return
        with_caller(scope, caller)
        await self.app(scope, receive, send)


def _proven_caller(verifier: JWTVerifier, headers: list[tuple[bytes, bytes]]) -> Caller:
    """The caller the request's one Authorization header proves, or AuthError. Two headers are
    refused: proxies and frameworks disagree on which one counts."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == b"authorization"]
    if len(values) > 1:
        raise AuthError(f"{len(values)} Authorization headers: send one")
    claims = verifier.verify_header(values[0] if values else None)
    try:
        return Caller.from_claims(claims)
    except ValueError as exc:
        raise AuthError(f"invalid token ({exc})") from exc


async def _unauthorized(scope: dict[str, Any], receive: Callable, send: Callable, why: str) -> None:
    response = JSONResponse(
        error_json(ErrorCode.UNAUTHORIZED, why),
        ErrorCode.UNAUTHORIZED.status,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    await response(scope, receive, send)
