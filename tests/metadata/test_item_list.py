"""The curated item list on disk: written a slice at a time (a first open's memory does not grow with
the items it keeps), mapped as it was written, and never trusted when its files disagree."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest

from tests.helpers import child_env
from tests.metadata.helpers import json_strings_table, write_parquet
from tests.waits import run_child
from vl_datasets.metadata import row_batches
from vl_datasets.metadata.curated import CuratedItems, TargetOptions
from vl_datasets.metadata.curation import CurationRules
from vl_datasets.metadata.index import INDEX_FILE, read_index, write_export_index
from vl_datasets.metadata.item_codes import with_items
from vl_datasets.metadata.item_list import FACTS_FILE, read_item_list

LABELS = ("cat", "dog", "bird")


def _media_items(n: int) -> list[dict]:
    return [
        {
            "media_id": f"id-{i:07d}",
            "media_type": "image",
            "file_path": f"train/img_{i:07d}.jpg",
            "uniqueness_score": (i % 100) / 100,
            "metadata_items": [
                {"type": "image_label", "properties": {"category_name": LABELS[i % 3], "source": "User"}},
                {"type": "image_label", "properties": {"category_name": LABELS[i % 2], "source": "Model"}},
            ],
        }
        for i in range(n)
    ]


@pytest.fixture
def index(tmp_path):
    export = write_parquet(tmp_path / "export", json_strings_table(_media_items(500)), row_group_size=64)
    write_export_index(export.parent, tmp_path / INDEX_FILE, batch_rows=64)
    rows = read_index(tmp_path / INDEX_FILE)
    assert rows is not None
    return with_items(rows, tmp_path / INDEX_FILE)


def _curated(index, folder, **options):
    rules = CurationRules(min_uniqueness=0.2, label_source=options.pop("label_source", "User"))
    return CuratedItems(index, rules, TargetOptions(**options), paths_from_file_path=lambda p: p, folder=folder)


@pytest.mark.parametrize("task", ["classification", "multilabel", "detection", None])
def test_a_written_list_maps_as_the_items_it_was_written_from(index, tmp_path, task):
    """Read back, a list is the same rows, paths, targets and facts; its columns map the files."""
    options = {"task": task, "label_source": None} if task == "multilabel" else {"task": task}
    items = _curated(index, tmp_path / "list", **options)
    mapped = read_item_list(tmp_path / "list", index_rows=len(index))
    assert mapped is not None and len(mapped.rows) == len(items) == 400
    assert mapped.rows.tolist() == items.rows.tolist() and mapped.rows.base is not None
    assert mapped.paths.to_pylist() == [f"train/img_{row:07d}.jpg" for row in mapped.rows]
    assert (mapped.classes, mapped.summary, mapped.fingerprint) == (items.classes, items.summary, items.fingerprint())
    if task == "classification":
        assert mapped.targets.tolist() == [(row % 3 + 1) % 3 for row in mapped.rows]  # cat, dog, bird as 1, 2, 0
    elif task == "multilabel":
        assert mapped.targets.to_pylist() == [sorted({(row % 3 + 1) % 3, row % 2 + 1}) for row in mapped.rows]
    else:
        assert mapped.targets is None
    copy = pickle.loads(pickle.dumps(items))
    assert copy.rows.tolist() == items.rows.tolist() and copy.fingerprint() == items.fingerprint()


@pytest.mark.parametrize("task", ["classification", "multilabel"])
def test_targets_are_indices_of_the_sorted_classes_whatever_slice_a_name_is_first_met_in(tmp_path, monkeypatch, task):
    """The list is written before every class is known: each name is numbered as it is met, a
    later slice meets names that sort first, and the targets still index the sorted classes."""
    monkeypatch.setattr(row_batches, "SLICE_ROWS", 64)
    first_met = ["zebra"] * 200 + ["cat"] * 200 + ["aardvark"] * 100  # in the order the slices meet them
    media = [
        {
            "media_id": f"id-{i:07d}",
            "file_path": f"train/img_{i:07d}.jpg",
            "metadata_items": [
                {"type": "image_label", "properties": {"category_name": name, "source": "User"}},
                {"type": "image_label", "properties": {"category_name": "yak", "source": "Model"}},
            ],
        }
        for i, name in enumerate(first_met)
    ]
    export = write_parquet(tmp_path / "export", json_strings_table(media), row_group_size=64)
    write_export_index(export.parent, tmp_path / INDEX_FILE, batch_rows=64)
    index = with_items(read_index(tmp_path / INDEX_FILE), tmp_path / INDEX_FILE)
    label_source = "User" if task == "classification" else None
    rules = CurationRules(label_source=label_source)
    items = CuratedItems(
        index, rules, TargetOptions(task=task), paths_from_file_path=lambda p: p, folder=tmp_path / "list"
    )
    mapped = read_item_list(tmp_path / "list", index_rows=len(index))
    if task == "classification":
        assert items.classes == mapped.classes == ["aardvark", "cat", "zebra"]
        assert mapped.targets.tolist() == [["aardvark", "cat", "zebra"].index(name) for name in first_met]
    else:
        assert items.classes == ["aardvark", "cat", "yak", "zebra"]
        classes = items.classes  # an item's names come sorted, so its class indices do too
        assert mapped.targets.to_pylist() == [sorted([classes.index(name), classes.index("yak")]) for name in first_met]


def _reference_targets(names_of_rows: list[list[str]], task: str, classes: list[str] | None):
    """(classes, [(row, target)] of the items kept) as the rules say, row by row in Python."""
    distinct = [sorted(set(names)) for names in names_of_rows]
    if classes is None:
        met = [names for names in distinct if len(names) == 1] if task == "classification" else distinct
        classes = sorted({name for names in met for name in names})
    if task == "multilabel":
        return classes, [
            (row, sorted(classes.index(n) for n in names if n in classes)) for row, names in enumerate(distinct)
        ]
    kept = [
        (row, classes.index(names[0])) for row, names in enumerate(distinct) if len(names) == 1 and names[0] in classes
    ]
    return classes, kept


@pytest.mark.parametrize("task", ["classification", "multilabel"])
@pytest.mark.parametrize("given", [None, ["yak", "cat", "emu"]])
def test_targets_across_slices_are_those_of_the_rules_row_by_row(tmp_path, monkeypatch, task, given):
    """Rows with no label, one, the same one from two sources, several; names first met in any
    slice; classes given in an order of their own, with names outside them: every kept item's
    target is what the rules give row by row, and the dropped ones are counted."""
    monkeypatch.setattr(row_batches, "SLICE_ROWS", 32)
    rng = np.random.default_rng(7)
    pool = ["cat", "dog", "emu", "yak", "ant"]
    names_of_rows = [[str(name) for name in rng.choice(pool, size=rng.integers(0, 4))] for _ in range(300)]
    names_of_rows[5] = ["dog", "dog"]  # one name from two sources: one label
    media = [
        {
            "media_id": f"id-{i:07d}",
            "file_path": f"train/img_{i:07d}.jpg",
            "metadata_items": [
                {"type": "image_label", "properties": {"category_name": name, "source": ("User", "Model")[k % 2]}}
                for k, name in enumerate(names)
            ],
        }
        for i, names in enumerate(names_of_rows)
    ]
    export = write_parquet(tmp_path / "export", json_strings_table(media), row_group_size=32)
    write_export_index(export.parent, tmp_path / INDEX_FILE, batch_rows=32)
    index = with_items(read_index(tmp_path / INDEX_FILE), tmp_path / INDEX_FILE)
    options = TargetOptions(task=task, classes=given, invalid_labels="drop")
    items = CuratedItems(index, CurationRules(), options, paths_from_file_path=lambda p: p, folder=tmp_path / "list")
    classes, expected = _reference_targets(names_of_rows, task, given)
    mapped = read_item_list(tmp_path / "list", index_rows=len(index))
    assert items.classes == mapped.classes == classes
    targets = mapped.targets.tolist() if task == "classification" else mapped.targets.to_pylist()
    assert list(zip(mapped.rows.tolist(), targets)) == expected
    dropped = len(names_of_rows) - len(expected)
    assert items.curation_summary().removed_by.get("invalid_labels", 0) == dropped
    assert dropped > 0 if task == "classification" else dropped == 0


def _damages():
    def truncate(name, by=8):
        return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:-by])

    def facts(**changed):
        return lambda folder: (folder / FACTS_FILE).write_text(
            json.dumps({**json.loads((folder / FACTS_FILE).read_text()), **changed})
        )

    def offsets_past_the_data(folder):
        offsets = np.fromfile(folder / "path.offsets.i64", "<i8")
        offsets[-1] += 1
        offsets.tofile(folder / "path.offsets.i64")

    return {
        "rows truncated": truncate("rows.i64"),
        "paths' bytes truncated": truncate("path.data", by=3),
        "paths' offsets truncated": truncate("path.offsets.i64"),
        "targets truncated": truncate("target.i64"),
        "offsets past the data": offsets_past_the_data,
        "a row outside the index": facts(index_rows=10),
        "a count of more items": facts(count=401),
        "a count that is no number of items": facts(count=400.0),
        "another format": facts(format=1),
        "facts cut short": lambda folder: (folder / FACTS_FILE).write_text('{"format": 2, "cou'),
        "no facts": lambda folder: (folder / FACTS_FILE).unlink(),
        "a column file missing": lambda folder: (folder / "path.data").unlink(),
    }


@pytest.mark.parametrize("damage", list(_damages()))
def test_a_list_whose_files_disagree_is_not_read(index, tmp_path, damage):
    _curated(index, tmp_path / "list")
    assert read_item_list(tmp_path / "list", index_rows=len(index)) is not None
    _damages()[damage](tmp_path / "list")
    assert read_item_list(tmp_path / "list", index_rows=len(index)) is None


_CHILD = """
import json, sys
from pathlib import Path
import pyarrow.compute as pc
from vl_datasets.metadata import row_batches
from vl_datasets.metadata import row_batches
from vl_datasets.metadata.curated import CuratedItems, TargetOptions
from vl_datasets.metadata.curation import CurationRules
row_batches.SLICE_ROWS = 8192  # a constant, at any size: the pages of one slice at a time
def status(key):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))
index, folder, below, task = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
mapped = row_batches.ReleasingMap(index)  # the index's pages go as they are read, as a first open's do
long_paths = "d/" * 250  # 500 more bytes a path: what the list holds per item dwarfs what the rules do
Path("/proc/self/clear_refs").write_text("5")  # the peak so far (the imports') is forgotten
rss = status("VmRSS:")
items = CuratedItems(
    mapped.table,
    CurationRules(where=pc.field("media_id") < below, label_source="User"),
    TargetOptions(task=task),
    paths_from_file_path=lambda paths: pc.binary_join_element_wise(long_paths, paths, ""),
    folder=folder,
    index_path=Path(index),  # where= reads every column: those left in the metadata file too
)
listed = sum(path.stat().st_size for path in folder.iterdir())
print(json.dumps({"peak": status("VmHWM:") - rss, "items": len(items), "list_bytes": listed}))
"""


@pytest.mark.parametrize("task", ["classification", "multilabel"])
def test_curating_holds_a_slice_of_the_list_not_the_list(tmp_path, task):
    """From the first tenth of an index's rows kept to all of them, the list written grows by
    ~150 MiB; the peak of the curation that writes it, by a fraction of that (the rules read the
    same rows either way, and the slices that are kept are as full). Its growth varies by some MiB
    from run to run (allocator arenas): the list's long paths keep that noise small next to what a
    list held whole would grow by."""
    export = write_parquet(tmp_path / "export", json_strings_table(_media_items(300_000)), row_group_size=8192)
    write_export_index(export.parent, tmp_path / INDEX_FILE, batch_rows=8192)
    found = {}
    for below in ("id-0030000", "id-9999999"):  # the media ids below it
        command = [sys.executable, "-c", _CHILD, str(tmp_path / INDEX_FILE), str(tmp_path / below), below, task]
        result = run_child(command, env=child_env())
        assert result.returncode == 0, result.stderr
        found[below] = json.loads(result.stdout.strip().splitlines()[-1])
    tenth, whole = found["id-0030000"], found["id-9999999"]
    print(f"{task}: {tenth} kept a tenth, {whole} all")
    assert (tenth["items"], whole["items"]) == (30_000, 300_000)
    grown = whole["list_bytes"] - tenth["list_bytes"]
    assert grown > 128 << 20, f"the list grows by {grown:,} bytes only: the test needs more items"
    assert whole["peak"] - tenth["peak"] < grown / 4, (tenth, whole)
