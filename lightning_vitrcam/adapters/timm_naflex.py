"""timm ``NaFlexVit`` on ``[B, C, H, W]`` images.

NaFlexVit embeds images with ``embeds`` (no ``patch_embed``) and resamples its position
embedding to any grid, so the patch size comes from ``embeds.patch_size`` and the grid from
``embeds.dynamic_feat_size``. Its blocks are timm blocks, masked as in
:mod:`~lightning_vitrcam.adapters.timm_blocks`; the copies run through the model's own forward.
Pre-patchified NaFlex dictionaries (variable sequence lengths, padding masks) are not images
and are not explained: pass the images themselves.

Example:
    >>> import timm
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> m = timm.create_model("naflexvit_base_patch16_gap", img_size=32, patch_size=8,
    ...                       depth=1, embed_dim=32, num_heads=2, num_classes=3)
    >>> a = build_adapter(m)  # this config has a class token and 3 register tokens
    >>> type(a).__name__, a.num_prefix_tokens, a.grid_size((40, 24))
    ('TimmNaFlexAdapter', 4, (5, 3))
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_vitrcam.adapters.base import MaskSite, ModelAdapter, _pair, register_adapter
from lightning_vitrcam.adapters.generic import _prefix_count
from lightning_vitrcam.adapters.timm_blocks import timm_mask_site

__all__ = ["TimmNaFlexAdapter"]


@register_adapter("timm.models.naflexvit.NaFlexVit")
class TimmNaFlexAdapter(ModelAdapter):
    """timm ``NaFlexVit``: ``blocks``, ``num_prefix_tokens``, patch size from ``embeds``."""

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, patch_size or model.embeds.patch_size)
        self.blocks = list(model.blocks)
        self.num_prefix_tokens = _prefix_count(model, num_prefix_tokens)

    def mask_site(self, block: nn.Module) -> MaskSite:
        return timm_mask_site(block)

    def input_size(self) -> tuple[int, int] | None:
        size = getattr(self.model.embeds, "default_img_size", None)
        return None if size is None else _pair(size)

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        h, w = self.model.embeds.dynamic_feat_size(tuple(image_size))
        if not getattr(self.model.embeds, "dynamic_img_pad", False):
            ph, pw = self.model.embeds.patch_size
            if image_size[0] % ph or image_size[1] % pw:
                raise ValueError(
                    f"image size {image_size[0]}x{image_size[1]} is not a multiple of the patch"
                    f" size {ph}x{pw}"
                )
        return int(h), int(w)
