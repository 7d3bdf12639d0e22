"""Chunked exports: the images of a selection too large for one export, in exports under the limit.

Visual Layer includes images in an export only up to a limit (contract §5) and rejects a larger
one with a message that says "exceeds threshold". The metadata then comes from one export
without images (a cache entry of its own), and the images from selective exports of its media
ids, cut into chunks under the limit and run several at a time. Each chunk is its own task,
recorded when it starts and kept once it is unpacked and checked, so a run killed after 7 of 20
chunks finishes only the other 13; a chunk that fails for good, or a Ctrl-C, stops the others at
their next step, their tasks and downloads kept for that run. When every media id has arrived
exactly once, the chunks are linked into one staging folder and published as one entry, manifest last.

A metadata-only export has a limit of its own (on entities). A selection of media ids over it is
cut the same way, from the selection's own ids, and its chunks' metadata files are joined into one
(``metadata.concat``); a chunk rejected as an empty selection (none of its ids is in the dataset)
is kept empty, and a chunk rejected for any other reason ends the fetch. A whole dataset over
it cannot be cut: no documented call lists its media ids.

In the entry's work area (``CacheStore.work_area``), until then::

    plan.json          what the chunks were cut from: the metadata version (or the selection), the
                       chunk size, and when
    <i>.task           chunk i's export task while it runs (``CacheStore.task_record``)
    <i>.zip            its download (resumable)
    <i>/               chunk i, unpacked and checked
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from . import errors
from .cache.archive import extract_archive
from .cache.store import CacheStore, ExportKey, LocalExport, read_json, write_json_atomic
from .metadata.concat import concatenate_metadata, media_ids_of
from .metadata.image_paths import resolve_image_paths
from .metadata.index import list_files, read_index
from .metadata.read import find_metadata_file, read_metadata_file
from .records import ExportTask
from .tasks import start_or_resume

if TYPE_CHECKING:
    from .api.client import Client

logger = logging.getLogger("vl_datasets")

DEFAULT_IMAGES_PER_EXPORT = 5_000  # the web app's documented limit, when the answer names none
DEFAULT_CHUNKS_IN_FLIGHT = 4
# How clients of the real platform recognise "too large" (contract §4), and the other reason it
# names for a REJECTED, "too many entities", however it is worded.
_TOO_LARGE = re.compile(
    r"exceeds\s+threshold|entities.*rejected|rejected.*entities|too\s+many\s+entities", re.IGNORECASE | re.DOTALL
)
_THRESHOLD = re.compile(r"threshold\D{0,24}?(\d[\d,]*)", re.IGNORECASE)
# The other reason the contract gives for a REJECTED: a selection that matches nothing.
_EMPTY_SELECTION = re.compile(
    r"\bempty\b|\bno\s+(?:media(?:\s+items?)?|items?|entities|ids)\b[^.;]{0,40}\b(?:matched|match|found)\b",
    re.IGNORECASE,
)


def is_too_large(error: errors.ExportFailedError) -> bool:
    """Whether an export failed for its size (contract §4: the message says so, on a REJECTED or a
    FAILED); any other rejection is final."""
    return error.status in ("REJECTED", "FAILED") and bool(_TOO_LARGE.search(error.result_message or ""))


def is_empty_selection(error: errors.ExportFailedError) -> bool:
    """Whether an export was rejected because its selection matched no media item, as its message says."""
    message = error.result_message or ""
    return error.status == "REJECTED" and bool(_EMPTY_SELECTION.search(message)) and not _TOO_LARGE.search(message)


def limit_named_in(error: errors.ExportFailedError) -> int | None:
    """The threshold a "too large" answer names, if it names one."""
    match = _THRESHOLD.search(error.result_message or "")
    if match is None:
        return None
    return int(match.group(1).replace(",", "")) or None


class _Stopped(Exception):
    """A chunk left unfinished because the fetch is ending (a Ctrl-C, or another chunk's failure)."""


class _ChunkTooLarge(Exception):
    """A chunk was rejected for its size: the limit is lower than the chunks were cut for."""

    def __init__(self, limit: int | None) -> None:
        super().__init__(limit)
        self.limit = limit


def build_chunked(
    client: Client,
    store: CacheStore,
    key: ExportKey,
    metadata: LocalExport,
    images_per_export: int,
    *,
    in_flight: int = DEFAULT_CHUNKS_IN_FLIGHT,
    export_timeout_s: float | None,
    lock_timeout_s: float | None,
) -> LocalExport:
    """Publish the entry of ``key`` (an export with images) from the metadata-only entry
    ``metadata`` and selective exports of at most ``images_per_export`` images each. The caller
    holds the entry's lock."""
    ids = _media_ids(metadata)
    folder = store.work_area(key)
    fetch = _ChunkFetch(client, store, key, in_flight, export_timeout_s, lock_timeout_s)
    n_chunks = _fetch_chunks(fetch, ids, images_per_export, metadata.version)
    entry_dir = store.entry_dir(key)
    with store.staging(entry_dir) as staging:
        _assemble(staging, metadata, folder, n_chunks)
        entry = store.publish(entry_dir, staging, key=key, task=metadata.task, expected_rows=len(ids))
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("Cached dataset %r from %d chunked exports at %s", key.dataset_id, n_chunks, entry.path)
    return entry


def build_chunked_metadata(
    client: Client,
    store: CacheStore,
    key: ExportKey,
    ids_per_export: int,
    *,
    in_flight: int = DEFAULT_CHUNKS_IN_FLIGHT,
    export_timeout_s: float | None,
    lock_timeout_s: float | None,
) -> LocalExport:
    """Publish the entry of ``key`` (a metadata-only export of media ids) from selective exports
    of at most ``ids_per_export`` of them each, their metadata files joined into one
    (``concat``). Ids the dataset does not hold are left out, as one export would leave them. The
    caller holds the entry's lock."""
    assert key.media_ids is not None and not key.include_images
    folder = store.work_area(key)
    fetch = _ChunkFetch(client, store, key, in_flight, export_timeout_s, lock_timeout_s)
    n_chunks = _fetch_chunks(fetch, list(key.media_ids), ids_per_export, _SELECTION)
    entry_dir = store.entry_dir(key)
    with store.staging(entry_dir) as staging:
        chunks = [folder / str(i) for i in range(n_chunks)]
        parts = [find_metadata_file(chunk) for chunk in chunks if any(chunk.iterdir())]  # an empty chunk has none
        if not parts:
            raise errors.ExportFailedError(
                f"Dataset {key.dataset_id!r} holds none of the {len(key.media_ids)} media ids selected.",
                dataset_id=key.dataset_id,
                status="REJECTED",
            )
        rows = concatenate_metadata(parts, staging)
        entry = store.publish(entry_dir, staging, key=key, expected_rows=rows)
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("Cached the metadata of %r from %d chunked exports at %s", key.dataset_id, n_chunks, entry.path)
    return entry


# What a metadata-only selection's chunks are cut from: the key's own media ids, whatever the dataset's version.
_SELECTION = "the selection's media ids"


@dataclass(frozen=True)
class _ChunkFetch:
    """How the chunks of ``key`` are fetched."""

    client: Client
    store: CacheStore
    key: ExportKey
    in_flight: int
    export_timeout_s: float | None
    lock_timeout_s: float | None


def _fetch_chunks(fetch: _ChunkFetch, ids: list[str], size: int, source: str | None) -> int:
    """Fetch ``ids`` (cut from ``source``) in chunks of ``size``, or smaller ones while the server
    rejects those as too large, into the work area; return how many chunks there are."""
    # No larger than the ids: halving a size above them cut the same single chunk again and again
    # (5,000, 2,500, ... for 10 ids: nine exports of all of them) where the answer named no limit.
    size = max(1, min(size, len(ids)))
    while True:
        chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
        _plan(fetch.store, fetch.key, source, size)
        try:
            _fetch_all(fetch, chunks)
            return len(chunks)
        except _ChunkTooLarge as exc:
            smaller = exc.limit if exc.limit is not None and exc.limit < size else size // 2
            if smaller < 1:
                raise errors.ExportFailedError(
                    f"Dataset {fetch.key.dataset_id!r}: even an export of one media item is rejected as too large.",
                    dataset_id=fetch.key.dataset_id,
                    status="REJECTED",
                ) from None
            logger.warning("Chunks of %d media items are still too large; cutting chunks of %d", size, smaller)
            size = smaller


def _media_ids(metadata: LocalExport) -> list[str]:
    """The metadata's media ids, sorted: the same chunks on every run."""
    index = read_index(metadata.index_path) if metadata.index_path is not None else None
    table = index if index is not None else read_metadata_file(metadata.metadata_path)
    return sorted(table.column("media_id").to_pylist())


def planned_chunk_size(store: CacheStore, key: ExportKey) -> int | None:
    """The chunk size of an unfinished chunked export of ``key`` an earlier run left, if any: a
    resumed run cuts the same chunks, so those already in are kept."""
    size = _unfinished_plan(store, key).get("chunk_size")
    return size if isinstance(size, int) and size > 0 else None


def _unfinished_plan(store: CacheStore, key: ExportKey) -> dict:
    """The work area's plan, unless a version of ``key`` was published since it was made: then
    the work area is what a run killed after publishing left, and it is removed, never resumed.
    The caller holds the entry's lock."""
    folder = store.work_area(key)
    plan = read_json(folder / "plan.json") or {}
    published = store.lookup(key)
    try:
        planned_at = datetime.fromisoformat(plan["planned_at"])
    except (KeyError, TypeError, ValueError):
        planned_at = None
    if planned_at is not None and (
        published is None or published.created_at is None or published.created_at < planned_at
    ):
        return plan
    if folder.exists():
        logger.info("Removing %s: chunks of a finished or unreadable plan", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return {}


def _plan(store: CacheStore, key: ExportKey, source: str | None, size: int) -> None:
    """Keep the chunks of an earlier run only if they were cut the same way from the same ids
    (``source``: the version of the metadata that names them), and no version was published from
    them yet."""
    folder = store.work_area(key)
    plan = {"metadata_version": source, "chunk_size": size}
    earlier = _unfinished_plan(store, key)
    if {name: earlier.get(name) for name in plan} == plan:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_json_atomic(folder / "plan.json", {**plan, "planned_at": datetime.now(timezone.utc).isoformat()})


def _fetch_all(fetch: _ChunkFetch, chunks: list[list[str]]) -> None:
    folder = fetch.store.work_area(fetch.key)
    pending = [i for i in range(len(chunks)) if not (folder / str(i)).is_dir()]
    if len(pending) < len(chunks):
        logger.info("Resuming a chunked export: %d of %d chunks are in", len(chunks) - len(pending), len(chunks))
    desc = f"{'images' if fetch.key.include_images else 'metadata'} of {fetch.key.dataset_id}"
    stop = threading.Event()
    pool = ThreadPoolExecutor(max(1, fetch.in_flight))
    try:
        with tqdm(
            total=len(chunks),
            initial=len(chunks) - len(pending),
            unit="chunk",
            desc=desc,
            disable=not fetch.client.progress,
        ) as bar:
            received = 0
            remaining = {pool.submit(_fetch_chunk, fetch, chunks, i, stop) for i in pending}
            while remaining:
                # In short waits: a Ctrl-C reaches this thread between two on every platform.
                done, remaining = wait(remaining, timeout=1.0, return_when=FIRST_EXCEPTION)
                for future in done:
                    failure = future.exception()
                    if failure is not None:
                        raise failure  # the first: the chunks still in flight are stopped below
                    received += future.result()
                    bar.update(1)
                    bar.set_postfix_str(f"{received / 2**20:,.1f} MiB")
    finally:
        # After a chunk's failure or a Ctrl-C (nothing is left otherwise) the chunks not started stay
        # for the next run, and those in flight stop at their next poll, wait or block of bytes (a
        # request under way first ends, within the client's timeout_s), their task records and
        # partial downloads kept for it. They are waited for: none may write into the work area
        # once the caller lets go of the entry's lock.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _fetch_chunk(fetch: _ChunkFetch, chunks: list[list[str]], i: int, stop: threading.Event) -> int:
    """``_export_chunk`` of chunk ``i``. An error of the library it raises says which chunk failed,
    in its message: its type and fields stay, so a caller's ``except`` clauses still match."""
    try:
        return _export_chunk(fetch, i, chunks[i], stop)
    except errors.VLDatasetsError as exc:
        ids = chunks[i]
        which = f"media id {ids[0]!r}" if len(ids) == 1 else f"media ids {ids[0]!r}..{ids[-1]!r}"
        exc.message = f"Chunk {i + 1} of {len(chunks)} ({which}): {exc.message}"
        exc.args = (exc.message,)
        raise


def _export_chunk(fetch: _ChunkFetch, i: int, ids: Sequence[str], stop: threading.Event) -> int:
    """Export, download, unpack and check chunk ``i``; return its size in bytes. Once ``stop`` is
    set, end at the next poll or block of bytes, leaving the task record and the partial download
    for the next run."""
    client, key = fetch.client, fetch.key
    folder, record = fetch.store.work_area(key), fetch.store.task_record(key, chunk=i)
    if stop.is_set():
        raise _Stopped()  # taken from the queue as the fetch ended: no export is started
    try:
        task = start_or_resume(client, record, key, media_ids=ids)
    except errors.RequestTooLargeError:  # too many ids for one request: smaller chunks
        raise _ChunkTooLarge(None) from None
    try:
        task = client.wait_for_export(
            key.dataset_id, task.id, timeout_s=fetch.export_timeout_s, progress=False, stop=stop
        )
    except errors.ExportFailedError as exc:
        record.clear()
        if is_too_large(exc):
            raise _ChunkTooLarge(limit_named_in(exc)) from None
        if key.include_images or not is_empty_selection(exc):
            raise  # any other rejection is final (contract §4): a chunk's rows are never dropped unsaid
        # The selection as a whole was rejected for its size, so it holds other items: none of this
        # chunk's ids is in the dataset, and one export of the selection would have left them out.
        logger.info("Chunk %d (export %s): none of its %d media ids is in the dataset", i + 1, task.id, len(ids))
        (folder / str(i)).mkdir(exist_ok=True)  # in, and empty: no metadata file
        return 0
    zip_path = folder / f"{i}.zip"
    # Once whole, the archive is unpacked even when stopped: the next run would download it again.
    client.download_export(task, zip_path, lock_timeout_s=fetch.lock_timeout_s, progress=False, stop=stop)
    size = zip_path.stat().st_size
    staging = folder / f".{i}.unpacking-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        extract_archive(zip_path, staging)
        _check_chunk(staging, ids, i, task, images=key.include_images)
        os.rename(staging, folder / str(i))
    except (errors.CorruptArchiveError, errors.UnsafeArchiveError):
        zip_path.unlink(missing_ok=True)  # a bad download is not resumed
        record.clear()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    zip_path.unlink(missing_ok=True)
    record.clear()
    return size


def _check_chunk(staging: Path, ids: Sequence[str], i: int, task: ExportTask, *, images: bool) -> None:
    """A chunk with ``images`` must hold the rows of exactly its media ids (the metadata named
    them), none missing, none from elsewhere, and each row's image file, named as the export's
    layout names it. A chunk of a metadata-only selection may lack ids the dataset does not hold,
    as one export of the selection would; it holds no other row, and none twice."""
    try:
        metadata = find_metadata_file(staging)
        # A metadata-only chunk's ids alone: its rows are normalized once the chunks are joined.
        table = read_metadata_file(metadata) if images else None
        got = table.column("media_id").to_pylist() if table is not None else media_ids_of(metadata)
    except errors.SchemaError as exc:
        raise errors.CorruptArchiveError(
            f"Export {task.id} has unreadable metadata: {exc}", path=str(staging)
        ) from None
    missing = set(ids) - set(got) if images else set()
    extra = set(got) - set(ids)
    repeated = {media_id for media_id, rows in Counter(got).items() if rows > 1}
    if missing or extra or repeated:
        example = next(iter(missing or extra or repeated))
        raise errors.CorruptArchiveError(
            f"Export {task.id} holds {len(got)} rows for {len(ids)} media ids: {len(missing)} "
            f"missing, {len(extra)} unexpected and {len(repeated)} more than once, e.g. {example!r}.",
            path=str(staging),
        )
    if table is not None:
        _check_chunk_images(staging, table, i, task)


def _check_chunk_images(staging: Path, table: pa.Table, i: int, task: ExportTask) -> None:
    """Resolve each row's image as the cache's index will (``image_paths``): a row with none is a
    hole the published entry would carry for good."""
    members = [f"images/{rel}" for rel in list_files(staging / "images")]
    try:
        resolved = resolve_image_paths(table, members, on_missing="null")
    except errors.ImageNotFoundError as exc:
        # An ambiguous name: the whole export publishes such a set without an index, and so does this.
        logger.warning("Chunk %d (export %s): its images cannot be matched to rows one to one: %s", i + 1, task.id, exc)
        return
    absent = pc.is_null(resolved)
    if pc.any(absent).as_py():
        lacking = table.column("media_id").filter(absent).to_pylist()
        raise errors.CorruptArchiveError(
            f"Export {task.id} lacks the image file of {len(lacking)} of its {table.num_rows} rows, "
            f"e.g. media {lacking[0]!r}.",
            path=str(staging),
        )


def _assemble(staging: Path, metadata: LocalExport, folder: Path, n_chunks: int) -> None:
    """Link the metadata file and every chunk's images into ``staging``. Links, not moves: a kill
    here leaves the chunks whole for the next run."""
    _link(metadata.metadata_path, staging / metadata.metadata_path.name)
    owner: dict[str, int] = {}
    for i in range(n_chunks):
        images = folder / str(i) / "images"
        for source in sorted(images.rglob("*")) if images.is_dir() else []:
            if source.is_dir():
                continue
            rel = source.relative_to(images).as_posix()
            if rel in owner:
                raise errors.CorruptArchiveError(
                    f"Chunks {owner[rel]} and {i} both hold images/{rel}: the images cannot be told apart.",
                    path=str(source),
                )
            owner[rel] = i
            target = staging / "images" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(source, target)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copy2(source, target)
