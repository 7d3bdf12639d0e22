"""Images read from where they live: a folder, a bucket (moto's real S3 API), an HTTP server; never listed."""

from __future__ import annotations

import json
import logging
import pickle
import posixpath
import re
import shutil
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pytest
import torch

from tests.loading.image_server import ImageServer
from tests.loading.s3_server import serving_folder
from vl_datasets import errors
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.sources import OUTSIDE_LITERAL_ROOT, OUTSIDE_ROOT, source_paths


def expected(export, source, size=16):
    """Each item's image as the export with its images inside decodes it, by media id."""
    full = export.parent / "full"
    shutil.copytree(export, full)
    shutil.copytree(source, full / "images")
    ds = VisualLayerDataset.from_export(full, image_size=size, cache_dir=export.parent / "c-full")
    return {media_id: ds[i][0] for i, media_id in enumerate(ds.media_ids)}


def test_a_local_folder_images_root_reads_file_path_under_it(split_export, tmp_path):
    export, source = split_export
    ds = VisualLayerDataset.from_export(export, images_root=source, image_size=16, cache_dir=tmp_path / "c")
    assert len(ds) == 12
    reference = expected(export, source)
    assert all(torch.equal(ds[i][0], reference[m]) for i, m in enumerate(ds.media_ids))
    batch = ds.__getitems__([3, 0, 3, 11])
    assert [torch.equal(image, ds[i][0]) for (image, _), i in zip(batch, [3, 0, 3, 11])] == [True] * 4
    assert ds.image_path(0) == str(source / ds.table.column("file_path")[0].as_py())
    details = ds.curation_details()
    assert details.column("image_path").to_pylist() == [ds.image_path(i) for i in range(12)]


def test_images_in_a_bucket(split_export, s3_root, tmp_path):
    import fsspec

    export, source = split_export
    fs = fsspec.filesystem("s3")
    fs.put(str(source), "shared-bucket/photos", recursive=True)
    ds = VisualLayerDataset.from_export(
        export, images_root="s3://shared-bucket/photos/", image_size=16, cache_dir=tmp_path / "c"
    )
    reference = expected(export, source)
    samples = ds.__getitems__(list(range(12)))
    assert all(torch.equal(image, reference[m]) for (image, _), m in zip(samples, ds.media_ids))
    assert ds.image_path(1) == f"s3://shared-bucket/photos/{ds.table.column('file_path')[1].as_py()}"
    copy = pickle.loads(pickle.dumps(ds))  # as a spawned worker gets it: it opens its own filesystem
    assert torch.equal(copy[5][0], reference[ds.media_ids[5]])
    fs.rm(f"shared-bucket/photos/{ds.table.column('file_path')[2].as_py()}")
    with pytest.raises(errors.ImageNotFoundError, match=ds.media_ids[2]) as caught:
        copy[2]
    assert ds.image_path(2) in str(caught.value)


def test_the_constructor_fetches_the_export_without_images(quick_vl, quick_client, dataset_root, tmp_path):
    ds = VisualLayerDataset(
        "ds-ready", client=quick_client, cache_dir=tmp_path, images_root=dataset_root / "ds-ready" / "images"
    )
    assert len(ds) == 8
    assert ds.entry.key.include_images is False
    assert not (ds.export_dir / "images").exists(), "the export carried images it did not need"
    assert ds[7][0].dtype == torch.uint8


def test_nothing_is_listed_each_row_is_its_file_path(split_export, tmp_path):
    export, source = split_export
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(export, images_root=server.url + "/", cache_dir=tmp_path / "c")
        assert server.count() == 0, f"opening the dataset asked the server for {server.requests}"
        ds[4]
        assert server.requests == ["/" + ds.table.column("file_path")[4].as_py()]


def test_a_missing_image_names_media_id_and_url_without_the_query(split_export, tmp_path):
    export, source = split_export
    (source / "train").rename(source / "elsewhere")  # every train/ image is gone
    with ImageServer(source) as server:
        root = server.url.replace("http://", "http://user:hunter2@") + "/?sig=SECRET-TOKEN"
        ds = VisualLayerDataset.from_export(export, images_root=root, image_size=8, cache_dir=tmp_path / "c")
        missing = [i for i in range(len(ds)) if ds.table.column("file_path")[i].as_py().startswith("train/")]
        with pytest.raises(errors.ImageNotFoundError) as caught:
            ds.__getitems__(missing[:3])
        message = str(caught.value)
        assert caught.value.media_id in {ds.media_ids[i] for i in missing[:3]}
        assert f"{server.url}/train/" in message, message
        assert "SECRET-TOKEN" not in message and "hunter2" not in message, message
        assert all("sig=SECRET-TOKEN" in path for path in server.requests), "the query did not reach the server"
        assert f"images_root='{server.url}'" in repr(ds)
        assert "SECRET-TOKEN" not in repr(ds) and "hunter2" not in repr(ds)
        assert "SECRET-TOKEN" not in ds.image_path(0)

        skipping = VisualLayerDataset.from_export(
            export, images_root=root, image_size=8, on_error="skip", cache_dir=tmp_path / "c"
        )
        loader = skipping.dataloader(4, shuffle=False, num_workers=0)
        kept = sum(len(labels) for _, labels in loader)
    assert kept == len(ds) - len(missing)
    assert sorted(s.media_id for s in loader.skipped) == sorted(ds.media_ids[i] for i in missing)
    assert all("SECRET" not in s.path and "SECRET" not in s.reason for s in loader.skipped)


def test_an_unreadable_image_is_a_decode_error_naming_it(split_export, tmp_path):
    export, source = split_export
    ds = VisualLayerDataset.from_export(export, images_root=source, cache_dir=tmp_path / "c")
    (source / ds.table.column("file_path")[0].as_py()).write_bytes(b"not a jpeg")
    with pytest.raises(errors.ImageDecodeError, match=ds.media_ids[0]) as caught:
        ds.__getitems__([0, 1])
    assert caught.value.path == ds.image_path(0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"storage_options": {"anon": True}}, "storage_options apply to an fsspec URL"),
        ({"images_root": "/no/such/folder"}, "not a folder"),
        ({"images_root": ""}, "images_root is empty"),  # not the current folder
        ({"prepared_root": "", "prepare": 32}, "prepared_root is empty"),
        ({"prepared_root": "bogus://x", "prepare": 32}, "prepared_root bogus://x: fsspec knows no protocol"),
        ({"images_root": "~no-such-user-x/images"}, "~user"),
        ({"images_root": "file:///no/such/folder"}, "file:///no/such/folder is not a folder"),
        ({"images_root": "nope://bucket/x"}, "no protocol 'nope'"),
        # Each read asked for http://host/set and failed alone: what follows '#' never reaches a server.
        ({"images_root": "http://127.0.0.1:9/set#1/images"}, "http://127.0.0.1:9/set%231/images holds a '#'"),
        ({"images_root": "memory://x", "image_cache": "lots"}, "not a size"),
        ({"images_root": "memory://x", "image_cache": 0}, "positive size"),
    ],
)
def test_options_that_cannot_work_are_refused_before_any_export(split_export, tmp_path, options, match):
    _, source = split_export
    options = {"images_root": source, **options}
    with pytest.raises(errors.ConfigurationError, match=match):
        VisualLayerDataset("never-fetched", cache_dir=tmp_path, offline=True, **options)


@pytest.mark.parametrize(
    "root", ["https://alice:pa#SECRET@127.0.0.1:9/images", "https://127.0.0.1:9/x?sig=abc#def&token=SECRET"]
)
def test_a_root_refused_for_its_hash_sign_is_named_without_its_secrets(split_export, tmp_path, root):
    with pytest.raises(errors.ConfigurationError, match="holds a '#'") as caught:
        VisualLayerDataset("never-fetched", cache_dir=tmp_path, offline=True, images_root=root)
    assert "SECRET" not in str(caught.value)


def test_storage_options_and_image_cache_need_an_images_root(split_export, tmp_path):
    export, _ = split_export
    for options in ({"storage_options": {}}, {"image_cache": "1G"}):
        with pytest.raises(errors.ConfigurationError, match="applies to images read from an images_root"):
            VisualLayerDataset.from_export(export, cache_dir=tmp_path, **options)


def test_a_file_path_climbing_out_of_the_root_is_never_read(split_export, tmp_path):
    import json

    export, source = split_export
    (tmp_path / "secret.jpg").write_bytes(next(source.rglob("*.jpg")).read_bytes())  # outside the root
    metadata = json.loads((export / "metadata.json").read_text())
    metadata["media_items"][0]["file_path"] = "../secret.jpg"
    (export / "metadata.json").write_text(json.dumps(metadata))
    victim = metadata["media_items"][0]["media_id"]
    with pytest.raises(errors.ImageNotFoundError) as caught:
        VisualLayerDataset.from_export(export, images_root=source, cache_dir=tmp_path / "c", task=None)
    assert caught.value.media_id == victim, "the row whose path climbs out should be the one named"
    kept = VisualLayerDataset.from_export(
        export, images_root=source, cache_dir=tmp_path / "c", task=None, missing_images="drop"
    )
    assert victim not in kept.media_ids and len(kept) == 11, "a file outside images_root was read"


# -- file names as they are, and never a file outside the root ----------------------------------

LITERAL_NAMES = ["photo #1.jpg", "q?x.jpg", "100%25 done.jpg", "a+b&c=d;e.jpg"]
CLIMBING = [
    "../secret.jpg",
    "%2e%2e/secret.jpg",
    "%2E%2E/secret.jpg",
    ".%2e/secret.jpg",
    "%252e%252e/secret.jpg",  # decoded twice: by the client, then by a server
    "train/../../secret.jpg",
    "..\\secret.jpg",
    "..%2fsecret.jpg",
    "..%5csecret.jpg",
    "%2e%2e%2fsecret.jpg",
    "./%2e%2e/secret.jpg",
    "...%2f..%2fsecret.jpg",
    "/%2e%2e/secret.jpg",
    "secret.jpg%00.png",
]
# What climbs out under a root that takes names literally (a folder, object storage): there the
# encoded forms above are names inside the root ("%2e%2e" is a folder of that name).
LITERALLY_CLIMBING = ["../secret.jpg", "train/../../secret.jpg", "..\\secret.jpg", "./../secret.jpg", "a/\x00/b.jpg"]


def _under_root(path, reading):
    """What a file_path is under an images_root, one path at a time: ``object_path``'s own rule."""
    if path is None:
        return None
    path = path.replace("\\", "/").lstrip("/")
    pattern = OUTSIDE_ROOT if reading == "decoded" else OUTSIDE_LITERAL_ROOT
    return None if not path or re.search(pattern, path) else path


@pytest.mark.parametrize("reading", ["decoded", "literal"])
def test_source_paths_over_a_column_refuse_exactly_what_each_path_would(reading):
    """Over a column, the pattern runs only on paths holding a byte a match needs (a '%', a NUL, a
    dot opening a segment): the paths refused are still exactly those it matches, wherever they
    fall in a chunk, in a slice or in a chunked column."""
    ordinary = [f"train/img_{i:03d}.jpg" for i in range(60)]
    tricky = [
        *LITERAL_NAMES,
        *CLIMBING,
        *[".hidden/a.jpg", "a/.b.jpg", "a/b./c.jpg", "a.b/c..d.jpg", "a//../b.jpg", "/..", "..", ".", ""],
        *["/", "\\..\\x.jpg", "a\\.\\b.jpg", "%", "a%2", "x/%2e", "ok%41.jpg", "trail/..", None],
    ]
    paths = [path for pair in zip(ordinary, tricky) for path in pair] + ordinary[len(tricky) :]
    expected = [_under_root(path, reading) for path in paths]
    column = pa.array(paths, pa.string())
    assert source_paths(column, reading).to_pylist() == expected
    assert source_paths(column.slice(5, 41), reading).to_pylist() == expected[5:46]
    chunked = pa.chunked_array([column.slice(0, 7), column.slice(7, 0), column.slice(7)])
    assert source_paths(chunked, reading).to_pylist() == expected
    climbing = CLIMBING if reading == "decoded" else LITERALLY_CLIMBING[:3]
    assert sum(path is None for path in expected) > len(climbing), "the cases refuse too little to test"
    for alone in (ordinary, [*ordinary, "/train/img.jpg"], [*ordinary, "\\train\\img.jpg"], [*ordinary, ""]):
        got = source_paths(pa.array(alone, pa.string()), reading).to_pylist()
        assert got == [_under_root(path, reading) for path in alone]


def rewrite_file_paths(export, source, paths):
    """Give the first rows of ``export`` these file_paths (each row's image moved to its name, when it is one)."""
    metadata = json.loads((export / "metadata.json").read_text())
    for item, path in zip(metadata["media_items"], paths):
        if path in LITERAL_NAMES:
            (source / item["file_path"]).rename(source / path)
        item["file_path"] = path
    (export / "metadata.json").write_text(json.dumps(metadata))
    return [item["media_id"] for item in metadata["media_items"][: len(paths)]]


def test_file_names_with_url_characters_are_read_as_those_files_over_http(split_export, tmp_path):
    export, source = split_export
    renamed = rewrite_file_paths(export, source, LITERAL_NAMES)
    # What a name cut at "#" or "?" would read instead: other images, so a wrong read shows.
    others = sorted(source.rglob("*.jpg"))[-2:]
    shutil.copy(others[0], source / "photo ")
    shutil.copy(others[1], source / "q")
    local = VisualLayerDataset.from_export(export, images_root=source, image_size=16, cache_dir=tmp_path / "c")
    with ImageServer(source) as server:
        remote = VisualLayerDataset.from_export(export, images_root=server.url, image_size=16, cache_dir=tmp_path / "c")
        assert remote.media_ids[:4] == renamed
        for i, name in enumerate(LITERAL_NAMES):
            assert torch.equal(remote[i][0], local[i][0]), f"{name!r} over http is not the file of that name"
        assert remote.image_path(0) == f"{server.url}/photo #1.jpg"
    asked = [unquote(urlsplit(request).path) for request in server.requests]
    assert asked == [f"/{name}" for name in LITERAL_NAMES], f"the server was asked for {server.requests}"


ENCODED_LOOKING = ["https%3A%2F%2Fexample.com%2Fcat.jpg", "back%5Cslash.jpg", "...", "%2e%2e/x.jpg", "nul%00.jpg"]


@pytest.mark.parametrize("root", ["folder", "the export's own"])
def test_names_that_look_encoded_are_those_files_under_a_root_read_literally(split_export, tmp_path, root):
    """A scraped image is often named by its URL, escaped: on a disk "%2F" is three characters of a
    name, not a separator, and "..." a name, not a climb. Only http(s) decodes them."""
    export, source = split_export
    reference = expected(export, source)
    renamed = rewrite_file_paths(export, source, [])  # the media ids, in the metadata's order
    metadata = json.loads((export / "metadata.json").read_text())
    for item, name in zip(metadata["media_items"], ENCODED_LOOKING):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / item["file_path"]).rename(source / name)
        item["file_path"] = name
    (export / "metadata.json").write_text(json.dumps(metadata))
    if root == "folder":
        ds = VisualLayerDataset.from_export(export, images_root=source, image_size=16, cache_dir=tmp_path / "c")
    else:
        shutil.copytree(source, export / "images")
        ds = VisualLayerDataset.from_export(export, image_size=16, cache_dir=tmp_path / "c")
    assert len(ds) == 12, f"rows were dropped: {sorted(set(renamed) - set(ds.media_ids))}"
    assert all(torch.equal(ds[i][0], reference[m]) for i, m in enumerate(ds.media_ids))


@pytest.mark.parametrize("root", ["http", "folder", "s3"])
def test_a_file_path_that_climbs_in_any_encoding_is_never_asked_for(split_export, tmp_path, request, root):
    export, source = split_export
    served = tmp_path / "served"
    served.mkdir()
    shutil.move(source, served / "photos")
    secret = served / "secret.jpg"  # beside the root, where every path of CLIMBING points
    secret.write_bytes(next((served / "photos").rglob("*.jpg")).read_bytes())
    climbing = CLIMBING if root == "http" else LITERALLY_CLIMBING
    victims = rewrite_file_paths(export, served / "photos", climbing[:10])
    if root == "s3":
        import fsspec

        request.getfixturevalue("s3_root")
        fsspec.filesystem("s3").put(str(served), "shared-bucket/served", recursive=True)
    with ImageServer(served) as server:
        images_root = {
            "http": f"{server.url}/photos",
            "folder": served / "photos",
            "s3": "s3://shared-bucket/served/photos",
        }
        with pytest.raises(errors.ImageNotFoundError) as caught:
            VisualLayerDataset.from_export(export, images_root=images_root[root], cache_dir=tmp_path / "c", task=None)
        assert caught.value.media_id == victims[0]
        kept = VisualLayerDataset.from_export(
            export, images_root=images_root[root], cache_dir=tmp_path / "c", task=None, missing_images="drop"
        )
        assert sorted(set(kept.media_ids) & set(victims)) == [], "a row whose path climbs out kept an image"
        kept.__getitems__(list(range(len(kept))))
        assert len(kept) == 12 - len(victims)
        for path in climbing:  # the same rule for a path asked for directly
            with pytest.raises(errors.ImageNotFoundError, match="outside images_root"):
                kept.read_image(kept.image_path(0).replace(kept.table.column("file_path")[0].as_py(), path))
    outside = [
        r for r in server.requests if not posixpath.normpath(unquote(unquote(urlsplit(r).path))).startswith("/photos/")
    ]
    assert outside == [], f"the server was asked for files outside the root: {outside}"


# -- secrets in an images_root URL -------------------------------------------------------------

PASSWORD = "pa55-Word-7"
SIGNATURE = "AB%2Bcd%2Fef%3DQ9zSECRET"  # "AB+cd/ef=Q9zSECRET": a URL library re-encodes it half-way
SECRET_FORMS = (PASSWORD, "Q9zSECRET", "AB%2Bcd", "AB+cd", "cd/ef", "cd%2Fef")


def leaks(text: str) -> list[str]:
    return [form for form in SECRET_FORMS if form in text]


def test_no_secret_of_an_https_root_reaches_a_log_an_error_or_the_loader_state(split_export, tmp_path, caplog):
    export, source = split_export
    paths = json.loads((export / "metadata.json").read_text())["media_items"]
    (source / paths[1]["file_path"]).write_bytes(b"not a jpeg")  # a decode failure
    (source / paths[2]["file_path"]).unlink()  # a 404
    caplog.set_level(logging.DEBUG)  # every logger, fsspec's and aiohttp's included
    with ImageServer(source) as server:
        root = server.url.replace("http://", f"http://reader:{PASSWORD}@") + f"/?sv=2025-01-05&sig={SIGNATURE}"
        ds = VisualLayerDataset.from_export(export, images_root=root, image_size=8, cache_dir=tmp_path / "c")
        errors_raised = []
        server.fail_next(1, 503)  # retried, then read
        ds[0]
        for index, status in ((1, None), (2, None), (3, 403)):  # a refused read: aiohttp's error holds the URL
            if status:
                server.fail_next(1, status)
            with pytest.raises((errors.ImageDecodeError, errors.ImageNotFoundError)) as caught:
                ds[index]
            errors_raised.append(caught.value)
        assert all("sig=AB%2Bcd" in request for request in server.requests), "the query did not reach the server"
        skipping = VisualLayerDataset.from_export(
            export, images_root=root, image_size=8, cache_dir=tmp_path / "c", on_error="skip"
        )
        for workers in (0, 2):
            context = {"multiprocessing_context": "fork"} if workers else {}
            loader = skipping.dataloader(2, num_workers=workers, shuffle=False, **context)
            batches = iter(loader)
            for _ in range(2):
                next(batches)
            state = json.dumps(loader.state_dict())
            rest = list(batches)
            assert len(rest) == len(loader) - 2
            assert len(loader.skipped) == 2 and "skipped" in state
            assert leaks(state) == [], f"the loader state holds {leaks(state)}"
            assert leaks(repr(loader.skipped)) == [], f"loader.skipped holds {leaks(repr(loader.skipped))}"
    assert any(r.name.startswith("fsspec") for r in caplog.records), "fsspec logged no request line to check"
    for record in caplog.records:
        assert leaks(record.getMessage()) == [], f"{record.name} logged {record.getMessage()!r}"
    assert leaks(caplog.text) == [], "a secret reached a log line or its traceback"
    for error in errors_raised:
        shown = f"{error} {error!r} {error.args!r} {vars(error)!r}"
        assert leaks(shown) == [], f"{type(error).__name__} carries {leaks(shown)}: {shown}"
        # What an error tracker records: every exception reachable from the one raised, not only
        # what its traceback prints (``from None`` hides a ``__context__`` without dropping it).
        linked, seen = error, []
        while (linked := linked.__cause__ or linked.__context__) is not None:
            seen.append(f"{linked} {linked!r}")
        assert leaks(" ".join(seen)) == [], f"an exception chained to {type(error).__name__} holds a secret: {seen}"
    assert "403" in str(errors_raised[2]) and ds.media_ids[3] in str(errors_raised[2])


def test_no_credential_in_an_s3_endpoint_reaches_a_file_of_the_cache_or_a_repr(split_export, tmp_path):
    """An endpoint_url with user info and a token (a proxy in front of the bucket, say) keys the
    prepared store and the image cache, but nothing written to disk or shown holds them; and new
    credentials for the same endpoint find the same store."""
    from vl_datasets.loading.prepared import list_stores

    export, _ = split_export

    def opened(password: str, token: str) -> VisualLayerDataset:
        endpoint = f"http://minio-user:{password}@127.0.0.1:9/?X-Amz-Security-Token={token}"
        options = {"endpoint_url": endpoint, "key": "reader", "secret": password}
        return VisualLayerDataset.from_export(
            export, images_root="s3://bucket/photos", storage_options=options, prepare=32, image_size=16,
            image_cache="1MB", cache_dir=tmp_path / "c", task=None,
        )  # fmt: skip

    ds = opened(PASSWORD, SIGNATURE)
    written = {str(p): leaks(p.read_text(errors="replace")) for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert any(name.endswith("store.json") for name in written), "the prepared store was not created"
    assert {name: found for name, found in written.items() if found} == {}, "a secret was written to the cache"
    assert leaks(repr(ds)) == []
    (store,) = list_stores(ds.entry.entry_dir)
    again = opened("rotated-Password-8", "ROTATED")
    assert [s.path for s in list_stores(again.entry.entry_dir)] == [store.path], "new credentials made another store"


def test_no_s3_credential_reaches_a_debug_line_of_botocore_or_s3fs(split_export, tmp_path, monkeypatch, caplog):
    """At DEBUG botocore logs each request's headers (the session token, the SigV4 Authorization
    with the access key id) and its canonical request, and s3fs logs the bucket of an
    s3://KEY:SECRET@bucket root as {'Bucket': 'KEY:SECRET@bucket'}: none of them may show."""
    export, source = split_export
    monkeypatch.setenv("VL_DATASETS_READ_ATTEMPTS", "1")
    key_id, token = "AKIAEXAMPLEKEY000042", "FwoGZXIvYXdzEXAMPLE-session-Q9zSECRET"
    caplog.set_level(logging.DEBUG)
    with serving_folder(source, monkeypatch) as server:
        options = {"endpoint_url": server.endpoint, "key": key_id, "secret": PASSWORD, "token": token}
        ds = VisualLayerDataset.from_export(
            export, images_root=f"s3://{server.bucket}/photos", storage_options=options, cache_dir=tmp_path / "c"
        )
        ds[0]
        in_url = VisualLayerDataset.from_export(
            export,
            images_root=f"s3://{key_id}:{PASSWORD}@{server.bucket}/photos",
            storage_options={"endpoint_url": server.endpoint},
            cache_dir=tmp_path / "c",
        )
        with pytest.raises(errors.ImageDecodeError):  # s3fs takes no credentials from the URL
            in_url[0]
    logged = [record.getMessage() for record in caplog.records]
    assert any("x-amz-security-token:" in line for line in logged), "botocore logged no canonical request"
    assert any("'Bucket': '" in line for line in logged), "s3fs logged no call"
    assert [line for line in logged if key_id in line or token in line or PASSWORD in line] == []
    assert key_id not in caplog.text and token not in caplog.text and PASSWORD not in caplog.text


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_a_raw_secret_key_with_slashes_in_an_images_root_is_never_shown(split_export, tmp_path, monkeypatch, scheme):
    """AWS secret keys hold "/": pasted unencoded as user:password@, URL libraries read the rest of
    the key as the path. It must be hidden all the same."""
    export, _ = split_export
    monkeypatch.setenv("VL_DATASETS_READ_ATTEMPTS", "1")
    key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    host = "127.0.0.1:9/photos" if scheme == "http" else "bucket/photos"
    ds = VisualLayerDataset.from_export(
        export, images_root=f"{scheme}://AKIDEXAMPLE:{key}@{host}", image_size=8, cache_dir=tmp_path / "c"
    )
    shown = [f"{ds!r}", ds.image_path(0), str(ds.curation_details().column("image_path").to_pylist())]
    if scheme == "http":  # a read fails at once (port "wJalr..." is no port): its error names the URL
        with pytest.raises(errors.ImageDecodeError) as caught:
            ds[0]
        shown.append(f"{caught.value} {caught.value!r}")
    pieces = [piece for piece in key.split("/") if any(piece in text for text in shown)]
    assert pieces == [], f"the key's {pieces} shown in {shown}"
    assert ds.image_path(0).startswith(f"{scheme}://{host}/")
