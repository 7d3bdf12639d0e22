"""The command line's one exit point: each error family exits with its own code and a one-line hint."""

from __future__ import annotations

import pytest

from vl_datasets.cli import main


@pytest.mark.parametrize(
    "args,setup,code",
    [
        (["export", "nope"], None, 4),
        (["export", "ds-indexing"], None, 5),
        (["export", "ds-ready", "--offline"], None, 7),
        (["export", "ds-ready"], "fail", 6),
        (["cache", "rm", "nokey"], None, 2),
    ],
)
def test_cli_exit_codes_and_hints(quick_vl, tmp_path, monkeypatch, capsys, args, setup, code):
    monkeypatch.setenv("VL_API_URL", quick_vl.url)
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    if setup == "fail":
        quick_vl.faults.fail_exports(result_message="too many entities")
    assert main([*args, "--cache-dir", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "hint: " in err
    assert "Traceback" not in err


def test_cli_bad_credentials_and_unreachable_api(local_vl_auth, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VL_API_URL", local_vl_auth.url)
    monkeypatch.setenv("VL_API_KEY", "key-123")
    monkeypatch.setenv("VL_API_SECRET", "not-the-secret-0123456789abcdef0123")
    assert main(["export", "ds-ready", "--cache-dir", str(tmp_path)]) == 3
    assert "not-the-secret" not in capsys.readouterr().err
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VL_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("VL_API_KEY")
    monkeypatch.delenv("VL_API_SECRET")
    monkeypatch.setenv("VL_API_MAX_RETRIES", "0")
    assert main(["-v", "export", "ds-ready", "--cache-dir", str(tmp_path)]) == 8
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["./nope_export.zip", "exports/nope", "nope.ZIP"])
def test_a_missing_path_is_named_at_once_not_taken_for_a_dataset_id(quick_vl, tmp_path, monkeypatch, capsys, source):
    """Taken for a dataset id, a mistyped path cost the API's retries, then 'cannot be reached'."""
    monkeypatch.setenv("VL_API_URL", quick_vl.url)
    monkeypatch.chdir(tmp_path)
    assert main(["report", source, "--out", str(tmp_path / "r.html"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "No export at" in err and source.lstrip("./").split("/")[-1] in err
    assert quick_vl.requests == [], "the API was asked for a path"


def test_a_folder_that_holds_no_export_is_a_usage_error_that_says_what_an_export_holds(tmp_path, capsys):
    """It exited 1 with the hint "the archive is damaged: download or export it again"."""
    (tmp_path / "images").mkdir()
    out, cache = str(tmp_path / "r.html"), str(tmp_path / "cache")
    assert main(["report", str(tmp_path / "images"), "--out", out, "--cache-dir", cache]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'images'} is no Visual Layer export" in err
    assert "the folder holding metadata.parquet or metadata.json" in err and "damaged" not in err


def test_a_cache_dir_that_cannot_be_made_is_a_one_line_usage_error(tmp_path, monkeypatch, capsys):
    """Under /proc nothing can be made, as on a read-only mount: it printed FileNotFoundError's
    traceback and exited 1."""
    from vl_datasets.testing import write_dataset

    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    export = write_dataset(tmp_path, "ds", n_items=2)
    cache = "/proc/vl-datasets-no-such-folder/cache"
    assert main(["prepare", str(export), "--size", "8", "--cache-dir", cache]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "/proc/vl-datasets-no-such-folder" in err
    assert "hint: --cache-dir must be a folder this user can create and write" in err
    assert "Traceback" not in err
