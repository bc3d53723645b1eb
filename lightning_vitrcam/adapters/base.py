"""What the explainer needs to know about a model family, and the registry that picks it.

A :class:`ModelAdapter` knows a model's transformer blocks, the first norm of a block (whose
output ViT-ReciproCAM masks), how many prefix tokens precede the spatial ones, the token grid
for an image size, how to read logits from the model's output and how to run the masked copies
from a block to the logits. The explainer asks these questions and nothing else, so a new model
family is one small adapter class registered for the family's class path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lightning_vitrcam.adapters.fast_spec import FamilySpec

__all__ = [
    "Copies",
    "MaskSite",
    "Weigh",
    "ModelAdapter",
    "RefusedModel",
    "adapter_class_for",
    "call_input",
    "class_path",
    "module_name",
    "on_input",
    "register_adapter",
    "registered_adapter",
    "unwrap_model",
    "weigh_tokens",
]

# keyword names under which libraries pass a block's hidden states (HF layers may be called
# with hidden_states=... in transformers 5); positional calls are the common case
_HIDDEN_KEYWORDS = ("hidden_states", "x", "input", "hidden_state")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The eager module behind ``torch.compile`` (and DDP/DataParallel) wrappers.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> unwrap_model(torch.nn.DataParallel(m)) is m
        True
    """
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


def class_path(cls: type) -> str:
    """``module.QualName`` of a class, the key of the adapter registry.

    Example:
        >>> class_path(torch.nn.Linear)
        'torch.nn.modules.linear.Linear'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def module_name(model: nn.Module, module: nn.Module, default: str) -> str:
    """The attribute path of ``module`` inside ``model`` (``default`` when it is not inside)."""
    for name, sub in model.named_modules():
        if sub is module:
            return name
    return default


def call_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden states a block (or attention) is called with: the first positional argument,
    else the keyword argument libraries use for them (``hidden_states``, ``x``, ...).

    Example:
        >>> t = torch.zeros(1)
        >>> call_input((t,), {}) is t, call_input((), {"hidden_states": t}) is t
        (True, True)
    """
    if args:
        return args[0]
    for key in _HIDDEN_KEYWORDS:
        if key in kwargs:
            return kwargs[key]
    raise RuntimeError(
        f"cannot find the hidden states among the call's keyword arguments {sorted(kwargs)}"
    )


def _replace_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], value: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (value,) + tuple(args[1:]), kwargs
    for key in _HIDDEN_KEYWORDS:
        if key in kwargs:
            return args, {**kwargs, key: value}
    raise RuntimeError(
        f"cannot find the hidden states among the keyword arguments {sorted(kwargs)}"
    )


@contextlib.contextmanager
def on_input(
    module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """Call ``fn`` on ``module``'s hidden-states input before each of its forwards (passed
    positionally or by keyword); a tensor it returns replaces the input. Removed on any exit.

    Example:
        >>> lin = torch.nn.Linear(2, 2)
        >>> with on_input(lin, lambda x: x * 0):
        ...     torch.equal(lin(torch.ones(1, 2)), lin.bias[None].detach())
        True
    """

    def pre(
        _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        out = fn(call_input(args, kwargs))
        return None if out is None else _replace_input(args, kwargs, out)

    handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = tuple(v)
    return (int(a), int(b))


@dataclass(frozen=True)
class Copies:
    """One chunk of masked copies: ``rows[i]`` is the image of copy ``i`` (a device tensor),
    and images ``first:stop`` are the ones the chunk touches (host ints, no device sync)."""

    rows: torch.Tensor
    first: int
    stop: int


#: ``weigh(t, weight, grid)``: the site's tensor ``t`` for a chunk of ``N`` copies with each
#: copy's window weights ``weight`` ``[N, prefix + h*w]`` (prefix first, spatial row-major over
#: the ``grid = (h, w)``) applied to its tokens; the one place a token layout is spelled out
Weigh = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


def weigh_tokens(t: torch.Tensor, weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Weights on a ``[N, T, C]`` sequence (tokens on dim 1): the isotropic ViTs' layout, and
    HF Swin's unrolled ``[N, h*w, C]``.

    Example:
        >>> t = torch.ones(2, 3, 4)
        >>> weigh_tokens(t, torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]]), (1, 2))[:, :, 0]
        tensor([[1.0000, 0.5000, 0.0000],
                [0.0000, 1.0000, 1.0000]])
    """
    return t * weight.to(t.dtype).unsqueeze(-1)


@dataclass(frozen=True)
class MaskSite:
    """Where ViT-ReciproCAM applies a copy's window weights: the output of ``module`` (a
    pre-norm block's first norm, the paper's definition) or, with ``on_input=True``, the first
    input of ``module`` (a post-norm block's attention: its input is what the paper masks, and
    the residual stream stays unmasked). ``weigh`` applies the weights to the site's tensor in
    its layout (a token sequence by default; NHWC maps and attention windows for hierarchical
    models, see :mod:`~lightning_vitrcam.adapters.hierarchical`)."""

    module: nn.Module
    on_input: bool = False
    weigh: Weigh = weigh_tokens


@contextlib.contextmanager
def hooked(
    module: nn.Module,
    pre: Callable[..., Any] | None = None,
    post: Callable[..., Any] | None = None,
) -> Iterator[None]:
    """Forward (pre-)hooks on ``module`` for the duration of the block, removed on any exit."""
    handles = []
    if pre is not None:
        handles.append(module.register_forward_pre_hook(pre))
    if post is not None:
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ModelAdapter:
    """How the explainer reaches into one model family (subclass and register one per family).

    The base class implements the parts every family shares: the grid from the patch size, the
    model's own forward for the logits, and a tail that re-runs the model's forward on the
    images of a chunk with the target block's input expanded to one row per masked copy (exact
    for any model whose forward calls the block once). Subclasses set ``blocks`` and
    ``num_prefix_tokens`` and may override :meth:`tail` with a cheaper restart from the block.

    Args:
        model: the eager model (wrappers removed).
        patch_size: patch size when the model exposes none (``patch_embed.patch_size`` and
            ``patch_size`` are read).
    """

    #: the blocks ``target_block`` indexes; each one's first norm is what gets masked
    blocks: Sequence[nn.Module] = ()
    num_prefix_tokens: int | None = None
    #: the exact fast path's spec for the model classes this adapter is registered for
    #: (None: the general path only); see :mod:`lightning_vitrcam.fast_path`
    fast_path_spec: ClassVar[FamilySpec | None] = None

    def __init__(self, model: nn.Module, patch_size: int | Sequence[int] | None = None) -> None:
        self.model = model
        self.patch_size = self._find_patch_size(patch_size)

    # ----------------------------------------------------------------- structure
    def first_norm(self, block: nn.Module) -> nn.Module:
        """The module whose output ViT-ReciproCAM masks (the block's first LayerNorm)."""
        return block.norm1

    def mask_site(self, block: nn.Module) -> MaskSite:
        """Where the copies of ``block`` are masked: the output of its first norm."""
        return MaskSite(self.first_norm(block))

    def classifiers(self) -> list[nn.Module]:
        """The model's final linear layer(s): under autocast the explainer recomputes them in
        float32, because low-precision logits round away the copies' score differences."""
        head = getattr(self.model, "head", None)
        return [head] if isinstance(head, nn.Linear) else []

    def block_name(self, index: int) -> str:
        return f"blocks.{index}"

    def _find_patch_size(self, patch_size: int | Sequence[int] | None) -> tuple[int, int] | None:
        if patch_size is not None:
            return _pair(patch_size)
        pe = getattr(self.model, "patch_embed", None)
        if pe is not None and getattr(pe, "patch_size", None) is not None:
            return _pair(pe.patch_size)
        if isinstance(getattr(self.model, "patch_size", None), int | tuple | list):
            return _pair(self.model.patch_size)
        return None

    def block_grid(self, image_size: tuple[int, int], block_index: int) -> tuple[int, int]:
        """The ``(h, w)`` grid of block ``block_index``'s spatial tokens for ``(H, W)`` images:
        the patch grid in an isotropic model; a hierarchical one's stage grid."""
        return self.grid_size(image_size)

    def block_tokens(self, x: torch.Tensor) -> int:
        """How many tokens (prefix + spatial) a block input ``x`` holds: dim 1 of
        ``[B, T, C]``."""
        return int(x.shape[1])

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The ``(h, w)`` token grid for ``(H, W)`` images; raises when the model cannot take
        that size."""
        H, W = image_size
        assert self.patch_size is not None, "checked when the explainer was built"
        ph, pw = self.patch_size
        pe = getattr(self.model, "patch_embed", None)
        expected = getattr(pe, "img_size", None)
        dynamic = getattr(self.model, "dynamic_img_size", False)
        if expected is not None and not dynamic and tuple(expected) != (H, W):
            raise ValueError(
                f"{type(self.model).__name__} takes {tuple(expected)[0]}x{tuple(expected)[1]}"
                f" images but got {H}x{W}; resize the images, or create the timm model with"
                " dynamic_img_size=True to explain other resolutions"
            )
        if pe is not None and hasattr(pe, "dynamic_feat_size") and dynamic:
            h, w = pe.dynamic_feat_size((H, W))
            return int(h), int(w)
        if H % ph or W % pw:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {ph}x{pw}")
        return H // ph, W // pw

    # ----------------------------------------------------------------- running
    def logits(self, output: Any) -> Any:
        """Logits from whatever the model's forward returns: the output itself, or its
        ``.logits`` (a ``ModelOutput`` of HF transformers)."""
        return getattr(output, "logits", output)

    def input_size(self) -> tuple[int, int] | None:
        """The ``(H, W)`` image size the model was built for (None when it exposes none)."""
        size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        return None if size is None else _pair(size)

    def forward(self, images: torch.Tensor) -> Any:
        return self.logits(self.model(images))

    def tail(
        self,
        block_index: int,
        block: nn.Module,
        x: torch.Tensor,
        images: torch.Tensor,
        copies: Copies,
    ) -> Any:
        """Logits of the masked copies ``copies`` from ``block`` onwards (the masking hook on the
        block's first norm is already in place). ``x`` is the block input of the unmasked
        forward. This default re-runs the model on the chunk's images and expands the block
        input to one row per copy as it arrives."""
        rows = copies.rows - copies.first
        with on_input(block, lambda h: h.index_select(0, rows)):
            return self.forward(images[copies.first : copies.stop])


class RefusedModel(ModelAdapter):
    """Registered for model families ViT-ReciproCAM is not defined for: building it raises a
    ``ValueError`` with :meth:`reason`, and :func:`~lightning_vitrcam.adapters.find_vit` says
    why instead of "no Vision Transformer found"."""

    @classmethod
    def reason(cls, model: nn.Module) -> str:
        return f"{type(model).__name__} cannot be explained with ViT-ReciproCAM"

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        raise ValueError(self.reason(model))


# ----------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[ModelAdapter]] = {}


def register_adapter(*class_paths: str) -> Callable[[type[ModelAdapter]], type[ModelAdapter]]:
    """Register an adapter for model classes given by their ``module.QualName`` path.

    Paths (not classes) keep optional libraries unimported until a model of theirs shows up;
    subclasses of a registered class use its adapter unless they have their own.

    Example:
        >>> @register_adapter("my_lib.models.MyViT")
        ... class MyViTAdapter(ModelAdapter):
        ...     pass
    """

    def add(cls: type[ModelAdapter]) -> type[ModelAdapter]:
        for path in class_paths:
            _REGISTRY[path] = cls
        return cls

    return add


def registered_adapter(cls: type) -> type[ModelAdapter] | None:
    """The adapter registered for exactly ``cls`` (not a base class of it), or None."""
    return _REGISTRY.get(class_path(cls))


def adapter_class_for(model: nn.Module) -> type[ModelAdapter] | None:
    """The adapter registered for the nearest class in ``type(model).__mro__``, or None."""
    for klass in type(model).__mro__:
        found = _REGISTRY.get(class_path(klass))
        if found is not None:
            return found
    return None
