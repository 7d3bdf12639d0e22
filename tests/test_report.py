"""The HTML curation report: its content, and how a real browser renders it."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import render_in_browser, thumbnails
from vl_datasets import errors
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.testing import write_dataset

CHROMIUM = Path("/usr/bin/chromium")


# Debian's Chromium runs as root in CI containers, without a GPU, and must not phone home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


RULES = {"min_uniqueness": 0.3, "drop_issues": {"blur": 0.5}, "dedupe": True, "task": None}


def edit_metadata(folder: Path, edit) -> None:
    path = folder / "metadata.json"
    data = json.loads(path.read_text())
    for item in data["media_items"]:
        edit(item)
    path.write_text(json.dumps(data))


def test_report_shows_counts_rules_plots_and_thumbnails(export, tmp_path):
    ds = VisualLayerDataset.from_export(export, **RULES)
    summary = ds.curation_summary()
    out = ds.report(tmp_path / "out" / "report.html", max_thumbnails=4)
    page = out.read_text(encoding="utf-8")

    assert out == tmp_path / "out" / "report.html"
    assert os.listdir(out.parent) == ["report.html"]  # no temp file left
    assert "<title>Curation report: x</title>" in page
    assert f"<td class=n>{summary.total:,}</td>" in page
    assert f"<td class=n>{summary.kept:,}</td>" in page
    for rule, count in summary.removed_by.items():
        assert f"<td>Removed by {rule}</td><td class=n>{count:,}</td>" in page
        assert f"<h2>Removed by {rule}: {count:,} item(s)" in page
    # One grid per rule that removed something, one of kept items; at most 4 thumbnails each.
    expected = sum(min(n, 4) for n in summary.removed_by.values()) + min(summary.kept, 4)
    assert thumbnails(page) == page.count("<figure") == expected
    # Self-contained: nothing to fetch.
    assert not re.search(r'(?:src|href)="(?!data:)', page), "the report links to a resource outside itself"
    plots = [base64.b64decode(b).decode() for b in re.findall(r'data:image/svg\+xml;base64,([^"]+)', page)]
    assert len(plots) == 2  # the histogram and the label bars
    assert "min_uniqueness=0.3" in plots[0]  # the threshold line's legend (matplotlib keeps text in comments)
    assert all(name in plots[1] for name in ("cat", "dog", "bird")), (
        f"the label plot lacks {[name for name in ('cat', 'dog', 'bird') if name not in plots[1]]}"
    )


def test_the_same_data_gives_the_same_file(export, tmp_path):
    # matplotlib salts the SVG's element ids with a random uuid unless told otherwise.
    ds = VisualLayerDataset.from_export(export, **RULES)
    first = ds.report(tmp_path / "a.html").read_bytes()
    assert ds.report(tmp_path / "b.html").read_bytes() == first


def test_a_subset_is_counted_but_its_outside_is_not_shown_as_removed(export, tmp_path):
    everything = VisualLayerDataset.from_export(export, task=None)
    subset = everything.media_ids[:25]
    ds = VisualLayerDataset.from_export(export, subset=subset, **RULES)
    page = ds.report(tmp_path / "r.html", max_thumbnails=100).read_text(encoding="utf-8")
    assert "<td>Removed by subset</td><td class=n>15</td>" in page
    assert "<h2>Removed by subset" not in page
    assert thumbnails(page) == 25  # every item of the subset, removed or kept; none from outside


def test_captions_show_id_label_score_and_issues(tmp_path):
    item = {
        "media_id": "0123456789abcdef",
        "media_type": "image",
        "file_name": "a.jpg",
        "file_path": "a/a.jpg",
        "height": 30,
        "width": 40,
        "uniqueness_score": 0.25,
        "cluster_id": "c",
        "url": "",
        "metadata_items": [
            {"type": "image_label", "properties": {"category_name": "cat", "source": "User"}},
            {"type": "issue", "properties": {"issue_type": "blur", "confidence": 0.875}},
        ],
    }
    folder = write_dataset(tmp_path, "one", media_items=[item])
    page = VisualLayerDataset.from_export(folder, task=None).report(tmp_path / "r.html").read_text()
    assert "<figcaption>01234567<br>cat<br>uniqueness 0.250<br>blur 0.875</figcaption>" in page


def test_text_from_the_export_is_escaped(export, tmp_path):
    def label_script(item):
        if item["file_name"] == "img_0000.jpg":
            item["metadata_items"][0]["properties"]["category_name"] = "<script>alert(1)</script>"

    edit_metadata(export, label_script)
    page = (
        VisualLayerDataset.from_export(export, task=None)
        .report(tmp_path / "r.html", title="a & <b>", max_thumbnails=40)
        .read_text()
    )
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h1>a &amp; &lt;b&gt;</h1>" in page


def test_unreadable_or_missing_image_gets_a_placeholder(export, tmp_path):
    (export / "images/val/cat/img_0000.jpg").write_bytes(b"not a jpeg")
    (export / "images/train/dog/img_0001.jpg").unlink()
    ds = VisualLayerDataset.from_export(export, task=None, missing_images="drop")
    page = ds.report(tmp_path / "r.html", max_thumbnails=40).read_text()
    assert "<h2>Removed by missing_images: 1 item(s)</h2>" in page
    assert page.count("<div class=missing>no image</div>") == 1
    assert page.count("<div class=missing>unreadable image</div>") == 1
    assert thumbnails(page) == 38


def test_unlabeled_unscored_export_gets_notes_instead_of_plots(export, tmp_path):
    def strip(item):
        item["uniqueness_score"] = None
        item["metadata_items"] = [m for m in item["metadata_items"] if m["type"] != "image_label"]

    edit_metadata(export, strip)
    page = VisualLayerDataset.from_export(export, task=None).report(tmp_path / "r.html").read_text()
    assert "No item of this export has a uniqueness score." in page
    assert "No item of this export has a label." in page
    assert "data:image/svg" not in page
    assert "no label" in page
    assert "unscored" in page


def test_missing_matplotlib_says_what_to_install(export, tmp_path, monkeypatch):
    ds = VisualLayerDataset.from_export(export, task=None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(errors.ConfigurationError, match=re.escape('pip install "vl_datasets[report]"')):
        ds.report(tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_bad_report_options_are_refused(export, tmp_path):
    ds = VisualLayerDataset.from_export(export, task=None)
    with pytest.raises(errors.ConfigurationError, match="max_thumbnails"):
        ds.report(tmp_path / "r.html", max_thumbnails=-1)


# -- in a real browser ------------------------------------------------------------------------


@pytest.fixture
def browser():
    """Debian's Chromium driven by playwright; skipped where it is missing, unless CI requires it."""
    required = os.environ.get("VL_DATASETS_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        (pytest.fail if required else pytest.skip)("playwright is not installed")
    if not CHROMIUM.exists():
        (pytest.fail if required else pytest.skip)(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_report_renders_in_a_browser(browser, export, tmp_path):
    (export / "images/val/cat/img_0000.jpg").write_bytes(b"not a jpeg")
    ds = VisualLayerDataset.from_export(export, **RULES)
    report = ds.report(tmp_path / "report.html", max_thumbnails=40)

    _, decoded = render_in_browser(browser, report, tmp_path / "report.png")
    assert len(decoded) == 2 + 39  # two plots; every item shown, one of them as a placeholder


def test_thumbnails_of_images_behind_a_remote_root_are_shown(tmp_path):
    import shutil

    from tests.loading.image_server import ImageServer

    export = write_dataset(tmp_path, "remote", n_items=6)
    source = tmp_path / "source"
    shutil.move(export / "images", source)
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(export, images_root=server.url + "/", cache_dir=tmp_path / "c", task=None)
        page = ds.report(tmp_path / "report.html").read_text()
    assert thumbnails(page) == 6, "the images read over HTTP should appear as thumbnails"
    assert "unreadable image" not in page


def test_an_image_the_server_refuses_gets_a_placeholder_and_no_secret_shows(tmp_path):
    """A 403 for one thumbnail ended the whole report with aiohttp's error, the signed URL in it."""
    import shutil

    from tests.loading.image_server import ImageServer

    export = write_dataset(tmp_path, "remote", n_items=6)
    source = tmp_path / "source"
    shutil.move(export / "images", source)
    secrets = ("PASSW0RD", "SECRETSIG", "SECRETTOK")
    with ImageServer(source) as server:
        root = server.url.replace("//", "//alice:PASSW0RD@") + "/?X-Amz-Signature=SECRETSIG&token=SECRETTOK"
        ds = VisualLayerDataset.from_export(export, images_root=root, cache_dir=tmp_path / "c", task=None)
        server.fail_next(1, 403)
        page = ds.report(tmp_path / "report.html").read_text()
        server.fail_next(1, 401)
        image_path = ds.curation_details().column("image_path")[0].as_py()
        with pytest.raises(errors.ImageDecodeError) as raised:
            ds.read_image(image_path)
    assert thumbnails(page) == 5
    assert page.count("<div class=missing>unreadable image</div>") == 1
    assert not [secret for secret in secrets if secret in page]
    assert "401" in str(raised.value) and not [secret for secret in secrets if secret in str(raised.value)]
    assert raised.value.__context__ is None and raised.value.__cause__ is None
