"""Loader state: the exact rest of an interrupted epoch, with any number of workers, on the export version it pins."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.loading.helpers import ITEMS, CountingTransform
from tests.waits import cpu_of_children, wait_until
from vl_datasets import errors, fetch_export
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.state import KEYS, OPTIONAL_KEYS
from vl_datasets.metadata.list_build import fingerprint_ids

EPOCHS = 4  # a resume in epoch 3 has three whole epochs before it


def ids(batch):
    return [row["media_id"] for row in batch[1]]


def loader_of(ds, num_workers, seed=5, **options):
    context = {"multiprocessing_context": "fork"} if num_workers else {}
    return ds.dataloader(3, num_workers=num_workers, seed=seed, **context, **options)


def epochs_of(loader, count):
    return [[ids(batch) for batch in loader] for _ in range(count)]


def through_json_and_torch(state):
    buffer = io.BytesIO()
    torch.save(json.loads(json.dumps(state)), buffer)
    buffer.seek(0)
    return torch.load(buffer)  # weights_only=True, torch's default


@pytest.fixture
def ds(folder, tmp_path):
    return VisualLayerDataset.from_export(folder, task=None, image_size=8, cache_dir=tmp_path / "cache")


@pytest.fixture
def uninterrupted(ds):
    return epochs_of(loader_of(ds, 0), EPOCHS)


def test_the_state_is_plain_values_that_torch_load_and_json_give_back(ds):
    loader = loader_of(ds, 0)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    assert sorted(state) == sorted(KEYS + OPTIONAL_KEYS)
    assert through_json_and_torch(state) == state
    assert (state["epoch"], state["position"], state["batches_yielded"]) == (0, 3, 1)
    assert state["dataset"]["fingerprint"] == ds.fingerprint()
    assert state["dataset"]["version"] == ds.entry.version


@pytest.mark.parametrize(
    ("epoch", "cut", "workers_before", "workers_after"),
    [(0, 1, 0, 2), (0, 3, 2, 0), (3, 2, 2, 2), (3, 1, 0, 0), (3, 2, 2, 0)],
)
def test_a_resumed_epoch_yields_exactly_the_rest_and_later_epochs_follow(
    ds, uninterrupted, epoch, cut, workers_before, workers_after
):
    before = loader_of(ds, workers_before)
    done = epochs_of(before, epoch)
    batches = iter(before)
    part = [ids(next(batches)) for _ in range(cut)]
    state = through_json_and_torch(before.state_dict())
    after = loader_of(ds, workers_after, seed=999)  # the state's seed wins: the order is the interrupted run's
    after.load_state_dict(state)
    assert after.epoch == epoch
    rest = [ids(batch) for batch in after]
    assert [*done, part + rest] == uninterrupted[: epoch + 1], f"epoch {epoch} cut after batch {cut} resumed wrongly"
    assert epochs_of(after, EPOCHS - epoch - 1) == uninterrupted[epoch + 1 :], "the epochs after the resumed one differ"


def test_the_state_counts_only_batches_handed_over_not_those_prefetched(ds, uninterrupted):
    counter = CountingTransform()
    counted = VisualLayerDataset.from_export(
        ds.entry.path, task=None, image_size=8, cache_dir=ds.entry.path.parent, transform=counter
    )
    loader = loader_of(counted, 2)
    assert epochs_of(loader, 1) == uninterrupted[:1]
    wait_until(
        lambda: counter.count.value > ITEMS, "the workers to prefetch into the next epoch", progress=cpu_of_children()
    )
    assert counter.count.value > ITEMS, "the workers never prefetched into the next epoch"
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (1, 0), "prefetched batches of epoch 1 were counted"
    resumed = loader_of(counted, 0)
    resumed.load_state_dict(state)
    assert epochs_of(resumed, 1) == uninterrupted[1:2]


def test_a_state_saved_after_the_last_batch_resumes_to_an_empty_rest_then_the_next_epoch(ds, uninterrupted):
    loader = loader_of(ds, 0)
    batches = iter(loader)
    for _ in range(len(loader)):
        next(batches)  # a training loop checkpointing after its last step, before the loop ends
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (0, ITEMS)
    resumed = loader_of(ds, 2)
    resumed.load_state_dict(state)
    assert epochs_of(resumed, 2) == [[], uninterrupted[1]]


def test_load_state_dict_takes_effect_at_the_next_iter_and_empty_is_a_no_op(ds, uninterrupted):
    loader = loader_of(ds, 0)
    fresh = loader.state_dict()
    assert (fresh["epoch"], fresh["position"]) == (0, 0)
    loader.load_state_dict({})
    assert epochs_of(loader, 1) == uninterrupted[:1]
    state = {**fresh, "epoch": 2, "position": 6, "batches_yielded": 2}
    loader.load_state_dict(state)
    assert loader.state_dict() == state, "a loaded state not yet iterated is the state"
    assert [ids(batch) for batch in loader] == uninterrupted[2][2:]


def test_resuming_decodes_only_the_rest_of_the_epoch(ds):
    counter = CountingTransform()
    counted = VisualLayerDataset.from_export(
        ds.entry.path, task=None, image_size=8, cache_dir=ds.entry.path.parent, transform=counter
    )
    state = {**loader_of(counted, 0).state_dict(), "epoch": 3, "position": 9, "batches_yielded": 3}
    loader = loader_of(counted, 0)
    loader.load_state_dict(state)
    assert len([ids(batch) for batch in loader]) == 1
    assert counter.count.value == ITEMS - 9, "the resume decoded images of the part already done"


def test_images_skipped_before_the_cut_are_reported_when_the_resumed_epoch_ends(folder, tmp_path):
    corrupt = folder / "images" / "folder" / "img_4.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8, on_error="skip", cache_dir=tmp_path / "c")
    position = {media_id: i for i, media_id in enumerate(ds.media_ids)}["m004"]
    loader = ds.dataloader(3, num_workers=0, shuffle=False)
    batches = iter(loader)
    for _ in range(position // 3 + 1):  # up to and including the batch that skips m004
        next(batches)
    state = loader.state_dict()
    assert [s[0] for s in state["skipped"]] == ["m004"]
    resumed = ds.dataloader(3, num_workers=2, shuffle=False, multiprocessing_context="fork")
    resumed.load_state_dict(through_json_and_torch(state))
    list(resumed)
    assert [s.media_id for s in resumed.skipped] == ["m004"], "the skip before the cut was not reported"
    assert resumed.epoch == 1
    list(resumed)
    assert [s.media_id for s in resumed.skipped] == ["m004"], "the next epoch reported the skip twice"


def test_a_state_saved_on_other_items_is_refused_naming_its_version(folder, ds):
    state = loader_of(ds, 0).state_dict()
    fewer = VisualLayerDataset.from_export(folder, task=None, image_size=8, subset=ds.media_ids[1:])
    with pytest.raises(errors.DatasetMismatchError, match="version=") as caught:
        loader_of(fewer, 0).load_state_dict(state)
    assert caught.value.version == ds.entry.version
    assert caught.value.fingerprint == ds.fingerprint()
    assert isinstance(caught.value, errors.DataError)
    with pytest.raises(errors.ConfigurationError, match="Not a vl_datasets loader state"):
        loader_of(ds, 0).load_state_dict({"_num_yielded": 3})


def test_the_fingerprint_is_the_ids_in_order_however_chunked():
    ids_ = ["a", "bb", "", "ccc"]
    one = fingerprint_ids(pa.chunked_array([ids_]))
    assert fingerprint_ids(pa.chunked_array([ids_[:1], ids_[1:3], ids_[3:]])) == one
    assert fingerprint_ids(pa.array(["x", *ids_]).slice(1)) == one
    assert fingerprint_ids(pa.chunked_array([["a", "bb", "ccc", ""]])) != one, "the order is not in the fingerprint"
    assert fingerprint_ids(pa.chunked_array([["abb", "", "", "ccc"]])) != one, "the boundaries are not in it"


def test_a_callers_own_sampler_is_fast_forwarded_by_index(ds):
    from torch.utils.data import DistributedSampler

    def build():
        sampler = DistributedSampler(ds, num_replicas=2, rank=1, seed=3)
        return ds.dataloader(2, num_workers=0, sampler=sampler)

    whole = epochs_of(build(), 3)
    loader = build()
    epochs_of(loader, 2)
    batches = iter(loader)
    first = ids(next(batches))
    resumed = build()
    resumed.load_state_dict(loader.state_dict())
    assert [first] + [ids(batch) for batch in resumed] == whole[2]
    with pytest.raises(errors.ConfigurationError, match="sampler"):
        loader_of(ds, 0).load_state_dict(loader.state_dict())
    # Its position counts batches: at another batch size, drop_last or world size, other items.
    for batch_size, drop_last, replicas in [(3, False, 2), (2, True, 2), (2, False, 3)]:
        sampler = DistributedSampler(ds, num_replicas=replicas, rank=1, seed=3)
        other = ds.dataloader(batch_size, num_workers=0, sampler=sampler, drop_last=drop_last)
        with pytest.raises(errors.ConfigurationError, match="batch_size=2, drop_last=False on 2 rank"):
            other.load_state_dict(loader.state_dict())


def test_set_epoch_on_a_new_loaders_sampler_draws_that_epoch(ds):
    """The DistributedSampler pattern (and a loader built anew each epoch, as Lightning's reload
    does): without it each new loader drew epoch 0's order again."""
    whole = epochs_of(loader_of(ds, 0), 4)
    assert whole[1] != whole[2], "the epochs must differ for the test to prove anything"
    for epoch in (2, 1):
        fresh = loader_of(ds, 0)
        fresh.sampler.set_epoch(epoch)
        assert [ids(batch) for batch in fresh] == whole[epoch]
        assert [ids(batch) for batch in fresh] == whole[epoch + 1], "the loader counts on from the epoch set"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_set_epoch_between_epochs_draws_that_epoch_though_workers_prefetched_another(ds, num_workers):
    """Workers run on into the next epoch while the caller finishes this one: set_epoch naming
    another epoch drew the prefetched one's order, though the loader counted (and saved) the epoch set."""
    whole = epochs_of(loader_of(ds, 0), 4)
    loader = loader_of(ds, num_workers)
    assert [ids(batch) for batch in loader] == whole[0]
    loader.sampler.set_epoch(2)
    assert [ids(batch) for batch in loader] == whole[2]
    loader.sampler.set_epoch(3)  # the epoch the loader counts next: the stream goes on
    assert [ids(batch) for batch in loader] == whole[3]


# -- a pinned export version ------------------------------------------------------------------


def test_a_dataset_reopens_exactly_the_version_a_state_names(quick_vl, quick_client, tmp_path):
    old = VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, task=None, image_size=8)
    state = old.dataloader(3, num_workers=0, seed=1).state_dict()
    newer = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, refresh=True)
    assert newer.version != old.entry.version
    again = VisualLayerDataset(
        "ds-ready",
        client=quick_client,
        cache_dir=tmp_path,
        task=None,
        image_size=8,
        version=state["dataset"]["version"],
    )
    assert again.entry.version == old.entry.version
    assert again.entry.path == old.entry.path, "the old version's folder is not the one reopened"
    again.dataloader(3, num_workers=0).load_state_dict(state)
    assert quick_vl.count("export") == 2, "reopening a pinned version started an export"


def test_a_version_gone_from_the_cache_is_a_typed_miss_naming_it(quick_vl, quick_client, tmp_path):
    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    with pytest.raises(errors.VersionNotFoundError, match="v-gone") as caught:
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, version="v-gone")
    assert (caught.value.version, caught.value.key) == ("v-gone", entry.key.digest)
    assert entry.version in str(caught.value), "the message does not list the versions there are"
    assert isinstance(caught.value, errors.CacheMissError)
    with pytest.raises(errors.ConfigurationError, match="refresh"):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, version=entry.version, refresh=True)


# -- ranks, simulated in one process ------------------------------------------------------------


def rank_loaders(ds, monkeypatch, world_size, num_workers=0, **options):
    """One loader per rank of a ``world_size`` job, built as make_dataloader builds them under torchrun."""
    from vl_datasets.loading import sampler as sampler_module

    loaders = []
    for rank in range(world_size):
        monkeypatch.setattr(sampler_module.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(sampler_module.dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(sampler_module.dist, "get_world_size", lambda: world_size)
        loaders.append(loader_of(ds, num_workers, seed=3, **options))
    monkeypatch.undo()
    return loaders


@pytest.fixture
def ds24(tmp_path):
    from tests.loading.helpers import make_items
    from vl_datasets.testing import write_dataset

    write_dataset(tmp_path, "ranks", media_items=make_items(24))
    return VisualLayerDataset.from_export(tmp_path / "ranks", task=None, image_size=8, cache_dir=tmp_path / "c")


def resumed_on(ds24, monkeypatch, state, after: int, done: list, before: int) -> list[list]:
    """What each of ``after`` ranks reads once it resumes from ``state``, after ``before`` ranks read
    ``done``: asserted equal in length, and with ``done`` every item once."""
    rest = []
    for loader in rank_loaders(ds24, monkeypatch, after):
        loader.load_state_dict(state)
        rest.append([media_id for batch in loader for media_id in ids(batch)])
    assert len({len(shard) for shard in rest}) == 1, f"unequal shards {[len(s) for s in rest]}"
    together = done + [media_id for shard in rest for media_id in shard]
    assert sorted(together) == ds24.media_ids, f"{before} -> {after} ranks lost or repeated items"
    return rest


@pytest.mark.parametrize(("before", "after", "cut"), [(4, 2, 1), (2, 1, 1), (2, 4, 2), (2, 2, 1)])
def test_the_rest_of_an_epoch_is_split_among_another_world_size_with_none_lost_or_repeated(
    ds24, monkeypatch, before, after, cut
):
    old = rank_loaders(ds24, monkeypatch, before)
    epochs_of(old[0], 1)  # every rank: the cut is in epoch 1
    for loader in old[1:]:
        epochs_of(loader, 1)
    iterators = [iter(loader) for loader in old]
    done = [media_id for batches in iterators for _ in range(cut) for media_id in ids(next(batches))]
    state = old[before - 1].state_dict()  # any rank's state resumes every rank
    assert (state["epoch"], state["position"]) == (1, 3 * cut * before)
    rest = resumed_on(ds24, monkeypatch, state, after, done, before)
    if before == after:
        whole = []
        for loader in rank_loaders(ds24, monkeypatch, after):
            epochs_of(loader, 1)
            whole.append([media_id for batch in loader for media_id in ids(batch)])
        assert rest == [shard[3 * cut :] for shard in whole], (
            "at the same world size a rank did not continue its own shard"
        )


# -- a damaged or hand-edited state -------------------------------------------------------------


def _saved(ds):
    loader = loader_of(ds, 0)
    batches = iter(loader)
    next(batches)
    return through_json_and_torch(loader.state_dict())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("position", -3),  # once yielded ITEMS + 3 items and shifted the next epoch
        ("position", ITEMS + 1),
        ("position", 10**12),  # once an empty rest
        ("position", "3"),
        ("position", 3.0),
        ("position", True),
        ("epoch", -1),
        ("epoch", 10**9),  # once redrew two billion permutations: the next iter never came
        ("epoch", 2.0),
        ("epoch", None),
        ("batches_yielded", -1),
        ("seed", "5"),
        ("seed", 1 << 64),
        ("order", "shuffled"),
        ("order", ["random"]),
        ("random_state", [5, "AAAA"]),  # a generator state saved after the state's epoch
        ("random_state", "AAAA"),
        ("random_state", [0, "A" * (1 << 20)]),
        ("world_size", 0),
        ("rank", 1),  # of a world of one
        ("batch_size", 0),
        ("drop_last", "no"),
        ("skipped", None),
        ("skipped", [["m000", "path"]]),
        ("skipped", [["m000", None, "reason"]]),
        ("skipped", "m000"),
        ("dataset", {}),
        ("dataset", None),
        ("dataset", "x" * 10_000),
        ("shards", {"window": 2, "groups": "ab"}),  # only order "shards" has shards
    ],
)
def test_a_damaged_state_is_refused_naming_the_field_before_anything_moves(ds, field, value):
    state = _saved(ds)
    state[field] = value
    loader = loader_of(ds, 0)
    with pytest.raises(errors.ConfigurationError, match=rf"\b{field}\b") as caught:
        loader.load_state_dict(state)
    assert len(str(caught.value)) < 400, "the message echoes a huge value"
    assert loader.state_dict()["position"] == 0 and loader.epoch == 0, "a refused state moved the loader"
    assert len([media_id for batch in loader for media_id in ids(batch)]) == ITEMS


@pytest.mark.parametrize(
    ("key", "value"),
    [("items", "11"), ("items", -1), ("fingerprint", 12), ("version", ["v1"]), ("key", None)],
)
def test_a_damaged_dataset_identity_is_refused_naming_its_key(ds, key, value):
    state = _saved(ds)
    if value is None:
        del state["dataset"][key]
    else:
        state["dataset"][key] = value
    with pytest.raises(errors.ConfigurationError, match=key):
        loader_of(ds, 0).load_state_dict(state)


def test_every_position_of_a_real_epoch_resumes_to_exactly_its_rest(ds, uninterrupted):
    whole = [media_id for batch in uninterrupted[1] for media_id in batch]
    for position in (0, 1, ITEMS - 1, ITEMS):  # the bounds a check must keep open
        state = {**_saved(ds), "epoch": 1, "position": position, "random_state": None}
        loader = loader_of(ds, 0)
        loader.load_state_dict(state)
        assert [media_id for batch in loader for media_id in ids(batch)] == whole[position:]


# -- the shard-aware order of a dataset read from shards -------------------------------------------


class Shards:
    """A dataset image side's ``item_shards`` answer, as a shared prepared store gives it."""

    def __init__(self, groups):
        self.groups = groups

    def __call__(self):
        return self.groups


def read_from_shards(ds, per_shard=2):
    groups = np.arange(len(ds)) // per_shard
    groups[len(ds) // 3] = -1  # an item missing from the store
    ds.images.item_shards = Shards(groups)
    return ds


@pytest.fixture
def sharded(ds):
    return read_from_shards(ds)


@pytest.mark.parametrize(
    ("epoch", "cut", "workers_before", "workers_after"),
    [(0, 1, 0, 2), (3, 2, 2, 0), (3, 1, 0, 0)],
)
def test_a_dataset_read_from_shards_gets_the_shard_order_and_resumes_exactly(
    sharded, epoch, cut, workers_before, workers_after
):
    uninterrupted = epochs_of(loader_of(sharded, 0, shard_window=2), EPOCHS)
    before = loader_of(sharded, workers_before, shard_window=2)
    assert before.sampler.order == "shards", "a dataset read from shards did not get the shard order"
    done = epochs_of(before, epoch)
    batches = iter(before)
    part = [ids(next(batches)) for _ in range(cut)]
    state = through_json_and_torch(before.state_dict())
    assert (state["order"], state["shards"]["window"]) == ("shards", 2)
    after = loader_of(sharded, workers_after, seed=999, shard_window=5)  # the state's seed and window win
    after.load_state_dict(state)
    rest = [ids(batch) for batch in after]
    assert [*done, part + rest] == uninterrupted[: epoch + 1], f"epoch {epoch} cut after batch {cut} resumed wrongly"
    assert epochs_of(after, EPOCHS - epoch - 1) == uninterrupted[epoch + 1 :], "the epochs after the resumed one differ"


def test_the_shard_order_plays_the_shards_a_window_at_a_time(sharded):
    groups = sharded.item_shards()
    by_id = dict(zip(sharded.media_ids, groups.tolist()))
    played = [by_id[media_id] for batch in epochs_of(loader_of(sharded, 0, shard_window=2), 1)[0] for media_id in batch]
    in_shards = [shard for shard in played if shard >= 0]
    left, window = Counter(in_shards), set()
    for shard in in_shards:  # a window opens on 2 shards and closes once all their items are played
        window.add(shard)
        left[shard] -= 1
        assert len(window) <= 2, f"shards {in_shards} not played two at a time"
        if len(window) == 2 and not any(left[s] for s in window):
            window = set()


@pytest.mark.parametrize(("before", "after", "cut"), [(4, 2, 1), (2, 1, 1), (2, 2, 1), (1, 3, 2)])
def test_the_shard_order_splits_the_rest_among_another_world_size(ds24, monkeypatch, before, after, cut):
    read_from_shards(ds24, per_shard=3)
    old = rank_loaders(ds24, monkeypatch, before)
    assert old[0].sampler.order == "shards"
    iterators = [iter(loader) for loader in old]
    done = [media_id for batches in iterators for _ in range(cut) for media_id in ids(next(batches))]
    state = old[0].state_dict()
    rest = resumed_on(ds24, monkeypatch, state, after, done, before)
    if before == after:
        whole = [[m for batch in loader for m in ids(batch)] for loader in rank_loaders(ds24, monkeypatch, after)]
        assert rest == [shard[3 * cut :] for shard in whole], "a rank did not continue its own shard"


def test_the_order_option_chooses_and_refuses_what_does_not_apply(ds, sharded_copy):
    assert loader_of(sharded_copy, 0, order="uniform").sampler.order == "random"
    assert loader_of(sharded_copy, 0).sampler.window == 8, "the default window"
    assert loader_of(ds, 0).sampler.order == "random", "a dataset not read from shards got another order"
    for options, field in [
        ({"order": "shards"}, "order"),
        ({"order": "shuffled"}, "order"),
        ({"shard_window": 4}, "shard_window"),
    ]:
        with pytest.raises(errors.ConfigurationError, match=field):
            loader_of(ds, 0, **options)
    with pytest.raises(errors.ConfigurationError, match="shard_window"):
        loader_of(sharded_copy, 0, shard_window=0)
    with pytest.raises(errors.ConfigurationError, match="shuffle"):
        loader_of(sharded_copy, 0, order="shards", shuffle=False)


def test_a_shard_order_state_is_refused_by_a_dataset_not_read_from_the_same_shards(ds, sharded_copy):
    loader = loader_of(sharded_copy, 0)
    next(iter(loader))
    state = loader.state_dict()
    for other in (ds, read_from_shards(reopened(ds), per_shard=3)):
        refusing = loader_of(other, 0)
        with pytest.raises(errors.ConfigurationError, match="shards"):
            refusing.load_state_dict(state)
        assert refusing.state_dict()["position"] == 0, "a refused state moved the loader"


def reopened(ds):
    return VisualLayerDataset.from_export(ds.entry.path, task=None, image_size=8, cache_dir=ds.entry.path.parent)


@pytest.fixture
def sharded_copy(ds):
    return read_from_shards(reopened(ds))


def test_a_random_state_drawn_from_another_seed_is_refused_when_loaded(ds):
    """A state put together from two (its seed from one, its generator from another) would resume
    another order: items repeated and lost, without a word."""

    def state_of(seed):
        loader = loader_of(ds, 0, seed=seed)
        next(iter(loader))
        return loader.state_dict()

    spliced = {**state_of(0), "random_state": state_of(1)["random_state"]}
    with pytest.raises(errors.ConfigurationError, match="random_state was drawn from seed 1, not from its seed 0"):
        loader_of(ds, 0, seed=0).load_state_dict(spliced)
    loader_of(ds, 0, seed=0).load_state_dict(state_of(0))  # its own is taken
