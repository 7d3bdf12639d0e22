"""The ``vl-datasets`` command line: serve the local Visual Layer service, run exports, write reports.

Each error family exits with its own code and a one-line hint; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..cache import admin as cache_admin

from .. import errors
from .._version import __version__

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


# --verbose works before or after the command; SUPPRESS keeps a subcommand from resetting it.
VERBOSE = argparse.ArgumentParser(add_help=False)
VERBOSE.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="log details and show tracebacks")


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", parents=[VERBOSE], help="run the local Visual Layer service over a folder of datasets")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, help="folder holding one folder per dataset id")
    source.add_argument("--sample", action="store_true", help="serve the sample dataset shipped with the package")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=2080)
    serve.add_argument("--storage-port", type=int, default=0, help="port of the download origin (0: any free)")
    serve.add_argument("--api-key", help="require tokens signed for this key (default: on-prem, no auth)")
    serve.add_argument("--api-secret", help="secret that signs the tokens")
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from ..server import serve

    if (args.api_key is None) != (args.api_secret is None):
        raise errors.ConfigurationError("--api-key and --api-secret go together.")
    serve(serve_root(args), host=args.host, port=args.port, storage_port=args.storage_port,
          api_key=args.api_key, api_secret=args.api_secret)
    return 0


def serve_root(args: argparse.Namespace) -> Path:
    """The folder ``serve`` serves: ``--root``, or the package's sample data for ``--sample``."""
    if not args.sample:
        if not args.root.is_dir():
            raise errors.ConfigurationError(f"--root {args.root} is not a folder.")
        return args.root
    from ..sample import SAMPLE_ROOT

    if not SAMPLE_ROOT.is_dir():  # a checkout or build that left the package data out
        raise errors.VLDatasetsError(f"The sample dataset is missing from this installation ({SAMPLE_ROOT}).")
    return SAMPLE_ROOT


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", parents=[VERBOSE], help="export a dataset into the cache (or reuse the cached copy)")
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
    from ..exports import fetch_export

    entry = fetch_export(args.dataset_id, cache_dir=args.cache_dir, export_format=args.export_format,
                         include_images=args.include_images, media_ids=args.media_ids, cluster_ids=args.cluster_ids,
                         refresh=args.refresh, offline=args.offline)
    print(entry.path)
    return 0


def _add_cache(commands: argparse._SubParsersAction) -> None:
    cache = commands.add_parser("cache", parents=[VERBOSE], help="list, remove or prune cached exports")
    actions = cache.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[VERBOSE], help="list cached exports")
    remove = actions.add_parser("rm", parents=[VERBOSE], help="remove cached exports by key or dataset")
    target = remove.add_mutually_exclusive_group(required=True)
    target.add_argument("key", nargs="?", help="the key (or a unique prefix of it) shown by 'cache list'")
    target.add_argument("--dataset", help="remove every cached export of this dataset id")
    prune = actions.add_parser("prune", parents=[VERBOSE], help="remove old exports, or the oldest until the cache fits a size")
    limit = prune.add_mutually_exclusive_group(required=True)
    limit.add_argument("--older-than", type=float, metavar="DAYS")
    limit.add_argument("--max-size", type=cache_admin.parse_size, metavar="SIZE", help="e.g. 500M, 20G")
    for parser, run in ((listing, cache_admin.run_list), (remove, cache_admin.run_rm), (prune, cache_admin.run_prune)):
        parser.add_argument("--cache-dir")
        parser.set_defaults(run=run)


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", parents=[VERBOSE], help="write an HTML report of what curation keeps and removes")
    report.add_argument("source", help="a local export (ZIP or folder), or else a dataset id to export")
    report.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    report.add_argument("--title")
    report.add_argument("--min-uniqueness", type=float, metavar="SCORE")
    report.add_argument("--keep-unscored", action="store_true", default=None,
                        help="with --min-uniqueness, keep items that have no score")
    report.add_argument("--drop-issue", dest="drop_issues", action="extend", nargs="+", default=[],
                        metavar="TYPE=CONF", help="drop items with this issue at this confidence or more")
    report.add_argument("--dedupe", nargs="?", type=float, const=True, default=False, metavar="THRESHOLD",
                        help="keep the most unique item of each duplicate group (default: the lowest threshold)")
    report.add_argument("--labels", nargs="+", metavar="LABEL", help="keep items with one of these labels")
    report.add_argument("--label-source", help="count only labels from this source")
    report.add_argument("--cache-dir")
    report.add_argument("--offline", action="store_true", default=None, help="use the cache only; no network")
    report.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from ..loading.dataset import VisualLayerDataset

    # task=None: a report needs no targets, so unlabeled exports work too; missing images are
    # counted (a "missing_images" rule in the report) instead of stopping it at the first one.
    options = {"task": None, "missing_images": "drop", "min_uniqueness": args.min_uniqueness,
               "keep_unscored": args.keep_unscored, "drop_issues": parse_drop_issues(args.drop_issues),
               "dedupe": args.dedupe, "labels": args.labels, "label_source": args.label_source}
    if Path(args.source).exists():
        dataset = VisualLayerDataset.from_export(args.source, cache_dir=args.cache_dir, **options)
    else:
        dataset = VisualLayerDataset(args.source, cache_dir=args.cache_dir, offline=args.offline, **options)
    print(dataset.report(args.out, title=args.title))
    return 0


def parse_drop_issues(values: Sequence[str]) -> dict[str, float] | None:
    """``["blur=0.8", "dark=0.9"]`` as ``{"blur": 0.8, "dark": 0.9}``; None for no value."""
    thresholds = {}
    for value in values:
        issue_type, _, confidence = value.partition("=")
        try:
            threshold = float(confidence)  # "" (no "=") fails here too
        except ValueError:
            threshold = None
        # Confidences run 0-1: a percentage ("blur=80") would otherwise silently drop nothing.
        if not issue_type.strip() or threshold is None or not 0 <= threshold <= 1:
            raise errors.ConfigurationError(f"--drop-issue takes TYPE=CONFIDENCE with a confidence from 0 to 1 "
                                            f"(e.g. blur=0.8), got {value!r}.")
        thresholds[issue_type.strip()] = threshold
    return thresholds or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vl-datasets", parents=[VERBOSE],
                                     description="Visual Layer exports for PyTorch: serve, export, cache, report.")
    parser.add_argument("--version", action="version", version=f"vl_datasets {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_export(commands)
    _add_cache(commands)
    _add_report(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
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
