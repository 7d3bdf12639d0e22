"""transformers.Trainer's batches: our loader (VLTrainer) against the DataLoader Trainer builds itself.

    pip install "vl_datasets[hf]"
    python benchmarks/bench_integrations.py [--image-size 224] [--workers 2] [--epochs 3]

Both feed the same curated train part of the sample dataset (vl_datasets.sample) as
``{"pixel_values", "labels"}`` batches of 64, resized by the dataset and normalized by
``PixelValues``, through ``Trainer.get_train_dataloader()``: ``VLTrainer``'s is ``ds.dataloader()``
(persistent workers prefetching across epochs, shared-memory batch slots); a plain ``Trainer`` with
``data_collator=HFCollate()`` builds a torch DataLoader over the same dataset (its workers not
persistent, Trainer's default). The model never runs: only the batches are timed. A rate is the
images of the timed epochs over their time, after one warm-up epoch; each is the median of
``--rounds`` rounds, the two loaders interleaved, as the shared machines drift over minutes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments
from transformers.utils import logging as transformers_logging

from vl_datasets import CurationRules, VisualLayerDataset
from vl_datasets.integrations.huggingface import HFCollate, PixelValues, VLTrainer
from vl_datasets.sample import SAMPLE_DATASET_ID, SAMPLE_ROOT

BATCH = 64
RULES = CurationRules(min_uniqueness=0.05, keep_unscored=True, drop_issues={"blur": 0.5}, dedupe=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per round, after one warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def trainers(dataset: VisualLayerDataset, args, out: Path) -> dict[str, Trainer]:
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=10))
    training = TrainingArguments(
        str(out),
        per_device_train_batch_size=BATCH,
        dataloader_num_workers=args.workers,
        use_cpu=True,
        report_to=[],
        remove_unused_columns=False,
    )
    return {
        "VLTrainer (ds.dataloader)": VLTrainer(model=model, args=training, train_dataset=dataset),
        "Trainer's own DataLoader": Trainer(
            model=model, args=training, train_dataset=dataset, data_collator=HFCollate(PixelValues())
        ),
    }


def rate(loader, epochs: int) -> float:
    """Images per second over ``epochs`` epochs, after a warm-up epoch."""
    for _ in loader:
        pass
    images, started = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            images += len(batch["labels"])
    return images / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    transformers_logging.set_verbosity_error()
    torch.set_num_threads(1)  # the main process only collates and normalizes; workers decode
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / SAMPLE_DATASET_ID
        shutil.copytree(SAMPLE_ROOT / SAMPLE_DATASET_ID, folder)
        dataset = VisualLayerDataset.from_export(
            folder, cache_dir=Path(tmp) / "cache", curation=RULES, image_size=args.image_size
        )
        rates: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, trainer in trainers(dataset, args, Path(tmp) / "out").items():
                rates.setdefault(name, []).append(rate(trainer.get_train_dataloader(), args.epochs))
    print(
        f"{len(dataset):,} curated sample items, {args.image_size} px, batch {BATCH}, "
        f"{args.workers} workers, {torch.get_num_threads()} main-process thread"
    )
    ours = statistics.median(rates["VLTrainer (ds.dataloader)"])
    for name, measured in rates.items():
        median = statistics.median(measured)
        rounds = [round(r) for r in measured]
        print(f"{name:<28} {median:>8,.0f} img/s  ({median / ours:.0%} of ours; rounds: {rounds})")


if __name__ == "__main__":
    main()
