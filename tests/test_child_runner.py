"""The runner of child processes in tests/helpers.py: it waits as long as the child makes progress
(prints, or uses CPU) and fails, naming the command and its last lines, once it makes none."""

from __future__ import annotations

import sys

import psutil
import pytest

from tests.helpers import run_child


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
