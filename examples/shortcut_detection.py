"""Train a clean and a shortcut-carrying ViT side by side and print what the callback sees.

The shortcut run's data has a class-coloured patch in the top-left corner of 95% of the train and
validation images. Its validation accuracy looks excellent, its accuracy on patch-free images
does not, and the callback's hotspot ratio / energy in the object give it away.

    python examples/shortcut_detection.py --epochs 3
"""

from __future__ import annotations

import argparse

from lightning_vitrcam.demo import EpochSignals, first_warning, shortcut_experiment, signals_table


def main(argv: list[str] | None = None) -> dict[str, list[EpochSignals]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--tiny", action="store_true", help="a 1-block ViT (for smoke tests)")
    parser.add_argument("--root", default="lightning_logs/shortcut_detection")
    args = parser.parse_args(argv)
    tiny = dict(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    runs = {
        name: shortcut_experiment(
            p,
            args.epochs,
            num_train=args.num_train,
            num_val=args.num_val,
            num_patch_free=args.num_val,
            model_kwargs=tiny if args.tiny else None,
            root_dir=args.root,
            name=name,
        )
        for name, p in (("clean", 0.0), ("shortcut", 0.95))
    }
    print(signals_table(runs))
    for name, rows in runs.items():
        epoch = first_warning(rows)
        print(
            f"{name}: " + ("no shortcut warning" if epoch is None else f"warned at epoch {epoch}")
        )
    print(f"TensorBoard: tensorboard --logdir {args.root}")
    return runs


if __name__ == "__main__":
    main()
