"""Downloads into the user's folder leave nothing there but the archive; their lock lives elsewhere."""

from __future__ import annotations

import os
import re
import tempfile
import zipfile

import pytest

from vl_datasets import errors
from vl_datasets.api.download import lock_path
from vl_datasets.locks import hold_lock


@pytest.fixture
def task(quick_client):
    return quick_client.wait_for_export("ds-ready", quick_client.start_export("ds-ready").id)


def test_a_finished_download_leaves_only_the_archive_in_the_folder(quick_client, task, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    dest = quick_client.download_export(task, folder / "e.zip")
    assert os.listdir(folder) == ["e.zip"]
    assert zipfile.ZipFile(dest).testzip() is None


def test_a_download_waits_for_another_to_the_same_file(quick_client, task, tmp_path):
    dest = tmp_path / "e.zip"
    with hold_lock(lock_path(dest), timeout_s=5, what="a test's download"), \
            pytest.raises(errors.LockTimeoutError) as caught:
        quick_client.download_export(task, dest, lock_timeout_s=0.2)
    assert os.path.dirname(caught.value.lock_path) != str(tmp_path)
    assert os.listdir(tmp_path) == []  # the waiter wrote nothing
    assert quick_client.download_export(task, dest, lock_timeout_s=0.2) == dest  # free once released


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_lock_folder_others_can_write_to_is_refused(quick_client, task, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / f"vl_datasets-locks-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(errors.ConfigurationError, match=re.escape(str(shared))):
        quick_client.download_export(task, tmp_path / "out" / "e.zip")
    assert not (tmp_path / "out" / "e.zip").exists()
