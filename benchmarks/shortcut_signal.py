"""Proof that the callback catches the planted shortcut while accuracy hides it.

Trains the demo ViT with (shortcut_p=0.95) and without (0.0) the class-coloured corner patch for
the same number of epochs and prints, per epoch, validation accuracy, accuracy on patch-free
images, hotspot ratio, energy in the object, ADCC and whether the callback warned.

    python benchmarks/shortcut_signal.py --epochs 4
Goal: the shortcut run warns within its first 2 epochs while its validation accuracy looks
healthy; the clean run never warns.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_vitrcam.demo import first_warning, shortcut_experiment, signals_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--root", default="lightning_logs/shortcut_signal")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs, seconds = {}, {}
    for name, p in (("shortcut (p=0.95)", 0.95), ("clean (p=0)", 0.0)):
        start = time.perf_counter()
        runs[name] = shortcut_experiment(
            p, args.epochs, num_train=args.num_train, root_dir=args.root, name=name.split()[0]
        )
        seconds[name] = time.perf_counter() - start
    print(signals_table(runs))
    for name, rows in runs.items():
        print(f"{name}: first warning at epoch {first_warning(rows)}, {seconds[name]:.0f} s")
    shortcut, clean = runs.values()
    warned = first_warning(shortcut)
    ok = warned is not None and warned <= 1 and first_warning(clean) is None
    print(f"goal (shortcut warns by epoch 1, clean never warns): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
