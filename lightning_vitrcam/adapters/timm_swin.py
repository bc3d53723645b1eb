"""timm ``SwinTransformer``, ``SwinTransformerV2`` and ``SwinTransformerV2Cr`` (see
:mod:`~lightning_vitrcam.adapters.hierarchical` for the semantics).

* blocks: ``layers[s].blocks[j]`` (V2 Cr: ``stages[s].blocks[j]``), stage after stage; a stage
  merges patches at its start (``downsample``), so its blocks see the merged grid;
* block input: NHWC ``[B, H, W, C]``;
* masking site: ``SwinTransformerBlock`` (pre-norm, ``x + drop_path1(_attn(norm1(x)))``) the
  ``norm1`` output; ``SwinTransformerV2Block`` and ``SwinTransformerV2CrBlock`` (post-norm,
  ``x + drop_path1(norm1(_attn(x)))``) the tensor the windowed attention reads, weighted where
  the block's attention module receives it: after the cyclic shift, padding and window
  partition (:func:`~lightning_vitrcam.adapters.hierarchical.weigh_windows`), which is the
  same multiplication element for element;
* the copies restart at the target block from its kept input: the rest of its stage, the later
  stages, ``norm`` and ``forward_head`` (the model's forward, when the classes are timm's own
  V1/V2); V2 Cr re-runs the model's forward with the block input expanded.

Example:
    >>> import timm, torch
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> swin = timm.create_model("swinv2_tiny_window8_256", img_size=32, window_size=2,
    ...                          embed_dim=8, depths=(2, 2), num_heads=(1, 1), num_classes=3)
    >>> cam = ViTReciproCAM(swin)
    >>> cam.block_name, cam.mask_site.module is swin.layers[1].blocks[1].attn
    ('layers.1.blocks.1', True)
    >>> cam(torch.randn(1, 3, 32, 32)).maps.shape
    torch.Size([1, 4, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerStage
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Stage
from torch import nn

from lightning_vitrcam.adapters.base import Copies, MaskSite, _pair, register_adapter
from lightning_vitrcam.adapters.hierarchical import (
    HierarchicalAdapter,
    halve,
    weigh_nhwc,
    weigh_windows,
)

__all__ = ["TimmSwinAdapter"]


def _post_norm_site(block: nn.Module) -> MaskSite:
    def window() -> tuple[tuple[int, int], tuple[int, int]]:
        return _pair(block.window_size), _pair(block.shift_size)

    return MaskSite(block.attn, on_input=True, weigh=weigh_windows(window, roll_first=True))


# the model classes whose forward is patch_embed -> layers -> norm -> forward_head, with stages
# that merge first and then run their blocks one after another
_OWN_FORWARD = {SwinTransformer: SwinTransformerStage, SwinTransformerV2: SwinTransformerV2Stage}


@register_adapter(
    "timm.models.swin_transformer.SwinTransformer",
    "timm.models.swin_transformer_v2.SwinTransformerV2",
    "timm.models.swin_transformer_v2_cr.SwinTransformerV2Cr",
)
class TimmSwinAdapter(HierarchicalAdapter):
    """timm ``SwinTransformer`` / ``SwinTransformerV2`` / ``SwinTransformerV2Cr``: ``norm1``
    output (V1) or the attention input (V2, post-norm) of each stage's blocks on that stage's
    grid."""

    sites = {
        "timm.models.swin_transformer.SwinTransformerBlock": lambda b: MaskSite(
            b.norm1, weigh=weigh_nhwc
        ),
        "timm.models.swin_transformer_v2.SwinTransformerV2Block": _post_norm_site,
        "timm.models.swin_transformer_v2_cr.SwinTransformerV2CrBlock": _post_norm_site,
    }
    layout = "nhwc"
    family = "timm Swin"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, num_prefix_tokens, patch_size)
        stages = model.layers if hasattr(model, "layers") else model.stages
        self._set_stages(
            [
                (list(stage.blocks), None if isinstance(stage.downsample, nn.Identity) else halve)
                for stage in stages
            ]
        )
        self._restart = any(
            type(model).forward is klass.forward
            and type(model).forward_features is klass.forward_features
            and type(model).forward_head is klass.forward_head
            and all(type(s).forward is stage_class.forward for s in model.layers)
            for klass, stage_class in _OWN_FORWARD.items()
            if isinstance(model, klass)
        )

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
        stage, first = self.place(block_index)
        y = x.index_select(0, copies.rows)
        for blk in self.model.layers[stage].blocks[first:]:
            y = blk(y)
        for later in self.model.layers[stage + 1 :]:
            y = later(y)
        return self.model.forward_head(self.model.norm(y))
