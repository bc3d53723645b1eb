"""timm ``MaxxVit`` with MaxViT blocks (``maxvit_*``, ``maxxvit_*``; see
:mod:`~lightning_vitrcam.adapters.hierarchical` for the semantics).

* blocks: the transformer sub-blocks of each MaxViT block (``stages[s].blocks[j]``: a
  convolution, then window attention ``attn_block`` and grid attention ``attn_grid``, each with
  its MLP), stage after stage: ``target_block=-1`` is the grid attention of the last MaxViT
  block, ``-2`` its window attention; convolution-only stages count no blocks;
* block input: NHWC ``[B, H, W, C]`` (``PartitionAttentionCl``) or NCHW ``[B, C, H, W]``
  (``PartitionAttention2d``, ``use_nchw_attn``), on the grid after the MaxViT block's
  convolution (the image over the stage's reduction in ``feature_info``);
* masking site: the ``norm1`` output (pre-norm ``x + drop_path1(ls1(attn(norm1(x))))``, the
  partition into windows or a dilated grid inside);
* the copies run through the model's own forward (the sub-block's input expanded to one row
  per copy).

CoAtNet-style stages (``TransformerBlock2d``, whose first block pools inside its first norm)
and parallel MaxxViT-V2 blocks (window and grid attention on one norm's output at once) are
refused with the reason.

Example:
    >>> import torch
    >>> from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitTransformerCfg
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> cfg = MaxxVitCfg(embed_dim=(8, 16), depths=(1, 1), block_type=("M", "M"),
    ...                  stem_width=8, transformer_cfg=MaxxVitTransformerCfg(dim_head=8))
    >>> maxvit = MaxxVit(cfg, img_size=64, num_classes=3)
    >>> cam = ViTReciproCAM(maxvit)
    >>> cam.block_name, cam(torch.randn(1, 3, 64, 64)).maps.shape
    ('stages.1.blocks.0.attn_grid', torch.Size([1, 8, 8]))
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_vitrcam.adapters.base import MaskSite, _pair, class_path, register_adapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, weigh_nchw, weigh_nhwc

__all__ = ["TimmMaxViTAdapter"]

_M = "timm.models.maxxvit."
_ATTENTION = ("attn_block", "attn_grid")
# blocks without attention: they count no blocks
_CONVOLUTIONS = {_M + "MbConvBlock", _M + "ConvNeXtBlock"}
_REFUSED = {
    _M + "TransformerBlock2d": (
        "CoAtNet-style transformer stages (TransformerBlock2d) pool inside the first block's"
        " first norm, so its attention reads a grid its input does not have; they are not"
        " explained"
    ),
    _M + "ParallelMaxxVitBlock": (
        "parallel MaxxViT-V2 blocks run the window and the grid attention on one norm's output"
        " at once, so ViT-ReciproCAM (mask the attention input, keep the residual, then the"
        " MLP on the result) has no exact counterpart in them"
    ),
}


@register_adapter("timm.models.maxxvit.MaxxVit")
class TimmMaxViTAdapter(HierarchicalAdapter):
    """timm MaxViT: the ``norm1`` output of each MaxViT block's window and grid attention on
    that stage's grid."""

    sites = {
        _M + "PartitionAttentionCl": lambda b: MaskSite(b.norm1, weigh=weigh_nhwc),
        _M + "PartitionAttention2d": lambda b: MaskSite(b.norm1, weigh=weigh_nchw),
    }
    family = "timm MaxViT"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        reductions = {f["module"]: int(f["reduction"]) for f in model.feature_info}
        super().__init__(model, num_prefix_tokens, patch_size or reductions["stem"])
        stages, self._reduction = [], []
        for s, stage in enumerate(model.stages):
            blocks = []
            for block in stage.blocks:
                path = class_path(type(block))
                if path in _REFUSED:
                    raise ValueError(f"{type(model).__name__}: {_REFUSED[path]}")
                if path in _CONVOLUTIONS:
                    continue
                blocks += [getattr(block, n) for n in _ATTENTION if getattr(block, n, None)]
            stages.append((blocks, None))
            self._reduction += [reductions[f"stages.{s}"]] * len(blocks)
        self._set_stages(stages)
        self.layout = (
            "nchw" if class_path(type(self.blocks[0])).endswith("PartitionAttention2d") else "nhwc"
        )

    def input_size(self) -> tuple[int, int] | None:
        return _pair(self.model.img_size)

    def block_grid(self, image_size: tuple[int, int], block_index: int) -> tuple[int, int]:
        r = self._reduction[block_index]
        H, W = image_size
        if H % r or W % r:
            raise ValueError(
                f"{type(self.model).__name__} reduces the image {r}-fold at block"
                f" {block_index}; {H}x{W} is not a multiple of {r}: resize the images"
            )
        return H // r, W // r
