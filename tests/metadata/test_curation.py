"""Curation rules on a normalized metadata table: what each rule keeps, removes and refuses."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from vl_datasets.errors import ConfigurationError, CurationError
from vl_datasets.metadata.curation import CurationRules, curate, selected_labels

ISSUE = pa.struct(
    [
        ("issue_type", pa.string()),
        ("confidence", pa.float64()),
        ("duplicate_group_id", pa.string()),
        ("duplicate_threshold", pa.float64()),
        ("suggested_label", pa.string()),
    ]
)
LABEL = pa.struct([("category_name", pa.string()), ("source", pa.string()), ("original_id", pa.int64())])


def issue(kind, confidence, group=None, threshold=None, suggested=None):
    return {
        "issue_type": kind,
        "confidence": confidence,
        "duplicate_group_id": group,
        "duplicate_threshold": threshold,
        "suggested_label": suggested,
    }


def label(name, source="User"):
    return {"category_name": name, "source": source, "original_id": -1}


def make_table(rows):
    return pa.table(
        {
            "media_id": [r["id"] for r in rows],
            "uniqueness_score": pa.array([r.get("score") for r in rows], pa.float64()),
            "width": [r.get("width", 100) for r in rows],
            "labels": pa.array([r.get("labels", []) for r in rows], pa.list_(LABEL)),
            "issues": pa.array([r.get("issues", []) for r in rows], pa.list_(ISSUE)),
        }
    )


@pytest.fixture
def table():
    return make_table(
        [
            {
                "id": "a",
                "score": 0.9,
                "labels": [label("cat")],
                "issues": [issue("duplicates", 0.97, "g1", 0.96), issue("duplicates", 1.0, "h1", 1.0)],
            },
            {
                "id": "b",
                "score": 0.2,
                "labels": [label("cat")],
                "issues": [issue("duplicates", 0.97, "g1", 0.96), issue("duplicates", 1.0, "h1", 1.0)],
            },
            {"id": "c", "score": 0.5, "labels": [label("dog")], "issues": [issue("duplicates", 0.97, "g1", 0.96)]},
            {"id": "d", "score": 0.7, "labels": [label("dog"), label("cat", "Model")], "issues": [issue("blur", 0.85)]},
            {"id": "e", "score": 0.1, "labels": [label("bird")], "issues": [issue("blur", 0.5)]},
            {"id": "f", "score": 0.6, "labels": [], "issues": [issue("mislabels", 0.9, suggested="cat")]},
        ]
    )


def kept_ids(table, rules):
    rows, summary = curate(table, rules)
    return table.column("media_id").take(pa.array(rows)).to_pylist(), summary


def test_no_rules_keeps_everything(table):
    ids, summary = kept_ids(table, CurationRules())
    assert ids == list("abcdef")
    assert summary.kept == 6
    assert summary.removed_by == {}


def test_min_uniqueness_keeps_scores_at_or_above_the_threshold(table):
    ids, summary = kept_ids(table, CurationRules(min_uniqueness=0.5))
    assert ids == ["a", "c", "d", "f"]
    assert summary.removed_by == {"min_uniqueness=0.5": 2}


def test_unscored_items_need_an_explicit_choice():
    partly = make_table([{"id": "a", "score": 0.9}, {"id": "b", "score": None}])
    with pytest.raises(CurationError, match="keep_unscored"):
        curate(partly, CurationRules(min_uniqueness=0.5))
    assert kept_ids(partly, CurationRules(min_uniqueness=0.5, keep_unscored=True))[0] == ["a", "b"]
    assert kept_ids(partly, CurationRules(min_uniqueness=0.5, keep_unscored=False))[0] == ["a"]
    unscored = make_table([{"id": "a"}, {"id": "b"}])
    with pytest.raises(CurationError, match="no item"):
        curate(unscored, CurationRules(min_uniqueness=0.5, keep_unscored=True))


def test_drop_issues_by_type_and_confidence(table):
    ids, summary = kept_ids(table, CurationRules(drop_issues={"blur": 0.8, "mislabels": 0.95}))
    assert ids == ["a", "b", "c", "e", "f"]
    assert summary.removed_by == {"drop_issues": 1}
    ids, _ = kept_ids(table, CurationRules(drop_issues={"duplicates": 0.99}))
    assert ids == ["c", "d", "e", "f"]  # a and b carry a duplicates issue with confidence 1.0


def test_a_misspelt_issue_type_is_an_error(table):
    with pytest.raises(CurationError, match="'duplicate'"):
        curate(table, CurationRules(drop_issues={"duplicate": 0.9}))
    assert kept_ids(table, CurationRules(drop_issues={"dark": 0.5}))[0] == list("abcdef")  # known, absent


def test_dedupe_keeps_the_most_unique_of_each_group(table):
    ids, summary = kept_ids(table, CurationRules(dedupe=True))  # lowest threshold: g1 = {a, b, c}
    assert ids == ["a", "d", "e", "f"]
    assert summary.removed_by == {"dedupe": 2}
    ids, _ = kept_ids(table, CurationRules(dedupe=1.0))  # h1 = {a, b}
    assert ids == ["a", "c", "d", "e", "f"]
    with pytest.raises(CurationError, match=r"0\.96, 1"):
        curate(table, CurationRules(dedupe=0.5))


def test_dedupe_keeps_the_most_unique_item_whose_issue_is_listed_twice():
    """An item whose metadata_items repeat its duplicates issue is still one member of its group:
    the most unique item is kept, not dropped with the others."""
    twice = [issue("duplicates", 0.97, "g1", 0.96), issue("duplicates", 0.97, "g1", 0.96)]
    rows = [
        {"id": "a", "score": 0.4, "issues": [issue("duplicates", 0.97, "g1", 0.96)]},
        {"id": "b", "score": 0.9, "issues": twice},
        {"id": "c", "score": 0.5, "issues": [issue("duplicates", 0.97, "g1", 0.96)]},
        {"id": "d", "score": 0.2},
    ]
    ids, summary = kept_ids(make_table(rows), CurationRules(dedupe=True))
    assert ids == ["b", "d"]
    assert summary.removed_by == {"dedupe": 2}
    rows[1]["score"] = 0.1  # now a lesser member listed twice: dropped, the best one kept
    assert kept_ids(make_table(rows), CurationRules(dedupe=True))[0] == ["c", "d"]


def test_dedupe_ranks_an_unscored_or_nan_score_below_every_score():
    """A group keeps its best-scored member, ties to the first row; an item with no score ranks
    below any score, and a NaN score (a Parquet export can hold one) below that: kept only when
    the whole group has nothing better, the first of them then."""
    dup = [issue("duplicates", 0.97, "g1", 0.96)]
    other = [issue("duplicates", 0.97, "g2", 0.96)]
    rows = [
        {"id": "a", "score": float("nan"), "issues": dup},
        {"id": "b", "score": None, "issues": dup},
        {"id": "c", "score": 0.0, "issues": dup},
        {"id": "d", "score": 0.0, "issues": dup},
        {"id": "e", "score": float("nan"), "issues": other},
        {"id": "f", "score": float("nan"), "issues": other},
    ]
    assert kept_ids(make_table(rows), CurationRules(dedupe=True))[0] == ["c", "e"]
    rows[2]["score"] = rows[3]["score"] = None
    assert kept_ids(make_table(rows), CurationRules(dedupe=True))[0] == ["b", "e"]
    rows[1]["score"] = float("nan")
    assert kept_ids(make_table(rows), CurationRules(dedupe=True))[0] == ["c", "e"]


def test_dedupe_chooses_among_items_earlier_rules_kept(table):
    ids, summary = kept_ids(table, CurationRules(labels=["dog"], dedupe=True))
    assert ids == ["c", "d"]
    assert summary.removed_by == {"labels": 4, "dedupe": 0}


def test_labels_and_label_source(table):
    assert kept_ids(table, CurationRules(labels=["cat"]))[0] == ["a", "b", "d"]
    assert kept_ids(table, CurationRules(labels=["cat"], label_source="User"))[0] == ["a", "b"]
    names = selected_labels(table, "Model").to_pylist()
    assert names == [[], [], [], ["cat"], [], []]


def test_where_expression(table):
    ids, summary = kept_ids(table, CurationRules(where=pc.field("uniqueness_score") < 0.55))
    assert ids == ["b", "c", "e"]
    assert summary.removed_by == {"where": 3}
    with pytest.raises(CurationError, match="where"):
        curate(table, CurationRules(where=pc.field("no_such_column") > 1))


def test_the_rule_that_empties_the_set_is_named(table):
    with pytest.raises(CurationError, match=r"min_uniqueness=0\.95 rule removed the last 3"):
        curate(table, CurationRules(labels=["cat"], min_uniqueness=0.95))


def test_summary_reads_as_a_table(table):
    _, summary = curate(table, CurationRules(min_uniqueness=0.5, dedupe=True))
    text = str(summary)
    assert "6  items" in text
    assert "removed by dedupe" in text
    assert text.splitlines()[-1].strip() == "3  kept"


def test_rules_keep_a_copy_of_what_they_are_given(table):
    subset, labels, drop_issues = ["a", "b", "d", "e"], ["cat", "dog"], {"blur": 0.8}
    rules = CurationRules(subset=subset, labels=labels, drop_issues=drop_issues)
    subset.append("c")
    labels.remove("dog")
    drop_issues["blur"] = 0.1
    assert kept_ids(table, rules)[0] == ["a", "b"]
    with pytest.raises(TypeError):
        rules.drop_issues["blur"] = 0.1  # read-only: a shared rules object cannot be changed under a dataset
    once = CurationRules(labels=iter(["dog"]), subset=(m for m in "abcd"))
    assert kept_ids(table, once)[0] == kept_ids(table, once)[0] == ["c", "d"]


def test_rules_pickle_with_their_values(table):
    rules = CurationRules(subset=["f", "a"], drop_issues={"blur": 0.8}, dedupe=1, where=pc.field("width") > 0)
    copy = pickle.loads(pickle.dumps(rules))
    assert copy.subset == ("f", "a")
    assert dict(copy.drop_issues) == {"blur": 0.8}
    assert copy.dedupe == 1.0
    assert kept_ids(table, copy)[0] == kept_ids(table, rules)[0] == ["a", "f"]


@pytest.mark.parametrize(
    ("rules", "field_at_fault"),
    [
        ({"subset": "abc"}, "subset"),
        ({"subset": ["a", 1]}, "subset"),
        ({"labels": "cat"}, "labels"),
        ({"label_source": ["User", None]}, "label_source"),
        ({"min_uniqueness": "0.5"}, "min_uniqueness"),
        ({"min_uniqueness": 1.5}, "min_uniqueness"),
        ({"min_uniqueness": float("nan")}, "min_uniqueness"),
        ({"keep_unscored": "false"}, "keep_unscored"),
        ({"drop_issues": {"blur": 80}}, "drop_issues"),
        ({"drop_issues": ["blur"]}, "drop_issues"),
        ({"dedupe": "yes"}, "dedupe"),
        ({"dedupe": -0.1}, "dedupe"),
        ({"where": "uniqueness_score > 0.5"}, "where"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(rules, field_at_fault):
    with pytest.raises(ConfigurationError, match=f"^{field_at_fault}"):
        CurationRules(**rules)


def test_an_empty_subset_is_an_error_not_a_crash(table):
    """An empty part of a split, passed on as subset=, would keep nothing."""
    with pytest.raises(CurationError, match="subset is empty"):
        curate(table, CurationRules(subset=[]))


def test_dedupe_over_duplicates_issues_without_a_group_is_an_error():
    """A threshold without a group id names no group to keep one item of: removing nothing there
    would be unfiltered data without a word."""
    groupless = [issue("duplicates", 0.97, None, 0.96)]
    rows = [{"id": "a", "score": 0.4, "issues": groupless}, {"id": "b", "score": 0.9, "issues": groupless}]
    with pytest.raises(CurationError, match="duplicate_group_id"):
        curate(make_table(rows), CurationRules(dedupe=True))
    rows.append({"id": "c", "score": 0.1, "issues": [issue("duplicates", 0.97, "g1", 0.98)]})
    rows.append({"id": "d", "score": 0.2, "issues": [issue("duplicates", 0.97, "g1", 0.98)]})
    # The lowest threshold that has groups is chosen, not the groupless one below it.
    assert kept_ids(make_table(rows), CurationRules(dedupe=True))[0] == ["a", "b", "d"]


def test_a_label_no_item_carries_is_said_and_a_source_no_label_has_is_an_error(table, caplog):
    """A typo in labels= would keep fewer items without a word; a label absent from one part of a
    split is no mistake, so it is said, not refused. A label_source no label has would leave every
    item without a label: refused."""
    with caplog.at_level("WARNING", logger="vl_datasets"):
        assert kept_ids(table, CurationRules(labels=["cat", "dgo"]))[0] == ["a", "b", "d"]
    assert "labels names 'dgo', which no item of this export carries; its labels are 'bird', 'cat', 'dog'" in (
        caplog.text
    )
    for source in ("Usr", ["User", "Nope"]):
        with pytest.raises(CurationError, match=r"label_source names '(Usr|Nope)'.*come from 'Model', 'User'"):
            curate(table, CurationRules(label_source=source))
    with pytest.raises(CurationError, match="The labels rule removed the last"):  # none of them: nothing is left
        curate(table, CurationRules(labels=["dog"], label_source="Model"))
