"""The ``lightning-vitrcam`` command.

* ``lightning-vitrcam fit --config configs/shortcut_demo.yaml``: a ``LightningCLI`` (any
  LightningModule/DataModule by ``class_path``; the configs preconfigure the demo and the
  callback). After fitting it prints where the logs are and the command that opens them.
* ``lightning-vitrcam explain --ckpt PATH --images DIR_OR_FILES --out DIR``: offline ViT-ReciproCAM
  explanations of a checkpoint for PNG/JPEG files: one overlay per image and a grid. The
  LightningModule may hold any ViT family in ``docs/models.md``; its class comes from
  ``--model-class`` or the checkpoint (LightningCLI stores it), the image size and channel count
  from the model, the class names from ``--class-names`` or the checkpoint
  (:func:`checkpoint_class_names`).

Example:
    >>> from lightning_vitrcam.cli import build_explain_parser
    >>> build_explain_parser().parse_args(["--ckpt", "m.ckpt", "--images", "a.png"]).kernel
    'gaussian'
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI

__all__ = [
    "VitrcamCLI",
    "build_explain_parser",
    "checkpoint_class_names",
    "explain_main",
    "image_files",
    "load_images",
    "main",
    "run_fit_cli",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_MODEL_CLASS = "lightning_vitrcam.demo.ViTClassifier"
# the demo's datamodule names its classes after SHAPE_NAMES[:num_classes]
_DEMO_DATAMODULES = (
    "lightning_vitrcam.demo.ShapesDataModule",
    "lightning_vitrcam.demo.data.ShapesDataModule",
)


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
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    p.add_argument("--images", required=True, nargs="+", help="image files or directories")
    p.add_argument("--out", default="vitrcam_out", help="output directory")
    p.add_argument(
        "--model-class",
        default=None,
        help="LightningModule class path used to load the checkpoint (default: the class path"
        f" LightningCLI stored in the checkpoint, else {DEFAULT_MODEL_CLASS})",
    )
    p.add_argument("--model-attr", default=None, help="attribute path of the ViT in the module")
    p.add_argument("--target-block", type=int, default=-1)
    p.add_argument("--kernel", choices=["gaussian", "point"], default="gaussian")
    p.add_argument("--cmap", default="inferno")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--class-names",
        nargs="*",
        default=None,
        help="one name per class (default: the checkpoint's class_names hyperparameter, or the"
        " demo datamodule's shape names)",
    )
    p.add_argument("--device", default="cpu")
    return p


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise SystemExit(f"error: cannot import --model-class {path!r}: {err}") from err


def image_files(items: Sequence[str]) -> list[Path]:
    """Expand directories (sorted, non-recursive) and check every file exists."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"error: image path not found: {item}")
    if not files:
        raise SystemExit(f"error: no PNG/JPEG images found in {list(items)}")
    return files


def _hparams(checkpoint: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    found = checkpoint.get(key)
    return found if isinstance(found, Mapping) else {}


def checkpoint_class_names(checkpoint: Mapping[str, Any]) -> list[str] | None:
    """Class names stored in a Lightning checkpoint: a ``class_names`` hyperparameter of the
    LightningModule or of the datamodule (``datamodule_hyper_parameters``), else, for the
    demo's ``ShapesDataModule`` (its class path, which LightningCLI stores as ``_class_path``),
    the first ``num_classes`` of ``SHAPE_NAMES``; None when the checkpoint names none.

    Example:
        >>> checkpoint_class_names({"datamodule_hyper_parameters": {
        ...     "_class_path": "lightning_vitrcam.demo.ShapesDataModule", "num_classes": 3}})
        ['circle', 'square', 'triangle']
        >>> checkpoint_class_names({"hyper_parameters": {"class_names": ["cat", "dog"]}})
        ['cat', 'dog']
    """
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        names = _hparams(checkpoint, key).get("class_names")
        if names:
            return [str(n) for n in names]
    data = _hparams(checkpoint, "datamodule_hyper_parameters")
    if data.get("_class_path") in _DEMO_DATAMODULES:
        from lightning_vitrcam.demo import SHAPE_NAMES

        return list(SHAPE_NAMES[: int(data.get("num_classes", 4))])
    return None


def load_images(
    files: Sequence[Path],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
) -> torch.Tensor:
    """Read, resize (bilinear) and normalise image files into a ``[N, channels, H, W]``
    tensor (``channels`` 1: greyscale, 3: RGB)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    if channels not in (1, 3):
        raise SystemExit(
            f"error: the model takes {channels}-channel images; PNG/JPEG files are read as"
            " greyscale (1 channel) or RGB (3): explain such a model from Python with"
            " ViTReciproCAM and render.overlay(..., channels=...)"
        )
    tensors = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                img = img.resize((size[1], size[0]), Image.BILINEAR)
                tensors.append(pil_to_tensor(img))
        except (UnidentifiedImageError, OSError) as err:
            raise SystemExit(f"error: cannot read image {f}: {err}") from err
    x = torch.stack(tensors).float() / 255.0
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def _read_checkpoint(ckpt: Path) -> Mapping[str, Any]:
    try:
        # a Lightning checkpoint pickles its hyperparameters, as load_from_checkpoint reads them
        found = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any read failure gets the same clear message
        raise SystemExit(f"error: cannot read checkpoint {ckpt}: {err}") from err
    return found if isinstance(found, Mapping) else {}


def explain_main(argv: Sequence[str]) -> int:
    """``lightning-vitrcam explain``: write overlays, a grid and predictions.json to ``--out``."""
    from tqdm import tqdm

    from lightning_vitrcam.adapters import find_vit
    from lightning_vitrcam.explainer import ViTReciproCAM
    from lightning_vitrcam.normalization import input_channels, resolve_mean_std
    from lightning_vitrcam.render import Style, overlay, saliency_grid, save_png

    args = build_explain_parser().parse_args(list(argv))
    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        raise SystemExit(f"error: checkpoint not found: {ckpt}")
    files = image_files(args.images)
    checkpoint = _read_checkpoint(ckpt)
    stored = _hparams(checkpoint, "hyper_parameters").get("_class_path")
    model_class = args.model_class or stored or DEFAULT_MODEL_CLASS
    cls = _import(model_class)
    try:
        module = cls.load_from_checkpoint(str(ckpt), map_location=args.device)
    except Exception as err:  # noqa: BLE001 - any load failure gets the same clear message
        raise SystemExit(f"error: cannot load {ckpt} as {model_class}: {err}") from err
    module.eval()
    try:
        _, vit = find_vit(module, args.model_attr)
        cam = ViTReciproCAM(vit, target_block=args.target_block, kernel=args.kernel)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    size = cam.adapter.input_size() or (224, 224)
    channels = input_channels(vit) or 3
    mean, std = resolve_mean_std(model=vit, channels=channels)
    class_names = args.class_names or checkpoint_class_names(checkpoint)
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
            save_png(img, out / "overlays" / f"{f.stem}.png")
            name = class_names[target] if class_names and target < len(class_names) else target
            records.append({"file": str(f), "predicted": name, "probability": round(prob, 6)})
        grids.append(
            saliency_grid(
                images,
                result.maps,
                preds=result.targets,
                probs=result.probs,
                class_names=class_names,
                style=style,
            )
        )
    for i, grid in enumerate(grids):
        save_png(grid, out / ("grid.png" if len(grids) == 1 else f"grid_{i:03d}.png"))
    (out / "predictions.json").write_text(json.dumps(records, indent=2))
    print(f"wrote {len(records)} overlays, {len(grids)} grid(s) and predictions.json to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``explain`` to the offline explainer, everything else to LightningCLI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "explain":
        return explain_main(argv[1:])
    run_fit_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
