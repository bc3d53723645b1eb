"""What the monitoring needs from the training framework it runs in: the host interface.

The core (:class:`~lightning_vitrcam.monitor.Monitor`) and the evaluation read a training
framework through a handful of names, taken from Lightning's ``Trainer`` so that a Lightning
trainer *is* a host as it stands:

* ``strategy``: the collectives (:class:`Collectives`: ``all_gather``,
  ``reduce_boolean_decision``, ``world_size``, ``global_rank``);
* ``precision_plugin``: ``forward_context()`` (autocast or nothing) and ``convert_input()``;
* ``global_rank``, ``world_size``, ``is_global_zero``;
* ``loggers``: where scalars and pictures go (:mod:`~lightning_vitrcam.loggers`);
* ``default_root_dir``: where files go when no logger takes them.

:class:`ProcessHost` implements it for everything that is not Lightning: one process
(:class:`OneProcess`) or the processes of an initialised ``torch.distributed`` group
(:class:`TorchDistributed`: the Hugging Face ``Trainer`` under DDP, ``torchrun`` loops), with
:class:`ForwardPrecision` for autocast.

Example:
    >>> host = ProcessHost()
    >>> host.world_size, host.is_global_zero, host.strategy.all_gather(torch.ones(2)).shape
    (1, True, torch.Size([1, 2]))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "Collectives",
    "ForwardPrecision",
    "Host",
    "OneProcess",
    "PrecisionContext",
    "ProcessHost",
    "TorchDistributed",
    "distributed_collectives",
]


@runtime_checkable
class Collectives(Protocol):
    """The collectives an evaluation takes part in (Lightning's ``Strategy`` names)."""

    world_size: int
    global_rank: int

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[world_size, *tensor.shape]``: every rank's tensor, in rank order."""
        ...

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        """Whether ``decision`` holds on every rank (``all``) or on any."""
        ...


@runtime_checkable
class PrecisionContext(Protocol):
    """How the model is run (Lightning's ``Precision`` names)."""

    def forward_context(self) -> AbstractContextManager[Any]: ...

    def convert_input(self, data: Any) -> Any: ...


@runtime_checkable
class Host(Protocol):
    """What the monitoring reads of the training framework (see the module docstring); a
    Lightning ``Trainer`` is one, :class:`ProcessHost` the others."""

    strategy: Any
    precision_plugin: Any
    global_rank: int
    world_size: int
    is_global_zero: bool
    loggers: Sequence[Any]
    default_root_dir: Any


class OneProcess:
    """The collectives of a single process: nothing to exchange.

    Example:
        >>> OneProcess().reduce_boolean_decision(False)
        False
    """

    world_size = 1
    global_rank = 0

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[None]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        return decision


class TorchDistributed:
    """The collectives of the default ``torch.distributed`` process group (the one the
    Hugging Face ``Trainer``/``accelerate`` and ``torchrun`` scripts initialise). NCCL
    exchanges CUDA tensors, every other back end (gloo) CPU tensors; each tensor comes back on
    the device it was given on."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("torch.distributed is not initialised")
        self._dist = dist
        self.world_size = dist.get_world_size()
        self.global_rank = dist.get_rank()
        nccl = dist.get_backend() == "nccl"
        self._device = torch.device("cuda", torch.cuda.current_device()) if nccl else None

    def _on_wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self._device or torch.device("cpu")).contiguous()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        local = self._on_wire(tensor)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        self._dist.all_gather(parts, local)
        return torch.stack(parts).to(tensor.device)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        votes = self._on_wire(torch.tensor(int(bool(decision))))
        self._dist.all_reduce(votes)  # a sum: how many ranks hold it
        held = int(votes.item())
        return held == self.world_size if all else held > 0


def distributed_collectives() -> Collectives:
    """:class:`TorchDistributed` when ``torch.distributed`` runs more than one process, else
    :class:`OneProcess`.

    Example:
        >>> type(distributed_collectives()).__name__
        'OneProcess'
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributed()
    return OneProcess()


class ForwardPrecision:
    """Runs the explanations under ``torch.autocast(device_type, autocast)`` (None: as the
    model is); a model whose parameters are half precision (``bf16_full_eval``, a model cast
    by hand) gets the probe images in its own dtype, since it cannot take float32 input.

    Example:
        >>> precision = ForwardPrecision(autocast=torch.bfloat16)
        >>> with precision.forward_context():
        ...     torch.ones(2, 2) @ torch.ones(2, 2)
        tensor([[2., 2.],
                [2., 2.]], dtype=torch.bfloat16)
    """

    def __init__(
        self,
        autocast: torch.dtype | None = None,
        device_type: str = "cpu",
        model: nn.Module | None = None,
    ) -> None:
        self.autocast, self.device_type, self.model = autocast, device_type, model

    @contextmanager
    def _autocast(self) -> Iterator[None]:
        assert self.autocast is not None
        with torch.autocast(self.device_type, dtype=self.autocast):
            yield

    def forward_context(self) -> AbstractContextManager[Any]:
        return nullcontext() if self.autocast is None else self._autocast()

    def convert_input(self, data: Any) -> Any:
        if self.autocast is not None or self.model is None or not isinstance(data, torch.Tensor):
            return data
        own = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
        if own in (torch.float16, torch.bfloat16) and data.is_floating_point():
            return data.to(own)
        return data


@dataclass
class ProcessHost:
    """A host for everything that is not Lightning (see the module docstring): collectives,
    precision, loggers and the folder files go to when no logger takes them.

    Example:
        >>> ProcessHost(default_root_dir="runs/vit").global_rank
        0
    """

    strategy: Any = field(default_factory=OneProcess)
    precision_plugin: Any = field(default_factory=ForwardPrecision)
    loggers: list[Any] = field(default_factory=list)
    default_root_dir: str | Path = "."

    @property
    def global_rank(self) -> int:
        return int(self.strategy.global_rank)

    @property
    def world_size(self) -> int:
        return int(self.strategy.world_size)

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def close(self) -> None:
        """Flush and close the loggers that can be closed (a SummaryWriter's event file)."""
        for logger in self.loggers:
            close = getattr(logger, "close", None)
            if callable(close):
                close()
