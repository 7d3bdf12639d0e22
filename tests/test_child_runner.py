"""The runner of child processes in tests/waits.py: it waits as long as the child makes progress
(prints, or uses CPU) and fails, naming the command and its last lines, once it makes none."""

from __future__ import annotations

import sys
import time

import psutil
import pytest

from tests.waits import Child, Stall, run_child, wait_until


def test_a_child_that_stops_making_progress_fails_naming_it_and_is_killed():
    code = "import os, time\nprint('step 1 of 2', os.getpid(), flush=True)\ntime.sleep(120)\n"
    with pytest.raises(pytest.fail.Exception) as caught:
        run_child([sys.executable, "-c", code], stall_s=2)
    message = str(caught.value)
    assert "made no progress" in message and "time.sleep(120)" in message
    assert "step 1 of 2" in message, "the failure does not show the child's last output"
    pid = int(message.split("step 1 of 2 ")[1].split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_child_that_prints_or_computes_runs_past_the_stall_bound():
    code = (
        "import time\n"
        "for i in range(4):\n    print(i)\n    time.sleep(1)\n"  # quiet for less than the bound each time
        "t = time.time()\nwhile time.time() - t < 4:\n    pass\n"  # silent, but working
        "print('done')\n"
    )
    result = run_child([sys.executable, "-c", code], stall_s=2.5)
    assert (result.returncode, result.stdout.split()) == (0, ["0", "1", "2", "3", "done"])


def test_a_wait_for_something_a_stalled_child_never_does_names_what_was_awaited(tmp_path):
    code = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
    with Child([sys.executable, "-c", code], stall_s=2) as child, pytest.raises(pytest.fail.Exception) as caught:
        child.until((tmp_path / "never").exists, "the checkpoint file")
    assert "made no progress" in str(caught.value) and "the checkpoint file" in str(caught.value)
    assert "started" in str(caught.value)


def test_a_wait_goes_on_while_its_measure_grows_and_fails_naming_it_once_it_stops():
    counts = iter(range(6))  # one more item at each of the first looks (about a second apart), then none
    progress = Stall(lambda: next(counts, 5))
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="while waiting for the workers' tenth item"):
        wait_until(lambda: False, "the workers' tenth item", progress=progress, stall_s=2, poll_s=0.1)
    assert time.monotonic() - started > 5, "the wait failed while its measure still grew"
