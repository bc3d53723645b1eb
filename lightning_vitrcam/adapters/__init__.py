"""Model adapters: one small class per model family, chosen by a registry lookup.

:func:`build_adapter` picks the adapter for a model: a family registered as refused (video
models, backbones without a head, see :mod:`~lightning_vitrcam.adapters.refusals`) raises its
reason; ``target_layer=`` means :class:`TargetLayerAdapter` (hierarchical families choose their
block with ``target_block=`` instead); otherwise the adapter registered for the nearest class
of the model (:func:`register_adapter`), else :class:`TimmStyleAdapter` for models laid out
like timm's. :func:`find_vit` finds the one model inside a LightningModule that
an adapter can explain. The supported families and their masking sites are listed in
``docs/models.md``.

Example:
    >>> import timm
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    >>> adapter = build_adapter(vit)
    >>> type(adapter).__name__, adapter.num_prefix_tokens, adapter.grid_size((32, 32))
    ('TimmViTAdapter', 1, (4, 4))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

# each family module registers its adapter(s) by class path when imported
from lightning_vitrcam.adapters import hf as _hf  # noqa: F401
from lightning_vitrcam.adapters import hf_hiera as _hf_hiera  # noqa: F401
from lightning_vitrcam.adapters import hf_swin as _hf_swin  # noqa: F401
from lightning_vitrcam.adapters import refusals as _refusals  # noqa: F401
from lightning_vitrcam.adapters import timm_cait as _timm_cait  # noqa: F401
from lightning_vitrcam.adapters import timm_eva as _timm_eva  # noqa: F401
from lightning_vitrcam.adapters import timm_hiera as _timm_hiera  # noqa: F401
from lightning_vitrcam.adapters import timm_maxvit as _timm_maxvit  # noqa: F401
from lightning_vitrcam.adapters import timm_mvit as _timm_mvit  # noqa: F401
from lightning_vitrcam.adapters import timm_naflex as _timm_naflex  # noqa: F401
from lightning_vitrcam.adapters import timm_pit as _timm_pit  # noqa: F401
from lightning_vitrcam.adapters import timm_pvt_v2 as _timm_pvt_v2  # noqa: F401
from lightning_vitrcam.adapters import timm_swin as _timm_swin  # noqa: F401
from lightning_vitrcam.adapters import timm_twins as _timm_twins  # noqa: F401
from lightning_vitrcam.adapters import timm_vit as _timm_vit  # noqa: F401
from lightning_vitrcam.adapters import torchvision_swin as _torchvision_swin  # noqa: F401
from lightning_vitrcam.adapters import torchvision_vit as _torchvision_vit  # noqa: F401
from lightning_vitrcam.adapters.base import (
    Copies,
    MaskSite,
    ModelAdapter,
    RefusedModel,
    adapter_class_for,
    register_adapter,
    unwrap_model,
)
from lightning_vitrcam.adapters.generic import TargetLayerAdapter, TimmStyleAdapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter

__all__ = [
    "Copies",
    "HierarchicalAdapter",
    "MaskSite",
    "ModelAdapter",
    "RefusedModel",
    "TargetLayerAdapter",
    "TimmStyleAdapter",
    "adapter_class_for",
    "build_adapter",
    "find_vit",
    "is_explainable",
    "refusal",
    "register_adapter",
    "unwrap_model",
]


def _adapter_class(model: nn.Module) -> type[ModelAdapter] | None:
    found = adapter_class_for(model)
    if found is None and TimmStyleAdapter.matches(model):
        found = TimmStyleAdapter
    return found


def is_explainable(model: nn.Module) -> bool:
    """Whether :func:`build_adapter` finds an adapter for ``model`` without ``target_layer``
    (refused families are not explainable)."""
    cls = _adapter_class(model)
    return cls is not None and not issubclass(cls, RefusedModel)


def refusal(model: nn.Module) -> str | None:
    """Why ``model``'s family cannot be explained, or None when it is not refused.

    Example:
        >>> refusal(nn.Linear(2, 2)) is None
        True
    """
    cls = adapter_class_for(model)
    if cls is not None and issubclass(cls, RefusedModel):
        return cls.reason(model)
    return None


def build_adapter(
    model: nn.Module,
    target_layer: nn.Module | None = None,
    num_prefix_tokens: int | None = None,
    patch_size: int | Sequence[int] | None = None,
) -> ModelAdapter:
    """The adapter for ``model`` (see the module docstring for the lookup order)."""
    reason = refusal(model)
    if reason is not None:
        raise ValueError(reason)
    cls = _adapter_class(model)
    if target_layer is not None and cls is not None and issubclass(cls, HierarchicalAdapter):
        raise ValueError(
            f"{type(model).__name__} is explained without target_layer= (its blocks see NHWC"
            " maps or attention windows, which its adapter lays the mask out for); choose the"
            " block with target_block= instead, counted over all stages (-1: the last block of"
            " the last stage)"
        )
    if target_layer is not None:
        return TargetLayerAdapter(model, target_layer, num_prefix_tokens, patch_size)
    if cls is None:
        raise ValueError(
            f"cannot find transformer blocks with a 'norm1' in {type(model).__name__}"
            " (supported without configuration: timm VisionTransformer/DeiT/Eva/BEiT/CaiT/"
            "NaFlexVit and hierarchical Swin/PVT v2/Twins/MViT v2/Hiera/MaxViT/PiT, HF ViT/"
            "DeiT/DINOv2/Swin/Hiera image classifiers, torchvision's VisionTransformer and"
            " Swin; see docs/models.md). For any other pre-norm"
            " transformer pass target_layer=<the first norm of the block to explain> and"
            " num_prefix_tokens=..., e.g. ViTReciproCAM(model,"
            " target_layer=model.encoder.layers[-1].ln_1, num_prefix_tokens=1)"
        )
    return cls(model, num_prefix_tokens=num_prefix_tokens, patch_size=patch_size)


def find_vit(module: nn.Module, model_attr: str | None = None) -> tuple[str, nn.Module]:
    """``(name, eager ViT)`` inside ``module``: ``model_attr`` (a dotted attribute path) when
    given, else ``module`` itself or its only submodule an adapter can explain (e.g. a timm
    VisionTransformer), ``torch.compile`` and DDP wrappers removed.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
        >>> name, found = find_vit(torch.nn.Sequential(torch.nn.Identity(), vit))
        >>> name, found is vit
        ('1', True)
    """
    if model_attr:
        obj: Any = module
        for part in model_attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(
                    f"model_attr={model_attr!r}: {type(obj).__name__} has no attribute {part!r}"
                )
            obj = getattr(obj, part)
        if not isinstance(obj, nn.Module):
            raise ValueError(f"model_attr={model_attr!r} is a {type(obj).__name__}, not a module")
        return model_attr, unwrap_model(obj)
    root = unwrap_model(module)
    if is_explainable(root):
        return "", root
    found: dict[int, tuple[str, nn.Module]] = {}
    refused: list[tuple[str, str]] = []
    for name, sub in root.named_modules():
        sub = unwrap_model(sub)  # a compiled ViT and its _orig_mod are one candidate
        if id(sub) not in found and is_explainable(sub):
            found[id(sub)] = (name, sub)
        elif (reason := refusal(sub)) is not None:
            refused.append((name, reason))
    top = list(found.values())
    if len(top) == 1:
        return top[0]
    kind = type(module).__name__
    if not top and refused:
        name, reason = refused[0]
        where = f"{kind}.{name}" if name else kind
        raise ValueError(f"cannot explain {where}: {reason}")
    if not top:
        raise ValueError(
            f"no Vision Transformer found in {kind} (looked for the families in"
            " docs/models.md, e.g. a timm VisionTransformer, an HF ViTForImageClassification"
            " or torchvision's VisionTransformer, and for modules with .blocks and"
            " .patch_embed); pass model_attr='<attribute path to the ViT>', e.g."
            " model_attr='model'"
        )
    names = ", ".join(repr(n) for n, _ in top)
    raise ValueError(
        f"{len(top)} Vision Transformers found in {kind}: {names}; pass model_attr= to choose"
        f" the one to explain, e.g. model_attr={top[0][0]!r}"
    )
