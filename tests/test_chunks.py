"""Chunked exports: a dataset with more images than one export may carry still becomes one entry."""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import replace

import pytest

from tests.helpers import change_dataset, child_env
from tests.waits import Child, Stall, run_child, wait_until
from vl_datasets import Client, errors, fetch_export
from vl_datasets.cache.layout import TaskRecord
from vl_datasets.cache.store import CacheStore, ExportKey
from vl_datasets.chunks import planned_chunk_size
from vl_datasets.metadata.read import read_metadata_file
from vl_datasets.testing import LocalVisualLayer, write_dataset

N_ITEMS = 10


@pytest.fixture
def big_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_dataset(root, "big", n_items=N_ITEMS, n_clusters=3)
    return root


@pytest.fixture
def capped(big_root):
    """The local service with the platform's limit on images per export set to 3."""
    with LocalVisualLayer(big_root, export_polls=0, max_images_per_export=3) as service:
        yield service


def _client(service) -> Client:
    return Client(service.url, progress=False, env={}, sleep=lambda s: None)


def _starts(service, *, images: bool) -> list:
    """Export starts that asked for images (full or selective) or not."""
    flag = "true" if images else "false"
    return [
        r
        for r in service.requests
        if r.origin == "api" and "_async" in r.path and r.query.get("include_images", "").lower() == flag
    ]


def _content(entry) -> tuple:
    folder = entry.images_dir
    images = (
        sorted((p.relative_to(folder).as_posix(), p.read_bytes()) for p in folder.rglob("*") if p.is_file())
        if folder
        else []
    )
    rows = sorted(read_metadata_file(entry.metadata_path).to_pylist(), key=lambda row: row["media_id"])
    return rows, images


def test_a_rejected_export_is_built_from_chunks_under_the_learned_limit(big_root, capped, tmp_path):
    with LocalVisualLayer(big_root, export_polls=0) as uncapped:
        reference = fetch_export("big", client=_client(uncapped), cache_dir=tmp_path / "reference")
    entry = fetch_export("big", client=_client(capped), cache_dir=tmp_path / "cache")
    assert entry.row_count == N_ITEMS
    assert _content(entry) == _content(reference), "the chunked entry differs from one export of everything"
    with_images = _starts(capped, images=True)
    # One full export, rejected; then one selective export per chunk of 3 (the limit the answer named).
    assert len(with_images) == 1 + 4, [r.path for r in with_images]
    assert len(_starts(capped, images=False)) == 1, "the metadata should come from one export without images"
    assert sorted(p.name for p in entry.entry_dir.iterdir() if not p.name.startswith(".lock")) == [
        entry.version,
        f"{entry.version}.manifest.json",
    ], "the chunks were not cleaned up after publishing"
    capped.clear_requests()
    assert fetch_export("big", client=_client(capped), cache_dir=tmp_path / "cache") == entry
    assert capped.requests == [], "a cached chunked export must be reused without any request"


def test_a_known_limit_skips_the_doomed_full_export(capped, tmp_path):
    entry = fetch_export("big", client=_client(capped), cache_dir=tmp_path, max_images_per_export=3)
    assert entry.row_count == N_ITEMS and len(list(entry.images_dir.rglob("*.jpg"))) == N_ITEMS
    full = [r for r in _starts(capped, images=True) if "export_context_async" in r.path]
    assert full == [], "with max_images_per_export the full export with images should not be tried"


def test_chunks_still_too_large_are_cut_smaller(capped, tmp_path):
    capped.jobs.max_images_per_export = 2
    entry = fetch_export("big", client=_client(capped), cache_dir=tmp_path, max_images_per_export=4)
    assert entry.row_count == N_ITEMS and len(list(entry.images_dir.rglob("*.jpg"))) == N_ITEMS


def test_a_rejection_naming_no_limit_halves_from_the_items_there_are(big_root, capped, tmp_path):
    """Halved from the default 5,000, the 10 images went whole in 9 exports (5,000, 2,500, ... 19)
    before chunks of 9 and 4 got under the limit of 3."""
    capped.faults.name_no_limit()
    entry = fetch_export("big", client=_client(capped), cache_dir=tmp_path)
    assert entry.row_count == N_ITEMS and len(list(entry.images_dir.rglob("*.jpg"))) == N_ITEMS
    sizes = [len(r.json["media_ids"]) for r in _starts(capped, images=True) if "export_entities_async" in r.path]
    # Chunks of all 10 (rejected), halved to 5 (rejected at the first), then 2, 2, 2, 2, 2: under 3.
    assert sizes.count(N_ITEMS) == 1 and sizes[1] == N_ITEMS // 2, sizes
    assert len(sizes) <= 1 + 2 + 5, sizes


def test_a_rejection_that_is_not_about_size_stays_an_error(capped, tmp_path):
    capped.jobs.max_images_per_export = 100  # this rejection comes from elsewhere
    capped.faults.fail_exports(result_message="The selection is empty", status="REJECTED")
    with pytest.raises(errors.ExportFailedError, match="selection is empty"):
        fetch_export("big", client=_client(capped), cache_dir=tmp_path)
    assert len(_starts(capped, images=False)) == 0, "a rejection not about size must not start chunking"


def _killed_at_check(n: int, arguments: str) -> str:
    """A child's code: ``fetch_export('big', ...)`` of ``arguments`` (``url`` the service's), one
    chunk at a time, killed by SIGKILL when it starts checking its ``n``-th chunk."""
    return (
        "import os, signal\n"
        "import vl_datasets.chunks as chunks\n"
        "real, calls = chunks._check_chunk, [0]\n"
        "def check(*args, **kwargs):\n"
        "    calls[0] += 1\n"
        f"    if calls[0] == {n}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*args, **kwargs)\n"
        "chunks._check_chunk = check\n"
        "from vl_datasets import Client, fetch_export\n"
        "def fetch(url, **options):\n"
        "    return fetch_export('big', client=Client(url, progress=False), chunks_in_flight=1, **options)\n"
        f"fetch({arguments})\n"
    )


def test_a_killed_chunked_export_finishes_only_the_chunks_it_had_not(capped, tmp_path):
    # The child dies while checking its third chunk, one chunk at a time: chunks 0 and 1 are in,
    # chunk 2 is downloaded but unchecked, chunk 3 never started.
    code = _killed_at_check(3, f"url={capped.url!r}, cache_dir={str(tmp_path)!r}")
    result = run_child([sys.executable, "-c", code], env=child_env())
    assert result.returncode == -signal.SIGKILL, f"the child was not killed at its third chunk: {result.stderr}"
    chunk_dirs = sorted(p.name for p in tmp_path.rglob(".chunks/*") if p.is_dir() and not p.name.startswith("."))
    assert chunk_dirs == ["0", "1"], f"expected chunks 0 and 1 kept after the kill, found {chunk_dirs}"
    started_before = len([r for r in _starts(capped, images=True) if "entities" in r.path])
    entry = fetch_export("big", client=_client(capped), cache_dir=tmp_path, chunks_in_flight=1)
    started_after = len([r for r in _starts(capped, images=True) if "entities" in r.path]) - started_before
    assert started_after == 1, f"the resumed run started {started_after} chunk exports; only chunk 3 was missing"
    assert entry.row_count == N_ITEMS and len(list(entry.images_dir.rglob("*.jpg"))) == N_ITEMS


def test_the_cli_exports_in_chunks_from_the_start(capped, tmp_path, monkeypatch, capsys):
    from vl_datasets.cli import main

    monkeypatch.setenv("VL_API_URL", capped.url)
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    assert main(["export", "big", "--max-images-per-export", "4", "--cache-dir", str(tmp_path)]) == 0
    folder = capsys.readouterr().out.strip()
    assert len(list((tmp_path / "exports").rglob("*.jpg"))) == N_ITEMS, f"images missing under {folder}"
    full = [r for r in _starts(capped, images=True) if "export_context_async" in r.path]
    assert full == [], "--max-images-per-export should skip the full export with images"


@pytest.mark.parametrize("status", [404, 410, 422])
def test_a_chunk_whose_recorded_task_is_forgotten_is_started_again(capped, tmp_path, status):
    """Whole and chunked exports resume through one path: a task the server no longer has (404, 410
    or 422 on its status) is started again, not reported as an error."""
    client = _client(capped)
    fetch_export("big", client=client, cache_dir=tmp_path, include_images=False)  # the metadata, cached
    capped.faults.fail_next("export_status", 503, times=50)  # chunk 0 starts, then its polls fail
    with pytest.raises(errors.ServerError):
        fetch_export("big", client=client, cache_dir=tmp_path, max_images_per_export=3, chunks_in_flight=1)
    # Chunk 0 started (and chunk 1 too, when the pool took it before the failure was seen).
    assert len(_starts(capped, images=True)) >= 1, "chunk 0 should have started before the failure"
    capped.faults.reset()
    capped.faults.fail_next("export_status", status)  # the recorded task of chunk 0 is gone
    entry = fetch_export("big", client=client, cache_dir=tmp_path, max_images_per_export=3, chunks_in_flight=1)
    assert entry.row_count == N_ITEMS and len(list(entry.images_dir.rglob("*.jpg"))) == N_ITEMS
    # Every chunk started once, but chunk 0 twice: the others recorded were resumed.
    assert len(_starts(capped, images=True)) == 1 + 4, "chunk 0 should start again, and no other chunk twice"


def _reference(root, tmp_path):
    """One export of everything the dataset holds now, from a service with no limit."""
    with LocalVisualLayer(root, export_polls=0) as uncapped:
        return fetch_export("big", client=_client(uncapped), cache_dir=tmp_path / "reference")


def _image_of(entry, media_id) -> bytes:
    rows = read_metadata_file(entry.metadata_path).to_pylist()
    (row,) = [r for r in rows if r["media_id"] == media_id]
    return (entry.images_dir / row["file_name"]).read_bytes()


@pytest.mark.parametrize("limit", [3, None], ids=["max_images_per_export", "rejected"])
def test_a_refresh_of_a_chunked_export_gets_the_dataset_as_it_is_now(big_root, capped, tmp_path, limit):
    client, cache = _client(capped), tmp_path / "cache"
    old = fetch_export("big", client=client, cache_dir=cache, max_images_per_export=limit)
    changed = change_dataset(big_root, "big", remove=2)
    new = fetch_export("big", client=client, cache_dir=cache, max_images_per_export=limit, refresh=True)
    reference = _reference(big_root, tmp_path)
    assert old.row_count == N_ITEMS and new.row_count == N_ITEMS - 2, "the refresh kept the removed items"
    assert _image_of(new, changed) == _image_of(reference, changed) != _image_of(old, changed), (
        "the refresh kept the old bytes of a changed image"
    )
    assert _content(new) == _content(reference), (
        "the refreshed chunked entry differs from one export of the dataset now"
    )
    metadata = CacheStore(cache).lookup(replace(new.key, include_images=False))
    assert metadata is not None and metadata.row_count == N_ITEMS - 2, "the metadata-only entry was not refreshed"
    assert fetch_export("big", client=client, cache_dir=cache) == new


@pytest.mark.parametrize("export_format", ["parquet", "json"])  # flat images/<file_name>, or images/<file_path>
def test_a_chunk_lacking_an_image_file_is_refused_not_published(capped, tmp_path, export_format):
    client = _client(capped)
    metadata = fetch_export("big", client=client, cache_dir=tmp_path, include_images=False, export_format=export_format)
    ids = sorted(read_metadata_file(metadata.metadata_path).column("media_id").to_pylist())
    capped.faults.drop_an_image()  # chunk 1 of 4 holds its 3 rows but only 2 images
    with pytest.raises(
        errors.CorruptArchiveError,
        match=r"^Chunk 1 of 4 \(media ids .*\): Export \S+ lacks the image file of 1 of its 3 rows",
    ) as caught:
        fetch_export(
            "big",
            client=client,
            cache_dir=tmp_path,
            max_images_per_export=3,
            chunks_in_flight=1,
            export_format=export_format,
        )
    assert any(media_id in str(caught.value) for media_id in ids[:3]), f"no media id of chunk 0 named: {caught.value}"
    key = ExportKey.build(client.base_url, "big", export_format, True)
    assert CacheStore(tmp_path).lookup(key) is None, "an entry missing an image was published"
    kept = sorted(p.name for p in tmp_path.rglob(".chunks/*") if p.is_dir())
    assert "0" not in kept, f"the chunk lacking an image was kept: {kept}"
    entry = fetch_export(
        "big",
        client=client,
        cache_dir=tmp_path,
        max_images_per_export=3,
        chunks_in_flight=1,
        export_format=export_format,
    )
    assert entry.row_count == N_ITEMS and len(list(entry.images_dir.rglob("*.jpg"))) == N_ITEMS


def test_chunks_of_a_published_version_are_never_resumed(capped, tmp_path):
    # The child dies right after publishing the chunked entry, before it removes its chunks.
    code = (
        "import os, signal\n"
        "from vl_datasets.cache.store import CacheStore\n"
        "real = CacheStore.publish\n"
        "def publish(self, *args, key=None, **kwargs):\n"
        "    entry = real(self, *args, key=key, **kwargs)\n"
        "    if key.include_images:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return entry\n"
        "CacheStore.publish = publish\n"
        "from vl_datasets import Client, fetch_export\n"
        f"fetch_export('big', client=Client({capped.url!r}, progress=False), cache_dir={str(tmp_path)!r}, "
        "max_images_per_export=3)\n"
    )
    result = run_child([sys.executable, "-c", code], env=child_env())
    assert result.returncode == -signal.SIGKILL, f"the child was not killed after publishing: {result.stderr}"
    store, key = CacheStore(tmp_path), ExportKey.build(_client(capped).base_url, "big", "parquet", True)
    assert store.lookup(key) is not None and store.work_area(key).is_dir(), "the kill should leave entry and chunks"
    assert planned_chunk_size(store, key) is None, "a build would resume the chunks of a published version"
    assert not store.work_area(key).exists(), "the chunks of a published version were kept"


@pytest.mark.parametrize("include_images", [False, True])
def test_metadata_too_large_for_one_export_is_a_clear_error(big_root, tmp_path, include_images):
    """Chunks are chosen by the media ids the metadata names; no documented call lists them
    without an export, so a metadata-only export rejected as too large ends the fetch, saying how
    to go on, rather than as a bare REJECTED."""
    limited = LocalVisualLayer(big_root, export_polls=0, max_images_per_export=3, max_entities_per_export=5)
    with limited as service, pytest.raises(errors.ExportFailedError, match="cannot be split without") as caught:
        fetch_export("big", client=_client(service), cache_dir=tmp_path, include_images=include_images)
    assert caught.value.status == "REJECTED" and "exceeds threshold" in caught.value.result_message
    assert not list(tmp_path.rglob("*.manifest.json")), "nothing was published"


@pytest.fixture
def entity_capped(big_root):
    """The local service with at most 4 entities per metadata-only export and 3 images per export."""
    with LocalVisualLayer(big_root, export_polls=0, max_images_per_export=3, max_entities_per_export=4) as service:
        yield service


def _selection(big_root, tmp_path) -> list[str]:
    """Seven of the dataset's media ids and two it does not hold (sorted last: the last chunk of
    four holds one of them alone)."""
    with LocalVisualLayer(big_root, export_polls=0) as service:
        entry = fetch_export("big", client=_client(service), cache_dir=tmp_path / "ids", include_images=False)
    known = sorted(read_metadata_file(entry.metadata_path).column("media_id").to_pylist())
    return [*known[:7], "zz-not-in-the-dataset-1", "zz-not-in-the-dataset-2"]


@pytest.mark.parametrize("export_format", ["parquet", "json"])
def test_a_selection_too_large_for_one_metadata_export_comes_in_chunks(
    big_root, entity_capped, tmp_path, export_format
):
    selection = _selection(big_root, tmp_path)
    with LocalVisualLayer(big_root, export_polls=0) as uncapped:
        reference = fetch_export(
            "big", client=_client(uncapped), cache_dir=tmp_path / "reference", include_images=False,
            media_ids=selection, export_format=export_format,
        )  # fmt: skip
    entry = fetch_export(
        "big", client=_client(entity_capped), cache_dir=tmp_path / "cache", include_images=False,
        media_ids=selection, export_format=export_format,
    )  # fmt: skip
    assert entry.metadata_path.name == f"metadata.{export_format}"
    assert entry.row_count == 7, "the chunks should hold the seven ids the dataset has"
    assert _content(entry) == _content(reference), "the chunked selection differs from one export of it"
    # One export of the nine ids, rejected; then chunks of 4, 4 and 1 (the limit the answer named).
    assert len(_starts(entity_capped, images=False)) == 1 + 3
    assert not any(entry.entry_dir.rglob(".chunks")), "the chunks were not cleaned up after publishing"
    entity_capped.clear_requests()
    again = fetch_export(
        "big", client=_client(entity_capped), cache_dir=tmp_path / "cache", include_images=False,
        media_ids=selection, export_format=export_format,
    )  # fmt: skip
    assert again == entry and entity_capped.requests == [], "a cached chunked selection must be reused as it is"


def test_a_selection_with_images_too_large_for_its_metadata_export(big_root, entity_capped, tmp_path):
    """Its images come in chunks of the ids its metadata names, and that metadata in chunks of its own."""
    selection = _selection(big_root, tmp_path)
    with LocalVisualLayer(big_root, export_polls=0) as uncapped:
        reference = fetch_export("big", client=_client(uncapped), cache_dir=tmp_path / "reference", media_ids=selection)
    entry = fetch_export("big", client=_client(entity_capped), cache_dir=tmp_path / "cache", media_ids=selection)
    assert entry.row_count == 7 and len(list(entry.images_dir.rglob("*.jpg"))) == 7
    assert _content(entry) == _content(reference), "the chunked selection differs from one export of it"


def test_a_chunk_rejected_for_another_reason_ends_the_fetch(big_root, entity_capped, tmp_path):
    """Only a rejection that says the selection is empty means none of a chunk's ids is in the
    dataset; any other is final (contract §4): a chunk's rows are never left out unsaid."""
    selection = _selection(big_root, tmp_path)
    message = "Export rejected: too many concurrent exports for this account"
    entity_capped.faults.fail_exports(message, status="REJECTED", times=1)  # the first chunk's
    with pytest.raises(errors.ExportFailedError, match="too many concurrent exports") as caught:
        fetch_export(
            "big", client=_client(entity_capped), cache_dir=tmp_path / "cache", include_images=False,
            media_ids=selection, chunks_in_flight=1,
        )  # fmt: skip
    assert caught.value.status == "REJECTED"
    assert not list((tmp_path / "cache").rglob("*.manifest.json")), "nothing was published"
    # Once the platform takes it, the same call finishes the selection whole.
    entry = fetch_export(
        "big", client=_client(entity_capped), cache_dir=tmp_path / "cache", include_images=False,
        media_ids=selection, chunks_in_flight=1,
    )  # fmt: skip
    assert entry.row_count == 7


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("REJECTED", "Too many entities in this export (limit 2)"),  # the contract's reason, in other words
        ("FAILED", "Export failed: 4 entities exceeds threshold of 2"),  # the message is what says it
    ],
)
def test_a_chunk_too_large_in_other_words_is_cut_smaller(big_root, entity_capped, tmp_path, status, message):
    selection = _selection(big_root, tmp_path)
    entity_capped.faults.fail_exports(message, status=status, times=1)  # the first chunk's
    entry = fetch_export(
        "big", client=_client(entity_capped), cache_dir=tmp_path / "cache", include_images=False,
        media_ids=selection, chunks_in_flight=1,
    )  # fmt: skip
    assert entry.row_count == 7, "every id the dataset holds must arrive, in smaller chunks"
    assert len(_starts(entity_capped, images=False)) > 1 + 3, "the chunks were not cut smaller"


def test_a_killed_chunked_selection_finishes_only_the_chunks_it_had_not(big_root, entity_capped, tmp_path):
    selection = _selection(big_root, tmp_path)
    code = _killed_at_check(
        2, f"url={entity_capped.url!r}, cache_dir={str(tmp_path)!r}, include_images=False, media_ids={selection!r}"
    )
    result = run_child([sys.executable, "-c", code], env=child_env())
    assert result.returncode == -signal.SIGKILL, f"the child was not killed at its second chunk: {result.stderr}"
    chunk_dirs = sorted(p.name for p in tmp_path.rglob(".chunks/*") if p.is_dir() and not p.name.startswith("."))
    assert chunk_dirs == ["0"], f"expected chunk 0 kept after the kill, found {chunk_dirs}"
    before = len(_starts(entity_capped, images=False))
    entry = fetch_export(
        "big", client=_client(entity_capped), cache_dir=tmp_path, include_images=False, media_ids=selection,
        chunks_in_flight=1,
    )  # fmt: skip
    started = len(_starts(entity_capped, images=False)) - before
    # Chunk 1 was exported when the child died: its task is resumed, and only chunk 2 is started.
    assert started == 1, f"the resumed run started {started} exports; only chunk 2 had not been"
    assert entry.row_count == 7


@pytest.mark.parametrize("include_images", [False, True])
def test_a_selection_of_more_ids_than_one_request_carries_comes_in_chunks(big_root, tmp_path, include_images):
    """A proxy before the platform refuses a body over its size (413, nginx's default is 1 MiB:
    about 27,000 media ids); the selection is then asked for in chunks, halved until one fits."""
    selection = _selection(big_root, tmp_path)
    with LocalVisualLayer(big_root, export_polls=0) as uncapped:
        reference = fetch_export(
            "big", client=_client(uncapped), cache_dir=tmp_path / "reference", media_ids=selection,
            include_images=include_images,
        )  # fmt: skip
    with LocalVisualLayer(big_root, export_polls=0, max_images_per_export=3, max_body_bytes=120) as service:
        entry = fetch_export(
            "big", client=_client(service), cache_dir=tmp_path / "cache", media_ids=selection,
            include_images=include_images,
        )  # fmt: skip
        posted = [len(r.json["media_ids"]) for r in service.requests if r.method == "POST" and r.status == 200]
        refused = [r for r in service.requests if r.status == 413]
    assert entry.row_count == 7 and _content(entry) == _content(reference), "the chunks differ from one export"
    assert refused, "the service should have refused the whole selection's request"
    # Two ids make a 95-byte body, four 175: chunks were halved until they carried two at most.
    assert max(posted) <= 2, f"a selective export of {max(posted)} ids got through a 120-byte limit"


def test_a_proxys_413_page_for_a_selection_is_answered_with_chunks(big_root, tmp_path):
    """The refusal a client meets in front of the real platform: nginx's HTML page, not JSON."""
    selection = _selection(big_root, tmp_path)
    page = "<html><head><title>413 Request Entity Too Large</title></head><body>nginx</body></html>"
    with LocalVisualLayer(big_root, export_polls=0) as service:
        service.faults.fail_next("selective_export", 413, body=page, content_type="text/html")
        entry = fetch_export(
            "big", client=_client(service), cache_dir=tmp_path / "cache", media_ids=selection, include_images=False
        )
        posted = [len(r.json["media_ids"]) for r in service.requests if r.method == "POST" and r.status == 200]
    assert entry.row_count == 7
    assert sorted(posted) == [4, 5], "after the refusal, the selection should come in two halves"


def _polls_of(service, task_id: str) -> int:
    return sum(
        1 for r in service.requests if r.endpoint == "export_status" and r.query.get("export_task_id") == task_id
    )


def _work_area(service, tmp_path):
    return CacheStore(tmp_path).work_area(ExportKey.build(_client(service).base_url, "big", "parquet", True))


def test_one_ctrl_c_stops_a_chunked_export_which_the_next_run_resumes(capped, tmp_path):
    """Chunks wait on their exports in threads, polling for up to export_timeout_s (3 h by default):
    a Ctrl-C once waited for them all, and the CLI took three to stop, printing a traceback."""
    # A first run, one chunk at a time, is killed while it checks chunk 1 (0-based): chunk 0 is in.
    killed = run_child([sys.executable, "-c", _killed_at_check(2, f"url={capped.url!r}, cache_dir={str(tmp_path)!r}")])
    assert killed.returncode == -signal.SIGKILL, f"the first run was not killed at its second chunk: {killed.stderr}"
    capped.faults.hold_exports(None)  # the chunks started from now on stay IN_PROGRESS
    work = _work_area(capped, tmp_path)
    code = (
        "import signal, sys\n"
        # A shell starts a command in the background ignoring SIGINT: the child takes it as Ctrl-C.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from vl_datasets.cli.main import main\n"
        f"sys.exit(main(['export', 'big', '--api-url', {capped.url!r}, '--cache-dir', {str(tmp_path)!r}]))\n"
    )
    with Child([sys.executable, "-c", code], env={**child_env(), "VL_DATASETS_PROGRESS": "0"}) as child:

        def waiting_on_held_chunks() -> bool:
            # Chunk 1 in from its completed task, chunks 2 and 3 exported and polled twice: their
            # threads sleep between polls.
            records = [TaskRecord(work / f"{i}.task").read() for i in (2, 3)]
            return (work / "1").is_dir() and all(r is not None and _polls_of(capped, r) >= 2 for r in records)

        child.until(waiting_on_held_chunks, "chunks 2 and 3 polled twice while held")
        polls = capped.count("export_status")
        os.kill(child.pid, signal.SIGINT)
        # Stopped, the child polls no more than the polls under way when the Ctrl-C came (one per
        # chunk in flight); a child that waits on its chunks goes on polling them every few seconds.
        wait_until(
            lambda: child.process.poll() is not None or capped.count("export_status") - polls > 6,
            "the child's end after one Ctrl-C",
            progress=child.progress,
        )
        assert child.process.poll() is not None, (
            f"one Ctrl-C did not stop the chunked export: its chunks were polled "
            f"{capped.count('export_status') - polls} times since"
        )
        assert child.wait() == 130, child.report("did not exit 130 (interrupted)")
        assert "Traceback" not in child.text("stderr"), child.report("printed a traceback")
    kept = {p.name for p in work.iterdir()}
    assert {"0", "1", "2.task", "3.task"} <= kept, f"the interrupted chunks' records were not kept: {sorted(kept)}"
    capped.faults.reset()
    capped.clear_requests()
    entry = fetch_export("big", client=_client(capped), cache_dir=tmp_path)  # the entry's lock is free
    assert entry.row_count == N_ITEMS and len(list(entry.images_dir.rglob("*.jpg"))) == N_ITEMS
    assert _starts(capped, images=True) == [], "the next run exported again chunks that were in or recorded"


def test_a_chunk_failing_for_good_ends_the_fetch_at_once_naming_the_chunk(capped, tmp_path):
    """A chunk's REJECTED was raised only once every chunk in flight had ended (hours, by default),
    and did not say which chunk of how many it was."""
    client = Client(capped.url, progress=False, env={})  # real waits: a chunk in flight polls every few seconds
    metadata = fetch_export("big", client=client, cache_dir=tmp_path, include_images=False)
    ids = sorted(read_metadata_file(metadata.metadata_path).column("media_id").to_pylist())
    capped.faults.hold_exports(None)  # every chunk stays IN_PROGRESS ...
    capped.faults.fail_exports("Export rejected: permission denied", status="REJECTED", times=1)  # ... one is rejected
    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            fetch_export("big", client=client, cache_dir=tmp_path, max_images_per_export=3)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    try:
        # Its siblings poll once, maybe a few times on a loaded machine, before they are stopped;
        # waited on, they poll on for good: a bound far above the first, reached only by the second.
        polls = Stall(lambda: capped.count("export_status"))
        wait_until(
            lambda: not thread.is_alive() or capped.count("export_status") > 60, "the rejection's error", progress=polls
        )
        assert not thread.is_alive(), (
            f"the rejection waited for the chunks in flight: {capped.count('export_status')} status polls so far"
        )
    finally:
        capped.faults.reset()  # a fetch still waiting gets its chunks, and ends
        thread.join()
    (error,) = outcome
    assert isinstance(error, errors.ExportFailedError) and error.status == "REJECTED", repr(error)
    # The chunk rejected is the one whose task record is gone; its siblings' stay for the next run.
    work = _work_area(capped, tmp_path)
    started = {ids.index(r.json["media_ids"][0]) // 3 for r in _starts(capped, images=True)}
    recorded = {int(p.stem) for p in work.glob("*.task")}
    (rejected,) = started - recorded
    first, last = ids[3 * rejected], ids[min(3 * rejected + 2, N_ITEMS - 1)]
    which = f"media id {first!r}" if first == last else f"media ids {first!r}..{last!r}"
    assert str(error).startswith(f"Chunk {rejected + 1} of 4 ({which}): Export {error.task_id} "), str(error)
    assert "Export rejected: permission denied" in str(error)
    before = len(_starts(capped, images=True))
    entry = fetch_export("big", client=_client(capped), cache_dir=tmp_path, max_images_per_export=3)
    assert entry.row_count == N_ITEMS
    assert len(_starts(capped, images=True)) - before == 1, "only the rejected chunk should be exported again"


def test_a_chunks_failed_download_names_the_chunk(capped, tmp_path):
    client = _client(capped)
    metadata = fetch_export("big", client=client, cache_dir=tmp_path, include_images=False)
    first, last = sorted(read_metadata_file(metadata.metadata_path).column("media_id").to_pylist())[:3][::2]
    capped.faults.fail_next("cdn", 404)
    with pytest.raises(errors.DownloadError, match=r"HTTP 404") as caught:
        fetch_export("big", client=client, cache_dir=tmp_path, max_images_per_export=3, chunks_in_flight=1)
    assert str(caught.value).startswith(f"Chunk 1 of 4 (media ids {first!r}..{last!r}): Download of export ")
