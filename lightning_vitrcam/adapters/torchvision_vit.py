"""torchvision's ``VisionTransformer`` (``vit_b_16`` and friends).

Blocks are ``encoder.layers`` (``EncoderBlock``: ``ln_1 -> self_attention -> dropout +
residual -> ln_2 -> mlp``), one class token, the patch size and the (square) image size are
attributes of the model. The copies run through the model's own forward.

Example:
    >>> from torchvision.models import VisionTransformer
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> tv = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
    ...                        hidden_dim=32, mlp_dim=64, num_classes=3)
    >>> a = build_adapter(tv)
    >>> type(a).__name__, a.num_prefix_tokens, a.grid_size((32, 32)), a.block_name(1)
    ('TorchvisionViTAdapter', 1, (4, 4), 'encoder.layers.encoder_layer_1')
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_vitrcam.adapters.base import ModelAdapter, module_name, register_adapter
from lightning_vitrcam.adapters.generic import _prefix_count

__all__ = ["TorchvisionViTAdapter"]


@register_adapter("torchvision.models.vision_transformer.VisionTransformer")
class TorchvisionViTAdapter(ModelAdapter):
    """torchvision ``VisionTransformer``: ``encoder.layers``, ``ln_1``, 1 prefix token."""

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, patch_size or model.patch_size)
        self.blocks = list(model.encoder.layers)
        # the class token torchvision prepends in forward
        self.num_prefix_tokens = _prefix_count(
            model, 1 if num_prefix_tokens is None else num_prefix_tokens
        )

    def first_norm(self, block: nn.Module) -> nn.Module:
        return block.ln_1

    def classifiers(self) -> list[nn.Module]:
        return [m for m in self.model.heads.modules() if isinstance(m, nn.Linear)]

    def block_name(self, index: int) -> str:
        return module_name(self.model, self.blocks[index], f"encoder.layers.{index}")

    def input_size(self) -> tuple[int, int] | None:
        return (int(self.model.image_size), int(self.model.image_size))

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        size = int(self.model.image_size)
        if tuple(image_size) != (size, size):
            raise ValueError(
                f"torchvision's VisionTransformer takes {size}x{size} images but got"
                f" {image_size[0]}x{image_size[1]}; resize the images"
            )
        p = int(self.model.patch_size)
        return size // p, size // p
