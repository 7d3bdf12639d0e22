"""``ds.prepare()``: fill the prepared-image store ahead of training, on every core of the node.

A dataset opened with ``prepare=S`` fills its store during the first epoch anyway; preparing ahead
spreads the work over every core (a process each) with a progress bar, instead of over the
DataLoader's workers while training waits, and leaves the store marked complete.

Under ``torchrun`` the ranks of a node share one store (it lives in the node's cache), so each
takes every ``LOCAL_WORLD_SIZE``-th image from ``LOCAL_RANK`` on, with the node's cores divided
between them, and then waits until the others' images are there too: every rank returns with the
whole dataset prepared. Each node prepares its own store. The wait is bounded: when no image has
arrived for ``stall_timeout_s``, a rank gives up with ``PrepareTimeoutError``.

Work already in the store is kept: a preparation killed at any point goes on from where it was.

Separate preparers of one store (three ``prepare()`` calls at once, or a job beside a
``vl-datasets prepare``) split the work rather than repeat it: the images come in blocks, and a
process claims a block (a lock on one byte of ``claims.lock`` in the store, which the system
releases when the process dies) before looking at what of it is left, so each image is decoded
once. A block another process holds is set aside and taken last, once that process lets it go:
only what is then still missing is prepared. Where locks do not work (some network filesystems),
blocks are prepared unclaimed: the work may repeat, the store stays right.

Each image's original is checked against the identity its copy was prepared from
(``sources.WithIdentity``: a stat on a local disk, one look-up per image under a remote root), so
an original replaced since is prepared again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from ..config import progress_enabled, usable_cores
from ..errors import ConfigurationError, ImageDecodeError, ImageNotFoundError, PrepareTimeoutError
from .batches import SkippedSample
from .object_identity import ListedIdentities
from .prepared import image_key, keys_of
from .prepared_source import PreparedSource, prepare_pixels
from .sources import image_error

try:
    import fcntl
except ImportError:  # Windows: blocks are prepared unclaimed
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("vl_datasets")

STALL_TIMEOUT_S = 1800.0  # a rank waiting for the others' images gives up after this long without one
POLL_S = 2.0
CLAIMS = "claims.lock"  # in the store: a byte of it locked per block of images being prepared
CLAIM_POLL_S = 0.05
LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class PrepareSummary:
    """What ``prepare()`` did: the store, the dataset's images now in it, how many of them this call
    prepared (this rank), this rank's images that could not be prepared (``on_error="skip"``), and
    the store's size on disk."""

    store: Path
    images: int
    prepared: int
    skipped: list[SkippedSample] = field(default_factory=list)
    bytes_on_disk: int = 0


def prepare_images(
    source: Any,
    paths: pa.Array,
    media_ids: pa.Array,
    *,
    on_error: str = "raise",
    num_workers: int | None = None,
    progress: bool | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> PrepareSummary:
    """Prepare the images at ``paths`` (``media_ids`` name them in errors) into ``source``'s store.

    ``num_workers`` processes (default: this rank's share of the cores; 0 runs in this process).
    An image that cannot be read or decoded raises its typed error naming its media id once the
    rest are prepared, or with ``on_error="skip"`` is listed in the summary's ``skipped``.
    """
    if not isinstance(source, PreparedSource):
        raise ConfigurationError("prepare() fills the store of a dataset opened with prepare=S; this one has none.")
    rank, ranks = node_rank(env)
    paths_list, ids = distinct_images(paths.to_pylist(), media_ids.to_pylist())
    keys = keys_of(paths_list)
    mine = np.arange(rank, len(paths_list), ranks)
    prepared, failures = prepare_listed(
        source,
        [paths_list[i] for i in mine],
        [ids[i] for i in mine],
        workers=worker_count(num_workers, ranks),
        progress=progress,
        stall_timeout_s=stall_timeout_s,
    )
    if ranks > 1:
        _wait_for_node(source, keys, rank=rank, ranks=ranks, stall_timeout_s=stall_timeout_s)
    images, _ = _count(source, keys)
    manifest = source.store.write_manifest(dataset_images=len(keys)) if rank == 0 else None
    skipped = report_failures(failures, on_error)
    return PrepareSummary(
        store=source.store.path,
        images=images,
        prepared=prepared,
        skipped=skipped,
        bytes_on_disk=manifest["bytes"] if manifest else _bytes_on_disk(source.store.path),
    )


def prepare_listed(
    source: PreparedSource,
    paths: list[str],
    media_ids: list[str],
    *,
    workers: int,
    progress: bool | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> tuple[int, list[tuple[Exception, str]]]:
    """Prepare what of the images at ``paths`` is not in ``source``'s store yet, on ``workers``
    processes (0: this one), with a progress bar: (how many this call prepared, the failures with
    each image's location). Every image is in the store (or failed) when it returns."""
    failures: list[tuple[Exception, str]] = []
    prepared = 0
    bar = tqdm(
        total=len(paths),
        unit="img",
        desc=f"Preparing images at {source.store.settings.size}px",
        disable=not progress_enabled(progress),
    )
    with bar:
        for done, made, failed in _run(source, paths, media_ids, workers, stall_timeout_s=stall_timeout_s):
            failures += failed
            prepared += made
            bar.update(done)
    return prepared, failures


def node_rank(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(this process's rank among its node's, the node's number of ranks): torchrun's ``LOCAL_RANK``
    and ``LOCAL_WORLD_SIZE``, else (0, 1)."""
    env = os.environ if env is None else env
    if "LOCAL_WORLD_SIZE" not in env:
        if "LOCAL_RANK" in env:
            logger.warning(
                "LOCAL_RANK is set but LOCAL_WORLD_SIZE is not (a launcher other than torchrun?): this rank "
                "prepares every image itself; the other ranks of the node repeat the work."
            )
        return 0, 1
    try:
        rank, ranks = int(env.get("LOCAL_RANK", "0")), int(env["LOCAL_WORLD_SIZE"])
    except ValueError:
        raise ConfigurationError(
            f"LOCAL_RANK={env.get('LOCAL_RANK')!r} and LOCAL_WORLD_SIZE={env['LOCAL_WORLD_SIZE']!r} are not integers."
        ) from None
    if not 0 <= rank < ranks:
        raise ConfigurationError(f"LOCAL_RANK={rank} is not a rank of LOCAL_WORLD_SIZE={ranks}.")
    return rank, ranks


def distinct_images(paths: list[str], media_ids: list[str]) -> tuple[list[str], list[str]]:
    """Each image once (rows may share one), with the media id of its first row, in dataset order."""
    first: dict[str, str] = {}
    for path, media_id in zip(paths, media_ids):
        first.setdefault(path, media_id)
    return list(first), list(first.values())


def worker_count(num_workers: int | None, ranks: int) -> int:
    """``num_workers`` checked, or by default this rank's share of the node's cores."""
    if num_workers is None:
        cores = usable_cores()
        return max(1, cores // ranks)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigurationError(f"num_workers must be an int >= 0, got {num_workers!r}.")
    return num_workers


def _run(source: PreparedSource, paths: list[str], media_ids: list[str], workers: int, *, stall_timeout_s: float):
    """Prepare every image not yet in the store, yielding (images looked at, images prepared, their
    failures) as each block ends: first every block no other process holds, then those that were
    held, once they are let go (or after ``stall_timeout_s``)."""
    blocks = _chunks(len(paths), workers)
    job = {"source": source, "paths": paths, "media_ids": media_ids, "wait_s": stall_timeout_s}
    job["listed"] = listings(source)
    if workers == 0:
        _JOB.update(job)  # in this process, its threads as they are
        yield from _two_passes(map, blocks)
        return
    # fork shares the job with the workers as it is; elsewhere it is pickled (a source pickles).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    pool = multiprocessing.get_context(method).Pool(workers, initializer=_start, initargs=(job,))
    try:
        yield from _two_passes(pool.imap_unordered, blocks)
        pool.close()
    finally:
        pool.terminate()  # stops the rest at once on an error or Ctrl-C; what was written stays good
        pool.join()


def _two_passes(apply: Any, blocks: list[range]) -> Iterator[tuple[int, int, list[tuple[Exception, str]]]]:
    held = []
    for block, made, failures in apply(_claim_and_prepare, blocks):
        if made is None:
            held.append(block)
        else:
            yield len(block), made, failures
    for block, made, failures in apply(_wait_and_prepare, held):
        yield len(block), made, failures


def _chunks(count: int, workers: int) -> list[range]:
    # Small enough that the processes finish together and the bar moves; big enough to keep
    # the pool's messages rare next to the images. Preparers of one dataset with as many
    # workers cut the same blocks, so their claims meet.
    size = max(1, min(64, count // (max(workers, 1) * 8)))
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


_JOB: dict[str, Any] = {}  # this process's share of the work, set by _start


def _start(job: dict[str, Any]) -> None:
    torch.set_num_threads(1)  # a process per core: intra-op threads would only compete
    _JOB.update(job)


def _claim_and_prepare(block: range) -> tuple[range, int | None, list[tuple[Exception, str]]]:
    """Prepare ``block`` unless another process holds it: (block, images prepared or None, failures)."""
    with _claim(block, wait_s=None) as claimed:
        return (block, *_prepare_block(block)) if claimed else (block, None, [])


def _wait_and_prepare(block: range) -> tuple[range, int | None, list[tuple[Exception, str]]]:
    """Prepare what another process left of ``block``, once it lets it go (or did not in time)."""
    with _claim(block, wait_s=_JOB["wait_s"]):
        return (block, *_prepare_block(block))


@contextlib.contextmanager
def _claim(block: range, *, wait_s: float | None) -> Iterator[bool]:
    """Hold the claim on ``block`` (a byte of the claims file, at its first image's key) while it is
    prepared: True once held (or where locks do not work), False when another process holds it and
    ``wait_s`` (None: no wait) ran out."""
    store = _JOB["source"].store
    offset = image_key(_JOB["paths"][block.start])[0] >> 2  # a byte per block, under lockf's limit of 2**63
    fd = _claims_fd(store.path)
    deadline = time.monotonic() + (wait_s or 0.0)
    state = "unclaimed" if fd is None else _try_lock(fd, offset)
    while state == "busy" and wait_s is not None and time.monotonic() < deadline:
        time.sleep(CLAIM_POLL_S)
        state = _try_lock(fd, offset)  # type: ignore[arg-type]
    try:
        yield state != "busy"
    finally:
        if state == "held":
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)  # type: ignore[arg-type]


def _try_lock(fd: int, offset: int) -> str:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
    except OSError as exc:
        return "busy" if exc.errno in (errno.EACCES, errno.EAGAIN) else "unclaimed"
    return "held"


_CLAIM_FDS: dict[tuple[int, Path], int | None] = {}


def _claims_fd(store: Path) -> int | None:
    """This process's descriptor of ``store``'s claims file (one per process: closing any descriptor
    of a file drops every lock the process holds on it), or None where there are no locks."""
    key = (os.getpid(), store)
    if key not in _CLAIM_FDS:
        try:
            _CLAIM_FDS[key] = None if fcntl is None else os.open(store / CLAIMS, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only store: nothing will be prepared into it anyway
            logger.debug("Cannot open %s (%s): preparing unclaimed", store / CLAIMS, exc)
            _CLAIM_FDS[key] = None
    return _CLAIM_FDS[key]


def _prepare_block(block: range) -> tuple[int, list[tuple[Exception, str]]]:
    """Prepare what of ``block`` is not in the store from its original as it is now: (how many were
    prepared, and the failures with each image's location)."""
    source: PreparedSource = _JOB["source"]
    paths = [_JOB["paths"][i] for i in block]
    made, failures = 0, list[tuple[Exception, str]]()
    known = _stale_or_absent(source, paths)
    for at in sorted(known):
        path, media_id = paths[at], _JOB["media_ids"][block.start + at]
        try:
            try:
                identity = known[at]
                data, identity = (source.source.read(path), identity) if identity else source.read_with_identity(path)
            except Exception as exc:  # any filesystem's failure, typed and named as the dataset's reads are
                raise image_error(exc, media_id=media_id, source=source.source, path=path) from None
            pixels = prepare_pixels(data, source.store.settings.size, media_id=media_id, path=source.location(path))
        except (ImageDecodeError, ImageNotFoundError) as error:
            source.store.put_failed(path)  # so ranks waiting for it stop waiting
            failures.append((error, source.location(path)))
            continue
        # A full disk stops the job: every later image would fail too.
        source.store.put(path, pixels, source=identity)
        made += 1
    return made, failures


def _stale_or_absent(source: PreparedSource, paths: list[str]) -> dict[int, int]:
    """The positions of ``paths`` to prepare: each with its original's identity when a stale copy
    was compared with it, 0 when there is no copy at all (its read tells the identity: on S3 and
    http the GET's own headers, so an image never prepared costs one request)."""
    absent = source.store.missing(paths, [0] * len(paths))
    present = sorted(set(range(len(paths))) - set(absent))
    identities = _identities(source, [paths[at] for at in present])
    stale = source.store.missing([paths[at] for at in present], identities)
    return {**dict.fromkeys(absent, 0), **{present[i]: identities[i] for i in stale}}


def _identities(source: PreparedSource, paths: list[str]) -> list[int]:
    """The originals' identities: from listings of their folders where the root lists ETags (a
    request per 1,000 objects, not one per image); else, or once a listing failed (a bucket this
    job may read but not list), one look-up each, with a WARNING once."""
    listed = _JOB.get("listed")
    if listed is not None:
        try:
            return listed.identities(paths)
        except Exception as exc:
            reason = source.source.scrub(f"{type(exc).__name__}: {exc}")
            logger.warning(
                "Cannot list the originals under %s (%s): asking each image's instead", source.display_root, reason
            )
            _JOB["listed"] = None
    return [source.identity(path) for path in paths]


def listings(source: PreparedSource) -> ListedIdentities | None:
    """Fresh listings of the originals' folders, for one job (they see originals replaced since the
    last); None where the root's listings carry no identities."""
    lister = getattr(source.source, "identities", None)
    return lister() if callable(lister) else None


def _wait_for_node(source: PreparedSource, keys: np.ndarray, *, rank: int, ranks: int, stall_timeout_s: float) -> None:
    """Wait until every image is prepared (or failed) by some rank of the node."""
    missing, since, logged = -1, time.monotonic(), time.monotonic()
    while True:
        now_missing = int((source.store.status(keys) == 0).sum())
        if now_missing == 0:
            return
        now = time.monotonic()
        if now_missing != missing:
            missing, since = now_missing, now
        elif now - since > stall_timeout_s:
            raise PrepareTimeoutError(
                f"Rank {rank} of {ranks} on this node waited {now - since:.0f}s for the other ranks' images in "
                f"{source.store.path}; {missing:,} never arrived. Did a rank die? Run prepare() again to finish.",
                path=str(source.store.path),
            )
        if now - logged > LOG_EVERY_S:
            logger.warning("Waiting for the node's other ranks to prepare %d more images", missing)
            logged = now
        time.sleep(POLL_S)


def _count(source: PreparedSource, keys: np.ndarray) -> tuple[int, int]:
    status = source.store.status(keys)
    return int((status == 1).sum()), int((status == 2).sum())


def report_failures(failures: list[tuple[Exception, str]], on_error: str) -> list[SkippedSample]:
    """Raise the first failure (``on_error="raise"``), or list them all as skipped samples."""
    if failures and on_error == "raise":
        if len(failures) > 1:
            logger.warning("%d images could not be prepared; raising the first", len(failures))
        raise failures[0][0]
    skipped = []
    for error, location in failures:
        media_id = getattr(error, "media_id", None) or ""
        logger.warning("Skipping media_id %s: %s", media_id, error)
        skipped.append(SkippedSample(media_id, location, str(error)))
    return skipped


def _bytes_on_disk(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
