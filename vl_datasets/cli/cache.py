"""``vl-datasets cache list | rm | prune``: look after the cache, its mirrors and opened exports included."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from ..cache.scan import CacheInfo, EntryInfo, PrunePolicy, PruneResult, Removal, prune, remove_entry, scan
from ..config import parse_size
from ..errors import ConfigurationError
from .options import add_cache_dir


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
    limit.add_argument(
        "--older-than", type=float, metavar="DAYS", help="also remove exports not made or opened in DAYS days"
    )
    limit.add_argument(
        "--max-size",
        type=_size,
        metavar="SIZE",
        help="also remove the oldest exports and image-cache files until the cache fits in SIZE (e.g. 500M, 20G)",
    )
    for parser, run in ((listing, run_list), (remove, run_rm), (prune, run_prune)):
        add_cache_dir(parser)
        parser.set_defaults(run=run)


def _size(text: str) -> int:
    """``parse_size`` for argparse, whose usage line names the bad value."""
    try:
        return parse_size(text)
    except ConfigurationError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 500M or 20G") from None


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


def run_list(args: argparse.Namespace) -> int:
    info = scan(args.cache_dir)
    leftovers = info.leftovers if args.show_all else ()
    if not info.entries and not leftovers and not info.node_areas:
        print(f"No cached exports in {info.root}")
        return 0
    now = datetime.now(timezone.utc)
    if info.entries:
        print(
            f"{'KEY':<20}  {'HOST':<22} {'DATASET':<24} {'FORMAT':<7} {'IMAGES':<6} {'ITEMS':>7} {'SIZE':>8} "
            f"{'AGE':>5} {'VERSIONS':>8}"
        )
    for entry in info.entries:
        _print_entry(entry, now, show_all=args.show_all)
    for leftover in leftovers:
        print(f"    leftover  {leftover.path}")
    for area in info.node_areas:  # always: an image cache can be as large as the exports
        print(f"image cache {area.nb_files:>9,} files {human_size(area.size_on_disk):>8}  {area.path}")
    return 0


def _print_entry(entry: EntryInfo, now: datetime, *, show_all: bool) -> None:
    current = entry.current
    print(
        f"{entry.key[:20]:<20}  {entry.host[:22]:<22} {entry.dataset[:24]:<24} "
        f"{entry.export_format or '-':<7} {_yes_no(current.export.images_dir is not None):<6} "
        f"{current.export.row_count or 0:>7} {human_size(sum(v.size_on_disk for v in entry.versions)):>8} "
        f"{_age(current.created_at, now):>5} {len(entry.versions):>8}"
    )
    if show_all:
        for version in entry.versions:
            state = "current" if version.current else "superseded"
            print(
                f"    {version.version}  {state:<10} {human_size(version.size_on_disk):>8} "
                f"{_age(version.created_at, now):>5}  {version.path}"
            )
    for derived in entry.derived:  # always: they are often the largest thing in the cache
        size = f"{derived.settings['size']}px" if derived.settings.get("size") else "-"
        count = f"{derived.items:>9,}" if derived.items is not None else f"{'?':>9}"
        state = "complete" if derived.complete else "partial"
        print(
            f"    {derived.kind} {size:<7} {count} {derived.items_what or 'items'} {state:<8} "
            f"{human_size(derived.size_on_disk):>8}  {derived.path}"
        )


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def run_rm(args: argparse.Namespace) -> int:
    info = scan(args.cache_dir)
    if args.dataset is not None:
        chosen = [e for e in info.entries if e.dataset == args.dataset]
        what = f"dataset {args.dataset!r}"
    else:
        if not args.key.strip():  # "" is a prefix of every key: an unset "$KEY" must not pick one
            raise ConfigurationError(
                "The key to remove is empty: give the key (or a prefix of it) that 'cache list' shows."
            )
        chosen = [e for e in info.entries if e.key.startswith(args.key)]
        what = f"key {args.key!r}"
        if len(chosen) > 1:
            raise ConfigurationError(f"{what} matches {len(chosen)} cached exports; give more of the key.")
    if not chosen:
        raise ConfigurationError(f"No cached export for {what} in {info.root}.")
    for entry in chosen:
        remove_entry(entry)
        print(f"removed {entry.key} ({entry.dataset}, {len(entry.versions)} version(s))")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    info: CacheInfo = scan(args.cache_dir)
    result = prune(info, PrunePolicy(older_than_days=args.older_than, max_size=args.max_size))
    _print_pruned(result)
    return 0


def _print_pruned(result: PruneResult) -> None:
    for removal in result.removed:
        print(_describe(removal))
    for removal, why in zip(result.skipped, result.skipped_why, strict=True):
        what = removal.leftover.entry_dir if removal.leftover else _describe(removal).removeprefix("removed ")
        print(f"skipped {what}: {why}")
    print(
        f"pruned {result.entries_removed} of {result.entries_scanned} cached exports; "
        f"freed {human_size(result.freed_bytes)}"
    )


def _describe(removal: Removal) -> str:
    entry = removal.entry
    of = f"of {entry.key} ({entry.dataset})" if entry is not None else ""
    if removal.what == "version" and removal.version is not None:
        return f"removed superseded version {removal.version.version} {of}"
    if removal.what == "derived store":
        kind = "prepared images" if removal.path.parent.name == "prepared" else removal.path.parent.name
        return f"removed {kind} {removal.path.name} {of}"
    if removal.what == "entry" and entry is not None:
        return f"removed {entry.key} ({entry.dataset}, {human_size(removal.size_on_disk)})"
    if removal.what == "image files":
        return f"trimmed image cache {removal.path}: {len(removal.files):,} files, {human_size(removal.size_on_disk)}"
    return f"removed {removal.what} {removal.path}"
