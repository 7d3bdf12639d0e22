"""Run every benchmark in one go and write benchmarks/RESULTS_LATEST.md.

    pip install scikit-image   # corpora's source photos; torchvision / datasets join as peers if installed
    python benchmarks/run.py

Each benchmark runs in its own process and writes its part; the parts are joined into one file.
RESULTS.md is the record kept by hand: the runs the README quotes, with the sections written as each
issue was measured. A run writes beside it, never over it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
LATEST = "RESULTS_LATEST.md"


def _versions() -> str:
    import numpy
    import PIL
    import pyarrow
    import simplejpeg
    import torch

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, pyarrow {pyarrow.__version__}, "
        f"Pillow {PIL.__version__}, simplejpeg {simplejpeg.__version__}, numpy {numpy.__version__}"
    )


def main() -> None:
    scripts = (
        "bench_decode.py",
        "bench_loader.py",
        "bench_metadata.py",
        "bench_remote.py",
        "bench_prepared.py",
        "bench_chunked.py",
    )
    parts = [HERE / f"RESULTS_{script[len('bench_') : -len('.py')]}.md" for script in scripts]
    for script, out in zip(scripts, parts):
        subprocess.run([sys.executable, str(HERE / script), "--out", str(out)], check=True, cwd=HERE)
    header = [
        "# Benchmark results",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), "
        f"{_versions()}. Written by `python benchmarks/run.py`; the machines are shared, so compare ratios "
        "within one run, not absolute numbers across runs.",
        "",
    ]
    # Each part starts with a top-level heading; nest it under this file's title.
    body = [part.read_text().replace("# ", "## ", 1) for part in parts]
    (HERE / LATEST).write_text("\n".join(header) + "\n".join(body))
    for part in parts:
        part.unlink()
    print((HERE / LATEST).read_text())


if __name__ == "__main__":
    main()
