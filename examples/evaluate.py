"""Evaluate a checkpoint of train_classifier.py on a split: accuracy, per class, confusions, leaks.

The checkpoint records its dataset, split and curation rules, so this rebuilds the same split
from the (cached) export. The leakage check lists evaluated items that share a duplicate group or
a similarity cluster with an item the model was trained on.

    python examples/evaluate.py runs/curated.pt
    python examples/evaluate.py runs/uncurated.pt --split test --uncleaned
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from common import SmallCNN, platform_or_sample, predict
from vl_datasets import VisualLayerDataset
from vl_datasets.metadata.splits import find_leaks


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="test", help="which part of the checkpoint's split (default: test)")
    parser.add_argument(
        "--uncleaned",
        action="store_true",
        help="evaluate every item of the split, not only those passing the curation rules",
    )
    parser.add_argument("--cache-dir")
    parser.add_argument("--show", type=int, default=5, help="how many confusions and leaks to list")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    parts = checkpoint["split"]
    if args.split not in parts:
        raise SystemExit(f"--split must be one of {sorted(parts)}")
    with platform_or_sample(checkpoint["dataset_id"], args.cache_dir) as (client, dataset_id, cache_dir):
        rules = {} if args.uncleaned else checkpoint["curation"]
        dataset = VisualLayerDataset(
            dataset_id,
            client=client,
            cache_dir=cache_dir,
            subset=parts[args.split],
            classes=checkpoint["classes"],
            image_size=checkpoint["image_size"],
            **rules,
        )
        model = SmallCNN(len(checkpoint["classes"]))
        model.load_state_dict(checkpoint["model"])
        predicted, truth = predict(model, dataset)
        everything = VisualLayerDataset(dataset_id, client=client, cache_dir=cache_dir, task=None)

        print(
            f"{args.checkpoint}: {len(dataset):,} items of the {args.split!r} split"
            f"{'' if args.uncleaned else ' passing its curation rules'}"
        )
        print(f"accuracy {(predicted == truth).float().mean().item():.1%}\n")
        print_per_class(predicted, truth, checkpoint["classes"])
        print_confusions(predicted, truth, checkpoint["classes"], args.show)
        print_leaks(everything.table, checkpoint["trained_on"], dataset.media_ids, args.show)


def print_per_class(predicted: torch.Tensor, truth: torch.Tensor, classes: list[str]) -> None:
    print(f"{'class':<16}{'items':>7}{'accuracy':>10}")
    for index, name in enumerate(classes):
        mine = truth == index
        if mine.any():
            print(f"{name:<16}{int(mine.sum()):>7}{(predicted[mine] == index).float().mean().item():>10.1%}")


def print_confusions(predicted: torch.Tensor, truth: torch.Tensor, classes: list[str], show: int) -> None:
    n = len(classes)
    matrix = torch.bincount(truth * n + predicted, minlength=n * n).reshape(n, n)
    matrix.fill_diagonal_(0)
    counts, flat = matrix.flatten().sort(descending=True)
    pairs = [(int(c), classes[i // n], classes[i % n]) for c, i in zip(counts.tolist(), flat.tolist()) if c]
    print(f"\n{int(matrix.sum()):,} errors; most confused (true -> predicted):")
    for count, true_name, predicted_name in pairs[:show]:
        print(f"  {true_name} -> {predicted_name}: {count}")


def print_leaks(table, trained_on: list[str], evaluated: list[str], show: int) -> None:
    leaks = find_leaks(table, trained_on, evaluated)
    print(
        f"\nleakage check: {len(leaks):,} of {len(evaluated):,} evaluated items share a duplicate group "
        "or a cluster with a training item"
    )
    for row in leaks.slice(0, show).to_pylist():
        print(f"  {row['media_id']} shares {row['shared']} {row['group']} with {row['train_media_id']}")
    # What the same evaluation would have leaked with a plain random split of the same sizes.
    ids = table.column("media_id").to_pylist()
    random.Random(0).shuffle(ids)
    random_leaks = find_leaks(table, ids[: len(trained_on)], ids[len(trained_on) : len(trained_on) + len(evaluated)])
    print(f"(a random split of the same sizes would leak {len(random_leaks):,} of {len(evaluated):,})")


if __name__ == "__main__":
    main()
