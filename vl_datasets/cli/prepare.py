"""``vl-datasets prepare``: decode a dataset's images once into its prepared-image store, as
``VisualLayerDataset(..., prepare=S).prepare()`` does, so training reads them from there."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from .cache import _size
from .options import add_api_options, add_source, open_dataset


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    prepare = commands.add_parser(
        "prepare", parents=parents, help="decode the images once, shrunk to a size, into the cache for fast epochs"
    )
    add_source(prepare)
    prepare.add_argument(
        "--size",
        type=int,
        required=True,
        metavar="S",
        help="the shorter side in pixels, as the training job's prepare=S (images are never enlarged)",
    )
    prepare.add_argument("--images-root", help="read the images from here (a folder or an fsspec URL), as images_root=")
    prepare.add_argument(
        "--to",
        metavar="URL",
        help="build the store once for a whole cluster and publish it under this fsspec URL (s3://bucket/prefix, "
        "...), as prepared_root=; every rank of a torchrun job takes a share",
    )
    prepare.add_argument(
        "--storage-option",
        action="append",
        default=[],
        type=_storage_option,
        metavar="KEY=VALUE",
        help="an fsspec option of --to (and of an --images-root URL), e.g. endpoint_url=http://host:9000; "
        "a JSON value (true, 3, {...}) is taken as such; repeat for more",
    )
    prepare.add_argument(
        "--shard-size",
        type=_size,
        metavar="SIZE",
        help="with --to: the pixels each shard file holds (default 64M; a larger image gets a shard of its own)",
    )
    prepare.add_argument(
        "--share-images",
        type=int,
        metavar="N",
        help="with --to: images per share, the unit a rank builds and a resumed build redoes (default 8192)",
    )
    prepare.add_argument(
        "--workers", type=int, metavar="N", help="processes (default: one per core, shared among a node's ranks)"
    )
    prepare.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an unreadable image fails the command (after the others are prepared), or is listed and skipped",
    )
    add_api_options(prepare, for_dataset_id=True)
    prepare.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from .cache import human_size

    # task=None: preparing needs no targets, so unlabeled exports work too; every item with an
    # image is prepared, so any curation of this export version later finds its images there.
    options = {
        "task": None,
        "missing_images": "drop",
        "on_error": args.on_error,
        "images_root": args.images_root,
        "prepare": args.size,
        "prepared_root": args.to,
        "storage_options": dict(args.storage_option) or None,
    }
    shared = {"shard_bytes": args.shard_size, "share_images": args.share_images}
    with _without_no_store_yet():  # it is this command's job to build it
        dataset = open_dataset(args, **options)
    summary = dataset.prepare(num_workers=args.workers, **{k: v for k, v in shared.items() if v is not None})
    missing = dataset.curation_summary().removed_by.get("missing_images", 0)
    for skipped in summary.skipped:
        print(f"skipped {skipped.media_id}: {skipped.reason}")
    print(
        f"{summary.images:,} images at {args.size}px ({summary.prepared:,} prepared now, {len(summary.skipped):,} "
        f"skipped, {missing:,} without an image), {human_size(summary.bytes_on_disk)} in {summary.store}"
    )
    return 0


@contextlib.contextmanager
def _without_no_store_yet() -> Iterator[None]:
    from ..loading.shared_source import NO_STORE_YET

    def keep(record: logging.LogRecord) -> bool:
        return not getattr(record, NO_STORE_YET, False)

    logger = logging.getLogger("vl_datasets")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as an fsspec option: the value as JSON when it parses, else as the text it is."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError("a storage option is KEY=VALUE")  # never echoed: it may be a secret
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
