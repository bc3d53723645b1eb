"""HF transformers image classifiers: ViT, DeiT (with teacher), DINOv2 (with registers).

Registered by class path, so importing this module never imports ``transformers``; everything
is read from the model's own attributes and config:

* blocks: ``<backbone>.layers`` (transformers 5) or ``<backbone>.encoder.layer``, where the
  backbone is ``getattr(model, model.base_model_prefix)`` (``vit``, ``deit``, ``dinov2``, ...);
* first norm: ``layernorm_before`` (ViT, DeiT) or ``norm1`` (DINOv2);
* prefix tokens from the embeddings: class token, DeiT's distillation token, DINOv2's register
  tokens;
* patch and image size from ``config.patch_size`` / ``config.image_size``; ViT and DeiT take
  exactly ``config.image_size`` (the explainer calls them without
  ``interpolate_pos_encoding``), DINOv2 resamples its position embedding to any size;
* logits: the output's ``.logits`` (for DeiT with teacher the mean of both heads).

The copies run through the model's own forward (the block input is expanded to one row per
copy, whether the layer gets its hidden states positionally or as ``hidden_states=``).

Example:
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
    ...                 num_attention_heads=2, intermediate_size=64, num_labels=3)
    >>> a = build_adapter(ViTForImageClassification(cfg))
    >>> type(a).__name__, a.num_prefix_tokens, a.grid_size((32, 32)), a.block_name(1)
    ('HFViTAdapter', 1, (4, 4), 'vit.layers.1')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_vitrcam.adapters.base import (
    ModelAdapter,
    _pair,
    class_path,
    module_name,
    register_adapter,
)
from lightning_vitrcam.adapters.fast_spec import FamilySpec, Projections
from lightning_vitrcam.adapters.generic import _prefix_count

__all__ = ["HFDinov2Adapter", "HFViTAdapter"]

_HEADS = ("classifier", "cls_classifier", "distillation_classifier")


def _backbone(model: nn.Module) -> nn.Module:
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if not isinstance(backbone, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no backbone at .{prefix or '<base_model_prefix>'}"
        )
    return backbone


def _layers(backbone: nn.Module) -> list[nn.Module]:
    layers = getattr(backbone, "layers", None)
    if layers is None:
        layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None:
        layers = getattr(getattr(backbone, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList | nn.Sequential) or len(layers) == 0:
        raise ValueError(f"cannot find the transformer layers of {type(backbone).__name__}")
    return list(layers)


def _prefix_tokens(embeddings: nn.Module) -> int:
    """Class token, distillation token and register tokens the embeddings prepend."""
    count = 0
    for name in ("cls_token", "distillation_token"):
        if getattr(embeddings, name, None) is not None:
            count += 1
    registers = getattr(embeddings, "register_tokens", None)
    if registers is not None:
        count += int(registers.shape[1])
    return count


_HF_LAYERS = {
    "transformers.models.vit.modeling_vit.ViTLayer": "ViTAttention",
    "transformers.models.deit.modeling_deit.DeiTLayer": "DeiTAttention",
}
_HF_TEACHER = "transformers.models.deit.modeling_deit.DeiTForImageClassificationWithTeacher"


class _HFViTSpec(FamilySpec):
    """HF ``ViTLayer``/``DeiTLayer`` (separate ``q_proj``/``k_proj``/``v_proj``, ``o_proj``,
    ``layernorm_before``/``layernorm_after``, ``mlp``) in ``ViTForImageClassification`` and
    ``DeiTForImageClassification(WithTeacher)``: the backbone's ``layernorm``, then the
    classifier on the class token (with teacher: the mean of the class and distillation
    heads)."""

    def blocker(self, model: nn.Module, block: nn.Module) -> str | None:
        attention = _HF_LAYERS.get(class_path(type(block)))
        attn = getattr(block, "attention", None)
        if attention is None or type(attn).__name__ != attention:
            return f"custom layer {type(block).__name__}/{type(attn).__name__}"
        # the layout of transformers 5; other versions take the general path
        parts = ("q_proj", "k_proj", "v_proj", "o_proj")
        if not all(isinstance(getattr(attn, p, None), nn.Linear) for p in parts):
            return f"{type(attn).__name__} has no q_proj/k_proj/v_proj/o_proj (other layout)"
        if not all(hasattr(block, p) for p in ("layernorm_before", "layernorm_after", "mlp")):
            return f"{type(block).__name__} has an unknown layout"
        return None

    def projections(self, block: nn.Module) -> Projections:
        attn = block.attention
        wkv = torch.cat([attn.k_proj.weight, attn.v_proj.weight])
        return Projections(
            attn.q_proj.weight,
            wkv,
            attn.q_proj.bias,
            attn.k_proj.bias,
            attn.v_proj.bias,
            attn.num_attention_heads,
            attn.head_dim,
            attn.scaling,
        )

    def prefix_tail(
        self,
        model: nn.Module,
        block: nn.Module,
        x_pre: torch.Tensor,
        out: torch.Tensor,
        context: Any,
    ) -> torch.Tensor:
        B, N, P, _ = out.shape
        y = block.dropout(block.attention.o_proj(out)) + x_pre[:, None]
        y = y + block.dropout(block.mlp(block.layernorm_after(y)))
        backbone = getattr(model, model.base_model_prefix)
        y = backbone.layernorm(y.reshape(B * N, P, -1))
        if class_path(type(model)) == _HF_TEACHER:
            logits = (model.cls_classifier(y[:, 0]) + model.distillation_classifier(y[:, 1])) / 2
        else:
            logits = model.classifier(y[:, 0])
        return logits.reshape(B, N, -1)


class _HFAdapter(ModelAdapter):
    """Shared by the HF families; subclasses say whether the image size is fixed."""

    fixed_size = True

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        config = model.config
        super().__init__(model, patch_size or config.patch_size)
        self.backbone = _backbone(model)
        self.blocks = _layers(self.backbone)
        if num_prefix_tokens is None:
            num_prefix_tokens = _prefix_tokens(self.backbone.embeddings)
        self.num_prefix_tokens = _prefix_count(model, num_prefix_tokens)

    def first_norm(self, block: nn.Module) -> nn.Module:
        norm = getattr(block, "layernorm_before", None)
        return norm if norm is not None else block.norm1

    def classifiers(self) -> list[nn.Module]:
        heads = [getattr(self.model, name, None) for name in _HEADS]
        return [h for h in heads if isinstance(h, nn.Linear)]

    def block_name(self, index: int) -> str:
        return module_name(self.model, self.blocks[index], f"layers.{index}")

    def logits(self, output: Any) -> Any:
        if isinstance(output, tuple):  # config.return_dict=False: logits come first (no labels)
            return output[0]
        return output.logits

    def input_size(self) -> tuple[int, int] | None:
        return _pair(self.model.config.image_size)

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        H, W = image_size
        expected = self.input_size()
        if self.fixed_size and expected is not None and (H, W) != expected:
            raise ValueError(
                f"{type(self.model).__name__} takes {expected[0]}x{expected[1]} images"
                f" (config.image_size) but got {H}x{W}; resize the images"
            )
        assert self.patch_size is not None
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {ph}x{pw}")
        return H // ph, W // pw


@register_adapter(
    "transformers.models.vit.modeling_vit.ViTForImageClassification",
    "transformers.models.deit.modeling_deit.DeiTForImageClassification",
    "transformers.models.deit.modeling_deit.DeiTForImageClassificationWithTeacher",
)
class HFViTAdapter(_HFAdapter):
    """HF ``ViTForImageClassification``, ``DeiTForImageClassification(WithTeacher)``:
    ``layernorm_before``, 1 prefix token (DeiT: 2), the class token's head (with teacher: the
    mean of the class and distillation heads); ``config.image_size`` images only."""

    fast_path_spec = _HFViTSpec()


@register_adapter(
    "transformers.models.dinov2.modeling_dinov2.Dinov2ForImageClassification",
    "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers."
    "Dinov2WithRegistersForImageClassification",
)
class HFDinov2Adapter(_HFAdapter):
    """HF ``Dinov2ForImageClassification`` (+ ``WithRegisters``): ``norm1``, the class token
    (+ registers); the head reads the class token and the mean of the patch tokens; any image
    size that is a multiple of the patch size."""

    fixed_size = False
