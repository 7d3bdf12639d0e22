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


def open_shared(server, export, cache, *, shared=True, **options):
    if shared:
        options["prepared_root"] = f"s3://{server.bucket}/prepared"
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
    assert "manifest.json" in changed, "the manifest was not written again"
    new = changed - {"manifest.json"}
    prefixes = (f"shards/{share}-", f"index/{share}-", f"shares/{share}-")
    assert new and all(name.startswith(prefixes) and name not in published for name in new), sorted(new)
    assert all(after[name] == etag for name, etag in published.items() if name != "manifest.json"), (
        "a file a running job reads was written over"
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


def test_a_refresh_that_never_published_its_manifest_leaves_the_store_as_it_was(bucket, tmp_path):
    """Every file a refresh writes has a new name, the manifest last: until it is written, a node
    that opens the store reads the store as it was, whole; the next build does the refresh again."""
    server, export = bucket
    builder = open_shared(server, export, tmp_path / "node-0")
    build(builder)
    fs, base = store_folder(server, builder)
    first_manifest = fs.cat_file(f"{base}/manifest.json")
    before = [open_shared(server, export, tmp_path / "node-1")[i][0] for i in range(len(builder))]
    replace_original(server, builder, 5)
    assert len(build(builder).shares) == 1
    fs.pipe(f"{base}/manifest.json", first_manifest)  # as if the refresh died before its manifest
    stale = open_shared(server, export, tmp_path / "node-2")
    for i in range(len(stale)):
        assert torch.equal(stale[i][0], before[i]), f"item {i} mixes the refresh into the store its manifest names"
    assert len(build(builder).shares) == 1, "the refresh was not done again"
    fresh = open_shared(server, export, tmp_path / "node-3")
    assert not torch.equal(fresh[5][0], before[5])


def test_a_curated_dataset_does_not_build_again_a_share_holding_images_it_lacks(bucket, tmp_path, caplog):
    server, export = bucket
    whole = open_shared(server, export, tmp_path / "node-0")
    build(whole)
    replace_original(server, whole, 5)
    curated = open_shared(server, export, tmp_path / "node-0", subset=[whole.media_ids[5]])
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        assert build(curated).shares == []
    assert "build the store from the whole export" in caplog.text
    reader = open_shared(server, export, tmp_path / "node-1")
    assert reader.images._source.store.counts()[0] == 0
    assert all(reader[i][0] is not None for i in range(len(reader)))
    assert reader.images._source.store.counts()[0] == 0, "the curated build dropped other images from the store"


def test_a_build_again_over_http_sends_no_request_per_original(split_export, shared_bucket, tmp_path, monkeypatch):
    from tests.loading.image_server import ImageServer

    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    export, source = split_export
    root, _ = shared_bucket  # reached through fsspec's s3 settings: storage_options would go to http too
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(
            export,
            images_root=server.url,
            cache_dir=tmp_path / "c",
            task=None,
            prepare=SIZE,
            prepared_root=root,
        )
        assert len(build(ds).shares) > 1
        gets, heads = len(server.requests), len(server.heads)
        assert build(ds).shares == []
        assert (len(server.requests), len(server.heads)) == (gets, heads), "the check asked each original"


def test_shares_of_local_originals_are_not_compared_across_machines(shared_export, tmp_path, shared_bucket):
    from tests.loading.shared_store_files import open_shared as open_local

    ds = open_local(shared_export, tmp_path / "node-0", shared_bucket)
    ds.prepare(num_workers=0, progress=False, share_images=8)
    for image in (shared_export / "images").iterdir():  # another node's copy: same bytes, its own mtimes
        image.touch()
    other = open_local(shared_export, tmp_path / "node-1", shared_bucket)
    assert other.prepare(num_workers=0, progress=False, share_images=8).shares == []


DAMAGE = {  # what is done to which file of share 00001 (or of the store)
    "index": ("index/00001.npy", b"not what it was"),
    "empty index": ("index/00001.npy", b""),
    "share file": ("shares/00001.json", b"not what it was"),
    "share file gone": ("shares/00001.json", None),
    "shard gone": ("shards/00001-00000.pixels", None),
    "shard cut": ("shards/00001-00000.pixels", b"cut"),
    "manifest": ("manifest.json", b"not what it was"),
    "store file": ("store.json", b"not what it was"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_store_is_read_around_then_repaired_by_the_command_that_builds_it(bucket, tmp_path, caplog, damage):
    server, export = bucket
    built = build(open_shared(server, export, tmp_path / "node-0"))
    expected = [open_shared(server, export, tmp_path / "local", shared=False)[i][0] for i in range(built.images)]
    fs, base = store_folder(server, open_shared(server, export, tmp_path / "node-0"))
    name, data = DAMAGE[damage]
    if data is None:
        fs.rm(f"{base}/{name}")
    else:
        fs.pipe(f"{base}/{name}", data)

    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        fresh = open_shared(server, export, tmp_path / "node-x")  # a node that never read the store
    if not damage.startswith("shard"):  # a shard is read, or found missing, only when an image needs it
        assert "is damaged" in caplog.text and "building it again repairs it" in caplog.text, caplog.text
    for i in range(len(fresh)):
        assert torch.equal(fresh[i][0], expected[i]), f"item {i} reads otherwise from a damaged store"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        repaired = build(open_shared(server, export, tmp_path / "node-y"))  # the repair, from a fresh open
    assert repaired.shares == ([] if damage in ("manifest", "store file") else ["00001"]), caplog.text
    assert ("written again" if damage in ("manifest", "store file") else "is damaged") in caplog.text

    reader = open_shared(server, export, tmp_path / "node-1")
    for i in range(len(reader)):
        assert torch.equal(reader[i][0], expected[i]), f"item {i} reads otherwise after the repair"
    assert reader.images._source.store.counts()[0] == 0, "the reader prepared images itself: the store is not whole"


def test_a_node_keeps_the_merged_index_of_an_earlier_build_only_while_a_process_maps_it(bucket, tmp_path):
    import gc

    server, export = bucket
    builder = open_shared(server, export, tmp_path / "node-0")
    build(builder)
    node = tmp_path / "node-1"
    running = open_shared(server, export, node)  # maps the merged index of the first build
    running[0]
    replace_original(server, builder, 5)
    assert len(build(builder).shares) == 1

    def merged_indexes():
        return sorted(p.parent.name for p in node.rglob(".meta/*/.records.npy"))

    later = open_shared(server, export, node)
    assert len(merged_indexes()) == 2, "the index a running job maps was removed under it"
    assert torch.equal(running[0][0], later[0][0]) and not torch.equal(running[5][0], later[5][0])
    del running
    gc.collect()
    again = open_shared(server, export, node)
    assert len(merged_indexes()) == 1, "the merged index no process maps was left on the node"
    assert torch.equal(again[5][0], later[5][0])


def test_a_prune_of_the_node_s_shard_cache_keeps_the_merged_index_a_process_maps(bucket, tmp_path, capsys):
    import gc

    from vl_datasets.cli import main

    server, export = bucket
    build(open_shared(server, export, tmp_path / "node-0"))
    node = tmp_path / "node-1"
    reader = open_shared(server, export, node)
    first = reader[0][0]

    def merged_indexes():
        return list(node.rglob(".meta/*/.records.npy"))

    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", str(node)]) == 0
    assert len(merged_indexes()) == 1, "a prune removed the merged index a running job maps by path"
    assert torch.equal(reader[0][0], first) and reader[len(reader) - 1][0] is not None
    del reader
    gc.collect()
    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", str(node)]) == 0
    assert merged_indexes() == [], capsys.readouterr().out
