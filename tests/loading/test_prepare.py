"""VisualLayerDataset(prepare=S): images decoded once into the store, then read from it, with the
dataset behaving as without prepare; ds.prepare() on every core and split between a node's ranks."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import shutil

import PIL.Image
import pytest
import torch

from tests.waits import join
from vl_datasets import ConfigurationError, ImageDecodeError, PrepareTimeoutError
from vl_datasets.loading import prepare as prepare_job
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.prepared import MANIFEST_FILE, RECORD, keys_of, list_stores
from vl_datasets.testing import write_dataset

ITEMS = 12
FORK = multiprocessing.get_context("fork")


@pytest.fixture
def export(tmp_path):
    return write_dataset(tmp_path, "ds", n_items=ITEMS, image_size=(80, 60))


def open_prepared(export, tmp_path, **options):
    return VisualLayerDataset.from_export(export, cache_dir=tmp_path / "cache", prepare=48, **options)


def every_image(ds):
    return [ds[i][0] for i in range(len(ds))]


def in_store(ds):
    store = ds.images._source.store
    return store.status(keys_of(ds.images.paths.to_pylist()))


def test_after_prepare_the_originals_are_never_read(export, tmp_path):
    ds = open_prepared(export, tmp_path, image_size=40)
    summary = ds.prepare(num_workers=2, progress=False)
    assert (summary.images, summary.prepared, summary.skipped) == (ITEMS, ITEMS, [])
    assert (summary.store / MANIFEST_FILE).is_file(), "a finished preparation leaves no manifest"
    before = every_image(ds)
    shutil.rmtree(export / "images")
    reopened = open_prepared(export, tmp_path, image_size=40)
    after = every_image(reopened)
    assert all(a.shape == (3, 40, 40) for a in after)
    assert all(torch.equal(a, b) for a, b in zip(after, before)), "a reopened dataset reads other pixels"
    assert reopened.prepare(progress=False).prepared == 0, "prepared images are prepared again"


def test_the_first_epoch_fills_the_store_and_later_epochs_read_it(export, tmp_path):
    ds = open_prepared(export, tmp_path, image_size=40)
    loader = ds.dataloader(4, shuffle=False, num_workers=2)
    first = torch.cat([images for images, _ in loader])
    assert (in_store(ds) == 1).all(), "the first epoch left images unprepared"
    assert len(list((ds.images._source.store.path / "parts").glob("*.index"))) <= 2, "more parts than writing workers"
    shutil.rmtree(export / "images")
    second = torch.cat([images for images, _ in loader])
    assert torch.equal(first, second), "the first epoch's images differ from the store's"


def test_targets_transforms_and_pil_behave_as_without_prepare(export, tmp_path):
    options = {"target_transform": lambda label: label + 100, "transform": lambda image: image.float() / 255}
    direct = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "cache", image_size=40, **options)
    prepared = open_prepared(export, tmp_path, image_size=40, **options)
    for i in range(len(direct)):
        (want, want_target), (got, got_target) = direct[i], prepared[i]
        assert got_target == want_target
        assert got.dtype == torch.float32
        assert got.shape == want.shape
        assert (got - want).abs().mean() < 2 / 255, f"item {i} differs from the direct path"
    pil = open_prepared(export, tmp_path, decode="pil", image_size=(30, 40))[0][0]
    assert isinstance(pil, PIL.Image.Image)
    assert pil.size == (40, 30)
    native = open_prepared(export, tmp_path, decode="pil")[0][0]
    assert native.size == (64, 48), "without image_size, the prepared image (shorter side 48) comes out"
    assert open_prepared(export, tmp_path)[0][0].shape == (3, 48, 64)


@pytest.fixture
def corrupt(export):
    """The export with its fourth image's file garbled; returns its media id."""
    items = json.loads((export / "metadata.json").read_text())["media_items"]
    (export / "images" / items[3]["file_path"]).write_bytes(b"\xff\xd8\xff not a jpeg")
    return items[3]["media_id"]


def test_a_corrupt_original_is_reported_with_its_media_id(export, tmp_path, corrupt):
    ds = open_prepared(export, tmp_path)
    with pytest.raises(ImageDecodeError) as raised:
        ds.prepare(num_workers=2, progress=False)
    assert raised.value.media_id == corrupt
    assert corrupt in str(raised.value)
    assert (in_store(ds) == 1).sum() == ITEMS - 1, "the other images were not prepared"
    index = ds.media_ids.index(corrupt)
    with pytest.raises(ImageDecodeError) as raised:
        ds[index]
    assert raised.value.media_id == corrupt


def test_with_on_error_skip_a_corrupt_original_is_listed(export, tmp_path, corrupt):
    ds = open_prepared(export, tmp_path, on_error="skip", image_size=40)
    summary = ds.prepare(num_workers=0, progress=False)
    assert [s.media_id for s in summary.skipped] == [corrupt]
    assert summary.images == ITEMS - 1
    loader = ds.dataloader(5, num_workers=0)
    assert sum(len(labels) for _, labels in loader) == ITEMS - 1
    assert [s.media_id for s in loader.skipped] == [corrupt]


def test_a_refreshed_export_gets_a_new_store(export, tmp_path):
    old = open_prepared(export, tmp_path)
    old.prepare(progress=False)
    metadata = json.loads((export / "metadata.json").read_text())
    metadata["media_items"] = metadata["media_items"][:-1]
    (export / "metadata.json").write_text(json.dumps(metadata))
    new = open_prepared(export, tmp_path)
    assert new.entry.version != old.entry.version
    assert new.images._source.store.path != old.images._source.store.path
    assert (in_store(new) == 0).all()
    assert {s.version for s in list_stores(new.entry.entry_dir)} == {old.entry.version, new.entry.version}


def test_prepare_goes_on_from_what_is_there(export, tmp_path):
    ds = open_prepared(export, tmp_path)
    for i in range(5):
        ds[i]
    summary = ds.prepare(num_workers=1, progress=False)
    assert (summary.prepared, summary.images) == (ITEMS - 5, ITEMS)


def rank_prepares(export, tmp_path, rank, results) -> None:
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    summary = open_prepared(export, tmp_path).prepare(num_workers=1, progress=False)
    results.put((rank, summary.prepared, summary.images))


def test_a_nodes_ranks_split_the_work_and_each_returns_with_all_of_it(export, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_job, "POLL_S", 0.05)  # the forked ranks inherit it
    open_prepared(export, tmp_path)  # the export opened once, as torchrun's ranks find it
    results = FORK.Queue()
    ranks = [FORK.Process(target=rank_prepares, args=(export, tmp_path, rank, results)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    join(ranks, "the two ranks' prepare()")
    assert [p.exitcode for p in ranks] == [0, 0]
    done = sorted(results.get(timeout=1) for _ in ranks)
    assert [images for _, _, images in done] == [ITEMS, ITEMS], "a rank returned before the node was done"
    assert sum(prepared for _, prepared, _ in done) == ITEMS, "the ranks did not split the images"
    assert all(prepared > 0 for _, prepared, _ in done)


def test_a_rank_stops_waiting_when_the_others_stop(export, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_job, "POLL_S", 0.02)
    ds = open_prepared(export, tmp_path)
    with pytest.raises(PrepareTimeoutError, match="never arrived") as raised:
        prepare_job.prepare_images(
            ds.images._source,
            ds.images.paths,
            ds.table.column("media_id"),
            num_workers=0,
            progress=False,
            stall_timeout_s=0.2,
            env={"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"},
        )
    assert raised.value.path == str(ds.images._source.store.path)


def test_images_from_another_root_get_their_own_store(export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export / "images", copy)
    from_export_images = open_prepared(export, tmp_path)
    from_root = open_prepared(export, tmp_path, images_root=copy, image_size=40)
    assert from_root.images._source.store.path != from_export_images.images._source.store.path
    from_root.prepare(num_workers=0, progress=False)
    shutil.rmtree(copy)
    assert from_root[0][0].shape == (3, 40, 40)


def test_roots_that_differ_only_in_their_query_get_their_own_store(export, tmp_path):
    """An endpoint that picks a version of its images by query (``?set=B``): B's store is not A's,
    whose copies would be served for B's paths, and the query (a token, often) is in no file."""
    from tests.loading.helpers import swapped_images
    from tests.loading.image_server import ImageServer

    b_query = "set=B&sig=SECRET-B"
    other = swapped_images(export / "images", tmp_path / "b")
    with ImageServer(export / "images", roots_by_query={b_query: other}) as server:
        a = open_prepared(export, tmp_path, images_root=f"{server.url}/?set=A&sig=SECRET-A", image_size=40)
        a.prepare(num_workers=0, progress=False)
        b = open_prepared(export, tmp_path, images_root=f"{server.url}/?{b_query}", image_size=40)
        elsewhere = open_prepared(export, tmp_path / "fresh", images_root=f"{server.url}/?{b_query}", image_size=40)
        assert all(torch.equal(b[i][0], elsewhere[i][0]) for i in range(ITEMS))
        assert not any(torch.equal(b[i][0], a[i][0]) for i in range(ITEMS))
        assert b.images._source.store.path != a.images._source.store.path
    for path in (tmp_path / "cache").rglob("*"):
        assert "SECRET" not in str(path)
        assert path.is_dir() or b"SECRET" not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prepare": 0}, "positive int"),
        ({"prepare": True}, "positive int"),
        ({"prepare": 32, "image_size": (24, 40)}, "smaller than image_size"),
    ],
)
def test_a_bad_prepare_is_refused_before_anything_is_opened(tmp_path, options, message):
    with pytest.raises(ConfigurationError, match=message):
        VisualLayerDataset.from_export(tmp_path / "nothing-here", **options)


def test_prepare_needs_a_dataset_opened_with_prepare(export, tmp_path):
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigurationError, match="prepare=S"):
        ds.prepare()


def test_the_report_shows_the_originals_and_prepares_nothing(export, tmp_path):
    from tests.helpers import thumbnails

    ds = open_prepared(export, tmp_path, task=None)
    page = ds.report(tmp_path / "report.html").read_text()
    assert thumbnails(page) == ITEMS and "unreadable image" not in page, "thumbnails must come from the originals"
    assert not in_store(ds).any(), "writing the report prepared images"


def stored_records(ds) -> int:
    """Every record the store's parts hold: an image prepared twice counts twice."""
    parts = (ds.images._source.store.path / "parts").glob("*.index")
    return sum(p.stat().st_size for p in parts) // RECORD.itemsize


def test_damaged_prepared_pixels_are_prepared_again_never_served(export, tmp_path, caplog):
    ds = open_prepared(export, tmp_path, image_size=40)
    ds.prepare(num_workers=0, progress=False)
    before = every_image(ds)
    (pixels,) = (ds.images._source.store.path / "parts").glob("*.pixels")
    with open(pixels, "r+b") as handle:  # zeroes in the middle, as a machine crash leaves them
        handle.seek(pixels.stat().st_size // 2)
        handle.write(b"\0" * 4000)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        after = every_image(open_prepared(export, tmp_path, image_size=40))
    assert all(torch.equal(a, b) for a, b in zip(after, before)), "damaged pixels were served"
    assert "is damaged" in caplog.text
    assert any(path in caplog.text for path in ds.images.paths.to_pylist()), "the warning names no image"


def replace_original(export, ds, index: int, colour: tuple[int, int, int]) -> None:
    path = export / "images" / ds.images.paths[index].as_py()
    PIL.Image.new("RGB", (80, 60), colour).save(path, "JPEG")


def test_an_original_replaced_after_prepare_is_prepared_again(export, tmp_path):
    ds = open_prepared(export, tmp_path, image_size=40)
    ds.prepare(num_workers=0, progress=False)
    replace_original(export, ds, 2, (250, 10, 10))
    assert ds[2][0].float().mean(dim=(1, 2)).tolist()[0] > 200, "the same dataset served the old copy"
    reopened = open_prepared(export, tmp_path, image_size=40)
    red = reopened[2][0].float().mean(dim=(1, 2))
    assert red[0] > 200 and red[1] < 60, "a reopened dataset served the copy of the replaced original"
    replace_original(export, ds, 5, (10, 250, 10))
    summary = reopened.prepare(num_workers=0, progress=False)
    assert summary.prepared == 1, "prepare() did not prepare the replaced original again (or redid others)"
    shutil.rmtree(export / "images")  # the new copies are served from the store alone
    green = open_prepared(export, tmp_path, image_size=40)[5][0].float().mean(dim=(1, 2))
    assert green[1] > 200 and green[0] < 60


def prepares_at_once(export, tmp_path, start, results) -> None:
    ds = open_prepared(export, tmp_path)
    start.wait()  # the test's wait for these processes is bounded by their progress
    results.put(ds.prepare(num_workers=0, progress=False).prepared)


def test_concurrent_prepare_calls_split_the_work(export, tmp_path):
    ds = open_prepared(export, tmp_path)  # the store created once, as a second job would find it
    start, results = FORK.Barrier(3), FORK.Queue()
    calls = [FORK.Process(target=prepares_at_once, args=(export, tmp_path, start, results)) for _ in range(3)]
    for process in calls:
        process.start()
    join(calls, "the three concurrent prepare() calls")
    assert [p.exitcode for p in calls] == [0, 0, 0]
    assert sum(results.get(timeout=1) for _ in calls) == ITEMS, "an image was prepared by two calls"
    assert stored_records(ds) == ITEMS, "the store grew past one copy of each image"
    assert (in_store(ds) == 1).all()


@pytest.mark.parametrize(
    ("damage", "opened", "warning"),
    [("truncated", "after", "cut short"), ("removed", "before", "is gone")],
)
def test_a_store_damaged_under_a_job_with_skip_skips_nothing(export, tmp_path, damage, opened, warning, caplog):
    """A job that took in the store's records (opened after prepare) or that misses (opened before)."""
    job = open_prepared(export, tmp_path, on_error="skip", image_size=40) if opened == "before" else None
    ds = open_prepared(export, tmp_path, on_error="skip", image_size=40)
    ds.prepare(num_workers=0, progress=False)
    before = torch.cat([images for images, _ in ds.dataloader(4, shuffle=False, num_workers=0)])
    job = job or open_prepared(export, tmp_path, on_error="skip", image_size=40)
    loader = job.dataloader(4, shuffle=False, num_workers=0)
    store = ds.images._source.store.path
    if damage == "truncated":
        for pixels in (store / "parts").glob("*.pixels"):
            os.truncate(pixels, 0)
    else:
        shutil.rmtree(store)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        after = torch.cat([images for images, _ in loader])
    assert loader.skipped == [], "good images were skipped"
    assert torch.equal(before, after)
    assert warning in caplog.text


def test_a_prepare_with_nothing_left_to_do_writes_nothing(export, tmp_path):
    """It rewrote the manifest every time: on a store mounted read-only since it was finished, a
    bare OSError (Errno 30) where the summary should come back."""
    ds = open_prepared(export, tmp_path, image_size=40)
    ds.prepare(num_workers=0, progress=False)
    manifest = ds.images._source.store.path / MANIFEST_FILE
    before = manifest.stat()
    summary = open_prepared(export, tmp_path, image_size=40).prepare(num_workers=0, progress=False)
    assert (summary.images, summary.prepared) == (ITEMS, 0)
    after = manifest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the manifest was written again"


@pytest.mark.parametrize(
    "manifest",
    ["[]", '"done"', '{"parts": []}', '{"parts": {"PART": {}}}', '{"parts": {"PART": {"pixel_bytes": "all"}}}',
     '{"parts": {"PART": {"pixel_bytes": -1}}}', '{"parts": {"PART": []}}', "\x00\x00"],
)  # fmt: skip
def test_a_hand_edited_manifest_vouches_for_nothing_and_prepare_checks_every_image(export, tmp_path, manifest, caplog):
    ds = open_prepared(export, tmp_path, image_size=40)
    ds.prepare(num_workers=0, progress=False)
    before = every_image(ds)
    store = ds.images._source.store.path
    part = next((store / "parts").glob("*.pixels")).stem
    (store / MANIFEST_FILE).write_text(manifest.replace("PART", part))
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        summary = open_prepared(export, tmp_path, image_size=40).prepare(num_workers=0, progress=False)
    assert (summary.images, summary.prepared) == (ITEMS, 0), "good images were prepared again, or lost"
    assert f"Ignoring the damaged {store / MANIFEST_FILE}" in caplog.text
    assert json.loads((store / MANIFEST_FILE).read_text())["images"] == ITEMS, "prepare() left the damage in place"
    shutil.rmtree(export / "images")
    assert all(torch.equal(a, b) for a, b in zip(every_image(open_prepared(export, tmp_path, image_size=40)), before))


@pytest.mark.parametrize("damage", ["[]", "null", '"store"', "truncated", "flipped"])
def test_a_damaged_store_json_is_written_again_and_its_images_kept(export, tmp_path, damage, caplog):
    """What store.json says, the store's folder name says too: a damaged one is no reason to lose
    (or to ask the user to delete) every prepared image, each checked as it is read anyway."""
    ds = open_prepared(export, tmp_path, image_size=40)
    ds.prepare(num_workers=0, progress=False)
    before = every_image(ds)
    identity = ds.images._source.store.path / "store.json"
    text = identity.read_text()
    if damage == "truncated":
        identity.write_text(text[: len(text) // 2])
    elif damage == "flipped":
        identity.write_text(text.replace('"', "'", 1))
    else:
        identity.write_text(damage)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        again = open_prepared(export, tmp_path, image_size=40)
    assert f"{identity} was damaged and is written again" in caplog.text
    assert json.loads(identity.read_text())["version"] == identity.parent.name.rsplit("-", 1)[0]
    summary = again.prepare(num_workers=0, progress=False)
    assert (summary.images, summary.prepared) == (ITEMS, 0), "the prepared images were not kept"
    assert all(torch.equal(a, b) for a, b in zip(every_image(again), before))


def test_a_store_json_that_cannot_be_read_is_named_not_rewritten(export, tmp_path, monkeypatch):
    """Unreadable (permissions on a shared cache, a failing disk) is not damaged: a rewrite there
    would fail as a bare PermissionError, or replace a sound file."""
    import pathlib

    from vl_datasets import PreparedStoreError

    ds = open_prepared(export, tmp_path, image_size=40)
    identity = ds.images._source.store.path / "store.json"
    before = identity.read_bytes()
    real = pathlib.Path.read_bytes

    def refused(path):
        if path == identity:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refused)
    with pytest.raises(PreparedStoreError, match=r"Cannot read .*store\.json: .*Permission denied"):
        open_prepared(export, tmp_path, image_size=40)
    monkeypatch.undo()
    assert identity.read_bytes() == before, "an unreadable store.json was rewritten"


def test_a_remote_original_replaced_is_prepared_again_by_prepare(export, tmp_path):
    import fsspec

    memory, root = fsspec.filesystem("memory"), f"memory://prepare-{tmp_path.name}"
    for image in (export / "images").rglob("*.jpg"):
        memory.pipe(f"{root}/{image.relative_to(export / 'images').as_posix()}", image.read_bytes())
    ds = open_prepared(export, tmp_path, images_root=root, image_size=40)
    ds.prepare(num_workers=0, progress=False)
    old = ds[2][0]
    red = io.BytesIO()
    PIL.Image.new("RGB", (80, 60), (250, 10, 10)).save(red, "JPEG")
    memory.pipe(f"{root}/{ds.images.paths[2].as_py()}", red.getvalue())
    reopened = open_prepared(export, tmp_path, images_root=root, image_size=40)
    assert torch.equal(reopened[2][0], old), "a read asked the remote root (documented: prepare() checks)"
    assert reopened.prepare(num_workers=0, progress=False).prepared == 1
    assert open_prepared(export, tmp_path, images_root=root, image_size=40)[2][0].float().mean(dim=(1, 2))[0] > 200
    memory.rm(root, recursive=True)
