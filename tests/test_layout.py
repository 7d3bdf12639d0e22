"""Imports run one way across the sides (api -> cache -> metadata -> loading), and the server shares no code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vl_datasets.server
from tests.helpers import REPO, child_env
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
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env())
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
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
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
    import subprocess
    import sys

    # The package root is lazy, so the metadata modules import as they are, with nothing faked.
    code = (
        "import sys\n"
        "from vl_datasets.metadata import curation, image_paths, index, normalize, read, splits, targets\n"
        "print(sorted(m for m in ('torch', 'requests', 'urllib3', 'jwt') if m in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"the metadata side loaded {out.stdout.strip()}"


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
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=child_env())
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
