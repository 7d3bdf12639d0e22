"""The HTML evaluation report: what it shows, and that a real browser renders it."""

from __future__ import annotations

import base64
import re

import pytest

from tests.evaluation.helpers import duplicate, item, mislabel, write_export
from tests.helpers import render_in_browser, thumbnails
from tests.test_report import browser  # noqa: F401  (the fixture: Debian's Chromium through playwright)
from vl_datasets import ConfigurationError, VisualLayerDataset
from vl_datasets.evaluation import evaluate


@pytest.fixture
def result(tmp_path):
    items = [item(f"c{i}", "cat", uniqueness=i / 10, cluster="bad") for i in range(4)]
    items += [item(f"d{i}", "dog", uniqueness=0.5 + i / 10, cluster="good") for i in range(4)]
    items += [
        item("x0", "dog", cluster="good", issues=(mislabel(0.8, "cat"),)),
        item("x1", "cat", issues=duplicate("g")),
    ]
    items[1]["file_path"] = "<b>odd</b>.jpg"  # escaped in the tooltip
    export = write_export(tmp_path, items)
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c")
    # The bad cluster: every cat called a dog; x0 confidently called a cat.
    predictions = {f"c{i}": [0.1, 0.9] for i in range(4)}
    predictions |= {f"d{i}": [0.2, 0.8] for i in range(4)}
    predictions |= {"x0": [0.95, 0.05], "x1": [0.6, 0.4]}
    return evaluate(ds, predictions, min_cluster_items=3, title="Eval <&>")


def test_report_shows_tables_plots_clusters_and_label_errors(result, tmp_path):
    out = result.write_report(tmp_path / "out" / "eval.html", max_clusters=1)
    page = out.read_text(encoding="utf-8")
    assert "<title>Eval &lt;&amp;&gt;</title>" in page
    assert not re.search(r'(?:src|href)="(?!data:)', page), "the report links to a resource outside itself"
    plots = [base64.b64decode(b).decode() for b in re.findall(r'data:image/svg\+xml;base64,([^"]+)', page)]
    assert len(plots) == 2  # accuracy by uniqueness, confusion matrix
    assert "uniqueness decile" in plots[0] and "predicted" in plots[1]
    for heading in ("Per class", "Per issue type and confidence", "Kept by curation against removed"):
        assert f"<h2>{heading}</h2>" in page
    assert "<h3>Cluster bad: 0 of 4 right (0.0%)</h3>" in page
    assert "Cluster good" not in page  # max_clusters=1: only the worst
    # Label errors: x0 (0.95), then the four cats called dogs (0.9); x1 is right.
    errors = result.label_errors.column("media_id").to_pylist()
    assert errors == ["x0", "c0", "c1", "c2", "c3"]
    assert f"<h2>Suspected label errors: {len(errors)} item(s)</h2>" in page
    assert "VL mislabel 0.80: cat" in page
    assert thumbnails(page) == 4 + 5  # the worst cluster's items, then every suspected label error
    assert "&lt;b&gt;odd&lt;/b&gt;.jpg" in page and "<b>odd</b>" not in page


def test_the_same_evaluation_gives_the_same_file(result, tmp_path):
    first = result.write_report(tmp_path / "a.html").read_bytes()
    assert result.write_report(tmp_path / "b.html").read_bytes() == first


def test_thumbnails_and_clusters_can_be_capped(result, tmp_path):
    page = result.write_report(tmp_path / "r.html", max_clusters=0, max_thumbnails=2).read_text()
    assert thumbnails(page) == 2
    assert "(the 2 most confident)" in page


def test_report_renders_in_a_browser(browser, result, tmp_path):  # noqa: F811
    report = result.write_report(tmp_path / "eval.html")
    page, decoded = render_in_browser(browser, report, tmp_path / "eval.png")
    assert len(decoded) == 2 + thumbnails(report.read_text())
    assert page.evaluate("() => document.querySelectorAll('table tr').length") > 20  # the slice tables are there


def test_class_names_with_dollars_are_drawn_as_written(tmp_path):
    # "$...$" would be matplotlib mathtext, and "cat$_$dog" is not valid mathtext: no report at all.
    items = [item("m0", "cat$_$dog"), item("m1", "dog"), item("m2", "$5 bill")]
    ds = VisualLayerDataset.from_export(write_export(tmp_path, items), cache_dir=tmp_path / "c")
    result = evaluate(ds, {"m0": "cat$_$dog", "m1": "$5 bill", "m2": "$5 bill"})
    page = result.write_report(tmp_path / "eval.html").read_text(encoding="utf-8")
    plots = [base64.b64decode(b).decode() for b in re.findall(r'data:image/svg\+xml;base64,([^"]+)', page)]
    confusion = plots[-1]
    assert "cat$_$dog" in confusion and "$5 bill" in confusion  # the tick labels, as written


def test_a_report_path_that_cannot_be_written_is_named(result, tmp_path):
    (tmp_path / "file").write_text("")
    for path in (tmp_path, tmp_path / "file" / "eval.html"):  # a folder; a parent that is a file
        with pytest.raises(ConfigurationError, match="cannot write the report there") as caught:
            result.write_report(path)
        assert str(path) in str(caught.value)
