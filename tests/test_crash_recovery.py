"""A fetch killed with SIGKILL anywhere leaves a cache that the next fetch turns into a clean entry.

Each seeded trial kills a child process running ``fetch_export`` at one point: while it polls the
export, in the middle of the download, in the middle of unpacking, or between the steps of
publication (before the version folder moves, before its index is written, before its manifest
is written). The points inside the library are reached by the child wrapping one library function
so that it kills its own process there; the server and the network are real. After each kill a
fresh fetch must give an entry with the same rows and image bytes as a clean fetch, and the cache
must hold nothing else: no staging folder, download, pending task or unmanifested version.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import change_dataset, child_env
from tests.waits import Child, run_child
from vl_datasets import Client, fetch_export
from vl_datasets.metadata.read import read_metadata_file

TRIALS_PER_POINT = 4

# Child-side wrappers: each replaces one library function with one that kills the process when
# it is called for the K-th time (K is drawn by the trial).
_DIE_AT = """
import os, signal
def die_at(module, name, k):
    real, calls = getattr(module, name), [0]
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(module, name, wrapper)
"""
POINTS = {
    # point: (object holding the function, its name, largest K) -- None: killed from outside instead
    "polling": None,
    "download": None,
    "unpack": ("vl_datasets.cache.archive", "_copy_member", 8),  # once per member: 9 in all
    "before the version moves": ("vl_datasets.cache.store.os", "rename", 1),
    "before the index": ("vl_datasets.metadata.index", "write_index_file", 1),
    "before the manifest": ("vl_datasets.cache.store", "write_json_atomic", 1),
}


def _child_code(url: str, cache_dir: Path, point: str, k: int) -> str:
    code = [_DIE_AT, "import vl_datasets.cache.archive, vl_datasets.cache.store, vl_datasets.metadata.index"]
    if (target := POINTS[point]) is not None:
        holder, name, _ = target
        code.append(f"die_at({holder}, {name!r}, {k})")
    code += [
        "from vl_datasets import Client, fetch_export",
        f"fetch_export('ds-ready', client=Client({url!r}, progress=False), cache_dir={str(cache_dir)!r})",
    ]
    return "\n".join(code)


def _kill_one_fetch(service, cache_dir: Path, point: str, rng: random.Random) -> None:
    target = POINTS[point]
    k = rng.randint(1, target[2]) if target is not None else 0
    if point == "polling":
        service.faults.hold_exports()
    elif point == "download":
        service.faults.stall_download_after(rng.randint(200, 3000), seconds=30)
    try:
        with Child([sys.executable, "-c", _child_code(service.url, cache_dir, point, k)], env=child_env()) as fetch:
            if point == "polling":
                fetch.until(lambda: any(cache_dir.rglob(".task.json")), "the export task to be recorded")
                time.sleep(rng.uniform(0.0, 0.3))
                fetch.process.send_signal(signal.SIGKILL)
            elif point == "download":
                fetch.until(
                    lambda: any(p.stat().st_size for p in cache_dir.rglob("*.incomplete")),
                    "the first bytes of the download",
                )
                time.sleep(rng.uniform(0.0, 0.1))
                fetch.process.send_signal(signal.SIGKILL)
            code = fetch.wait(f"the fetch's kill at {point!r} (k={k})")
    finally:
        service.faults.reset()
    assert code == -signal.SIGKILL, f"the fetch was not killed at {point!r} (k={k}): {fetch.text('stderr')[-2000:]}"


def _content(entry) -> tuple:
    images = sorted(
        (p.relative_to(entry.images_dir).as_posix(), p.read_bytes()) for p in entry.images_dir.rglob("*") if p.is_file()
    )
    return read_metadata_file(entry.metadata_path).to_pylist(), images


def _unexpected_files(cache_dir: Path, entry) -> list[str]:
    allowed = {
        cache_dir / "CACHEDIR.TAG",
        entry.entry_dir / ".lock",
        entry.entry_dir / f"{entry.version}.manifest.json",
    }
    found = []
    for path in cache_dir.rglob("*"):
        if path.is_dir() or path in allowed or path.is_relative_to(entry.path):
            continue
        found.append(str(path.relative_to(cache_dir)))
    found += [str(p.relative_to(cache_dir)) for p in entry.entry_dir.iterdir() if p.is_dir() and p != entry.path]
    return sorted(found)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, dataset_root_module):
    from vl_datasets.testing import LocalVisualLayer

    with LocalVisualLayer(dataset_root_module, export_polls=0) as service:
        entry = fetch_export(
            "ds-ready", client=Client(service.url, progress=False, env={}), cache_dir=tmp_path_factory.mktemp("clean")
        )
        return _content(entry)


@pytest.fixture(scope="module")
def dataset_root_module(tmp_path_factory):
    from vl_datasets.testing import write_dataset

    root = tmp_path_factory.mktemp("datasets")
    write_dataset(root, "ds-ready", n_items=8, n_clusters=3)
    return root


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("trial", range(TRIALS_PER_POINT))
def test_a_killed_fetch_leaves_nothing_the_next_fetch_cannot_clean(point, trial, clean, dataset_root_module, tmp_path):
    from vl_datasets.testing import LocalVisualLayer

    rng = random.Random(f"{point}-{trial}")
    with LocalVisualLayer(dataset_root_module, export_polls=0) as service:
        _kill_one_fetch(service, tmp_path, point, rng)
        service.clear_requests()
        entry = fetch_export("ds-ready", client=Client(service.url, progress=False, env={}), cache_dir=tmp_path)
        downloads = service.count("storage") + service.count("cdn")
    assert _content(entry) == clean, f"after a kill at {point!r}, the entry differs from a clean one"
    if point not in ("polling", "download"):  # killed after the archive was whole: it is unpacked again
        assert downloads == 0, f"after a kill at {point!r}, the complete archive was downloaded again"
    assert _unexpected_files(tmp_path, entry) == [], f"after a kill at {point!r}, the cache holds leftovers"


# The chunked-refresh case: a chunked fetch killed after it published its entry but before it
# removed its work area (.chunks/), then the dataset changes, then a refresh.
_DIE_AFTER_PUBLISH = """
import os, signal
from vl_datasets.cache.store import CacheStore
real = CacheStore.publish
def publish(self, *args, key=None, **kwargs):
    entry = real(self, *args, key=key, **kwargs)
    if key is not None and key.include_images:
        os.kill(os.getpid(), signal.SIGKILL)
    return entry
CacheStore.publish = publish
"""


@pytest.mark.parametrize("path", ["max_images_per_export", "rejected"])
@pytest.mark.parametrize("trial", range(2))
def test_a_refresh_after_a_chunked_fetch_killed_after_publishing_gets_the_new_data(path, trial, tmp_path):
    from vl_datasets.testing import LocalVisualLayer, write_dataset

    rng = random.Random(f"chunked-refresh-{path}-{trial}")
    chunk, remove = rng.randint(2, 4), rng.randint(1, 3)
    root, cache = tmp_path / "datasets", tmp_path / "cache"
    write_dataset(root, "ds-big", n_items=10, n_clusters=3)
    limit = chunk if path == "max_images_per_export" else None
    with LocalVisualLayer(root, export_polls=0, max_images_per_export=chunk) as service:
        code = "\n".join(
            [
                _DIE_AFTER_PUBLISH,
                "from vl_datasets import Client, fetch_export",
                f"fetch_export('ds-big', client=Client({service.url!r}, progress=False), cache_dir={str(cache)!r}, "
                f"max_images_per_export={limit!r})",
            ]
        )
        killed = run_child([sys.executable, "-c", code], env=child_env())
        assert killed.returncode == -signal.SIGKILL, (
            f"the fetch was not killed after publishing: {killed.stderr[-2000:]}"
        )
        assert any(cache.rglob(".chunks/plan.json")), "the kill should have left the work area of the published entry"
        client = Client(service.url, progress=False, env={})
        old = fetch_export("ds-big", client=client, cache_dir=cache, max_images_per_export=limit)
        assert old.row_count == 10, "the version published before the kill should be the cached entry"
        change_dataset(root, "ds-big", remove=remove)
        new = fetch_export("ds-big", client=client, cache_dir=cache, max_images_per_export=limit, refresh=True)
    with LocalVisualLayer(root, export_polls=0) as uncapped:
        reference = fetch_export(
            "ds-big", client=Client(uncapped.url, progress=False, env={}), cache_dir=tmp_path / "ref"
        )
    assert new.version != old.version and new.row_count == 10 - remove, "the refresh kept the removed items"
    assert _content(new) == _content(reference), "the refresh was built from the chunks of the killed run"
    assert not any(cache.rglob(".chunks")), "the refresh left a work area behind"


# -- prepare() killed ------------------------------------------------------------------------------
# A child running ``ds.prepare()`` kills itself at the K-th call of one library function; the next
# prepare() (with, after a "power loss", the pixels written since the last writeback zeroed) must
# leave every image in the store with the pixels of a clean preparation, served from the store.

PREPARE_ITEMS = 12
PREPARE_POINTS = {
    # point: (module, function, largest K)
    "between an image's pixels and its record": ("vl_datasets.loading.prepared", "_write_all", 2 * PREPARE_ITEMS),
    "holding the claim on a block": ("vl_datasets.loading.prepare", "_prepare_block", PREPARE_ITEMS),
    "before the manifest": ("vl_datasets.loading.prepared", "write_json_atomic", 1),
}


def _open_prepared(export: Path, cache_dir: Path):
    from vl_datasets.loading.dataset import VisualLayerDataset

    return VisualLayerDataset.from_export(export, cache_dir=cache_dir, prepare=48, image_size=40)


def _kill_one_prepare(export: Path, cache_dir: Path, point: str, k: int) -> None:
    module, name, _ = PREPARE_POINTS[point]
    code = "\n".join(
        [
            _DIE_AT,
            f"import {module}",
            f"die_at({module}, {name!r}, {k})",
            "from vl_datasets.loading.dataset import VisualLayerDataset",
            f"ds = VisualLayerDataset.from_export({str(export)!r}, cache_dir={str(cache_dir)!r}, prepare=48)",
            "ds.prepare(num_workers=0, progress=False)",
        ]
    )
    proc = run_child([sys.executable, "-c", code], env=child_env())
    assert proc.returncode == -signal.SIGKILL, f"prepare() was not killed at {point!r} (k={k}): {proc.stderr[-2000:]}"


def _power_loss(store: Path, rng: random.Random) -> None:
    """Zero each pixel file from a random point on: what was never written back before the machine went down."""
    for pixels in (store / "parts").glob("*.pixels"):
        size = pixels.stat().st_size
        cut = rng.randint(0, size)
        with open(pixels, "r+b") as handle:
            handle.seek(cut)
            handle.write(b"\0" * (size - cut))


@pytest.fixture(scope="module")
def prepared_clean(tmp_path_factory):
    """An export and every image of it through a clean preparation."""
    from vl_datasets.testing import write_dataset

    root = tmp_path_factory.mktemp("prepare")
    export = write_dataset(root, "ds", n_items=PREPARE_ITEMS, image_size=(80, 60))
    ds = _open_prepared(export, root / "cache")
    ds.prepare(num_workers=0, progress=False)
    return export, [ds[i][0] for i in range(len(ds))]


@pytest.mark.parametrize("point", list(PREPARE_POINTS))
@pytest.mark.parametrize("power_loss", [False, True])
def test_a_killed_prepare_is_finished_by_the_next_with_clean_pixels(point, power_loss, prepared_clean, tmp_path):
    import shutil

    export, clean_images = prepared_clean
    rng = random.Random(f"prepare-{point}-{power_loss}")
    mine = tmp_path / "export"
    shutil.copytree(export, mine)
    store = _open_prepared(mine, tmp_path / "cache").images._source.store.path  # created: the child only fills it
    _kill_one_prepare(mine, tmp_path / "cache", point, rng.randint(1, PREPARE_POINTS[point][2]))
    if power_loss:
        _power_loss(store, rng)
    summary = _open_prepared(mine, tmp_path / "cache").prepare(num_workers=0, progress=False)
    assert summary.images == PREPARE_ITEMS, f"after a kill at {point!r}, prepare() left images out"
    shutil.rmtree(mine / "images")  # what follows comes from the store alone
    after = _open_prepared(mine, tmp_path / "cache")
    for i, want in enumerate(clean_images):
        assert torch.equal(after[i][0], want), f"after a kill at {point!r}, image {i} differs from a clean one"
