"""``vl-datasets evaluate``: a predictions file (CSV or Parquet) scored against a local export."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

from tests.evaluation.helpers import item, mislabel, write_export
from tests.helpers import thumbnails
from vl_datasets.cli import main


@pytest.fixture
def export(tmp_path):
    items = [item(f"m{i}", ["cat", "dog"][i % 2], uniqueness=i / 10, cluster=f"k{i % 2}") for i in range(8)]
    items.append(item("m8", "cat", uniqueness=0.05, issues=(mislabel(0.9, "dog"),)))
    return write_export(tmp_path, items)


PREDICTIONS = pa.table(
    {
        "media_id": [f"m{i}" for i in range(9)],
        "prediction": ["cat", "dog", "cat", "dog", "cat", "cat", "cat", "dog", "dog"],  # m5, m8 wrong
        "score": [0.9, 0.9, 0.9, 0.9, 0.9, 0.45, 0.9, 0.9, 0.97],
    }
)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_evaluate_command_prints_writes_the_report_and_the_label_errors(export, tmp_path, capsys, suffix):
    predictions = tmp_path / f"predictions.{suffix}"
    if suffix == "csv":
        pyarrow.csv.write_csv(PREDICTIONS, predictions)
    else:
        pq.write_table(PREDICTIONS, predictions)
    train_ids = tmp_path / "train.txt"
    train_ids.write_text("m0\n")
    out, errors = tmp_path / "eval.html", tmp_path / "errors.txt"
    code = main(
        [
            "evaluate", str(export), "--predictions", str(predictions), "--out", str(out),
            "--label-errors", str(errors), "--train-ids", str(train_ids), "--min-uniqueness", "0.25",
            "--cache-dir", str(tmp_path / "c"),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "9 items scored; accuracy 77.8%" in printed
    assert "  kept: 5 items, accuracy 80.0%" in printed  # m3..m7, uniqueness 0.3 and up; m5 wrong
    assert "  removed by min_uniqueness=0.25: 4 items, accuracy 75.0%" in printed  # m0..m2, m8
    assert "4 items share a group with a training item" in printed  # the cluster k0 of m0
    assert "1 suspected label errors" in printed  # m8 (0.97); m5 at 0.45 is not sure enough
    assert errors.read_text() == "m8\n"
    page = out.read_text()
    assert "<h2>Suspected label errors: 1 item(s)</h2>" in page and thumbnails(page) >= 1


def test_bad_predictions_exit_1_naming_the_row(export, tmp_path, capsys):
    predictions = tmp_path / "p.csv"
    predictions.write_text("media_id,prediction\nm0,cat\nm1,horse\n")
    code = main(["evaluate", str(export), "--predictions", str(predictions), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 1
    assert "row 1 (media id 'm1'): class 'horse' is not one of the dataset's classes" in err
    assert "hint: the predictions do not fit the dataset" in err


def test_bad_arguments_exit_2(export, tmp_path, capsys):
    predictions = tmp_path / "p.csv"
    pyarrow.csv.write_csv(PREDICTIONS, predictions)
    argv = ["evaluate", str(export), "--predictions", str(predictions), "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--min-confidence", "60"]) == 2
    assert "min_confidence must be from 0 to 1" in capsys.readouterr().err
    assert main([*argv, "--drop-issue", "blur"]) == 2


@pytest.mark.parametrize("content", [b"", b"hello", b"PAR1 then nothing"])
def test_a_parquet_file_that_is_not_parquet_exits_1_naming_it(export, tmp_path, capsys, content):
    predictions = tmp_path / "p.parquet"
    predictions.write_bytes(content)
    code = main(["evaluate", str(export), "--predictions", str(predictions), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"error: {predictions}: cannot be read as parquet" in err


def test_train_ids_that_cannot_be_read_exit_2_naming_the_file(export, tmp_path, capsys):
    predictions = tmp_path / "p.csv"
    pyarrow.csv.write_csv(PREDICTIONS, predictions)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("m0\ncaf\xe9\n".encode("latin-1"))
    argv = ["evaluate", str(export), "--predictions", str(predictions), "--cache-dir", str(tmp_path / "c")]
    for train_ids, message in ((tmp_path / "missing.txt", "cannot read media ids"), (latin, "media ids must be UTF-8")):
        assert main([*argv, "--train-ids", str(train_ids)]) == 2
        assert f"error: {train_ids}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["missing.csv", "missing.parquet", "missing.json", "missing", "."])
def test_a_predictions_path_that_names_no_file_exits_2_naming_it(export, tmp_path, capsys, name):
    """It exited 1 with the hint for predictions that do not fit the dataset (a row, a media id)."""
    predictions = tmp_path / name
    code = main(["evaluate", str(export), "--predictions", str(predictions), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: --predictions {predictions}: " in err
    assert ("is a folder" if predictions.is_dir() else "no such file") in err
    assert "media id" not in err


def test_output_paths_that_cannot_be_written_exit_2_before_scoring(export, tmp_path, capsys):
    predictions = tmp_path / "p.csv"
    pyarrow.csv.write_csv(PREDICTIONS, predictions)
    (tmp_path / "file").write_text("")
    argv = ["evaluate", str(export), "--predictions", str(predictions), "--cache-dir", str(tmp_path / "c")]
    for option, path, message in (
        ("--out", tmp_path, "is a folder"),
        ("--label-errors", tmp_path, "is a folder"),
        ("--out", tmp_path / "file" / "eval.html", "cannot create its folder"),
        ("--label-errors", tmp_path / "file" / "errors.txt", "cannot create its folder"),
    ):
        assert main([*argv, option, str(path)]) == 2
        captured = capsys.readouterr()
        assert f"error: {option} {path}: {message}" in captured.err
        assert "items scored" not in captured.out  # refused before the scoring, not after it


def test_an_output_naming_an_input_or_the_other_output_exits_2_naming_both(export, tmp_path, capsys):
    """--out naming the predictions file overwrote it with the report, exit 0."""
    predictions, train_ids = tmp_path / "p.csv", tmp_path / "train.txt"
    pyarrow.csv.write_csv(PREDICTIONS, predictions)
    train_ids.write_text("m0\n")
    before = predictions.read_bytes()
    argv = ["evaluate", str(export), "--predictions", str(predictions), "--train-ids", str(train_ids)]
    argv += ["--cache-dir", str(tmp_path / "c")]
    same_predictions = tmp_path / "sub" / ".." / "p.csv"  # another spelling of the same file
    for option, path, other in (
        ("--out", same_predictions, "--predictions"),
        ("--label-errors", predictions, "--predictions"),
        ("--out", train_ids, "--train-ids"),
        ("--label-errors", train_ids, "--train-ids"),
    ):
        assert main([*argv, option, str(path)]) == 2
        captured = capsys.readouterr()
        assert f"error: {option} {path}: is the file {other} names" in captured.err
        assert "items scored" not in captured.out
    out = tmp_path / "r.html"
    assert main([*argv, "--out", str(out), "--label-errors", str(out)]) == 2
    assert f"error: --label-errors {out}: is the file --out names" in capsys.readouterr().err
    assert predictions.read_bytes() == before and train_ids.read_text() == "m0\n" and not out.exists()


def test_a_file_name_too_long_for_the_system_exits_2_naming_the_option(export, tmp_path, capsys):
    """Path.is_dir() raised ENAMETOOLONG: exit 1, an error naming no option."""
    predictions, long_name = tmp_path / "p.csv", tmp_path / ("x" * 300 + ".html")
    pyarrow.csv.write_csv(PREDICTIONS, predictions)
    argv = ["evaluate", str(export), "--cache-dir", str(tmp_path / "c")]
    for option, extra in (
        ("--out", ["--predictions", str(predictions)]),
        ("--label-errors", ["--predictions", str(predictions)]),
        ("--predictions", []),
    ):
        assert main([*argv, *extra, option, str(long_name)]) == 2
        captured = capsys.readouterr()
        assert f"error: {option} {long_name}: not a usable path: " in captured.err
        assert "items scored" not in captured.out


def test_a_nan_score_in_a_csv_is_refused_not_read_as_no_score(export, tmp_path, capsys):
    predictions = tmp_path / "p.csv"
    predictions.write_text("media_id,prediction,score\nm0,cat,0.99\nm1,cat,nan\n")
    errors = tmp_path / "errors.txt"
    argv = ["evaluate", str(export), "--predictions", str(predictions), "--label-errors", str(errors)]
    assert main([*argv, "--cache-dir", str(tmp_path / "c")]) == 1
    assert "row 1 (media id 'm1'): score nan is not a number from 0 to 1" in capsys.readouterr().err
    assert not errors.exists()  # m1 is not listed as a suspected label error with no score


def test_empty_predictions_an_unknown_id_and_unknown_train_ids_are_said(export, tmp_path, capsys, caplog):
    """'0 items scored; accuracy -' with exit 0 hid a results file never written; an id the export
    lacks was reported without the file it came from; train ids of another dataset found no leak."""
    cache = ["--cache-dir", str(tmp_path / "c")]
    empty = tmp_path / "empty.csv"
    empty.write_text("media_id,prediction\n")
    assert main(["evaluate", str(export), "--predictions", str(empty), *cache]) == 1
    assert f"{empty}: holds no predictions to score" in capsys.readouterr().err
    stranger = tmp_path / "stranger.csv"
    stranger.write_text("media_id,prediction\nm0,cat\nnot-here,dog\n")
    assert main(["evaluate", str(export), "--predictions", str(stranger), *cache]) == 1
    assert f"{stranger}: row 1: media id 'not-here' is not an item of this export" in capsys.readouterr().err
    predictions, train_ids = tmp_path / "p.csv", tmp_path / "train.txt"
    pyarrow.csv.write_csv(PREDICTIONS, predictions)
    train_ids.write_text("m0\nother-1\nother-2\n")
    with caplog.at_level("WARNING", logger="vl_datasets"):
        code = main(["evaluate", str(export), "--predictions", str(predictions), "--train-ids", str(train_ids), *cache])
    assert code == 0
    assert "2 of the 3 train media ids are no item of this export" in caplog.text


def test_a_class_curation_removes_whole_keeps_its_index_and_its_name(tmp_path, capsys):
    """The classes came from the kept items: with every bird blurred and dropped, a perfect model's
    class indices (bird 0, cat 1, dog 2) read as other classes, and its birds by name were refused."""
    blur = ({"issue_type": "blur", "confidence": 0.9},)
    items = [item(f"b{i}", "bird", issues=blur) for i in range(2)]
    items += [item(f"c{i}", "cat") for i in range(2)] + [item(f"d{i}", "dog") for i in range(2)]
    export = write_export(tmp_path, items)
    by_index, by_name = tmp_path / "index.parquet", tmp_path / "name.parquet"
    pq.write_table(pa.table({"media_id": ["c0", "c1", "d0", "d1"], "prediction": [1, 1, 2, 2]}), by_index)
    names = ["bird", "bird", "cat", "cat", "dog", "dog"]
    pq.write_table(pa.table({"media_id": [it["media_id"] for it in items], "prediction": names}), by_name)
    argv = ["evaluate", str(export), "--drop-issue", "blur=0.8", "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--predictions", str(by_index)]) == 0
    assert "4 items scored; accuracy 100.0%" in capsys.readouterr().out
    assert main([*argv, "--predictions", str(by_name)]) == 0
    printed = capsys.readouterr().out
    assert "6 items scored; accuracy 100.0%" in printed
    assert "  removed by drop_issues: 2 items, accuracy 100.0%" in printed
