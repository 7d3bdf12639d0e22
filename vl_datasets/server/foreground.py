"""``serve``: the local service in the foreground, until SIGTERM, SIGINT or SIGHUP, then a clean stop.

Each signal gets a handler of its own. SIGTERM is what ``docker stop``, systemd and CI runners
send, and Python's default for it is to die at once, leaving the export folder behind. SIGINT is
ignored in a process that a shell started in the background, so waiting for a KeyboardInterrupt
would wait forever there: installing a handler replaces that inherited SIG_IGN. SIGHUP comes when
the terminal that started the service closes; there an inherited SIG_IGN is kept, since it means
``nohup``: the user asked for the service to outlive the terminal.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .service import LocalVisualLayer

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Stops too, unless the process was started ignoring it (Windows has no SIGHUP).
HANGUP = getattr(signal, "SIGHUP", None)
# How often the foreground loop looks at the stop flag; a signal handler only sets that flag.
WAKE_S = 0.05


class _StopRequest:
    """Set by a signal handler. A plain attribute on purpose: a handler that took a lock (an Event's)
    could deadlock on the main thread that it interrupted while that thread held the same lock."""

    signum: int | None = None


@contextlib.contextmanager
def _stop_on_signals(request: _StopRequest) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers: a caller elsewhere stops us with ``stop``
        return

    def handler(signum: int, frame: Any) -> None:
        request.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    if HANGUP is not None and signal.getsignal(HANGUP) is not signal.SIG_IGN:
        previous[HANGUP] = signal.signal(HANGUP, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            # None: a handler installed from C, which Python cannot put back; the default is closest.
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def banner(service: LocalVisualLayer, *, api_key: str | None) -> str:
    """What ``serve`` prints at start: where it listens (on the first line, which scripts parse), then
    the lines a client's shell needs. It names the key, never the secret: the shell that started the
    service already has that, and a terminal's scrollback is no place for it."""
    ids = service.datasets.ids()
    lines = [
        f"Local Visual Layer service at {service.url} (downloads from {service.storage_url}), "
        f"{'token auth' if api_key else 'no auth'}; datasets: {', '.join(ids) or 'none found'}. "
        "Ctrl-C or SIGTERM stops it.",
        "Point clients at it (vl-datasets export, prepare and report; Client()) with:",
        f"  export VL_API_URL={service.url}",
    ]
    if api_key:
        lines.append(f"  export VL_API_KEY={api_key}   # and VL_API_SECRET, the secret this service verifies with")
    return "\n".join(lines)


def serve(
    root: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 2080,
    storage_port: int = 0,
    api_key: str | None = None,
    api_secret: str | None = None,
    stop: threading.Event | None = None,
    **options: Any,
) -> None:
    """Run the service in the foreground until SIGTERM, SIGINT (Ctrl-C), SIGHUP (unless started
    under ``nohup``) or ``stop`` is set.

    ``options`` go to ``LocalVisualLayer``. Returns normally once the service has stopped and its
    exports are removed, so a command wrapping it exits 0.
    """
    if not Path(root).is_dir():
        raise NotADirectoryError(f"Dataset root {root} is not a folder.")
    request = _StopRequest()
    with _stop_on_signals(request):  # before the banner: whoever reads it may signal at once
        service = LocalVisualLayer(
            root, host=host, port=port, storage_port=storage_port, api_key=api_key, api_secret=api_secret, **options
        ).start()
        try:
            service.datasets.index_all()  # in the background: a large metadata.json is ready sooner
            print(banner(service, api_key=api_key), flush=True)
            while request.signum is None and not (stop is not None and stop.is_set()):
                time.sleep(WAKE_S)
        finally:
            service.stop()
    reason = signal.Signals(request.signum).name if request.signum is not None else "request"
    print(f"Local Visual Layer service stopped ({reason}).", file=sys.stderr, flush=True)
