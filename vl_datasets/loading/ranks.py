"""Who this process is in a ``torchrun`` job, and the few collectives a shared build needs.

torchrun sets ``RANK``/``WORLD_SIZE`` (the job) and ``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` (this node).
The collectives run on ``torch.distributed`` with gloo, over the CPU: the job's own process group
when it is gloo, else a gloo group made beside it (an NCCL group would need a GPU per rank), or one
made here from torchrun's rendezvous variables when the job has none yet. Outside torchrun there is
one rank and nothing to talk to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..errors import ConfigurationError

# The build waits on the store itself, bounded by progress, before its last barrier: this only
# bounds a rank that never arrives.
GROUP_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world``, ``local_rank`` of its node's ``local_world``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    _group: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ranks:
        """torchrun's ranks from ``env`` (default: the process's), joined to a gloo group; else one rank."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env or "RANK" not in env:
            return cls()
        try:
            numbers = [int(env.get(name, default)) for name, default in _VARIABLES]
        except ValueError:
            shown = {name: env.get(name) for name, _ in _VARIABLES}
            raise ConfigurationError(f"torchrun's rank variables are not integers: {shown}.") from None
        rank, world, local_rank, local_world = numbers
        if not (0 <= rank < world and 0 <= local_rank < local_world):
            raise ConfigurationError(
                f"RANK={rank} of WORLD_SIZE={world}, LOCAL_RANK={local_rank} of LOCAL_WORLD_SIZE={local_world} "
                "do not describe a rank of a job."
            )
        return cls(rank, world, local_rank, local_world, _gloo_group() if world > 1 else None)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        found: list[Any] = [None] * self.world
        dist.all_gather_object(found, value, group=self._group)
        return found

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self._group)


_VARIABLES = (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1"))


def _gloo_group() -> Any:
    """The gloo group to talk on (None: the default group, which is gloo)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)  # torchrun's MASTER_ADDR/PORT: env://
        return None
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo", timeout=GROUP_TIMEOUT)
