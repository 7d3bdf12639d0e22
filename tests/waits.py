"""Waits in tests bounded by progress, not by a total: a test fails when what it awaits stops moving
(a child prints nothing and uses no CPU, a counter stops growing) for a generous time, naming what
it awaited, however slowly a loaded machine lets the work go on meanwhile."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable

import psutil
import pytest

# A child that neither prints nor uses CPU for this long is stuck; one that does either is working,
# however loaded the machine. The overall cap only stops a child that spins forever.
STALL_S = 300.0
LIMIT_S = 4 * 3600.0
# CPU seconds a watched process must use between two looks (about a second apart) to count as
# working: more than an idle interpreter's or kernel's heartbeat.
WORK_CPU_S = 0.05
LOOK_EVERY_S = 1.0


class Stall:
    """How long since a measure of work (CPU seconds, bytes, items: a number that grows while the
    awaited work goes on) last grew by more than ``step`` between two looks."""

    def __init__(self, measure: Callable[[], float], *, step: float = 0.0) -> None:
        self.measure, self.step = measure, step
        self.value = measure()
        self.looked = self.moved = time.monotonic()

    def idle_s(self) -> float:
        now = time.monotonic()
        if now - self.looked >= LOOK_EVERY_S:
            value = self.measure()
            if value - self.value > self.step:
                self.moved = now
            self.value, self.looked = value, now
        return now - self.moved

    def touch(self) -> None:
        """Something else showed progress (a child printed)."""
        self.moved = time.monotonic()


def wait_until(
    condition: Callable[[], object],
    what: str,
    *,
    progress: Stall,
    stall_s: float = STALL_S,
    limit_s: float = LIMIT_S,
    poll_s: float = 0.02,
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` once ``progress`` shows no work for
    ``stall_s`` (or, for work that spins forever, after ``limit_s``)."""
    started = time.monotonic()
    while not condition():
        if progress.idle_s() > stall_s:
            pytest.fail(f"no progress for {stall_s:.0f} s while waiting for {what}")
        if time.monotonic() - started > limit_s:
            pytest.fail(f"still waiting for {what} after {limit_s:.0f} s")
        time.sleep(poll_s)


def cpu_of(*pids: int) -> Stall:
    """Progress as the CPU time of processes ``pids`` and everything under them."""
    return Stall(lambda: sum(tree_cpu_s(pid) for pid in pids), step=WORK_CPU_S)


def cpu_of_children() -> Stall:
    """Progress as the CPU time of this process's children (a DataLoader's workers, say)."""

    def used() -> float:
        return sum(tree_cpu_s(child.pid) for child in psutil.Process().children())

    return Stall(used, step=WORK_CPU_S)


def join(processes, what: str, *, stall_s: float = STALL_S) -> None:
    """Wait for ``multiprocessing`` ``processes`` to end, bounded by their progress (CPU time)."""
    wait_until(
        lambda: not any(p.is_alive() for p in processes),
        what,
        progress=cpu_of(*(p.pid for p in processes)),
        stall_s=stall_s,
    )
    for process in processes:
        process.join()


class Child:
    """A child process a test starts and waits on, bounded by its progress: the test fails when the
    child (with its own children: DataLoader workers, ranks, a kernel) prints nothing and uses no
    CPU for ``stall_s`` while the test waits for something, and the failure names that thing, the
    command and its last lines. A context manager that never leaves the child or its children running.
    """

    def __init__(
        self,
        command: list[str],
        *,
        env: dict | None = None,
        cwd: str | os.PathLike | None = None,
        stall_s: float = STALL_S,
        limit_s: float = LIMIT_S,
        **popen,
    ) -> None:
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}  # output as it is printed
        self.command, self.stall_s, self.limit_s = command, stall_s, limit_s
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, **popen
        )
        self.output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.lock = threading.Lock()
        self.progress = cpu_of(self.process.pid)
        self.started = time.monotonic()
        self.readers = [
            threading.Thread(target=self._drain, args=(stream, sink), daemon=True)
            for stream, sink in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr"))
        ]
        for reader in self.readers:
            reader.start()

    def _drain(self, stream, sink: str) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            with self.lock:
                self.output[sink] += chunk
                self.progress.touch()
        stream.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self, sink: str = "stdout") -> str:
        """What the child wrote so far to ``sink`` ("stdout" or "stderr")."""
        with self.lock:
            return self.output[sink].decode("utf-8", "replace")

    def until(self, condition: Callable[[], object], what: str, *, poll_s: float = 0.02) -> None:
        """Poll ``condition`` until it holds, while the child runs and makes progress."""
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(self.report(f"ended (code {self.process.returncode}) before {what}"))
            self._check(what)
            time.sleep(poll_s)

    def wait(self, what: str = "its end") -> int:
        """The child's exit code, once it has ended; ``what`` names the end awaited in a failure."""
        while not self._ended(wait_s=1.0):
            self._check(what)
        for reader in self.readers:  # its last output, which it may have written just before ending
            reader.join(timeout=10)
        return self.process.returncode

    def _ended(self, *, wait_s: float) -> bool:
        try:
            self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _check(self, what: str) -> None:
        with self.lock:
            idle_s = self.progress.idle_s()
        if idle_s > self.stall_s:
            pytest.fail(
                self.report(f"made no progress (no output, no CPU time) for {self.stall_s:.0f} s awaiting {what}")
            )
        if time.monotonic() - self.started > self.limit_s:
            pytest.fail(self.report(f"still ran after {self.limit_s:.0f} s awaiting {what}"))

    def result(self) -> subprocess.CompletedProcess:
        """What ``subprocess.run(capture_output=True, text=True)`` returns, once the child has ended."""
        return subprocess.CompletedProcess(
            self.command, self.process.returncode, self.text("stdout"), self.text("stderr")
        )

    def report(self, what: str) -> str:
        lines = (self.text("stdout") + self.text("stderr")).splitlines()[-30:]
        return f"{shlex.join(str(c) for c in self.command)} {what}; its last output lines:\n" + "\n".join(lines)

    def close(self) -> None:
        """Kill the child and what it started, if they still run (a failed test leaves no orphan)."""
        end_tree(self.process)
        for reader in self.readers:
            reader.join(timeout=10)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_child(
    command: list[str],
    *,
    env: dict | None = None,
    cwd: str | os.PathLike | None = None,
    stall_s: float = STALL_S,
    limit_s: float = LIMIT_S,
) -> subprocess.CompletedProcess:
    """Run ``command`` to its end, as ``subprocess.run(capture_output=True, text=True)`` does, bounded
    by progress (see ``Child``)."""
    with Child(command, env=env, cwd=cwd, stall_s=stall_s, limit_s=limit_s) as child:
        child.wait()
        return child.result()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every process under it (0 once they are gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def end_tree(child: subprocess.Popen) -> None:
    """Kill ``child`` and what it started, if they still run."""
    try:
        processes = [*psutil.Process(child.pid).children(recursive=True)]
    except psutil.Error:
        processes = []
    if child.poll() is None:
        child.kill()
    for process in processes:
        with contextlib.suppress(psutil.Error):  # it ended on its own meanwhile
            process.kill()
    child.wait()
