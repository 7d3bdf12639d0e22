"""What an epoch and a prepare() cost an object store (moto's S3, an HTTP server): one GET per image,
no HEAD or listing per image."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.loading.image_server import ImageServer
from tests.loading.s3_server import serving_folder
from vl_datasets import errors
from vl_datasets.loading.dataset import VisualLayerDataset


@pytest.fixture
def bucket(split_export, monkeypatch):
    """The split export's images in a bucket of a counting S3 server, and the export."""
    export, source = split_export
    with serving_folder(source, monkeypatch) as server:
        yield server, export


def open_bucket(server, export, tmp_path, **options):
    return VisualLayerDataset.from_export(
        export,
        images_root=f"s3://{server.bucket}/photos",
        storage_options={"endpoint_url": server.endpoint},
        image_size=8,
        cache_dir=tmp_path / "c",
        **options,
    )


def object_gets(server, ds):
    """The GET path of each item's object, in the bucket."""
    return [f"GET /{server.bucket}/photos/{ds.table.column('file_path')[i].as_py()}" for i in range(len(ds))]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_epoch_from_a_bucket_sends_exactly_one_get_per_image(bucket, tmp_path, num_workers):
    server, export = bucket
    ds = open_bucket(server, export, tmp_path)
    before, listed = len(server.requests), len(server.listings)
    context = {"multiprocessing_context": "fork", "persistent_workers": False} if num_workers else {}
    loader = ds.dataloader(4, num_workers=num_workers, seed=1, **context)
    images = sum(len(images) for images, _ in loader)
    assert images == len(ds)
    sent = server.requests[before:]
    assert Counter(sent) == Counter(object_gets(server, ds)), f"an epoch of {len(ds)} images sent {sent}"
    assert len(server.listings) == listed, f"an epoch listed the bucket: {server.listings[listed:]}"


def test_a_missing_object_is_one_get_and_image_not_found(bucket, tmp_path):
    server, export = bucket
    ds = open_bucket(server, export, tmp_path)
    server.fs.rm(f"{server.bucket}/photos/{ds.table.column('file_path')[3].as_py()}")
    before = len(server.requests)
    with pytest.raises(errors.ImageNotFoundError, match=ds.media_ids[3]):
        ds[3]
    assert server.requests[before:] == [object_gets(server, ds)[3]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_prepare_from_a_bucket_gets_each_image_once_and_lists_instead_of_asking_each(bucket, tmp_path, num_workers):
    server, export = bucket
    ds = open_bucket(server, export, tmp_path, prepare=16)
    before, listed = len(server.requests), len(server.listings)
    assert ds.prepare(num_workers=num_workers).prepared == len(ds)
    sent = server.requests[before:]
    assert Counter(sent) == Counter(object_gets(server, ds)), f"prepare() of {len(ds)} images sent {sent}"
    assert len(server.listings) == listed, "an empty store has no copy to compare: nothing to list"

    before, listed = len(server.requests), len(server.listings)
    assert ds.prepare(num_workers=num_workers).prepared == 0
    assert server.requests[before:] == [], "a prepare() with every image prepared read or asked an object"
    folders = {path.rpartition("/")[0] for path in ds.table.column("file_path").to_pylist()}
    listings = len(server.listings) - listed
    assert len(folders) <= listings <= len(folders) * max(num_workers, 1), (
        f"{listings} listings of {len(folders)} folders by {num_workers or 1} processes"
    )

    replaced = ds.table.column("file_path")[5].as_py()
    other = server.fs.cat(f"{server.bucket}/photos/{ds.table.column('file_path')[6].as_py()}")
    server.fs.pipe(f"{server.bucket}/photos/{replaced}", other)
    before = len(server.requests)
    assert ds.prepare(num_workers=num_workers).prepared == 1, "the replaced original was not seen"
    assert server.requests[before:] == [object_gets(server, ds)[5]]


def test_a_first_epoch_with_prepare_takes_identities_from_its_gets(bucket, tmp_path):
    server, export = bucket
    ds = open_bucket(server, export, tmp_path, prepare=16)
    before = len(server.requests)
    assert sum(len(images) for images, _ in ds.dataloader(4, num_workers=0, seed=1)) == len(ds)
    sent = server.requests[before:]
    assert Counter(sent) == Counter(object_gets(server, ds)), f"a first epoch with prepare sent {sent}"
    before = len(server.requests)
    assert ds.prepare(num_workers=0).prepared == 0, "the identities of the GETs and of the listing differ"
    assert server.requests[before:] == []


def test_a_first_epoch_with_prepare_over_http_takes_identities_from_its_gets(split_export, tmp_path):
    export, source = split_export
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(
            export, images_root=server.url, image_size=8, cache_dir=tmp_path / "c", prepare=16
        )
        assert sum(len(images) for images, _ in ds.dataloader(4, num_workers=0, seed=1)) == len(ds)
        paths = ["/" + path for path in ds.table.column("file_path").to_pylist()]
        assert Counter(server.requests) == Counter(paths), f"a first epoch with prepare sent {server.requests}"
        assert server.heads == [], "a first epoch with prepare asked each image's identity apart"
        # An http root has no listing: prepare() asks each original (HEAD) and finds the copies stand for them.
        assert ds.prepare(num_workers=0).prepared == 0, "the identities of the GETs and of the HEADs differ"
        assert Counter(server.heads) == Counter(paths) and len(server.requests) == len(paths)


def test_prepare_over_http_reads_an_image_never_prepared_with_one_get(split_export, tmp_path):
    export, source = split_export
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(
            export, images_root=server.url, image_size=8, cache_dir=tmp_path / "c", prepare=16
        )
        assert ds.prepare(num_workers=0).prepared == len(ds)
        paths = ["/" + path for path in ds.table.column("file_path").to_pylist()]
        assert Counter(server.requests) == Counter(paths) and server.heads == [], (
            f"prepare() into an empty store sent GETs {server.requests} and HEADs {server.heads}"
        )
        replaced = source / ds.table.column("file_path")[4].as_py()
        replaced.write_bytes((source / ds.table.column("file_path")[7].as_py()).read_bytes())
        assert ds.prepare(num_workers=0).prepared == 1, "a replaced original was not prepared again"
        assert server.requests[len(paths) :] == [paths[4]]
