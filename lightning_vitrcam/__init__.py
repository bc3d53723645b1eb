"""lightning-vitrcam: watch what a Vision Transformer looks at while it trains.

Three entry points share one core (:class:`~lightning_vitrcam.monitor.Monitor`):
:class:`ViTReciproCAMCallback` (Lightning), :class:`ViTMonitor` (plain PyTorch loops) and
``lightning_vitrcam.hf.ViTReciproCAMTrainerCallback`` (the Hugging Face ``Trainer``; importing
it imports ``transformers``, which ``import lightning_vitrcam`` never does).
"""

from lightning_vitrcam.callback import ExplanationSkippedWarning, ViTReciproCAMCallback
from lightning_vitrcam.explainer import ReciproCAMResult, ViTReciproCAM
from lightning_vitrcam.loop import ViTMonitor
from lightning_vitrcam.monitor import EvaluationResult
from lightning_vitrcam.render import Style
from lightning_vitrcam.shortcut import PossibleShortcutWarning, ShortcutAlarm

__all__ = [
    "EvaluationResult",
    "ExplanationSkippedWarning",
    "PossibleShortcutWarning",
    "ReciproCAMResult",
    "ShortcutAlarm",
    "Style",
    "ViTMonitor",
    "ViTReciproCAM",
    "ViTReciproCAMCallback",
]
__version__ = "0.1.0"
