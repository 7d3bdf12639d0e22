"""Leakage-safe splits: no cluster or duplicate group straddles the parts."""

from __future__ import annotations

import collections
import random

import pyarrow as pa
import pytest

from vl_datasets import ConfigurationError, leakage_safe_split
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


@pytest.mark.parametrize("fractions", [{}, {"train": 0.8, "test": 0.3}, {"train": 1.2, "test": -0.2}])
def test_bad_fractions_raise_a_configuration_error(chained, fractions):
    with pytest.raises(ConfigurationError, match="fraction"):
        leakage_safe_split(chained, fractions)


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
