"""Adapters to training frameworks, each a thin module over the public dataset and loader API.

    huggingface   batches as ``transformers`` models take them, a ``Trainer`` fed by our loader
    lightning     a ``LightningDataModule``: a leakage-safe split, curation rules as hyperparameters,
                  the loader's position in Lightning's checkpoints
    jax           a ``grain`` data source, and NumPy batches in our loader's order with its resume state

Each module imports its framework when it is imported itself, never before: ``import vl_datasets``
and ``import vl_datasets.integrations`` load none of them. Install the framework with the matching
extra: ``pip install "vl_datasets[hf]"``, ``[lightning]``, ``[jax]``.
"""
