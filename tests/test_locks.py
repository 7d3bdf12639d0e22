"""Cross-process locks: a soft lock where the filesystem has no flock."""

from __future__ import annotations

from pathlib import Path

import pytest

from vl_datasets import errors


def test_lock_falls_back_to_a_soft_lock_without_flock(tmp_path, monkeypatch):
    from tests.helpers import without_flock
    from vl_datasets import locks

    without_flock(monkeypatch)
    path = tmp_path / "entry.lock"
    with locks.hold_lock(path, timeout_s=5, what="test"):
        assert Path(str(path) + ".soft").exists()
        with (
            pytest.raises(errors.LockTimeoutError, match=r"entry\.lock"),
            locks.hold_lock(path, timeout_s=0.2, what="test"),
        ):
            pass
    assert not Path(str(path) + ".soft").exists()


def test_a_nan_lock_timeout_is_refused_not_waited_forever(tmp_path):
    from vl_datasets.locks import hold_lock

    with (
        pytest.raises(errors.ConfigurationError, match="nan"),
        hold_lock(tmp_path / "l.lock", timeout_s=float("nan"), what="x"),
    ):
        pass


@pytest.mark.parametrize("timeout_s", [0, 0.0, -1.0])
def test_a_lock_timeout_of_zero_takes_a_free_lock_and_refuses_a_held_one_at_once(tmp_path, timeout_s):
    """0 means 'do not wait': it gave up without trying, blaming 'another process holding the lock'
    and advising to delete the lock file, while no process held it."""
    from vl_datasets.locks import hold_lock

    path = tmp_path / "entry.lock"
    with (
        hold_lock(path, timeout_s=timeout_s, what="a free lock"),
        pytest.raises(errors.LockTimeoutError, match="another process holding the lock"),
        hold_lock(path, timeout_s=timeout_s, what="a held lock"),
    ):
        pass
