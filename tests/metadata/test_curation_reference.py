"""Curation against a plain-Python reading of its rules, on random small exports.

The vectorized rules (``curation.curate``) must keep exactly the rows, and count exactly the
removals, that the rules as documented keep and count, one row at a time: labels (from a chosen
source), min_uniqueness (with keep_unscored), drop_issues at a confidence, then dedupe (the most
unique kept member of each group at the chosen threshold, ties to the first row; a member of two
groups goes when it is not the best of either), each counting what it removes among what the
rules before it kept; a label source that no label has is an error, and dedupe chooses among
thresholds that name groups. The exports mix what real ones hold and what they may:
unscored items, null names and confidences, groups without a threshold, an issue listed twice.
"""

from __future__ import annotations

import math
import random

import pytest

from tests.metadata.test_curation import issue, label, make_table
from vl_datasets.errors import CurationError
from vl_datasets.metadata.curation import CurationRules, curate


def _reference(rows: list[dict], rules: CurationRules) -> tuple[list[int], dict[str, int]]:
    kept = [True] * len(rows)
    removed: dict[str, int] = {}

    def rule(name, keeps):
        before = sum(kept)
        dropped = [i for i, k in enumerate(kept) if k and not keeps(i)]
        for i in dropped:
            kept[i] = False
        removed[name] = len(dropped)
        if before and not any(kept):
            raise CurationError(f"{name} removed the last items")

    def labelled(i):
        return any(
            lab["category_name"] in rules.labels and rules.label_source in (None, lab["source"])
            for lab in rows[i]["labels"]
        )

    chosen = [lab for r in rows for lab in r["labels"] if rules.label_source in (None, lab["source"])]
    if rules.label_source is not None and not chosen:
        raise CurationError("no label of that source")
    if rules.labels is not None:
        rule("labels", labelled)
    if rules.min_uniqueness is not None:
        scores = [r.get("score") for r in rows]
        if all(s is None for s in scores) or (None in scores and rules.keep_unscored is None):
            raise CurationError("unscored items")
        threshold = rules.min_uniqueness
        rule(
            f"min_uniqueness={threshold:g}",
            lambda i: rules.keep_unscored if scores[i] is None else scores[i] >= threshold,
        )
    if rules.drop_issues:

        def clean(i):
            return not any(
                x["issue_type"] == kind and x["confidence"] is not None and x["confidence"] >= at
                for x in rows[i]["issues"]
                for kind, at in rules.drop_issues.items()
            )

        rule("drop_issues", clean)
    if rules.dedupe is not False:
        duplicates = [(i, x) for i, r in enumerate(rows) for x in r["issues"] if x["issue_type"] == "duplicates"]
        present = sorted(
            {
                x["duplicate_threshold"]
                for _, x in duplicates
                if x["duplicate_threshold"] is not None and x["duplicate_group_id"] is not None
            }
        )
        chosen = (present or [None])[0] if rules.dedupe is True else rules.dedupe
        if chosen is None or not any(math.isclose(p, chosen) for p in present):
            raise CurationError("no duplicate groups at that threshold")
        groups: dict[str, set[int]] = {}
        for i, x in duplicates:
            at = x["duplicate_threshold"]
            if kept[i] and x["duplicate_group_id"] is not None and at is not None and math.isclose(at, chosen):
                groups.setdefault(x["duplicate_group_id"], set()).add(i)

        def score(i):
            return -1.0 if rows[i].get("score") is None else rows[i]["score"]

        # A member of two groups goes when it is not the best of either.
        duplicates_of_better = set().union(*(m - {min(m, key=lambda i: (-score(i), i))} for m in groups.values()))
        rule("dedupe", lambda i: i not in duplicates_of_better)
    return [i for i, k in enumerate(kept) if k], removed


def _random_export(rnd: random.Random) -> list[dict]:
    rows = []
    for i in range(rnd.randint(1, 12)):
        row = {"id": f"r{i}", "labels": [], "issues": []}
        if rnd.random() < 0.85:
            row["score"] = rnd.choice([0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
        for _ in range(rnd.randint(0, 2)):
            row["labels"].append(label(rnd.choice(["cat", "dog", None]), rnd.choice(["User", "Model"])))
        for _ in range(rnd.randint(0, 3)):
            if rnd.random() < 0.5:
                group, at = rnd.choice(["g1", "g2", "g3", None]), rnd.choice([0.96, 0.98, None])
                row["issues"].append(issue("duplicates", rnd.choice([0.9, 1.0, None]), group, at))
                if rnd.random() < 0.15:
                    row["issues"].append(row["issues"][-1])  # the same issue listed twice
            else:
                row["issues"].append(issue(rnd.choice(["blur", "dark"]), rnd.choice([0.2, 0.8, None])))
        rows.append(row)
    return rows


def _random_rules(rnd: random.Random) -> CurationRules:
    return CurationRules(
        labels=rnd.choice([None, ["cat"], ["dog", "cat"]]),
        label_source=rnd.choice([None, "User"]),
        min_uniqueness=rnd.choice([None, 0.3, 0.5]),
        keep_unscored=rnd.choice([None, True, False]),
        drop_issues=rnd.choice([None, {"blur": 0.5}, {"dark": 0.8, "blur": 0.9}]),
        dedupe=rnd.choice([False, True, 0.98]),
    )


@pytest.mark.parametrize("seed", range(4))
def test_curation_keeps_and_counts_what_the_rules_read_row_by_row_keep(seed):
    rnd = random.Random(seed)
    for case in range(150):
        rows, rules = _random_export(rnd), _random_rules(rnd)
        try:
            expected = _reference(rows, rules)
        except CurationError:
            with pytest.raises(CurationError):
                curate(make_table(rows), rules)
            continue
        kept, summary = curate(make_table(rows), rules)
        assert (kept.tolist(), summary.removed_by) == expected, f"case {case}: {rules}\n{rows}"
