"""ViTReciproCAMCallback under Lightning's ``strategy="fsdp"`` on one device, end to end.

    python benchmarks/fsdp_smoke.py                        # one CUDA device
    python benchmarks/fsdp_smoke.py --device cpu --quick   # what happens on a CPU

A short fit of a small ViT (bf16-mixed on CUDA) with the callback and a TensorBoard logger.
On one device FSDP keeps every parameter whole (PyTorch switches FULL_SHARD to NO_SHARD at
world size 1), so this shows the callback runs inside an FSDP-wrapped fit; it cannot show
sharded parameters, which need two or more devices (README: the explainer calls the unwrapped
ViT directly and needs full parameters). The last maps are compared (Pearson r) with the same
probes explained by the trained weights outside FSDP in float32. Prints what happened and a
final ``RESULT:`` line: ``ok``, ``FAIL`` (exit 1) or ``unsupported`` (Lightning refused FSDP
on this device, exit 0 on a CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_vitrcam import ViTReciproCAM, ViTReciproCAMCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_engine_check import pearson  # noqa: E402
from gpu_overhead import Classifier, RandomImages  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="a tiny ViT (for a CPU)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("RESULT: FAIL CUDA is not available", flush=True)
        return 1
    size = 32 if args.quick else 64
    cfg = dict(
        model_name="vit_small_patch16_224",
        img_size=size,
        patch_size=8,
        depth=2 if args.quick else 4,
        num_classes=4,
    )
    if args.quick:
        cfg.update(embed_dim=64, num_heads=4)
    L.seed_everything(0, verbose=False)
    callback = ViTReciproCAMCallback(num_images=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer = L.Trainer(
                accelerator=args.device,
                devices=1,
                strategy="fsdp",
                precision="bf16-mixed" if args.device == "cuda" else "32-true",
                max_epochs=2,
                limit_train_batches=3,
                limit_val_batches=1,
                num_sanity_val_steps=0,
                callbacks=[callback],
                logger=TensorBoardLogger(root, name="fsdp"),
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=root,
            )
            model = Classifier(cfg)
            trainer.fit(
                model,
                DataLoader(RandomImages(24, size, 4, 1), batch_size=8),
                DataLoader(RandomImages(8, size, 4, 2), batch_size=8),
            )
        except Exception as err:  # report, do not hide: the point is what happens
            where = "FSDP" if "fsdp" in repr(err).lower() or "shard" in repr(err).lower() else ""
            kind = "unsupported" if args.device == "cpu" else "FAIL"
            print(f"fit raised {type(err).__name__}: {str(err)[:300]}")
            print(f"RESULT: {kind} {where} {type(err).__name__} on {args.device}", flush=True)
            return 0 if kind == "unsupported" else 1
        events = sum(1 for p in Path(root).rglob("events.out.tfevents.*"))
        strategy = type(trainer.strategy).__name__
        wrapped = type(trainer.strategy.model).__name__
    notes = sorted({str(w.message)[:100] for w in caught if "shard" in str(w.message).lower()})
    for note in notes:
        print(f"warning: {note}")
    history = callback.history
    maps = history[-1]["maps"].float() if history else None
    ok = bool(history) and maps is not None and bool(torch.isfinite(maps).all())
    # the last maps (final weights) against the same probes explained outside FSDP in float32
    agreement = "n/a"
    if ok and callback._probe is not None:
        try:
            vit = model.model.float().to(args.device).eval()
            with torch.no_grad():
                images = callback._probe.images.float().to(args.device)
                ref = ViTReciproCAM(vit)(images, None).maps.cpu()
            agreement = f"{float(pearson(ref, maps).mean()):.3f}"
        except Exception as err:  # the wrapped parameters may not be usable after the fit
            agreement = f"n/a ({type(err).__name__}: {str(err)[:80]})"
    print(
        f"{strategy} wrapped the module in {wrapped}; {len(history)} evaluations at steps"
        f" {[h['step'] for h in history]}, {events} TensorBoard event file(s), map r vs"
        f" unwrapped float32 {agreement}, {time.perf_counter() - start:.0f}s"
    )
    status = "ok" if ok else "FAIL (no finite maps)"
    print(
        f"RESULT: {status} fsdp devices=1: {len(history)} evals, map r vs unwrapped {agreement}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
