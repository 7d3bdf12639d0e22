"""Resolve settings once, when an object is built: explicit argument, then environment, then default.

Nothing here reads the environment at import time, so tests and long-lived processes can change
``os.environ`` (or pass ``env=``) without patching module constants.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .redaction import has_raw_user_info, redact_url

DEFAULT_API_URL = "https://app.visual-layer.com"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ClientSettings:
    """Where the API is and how to authenticate. The secret and token are hidden from ``repr``."""

    base_url: str
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def on_prem(self) -> bool:
        """True when no credentials are set: requests carry no Authorization header."""
        return self.token is None and self.api_secret is None


def resolve_client_settings(
    base_url: str | None = None,
    *,
    api_key: str | None = None,
    api_secret: str | None = None,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ClientSettings:
    """Build the client's settings from arguments, then ``VL_API_*`` variables, then defaults."""
    env = os.environ if env is None else env
    url = normalize_base_url(base_url or env.get("VL_API_URL") or DEFAULT_API_URL)
    key = api_key or env.get("VL_API_KEY") or None
    secret = api_secret or env.get("VL_API_SECRET") or None
    tok = token or env.get("VL_API_TOKEN") or None
    if token is not None:  # an explicit token wins over signing credentials from the environment
        key, secret = api_key, api_secret
    if tok is None and (key is None) != (secret is None):
        missing = "api_secret (VL_API_SECRET)" if secret is None else "api_key (VL_API_KEY)"
        raise ConfigurationError(f"Signing a token needs both an API key and secret; {missing} is not set.")
    return ClientSettings(base_url=url, api_key=key, api_secret=secret, token=tok)


def normalize_base_url(url: str) -> str:
    """Accept ``host:port``, ``host.domain``, ``http(s)://host[:port]`` or a URL ending in ``/api/v1``;
    return the origin. A bare word (no scheme, dot or port; not localhost) is refused: a one-word
    host is written with its scheme, ``https://word``."""
    url = url.strip().rstrip("/")
    given, schemeless = url, "://" not in url
    if schemeless:
        url = "http://" + url if _looks_local(url) else "https://" + url
    # Credentials would show in the client's repr, key the cache (a new password, a new cache) and
    # be written into its manifests; the API authenticates by key and secret, or a token. A raw
    # password holding "/" (as AWS secret keys do) ends the parsed host early: looked for first.
    if has_raw_user_info(url):
        raise _holds_credentials(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # read to check: a bad port raises here, not at every request after
    except ValueError:  # an unbalanced IPv6 bracket, a port that is no number or out of range
        raise _invalid_url(url) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid_url(url)
    if "@" in parts.netloc:
        raise _holds_credentials(url)
    if schemeless and not _names_a_host(parts.hostname, port):
        raise ConfigurationError(
            f"Invalid Visual Layer API URL {redact_url(given)!r}: no scheme, dot or port, so no host; expected "
            f"http(s)://host[:port], host.domain or host:port (https://{parts.hostname} for a host of that name)."
        )
    path = parts.path
    if path.endswith("/api/v1"):
        path = path[: -len("/api/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _holds_credentials(url: str) -> ConfigurationError:
    return ConfigurationError(
        f"The Visual Layer API URL {redact_url(url)!r} holds credentials (user:password@): "
        "pass api_key and api_secret, or token, instead."
    )


def _invalid_url(url: str) -> ConfigurationError:
    return ConfigurationError(f"Invalid Visual Layer API URL {redact_url(url)!r}: expected http(s)://host[:port].")


def _names_a_host(hostname: str, port: int | None) -> bool:
    """Whether a value given without a scheme names a host: a domain or IPv4 address (a dot), an
    IPv6 address (a colon), a port, or localhost. A lone word (a mistyped flag's value) would
    become https://word and fail only after the client's retries, as if the network were down."""
    return port is not None or hostname == "localhost" or "." in hostname or ":" in hostname


def _looks_local(host: str) -> bool:
    return host.startswith(("localhost", "127.", "[::1]", "0.0.0.0"))


def env_flag(name: str, env: Mapping[str, str] | None = None) -> bool | None:
    """Read a boolean environment variable; None when unset. Rejects values it cannot read."""
    env = os.environ if env is None else env
    raw = env.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off.")


def env_number(name: str, value: float | None, default: float, env: Mapping[str, str] | None = None) -> float:
    """``value`` if given, else the number in environment variable ``name``, else ``default``."""
    if value is not None:
        return value
    env = os.environ if env is None else env
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        number = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number.") from None
    if not math.isfinite(number):  # "inf" and "nan" parse, then break a socket's timeout or a count
        raise ConfigurationError(f"{name}={raw!r} is not a finite number.")
    return number


def check_seconds(name: str, seconds: float | None) -> None:
    """Refuse anything but a number, or None (no bound), as the bound ``name`` of a wait: a NaN
    above all. Every comparison with NaN is false, so a deadline of NaN would never pass: the wait
    it bounds would never end."""
    if seconds is None:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or math.isnan(seconds):
        raise ConfigurationError(f"{name} must be a number of seconds or None, got {seconds!r}.")


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> str:
    """Cache root: argument, then ``VL_DATASETS_CACHE``, then the user cache folder.

    May be an fsspec URL (``s3://bucket/prefix``); local paths come back absolute. A local path
    that is a file, or lies under one, raises ``ConfigurationError`` naming the setting.
    """
    env = os.environ if env is None else env
    if cache_dir is not None and not os.fspath(cache_dir).strip():  # not the default: that is another folder
        raise ConfigurationError("cache_dir is empty: give a folder or URL, or leave it unset for the default.")
    chosen = cache_dir if cache_dir is not None else env.get("VL_DATASETS_CACHE")
    setting = "cache_dir" if cache_dir is not None else "VL_DATASETS_CACHE"
    if not chosen:
        base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        chosen, setting = str(Path(base) / "vl_datasets"), "The default cache folder"
    chosen = os.fspath(chosen)
    if is_remote(chosen):
        return chosen.rstrip("/")
    root = local_folder(setting, chosen)
    _check_cache_root(root, setting)
    return str(root)


def local_folder(setting: str, path: str | os.PathLike) -> Path:
    """``path`` (a local path, ``~`` expanded) made absolute; ``ConfigurationError`` naming
    ``setting`` when it is empty or its ``~user`` names no home folder here."""
    text = os.fspath(path)
    if not text.strip():  # "" would be the current folder, whatever that is when a worker reads
        raise ConfigurationError(f"{setting} is empty: give a folder.")
    try:
        return Path(text).expanduser().resolve()
    except RuntimeError:  # Path.expanduser: "~nouser/..." with no such user
        raise ConfigurationError(f"{setting} {text!r} starts with a ~user with no home folder here.") from None


def _check_cache_root(root: Path, setting: str) -> None:
    """Refuse a cache root that is not a folder, or cannot become one because a file lies in its
    path. Found here, the error names the setting; found by the cache's first ``mkdir``, it would
    be a bare OSError on a path deep inside the root."""
    for folder in (root, *root.parents):
        if not os.path.exists(folder):  # False, not an error, where the path cannot be looked at
            continue
        if os.path.isdir(folder):
            return
        where = "" if folder == root else f" lies under {folder}, which"
        hint = "; set cache_dir or VL_DATASETS_CACHE to another" if setting.startswith("The default") else ""
        raise ConfigurationError(f"{setting} {root}{where} is not a folder{hint}.")


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells), at least one."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://bucket/prefix``) rather than a local path.

    The one place that decides: the cache root, a mirror, and an image root all ask here.
    """
    return "://" in os.fspath(location)


_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"500M"``, ``"20G"``, ``"1.5T"``, ``"1024"`` -> bytes (binary units).

    Here rather than in the CLI, so the loading side (``image_cache="50G"``) reads sizes the way
    ``vl-datasets cache prune --max-size`` does without importing the CLI.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([BKMGT]?)(?:I?B)?\s*", str(text).upper())
    if match is None:
        raise ConfigurationError(f"{text!r} is not a size such as 500M or 20G")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def progress_enabled(progress: bool | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Progress bars: argument, then ``VL_DATASETS_PROGRESS``, else on."""
    if progress is not None:
        return progress
    flag = env_flag("VL_DATASETS_PROGRESS", env)
    return True if flag is None else flag
