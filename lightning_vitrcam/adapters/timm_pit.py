"""timm ``PoolingVisionTransformer`` (PiT; see :mod:`~lightning_vitrcam.adapters.hierarchical`
for the semantics).

* blocks: ``transformers[s].blocks[j]`` (timm's ViT ``Block``), stage after stage; a stage
  after the first starts with a depthwise strided convolution (``pool``) that shrinks the
  grid, and a linear map of the class token(s);
* block input: ``[B, prefix + H*W, C]``, the class token (and the distillation token of the
  distilled models) first, kept unscaled in every copy;
* masking site: the ``norm1`` output (pre-norm ``x + drop_path1(ls1(attn(norm1(x))))``);
* the model takes the image size it was built for (its position embedding);
* the copies restart at the target block from its kept input and run what the stage's and the
  model's forwards run after it (the rest of the stage's blocks, the later stages, ``norm``,
  ``forward_head``); a stage's forward reshapes with the batch size it read before its blocks,
  so the block input cannot simply grow to one row per copy inside it. A subclass that changes
  a forward is explained by a whole forward per copy instead.

Example:
    >>> import timm, torch
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> pit = timm.create_model("pit_ti_224", img_size=64, depth=(1, 1), heads=(1, 2),
    ...                         base_dims=(8, 8), num_classes=3)
    >>> cam = ViTReciproCAM(pit)
    >>> cam.num_prefix_tokens, cam.block_name, cam(torch.randn(1, 3, 64, 64)).maps.shape
    (1, 'transformers.1.blocks.0', torch.Size([1, 4, 4]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.pit import PoolingVisionTransformer, SequentialTuple, Transformer
from torch import nn

from lightning_vitrcam.adapters.base import Copies, MaskSite, _pair, register_adapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, conv_grid

__all__ = ["TimmPiTAdapter"]


@register_adapter("timm.models.pit.PoolingVisionTransformer")
class TimmPiTAdapter(HierarchicalAdapter):
    """timm PiT: the ``norm1`` output of ``transformers[s].blocks[j]`` on that stage's grid,
    the class (and distillation) tokens kept."""

    sites = {"timm.models.vision_transformer.Block": lambda b: MaskSite(b.norm1)}
    layout = "tokens"
    family = "timm PiT"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        stem = model.patch_embed.conv
        prefix = int(model.cls_token.shape[1])
        super().__init__(model, num_prefix_tokens, patch_size or tuple(stem.stride), prefix)
        self._stem = conv_grid(stem)
        self._set_stages(
            [
                (list(t.blocks), None if t.pool is None else conv_grid(t.pool.conv))
                for t in model.transformers
            ]
        )
        self._restart = (
            type(model).forward is PoolingVisionTransformer.forward
            and type(model).forward_features is PoolingVisionTransformer.forward_features
            and type(model.transformers).forward is SequentialTuple.forward
            and all(type(t).forward is Transformer.forward for t in model.transformers)
        )

    def classifiers(self) -> list[nn.Module]:
        heads = [getattr(self.model, name, None) for name in ("head", "head_dist")]
        return [h for h in heads if isinstance(h, nn.Linear)]

    def input_size(self) -> tuple[int, int] | None:
        return _pair(self.model.patch_embed.img_size)

    def patch_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        expected = self.input_size()
        if tuple(image_size) != expected:
            raise ValueError(
                f"{type(self.model).__name__} takes {expected[0]}x{expected[1]} images (its"
                f" position embedding) but got {image_size[0]}x{image_size[1]}; resize the"
                " images"
            )
        return self._stem(image_size)

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
        h, w = self.block_grid((int(images.shape[-2]), int(images.shape[-1])), block_index)
        y = x.index_select(0, copies.rows)
        for blk in m.transformers[s].blocks[first:]:
            y = blk(y)
        # Transformer.forward from its blocks on, then the later stages and the head
        p = self.num_prefix_tokens
        cls_tokens, y = y[:, :p], y[:, p:]
        y = y.transpose(1, 2).reshape(y.shape[0], -1, h, w)
        for later in m.transformers[s + 1 :]:
            y, cls_tokens = later((y, cls_tokens))
        return m.forward_head(m.norm(cls_tokens))
