"""Model families ViT-ReciproCAM is not carried over to here, each with its reason.

Hierarchical vision transformers are explained at one block of one stage (the library's
extension beyond the paper, :mod:`~lightning_vitrcam.adapters.hierarchical`): Swin (timm,
torchvision, HF), PVT v2, Twins, MViT v2, Hiera and MaxViT (timm). What remains refused:

* video models (torchvision's ``MViT`` and ``SwinTransformer3d``): their tokens are a
  space-time grid and the explainer takes ``[B, C, H, W]`` images;
* HF backbones without a classification head (``SwinModel``, ``Swinv2Model``,
  ``HieraModel``): they return hidden states, not logits; their ``...ForImageClassification``
  classes are the ones to explain;
* hierarchical families whose blocks no adapter has been written for and checked against a
  literal one-copy-per-forward reference (timm ``HieraDet``, SAM2's Hiera): rather than
  explain it with another masking site, or fail on a token count, it is refused.

Example:
    >>> from torchvision.models.video.swin_transformer import SwinTransformer3d
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> video = SwinTransformer3d([2, 4, 4], 8, [1, 1], [1, 1], [2, 2, 2], num_classes=3)
    >>> build_adapter(video)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: SwinTransformer3d is a video model...
"""

from __future__ import annotations

from torch import nn

from lightning_vitrcam.adapters.base import RefusedModel, register_adapter

__all__ = ["BackboneRefusal", "HierarchicalRefusal", "VideoRefusal"]

_EXPLAINED = (
    "explained without configuration: plain ViTs (timm VisionTransformer/DeiT/Eva/BEiT/CaiT/"
    "NaFlexVit, HF ViT/DeiT/DINOv2, torchvision ViT) and hierarchical ones (Swin in timm,"
    " torchvision and HF; Hiera in timm and HF; timm PVT v2, Twins, MViT v2, MaxViT, PiT);"
    " see docs/models.md"
)


@register_adapter(
    "torchvision.models.video.mvit.MViT",
    "torchvision.models.video.swin_transformer.SwinTransformer3d",
)
class VideoRefusal(RefusedModel):
    """Video transformers: a space-time token grid; the explainer takes images."""

    @classmethod
    def reason(cls, model: nn.Module) -> str:
        return (
            f"{type(model).__name__} is a video model: its tokens lie on a space-time grid and"
            " it takes [B, C, T, H, W] clips, while ViT-ReciproCAM here explains images"
            f" ([B, C, H, W]) with one masked copy per place of a 2-d grid ({_EXPLAINED})"
        )


@register_adapter(
    "transformers.models.swin.modeling_swin.SwinModel",
    "transformers.models.swinv2.modeling_swinv2.Swinv2Model",
    "transformers.models.hiera.modeling_hiera.HieraModel",
)
class BackboneRefusal(RefusedModel):
    """HF backbones: hidden states out, no logits to explain."""

    @classmethod
    def reason(cls, model: nn.Module) -> str:
        head = type(model).__name__.replace("Model", "ForImageClassification")
        return (
            f"{type(model).__name__} is a backbone without a classification head: it returns"
            " hidden states, not logits, so there is no class score to explain; explain the"
            f" classifier that holds it (e.g. {head}, which is supported) or pass model_attr="
            " pointing at your classifier"
        )


@register_adapter(
    "timm.models.hieradet_sam2.HieraDet",
)
class HierarchicalRefusal(RefusedModel):
    """Hierarchical families without an adapter checked against a literal reference."""

    @classmethod
    def reason(cls, model: nn.Module) -> str:
        return (
            f"{type(model).__name__} is a hierarchical vision transformer whose blocks no"
            " adapter has been written for and checked against a literal one-copy-per-forward"
            " reference (where its attention input is, in which token order and on which"
            " grid), so it is refused rather than explained with another masking site. "
            f"{_EXPLAINED[0].upper()}{_EXPLAINED[1:]}; for this model use a CAM method on its"
            " last stage's feature map (e.g. ReciproCAM or Grad-CAM)"
        )
