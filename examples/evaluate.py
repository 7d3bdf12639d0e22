"""Evaluate a checkpoint of train_classifier.py against its labels and what Visual Layer knows.

The checkpoint records its dataset, split and curation rules, so this rebuilds the same split
from the (cached) export and runs the model on every item of it, the ones curation removed too.
It prints the accuracy on the items passing the curation rules (as train_classifier.py does),
per class, the top confusions, the leakage check, and accuracy per issue, uniqueness decile,
duplicate membership, curation outcome and worst cluster (``vl_datasets.evaluation``). Next to
the checkpoint it writes the predictions (<checkpoint>.predictions.csv, the file `vl-datasets
evaluate` takes), the suspected label errors' media ids (<checkpoint>.label_errors.txt) and the
HTML report (<checkpoint>.evaluation.html).

    python examples/evaluate.py runs/curated.pt
    python examples/evaluate.py runs/uncurated.pt --split test --uncleaned
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import torch

from common import SmallCNN, class_scores, platform_or_sample
from vl_datasets import VisualLayerDataset
from vl_datasets.evaluation import Evaluation, evaluate
from vl_datasets.metadata.splits import find_leaks


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="test", help="which part of the checkpoint's split (default: test)")
    parser.add_argument(
        "--uncleaned",
        action="store_true",
        help="count every item of the split as kept, not only those passing the curation rules",
    )
    parser.add_argument("--cache-dir")
    parser.add_argument("--show", type=int, default=5, help="how many confusions, leaks and clusters to list")
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.6,
        help="confidence from which a disagreement is a suspected label error",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    parts = checkpoint["split"]
    if args.split not in parts:
        raise SystemExit(f"--split must be one of {sorted(parts)}")
    with platform_or_sample(checkpoint["dataset_id"], args.cache_dir) as (client, dataset_id, cache_dir):
        common = {
            "client": client,
            "cache_dir": cache_dir,
            "subset": parts[args.split],
            "classes": checkpoint["classes"],
            "image_size": checkpoint["image_size"],
            "invalid_labels": "drop",
        }
        # The rules say which items count as kept; the model runs on the whole split either way.
        dataset = VisualLayerDataset(dataset_id, **common, **({} if args.uncleaned else checkpoint["curation"]))
        whole_split = VisualLayerDataset(dataset_id, **common)
        model = SmallCNN(len(checkpoint["classes"]))
        model.load_state_dict(checkpoint["model"])
        scores = class_scores(model, whole_split).numpy()
        predictions = dict(zip(whole_split.media_ids, scores))
        result = evaluate(dataset, predictions, train_ids=checkpoint["trained_on"], min_confidence=args.min_confidence)
        print_overview(result, args)
        print_random_split_leaks(dataset.curation_details(), checkpoint["trained_on"], len(whole_split))
        print_slices(result, args.show)
        write_outputs(result, args.checkpoint, whole_split.media_ids, scores, checkpoint["classes"])


def print_overview(result: Evaluation, args: argparse.Namespace) -> None:
    kept = next(row for row in result.slices["curation"].to_pylist() if row["value"] == "kept")
    print(
        f"{args.checkpoint}: {result.items:,} items of the {args.split!r} split, "
        f"{kept['items']:,} of them{'' if args.uncleaned else ' passing its curation rules'}"
    )
    print(
        f"accuracy {kept['accuracy']:.1%} ({kept['low']:.1%}-{kept['high']:.1%}); on every item of the split "
        f"{result.accuracy:.1%}\n"
    )
    print(f"{'class':<16}{'items':>7}{'accuracy':>10}")
    for row in result.slices["class"].to_pylist():
        print(f"{row['value']:<16}{row['items']:>7}{row['accuracy']:>10.1%}")
    matrix = result.confusion_matrix()
    print(f"\n{int(matrix.sum() - matrix.trace()):,} errors; most confused (true -> predicted):")
    for true_name, predicted_name, count in result.top_confusions(args.show):
        print(f"  {true_name} -> {predicted_name}: {count}")
    assert result.leakage is not None  # train_ids were given
    leakage = result.leakage
    print(
        f"\nleakage check: {leakage.leaked_items:,} of {result.items:,} evaluated items share a duplicate group "
        f"or a cluster with a training item ({leakage.near_duplicates:,} near-duplicates); "
        f"accuracy without them {leakage.accuracy_without_leaks:.1%}"
    )
    for row in leakage.leaks.slice(0, args.show).to_pylist():
        print(f"  {row['media_id']} shares {row['shared']} {row['group']} with {row['train_media_id']}")


def print_random_split_leaks(table: pa.Table, trained_on: list[str], n_evaluated: int) -> None:
    # What the same evaluation would have leaked with a plain random split of the same sizes.
    ids = table.column("media_id").to_pylist()
    random.Random(0).shuffle(ids)
    leaks = find_leaks(table, ids[: len(trained_on)], ids[len(trained_on) : len(trained_on) + n_evaluated])
    print(f"(a random split of the same sizes would leak {len(leaks):,} of {n_evaluated:,})")


def print_slices(result: Evaluation, show: int) -> None:
    for name in ("curation", "issue", "duplicates", "uniqueness"):
        print(f"\naccuracy by {name}:")
        for row in result.slices[name].to_pylist():
            print(f"  {row['value']:<36}{row['items']:>6}{row['accuracy']:>8.1%}  ({row['low']:.1%}-{row['high']:.1%})")
    print(f"\nworst clusters (of {len(result.slices['cluster']):,} with 3 or more items):")
    for row in result.slices["cluster"].slice(0, show).to_pylist():
        print(f"  {row['value']}  {row['correct']} of {row['items']} right")
    errors = result.label_errors
    flagged = sum(value is not None for value in errors.column("vl_mislabel").to_pylist())
    print(
        f"\n{len(errors):,} suspected label errors (the model disagrees with confidence >= its threshold); "
        f"Visual Layer flagged {flagged:,} of them as mislabeled"
    )


def write_outputs(result: Evaluation, checkpoint: Path, media_ids: list[str], scores, classes: list[str]) -> None:
    stem = checkpoint.with_suffix("")
    predictions = pa.table(
        {
            "media_id": media_ids,
            "prediction": [classes[i] for i in scores.argmax(axis=1).tolist()],
            "score": scores.max(axis=1).astype(float),
        }
    )
    pyarrow.csv.write_csv(predictions, f"{stem}.predictions.csv")
    print(f"predictions: {stem}.predictions.csv")
    print(f"suspected label errors: {result.write_label_errors(f'{stem}.label_errors.txt')}")
    print(f"report: {result.write_report(f'{stem}.evaluation.html')}")


if __name__ == "__main__":
    main()
