"""Explaining outside ``Trainer.fit``: checkpoints, image folders, configs, bad input.

Everything ``lightning-vitrcam explain`` and ``audit`` read is checked here, before any work,
and a problem raises :class:`BadInput` (exit status 2) saying what is wrong and how to fix it.

* :func:`load_module`: a LightningModule from a checkpoint (its class from ``--model-class``
  or the class path LightningCLI stored), and the ViT inside it;
* :func:`image_files`: files and folders, the ImageFolder layout included (a folder whose
  sub-folders hold the images of one class each, named after it);
* :func:`load_images`: the files as a normalised ``[N, C, H, W]`` tensor;
* :func:`probes_from_config`: the probes of a LightningCLI config's validation data.

An evaluation outside fit runs on a one-process :class:`~lightning_vitrcam.hosts.ProcessHost`.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from lightning_vitrcam.render import save_png
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     _ = save_png(torch.zeros(3, 4, 4, dtype=torch.uint8), root / name / "a.png")
    >>> [(f.name, label) for f, label in image_files([str(root)])]
    [('a.png', 'cat'), ('a.png', 'dog')]
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BadInput",
    "DEFAULT_MODEL_CLASS",
    "IMAGE_SUFFIXES",
    "checkpoint_class_names",
    "folder_labels",
    "image_files",
    "load_images",
    "load_module",
    "probes_from_config",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_MODEL_CLASS = "lightning_vitrcam.demo.ViTClassifier"
# the demo's datamodule names its classes after SHAPE_NAMES[:num_classes]
_DEMO_DATAMODULES = (
    "lightning_vitrcam.demo.ShapesDataModule",
    "lightning_vitrcam.demo.data.ShapesDataModule",
)


class BadInput(SystemExit):
    """Input the command cannot work with: exit status 2, with the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise BadInput(f"cannot import --model-class {path!r}: {err}") from err


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


def load_module(
    ckpt: str | Path, model_class: str | None, model_attr: str | None = None, device: str = "cpu"
) -> tuple[Any, nn.Module, Mapping[str, Any]]:
    """``(module, vit, checkpoint)``: the LightningModule of ``ckpt`` in eval mode, the ViT
    inside it and the raw checkpoint (its hyperparameters)."""
    from lightning_vitrcam.adapters import find_vit

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise BadInput(f"checkpoint not found: {ckpt}")
    try:
        # a Lightning checkpoint pickles its hyperparameters, as load_from_checkpoint reads them
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any read failure gets the same clear message
        raise BadInput(f"cannot read checkpoint {ckpt}: {err}") from err
    checkpoint = checkpoint if isinstance(checkpoint, Mapping) else {}
    stored = _hparams(checkpoint, "hyper_parameters").get("_class_path")
    path = model_class or stored or DEFAULT_MODEL_CLASS
    cls = _import(path)
    try:
        module = cls.load_from_checkpoint(str(ckpt), map_location=device)
    except Exception as err:  # noqa: BLE001 - any load failure gets the same clear message
        raise BadInput(
            f"cannot load {ckpt} as {path}: {err}; pass --model-class <the LightningModule's"
            " class path> if the checkpoint does not store it"
        ) from err
    module.eval()
    try:
        _, vit = find_vit(module, model_attr)
    except ValueError as err:
        raise BadInput(f"{err}; pass --model-attr <attribute path to the ViT>") from err
    return module, vit, checkpoint


def image_files(items: Sequence[str]) -> list[tuple[Path, str | None]]:
    """``(file, label)`` of every image: files as given, a folder's images (sorted,
    non-recursive) with no label, and a folder of class sub-folders (the ImageFolder layout)
    with each sub-folder's name as the label of its images."""
    found: list[tuple[Path, str | None]] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found.append((path, None))
        elif path.is_dir():
            own = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, None) for p in own]
            for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                found += [(p, sub.name) for p in files]
        else:
            raise BadInput(f"image path not found: {item}")
    if not found:
        raise BadInput(
            f"no PNG/JPEG images found in {list(items)} (looked at the files given, the images"
            " in each folder and in its sub-folders, one per class)"
        )
    return found


def folder_labels(
    labels: Sequence[str | None], class_names: Sequence[str] | None
) -> tuple[torch.Tensor | None, list[str] | None]:
    """``(labels, class_names)`` from sub-folder names: indices into ``class_names`` when
    given (every folder must be one of them), else the sorted folder names are the classes
    (checked against the model's classes later); no labels where no image has a folder."""
    if all(label is None for label in labels):
        return None, None if class_names is None else list(class_names)
    if any(label is None for label in labels):
        raise BadInput(
            "a mix of images in class sub-folders and images outside them: use one layout"
        )
    folders = sorted(set(labels))  # type: ignore[arg-type]
    names = list(class_names) if class_names else folders
    if not set(folders) <= set(names):
        raise BadInput(
            f"the class sub-folders {folders} are not among the model's classes {names}:"
            " rename the folders or pass --class-names"
        )
    return torch.tensor([names.index(str(label)) for label in labels]), names


def load_images(
    files: Sequence[Path],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
) -> torch.Tensor:
    """Read, resize (bilinear) and normalise image files into a ``[N, channels, H, W]``
    tensor (``channels`` 1: greyscale, 3: RGB); every file is checked before any is used."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    if channels not in (1, 3):
        raise BadInput(
            f"the model takes {channels}-channel images; PNG/JPEG files are read as greyscale"
            " (1 channel) or RGB (3): explain such a model from Python with ViTReciproCAM and"
            " render.overlay(..., Style(channels=...))"
        )
    tensors = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                img = img.resize((size[1], size[0]), Image.BILINEAR)
                tensors.append(pil_to_tensor(img))
        except (UnidentifiedImageError, OSError) as err:
            raise BadInput(f"cannot read image {f}: {err}") from err
    x = torch.stack(tensors).float() / 255.0
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def probes_from_config(config: str | Path, num: int, seed: int = 0, dataloader_idx: int = 0) -> Any:
    """The probes (:class:`~lightning_vitrcam.probes.Probes`) of the validation data of a
    LightningCLI config: its ``data`` section instantiated, set up and sampled as the
    callback samples them."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    from lightning_vitrcam.probes import sample_probes

    path = Path(config)
    if not path.is_file():
        raise BadInput(f"config not found: {path}")
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise BadInput(f"cannot read config {path}: {err}") from err
    if "data" not in raw:
        raise BadInput(f"config {path} has no 'data' section (a LightningDataModule by class_path)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    try:
        cfg = parser.parse_object({"data": raw["data"]})
        data = parser.instantiate_classes(cfg).data
        data.setup("validate")
        loaders = data.val_dataloader()
    except Exception as err:  # noqa: BLE001 - any config failure gets the same clear message
        raise BadInput(f"cannot build the validation data of {path}: {err}") from err
    loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
    if not 0 <= dataloader_idx < len(loaders):
        raise BadInput(f"the config's data has {len(loaders)} validation loaders")
    try:
        return sample_probes(loaders[dataloader_idx], num, seed), getattr(data, "class_names", None)
    except ValueError as err:
        raise BadInput(str(err)) from err
