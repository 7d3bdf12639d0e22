"""Imports run one way across the sides (see the README's layout), the server shares no code, and only
cache/ lays out the cache root."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

import vl_datasets.server
from tests.helpers import REPO, child_env
from tests.waits import run_child
from vl_datasets import fetch_export


def test_side_imports_run_one_way(tmp_path):
    """import vl_datasets loads no network library; opening a local export loads none either."""
    from vl_datasets.testing import write_dataset

    write_dataset(tmp_path, "export", n_items=3)
    # tqdm is not checked after the open: torch itself imports it.
    network = ("requests", "urllib3", "jwt", "fsspec", "vl_datasets.api.client", "vl_datasets.api.transport")
    code = (
        "import sys\n"
        "import vl_datasets\n"
        f"print(sorted(m for m in {(*network, 'tqdm', 'torch')!r} if m in sys.modules))\n"
        "from vl_datasets import VisualLayerDataset\n"
        f"ds = VisualLayerDataset.from_export({str(tmp_path / 'export')!r}, cache_dir={str(tmp_path / 'c')!r})\n"
        "assert len(ds) == 3\n"
        f"print(sorted(m for m in {network!r} if m in sys.modules))\n"
    )
    result = run_child([sys.executable, "-c", code], env=child_env())
    assert result.returncode == 0, result.stderr
    after_import, after_open = result.stdout.split("\n")[:2]
    assert after_import == "[]", f"import vl_datasets loaded {after_import}"
    assert after_open == "[]", f"opening a local export loaded {after_open}"


def test_a_cached_dataset_opens_without_the_api_side(quick_vl, quick_client, tmp_path):
    fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    code = (
        "import sys\n"
        "from vl_datasets import VisualLayerDataset\n"
        f"ds = VisualLayerDataset('ds-ready', cache_dir={str(tmp_path)!r})\n"
        "assert len(ds) == 8\n"
        "print(sorted(m for m in ('requests', 'urllib3', 'jwt', 'vl_datasets.api.client') if m in sys.modules))\n"
    )
    env = {**child_env(), "VL_API_URL": quick_vl.url}
    result = run_child([sys.executable, "-c", code], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"a cache hit loaded the API side: {result.stdout}"
    assert quick_vl.count("export") == 1


def test_metadata_and_loading_never_import_the_api_side():
    """Imports run one way: the metadata and loading sides may import the cache, never the API."""
    import ast

    package = REPO / "vl_datasets"
    offenders = []
    for side in ("metadata", "loading", "cache"):
        for module in (package / side).glob("*.py"):
            tree = ast.parse(module.read_text())
            # Names imported for type checking only never load at run time.
            typing_only = {
                id(n)
                for block in ast.walk(tree)
                if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
                for n in ast.walk(block)
            }
            for node in ast.walk(tree):
                if id(node) in typing_only:
                    continue
                if isinstance(node, ast.ImportFrom) and node.level >= 2 and (node.module or "").startswith("api"):
                    offenders.append(f"{side}/{module.name}: from {'.' * node.level}{node.module}")
    assert offenders == [], f"these modules import the API side: {offenders}"


def test_the_metadata_side_loads_neither_torch_nor_the_network():
    import sys

    # The package root is lazy, so the metadata modules import as they are, with nothing faked.
    code = (
        "import sys\n"
        "from vl_datasets.metadata import curated, curation, image_paths, index, normalize, options, read\n"
        "from vl_datasets.metadata import splits, targets\n"
        "print(sorted(m for m in ('torch', 'requests', 'urllib3', 'jwt') if m in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = run_child([sys.executable, "-c", code], cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"the metadata side loaded {out.stdout.strip()}"


def test_the_item_side_of_a_dataset_works_without_torch(tmp_path):
    """CuratedItems curates an export's rows and builds its targets with torch never imported."""
    from vl_datasets.testing import write_dataset

    write_dataset(tmp_path, "export", n_items=6)
    code = (
        "import sys\n"
        "from vl_datasets.metadata.curated import CuratedItems, TargetOptions\n"
        "from vl_datasets.metadata.curation import CurationRules\n"
        "from vl_datasets.metadata.index import build_index\n"
        f"rows = build_index({str(tmp_path / 'export')!r})\n"
        "rules = CurationRules(min_uniqueness=0.0, keep_unscored=True)\n"
        "items = CuratedItems(rows, rules, TargetOptions(task='classification'))\n"
        "assert len(items) == 6 and items.classes and isinstance(items.target(0), int), items\n"
        "assert items.curation_details(rows).column('removed_by').null_count == 6\n"
        "assert len(items.fingerprint()) == 64\n"
        "print(sorted(m for m in ('torch', 'vl_datasets.loading') if m in sys.modules))"
    )
    out = run_child([sys.executable, "-c", code], env=child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"the item side loaded {out.stdout.strip()}"


def test_the_report_and_the_loader_use_only_the_public_face_of_the_dataset():
    """report.py stands above loading/ and reads the dataset through its public methods; the loader
    reads no dataset field: it asks through batch_layout(), identity() and load_batch()."""
    package = REPO / "vl_datasets"
    for path in (package / "loading").glob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert not any((n.module or "").endswith("report") for n in top_level), f"loading/{path.name} imports report"
    for name in ("report.py", "loading/loader.py", "loading/state.py", "loading/batch_sampler.py"):
        tree = ast.parse((package / name).read_text())
        private = [
            f"{n.value.id}.{n.attr}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id in ("dataset", "ds")
            and n.attr.startswith("_")
        ]
        probes = [
            n.args[1].value
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
            and getattr(n.func, "id", None) == "getattr"
            and isinstance(n.args[0], ast.Name)
            and n.args[0].id == "dataset"
            and isinstance(n.args[1], ast.Constant)
        ]
        assert (private, probes) == ([], []), f"{name} reads the dataset's fields: {private + probes}"


def test_the_package_root_exports_every_error():
    import vl_datasets
    from vl_datasets import errors

    missing = sorted(set(errors.__all__) - set(vl_datasets.__all__))
    assert missing == [], f"vl_datasets.__all__ lacks the errors {missing}"
    assert all(getattr(vl_datasets, name) is getattr(errors, name) for name in errors.__all__)
    lazy = [name for name in vl_datasets.__all__ if not hasattr(vl_datasets, name)]
    assert lazy == [], f"names in __all__ that do not resolve: {lazy}"


def test_the_server_shares_no_code_with_the_client():
    # Only the contract is shared: a quick_client bug must not be able to hide behind the same code here.
    for module in Path(vl_datasets.server.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{module.name} imports from outside the server package"
                assert node.level == 1 or not (node.module or "").startswith("vl_datasets"), module.name
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("vl_datasets") for alias in node.names), module.name


# -- the documented direction, checked on every module's imports ------------------------------------

BASE = {"errors", "config", "records", "redaction", "atomic", "locks", "backoff", "_version"}
# For each side: the first-level names of the package it may import (the base always).
ALLOWED = {
    "base": BASE,
    "api": BASE | {"api"},
    "cache": BASE | {"cache"},
    "metadata": BASE | {"metadata"},
    "loading": BASE | {"cache", "metadata", "loading"},
    "exports": BASE | {"api", "cache", "metadata", "exports", "chunks", "tasks"},
    "report": BASE | {"metadata", "loading", "html_parts"},
    # Above the dataset: they read what it and the loader hand out, and nothing imports them.
    "evaluation": BASE | {"metadata", "loading", "html_parts", "evaluation"},
    "integrations": BASE | {"metadata", "loading", "integrations"},
}
SIDES = {**dict.fromkeys(BASE, "base"), "chunks": "exports", "tasks": "exports", "html_parts": "report"}
# Crossings the README names: the cache indexes through the metadata's index functions (a version as
# it is published; an index that no longer reads, written again); a dataset opened by id fetches it,
# and writes its report, through imports made only when called.
MAY_CALL = {
    "cache": {
        ("metadata.index", "index_export"),
        ("metadata.index", "metadata_below_root"),
        ("metadata.index", "read_index"),
        ("metadata.index", "rewritable"),
        ("metadata.index", "write_export_index"),
    },
    "loading": {("exports", "fetch_export"), ("report", "write_report")},
}
PACKAGE = REPO / "vl_datasets"


def _typing_only(tree: ast.AST) -> set[int]:
    """The nodes under ``if TYPE_CHECKING``: their imports never run."""
    return {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }


def _runtime_imports(module: Path, package_dir: Path = PACKAGE) -> list[tuple[str, str | None]]:
    """(package module, imported name or None) for every import of ``vl_datasets`` that runs,
    in functions too, e.g. ``("cache.store", "CacheStore")`` or ``("errors", None)``."""
    tree = ast.parse(module.read_text())
    skip = _typing_only(tree)
    package = module.relative_to(package_dir).parent.parts
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            for alias in node.names:
                as_module = ".".join(p for p in (target, alias.name) if p)
                is_module = (package_dir / (as_module.replace(".", "/") + ".py")).exists() or not target
                found.append((as_module, None) if is_module else (target, alias.name))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vl_datasets."):
            found += [(node.module.removeprefix("vl_datasets."), alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("vl_datasets.")]
            found += [(name.removeprefix("vl_datasets."), None) for name in names]
    return found


def _side(module: Path, package_dir: Path) -> str | None:
    top = module.relative_to(package_dir).parts[0].removesuffix(".py")
    return SIDES.get(top, top if top in ALLOWED else None)


def _direction_offenders(package_dir: Path = PACKAGE) -> list[str]:
    offenders = []
    for module in sorted(package_dir.rglob("*.py")):
        side = _side(module, package_dir)
        if side is None:  # the facade, cli/, server/ (checked above), testing.py, sample/
            continue
        for target, name in _runtime_imports(module, package_dir):
            if target.split(".")[0] in ALLOWED[side] or (target, name) in MAY_CALL.get(side, set()):
                continue
            offenders.append(
                f"{module.relative_to(package_dir.parent)} ({side}) imports {target}{'.' + name if name else ''}"
            )
    return offenders


def test_every_side_imports_only_in_the_documented_direction():
    """errors/config/records <- api <- exports/chunks; the cache imports nothing of the api,
    metadata (but its index functions) or loading; metadata nothing of loading or api;
    loading nothing of the api; report.py above loading; nothing below imports the cli."""
    offenders = _direction_offenders()
    assert offenders == [], "imports against the documented direction:\n" + "\n".join(offenders)


# The layout's names: only cache/ may spell them, so only cache/ builds a path inside the root.
LAYOUT_NAMES = (".chunks", ".prepared", "CACHEDIR.TAG", "exports/", "opened/", "mirrors/", ".task.json", ".staging-")


def _strings(tree: ast.AST) -> list[str]:
    """Every string constant but docstrings (which may describe the layout)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    constants = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return [n.value for n in constants if id(n) not in docstrings]


def _layout_offenders(package_dir: Path = PACKAGE) -> list[str]:
    offenders = []
    for module in sorted(package_dir.rglob("*.py")):
        rel = module.relative_to(package_dir)
        if rel.parts[0] in ("cache", "server"):  # the server keeps its files in no cache root
            continue
        for text in _strings(ast.parse(module.read_text())):
            if any(name in text for name in LAYOUT_NAMES) or text == "derived" or text.startswith("derived/"):
                offenders.append(f"{rel} spells {text!r}")
        for target, name in _runtime_imports(module, package_dir):
            if target == "cache.layout" or (target.startswith("cache.") and name is not None and name.isupper()):
                offenders.append(f"{rel} imports the layout's {target}{'.' + name if name else ''}")
    return offenders


def test_no_module_outside_the_cache_builds_a_path_inside_its_root():
    offenders = _layout_offenders()
    assert offenders == [], "only the cache store lays out its root:\n" + "\n".join(offenders)


def test_the_layout_checks_catch_an_offender(tmp_path):
    """A module that imports the API from loading/ and spells a layout name is caught by both."""
    package = tmp_path / "vl_datasets"
    for name in ("api/client.py", "cache/store.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).touch()
    probe = package / "loading" / "probe.py"
    probe.parent.mkdir()
    probe.write_text('from ..api.client import Client\nfrom ..cache.store import EXPORTS\nFOLDER = ".chunks"\n')
    assert _direction_offenders(package) == ["vl_datasets/loading/probe.py (loading) imports api.client.Client"]
    assert _layout_offenders(package) == [
        "loading/probe.py spells '.chunks'",
        "loading/probe.py imports the layout's cache.store.EXPORTS",
    ]


FRAMEWORKS = {"huggingface": "transformers", "lightning": "pytorch_lightning", "jax": "grain"}


def test_no_framework_loads_with_the_package():
    """import vl_datasets (and vl_datasets.integrations) loads none of transformers, Lightning, JAX or grain."""
    frameworks = ("transformers", "accelerate", "pytorch_lightning", "jax", "grain")
    code = (
        "import sys\n"
        "import vl_datasets, vl_datasets.integrations\n"
        "from vl_datasets import VisualLayerDataset, CurationRules, leakage_safe_split\n"
        f"print(sorted(m for m in {frameworks!r} if m in sys.modules))\n"
    )
    result = run_child([sys.executable, "-c", code], env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"import vl_datasets loaded {result.stdout.strip()}"


@pytest.mark.parametrize("integration", sorted(FRAMEWORKS))
def test_each_integration_imports_its_own_framework_only(integration):
    """Read from the source, not sys.modules: Lightning itself imports transformers when it is installed."""
    tree = ast.parse((REPO / "vl_datasets" / "integrations" / f"{integration}.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level
    }
    frameworks = {"transformers", "accelerate", "pytorch_lightning", "lightning", "jax", "grain", "flax"}
    assert imported & frameworks == {FRAMEWORKS[integration]}


def test_a_worker_that_unpickles_a_dataset_and_reads_items_imports_no_pandas(tmp_path):
    """A spawned DataLoader worker unpickles the dataset and reads items: pandas, which pyarrow
    imports on its first conversion of a Python None, would cost each one ~0.4 s and ~24 MiB."""
    import pickle

    from vl_datasets import VisualLayerDataset
    from vl_datasets.testing import write_dataset

    write_dataset(tmp_path, "export", n_items=3)
    ds = VisualLayerDataset.from_export(tmp_path / "export", cache_dir=tmp_path / "c")
    (tmp_path / "ds.pickle").write_bytes(pickle.dumps(ds))
    code = (
        "import pickle, sys\n"
        f"ds = pickle.loads(open({str(tmp_path / 'ds.pickle')!r}, 'rb').read())\n"
        "image, target = ds[0]\n"
        "print(sorted(m for m in ('pandas',) if m in sys.modules))\n"
    )
    result = run_child([sys.executable, "-c", code], env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"a worker's reads loaded {result.stdout.strip()}"
