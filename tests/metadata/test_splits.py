"""Leakage-safe splits: no cluster or duplicate group straddles the parts."""

from __future__ import annotations

import collections
import random
import sys

import pyarrow as pa
import pytest

from tests.helpers import child_env, run_child
from vl_datasets import ConfigurationError, MediaIds, leakage_safe_split
from vl_datasets.metadata import row_batches
from vl_datasets.metadata.items import ISSUE_TYPE, LABEL_TYPE
from vl_datasets.metadata.splits import find_leaks


def _dup(group: str, threshold: float = 0.97) -> dict:
    return {
        "issue_type": "duplicates",
        "confidence": 0.99,
        "duplicate_group_id": group,
        "duplicate_threshold": threshold,
        "suggested_label": None,
        "description": None,
    }


def _table(rows: list[tuple[str, str | None, list[dict], str | None]]) -> pa.Table:
    """(media_id, cluster_id, issues, label) rows in the normalized schema's shape."""
    return pa.table(
        {
            "media_id": pa.array([r[0] for r in rows], pa.string()),
            "cluster_id": pa.array([r[1] for r in rows], pa.string()),
            "issues": pa.array([r[2] for r in rows], pa.list_(ISSUE_TYPE)),
            "labels": pa.array(
                [[{"category_name": r[3], "source": "User", "original_id": -1}] if r[3] else [] for r in rows],
                pa.list_(LABEL_TYPE),
            ),
        }
    )


def _groups_of(table: pa.Table) -> dict[str, set[str]]:
    """Every cluster and duplicate group, as the set of its media ids."""
    groups = collections.defaultdict(set)
    for row in table.to_pylist():
        if row["cluster_id"]:
            groups["c:" + row["cluster_id"]].add(row["media_id"])
        for issue in row["issues"]:
            if issue["issue_type"] == "duplicates":
                groups["d:" + issue["duplicate_group_id"]].add(row["media_id"])
    return groups


@pytest.fixture
def chained():
    """1,000 items in small clusters, with duplicate groups that chain clusters together."""
    rng = random.Random(3)
    rows = []
    for i in range(1000):
        issues = [_dup(f"g{i // 3}")] if i % 7 == 0 else []
        if i % 11 == 0:
            issues.append(_dup(f"g{rng.randrange(300)}", 0.99))  # a link to a random other group
        rows.append((f"m{i}", f"c{i // 5}" if i % 13 else None, issues, str(i % 4)))
    return _table(rows)


def test_no_cluster_or_duplicate_group_crosses_parts(chained):
    parts = leakage_safe_split(chained, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=5)
    part_of = {media_id: name for name, ids in parts.items() for media_id in ids}
    assert sorted(part_of) == sorted(chained.column("media_id").to_pylist())  # every item, once
    for members in _groups_of(chained).values():
        assert len({part_of[m] for m in members}) == 1, (
            f"a group straddles {sorted({part_of[m] for m in members})}: {sorted(members)}"
        )
    sizes = {name: len(ids) for name, ids in parts.items()}
    assert abs(sizes["train"] - 700) < 40
    assert abs(sizes["val"] - 100) < 40
    assert abs(sizes["test"] - 200) < 40
    assert find_leaks(chained, parts["train"], parts["test"]).num_rows == 0


def test_split_is_deterministic_for_a_seed_and_changes_with_it(chained):
    first = leakage_safe_split(chained, {"train": 0.8, "test": 0.2}, seed=1)
    assert first == leakage_safe_split(chained, {"train": 0.8, "test": 0.2}, seed=1)
    assert first != leakage_safe_split(chained, {"train": 0.8, "test": 0.2}, seed=2)


def test_stratified_split_gives_each_part_its_share_of_every_class():
    # Each class lives in its own clusters: an unstratified deal can starve a small part of a class.
    rows = [(f"m{i}", f"c{i // 4}", [], "rare" if i < 40 else "common") for i in range(400)]
    table = _table(rows)
    parts = leakage_safe_split(table, {"train": 0.8, "test": 0.2}, seed=0)
    rare_in_test = sum(1 for m in parts["test"] if int(m[1:]) < 40)
    assert 4 <= rare_in_test <= 12  # about 20% of the 40 rare items, in whole clusters of 4


@pytest.mark.parametrize(
    "fractions",
    [
        {},
        {"train": 0.8, "test": 0.3},
        {"train": 1.2, "test": -0.2},
        [0.8, 0.2],
        {"train": "0.5", "test": "0.5"},
        {"train": True, "test": 0.0},
        {"train": float("nan"), "test": 0.5},
    ],
)
def test_bad_fractions_raise_a_configuration_error(chained, fractions):
    with pytest.raises(ConfigurationError, match="fraction"):
        leakage_safe_split(chained, fractions)


@pytest.mark.parametrize(("option", "value"), [("seed", -1), ("seed", "x"), ("seed", 1.5), ("stratify", "no")])
def test_a_bad_seed_or_stratify_is_a_configuration_error(chained, option, value):
    with pytest.raises(ConfigurationError, match=option):
        leakage_safe_split(chained, {"train": 0.8, "test": 0.2}, **{option: value})


def test_a_part_left_empty_by_too_few_linked_sets_is_said(caplog):
    """Linked items are never cut: 40 items in one cluster make one part of everything."""
    table = _table([(f"m{i}", "c0", [], "cat") for i in range(40)])
    with caplog.at_level("WARNING", logger="vl_datasets"):
        parts = leakage_safe_split(table, {"train": 0.5, "test": 0.5})
    assert sorted(len(ids) for ids in parts.values()) == [0, 40]
    empty = next(name for name, ids in parts.items() if not len(ids))
    assert f"part(s) {empty!r} hold no item" in caplog.text


def test_find_leaks_names_the_shared_group_preferring_duplicates():
    table = _table(
        [
            ("a", "c1", [_dup("g1")], "x"),
            ("b", "c1", [_dup("g1")], "x"),
            ("c", "c2", [], "x"),
            ("d", "c2", [], "x"),
            ("e", "c3", [], "x"),
        ]
    )
    leaks = find_leaks(table, train_ids=["a", "c"], eval_ids=["b", "d", "e"])
    assert leaks.to_pylist() == [
        {"media_id": "b", "shared": "duplicate_group", "group": "g1", "train_media_id": "a"},
        {"media_id": "d", "shared": "cluster_id", "group": "c2", "train_media_id": "c"},
    ]
    # An item in train is the plainest leak, with a group of its own or none (it was no leak at all).
    leaks = find_leaks(table.drop_columns(["cluster_id"]), train_ids=["a", "e"], eval_ids=["a", "b", "e"])
    assert leaks.to_pylist() == [
        {"media_id": "a", "shared": "media_id", "group": "a", "train_media_id": "a"},
        {"media_id": "b", "shared": "duplicate_group", "group": "g1", "train_media_id": "a"},
        {"media_id": "e", "shared": "media_id", "group": "e", "train_media_id": "e"},
    ]


def test_parts_are_media_ids_in_table_order():
    rows = [(f"m{i}", f"c{i // 2}", [], "x") for i in range(20)]
    parts = leakage_safe_split(_table(rows), {"train": 0.5, "test": 0.5}, seed=0)
    order = [f"m{i}" for i in range(20)]
    for ids in parts.values():
        assert isinstance(ids, MediaIds)
        assert list(ids) == [m for m in order if m in set(ids)]


def test_the_parts_do_not_depend_on_how_the_rows_are_sliced(chained, monkeypatch):
    """Group ids are numbered a slice at a time: any slicing gives the parts of one whole slice."""
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    whole = leakage_safe_split(chained, fractions, seed=4)
    unstratified = leakage_safe_split(chained, fractions, seed=4, stratify=False)
    for rows in (1, 7, 64):
        monkeypatch.setattr(row_batches, "SLICE_ROWS", rows)
        assert leakage_safe_split(chained, fractions, seed=4) == whole, f"slices of {rows} rows"
        assert leakage_safe_split(chained, fractions, seed=4, stratify=False) == unstratified


_GROWTH_CHILD = """import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from vl_datasets import leakage_safe_split
from vl_datasets.metadata.items import ISSUE_TYPE, LABEL_TYPE

n = int(sys.argv[1])
rng = np.random.default_rng(0)


def text(prefix, numbers):  # ids of 36 characters, as uuids are
    return pa.array([f"{prefix}{k:035d}" for k in numbers.tolist()], pa.string())


def structs(kind, columns):
    return pa.StructArray.from_arrays(columns, fields=list(kind))


has_dup = np.flatnonzero(rng.random(n) < 0.1)
issues = structs(ISSUE_TYPE, [
    pa.array(["duplicates"] * len(has_dup)), pa.array(np.full(len(has_dup), 0.99)), text("g", has_dup // 2),
    pa.array(np.full(len(has_dup), 0.96)), pa.nulls(len(has_dup), pa.string()), pa.nulls(len(has_dup), pa.string()),
])
issue_offsets = np.concatenate([[0], np.cumsum(np.isin(np.arange(n), has_dup))]).astype(np.int32)
classes = rng.integers(0, 10, n)
names = pa.array([f"class{c}" for c in classes.tolist()])
labels = structs(LABEL_TYPE, [names, pa.array(["User"] * n), pa.array(classes)])
table = pa.table({
    "media_id": text("m", np.arange(n)),
    "cluster_id": text("c", rng.integers(0, n // 50 + 1, n)),
    "issues": pa.ListArray.from_arrays(pa.array(issue_offsets), issues),
    "labels": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), labels),
})


def status(key):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))


Path("/proc/self/clear_refs").write_text("5")  # the peak so far (the table's own) is forgotten
before = status("VmRSS:")
parts = leakage_safe_split(table, {"train": 0.8, "test": 0.2}, seed=0)
print(status("VmHWM:") - before, sum(len(ids) for ids in parts.values()))
"""


def _split_peak(rows: int) -> int:
    """How far above its resident memory a child's peak went while it split a table of ``rows``."""
    result = run_child([sys.executable, "-c", _GROWTH_CHILD, str(rows)], env=child_env())
    assert result.returncode == 0, result.stderr
    peak, split = (int(x) for x in result.stdout.split())
    assert split == rows
    return peak


def test_a_split_holds_a_few_numbers_per_item_not_its_ids_as_strings():
    """From 100K to 1M rows (36-character ids, clusters, duplicate pairs, a label each) the split's
    peak grows by less per added item than one Python string of its id (85 bytes): group ids are
    integers, and the parts are Arrow. Lists of str grew it by about 160 bytes an item."""
    small, large = 100_000, 1_000_000
    peaks = [_split_peak(small), _split_peak(large)]
    per_item = (peaks[1] - peaks[0]) / (large - small)
    print(f"split peak above its start at {small} and {large} rows: {peaks}, {per_item:.0f} bytes per added item")
    assert per_item < 85, f"the split's peak grows by {per_item:.0f} bytes per item: {peaks}"
