"""Adapters found without a registered class: ``target_layer=`` for any pre-norm transformer,
and models that use timm's attribute names (``.blocks`` of blocks with ``.norm1``, and a
``.patch_embed``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_vitrcam.adapters.base import MaskSite, ModelAdapter
from lightning_vitrcam.adapters.timm_blocks import is_post_norm, timm_mask_site

__all__ = ["TargetLayerAdapter", "TimmStyleAdapter"]


def _prefix_count(model: nn.Module, given: int | None) -> int:
    if given is None:
        given = getattr(model, "num_prefix_tokens", None)
        if given is None:
            raise ValueError(
                f"{type(model).__name__} has no 'num_prefix_tokens' attribute: pass"
                " num_prefix_tokens= (the CLS/distillation/register tokens before the patch"
                " tokens, e.g. 1 for torchvision's ViT)"
            )
    if int(given) < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {given}")
    return int(given)


class TimmStyleAdapter(ModelAdapter):
    """Any model with timm's layout: ``model.blocks`` (each with ``norm1``) and
    ``model.patch_embed``; prefix tokens from ``model.num_prefix_tokens``. The copies run
    through the model's own forward (the base class's tail), so nothing else is assumed.
    Blocks are masked where :func:`~lightning_vitrcam.adapters.timm_blocks.timm_mask_site`
    says: the ``norm1`` output of pre-norm blocks, the attention input of timm's post-norm
    blocks."""

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, patch_size)
        self.blocks = list(model.blocks)
        self.num_prefix_tokens = _prefix_count(model, num_prefix_tokens)

    def mask_site(self, block: nn.Module) -> MaskSite:
        return timm_mask_site(block)

    @staticmethod
    def matches(model: nn.Module) -> bool:
        blocks = getattr(model, "blocks", None)
        return (
            isinstance(blocks, nn.Sequential | nn.ModuleList)
            and len(blocks) > 0
            and all(hasattr(b, "norm1") for b in blocks)
            and hasattr(model, "patch_embed")
        )


class TargetLayerAdapter(ModelAdapter):
    """Any pre-norm transformer, given the first norm of the block to explain
    (``target_layer``); its parent module is the block."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, patch_size)
        self.target_layer = target_layer
        self._name, block = self._parent_of(target_layer)
        if is_post_norm(block) and target_layer is getattr(block, "norm1", None):
            raise ValueError(
                f"{type(block).__name__} is a post-norm block: its norm1 follows the attention,"
                " so masking norm1's output is not ViT-ReciproCAM; leave target_layer out (the"
                " timm adapter masks the attention's input and keeps the residual)"
            )
        self.blocks = [block]
        self.num_prefix_tokens = _prefix_count(model, num_prefix_tokens)

    def _parent_of(self, target_layer: nn.Module) -> tuple[str, nn.Module]:
        for name, module in self.model.named_modules():
            if module is target_layer:
                if not name:
                    break
                parent_name = name.rsplit(".", 1)[0] if "." in name else ""
                return parent_name, self.model.get_submodule(parent_name)
        raise ValueError(
            "target_layer is not a submodule of the model: pass the first norm layer of the block"
            " to explain, e.g. model.encoder.layers[-1].ln_1 for torchvision's ViT"
        )

    def first_norm(self, block: nn.Module) -> nn.Module:
        return self.target_layer

    def block_name(self, index: int) -> str:
        return self._name
