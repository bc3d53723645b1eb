"""The fast path beyond timm: torchvision's ViT and HF ViT/DeiT equal the general path."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_vitrcam import ViTReciproCAM
from lightning_vitrcam.fast_path import spec_for
from tests.helpers import make_hf, make_torchvision_vit

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "torchvision": make_torchvision_vit,
    "torchvision_representation": lambda: make_torchvision_vit(representation_size=16),
    "hf_vit": lambda: make_hf("vit"),
    "hf_vit_no_qkv_bias": lambda: make_hf("vit", qkv_bias=False),
    "hf_deit": lambda: make_hf("deit"),
    "hf_deit_teacher": lambda: make_hf("deit_teacher"),
}


def _images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("kernel", ["gaussian", "point"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_fast_equals_general(name: str, kernel: str) -> None:
    model = BUILDERS[name]()
    images = _images()
    fast = ViTReciproCAM(model, kernel=kernel, max_batch=20)(images)
    general = ViTReciproCAM(model, kernel=kernel, fast_path=False)(images)
    assert fast.fast_path and not general.fast_path
    assert general.scores.std() > 1e-3
    torch.testing.assert_close(fast.scores, general.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.logits, general.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.targets, general.targets)

    model64 = copy.deepcopy(model).double()
    fast = ViTReciproCAM(model64, kernel=kernel)(images.double())
    general = ViTReciproCAM(model64, kernel=kernel, fast_path=False)(images.double())
    assert fast.scores.dtype == torch.float64
    torch.testing.assert_close(fast.scores, general.scores, atol=1e-10, rtol=0)


def test_fast_path_accepts_only_the_exact_classes() -> None:
    from torchvision.models import VisionTransformer

    class MyViT(VisionTransformer):  # a subclass may change the maths
        pass

    sub = MyViT(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=8)
    cam = ViTReciproCAM(sub)
    assert not cam.fast_path and "MyViT" in cam.fast_path_reason
    dino = ViTReciproCAM(make_hf("dinov2"))  # concat(class, mean of patches) pooling
    assert not dino.fast_path and spec_for(dino.model) is None
    tv = make_torchvision_vit()
    assert not ViTReciproCAM(tv, target_block=0).fast_path
    cam = ViTReciproCAM(tv, target_layer=tv.encoder.layers[-1].ln_1, num_prefix_tokens=1)
    assert not cam.fast_path  # target_layer= keeps the generic path
    assert not ViTReciproCAM(make_hf("vit"), keep_prefix_tokens=False).fast_path
    with pytest.raises(ValueError, match="not exact"):
        ViTReciproCAM(make_hf("deit"), target_block=0, fast_path=True)


@pytest.mark.parametrize("name", ["torchvision", "hf_deit_teacher"])
def test_prefix_tail_runs_outside_autocast(name: str) -> None:
    model = BUILDERS[name]()
    head = model.heads.head if name == "torchvision" else model.cls_classifier
    seen: list[torch.dtype] = []
    handle = head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].dtype))
    images = _images()
    try:
        ref = ViTReciproCAM(model)(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ViTReciproCAM(model)(images)
    finally:
        handle.remove()
    assert low.fast_path and set(seen) == {torch.float32}
    assert low.scores.dtype == torch.float32
    for a, b in zip(ref.maps.flatten(1), low.maps.flatten(1), strict=True):
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] >= 0.95
