"""The record of what the service received, for tests to assert on."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class Headers(Mapping[str, str]):
    """Read-only request headers, looked up whatever the case of the name.

    Its repr masks ``Authorization``: a recorded bearer token must not end up in a test report.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = tuple(items)
        # The last value wins for a repeated header; the name keeps the case it was first sent in.
        self._by_lower = {name.lower(): value for name, value in self._items}
        self._names: dict[str, str] = {}
        for name, _ in self._items:
            self._names.setdefault(name.lower(), name)

    def __getitem__(self, name: str) -> str:
        return self._by_lower[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_lower

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._by_lower)

    def __repr__(self) -> str:
        shown = {name: ("***" if name.lower() == "authorization" else value) for name, value in self._items}
        return f"Headers({shown!r})"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the service received it, and the status it answered."""

    origin: str
    """``"api"`` or ``"storage"``."""
    endpoint: str | None
    """The endpoint name faults use (``"dataset"``, ``"export"``, ...), None for unknown paths."""
    method: str
    path: str
    query: dict[str, str]
    headers: Headers = field(repr=False)
    status: int
    json: Any = None

    def header(self, name: str) -> str | None:
        """A header's value, whatever the case of ``name``; None when absent."""
        return self.headers.get(name)


class RequestLog:
    """A thread-safe list of RecordedRequest: handler threads append, the test thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []

    def add(self, record: RecordedRequest) -> None:
        """Append one record."""
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RecordedRequest]:
        """A copy of the records so far, oldest first."""
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()
