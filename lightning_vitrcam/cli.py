"""The ``lightning-vitrcam`` command.

* ``lightning-vitrcam fit --config configs/shortcut_demo.yaml``: a ``LightningCLI`` (any
  LightningModule/DataModule by ``class_path``; the configs preconfigure the demo and the
  callback). After fitting it prints where the logs are and the command that opens them.
* ``lightning-vitrcam explain --ckpt PATH --images DIR_OR_FILES --out DIR``: offline
  ViT-ReciproCAM explanations of a checkpoint for PNG/JPEG files (a folder of class
  sub-folders included): one overlay per image, a grid and ``predictions.json``.
* ``lightning-vitrcam audit --ckpt PATH (--images DIR | --config CFG) --out DIR``: the
  explanation and the shortcut alarm on a checkpoint, ``report.html`` and ``report.json``;
  exit status 0 (nothing found), 1 (possible shortcut), 2 (bad input) for CI
  (:mod:`~lightning_vitrcam.audit`).

The module class comes from ``--model-class`` or the checkpoint (LightningCLI stores it), the
image size and channel count from the model, the normalisation from ``--mean``/``--std`` or the
model's config, the class names from ``--class-names``, the checkpoint
(:func:`~lightning_vitrcam.offline.checkpoint_class_names`) or the class sub-folders.

Example:
    >>> from lightning_vitrcam.cli import build_explain_parser
    >>> build_explain_parser().parse_args(["--ckpt", "m.ckpt", "--images", "a.png"]).kernel
    'gaussian'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from lightning_vitrcam.audit import add_model_arguments, audit_main
from lightning_vitrcam.offline import BadInput, checkpoint_class_names

__all__ = [
    "VitrcamCLI",
    "build_explain_parser",
    "checkpoint_class_names",
    "explain_main",
    "main",
    "run_fit_cli",
]


class VitrcamCLI(LightningCLI):
    """``LightningCLI`` that tells the user where to look once training is done."""

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        log_dir = trainer.log_dir or trainer.default_root_dir
        print(f"\nlightning-vitrcam: logs written to {Path(log_dir).resolve()}")
        if any(type(lg).__name__ == "TensorBoardLogger" for lg in trainer.loggers):
            root = Path(trainer.loggers[0].save_dir).resolve()
            print(f"open them with:  tensorboard --logdir {root}")


def run_fit_cli(args: Sequence[str] | None = None) -> VitrcamCLI:
    """The LightningCLI entry point (``fit``, ``validate``, ``test``, ``predict``)."""
    return VitrcamCLI(
        args=list(args) if args is not None else None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
    )


# --------------------------------------------------------------------------- explain
def build_explain_parser() -> argparse.ArgumentParser:
    """Arguments of ``lightning-vitrcam explain``."""
    p = argparse.ArgumentParser(
        prog="lightning-vitrcam explain",
        description="ViT-ReciproCAM explanations of a checkpoint for image files.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--images",
        required=True,
        nargs="+",
        help="image files or folders (a folder of class sub-folders included)",
    )
    p.add_argument("--out", default="vitrcam_out", help="output directory")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--task", choices=["auto", "multiclass", "binary", "multilabel"], default="auto")
    return p


def explain_main(argv: Sequence[str]) -> int:
    """``lightning-vitrcam explain``: write overlays, a grid and predictions.json to ``--out``."""
    from tqdm import tqdm

    from lightning_vitrcam.explainer import ViTReciproCAM
    from lightning_vitrcam.normalization import input_channels, resolve_mean_std
    from lightning_vitrcam.offline import folder_labels, image_files, load_images, load_module
    from lightning_vitrcam.render import Style, overlay, saliency_grid, save_png
    from lightning_vitrcam.tasks import explained_names, infer_task

    args = build_explain_parser().parse_args(list(argv))
    if not Path(args.ckpt).is_file():
        raise BadInput(f"checkpoint not found: {args.ckpt}")
    found = image_files(args.images)
    _, vit, checkpoint = load_module(args.ckpt, args.model_class, args.model_attr, args.device)
    class_names = args.class_names or checkpoint_class_names(checkpoint)
    labels, class_names = folder_labels([label for _, label in found], class_names)
    try:
        cam = ViTReciproCAM(vit, target_block=args.target_block, kernel=args.kernel)
        size = cam.adapter.input_size() or (224, 224)
        channels = input_channels(vit) or 3
        mean, std = resolve_mean_std(vit, args.mean, args.std, channels=channels)
    except ValueError as err:
        raise BadInput(str(err)) from err
    files = [f for f, _ in found]
    first = load_images(files[:1], size, mean, std, channels).to(args.device)
    try:
        width = int(cam.predict(first).shape[1])
        task, _ = infer_task(args.task, width, labels)
        cam = ViTReciproCAM(vit, target_block=args.target_block, kernel=args.kernel, task=task)
        names = explained_names(task, class_names, width)
    except ValueError as err:
        raise BadInput(str(err)) from err
    style = Style(mean=mean, std=std, cmap=args.cmap)
    out = Path(args.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    records, grids = [], []
    for start in tqdm(range(0, len(files), args.batch_size), desc="explaining", unit="batch"):
        chunk = files[start : start + args.batch_size]
        images = load_images(chunk, size, mean, std, channels).to(args.device)
        result = cam(images)
        overlays = overlay(images, result.maps, style)
        for f, img, target, prob in zip(
            chunk, overlays.cpu(), result.targets.tolist(), result.probs.tolist(), strict=True
        ):
            save_png(img, out / "overlays" / f"{f.parent.name}_{f.stem}.png"
                     if labels is not None else out / "overlays" / f"{f.stem}.png")  # fmt: skip
            name = names[target] if names and target < len(names) else target
            records.append({"file": str(f), "predicted": name, "probability": round(prob, 6)})
        grids.append(
            saliency_grid(
                images,
                result.maps,
                preds=result.targets,
                probs=result.probs,
                labels=None if labels is None else labels[start : start + len(chunk)],
                class_names=names,
                style=style,
            )
        )
    for i, grid in enumerate(grids):
        save_png(grid, out / ("grid.png" if len(grids) == 1 else f"grid_{i:03d}.png"))
    (out / "predictions.json").write_text(json.dumps(records, indent=2))
    print(f"wrote {len(records)} overlays, {len(grids)} grid(s) and predictions.json to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``explain`` and ``audit``; everything else goes to LightningCLI. Bad input
    prints the reason and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"explain": explain_main, "audit": audit_main}
    if argv and argv[0] in commands:
        try:
            return commands[argv[0]](argv[1:])
        except BadInput as err:
            print(f"lightning-vitrcam {argv[0]}: error: {err}", file=sys.stderr)
            return 2
    run_fit_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
