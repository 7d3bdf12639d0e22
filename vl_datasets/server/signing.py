"""Presigned URLs, like S3's: an HMAC over path and expiry, with a key that never leaves the process."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from urllib.parse import urlencode

EXPIRED = "Request has expired"
BAD_SIGNATURE = "The request signature we calculated does not match the signature you provided."


class Signer:
    """Signs and checks storage paths. A fresh random key per service: URLs die with it."""

    def __init__(self, ttl_s: float, key: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._key = key if key is not None else secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"Signer(ttl_s={self.ttl_s})"

    def _signature(self, path: str, expires: str) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def presign(self, base_url: str, path: str, *, expired: bool = False) -> str:
        """``base_url + path`` with ``X-Expires`` and ``X-Signature``; ``expired`` signs it already dead."""
        now = int(time.time())
        expires = str(now - 60 if expired else now + int(self.ttl_s))
        return f"{base_url}{path}?{urlencode({'X-Expires': expires, 'X-Signature': self._signature(path, expires)})}"

    def refusal(self, path: str, query: Mapping[str, str]) -> str | None:
        """None when the signed URL is valid now, else why it is refused (S3's wording)."""
        expires, signature = query.get("X-Expires", ""), query.get("X-Signature", "")
        expected = self._signature(path, expires)
        # Bytes on both sides: compare_digest refuses non-ASCII str, and the query is the client's.
        if not expires.isdigit() or not hmac.compare_digest(signature.encode(), expected.encode()):
            return BAD_SIGNATURE
        if int(expires) < time.time():
            return EXPIRED
        return None
