"""The options several commands share, worded once: where the API is, where the cache is, offline.

``client_for`` turns ``--api-url`` into the client the command exports with, so the flag wins over
``VL_API_URL`` the same way a ``Client(base_url)`` argument does in Python.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..api.client import Client
    from ..loading.dataset import VisualLayerDataset


def add_api_options(parser: argparse.ArgumentParser, *, for_dataset_id: bool = False) -> None:
    """``--api-url``, ``--cache-dir`` and ``--offline``, for a command that may export a dataset."""
    when = " (for a dataset id)" if for_dataset_id else ""
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help=f"the Visual Layer API to export from{when}, e.g. http://127.0.0.1:2080 for `vl-datasets serve`; "
        "overrides VL_API_URL (default: VL_API_URL, else the Visual Layer cloud)",
    )
    add_cache_dir(parser)
    parser.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="use the cache only, no network call (default: VL_DATASETS_OFFLINE, else off)",
    )


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir``: the one wording of where the cache lives."""
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help=(
            "the cache root, a folder or an fsspec URL (default: VL_DATASETS_CACHE, else "
            "$XDG_CACHE_HOME/vl_datasets or ~/.cache/vl_datasets)"
        ),
    )


def client_for(args: argparse.Namespace) -> Client | None:
    """A client of ``--api-url`` (credentials still from ``VL_API_*``), or None to let the library
    build one from the environment when, and only if, it must make a call."""
    if not args.api_url:
        return None
    from ..api.client import Client
    from ..config import normalize_base_url
    from ..errors import ConfigurationError

    try:
        normalize_base_url(args.api_url)  # checked here, so that its error names the flag
    except ConfigurationError as exc:
        raise ConfigurationError(f"--api-url: {exc}") from None
    return Client(args.api_url)


def add_curation_options(parser: argparse.ArgumentParser) -> None:
    """The curation rules every command that curates takes, worded once."""
    parser.add_argument(
        "--min-uniqueness", type=float, metavar="SCORE", help="drop items whose uniqueness score is below SCORE (0-1)"
    )
    parser.add_argument(
        "--drop-issue",
        dest="drop_issues",
        action="extend",
        nargs="+",
        default=[],
        metavar="TYPE=CONF",
        help="drop items with this issue at this confidence (0-1) or more, e.g. blur=0.8 mislabels=0.6",
    )
    parser.add_argument(
        "--dedupe",
        nargs="?",
        type=float,
        const=True,
        default=False,
        metavar="THRESHOLD",
        help="keep the most unique item of each duplicate group (default: the lowest threshold)",
    )
    parser.add_argument("--label-source", help="count only labels from this source")


def add_source(parser: argparse.ArgumentParser) -> None:
    """The ``SOURCE`` argument that ``open_dataset`` opens."""
    parser.add_argument("source", help="a local export (ZIP or folder), or else a dataset id to export")


def open_dataset(args: argparse.Namespace, **options: Any) -> VisualLayerDataset:
    """``args.source`` as a dataset: a local export (ZIP or folder) when that path exists or is
    spelled as a path, else a dataset id exported through ``--api-url`` (or ``VL_API_URL``)."""
    from ..loading.dataset import VisualLayerDataset

    if Path(args.source).exists() or _spelled_as_path(args.source):
        _check_local_source(args.source)
        return VisualLayerDataset.from_export(args.source, cache_dir=args.cache_dir, **options)
    return VisualLayerDataset(
        args.source, client=client_for(args), cache_dir=args.cache_dir, offline=args.offline, **options
    )


def _spelled_as_path(source: str) -> bool:
    """Whether ``source`` can only be a path: a folder separator, or an archive's suffix. (A dataset
    id is a UUID: taken for one, a mistyped path cost the API's retries, then 'cannot be reached'.)"""
    return "/" in source or os.sep in source or source.lower().endswith(".zip")


def _check_local_source(source: str) -> None:
    """Refuse a ``source`` spelled as a local path that names nothing, as a usage error: found by
    ``from_export``, it exited 1 like a damaged export. A URL is left to ``from_export``."""
    from ..config import is_remote, local_folder
    from ..errors import ConfigurationError

    if is_remote(source):
        return
    path = local_folder("source", source)
    if not path.exists():
        raise ConfigurationError(
            f"No export at {path}: source {source!r} names no ZIP file or export folder "
            "(a dataset id has no '/' and no .zip suffix)."
        )


def check_input(path: Path, option: str) -> None:
    """Refuse ``option``'s input ``path`` when it names no file: found later by the reader, it was
    told as a fault in the file's contents (exit 1), after the export was opened for nothing."""
    from ..errors import ConfigurationError

    if _is_dir(path, option):
        raise ConfigurationError(f"{option} {path}: is a folder; give the path of the file to read.")
    if not path.is_file():
        raise ConfigurationError(f"{option} {path}: no such file.")


def _is_dir(path: Path, option: str) -> bool:
    """Whether ``path`` is a folder; a path the system refuses to look up (a name too long for it:
    ENAMETOOLONG, which ``Path.is_dir`` raises) is a ConfigurationError naming ``option``."""
    from ..errors import ConfigurationError

    try:
        return path.is_dir()
    except OSError as exc:
        raise ConfigurationError(f"{option} {path}: not a usable path: {exc.strerror or exc}") from None


def local_file(text: str) -> Path:
    """An argparse type for a local file's path: ``~`` expanded as the shell does for an unquoted
    one (it wrote ``./~/r.html``), and a URL refused (it wrote ``./file:/tmp/r.html``)."""
    from ..config import is_remote

    if is_remote(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a URL; give a path on this machine")
    return Path(text).expanduser()


def check_output(path: Path | None, option: str) -> None:
    """Refuse ``option``'s output ``path`` before the work that fills it: a folder given as the
    file, or a folder for it that is a file or cannot be created, would fail only after it."""
    from ..errors import ConfigurationError

    if path is None:
        return
    if _is_dir(path, option):
        raise ConfigurationError(f"{option} {path}: is a folder; give the path of the file to write.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # made now rather than after the work anyway
    except OSError as exc:
        raise ConfigurationError(f"{option} {path}: cannot create its folder: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigurationError(f"{option} {path}: its folder {path.parent} is not writable.")


def check_distinct_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Refuse an output (option -> path) naming the same file as an input or another output:
    written once the work is done, it overwrote that file (the user's predictions, say), exit 0."""
    from ..errors import ConfigurationError

    taken = {path.resolve(): option for option, path in inputs.items() if path is not None}
    for option, path in outputs.items():
        if path is None:
            continue
        other = taken.setdefault(path.resolve(), option)
        if other != option:
            raise ConfigurationError(f"{option} {path}: is the file {other} names; writing it would overwrite it.")
