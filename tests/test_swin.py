"""Hierarchical transformers (Swin): every family against a literal one-copy-per-forward
reference, at grids with several windows, shifted blocks and padding; block numbering; errors."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from lightning_vitrcam import (
    PossibleShortcutWarning,
    ShortcutAlarm,
    ViTReciproCAM,
    ViTReciproCAMCallback,
)
from lightning_vitrcam.adapters import build_adapter, find_vit, is_explainable
from lightning_vitrcam.adapters.hierarchical import window_layout
from lightning_vitrcam.explainer import eval_mode
from tests.helpers import SWIN_KINDS, CuedSquares, Module, Squares, SwinModule, make_swin
from tests.test_adapters import literal_weights
from tests.test_callback import NOT_COLOUR, fit

torch.set_num_threads(1)

Masker = Callable[[nn.Module, torch.Tensor], contextlib.AbstractContextManager]


@contextlib.contextmanager
def _output_times(module: nn.Module, wmap: torch.Tensor, nhwc: bool) -> Iterator[None]:
    """``module``'s output times the weight map (NHWC ``[B, h, w, C]`` or ``[B, h*w, C]``)."""
    weight = wmap[None, :, :, None] if nhwc else wmap.reshape(1, -1, 1)
    handle = module.register_forward_hook(lambda _m, _a, out: out * weight.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _input_times(module: nn.Module, wmap: torch.Tensor) -> Iterator[None]:
    """``module``'s NHWC input times the weight map."""
    weight = wmap[None, :, :, None]
    handle = module.register_forward_pre_hook(lambda _m, a: (a[0] * weight.to(a[0].dtype),))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _wrapped(block: nn.Module, method: str, wmap: torch.Tensor) -> Iterator[None]:
    """The block's own ``method`` called on its NHWC first argument times the weight map: the
    tensor a post-norm Swin block's attention reads, before any shift, padding or partition
    (timm ``_attn``, ``_shifted_window_attn``; HF ``maybe_pad``). Test-only: the instance
    attribute is removed after."""
    own = getattr(block, method)
    weight = wmap[None, :, :, None]
    setattr(block, method, lambda t, *rest: own(t * weight.to(t.dtype), *rest))
    try:
        yield
    finally:
        delattr(block, method)


# kind: (target block from its place, where the literal mask goes)
LAST: dict[str, Callable[[nn.Module, int, int], nn.Module]] = {
    "timm": lambda m, s, j: m.layers[s].blocks[j],
    "timm_v2": lambda m, s, j: m.layers[s].blocks[j],
    "timm_v2_cr": lambda m, s, j: m.stages[s].blocks[j],
    "torchvision": lambda m, s, j: m.features[2 * s + 1][j],
    "torchvision_v2": lambda m, s, j: m.features[2 * s + 1][j],
    "hf": lambda m, s, j: m.base_model.encoder.layers[s].blocks[j],
    "hf_v2": lambda m, s, j: m.base_model.encoder.layers[s].blocks[j],
}
MASK: dict[str, Callable[[nn.Module, torch.Tensor], Any]] = {
    "timm": lambda b, w: _output_times(b.norm1, w, nhwc=True),
    "timm_v2": lambda b, w: _wrapped(b, "_attn", w),
    "timm_v2_cr": lambda b, w: _wrapped(b, "_shifted_window_attn", w),
    "torchvision": lambda b, w: _output_times(b.norm1, w, nhwc=True),
    "torchvision_v2": lambda b, w: _input_times(b.attn, w),
    "hf": lambda b, w: _output_times(b.layernorm_before, w, nhwc=False),
    "hf_v2": lambda b, w: _wrapped(b, "maybe_pad", w),
}


def reference(
    model: nn.Module, images: torch.Tensor, kind: str, place: tuple[int, int], grid: tuple[int, int]
) -> torch.Tensor:
    """One masked copy per forward of the model itself, the window weights applied by hand
    where the block's attention input is; everything else as the model's forward."""

    def logits_of(out: Any) -> torch.Tensor:
        return getattr(out, "logits", out)

    block = LAST[kind](model, *place)
    h, w = grid
    scores = torch.zeros(images.shape[0], h * w, dtype=torch.float64)
    with torch.no_grad():
        targets = logits_of(model(images)).argmax(1)
        for b in range(images.shape[0]):
            for k in range(h * w):
                wmap = literal_weights(h, w, k // w, k % w).reshape(h, w)
                with MASK[kind](block, wmap):
                    logits = logits_of(model(images[b : b + 1]))
                scores[b, k] = logits.double().softmax(-1)[0, targets[b]]
    return scores


def _images(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, size, size, generator=g).to(dtype)


ADAPTERS = {
    "timm": "TimmSwinAdapter",
    "timm_v2": "TimmSwinAdapter",
    "timm_v2_cr": "TimmSwinAdapter",
    "torchvision": "TorchvisionSwinAdapter",
    "torchvision_v2": "TorchvisionSwinAdapter",
    "hf": "HFSwinAdapter",
    "hf_v2": "HFSwinAdapter",
}
# (image size, target_block, its (stage, block), grid): the last block (shifted, 4 windows of
# 2x2 on 4x4); the last block of stage 0 (shifted, 16 windows on 8x8); 40 px: a 5x5 grid that
# the windows pad to 6x6, which timm pads after the shift and HF and torchvision before it
SETTINGS = [(32, -1, (1, 1), (4, 4)), (32, 1, (0, 1), (8, 8)), (40, -1, (1, 1), (5, 5))]
# float64 max |difference| from the reference per kind, for the report (filled by the test)
AGREEMENT: dict[str, float] = {}


@pytest.mark.parametrize("kind", SWIN_KINDS)
def test_swin_matches_literal_reference(kind: str) -> None:
    for size, target, place, grid in SETTINGS:
        model = make_swin(kind, img_size=size)
        images = _images(size)
        ref = reference(model, images, kind, place, grid)
        assert ref.std() > 1e-3, "degenerate model: scores would not discriminate"
        cam = ViTReciproCAM(model, target_block=target, max_batch=7)  # no keywords needed
        assert type(cam.adapter).__name__ == ADAPTERS[kind] and not cam.fast_path
        assert cam.num_prefix_tokens == 0
        assert cam.block is LAST[kind](model, *place)
        # the classifier (recomputed in float32 under autocast) is found
        assert [c.out_features for c in cam.adapter.classifiers()] == [5]
        out = cam(images)
        assert out.grid_size == grid and out.maps.shape == (2, *grid)
        torch.testing.assert_close(out.scores.double(), ref, atol=2e-6, rtol=0)
        assert float(out.maps.min()) == 0.0 and float(out.maps.max()) == 1.0
        predicted = cam.predict(images)
        assert torch.equal(predicted, out.logits)
        with torch.no_grad(), eval_mode(model):
            full = cam.adapter.logits(model(images))
        torch.testing.assert_close(predicted, full, atol=1e-5, rtol=0)
        # float64: the same computation, so agreement down to rounding
        model64, images64 = model.double(), images.double()
        ref64 = reference(model64, images64, kind, place, grid)
        out64 = ViTReciproCAM(model64, target_block=target, max_batch=7)(images64)
        diff = float((out64.scores - ref64).abs().max())
        AGREEMENT[f"{kind} {size}px block {target}"] = diff
        assert diff < 1e-12, diff


def test_swin_under_bf16_autocast() -> None:
    """Under autocast the copies' logits come from a float32 head: maps stay finite and
    follow the float32 ones."""
    model = make_swin("timm")
    images = _images(32)
    exact = ViTReciproCAM(model)(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ViTReciproCAM(model)(images)
    assert low.logits.dtype == torch.float32 and bool(torch.isfinite(low.maps).all())
    assert float(torch.corrcoef(torch.stack([low.scores[0], exact.scores[0]]))[0, 1]) > 0.9


def test_the_test_tells_the_masking_sites_apart() -> None:
    """Masking a post-norm block's norm1 output (the pre-norm site) or the residual as well
    gives other scores: the references above could not pass by accident."""
    model = make_swin("timm_v2")
    images = _images(32)
    right = reference(model, images, "timm_v2", (1, 1), (4, 4))
    block = model.layers[1].blocks[1]

    def norm1_output(b: nn.Module, wmap: torch.Tensor) -> Any:
        return _output_times(b.norm1, wmap, nhwc=True)

    def residual_too(b: nn.Module, wmap: torch.Tensor) -> Any:
        return _input_times(b, wmap)

    for wrong in (norm1_output, residual_too):
        MASK["wrong"], LAST["wrong"] = wrong, LAST["timm_v2"]
        try:
            other = reference(model, images, "wrong", (1, 1), (4, 4))
        finally:
            del MASK["wrong"], LAST["wrong"]
        assert float((other - right).abs().max()) > 1e-3
    assert block is ViTReciproCAM(model).block


def test_target_block_counts_blocks_across_stages() -> None:
    model = make_swin("timm", depths=(2, 3))
    names = [ViTReciproCAM(model, target_block=i).block_name for i in range(-5, 5)]
    expected = [f"layers.0.blocks.{j}" for j in range(2)] + [
        f"layers.1.blocks.{j}" for j in range(3)
    ]
    assert names == expected * 2
    grids = [ViTReciproCAM(model, target_block=i).grid_size((32, 32)) for i in range(5)]
    assert grids == [(8, 8)] * 2 + [(4, 4)] * 3
    with pytest.raises(ValueError, match=r"with 5 blocks \(valid: -5..4\)"):
        ViTReciproCAM(model, target_block=5)


def test_window_layout_is_the_blocks_own_shift_pad_and_partition() -> None:
    """The weights laid out as windows equal the shifted, padded, partitioned weight map the
    model itself would build from an NHWC map (timm's helpers, HF's order)."""
    from timm.models.swin_transformer_v2 import window_partition

    m = torch.arange(1.0, 26.0).view(1, 5, 5)
    rolled = torch.roll(m, shifts=(-1, -1), dims=(1, 2))
    timm_order = torch.nn.functional.pad(rolled, (0, 1, 0, 1))
    ref = window_partition(timm_order[..., None], (2, 2)).reshape(-1, 4)
    assert torch.equal(window_layout(m, (2, 2), (1, 1), roll_first=True), ref)
    hf_order = torch.roll(torch.nn.functional.pad(m, (0, 1, 0, 1)), (-1, -1), dims=(1, 2))
    ref = window_partition(hf_order[..., None], (2, 2)).reshape(-1, 4)
    assert torch.equal(window_layout(m, (2, 2), (1, 1), roll_first=False), ref)


def test_swin_families_are_found_inside_a_module_and_errors_are_clear() -> None:
    for kind in SWIN_KINDS:
        model = make_swin(kind)
        assert is_explainable(model)
        holder = nn.ModuleDict({"net": model, "loss": nn.CrossEntropyLoss()})
        assert find_vit(holder) == ("net", model)
    with pytest.raises(ValueError, match="see 0 prefix token"):
        build_adapter(make_swin("timm"), num_prefix_tokens=1)
    with pytest.raises(ValueError, match="takes 32x32 images but got 40x40"):
        ViTReciproCAM(make_swin("timm"))(_images(40))
    with pytest.raises(ValueError, match="smaller than one patch"):
        ViTReciproCAM(make_swin("torchvision"))(torch.randn(1, 3, 2, 2))
    hf = make_swin("hf", use_absolute_embeddings=True)
    with pytest.raises(ValueError, match="absolute position embeddings for 32x32"):
        ViTReciproCAM(hf)(_images(40))
    # without absolute position embeddings HF Swin takes any size: 40 px -> 10x10 -> 5x5
    assert ViTReciproCAM(make_swin("hf"))(_images(40)).grid_size == (5, 5)


# --------------------------------------------------------------------------- short real training
def _train_swin(root: Path, clean: bool) -> tuple[list[str], Any, Any]:
    """A tiny timm Swin trained for real (4 epochs of 512 images, the callback at its
    defaults): on clean squares whose colour names the class (24-pixel squares: larger than
    any box the alarm occludes, so the object is not mistaken for a tag; no colour test, the
    colour is the class), or on grey squares on a background cast in the class's colour (the
    planted shortcut, CuedSquares(cue='background'))."""
    L.seed_everything(0)
    if clean:
        train, val, alarm = Squares(512, 20, side=24), Squares(64, 21, side=24), NOT_COLOUR
    else:
        cue = "background"
        train, val = CuedSquares(512, 20, cue), CuedSquares(64, 21, cue)
        alarm = ShortcutAlarm(thorough=True)  # every kind, so that the background is named
    cb = ViTReciproCAMCallback(shortcut_alarm=alarm, report=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(SwinModule(), [cb], root, train=train, val=val, max_epochs=4,
                      limit_train_batches=None, limit_val_batches=None)  # fmt: skip
    found = [str(w.message) for w in caught if issubclass(w.category, PossibleShortcutWarning)]
    return found, trainer, cb


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Any, Any, Path]:
    """The planted-shortcut training, its messages, trainer, callback and root folder (with
    the checkpoint at ``root / 'swin.ckpt'``)."""
    root = tmp_path_factory.mktemp("planted")
    messages, trainer, cb = _train_swin(root, clean=False)
    trainer.save_checkpoint(root / "swin.ckpt")
    return messages, trainer, cb, root


def test_short_swin_training_warns_on_a_planted_shortcut(planted: Any) -> None:
    messages, trainer, cb, root = planted
    assert float(trainer.callback_metrics["val_loss"]) < 0.1  # it learned (the background)
    assert messages and "epoch 3" in messages[-1]  # still warned at the last evaluation
    # a cast of the background casts the image too: the colour may be named first
    assert "background" in {f.kind for f in cb.alarm.last_verdict.suspects}, messages[-1]
    # maps on the last stage's 4x4 grid at every evaluation, the pictures, ADCC
    assert len(cb.history) == 4 and tuple(cb.history[-1]["maps"].shape[-2:]) == (4, 4)
    for kind in ("saliency_grid", "mean_saliency", "timeline", "shortcut_evidence"):
        assert any((root / "vitrcam" / kind).glob("*.png")), kind
    assert 0.0 < float(trainer.callback_metrics["vitrcam/adcc"]) <= 1.0


class _LogitsModule(Module):
    """:class:`~tests.helpers.Module` whose forward unwraps an HF output's ``.logits``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return getattr(out, "logits", out)


@pytest.mark.parametrize("kind", ["torchvision", "torchvision_v2", "hf", "hf_v2", "timm_v2"])
def test_every_swin_family_through_the_callback(tmp_path: Path, kind: str) -> None:
    """A short fit per family: the callback finds the Swin inside the LightningModule and
    logs maps on the last stage's grid, the pictures and ADCC, without a keyword."""
    model = make_swin(kind, sensitive=False, num_classes=4)
    cb = ViTReciproCAMCallback(num_images=4, report=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PossibleShortcutWarning)
        trainer = fit(_LogitsModule(model), [cb], tmp_path, max_epochs=1, limit_train_batches=2)
    assert len(cb.history) == 1 and tuple(cb.history[0]["maps"].shape) == (4, 4, 4)
    assert any((tmp_path / "vitrcam" / "saliency_grid").glob("*.png"))
    assert "vitrcam/adcc" in trainer.callback_metrics


def test_short_swin_training_on_clean_data_does_not_warn(tmp_path: Path) -> None:
    messages, trainer, _ = _train_swin(tmp_path, clean=True)
    assert float(trainer.callback_metrics["val_loss"]) < 0.1  # it learned the squares
    assert messages == []


def test_explain_and_audit_a_swin_checkpoint(planted: Any, tmp_path: Path, capsys: Any) -> None:
    """``lightning-vitrcam explain`` and ``audit`` on the planted checkpoint: overlays on the
    stage grid, and the audit's verdict (exit 1) naming the cue."""
    import json

    from lightning_vitrcam.cli import explain_main, main
    from lightning_vitrcam.render import save_png

    names = ["red", "green", "blue", "yellow"]
    ckpt = planted[3] / "swin.ckpt"
    data = CuedSquares(24, 21, "background")
    folder = tmp_path / "images"
    for i, (x, y) in enumerate(zip(data.x, data.y.tolist(), strict=True)):
        pixels = ((x * 0.25 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        save_png(pixels, folder / names[y] / f"{i:03d}.png")
    common = ["--ckpt", str(ckpt), "--model-class", "tests.helpers.SwinModule"]
    norm = ["--mean", "0.5", "--std", "0.25", "--class-names", *names]
    out = tmp_path / "explained"
    assert explain_main([*common, "--images", str(folder / "red"), "--out", str(out), *norm]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert records and {r["predicted"] for r in records} <= set(names)
    assert (out / "grid.png").stat().st_size > 0
    audit = tmp_path / "audit"
    code = main(["audit", *common, "--images", str(folder), "--out", str(audit), *norm,
                 "--no-progress"])  # fmt: skip
    assert code == 1, capsys.readouterr().out
    report = json.loads((audit / "report.json").read_text())
    # the cast on the background is in the images' colour statistics too: either names it
    cues = ("the prediction follows the background", "the prediction follows the image's colour")
    assert report["warns"] and any(c in f["text"] for f in report["findings"] for c in cues)
