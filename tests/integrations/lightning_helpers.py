"""What the Lightning tests share: a quiet CPU trainer, and a preemption at a given step."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


def quiet_trainer(**options) -> pl.Trainer:
    """A one-CPU trainer that logs, checkpoints and validates nothing unless ``options`` say so."""
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    return pl.Trainer(**{**defaults, **options})


class Preempted(Exception):
    pass


class StopAt(Callback):
    """Raises ``Preempted`` once the fit has made ``step`` optimizer steps: a job preempted there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Preempted(f"preempted at step {self.step}")
