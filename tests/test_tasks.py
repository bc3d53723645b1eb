"""Binary, multi-label and multiclass heads: known answers, inference of the task, HF batches."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_vitrcam import (
    PossibleShortcutWarning,
    ShortcutAlarm,
    ViTReciproCAM,
    ViTReciproCAMCallback,
)
from lightning_vitrcam.demo import coloured_squares
from lightning_vitrcam.probes import read_batch
from lightning_vitrcam.tasks import TASKS, infer_task
from tests.helpers import Squares, TrainOnly, make_hf, make_vit, rigged_corner_vit
from tests.test_explainer import literal_weights

torch.set_num_threads(1)


def copy_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``[B, h*w, C]``: every masked copy's logits at the last block, one copy at a time
    through the model's own modules (the paper's definition, written out)."""
    P, (h, w) = model.num_prefix_tokens, model.patch_embed.grid_size
    out = torch.zeros(images.shape[0], h * w, model.num_classes)
    with torch.no_grad():
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        for blk in model.blocks[:-1]:
            x = blk(x)
        blk = model.blocks[-1]
        for b in range(images.shape[0]):
            feats = blk.norm1(x[b : b + 1])
            for k in range(h * w):
                masked = feats.clone()
                weight = literal_weights(h, w, k // w, k % w, "gaussian").to(feats.dtype)
                masked[:, P:] = feats[:, P:] * weight[None, :, None]
                y = x[b : b + 1] + blk.drop_path1(blk.ls1(blk.attn(masked)))
                y = y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
                out[b, k] = model.forward_head(model.norm(y))[0]
    return out


# --------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("fast", [None, False])
def test_binary_head_explains_the_predicted_side_on_its_probability(fast: bool | None) -> None:
    model = make_vit(num_classes=1, seed=3)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    z = model(images)[:, 0].detach()
    out = ViTReciproCAM(model, task="binary", fast_path=fast)(images)
    side = (z > 0).long()
    assert torch.equal(out.targets, side) and {0, 1} == set(side.tolist())  # both sides here
    # each copy's score is the probability of the explained side: sigmoid(+-logit)
    p = copy_logits(model, images)[..., 0].sigmoid()
    expected = torch.where(side[:, None] == 1, p, 1 - p)
    torch.testing.assert_close(out.scores, expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(out.probs, torch.where(side == 1, z.sigmoid(), 1 - z.sigmoid()))
    lo, hi = expected.amin(1, keepdim=True), expected.amax(1, keepdim=True)
    torch.testing.assert_close(out.maps.flatten(1), (expected - lo) / (hi - lo), atol=2e-5, rtol=0)
    # a softmax over one logit is 1.0 for every copy: nothing to see (why the task matters)
    assert float(ViTReciproCAM(model, fast_path=fast)(images).maps.abs().max()) == 0.0


def test_multilabel_head_explains_each_label_on_its_own_sigmoid() -> None:
    model = make_vit(num_classes=5, seed=4)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    labels = torch.tensor([3, 1])
    out = ViTReciproCAM(model, task="multilabel")(images, labels)
    expected = copy_logits(model, images).gather(2, labels.view(2, 1, 1).expand(2, 16, 1))
    torch.testing.assert_close(out.scores, expected[..., 0].sigmoid(), atol=2e-6, rtol=0)
    # the log-odds of a sigmoid are the logit itself: its range survives any saturation
    z = expected[..., 0].double()
    torch.testing.assert_close(
        out.log_odds_range, (z.amax(1) - z.amin(1)).float(), atol=1e-5, rtol=0
    )


def test_rigged_binary_vit_map_and_alarm_by_hand() -> None:
    """A 1-logit ViT that reads only the top-left token: positive where it is red. For a
    positive the map follows the weight each copy's 3x3 Gaussian window gives that token
    (4/16 at the centre, 2/16 beside it, 1/16 on the diagonal, 0 elsewhere); the alarm names
    that token and is silent on a model that reads the whole image."""
    red = torch.tensor([1.0, -1.0, 0.0])  # red corners only (not yellow, not blue)
    model = rigged_corner_vit(3 * red[None])
    with torch.no_grad():
        model.head.bias.fill_(-1.0)
    data = Squares(16, seed=7, corner=True)
    images = data.x
    out = ViTReciproCAM(model, task="binary")(images)
    positive = data.y == 0  # red corners
    assert torch.equal(out.targets.bool(), positive)
    maps = out.maps[positive]
    assert bool((maps[:, 0, 0] == 1.0).all())  # the centre weight: the peak
    beside = torch.stack([maps[:, 0, 1], maps[:, 1, 0]])
    assert bool((beside > 0.05).all() and (beside < 0.5).all())
    assert bool((maps[:, 1, 1] < beside.amin(0)).all())
    outside = torch.ones(4, 4, dtype=torch.bool)
    outside[:2, :2] = False  # no window there holds the corner token
    assert float(maps[:, outside].max()) < 0.02

    task = TASKS["binary"]
    verdict = ShortcutAlarm().check(
        model, task.scores, images, [out.maps], out.targets, torch.ones(16, dtype=torch.bool),
        predicts=task.predicts,
    )  # fmt: skip
    region = [f for f in verdict.suspects if f.kind == "region"]
    assert region and region[0].place == (0, 1, 0, 1) and not region[0].moves

    def whole(x: torch.Tensor) -> torch.Tensor:  # red over the whole image
        return 3 * (x * red[:, None, None]).mean(dim=(1, 2, 3))[:, None]

    targets = task.predicted(whole(images))
    assert ShortcutAlarm(kinds=["region"]).check(
        whole, task.scores, images, [out.maps], targets, torch.ones(16, dtype=torch.bool),
        predicts=task.predicts,
    ).suspects == []  # fmt: skip


def test_multilabel_alarm_groups_per_label() -> None:
    """Label k is present where corner k is bright (two labels per image): the alarm finds
    each label's own corner in the probes that predict that label."""
    g = torch.Generator().manual_seed(8)
    images = torch.randn(24, 1, 32, 32, generator=g) * 0.1
    corners = [(slice(0, 8), slice(0, 8)), (slice(0, 8), slice(24, 32))]
    corners += [(slice(24, 32), slice(0, 8)), (slice(24, 32), slice(24, 32))]
    truth = torch.zeros(24, 4, dtype=torch.bool)
    for i in range(24):
        for k in (i % 4, (i // 4 + i + 1) % 4):
            rows, cols = corners[k]
            images[i, :, rows, cols] += 1.0
            truth[i, k] = True

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([10 * (x[:, 0, r, c].mean(dim=(1, 2)) - 0.5) for r, c in corners], 1)

    task = TASKS["multilabel"]
    assert torch.equal(task.predicts(task.scores(model(images))), truth)
    pairs = truth.nonzero()  # (probe, label): what the evaluation explains and tests
    verdict = ShortcutAlarm(kinds=["region"]).check(
        model, task.scores, images[pairs[:, 0]], [torch.rand(len(pairs), 4, 4, generator=g)],
        pairs[:, 1], torch.ones(len(pairs), dtype=torch.bool), predicts=task.predicts,
    )  # fmt: skip
    places = {f.group: f.place for f in verdict.suspects}
    assert places == {0: (0, 1, 0, 1), 1: (0, 1, 3, 4), 2: (3, 4, 0, 1), 3: (3, 4, 3, 4)}


# --------------------------------------------------------------------------- the task
def test_the_task_is_inferred_and_checked() -> None:
    assert infer_task("auto", 1, torch.tensor([0.0, 1.0]))[0].name == "binary"
    assert infer_task("auto", 3, torch.tensor([[1, 0, 1], [0, 1, 0]]))[0].name == "multilabel"
    assert infer_task("auto", 3, torch.tensor([2, 0]))[0].name == "multiclass"
    with pytest.raises(ValueError, match="needs a head with one logit, but the model has 4"):
        infer_task("binary", 4, None)
    with pytest.raises(ValueError, match="one logit cannot be task='multiclass'"):
        infer_task("multiclass", 1, None)
    with pytest.raises(ValueError, match=r"labels 0 or 1, got \[0.0, 1.0, 2.0\]"):
        TASKS["binary"].labels(torch.tensor([0, 1, 2]), 1)
    with pytest.raises(ValueError, match=r"multi-hot labels \[N, 3\]"):
        TASKS["multilabel"].labels(torch.ones(2, 4), 3)
    assert TASKS["binary"].labels(torch.tensor([[1.0], [0.0]]), 1).tolist() == [1, 0]
    assert TASKS["multilabel"].labels(torch.tensor([2, 0]), 3).tolist() == [
        [False, False, True],
        [True, False, False],
    ]


def test_batches_as_the_ecosystems_ship_them() -> None:
    x = torch.randn(2, 3, 8, 8)
    images, labels, _ = read_batch({"pixel_values": x, "labels": torch.tensor([1, 0])})
    assert images is x and labels.tolist() == [1, 0]
    assert read_batch({"img": x, "fine_label": torch.tensor([3, 4])})[1].tolist() == [3, 4]
    assert read_batch((x, torch.tensor([1.0, 0.0])))[1].dtype == torch.float32  # 0/1 floats
    hot = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert torch.equal(read_batch((x, hot))[1], hot)  # multi-hot kept
    with pytest.raises(ValueError, match="pixel_values.*labels"):
        read_batch({"pixels": x})


# --------------------------------------------------------------------------- in a real fit
class BinarySquares(Dataset):
    """Squares with 0/1 float labels, half of them positive. Clean: positive = a red or green
    square. With ``corner`` (a one-sided leak) the squares' colours are random and only the
    positives carry a white top-left patch, the negatives noise there."""

    def __init__(self, n: int, seed: int, corner: bool = False) -> None:
        x, y, _ = coloured_squares(n, seed, side=16, corner=corner)
        self.x, self.y = x, (y < 2).float()
        if corner:
            noise = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.3
            self.x[:, :, :8, :8] = torch.where(self.y.view(-1, 1, 1, 1) == 1, 2.0, noise)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class BinaryModule(TrainOnly):
    """One logit, binary cross-entropy on float 0/1 labels."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__(lr=lr, num_classes=1, depth=2, drop_rate=0.0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])[:, 0]
        return F.binary_cross_entropy_with_logits(logits, batch["label"])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits = self(batch["image"])[:, 0]
        self.log("val_loss", F.binary_cross_entropy_with_logits(logits, batch["label"]))


def _fit(module: L.LightningModule, cb: ViTReciproCAMCallback, train: Dataset, val: Dataset,
         root: Path, epochs: int = 3) -> tuple[L.Trainer, list[str]]:  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=root, callbacks=[cb],
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(
            module, DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=16)
        )
    found = [str(w.message) for w in caught if issubclass(w.category, PossibleShortcutWarning)]
    return trainer, found


def test_short_binary_training_on_a_one_sided_leak_warns(tmp_path: Path) -> None:
    L.seed_everything(0)
    cb = ViTReciproCAMCallback(log_images=False, explain="both", class_names=["blue", "red"])
    trainer, found = _fit(BinaryModule(), cb, BinarySquares(512, 20, corner=True),
                          BinarySquares(64, 21, corner=True), tmp_path, epochs=4)  # fmt: skip
    assert float(trainer.callback_metrics["val_loss"]) < 0.3  # it learned (the corner)
    assert cb.explainer.task.name == "binary" and cb.probes.labels.dtype == torch.long
    assert found and "epoch 3" in found[-1]
    assert "token row 0, column 0 (on the top-left corner)" in found[-1]
    (finding, *_) = cb.alarm.last_verdict.suspects
    assert finding.kind == "region" and "pasted into" in finding.describe()


def test_short_binary_training_on_clean_squares_does_not_warn(tmp_path: Path) -> None:
    L.seed_everything(0)
    # the squares' colour is what a clean model reads: the colour test would say so
    alarm = ShortcutAlarm(kinds=["region", "background"])
    cb = ViTReciproCAMCallback(log_images=False, shortcut_alarm=alarm)
    trainer, found = _fit(BinaryModule(), cb, BinarySquares(512, 20), BinarySquares(64, 21),
                          tmp_path)  # fmt: skip
    assert float(trainer.callback_metrics["val_loss"]) < 0.3  # it learned the squares
    assert found == [] and len(cb.history) == 3


class HFBatchModule(TrainOnly):
    """A real ``ViTForImageClassification`` fed HF-style batches: ``model(**batch)``."""

    def __init__(self) -> None:
        super().__init__(model=make_hf("vit", num_labels=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.model(**batch).loss)


class HFSquares(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.data = Squares(n, seed=seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.data.x[i], "labels": self.data.y[i]}


def test_hf_batches_through_a_real_vit_for_image_classification(tmp_path: Path) -> None:
    cb = ViTReciproCAMCallback(num_images=4, log_images=False, explain="both")
    trainer, _ = _fit(HFBatchModule(), cb, HFSquares(32, 1), HFSquares(16, 2), tmp_path, epochs=1)
    assert trainer.current_epoch == 1 and len(cb.history) == 1
    assert cb.explainer.task.name == "multiclass" and cb.probes.labels.shape == (4,)


def test_right_says_which_predictions_agree_with_the_labels_and_the_best_constant_guess() -> None:
    from lightning_vitrcam.tasks import TASKS

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    rows = torch.arange(4)
    right, chance = TASKS["multiclass"].right(logits, torch.tensor([0, 1, 1, 1]), rows, rows)
    assert right.tolist() == [True, True, True, False] and chance == 0.75
    one = torch.tensor([[3.0], [-1.0], [2.0], [-2.0]])  # predicted sides 1, 0, 1, 0
    right, chance = TASKS["binary"].right(one, torch.tensor([1, 1, 0, 0]), rows, rows)
    assert right.tolist() == [True, False, False, True] and chance == 0.5
    hot = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [0, 0, 1]]).bool()
    pairs, labels = torch.tensor([0, 0, 1, 3]), torch.tensor([0, 2, 0, 2])
    right, chance = TASKS["multilabel"].right(logits, hot, pairs, labels)
    assert right.tolist() == [True, True, False, True] and chance == 0.75
