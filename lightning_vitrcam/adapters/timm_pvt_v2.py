"""timm ``PyramidVisionTransformerV2`` (PVT v2; see
:mod:`~lightning_vitrcam.adapters.hierarchical` for the semantics).

* blocks: ``stages[s].blocks[j]``, stage after stage; a stage's overlapping patch embedding
  (a strided convolution) comes first, so its blocks see its output grid;
* block input: ``[B, H*W, C]`` with the grid passed beside it;
* masking site: the ``norm1`` output (pre-norm ``x + drop_path1(attn(norm1(x), size))``); the
  attention's spatial-reduction convolution and the MLP's depthwise convolution then read the
  masked tokens as the model's forward does;
* the patch grid is the stem convolution's output (any image size);
* the copies restart at the target block from its kept input and run what the stage's and
  the model's forwards run after it (the rest of the stage's blocks, its norm, the later
  stages, ``forward_head``); a stage's forward reshapes with the batch size it read before its
  blocks, so the block input cannot simply grow to one row per copy inside it. A subclass that
  changes a forward is explained by a whole forward per copy instead.

Example:
    >>> import timm, torch
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> pvt = timm.create_model("pvt_v2_b0", embed_dims=(8, 16), depths=(1, 2),
    ...                         num_heads=(1, 1), sr_ratios=(2, 1), mlp_ratios=(2, 2),
    ...                         num_classes=3)
    >>> cam = ViTReciproCAM(pvt)
    >>> cam.block_name, cam(torch.randn(1, 3, 64, 64)).maps.shape
    ('stages.1.blocks.1', torch.Size([1, 8, 8]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.pvt_v2 import PyramidVisionTransformerStage, PyramidVisionTransformerV2
from torch import nn

from lightning_vitrcam.adapters.base import Copies, MaskSite, register_adapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, conv_grid

__all__ = ["TimmPvtV2Adapter"]


@register_adapter("timm.models.pvt_v2.PyramidVisionTransformerV2")
class TimmPvtV2Adapter(HierarchicalAdapter):
    """timm PVT v2: the ``norm1`` output of ``stages[s].blocks[j]`` on that stage's grid."""

    sites = {"timm.models.pvt_v2.Block": lambda b: MaskSite(b.norm1)}
    layout = "tokens"
    family = "timm PVT v2"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        stem = model.patch_embed.proj
        super().__init__(model, num_prefix_tokens, patch_size or tuple(stem.stride))
        self._stem = conv_grid(stem)
        self._set_stages(
            [
                (list(s.blocks), None if s.downsample is None else conv_grid(s.downsample.proj))
                for s in model.stages
            ]
        )

        own = PyramidVisionTransformerV2
        self._restart = (
            type(model).forward is own.forward
            and type(model).forward_features is own.forward_features
            and all(type(s).forward is PyramidVisionTransformerStage.forward for s in model.stages)
        )

    def patch_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self._stem(image_size)

    def input_size(self) -> tuple[int, int] | None:
        return None  # any size

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
        s, first = self.place(block_index)
        stage = self.model.stages[s]
        h, w = self.block_grid((int(images.shape[-2]), int(images.shape[-1])), block_index)
        y = x.index_select(0, copies.rows)
        for blk in stage.blocks[first:]:
            y = blk(y, (h, w))
        y = stage.norm(y).reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
        for later in self.model.stages[s + 1 :]:
            y = later(y)
        return self.model.forward_head(y)
