"""Which engine runs curation and splits over 1M-10M items: pyarrow (the library's), DuckDB or Polars.

    pip install -e .[bench]    # duckdb and polars (the peers)
    python benchmarks/bench_engines.py [--rows 1000000 10000000] [--repeat N] [--timeout-s S] [--out FILE]

Issue 19 asks for the engine to be named and measured on dedupe and on the split at 10M items. All
engines read the same data: the memory-mapped Arrow IPC index the library builds for
``metadata_export.build_export(rows)`` (opened once with ``VisualLayerDataset.from_export(...,
task=None)`` into ``benchmarks/data/engines_cache_<rows>``, git-ignored and kept). Three jobs:

- dedupe: the rows kept by ``CurationRules(min_uniqueness=0.3, dedupe=True)``: among the rows
  scoring at least 0.3, the most unique item of each duplicate group at the export's lowest
  duplicate threshold (ties: the first row). The library: ``curate(read_index(path), rules)``.
- split: ``leakage_safe_split(ds, {"train": 0.8, "test": 0.2}, seed=0, stratify=False)``: items
  linked by a shared ``cluster_id`` or a shared duplicate group (any threshold) form components,
  dealt to parts by fraction; the result is each part's media ids (the library's as ``MediaIds``,
  Arrow-backed since issue 19's split work; the peers' as Python lists). Unstratified for every
  engine: the point is the grouping and join cost, not the dealing.
- components: the split's core alone, each item's component (no dealing, no lists of ids). The
  library: its private ``splits._linked_components`` over the dataset's items, a slice of rows at
  a time (what ``leakage_safe_split`` calls), since no public function stops there; a cached
  dataset's items are read from its index file batch by batch. Also the same function over the
  memory-mapped index itself (``pyarrow-index``): the library's grouping over the mapping's views.

The peers:

- DuckDB (in-process SQL) scans the memory-mapped Arrow table through Arrow's C stream (DuckDB
  reads no Arrow IPC file without a community extension). A row number is appended as an Arrow
  column (8 bytes a row): an Arrow scan has no row id and ``row_number() over ()`` has no order
  under a parallel scan. Dedupe is one query with ``row_number() over (partition by group order by
  score desc, row)``; the split's edges (item, group node) come from SQL, a ``distinct`` of the
  keys numbered and joined back, and the components from a numpy union-find (the same hooking as
  the library's); a part's media ids come back through a positional join with the part of each row.
- Polars: ``scan_ipc`` of the same index file, lazy, collected with the streaming engine; dedupe
  as a sort by (group, score desc, row) keeping each group's first; the split's edges as in DuckDB
  (``unique`` keys numbered, joined), the same numpy union-find.

Each case runs in a fresh interpreter (``--child CASE``) with a time limit. Reported: wall time and
CPU time (all threads) of the job alone, after the imports and the opening; the peak RSS
(``VmHWM``) and the peak anonymous memory (``Anonymous`` of ``/proc/self/smaps_rollup``, sampled
every 20 ms), each also above the process's own at the start of the job (the memory-mapped index
counts in RSS as page cache, never as anonymous memory); and the 1-minute load average when the
case starts (the machine is shared). Every peer's result is checked against the library's: the
same kept rows for dedupe, the same partition into components and the same parts for the split;
a mismatch is printed loudly and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MIB = 2**20
MIN_UNIQUENESS = 0.3
FRACTIONS = {"train": 0.8, "test": 0.2}
INDEX_FILE = ".vl_datasets_index.arrow"
ENGINES = ("pyarrow", "duckdb", "polars")
JOBS = ("dedupe", "components", "split")

# -- memory and time of one job, measured inside its own process ------------------------------------


def _proc_kib(path: str, key: str) -> int:
    with open(path) as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(key))


class Meter:
    """Wall and CPU time of a block, with the process's peak RSS and peak anonymous memory."""

    def __init__(self) -> None:
        self.start_rss = _proc_kib("/proc/self/status", "VmRSS:") / 1024
        self.start_anon = _proc_kib("/proc/self/smaps_rollup", "Anonymous:") / 1024
        self.peak_anon = self.start_anon
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak_anon = max(self.peak_anon, _proc_kib("/proc/self/smaps_rollup", "Anonymous:") / 1024)

    def __enter__(self) -> Meter:
        self._sampler.start()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s, self.cpu_s = time.perf_counter() - self._wall, time.process_time() - self._cpu
        self._done.set()
        self._sampler.join()
        self.peak_anon = max(self.peak_anon, _proc_kib("/proc/self/smaps_rollup", "Anonymous:") / 1024)
        self.peak_rss = _proc_kib("/proc/self/status", "VmHWM:") / 1024

    def figures(self) -> dict[str, float]:
        return {
            "s": self.wall_s,
            "cpu_s": self.cpu_s,
            "peak_rss_mib": self.peak_rss,
            "rss_above_mib": self.peak_rss - self.start_rss,
            "peak_anon_mib": self.peak_anon,
            "anon_above_mib": self.peak_anon - self.start_anon,
        }


# -- the shared tail of every split: components from edges, and their dealing to parts -------------


def union_find(n_items: int, items: np.ndarray, nodes: np.ndarray, n_nodes: int) -> np.ndarray:
    """Each item's component, named by its smallest row: edges join item ``items[k]`` to group node
    ``n_items + nodes[k]``; the library's own union-find, so every engine differs only before it."""
    from vl_datasets.metadata import splits

    return splits.union_find(n_items + n_nodes, items, nodes + n_items, n_items)


def deal(component: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each item's part (an index into ``FRACTIONS``), dealt as the library's unstratified split."""
    _, inverse, sizes = np.unique(component, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(sizes))
    midpoints = (np.cumsum(sizes[order]) - sizes[order] / 2) / sizes[order].sum()
    part_of_group = np.empty(len(sizes), dtype=np.int64)
    targets = np.cumsum(list(FRACTIONS.values()))
    part_of_group[order] = np.searchsorted(targets, midpoints, side="right").clip(max=len(FRACTIONS) - 1)
    return part_of_group[inverse.reshape(-1)]


# -- the cases: (engine, job), each in a fresh interpreter -----------------------------------------


def _arrow_index(paths: dict) -> Any:
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(paths["index"])).read_all()


def pyarrow_dedupe(paths: dict) -> tuple[dict, dict]:
    from vl_datasets.metadata.curation import CurationRules, curate
    from vl_datasets.metadata.index import read_index

    table = read_index(paths["index"])
    rules = CurationRules(min_uniqueness=MIN_UNIQUENESS, dedupe=True)
    with Meter() as meter:
        kept, _ = curate(table, rules)
    return meter.figures(), {"kept": kept}


def pyarrow_split(paths: dict) -> tuple[dict, dict]:
    import vl_datasets
    from vl_datasets.metadata.splits import _linked_components

    ds = _open(paths)
    with Meter() as meter:
        parts = vl_datasets.leakage_safe_split(ds, FRACTIONS, seed=0, stratify=False)
    # Not timed: the library's components, for the check against the peers' partition.
    component = _linked_components(ds.items)
    return meter.figures(), {"component": component, "parts": parts}


def pyarrow_components(paths: dict) -> tuple[dict, dict]:
    from vl_datasets.metadata.splits import _linked_components

    ds = _open(paths)
    with Meter() as meter:
        component = _linked_components(ds.items)
    return meter.figures(), {"component": component}


def pyarrow_index_components(paths: dict) -> tuple[dict, dict]:
    from vl_datasets.metadata.row_batches import TableRows
    from vl_datasets.metadata.splits import _linked_components

    table = _arrow_index(paths)
    with Meter() as meter:
        component = _linked_components(TableRows(table.select(["cluster_id", "issues"])))
    return meter.figures(), {"component": component}


def _duckdb(paths: dict) -> Any:
    import duckdb
    import pyarrow as pa

    table = _arrow_index(paths)
    table = table.append_column("row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    con = duckdb.connect()
    con.register("t", table)
    return con, table


DUCKDB_DEDUPE = f"""
with flat as (select row, uniqueness_score as score, unnest(issues) as i from t),
dups as (
    select row, score, i.duplicate_group_id as g, i.duplicate_threshold as th from flat
    where i.issue_type = 'duplicates'
),
chosen as (select min(th) as th from dups where not isnan(th)),
ranked as (
    select row, row_number() over (partition by g order by score desc, row) as rank
    from dups, chosen
    where g is not null and dups.score >= {MIN_UNIQUENESS} and abs(dups.th - chosen.th) <= 1e-8 + 1e-5 * chosen.th
)
select row from t where uniqueness_score >= {MIN_UNIQUENESS}
    and row not in (select row from ranked where rank > 1)
order by row
"""


def duckdb_dedupe(paths: dict) -> tuple[dict, dict]:
    con, _ = _duckdb(paths)
    with Meter() as meter:
        kept = con.sql(DUCKDB_DEDUPE).to_arrow_table().column("row").to_numpy()
    return meter.figures(), {"kept": kept}


DUCKDB_EDGES = {
    "cluster": "select row, cluster_id as k from t where cluster_id is not null",
    "duplicate": """select row, k from (select row, i.issue_type as kind, i.duplicate_group_id as k
                    from (select row, unnest(issues) as i from t)) where kind = 'duplicates' and k is not null""",
}


def _duckdb_components(con: Any, n_rows: int) -> np.ndarray:
    items, nodes, offset = [], [], 0
    for members in DUCKDB_EDGES.values():
        edges = con.sql(f"""
            with m as ({members}),
            keys as (select k, row_number() over () - 1 as node from (select distinct k from m))
            select m.row, keys.node from m join keys using (k)""").to_arrow_table()
        items.append(edges.column("row").to_numpy())
        nodes.append(edges.column("node").to_numpy() + offset)
        offset += int(nodes[-1].max()) + 1 if len(nodes[-1]) else 0
    return union_find(n_rows, np.concatenate(items), np.concatenate(nodes), offset)


def duckdb_components(paths: dict) -> tuple[dict, dict]:
    con, table = _duckdb(paths)
    with Meter() as meter:
        component = _duckdb_components(con, table.num_rows)
    return meter.figures(), {"component": component}


def duckdb_split(paths: dict) -> tuple[dict, dict]:
    import pyarrow as pa

    con, table = _duckdb(paths)
    with Meter() as meter:
        component = _duckdb_components(con, table.num_rows)
        con.register("p", pa.table({"part": deal(component)}))
        parts = {
            name: con.sql(f"select media_id from t positional join p where part = {i}")
            .to_arrow_table()
            .column(0)
            .to_pylist()
            for i, name in enumerate(FRACTIONS)
        }
    return meter.figures(), {"component": component, "parts": parts}


def _polars(paths: dict) -> Any:
    import polars as pl

    return pl, pl.scan_ipc(paths["index"], row_index_name="row")


def polars_dedupe(paths: dict) -> tuple[dict, dict]:
    pl, lf = _polars(paths)
    with Meter() as meter:
        scored = lf.select("row", "uniqueness_score").filter(pl.col("uniqueness_score") >= MIN_UNIQUENESS)
        dups = (
            lf.select("row", "uniqueness_score", "issues")
            .explode("issues")
            .select(
                "row",
                "uniqueness_score",
                pl.col("issues").struct.field("issue_type"),
                pl.col("issues").struct.field("duplicate_group_id").alias("g"),
                pl.col("issues").struct.field("duplicate_threshold").alias("th"),
            )
            .filter(pl.col("issue_type") == "duplicates")
        )
        chosen = dups.filter(pl.col("th").is_not_nan()).select(pl.col("th").min())
        losers = (
            dups.join(chosen, how="cross", suffix="_chosen")
            .filter(
                pl.col("g").is_not_null()
                & (pl.col("uniqueness_score") >= MIN_UNIQUENESS)
                & ((pl.col("th") - pl.col("th_chosen")).abs() <= 1e-8 + 1e-5 * pl.col("th_chosen"))
            )
            .sort(["g", "uniqueness_score", "row"], descending=[False, True, False])
            .filter(~pl.col("g").is_first_distinct())
            .select("row")
        )
        kept = scored.join(losers, on="row", how="anti").sort("row").collect(engine="streaming")
        kept_rows = kept["row"].to_numpy().astype(np.int64)
    return meter.figures(), {"kept": kept_rows}


def _polars_components(pl: Any, lf: Any, n_rows: int) -> np.ndarray:
    members = {
        "cluster": lf.select("row", pl.col("cluster_id").alias("k")).filter(pl.col("k").is_not_null()),
        "duplicate": lf.select("row", "issues")
        .explode("issues")
        .select(
            "row",
            pl.col("issues").struct.field("issue_type"),
            pl.col("issues").struct.field("duplicate_group_id").alias("k"),
        )
        .filter((pl.col("issue_type") == "duplicates") & pl.col("k").is_not_null())
        .select("row", "k"),
    }
    items, nodes, offset = [], [], 0
    for m in members.values():
        keys = m.select("k").unique().with_row_index("node")
        edges = m.join(keys, on="k").select("row", "node").collect(engine="streaming")
        items.append(edges["row"].to_numpy().astype(np.int64))
        nodes.append(edges["node"].to_numpy().astype(np.int64) + offset)
        offset += int(nodes[-1].max()) + 1 if len(nodes[-1]) else 0
    return union_find(n_rows, np.concatenate(items), np.concatenate(nodes), offset)


def polars_components(paths: dict) -> tuple[dict, dict]:
    pl, lf = _polars(paths)
    n_rows = lf.select(pl.len()).collect().item()
    with Meter() as meter:
        component = _polars_components(pl, lf, n_rows)
    return meter.figures(), {"component": component}


def polars_split(paths: dict) -> tuple[dict, dict]:
    pl, lf = _polars(paths)
    n_rows = lf.select(pl.len()).collect().item()
    with Meter() as meter:
        component = _polars_components(pl, lf, n_rows)
        ids = lf.select("media_id").with_columns(part=pl.Series(deal(component))).collect(engine="streaming")
        parts = {name: ids.filter(pl.col("part") == i)["media_id"].to_list() for i, name in enumerate(FRACTIONS)}
    return meter.figures(), {"component": component, "parts": parts}


def _open(paths: dict) -> Any:
    from vl_datasets import VisualLayerDataset

    return VisualLayerDataset.from_export(
        paths["folder"], cache_dir=paths["cache"], images_root=paths["images_root"], task=None
    )


def index_case(paths: dict) -> tuple[dict, dict]:
    start = time.perf_counter()
    ds = _open(paths)
    return {"s": time.perf_counter() - start, "n": len(ds)}, {}


CASES = {f"{engine}_{job}": globals()[f"{engine}_{job}"] for engine in ENGINES for job in JOBS} | {
    "pyarrow-index_components": pyarrow_index_components,
    "index": index_case,
}


def run_case_here(name: str, paths: dict) -> None:
    """The child: run one case, save what the checks compare, print the figures as one JSON line."""
    figures, results = CASES[name](paths)
    out = Path(paths["out"]) / name
    if "kept" in results:
        np.save(f"{out}.kept.npy", np.asarray(results["kept"], dtype=np.int64))
    if "component" in results:
        np.save(f"{out}.component.npy", np.asarray(results["component"], dtype=np.int64))
    if "parts" in results:
        digests = {
            part: [len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()]
            for part, ids in results["parts"].items()
        }
        Path(f"{out}.parts.json").write_text(json.dumps(digests))
    print(json.dumps(figures))


# -- the parent ------------------------------------------------------------------------------------


def run_child(name: str, paths: dict, timeout_s: float) -> dict:
    """One case in a fresh interpreter: its figures and the load average at its start, or ``error``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--paths", json.dumps(paths)]
    load = os.getloadavg()[0]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=HERE, env=env)
    except subprocess.TimeoutExpired:
        return {"load": load, "error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode:
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:300]
        print(f"  {name}: {error}", file=sys.stderr)
        return {"load": load, "error": error}
    return {"load": load, **json.loads(done.stdout.strip().splitlines()[-1])}


def prepare(rows: int, timeout_s: float) -> dict:
    """The export, its index (built once) and a fresh folder for the cases' outputs."""
    from metadata_export import build_export

    cache = DATA / f"engines_cache_{rows}"
    images_root = DATA / "engines_images"  # no image is read: the jobs touch only metadata
    images_root.mkdir(parents=True, exist_ok=True)
    out = DATA / f"engines_out_{rows}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    paths = {"folder": str(build_export(rows)), "cache": str(cache), "images_root": str(images_root), "out": str(out)}
    built = run_child("index", paths, timeout_s)
    if "error" in built:
        raise SystemExit(f"Could not build the index of {rows:,} items: {built['error']}")
    found = sorted(cache.rglob(INDEX_FILE))
    if len(found) != 1:
        raise SystemExit(f"Expected one index under {cache}, found {len(found)}: remove the folder and run again.")
    return {**paths, "index": str(found[0])}


def check(out: Path, job: str, engine: str) -> list[str]:
    """What differs between ``engine``'s result of ``job`` and the library's (pyarrow's)."""
    mine, ours = out / f"{engine}_{job}", out / f"pyarrow_{job}"
    if job == "dedupe":
        a, b = np.load(f"{mine}.kept.npy"), np.load(f"{ours}.kept.npy")
        if np.array_equal(a, b):
            return []
        return [f"kept {len(a):,} rows, the library {len(b):,}; {len(np.setxor1d(a, b)):,} rows differ"]
    problems = []
    a, b = np.load(f"{mine}.component.npy"), np.load(f"{ours}.component.npy")
    if not _same_partition(a, b):
        problems.append(f"components differ: {len(np.unique(a)):,} components, the library {len(np.unique(b)):,}")
    if job == "components":
        return problems
    parts_a, parts_b = (json.loads(Path(f"{p}.parts.json").read_text()) for p in (mine, ours))
    if parts_a != parts_b:
        problems.append(f"parts differ: {parts_a} vs the library's {parts_b}")
    return problems


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings group the rows alike, whatever the labels."""
    if a.shape != b.shape:
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(pairs[0]) == len(np.unique(a)) == len(np.unique(b))


def _median_run(runs: list[dict]) -> dict:
    """The run of median wall time (one run as it happened, not a mix); a failed run if any failed."""
    failed = [run for run in runs if "error" in run]
    return failed[0] if failed else sorted(runs, key=lambda run: run["s"])[len(runs) // 2]


def measure(rows: int, timeout_s: float, repeat: int) -> dict:
    paths = prepare(rows, timeout_s)
    found: dict = {"rows": rows, "cases": {}, "mismatches": []}
    for job in JOBS:
        for engine in ENGINES + (("pyarrow-index",) if job == "components" else ()):
            name = f"{engine}_{job}"
            print(f"{rows:,} items: {name} ...", file=sys.stderr, flush=True)
            runs = [run_child(name, paths, timeout_s) for _ in range(repeat)]
            found["cases"][name] = result = _median_run(runs)
            if engine != "pyarrow" and "error" not in result and "error" not in found["cases"][f"pyarrow_{job}"]:
                for problem in check(Path(paths["out"]), job, engine):
                    found["mismatches"].append(f"{name}: {problem}")
                    print(f"!!! MISMATCH {rows:,} items, {name}: {problem}", file=sys.stderr, flush=True)
    shutil.rmtree(paths["out"], ignore_errors=True)  # the checks' outputs: up to ~100 MB at 10M
    return found


COLUMNS = (
    ("wall s", "s", "{:.1f}"),
    ("CPU s", "cpu_s", "{:.1f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:,.0f}"),
    ("RSS above start", "rss_above_mib", "{:,.0f}"),
    ("peak anon MiB", "peak_anon_mib", "{:,.0f}"),
    ("anon above start", "anon_above_mib", "{:,.0f}"),
    ("load (1 min)", "load", "{:.1f}"),
)


def report(results: list[dict]) -> str:
    lines = [
        "| items | job | engine | " + " | ".join(title for title, _, _ in COLUMNS) + " | same as library |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for found in results:
        for name, case in found["cases"].items():
            engine, job = name.split("_")
            if "error" in case:
                cells = [case["error"]] + [""] * (len(COLUMNS) - 2) + [f"{case['load']:.1f}"]
            else:
                cells = [fmt.format(case[key]) for _, key, fmt in COLUMNS]
            differs = any(m.startswith(name) for m in found["mismatches"])
            same = "-" if engine == "pyarrow" or "error" in case else ("NO" if differs else "yes")
            lines.append(f"| {found['rows']:,} | {job} | {engine} | " + " | ".join(cells) + f" | {same} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case; the one of median wall time is kept")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_case_here(args.child, json.loads(args.paths))
        return
    sys.path.insert(0, str(HERE))  # metadata_export, beside this file
    results = [measure(rows, args.timeout_s, args.repeat) for rows in args.rows]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(report(results))
    mismatches = [m for found in results for m in found["mismatches"]]
    if mismatches:
        print("\n!!! MISMATCH: " + "\n!!! MISMATCH: ".join(mismatches), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
