"""torchvision ``SwinTransformer`` (``swin_t``/``s``/``b``, ``swin_v2_t``/``s``/``b``; see
:mod:`~lightning_vitrcam.adapters.hierarchical` for the semantics).

* blocks: the ``nn.Sequential`` stages of ``features`` (``features[1]``, ``features[3]``, ...),
  stage after stage; the patch mergings between them halve the grid (padding an odd side);
* block input: NHWC ``[B, H, W, C]``; the patch grid is the patch convolution's output (any
  image size, the convolution drops what does not fill a patch);
* masking site: ``SwinTransformerBlock`` (pre-norm, ``x + stochastic_depth(attn(norm1(x)))``)
  the ``norm1`` output; ``SwinTransformerBlockV2`` (post-norm,
  ``x + stochastic_depth(norm1(attn(x)))``) the input of ``attn``, which shifts, pads and
  partitions it itself;
* the copies restart at the target block: the rest of its stage, the later ``features``,
  ``norm``, ``permute``, ``avgpool``, ``flatten`` and ``head``, as the model's forward does.

Example:
    >>> import torch
    >>> from torchvision.models import SwinTransformer
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> tv = SwinTransformer([4, 4], 8, [2, 2], [1, 1], [2, 2], num_classes=3)
    >>> cam = ViTReciproCAM(tv)
    >>> cam.block_name, cam.mask_site.module is tv.features[3][1].norm1
    ('features.3.1', True)
    >>> cam(torch.randn(1, 3, 32, 32)).maps.shape
    torch.Size([1, 4, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_vitrcam.adapters.base import Copies, MaskSite, register_adapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, halve, weigh_nhwc

__all__ = ["TorchvisionSwinAdapter"]


def _conv_out(size: int, conv: nn.Conv2d, dim: int) -> int:
    pad = conv.padding[dim] if isinstance(conv.padding, tuple) else 0
    k, s, d = conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim]
    return (size + 2 * pad - d * (k - 1) - 1) // s + 1


@register_adapter("torchvision.models.swin_transformer.SwinTransformer")
class TorchvisionSwinAdapter(HierarchicalAdapter):
    """torchvision ``SwinTransformer``: ``norm1`` output (V1) or the input of ``attn`` (V2)
    of the blocks of ``features``' stages, on that stage's grid."""

    sites = {
        "torchvision.models.swin_transformer.SwinTransformerBlockV2": lambda b: MaskSite(
            b.attn, on_input=True, weigh=weigh_nhwc
        ),
        "torchvision.models.swin_transformer.SwinTransformerBlock": lambda b: MaskSite(
            b.norm1, weigh=weigh_nhwc
        ),
    }
    layout = "nhwc"
    family = "torchvision Swin"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        self._conv = next(m for m in model.features[0].modules() if isinstance(m, nn.Conv2d))
        super().__init__(model, num_prefix_tokens, patch_size or tuple(self._conv.stride))
        stages, merged, self._feature = [], False, []
        for k, part in enumerate(list(model.features)[1:], start=1):
            if isinstance(part, nn.Sequential):
                stages.append((list(part), halve if merged else None))
                self._feature.append(k)
                merged = False
            else:  # a patch merging between two stages
                merged = True
        self._set_stages(stages)
        from torchvision.models.swin_transformer import SwinTransformer

        self._restart = type(model).forward is SwinTransformer.forward and all(
            type(model.features[k]) is nn.Sequential for k in self._feature
        )

    def patch_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        h, w = (_conv_out(int(s), self._conv, d) for d, s in enumerate(image_size))
        if h < 1 or w < 1:
            raise ValueError(
                f"image size {image_size[0]}x{image_size[1]} is smaller than one patch"
                f" ({self._conv.kernel_size[0]}x{self._conv.kernel_size[1]})"
            )
        return h, w

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
            return super().tail(block_index, block, x, images, copies)
        stage, first = self.place(block_index)
        k = self._feature[stage]
        m = self.model
        y = x.index_select(0, copies.rows)
        for blk in m.features[k][first:]:
            y = blk(y)
        for later in m.features[k + 1 :]:
            y = later(y)
        return m.head(m.flatten(m.avgpool(m.permute(m.norm(y)))))
