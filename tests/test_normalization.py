"""The normalisation statistics resolved once from a model's config and passed to rendering."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_vitrcam.normalization import resolve_mean_std
from lightning_vitrcam.render import Style, overlay

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
    with_model = overlay((x - 0.5) / 0.5, torch.zeros(1, 2, 2), Style(mean, std, alpha=0.0))
    torch.testing.assert_close(with_model.float(), (x * 255).round(), atol=1, rtol=0)


def test_statistics_follow_the_model_channels():
    timm = pytest.importorskip("timm")
    tiny = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=4)
    grey = timm.create_model("vit_tiny_patch16_224", in_chans=1, **tiny)
    # timm's pretrained_cfg keeps three values for in_chans=1 models: their mean is used
    grey.pretrained_cfg = {**grey.pretrained_cfg, "mean": (0.2, 0.4, 0.6), "std": (0.3,) * 3}
    assert resolve_mean_std(grey) == ((0.4,), (0.3,))
    assert resolve_mean_std(nn.ModuleDict({"vit": grey}))[0] == (0.4,)  # inside a module
    assert resolve_mean_std(channels=1) == ((0.449,), (0.226,))  # ImageNet likewise
    four = resolve_mean_std(channels=4)
    assert four[0] == (*IMAGENET_MEAN, 0.449) and len(four[1]) == 4
    # explicit values win: one for all channels, or one per channel
    assert resolve_mean_std(grey, mean=(0.5,), std=(0.5,)) == ((0.5,), (0.5,))
    assert resolve_mean_std(mean=0.5 * torch.ones(3).numpy(), channels=3)[0] == (0.5,) * 3
    with pytest.raises(ValueError, match="mean has 3 values but the images have 1 channels"):
        resolve_mean_std(grey, mean=(0.1, 0.2, 0.3))
    # what the callback passes: the probe images' channel count
    images = torch.zeros(2, 1, 32, 32)
    assert resolve_mean_std(grey, channels=images.shape[1]) == ((0.4,), (0.3,))
    out = overlay(images, torch.zeros(2, 4, 4), Style(*resolve_mean_std(grey), alpha=0.0))
    assert out.shape == (2, 3, 32, 32) and int(out[0, 0, 0, 0]) == round(0.4 * 255)


def test_channels_from_hf_and_torchvision_models():
    from lightning_vitrcam.normalization import input_channels
    from tests.helpers import make_hf, make_torchvision_vit

    assert input_channels(make_hf("vit", num_channels=1)) == 1
    assert input_channels(make_torchvision_vit()) == 3
    assert resolve_mean_std(make_hf("vit", num_channels=1)) == ((0.449,), (0.226,))
