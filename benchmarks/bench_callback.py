"""Training-time overhead of ViTReciproCAMCallback at its defaults.

Trains the demo's ViT (64x64 images, 8x8 patches, width 128, depth 4, 4 classes) on the demo's
shapes data twice with the same seed, without and with ``ViTReciproCAMCallback()`` (defaults:
16 probes, every epoch, ADCC, pictures), both with a TensorBoard logger, and prints the ratio
of the two ``trainer.fit`` wall times and the time spent inside the callback itself. The goal
is an overhead of at most 3%. One run each: on a shared machine the fit-time ratio is noisy,
the callback's own time is the steadier number.

Run:
    python benchmarks/bench_callback.py                 # 2 epochs of 300 steps, batch 64
    python benchmarks/bench_callback.py --steps 50      # a quick look
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_vitrcam import ViTReciproCAMCallback
from lightning_vitrcam.demo import ShapesDataModule, ViTClassifier


class TimedCallback(ViTReciproCAMCallback):
    """The callback with a stopwatch around every hook that does work."""

    seconds = 0.0

    def _timed(self, name: str, *args: Any) -> None:
        start = time.perf_counter()
        getattr(super(), name)(*args)
        self.seconds += time.perf_counter() - start

    def on_fit_start(self, *args: Any) -> None:
        self._timed("on_fit_start", *args)

    def on_validation_epoch_end(self, *args: Any) -> None:
        self._timed("on_validation_epoch_end", *args)

    def on_train_batch_end(self, *args: Any) -> None:
        self._timed("on_train_batch_end", *args)

    def on_train_end(self, *args: Any) -> None:
        self._timed("on_train_end", *args)


def run(dm: ShapesDataModule, args: argparse.Namespace, callback: TimedCallback | None) -> float:
    L.seed_everything(0, verbose=False)
    model = ViTClassifier(num_classes=dm.hparams.num_classes, lr=1e-3)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator=args.accelerator,
            devices=1,
            max_epochs=args.epochs,
            callbacks=[] if callback is None else [callback],
            logger=TensorBoardLogger(root),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--val", type=int, default=500, help="validation images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dm = ShapesDataModule(
        num_train=args.steps * args.batch_size,
        num_val=args.val,
        num_patch_free=args.batch_size,
        batch_size=args.batch_size,
    )
    dm.setup()
    baseline = run(dm, args, None)
    callback = TimedCallback()
    with_cb = run(dm, args, callback)
    hist = callback.history
    print(f"device: {args.accelerator}, torch threads: {torch.get_num_threads()}")
    print(f"{args.epochs} epochs x {args.steps} steps, batch {args.batch_size}, {args.val} val")
    print(f"fit without callback: {baseline:8.2f} s")
    print(f"fit with callback:    {with_cb:8.2f} s  ({len(hist)} evaluations)")
    print(f"time inside callback: {callback.seconds:8.2f} s")
    print(f"overhead (fit-time ratio - 1):        {with_cb / baseline - 1:+.2%}")
    print(f"overhead (callback time / baseline):  {callback.seconds / baseline:+.2%}")


if __name__ == "__main__":
    main()
