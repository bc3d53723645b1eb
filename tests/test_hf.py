"""ViTReciproCAMTrainerCallback in a real transformers.Trainer (tiny HF ViT, CPU, few steps)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from lightning_vitrcam.hf import (  # noqa: E402
    STATE_FILE,
    ViTReciproCAMTrainerCallback,
    config_class_names,
)
from tests.helpers import Squares, make_hf  # noqa: E402

NAMES = ["red", "green", "blue", "yellow"]


class HFSquares(Dataset):
    """The coloured squares as the dicts an HF image processor yields."""

    def __init__(self, n: int, seed: int, **kwargs: Any) -> None:
        self.squares = Squares(n, seed, **kwargs)

    def __len__(self) -> int:
        return len(self.squares)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.squares[i]
        return {"pixel_values": item["image"], "labels": item["label"]}


def tiny_hf() -> nn.Module:
    """A tiny HF ViT with dropout on (so that a moved RNG would change the weights)."""
    model = make_hf(
        "vit",
        num_labels=4,
        hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=0.1,
        id2label=dict(enumerate(NAMES)),
        label2id={n: i for i, n in enumerate(NAMES)},
    )
    return model.train()


def make_trainer(
    out: Path,
    callbacks: list[Any],
    model: nn.Module | None = None,
    eval_data: Dataset | None = None,
    **overrides: Any,
) -> Any:
    settings: dict[str, Any] = dict(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, learning_rate=1e-3, eval_strategy="steps", eval_steps=2,
        save_strategy="no", logging_steps=2, report_to=["tensorboard"], use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    settings.update(overrides)
    return transformers.Trainer(
        model=model if model is not None else tiny_hf(),
        args=transformers.TrainingArguments(**settings),
        train_dataset=HFSquares(32, seed=1),
        eval_dataset=eval_data if eval_data is not None else HFSquares(8, seed=2),
        callbacks=callbacks,
    )


def _weights(trainer: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run without the callback and one with it (checkpoints every 2 steps)."""
    root = tmp_path_factory.mktemp("hf")
    plain = make_trainer(root / "plain", [])
    plain.train()
    callback = ViTReciproCAMTrainerCallback(num_images=4)
    watched = make_trainer(root / "watched", [callback], save_strategy="steps", save_steps=2)
    watched.train()
    return {"plain": plain, "watched": watched, "callback": callback, "out": root / "watched"}


def test_same_final_weights_with_and_without_the_callback(runs: dict[str, Any]) -> None:
    plain, watched = _weights(runs["plain"]), _weights(runs["watched"])
    assert plain.keys() == watched.keys()
    changed = [k for k in plain if not torch.equal(plain[k], watched[k])]
    assert not changed, changed
    # and training did move the weights (the comparison is not of two untouched models)
    assert not torch.equal(plain["classifier.weight"], tiny_hf().state_dict()["classifier.weight"])
    # the model is left in the mode the Trainer leaves it in
    assert runs["watched"].model.training == runs["plain"].model.training


def test_scalars_and_pictures_reach_the_trainers_tensorboard(runs: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(Path(runs["out"], "runs").rglob("events.out.tfevents*"))
    assert events
    scalars: dict[str, list[int]] = {}
    images: set[str] = set()
    for folder in {e.parent for e in events}:  # the Trainer's own log folder
        acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    assert sorted(scalars["vitrcam/adcc"]) == [2, 4]  # one per evaluation, none repeated
    assert "vitrcam/hotspot_ratio" in scalars
    assert {"vitrcam/saliency_grid", "vitrcam/mean_saliency", "vitrcam/timeline"} <= images


def test_report_in_output_dir_and_class_names_from_the_config(runs: dict[str, Any]) -> None:
    report = runs["out"] / "vitrcam" / "report.html"
    assert report.is_file() and report.stat().st_size > 1000
    callback = runs["callback"]
    assert callback.class_names == NAMES
    assert [r["step"] for r in callback.history] == [2, 4]
    assert config_class_names(runs["watched"].model) == NAMES


def test_state_saved_beside_each_checkpoint_and_read_on_resume(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    out = runs["out"]
    for step in (2, 4):
        assert (out / f"checkpoint-{step}" / STATE_FILE).is_file()
    saved = torch.load(out / "checkpoint-2" / STATE_FILE, weights_only=True)
    assert [r["step"] for r in saved["history"]] == [2]
    # resume from step 2 in another output_dir, the checkpoint copied to a third folder
    import shutil

    copy = tmp_path / "elsewhere" / "checkpoint-2"
    shutil.copytree(out / "checkpoint-2", copy)
    callback = ViTReciproCAMTrainerCallback(num_images=4)
    trainer = make_trainer(tmp_path / "resumed", [callback], save_strategy="steps", save_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=str(copy))
    assert not [w for w in caught if STATE_FILE in str(w.message)]  # found where it resumed
    assert [r["step"] for r in callback.history] == [2, 4]
    assert callback.probes is not None
    assert callback.probes.indices == runs["callback"].probes.indices
    assert torch.equal(callback.history[0]["maps"], runs["callback"].history[0]["maps"])
    # an evaluation after training returns the last evaluation's scalars among its metrics
    # (metric_for_best_model="vitrcam/adcc" reads them), without explaining again
    metrics = trainer.evaluate()
    assert metrics["eval_vitrcam/adcc"] == pytest.approx(callback.history[-1]["values"]["adcc"])
    assert len(callback.history) == 2


def test_a_run_that_never_evaluates_fails_before_training(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [ViTReciproCAMTrainerCallback(num_images=2)],
                           eval_strategy="no")  # fmt: skip
    before = _weights(trainer)
    with pytest.raises(ValueError, match=r"never evaluates \(eval_strategy='no'\).*eval_dataset="):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(v, _weights(trainer)[k]) for k, v in before.items())


def test_no_evaluation_data_is_a_clear_error(tmp_path: Path) -> None:
    """The Trainer hands on_evaluate no eval_dataloader (e.g. a hook driven by hand)."""
    trainer = make_trainer(tmp_path, [])
    callback = ViTReciproCAMTrainerCallback(num_images=2)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with pytest.raises(
        ValueError, match="draws its probes from the evaluation data.*eval_dataset="
    ):
        callback.on_evaluate(trainer.args, state, control, model=trainer.model)


def test_a_second_train_call_is_a_new_run(tmp_path: Path) -> None:
    """model_init (as hyperparameter search uses it): each train() starts at step 0 with a
    new model; its evaluations are explained, not taken for the last run's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = ViTReciproCAMTrainerCallback(num_images=2, shortcut_alarm=None)
    trainer = make_trainer(tmp_path, [callback], max_steps=2)
    trainer.model_init = lambda *_: tiny_hf()
    trainer.train()
    first = callback.explainer
    trainer.train()
    assert callback.explainer is not first  # built for the new model
    assert [r["step"] for r in callback.history] == [2]  # this run's only
    steps = []
    for events in tmp_path.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "vitrcam/adcc" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("vitrcam/adcc")]
    assert steps == [2, 2]  # one evaluation in each run


class NoViT(nn.Module):
    """A classifier the Trainer can train but with no Vision Transformer in it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.net(pixel_values)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def test_a_model_that_cannot_be_explained_fails_at_train_start(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [ViTReciproCAMTrainerCallback(num_images=2)], model=NoViT())
    with pytest.raises(ValueError, match="ViTReciproCAMTrainerCallback: no Vision Transformer"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_class_names_that_do_not_fit_the_head_fail_before_the_first_step(tmp_path: Path) -> None:
    """Five class names for a four-logit head: the callback says so before the first step
    (eval_on_start=True) rather than drawing wrong captions."""
    callback = ViTReciproCAMTrainerCallback(num_images=2, class_names=list("abcde"))
    trainer = make_trainer(tmp_path, [callback], eval_on_start=True)
    with pytest.raises(ValueError, match="class_names has 5 names but the model predicts 4"):
        trainer.train()
    assert trainer.state.global_step == 0
