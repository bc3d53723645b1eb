"""ViT-ReciproCAM on a model that is not timm's: torchvision's VisionTransformer.

torchvision's ViT is found without configuration (its adapter knows ``encoder.layers``, the
first norm ``ln_1``, the class token and the patch size) and takes the exact fast path. For a
pre-norm transformer no adapter knows, the generic route needs three facts instead: the first
norm of the block to mask (``target_layer``), how many prefix tokens precede the patch tokens
(``num_prefix_tokens``) and, when the model exposes none, the patch size; the example checks
that both routes give the same scores. It trains the ViT for a few steps on generated images (a
coloured square whose colour is the class) and writes overlays that should light up the square.

    python examples/custom_model.py --steps 150 --out vitrcam_out/custom_model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.models import VisionTransformer

from lightning_vitrcam import ViTReciproCAM
from lightning_vitrcam.demo import SQUARE_COLOURS, coloured_squares
from lightning_vitrcam.metrics import energy_in_mask
from lightning_vitrcam.render import Style, overlay, saliency_grid, save_png


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", default="vitrcam_out/custom_model")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=len(SQUARE_COLOURS),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        images, labels, _ = coloured_squares(64, seed=step)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    cam = ViTReciproCAM(model)  # zero-config: torchvision's adapter
    images, labels, masks = coloured_squares(8, seed=10_000)
    out = cam(images)
    generic = ViTReciproCAM(model, target_layer=model.encoder.layers[-1].ln_1, num_prefix_tokens=1)
    difference = float((generic(images).scores - out.scores).abs().max())
    accuracy = float((out.targets == labels).float().mean())
    energy = float(energy_in_mask(out.maps, masks).mean())
    uniform = float(masks.float().mean())
    print(
        f"fast path: {out.fast_path}; the generic route (target_layer=) differs by {difference:.1e}"
    )
    print(f"accuracy on 8 probes: {accuracy:.2f}")
    print(f"saliency energy inside the square: {energy:.2f} (uniform map: {uniform:.2f})")

    folder = Path(args.out)
    style = Style(mean=[0.5] * 3, std=[0.5] * 3)
    grid = saliency_grid(
        images,
        out.maps,
        preds=out.targets,
        probs=out.probs,
        labels=labels,
        class_names=["red", "green", "blue", "yellow"],
        style=style,
    )
    save_png(grid, folder / "grid.png")
    save_png(overlay(images, out.maps, style)[0], folder / "first.png")
    print(f"wrote {folder / 'grid.png'}")
    return {
        "accuracy": accuracy,
        "energy_in_mask": energy,
        "uniform_energy": uniform,
        "generic_difference": difference,
    }


if __name__ == "__main__":
    main()
