"""Correctness of the explainer on an accelerator: fast path vs general path and bf16 autocast
vs float32, for a tiny ViT and a ViT-B/16.

    python benchmarks/gpu_engine_check.py                       # CUDA: tiny + ViT-B/16 at 224
    python benchmarks/gpu_engine_check.py --device cpu --quick  # tiny + a 2-block ViT-B at 64

Checks (random weights re-drawn at unit gain as in tests/helpers.py, so that every token moves
the score; timm's init gives a flat softmax whose maps are rounding noise):

* fast vs general path, float32 (TF32 off): max |score difference| <= 1e-5 (README's claim);
* fast vs general path, float64 (tiny model only): <= 1e-10;
* bf16 autocast vs float32, same target classes: mean per-image Pearson correlation of the
  maps >= 0.99 for the tiny model (the tests' claim), >= 0.98 for ViT-B (12 bf16 blocks;
  0.9997 for the fast path on CPU bf16 autocast).

Prints one line per check and a final ``RESULT:`` line; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import timm
import torch
from torch import nn

from lightning_vitrcam import ViTReciproCAM


def spread_weights(model: nn.Module, head_scale: float = 3.0) -> nn.Module:
    """tests/helpers.make_vit's re-draw: unit-gain weights, embeddings at std 0.5."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name and "token" not in name:
                p.normal_(0, p.shape[-1] ** -0.5)
            elif "pos_embed" in name or "token" in name:
                p.normal_(0, 0.5)
        model.head.weight.mul_(head_scale)
    return model.eval()


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of two ``[B, ...]`` tensors (float64)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def models(quick: bool) -> list[tuple[str, dict[str, Any], int, float]]:
    """(label, timm kwargs, batch, bf16 correlation threshold)."""
    tiny = dict(
        model_name="vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=64,
        num_heads=4,
        num_classes=5,
    )
    if quick:
        vitb = dict(model_name="vit_base_patch16_224", img_size=64, depth=2, num_classes=10)
        return [("tiny", tiny, 4, 0.99), ("vit_b16@64,depth2", vitb, 2, 0.98)]
    vitb = dict(model_name="vit_base_patch16_224", num_classes=10)
    return [("tiny", tiny, 8, 0.99), ("vit_b16@224", vitb, 8, 0.98)]


def check_model(
    label: str, cfg: dict[str, Any], batch: int, min_r: float, device: torch.device
) -> list[tuple[str, float, float, bool]]:
    torch.manual_seed(0)
    cfg = dict(cfg)
    model = spread_weights(timm.create_model(cfg.pop("model_name"), pretrained=False, **cfg))
    model = model.to(device)
    size = model.patch_embed.img_size
    images = torch.randn(batch, 3, *size, device=device)
    fast, general = ViTReciproCAM(model), ViTReciproCAM(model, fast_path=False)
    assert fast.fast_path and not general.fast_path, fast.fast_path_reason
    rows = []
    with torch.no_grad():
        a, b = fast(images), general(images)
        diff = float((a.scores - b.scores).abs().max())
        rows.append((f"{label}: fast vs general fp32 max|d score|", diff, 1e-5, diff <= 1e-5))
        if label == "tiny":
            m64, x64 = model.double(), images.double()
            a64 = ViTReciproCAM(m64)(x64)
            b64 = ViTReciproCAM(m64, fast_path=False)(x64)
            d64 = float((a64.scores - b64.scores).abs().max())
            rows.append((f"{label}: fast vs general fp64 max|d score|", d64, 1e-10, d64 <= 1e-10))
            model.float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf_fast = fast(images, a.targets)
            bf_general = general(images, a.targets)
        for name, bf, ref in (("fast", bf_fast, a), ("general", bf_general, b)):
            r = float(pearson(bf.maps, ref.maps).mean())
            rows.append((f"{label}: bf16 vs fp32 maps r ({name})", r, min_r, r >= min_r))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small models (CPU smoke)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("RESULT: FAIL CUDA is not available", flush=True)
        return 1
    # exact float32 for the path comparison: TF32 would round the matmuls/convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    rows = []
    for label, cfg, batch, min_r in models(args.quick):
        rows.extend(check_model(label, cfg, batch, min_r, device))
    for name, value, bound, ok in rows:
        sign = "<=" if "max|d" in name else ">="
        print(f"{'ok  ' if ok else 'FAIL'} {name} = {value:.3g} ({sign} {bound:g})")
    failed = [name for name, _, _, ok in rows if not ok]
    worst_r = min(v for n, v, _, _ in rows if "bf16" in n)
    worst_d = max(v for n, v, _, _ in rows if "fp32 max" in n)
    status = "ok" if not failed else f"FAIL ({len(failed)} checks)"
    print(
        f"RESULT: {status}; fp32 fast-general <= {worst_d:.1e}, bf16 map r >= {worst_r:.3f}"
        f" ({time.perf_counter() - start:.0f}s, {device})",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
