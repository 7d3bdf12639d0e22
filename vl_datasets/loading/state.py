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
    shards            for order "shards", {"window": shards shuffled together, "groups": a digest of
                      the items' shard numbers}, so a resume draws the same order on the same shards
                      (None otherwise; a state saved before this key existed has none)
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

from types import NoneType
from typing import Any, NoReturn

from ..errors import ConfigurationError, DatasetMismatchError
from .sampler import ORDERS
from .shard_order import MAX_WINDOW

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
OPTIONAL_KEYS = ("shards",)  # read as None when missing: states saved before they existed
IDENTITY_KEYS = ("dataset_id", "key", "version", "items", "fingerprint")
# A state's epoch beyond this is damage, not a run: with no generator state that this torch reads,
# a "random" order redraws two permutations per epoch before it from the seed (seconds per 100,000
# epochs even for a small dataset), and a hand-set 10**9 would never finish.
MAX_EPOCH = 100_000
MAX_WORLD_SIZE = 1 << 20
MAX_RANDOM_STATE_CHARS = 1 << 16  # torch's generator state is 5,056 bytes: ~6,700 base64 characters


def dataset_identity(dataset: Any) -> dict[str, Any]:
    """What pins a state to its items: a ``VisualLayerDataset``'s ``identity()`` (its cache entry
    and the fingerprint of its curated item list); any other dataset: its length alone."""
    identity = getattr(type(dataset), "identity", None)
    if callable(identity):
        return identity(dataset)
    return {"dataset_id": None, "key": None, "version": None, "items": len(dataset), "fingerprint": None}


def check_state(state: Any, dataset: Any) -> None:
    """Refuse a state this loader cannot resume: not a loader state, a damaged one, or one saved on
    other items.

    Every field's type and range is checked before any is used, so a damaged or hand-edited state
    is a ``ConfigurationError`` naming its field, never a wrong order, an empty epoch, a hang or a
    bare ``TypeError``. Messages name a bad value's type, and show the value only when it is short.
    """
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigurationError(f"Not a vl_datasets loader state (format {_shown(found)}, expected {STATE_FORMAT!r}).")
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise ConfigurationError(f"A damaged loader state: missing {missing}.")
    _check_order(state)
    saved = _checked_identity(state["dataset"])
    _check_progress(state, saved["items"])
    _check_skipped(state["skipped"])
    _check_same_items(saved, dataset_identity(dataset))


def _check_order(state: dict[str, Any]) -> None:
    """The fields that say how the epochs' orders are drawn: order, seed, random_state, epoch."""
    order = state["order"]
    if order not in (*ORDERS, "custom"):
        _damaged("order", order, f"one of {[*ORDERS, 'custom']}")
    _check_int(state, "epoch", 0, MAX_EPOCH)
    if order == "custom":
        if state["seed"] is not None and not _is_int(state["seed"]):
            _damaged("seed", state["seed"], "an integer or None")
    else:
        # torch seeds a generator from seed + epoch: it must stay a 64-bit seed.
        _check_int(state, "seed", -(1 << 63), (1 << 64) - 1 - MAX_EPOCH)
    _check_shards(order, state.get("shards"))
    random_state = state["random_state"]
    if random_state is None:
        return
    if order != "random":
        _damaged("random_state", random_state, f"None for order {order!r}")
    if (
        not isinstance(random_state, (list, tuple))
        or len(random_state) != 2
        or not _is_int(random_state[0])
        or not 0 <= random_state[0] <= state["epoch"]
        or not isinstance(random_state[1], str)
        or len(random_state[1]) > MAX_RANDOM_STATE_CHARS
    ):
        _damaged("random_state", random_state, "[an epoch up to the state's epoch, a base64 generator state]")


def _check_shards(order: str, shards: Any) -> None:
    """``shards``: the "shards" order's window and groups digest, None for any other order."""
    if order != "shards":
        if shards is not None:
            _damaged("shards", shards, f"None for order {order!r}")
        return
    if (
        not isinstance(shards, dict)
        or not _is_int(shards.get("window"))
        or not 1 <= shards["window"] <= MAX_WINDOW
        or not isinstance(shards.get("groups"), str)
        or len(shards["groups"]) > 64
    ):
        _damaged("shards", shards, f'{{"window": 1 to {MAX_WINDOW:,}, "groups": a digest}}')


def _check_progress(state: dict[str, Any], items: int) -> None:
    """Where the epoch stands, and who saved it. With the loader's own order, position counts items
    of the epoch's global order (0 to the item count); with the caller's sampler, index batches."""
    custom = state["order"] == "custom"
    _check_int(state, "position", 0, None if custom else items)
    _check_int(state, "batches_yielded", 0, None if custom else items)
    _check_int(state, "world_size", 1, MAX_WORLD_SIZE)
    _check_int(state, "rank", 0, state["world_size"] - 1)
    if state["batch_size"] is not None:
        _check_int(state, "batch_size", 1, None)
    if not isinstance(state["drop_last"], bool):
        _damaged("drop_last", state["drop_last"], "true or false")


def _checked_identity(saved: Any) -> dict[str, Any]:
    """The state's ``dataset`` field, once it is what ``dataset_identity`` writes."""
    if not isinstance(saved, dict):
        _damaged("dataset", saved, "a dict")
    missing = [key for key in IDENTITY_KEYS if key not in saved]
    if missing:
        raise ConfigurationError(f"A damaged loader state: dataset lacks {missing}.")
    for key in ("dataset_id", "key", "version", "fingerprint"):
        if saved[key] is not None and not isinstance(saved[key], str):
            _damaged(f"dataset.{key}", saved[key], "a string or None")
    _check_int(saved, "items", 0, None, field="dataset.items")
    return saved


def _check_skipped(skipped: Any) -> None:
    """``skipped``: a list of [media_id, path, reason], each a string."""
    if not isinstance(skipped, list):
        _damaged("skipped", skipped, "a list")
    for i, entry in enumerate(skipped):
        if not isinstance(entry, (list, tuple)) or len(entry) != 3 or not all(isinstance(v, str) for v in entry):
            _damaged(f"skipped[{i}]", entry, "[media_id, path, reason], three strings")


def _check_same_items(saved: dict[str, Any], current: dict[str, Any]) -> None:
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to a state


def _check_int(fields: dict[str, Any], key: str, low: int, high: int | None, *, field: str | None = None) -> None:
    value = fields[key]
    if not _is_int(value) or value < low or (high is not None and value > high):
        expected = f"an integer from {low:,}" + (f" to {high:,}" if high is not None else "")
        _damaged(field or key, value, expected)


def _damaged(field: str, value: Any, expected: str) -> NoReturn:
    raise ConfigurationError(
        f"A damaged loader state: {field} is {_shown(value)}, expected {expected}. "
        "Was it saved by this loader's state_dict()?"
    )


def _shown(value: Any) -> str:
    """A value for a message: its repr when short, else only its type (a state may hold megabytes)."""
    if isinstance(value, (int, float, str, NoneType)) and not isinstance(value, bool):
        text = repr(value)
        if len(text) <= 40:
            return f"{text} ({type(value).__name__})"
    return f"a {type(value).__name__}" if not isinstance(value, bool) else f"{value} (bool)"


def _describe(identity: dict[str, Any]) -> str:
    fingerprint = (identity["fingerprint"] or "none")[:12]
    source = f"dataset {identity['dataset_id']!r} " if identity["dataset_id"] else ""
    return f"{identity['items']:,} items ({source}version {identity['version']}, fingerprint {fingerprint})"
