"""Where each dataset's columnar form lives, and its build in the background: once per metadata.json version.

    <index_dir>/<digest of the metadata.json path>/v<format>-<size>-<mtime_ns>/   (see ``columnar``)

The index folder is the service's own (never the dataset folder, which may be read-only, nor the
package's sample data). A build writes into a process-unique ``.building-*`` folder and renames
it into place, so two services sharing an index folder never see half a build; the previous
versions of the same metadata.json are removed once a new one is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from . import columnar, image_names


class BuildStopped(Exception):
    """The service stopped while an index was being built."""


@dataclass
class Index:
    """A built columnar form."""

    folder: Path
    summary: columnar.Summary
    columns: columnar.Columns = field(init=False)
    _repeated: pa.Array | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.columns = columnar.Columns(self.folder, self.summary.runs)

    def repeated_names(self) -> pa.Array:
        """The lower-cased image names shared across the dataset (``image_names.plan``)."""
        if self._repeated is None:
            path = self.folder / columnar.REPEATED
            self._repeated = image_names.load(path) if path.is_file() else pa.array([], pa.string())
        return self._repeated


class IndexBuild:
    """One metadata.json version's index: being built in a thread, built, or failed."""

    def __init__(self, stamp: tuple) -> None:
        self.stamp = stamp
        self.progress = 0.0
        self._done = threading.Event()
        self._index: Index | None = None
        self._error: BaseException | None = None

    def wait(self, timeout_s: float | None) -> Index | None:
        """The index, None if still building after ``timeout_s``; re-raises why a build failed."""
        if not self._done.wait(timeout_s):
            return None
        if self._error is not None:
            raise self._error
        return self._index

    def finish(self, index: Index | None, error: BaseException | None) -> None:
        self._index, self._error = index, error
        self._done.set()


class IndexStore:
    """The columnar forms of the datasets a service serves, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._builds: dict[Path, IndexBuild] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def index_of(self, metadata: Path, stamp: tuple) -> IndexBuild:
        """The build of ``metadata`` at version ``stamp`` (its size and mtime), started if needed."""
        key = metadata.resolve()
        with self._lock:
            build = self._builds.get(key)
            if build is not None and build.stamp == stamp:
                return build
            build = self._builds[key] = IndexBuild(stamp)
            thread = threading.Thread(
                target=self._build, args=(key, build), name=f"vl-index-{key.parent.name[:16]}", daemon=True
            )
            self._threads.append(thread)
        thread.start()
        return build

    def _build(self, metadata: Path, build: IndexBuild) -> None:
        try:
            build.finish(self._load_or_build(metadata, build), None)
        except BaseException as exc:  # reported to whoever waits on it: a 500 or a FAILED export
            build.finish(None, exc)

    def _load_or_build(self, metadata: Path, build: IndexBuild) -> Index:
        home = self.root / hashlib.sha256(str(metadata).encode()).hexdigest()[:20]
        final = home / f"v{columnar.FORMAT_VERSION}-{build.stamp[0]}-{build.stamp[1]}"
        if (final / columnar.SUMMARY).is_file():
            return Index(final, columnar.Summary.load(final))
        staging = home / f".building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            columnar.build(metadata, staging, on_progress=lambda p: self._progress(build, p))
            with contextlib.suppress(OSError):  # another service published this version first: use it
                os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in home.glob("v*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return Index(final, columnar.Summary.load(final))

    def _progress(self, build: IndexBuild, fraction: float) -> None:
        if self._stopping.is_set():
            raise BuildStopped("The local service stopped while indexing metadata.json.")
        build.progress = fraction

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop builds in flight (at their next read) and wait for them, bounded."""
        self._stopping.set()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout_s)
