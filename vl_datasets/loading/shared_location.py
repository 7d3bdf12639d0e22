"""A folder on any fsspec filesystem that files are published to whole: a shared store's home.

Object stores (S3, GCS, Azure, memory) make an object visible only once its upload is complete, so
one put is already whole. A local or mounted folder is written to a temporary name and renamed. A
build killed in an upload thus leaves no file a reader could take for a whole one.

The URL is shown without its credentials (``redact_url``), storage options never at all: both stay
out of every repr, log line and error message.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..cache.store import CacheStore, LocalExport
from ..config import is_remote
from ..errors import ConfigurationError, PreparedStoreError
from ..redaction import redact_logs_of, redact_text, redact_url
from .prepared import KIND, StoreSettings


class SharedLocation:
    """The folder ``url`` (``storage_options`` for its fsspec filesystem); pickles without a live filesystem."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.display = redact_url(self.url)
        self._options = dict(storage_options or {})
        self._fs: Any = None
        self._base = ""
        redact_logs_of()  # fsspec's and botocore's DEBUG lines hold full URLs

    def __repr__(self) -> str:
        return f"SharedLocation({self.display!r})"  # never the options: they may hold keys

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None, "_base": ""}  # a live filesystem stays in its process

    def where(self, name: str) -> str:
        """``name``'s place, as shown to people."""
        return f"{self.display}/{name}"

    def filesystem(self) -> tuple[Any, str]:
        """(the fsspec filesystem, this folder's path on it), opened once per process."""
        if self._fs is None:
            import fsspec  # only a shared store loads it: opening a local export stays light

            try:
                self._fs, base = fsspec.core.url_to_fs(self.url, **self._options)
            except Exception as exc:  # an unknown protocol, a missing extra (s3fs, gcsfs), bad options
                raise PreparedStoreError(
                    f"Cannot open the shared store at {self.display}: {redact_text(f'{type(exc).__name__}: {exc}')}",
                    path=self.display,
                ) from None
            self._base = base.rstrip("/")
        return self._fs, self._base

    def read_bytes(self, name: str) -> bytes | None:
        """The bytes of ``name``, or None when there is no such file."""
        fs, base = self.filesystem()
        try:
            with self._failing(f"read {name}"):
                return fs.cat_file(f"{base}/{name}")
        except FileNotFoundError:
            return None

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON object in ``name``, or None when there is no such file; ``PreparedStoreError``
        when it holds none (``read_object`` tells that apart instead)."""
        data, damaged = self.read_object(name)
        if damaged:  # written whole, so never half a file: someone else's
            raise PreparedStoreError(f"{self.not_an_object(name)}.", path=self.display)
        return data

    def read_object(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        """(the JSON object in ``name``, False), (None, False) when there is no such file, or (None,
        True) when the file holds no JSON object: damaged. A failure to read raises."""
        raw = self.read_bytes(name)
        if raw is None:
            return None, False
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        return (data, False) if isinstance(data, dict) else (None, True)

    def not_an_object(self, name: str) -> str:
        """What is wrong with ``name`` when ``read_object`` finds it damaged."""
        return f"{self.where(name)} is not a JSON object of a shared store"

    def sizes(self, folder: str) -> dict[str, int]:
        """The size of each file in ``folder`` (none when it does not exist), from one listing."""
        fs, base = self.filesystem()
        try:
            with self._failing(f"list {folder}"):
                found = fs.ls(f"{base}/{folder}", detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        return {str(info["name"]).rstrip("/").rsplit("/", 1)[-1]: int(info.get("size") or 0) for info in found}

    def names(self, folder: str) -> set[str]:
        """The names of the files in ``folder`` (none when it does not exist)."""
        fs, base = self.filesystem()
        try:
            with self._failing(f"list {folder}"):
                found = fs.ls(f"{base}/{folder}", detail=False, refresh=True)
        except FileNotFoundError:
            return set()
        return {str(path).rstrip("/").rsplit("/", 1)[-1] for path in found}

    def write_json(self, name: str, data: Mapping[str, Any]) -> None:
        self.write_bytes(name, json.dumps(data, indent=1, sort_keys=True).encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Publish ``data`` as ``name``, whole."""
        self._publish(name, lambda fs, path: fs.pipe_file(path, data))

    def upload(self, local: Path, name: str) -> None:
        """Publish the local file ``local`` as ``name``, whole."""
        self._publish(name, lambda fs, path: fs.put_file(os.fspath(local), path))

    @contextlib.contextmanager
    def _failing(self, what: str, *, reading: bool = True) -> Iterator[None]:
        """Storage failures as ``PreparedStoreError`` naming ``what`` failed where, without secrets
        (a file missing from a read stays a ``FileNotFoundError``: reads ask for files that may not be
        there; a write to a bucket that is not there is a failure)."""
        reason = None
        try:
            yield
        except (FileNotFoundError, ValueError):
            if reading:
                raise
            reason = f"{what.split()[-1]} cannot be written there (no such bucket or folder?)"
        except Exception as exc:  # any filesystem's failure: botocore's, aiohttp's, an OSError
            reason = redact_text(f"{type(exc).__name__}: {exc}")
        if reason is not None:  # raised outside the handler: the original (its URL) is not its context
            raise PreparedStoreError(f"Cannot {what} at {self.display}: {reason}", path=self.display)

    def _publish(self, name: str, write: Any) -> None:
        with self._failing(f"write {name}", reading=False):
            self._publish_whole(name, write)

    def _publish_whole(self, name: str, write: Any) -> None:
        fs, base = self.filesystem()
        path = f"{base}/{name}"
        if "file" not in _protocols(fs):
            write(fs, path)  # an object appears whole or not at all
            return
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            write(fs, temporary)
            fs.mv(temporary, path)  # a rename on a local disk
        finally:
            if fs.exists(temporary):
                fs.rm_file(temporary)


def shared_store_url(prepared_root: str, entry: LocalExport, settings: StoreSettings) -> str:
    """Where the shared store of ``entry`` with ``settings`` lives under ``prepared_root``:
    where the cache keeps its node-local store, relative to the cache root
    (``exports/<dataset>/<key digest>/derived/prepared/<content>-<settings digest>``;
    ``CacheStore.shared_derived_name``), so the writer and every reader name the same store."""
    if entry.version is None or entry.entry_dir is None:
        raise ConfigurationError(f"prepared_root needs an export published in the cache; {entry.path} is not one.")
    return join_url(prepared_root, CacheStore.shared_derived_name(entry, KIND, settings.digest))


def join_url(root: str, relative: str) -> str:
    """``relative`` (``/``-separated) under ``root``, a folder or an fsspec URL (whose query, a SAS
    token say, stays at the end)."""
    if not is_remote(root):
        return os.path.join(os.path.abspath(os.path.expanduser(root)), *relative.split("/"))
    parts = urlsplit(root)
    return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{relative}", parts.query, ""))


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def npy_bytes(array: Any) -> bytes:
    """``array`` as an .npy file (``np.save``) in memory."""
    import numpy as np

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()
