"""Build a shared prepared store (``prepare=S, prepared_root=URL``) and publish it, once, for a cluster.

Each share (``shard_format``) is prepared by the existing machinery into the node's own prepared
store (``prepare.prepare_listed``: a process per core, the same pixels and checks as every other
preparation), then packed into shards and uploaded (``shard_packer``), its shares/<share>.json
last. Whoever publishes the last share writes the manifest. A build killed anywhere leaves whole
files only, and the next build redoes just the shares without a shares/<share>.json (what the
killed one had prepared on this node is still in the node's store, and is packed, not decoded).

Under ``torchrun`` every rank of the job takes its own shares (rank 0 lists what is left and deals
it out over ``torch.distributed``, gloo), with its node's cores divided between the node's ranks,
then waits until the store is complete: every rank returns with the store published.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .._version import __version__
from ..cache.store import LocalExport
from ..errors import ConfigurationError, PreparedStoreError, PrepareTimeoutError
from .batches import SkippedSample
from .prepare import STALL_TIMEOUT_S, distinct_images, prepare_listed, report_failures, worker_count
from .prepared import StoreSettings, keys_of
from .prepared_source import PreparedSource
from .ranks import Ranks
from .shard_format import (
    MANIFEST_FILE,
    SHARD_BYTES,
    SHARE_IMAGES,
    SHARES,
    STORE_FILE,
    manifest_shares,
    new_build,
    share_count,
    share_file,
    share_name,
    store_identity,
)
from .shard_packer import pack_share
from .shared_location import SharedLocation, shared_store_url
from .shared_store_check import Images, shares_to_build_again

logger = logging.getLogger("vl_datasets")

POLL_S = 1.0


@dataclass(frozen=True)
class SharedPrepareSummary:
    """What a shared build did: the store (its URL, without credentials), the images in it, how
    many this rank decoded now, the shares this rank published now, this rank's images that could
    not be prepared (``on_error="skip"``), and the store's bytes."""

    store: str
    images: int
    prepared: int
    shares: list[str] = field(default_factory=list)
    skipped: list[SkippedSample] = field(default_factory=list)
    bytes_on_disk: int = 0


def publish_shared(
    source: PreparedSource,
    location: SharedLocation,
    paths: list[str],
    media_ids: list[str],
    *,
    export: str,
    version: str | None = None,
    on_error: str = "raise",
    num_workers: int | None = None,
    progress: bool | None = None,
    shard_bytes: int = SHARD_BYTES,
    share_images: int = SHARE_IMAGES,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    ranks: Ranks | None = None,
) -> SharedPrepareSummary:
    """Build what of the store at ``location`` is missing from the images at ``paths`` (``media_ids``
    name them in errors) and publish it; see the module. ``export`` names what the export holds
    (``content_name``), the store's identity with its settings; ``version``, the node's name of
    the export, is recorded for people."""
    ranks = Ranks.from_env() if ranks is None else ranks
    _check_sizes(shard_bytes=shard_bytes, share_images=share_images)
    _same_store_everywhere(location, ranks)
    paths, media_ids = distinct_images(paths, media_ids)
    keys = keys_of(paths)
    wanted = share_count(len(paths), share_images)
    made_from = {"export": export, "version": version}
    images = Images(paths, keys)
    plan = ranks.broadcast(_plan(location, made_from, source, wanted, images) if ranks.rank == 0 else None)
    if isinstance(plan, Exception):
        raise plan  # rank 0's refusal, on every rank
    build = _ShareBuild(source, location, paths, media_ids, keys, worker_count(num_workers, ranks.local_world))
    prepared, failures, built = 0, list[tuple[Exception, str]](), list[str]()
    for share in plan.shares_to_build[ranks.rank :: ranks.world]:
        made, failed = build.run(
            share,
            images.of_share(share, plan.shares),
            shard_bytes=shard_bytes,
            progress=progress,
            stall_timeout_s=stall_timeout_s,
            again=plan.again if share in plan.built_again else None,
        )
        prepared, failures, built = prepared + made, failures + failed, [*built, share_name(share)]
    manifest = finish(location, made_from, source.store.settings, plan, stall_timeout_s=stall_timeout_s)
    ranks.barrier()
    return SharedPrepareSummary(
        store=location.display,
        images=manifest["images"],
        prepared=prepared,
        shares=built,
        skipped=report_failures(failures, on_error),
        bytes_on_disk=manifest["bytes"],
    )


@dataclass(frozen=True)
class _ShareBuild:
    """How this rank builds a share: the dataset's distinct images (paths, media ids, keys) and the
    node's store they are prepared into, with ``workers`` processes."""

    source: PreparedSource
    location: SharedLocation
    paths: list[str]
    media_ids: list[str]
    keys: np.ndarray
    workers: int

    def run(
        self,
        share: int,
        chosen: np.ndarray,
        *,
        shard_bytes: int,
        progress: bool | None,
        stall_timeout_s: float,
        again: str | None,
    ) -> tuple[int, list[tuple[Exception, str]]]:
        """Prepare the images at positions ``chosen`` (in key order), then pack and publish them as
        ``share``: (how many were prepared now, the failures with each image's location).
        ``again``: the build making a published share again (its new files' names), else None."""
        made, failed = prepare_listed(
            self.source,
            [self.paths[i] for i in chosen],
            [self.media_ids[i] for i in chosen],
            workers=self.workers,
            progress=progress,
            stall_timeout_s=stall_timeout_s,
        )
        pack_share(
            self.source.store,
            share_name(share),
            [((int(self.keys[i, 0]), int(self.keys[i, 1])), self.paths[i]) for i in chosen],
            identity=self.source.identity if self.source.checks_every_read else _any_copy,
            location=self.location,
            shard_bytes=shard_bytes,
            build=again,
        )
        return made, failed


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive int, got {value!r}.")


def store_location(
    prepared_root: str | os.PathLike,
    storage_options: Mapping[str, Any] | None,
    entry: LocalExport,
    settings: StoreSettings,
) -> SharedLocation:
    """The store of ``entry`` with ``settings`` under ``prepared_root``, where every reader looks
    (``shared_store_url``)."""
    return SharedLocation(shared_store_url(os.fspath(prepared_root), entry, settings), storage_options)


@dataclass(frozen=True)
class _Plan:
    """What a build does: the store's share count, each published share's build (None: its
    first), the shares never published (``left``), and those published but to be made again
    (``built_again``), under the name ``again``."""

    shares: int
    published: dict[int, str | None]
    left: list[int]
    built_again: list[int]
    again: str = field(default_factory=new_build)

    @property
    def shares_to_build(self) -> list[int]:
        return sorted(self.left + self.built_again)

    def builds(self) -> list[tuple[str, str | None]]:
        """(name, build) of every share once this build is done: what its manifest names."""
        again = set(self.built_again)
        return [(share_name(s), self.again if s in again else self.published.get(s)) for s in range(self.shares)]


def _plan(
    location: SharedLocation,
    export: dict[str, str | None],
    source: PreparedSource,
    shares: int,
    images: Images,
) -> _Plan | PreparedStoreError:
    """What the build does, or why the store cannot be built; ``images``: the dataset's, for the
    check of the shares already published (``shared_store_check``). A store with a manifest has
    published the shares it names, with their builds; one without, those with a share file."""
    try:
        count, manifest = open_store(location, export, source.store.settings, shares)
        named = None if manifest is None else manifest_shares(manifest)
        if named is not None and [name for name, _ in named] == [share_name(s) for s in range(count)]:
            published = {int(name): build for name, build in named}
        else:
            files = location.names(SHARES)
            published = {s: None for s in range(count) if share_file(share_name(s)).removeprefix(f"{SHARES}/") in files}
        left = [s for s in range(count) if s not in published]
        again = shares_to_build_again(location, source, published, images, count)
        return _Plan(count, published, left, again)
    except PreparedStoreError as exc:
        return exc


def open_store(
    location: SharedLocation, export: dict[str, str | None], settings: StoreSettings, shares: int
) -> tuple[int, dict[str, Any] | None]:
    """(the number of shares of the store at ``location``, its manifest: None where there is none,
    or it is damaged, said in a WARNING, to be written again). The store is created (its
    store.json) with ``shares`` if it does not exist. ``export``: {"export": its content name,
    "version": the node's name of it}. Raises ``PreparedStoreError`` when it holds another export
    or other settings. A damaged store.json is written again from the manifest, which names the
    same store."""
    identity = store_identity(export["export"], settings.as_json())
    manifest, damaged = location.read_object(MANIFEST_FILE)
    if damaged:
        logger.warning("%s: it is written again once every share is published", location.not_an_object(MANIFEST_FILE))
    if manifest is not None:
        _check_identity(location, MANIFEST_FILE, manifest, identity)
    found, damaged = location.read_object(STORE_FILE)
    if damaged:
        found = _store_file_from_manifest(location, identity, manifest)
    if found is None:
        found = {
            **identity,
            "version": export["version"],
            "shares": shares,
            "created_at": _now(),
            "library_version": __version__,
        }
        location.write_json(STORE_FILE, found)
    _check_identity(location, STORE_FILE, found, identity)
    count = found.get("shares")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        where = location.where(STORE_FILE)
        raise PreparedStoreError(f"{where} names no share count: not a shared store.", path=location.display)
    return count, manifest


def _store_file_from_manifest(
    location: SharedLocation, identity: dict[str, Any], manifest: dict[str, Any] | None
) -> dict[str, Any]:
    """store.json written again from the ``manifest`` (its identity, checked, and share count),
    when there is one."""
    damage = location.not_an_object(STORE_FILE)
    named = None if manifest is None else manifest_shares(manifest)
    if manifest is None or not named:
        raise PreparedStoreError(
            f"{damage}; with no manifest to tell its shares, remove {location.display} to build it again.",
            path=location.display,
        )
    logger.warning("%s: written again from the store's manifest", damage)
    found = {**identity, "version": manifest.get("version"), "shares": len(named), "created_at": _now()}
    location.write_json(STORE_FILE, {**found, "library_version": __version__})
    return found


def finish(
    location: SharedLocation,
    export: dict[str, str | None],
    settings: StoreSettings,
    plan: _Plan,
    *,
    stall_timeout_s: float,
) -> dict[str, Any]:
    """The store's manifest naming every share as ``plan`` leaves them: written now once every share
    it builds is published, unless a rank of the build wrote it already; else waited for while the
    other ranks publish theirs (``PrepareTimeoutError`` after ``stall_timeout_s`` without a new share)."""
    left, since = -1, time.monotonic()
    builds = plan.builds()
    wanted = {share_file(name, build).removeprefix(f"{SHARES}/") for name, build in builds}
    while True:
        manifest, _ = location.read_object(MANIFEST_FILE)  # a damaged one is written again below
        if manifest is not None and manifest_shares(manifest) == builds:
            return manifest
        now_left = len(wanted - location.names(SHARES))  # one listing, however many shares
        if now_left == 0:
            return _write_manifest(location, export, settings, builds)
        if now_left != left:
            left, since = now_left, time.monotonic()
        elif time.monotonic() - since > stall_timeout_s:
            raise PrepareTimeoutError(
                f"Waited {stall_timeout_s:.0f}s for the other ranks' shares of {location.display}; {left} never "
                "arrived. Did a rank die? Run the preparation again: it redoes only the missing shares.",
                path=location.display,
            )
        time.sleep(POLL_S)


def _write_manifest(
    location: SharedLocation,
    export: dict[str, str | None],
    settings: StoreSettings,
    builds: list[tuple[str, str | None]],
) -> dict[str, Any]:
    parts = [location.read_json(share_file(name, build)) or {} for name, build in builds]
    manifest = {
        **store_identity(export["export"], settings.as_json()),
        "version": export["version"],
        "shares": [name if build is None else {"name": name, "build": build} for name, build in builds],
        "images": sum(int(part.get("images", 0)) for part in parts),
        "failed": sum(len(part.get("failed", ())) for part in parts),
        "bytes": sum(int(shard["bytes"]) for part in parts for shard in part.get("shards", ())),
        "shards": sum(len(part.get("shards", ())) for part in parts),
        "created_at": _now(),
        "library_version": __version__,
    }
    location.write_json(MANIFEST_FILE, manifest)
    logger.info("Published the prepared store %s: %d images", location.display, manifest["images"])
    return manifest


def _same_store_everywhere(location: SharedLocation, ranks: Ranks) -> None:
    """Refuse ranks that would build different stores (their nodes hold exports of other contents)."""
    seen = ranks.gather(location.display)
    if len(set(seen)) > 1:
        raise PreparedStoreError(
            f"The ranks of this job would build different stores ({sorted(set(seen))}): their nodes hold different "
            "exports (their metadata files differ). Give every node the same export (a shared cache root, or a copy "
            "of one node's cache).",
            path=location.display,
        )


def _check_identity(location: SharedLocation, name: str, found: dict[str, Any], identity: dict[str, Any]) -> None:
    if {key: found.get(key) for key in identity} != identity:
        raise PreparedStoreError(
            f"{location.where(name)} describes another store ({found.get('format')}, export {found.get('export')}, "
            f"settings {found.get('settings')}); remove {location.display} to build it again.",
            path=location.display,
        )


def _any_copy(path: str) -> int:
    return 0  # a remote original's identity costs a request: prepare_listed checked it already


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
