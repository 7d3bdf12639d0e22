"""``vl-datasets report``: a local export, a ZIP or a dataset id into the HTML curation report."""

from __future__ import annotations

import base64
import re
import shutil

import pytest

from tests.evaluation.helpers import item, write_export
from tests.helpers import thumbnails
from vl_datasets.cli import build_parser, main


def test_report_command_writes_the_report(export, tmp_path, capsys):
    out = tmp_path / "report.html"
    code = main(
        [
            "report",
            str(export),
            "--out",
            str(out),
            "--min-uniqueness",
            "0.3",
            "--drop-issue",
            "blur=0.5",
            "--dedupe",
            "--labels",
            "cat",
            "dog",
            "--title",
            "digits",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    assert "<h1>digits</h1>" in page
    rules = ("labels", "min_uniqueness=0.3", "drop_issues", "dedupe")
    assert all(f"<td>Removed by {rule}</td>" in page for rule in rules), (
        f"rules missing from the summary table: {[r for r in rules if f'<td>Removed by {r}</td>' not in page]}"
    )


def test_report_command_opens_a_zip(export, tmp_path):
    archive = tmp_path / "x.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", export)
    out = tmp_path / "report.html"
    assert main(["report", str(archive), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert thumbnails(out.read_text()) == 40


def test_report_command_fetches_a_dataset_id(quick_vl, tmp_path, monkeypatch):
    monkeypatch.setenv("VL_API_URL", quick_vl.url)
    out = tmp_path / "report.html"
    assert main(["report", "ds-ready", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "<td>Items in the export</td><td class=n>8</td>" in out.read_text()
    assert quick_vl.count("export") == 1


@pytest.mark.parametrize(
    "value,message",
    [
        ("blur", "--drop-issue takes TYPE=CONFIDENCE"),
        ("blur=high", "--drop-issue takes TYPE=CONFIDENCE"),
        ("=0.5", "--drop-issue takes TYPE=CONFIDENCE"),
        ("blur=80", "--drop-issue takes TYPE=CONFIDENCE"),
        ("blur=-0.1", "--drop-issue takes TYPE=CONFIDENCE"),
        ("duplicate=0.9", "unknown issue type 'duplicate'"),
    ],
)
def test_report_command_refuses_bad_drop_issue(export, tmp_path, capsys, value, message):
    from vl_datasets.metadata.curation import KNOWN_ISSUE_TYPES

    assert main(["report", str(export), "--out", str(tmp_path / "r.html"), "--drop-issue", value]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "the issue types are " + ", ".join(sorted(KNOWN_ISSUE_TYPES)) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_report_command_refuses_an_unknown_issue_type_before_exporting(quick_vl, tmp_path, capsys):
    out = tmp_path / "r.html"
    argv = ["report", "ds-ready", "--out", str(out), "--api-url", quick_vl.url, "--drop-issue", "blurry=0.5"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "unknown issue type 'blurry'" in capsys.readouterr().err
    assert quick_vl.count("export") == 0, "a typo in --drop-issue cost an export"


def test_report_command_dedupe_threshold_is_optional():
    def parse(*extra):
        return build_parser().parse_args(["report", "x", "--out", "r.html", *extra])

    assert parse().dedupe is False
    assert parse("--dedupe").dedupe is True
    assert parse("--dedupe", "0.98").dedupe == 0.98
    assert parse("--drop-issue", "blur=0.8", "dark=0.9", "--drop-issue", "bright=1").drop_issues == [
        "blur=0.8",
        "dark=0.9",
        "bright=1",
    ]


def test_report_command_refuses_an_out_it_cannot_write_before_curating(export, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for path, message in ((tmp_path, "is a folder"), (tmp_path / "file" / "r.html", "cannot create its folder")):
        assert main(["report", str(export), "--out", str(path), "--cache-dir", str(tmp_path / "cache")]) == 2
        assert f"error: --out {path}: {message}" in capsys.readouterr().err


def test_report_command_expands_a_home_out_and_refuses_a_url(export, tmp_path, monkeypatch, capsys):
    """'--out ~/r.html' (quoted, so the shell left it) wrote ./~/r.html, and file:///x ./file:/x."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["report", str(export), "--out", "~/r.html", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "home" / "r.html").is_file() and not (tmp_path / "~").exists()
    with pytest.raises(SystemExit) as exited:
        main(["report", str(export), "--out", "file:///tmp/r.html", "--cache-dir", str(tmp_path / "cache")])
    assert exited.value.code == 2 and "is a URL" in capsys.readouterr().err
    assert not (tmp_path / "file:").exists()


def test_report_command_draws_labels_with_dollars_as_written(tmp_path):
    # "cat$_$dog" is not valid matplotlib mathtext: the label bars would stop the report.
    export = write_export(tmp_path, [item("m0", "cat$_$dog"), item("m1", "$5 bill")])
    out = tmp_path / "r.html"
    assert main(["report", str(export), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    plots = [base64.b64decode(b).decode() for b in re.findall(r'data:image/svg\+xml;base64,([^"]+)', out.read_text())]
    assert any("cat$_$dog" in plot and "$5 bill" in plot for plot in plots)
