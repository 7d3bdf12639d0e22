"""Leakage-safe splits: near-duplicates and look-alikes never straddle train and test.

A random split of a raw image dataset leaks: an image's near-duplicate lands in the test split
and the test score measures memory, not generalisation. Visual Layer already groups such images:
every duplicate group (at any threshold) and every similarity cluster. ``leakage_safe_split``
keeps each connected set of those groups whole, then deals the sets to splits by fraction.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..atomic import replacing
from ..errors import ConfigurationError, SchemaError
from .curation import distinct_issues, flat_issues, is_duplicates
from .item_codes import distinct
from .media_ids import MEDIA_ID, MediaIds
from .options import flag
from .row_batches import TableRows, one_array
from .split_files import kept_split, split_folder
from .unique_ids import hash_strings

logger = logging.getLogger("vl_datasets")


def leakage_safe_split(
    table: pa.Table | Any, fractions: Mapping[str, float], *, seed: int = 0, stratify: bool = True
) -> dict[str, MediaIds]:
    """Split the items of a normalized metadata table (or of a dataset: at millions of items pass
    the dataset itself, and only the columns a split reads are read, a slice at a time) into named
    parts of about ``fractions``.

    Items linked by a shared ``cluster_id`` or a shared duplicate group (any threshold), directly
    or through other items, go to the same part. The result maps each name to its media ids (in
    table order) as ``MediaIds``, a read-only sequence of str held in Arrow (it compares equal to
    the list of the same ids), and is the same for the same table and seed. Pass a part to a dataset
    with ``subset=``, for example ``VisualLayerDataset(..., subset=parts["train"], min_uniqueness=0.3)``.
    Parts come out close to their fractions when no group is large next to the dataset. With
    ``stratify`` (the default), groups are dealt per class (the first label of a group's first
    item), so every part gets about its fraction of each class.

    The split of a dataset opened from the cache is kept beside its item list (``split_files``):
    every later call with the same fractions, seed and ``stratify``, on any rank of the node, maps
    those files instead of splitting again, and its parts pickle as their paths.
    """
    names, targets = _check_fractions(fractions)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}.")
    stratify = flag("stratify", stratify)
    rows = _split_rows(table)
    if "media_id" not in rows.column_names:
        raise SchemaError("leakage_safe_split needs a media_id column; pass a dataset's .table or curation_details().")

    def part_of_item() -> np.ndarray:
        return _part_of_item(rows, len(names), targets, seed, stratify)

    list_folder = getattr(rows, "list_folder", None)
    kept = None
    if list_folder is not None:
        folder = split_folder(list_folder, dict(zip(names, map(float, targets))), seed, stratify)
        kept = kept_split(folder, names, lambda files: _write_parts(rows, part_of_item(), files))
    parts = kept if kept is not None else _media_ids_by_part(rows, part_of_item(), names)
    empty = [name for name in names if not len(parts[name])]
    if empty and len(rows):
        # Linked sets are never cut: too few of them for the fractions leaves a part with none.
        logger.warning(
            "leakage_safe_split: part(s) %s hold no item: the %d items form too few linked sets (shared "
            "clusters and duplicate groups) for fractions %s.",
            ", ".join(map(repr, empty)), len(rows), dict(zip(names, map(float, targets))),
        )  # fmt: skip
    return parts


def _part_of_item(rows: Any, parts: int, targets: np.ndarray, seed: int, stratify: bool) -> np.ndarray:
    """Each row's part number: the linked sets of rows dealt to ``parts`` parts along ``targets``."""
    links = _read_links(rows, stratify)
    first_row, group_of_row, sizes = _numbered_components(_components_of(links, len(rows)))
    strata = links.first_labels[first_row] if stratify else np.zeros(len(first_row), dtype=np.int32)
    del links
    shuffled = np.random.default_rng(seed).permutation(len(first_row))
    part_of_group = np.empty(len(first_row), dtype=np.min_scalar_type(parts))
    for stratum in np.unique(strata):
        order = shuffled[strata[shuffled] == stratum]
        # Deal the stratum's groups, in shuffled order, along their cumulative item count: a
        # group goes to the part whose share of the total holds the group's midpoint.
        midpoints = (np.cumsum(sizes[order]) - sizes[order] / 2) / sizes[order].sum()
        part_of_group[order] = np.searchsorted(np.cumsum(targets), midpoints, side="right").clip(max=parts - 1)
    return part_of_group[group_of_row]


def _ids_by_part(rows: Any, part_of_item: np.ndarray, parts: int) -> Iterator[tuple[int, pa.Array]]:
    """(part number, ids) for the media ids of each part, a slice of rows at a time, in row order."""
    for offset, part in rows.slices(["media_id"]):
        ids = part.column("media_id")
        chosen = part_of_item[offset : offset + len(part)]
        for number in range(parts):
            for chunk in ids.filter(pa.array(chosen == number)).chunks:
                yield number, chunk.cast(pa.string())


def _media_ids_by_part(rows: Any, part_of_item: np.ndarray, names: list[str]) -> dict[str, MediaIds]:
    """Each part's media ids, in row order, read a slice at a time into Arrow (no Python string per id)."""
    chunks: list[list[pa.Array]] = [[] for _ in names]
    for number, ids in _ids_by_part(rows, part_of_item, len(names)):
        chunks[number].append(ids)
    return {name: MediaIds(pa.chunked_array(taken, pa.string())) for name, taken in zip(names, chunks)}


def _write_parts(rows: Any, part_of_item: np.ndarray, files: list[Path]) -> list[int]:
    """Each part's media ids, in row order, written to its file (atomically) a slice at a time:
    the ids of the parts are never whole in memory. Returns how many each part holds."""
    schema = pa.schema([(MEDIA_ID, pa.string())])
    counts = [0] * len(files)
    with contextlib.ExitStack() as stack:
        writers = []
        for path in files:
            sink = stack.enter_context(pa.OSFile(str(stack.enter_context(replacing(path))), "wb"))
            writers.append(stack.enter_context(pa.ipc.new_file(sink, schema)))
        for number, ids in _ids_by_part(rows, part_of_item, len(files)):
            writers[number].write_batch(pa.record_batch([ids], schema=schema))
            counts[number] += len(ids)
    return counts


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
    """The items of ``eval_ids`` that are items of ``train_ids`` or share a cluster or a duplicate
    group with one.

    One row per leaking item: ``media_id``, ``shared`` (``"media_id"``: the item itself is in
    train; else ``"duplicate_group"`` or ``"cluster_id"``), ``group`` (its id: the media id for the
    item itself) and ``train_media_id`` (one training item in that group).
    """
    memberships = pa.concat_tables([_itself_table(table), _memberships_table(table)])
    in_train = pc.is_in(memberships.column("media_id"), value_set=_id_array(train_ids))
    in_eval = pc.is_in(memberships.column("media_id"), value_set=_id_array(eval_ids))
    train = memberships.filter(in_train).rename_columns(["train_media_id", "shared", "group"])
    joined = memberships.filter(in_eval).join(train, keys=["shared", "group"], join_type="inner")
    # The item itself, then a shared duplicate group, is the worse leak: reported before a shared
    # cluster ("shared" sorts descending: media_id, duplicate_group, cluster_id).
    joined = joined.sort_by([("media_id", "ascending"), ("shared", "descending"), ("train_media_id", "ascending")])
    _, first = np.unique(joined.column("media_id").to_numpy(zero_copy_only=False), return_index=True)
    return joined.take(pa.array(first)).select(["media_id", "shared", "group", "train_media_id"])


def _id_array(ids: Iterable[str]) -> pa.Array:
    """``ids`` as one Arrow array: a part of a split as it is, anything else through a list."""
    if isinstance(ids, MediaIds):
        return ids.to_arrow().combine_chunks()
    return pa.array(list(ids), pa.string())


def _itself_table(table: pa.Table) -> pa.Table:
    """Each item as a group of its own, for ``find_leaks``: an item in train leaks as itself,
    whether or not it has a cluster or a duplicate group."""
    media_ids = one_array(table.column("media_id"))
    return pa.table(
        {"media_id": media_ids, "shared": pa.repeat("media_id", len(media_ids)), "group": media_ids.cast(pa.string())}
    )


def _memberships_table(table: pa.Table) -> pa.Table:
    media_ids = one_array(table.column("media_id"))
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
    if not isinstance(fractions, Mapping) or not fractions:
        raise ConfigurationError(
            f"leakage_safe_split needs a mapping of part names to fractions, e.g. {{'train': 0.8, 'test': 0.2}}, "
            f"got {fractions!r}."
        )
    names = list(fractions)
    for name in names:
        value = fractions[name]
        if not isinstance(name, str):
            raise ConfigurationError(f"Split part names must be strings, got {name!r}.")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigurationError(f"The fraction of part {name!r} must be a number, got {value!r}.")
    values = np.array([float(fractions[n]) for n in names])
    if (values <= 0).any() or not np.isclose(values.sum(), 1.0):
        raise ConfigurationError(f"Split fractions must be positive and add up to 1, got {dict(fractions)}.")
    return names, values


class _Links(NamedTuple):
    """What links rows, as numbers: each membership's row and the 64-bit hash of its group's id, for
    clusters and for duplicate groups; and each row's class code for stratifying (-1: no label;
    none at all when not stratifying)."""

    memberships: list[tuple[np.ndarray, np.ndarray]]
    first_labels: np.ndarray


def _read_links(rows: Any, stratify: bool) -> _Links:
    """One pass over the rows, a slice at a time, reading only ``cluster_id``, ``issues`` (and
    ``labels`` to stratify): every group id is hashed to an integer within its slice, so no column
    of ids, and no dictionary of them, is ever whole. What is one number per row is filled in place."""
    n, dtype = len(rows), _node_dtype(len(rows))
    cluster_hashes, has_cluster = np.zeros(n, np.uint64), np.zeros(n, bool)
    duplicates: list[tuple[np.ndarray, np.ndarray]] = []
    first_labels = np.zeros(n if stratify else 0, dtype=np.int32)  # read only to stratify
    label_codes: dict[str, int] = {}
    for offset, part in rows.slices(["cluster_id", "issues"] + (["labels"] if stratify else []), coded=True):
        end = offset + len(part)
        if "cluster_id" in part.column_names:
            valid, hashes = _hashed(part.column("cluster_id"))
            has_cluster[offset:end] = valid
            cluster_hashes[offset:end][valid] = hashes
        if "issues" in part.column_names:
            flat, positions, parents = distinct_issues(part, which=is_duplicates)
            valid, hashes = _hashed(flat.field("duplicate_group_id"))  # of each distinct list's issues
            if positions is not None:  # then of each row's
                every = np.zeros(len(flat), np.uint64)
                every[valid] = hashes
                valid, hashes = valid[positions], every[positions[valid[positions]]]
            duplicates.append((parents[valid].astype(dtype) + offset, hashes))
        if stratify:
            first_labels[offset:end] = _first_label_codes(part, label_codes)
    memberships: list[tuple[np.ndarray, np.ndarray]] = []
    if "cluster_id" in rows.column_names:
        everyone = bool(has_cluster.all())
        members = np.arange(n, dtype=dtype) if everyone else np.flatnonzero(has_cluster).astype(dtype)
        memberships.append((members, cluster_hashes if everyone else cluster_hashes[has_cluster]))
    del cluster_hashes, has_cluster
    if "issues" in rows.column_names:
        found = duplicates or [(np.zeros(0, dtype), np.zeros(0, np.uint64))]
        memberships.append((np.concatenate([at for at, _ in found]), np.concatenate([ids for _, ids in found])))
    return _Links(memberships, first_labels)


def _hashed(group_ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(which memberships have a group, the hash of each one's group id): a null id is no group."""
    ids = (group_ids.combine_chunks() if isinstance(group_ids, pa.ChunkedArray) else group_ids).cast(pa.string())
    valid = pc.is_valid(ids).to_numpy(zero_copy_only=False)
    # Two distinct ids share a 64-bit hash about once in 2**65 / groups**2 splits (once in about
    # 10**9 at 200K groups, in a few thousand at 100M): those two groups are then dealt as one,
    # which moves their items together and never lets a linked pair straddle parts.
    return valid, hash_strings(ids.filter(pa.array(valid)) if ids.null_count else ids)


def _first_label_codes(part: pa.Table, codes: dict[str, int]) -> np.ndarray:
    """Each row's class code for stratifying: its first label's name, numbered in ``codes`` (which
    grows by the slice's new names: one per class), or -1 for an unlabeled row."""
    if "labels" not in part.column_names:
        return np.zeros(len(part), dtype=np.int32)
    labels, rows = distinct(one_array(part.column("labels")))  # coded labels: each distinct list once
    first = pc.list_element(pc.if_else(pc.greater(pc.list_value_length(labels), 0), labels, None), 0)
    encoded = pc.dictionary_encode(pc.struct_field(first, "category_name"))
    indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    if rows is not None:
        indices = indices[rows]
    # The names are numbered as the rows meet them, whatever order their lists came in.
    held, first_row = np.unique(indices[indices >= 0], return_index=True)
    names = encoded.dictionary.to_pylist()
    lookup = np.full(len(names) + 1, -1, dtype=np.int32)  # a null index (-1) lands on the last
    for at in held[np.argsort(first_row)]:
        lookup[at] = codes.setdefault(names[at], len(codes))
    return lookup[indices]


def _linked_components(rows: Any) -> np.ndarray:
    """For each row, a component id shared by every row it is linked to."""
    return _components_of(_read_links(rows, stratify=False), len(rows))


def _components_of(links: _Links, n: int) -> np.ndarray:
    """For each of ``n`` rows, its component over the ``links`` (whose memberships it consumes, to
    free each one's hashes once numbered): the smallest row linked to it.

    The first membership that holds each row at most once (the clusters: one per row) is a
    partition, whose trees are built whole: each member and its group point to the group's
    smallest member. Only the other memberships' links (duplicate groups: a few rows each) go
    through the union-find as edges: one edge per row cost ~30 bytes of temporaries a row, the
    split's peak at 30M items."""
    items, groups = [], []  # edges between an item and a group node
    partition: tuple[np.ndarray, np.ndarray, int] | None = None  # (members, their group numbers, first group node)
    next_node, dtype = n, _node_dtype(n + sum(len(hashes) for _, hashes in links.memberships))
    while links.memberships:
        members, hashes = links.memberships.pop(0)
        # Arrow's hash table numbers them in one pass, in order of first appearance (which
        # ``_smallest_members`` relies on); no sort of the column.
        encoded = pc.dictionary_encode(pa.array(hashes))
        codes = encoded.indices.to_numpy().astype(dtype)
        if partition is None and _each_once(members):
            partition = (members, codes, next_node)
        else:
            items.append(members)
            groups.append(codes + next_node)
        next_node += len(encoded.dictionary)
        del members, hashes, encoded, codes
    parent = np.arange(next_node, dtype=dtype)
    if partition is not None:
        members, codes, first_node = partition
        smallest = _smallest_members(members, codes)
        parent[first_node : first_node + len(smallest)] = smallest
        parent[members] = smallest[codes]
        del partition, members, codes, smallest
    a = np.concatenate(items) if items else np.zeros(0, dtype)
    b = np.concatenate(groups) if groups else np.zeros(0, dtype)
    del items, groups
    return union_find(next_node, a, b, n, parent=parent)


def _each_once(members: np.ndarray) -> bool:
    """Whether ``members`` (rows, ascending) name each row at most once."""
    return bool(np.all(members[1:] > members[:-1]))


def _smallest_members(members: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each group's smallest member, for ``members`` ascending and ``codes`` numbered in order of
    first appearance: a group's first appearance is where the codes reach a new maximum."""
    if not len(codes):
        return members[:0]
    peak = np.maximum.accumulate(codes)
    first = np.flatnonzero(np.concatenate(([True], peak[1:] > peak[:-1])))
    return members[first].astype(codes.dtype)


def _numbered_components(component: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each component's first row, ascending; each row's component number, in that order; each
    component's size). A component is named by its smallest row, so its first rows are the rows
    named by themselves: no sort of the whole column (``np.unique``) is needed."""
    first_row = np.flatnonzero(component == np.arange(len(component), dtype=component.dtype))
    number = np.empty(len(component), dtype=_node_dtype(len(first_row)))
    number[first_row] = np.arange(len(first_row))
    group_of_row = number[component]
    return first_row, group_of_row, np.bincount(group_of_row, minlength=len(first_row))


def _node_dtype(count: int) -> type[np.signedinteger]:
    """int32 for node numbers below 2**31 (half the memory of int64), int64 beyond."""
    return np.int32 if count < 2**31 else np.int64


def union_find(nodes: int, a: np.ndarray, b: np.ndarray, first: int, *, parent: np.ndarray | None = None) -> np.ndarray:
    """The component of each of the ``first`` nodes once edges join ``a[k]`` and ``b[k]`` (of
    ``nodes`` in all), named by its smallest node. ``parent``: trees to start from (each node's
    parent, a root the smallest node of its tree; updated in place), else every node alone."""
    dtype = _node_dtype(nodes)
    parent = np.arange(nodes, dtype=dtype) if parent is None else parent
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    while True:  # union by smaller root, with path halving, until every edge is inside one tree
        ra, rb = _roots(parent, a), _roots(parent, b)
        differ = ra != rb
        if not differ.any():
            return _roots(parent, np.arange(first, dtype=dtype))
        np.minimum.at(parent, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
        del ra, rb, differ


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
    for offset, part in rows.slices(["cluster_id", "issues"], coded=True):
        if "cluster_id" in part.column_names:
            clusters.append(pc.dictionary_encode(one_array(part.column("cluster_id")).cast(pa.string())))
        if "issues" in part.column_names:
            flat, parents = flat_issues(part, which=is_duplicates)
            duplicates.append(pc.dictionary_encode(flat.field("duplicate_group_id").cast(pa.string())))
            duplicate_rows.append(offset + parents)
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
