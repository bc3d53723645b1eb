"""Hierarchical families beyond Swin (PVT v2, Twins, MViT v2, Hiera in timm and HF, MaxViT,
PiT) against a literal one-copy-per-forward reference."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import timm
import torch
from torch import nn

from lightning_vitrcam import ViTReciproCAM
from lightning_vitrcam.adapters import find_vit, is_explainable
from tests.helpers import sensitize
from tests.test_adapters import literal_weights

torch.set_num_threads(1)


def _pvt() -> nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(
        "pvt_v2_b0", embed_dims=(8, 16), depths=(1, 2), num_heads=(1, 2), sr_ratios=(2, 1),
        mlp_ratios=(2, 2), num_classes=5,
    )  # fmt: skip
    return sensitize(m, heads=[m.head])


def _twins() -> nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(
        "twins_svt_small", img_size=32, embed_dims=(8, 16), depths=(2, 2), num_heads=(1, 2),
        wss=(2, 2), sr_ratios=(2, 1), mlp_ratios=(2, 2), num_classes=5,
    )  # fmt: skip
    return sensitize(m, heads=[m.head])


def _mvit(cls_token: bool) -> nn.Module:
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    torch.manual_seed(0)
    cfg = MultiScaleVitCfg(
        depths=(1, 2), embed_dim=8, num_heads=1, stride_q=((1, 1), (2, 2)),
        use_cls_token=cls_token,
    )  # fmt: skip
    m = MultiScaleVit(cfg, img_size=64, num_classes=5)
    return sensitize(m, heads=[m.head[-1] if isinstance(m.head, nn.Sequential) else m.head])


def _hiera() -> nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(
        "hiera_tiny_224", img_size=64, embed_dim=8, num_heads=1, stages=(1, 2), q_pool=1,
        mask_unit_size=(4, 4), num_classes=5,
    )  # fmt: skip
    return sensitize(m, heads=[m.head.fc])


def _maxvit(nchw: bool) -> nn.Module:
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitTransformerCfg

    torch.manual_seed(0)
    cfg = MaxxVitCfg(
        embed_dim=(8, 16), depths=(1, 1), block_type=("M", "M"), stem_width=8,
        transformer_cfg=MaxxVitTransformerCfg(dim_head=8, use_nchw_attn=nchw),
    )  # fmt: skip
    m = MaxxVit(cfg, img_size=64, num_classes=5)
    return sensitize(m, heads=[m.head.fc])


def _hf_hiera() -> nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.HieraConfig(
        image_size=[64, 64], embed_dim=8, depths=[1, 2], num_heads=[1, 1], num_query_pool=1,
        masked_unit_size=[4, 4], num_labels=5,
    )  # fmt: skip
    m = tf.HieraForImageClassification(cfg)
    return sensitize(m, heads=[m.classifier])


def _pit(distilled: bool) -> nn.Module:
    torch.manual_seed(0)
    name = "pit_ti_distilled_224" if distilled else "pit_ti_224"
    m = timm.create_model(
        name, img_size=64, depth=(1, 2), heads=(1, 2), base_dims=(8, 8), num_classes=5
    )
    heads = [h for h in (m.head, getattr(m, "head_dist", None)) if isinstance(h, nn.Linear)]
    return sensitize(m, heads=heads)


@contextlib.contextmanager
def _scaled(
    module: nn.Module, weight: torch.Tensor, prefix: int, on_input: bool, layout: str = "tokens"
) -> Iterator[None]:
    """``module``'s output (or first input) with its spatial tokens times ``weight`` ``[n]``,
    given in the sequence's own order: ``[B, prefix + n, C]``, or an ``[B, h, w, C]`` /
    ``[B, C, h, w]`` map (row-major)."""

    def scale(t: torch.Tensor) -> torch.Tensor:
        if layout == "nhwc":
            return t * weight.to(t.dtype).view(1, *t.shape[1:3], 1)
        if layout == "nchw":
            return t * weight.to(t.dtype).view(1, 1, *t.shape[2:4])
        t = t.clone()
        t[:, prefix:] = t[:, prefix:] * weight.to(t.dtype)[None, :, None]
        return t

    if on_input:
        handle = module.register_forward_pre_hook(lambda _m, a: (scale(a[0]), *a[1:]))
    else:
        handle = module.register_forward_hook(lambda _m, _a, out: scale(out))
    try:
        yield
    finally:
        handle.remove()


def hiera_positions(model: nn.Module, poolings: int) -> torch.Tensor:
    """``[n, 2]``: the grid (row, column) of each position of a Hiera block's input sequence,
    worked out literally: the model's unroll applied to every token's coordinates, then each
    query pooling's max over ``q_stride`` contiguous chunks (whose members share their
    pooled position). timm's Hiera or HF's."""
    config = getattr(model, "config", None)
    if config is not None:  # HF: a module-level unroll with the model's schedule
        from transformers.models.hiera.modeling_hiera import unroll

        q_stride = tuple(config.query_stride)
        h, w = (i // s for i, s in zip(config.image_size, config.patch_stride, strict=True))
        schedule = model.hiera.unroll_schedule

        def unrolled(c: torch.Tensor) -> torch.Tensor:
            return unroll(c, tuple(config.image_size), config.patch_stride, schedule)
    else:
        q_stride = tuple(model.q_stride)
        h, w = model.tokens_spatial_shape
        unrolled = model.unroll
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = unrolled(torch.stack([rows, cols], -1).reshape(1, h * w, 2).double())
    stride = int(torch.tensor(q_stride).prod())
    for _ in range(poolings):
        chunks = coords.view(1, stride, -1, 2)
        pooled = torch.div(chunks, torch.tensor(q_stride), rounding_mode="floor")
        assert torch.equal(pooled.amax(1), pooled.amin(1))
        coords = pooled[:, 0]
    return coords[0].long()


Case = tuple[Callable[[], nn.Module], str, int, list[tuple[int, tuple[int, int]]]]
# name: (build, adapter, prefix tokens, [(target_block, grid)])
CASES: dict[str, Case] = {
    "pvt_v2": (_pvt, "TimmPvtV2Adapter", 0, [(-1, (8, 8)), (0, (16, 16))]),
    "twins": (_twins, "TimmTwinsAdapter", 0, [(-1, (4, 4)), (0, (8, 8)), (1, (8, 8))]),
    "mvit": (lambda: _mvit(False), "TimmMViTAdapter", 0, [(-1, (8, 8)), (1, (16, 16))]),
    "mvit_cls": (lambda: _mvit(True), "TimmMViTAdapter", 1, [(-1, (8, 8)), (1, (16, 16))]),
    "hiera": (_hiera, "TimmHieraAdapter", 0, [(-1, (8, 8)), (1, (16, 16)), (0, (16, 16))]),
    "hf_hiera": (_hf_hiera, "HFHieraAdapter", 0, [(-1, (8, 8)), (1, (16, 16)), (0, (16, 16))]),
    "maxvit": (
        lambda: _maxvit(False), "TimmMaxViTAdapter", 0, [(-1, (8, 8)), (-2, (8, 8)), (0, (16, 16))],
    ),
    "maxvit_nchw": (lambda: _maxvit(True), "TimmMaxViTAdapter", 0, [(-1, (8, 8)), (1, (16, 16))]),
    "pit": (lambda: _pit(False), "TimmPiTAdapter", 1, [(-1, (4, 4)), (0, (7, 7))]),
    "pit_distilled": (lambda: _pit(True), "TimmPiTAdapter", 2, [(-1, (4, 4)), (1, (4, 4))]),
}  # fmt: skip
IMAGE = {"pvt_v2": 64, "twins": 32, "mvit": 64, "mvit_cls": 64, "hiera": 64}
IMAGE |= {"maxvit": 64, "maxvit_nchw": 64, "pit": 64, "pit_distilled": 64, "hf_hiera": 64}
AGREEMENT: dict[str, float] = {}


def _site(name: str, model: nn.Module, target: int) -> tuple[nn.Module, nn.Module, bool]:
    """(block, literal masking module, on its input) from the model's own structure."""
    if name == "pvt_v2":
        blocks = [b for s in model.stages for b in s.blocks]
        return blocks[target], blocks[target].norm1, False
    if name == "twins":
        blocks = [b for s in model.blocks for b in s]
        return blocks[target], blocks[target].norm1, False
    if name.startswith("mvit"):
        blocks = [b for s in model.stages for b in s.blocks]
        return blocks[target], blocks[target].attn, True
    if name.startswith("pit"):
        blocks = [b for t in model.transformers for b in t.blocks]
        return blocks[target], blocks[target].norm1, False
    if name.startswith("maxvit"):
        blocks = [a for s in model.stages for b in s.blocks for a in (b.attn_block, b.attn_grid)]
        return blocks[target], blocks[target].norm1, False
    if name == "hf_hiera":
        blocks = [layer for stage in model.hiera.encoder.stages for layer in stage.layers]
        return blocks[target], blocks[target].attn, True
    return model.blocks[target], model.blocks[target].attn, True


def _logits(out: Any) -> torch.Tensor:
    return getattr(out, "logits", out)


def reference(name: str, model: nn.Module, images: torch.Tensor, target: int, grid: Any) -> Any:
    _, site, on_input = _site(name, model, target)
    prefix = CASES[name][2]
    h, w = grid
    order = None
    if name in ("hiera", "hf_hiera"):
        # the block's input has been through the query poolings of the blocks before it (the
        # first block after a stage end pools)
        if name == "hiera":
            index, ends = target % len(model.blocks), model.stage_ends[: model.q_pool]
        else:
            depths = model.config.depths
            index = target % sum(depths)
            ends = [sum(depths[: i + 1]) - 1 for i in range(model.config.num_query_pool)]
        pooled = sum(1 for end in ends if end + 1 < index)
        positions = hiera_positions(model, pooled)
        order = positions[:, 0] * w + positions[:, 1]
    scores = torch.zeros(images.shape[0], h * w, dtype=torch.float64)
    with torch.no_grad():
        targets = _logits(model(images)).argmax(1)
        for b in range(images.shape[0]):
            for k in range(h * w):
                weight = literal_weights(h, w, k // w, k % w)
                if order is not None:
                    weight = weight[order]
                layout = {"maxvit": "nhwc", "maxvit_nchw": "nchw"}.get(name, "tokens")
                with _scaled(site, weight, prefix, on_input, layout):
                    logits = _logits(model(images[b : b + 1]))
                scores[b, k] = logits.double().softmax(-1)[0, targets[b]]
    return scores


@pytest.mark.parametrize("name", list(CASES))
def test_family_matches_literal_reference(name: str) -> None:
    build, adapter, prefix, settings = CASES[name]
    model = build()
    size = IMAGE[name]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    for target, grid in settings:
        ref = reference(name, model, images, target, grid)
        assert ref.std() > 1e-3, "degenerate model: scores would not discriminate"
        cam = ViTReciproCAM(model, target_block=target, max_batch=7)
        assert type(cam.adapter).__name__ == adapter and cam.num_prefix_tokens == prefix
        assert cam.block is _site(name, model, target)[0]
        assert {c.out_features for c in cam.adapter.classifiers()} == {5}
        out = cam(images)
        assert out.grid_size == grid
        torch.testing.assert_close(out.scores.double(), ref, atol=2e-6, rtol=0)
        torch.testing.assert_close(cam.predict(images), _logits(model(images)), atol=1e-5, rtol=0)
        model64, images64 = model.double(), images.double()
        ref64 = reference(name, model64, images64, target, grid)
        out64 = ViTReciproCAM(model64, target_block=target, max_batch=7)(images64)
        diff = float((out64.scores - ref64).abs().max())
        AGREEMENT[f"{name} block {target}"] = diff
        assert diff < 1e-12, diff
        model.float()


def test_other_image_sizes_where_the_family_takes_them() -> None:
    """PVT v2 takes any size: 60 px -> 15x15 after the stem, 8x8 after a stage's embedding."""
    model = _pvt()
    images = torch.randn(1, 3, 60, 60, generator=torch.Generator().manual_seed(2))
    out = ViTReciproCAM(model)(images)
    assert out.grid_size == (8, 8)
    ref = reference("pvt_v2", model, images, -1, (8, 8))
    torch.testing.assert_close(out.scores.double(), ref, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="takes 64x64 images"):
        ViTReciproCAM(_hiera())(torch.randn(1, 3, 32, 32))


def test_the_hiera_order_is_not_row_major() -> None:
    """The unrolled order differs from the grid's, so the test above tells them apart."""
    model = _hiera()
    positions = hiera_positions(model, 0)
    order = positions[:, 0] * 16 + positions[:, 1]
    assert not torch.equal(order, torch.arange(256))


def test_families_are_found_inside_a_module() -> None:
    for build, *_ in CASES.values():
        model = build()
        assert is_explainable(model)
        assert find_vit(nn.ModuleDict({"net": model, "loss": nn.CrossEntropyLoss()}))[1] is model
