"""torchvision's ``VisionTransformer`` (``vit_b_16`` and friends).

Blocks are ``encoder.layers`` (``EncoderBlock``: ``ln_1 -> self_attention -> dropout +
residual -> ln_2 -> mlp``), one class token, the patch size and the (square) image size are
attributes of the model. The copies run through the model's own forward.

Example:
    >>> from torchvision.models import VisionTransformer
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> tv = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
    ...                        hidden_dim=32, mlp_dim=64, num_classes=3)
    >>> a = build_adapter(tv)
    >>> type(a).__name__, a.num_prefix_tokens, a.grid_size((32, 32)), a.block_name(1)
    ('TorchvisionViTAdapter', 1, (4, 4), 'encoder.layers.encoder_layer_1')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_vitrcam.adapters.base import ModelAdapter, class_path, module_name, register_adapter
from lightning_vitrcam.adapters.fast_spec import FamilySpec, Projections, split_fused
from lightning_vitrcam.adapters.generic import _prefix_count


class _TorchvisionSpec(FamilySpec):
    """torchvision ``EncoderBlock`` with ``nn.MultiheadAttention`` (fused ``in_proj_weight``)
    in ``VisionTransformer``: ``encoder.ln`` and ``heads`` on the class token."""

    def blocker(self, model: nn.Module, block: nn.Module) -> str | None:
        if class_path(type(block)) != "torchvision.models.vision_transformer.EncoderBlock":
            return f"custom block {type(block).__name__}"
        attn = block.self_attention
        if type(attn) is not nn.MultiheadAttention:
            return f"custom attention {type(attn).__name__}"
        if not attn._qkv_same_embed_dim or not attn.batch_first:
            return "the attention has no fused batch-first in_proj_weight"
        if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
            return "extra key/value slots (add_bias_kv / add_zero_attn)"
        return None

    def projections(self, block: nn.Module) -> Projections:
        attn = block.self_attention
        E, H = attn.embed_dim, attn.num_heads
        wq, wkv, (bq, bk, bv) = split_fused(attn.in_proj_weight, attn.in_proj_bias, E)
        d = E // H
        return Projections(wq, wkv, bq, bk, bv, H, d, d**-0.5)

    def prefix_tail(
        self,
        model: nn.Module,
        block: nn.Module,
        x_pre: torch.Tensor,
        out: torch.Tensor,
        context: Any,
    ) -> torch.Tensor:
        B, N, P, _ = out.shape
        y = block.dropout(block.self_attention.out_proj(out)) + x_pre[:, None]
        y = y + block.mlp(block.ln_2(y))
        y = model.encoder.ln(y.reshape(B * N, P, -1))
        return model.heads(y[:, 0]).reshape(B, N, -1)


__all__ = ["TorchvisionViTAdapter"]


@register_adapter("torchvision.models.vision_transformer.VisionTransformer")
class TorchvisionViTAdapter(ModelAdapter):
    """torchvision ``VisionTransformer``: ``encoder.layers``, ``ln_1``, 1 prefix token."""

    fast_path_spec = _TorchvisionSpec()

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, patch_size or model.patch_size)
        self.blocks = list(model.encoder.layers)
        # the class token torchvision prepends in forward
        self.num_prefix_tokens = _prefix_count(
            model, 1 if num_prefix_tokens is None else num_prefix_tokens
        )

    def first_norm(self, block: nn.Module) -> nn.Module:
        return block.ln_1

    def classifiers(self) -> list[nn.Module]:
        return [m for m in self.model.heads.modules() if isinstance(m, nn.Linear)]

    def block_name(self, index: int) -> str:
        return module_name(self.model, self.blocks[index], f"encoder.layers.{index}")

    def input_size(self) -> tuple[int, int] | None:
        return (int(self.model.image_size), int(self.model.image_size))

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        size = int(self.model.image_size)
        if tuple(image_size) != (size, size):
            raise ValueError(
                f"torchvision's VisionTransformer takes {size}x{size} images but got"
                f" {image_size[0]}x{image_size[1]}; resize the images"
            )
        p = int(self.model.patch_size)
        return size // p, size // p
