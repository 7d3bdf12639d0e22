"""transformers: a curated dataset feeds a real Trainer and a real (tiny, built from scratch) model."""

from __future__ import annotations

import gc

import psutil
import pytest
import torch
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)
from transformers.trainer_utils import HPSearchBackend

from tests.waits import cpu_of_children, wait_until
from vl_datasets import ConfigurationError
from vl_datasets.integrations.huggingface import (
    LOADER_STATE_FILE,
    HFCollate,
    PixelValues,
    VLTrainer,
    label_maps,
    to_hf_batches,
)


def _tiny_vit(train) -> ViTForImageClassification:
    id2label, label2id = label_maps(train)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(train.classes),
        id2label=id2label,
        label2id=label2id,
    )
    torch.manual_seed(0)
    return ViTForImageClassification(config)


def _tiny_resnet(train) -> ResNetForImageClassification:
    id2label, label2id = label_maps(train)
    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[32, 64],
        depths=[1, 1],
        layer_type="basic",
        num_labels=len(train.classes),
        id2label=id2label,
        label2id=label2id,
    )
    torch.manual_seed(0)
    return ResNetForImageClassification(config)


def _args(tmp_path, **options) -> TrainingArguments:
    defaults = {
        "per_device_train_batch_size": 64,
        "per_device_eval_batch_size": 256,
        "learning_rate": 3e-3,
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "seed": 0,
    }
    return TrainingArguments(str(tmp_path / "out"), **{**defaults, **options})


def test_label_maps_follow_the_dataset_classes(open_part):
    train = open_part("train")
    id2label, label2id = label_maps(train)
    assert id2label == {i: str(i) for i in range(10)}
    assert label2id == {str(i): i for i in range(10)}
    with pytest.raises(ConfigurationError, match="no classes"):
        label_maps(open_part("train", task=None, classes=None))


def test_batches_have_the_keys_dtypes_and_shapes_a_model_takes(open_part):
    train = open_part("train")
    batch = next(iter(to_hf_batches(train.dataloader(32, num_workers=0, seed=0))))
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].dtype == torch.float32 and tuple(batch["pixel_values"].shape) == (32, 3, 16, 16)
    assert batch["labels"].dtype == torch.int64 and tuple(batch["labels"].shape) == (32,)
    assert -1.0 <= batch["pixel_values"].min() < 0 < batch["pixel_values"].max() <= 1.0
    logits = _tiny_vit(train)(**batch).logits
    assert tuple(logits.shape) == (32, 10)


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_a_dropped_hf_loader_ends_its_workers_without_the_garbage_collector(open_part):
    """HFBatches holds no reference to itself: dropped (each evaluate() drops its loaders), its
    loader's workers and shared-memory batch slots go at once, not whenever the cyclic garbage
    collector happens to run (here: never)."""
    train = open_part("train")
    gc.collect()
    before = {child.pid for child in psutil.Process().children()}
    gc.disable()
    try:
        batches = to_hf_batches(train.dataloader(64, shuffle=False, num_workers=2))
        for _ in batches:
            pass
        workers = [child for child in psutil.Process().children() if child.pid not in before]
        assert workers, "the loader started no worker: nothing to see end"
        del batches
        wait_until(
            lambda: not _alive(workers),
            f"the dropped loader's workers {[w.pid for w in workers]} to end with the garbage collector off",
            progress=cpu_of_children(),
            stall_s=60,
        )
    finally:
        gc.enable()


def test_the_processor_path_and_our_normalization_agree(open_part):
    """A checkpoint's image processor, or our resize plus its mean and std: the same pixel values."""
    train = open_part("train")
    processor = ViTImageProcessor(
        size={"height": 16, "width": 16}, image_mean=[0.2, 0.3, 0.4], image_std=[0.5, 0.6, 0.7]
    )
    images, _ = next(iter(train.dataloader(16, shuffle=False, num_workers=0)))
    through_processor = PixelValues(processor)(images)
    ours = PixelValues.like(processor)(images)
    assert tuple(through_processor.shape) == tuple(ours.shape) == (16, 3, 16, 16)
    assert torch.allclose(through_processor, ours, atol=1e-5)
    with pytest.raises(ConfigurationError, match="not both"):
        PixelValues(processor, mean=[0.5])


def test_trainers_own_dataloader_gets_the_same_batches_through_hf_collate(open_part):
    train = open_part("train")
    collated = HFCollate()([train[i] for i in range(8)])
    ours = next(iter(to_hf_batches(train.dataloader(8, shuffle=False, num_workers=0))))
    assert torch.equal(collated["labels"], ours["labels"])
    assert torch.equal(collated["pixel_values"], ours["pixel_values"])


class _Losses(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def test_a_tiny_resnet_fine_tunes_with_trainer_on_the_curated_sample(open_part, tmp_path):
    train, test = open_part("train"), open_part("test")
    losses = _Losses()
    trainer = VLTrainer(
        model=_tiny_resnet(train),
        args=_args(tmp_path, num_train_epochs=2),
        train_dataset=train,
        eval_dataset=test,
        callbacks=[losses],
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    trainer.train()
    assert len(losses.losses) == 2 * len(train.dataloader(64, num_workers=0))
    first, last = sum(losses.losses[:5]) / 5, sum(losses.losses[-5:]) / 5
    assert last < 0.5 * first, f"the loss did not go down: {losses.losses}"
    assert trainer.evaluate()["eval_accuracy"] > 0.5  # chance is 0.1


class _Recording(VLTrainer):
    """Records each training batch (labels and a pixel checksum) the model is given."""

    seen: list[tuple[tuple[int, ...], float]]

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append((tuple(inputs["labels"].tolist()), round(float(inputs["pixel_values"].sum()), 3)))
        return super().training_step(model, inputs, num_items_in_batch)


class _Epochs(TrainerCallback):
    """Records Trainer's state.epoch after each optimizer step."""

    def __init__(self) -> None:
        self.epochs: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.epochs.append(state.epoch)


class _Preempted(Exception):
    pass


class _StopAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Preempted(f"preempted after step {self.step}")


def _recording_trainer(train, tmp_path, **options) -> _Recording:
    options = {"max_steps": 30, **options}
    trainer = _Recording(model=_tiny_resnet(train), args=_args(tmp_path, **options), train_dataset=train)
    trainer.seen = []
    trainer.epochs = _Epochs()
    trainer.add_callback(trainer.epochs)
    return trainer


@pytest.mark.parametrize("where", ["mid-epoch", "epoch end", "mid-epoch, accumulating 2 batches"])
def test_a_preempted_trainer_resumes_with_the_batches_an_uninterrupted_run_sees(open_part, tmp_path, where):
    train = open_part("train")
    per_epoch = len(train.dataloader(64, num_workers=0))  # odd (17): accumulating 2, an epoch ends on 1
    accumulation = 2 if "accumulating" in where else 1
    saved_at = per_epoch if where == "epoch end" else 5  # in steps; 30 batches cross into the second epoch
    options = {"max_steps": 30 // accumulation, "gradient_accumulation_steps": accumulation}
    uninterrupted = _recording_trainer(train, tmp_path / "a", **options)
    uninterrupted.train()

    options.update(save_strategy="steps", save_steps=saved_at)
    preempted = _recording_trainer(train, tmp_path / "b", **options)
    preempted.add_callback(_StopAfter(saved_at + 2))  # two steps past the checkpoint: those are lost
    with pytest.raises(_Preempted):
        preempted.train()
    checkpoint = tmp_path / "b" / "out" / f"checkpoint-{saved_at}"
    assert (checkpoint / LOADER_STATE_FILE).exists()

    resumed = _recording_trainer(train, tmp_path / "b", **options)
    resumed.train(resume_from_checkpoint=True)
    assert preempted.seen[: saved_at * accumulation] + resumed.seen == uninterrupted.seen
    # Trainer's epoch (logged, saved in checkpoints) goes on as it would have, not from the resumed epoch's start.
    assert preempted.epochs.epochs[:saved_at] + resumed.epochs.epochs == uninterrupted.epochs.epochs
    for before, after in zip(uninterrupted.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(before, after, atol=1e-5)


def test_before_trainers_resume_hook_the_resumed_batches_are_exact_too(open_part, tmp_path, monkeypatch):
    """transformers < 5.25 has no get_resumed_dataloader: Trainer skipped the resumed epoch's first
    batches itself, which the loader's state had already skipped. Its skipping is turned off there."""
    from vl_datasets.integrations import huggingface

    monkeypatch.setattr(huggingface, "resumes_through_hook", lambda: False)
    train = open_part("train")
    uninterrupted = _recording_trainer(train, tmp_path / "a", max_steps=12)
    uninterrupted.train()
    preempted = _recording_trainer(train, tmp_path / "b", max_steps=12, save_strategy="steps", save_steps=5)
    preempted.add_callback(_StopAfter(7))
    with pytest.raises(_Preempted):
        preempted.train()
    resumed = _recording_trainer(train, tmp_path / "b", max_steps=12, save_strategy="steps", save_steps=5)
    resumed.train(resume_from_checkpoint=True)
    assert preempted.seen[:5] + resumed.seen == uninterrupted.seen
    odd = _recording_trainer(train, tmp_path / "b", max_steps=12, gradient_accumulation_steps=2)
    with pytest.raises(ConfigurationError, match=r"older than 5\.25"):
        odd.train(resume_from_checkpoint=True)


def test_resuming_at_another_batch_size_is_refused(open_part, tmp_path):
    """Trainer would count the resumed epoch's batches at the new size from its own checkpoint, and
    end the epoch before (or after) the loader's rest."""
    train = open_part("train")
    _recording_trainer(train, tmp_path, save_strategy="steps", save_steps=5, max_steps=5).train()
    other = _recording_trainer(train, tmp_path, per_device_train_batch_size=32)
    with pytest.raises(ConfigurationError, match="after 5 batches of 32, the checkpoint's loader state after 5 of 64"):
        other.train(resume_from_checkpoint=True)


class _Trial:
    """What Trainer reads of an optuna trial: its number names the trial's folder, run-<number>."""

    def __init__(self, number: int) -> None:
        self.number, self.params = number, {}


def test_a_hyperparameter_search_trial_saves_the_loader_state_into_its_own_checkpoints(
    open_part, tmp_path, monkeypatch
):
    """Under hyperparameter_search, Trainer saves a trial's checkpoints in <output_dir>/run-<n>/: the
    loader state goes there, and not into <output_dir>/checkpoint-<step> (an earlier run's, here)."""
    train = open_part("train")
    trainer = _recording_trainer(train, tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    earlier = tmp_path / "out" / "checkpoint-2"
    earlier.mkdir(parents=True)
    # What hyperparameter_search(backend="optuna") sets before it trains a trial, without optuna:
    # Trainer asks optuna for a trial's parameters only to record them.
    trainer.hp_search_backend = HPSearchBackend.OPTUNA
    trainer.hp_space = lambda trial: {}
    monkeypatch.setattr("transformers.integrations.hp_params", lambda trial: trial.params)
    trainer.train(trial=_Trial(3))
    assert (tmp_path / "out" / "run-3" / "checkpoint-2" / LOADER_STATE_FILE).exists()
    assert not (earlier / LOADER_STATE_FILE).exists()


def test_resuming_from_a_checkpoint_without_the_loader_state_is_refused(open_part, tmp_path):
    train = open_part("train")
    trainer = _recording_trainer(train, tmp_path, save_strategy="steps", save_steps=5, max_steps=5)
    trainer.train()
    (tmp_path / "out" / "checkpoint-5" / LOADER_STATE_FILE).unlink()
    with pytest.raises(ConfigurationError, match="not saved by a VLTrainer"):
        _recording_trainer(train, tmp_path).train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-5"))


def test_vltrainer_refuses_a_dataset_that_is_not_ours(open_part, tmp_path):
    trainer = VLTrainer(model=_tiny_vit(open_part("train")), args=_args(tmp_path, max_steps=1), train_dataset=[1, 2])
    with pytest.raises(ConfigurationError, match="train_dataset must be a VisualLayerDataset"):
        trainer.train()


def test_vltrainer_refuses_eval_classes_numbered_otherwise_than_train(open_part, tmp_path):
    """The model's outputs are numbered as train's classes: an eval set of other classes would be
    scored against the wrong names without a word."""
    train = open_part("train")
    test = open_part("test", classes=[str(d) for d in reversed(range(10))])
    for eval_dataset in (test, {"test": test}):
        with pytest.raises(ConfigurationError, match=r"classes=train_dataset\.classes"):
            VLTrainer(model=_tiny_vit(train), args=_args(tmp_path), train_dataset=train, eval_dataset=eval_dataset)
    trainer = VLTrainer(
        model=_tiny_vit(train), args=_args(tmp_path), train_dataset=train, eval_dataset=open_part("test")
    )
    # Datasets handed to evaluate() and predict() are held to train's numbering too.
    with pytest.raises(ConfigurationError, match=r"eval_dataset's classes .* classes=train_dataset\.classes"):
        trainer.evaluate(eval_dataset=test)
    with pytest.raises(ConfigurationError, match=r"test_dataset's classes .* classes=train_dataset\.classes"):
        trainer.predict(test)


class _MultimodalProcessor:
    """What AutoProcessor gives for CLIP or SigLIP: an image processor inside, no image_mean of its own."""

    def __init__(self, image_processor) -> None:
        self.image_processor = image_processor


def test_vltrainer_takes_the_image_processor_a_multimodal_processor_holds(open_part, tmp_path):
    train = open_part("train")
    inner = ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.2, 0.3, 0.4], image_std=[0.5, 0.6, 0.7])
    trainer = VLTrainer(
        model=_tiny_vit(train), args=_args(tmp_path), train_dataset=train, processing_class=_MultimodalProcessor(inner)
    )
    assert trainer.pixel_values.processor is inner
    with pytest.raises(ConfigurationError, match="has no image processor"):
        VLTrainer(model=_tiny_vit(train), args=_args(tmp_path), train_dataset=train, processing_class=object())
    chosen = VLTrainer(
        model=_tiny_vit(train), args=_args(tmp_path), train_dataset=train, processing_class=object(), pixel_mean=[0.4]
    )
    assert chosen.pixel_values.processor is None and chosen.pixel_values.mean.flatten().tolist() == [pytest.approx(0.4)]


def test_hf_collate_takes_multilabel_targets_and_names_pil_images(open_part):
    multilabel = open_part("train", task="multilabel")
    collated = HFCollate()([multilabel[i] for i in range(4)])
    ours = next(iter(to_hf_batches(multilabel.dataloader(4, shuffle=False, num_workers=0))))
    assert collated["labels"].shape == (4, 10) and torch.equal(collated["labels"], ours["labels"])
    pil = open_part("train", decode="pil")
    with pytest.raises(ConfigurationError, match="decode='pil'"):
        HFCollate()([pil[i] for i in range(2)])
    with pytest.raises(ConfigurationError, match="decode='pil'"):
        to_hf_batches(pil.dataloader(2, num_workers=0))
    # Metadata rows (task=None) and boxes are no labels for a classifier: refused, not passed on.
    for task in (None, "detection"):
        with pytest.raises(ConfigurationError, match="task 'classification' or 'multilabel'"):
            to_hf_batches(open_part("train", task=task, classes=None).dataloader(2, num_workers=0))
    with pytest.raises(ConfigurationError, match="mean must be 1 or 3"):
        PixelValues(mean=[])
    with pytest.raises(ConfigurationError, match="std must be 1 or 3"):
        PixelValues(std=[float("nan")] * 3)
