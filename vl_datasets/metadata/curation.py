"""Curation rules over the normalized metadata table, vectorized with pyarrow.

Rules apply in a fixed order, each to what the previous ones kept, so the summary can say how
many items each rule removed: ``subset``, ``labels``, ``min_uniqueness``, ``drop_issues``, ``dedupe``,
``where``. Nothing is ever silently left unfiltered: a rule that cannot apply raises
``CurationError``, and so does a set of rules that removes every item.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CurationError


@dataclass(frozen=True)
class CurationRules:
    """What to keep. Every field's default keeps everything."""

    subset: Iterable[str] | None = None
    """Media ids to keep before any other rule: one part of a split, say."""
    min_uniqueness: float | None = None
    keep_unscored: bool | None = None
    drop_issues: Mapping[str, float] | None = None
    dedupe: bool | float = False
    labels: Iterable[str] | None = None
    label_source: str | Iterable[str] | None = None
    where: pc.Expression | None = None


@dataclass(frozen=True)
class CurationSummary:
    """How many items there were, how many each rule removed, how many are left."""

    total: int
    kept: int
    removed_by: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{self.total:>9,}  items in the export"]
        lines += [f"{n:>9,}  removed by {rule}" for rule, n in self.removed_by.items()]
        lines.append(f"{self.kept:>9,}  kept")
        return "\n".join(lines)


def list_offsets(parents: np.ndarray, n_rows: int) -> pa.Array:
    """Offsets of a list array whose values belong to rows ``parents`` (sorted), for ``n_rows`` rows."""
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents, minlength=n_rows), out=offsets[1:])
    return pa.array(offsets)


def _row_mask_from_parents(parents: pa.Array, n_rows: int) -> np.ndarray:
    mask = np.zeros(n_rows, dtype=bool)
    mask[np.asarray(parents.to_numpy(zero_copy_only=False), dtype=np.int64)] = True
    return mask


def _flat_issues(table: pa.Table) -> tuple[pa.StructArray, np.ndarray]:
    """Every issue of every row, with the index of the row it belongs to."""
    issues = table.column("issues").combine_chunks()
    parents = pc.list_parent_indices(issues).to_numpy(zero_copy_only=False)
    return pc.list_flatten(issues), parents


def label_sources(source: str | Iterable[str] | None) -> list[str] | None:
    if source is None:
        return None
    return [source] if isinstance(source, str) else list(source)


def selected_labels(table: pa.Table, source: str | Iterable[str] | None) -> pa.ListArray:
    """Each row's label names, counting only labels whose ``source`` is chosen (all by default)."""
    labels = table.column("labels").combine_chunks()
    sources = label_sources(source)
    all_names = pc.struct_field(labels.values, "category_name")
    if sources is None and all_names.null_count == 0:
        # Every label counts and has a name: reuse the list offsets, no copy.
        return pa.ListArray.from_arrays(labels.offsets, all_names)
    flat = pc.list_flatten(labels)
    parents = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
    names = flat.field("category_name")
    keep = pc.is_valid(names)
    if sources is not None:
        keep = pc.and_(keep, pc.is_in(flat.field("source"), value_set=pa.array(sources, pa.string())))
    keep_np = keep.to_numpy(zero_copy_only=False)
    kept_parents = parents[keep_np]
    offsets = list_offsets(kept_parents, len(table))
    return pa.ListArray.from_arrays(offsets, names.filter(keep))


def _subset_mask(table: pa.Table, rules: CurationRules) -> np.ndarray:
    wanted = pa.array(list(dict.fromkeys(rules.subset)), pa.string())
    media_ids = table.column("media_id")
    found = pc.is_in(wanted, value_set=media_ids)
    if not pc.all(found).as_py():
        # Ids from another export (or another version of it) would shrink the split silently.
        unknown = wanted.filter(pc.invert(found))
        raise CurationError(f"subset names {len(unknown):,} media id(s) not in this export, "
                            f"e.g. {unknown[0].as_py()!r}.")
    return pc.is_in(media_ids, value_set=wanted).to_numpy(zero_copy_only=False)


def _labels_mask(table: pa.Table, rules: CurationRules) -> np.ndarray:
    wanted = pa.array(sorted(set(rules.labels)), pa.string())
    names = selected_labels(table, rules.label_source)
    parents = pc.list_parent_indices(names)
    hits = pc.is_in(pc.list_flatten(names), value_set=wanted)
    return _row_mask_from_parents(parents.filter(hits), len(table))


def _uniqueness_mask(table: pa.Table, rules: CurationRules) -> np.ndarray:
    scores = table.column("uniqueness_score")
    missing = scores.null_count
    if missing == len(table):
        raise CurationError("min_uniqueness is set but no item in this export has a uniqueness_score.")
    if missing and rules.keep_unscored is None:
        raise CurationError(
            f"min_uniqueness is set but {missing:,} of {len(table):,} items have no uniqueness_score: "
            "pass keep_unscored=True to keep them or keep_unscored=False to drop them."
        )
    passed = pc.greater_equal(scores, rules.min_uniqueness)
    return pc.fill_null(passed, bool(rules.keep_unscored)).to_numpy(zero_copy_only=False)


KNOWN_ISSUE_TYPES = frozenset({"duplicates", "outliers", "blur", "dark", "bright", "mislabels", "label_outlier"})


def _issues_mask(table: pa.Table, rules: CurationRules) -> np.ndarray:
    flat, parents = _flat_issues(table)
    present = set(pc.unique(flat.field("issue_type")).to_pylist()) - {None}
    for issue_type in rules.drop_issues:
        # A typo ("duplicate") would otherwise remove nothing without a word.
        if issue_type not in present | KNOWN_ISSUE_TYPES:
            raise CurationError(f"drop_issues names an unknown issue type {issue_type!r}; this export has "
                                f"{sorted(present) or 'no issues'}.")
    doomed = np.zeros(len(flat), dtype=bool)
    for issue_type, threshold in rules.drop_issues.items():
        hit = pc.and_(pc.equal(flat.field("issue_type"), issue_type),
                      pc.greater_equal(flat.field("confidence"), float(threshold)))
        doomed |= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    mask = np.ones(len(table), dtype=bool)
    mask[parents[doomed]] = False
    return mask


def _dedupe_mask(table: pa.Table, rules: CurationRules, kept: np.ndarray) -> np.ndarray:
    """Keep the most unique item of each duplicate group (ties: the first row)."""
    flat, parents = _flat_issues(table)
    is_dup = pc.fill_null(pc.equal(flat.field("issue_type"), "duplicates"), False).to_numpy(zero_copy_only=False)
    thresholds = flat.field("duplicate_threshold").to_numpy(zero_copy_only=False)
    present = np.unique(thresholds[is_dup & ~np.isnan(thresholds)]) if is_dup.any() else np.array([])
    if present.size == 0:
        raise CurationError("dedupe is set but no item carries a duplicates issue with a duplicate_threshold.")
    chosen = present.min() if rules.dedupe is True else float(rules.dedupe)
    if not np.isclose(present, chosen).any():
        raise CurationError(f"dedupe={rules.dedupe!r}: no duplicate groups at that threshold; "
                            f"this export has {', '.join(f'{t:g}' for t in present)}.")
    has_group = pc.is_valid(flat.field("duplicate_group_id")).to_numpy(zero_copy_only=False)
    member = is_dup & has_group & np.isclose(thresholds, chosen) & kept[parents]
    groups = pc.dictionary_encode(flat.field("duplicate_group_id").filter(pa.array(member)))
    rows = parents[member]
    scores = pc.fill_null(table.column("uniqueness_score"), -1.0).to_numpy(zero_copy_only=False)[rows]
    group_ids = groups.indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((rows, -scores, group_ids))  # by group, then best score, then row
    first = np.ones(len(order), dtype=bool)
    first[1:] = group_ids[order][1:] != group_ids[order][:-1]
    mask = np.ones(len(table), dtype=bool)
    mask[rows[order][~first]] = False
    return mask


def _apply(table: pa.Table, rules: CurationRules) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Each row's first removing rule (an index into the returned names; -1 when kept)."""
    kept = np.ones(len(table), dtype=bool)
    removed_at = np.full(len(table), -1, dtype=np.int8)
    names: list[str] = []
    removed: dict[str, int] = {}
    steps = [
        ("subset", rules.subset is not None, lambda: _subset_mask(table, rules)),
        ("labels", rules.labels is not None, lambda: _labels_mask(table, rules)),
        (f"min_uniqueness={rules.min_uniqueness:g}" if rules.min_uniqueness is not None else "min_uniqueness",
         rules.min_uniqueness is not None, lambda: _uniqueness_mask(table, rules)),
        ("drop_issues", bool(rules.drop_issues), lambda: _issues_mask(table, rules)),
        ("dedupe", rules.dedupe is not False, lambda: _dedupe_mask(table, rules, kept)),
        ("where", rules.where is not None, lambda: _where_mask(table, rules)),
    ]
    for name, active, compute in steps:
        if not active:
            continue
        before = int(kept.sum())
        newly_removed = kept & ~compute()
        kept &= ~newly_removed
        removed_at[newly_removed] = len(names)
        names.append(name)
        removed[name] = int(newly_removed.sum())
        if before and not kept.any():
            raise CurationError(f"The {name} rule removed the last {before:,} items: nothing is left to load. "
                                f"Removed so far: {removed}.")
    return removed_at, names, removed


def curate(table: pa.Table, rules: CurationRules) -> tuple[np.ndarray, CurationSummary]:
    """Return the indices of the rows to keep and a summary of what each rule removed."""
    removed_at, _, removed = _apply(table, rules)
    kept = np.flatnonzero(removed_at < 0)
    return kept, CurationSummary(total=len(table), kept=len(kept), removed_by=removed)


def removal_reasons(table: pa.Table, rules: CurationRules) -> pa.Array:
    """For every row, the name of the rule that removed it (the first one, in rule order), or null."""
    removed_at, names, _ = _apply(table, rules)
    return pa.DictionaryArray.from_arrays(pa.array(removed_at, mask=removed_at < 0),
                                          pa.array(names, pa.string())).cast(pa.string())


def _where_mask(table: pa.Table, rules: CurationRules) -> np.ndarray:
    index = pa.array(np.arange(len(table)))
    try:
        matched = table.append_column("__row__", index).filter(rules.where).column("__row__")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, KeyError) as exc:
        raise CurationError(f"The where= expression cannot apply to this export's metadata: {exc}") from None
    return _row_mask_from_parents(matched.combine_chunks(), len(table))
