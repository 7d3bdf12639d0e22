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
