"""Who sent a request: the subject (`sub`) of its verified bearer token and its scopes.

auth.py puts the caller into the ASGI scope once the token is verified; the routes read it back
with `caller_of`. Predictions are logged with their caller's subject, and feedback on a
prediction is taken from that same subject only, unless the token carries the FEEDBACK_ANY scope
(a labelling team). With auth disabled there is no caller: no identity to keep apart, so anyone
may label anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FEEDBACK_ANY = "feedback:any"  # scope: label any subject's predictions
_SCOPE_KEY = "imgclf.caller"  # in the ASGI scope's "state"


@dataclass(frozen=True)
class Caller:
    subject: str | None  # the token's `sub`; None: the token names none
    scopes: frozenset[str]  # the token's `scope` claim, space-separated as in OAuth 2.0

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Caller:
        """The caller a verified token's claims describe; ValueError for a `scope` claim that
        is not a string (PyJWT itself checks that `sub` is one)."""
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise ValueError("the `scope` claim is not a space-separated string")
        return cls(claims.get("sub"), frozenset(scope.split()))

    @property
    def labels_any(self) -> bool:
        return FEEDBACK_ANY in self.scopes


ANYONE = Caller(None, frozenset({FEEDBACK_ANY}))  # auth disabled


def with_caller(scope: dict[str, Any], caller: Caller) -> None:
    scope.setdefault("state", {})[_SCOPE_KEY] = caller


def caller_of(scope: Mapping[str, Any]) -> Caller:
    """The request's caller; ANYONE when no token was checked (auth disabled)."""
    return scope.get("state", {}).get(_SCOPE_KEY, ANYONE)
