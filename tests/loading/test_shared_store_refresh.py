"""A published shared store built again where it no longer stands for its originals: the shares
holding originals replaced in place under an object store's images_root, and shares whose files
are damaged. A job that opened the store before reads what it opened, whole."""

from __future__ import annotations

import io
import logging

import fsspec
import PIL.Image
import pytest
import torch

from tests.loading.s3_server import serving_folder
from vl_datasets import SharedStoreError
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.shared_store_writer import store_location

SIZE = 16


@pytest.fixture
def bucket(split_export, monkeypatch):
    """The split export's images under photos/ in a bucket of a local S3, its shared stores under prepared/."""
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    export, source = split_export
    with serving_folder(source, monkeypatch) as server:
        yield server, export


def open_shared(server, export, cache, *, shared=True):
    options = {"prepared_root": f"s3://{server.bucket}/prepared"} if shared else {}
    return VisualLayerDataset.from_export(
        export,
        images_root=f"s3://{server.bucket}/photos",
        storage_options={"endpoint_url": server.endpoint},
        cache_dir=cache,
        task=None,
        prepare=SIZE,
        **options,
    )


def build(ds):
    return ds.prepare(num_workers=0, progress=False, share_images=4, shard_bytes=2000)


def store_folder(server, ds) -> tuple[fsspec.AbstractFileSystem, str]:
    """(a filesystem, the folder) of the dataset's shared store."""
    settings = ds.images._source.store.settings  # the node-local store's: prepare=SIZE, from this images_root
    location = store_location(f"s3://{server.bucket}/prepared", {}, ds.entry, settings)
    return fsspec.core.url_to_fs(location.url, endpoint_url=server.endpoint, skip_instance_cache=True)


def store_files(server, ds) -> dict[str, str]:
    """{file of the store: its ETag}."""
    fs, base = store_folder(server, ds)
    return {path.removeprefix(f"{base}/"): fs.info(path)["ETag"] for path in fs.find(base)}


def replace_original(server, ds, index: int) -> None:
    """Put other pixels under the name of item ``index``'s original."""
    out = io.BytesIO()
    PIL.Image.new("RGB", (40, 30), (250, 20, 120)).save(out, format="JPEG")
    server.fs.pipe(f"{server.bucket}/photos/{ds.table.column('file_path')[index].as_py()}", out.getvalue())


def test_the_share_of_a_replaced_original_is_built_again_and_a_running_job_keeps_what_it_opened(
    bucket, tmp_path, caplog
):
    server, export = bucket
    builder = open_shared(server, export, tmp_path / "node-0")
    first = build(builder)
    assert len(first.shares) > 2
    running = open_shared(server, export, tmp_path / "node-1")  # a job reading the store as first published
    before = [running[i][0] for i in range(len(running))]
    published = store_files(server, builder)

    replace_original(server, builder, 5)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        again = build(builder)
    assert len(again.shares) == 1, f"only the share holding the replaced original is built again: {again.shares}"
    assert f"1 image(s) of share {again.shares[0]} of the shared store" in caplog.text
    after = store_files(server, builder)
    changed = {name for name in after if after[name] != published.get(name)}
    share = again.shares[0]
    written = {"manifest.json", f"shares/{share}.json"}
    assert written <= changed, f"the share file and the manifest were not written again: {sorted(changed)}"
    new = changed - written
    assert new and all(name.startswith((f"shards/{share}-", f"index/{share}-")) for name in new), sorted(new)
    assert all(after[name] == etag for name, etag in published.items() if name not in written), (
        "a shard or an index a running job reads was changed"
    )

    reader = open_shared(server, export, tmp_path / "node-2")
    expected = open_shared(server, export, tmp_path / "local", shared=False)  # the node-local path, from the originals
    for i in range(len(reader)):
        assert torch.equal(reader[i][0], expected[i][0]), f"item {i} differs from its original as it is now"
    assert not torch.equal(reader[5][0], before[5]), "the replaced original's old pixels are still served"
    assert reader.images._source.store.counts()[0] == 0, "the new reader prepared images itself"
    for i in range(len(running)):  # its merged index and shards are those it opened
        assert torch.equal(running[i][0], before[i]), f"item {i} changed under the running job"

    assert build(builder).shares == [], "a store that stands for its originals was built again"


def test_shares_of_local_originals_are_not_compared_across_machines(shared_export, tmp_path, shared_bucket):
    from tests.loading.shared_store_files import open_shared as open_local

    ds = open_local(shared_export, tmp_path / "node-0", shared_bucket)
    ds.prepare(num_workers=0, progress=False, share_images=8)
    for image in (shared_export / "images").iterdir():  # another node's copy: same bytes, its own mtimes
        image.touch()
    other = open_local(shared_export, tmp_path / "node-1", shared_bucket)
    assert other.prepare(num_workers=0, progress=False, share_images=8).shares == []


@pytest.mark.parametrize("damage", ["index", "share file", "shard", "manifest"])
def test_the_command_that_builds_a_store_repairs_its_damaged_files(bucket, tmp_path, caplog, damage):
    server, export = bucket
    builder = open_shared(server, export, tmp_path / "node-0")
    build(builder)
    before = [builder[i][0] for i in range(len(builder))]
    files = store_files(server, builder)
    fs, base = store_folder(server, builder)
    target = {
        "index": "index/00001.npy",
        "share file": "shares/00001.json",
        "shard": next(name for name in sorted(files) if name.startswith("shards/00001-")),
        "manifest": "manifest.json",
    }[damage]
    if damage == "shard":
        fs.rm(f"{base}/{target}")
    else:
        fs.pipe(f"{base}/{target}", b"not what it was")

    if damage != "shard":  # a missing shard is read from the originals under a job: see test_shared_prepared
        with pytest.raises(SharedStoreError, match="building it again repairs it"):
            open_shared(server, export, tmp_path / "node-x")
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        repaired = build(builder)
    assert repaired.shares == ([] if damage == "manifest" else ["00001"])
    assert ("is damaged" in caplog.text) if damage != "manifest" else ("is written again" in caplog.text)
    reader = open_shared(server, export, tmp_path / "node-1")
    for i in range(len(reader)):
        assert torch.equal(reader[i][0], before[i]), f"item {i} reads otherwise after the repair"
    assert reader.images._source.store.counts()[0] == 0, "the reader prepared images itself: the store is not whole"
