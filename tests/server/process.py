"""``vl-datasets serve`` as a child process, started the same way whatever started the test runner.

A runner started in the background by a shell hands SIGINT ignored to its children, and one started
from a terminal hands it at its default: a test that sends SIGINT would then pass or hang depending
on how pytest was launched. So the child's SIGINT disposition is always set explicitly, by a launcher
that sets it and then execs the command (dispositions survive exec). ``preexec_fn`` would do the
same, but it is unsafe in a test process that already runs threads (the local service's).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import child_env

_LAUNCHER = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)
SIGINT_AT_START = {"default": "SIG_DFL", "ignored": "SIG_IGN"}
BANNER_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0


class ServeProcess:
    """``python -m vl_datasets serve --port 0 ARGS`` with SIGINT ``sigint`` ("default" or "ignored").

    ``url`` is read from its banner. ``stop(sig)`` sends a signal and returns the exit code; ``stderr``
    holds what it wrote once it has ended. A context manager that never leaves the child running.
    """

    def __init__(
        self, *args: str, sigint: str = "default", env: dict[str, str] | None = None, tmpdir: Path | None = None
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
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, SIGINT_AT_START[sigint], *command[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            bufsize=0,
        )
        try:
            self.banner = self._read_line(BANNER_TIMEOUT_S)
            match = re.search(r"http://\S+?(?=[ ,]|$)", self.banner)
            if match is None:
                raise AssertionError(f"serve's first line names no URL: {self.banner!r}")
            self.url = match.group(0)
        except BaseException:
            self.close()
            raise

    def _read_line(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                self.close()
                raise AssertionError(f"serve printed no banner within {timeout_s:.0f} s; stderr: {self.stderr}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self.close()
                raise AssertionError(f"serve exited ({self.proc.returncode}) before its banner; stderr: {self.stderr}")
            line += chunk
        return line.decode()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """Send ``sig`` and wait for the exit; an AssertionError says so if it does not come."""
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"serve did not exit within {timeout_s:.0f} s of {signal.Signals(sig).name}; stderr: {self.stderr}"
            ) from None
        self.stderr, self._ended = err.decode(errors="replace"), True
        return self.proc.returncode

    def close(self) -> None:
        """Kill the child if it still runs, and keep what it wrote to stderr."""
        if self._ended:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        _, err = self.proc.communicate()
        self.stderr, self._ended = (err or b"").decode(errors="replace"), True

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
