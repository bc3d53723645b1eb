"""Fine-tune a small HF ViTForImageClassification with transformers.Trainer and the callback.

python examples/hf_trainer.py                  # ~1 minute on 2 CPU cores
tensorboard --logdir hf_vit/runs               # Images tab: vitrcam/saliency_grid, ...
open hf_vit/vitrcam/report.html                # the last evaluation's verdict and pictures

Needs the transformers extra (pip install -e ".[transformers]": transformers and accelerate).
The data are the demo's drawn shapes (a small patch in the top-left corner names the class in
most images: a shortcut the callback warns about once the model has learned it); the model is
randomly initialised (no download).
"""

import argparse
from typing import Any

import torch
from transformers import (
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from lightning_vitrcam.demo import DEMO_MEAN, DEMO_STD, SHAPE_NAMES, ShapesDataset
from lightning_vitrcam.hf import ViTReciproCAMTrainerCallback


class Shapes(ShapesDataset):
    """The demo's shapes as the dicts an HF image processor yields (the Trainer passes only
    the model's own arguments on)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        return {"pixel_values": item["image"], "labels": item["label"]}


def main(argv: list[str] | None = None) -> Trainer:
    parser = argparse.ArgumentParser(description="Fine-tune an HF ViT with the callback.")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-eval", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--out", default="hf_vit", help="the Trainer's output_dir")
    args = parser.parse_args(argv)

    names = list(SHAPE_NAMES[:4])
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=args.size, patch_size=args.size // 8, hidden_size=64, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=128, num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    training = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=32,
        learning_rate=1e-3, eval_strategy="steps", eval_steps=args.eval_steps,
        save_strategy="no", logging_steps=args.eval_steps, report_to=["tensorboard"],
        use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    shapes = dict(image_size=args.size, patch_size=args.size // 8, shortcut_p=0.95)
    trainer = Trainer(
        model=ViTForImageClassification(config),
        args=training,
        train_dataset=Shapes(args.num_train, seed=1, **shapes),
        eval_dataset=Shapes(args.num_eval, seed=2, **shapes),
        # the callback reads the normalisation here (and the class names in config.id2label)
        processing_class=ViTImageProcessor(image_mean=DEMO_MEAN, image_std=DEMO_STD),
        # the one line this library is about:
        callbacks=[ViTReciproCAMTrainerCallback(num_images=8)],
    )
    trainer.train()
    print({k: round(v, 3) for k, v in trainer.evaluate().items() if "vitrcam/" in k})
    return trainer


if __name__ == "__main__":
    main()
