"""``vl-datasets serve``: run the local Visual Layer service over a folder of datasets, or the sample."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import errors


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve", parents=parents, help="run the local Visual Layer service over a folder of datasets"
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, help="folder holding one folder per dataset id")
    source.add_argument("--sample", action="store_true", help="serve the sample dataset shipped with the package")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=2080)
    serve.add_argument("--storage-port", type=int, default=0, help="port of the download origin (0: any free)")
    serve.add_argument("--api-key", help="require tokens signed for this key (default: on-prem, no auth)")
    serve.add_argument("--api-secret", help="secret that signs the tokens")
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..server import serve

    if (args.api_key is None) != (args.api_secret is None):
        raise errors.ConfigurationError("--api-key and --api-secret go together.")
    serve(
        serve_root(args),
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        api_key=args.api_key,
        api_secret=args.api_secret,
    )
    return 0


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
