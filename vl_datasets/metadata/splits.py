"""Leakage-safe splits: near-duplicates and look-alikes never straddle train and test.

A random split of a raw image dataset leaks: an image's near-duplicate lands in the test split
and the test score measures memory, not generalisation. Visual Layer already groups such images:
every duplicate group (at any threshold) and every similarity cluster. ``leakage_safe_split``
keeps each connected set of those groups whole, then deals the sets to splits by fraction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError, SchemaError
from .curation import flat_issues
from .row_batches import TableRows


def leakage_safe_split(
    table: pa.Table | Any, fractions: Mapping[str, float], *, seed: int = 0, stratify: bool = True
) -> dict[str, list[str]]:
    """Split the items of a normalized metadata table (or of a dataset: at millions of items pass
    the dataset itself, and only the columns a split reads are taken) into named parts of about
    ``fractions``.

    Items linked by a shared ``cluster_id`` or a shared duplicate group (any threshold), directly
    or through other items, go to the same part. The result maps each name to its media ids (in
    table order) and is the same for the same table and seed. Pass a part to a dataset with
    ``subset=``, for example ``VisualLayerDataset(..., subset=parts["train"], min_uniqueness=0.3)``.
    Parts come out close to their fractions when no group is large next to the dataset. With
    ``stratify`` (the default), groups are dealt per class (the first label of a group's first
    item), so every part gets about its fraction of each class.
    """
    names, targets = _check_fractions(fractions)
    rows = _split_rows(table)
    if "media_id" not in rows.column_names:
        raise SchemaError("leakage_safe_split needs a media_id column; pass a dataset's .table or curation_details().")
    component = _linked_components(rows)
    roots, first_row, inverse, sizes = np.unique(component, return_index=True, return_inverse=True, return_counts=True)
    strata = _first_labels(rows, first_row) if stratify else np.zeros(len(roots), dtype=np.int64)
    shuffled = np.random.default_rng(seed).permutation(len(roots))
    part_of_group = np.empty(len(roots), dtype=np.int64)
    for stratum in np.unique(strata):
        order = shuffled[strata[shuffled] == stratum]
        # Deal the stratum's groups, in shuffled order, along their cumulative item count: a
        # group goes to the part whose share of the total holds the group's midpoint.
        midpoints = (np.cumsum(sizes[order]) - sizes[order] / 2) / sizes[order].sum()
        part_of_group[order] = np.searchsorted(np.cumsum(targets), midpoints, side="right").clip(max=len(names) - 1)
    part_of_item = part_of_group[inverse]
    return {
        name: rows.take(["media_id"], np.flatnonzero(part_of_item == i)).column("media_id").to_pylist()
        for i, name in enumerate(names)
    }


def _split_rows(source: pa.Table | Any) -> Any:
    """What to split, read a slice at a time: a table, or a dataset's (or its ``items``') rows."""
    if isinstance(source, pa.Table):
        return TableRows(source)
    items = getattr(source, "items", source)
    if not callable(getattr(items, "slices", None)):
        raise ConfigurationError(
            f"leakage_safe_split takes a metadata table or a dataset, not {type(source).__name__}."
        )
    return items


def find_leaks(table: pa.Table, train_ids: Iterable[str], eval_ids: Iterable[str]) -> pa.Table:
    """The items of ``eval_ids`` that share a cluster or a duplicate group with an item of ``train_ids``.

    One row per leaking item: ``media_id``, ``shared`` (``"cluster_id"`` or ``"duplicate_group"``),
    ``group`` (its id) and ``train_media_id`` (one training item in that group).
    """
    memberships = _memberships_table(table)
    in_train = pc.is_in(memberships.column("media_id"), value_set=pa.array(list(train_ids), pa.string()))
    in_eval = pc.is_in(memberships.column("media_id"), value_set=pa.array(list(eval_ids), pa.string()))
    train = memberships.filter(in_train).rename_columns(["train_media_id", "shared", "group"])
    joined = memberships.filter(in_eval).join(train, keys=["shared", "group"], join_type="inner")
    # A shared duplicate group is the worse leak: report it before a shared cluster.
    joined = joined.sort_by([("media_id", "ascending"), ("shared", "descending"), ("train_media_id", "ascending")])
    _, first = np.unique(joined.column("media_id").to_numpy(zero_copy_only=False), return_index=True)
    return joined.take(pa.array(first)).select(["media_id", "shared", "group", "train_media_id"])


def _memberships_table(table: pa.Table) -> pa.Table:
    media_ids = table.column("media_id").combine_chunks()
    parts = []
    for kind, groups, rows in _group_memberships(TableRows(table)):
        valid = groups.codes >= 0
        parts.append(
            pa.table(
                {
                    "media_id": media_ids.take(pa.array(rows[valid])),
                    "shared": pa.array([kind] * int(valid.sum()), pa.string()),
                    "group": groups.dictionary.take(pa.array(groups.codes[valid])).cast(pa.string()),
                }
            )
        )
    return (
        pa.concat_tables(parts)
        if parts
        else pa.table(
            {
                "media_id": pa.array([], pa.string()),
                "shared": pa.array([], pa.string()),
                "group": pa.array([], pa.string()),
            }
        )
    )


def _check_fractions(fractions: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    if not fractions:
        raise ConfigurationError("leakage_safe_split needs at least one fraction, e.g. {'train': 0.8, 'test': 0.2}.")
    names = list(fractions)
    values = np.array([float(fractions[n]) for n in names])
    if (values <= 0).any() or not np.isclose(values.sum(), 1.0):
        raise ConfigurationError(f"Split fractions must be positive and add up to 1, got {dict(fractions)}.")
    return names, values


def _first_labels(rows: Any, positions: np.ndarray) -> np.ndarray:
    """A class code for each row at ``positions``: its first label, or one shared code for unlabeled rows."""
    if "labels" not in rows.column_names:
        return np.zeros(len(positions), dtype=np.int64)
    labels = rows.take(["labels"], positions).column("labels").combine_chunks()
    first = pc.list_element(pc.if_else(pc.greater(pc.list_value_length(labels), 0), labels, None), 0)
    codes = pc.dictionary_encode(pc.struct_field(first, "category_name")).indices
    return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _linked_components(rows: Any) -> np.ndarray:
    """For each row, a component id shared by every row it is linked to."""
    n = len(rows)
    items, groups = [], []  # edges between an item and a group node
    next_node = n
    for _, encoded, members in _group_memberships(rows):
        valid = encoded.codes >= 0
        items.append(members[valid])
        groups.append(encoded.codes[valid] + next_node)
        next_node += len(encoded.dictionary)
    if not items:
        return np.arange(n)
    return union_find(next_node, np.concatenate(items), np.concatenate(groups), n)


def union_find(nodes: int, a: np.ndarray, b: np.ndarray, first: int) -> np.ndarray:
    """The component of each of the ``first`` nodes once edges join ``a[k]`` and ``b[k]`` (of
    ``nodes`` in all), named by its smallest node."""
    parent = np.arange(nodes)
    while True:  # union by smaller root, with path halving, until every edge is inside one tree
        ra, rb = _roots(parent, a), _roots(parent, b)
        differ = ra != rb
        if not differ.any():
            return _roots(parent, np.arange(first))
        np.minimum.at(parent, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])


def _roots(parent: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent[nodes]
        parent[:] = grand


class _Groups(NamedTuple):
    """Each membership's group, as a code into ``dictionary`` (-1: none)."""

    codes: np.ndarray
    dictionary: pa.Array


def _group_memberships(rows: Any) -> Iterator[tuple[str, _Groups, np.ndarray]]:
    """(kind, group of each membership, row of that membership) for clusters and duplicate groups,
    read a slice of rows at a time and encoded as numbers: no column of group ids is ever whole."""
    clusters, duplicates, duplicate_rows = [], [], []
    for offset, part in rows.slices(["cluster_id", "issues"]):
        if "cluster_id" in part.column_names:
            clusters.append(pc.dictionary_encode(part.column("cluster_id").combine_chunks().cast(pa.string())))
        if "issues" in part.column_names:
            flat, parents = flat_issues(part)
            is_dup = pc.fill_null(pc.equal(flat.field("issue_type"), "duplicates"), False)
            duplicates.append(pc.dictionary_encode(flat.field("duplicate_group_id").filter(is_dup).cast(pa.string())))
            duplicate_rows.append(offset + parents[is_dup.to_numpy(zero_copy_only=False)])
    if "cluster_id" in rows.column_names:
        yield "cluster_id", _unified(clusters), np.arange(len(rows))
    if "issues" in rows.column_names:
        yield "duplicate_group", _unified(duplicates), np.concatenate(duplicate_rows).astype(np.int64)


def _unified(parts: list[pa.DictionaryArray]) -> _Groups:
    """One code per value across the slices' own dictionaries."""
    unified = pa.chunked_array(parts, pa.dictionary(pa.int32(), pa.string())).unify_dictionaries()
    codes = [pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False) for chunk in unified.chunks]
    dictionary = unified.chunks[0].dictionary if unified.num_chunks else pa.array([], pa.string())
    return _Groups(np.concatenate(codes).astype(np.int64) if codes else np.array([], np.int64), dictionary)
