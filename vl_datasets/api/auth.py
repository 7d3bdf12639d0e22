"""Bearer tokens for the Visual Layer API.

Cloud credentials are an API key and secret: the client signs its own short-lived HS256 JWT
(header ``kid`` = key; claims ``sub``, ``iat``, ``exp``, ``iss="sdk"``) and renews it before it
expires. A pre-made token may be given instead; it cannot be renewed. On-prem needs no token.
The token lives only in memory: never in a repr, log, exception or file.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable

import jwt

# PyJWT >= 2.10 warns about HMAC keys under 32 bytes.
_KEY_LENGTH_WARNING = getattr(getattr(jwt, "warnings", None), "InsecureKeyLengthWarning", None)

TOKEN_LIFETIME_S = 600
RENEW_MARGIN_S = 60


class TokenProvider:
    """Hands out a valid bearer token, signing a new one when the current one nears expiry."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        token: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_key = api_key
        self._api_secret = api_secret
        self._fixed_token = token
        self._wall_clock = wall_clock
        self._token: str | None = None
        self._expires_at = 0.0
        # One lock per provider: DataLoader workers are separate processes, threads share this.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        kind = "fixed token" if self._fixed_token else f"signed for key {self._api_key!r}"
        return f"TokenProvider({kind})"

    @property
    def can_renew(self) -> bool:
        """True when a fresh token can be signed (after a 401, say)."""
        return self._api_secret is not None

    def bearer(self) -> str:
        """The current token, renewed first when fewer than RENEW_MARGIN_S seconds remain."""
        if self._fixed_token is not None:
            return self._fixed_token
        with self._lock:
            if self._token is None or self._wall_clock() >= self._expires_at - RENEW_MARGIN_S:
                self._sign()
            assert self._token is not None
            return self._token

    def handed_out(self) -> tuple[str, ...]:
        """The token given by the user, or the one signed last: what an answer may echo back."""
        with self._lock:
            return tuple(token for token in (self._fixed_token, self._token) if token)

    def invalidate(self) -> None:
        """Forget the cached token so the next ``bearer()`` signs a new one."""
        with self._lock:
            self._token = None

    def _sign(self) -> None:
        if self._api_secret is None:  # the Client never builds one so; jwt.encode would raise TypeError too
            raise TypeError("A TokenProvider without a pre-made token needs api_secret to sign one.")
        now = int(self._wall_clock())
        claims = {"sub": self._api_key, "iat": now, "exp": now + TOKEN_LIFETIME_S, "iss": "sdk"}
        headers = {"kid": self._api_key, "typ": "JWT"}
        with warnings.catch_warnings():
            # The secret's length is the platform's choice, not the user's: do not warn on every token.
            if _KEY_LENGTH_WARNING is not None:
                warnings.simplefilter("ignore", _KEY_LENGTH_WARNING)
            self._token = jwt.encode(claims, self._api_secret, algorithm="HS256", headers=headers)
        self._expires_at = now + TOKEN_LIFETIME_S

    # Locks do not pickle; a provider copied into a worker gets its own lock and signs its own token.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]
        state["_token"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
