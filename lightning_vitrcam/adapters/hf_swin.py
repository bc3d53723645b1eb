"""HF ``SwinForImageClassification`` and ``Swinv2ForImageClassification`` (see
:mod:`~lightning_vitrcam.adapters.hierarchical` for the semantics).

Registered by class path (``transformers`` stays unimported until a model of its brings it):

* blocks: ``<backbone>.encoder.layers[s].blocks[j]``, stage after stage; HF merges patches at
  the *end* of a stage, so stage ``s``'s blocks see ``s`` mergings;
* block input: ``[B, H*W, C]`` with ``input_dimensions`` beside it; the patch embedding pads
  the image to whole patches;
* masking site: ``SwinLayer`` (pre-norm: the shortcut is taken before ``layernorm_before``)
  the ``layernorm_before`` output; ``Swinv2Layer`` (post-norm: ``layernorm_before`` follows
  the attention) the hidden states the attention reads, weighted where its ``attention``
  module receives them: after padding, the cyclic shift and the window partition
  (:func:`~lightning_vitrcam.adapters.hierarchical.weigh_windows`);
* image size: ``config.image_size`` with absolute position embeddings, any size without;
* the copies run through the model's own forward (the block input expanded to one row per
  copy); logits from ``.logits``.

Example:
    >>> import torch
    >>> from transformers import SwinConfig, SwinForImageClassification
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> hf = SwinForImageClassification(SwinConfig(image_size=32, embed_dim=8, window_size=2,
    ...     depths=[2, 2], num_heads=[1, 1], num_labels=3))
    >>> cam = ViTReciproCAM(hf)
    >>> cam.block_name, cam(torch.randn(1, 3, 32, 32)).maps.shape
    ('swin.encoder.layers.1.blocks.1', torch.Size([1, 4, 4]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_vitrcam.adapters.base import MaskSite, _pair, register_adapter
from lightning_vitrcam.adapters.hf import _backbone
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, halve, weigh_windows

__all__ = ["HFSwinAdapter"]


def _post_norm_site(block: nn.Module) -> MaskSite:
    def window() -> tuple[tuple[int, int], tuple[int, int]]:
        return _pair(block.window_size), _pair(block.shift_size)

    return MaskSite(block.attention, on_input=True, weigh=weigh_windows(window, roll_first=False))


@register_adapter(
    "transformers.models.swin.modeling_swin.SwinForImageClassification",
    "transformers.models.swinv2.modeling_swinv2.Swinv2ForImageClassification",
)
class HFSwinAdapter(HierarchicalAdapter):
    """HF ``Swin(v2)ForImageClassification``: ``layernorm_before`` output (Swin) or the
    attention's input (Swin V2, post-norm) of ``encoder.layers[s].blocks[j]``."""

    sites = {
        "transformers.models.swin.modeling_swin.SwinLayer": lambda b: MaskSite(b.layernorm_before),
        "transformers.models.swinv2.modeling_swinv2.Swinv2Layer": _post_norm_site,
    }
    layout = "tokens"
    family = "HF Swin"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, num_prefix_tokens, patch_size or model.config.patch_size)
        self.backbone = _backbone(model)
        stages, merged = [], False
        for stage in self.backbone.encoder.layers:  # HF merges at the end of a stage
            stages.append((list(stage.blocks), halve if merged else None))
            merged = stage.downsample is not None
        self._set_stages(stages)

    def classifiers(self) -> list[nn.Module]:
        head = getattr(self.model, "classifier", None)
        return [head] if isinstance(head, nn.Linear) else []

    def logits(self, output: Any) -> Any:
        if isinstance(output, tuple):  # config.return_dict=False: logits come first (no labels)
            return output[0]
        return output.logits

    def input_size(self) -> tuple[int, int] | None:
        return _pair(self.model.config.image_size)

    def patch_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        expected = self.input_size()
        absolute = getattr(self.backbone.embeddings, "position_embeddings", None) is not None
        if absolute and tuple(image_size) != expected:
            raise ValueError(
                f"{type(self.model).__name__} has absolute position embeddings for"
                f" {expected[0]}x{expected[1]} images (config.image_size) but got"
                f" {image_size[0]}x{image_size[1]}; resize the images"
            )
        assert self.patch_size is not None
        (h, w), (ph, pw) = image_size, self.patch_size
        return -(-int(h) // ph), -(-int(w) // pw)  # the patch embedding pads to whole patches
