"""The ``vl-datasets`` command line: serve the local Visual Layer service, run exports.

Each error family exits with its own code and a one-line hint; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
import zipfile
from collections.abc import Sequence
from pathlib import Path

from . import cache_admin, errors
from ._version import __version__

# One exit code per error family, so scripts can branch on what went wrong.
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (errors.AuthenticationError, 3, "check VL_API_KEY / VL_API_SECRET (or VL_API_TOKEN)"),
    (errors.PermissionDeniedError, 3, "these credentials may not access this dataset"),
    (errors.DatasetNotFoundError, 4, "check the dataset id and the API URL (VL_API_URL)"),
    (errors.DatasetNotReadyError, 5, "wait until the dataset is READY on Visual Layer"),
    (errors.ExportFailedError, 6, "the export failed on the server; see its message"),
    (errors.ExportTimeoutError, 6, "the export is still running; run the command again to resume waiting"),
    (errors.CacheMissError, 7, "run once without --offline to fill the cache"),
    (errors.APIConnectionError, 8, "the API cannot be reached; check the URL and network"),
    (errors.ConfigurationError, 2, "check the command's arguments and VL_* environment variables"),
    (errors.VLDatasetsError, 1, ""),
]


def exit_code_for(exc: BaseException) -> tuple[int, str]:
    """The exit code and hint for an exception (1 and no hint when unknown)."""
    for cls, code, hint in EXIT_CODES:
        if isinstance(exc, cls):
            return code, hint
    return 1, ""


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the local Visual Layer service over a folder of datasets")
    serve.add_argument("--root", type=Path, required=True, help="folder holding one folder per dataset id")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=2080)
    serve.add_argument("--storage-port", type=int, default=0, help="port of the download origin (0: any free)")
    serve.add_argument("--api-key", help="require tokens signed for this key (default: on-prem, no auth)")
    serve.add_argument("--api-secret", help="secret that signs the tokens")
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from .server import serve

    if (args.api_key is None) != (args.api_secret is None):
        raise errors.ConfigurationError("--api-key and --api-secret go together.")
    serve(args.root, host=args.host, port=args.port, storage_port=args.storage_port,
          api_key=args.api_key, api_secret=args.api_secret)
    return 0


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="export a sample dataset from an embedded local service, end to end")
    demo.add_argument("--format", dest="export_format", choices=("parquet", "json"), default="parquet")
    demo.add_argument("--items", type=int, default=24, help="number of sample images")
    demo.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .client import Client
    from .server import LocalVisualLayer, write_dataset

    with tempfile.TemporaryDirectory(prefix="vl_datasets_demo_") as tmp:
        root = Path(tmp) / "datasets"
        write_dataset(root, "sample", n_items=args.items)
        with LocalVisualLayer(root) as service, Client(service.url) as client:
            print(f"Local Visual Layer service at {service.url}")
            info = client.get_dataset("sample")
            print(f"Dataset {info.id!r}: {info.status}, {info.n_images} images")
            task = client.start_export("sample", export_format=args.export_format, include_images=True)
            task = client.wait_for_export("sample", task.id)
            archive = client.download_export(task, Path(tmp) / "export.zip")
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
            images = sum(1 for n in names if n.startswith("images/"))
            metadata = [n for n in names if n.startswith("metadata.")]
            print(f"Export {task.id}: {task.entities_count} items, {archive.stat().st_size:,} bytes, "
                  f"{metadata[0] if metadata else 'no metadata'} + {images} images")
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a dataset into the cache (or reuse the cached copy)")
    export.add_argument("dataset_id")
    export.add_argument("--format", dest="export_format", choices=("parquet", "json"), default="parquet")
    export.add_argument("--no-images", dest="include_images", action="store_false")
    selection = export.add_mutually_exclusive_group()
    selection.add_argument("--media-ids", nargs="+", metavar="ID")
    selection.add_argument("--cluster-ids", nargs="+", metavar="ID")
    export.add_argument("--cache-dir")
    export.add_argument("--refresh", action="store_true", help="start a new export even if one is cached")
    export.add_argument("--offline", action="store_true", default=None, help="use the cache only; no network")
    export.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .fetch import fetch_export

    entry = fetch_export(args.dataset_id, cache_dir=args.cache_dir, export_format=args.export_format,
                         include_images=args.include_images, media_ids=args.media_ids, cluster_ids=args.cluster_ids,
                         refresh=args.refresh, offline=args.offline)
    print(entry.path)
    return 0


def _add_cache(commands: argparse._SubParsersAction) -> None:
    cache = commands.add_parser("cache", help="list, remove or prune cached exports")
    actions = cache.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list cached exports")
    remove = actions.add_parser("rm", help="remove cached exports by key or dataset")
    target = remove.add_mutually_exclusive_group(required=True)
    target.add_argument("key", nargs="?", help="the key (or a unique prefix of it) shown by 'cache list'")
    target.add_argument("--dataset", help="remove every cached export of this dataset id")
    prune = actions.add_parser("prune", help="remove old exports, or the oldest until the cache fits a size")
    limit = prune.add_mutually_exclusive_group(required=True)
    limit.add_argument("--older-than", type=float, metavar="DAYS")
    limit.add_argument("--max-size", type=cache_admin.parse_size, metavar="SIZE", help="e.g. 500M, 20G")
    for parser, run in ((listing, cache_admin.run_list), (remove, cache_admin.run_rm), (prune, cache_admin.run_prune)):
        parser.add_argument("--cache-dir")
        parser.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vl-datasets", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vl_datasets {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_demo(commands)
    _add_export(commands)
    _add_cache(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except errors.VLDatasetsError as exc:
        code, hint = exit_code_for(exc)
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)
        return code
