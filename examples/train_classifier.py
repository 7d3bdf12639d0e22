"""Train the same small CNN on a curated and an uncurated dataset, and compare them on one test split.

With no credentials it serves the sample dataset (real handwritten digits with injected
near-duplicates, blurred copies and flipped labels) on a local Visual Layer service, so the whole
workflow runs offline: export over HTTP into the cache, a leakage-safe split, curation by
uniqueness, issues and duplicate groups, training on the CPU, and a comparison table.

    python examples/train_classifier.py
    VL_API_KEY=... VL_API_SECRET=... python examples/train_classifier.py --dataset-id <id> --image-size 64

With --resume, each model's weights, optimizer, schedule and DataLoader position are saved to
out-dir/<model>.resume.pt every --checkpoint-every steps, and also when SIGTERM or SIGUSR1 arrives
(what SLURM, Kubernetes and spot instances send before they kill): the run then checkpoints at the
next step boundary and exits with 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1), the
code a shell gives a process stopped by that signal, so a scheduler or a retry loop sees an
unfinished job rather than a success (a Kubernetes Job with exit 0 would not be restarted). Run the
same command again and each model picks up exactly where its last checkpoint left it (a model that
had finished is not trained again). SIGKILL leaves no time to save: the rerun goes on from the last
periodic checkpoint.

    python examples/train_classifier.py --resume      # stop it at any point, then run it again
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from common import SmallCNN, accuracy, credentials_set, platform_or_sample, train
from vl_datasets import ConfigurationError, VisualLayerDataset, leakage_safe_split
from vl_datasets.cli.report import parse_drop_issues

FRACTIONS = {"train": 0.8, "test": 0.2}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-id", help="a Visual Layer dataset (default: the local sample)")
    parser.add_argument("--cache-dir")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch's threads for training (default 1: the same figures every run, and no slower on a busy machine, "
        "where more threads wait on each other)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help="side in pixels (default: 16 for the sample's 32x32 digit JPEGs, 64 on the platform)",
    )
    parser.add_argument("--min-uniqueness", type=float, default=0.05)
    parser.add_argument(
        "--drop-issue",
        action="append",
        metavar="TYPE=CONFIDENCE",
        help="drop items with this issue at this confidence or more (repeatable; "
        "default: mislabels=0.6 blur=0.5 outliers=0.5)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs"), help="where checkpoints (and the report) go")
    parser.add_argument("--report", action="store_true", help="also write out-dir/report.html (needs matplotlib)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="checkpoint every --checkpoint-every steps to out-dir/<model>.resume.pt, and continue from there",
    )
    parser.add_argument("--checkpoint-every", type=int, default=20, metavar="STEPS")
    return parser.parse_args()


class StopRequest:
    """SIGTERM and SIGUSR1, remembered by the handler and acted on by the training loop at its next
    step boundary: a checkpoint written from inside a handler could catch the model half-updated."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum: int | None = None
        for signum in self.SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame) -> None:
        self.signum = signum

    def exit(self, name: str, path: Path, epoch: int, step: int) -> None:
        assert self.signum is not None
        print(f"{name}: {signal.Signals(self.signum).name}: checkpointed at epoch {epoch}, step {step} in {path}")
        raise SystemExit(128 + self.signum)  # what a shell reports for a process the signal stopped


def issue_thresholds(specs: list[str] | None) -> dict[str, float]:
    # The same TYPE=CONFIDENCE syntax and checks as `vl-datasets report --drop-issue`.
    try:
        return parse_drop_issues(specs or []) or {"mislabels": 0.6, "blur": 0.5, "outliers": 0.5}
    except ConfigurationError as exc:
        raise SystemExit(str(exc)) from None


def main() -> None:
    args = parse_args()
    args.image_size = args.image_size or (64 if credentials_set() else 16)
    drop_issues = issue_thresholds(args.drop_issue)  # before any export: a typo fails at once
    version = pinned_version(args)
    started = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    with platform_or_sample(args.dataset_id, args.cache_dir) as (client, dataset_id, cache_dir):

        def dataset(**options) -> VisualLayerDataset:
            # Every call reuses the one cached export: no second export, no second download.
            # Classification needs one label per item; items with none or several are dropped
            # (and counted as invalid_labels) rather than stopping a run on a real dataset.
            return VisualLayerDataset(
                dataset_id,
                client=client,
                cache_dir=cache_dir,
                image_size=args.image_size,
                invalid_labels="drop",
                version=version,
                **options,
            )

        everything = dataset(task=None)
        parts = leakage_safe_split(everything, FRACTIONS, seed=args.seed)
        curation = {
            "min_uniqueness": args.min_uniqueness,
            "keep_unscored": True,
            "drop_issues": drop_issues,
            "dedupe": True,
        }
        curated = dataset(subset=parts["train"], **curation)
        uncurated = dataset(subset=parts["train"], classes=curated.classes)
        # One test set for both models, cleaned by the same rules: a flipped label in the test
        # split would mark a right answer wrong for both.
        test = dataset(subset=parts["test"], classes=curated.classes, **curation)
        print(
            f"\n{dataset_id}: {len(everything):,} items; leakage-safe split "
            f"{len(parts['train']):,} train / {len(parts['test']):,} test (seed {args.seed})\n"
        )

        results = {}
        stop = StopRequest() if args.resume else None
        for name, train_set in (("uncurated", uncurated), ("curated", curated)):
            if stop is not None:
                model = train_resumable(train_set, name, args, stop)
            else:
                model = train(train_set, epochs=args.epochs, seed=args.seed)
            results[name] = (len(train_set), accuracy(model, test))
            save_checkpoint(args.out_dir / f"{name}.pt", model, train_set, parts, dataset_id, args, curation)
        print_table(results, curated.curation_summary().removed_by, len(parts["train"]), len(test))
        if args.report:
            print(f"report: {curated.report(args.out_dir / 'report.html')}")
    print(f"checkpoints in {args.out_dir}/; done in {time.perf_counter() - started:.0f} s")


def train_resumable(dataset, name: str, args, stop: StopRequest, batch_size: int = 64) -> SmallCNN:
    """common.train, checkpointed every --checkpoint-every steps and when ``stop`` has seen a signal:
    the same model, optimizer, schedule and batches, so a run cut at any step and resumed ends with
    the model an uninterrupted run would have."""
    torch.manual_seed(args.seed)
    model = SmallCNN(len(dataset.classes))
    loader = dataset.dataloader(batch_size, shuffle=True, num_workers=0, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=args.epochs * len(loader))
    path, step = resume_path(args, name), 0
    if path.exists():
        saved = torch.load(path)  # weights_only: tensors and the loader's plain values
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        loader.load_state_dict(saved["loader"])  # the next iter(loader) yields the rest of its epoch
        step = saved["step"]
        print(f"{name}: resumed from {path} at epoch {loader.epoch}, step {step}")

    def checkpoint() -> None:
        # Written whole, then moved into place: a kill while saving leaves the previous checkpoint.
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
        state |= {"loader": loader.state_dict(), "step": step}
        torch.save(state, path.with_name(path.name + ".partial"))
        os.replace(path.with_name(path.name + ".partial"), path)

    path.parent.mkdir(parents=True, exist_ok=True)
    model.train()
    for _ in range(loader.epoch, args.epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % args.checkpoint_every == 0 or stop.signum is not None:
                checkpoint()
                print(f"{name}: step {step}, epoch {loader.epoch - 1}: checkpoint saved", flush=True)
            if stop.signum is not None:
                stop.exit(name, path, loader.state_dict()["epoch"], step)
    checkpoint()
    return model


def resume_path(args, name: str) -> Path:
    return args.out_dir / f"{name}.resume.pt"


def pinned_version(args) -> str | None:
    """With --resume on Visual Layer, the export version the checkpoints were trained on, reopened
    exactly even if the dataset was exported again since. (The local sample service is a new host
    each run: its checkpoints are checked against the curated items' fingerprint alone.)"""
    if not args.resume or not credentials_set():
        return None
    for name in ("uncurated", "curated"):
        if resume_path(args, name).exists():
            return torch.load(resume_path(args, name))["loader"]["dataset"]["version"]
    return None


def save_checkpoint(path: Path, model, train_set, parts, dataset_id: str, args, curation: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "classes": train_set.classes,
            "image_size": args.image_size,
            "dataset_id": dataset_id,
            "curation": curation,
            "split": {name: list(ids) for name, ids in parts.items()},  # plain lists: torch.load(weights_only=True)
            "trained_on": train_set.media_ids,
        },
        path,
    )


def print_table(
    results: dict[str, tuple[int, float]], removed_by: dict[str, int], n_train_split: int, n_test: int
) -> None:
    rows = [("train split items", f"{n_train_split:,}", f"{n_train_split:,}")]
    rows += [(f"removed by {rule}", "-", f"{n:,}") for rule, n in removed_by.items() if rule != "subset"]
    rows += [
        ("items trained on", *(f"{results[m][0]:,}" for m in ("uncurated", "curated"))),
        ("test accuracy", *(f"{results[m][1]:.1%}" for m in ("uncurated", "curated"))),
    ]
    print(f"{'':<32}{'uncurated':>11}{'curated':>11}")
    for name, plain, curated in rows:
        print(f"{name:<32}{plain:>11}{curated:>11}")
    print(f"(test: the {n_test:,} items of the test split that pass the same curation rules)")


if __name__ == "__main__":
    main()
