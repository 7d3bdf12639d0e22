"""Keep secrets out of text: URLs without their credentials, messages and log records without them.

A presigned download URL, or an images_root with a SAS token, carries its credential in the query
string, and a URL may carry ``user:password@``. These are the one place that takes them out:
``redact_url`` for a URL we show, ``redact_text`` for any text that may hold URLs (an exception's
message, a log line), and ``redact_logs_of`` for the log records of our own logger and of the
libraries we drive, whose DEBUG lines hold full request URLs.

Text is redacted in every form a URL takes on its way through them: a URL with its user info or
its query in it, a query string after a bare path (a request line), and a credential parameter
(``sig=``, ``X-Amz-Signature=``, ...) wherever it stands, its ``=`` percent-encoded too, as after
a URL is quoted into another one; and in the forms a storage SDK logs a request in: its headers
(a session token, a SigV4 Authorization's key id and signature) and a bucket that kept the
``user:password@`` of its URL.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "[redacted]"
# A URL in running text: a scheme, then anything up to a space, a quote or a bracket.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")
# A query string outside a whole URL ("GET /path?X-Amz-Signature=... HTTP/1.1"): a "?", then
# parameters, at least one with a value.
_QUERY = re.compile(r"\?[^\s'\"<>?]*=[^\s'\"<>]*")
# A parameter that holds a credential, in a query or anywhere else, "=" in any percent-encoding.
_CREDENTIAL = re.compile(
    r"(?i)\b(sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|access_token|token|api_key|apikey|access_key|secret|client_secret|password)"
    r"(=|%(?:25)*3d)[^&\s'\"<>]*"
)
# A credential a server's answer may echo back: an Authorization header's value, a JWT wherever it
# stands (three base64url parts, the first a JSON object: "eyJ"), and the elements of a storage
# service's XML error that repeat the signature, the string signed or the request it was made of.
# A value: 16 characters or more, with letters and digits ("basic setup.py", "Bearer token_expired"
# are words; the tokens this client sends are blanked exactly besides, and JWTs by their shape).
_AUTHORIZATION = re.compile(
    r"(?i)\b(bearer|basic)(\s+)(?=[A-Za-z0-9\-._~+/]*[0-9])(?=[A-Za-z0-9\-._~+/]*[A-Za-z])[A-Za-z0-9\-._~+/]{16,}=*"
)
# A storage service's credential as its SDK logs a request's headers (botocore at DEBUG): a header
# line of the canonical request ("x-amz-security-token:VALUE") or an entry of a headers dict
# ("'X-Amz-Security-Token': b'VALUE'"). These names are never words, so a colon is enough.
_HEADER_CREDENTIAL = re.compile(
    r"(?i)\b(x-amz-security-token|x-amz-credential|x-amz-signature|x-goog-credential|x-goog-signature|"
    r"x-amz-server-side-encryption-customer-key)(['\"]?:[ \t]*(?:b?['\"])?)[^\s'\"&,;]+"
)
# A SigV4 Authorization header, "AWS4-HMAC-SHA256 Credential=KEYID/20250101/us-east-1/s3/aws4_request,
# SignedHeaders=..., Signature=HEX": its access key id goes (the scope after it is no secret, and
# tells a wrong region), its Signature by _CREDENTIAL. And botocore's "Signature:\nHEX" line.
_SIGV4_KEY_ID = re.compile(r"(?i)\b(AWS4-[A-Z0-9-]+\s+Credential=)[^/\s,'\"]+")
_SIGV4_SIGNATURE = re.compile(r"(?i)\b(signature:\s*)[0-9a-f]{64}\b")
# user:password@ with no scheme before it, where a word starts: s3fs logs the bucket of
# "s3://KEY:SECRET@bucket/..." as {'Bucket': 'KEY:SECRET@bucket'}, and botocore refuses that name
# quoting it. Not "//" after the colon: what is left of a URL ("http://host/a:b@c") is no user info;
# nor a drive letter ("C:/photos@2x").
# Bounded, so that a long token with colons and no "@" is not rescanned from every start (seconds
# for a 64 KB line); and only tried where an "@" is.
_BARE_USER_INFO = re.compile(
    r"(?<![^\s'\"(\[{,=])[^\s'\"<>()\[\]{}/:@]{2,256}:(?!//)[^\s'\"<>@]{1,256}@(?=[A-Za-z0-9])"
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")
_XML_CREDENTIAL = re.compile(
    r"(?is)<((?:[A-Za-z0-9]*:)?(?:SignatureProvided|StringToSign(?:Bytes)?|CanonicalRequest(?:Bytes)?|"
    r"AWSAccessKeyId|Signature|Credential|SecurityToken|Token))>.*?</\1>"
)
# Our logger and those of the libraries that reach storage and the API: their records (and those of
# their child loggers, "fsspec.http" under "fsspec") are redacted as they are made.
DEFAULT_LOGGERS = (
    "vl_datasets",
    "fsspec",
    "aiohttp",
    "urllib3",
    "requests",
    "s3fs",
    "botocore",
    "aiobotocore",
    "gcsfs",
    "adlfs",
)


# user:password@ whose password holds a character that ends a URL's authority ("/", "?", "#", as a
# raw AWS secret key holds "/"): URL libraries then take it for the host and the path, and show it.
# A colon followed by digits up to the path is a port, not a password; "[" opens an IPv6 host, never a user.
_RAW_USER_INFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#@:\s\[]*:(?![0-9]*(?:[/?#]|$))[^@\s]*@")


def has_raw_user_info(url: str) -> bool:
    """Whether ``url`` opens with user:password@ whose password ends the authority early (holds
    "/", "?" or "#"), so that the URL's parsed host does not show it."""
    return _RAW_USER_INFO.match(url) is not None


def _without_raw_user_info(url: str) -> str:
    return _RAW_USER_INFO.sub(r"\g<scheme>", url, count=1)


def redact_url(url: str) -> str:
    """Drop the query string and any user:password: presigned URLs carry their signature there."""
    url = _without_raw_user_info(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced IPv6 bracket, say
        return _cut(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # user:password@ is a credential too
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_text(text: str) -> str:
    """``text`` with every URL's user info and query string, every credential parameter, bearer
    token, JWT and storage signature blanked."""
    text = _QUERY.sub(f"?{REDACTED}", _URL.sub(_redacted_url, text))
    text = _CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _HEADER_CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SIGV4_SIGNATURE.sub(rf"\g<1>{REDACTED}", _SIGV4_KEY_ID.sub(rf"\g<1>{REDACTED}", text))
    if "@" in text:
        text = _BARE_USER_INFO.sub(f"{REDACTED}@", text)
    text = _XML_CREDENTIAL.sub(lambda m: f"<{m.group(1)}>{REDACTED}</{m.group(1)}>", text)
    return _JWT.sub(REDACTED, _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text))


def redact_text_of(text: str, url: str) -> str:
    """``text`` (a library's message about ``url``) with every credential redacted (``redact_text``),
    then ``url``'s own wherever they are left, as written and percent-decoded: its user info, its
    query and each long value in it (a library may re-encode or reorder a query), and the parts of
    a raw password holding "/" (a bucket URL's is cut there: its bucket is "KEY:SECRE", the rest
    its path)."""
    text = redact_text(text)
    raw = _RAW_USER_INFO.match(url)
    try:
        parts = urlsplit(url)
        user_info = url[len(raw["scheme"]) : raw.end() - 1] if raw else parts.netloc.rpartition("@")[0]
        query = parts.query
    except ValueError:  # an unbalanced IPv6 bracket: what redact_text leaves is all there is to go by
        return text
    values = [value for _, _, value in (part.partition("=") for part in query.split("&"))]
    password = user_info.partition(":")[2]  # without one, the user name is no secret (and may be "u")
    pieces = [
        *(value for value in values if len(value) >= 16),  # signatures, not "sv=2024"
        *(piece for piece in re.split(r"[/?#]", user_info if password else "") if len(piece) >= 6),
    ]
    # Blanked wherever they stand: only what is long enough not to be a word ("u", "a=1" would
    # blank letters all over the message).
    whole = [secret for secret in (query, password) if len(secret) >= 4]
    secrets = {form for secret in (*whole, *pieces) if secret for form in (secret, unquote(secret))}
    for secret in sorted(secrets, key=len, reverse=True):  # the whole before a piece of it
        text = text.replace(secret, REDACTED)
    return text


def redact_value(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """``value`` (a server's JSON answer: text, numbers, lists, objects) with ``redact_text``
    applied to every string in it, keys included, and each of ``secrets`` blanked wherever it stands."""
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REDACTED)
        return redact_text(value)
    if isinstance(value, list):
        return [redact_value(item, secrets) for item in value]
    if isinstance(value, dict):
        return {redact_value(key, secrets): redact_value(item, secrets) for key, item in value.items()}
    return value


def _redacted_url(match: re.Match) -> str:
    url = _without_raw_user_info(match.group())
    if url.endswith("?"):  # already redacted: the marker ends the match ("[" is not in a URL here)
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
    except ValueError:  # an unbalanced IPv6 bracket, say
        return _cut(url) + (f"?{REDACTED}" if "?" in url else "")
    query = REDACTED if parts.query else ""
    fragment = REDACTED if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _cut(url: str) -> str:
    """A URL no parser takes, without its query, its fragment and anything up to its last "@"."""
    scheme, separator, rest = url.split("?", 1)[0].split("#", 1)[0].partition("://")
    return f"{scheme}{separator}{rest.rsplit('@', 1)[-1]}"


class _RedactingFactory:
    """A log record factory that redacts the records of the loggers named (and their children) as
    they are made, before any filter or handler sees them: the final message (``msg % args``, or a
    message that is no string at all) and the traceback text of ``exc_info``."""

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous
        self.prefixes: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if self.redacts(record.name):
            _redact_record(record)
        return record

    def redacts(self, name: str) -> bool:
        return any(name == prefix or name.startswith(prefix + ".") for prefix in self.prefixes)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # msg and args that do not fit: logging reports it; it must not show them
        message = f"{record.msg!s} {record.args!r}"
    record.msg, record.args = redact_text(message), ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


_install_lock = threading.Lock()


def redact_logs_of(*logger_names: str) -> None:
    """Redact every record of ``logger_names`` (and of ``DEFAULT_LOGGERS``), children included.

    A record factory rather than a logger filter: a filter on "fsspec" never sees the records of
    "fsspec.http", and one on a handler would have to be on every handler an application adds.
    The factory that was in place keeps making the records; this one only rewrites their text.
    """
    with _install_lock:
        factory = logging.getLogRecordFactory()
        if not isinstance(factory, _RedactingFactory):
            factory = _RedactingFactory(factory)
            logging.setLogRecordFactory(factory)
        factory.prefixes.update((*DEFAULT_LOGGERS, *logger_names))
