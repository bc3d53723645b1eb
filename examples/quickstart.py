"""Explain a small ViT with ViT-ReciproCAM and print its saliency map (no downloads, CPU)."""

import timm
import torch

from lightning_vitrcam import ViTReciproCAM

torch.manual_seed(0)
model = timm.create_model(
    "vit_tiny_patch16_224",
    pretrained=False,
    img_size=64,
    patch_size=8,
    embed_dim=128,
    depth=4,
    num_heads=4,
    num_classes=4,
).eval()
images = torch.randn(2, 3, 64, 64)
out = ViTReciproCAM(model)(images)
print(f"grid {out.grid_size}, fast path: {out.fast_path}, targets {out.targets.tolist()}")
print(out.maps[0].mul(9).round().int())
