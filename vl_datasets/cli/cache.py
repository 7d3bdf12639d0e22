"""``vl-datasets cache list | rm | prune``: look after the cache, its mirrors and opened exports included."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..cache.opened import local_store
from ..cache.store import CacheStore, LocalExport
from ..config import parse_size
from ..errors import ConfigurationError, LockTimeoutError
from ..loading.prepared import list_stores, remove_store
from ..locks import hold_lock


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    cache = commands.add_parser("cache", parents=parents, help="list, remove or prune cached exports")
    actions = cache.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=parents, help="list cached exports")
    listing.add_argument(
        "--all",
        dest="show_all",
        action="store_true",
        help="also list superseded versions and what interrupted builds left",
    )
    remove = actions.add_parser("rm", parents=parents, help="remove cached exports (every version) by key or dataset")
    target = remove.add_mutually_exclusive_group(required=True)
    target.add_argument("key", nargs="?", help="the key (or a unique prefix of it) shown by 'cache list'")
    target.add_argument("--dataset", help="remove every cached export of this dataset id")
    prune = actions.add_parser(
        "prune",
        parents=parents,
        help="remove superseded versions and leftovers; with a limit, old or excess exports too",
    )
    limit = prune.add_mutually_exclusive_group()
    limit.add_argument("--older-than", type=float, metavar="DAYS")
    limit.add_argument("--max-size", type=_size, metavar="SIZE", help="e.g. 500M, 20G")
    for parser, run in ((listing, run_list), (remove, run_rm), (prune, run_prune)):
        parser.add_argument("--cache-dir")
        parser.set_defaults(run=run)


def _size(text: str) -> int:
    """``parse_size`` for argparse, whose usage line names the bad value."""
    try:
        return parse_size(text)
    except ConfigurationError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 500M or 20G") from None


@dataclass(frozen=True)
class Entry:
    """One cache entry as the commands see it: every version, the newest being current."""

    store: CacheStore
    folder: Path
    versions: list[LocalExport]

    @property
    def current(self) -> LocalExport:
        return self.versions[-1]

    @property
    def key(self) -> str:
        return self.folder.name

    @property
    def host(self) -> str:
        return self.current.key.api_host if self.current.key is not None else "(opened)"

    @property
    def dataset(self) -> str:
        key = self.current.key
        return key.dataset_id if key is not None else Path(self.current.opened_from or self.folder.name).name

    @property
    def total_bytes(self) -> int:
        return sum(v.total_bytes or 0 for v in self.versions)

    @property
    def prepared_bytes(self) -> int:
        """What its prepared-image stores (``prepare=``) take."""
        return sum(store.bytes for store in list_stores(self.folder))


def human_size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "?"
    for unit in ("B", "K", "M", "G"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f}{unit}" if unit == "B" else f"{n_bytes:.1f}{unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f}T"


def _age(created_at: datetime | None, now: datetime) -> str:
    if created_at is None:
        return "?"
    seconds = (now - created_at).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _stores(cache_dir: str | None) -> list[CacheStore]:
    """The local cache and, under it, the mirror of every shared root it holds."""
    store = local_store(cache_dir)
    return [store, *store.mirror_stores()]


def _entries(cache_dir: str | None) -> list[Entry]:
    found = []
    for store in _stores(cache_dir):
        for folder in store.entry_dirs():
            versions = store.versions(folder)
            if versions:
                found.append(Entry(store, folder, versions))
    return found


def run_list(args: argparse.Namespace) -> int:
    entries = _entries(args.cache_dir)
    leftovers = (
        [
            (store, folder)
            for store in _stores(args.cache_dir)
            for folder in store.entry_dirs()
            if store.leftovers(folder)
        ]
        if args.show_all
        else []
    )
    if not entries and not leftovers:
        print(f"No cached exports in {local_store(args.cache_dir).root}")
        return 0
    now = datetime.now(timezone.utc)
    print(
        f"{'KEY':<20}  {'HOST':<22} {'DATASET':<24} {'FORMAT':<7} {'IMAGES':<6} {'ITEMS':>7} {'SIZE':>8} "
        f"{'AGE':>5} {'VERSIONS':>8}"
    )
    for entry in entries:
        key, current = entry.current.key, entry.current
        print(
            f"{entry.key[:20]:<20}  {entry.host[:22]:<22} {entry.dataset[:24]:<24} "
            f"{key.export_format if key else '-':<7} {_yes_no(current.images_dir is not None):<6} "
            f"{current.row_count or 0:>7} {human_size(entry.total_bytes):>8} {_age(current.created_at, now):>5} "
            f"{len(entry.versions):>8}"
        )
        if args.show_all:
            for version in entry.versions:
                state = "current" if version is current else "superseded"
                print(
                    f"    {version.version}  {state:<10} {human_size(version.total_bytes):>8} "
                    f"{_age(version.created_at, now):>5}  {version.path}"
                )
        for prepared in list_stores(entry.folder):  # always: they are often the largest thing in the cache
            size, state = f"{prepared.size or '?'}px", "complete" if prepared.complete else "partial"
            on_disk = human_size(prepared.bytes)
            print(f"    prepared {size:<7} {prepared.images:>9,} images {state:<8} {on_disk:>8}  {prepared.path}")
    for store, folder in leftovers:
        for path in store.leftovers(folder):
            print(f"    leftover  {path}")
    return 0


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def run_rm(args: argparse.Namespace) -> int:
    entries = _entries(args.cache_dir)
    if args.dataset is not None:
        chosen = [e for e in entries if e.dataset == args.dataset]
        what = f"dataset {args.dataset!r}"
    else:
        chosen = [e for e in entries if e.key.startswith(args.key)]
        what = f"key {args.key!r}"
        if len(chosen) > 1:
            raise ConfigurationError(f"{what} matches {len(chosen)} cached exports; give more of the key.")
    if not chosen:
        raise ConfigurationError(f"No cached export for {what} in {local_store(args.cache_dir).root}.")
    for entry in chosen:
        entry.store.remove(entry.folder)
        print(f"removed {entry.key} ({entry.dataset}, {len(entry.versions)} version(s))")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    entries = sorted(
        _entries(args.cache_dir), key=lambda e: e.current.created_at or datetime.min.replace(tzinfo=timezone.utc)
    )
    freed = _prune_superseded(entries) + _prune_prepared(entries)
    _prune_leftovers(_stores(args.cache_dir))
    doomed: list[Entry] = []
    if args.older_than is not None:
        cutoff = datetime.now(timezone.utc) - timedelta(days=args.older_than)
        doomed = [e for e in entries if e.current.created_at is not None and e.current.created_at < cutoff]
    elif args.max_size is not None:
        total = sum((e.current.total_bytes or 0) + e.prepared_bytes for e in entries)
        for entry in entries:  # oldest first
            if total <= args.max_size:
                break
            doomed.append(entry)
            total -= (entry.current.total_bytes or 0) + entry.prepared_bytes
    for entry in doomed:
        freed += (entry.current.total_bytes or 0) + entry.prepared_bytes
        entry.store.remove(entry.folder)
        print(f"removed {entry.key} ({entry.dataset}, {human_size(entry.current.total_bytes)})")
    print(f"pruned {len(doomed)} of {len(entries)} cached exports; freed {human_size(freed)}")
    return 0


def _prune_superseded(entries: list[Entry]) -> int:
    """Remove every version but the current one. A job may still read one: prune is the user's call."""
    freed = 0
    for entry in entries:
        for version in entry.versions[:-1]:
            entry.store.remove_version(version)
            freed += version.total_bytes or 0
            print(f"removed superseded version {version.version} of {entry.key} ({entry.dataset})")
    return freed


def _prune_prepared(entries: list[Entry]) -> int:
    """Remove the prepared-image stores of every version but the current one (as with superseded
    versions, a job may still read one: prune is the user's call)."""
    freed = 0
    for entry in entries:
        for store in list_stores(entry.folder):
            if store.version != entry.current.version:
                remove_store(store.path)
                freed += store.bytes
                print(f"removed prepared images {store.path.name} of {entry.key} ({entry.dataset})")
    return freed


def _prune_leftovers(stores: list[CacheStore]) -> None:
    """Remove what interrupted builds left, in every entry no build holds right now."""
    for store in stores:
        for folder in store.entry_dirs():
            if not store.leftovers(folder):
                continue
            try:
                with hold_lock(store.lock_path(folder), timeout_s=1.0, what=f"pruning {folder}"):
                    for path in store.remove_leftovers(folder):
                        print(f"removed leftover {path}")
            except LockTimeoutError:
                print(f"skipped {folder}: a build is running there")
