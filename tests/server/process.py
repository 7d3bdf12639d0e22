"""``vl-datasets serve`` as a child process, started the same way whatever started the test runner.

A runner started in the background by a shell hands SIGINT ignored to its children, and one started
from a terminal hands it at its default: a test that sends SIGINT would then pass or hang depending
on how pytest was launched. So the child's SIGINT disposition is always set explicitly, by a launcher
that sets it and then execs the command (dispositions survive exec). ``preexec_fn`` would do the
same, but it is unsafe in a test process that already runs threads (the local service's).
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

from tests.helpers import child_env
from tests.waits import Child

_LAUNCHER = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
    "signal.signal(signal.SIGHUP, getattr(signal, sys.argv[2])); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
)
AT_START = {"default": "SIG_DFL", "ignored": "SIG_IGN"}


class ServeProcess:
    """``python -m vl_datasets serve --port 0 ARGS`` with SIGINT ``sigint`` and SIGHUP ``sighup``
    ("default" or "ignored"; a SIGHUP ignored is how ``nohup`` starts a command).

    ``url`` is read from its banner. ``stop(sig)`` sends a signal and returns the exit code; ``stderr``
    holds what it wrote once it has ended. A context manager that never leaves the child running.
    """

    def __init__(
        self,
        *args: str,
        sigint: str = "default",
        sighup: str = "default",
        env: dict[str, str] | None = None,
        tmpdir: Path | None = None,
    ) -> None:
        environment = child_env()
        environment.pop("VL_API_SECRET", None)  # the child sees the secret the test gives, or none
        environment.update(env or {})
        if tmpdir is not None:  # where the service keeps its exports: a test can see it emptied
            environment["TMPDIR"] = str(tmpdir)
        command = [sys.executable, "-m", "vl_datasets", "serve", "--port", "0", *args]
        self.command = command
        self.stderr = ""
        self._ended = False
        launcher = [sys.executable, "-c", _LAUNCHER, AT_START[sigint], AT_START[sighup]]
        self.child = Child([*launcher, *command[1:]], env=environment)
        self.proc = self.child.process
        try:
            self.child.until(lambda: "\n" in self.child.text(), "serve's banner")
            self.banner = self.child.text().split("\n")[0] + "\n"
            match = re.search(r"http://\S+?(?=[ ,]|$)", self.banner)
            if match is None:
                raise AssertionError(f"serve's first line names no URL: {self.banner!r}")
            self.url = match.group(0)
        except BaseException:
            self.close()
            raise

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit, bounded by progress (the test fails if serve stalls)."""
        self.proc.send_signal(sig)
        try:
            code = self.child.wait(f"serve's exit after {signal.Signals(sig).name}")
        finally:
            self.close()
        return code

    def close(self) -> None:
        """Kill the child if it still runs, and keep what it wrote to stderr."""
        if self._ended:
            return
        self.child.close()
        self.stderr, self._ended = self.child.text("stderr"), True

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
