"""``vl-datasets export``: fetch an export into the cache (or reuse the cached copy) and print its folder."""

from __future__ import annotations

import argparse

from ..records import EXPORT_FORMATS
from .options import add_api_options, client_for


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "export", parents=parents, help="export a dataset into the cache (or reuse the cached copy)"
    )
    export.add_argument("dataset_id", help="the dataset's id on Visual Layer (the one in its URL)")
    export.add_argument(
        "--format",
        dest="export_format",
        choices=EXPORT_FORMATS,
        default="parquet",
        help="the metadata's format (default: parquet)",
    )
    export.add_argument(
        "--no-images", dest="include_images", action="store_false", help="export the metadata alone, without images"
    )
    selection = export.add_mutually_exclusive_group()
    selection.add_argument("--media-ids", nargs="+", metavar="ID", help="export only these media items")
    selection.add_argument("--cluster-ids", nargs="+", metavar="ID", help="export only the items of these clusters")
    export.add_argument(
        "--refresh",
        action="store_true",
        help="start a new export even if one is cached (the cached version stays until pruned)",
    )
    export.add_argument(
        "--max-images-per-export",
        type=int,
        metavar="N",
        help="export images in chunks of at most N from the start (default: only when the platform rejects one)",
    )
    add_api_options(export)
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..exports import fetch_export

    entry = fetch_export(
        args.dataset_id,
        client=client_for(args),
        cache_dir=args.cache_dir,
        export_format=args.export_format,
        include_images=args.include_images,
        media_ids=args.media_ids,
        cluster_ids=args.cluster_ids,
        refresh=args.refresh,
        offline=args.offline,
        max_images_per_export=args.max_images_per_export,
    )
    print(entry.path)
    return 0
