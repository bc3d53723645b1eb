"""timm ``Twins`` (Twins-PCPVT and Twins-SVT; see
:mod:`~lightning_vitrcam.adapters.hierarchical` for the semantics).

* blocks: ``blocks[s][j]``, stage after stage; each stage starts with its own patch embedding
  (a strided convolution), so its blocks see its output grid;
* block input: ``[B, H*W, C]`` with the grid passed beside it;
* masking site: the ``norm1`` output (pre-norm ``x + drop_path1(attn(norm1(x), size))``,
  whether the attention is global, sub-sampled or locally grouped in windows); the position
  convolution after a stage's first block is part of the rest of the forward;
* the patch grid is the first patch embedding's output (any image size that the model's
  windows take);
* the copies restart at the target block from its kept input and run what the model's
  forward runs after it (the rest of the stage with its position convolution, the later
  stages, ``norm``, ``forward_head``); the forward reshapes with the batch size it read from
  the images, so the block input cannot simply grow to one row per copy inside it. A subclass
  that changes the forward is explained by a whole forward per copy instead.

Example:
    >>> import timm, torch
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> twins = timm.create_model("twins_svt_small", img_size=32, embed_dims=(8, 16),
    ...                           depths=(2, 2), num_heads=(1, 1), wss=(2, 2), sr_ratios=(2, 1),
    ...                           mlp_ratios=(2, 2), num_classes=3)
    >>> cam = ViTReciproCAM(twins, target_block=1)
    >>> cam.block_name, cam(torch.randn(1, 3, 32, 32)).maps.shape
    ('blocks.0.1', torch.Size([1, 8, 8]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.twins import Twins
from torch import nn

from lightning_vitrcam.adapters.base import Copies, MaskSite, register_adapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, conv_grid

__all__ = ["TimmTwinsAdapter"]


@register_adapter("timm.models.twins.Twins")
class TimmTwinsAdapter(HierarchicalAdapter):
    """timm Twins: the ``norm1`` output of ``blocks[s][j]`` on that stage's grid."""

    sites = {"timm.models.twins.Block": lambda b: MaskSite(b.norm1)}
    layout = "tokens"
    family = "timm Twins"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        embeds = [e.proj for e in model.patch_embeds]
        super().__init__(model, num_prefix_tokens, patch_size or tuple(embeds[0].stride))
        self._stem = conv_grid(embeds[0])
        self._set_stages(
            [
                (list(blocks), None if s == 0 else conv_grid(embeds[s]))
                for s, blocks in enumerate(model.blocks)
            ]
        )

        self._restart = (
            type(model).forward is Twins.forward
            and type(model).forward_features is Twins.forward_features
        )

    def patch_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self._stem(image_size)

    def input_size(self) -> tuple[int, int] | None:
        return None  # any size the windows take

    def tail(
        self,
        block_index: int,
        block: nn.Module,
        x: torch.Tensor,
        images: torch.Tensor,
        copies: Copies,
    ) -> torch.Tensor:
        if not self._restart:
            return self.whole_forward_tail(images, copies)
        m, (s, first) = self.model, self.place(block_index)
        size = self.block_grid((int(images.shape[-2]), int(images.shape[-1])), block_index)
        y = x.index_select(0, copies.rows)
        stages = len(m.blocks)
        for i in range(s, stages):
            if i > s:  # Twins.forward_features from the target block on
                y, size = m.patch_embeds[i](y)
                y = m.pos_drops[i](y)
            for j in range(first if i == s else 0, len(m.blocks[i])):
                y = m.blocks[i][j](y, size)
                if j == 0:
                    y = m.pos_block[i](y, size)
            if i < stages - 1:
                y = y.reshape(y.shape[0], *size, -1).permute(0, 3, 1, 2).contiguous()
        return m.forward_head(m.norm(y))
