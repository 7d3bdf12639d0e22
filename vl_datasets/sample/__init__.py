"""The sample dataset shipped in the package: real handwritten digits with Visual Layer metadata.

``SAMPLE_ROOT`` is a folder in the local service's layout (one folder per dataset id), so
``LocalVisualLayer(SAMPLE_ROOT)`` or ``vl-datasets serve --sample`` serves it as
``SAMPLE_DATASET_ID``. ``scripts/build_sample_dataset.py`` in the repository (not shipped) makes
it; its docstring says how the metadata is computed.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DATASET_ID = "sample-digits"
SAMPLE_ROOT = Path(__file__).resolve().parent / "data"
