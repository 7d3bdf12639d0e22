"""Each epoch's order as index arithmetic, so that an epoch can be resumed part-way on any number of ranks.

An epoch has one global order of the dataset's n items, drawn from the seed and the epoch number
alone. A rank takes every ``world_size``-th item of it, from its rank on, as ``DistributedSampler``
deals them; so once every rank has taken k items, the first ``k * world_size`` items of the global
order are done, whatever the world size. That count, the epoch's global ``position``, is all a
resume needs: the epoch resumed there deals the rest of its order among the ranks there are now,
with none lost and none repeated, and on as many ranks as before each rank gets exactly the items
it would have had. Nothing before the position is drawn, decoded or replayed.

The rest is padded to equal shards with items from the start of the epoch's order, as
``DistributedSampler`` pads a whole epoch; with ``drop_last`` it is cut to a multiple of the world
size instead. So the only repeats are that padding, and only when the items left do not divide
among the ranks.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator, Sized
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..errors import ConfigurationError
from .shard_order import DEFAULT_WINDOW, checked_groups, checked_window, groups_digest, shard_order

# Which torch sampler's order an epoch follows (an EpochSampler gives exactly the same indices):
#   "random"       RandomSampler with a generator seeded once: epoch e is the generator's (2e+1)-th
#                  permutation, as RandomSampler draws a second, empty one as each epoch ends; a
#                  state carries the generator's state before a recent epoch's draw (``random_state``),
#                  so a resume in epoch 100 draws 0 or 2 permutations, not 200 (~70 ms each per
#                  million items)
#   "distributed"  DistributedSampler: a permutation seeded with seed + epoch
#   "sequential"   SequentialSampler: 0 .. n-1
#   "shards"       shard-aware (``shard_order``): shards in a shuffled order, a window of them at a
#                  time, its items shuffled together; seeded with the seed and the epoch
Order = Literal["random", "distributed", "sequential", "shards"]
ORDERS: tuple[str, ...] = get_args(Order)
# What a caller may ask ``dataloader(order=...)`` for: None picks "shards" for a dataset whose items
# are in shards (``item_shards()``), else "uniform" (the torch samplers' orders above).
CHOSEN_ORDERS = (None, "shards", "uniform")


def epoch_sampler(
    dataset: Sized,
    *,
    shuffle: bool,
    seed: int | None,
    base_seed: int,
    drop_last: bool,
    order: str | None = None,
    shard_window: int | None = None,
    ranks: tuple[int, int] | None = None,
) -> EpochSampler:
    """The loader's sampler: this rank's share under ``torch.distributed``, or of ``ranks`` (rank,
    world size) where the caller gives them, the order ``order`` and ``shuffle`` pick (see
    ``CHOSEN_ORDERS``), seeded so that every rank draws the same."""
    groups = item_shards(dataset)
    if order not in CHOSEN_ORDERS:
        raise ConfigurationError(f"order must be one of {list(CHOSEN_ORDERS)}, got {order!r}.")
    if order == "shards" and (groups is None or not shuffle):
        raise ConfigurationError(
            "order='shards' needs shuffle=True and a dataset whose items are in shards (a shared prepared "
            "store, prepared_root=; or item_shards() of your own)."
        )
    shards = shuffle and order != "uniform" and groups is not None
    if shard_window is not None and not shards:
        raise ConfigurationError("shard_window applies only to order='shards' (a dataset read from shards).")
    if ranks is None and dist.is_available() and dist.is_initialized():
        ranks = (dist.get_rank(), dist.get_world_size())
    distributed = ranks is not None
    rank, world_size = ranks or (0, 1)
    uniform: Order = "distributed" if distributed else "random"
    return EpochSampler(
        dataset,
        order="shards" if shards else uniform if shuffle else "sequential",
        # DistributedSampler's order: every rank must draw the same, so no per-process default seed.
        seed=(seed or 0) if distributed else base_seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        groups=groups,
        window=shard_window if shard_window is not None else DEFAULT_WINDOW,
    )


def item_shards(dataset: object) -> np.ndarray | None:
    """The shard number of each of ``dataset``'s items (-1: in none), from its ``item_shards()``;
    None for a dataset that has none, or is not read from shards."""
    method = getattr(dataset, "item_shards", None)
    return method() if callable(method) else None


def enter_epoch(sampler: Any, epoch: int) -> None:
    """Give a loader's per-epoch sampler the epoch it draws now: an ``EpochSampler`` without taking
    it for a caller's ``set_epoch``, any other ``DistributedSampler`` by ``set_epoch``."""
    if isinstance(sampler, EpochSampler):
        sampler.epoch = epoch
    elif isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


class EpochSampler(DistributedSampler):
    """This rank's indices of each epoch (see the module's docstring), from ``resume_at``'s position
    in the epoch it names.

    A ``DistributedSampler`` (``set_epoch``, ``num_replicas``, ``rank``, ``seed``, ``shuffle``), so
    code that checks for one, as Lightning does before it would swap in its own, keeps it.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        order: Order,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        groups: np.ndarray | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]  # only its length is used
            num_replicas=world_size,
            rank=rank,
            shuffle=order != "sequential",
            seed=seed,
            drop_last=drop_last,
        )
        self.order: Order = order
        self.size = len(dataset)
        self.resume_epoch, self.resume_position = 0, 0
        self._drawn: tuple[torch.Generator, int] | None = None  # "random": the generator and its draws so far
        self._before: dict[int, torch.Tensor] = {}  # "random": the generator's state before recent epochs' draws
        self._last: tuple[int, torch.Tensor] | None = None  # the last epoch's order, for a second read
        self._asked_epoch: int | None = None  # what a caller's set_epoch asked for, until a loader takes it
        # "shards": each item's shard number (-1: none), and how many shards are shuffled together
        self.groups = checked_groups(groups, self.size) if groups is not None else None
        self.window = checked_window(window)
        self._digest: str | None = None
        self._window_items: int | None = None
        if order == "shards" and self.groups is None:
            raise ConfigurationError("order 'shards' needs groups: the shard number of each item (-1 for none).")

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration of its loader draws, as ``DistributedSampler.set_epoch`` (the
        pattern of training loops and of Lightning): a loader built anew each epoch starts there,
        where it would count from 0 and draw epoch 0's order every time. The loader counts on."""
        super().set_epoch(epoch)
        self._asked_epoch = epoch

    def take_asked_epoch(self) -> int | None:
        """The epoch a caller asked for with ``set_epoch`` since a loader last took it, if any."""
        asked, self._asked_epoch = self._asked_epoch, None
        return asked

    def resume_at(
        self,
        *,
        epoch: int,
        position: int,
        order: Order,
        seed: int,
        random_state: list | None = None,
        shards: dict | None = None,
    ) -> None:
        """Start ``epoch`` at ``position`` of its global order, drawn the way ``order`` and ``seed`` say
        (and for "random", from ``random_state``'s generator state when it is one this torch reads;
        for "shards", with ``shards``' window, on the same groups: see ``check_shards``)."""
        self.check_shards(order, shards)
        window = shards["window"] if order == "shards" and shards is not None else self.window
        if (order, seed, window) != (self.order, self.seed, self.window):
            self.order, self.seed, self.shuffle, self.window = order, seed, order != "sequential", window
            self._drawn, self._last, self._before, self._window_items = None, None, {}, None
        if order == "random" and random_state is not None:
            self._restore(*random_state)
        self.resume_epoch, self.resume_position = epoch, position
        self.epoch = epoch

    def shard_state(self) -> dict | None:
        """For a state: the "shards" order's window and a digest of its groups; None for the others."""
        if self.order != "shards" or self.groups is None:
            return None
        return {"window": self.window, "groups": self._groups_digest()}

    def window_items(self) -> int:
        """About how many of this rank's items one window of the "shards" order holds (0 for the
        other orders): the items in shards over the shards, times the window, over the ranks."""
        if self.order != "shards" or self.groups is None or not len(self.groups):
            return 0
        if self._window_items is None:
            in_shards = int(np.count_nonzero(self.groups >= 0))
            # The store numbers its shards from 0: a count of the store's, at least the dataset's (a
            # curated subset may leave some out), which only brings the read-ahead nearer.
            shards = int(self.groups.max()) + 1
            self._window_items = in_shards * self.window // max(shards, 1) // self.num_replicas
        return self._window_items

    def _groups_digest(self) -> str:
        if self._digest is None:
            assert self.groups is not None
            self._digest = groups_digest(self.groups)
        return self._digest

    def check_shards(self, order: str, shards: dict | None) -> None:
        """Refuse to resume a "shards" order on other groups than it was drawn on (the same items in
        other shards, another store's build): its positions would name other items."""
        if order != "shards":
            return
        if self.groups is None:
            raise ConfigurationError(
                "This loader state follows the shards of a shared prepared store (order 'shards'), but this "
                "loader's dataset has none: open it with the same prepared_root, or start the run afresh."
            )
        if shards is None or shards["groups"] != self._groups_digest():
            raise ConfigurationError(
                "This loader state was saved with the items in other shards (a shared store built again, or "
                "other groups): its position would name other items. Open the same store, or start afresh."
            )

    def random_state(self, epoch: int) -> list | None:
        """For a state: [e, the generator's state before epoch e's draw, base64] for the latest such
        e up to ``epoch`` that this sampler drew; None for the other orders, or before any draw."""
        known = [e for e in self._before if e <= epoch] if self.order == "random" else []
        if not known:
            return None
        drawn = max(known)
        return [drawn, base64.b64encode(self._before[drawn].numpy().tobytes()).decode("ascii")]

    def _restore(self, epoch: int, encoded: str) -> None:
        generator = _generator_of(encoded)
        if generator is None:  # another torch's layout: drawn again from the seed instead
            return
        self._drawn, self._before, self._last = (generator, 2 * epoch), {epoch: generator.get_state()}, None

    @staticmethod
    def check_random_state(seed: int, random_state: list | None) -> None:
        """Refuse a state's ``random_state`` drawn from another seed than its ``seed`` (a generator
        keeps the seed it was made from): it would resume another order, without a word."""
        generator = _generator_of(random_state[1]) if random_state is not None else None
        if generator is not None and generator.initial_seed() != seed:
            raise ConfigurationError(
                f"This loader state's random_state was drawn from seed {generator.initial_seed()}, not from its "
                f"seed {seed}: it would resume another order. The state was edited or put together."
            )

    def start(self, epoch: int) -> int:
        """Where ``epoch`` starts in its global order: 0, or the resume position."""
        return min(self.resume_position, self.size) if epoch == self.resume_epoch else 0

    def rank_length(self, epoch: int) -> int:
        """How many indices this rank takes in ``epoch``: the same on every rank."""
        rest = self.size - self.start(epoch)
        return rest // self.num_replicas if self.drop_last else math.ceil(rest / self.num_replicas)

    def position_after(self, epoch: int, taken: int) -> int:
        """The epoch's global position once every rank has taken ``taken`` of its indices."""
        done = self.start(epoch) + min(taken, self.rank_length(epoch)) * self.num_replicas
        return min(done, self.size)  # past the end is padding: the epoch is done

    def global_order(self, epoch: int) -> torch.Tensor:
        """The epoch's order of every item, as the torch sampler named by ``order`` draws it."""
        if self._last is not None and self._last[0] == epoch:
            return self._last[1]
        if self.order == "sequential":
            order = torch.arange(self.size)
        elif self.order == "shards":
            assert self.groups is not None  # checked when the order was set
            order = torch.from_numpy(shard_order(self.groups, seed=self.seed, epoch=epoch, window=self.window))
        elif self.order == "distributed":
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = self._random_order(epoch)
        self._last = (epoch, order)
        return order

    def _random_order(self, epoch: int) -> torch.Tensor:
        # Epoch after epoch this draws what RandomSampler draws. Asked for an earlier epoch (or with
        # no state restored), it draws the permutations before it again from the seed.
        generator, draws = self._drawn if self._drawn is not None else (None, 0)
        if generator is None or draws > 2 * epoch:
            generator, draws = torch.Generator().manual_seed(self.seed), 0
        for _ in range(2 * epoch - draws):
            torch.randperm(self.size, generator=generator)
        self._before = {e: state for e, state in self._before.items() if e >= epoch - 1}
        self._before[epoch] = generator.get_state()
        order = torch.randperm(self.size, generator=generator)
        self._drawn = (generator, 2 * epoch + 1)
        return order

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices of ``epoch``, from its start."""
        order = self.global_order(epoch)
        rest = order[self.start(epoch) :]
        if len(rest) == 0:
            return rest
        if self.drop_last:
            rest = rest[: len(rest) - len(rest) % self.num_replicas]
        elif len(rest) % self.num_replicas:
            pad = self.num_replicas - len(rest) % self.num_replicas
            rest = torch.cat([rest, order.repeat(math.ceil(pad / len(order)))[:pad]])
        return rest[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch).tolist())

    def __len__(self) -> int:
        return self.rank_length(self.epoch)


def _generator_of(encoded: str) -> torch.Generator | None:
    """The generator a state's ``random_state`` holds; None in another torch's layout."""
    generator = torch.Generator()
    try:
        generator.set_state(torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.uint8))
    except (RuntimeError, ValueError):
        return None
    return generator
