"""The shared prepared store end to end: published by ``ds.prepare()`` on one node, read on another
node (a cache folder of its own) through its shard cache, without decoding an original there."""

from __future__ import annotations

import shutil

import torch

from tests.loading.shared_store_files import ITEMS, SIZE, location_of, open_shared, read_store


def pixel_files_bytes(cache) -> int:
    """Bytes of prepared pixels in the node-local stores under ``cache``."""
    return sum(path.stat().st_size for path in cache.rglob("*.pixels") if "shards" not in path.parts)


def test_a_store_published_on_one_node_is_read_on_another_without_its_originals(shared_export, tmp_path, shared_bucket):
    builder = open_shared(shared_export, tmp_path / "node-0", shared_bucket, image_size=SIZE)
    summary = builder.prepare(num_workers=0, progress=False, share_images=8, shard_bytes=20_000)
    assert summary.images == ITEMS
    built = [builder[i][0] for i in range(ITEMS)]
    assert builder.images.shard_cache_stats() is not None  # the builder reads what it just published

    reader = open_shared(shared_export, tmp_path / "node-1", shared_bucket, image_size=SIZE)
    shutil.move(shared_export / "images", tmp_path / "originals-gone")  # only the shared store has them now
    shards = reader.item_shards()
    assert shards is not None and (shards >= 0).all(), "every image is in the store: the loader orders by shard"
    published = read_store(location_of(builder, shared_bucket).url, shared_bucket[1])
    assert len(set(shards.tolist())) == len(published["shards"]) > 1
    loader = reader.dataloader(batch_size=4, num_workers=2, shuffle=False)
    read = [image for images, _ in loader for image in images]

    assert len(read) == ITEMS
    for index, (mine, theirs) in enumerate(zip(read, built, strict=True)):
        assert torch.equal(mine, theirs), f"item {index} differs from the builder's prepared image"
    stats = reader.images.shard_cache_stats()
    assert stats is not None and stats["bytes_downloaded"] == summary.bytes_on_disk, "each shard once per node"
    assert pixel_files_bytes(tmp_path / "node-1") == 0, "the reading node decoded originals itself"
