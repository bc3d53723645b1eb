"""Tests of ViTReciproCAMCallback inside real (tiny, CPU) Lightning runs."""

from __future__ import annotations

import csv
import gc
import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_vitrcam import (
    ExplanationSkippedWarning,
    PossibleShortcutWarning,
    ShortcutAlarm,
    ViTReciproCAM,
    ViTReciproCAMCallback,
)
from lightning_vitrcam.adapters import find_vit
from lightning_vitrcam.demo import SQUARE_COLOURS, coloured_squares
from lightning_vitrcam.metrics import map_drift
from lightning_vitrcam.probes import default_batch_reader
from tests.helpers import CuedSquares, Module, Squares, TrainOnly, make_vit, rigged_corner_vit

FIXED_SCALARS = {
    "vitrcam/adcc",
    "vitrcam/average_drop",
    "vitrcam/coherency",
    "vitrcam/complexity",
    "vitrcam/adcc_delta",
    "vitrcam/map_drift",
    "vitrcam/hotspot_ratio",
    "vitrcam/border_energy",
    "vitrcam/energy_in_mask",
    "vitrcam/pointing_game",
}
torch.set_num_threads(1)
# the coloured squares' colour names their class: a clean model reads it, and the colour test
# says so; the tests about pictures and loggers leave that test out
SQUARES_ALARM = ShortcutAlarm(kinds=["region", "mark", "background"])
# random tiny models often look "off the object"; the warning has tests of its own
pytestmark = pytest.mark.filterwarnings("ignore::lightning_vitrcam.PossibleShortcutWarning")


def squares(n: int, seed: int, **kwargs: Any):
    kwargs.setdefault("side", 16)
    return coloured_squares(n, seed, **kwargs)


def loaders(train: Dataset | None = None, val: Dataset | None = None, batch: int = 8):
    train = train if train is not None else Squares(32, seed=1)
    val = val if val is not None else Squares(16, seed=2)
    return (
        DataLoader(train, batch_size=batch, shuffle=True),
        None if val is False else DataLoader(val, batch_size=batch),
    )


def fit(
    module: L.LightningModule,
    callbacks: list[Callback],
    root: Path,
    train: Dataset | None = None,
    val: Any = None,
    ckpt_path: str | None = None,
    **trainer_kwargs: Any,
) -> L.Trainer:
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=root,
    )
    kwargs.update(trainer_kwargs)
    trainer = L.Trainer(callbacks=callbacks, **kwargs)
    train_dl, val_dl = loaders(train, val)
    trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
    return trainer


# --------------------------------------------------------------------------- loggers
def test_tensorboard_and_csv_get_pictures_and_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(tmp_path, name="tb")
    csv_logger = CSVLogger(tmp_path, name="csv")
    # the squares' colour is the class: the colour test would say so (and log its evidence)
    cb = ViTReciproCAMCallback(num_images=4, explain="both", class_names=list("rgby"),
                               shortcut_alarm=SQUARES_ALARM)  # fmt: skip
    trainer = fit(Module(), [cb], tmp_path, logger=[tb, csv_logger], num_sanity_val_steps=1)

    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    images = set(acc.Tags()["images"])
    assert {"vitrcam/saliency_grid", "vitrcam/mean_saliency", "vitrcam/timeline"} <= images
    scalars = set(acc.Tags()["scalars"])
    assert FIXED_SCALARS <= scalars, FIXED_SCALARS - scalars
    # one evaluation per validation epoch, none for the sanity check, no duplicate at the end
    assert [e.step for e in acc.Scalars("vitrcam/adcc")] == [4, 8]
    assert [e.step for e in acc.Scalars("vitrcam/map_drift")] == [8]
    grid = acc.Images("vitrcam/saliency_grid")[-1]
    assert grid.width >= 3 * 96  # input | predicted | true columns, upscaled tiles

    # the CSV logger gets the same scalars and PNG files under its log directory
    pngs = {p.parent.name for p in Path(csv_logger.log_dir, "vitrcam").rglob("*.png")}
    assert pngs == {"saliency_grid", "mean_saliency", "timeline"}
    with open(Path(csv_logger.log_dir, "metrics.csv")) as f:
        header = next(csv.reader(f))
    assert FIXED_SCALARS <= set(header)

    assert "vitrcam/adcc" in trainer.callback_metrics  # monitorable
    rows = cb.timeline_images()
    assert len(rows) == 4 and all(r.dtype == torch.uint8 and r.shape[0] == 3 for r in rows)
    # two evaluations: two frames side by side, wider than tall
    assert rows[0].shape[2] > rows[0].shape[1]


def test_wandb_offline_run_has_media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="vitrcam-test")
    cb = ViTReciproCAMCallback(num_images=3, class_names=list("rgby"))
    fit(Module(), [cb], tmp_path, logger=logger, max_epochs=1)
    logger.experiment.finish()
    media = list(tmp_path.glob("wandb/offline-run-*/files/media/images/vitrcam/**/*.png"))
    names = [p.name for p in media]
    # one picture per probe row (each with its caption), the mean map and one timeline per row
    assert sum(n.startswith("saliency_grid") for n in names) == 3
    assert sum(n.startswith("mean_saliency") for n in names) == 1
    assert sum(n.startswith("timeline") for n in names) == 3


def test_no_logger_writes_png_files_and_jsonl(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=2, shortcut_alarm=SQUARES_ALARM)
    fit(Module(), [cb], tmp_path, max_epochs=1)
    folder = tmp_path / "vitrcam"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "mean_saliency",
        "saliency_grid",
        "timeline",
    ]
    assert (folder / "saliency_grid" / "step_000004.png").read_bytes()[:4] == b"\x89PNG"
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [4]
    assert {"vitrcam/adcc", "vitrcam/hotspot_ratio", "vitrcam/energy_in_mask"} <= set(lines[0])


def test_the_report_is_written_at_the_end_of_fit(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=4, log_images=False)
    fit(Module(), [cb], tmp_path, max_epochs=2)
    record = json.loads((tmp_path / "vitrcam" / "report.json").read_text())
    # the last evaluation's scalars, and every evaluation's over the steps
    assert [h["step"] for h in record["history"]] == [4, 8]
    assert record["scalars"]["adcc"] == pytest.approx(cb.history[-1]["adcc"])
    page = (tmp_path / "vitrcam" / "report.html").read_text()
    assert page.count("<polyline") >= 5 and "vitrcam/saliency_grid" in page


# --------------------------------------------------------------------------- when and resume
def test_step_mode_and_final_evaluation(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=2, every_n_steps=3, compute_adcc=False)
    fit(Module(), [cb], tmp_path, max_epochs=1, limit_train_batches=4)
    # steps 3 and, at the end of training, 4; no ADCC when compute_adcc=False
    assert [h["step"] for h in cb.history] == [3, 4]
    assert all(h["adcc"] is None for h in cb.history)


def test_every_n_epochs(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=2, every_n_epochs=2, log_images=False)
    fit(Module(), [cb], tmp_path, max_epochs=3)
    # after the second validation (step 8), then once more at the end of training (step 12)
    assert [h["step"] for h in cb.history] == [8, 12]


class TwoLoaders(Module):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step(batch, batch_idx)


def test_dataloader_idx_picks_the_validation_loader(tmp_path: Path) -> None:
    first, second = Squares(8, seed=10), Squares(8, seed=11)
    val = [DataLoader(first, batch_size=4), DataLoader(second, batch_size=4)]
    cb = ViTReciproCAMCallback(num_images=3, dataloader_idx=1, log_images=False)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[cb],
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(TwoLoaders(), loaders()[0], val)
    assert torch.equal(cb.probes.images, second.x[cb.probes.indices])
    bad = ViTReciproCAMCallback(dataloader_idx=2)
    with pytest.raises(ValueError, match="dataloader_idx=2 but there are 2 validation loaders"):
        L.Trainer(accelerator="cpu", logger=False, callbacks=[bad], default_root_dir=tmp_path).fit(
            TwoLoaders(), loaders()[0], val
        )


def test_resume_continues_history(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="vitrcam/adcc", mode="max", save_last=True
    )
    first = ViTReciproCAMCallback(num_images=3, log_images=False, seed=7)
    fit(Module(), [first, ckpt], tmp_path, max_epochs=2, enable_checkpointing=True)
    assert ckpt.best_model_score is not None  # a vitrcam scalar is monitorable

    second = ViTReciproCAMCallback(num_images=3, log_images=False, seed=7)
    trainer = fit(Module(), [second], tmp_path, max_epochs=3, ckpt_path=ckpt.last_model_path)
    kept = first.history
    assert [h["epoch"] for h in second.history] == [0, 1, 2]
    assert [h["step"] for h in second.history] == [4, 8, 12]
    for old, new in zip(kept, second.history, strict=False):
        assert torch.equal(old["maps"], new["maps"])
    assert second.probes.indices == first.probes.indices
    # drift and delta of the first resumed evaluation are against the restored history
    drift = map_drift(kept[-1]["maps"].float(), second.history[-1]["maps"].float()).mean()
    assert float(trainer.callback_metrics["vitrcam/map_drift"]) == pytest.approx(float(drift), 1e-3)
    delta = second.history[-1]["adcc"] - kept[-1]["adcc"]
    assert float(trainer.callback_metrics["vitrcam/adcc_delta"]) == pytest.approx(delta, 1e-5)
    assert len(second.timeline_images()) == 3


# --------------------------------------------------------------------------- side effects
class Checker(Callback):
    """Placed after the callback: sees the model right after each evaluation."""

    def __init__(self, watched: ViTReciproCAMCallback) -> None:
        self.watched = watched
        self.tensors: dict[int, tuple[int, int]] = {}
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.flags = [m.training for m in pl_module.modules()]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = [p.grad.clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert len(self.watched.history) == trainer.global_step  # it did evaluate
        assert [m.training for m in pl_module.modules()] == self.flags
        for m in pl_module.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks
        for p, g in zip(pl_module.parameters(), self.grads, strict=True):
            assert torch.equal(p.grad, g)
        self.checked += 1
        if trainer.global_step in (4, 12):
            gc.collect()
            count = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
            self.tensors[trainer.global_step] = (count, len(self.watched.history))


def test_no_side_effects_on_flags_hooks_grads_and_memory(tmp_path: Path) -> None:
    module = Module()
    module.model.blocks[0].attn.eval()  # a mixed train/eval state must survive as it is
    cb = ViTReciproCAMCallback(num_images=2, every_n_steps=1, log_images=False)
    checker = Checker(cb)
    fit(module, [cb, checker], tmp_path, max_epochs=3, limit_train_batches=4, limit_val_batches=0)
    assert checker.checked == 12
    assert not module.model.blocks[0].attn.training and module.model.blocks[0].mlp.training
    (c4, h4), (c12, h12) = checker.tensors[4], checker.tensors[12]
    # the only tensors that may accumulate are the history's compact maps (one per evaluation)
    assert c12 - c4 <= h12 - h4


def _trained_weights(tmp_path: Path, callback: bool) -> tuple[dict, torch.Tensor]:
    L.seed_everything(0)
    module = Module()
    cbs = [ViTReciproCAMCallback(num_images=4, every_n_steps=1, explain="both")] if callback else []
    fit(module, cbs, tmp_path, max_epochs=2, limit_train_batches=3)
    return {k: v.clone() for k, v in module.state_dict().items()}, torch.get_rng_state()


def test_training_is_bit_identical_with_and_without_callback(tmp_path: Path) -> None:
    with_cb, rng_with = _trained_weights(tmp_path / "a", callback=True)
    without, rng_without = _trained_weights(tmp_path / "b", callback=False)
    assert with_cb.keys() == without.keys()
    for key in with_cb:
        assert torch.equal(with_cb[key], without[key]), key
    assert torch.equal(rng_with, rng_without)


# --------------------------------------------------------------------------- shortcut warning
def _rigged_corner_vit() -> nn.Module:
    """A ViT whose prediction reads only the colour of the top-left token (a planted
    shortcut), its head comparing it with the class colours (see ``rigged_corner_vit``)."""
    return rigged_corner_vit((SQUARE_COLOURS - SQUARE_COLOURS.mean(1, keepdim=True)) * 3)


@pytest.fixture(scope="module")
def clean_vit() -> nn.Module:
    """A tiny ViT trained on the squares task: it looks at the object."""
    state = torch.get_rng_state()
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=4, depth=1,
        embed_dim=32, num_heads=2,
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        x, y, _ = squares(32, seed=100 + step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_rng_state(state)
    model.zero_grad(set_to_none=True)
    return model


def _shortcut_warnings(tmp_path: Path, model: nn.Module, val: Dataset, **kwargs) -> list[str]:
    cb = ViTReciproCAMCallback(num_images=16, log_images=False, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(Module(model, lr=0.0), [cb], tmp_path, val=val, max_epochs=2, limit_train_batches=1)
    return [str(w.message) for w in caught if issubclass(w.category, PossibleShortcutWarning)]


def test_shortcut_warning_fires_on_planted_shortcut(tmp_path: Path) -> None:
    val = Squares(32, 3, corner=True)
    messages = _shortcut_warnings(tmp_path, _rigged_corner_vit(), val)
    assert messages, "no shortcut warning for a model that reads only the corner"
    # confirmed at epoch 0 and again on the next check's probes: raised at epoch 1
    (text,) = messages
    assert "possible shortcut" in text and "epoch 1" in text
    # where and on what evidence, in one line: the occluded corner collapses every probe
    assert "the prediction hangs on token row 0, column 0 (on the top-left corner)" in text
    assert "(region evidence" in text and "hotspot ratio" not in text and "\n" not in text
    # the opt-in map thresholds add their own reasons
    opt_in = _shortcut_warnings(
        tmp_path, _rigged_corner_vit(), val, hotspot_threshold=4.0, energy_threshold=0.3
    )
    assert "hotspot ratio" in opt_in[0] and "energy in the object masks" in opt_in[0]


def test_the_alarm_scores_copies_by_the_explanations_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alarm's copies run through ViTReciproCAM.predict and the explanation's logits
    stand for the unoccluded probes, which are not run again."""
    batches: list[torch.Tensor] = []
    predict = ViTReciproCAM.predict

    def spy(self: ViTReciproCAM, images: torch.Tensor) -> torch.Tensor:
        batches.append(images.detach().flatten(1).cpu())
        return predict(self, images)

    monkeypatch.setattr(ViTReciproCAM, "predict", spy)
    cb = ViTReciproCAMCallback(num_images=16, log_images=False)
    fit(Module(_rigged_corner_vit(), lr=0.0), [cb], tmp_path, val=Squares(32, 3, corner=True),
        max_epochs=1, limit_train_batches=1)  # fmt: skip
    assert batches and cb.alarm.last_tests
    probes = cb.probes.images.flatten(1).cpu()
    assert not (torch.cat(batches)[:, None] == probes[None]).all(-1).any()


# the squares' colour is their class: the colour test rightly says the prediction follows the
# image's colour, so the tests of the other kinds leave it out
NOT_COLOUR = ShortcutAlarm(kinds=["region", "mark", "background"])


def test_no_shortcut_warning_on_clean_model(tmp_path: Path, clean_vit: nn.Module) -> None:
    assert _shortcut_warnings(tmp_path, clean_vit, Squares(32, 3), shortcut_alarm=NOT_COLOUR) == []


def test_the_colour_test_says_so_where_colour_names_the_class(
    tmp_path: Path, clean_vit: nn.Module
) -> None:
    """On the squares a model that reads the object reads its colour; the colour test says
    that, and how to leave it out where colour is a legitimate feature."""
    messages = _shortcut_warnings(tmp_path, clean_vit, Squares(32, 3))
    assert len(messages) == 1 and "the prediction follows the image's colour" in messages[0]
    assert "small region" not in messages[0] and "hangs on" not in messages[0]
    assert "ShortcutAlarm(kinds=['region', 'mark', 'background'])" in messages[0]


# --------------------------------------------------------------------------- early errors
class TwoViTs(Module):
    def __init__(self) -> None:
        super().__init__()
        self.teacher = make_vit(num_classes=4, depth=1, embed_dim=32, num_heads=2)


@pytest.mark.parametrize(
    "case, match",
    [
        ("no_val_loader", "needs a validation dataloader"),
        ("no_validation_step", "does not validate"),
        ("unreadable_batch", "batch_reader="),
        ("two_vits", "2 Vision Transformers found in TwoViTs: 'model', 'teacher'"),
        ("no_vit", "no Vision Transformer found"),
        ("not_explainable", "cannot explain pl_module.model.head .*cannot find transformer"),
        ("class_names", "class_names has 3 names but the model predicts 4 classes"),
        ("labels_needed", "explain='label' needs labels"),
        ("image_size", "takes 32x32 images but got 48x48"),
    ],
)
def test_bad_setup_fails_before_training(tmp_path: Path, case: str, match: str) -> None:
    module: L.LightningModule = Module()
    kwargs: dict[str, Any] = {}
    val: Any = None
    if case == "no_val_loader":
        kwargs["every_n_steps"], val = 1, False
    elif case == "no_validation_step":
        module = TrainOnly()
    elif case == "unreadable_batch":
        val = Squares(8, layout="odd")
    elif case == "two_vits":
        module = TwoViTs()
    elif case == "no_vit":
        module = Module(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)))
    elif case == "not_explainable":
        kwargs["model_attr"] = "model.head"
    elif case == "class_names":
        kwargs["class_names"] = ["a", "b", "c"]
    elif case == "labels_needed":
        kwargs["explain"], val = "label", Squares(8, layout="image")
    elif case == "image_size":
        val = Squares(8, size=48)
    cb = ViTReciproCAMCallback(num_images=2, **kwargs)
    with pytest.raises(ValueError, match=match):
        fit(module, [cb], tmp_path, val=val)
    assert module.steps == 0


def test_lightning_without_the_fit_loop_internals_gets_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaders given to trainer.fit(...) are read through Lightning's private fit-loop API; a
    Lightning that lacks it fails at fit start, naming the checked version and the public
    route, before any training step."""
    import lightning.pytorch.trainer.connectors.data_connector as connector

    monkeypatch.delattr(connector, "_request_dataloader")
    module = Module()
    with pytest.raises(ValueError, match=r"checked with lightning 2\.6\.6.*LightningDataModule"):
        fit(module, [ViTReciproCAMCallback(num_images=2)], tmp_path)
    assert module.steps == 0


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="explain must be"):
        ViTReciproCAMCallback(explain="both-ways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_images"):
        ViTReciproCAMCallback(num_images=0)


# --------------------------------------------------------------------------- models and inputs
def test_compiled_vit_and_model_attr(tmp_path: Path) -> None:
    vit = make_vit(num_classes=4, depth=1, embed_dim=32, num_heads=2)
    module = Module(torch.compile(vit, backend="eager"))
    cb = ViTReciproCAMCallback(num_images=2, log_images=False)
    fit(module, [cb], tmp_path, max_epochs=1, limit_train_batches=1)
    assert cb.explainer.model is vit and cb.explainer.fast_path
    assert len(cb.history) == 1

    two = TwoViTs()
    assert find_vit(two, "teacher") == ("teacher", two.teacher)
    assert find_vit(vit) == ("", vit)


def test_bf16_mixed_explains_under_autocast(tmp_path: Path) -> None:
    module = Module()
    seen: dict[str, list[tuple[int, bool, torch.dtype]]] = {"embed": [], "head": []}

    def spy(name: str):
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if not torch.is_grad_enabled():
                seen[name].append((args[0].shape[0], torch.is_autocast_enabled("cpu"), out.dtype))

        return hook

    handles = [
        module.model.patch_embed.proj.register_forward_hook(spy("embed")),
        module.model.head.register_forward_hook(spy("head")),
    ]
    cb = ViTReciproCAMCallback(num_images=2, every_n_epochs=None, log_images=False)
    fit(module, [cb], tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
        precision="bf16-mixed")  # fmt: skip
    for handle in handles:
        handle.remove()
    # the explanation runs under the trainer's autocast (the shared forward in bf16) ...
    assert seen["embed"] and all(on and dt == torch.bfloat16 for _, on, dt in seen["embed"])
    # ... but the masked copies (2 probes x 16 tokens) reach the head in float32: bf16 logits
    # would round away the copies' score differences
    copies = [s for s in seen["head"] if s[0] == 2 * 16]
    assert copies and all(dtype == torch.float32 for _, _, dtype in copies)
    assert torch.isfinite(cb.history[-1]["maps"].float()).all()


def test_custom_batch_reader_in_a_real_run(tmp_path: Path) -> None:
    reader = lambda b: (b["pixels"], b["cls"])  # noqa: E731
    cb = ViTReciproCAMCallback(num_images=2, explain="label", batch_reader=reader)
    fit(Module(), [cb], tmp_path, max_epochs=1, train=Squares(16, layout="odd"),
        val=Squares(8, layout="odd"))  # fmt: skip
    assert len(cb.history) == 1


def test_fewer_images_than_asked_warns_once_and_uses_all(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=16, log_images=False)
    with pytest.warns(UserWarning, match="has 5 images, fewer than num_images=16"):
        fit(Module(), [cb], tmp_path, val=Squares(5), max_epochs=1)
    assert cb.history[-1]["maps"].shape[0] == 5


class CliModule(Module):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__(lr=lr)


def test_lightning_cli_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["cli"])  # pytest's own arguments are not the CLI's

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  logger: false\n"
        "  callbacks:\n"
        "    - class_path: lightning_vitrcam.ViTReciproCAMCallback\n"
        "      init_args:\n"
        "        num_images: 8\n"
        "        every_n_steps: 50\n"
        "        explain: both\n"
        "        class_names: [a, b, c, d]\n"
        "        mean: [0.5, 0.5, 0.5]\n"
        "        std: [0.25, 0.25, 0.25]\n"
        "        batch_reader: lightning_vitrcam.probes.default_batch_reader\n"
        "        hotspot_threshold: null\n"
    )
    cli = LightningCLI(
        CliModule, run=False, args=["--config", str(config)], save_config_callback=None
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, ViTReciproCAMCallback)]
    assert (cb.num_images, cb.every_n_steps, cb.explain) == (8, 50, "both")
    assert cb.class_names == list("abcd") and cb.std == [0.25] * 3
    assert cb.batch_reader is default_batch_reader and cb.hotspot_threshold is None


# --------------------------------------------------------------------------- never harm the run
class Poison(Callback):
    """Before each validation: makes the head return NaN (a diverged model)."""

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        with torch.no_grad():
            pl_module.model.head.bias.fill_(float("nan"))


def test_diverged_model_warns_and_skips_without_ending_the_run(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=2, log_images=False)
    with pytest.warns(ExplanationSkippedWarning, match=r"skipped: the model's logits .* NaN"):
        trainer = fit(Module(), [Poison(), cb], tmp_path, max_epochs=2)
    assert trainer.current_epoch == 2 and cb.history == []  # trained on, nothing recorded


def test_out_of_memory_halves_max_batch_and_retries_once(tmp_path, monkeypatch) -> None:
    from lightning_vitrcam.explainer import ViTReciproCAM

    original, calls = ViTReciproCAM.__call__, []

    def flaky(self, images, targets=None):
        calls.append(self.max_batch)
        if len(calls) == 2:  # the first explanation after the setup's dry run
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, images, targets)

    monkeypatch.setattr(ViTReciproCAM, "__call__", flaky)
    cb = ViTReciproCAMCallback(num_images=2, log_images=False, compute_adcc=False, max_batch=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExplanationSkippedWarning)
        fit(Module(), [cb], tmp_path, max_epochs=1)
    assert calls[:3] == [64, 64, 32] and cb.max_batch == 32 and len(cb.history) == 1

    calls.clear()

    def always(self, images, targets=None):  # only the setup's dry run succeeds
        calls.append(self.max_batch)
        if len(calls) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, images, targets)

    monkeypatch.setattr(ViTReciproCAM, "__call__", always)
    cb = ViTReciproCAMCallback(num_images=2, log_images=False)
    match = "out of memory with max_batch=128 and again with 64"
    with pytest.warns(ExplanationSkippedWarning, match=match):
        trainer = fit(Module(), [cb], tmp_path, max_epochs=1)
    assert trainer.current_epoch == 1 and cb.history == []


STAGES = {
    # stage named in the warning: (class, method) whose call is made to run out of memory
    "the explanation": (ViTReciproCAM, "__call__"),
    "ADCC": ("lightning_vitrcam.metrics.ADCC", "update"),
    "the shortcut alarm": (ViTReciproCAM, "predict"),
}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("failures", [1, 2])
def test_out_of_memory_in_any_stage_halves_the_shared_bound_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, failures: int
) -> None:
    """Out of memory in the explanation, ADCC or the alarm's forwards halves the one batch
    bound they share and runs that stage again; a second failure skips the evaluation with a
    warning that names the stage and the setting to lower."""
    import importlib

    owner, method = STAGES[stage]
    if isinstance(owner, str):
        module, _, name = owner.rpartition(".")
        owner = getattr(importlib.import_module(module), name)
    original, calls = getattr(owner, method), []

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        # the setup's dry run is the explainer's first call; fail the next `failures` calls
        skip = 1 if method == "__call__" else 0
        if skip < len(calls) <= skip + failures:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, flaky)
    cb = ViTReciproCAMCallback(num_images=4, log_images=False, max_batch=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(Module(), [cb], tmp_path, max_epochs=2)
    skipped = [str(w.message) for w in caught if w.category is ExplanationSkippedWarning]
    assert trainer.current_epoch == 2 and cb.max_batch == 32  # halved once, never again
    assert cb.alarm.last_tests  # the alarm ran at the evaluation that was not skipped
    if failures == 1:
        assert skipped == [] and [h["step"] for h in cb.history] == [4, 8]
    else:  # the first evaluation is skipped, the second runs at the lowered bound
        assert len(skipped) == 1 and [h["step"] for h in cb.history] == [8]
        assert f"{stage} ran out of memory with max_batch=64 and again with 32" in skipped[0]
        assert "Lower max_batch or num_images" in skipped[0]


class BrokenLogger(CSVLogger):
    """Fails on the callback's scalars only (Lightning's own logging would fail the run)."""

    def log_metrics(self, metrics, step=None) -> None:
        if any(key.startswith("vitrcam/") for key in metrics):
            raise OSError("disk full (simulated)")
        super().log_metrics(metrics, step)


def test_failing_logger_warns_and_training_continues(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=2, log_images=False)
    with pytest.warns(ExplanationSkippedWarning, match="BrokenLogger.*disk full"):
        trainer = fit(Module(), [cb], tmp_path, max_epochs=2, logger=BrokenLogger(tmp_path))
    assert trainer.current_epoch == 2 and len(cb.history) == 2


def test_flat_maps_are_named_and_left_out_of_the_mean_map(tmp_path: Path) -> None:
    module = Module(lr=0.0)
    with torch.no_grad():
        module.model.head.weight.zero_()  # logits do not depend on the image: every map is flat
    cb = ViTReciproCAMCallback(num_images=3, compute_adcc=False)
    with pytest.warns(UserWarning, match="100% of the probe maps are flat") as record:
        fit(module, [cb], tmp_path, max_epochs=2, limit_train_batches=1)
    assert sum("are flat" in str(w.message) for w in record) == 1  # said once per run
    text = (tmp_path / "vitrcam" / "metrics.jsonl").read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    assert all(x["vitrcam/flat_maps"] == 1.0 and x["vitrcam/score_range"] == 0.0 for x in lines)
    assert not any("vitrcam/hotspot_ratio" in x for x in lines)  # no signal from flat maps


def test_sharded_strategies_are_refused_early() -> None:
    from types import SimpleNamespace

    from lightning_vitrcam.sharding import check_strategy

    class FSDPStrategy:  # stands in for Lightning's (it needs a GPU to be built)
        pass

    with pytest.raises(ValueError, match="sharded strategy FSDPStrategy.*strategy='ddp'"):
        check_strategy(SimpleNamespace(strategy=FSDPStrategy()))
    check_strategy(L.Trainer(accelerator="cpu", logger=False))  # single device: fine


class GreySquares(Squares):
    """One-channel images (X-ray-like): the mean of the three colour channels."""

    def __getitem__(self, i: int) -> Any:
        item = super().__getitem__(i)
        return {**item, "image": item["image"].mean(dim=0, keepdim=True)}


def test_grayscale_vit_through_the_callback(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=2, explain="both")
    fit(Module(in_chans=1), [cb], tmp_path, max_epochs=1, train=GreySquares(16), val=GreySquares(8))
    assert len(cb.history) == 1 and (cb.style.mean, cb.style.std) == ((0.5,), (0.5,))
    grid = tmp_path / "vitrcam" / "saliency_grid" / "step_000002.png"
    from PIL import Image

    with Image.open(grid) as img:
        assert img.mode == "RGB" and img.width >= 3 * 96  # grey input, overlays in colour


# --------------------------------------------------------------------------- short real training
def _train_and_collect(
    tmp_path: Path, corner: bool, patch_size: int = 8
) -> tuple[list[str], L.Trainer]:
    """A tiny ViT trained for real on coloured squares, with the callback at its defaults
    (on clean squares without the colour test: there the colour is the class)."""
    L.seed_everything(0)
    module = Module(lr=3e-3, depth=2, drop_rate=0.0, patch_size=patch_size)
    train = Squares(512, seed=20, corner=corner)
    val = Squares(64, seed=21, corner=corner)
    alarm = ShortcutAlarm() if corner else NOT_COLOUR
    cb = ViTReciproCAMCallback(log_images=False, shortcut_alarm=alarm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(module, [cb], tmp_path, train=train, val=val, max_epochs=3,
                      limit_train_batches=None, limit_val_batches=None)  # fmt: skip
    found = [str(w.message) for w in caught if issubclass(w.category, PossibleShortcutWarning)]
    return found, trainer


def test_short_training_on_a_corner_shortcut_warns(tmp_path: Path) -> None:
    messages, trainer = _train_and_collect(tmp_path, corner=True)
    assert float(trainer.callback_metrics["val_loss"]) < 0.5  # it did learn (the corner)
    assert messages and "epoch 2" in messages[-1]  # still warned at the last evaluation
    assert "the prediction hangs on token row 0, column 0 (on the top-left corner)" in messages[-1]


def test_short_training_on_a_corner_over_2x2_tokens_warns_with_the_box(tmp_path: Path) -> None:
    """4-pixel patches: the 8x8 corner patch spans 2x2 tokens (whether the model reads all of
    them redundantly, so that only the box is confirmed, depends on the run; the box path
    itself is tested in test_shortcut.py)."""
    messages, trainer = _train_and_collect(tmp_path, corner=True, patch_size=4)
    assert float(trainer.callback_metrics["val_loss"]) < 0.5
    assert messages and "epoch 2" in messages[-1]
    # the smallest confirmed place is named: the 2x2 box or a token of it
    inside = ["the tokens at rows 0-1, columns 0-1 (on the top-left corner)"]
    inside += [f"token row {r}, column {c} (" for r in (0, 1) for c in (0, 1)]
    assert any(f"the prediction hangs on {place}" in messages[-1] for place in inside), messages[-1]


def test_short_training_on_clean_squares_does_not_warn(tmp_path: Path) -> None:
    messages, trainer = _train_and_collect(tmp_path, corner=False)
    assert float(trainer.callback_metrics["val_loss"]) < 0.5  # it learned the squares
    assert messages == []


@pytest.mark.parametrize("cue", ["moving", "tint", "background"])
def test_short_training_on_a_cue_that_is_not_at_one_place_warns_with_its_kind(
    tmp_path: Path, cue: str
) -> None:
    """A tag at a random place of each image, a colour cast, or a cast of the background
    only: no fixed place carries the class, and the warning says what does (a small region;
    the image's colour; the background)."""
    L.seed_everything(0)
    module = Module(lr=3e-3, depth=2, drop_rate=0.0)
    # every kind's evidence at every check (by default the first confirmed kind suffices)
    cb = ViTReciproCAMCallback(log_images=False, report=False,
                               shortcut_alarm=ShortcutAlarm(thorough=True))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(module, [cb], tmp_path, train=CuedSquares(512, 20, cue),
                      val=CuedSquares(64, 21, cue), max_epochs=4, limit_train_batches=None,
                      limit_val_batches=None)  # fmt: skip
    found = [str(w.message) for w in caught if issubclass(w.category, PossibleShortcutWarning)]
    assert float(trainer.callback_metrics["val_loss"]) < 0.1  # it learned the cue
    assert found and "epoch 3" in found[-1]  # still warned at the last evaluation
    if cue == "tint":
        assert "the prediction follows the image's colour" in found[-1]
    elif cue == "background":
        # a cast of the background casts the image too: the colour may be named first
        kinds = {f.kind for f in cb.alarm.last_verdict.suspects}
        assert "background" in kinds, found[-1]
    else:
        # a tag at a random place of a 4x4 grid fills a quarter of the 2x2 box that holds it:
        # the region's look is not found alike at its median pixel, and the tag lies in the
        # background (the masks say so): one of the two names it
        kinds = {f.kind for f in cb.alarm.last_verdict.suspects}
        assert kinds & {"region", "background"}, found[-1]
