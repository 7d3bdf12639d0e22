"""``vl-datasets cache list | rm | prune``: look after the cache from the command line."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone

from .store import CacheStore, LocalExport
from ..config import resolve_cache_dir
from ..errors import ConfigurationError
from .remote import RemoteCache

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"500M"``, ``"20G"``, ``"1.5T"``, ``"1024"`` -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([BKMGT]?)(?:I?B)?\s*", text.upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 500M or 20G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def human_size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "?"
    for unit in ("B", "K", "M", "G"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f}{unit}" if unit == "B" else f"{n_bytes:.1f}{unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f}T"


def _age(entry: LocalExport, now: datetime) -> str:
    if entry.created_at is None:
        return "?"
    seconds = (now - entry.created_at).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _store(cache_dir: str | None) -> CacheStore:
    root = resolve_cache_dir(cache_dir)
    if "://" in root:
        root = str(RemoteCache(root).local_root)  # the local mirror of a shared root
    return CacheStore(root)


def run_list(args: argparse.Namespace) -> int:
    store = _store(args.cache_dir)
    entries = list(store.entries())
    if not entries:
        print(f"No cached exports in {store.root}")
        return 0
    now = datetime.now(timezone.utc)
    print(f"{'KEY':<20}  {'DATASET':<24} {'FORMAT':<8} {'IMAGES':<6} {'ITEMS':>7} {'SIZE':>8} {'AGE':>5}")
    for entry in entries:
        key = entry.key
        print(f"{key.digest:<20}  {key.dataset_id[:24]:<24} {key.export_format:<8} "
              f"{'yes' if key.include_images else 'no':<6} {entry.row_count or 0:>7} "
              f"{human_size(entry.total_bytes):>8} {_age(entry, now):>5}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    store = _store(args.cache_dir)
    entries = list(store.entries())
    if args.dataset is not None:
        chosen = [e for e in entries if e.key.dataset_id == args.dataset]
        what = f"dataset {args.dataset!r}"
    else:
        chosen = [e for e in entries if e.key.digest.startswith(args.key)]
        what = f"key {args.key!r}"
        if len(chosen) > 1:
            raise ConfigurationError(f"{what} matches {len(chosen)} cached exports; give more of the key.")
    if not chosen:
        raise ConfigurationError(f"No cached export for {what} in {store.root}.")
    for entry in chosen:
        store.remove(entry)
        print(f"removed {entry.key.digest} ({entry.key.dataset_id})")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    store = _store(args.cache_dir)
    entries = sorted(store.entries(), key=lambda e: e.created_at or datetime.min.replace(tzinfo=timezone.utc))
    doomed: list[LocalExport] = []
    if args.older_than is not None:
        cutoff = datetime.now(timezone.utc) - timedelta(days=args.older_than)
        doomed = [e for e in entries if e.created_at is not None and e.created_at < cutoff]
    else:
        total = sum(e.total_bytes or 0 for e in entries)
        for entry in entries:  # oldest first
            if total <= args.max_size:
                break
            doomed.append(entry)
            total -= entry.total_bytes or 0
    for entry in doomed:
        store.remove(entry)
        print(f"removed {entry.key.digest} ({entry.key.dataset_id}, {human_size(entry.total_bytes)})")
    print(f"pruned {len(doomed)} of {len(entries)} cached exports")
    return 0
