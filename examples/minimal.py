"""The smallest useful program: add ViTReciproCAMCallback to an existing Trainer.

python examples/minimal.py            # ~1 minute on 2 CPU cores
tensorboard --logdir lightning_logs   # Images tab: vitrcam/saliency_grid, mean map, timeline
"""

import argparse

import lightning as L

from lightning_vitrcam import ViTReciproCAMCallback
from lightning_vitrcam.demo import ShapesDataModule, ViTClassifier


def main(argv: list[str] | None = None) -> L.Trainer:
    parser = argparse.ArgumentParser(description="Train the demo ViT with the callback.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--root", default=".", help="where lightning_logs/ is written")
    args = parser.parse_args(argv)

    L.seed_everything(0)
    data = ShapesDataModule(num_train=args.num_train, num_val=min(500, args.num_train))
    trainer = L.Trainer(
        max_epochs=args.epochs,
        default_root_dir=args.root,
        # the one line this library is about:
        callbacks=[ViTReciproCAMCallback(num_images=16, every_n_epochs=1)],
    )
    trainer.fit(ViTClassifier(), datamodule=data)
    print(
        {
            k: round(float(v), 3)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("vitrcam/", "val/"))
        }
    )
    return trainer


if __name__ == "__main__":
    main()
