"""A plain PyTorch training loop (no Lightning, no Trainer) watched by ViTMonitor.

python examples/plain_loop.py                  # ~1 minute on 2 CPU cores
tensorboard --logdir plain_vit                 # Images tab: vitrcam/saliency_grid, ...
open plain_vit/vitrcam/report.html             # the last evaluation's verdict and pictures

The data are the demo's drawn shapes, most of them with a small patch in the top-left corner
that names the class (a shortcut the monitor warns about once the model has learned it).
"""

import argparse

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_vitrcam import ViTMonitor
from lightning_vitrcam.demo import DEMO_MEAN, DEMO_STD, ShapesDataset


def main(argv: list[str] | None = None) -> ViTMonitor:
    parser = argparse.ArgumentParser(description="Train a ViT in a plain loop with ViTMonitor.")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--out", default="plain_vit", help="TensorBoard and report folder")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    patch = args.size // 8
    shapes = dict(image_size=args.size, patch_size=patch, shortcut_p=0.95)
    train = DataLoader(ShapesDataset(args.num_train, seed=1, **shapes), 32, shuffle=True)
    val = ShapesDataset(args.num_val, seed=2, **shapes)
    model = timm.create_model("vit_tiny_patch16_224", img_size=args.size, patch_size=patch,
                              num_classes=4, depth=3, embed_dim=64, num_heads=4)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    # the monitor: validation images once (a Dataset of dicts: image, label, mask), then
    # evaluate() whenever you like and close() at the end
    monitor = ViTMonitor(model, val, log_dir=args.out, num_images=8, mean=DEMO_MEAN, std=DEMO_STD)
    step = 0
    for _ in range(args.epochs):
        model.train()
        for batch in train:
            loss = F.cross_entropy(model(batch["image"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        found = monitor.evaluate(step=step)  # the model's flags and the RNGs are restored
        adcc = found.scalars.get("vitrcam/adcc", float("nan"))
        # found.warning: the "possible shortcut" message (also raised as a warning) or None
        print(f"step {step}: adcc {adcc:.3f}, possible shortcut: {found.warning is not None}")
    print("report:", monitor.close())
    return monitor


if __name__ == "__main__":
    main()
