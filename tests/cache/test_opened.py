"""Opening an export the user hands us: a folder is read where it is, and nothing is written into it."""

from __future__ import annotations


def test_opening_a_folder_writes_nothing_into_it(tmp_path):
    from vl_datasets.cache.opened import open_export
    from vl_datasets.testing import write_dataset

    folder = tmp_path / "export"
    write_dataset(folder.parent, folder.name, n_items=4)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    entry = open_export(folder, cache_dir=tmp_path / "cache")
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before, "open_export wrote into the folder"
    assert entry.path == folder
    assert entry.index_path.is_relative_to(tmp_path / "cache" / "opened")
    assert open_export(folder, cache_dir=tmp_path / "cache") == entry, "a second open must reuse the index"
    # The user edits the metadata: the stale index is not reused.
    metadata = folder / "metadata.json"
    metadata.write_text(metadata.read_text().replace('"media_items"', '"media_items" '))
    assert open_export(folder, cache_dir=tmp_path / "cache").version != entry.version


def test_a_symlink_out_of_the_export_is_never_followed(tmp_path):
    import json

    import pytest

    from vl_datasets import VisualLayerDataset, errors
    from vl_datasets.testing import write_dataset

    folder = tmp_path / "export"
    write_dataset(folder.parent, folder.name, n_items=3)
    secret = tmp_path / "outside.txt"
    secret.write_bytes(b"PRIVATE-BYTES-OF-ANOTHER-FILE")
    items = json.loads((folder / "metadata.json").read_text())["media_items"]
    victim = folder / "images" / items[0]["file_path"]
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(errors.ImageNotFoundError) as caught:
        VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", task=None)
    assert caught.value.media_id == items[0]["media_id"], "the error should name the item whose image is a link"
    kept = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", task=None, missing_images="drop")
    assert len(kept) == 2 and kept.curation_summary().removed_by == {"missing_images": 1}
    assert items[0]["media_id"] not in kept.media_ids, "the linked file was read as the item's image"


def test_a_killed_unpack_leaves_nothing_for_good(tmp_path):
    import zipfile

    from vl_datasets.cache.opened import local_store, open_export
    from vl_datasets.testing import write_dataset

    write_dataset(tmp_path, "export", n_items=2)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (tmp_path / "export").rglob("*"):
            zf.write(path, path.relative_to(tmp_path / "export"))
    store = local_store(tmp_path / "cache")
    entry_dir = store.opened_dir(archive.resolve())
    stale = entry_dir / ".staging-999999-deadbeef"  # what a kill during unpacking leaves
    stale.mkdir(parents=True)
    (stale / "metadata.json").write_text("{")
    entry = open_export(archive, cache_dir=tmp_path / "cache")
    assert entry.row_count == 2
    assert not stale.exists(), "the next open of the same ZIP must collect the killed unpack's folder"


def test_a_cache_dir_that_is_a_file_is_a_configuration_error(tmp_path):
    import pytest

    from vl_datasets import VisualLayerDataset, errors
    from vl_datasets.testing import write_dataset

    write_dataset(tmp_path, "export", n_items=2)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("mine")
    for cache_dir in (blocker, blocker / "cache"):
        with pytest.raises(errors.ConfigurationError, match="cache_dir") as caught:
            VisualLayerDataset.from_export(tmp_path / "export", cache_dir=cache_dir, task=None)
        assert str(cache_dir) in str(caught.value), f"the message does not name the cache_dir: {caught.value}"
    assert blocker.read_text() == "mine"


def test_a_folder_export_whose_images_is_a_file_is_refused_and_keeps_its_version(tmp_path):
    import os
    import shutil

    import pytest

    from vl_datasets import errors
    from vl_datasets.cache.opened import local_store, open_export
    from vl_datasets.testing import write_dataset

    folder = tmp_path / "export"
    write_dataset(folder.parent, folder.name, n_items=2)
    entry = open_export(folder, cache_dir=tmp_path / "cache")
    shutil.rmtree(folder / "images")
    (folder / "images").write_bytes(b"not a folder")
    stamp = (folder / "metadata.json").stat().st_mtime_ns + 10**9
    os.utime(folder / "metadata.json", ns=(stamp, stamp))  # touched: the folder is indexed again
    with pytest.raises(errors.CorruptArchiveError) as caught:
        open_export(folder, cache_dir=tmp_path / "cache")
    assert str(folder) in str(caught.value) and "images" in str(caught.value)
    assert caught.value.member == "images" and caught.value.path == str(folder)
    assert local_store(tmp_path / "cache").versions(entry.entry_dir) == [entry], "the published version was lost"


def test_a_metadata_file_edited_with_its_size_and_mtime_put_back_is_indexed_again(tmp_path):
    """touch -r, cp -p and rsync -a keep an edited file's size and mtime: its labels changed all the same."""
    import os

    from vl_datasets import VisualLayerDataset
    from vl_datasets.testing import write_dataset

    folder = tmp_path / "export"
    write_dataset(folder.parent, folder.name, n_items=6)
    metadata = folder / "metadata.json"
    before = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", task="classification")
    text, stat = metadata.read_text(), metadata.stat()
    first = before.classes[before[0][1]]
    other = next(name for name in before.classes if name != first and len(name) == len(first))
    edited = text.replace(f'"category_name": "{first}"', f'"category_name": "{other}"')
    assert edited != text and len(edited) == len(text), "the edit must keep the file's size"
    for replace in (False, True):  # written in place, then saved as a new file over it (as editors do)
        if replace:
            (folder / "new.json").write_text(edited.replace(other, first))
            os.replace(folder / "new.json", metadata)
        else:
            metadata.write_text(edited)
        os.utime(metadata, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert (metadata.stat().st_size, metadata.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        after = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", task="classification")
        fresh = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / f"fresh-{replace}", task="classification")
        labels = [after.classes[after[i][1]] for i in range(len(after))]
        assert labels == [fresh.classes[fresh[i][1]] for i in range(len(fresh))], "stale labels were served"
        assert (labels[0] == other) != replace


def test_a_zip_whose_export_sits_in_a_folder_is_named_with_where_its_metadata_is(tmp_path):
    """The error named the staging folder it was unpacked into, gone by the time it was read."""
    import json
    import zipfile

    import pytest

    from vl_datasets import VisualLayerDataset, errors

    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("export/metadata.json", json.dumps({"info": {}, "media_items": []}))
    with pytest.raises(errors.CorruptArchiveError) as caught:
        VisualLayerDataset.from_export(archive, cache_dir=tmp_path / "cache")
    assert str(caught.value).startswith(f"{archive} holds no metadata.parquet or metadata.json at its root")
    assert "there is one at export/metadata.json" in str(caught.value)


def test_a_folder_with_no_metadata_is_named_as_no_export_not_as_a_damaged_archive(tmp_path):
    """A folder of images, or one holding the export a level down, was a CorruptArchiveError whose
    hint (on the command line) said to download the archive again."""
    import json

    import pytest

    from vl_datasets import VisualLayerDataset, errors

    folder = tmp_path / "photos"
    (folder / "export").mkdir(parents=True)
    (folder / "export" / "metadata.json").write_text(json.dumps({"info": {}, "media_items": []}))
    with pytest.raises(errors.ExportNotFoundError) as caught:
        VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache")
    assert str(caught.value).startswith(f"{folder} is no Visual Layer export: it holds no metadata.parquet")
    assert "there is one at export/metadata.json" in str(caught.value)
    assert not isinstance(caught.value, errors.CorruptArchiveError)
