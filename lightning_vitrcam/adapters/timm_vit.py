"""timm ``VisionTransformer`` (and DeiT's ``VisionTransformerDistilled``)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lightning_vitrcam.adapters.base import Copies, register_adapter
from lightning_vitrcam.adapters.generic import TimmStyleAdapter

__all__ = ["TimmViTAdapter"]


@register_adapter(
    "timm.models.vision_transformer.VisionTransformer",
    "timm.models.deit.VisionTransformerDistilled",
)
class TimmViTAdapter(TimmStyleAdapter):
    """timm ViTs end with ``blocks -> norm -> forward_head``, so the copies restart at the
    target block from the block input kept from the unmasked forward instead of re-running the
    whole forward per chunk."""

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
