"""timm ``Eva`` (EVA-02, RoPE ViTs, ``use_post_norm``) and ``Beit``.

Both keep timm's layout (``blocks`` of blocks with ``norm1``, ``patch_embed``,
``num_prefix_tokens``) but pass extra arguments to every block (Eva: the rotary embedding,
BEiT: the shared relative position bias), so the copies run through the model's own forward
(the base class's tail), which computes those arguments as the model does. Eva's
``EvaBlockPostNorm`` is masked at the attention's input (see
:mod:`~lightning_vitrcam.adapters.timm_blocks`).

Example:
    >>> import timm
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> eva = timm.create_model("eva02_tiny_patch14_224", img_size=32, patch_size=8, depth=1,
    ...                         embed_dim=32, num_heads=2, num_classes=3)
    >>> a = build_adapter(eva)
    >>> type(a).__name__, a.num_prefix_tokens, a.grid_size((32, 32))
    ('TimmEvaAdapter', 1, (4, 4))
"""

from __future__ import annotations

from lightning_vitrcam.adapters.base import register_adapter
from lightning_vitrcam.adapters.generic import TimmStyleAdapter

__all__ = ["TimmBeitAdapter", "TimmEvaAdapter"]


@register_adapter("timm.models.eva.Eva")
class TimmEvaAdapter(TimmStyleAdapter):
    """timm ``Eva``: class token and ``num_reg_tokens`` registers as prefix tokens."""


@register_adapter("timm.models.beit.Beit")
class TimmBeitAdapter(TimmStyleAdapter):
    """timm ``Beit``: one class token; average pooling with ``fc_norm`` by default."""
