"""lightning-vitrcam: watch what a Vision Transformer looks at while it trains."""

from lightning_vitrcam.callback import ExplanationSkippedWarning, ViTReciproCAMCallback
from lightning_vitrcam.explainer import ReciproCAMResult, ViTReciproCAM
from lightning_vitrcam.shortcut import PossibleShortcutWarning

__all__ = [
    "ExplanationSkippedWarning",
    "PossibleShortcutWarning",
    "ReciproCAMResult",
    "ViTReciproCAM",
    "ViTReciproCAMCallback",
]
__version__ = "0.1.0"
