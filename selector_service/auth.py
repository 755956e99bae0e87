"""Bearer-token authentication shared by both transports (docs/design.md, "Auth").

When `PCM_AUTH_TOKENS` is set, every call but health, readiness, metrics (and, over gRPC,
server reflection) needs `Authorization: Bearer TOKEN` (HTTP header, or gRPC metadata
`authorization`). Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from pcm_contract.errors import Unauthenticated

SCHEME = "bearer"


class TokenAuth:
    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._tokens = tuple(t.encode() for t in tokens if t)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None) -> None:
        """Raise Unauthenticated unless auth is off or `authorization` is `Bearer <a token>`."""
        if not self._tokens:
            return
        if not authorization:
            raise Unauthenticated("missing credentials: send 'Authorization: Bearer TOKEN'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != SCHEME or not token.strip():
            raise Unauthenticated("malformed credentials: expected 'Authorization: Bearer TOKEN'")
        if not self._matches(token.strip().encode()):
            raise Unauthenticated("invalid bearer token")

    def _matches(self, token: bytes) -> bool:
        # Compare with every token, without stopping at a match, so timing reveals nothing.
        found = False
        for known in self._tokens:
            found |= hmac.compare_digest(token, known)
        return found
