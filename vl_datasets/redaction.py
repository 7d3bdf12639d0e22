"""Keep secrets out of text: URLs without their signatures, log records without query strings.

A presigned download URL, or an images_root with a SAS token, carries its credential in the query
string (and sometimes ``user:password@``); these are the one place that takes them out, for our
messages and for the DEBUG lines of the HTTP libraries we drive.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """Drop the query string and any user:password: presigned URLs carry their signature there."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # user:password@ is a credential too
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _RedactQueryStrings(logging.Filter):
    """Blanks the query string of every text argument of a record before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_query(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = _without_query(record.msg)
        return True


def _without_query(text: str) -> str:
    return text.split("?", 1)[0] + "?<redacted>" if "?" in text else text


def redact_logs_of(*logger_names: str) -> None:
    """Install the filter on third-party loggers that write request URLs (urllib3, fsspec's HTTP)."""
    for name in logger_names:
        target = logging.getLogger(name)
        if not any(isinstance(f, _RedactQueryStrings) for f in target.filters):
            target.addFilter(_RedactQueryStrings())
