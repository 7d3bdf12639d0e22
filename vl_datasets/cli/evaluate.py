"""``vl-datasets evaluate``: score a predictions file against a dataset and what Visual Layer knows."""

from __future__ import annotations

import argparse
import functools
import math
from typing import Any

from ..errors import ConfigurationError
from ..evaluation.detection_slices import N_RESAMPLES, SEED
from .options import (
    add_api_options,
    add_curation_options,
    add_source,
    check_distinct_outputs,
    check_input,
    check_output,
    local_file,
    open_dataset,
)
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
        type=local_file,
        required=True,
        help="classification: a CSV or Parquet file of media_id, prediction (a class name) and an optional "
        "score (0-1); detection: a JSON list (COCO results) or a Parquet file of media_id, category_name, "
        "bbox ([x, y, width, height] in the export's pixels) and score, one box a row",
    )
    evaluate.add_argument("--out", type=local_file, help="write the HTML evaluation report here")
    evaluate.add_argument(
        "--label-errors",
        type=local_file,
        metavar="FILE",
        help="write the suspected label errors' media ids here, one a line",
    )
    evaluate.add_argument(
        "--train-ids",
        type=local_file,
        metavar="FILE",
        help="media ids the model was trained on, one a line: checks leakage",
    )
    evaluate.add_argument(
        "--min-confidence",
        type=float,
        help="classification: a disagreement with the label counts as a suspected label error from this "
        "confidence (default 0.5)",
    )
    evaluate.add_argument(
        "--resamples",
        type=int,
        metavar="N",
        help=f"detection: bootstrap resamples of the images behind each mAP interval (default {N_RESAMPLES}; 0: none)",
    )
    evaluate.add_argument(
        "--seed", type=int, help=f"detection: the bootstrap's seed, for the same intervals each run (default {SEED})"
    )
    evaluate.add_argument(
        "--title", help="the report's title (default: Evaluation: and the dataset id or export folder)"
    )
    add_curation_options(evaluate)  # the rules that made the kept part: removed items are scored apart
    add_api_options(evaluate, for_dataset_id=True)
    evaluate.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.box_predictions import is_detection_file

    check_input(args.predictions, "--predictions")  # before its kind is read and the export opened
    check_distinct_outputs(
        {"--out": args.out, "--label-errors": args.label_errors},
        {"--predictions": args.predictions, "--train-ids": args.train_ids},
    )
    if is_detection_file(args.predictions):
        return run_detection(args)
    if args.resamples is not None or args.seed is not None:
        raise ConfigurationError("--resamples and --seed apply to detection predictions (a JSON or a bbox column).")
    check_output(args.out, "--out")  # before the scoring, which may take minutes
    check_output(args.label_errors, "--label-errors")
    from ..evaluation import evaluate, read_media_ids
    from ..evaluation.results import with_export_classes

    # Items without exactly one label are kept out of training, not out of the evaluation: their
    # predictions are listed but not scored.
    options = {
        "invalid_labels": "drop",
        **_shared_options(args),
    }
    train_ids = read_media_ids(args.train_ids) if args.train_ids else None  # a bad file fails before the export
    dataset = with_export_classes(functools.partial(open_dataset, args, **options))
    min_confidence = 0.5 if args.min_confidence is None else args.min_confidence
    result = evaluate(dataset, args.predictions, train_ids=train_ids, min_confidence=min_confidence, title=args.title)
    print(summary_text(result))
    if args.label_errors:
        print(f"suspected label errors: {result.write_label_errors(args.label_errors)}")
    if args.out:
        print(f"report: {result.write_report(args.out)}")
    return 0


def run_detection(args: argparse.Namespace) -> int:
    """Box predictions: mAP overall and per slice, with bootstrap intervals."""
    from ..evaluation import evaluate_detection, read_media_ids
    from ..evaluation.box_predictions import read_detections
    from ..evaluation.results import with_export_classes

    if args.label_errors or args.min_confidence is not None:
        raise ConfigurationError("--label-errors and --min-confidence apply to classification predictions.")
    check_output(args.out, "--out")  # before the scoring, which may take minutes
    train_ids = read_media_ids(args.train_ids) if args.train_ids else None  # a bad file fails before the export
    # Numbered as the whole export, before curation: a class whose every box curation removed
    # keeps its index for the predictions' category_id, and its name (with_export_classes).
    dataset = with_export_classes(functools.partial(open_dataset, args, task="detection", **_shared_options(args)))
    predictions = read_detections(args.predictions, list(dataset.classes))
    result = evaluate_detection(
        dataset,
        predictions,
        train_ids=train_ids,
        n_resamples=N_RESAMPLES if args.resamples is None else args.resamples,
        seed=SEED if args.seed is None else args.seed,
        title=args.title,
    )
    print(detection_summary_text(result))
    if args.out:
        print(f"report: {result.write_report(args.out)}")
    return 0


def _shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """The curation options both kinds of predictions open the dataset with."""
    return {
        "missing_images": "drop",
        "min_uniqueness": args.min_uniqueness,
        "keep_unscored": True if args.min_uniqueness is not None else None,
        "drop_issues": parse_drop_issues(args.drop_issues),
        "dedupe": args.dedupe,
        "label_source": args.label_source,
    }


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
            f"{leakage.leaked_items:,} items share a group with a training item or are one "
            f"({leakage.near_duplicates:,} near-duplicates, {leakage.in_train:,} in train); "
            f"accuracy without them {without}"
        )
    lines.append(f"{len(result.label_errors):,} suspected label errors")
    return "\n".join(lines)


def detection_summary_text(result) -> str:
    """The lines the command prints for box predictions: mAP with its intervals, per curation outcome, leaks."""
    scores = result.scores
    lines = [
        f"{scores.images:,} images scored; mAP@0.5:0.95 {_pct(scores.map)} (95% CI {_span(result.map_interval)}), "
        f"mAP@0.5 {_pct(scores.map_50)} (95% CI {_span(result.map_50_interval)})"
    ]
    for row in result.slices["curation"].to_pylist():
        lines.append(f"  {row['value']}: {row['images']:,} images, mAP@0.5:0.95 {_pct(row['map'])}")
    if result.leaks is not None:
        lines.append(f"{len(result.leaks):,} images share a group with a training item or are one")
    return "\n".join(lines)


def _span(interval: tuple[float, float]) -> str:
    return f"{_pct(interval[0])}-{_pct(interval[1])}"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"
