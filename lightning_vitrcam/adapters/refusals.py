"""Vision transformers ViT-ReciproCAM is not defined for: hierarchical models.

Swin, MViT, Hiera, PiT, PVT and Twins change the token grid between stages (patch merging,
pooling attention) and attend within windows or over pooled keys. ViT-ReciproCAM makes one
masked copy per token of one block's sequence and reads the prediction of each copy through the
rest of an isotropic transformer; in a hierarchical model a block's tokens are NHWC maps or
unrolled windows at one stage's resolution, later stages merge them, and the paper's
prefix/spatial split does not exist. Rather than explain them with other semantics (or fail
on a token count), they are refused with this reason.

Example:
    >>> import timm
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=2,
    ...                          embed_dim=8, depths=(1, 1), num_heads=(1, 1))
    >>> build_adapter(swin)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: SwinTransformer is a hierarchical vision transformer...
"""

from __future__ import annotations

from torch import nn

from lightning_vitrcam.adapters.base import RefusedModel, register_adapter

__all__ = ["HierarchicalRefusal"]


@register_adapter(
    "timm.models.swin_transformer.SwinTransformer",
    "timm.models.swin_transformer_v2.SwinTransformerV2",
    "timm.models.swin_transformer_v2_cr.SwinTransformerV2Cr",
    "timm.models.mvitv2.MultiScaleVit",
    "timm.models.hiera.Hiera",
    "timm.models.hieradet_sam2.HieraDet",
    "timm.models.pit.PoolingVisionTransformer",
    "timm.models.pvt_v2.PyramidVisionTransformerV2",
    "timm.models.twins.Twins",
    "torchvision.models.swin_transformer.SwinTransformer",
    "torchvision.models.video.mvit.MViT",
    "torchvision.models.video.swin_transformer.SwinTransformer3d",
    "transformers.models.swin.modeling_swin.SwinModel",
    "transformers.models.swin.modeling_swin.SwinForImageClassification",
    "transformers.models.swinv2.modeling_swinv2.Swinv2Model",
    "transformers.models.swinv2.modeling_swinv2.Swinv2ForImageClassification",
    "transformers.models.hiera.modeling_hiera.HieraModel",
    "transformers.models.hiera.modeling_hiera.HieraForImageClassification",
)
class HierarchicalRefusal(RefusedModel):
    """Swin / MViT / Hiera / PiT / PVT / Twins: the token grid changes between stages."""

    @classmethod
    def reason(cls, model: nn.Module) -> str:
        return (
            f"{type(model).__name__} is a hierarchical vision transformer: its token grid"
            " changes resolution between stages (patch merging or pooling) and its blocks"
            " attend within windows or over pooled tokens, so ViT-ReciproCAM's one masked copy"
            " per token of one block's sequence (prefix tokens kept, the rest read by the later"
            " blocks of an isotropic ViT) is not defined the same way. ViT-ReciproCAM explains"
            " plain ViTs (timm VisionTransformer/DeiT/Eva/BEiT/CaiT/NaFlexVit, HF ViT/DeiT/"
            "DINOv2, torchvision ViT); for a hierarchical model use a CAM method on its last"
            " stage's feature map (e.g. ReciproCAM or Grad-CAM)"
        )
