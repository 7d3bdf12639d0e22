"""``vl-datasets evaluate``: score a predictions file against a dataset and what Visual Layer knows."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .options import add_api_options, add_curation_options, add_source, open_dataset
from .report import parse_drop_issues


def add_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        parents=parents,
        help="score model predictions per class, issue, uniqueness, duplicate group, cluster and curation",
    )
    add_source(evaluate)
    evaluate.add_argument(
        "--predictions",
        type=Path,
        required=True,
        help="a CSV or Parquet file: media_id, prediction (a class name) and an optional score (0-1)",
    )
    evaluate.add_argument("--out", type=Path, help="write the HTML evaluation report here")
    evaluate.add_argument(
        "--label-errors", type=Path, metavar="FILE", help="write the suspected label errors' media ids here, one a line"
    )
    evaluate.add_argument(
        "--train-ids", type=Path, metavar="FILE", help="media ids the model was trained on, one a line: checks leakage"
    )
    evaluate.add_argument(
        "--min-confidence",
        type=float,
        default=0.5,
        help="a disagreement with the label counts as a suspected label error from this confidence (default 0.5)",
    )
    evaluate.add_argument(
        "--title", help="the report's title (default: Evaluation: and the dataset id or export folder)"
    )
    add_curation_options(evaluate)  # the rules that made the kept part: removed items are scored apart
    add_api_options(evaluate, for_dataset_id=True)
    evaluate.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate, read_media_ids

    # Items without exactly one label are kept out of training, not out of the evaluation: their
    # predictions are listed but not scored.
    options = {
        "invalid_labels": "drop",
        "missing_images": "drop",
        "min_uniqueness": args.min_uniqueness,
        "keep_unscored": True if args.min_uniqueness is not None else None,
        "drop_issues": parse_drop_issues(args.drop_issues),
        "dedupe": args.dedupe,
        "label_source": args.label_source,
    }
    dataset = open_dataset(args, **options)
    train_ids = read_media_ids(args.train_ids) if args.train_ids else None
    result = evaluate(
        dataset, args.predictions, train_ids=train_ids, min_confidence=args.min_confidence, title=args.title
    )
    print(summary_text(result))
    if args.label_errors:
        print(f"suspected label errors: {result.write_label_errors(args.label_errors)}")
    if args.out:
        print(f"report: {result.write_report(args.out)}")
    return 0


def summary_text(result) -> str:
    """The lines the command prints: accuracy, the kept/removed split, leaks, label errors."""
    low, high = result.accuracy_interval()
    lines = [f"{result.items:,} items scored; accuracy {_pct(result.accuracy)} (95% CI {_pct(low)}-{_pct(high)})"]
    for row in result.slices["curation"].to_pylist():
        lines.append(f"  {row['value']}: {row['items']:,} items, accuracy {_pct(row['accuracy'])}")
    if result.leakage is not None:
        leakage = result.leakage
        without = _pct(leakage.accuracy_without_leaks)
        lines.append(
            f"{leakage.leaked_items:,} items share a group with a training item "
            f"({leakage.near_duplicates:,} near-duplicates); accuracy without them {without}"
        )
    lines.append(f"{len(result.label_errors):,} suspected label errors")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"
