"""The prepared-image store on its own: records shared between processes, complete or absent after a kill."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from tests.waits import join
from vl_datasets import PreparedStoreError
from vl_datasets.cache.store import LocalExport, derived_dir
from vl_datasets.loading import prepared
from vl_datasets.loading.images import decode_image
from vl_datasets.loading.prepared import StoreSettings, keys_of, list_stores, open_store, remove_store
from vl_datasets.loading.prepared_source import prepare_pixels, prepared_image, shorter_side

FORK = multiprocessing.get_context("fork")


def entry(tmp_path: Path, version: str = "v1") -> LocalExport:
    return LocalExport(
        path=tmp_path / version,
        metadata_path=tmp_path / version / "metadata.json",
        images_dir=None,
        task=None,
        created_at=None,
        library_version=None,
        version=version,
        entry_dir=tmp_path,
    )


def pixels_for(i: int) -> np.ndarray:
    """An image whose every byte and whose size say which one it is."""
    return np.full((4 + i % 5, 6 + i % 3, 3), i % 251, np.uint8)


def write_images(store_path: Path, first: int, count: int) -> None:
    store = prepared.PreparedStore(store_path, StoreSettings(32))
    for i in range(first, first + count):
        store.put(f"img_{i}.jpg", pixels_for(i))


def test_an_image_put_by_one_process_is_read_by_every_other(tmp_path):
    store = open_store(entry(tmp_path), StoreSettings(32))
    assert store.get("img_0.jpg") is None
    child = FORK.Process(target=write_images, args=(store.path, 0, 20))
    child.start()
    join([child], "the other process's writes")
    assert child.exitcode == 0
    store.put("img_20.jpg", pixels_for(20))
    for i in range(21):
        got = store.get(f"img_{i}.jpg")
        assert got is not None, f"image {i} written by another process is not seen"
        assert np.array_equal(got, pixels_for(i)), f"image {i} came back with other pixels"
    status = store.status(keys_of([f"img_{i}.jpg" for i in range(22)]))
    assert status.tolist() == [1] * 21 + [0]
    assert len(list((store.path / "parts").glob("*.pixels"))) == 2, "one part per writing process"


def test_the_keys_of_many_paths_are_each_paths_own_key():
    # A store written with the keys of one image at a time is read with the keys of all at once.
    paths = ["a.jpg", "dir/sub/b.png", "caf\u00e9/\u00e9t\u00e9.jpg", "bad\udcffbyte.jpg", ""]
    keys = keys_of(paths)
    assert keys.dtype == np.uint64 and keys.shape == (len(paths), 2)
    assert [tuple(int(v) for v in row) for row in keys] == [prepared.image_key(p) for p in paths]
    assert keys_of([]).shape == (0, 2)


def test_a_store_is_keyed_by_version_and_settings(tmp_path):
    first = open_store(entry(tmp_path), StoreSettings(32))
    first.put("a.jpg", pixels_for(1))
    assert open_store(entry(tmp_path), StoreSettings(64)).get("a.jpg") is None, "another size shares the store"
    assert open_store(entry(tmp_path, "v2"), StoreSettings(32)).get("a.jpg") is None, "a new version shares it"
    other_root = StoreSettings(32, source='{"root": "s3://b"}')
    assert open_store(entry(tmp_path), other_root).get("a.jpg") is None, "another images_root shares it"
    again = open_store(entry(tmp_path), StoreSettings(32)).get("a.jpg")
    assert again is not None
    assert np.array_equal(again, pixels_for(1))
    assert first.path == derived_dir(entry(tmp_path), "prepared", StoreSettings(32).digest), "the cache places it"
    assert first.path.is_relative_to(tmp_path), "the store lives beside its cache entry"


def writer_killed_mid_stream(store_path: Path) -> None:
    write_images(store_path, 0, 10_000_000)


def test_a_writer_killed_anywhere_leaves_records_whole_or_absent(tmp_path):
    store = open_store(entry(tmp_path), StoreSettings(32))
    for delay in (0.05, 0.13, 0.31):
        child = FORK.Process(target=writer_killed_mid_stream, args=(store.path,))
        child.start()
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        join([child], "the killed writer's end")
    keys = [f"img_{i}.jpg" for i in range(2000)]
    seen = store.status(keys_of(keys))
    assert seen[:10].all(), "nothing was written before the kills: the test proves nothing"
    for i in np.flatnonzero(seen):
        assert np.array_equal(store.get(keys[i]), pixels_for(int(i))), f"image {i} is torn"
    store.put("after.jpg", pixels_for(3))  # a later process goes on from there
    assert np.array_equal(store.get("after.jpg"), pixels_for(3))


def test_torn_and_dangling_index_records_are_dropped(tmp_path, caplog):
    store = open_store(entry(tmp_path), StoreSettings(32))
    write_images(store.path, 0, 3)
    index = next((store.path / "parts").glob("*.index"))
    pixels = index.with_suffix(".pixels")
    with open(pixels, "r+b") as handle:  # the last image's pixels never reached the disk
        handle.truncate(pixels.stat().st_size - 1)
    with open(index, "ab") as handle:  # and half of a record was being written
        handle.write(b"\x01" * 20)
    reader = prepared.PreparedStore(store.path, store.settings)
    assert reader.status(keys_of(["img_0.jpg", "img_1.jpg", "img_2.jpg"])).tolist() == [1, 1, 0]
    assert "Dropping 1 damaged record" in caplog.text
    assert np.array_equal(reader.get("img_1.jpg"), pixels_for(1))


def test_a_failure_is_noted_and_a_later_success_wins(tmp_path):
    store = open_store(entry(tmp_path), StoreSettings(32))
    store.put_failed("bad.jpg")
    assert store.get("bad.jpg") is None, "a failure reads as an image"
    assert store.status(keys_of(["bad.jpg"])).tolist() == [2]
    store.put("bad.jpg", pixels_for(7))
    reader = prepared.PreparedStore(store.path, store.settings)
    assert reader.status(keys_of(["bad.jpg"])).tolist() == [1]
    assert np.array_equal(reader.get("bad.jpg"), pixels_for(7))
    assert reader.counts() == (1, 0)


def test_lookups_stay_right_across_merges(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "MERGE_AT", 7)
    store = open_store(entry(tmp_path), StoreSettings(32))
    child = FORK.Process(target=write_images, args=(store.path, 0, 30))
    child.start()
    join([child], "the other process's writes")
    assert child.exitcode == 0
    for i in range(30, 45):
        store.put(f"img_{i}.jpg", pixels_for(i))
    reader = prepared.PreparedStore(store.path, store.settings)
    for i in range(45):
        assert np.array_equal(reader.get(f"img_{i}.jpg"), pixels_for(i)), f"image {i} lost in a merge"
    assert reader.counts() == (45, 0)


def test_the_cache_commands_see_and_remove_a_store(tmp_path):
    store = open_store(entry(tmp_path), StoreSettings(32))
    write_images(store.path, 0, 4)
    (info,) = list_stores(tmp_path)
    assert (info.version, info.size, info.images, info.complete) == ("v1", 32, 4, False)
    manifest = store.write_manifest()
    assert manifest["images"] == 4
    (info,) = list_stores(tmp_path)
    assert info.complete
    assert info.bytes == manifest["bytes"] == sum(pixels_for(i).nbytes for i in range(4)) + 4 * prepared.RECORD.itemsize
    remove_store(store.path)
    assert list_stores(tmp_path) == []
    with pytest.raises(PreparedStoreError, match="is gone"):
        store.get("img_9.jpg")


def jpeg(width: int, height: int, fmt: str = "JPEG") -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("width", "height", "fmt", "expected"),
    [
        (400, 300, "JPEG", (48, 64)),  # landscape, DCT-scaled decode
        (90, 200, "PNG", (107, 48)),  # portrait, not a JPEG
        (40, 30, "JPEG", (30, 40)),  # smaller than the size: never upscaled
    ],
)
def test_prepared_pixels_keep_the_aspect_with_the_shorter_side_at_the_size(width, height, fmt, expected):
    pixels = prepare_pixels(jpeg(width, height, fmt), 48)
    assert pixels.shape == (*expected, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous
    assert shorter_side((height, width), 48) == expected


def texture(width: int, height: int) -> bytes:
    """A JPEG with detail at every scale a resize filters (gratings, noise): where resizing twice
    (once to prepare, once to the training size) shows, and a plain gradient would hide it."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(float)
    pixels = np.full((height, width, 3), 128.0) + rng.normal(0, 4, (height, width, 3))
    for channel in range(3):
        for _ in range(6):
            freq, angle, phase = rng.uniform(0.01, 0.12), rng.uniform(0, np.pi), rng.uniform(0, 6)
            pixels[..., channel] += 20 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_at_the_training_size_a_prepared_image_is_within_1_5_grey_levels_of_the_direct_path():
    data = texture(400, 300)
    direct = decode_image(data, size=112).float()
    image = prepared_image(prepare_pixels(data, 128), "tensor", 112)
    assert image.shape == direct.shape
    difference = (image.float() - direct).abs().mean().item()
    assert difference < 1.5, f"prepared and direct images differ by {difference:.2f} grey levels on average"


def damage(store_path: Path, start: int, length: int, fill: bytes = b"\0") -> None:
    """Overwrite ``length`` pixel bytes of the store's one part from ``start``, as a crash or a disk would."""
    (pixels,) = (store_path / "parts").glob("*.pixels")
    with open(pixels, "r+b") as handle:
        handle.seek(start)
        handle.write(fill * length)


def test_pixels_zeroed_or_changed_are_never_served(tmp_path, caplog):
    store = open_store(entry(tmp_path), StoreSettings(32))
    write_images(store.path, 0, 4)
    offsets = np.cumsum([0] + [pixels_for(i).nbytes for i in range(4)])
    damage(store.path, int(offsets[1]), pixels_for(1).nbytes)  # what a crash leaves of pixels never written back
    damage(store.path, int(offsets[2]) + 5, 1, b"\x07")  # one byte changed on a failing disk
    reader = prepared.PreparedStore(store.path, store.settings)
    with caplog.at_level("WARNING", logger="vl_datasets"):
        got = [reader.get(f"img_{i}.jpg") for i in range(4)]
    assert got[1] is None and got[2] is None, "damaged pixels were served"
    assert np.array_equal(got[0], pixels_for(0)) and np.array_equal(got[3], pixels_for(3))
    assert "img_1.jpg" in caplog.text and "img_2.jpg" in caplog.text and "checksum" in caplog.text
    reader.put("img_1.jpg", pixels_for(1))  # prepared again: the new copy is served, the damaged one never
    assert np.array_equal(reader.get("img_1.jpg"), pixels_for(1))
    assert np.array_equal(prepared.PreparedStore(store.path, store.settings).get("img_1.jpg"), pixels_for(1))


def test_a_part_truncated_under_a_reader_reads_as_missing_and_is_written_again(tmp_path, caplog):
    store = open_store(entry(tmp_path), StoreSettings(32))
    store.put("a.jpg", pixels_for(1))
    store.put("b.jpg", pixels_for(2))
    store.load()
    (pixels,) = (store.path / "parts").glob("*.pixels")
    os.truncate(pixels, 0)  # under this very process, which still writes to it
    assert store.get("a.jpg") is None and store.get("b.jpg") is None
    assert "cut short" in caplog.text
    store.put("b.jpg", pixels_for(2))  # appended where the file now ends, not where it ended before
    assert np.array_equal(store.get("b.jpg"), pixels_for(2))
    assert np.array_equal(prepared.PreparedStore(store.path, store.settings).get("b.jpg"), pixels_for(2))


def test_a_copy_of_another_original_is_not_served_for_this_one(tmp_path):
    store = open_store(entry(tmp_path), StoreSettings(32))
    store.put("a.jpg", pixels_for(1), source=111)
    assert np.array_equal(store.get("a.jpg", source=111), pixels_for(1))
    assert store.get("a.jpg", source=222) is None, "a copy of a replaced original was served"
    assert store.status(keys_of(["a.jpg"]), np.array([222], np.uint64)).tolist() == [0]
    assert store.missing(["a.jpg", "a.jpg"], [111, 222]) == [1]
    store.put("a.jpg", pixels_for(2), source=222)
    reader = prepared.PreparedStore(store.path, store.settings)
    assert np.array_equal(reader.get("a.jpg", source=222), pixels_for(2))
    assert np.array_equal(reader.get("a.jpg", source=111), pixels_for(1))
    assert reader.counts() == (1, 0), "two copies of one image count as two images"


def test_a_local_originals_identity_is_its_size_and_mtime_and_changes_with_either(tmp_path):
    """Stored with every record: a new release must compute the same digest, or every store it
    finds would be prepared again."""
    from vl_datasets.loading.object_identity import identity_of
    from vl_datasets.loading.sources import LocalFolder

    (tmp_path / "a").mkdir()
    image = tmp_path / "a" / "x.jpg"
    image.write_bytes(b"\xff\xd8" + b"1" * 98)
    folder = LocalFolder(tmp_path)
    stat = image.stat()
    first = folder.identity("a/x.jpg")
    assert first == identity_of(stat.st_size, stat.st_mtime_ns) != 0
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert folder.identity("a/x.jpg") not in (first, 0), "a touched original kept its identity"
    image.write_bytes(b"\xff\xd8" + b"2" * 99)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder.identity("a/x.jpg") not in (first, 0), "an original of another size kept its identity"
    assert folder.identity("a/gone.jpg") == 0
