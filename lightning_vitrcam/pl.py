"""The callback for the standalone ``pytorch_lightning`` package.

``pytorch_lightning`` and ``lightning.pytorch`` are two copies of the same code with distinct
classes, so :class:`lightning_vitrcam.ViTReciproCAMCallback` (a ``lightning.pytorch``
callback) is not a ``pytorch_lightning.Callback``, which ``pytorch_lightning.Trainer`` and
``pytorch_lightning.cli.LightningCLI`` require. This module's :class:`ViTReciproCAMCallback` is
the same callback, also a ``pytorch_lightning.Callback``. Everything the callback uses works on
either trainer: hooks are looked up across both packages
(:func:`lightning_vitrcam.probes.overrides`), the ``TrainerFn`` values compare equal, both
packages share ``lightning_utilities``' rank-zero state, and the loggers are chosen by class path
(:mod:`lightning_vitrcam.loggers`).

Importing this module imports ``pytorch_lightning``; ``import lightning_vitrcam`` does not.

Example:
    >>> import pytorch_lightning as pl
    >>> from lightning_vitrcam.pl import ViTReciproCAMCallback
    >>> callback = ViTReciproCAMCallback(num_images=8, every_n_epochs=2)
    >>> isinstance(callback, pl.Callback)
    True
    >>> trainer = pl.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

import pytorch_lightning as pl

from lightning_vitrcam.callback import ViTReciproCAMCallback as _ViTReciproCAMCallback

__all__ = ["ViTReciproCAMCallback"]


class ViTReciproCAMCallback(_ViTReciproCAMCallback, pl.Callback):
    """:class:`lightning_vitrcam.ViTReciproCAMCallback` for a ``pytorch_lightning.Trainer``.

    Same arguments, logs and checkpoint state (the state key is the same, so checkpoints move
    between the two packages).

    Example:
        >>> ViTReciproCAMCallback(num_images=4, every_n_steps=50).every_n_steps
        50
    """
