"""``vl-datasets cache list | rm | prune``, over what ``vl-datasets export`` put in the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from vl_datasets import Client, errors, fetch_export
from vl_datasets.cache.store import ExportKey
from vl_datasets.cli import main


def test_cli_export_list_rm_prune(quick_vl, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VL_API_URL", quick_vl.url)
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    cache = str(tmp_path / "cache")
    assert main(["export", "ds-ready", "--cache-dir", cache]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert (path / "metadata.parquet").is_file()
    assert main(["export", "ds-ready", "--format", "json", "--no-images", "--cache-dir", cache]) == 0
    capsys.readouterr()
    assert main(["cache", "list", "--cache-dir", cache]) == 0
    listing = capsys.readouterr().out
    assert listing.count("ds-ready") == 2
    assert "parquet" in listing
    assert "json" in listing
    key = ExportKey.build(quick_vl.url, "ds-ready", "json", False).digest
    assert main(["cache", "rm", key[:8], "--cache-dir", cache]) == 0
    assert main(["cache", "rm", "--dataset", "ds-ready", "--cache-dir", cache]) == 0
    assert main(["export", "ds-ready", "--cache-dir", cache]) == 0
    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", cache]) == 0
    assert "pruned 1 of 1" in capsys.readouterr().out
    assert main(["cache", "prune", "--older-than", "1", "--cache-dir", cache]) == 0


def test_cache_list_shows_hosts_and_mirrored_entries(quick_vl, s3_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine"))
    monkeypatch.delenv("VL_DATASETS_CACHE", raising=False)
    client = Client(quick_vl.url, progress=False, env={})
    fetch_export("ds-ready", client=client, cache_dir=s3_root, include_images=False)
    fetch_export("ds-ready", client=client, cache_dir=tmp_path / "machine" / "vl_datasets")
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    host = ExportKey.build(quick_vl.url, "ds-ready", "parquet", True).api_host
    assert listing.count(host) == 2, f"the local and the mirrored entry should both be listed:\n{listing}"
    assert main(["cache", "prune", "--max-size", "0"]) == 0
    assert "pruned 2 of 2" in capsys.readouterr().out


def test_a_bad_cache_size_on_the_command_line_says_what_a_size_looks_like(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["cache", "prune", "--max-size", "5Q", "--cache-dir", str(tmp_path)])
    assert "is not a size such as 500M or 20G" in capsys.readouterr().err


def test_cache_list_and_prune_cover_the_image_cache(tmp_path, capsys):
    from vl_datasets.cache.opened import local_store
    from vl_datasets.loading.image_cache import ImageCache

    cache = tmp_path / "cache"
    images = ImageCache(local_store(cache).node_area("images", "0123456789abcdef0123"), 10**9)
    for i in range(3):
        images.put(f"photo_{i}.jpg", b"x" * 2000)
    assert main(["cache", "list", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert "image cache" in listing and str(images.folder) in listing, listing
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
    assert images.folder.is_dir(), "without a limit the image cache stays"
    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", str(cache)]) == 0
    assert "removed image cache" in capsys.readouterr().out
    assert not images.folder.exists()


@pytest.mark.parametrize("command", [["list"], ["prune"], ["prune", "--older-than", "0"], ["prune", "--max-size", "0"]])
def test_a_folder_that_is_no_cache_is_refused_and_keeps_every_file(tmp_path, capsys, command):
    """--cache-dir naming an export folder (or a home folder): its images/ sub-folders read as image
    caches and its exports/<a>/<b>/<c> as a killed build's leftovers, and a prune removed them."""
    folder = tmp_path / "my-photos"
    files = [folder / "metadata.json", folder / "images/train/cat/1.jpg", folder / "exports/2024/trip/day1/2.jpg"]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    assert main(["cache", *command, "--cache-dir", str(folder)]) == 2
    assert "is not a vl_datasets cache" in capsys.readouterr().err
    assert all(path.read_text() == "mine" for path in files), "a file of the user's was removed"


def test_a_cache_holding_only_a_shared_roots_mirror_is_a_cache(quick_vl, tmp_path, monkeypatch, capsys):
    """The local root of a shared (s3://...) cache_dir holds mirrors/ alone: still a cache to list and prune."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shared = f"memory://vl-shared-{tmp_path.name}"
    fetch_export("ds-ready", client=Client(quick_vl.url, progress=False, env={}), cache_dir=shared)
    local = tmp_path / "xdg" / "vl_datasets"
    assert sorted(p.name for p in local.iterdir()) == ["CACHEDIR.TAG", "mirrors"]
    assert main(["cache", "list", "--cache-dir", str(local)]) == 0
    assert "ds-ready" in capsys.readouterr().out
    assert main(["cache", "prune", "--cache-dir", str(local)]) == 0


def test_a_cache_whose_first_export_failed_before_publishing_is_still_a_cache(quick_vl, tmp_path, capsys):
    """The root was tagged only when an export was unpacked: one failed or killed before left
    a lock and a task record in a root `cache prune` then refused to clean."""
    quick_vl.faults.hold_exports()
    client = Client(quick_vl.url, progress=False, env={})
    with pytest.raises(errors.ExportTimeoutError):
        fetch_export("ds-ready", client=client, cache_dir=tmp_path / "cache", export_timeout_s=0)
    assert main(["cache", "prune", "--cache-dir", str(tmp_path / "cache")]) == 0


def test_a_cache_in_a_folder_named_mirrors_tags_no_folder_above_it(tmp_path):
    """Only a mirror's writes tag the root holding it: a folder above a cache named like one was
    tagged too (backup tools skip a tagged folder; prune would take it for a cache)."""
    from vl_datasets.cache.store import CacheStore

    CacheStore(tmp_path / "mirrors" / "cache").node_area("images", "0123456789abcdef0123")
    assert (tmp_path / "mirrors" / "cache" / "CACHEDIR.TAG").is_file()
    assert not (tmp_path / "CACHEDIR.TAG").exists()


def test_an_empty_key_removes_nothing(quick_vl, tmp_path, capsys):
    """ "" is a prefix of every key: a script's unset "$KEY" must not remove the only export."""
    entry = fetch_export("ds-ready", client=Client(quick_vl.url, progress=False, env={}), cache_dir=tmp_path)
    for key in ("", "  "):
        assert main(["cache", "rm", key, "--cache-dir", str(tmp_path)]) == 2
        assert "key to remove is empty" in capsys.readouterr().err
    assert entry.metadata_path.is_file(), "the cached export was removed"


def test_a_manifest_of_another_json_shape_is_no_version(quick_vl, tmp_path, capsys):
    """Valid JSON that is no manifest (a list) is a damaged version, as garbage is: left out of
    the listing, and not found offline, never an AttributeError."""
    from vl_datasets import errors

    entry = fetch_export("ds-ready", client=Client(quick_vl.url, progress=False, env={}), cache_dir=tmp_path)
    (entry.entry_dir / f"{entry.version}.manifest.json").write_text("[]")
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    assert "ds-ready" not in capsys.readouterr().out
    with pytest.raises(errors.CacheMissError):
        fetch_export("ds-ready", cache_dir=tmp_path, offline=True)


@pytest.mark.parametrize("days", ["nan", "inf", "1e400", "1000000"])
def test_a_prune_age_that_is_no_date_exits_2_naming_it(tmp_path, capsys, days):
    """NaN removed nothing without a word; a cutoff before the calendar's start was a traceback."""
    assert main(["cache", "prune", "--older-than", days, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "older_than_days must be a number of days from 0 to 100,000" in err and "Traceback" not in err


def test_a_prune_policy_takes_numbers_of_days_and_whole_bytes_only():
    from vl_datasets import ConfigurationError, PrunePolicy

    for policy in ({"max_size": float("nan")}, {"max_size": True}, {"max_size": 2.5}, {"older_than_days": "3"}):
        with pytest.raises(ConfigurationError):
            PrunePolicy(**policy)
    assert PrunePolicy(older_than_days=0.5, max_size=0).max_size == 0


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_job_whose_entry_is_removed_under_it_is_told_so_never_skips_its_images(quick_vl, tmp_path, on_error):
    """Every image read after the removal failed as 'no image for media_id ...', or, skipping, an
    epoch of nothing with one log line. A prune leaves a running job's version be (test_readers);
    this is a removal where nothing protects it: by hand, or where the cache has no flock."""
    from vl_datasets import CacheMissError, VisualLayerDataset
    from vl_datasets.cache.store import CacheStore

    client = Client(quick_vl.url, progress=False, env={})
    ds = VisualLayerDataset("ds-ready", client=client, cache_dir=tmp_path, image_size=8, on_error=on_error)
    ds[0]
    assert ds.entry.entry_dir is not None
    CacheStore(tmp_path).remove(ds.entry.entry_dir, lock_timeout_s=1)
    with pytest.raises(CacheMissError, match=r"images at .* are gone .*pruned"):
        ds[1]


def test_export_to_a_shared_root_with_credentials_in_it_fails_without_showing_them(quick_vl, s3_root, capsys):
    """s3fs takes no user:password@ from a URL: botocore refuses the bucket, quoting it. The command
    says which root failed and how, with no traceback and no secret."""
    root = "s3://AKIAEXAMPLE:wJalr/SECRET-key-0123@shared-bucket/vl"  # AWS secret keys hold "/"
    assert main(["export", "ds-ready", "--api-url", quick_vl.url, "--cache-dir", root]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot list the shared cache s3://") and "Invalid bucket name" in err
    assert "Traceback" not in err and "hint: check the shared cache URL" in err
    assert [piece for piece in ("wJalr", "SECRET-key-0123") if piece in err] == []
