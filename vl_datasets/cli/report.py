"""``vl-datasets report``: write the HTML curation report of a local export or a dataset id."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import errors
from .options import add_api_options, add_curation_options, add_source, check_output, local_file, open_dataset


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report", parents=parents, help="write an HTML report of what curation keeps and removes"
    )
    add_source(report)
    report.add_argument("--out", type=local_file, required=True, help="the HTML file to write")
    report.add_argument("--title", help="the report's heading (default: 'Curation report: ' and the dataset)")
    report.add_argument(
        "--keep-unscored",
        action="store_true",
        default=None,
        help="with --min-uniqueness, keep items that have no score",
    )
    report.add_argument("--labels", nargs="+", metavar="LABEL", help="keep items with one of these labels")
    add_curation_options(report)
    add_api_options(report, for_dataset_id=True)
    report.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
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
    check_output(args.out, "--out")  # before an export or a curation that may take minutes
    dataset = open_dataset(args, **options)
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
