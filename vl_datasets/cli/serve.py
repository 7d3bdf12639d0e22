"""``vl-datasets serve``: run the local Visual Layer service over a folder of datasets, or the sample.

The secret that verifies tokens comes from ``VL_API_SECRET`` or ``--api-secret-file``: a command
line is visible to every user of the machine (``ps``), so ``--api-secret`` is kept for old scripts
only, with a warning.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from .. import errors
from .options import local_file

SECRET_ENV = "VL_API_SECRET"
DOWNLOAD_URI_STYLES = ("relative", "absolute")
# The service's own defaults, repeated here: importing the server to read them would start no
# thread, but would load http.server and pyarrow for every `vl-datasets --help`.
DEFAULT_MAX_IMAGES_PER_EXPORT = 5_000
DEFAULT_MAX_ENTITIES_PER_EXPORT = 10_000_000
MAX_BODY_BYTES = 16 << 20


def _port(text: str) -> int:
    """A TCP port for argparse (0: any free one), whose usage line then names the bad value."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 0 to 65535")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve", parents=parents, help="run the local Visual Layer service over a folder of datasets"
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=local_file, help="folder holding one folder per dataset id")
    source.add_argument("--sample", action="store_true", help="serve the sample dataset shipped with the package")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)"
    )
    serve.add_argument(
        "--port", type=_port, default=2080, help="port of the API (default 2080; 0: any free one, printed at start)"
    )
    serve.add_argument("--storage-port", type=_port, default=0, help="port of the download origin (0: any free)")
    serve.add_argument(
        "--download-uri",
        choices=DOWNLOAD_URI_STYLES,
        default="relative",
        help="relative: the on-prem /cdn/... path (default); absolute: a presigned URL on the storage origin, "
        "as the cloud answers",
    )
    serve.add_argument(
        "--max-images-per-export",
        type=_positive,
        default=DEFAULT_MAX_IMAGES_PER_EXPORT,
        help=f"reject a larger export with images, as the platform does (default {DEFAULT_MAX_IMAGES_PER_EXPORT:,})",
    )
    serve.add_argument(
        "--max-entities-per-export",
        type=_positive,
        default=DEFAULT_MAX_ENTITIES_PER_EXPORT,
        help=f"reject a larger export without images (default {DEFAULT_MAX_ENTITIES_PER_EXPORT:,})",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=MAX_BODY_BYTES,
        help=f"answer 413 to a larger request body, a selection of too many ids (default {MAX_BODY_BYTES:,})",
    )
    serve.add_argument(
        "--index-dir",
        type=local_file,
        help="keep the columnar form of each dataset's metadata.json here, across restarts (default: a "
        "temporary folder, so each start indexes the datasets again)",
    )
    serve.add_argument(
        "--api-key",
        help=f"require tokens signed for this key (default: on-prem, no auth); the secret is read from {SECRET_ENV}",
    )
    secret = serve.add_mutually_exclusive_group()
    secret.add_argument(
        "--api-secret-file",
        type=local_file,
        help=f"file holding the secret that signs the tokens (instead of {SECRET_ENV})",
    )
    secret.add_argument(
        "--api-secret", help=f"the secret itself: visible to every user in `ps`; prefer {SECRET_ENV} or a file"
    )
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..server import serve

    secret = api_secret(args, os.environ)
    if args.index_dir is not None and args.index_dir.exists() and not args.index_dir.is_dir():
        # Found at start: found by the first export, every export answered 500.
        raise errors.ConfigurationError(f"--index-dir {args.index_dir} is not a folder.")
    for option, port in (("--port", args.port), ("--storage-port", args.storage_port)):
        if port and not _port_free(args.host, port):
            raise errors.ConfigurationError(f"{option} {port}: the port is in use on {args.host}.")
    serve(
        serve_root(args),
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        api_key=args.api_key,
        api_secret=secret,
        download_uri_style=args.download_uri,
        max_images_per_export=args.max_images_per_export,
        max_entities_per_export=args.max_entities_per_export,
        max_body_bytes=args.max_body_bytes,
        index_dir=args.index_dir,
    )
    return 0


def _port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` now (the service binds it a moment later), with
    SO_REUSEADDR as the service binds: a port left in TIME_WAIT by its last run is free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def api_secret(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The secret for ``--api-key``: ``--api-secret-file``, ``--api-secret``, then ``VL_API_SECRET``.

    None without ``--api-key`` (on-prem): a ``VL_API_SECRET`` set for a client in the same shell does
    not switch auth on. Errors name where the secret was looked for, never its value.
    """
    given = args.api_secret_file is not None or args.api_secret is not None
    if args.api_key is None:
        if given:
            raise errors.ConfigurationError("--api-secret and --api-secret-file need --api-key.")
        return None
    if args.api_secret_file is not None:
        try:
            # Only the line endings after the last line are dropped (an editor's, or a blank line
            # more): no secret ends in one, and any other character may be the secret's own.
            secret = args.api_secret_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.ConfigurationError(
                f"--api-secret-file {args.api_secret_file} cannot be read ({type(exc).__name__})."
            ) from None
        where = f"--api-secret-file {args.api_secret_file}"
    elif args.api_secret is not None:
        print(
            f"warning: --api-secret shows the secret to every user of this machine; set {SECRET_ENV} "
            "or use --api-secret-file instead.",
            file=sys.stderr,
        )
        secret, where = args.api_secret, "--api-secret"
    else:
        secret, where = environ.get(SECRET_ENV, ""), SECRET_ENV
    if not secret:
        raise errors.ConfigurationError(
            f"--api-key needs a secret: set {SECRET_ENV}, or pass --api-secret-file (found none in {where})."
        )
    return secret


def serve_root(args: argparse.Namespace) -> Path:
    """The folder ``serve`` serves: ``--root``, or the package's sample data for ``--sample``."""
    if not args.sample:
        if not args.root.is_dir():
            raise errors.ConfigurationError(f"--root {args.root} is not a folder.")
        return Path(args.root)
    from .. import sample

    if not sample.SAMPLE_ROOT.is_dir():  # a checkout or build that left the package data out
        raise errors.VLDatasetsError(f"The sample dataset is missing from this installation ({sample.SAMPLE_ROOT}).")
    return sample.SAMPLE_ROOT
