"""timm ``VisionTransformer`` (and DeiT's ``VisionTransformerDistilled``)."""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lightning_vitrcam.adapters.base import Copies, register_adapter
from lightning_vitrcam.adapters.fast_spec import FamilySpec, Projections, split_fused
from lightning_vitrcam.adapters.generic import TimmStyleAdapter


class _TimmSpec(FamilySpec):
    """timm ``Block``/``Attention`` (fused ``qkv``) in a token-pooled ``VisionTransformer``."""

    def blocker(self, model: nn.Module, block: nn.Module) -> str | None:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        if getattr(model, "attn_pool", None) is not None or model.global_pool != "token":
            return f"global_pool={getattr(model, 'global_pool', None)!r} is not token pooling"
        if type(block) is not Block or type(block.attn) is not Attention:
            return f"custom block {type(block).__name__}/{type(block.attn).__name__}"
        attn = block.attn
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            return "q/k normalisation makes keys non-affine in the window weight"
        if not isinstance(attn.qkv, nn.Linear):
            return "the attention has no fused qkv Linear"
        return None

    def projections(self, block: nn.Module) -> Projections:
        attn = block.attn
        width = attn.num_heads * attn.head_dim
        wq, wkv, (bq, bk, bv) = split_fused(attn.qkv.weight, attn.qkv.bias, width)
        return Projections(wq, wkv, bq, bk, bv, attn.num_heads, attn.head_dim, attn.scale)

    def context(self, block: nn.Module, feats_pre: torch.Tensor) -> Any:
        gate = getattr(block.attn, "gate", None)
        return None if gate is None else gate(feats_pre).sigmoid()

    def prefix_tail(
        self,
        model: nn.Module,
        block: nn.Module,
        x_pre: torch.Tensor,
        out: torch.Tensor,
        context: Any,
    ) -> torch.Tensor:
        B, N, P, _ = out.shape
        attn = block.attn
        out = attn.norm(out)
        if context is not None:
            out = out * context[:, None].to(out.dtype)
        out = attn.proj_drop(attn.proj(out))
        y = x_pre[:, None] + block.drop_path1(block.ls1(out))
        y = y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))
        y = model.norm(y.reshape(B * N, P, -1))
        return model.forward_head(y).reshape(B, N, -1)


__all__ = ["TimmViTAdapter"]


@register_adapter(
    "timm.models.vision_transformer.VisionTransformer",
    "timm.models.deit.VisionTransformerDistilled",
)
class TimmViTAdapter(TimmStyleAdapter):
    """timm ViTs end with ``blocks -> norm -> forward_head``, so the copies restart at the
    target block from the block input kept from the unmasked forward instead of re-running the
    whole forward per chunk."""

    fast_path_spec = _TimmSpec()

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        # a user subclass that changes the forward may run more than blocks -> norm -> head
        cls = type(model)
        self._restart = (
            cls.forward is VisionTransformer.forward
            and cls.forward_features is VisionTransformer.forward_features
        )

    def classifiers(self) -> list[nn.Module]:
        heads = [getattr(self.model, name, None) for name in ("head", "head_dist")]
        return [h for h in heads if isinstance(h, nn.Linear)]

    def tail(
        self,
        block_index: int,
        block: nn.Module,
        x: torch.Tensor,
        images: torch.Tensor,
        copies: Copies,
    ) -> torch.Tensor:
        if not self._restart:
            return super().tail(block_index, block, x, images, copies)
        y = x.index_select(0, copies.rows)
        for blk in self.model.blocks[block_index:]:
            y = blk(y)
        return self.model.forward_head(self.model.norm(y))
