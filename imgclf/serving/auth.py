"""JWT bearer authentication for the service's endpoints (an ASGI middleware).

Environment:
    IMGCLF_AUTH             jwt (default) | disabled   (auth is off only when explicitly disabled)
    IMGCLF_JWT_SECRET       HS256 shared secret, or
    IMGCLF_JWT_PUBLIC_KEY   RS256 public key (PEM text), or IMGCLF_JWT_PUBLIC_KEY_FILE (a path)
    IMGCLF_JWT_AUDIENCE     required `aud` (default: imgclf)
    IMGCLF_JWT_ISSUER       required `iss`, when set
    IMGCLF_JWT_LEEWAY       seconds of clock skew allowed on exp/nbf (default 0)

Every token must carry `exp` and `aud`; exactly one algorithm is accepted (no alg confusion).
Health and metrics paths, the API docs page (/docs) and the OpenAPI document stay open; every
other path needs a valid token: missing, malformed, badly signed, expired or wrong-audience tokens
get a 401 JSON answer (`ErrorCode.UNAUTHORIZED`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import jwt
from starlette.responses import JSONResponse

from imgclf.serving.app import BENTOML_PROBES, DOCS_OPEN_PATHS
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

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or AuthError."""
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

    def verify_header(self, authorization: str | None) -> dict[str, Any]:
        if not authorization:
            raise AuthError("missing bearer token (Authorization: Bearer <JWT>)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("expected an Authorization: Bearer <JWT> header")
        return self.verify(token.strip())


def verifier_from_env() -> JWTVerifier | None:
    """The configured verifier (AuthSettings from the environment), or None when
    IMGCLF_AUTH=disabled. Raises ValueError when auth is on but no key is configured: the service
    refuses to start open by accident."""
    settings = AuthSettings()
    if settings.auth == "disabled":
        return None
    return JWTVerifier(
        key=settings.key,
        algorithm=settings.algorithm,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway=settings.jwt_leeway,
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
        if (
            self.verifier is None
            or scope["type"] not in ("http", "websocket")
            or scope.get("method") == "OPTIONS"
            or scope.get("path", "").rstrip("/") in self.open_paths
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            claims = self.verifier.verify_header(headers.get("authorization"))
        except AuthError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _unauthorized(scope, receive, send, str(exc))
            return
        scope.setdefault("state", {})["jwt_claims"] = claims
        await self.app(scope, receive, send)


async def _unauthorized(scope: dict[str, Any], receive: Callable, send: Callable, why: str) -> None:
    response = JSONResponse(
        error_json(ErrorCode.UNAUTHORIZED, why),
        ErrorCode.UNAUTHORIZED.status,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    await response(scope, receive, send)
