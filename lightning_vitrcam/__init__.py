"""lightning-vitrcam: watch what a Vision Transformer looks at while it trains."""

from lightning_vitrcam.callback import ExplanationSkippedWarning, ViTReciproCAMCallback
from lightning_vitrcam.explainer import ReciproCAMResult, ViTReciproCAM
from lightning_vitrcam.render import Style
from lightning_vitrcam.shortcut import PossibleShortcutWarning, ShortcutAlarm

__all__ = [
    "ExplanationSkippedWarning",
    "PossibleShortcutWarning",
    "ReciproCAMResult",
    "ShortcutAlarm",
    "Style",
    "ViTReciproCAM",
    "ViTReciproCAMCallback",
]
__version__ = "0.1.0"
