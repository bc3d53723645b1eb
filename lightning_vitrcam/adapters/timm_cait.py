"""timm ``Cait``: the patch blocks carry no class token.

CaiT runs ``blocks`` on the patch tokens only; the class token joins afterwards in
``blocks_token_only`` (class attention). The blocks ``target_block`` indexes are ``blocks``, with
**0** prefix tokens (``model.num_prefix_tokens`` counts the class token of the later stage);
each copy then runs the later patch blocks, the class-attention blocks, the norm and the head
as the model's own forward does.

Example:
    >>> import timm
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> cait = timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, depth=2,
    ...                          embed_dim=32, num_heads=2, num_classes=3)
    >>> a = build_adapter(cait)
    >>> type(a).__name__, a.num_prefix_tokens, len(a.blocks)
    ('TimmCaitAdapter', 0, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_vitrcam.adapters.base import register_adapter
from lightning_vitrcam.adapters.generic import TimmStyleAdapter

__all__ = ["TimmCaitAdapter"]


@register_adapter("timm.models.cait.Cait")
class TimmCaitAdapter(TimmStyleAdapter):
    """timm ``Cait``: ``blocks`` (patch tokens only, no prefix tokens)."""

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        # the class token is not in the patch blocks' sequence
        super().__init__(model, 0 if num_prefix_tokens is None else num_prefix_tokens, patch_size)
