"""``vl-datasets``: the parser, and the one place that turns an exception into an exit code.

Each error family exits with its own code and a one-line hint; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from .. import errors
from .._version import __version__
from ..redaction import redact_text
from . import cache, evaluate, export, prepare, report, serve

# One exit code per error family, so scripts can branch on what went wrong.
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (errors.AuthenticationError, 3, "check VL_API_KEY / VL_API_SECRET (or VL_API_TOKEN)"),
    (errors.PermissionDeniedError, 3, "these credentials may not access this dataset"),
    (errors.DatasetNotFoundError, 4, "check the dataset id and the API URL (VL_API_URL)"),
    (errors.DatasetNotReadyError, 5, "wait until the dataset is READY on Visual Layer"),
    (errors.ExportTaskNotFoundError, 6, "the server no longer knows this export task; run the command again"),
    (errors.ExportFailedError, 6, "the export failed on the server; see its message"),
    (errors.ExportTimeoutError, 6, "the export is still running; run the command again to resume waiting"),
    (errors.CacheMissError, 7, "run once without --offline to fill the cache"),
    (errors.APIConnectionError, 8, "the API cannot be reached; check the URL and network"),
    (errors.ConfigurationError, 2, "check the command's arguments and VL_* environment variables"),
    (errors.RemoteCacheError, 1, "check the shared cache URL and its storage's credentials (AWS_*, a profile)"),
    (errors.ExportNotFoundError, 2, "give a ZIP, or the folder holding metadata.parquet or metadata.json"),
    (errors.CorruptArchiveError, 1, "the archive is damaged: download or export it again"),
    (errors.UnsafeArchiveError, 1, "the archive was refused before anything was unpacked; export it again"),
    (errors.PredictionsError, 1, "the predictions do not fit the dataset; the message names the row and media id"),
    (errors.SchemaError, 1, "the export's metadata breaks the contract; the message names the item and field"),
    (errors.VLDatasetsError, 1, ""),
]
# What each code means, for --help: the families above, grouped as a script branches on them.
EXIT_CODE_MEANINGS = {
    0: "success",
    1: "anything else (a damaged or refused archive, metadata that breaks the contract, ...)",
    2: "bad arguments or VL_* settings",
    3: "authentication or permission",
    4: "dataset not found",
    5: "dataset not ready",
    6: "export failed or timed out (or its task unknown to the server)",
    7: "cache miss while offline",
    8: "API unreachable",
    130: "interrupted (Ctrl-C)",
}


def exit_code_for(exc: BaseException) -> tuple[int, str]:
    """The exit code and hint for an exception (1 and no hint when unknown)."""
    for cls, code, hint in EXIT_CODES:
        if isinstance(exc, cls):
            return code, hint
    return 1, ""


_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR}


def _cache_option(args: argparse.Namespace, filename: str) -> str:
    """The setting naming the cache that ``filename`` lies in, or is a folder above ("--cache-dir",
    "VL_DATASETS_CACHE", or the default cache folder), or "" when it is elsewhere."""
    from pathlib import Path

    from ..config import is_remote, resolve_cache_dir

    root = resolve_cache_dir(getattr(args, "cache_dir", None))
    if is_remote(root):
        return ""
    path, root_path = Path(os.fspath(filename)), Path(root).expanduser().absolute()
    if not (path.is_relative_to(root_path) or root_path.is_relative_to(path)):  # in it, or a folder made for it
        return ""
    if getattr(args, "cache_dir", None):
        return "--cache-dir"
    return "VL_DATASETS_CACHE" if os.environ.get("VL_DATASETS_CACHE") else f"the default cache folder {root}"


def build_parser() -> argparse.ArgumentParser:
    # --verbose works before or after the command; SUPPRESS keeps a subcommand from resetting it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log details and show tracebacks"
    )
    parser = argparse.ArgumentParser(
        prog="vl-datasets",
        parents=[verbose],
        description="Visual Layer exports for PyTorch: serve, export, cache, prepare, report.",
        epilog="exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vl_datasets {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (serve, export, cache, prepare, report, evaluate):
        group.add_commands(commands, parents=[verbose])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except errors.VLDatasetsError as exc:
        code, hint = exit_code_for(exc)
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)
        return code
    except OSError as exc:
        if exc.filename is None:  # not about a file of ours: a fault to see whole
            raise
        # A folder that cannot be created or written (a cache on a read-only mount, under /proc):
        # the system's own words name the file, and a traceback adds nothing but noise.
        if args.verbose:
            traceback.print_exc()
        filename = redact_text(os.fsdecode(exc.filename))
        print(f"error: {exc.strerror or exc}: {filename}", file=sys.stderr)
        # A full disk, say, is no fault of the setting: only a folder it cannot make or write is.
        where = _cache_option(args, filename) if exc.errno in _NOT_WRITABLE else ""
        if where:
            print(f"hint: {where} must be a folder this user can create and write", file=sys.stderr)
            return 2
        return 1
