"""timm ``Hiera`` (see :mod:`~lightning_vitrcam.adapters.hierarchical` for the semantics).

* blocks: ``blocks[i]`` (one list over all stages); a stage's first block pools its queries, so
  its *input* still has the previous grid and the blocks after it the pooled one; the map of a
  block has its input's grid;
* block input: ``[B, H*W, C]`` in Hiera's *unrolled* token order (the tokens of a mask unit
  are contiguous, so that pooling is a max over contiguous chunks), not row-major: the weights
  are laid out in that order (:func:`~lightning_vitrcam.adapters.hierarchical.weigh_reordered`),
  read from the model's own ``reroll`` (which puts a block's tokens back on the grid);
* masking site: the attention's input. Hiera blocks are pre-norm, ``attn(norm1(x))``, but a
  block that widens the channels takes its residual from ``norm1``'s output as well
  (``proj(norm1(x))``, max-pooled): masking the attention's input leaves it whole;
* the model takes the image size it was built for (its unrolled order and position embedding);
* the copies run through the model's own forward (the block input expanded to one row per
  copy).

Example:
    >>> import timm, torch
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> hiera = timm.create_model("hiera_tiny_224", img_size=64, embed_dim=8, num_heads=1,
    ...                           stages=(1, 2), q_pool=1, mask_unit_size=(4, 4),
    ...                           num_classes=3)
    >>> cam = ViTReciproCAM(hiera)
    >>> cam.block_name, cam(torch.randn(1, 3, 64, 64)).maps.shape
    ('blocks.2', torch.Size([1, 8, 8]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_vitrcam.adapters.base import MaskSite, register_adapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, weigh_reordered

__all__ = ["TimmHieraAdapter"]


@register_adapter("timm.models.hiera.Hiera")
class TimmHieraAdapter(HierarchicalAdapter):
    """timm Hiera: the attention input of ``blocks[i]`` on that block's input grid, the
    weights in the unrolled token order."""

    layout = "tokens"
    family = "timm Hiera"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, num_prefix_tokens, patch_size or tuple(model.patch_stride))
        if len(model.tokens_spatial_shape) != 2:
            raise ValueError("only 2-d (image) Hiera models are explained, not video ones")
        self._set_stages([([b], None) for b in model.blocks])
        self._orders: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}

    def _order(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The grid index of every position of block ``index``'s input and its grid, worked
        out once per block (:meth:`_reroll_order`)."""
        if index not in self._orders:
            self._orders[index] = self._reroll_order(index)
        return self._orders[index]

    def _reroll_order(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The grid index of every position of block ``index``'s input, and its grid: the
        model's reroll of the previous block's output (the unroll's order for the first)."""
        _, size = self.model.reroll.schedule[max(index - 1, 0)]
        h, w = (int(v) for v in size)
        positions = torch.arange(h * w, dtype=torch.float64).view(1, h * w, 1)
        spatial = self.model.reroll(positions, max(index - 1, 0))  # [1, h, w, 1]
        # spatial[i, j] is the sequence position of grid token (i, j)
        order = torch.empty(h * w, dtype=torch.long)
        order[spatial.reshape(-1).long()] = torch.arange(h * w)
        return order, (h, w)

    def mask_site(self, block: nn.Module) -> MaskSite:
        index = next(i for i, b in enumerate(self.blocks) if b is block)
        order, _ = self._order(index)
        return MaskSite(block.attn, on_input=True, weigh=weigh_reordered(order))

    def block_grid(self, image_size: tuple[int, int], block_index: int) -> tuple[int, int]:
        expected = tuple(
            t * s
            for t, s in zip(self.model.tokens_spatial_shape, self.model.patch_stride, strict=True)
        )
        if tuple(image_size) != expected:
            raise ValueError(
                f"{type(self.model).__name__} takes {expected[0]}x{expected[1]} images (its"
                f" unrolled token order and position embedding) but got"
                f" {image_size[0]}x{image_size[1]}; resize the images"
            )
        return self._order(block_index % len(self.blocks))[1]

    def input_size(self) -> tuple[int, int] | None:
        shape, stride = self.model.tokens_spatial_shape, self.model.patch_stride
        return int(shape[0] * stride[0]), int(shape[1] * stride[1])
