"""Where ViT-ReciproCAM masks a timm block: pre-norm, post-norm or refused.

The paper masks the input of a block's attention and keeps the residual stream. In a pre-norm
block (timm's ``Block``, ``EvaBlock``, BEiT's and CaiT's blocks) that input is the output of
``norm1``. In a post-norm block (``ResPostBlock`` of ``vit_base_patch16_rpn_224``,
``EvaBlockPostNorm`` of Eva with ``use_post_norm=True``, ``ResPostRelPosBlock``) ``norm1``
follows the attention, ``x + norm1(attn(x))``, so masking its output would be another method:
there the attention's own input is masked (``attn(F_k)`` with ``F_k`` the window-weighted
block input, prefix tokens kept) and the residual ``x`` stays whole, which carries the paper's
semantics over. Parallel blocks feed one norm's output to the attention and the MLP at once
(``x + attn(n(x)) + mlp(n(x))``); the paper's ``y = x + attn(F_k); y + mlp(norm2(y))`` has no
counterpart there, so they are refused.

Example:
    >>> import timm
    >>> vit = timm.create_model("vit_base_patch16_rpn_224", img_size=32, patch_size=8, depth=1,
    ...                         embed_dim=32, num_heads=2)
    >>> site = timm_mask_site(vit.blocks[0])
    >>> site.module is vit.blocks[0].attn, site.on_input
    (True, True)
"""

from __future__ import annotations

from torch import nn

from lightning_vitrcam.adapters.base import MaskSite, class_path

__all__ = ["PARALLEL_BLOCKS", "POST_NORM_BLOCKS", "is_post_norm", "timm_mask_site"]

#: blocks whose ``norm1`` follows the attention: the attention's input is masked
POST_NORM_BLOCKS: frozenset[str] = frozenset(
    {
        "timm.models.vision_transformer.ResPostBlock",
        "timm.models.eva.EvaBlockPostNorm",
        "timm.models.vision_transformer_relpos.ResPostRelPosBlock",
    }
)
#: blocks whose attention and MLP read one norm's output in parallel: refused
PARALLEL_BLOCKS: frozenset[str] = frozenset(
    {
        "timm.models.vision_transformer.ParallelScalingBlock",
        "timm.models.vision_transformer.DiffParallelScalingBlock",
        "timm.models.vision_transformer.ParallelThingsBlock",
    }
)


def _kind(block: nn.Module) -> str | None:
    for klass in type(block).__mro__:
        path = class_path(klass)
        if path in POST_NORM_BLOCKS:
            return "post"
        if path in PARALLEL_BLOCKS:
            return "parallel"
    return None


def is_post_norm(block: nn.Module) -> bool:
    """Whether ``block`` is one of timm's post-norm blocks (``norm1`` after the attention)."""
    return _kind(block) == "post"


def timm_mask_site(block: nn.Module) -> MaskSite:
    """The output of ``norm1`` for pre-norm blocks, the attention's input for post-norm ones;
    a ``ValueError`` for parallel blocks and blocks without ``norm1``."""
    kind = _kind(block)
    name = type(block).__name__
    if kind == "post":
        return MaskSite(block.attn, on_input=True)
    if kind == "parallel":
        raise ValueError(
            f"{name} runs the attention and the MLP in parallel on one norm's output, so"
            " ViT-ReciproCAM (mask the attention input, keep the residual, then the MLP on the"
            " result) has no exact counterpart in it; explain a model with sequential blocks"
        )
    if not hasattr(block, "norm1"):
        raise ValueError(
            f"{name} has no 'norm1': pass target_layer=<the norm whose output feeds the block's"
            " attention> and num_prefix_tokens=..."
        )
    return MaskSite(block.norm1)
