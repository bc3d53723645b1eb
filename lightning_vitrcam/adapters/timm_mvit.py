"""timm ``MultiScaleVit`` (MViT v2; see :mod:`~lightning_vitrcam.adapters.hierarchical` for
the semantics).

* blocks: ``stages[s].blocks[j]``, stage after stage; a stage's first block pools its queries
  (a strided convolution or pooling, ``attn.pool_q``), so its *input* still has the previous
  grid and the blocks after it the pooled one; the map of a block has its input's grid;
* block input: ``[B, prefix + H*W, C]``, the class token first when the model has one
  (``num_prefix_tokens``), kept unscaled in every copy;
* masking site: the attention's input. MViT blocks are pre-norm, ``attn(norm1(x))``, but a
  block that widens the channels takes its residual from ``norm1``'s output as well
  (``shortcut_proj_attn(norm1(x))``): masking the attention's input leaves that residual whole,
  as for every other block;
* the patch grid is the stem convolution's output; the model takes the image size it was
  built for (absolute and relative position embeddings);
* the copies run through the model's own forward (the block input expanded to one row per
  copy).

Example:
    >>> import torch
    >>> from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> cfg = MultiScaleVitCfg(depths=(1, 2), embed_dim=8, stride_q=((1, 1), (2, 2)))
    >>> mvit = MultiScaleVit(cfg, img_size=64, num_classes=3)
    >>> cam = ViTReciproCAM(mvit)
    >>> cam.block_name, cam(torch.randn(1, 3, 64, 64)).maps.shape
    ('stages.1.blocks.1', torch.Size([1, 8, 8]))
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_vitrcam.adapters.base import MaskSite, register_adapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, Shrink, conv_grid

__all__ = ["TimmMViTAdapter"]

_BLOCK = "timm.models.mvitv2.MultiScaleBlock"


@register_adapter("timm.models.mvitv2.MultiScaleVit")
class TimmMViTAdapter(HierarchicalAdapter):
    """timm MViT v2: the attention input of ``stages[s].blocks[j]`` on that block's input
    grid, the class token (if any) kept."""

    sites = {_BLOCK: lambda b: MaskSite(b.attn, on_input=True)}
    layout = "tokens"
    family = "timm MViT v2"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        stem = model.patch_embed.proj
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        super().__init__(model, num_prefix_tokens, patch_size or tuple(stem.stride), prefix)
        self._stem = conv_grid(stem)
        # every block's input grid: the stem's, then each query pooling on the way
        blocks = [b for stage in model.stages for b in stage.blocks]
        shrinks: list[Shrink | None] = [None]
        for b in blocks[:-1]:
            pool = getattr(getattr(b, "attn", None), "pool_q", None)
            shrinks.append(None if pool is None else conv_grid(pool))
        self._set_stages([([b], shrink) for b, shrink in zip(blocks, shrinks, strict=True)])

    def patch_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self._stem(image_size)

    def input_size(self) -> tuple[int, int] | None:
        return None
