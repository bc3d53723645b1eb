"""HF ``HieraForImageClassification`` (see :mod:`~lightning_vitrcam.adapters.hierarchical` for
the semantics, and :mod:`~lightning_vitrcam.adapters.timm_hiera` for timm's Hiera).

Registered by class path (``transformers`` stays unimported until a model of its brings it):

* blocks: ``hiera.encoder.stages[s].layers[j]``, stage after stage; a stage's first layer
  pools its queries, so its *input* still has the previous grid; the map of a layer has its
  input's grid;
* layer input: ``[B, H*W, C]`` in Hiera's unrolled token order; the weights are laid out in it
  with the encoder's own ``reroll`` (which puts a stage's tokens back on the grid);
* masking site: the attention's input (a widening layer's residual is a projection of
  ``layernorm_before``'s output, kept whole);
* ``config.image_size`` images (the unrolled order and the position embedding);
* the copies run through the model's own forward (the layer input expanded to one row per
  copy); logits from ``.logits``.

Example:
    >>> import torch
    >>> from transformers import HieraConfig, HieraForImageClassification
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> hf = HieraForImageClassification(HieraConfig(image_size=[64, 64], embed_dim=8,
    ...     depths=[1, 2], num_heads=[1, 1], num_query_pool=1, masked_unit_size=[4, 4],
    ...     num_labels=3))
    >>> cam = ViTReciproCAM(hf)
    >>> cam.block_name, cam(torch.randn(1, 3, 64, 64)).maps.shape
    ('hiera.encoder.stages.1.layers.1', torch.Size([1, 8, 8]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_vitrcam.adapters.base import MaskSite, _pair, register_adapter
from lightning_vitrcam.adapters.hierarchical import HierarchicalAdapter, weigh_reordered

__all__ = ["HFHieraAdapter"]


@register_adapter("transformers.models.hiera.modeling_hiera.HieraForImageClassification")
class HFHieraAdapter(HierarchicalAdapter):
    """HF Hiera: the attention input of ``encoder.stages[s].layers[j]`` on that layer's input
    grid, the weights in the unrolled token order."""

    layout = "tokens"
    family = "HF Hiera"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, num_prefix_tokens, patch_size or model.config.patch_stride)
        if len(model.config.image_size) != 2:
            raise ValueError("only 2-d (image) Hiera models are explained, not video ones")
        self.encoder = model.hiera.encoder
        stages = [list(stage.layers) for stage in self.encoder.stages]
        self._set_stages([(layers, None) for layers in stages])
        self._orders: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}

    def _order(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The grid index of every position of block ``index``'s input and its grid, worked
        out once per block (:meth:`_reroll_order`)."""
        if index not in self._orders:
            self._orders[index] = self._reroll_order(index)
        return self._orders[index]

    def _reroll_order(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The grid index of every position of layer ``index``'s input, and its grid: the
        encoder's reroll of the stage whose output it is (a stage's first layer reads the
        previous stage's output)."""
        stage, first = self.place(index)
        source = max(stage - 1, 0) if first == 0 else stage
        _, size = self.encoder.schedule[source]
        h, w = (int(v) for v in size)
        positions = torch.arange(h * w, dtype=torch.float64).view(1, h * w, 1)
        spatial = self.encoder.reroll(positions, stage_idx=source)  # [1, h, w, 1]
        order = torch.empty(h * w, dtype=torch.long)
        order[spatial.reshape(-1).long()] = torch.arange(h * w)
        return order, (h, w)

    def mask_site(self, block: nn.Module) -> MaskSite:
        index = next(i for i, b in enumerate(self.blocks) if b is block)
        order, _ = self._order(index)
        return MaskSite(block.attn, on_input=True, weigh=weigh_reordered(order))

    def classifiers(self) -> list[nn.Module]:
        head = getattr(self.model, "classifier", None)
        return [head] if isinstance(head, nn.Linear) else []

    def logits(self, output: Any) -> Any:
        if isinstance(output, tuple):  # config.return_dict=False: logits come first (no labels)
            return output[0]
        return output.logits

    def input_size(self) -> tuple[int, int] | None:
        return _pair(self.model.config.image_size)

    def block_grid(self, image_size: tuple[int, int], block_index: int) -> tuple[int, int]:
        expected = self.input_size()
        if tuple(image_size) != expected:
            raise ValueError(
                f"{type(self.model).__name__} takes {expected[0]}x{expected[1]} images"
                f" (config.image_size) but got {image_size[0]}x{image_size[1]}; resize the"
                " images"
            )
        return self._order(block_index % len(self.blocks))[1]
