"""A benchmark's function run in a fresh interpreter: no state of an earlier measurement (imports,
caches, a peer's globals) reaches the next one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def call_fresh(module: str, function: str, *args: str) -> dict:
    """``module.function(*args)`` (a module of ``benchmarks/``), run in a new interpreter; the JSON
    object it returns, or a RuntimeError with the end of its standard error."""
    code = f"import json, {module} as b; print(json.dumps(b.{function}(*{list(args)!r})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{module}.{function} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
