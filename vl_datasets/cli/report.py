"""``vl-datasets report``: write the HTML curation report of a local export or a dataset id."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .. import errors
from .options import add_api_options, client_for


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report", parents=parents, help="write an HTML report of what curation keeps and removes"
    )
    report.add_argument("source", help="a local export (ZIP or folder), or else a dataset id to export")
    report.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    report.add_argument("--title", help="the report's heading (default: 'Curation report: ' and the dataset)")
    report.add_argument(
        "--min-uniqueness", type=float, metavar="SCORE", help="drop items whose uniqueness score is below SCORE (0-1)"
    )
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
        help="drop items with this issue at this confidence (0-1) or more, e.g. blur=0.8 mislabels=0.6",
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
    add_api_options(report, for_dataset_id=True)
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
        dataset = VisualLayerDataset(
            args.source, client=client_for(args), cache_dir=args.cache_dir, offline=args.offline, **options
        )
    print(dataset.report(args.out, title=args.title))
    return 0


def parse_drop_issues(values: Sequence[str]) -> dict[str, float] | None:
    """``["blur=0.8", "dark=0.9"]`` as ``{"blur": 0.8, "dark": 0.9}``; None for no value.

    Checked before anything is exported, so a typo fails in a second rather than after the download.
    """
    from ..metadata.curation import KNOWN_ISSUE_TYPES

    known = ", ".join(sorted(KNOWN_ISSUE_TYPES))
    thresholds = {}
    for value in values:
        issue_type, _, confidence = (part.strip() for part in value.partition("="))
        try:
            threshold = float(confidence)  # "" (no "=") fails here too
        except ValueError:
            threshold = None
        # Confidences run 0-1: a percentage ("blur=80") would otherwise silently drop nothing.
        if not issue_type or threshold is None or not 0 <= threshold <= 1:
            raise errors.ConfigurationError(
                f"--drop-issue takes TYPE=CONFIDENCE with a confidence from 0 to 1 (e.g. blur=0.8), got {value!r}; "
                f"the issue types are {known}."
            )
        if issue_type not in KNOWN_ISSUE_TYPES:
            raise errors.ConfigurationError(
                f"--drop-issue names an unknown issue type {issue_type!r}; the issue types are {known}."
            )
        thresholds[issue_type] = threshold
    return thresholds or None
