"""Training-time overhead of ViTReciproCAMCallback on a ViT-B/16 under bf16-mixed.

    python benchmarks/gpu_overhead.py                        # CUDA, ViT-B/16 at 224, batch 32
    python benchmarks/gpu_overhead.py --device cpu --quick   # a tiny ViT, a few CPU steps

Fits the same model (random init, random images: speed does not depend on either) twice after
a short warm-up fit with the callback (one-off costs: CUDA context, kernels, imports): without
and with ``ViTReciproCAMCallback()`` at its defaults (16 probes, every epoch, ADCC, pictures to
TensorBoard). Prints both fit times, the seconds spent inside the callback's hooks
(CUDA-synchronised) and their share of the fit without it, then a final ``RESULT:`` line. The
callback's own seconds are the steadier number: the ratio of two fits also holds the noise of
everything else.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from bench_callback import TimedCallback  # benchmarks/ is on sys.path when run as a script
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from lightning_vitrcam import ViTReciproCAMCallback


class RandomImages(Dataset):
    """``n`` (image, label) pairs cycling through a small fixed pool (bounded host memory)."""

    def __init__(self, n: int, size: int, classes: int, seed: int, pool: int = 128) -> None:
        g = torch.Generator().manual_seed(seed)
        self.n = n
        self.x = torch.randn(min(pool, n), 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (min(pool, n),), generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i % len(self.x)], self.y[i % len(self.y)]


class Classifier(L.LightningModule):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        cfg = dict(cfg)
        self.model = timm.create_model(cfg.pop("model_name"), pretrained=False, **cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


def fit(args: argparse.Namespace, cfg: dict[str, Any], steps: int, callback: Any) -> float:
    """Seconds of one ``trainer.fit`` of ``args.epochs`` epochs of ``steps`` steps each."""
    L.seed_everything(0, verbose=False)
    size, classes = cfg.get("img_size", 224), cfg["num_classes"]
    train = DataLoader(RandomImages(steps * args.batch, size, classes, 1), batch_size=args.batch)
    val = DataLoader(RandomImages(2 * args.batch, size, classes, 2), batch_size=args.batch)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator=args.device,
            devices=1,
            precision=args.precision,
            max_epochs=args.epochs,
            num_sanity_val_steps=0,
            callbacks=[] if callback is None else [callback],
            logger=TensorBoardLogger(root, name="overhead"),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        model = Classifier(cfg)
        start = time.perf_counter()
        trainer.fit(model, train, val)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="a tiny ViT and a few steps")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("RESULT: FAIL CUDA is not available", flush=True)
        return 1
    if args.quick:
        cfg = dict(
            model_name="vit_tiny_patch16_224",
            img_size=32,
            patch_size=8,
            depth=2,
            embed_dim=64,
            num_heads=4,
            num_classes=4,
        )
        args.steps, args.batch = args.steps or 4, args.batch or 8
    else:
        cfg = dict(model_name="vit_base_patch16_224", num_classes=10)
        args.steps, args.batch = args.steps or 50, args.batch or 32
    torch.set_float32_matmul_precision("high")

    # warm-up with the callback: CUDA context, kernels and the one-off imports of its pictures
    # (matplotlib) stay out of both measured fits
    fit(args, cfg, 3, ViTReciproCAMCallback(num_images=2))
    plain = fit(args, cfg, args.steps, None)
    callback = TimedCallback()
    with_cb = fit(args, cfg, args.steps, callback)
    evals = len(callback.history)
    share = callback.seconds / plain
    print(
        f"{cfg['model_name']} batch {args.batch}, {args.epochs}x{args.steps} steps,"
        f" {args.precision}, {args.device}: fit {plain:.1f}s without, {with_cb:.1f}s with the"
        f" callback; {callback.seconds:.2f}s inside it ({evals} evaluations)"
    )
    print(
        f"RESULT: callback {callback.seconds:.2f}s = {100 * share:.1f}% of a {plain:.1f}s fit"
        f" ({evals} evals; fit ratio {with_cb / plain:.2f})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
