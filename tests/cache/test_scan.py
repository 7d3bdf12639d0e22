"""``scan()`` and ``prune()``: every kind of thing the cache holds, counted and pruned as a library."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import vl_datasets
from vl_datasets import PrunePolicy, fetch_export, prune, scan
from vl_datasets.cache.opened import local_store, open_export
from vl_datasets.loading.image_cache import ImageCache
from vl_datasets.loading.prepared import StoreSettings, open_store
from vl_datasets.testing import write_dataset

IMAGE_BYTES = 1000
LONG_AGO = 946684800  # 2000-01-01: older than any entry


def prepared_store(entry, size: int, images: int, *, complete: bool) -> Path:
    store = open_store(entry, StoreSettings(size))
    for i in range(images):
        store.put(f"img_{i}.jpg", np.full((4, 5, 3), i, np.uint8))
    if complete:
        store.write_manifest()
    return store.path


def image_cache(cache_dir: Path, n_images: int) -> Path:
    """An image cache of ``n_images`` files, the first used longest ago."""
    cache = ImageCache(local_store(cache_dir).node_area("images", "0123456789abcdef0123"), 10**9)
    for i in range(n_images):
        cache.put(f"photo_{i}.jpg", bytes([i]) * IMAGE_BYTES)
        os.utime(cache.path(f"photo_{i}.jpg"), (LONG_AGO + i, LONG_AGO + i))
    return cache.folder


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture
def full_cache(quick_vl, quick_client, tmp_path):
    """A cache holding one of everything: a superseded and a current version with a prepared store
    each, an opened export, what a killed build left, an old-layout .prepared folder, an image cache."""
    cache = tmp_path / "cache"
    old = fetch_export("ds-ready", client=quick_client, cache_dir=cache)
    new = fetch_export("ds-ready", client=quick_client, cache_dir=cache, refresh=True)
    write_dataset(tmp_path, "mine", n_items=3)
    opened = open_export(tmp_path / "mine", cache_dir=cache)
    stores = {
        "old": prepared_store(old, 32, 3, complete=True),
        "current": prepared_store(new, 32, 5, complete=True),
        "partial": prepared_store(new, 48, 2, complete=False),
    }
    staging = new.entry_dir / ".staging-1-abcdef12"
    staging.mkdir()
    (staging / "metadata.parquet").write_bytes(b"x" * 100)
    legacy = new.entry_dir / ".prepared" / f"{old.version}-0123456789abcdef"
    legacy.mkdir(parents=True)
    (legacy / "store.json").write_text("{}")
    images = image_cache(cache, 6)
    return (
        {"cache": cache, "old": old, "new": new, "opened": opened, "staging": staging, "legacy": legacy},
        stores,
        images,
    )


def test_scan_counts_every_kind_of_thing_in_the_cache(full_cache):
    held, stores, images = full_cache
    info = scan(held["cache"])
    assert info.root == held["cache"]
    by_key = {e.path: e for e in info.entries}
    exported = by_key[held["new"].entry_dir]
    assert [v.version for v in exported.versions] == [held["old"].version, held["new"].version]
    assert exported.current.current and not exported.versions[0].current
    assert exported.dataset == "ds-ready" and exported.export_format == "parquet"
    assert by_key[held["opened"].entry_dir].host == "(opened)"
    derived = {d.path: d for d in exported.derived}
    assert set(derived) == set(stores.values())
    assert derived[stores["current"]].kind == "prepared"
    assert (derived[stores["current"]].version, derived[stores["current"]].complete) == (held["new"].version, True)
    assert derived[stores["current"]].items == 5 and derived[stores["current"]].settings["size"] == 32
    assert (derived[stores["partial"]].complete, derived[stores["partial"]].items) == (False, 2)
    assert derived[stores["old"]].version == held["old"].version
    assert all(d.size_on_disk == disk_bytes(d.path) for d in exported.derived)
    assert {x.path for x in info.leftovers} == {held["staging"], held["legacy"].parent}
    (area,) = info.node_areas
    assert (area.kind, area.path, area.nb_files) == ("images", images, 6 + 1)  # the images and the ledger
    assert area.size_on_disk == disk_bytes(images)
    assert (
        info.size_on_disk
        == sum(e.size_on_disk for e in info.entries) + sum(x.size_on_disk for x in info.leftovers) + area.size_on_disk
    )


def test_a_store_file_nested_100000_deep_leaves_the_scan_and_the_store_typed(full_cache):
    """A hostile or damaged JSON file in the cache: the scan lists the store as one it cannot read;
    opening it writes its store.json again (what it says, the folder's name says), never a bare
    RecursionError."""
    held, stores, _ = full_cache
    for name in ("manifest.json", "store.json"):
        (stores["current"] / name).write_text("[" * 100_000 + "]" * 100_000)
    derived = {d.path: d for e in scan(held["cache"]).entries for d in e.derived}
    assert (derived[stores["current"]].complete, derived[stores["current"]].settings) == (False, {})
    store = open_store(held["new"], StoreSettings(32))
    assert store.path == stores["current"]
    assert json.loads((store.path / "store.json").read_text())["version"] == held["new"].version


def test_prune_frees_what_its_dry_run_expected_and_keeps_the_current_version(full_cache):
    held, stores, images = full_cache
    strategy = scan(held["cache"]).prune_strategy()
    kinds = sorted(r.what for r in strategy.removals)
    assert kinds == ["derived store", "leftover", "leftover", "version"], "no policy: superseded and leftovers only"
    expected = strategy.expected_freed_bytes
    before = disk_bytes(held["cache"])
    assert held["staging"].exists(), "planning must remove nothing"
    result = strategy.execute()
    assert result.freed_bytes == expected
    manifests = len(list(held["cache"].rglob(f"{held['old'].version}.manifest.json")))
    assert manifests == 0, "the superseded version's manifest is gone"
    freed_on_disk = before - disk_bytes(held["cache"])
    assert expected <= freed_on_disk <= expected + 4096, "the expected bytes are what left the disk (and a manifest)"
    assert not held["old"].path.exists() and not stores["old"].exists()
    assert not held["staging"].exists() and not held["legacy"].parent.exists(), "the old-layout .prepared is pruned"
    assert stores["current"].exists() and stores["partial"].exists(), "the current version's stores stay"
    assert held["new"].path.exists() and held["opened"].path.exists()
    assert images.exists() and len(list(images.rglob("*"))) > 6, "without a policy the image cache stays"
    assert result.entries_removed == 0 and result.entries_scanned == 2


def test_max_size_counts_and_trims_the_image_cache_oldest_first(full_cache):
    held, _, images = full_cache
    info = scan(held["cache"])
    strategy = info.prune_strategy()
    kept = info.size_on_disk - strategy.expected_freed_bytes
    # Each image has a 12-byte trailer; the cache's own bookkeeping (its ledger) is not an image.
    ledger = info.node_areas[0].size_on_disk - 6 * (IMAGE_BYTES + 12)
    # Room for all but the two images used longest ago (older than every entry).
    result = prune(info, PrunePolicy(max_size=kept - ledger - 2 * (IMAGE_BYTES + 12)))
    (trim,) = [r for r in result.removed if r.what == "image files"]
    assert len(trim.files) == 2 and result.entries_removed == 0
    left = sorted(p.read_bytes()[0] for p in images.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert left == [2, 3, 4, 5], "the two images used longest ago go first"
    result = prune(held["cache"], PrunePolicy(max_size=0))
    assert result.entries_removed == 2 and not images.exists(), "over the limit, everything goes"
    assert scan(held["cache"]).size_on_disk == 0


def test_older_than_removes_image_files_unused_since(full_cache):
    held, _, images = full_cache
    os.utime(next(p for p in images.rglob("*") if p.is_file() and not p.name.startswith(".")))  # used now
    result = prune(held["cache"], PrunePolicy(older_than_days=1))
    (trim,) = [r for r in result.removed if r.what == "image files"]
    assert len(trim.files) == 5 and result.entries_removed == 0, "the entries are younger than a day"


def test_older_than_ages_an_export_by_when_a_dataset_last_opened_it(quick_client, tmp_path):
    """An export made two months ago and trained on every day was removed as 'not used since'."""
    from datetime import datetime, timedelta, timezone

    from vl_datasets import VisualLayerDataset
    from vl_datasets.cache.readers import unread
    from vl_datasets.cache.store import CacheStore

    cache = tmp_path / "cache"
    used = fetch_export("ds-ready", client=quick_client, cache_dir=cache)
    write_dataset(tmp_path, "mine", n_items=3)
    unused = open_export(tmp_path / "mine", cache_dir=cache)
    made = (datetime.now(timezone.utc) - timedelta(days=60)).isoformat()
    for entry in (used, unused):
        manifest = CacheStore.manifest_of(entry)
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "created_at": made}))
    VisualLayerDataset("ds-ready", client=quick_client, cache_dir=cache, image_size=8)  # today's job
    with unread(unused.entry_dir, [unused.version]):  # what a prune or 'cache rm' holds: no use
        pass
    result = prune(cache, PrunePolicy(older_than_days=30))
    assert [r.path for r in result.removed if r.what == "entry"] == [unused.entry_dir]
    assert fetch_export("ds-ready", client=quick_client, cache_dir=cache, offline=True).version == used.version


def test_a_policy_refuses_negative_limits():
    with pytest.raises(vl_datasets.ConfigurationError, match="max_size"):
        PrunePolicy(max_size=-1)


def test_the_package_root_exports_scan_and_prune():
    from vl_datasets.cache import scan as scan_module

    assert vl_datasets.scan is scan_module.scan and vl_datasets.prune is scan_module.prune
    assert vl_datasets.CacheInfo is scan_module.CacheInfo and vl_datasets.PruneResult is scan_module.PruneResult


def test_an_entry_a_build_holds_is_skipped_and_goes_at_the_next_prune(full_cache):
    """Removing an entry under a build deleted its staging folder halfway (the build then failed
    with a bare FileNotFoundError); the entry's lock file stays, so a process waiting on it locks
    the file the next one will, not a deleted one."""
    from vl_datasets.locks import hold_lock

    held, _, _ = full_cache
    opened = held["opened"]
    lock = local_store(held["cache"]).lock_path(opened.entry_dir)
    assert opened.index_path is not None and opened.index_path.exists()
    with hold_lock(lock, timeout_s=5, what="a build"):
        result = prune(held["cache"], PrunePolicy(max_size=0))
        assert result.entries_removed == 1, "only the entry no build holds goes"
        assert opened.index_path.exists(), "the entry a build holds was removed under it"
    result = prune(held["cache"], PrunePolicy(max_size=0))
    assert result.entries_removed == 1 and not opened.index_path.exists()
    assert [p.name for p in opened.entry_dir.iterdir()] == [lock.name], "only the lock file stays"
    assert scan(held["cache"]).entries == ()


def test_an_entry_removed_under_a_soft_lock_keeps_that_lock_while_it_is_held(full_cache, monkeypatch):
    """Without flock the lock is a file of its own (.lock.soft): deleted with the entry halfway
    through the removal, another process could take the lock while the removal still ran."""
    from tests.helpers import without_flock

    without_flock(monkeypatch)
    held, _, _ = full_cache
    entry_dir = held["opened"].entry_dir
    seen = []
    real_remove_tree = vl_datasets.cache.store.remove_tree

    def watching(path):
        if path.parent == entry_dir:  # a child of the entry, removed under its lock
            seen.append(path.name)
        real_remove_tree(path)

    monkeypatch.setattr(vl_datasets.cache.store, "remove_tree", watching)
    assert prune(held["cache"], PrunePolicy(max_size=0)).entries_removed == 2
    assert seen and not [name for name in seen if name.startswith(".lock")], f"a lock went mid-removal: {seen}"
