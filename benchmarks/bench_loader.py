"""DataLoader throughput at 224x224: VisualLayerDataset against its peers, side by side in one run.

    pip install scikit-image            # the corpora's source photos (benchmarks only)
    python benchmarks/bench_loader.py   # writes benchmarks/RESULTS_loader.md

Corpora (benchmarks/corpus.py): ImageNet-like 500x375 JPEGs and 2000x1500 originals. Each
loader yields uint8 3x224x224 images and int64 labels at batch 64, shuffled, with 0 and 2
workers; img/s is the median over 3 timed epochs after a warm-up epoch. With 0 workers the main
process runs one intra-op thread for every loader (PERF_BASELINE §3: the second thread only
spins). Peers: the plain Pillow dataset that torchvision's ImageFolder amounts to (open, convert,
resize, to tensor), and, when installed, torchvision's ImageFolder and Hugging Face datasets.
The decode ceiling is the fastest decoder's single-core rate on the same files (bytes in RAM,
pinned to one core) times the number of cores.

Targets: >= 1.7x the plain Pillow dataset at 2 workers on 500x375, >= 4x on the originals,
>= 85% of the decode ceiling on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import corpus
from vl_datasets.dataset import VisualLayerDataset
from vl_datasets.images import decode_image

HERE = Path(__file__).resolve().parent
SIZE = 224
BATCH = 64


class PlainPillowDataset(Dataset):
    """What ImageFolder + Resize((224, 224)) + PILToTensor does, in plain code."""

    def __init__(self, items: list[tuple[str, int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        with Image.open(path) as image:
            image = image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1), label


def _plain(folder: Path, workers: int):
    return DataLoader(PlainPillowDataset(corpus.image_paths(folder)), batch_size=BATCH, shuffle=True,
                      num_workers=workers)


def _ours(folder: Path, workers: int):
    return VisualLayerDataset.from_export(folder, image_size=SIZE).dataloader(BATCH, num_workers=workers, seed=0)


def _torchvision(folder: Path, workers: int):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.PILToTensor()])
    return DataLoader(datasets.ImageFolder(str(folder / "imagefolder"), transform=tf), batch_size=BATCH,
                      shuffle=True, num_workers=workers)


def _huggingface(folder: Path, workers: int):
    import datasets

    hf = datasets.load_dataset("imagefolder", data_dir=str(folder / "imagefolder"), split="train")

    def to_tensor(batch):
        batch["image"] = [torch.from_numpy(np.asarray(i.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)))
                          .permute(2, 0, 1) for i in batch["image"]]
        return batch

    hf.set_transform(to_tensor)
    return DataLoader(hf, batch_size=BATCH, shuffle=True, num_workers=workers)


def _available(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def measure(make, folder: Path, workers: int, epochs: int = 3) -> float:
    """Median img/s over ``epochs`` timed epochs after one warm-up."""
    loader = make(folder, workers)
    rates = []
    for epoch in range(epochs + 1):
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += len(batch[1] if isinstance(batch, (tuple, list)) else batch["label"])
        if epoch:
            rates.append(seen / (time.perf_counter() - start))
    del loader
    return statistics.median(rates)


def _decode_rate(blobs: list[bytes], core: int, passes: int, results=None) -> float:
    """img/s of decode_image(size=224) pinned to ``core``, median of ``passes``."""
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        for blob in blobs:
            decode_image(blob, size=SIZE)
        rates.append(len(blobs) / (time.perf_counter() - start))
    rate = statistics.median(rates)
    if results is not None:
        results.put(rate)
    return rate


def decode_ceilings(folder: Path, passes: int = 5) -> tuple[float, float]:
    """(single-core img/s, all cores decoding at once): bytes preloaded, one process per core.

    The second is the ceiling a loader can reach on this machine: on a VM whose vCPUs are
    hyperthreads of one core, it is well below cores x the single-core rate.
    """
    import multiprocessing as mp

    blobs = [Path(p).read_bytes() for p, _ in corpus.image_paths(folder)]
    cores = sorted(os.sched_getaffinity(0))
    context = mp.get_context("fork")
    single = context.Queue()
    proc = context.Process(target=_decode_rate, args=(blobs, cores[0], passes, single))
    proc.start()
    one = single.get()
    proc.join()
    together = context.Queue()
    procs = [context.Process(target=_decode_rate, args=(blobs, core, passes, together)) for core in cores]
    for proc in procs:
        proc.start()
    total = sum(together.get() for _ in procs)
    for proc in procs:
        proc.join()
    return one, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet", type=int, default=2000, help="images in the 500x375 corpus")
    parser.add_argument("--large", type=int, default=300, help="images in the 2000x1500 corpus")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_loader.md")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    loaders = {"plain Pillow dataset": _plain, "VisualLayerDataset": _ours}
    if _available("torchvision"):
        loaders["torchvision ImageFolder"] = _torchvision
    if _available("datasets"):
        loaders["HF datasets imagefolder"] = _huggingface
    lines = [f"# DataLoader benchmark ({cores} cores, batch {BATCH}, 224x224 uint8, median img/s of 3 epochs)", ""]
    for kind, count in (("imagenet", args.imagenet), ("large", args.large)):
        folder = corpus.build(kind, count)
        one_core, all_cores = decode_ceilings(folder)
        lines += [f"## {kind} corpus ({count} images)", "", "| loader | 0 workers | 2 workers |", "| --- | ---: | ---: |"]
        results = {}
        for name, make in loaders.items():
            torch.set_num_threads(1)  # for the 0-worker runs; workers set their own
            results[name] = [measure(make, folder, workers) for workers in (0, 2)]
            lines.append(f"| {name} | {results[name][0]:,.0f} | {results[name][1]:,.0f} |")
        ours, plain = results["VisualLayerDataset"][1], results["plain Pillow dataset"][1]
        lines += ["", f"- VisualLayerDataset / plain Pillow at 2 workers: **{ours / plain:.2f}x**",
                  f"- decode ceiling (decode_image, bytes in RAM): {one_core:,.0f} img/s on one core; "
                  f"{cores} x that = {one_core * cores:,.0f}; measured with all {cores} cores decoding at once: "
                  f"{all_cores:,.0f}",
                  f"- VisualLayerDataset at 2 workers: **{ours / (one_core * cores):.0%}** of {cores} x one core, "
                  f"**{ours / all_cores:.0%}** of the measured {cores}-core ceiling", ""]
        print("\n".join(lines), flush=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
