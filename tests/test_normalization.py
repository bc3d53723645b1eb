"""The normalisation statistics resolved once from a model's config and passed to rendering."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_vitrcam.normalization import resolve_mean_std
from lightning_vitrcam.render import overlay

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def test_resolve_mean_std_priority():
    default = resolve_mean_std()
    assert default == (IMAGENET_MEAN, IMAGENET_STD)
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        num_classes=4,
    )
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.25,) * 3}
    assert resolve_mean_std(model) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    class Wrapper(nn.Module):  # e.g. a LightningModule holding the timm model
        def __init__(self):
            super().__init__()
            self.net = model

    assert resolve_mean_std(Wrapper())[0] == (0.5, 0.5, 0.5)
    # explicit values win, each on its own
    assert resolve_mean_std(model, mean=(0.1, 0.2, 0.3)) == ((0.1, 0.2, 0.3), (0.25,) * 3)
    assert resolve_mean_std(nn.Linear(2, 2)) == default


def test_overlay_uses_model_statistics():
    x = torch.rand(1, 3, 8, 8)
    holder = nn.Module()
    holder.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    mean, std = resolve_mean_std(holder)
    with_model = overlay((x - 0.5) / 0.5, torch.zeros(1, 2, 2), mean, std, alpha=0.0)
    torch.testing.assert_close(with_model.float(), (x * 255).round(), atol=1, rtol=0)
