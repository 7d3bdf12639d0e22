"""``vl-datasets prepare SOURCE --size S``, and the cache commands over what it prepared."""

from __future__ import annotations

import json
import shutil

import pytest

from vl_datasets.cli import main
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.prepared import list_stores
from vl_datasets.testing import write_dataset


@pytest.fixture
def export(tmp_path, monkeypatch):
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    return write_dataset(tmp_path, "ds", n_items=6, image_size=(80, 60))


def test_prepare_fills_the_store_a_training_job_then_reads(export, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    assert main(["prepare", str(export), "--size", "48", "--workers", "2", "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "6 images at 48px (6 prepared now, 0 skipped, 0 without an image)" in out
    shutil.rmtree(export / "images")  # training must not need them any more
    ds = VisualLayerDataset.from_export(export, cache_dir=cache, image_size=40, prepare=48)
    assert [tuple(ds[i][0].shape) for i in range(len(ds))] == [(3, 40, 40)] * 6
    assert main(["cache", "list", "--cache-dir", cache]) == 0
    listing = capsys.readouterr().out
    assert "prepared 48px" in listing
    assert "6 images complete" in listing


@pytest.mark.parametrize("source", ["{tmp}/nope", "./nope.zip", "exports/nope", "nope.ZIP", "~/vl-nope-export"])
def test_a_missing_local_source_exits_2_naming_it(tmp_path, monkeypatch, capsys, source):
    """It exited 1, as a damaged export does; a path that names nothing is a bad argument."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    source = source.format(tmp=tmp_path)
    assert main(["prepare", source, "--size", "8", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert f"source {source!r} names no ZIP file or export folder" in err
    assert "hint: check the command's arguments" in err


@pytest.mark.parametrize("source", ["s3://bucket/exports/x.zip", "https://host/export.zip"])
def test_an_export_named_by_a_url_exits_2_saying_to_copy_it_here(tmp_path, monkeypatch, capsys, source):
    """It exited 1 with "No export at <cwd>/s3:/bucket/exports/x.zip": the URL taken for a path."""
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", source, "--size", "8", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert f"{source!r} is a URL" in err and "Copy it to this machine first" in err
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "https:").exists()


def test_cache_prune_removes_the_stores_of_superseded_versions(export, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    assert main(["prepare", str(export), "--size", "48", "--workers", "0", "--cache-dir", cache]) == 0
    metadata = json.loads((export / "metadata.json").read_text())
    metadata["media_items"] = metadata["media_items"][:4]
    (export / "metadata.json").write_text(json.dumps(metadata))  # a new version of the export
    assert main(["prepare", str(export), "--size", "32", "--workers", "0", "--cache-dir", cache]) == 0
    entry = VisualLayerDataset.from_export(export, cache_dir=cache).entry
    assert sorted(s.size for s in list_stores(entry.entry_dir)) == [32, 48]
    capsys.readouterr()
    assert main(["cache", "prune", "--cache-dir", cache]) == 0
    assert "removed prepared images" in capsys.readouterr().out
    (kept,) = list_stores(entry.entry_dir)
    assert (kept.version, kept.size, kept.images) == (entry.version, 32, 4)
    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", cache]) == 0
    assert list_stores(entry.entry_dir) == []


def test_a_corrupt_image_fails_the_command_with_its_media_id_unless_skipped(export, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    item = json.loads((export / "metadata.json").read_text())["media_items"][2]
    (export / "images" / item["file_path"]).write_bytes(b"not an image")
    assert main(["prepare", str(export), "--size", "48", "--workers", "0", "--cache-dir", cache]) == 1
    err = capsys.readouterr().err
    assert item["media_id"] in err
    assert err.count("\n") == 1, f"expected one line, no traceback:\n{err}"
    assert main(["prepare", str(export), "--size", "48", "--on-error", "skip", "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert f"skipped {item['media_id']}" in out
    assert "5 images at 48px (0 prepared now, 1 skipped" in out
