"""``vl-datasets report``: write the HTML curation report of a local export or a dataset id."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .. import errors


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report", parents=parents, help="write an HTML report of what curation keeps and removes"
    )
    report.add_argument("source", help="a local export (ZIP or folder), or else a dataset id to export")
    report.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    report.add_argument("--title")
    report.add_argument("--min-uniqueness", type=float, metavar="SCORE")
    report.add_argument(
        "--keep-unscored",
        action="store_true",
        default=None,
        help="with --min-uniqueness, keep items that have no score",
    )
    report.add_argument(
        "--drop-issue",
        dest="drop_issues",
        action="extend",
        nargs="+",
        default=[],
        metavar="TYPE=CONF",
        help="drop items with this issue at this confidence or more",
    )
    report.add_argument(
        "--dedupe",
        nargs="?",
        type=float,
        const=True,
        default=False,
        metavar="THRESHOLD",
        help="keep the most unique item of each duplicate group (default: the lowest threshold)",
    )
    report.add_argument("--labels", nargs="+", metavar="LABEL", help="keep items with one of these labels")
    report.add_argument("--label-source", help="count only labels from this source")
    report.add_argument("--cache-dir")
    report.add_argument("--offline", action="store_true", default=None, help="use the cache only; no network")
    report.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from ..loading.dataset import VisualLayerDataset

    # task=None: a report needs no targets, so unlabeled exports work too; missing images are
    # counted (a "missing_images" rule in the report) instead of stopping it at the first one.
    options = {
        "task": None,
        "missing_images": "drop",
        "min_uniqueness": args.min_uniqueness,
        "keep_unscored": args.keep_unscored,
        "drop_issues": parse_drop_issues(args.drop_issues),
        "dedupe": args.dedupe,
        "labels": args.labels,
        "label_source": args.label_source,
    }
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
            raise errors.ConfigurationError(
                f"--drop-issue takes TYPE=CONFIDENCE with a confidence from 0 to 1 (e.g. blur=0.8), got {value!r}."
            )
        thresholds[issue_type.strip()] = threshold
    return thresholds or None
