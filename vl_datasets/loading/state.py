"""What a loader's ``state_dict()`` holds, and the checks a state passes before it is loaded.

The state is a small dict of plain values (ints, strings, booleans, lists, None): ``torch.save``
then ``torch.load`` (``weights_only=True``) and JSON both give it back unchanged. Its keys:

    format            "vl_datasets.loader/1"
    epoch             the epoch that the next ``iter(loader)`` begins or continues, from 0
    position          how many items of that epoch's global order are done, by all ranks together
    batches_yielded   how many batches this rank had yielded in that epoch
    order, seed       how each epoch's order is drawn (see ``vl_datasets.loading.sampler``); order
                      "custom" for a sampler of the caller's own, which is fast-forwarded by index
                      instead: position then counts this rank's index batches
    random_state      for order "random", [e, base64]: the generator's state before epoch e's draw,
                      so that a resume draws the epoch's order at once (None otherwise)
    world_size, rank  who saved it: any rank's state resumes every rank, at any world size
    batch_size, drop_last
    dataset           the cache entry (dataset_id, key digest, version) and the curated item list
                      (items, fingerprint) the order indexes into
    skipped           [media_id, path, reason] of each unreadable item this rank skipped so far
                      in the epoch, reported again when the resumed epoch ends

A loader that has finished an epoch saves the next one at position 0. One that has yielded the
last batch of an epoch but was not asked for another saves that epoch at its end: the resumed
``iter(loader)`` yields nothing, and the epoch after it follows, as a training loop that counts
its epochs expects.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError, DatasetMismatchError
from .sampler import ORDERS

STATE_FORMAT = "vl_datasets.loader/1"
KEYS = (
    "format",
    "epoch",
    "position",
    "batches_yielded",
    "order",
    "seed",
    "random_state",
    "world_size",
    "rank",
    "batch_size",
    "drop_last",
    "dataset",
    "skipped",
)


def dataset_identity(dataset: Any) -> dict[str, Any]:
    """What pins a state to its items: a ``VisualLayerDataset``'s ``identity()`` (its cache entry
    and the fingerprint of its curated item list); any other dataset: its length alone."""
    identity = getattr(type(dataset), "identity", None)
    if callable(identity):
        return identity(dataset)
    return {"dataset_id": None, "key": None, "version": None, "items": len(dataset), "fingerprint": None}


def check_state(state: Any, dataset: Any) -> None:
    """Refuse a state this loader cannot resume: not a loader state, or saved on other items."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigurationError(f"Not a vl_datasets loader state (format {found!r}, expected {STATE_FORMAT!r}).")
    missing = [key for key in KEYS if key not in state]
    if missing or state["order"] not in (*ORDERS, "custom"):
        raise ConfigurationError(f"A damaged loader state: missing {missing}, order {state.get('order')!r}.")
    saved, current = state["dataset"], dataset_identity(dataset)
    same = (
        saved["fingerprint"] == current["fingerprint"]
        if saved["fingerprint"] and current["fingerprint"]
        else saved["items"] == current["items"]
    )
    if not same:
        raise DatasetMismatchError(
            f"This loader state was saved on {_describe(saved)}, but the dataset holds {_describe(current)}. "
            "The items differ (another export version or other curation rules), so the state's order "
            f"would mix them. Reopen exactly that version with the same rules: VisualLayerDataset("
            f"{saved['dataset_id']!r}, version={saved['version']!r}, ...), or start the run afresh.",
            version=saved["version"],
            fingerprint=saved["fingerprint"],
        )


def _describe(identity: dict[str, Any]) -> str:
    fingerprint = (identity["fingerprint"] or "none")[:12]
    source = f"dataset {identity['dataset_id']!r} " if identity["dataset_id"] else ""
    return f"{identity['items']:,} items ({source}version {identity['version']}, fingerprint {fingerprint})"
