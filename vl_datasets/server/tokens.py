"""Bearer tokens checked the way the cloud API does (contract §1), with PyJWT."""

from __future__ import annotations

import jwt

ISSUER = "sdk"


class TokenVerifier:
    """Accepts HS256 tokens signed with ``api_secret``, header ``kid`` and claim ``sub`` equal to
    ``api_key``, ``iss`` "sdk", and ``iat``/``exp`` present and not expired."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self.api_key = api_key
        self._secret = api_secret

    def __repr__(self) -> str:
        return f"TokenVerifier(api_key={self.api_key!r})"  # never the secret

    def refusal(self, authorization: str | None) -> str | None:
        """None when the ``Authorization`` header holds a valid token, else why it is refused."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Not authenticated"
        token = token.strip()
        try:
            if jwt.get_unverified_header(token).get("kid") != self.api_key:
                return "Invalid token: unknown key id"
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            return "Token has expired"
        except jwt.InvalidTokenError as exc:
            return f"Invalid token: {exc}"
        if claims.get("sub") != self.api_key:
            return "Invalid token: subject does not match the key id"
        return None
