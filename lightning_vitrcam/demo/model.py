"""The demo's LightningModule: a small timm Vision Transformer trained from scratch.

Example:
    >>> import torch
    >>> model = ViTClassifier(model_kwargs=dict(img_size=64, patch_size=8, embed_dim=32,
    ...                                         depth=1, num_heads=2))
    >>> model(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader
from torchmetrics import Metric
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

from lightning_vitrcam.probes import default_batch_reader

__all__ = ["DEFAULT_VIT_KWARGS", "ViTClassifier"]

DEFAULT_VIT_KWARGS: dict[str, Any] = {
    "img_size": 64,
    "patch_size": 8,
    "embed_dim": 128,
    "depth": 4,
    "num_heads": 4,
}


def _images_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    read = default_batch_reader(batch)
    return read["image"], read["label"]


class ViTClassifier(L.LightningModule):
    """Image classifier around a timm Vision Transformer, always trained from scratch.

    ``self.model`` is the timm ViT (``timm.create_model(model_name, pretrained=False,
    num_classes=num_classes, **model_kwargs)``). Without ``model_kwargs`` the ViT is a small one
    for 64x64 images: 8x8 patches (one token per shortcut patch), width 128, 4 blocks, 4 heads.
    Given ``model_kwargs`` replace those defaults entirely.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss`` and
    ``test/acc``. Optimiser: AdamW; with ``scheduler="cosine"`` the learning rate warms up
    linearly over ``warmup_fraction`` of the steps, then follows a cosine to zero.

    Args:
        model_name: timm model name of a ViT.
        model_kwargs: Extra ``timm.create_model`` arguments; ``None`` uses
            ``DEFAULT_VIT_KWARGS``.
        num_classes: Number of output classes.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        scheduler: ``"cosine"`` (per step, over ``trainer.estimated_stepping_batches``) or
            ``"none"``.
        warmup_fraction: Fraction of all steps used for linear warm-up.
        label_smoothing: Cross-entropy label smoothing (DeiT's 0.1). It also keeps the softmax
            off 1.0, where ReciproCAM's score differences would vanish in rounding noise.
        task: ``"multiclass"`` (a softmax head, cross-entropy) or ``"binary"`` (one logit,
            binary cross-entropy on 0/1 labels; ``num_classes`` must be 2).

    Example:
        >>> model = ViTClassifier(model_kwargs=dict(img_size=32, patch_size=8, embed_dim=32,
        ...                                         depth=1, num_heads=2), num_classes=3)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        model_name: str = "vit_tiny_patch16_224",
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        scheduler: Literal["cosine", "none"] = "cosine",
        warmup_fraction: float = 0.05,
        label_smoothing: float = 0.1,
        task: Literal["multiclass", "binary"] = "multiclass",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        kwargs = dict(DEFAULT_VIT_KWARGS if model_kwargs is None else model_kwargs)
        if kwargs.pop("pretrained", False):
            raise ValueError("ViTClassifier trains from scratch; pretrained weights are not used")
        kwargs.pop("num_classes", None)
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        if task not in ("multiclass", "binary") or (task == "binary" and num_classes != 2):
            raise ValueError(
                f"task must be 'multiclass', or 'binary' with num_classes=2; got {task!r} with"
                f" num_classes={num_classes}"
            )
        self.binary = task == "binary"
        self.model = timm.create_model(
            model_name, pretrained=False, num_classes=1 if self.binary else num_classes, **kwargs
        )
        self.train_acc, self.val_acc, self.test_acc = (self._accuracy() for _ in range(3))

    def _accuracy(self) -> Metric:
        if self.binary:
            return BinaryAccuracy()
        return MulticlassAccuracy(num_classes=self.hparams.num_classes, average="micro")

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
        """Cross-entropy, or binary cross-entropy of the one logit against 0/1 labels (smoothed
        towards 1/2)."""
        if self.binary:
            target = labels.float() * (1.0 - smoothing) + 0.5 * smoothing
            return F.binary_cross_entropy_with_logits(logits[:, 0], target)
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted class of each row (the positive side where the logit is above 0)."""
        return (logits[:, 0] > 0).long() if self.binary else logits.argmax(-1)

    def _metric_input(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0].sigmoid() if self.binary else logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]`` of normalised images ``[B, 3, H, W]``."""
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = _images_labels(batch)
        logits = self(images)
        loss = self.loss(logits, labels, self.hparams.label_smoothing)
        self.train_acc(self._metric_input(logits), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        self.log(
            "train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=labels.shape[0]
        )
        return loss

    def _eval_step(self, batch: Any, prefix: str, metric: Metric) -> torch.Tensor:
        images, labels = _images_labels(batch)
        logits = self(images)
        loss = self.loss(logits, labels, 0.0)
        metric(self._metric_input(logits), labels)
        n = labels.shape[0]
        self.log(f"{prefix}/loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{prefix}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        # No weight decay on biases, norms, position embeddings and tokens (all are < 2-D).
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        for name in ("pos_embed", "cls_token", "reg_token"):
            p = getattr(self.model, name, None)
            if isinstance(p, torch.nn.Parameter) and any(p is q for q in decay):
                decay = [q for q in decay if q is not p]
                no_decay.append(p)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        if self.hparams.scheduler == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    @torch.no_grad()
    def evaluate_accuracy(self, dataloader: DataLoader) -> float:
        """Top-1 accuracy of the model over ``dataloader``, outside any Trainer.

        Batches may be dicts or ``(image, label)`` pairs; the training mode is restored.

        Example:
            >>> from lightning_vitrcam.demo import ShapesDataModule
            >>> dm = ShapesDataModule(num_train=8, num_val=8, num_patch_free=8)
            >>> model = ViTClassifier(model_kwargs=dict(img_size=64, patch_size=8,
            ...                                         embed_dim=32, depth=1, num_heads=2))
            >>> 0.0 <= model.evaluate_accuracy(dm.patch_free_dataloader()) <= 1.0
            True
        """
        was_training = self.training
        self.eval()
        # iterating a DataLoader draws its base seed from the global RNG: isolate it so that
        # measuring during training never changes the run
        correct, total = 0, 0
        try:
            with isolate_rng():
                batches = list(dataloader)
            for batch in batches:
                images, labels = _images_labels(batch)
                images, labels = images.to(self.device), labels.to(self.device)
                correct += int((self.predictions(self(images)) == labels).sum())
                total += int(labels.numel())
        finally:
            self.train(was_training)
        return correct / max(1, total)
