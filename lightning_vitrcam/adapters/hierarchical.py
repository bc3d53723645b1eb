"""Hierarchical vision transformers (Swin and its kin): the library's extension of
ViT-ReciproCAM beyond the paper.

The paper masks the attention input of one block of an isotropic ViT, one copy per spatial
token, and reads each copy's prediction through the rest of the network. A hierarchical model
has the same thing at every block, only at that block's stage's resolution: at the target block
(default the last block of the last stage, as the paper uses the last block) copy ``k`` of an
image keeps, of the tensor the block's attention reads, only the 3x3 Gaussian window around
token ``k`` of that block's grid (pre-norm blocks: the first norm's output; post-norm blocks
such as Swin V2: the block input as the attention reads it); the residual stream is kept
whole; then the rest of the network runs exactly as the model's own forward does (shifted
windows, relative position bias, the remaining blocks, patch merging, the final norm, pooling
and head). There are no prefix tokens, and the map has the target stage's grid (7x7 at 224 px
in Swin-T's last stage, 14x14 one stage earlier).

``target_block`` indexes the blocks across stages as users count them: stage after stage,
``-1`` the last block of the last stage. What differs between families is small and lives
here as data: where a block's grid comes from, in which layout its attention reads its tokens
(:func:`weigh_nhwc` for ``[B, H, W, C]`` maps, :func:`weigh_tokens` for unrolled
``[B, H*W, C]`` sequences, :func:`weigh_windows` for the ``[B*windows, area, C]`` windows a
post-norm block's attention module receives) and which module is the masking site of which
block class (a registry per adapter, :attr:`HierarchicalAdapter.sites`).

Example:
    >>> import timm
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=2,
    ...                          embed_dim=8, depths=(2, 2), num_heads=(1, 1))
    >>> a = build_adapter(swin)
    >>> len(a.blocks), a.block_name(-1), a.block_grid((32, 32), 3), a.block_grid((32, 32), 1)
    (4, 'layers.1.blocks.1', (4, 4), (8, 8))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lightning_vitrcam.adapters.base import (
    Copies,
    MaskSite,
    ModelAdapter,
    Weigh,
    class_path,
    module_name,
    weigh_tokens,
)

__all__ = [
    "HierarchicalAdapter",
    "Shrink",
    "conv_grid",
    "halve",
    "weigh_nchw",
    "weigh_nhwc",
    "weigh_reordered",
    "weigh_tokens",
    "weigh_windows",
    "window_layout",
]


#: what a model does to the token grid between two stages' blocks
Shrink = Callable[[tuple[int, int]], tuple[int, int]]


def halve(grid: tuple[int, int]) -> tuple[int, int]:
    """The grid after a 2x2 patch merging, which pads an odd side by one (ceil).

    Example:
        >>> halve((56, 56)), halve((7, 5))
        ((28, 28), (4, 3))
    """
    return (grid[0] + 1) // 2, (grid[1] + 1) // 2


def conv_grid(layer: nn.Module) -> Shrink:
    """The grid after a strided convolution or pooling ``layer`` (kernel, stride, padding,
    dilation read from it), e.g. an overlapping patch embedding.

    Example:
        >>> conv_grid(nn.Conv2d(3, 8, 7, stride=4, padding=3))((56, 56))
        (14, 14)
    """

    def pair(v: object) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]

    k, s, p = pair(layer.kernel_size), pair(layer.stride), pair(getattr(layer, "padding", 0))
    d = pair(getattr(layer, "dilation", 1))

    def shrink(grid: tuple[int, int]) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(grid)
        )

    return shrink


def weigh_nhwc(t: torch.Tensor, weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Weights on an NHWC map ``[N, h, w, C]`` (timm's and torchvision's Swin blocks).

    Example:
        >>> t = torch.ones(1, 2, 2, 3)
        >>> weigh_nhwc(t, torch.tensor([[1.0, 0.5, 0.25, 0.0]]), (2, 2))[0, :, :, 0]
        tensor([[1.0000, 0.5000],
                [0.2500, 0.0000]])
    """
    if tuple(t.shape[1:3]) != tuple(grid):
        raise ValueError(
            f"the masking site holds a {t.shape[1]}x{t.shape[2]} map but the {grid[0]}x{grid[1]}"
            " grid was expected; check the image size (or grid_size=)"
        )
    return t * weight.to(t.dtype).view(weight.shape[0], *grid, 1)


def window_layout(
    weight_map: torch.Tensor,
    window: tuple[int, int],
    shift: tuple[int, int],
    roll_first: bool,
) -> torch.Tensor:
    """``[N, h, w]`` weight maps laid out as the windows a shifted-window attention reads:
    cyclically shifted by ``-shift``, zero-padded to multiples of ``window`` (in the order the
    family does both: timm rolls first, HF pads first), partitioned into
    ``[N * windows, window_h * window_w]`` (windows row-major, copies outermost). Weights on
    padding are zero; the padded tokens are zero vectors whatever they are multiplied by.

    Example:
        >>> m = torch.arange(16.0).view(1, 4, 4)
        >>> window_layout(m, (2, 2), (0, 0), True)[1].tolist()
        [2.0, 3.0, 6.0, 7.0]
        >>> window_layout(m, (2, 2), (1, 1), True)[0].tolist()
        [5.0, 6.0, 9.0, 10.0]
    """
    (wh, ww), (sh, sw) = window, shift
    _, h, w = weight_map.shape
    pad = (0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh)

    def roll(m: torch.Tensor) -> torch.Tensor:
        return torch.roll(m, shifts=(-sh, -sw), dims=(1, 2)) if sh or sw else m

    m = F.pad(roll(weight_map), pad) if roll_first else roll(F.pad(weight_map, pad))
    n, hp, wp = m.shape
    m = m.view(n, hp // wh, wh, wp // ww, ww).permute(0, 1, 3, 2, 4)
    return m.reshape(-1, wh * ww)


def weigh_windows(
    window: Callable[[], tuple[tuple[int, int], tuple[int, int]]], roll_first: bool
) -> Weigh:
    """A :data:`~lightning_vitrcam.adapters.base.Weigh` for an attention module that receives
    ``[N * windows, area, C]`` windows (a post-norm Swin block's): the weights take the block's
    own shift, padding and partition (:func:`window_layout`). ``window()`` returns the block's
    ``(window, shift)`` when the mask is applied (they are attributes the block may update).
    Multiplying the windows by the laid-out weights equals multiplying the block input before
    the shift, element for element."""

    def weigh(t: torch.Tensor, weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        size, shift = window()
        weight_map = weight.to(t.dtype).view(weight.shape[0], *grid)
        laid_out = window_layout(weight_map, size, shift, roll_first)
        if tuple(laid_out.shape) != tuple(t.shape[:2]):
            raise ValueError(
                f"the attention reads {tuple(t.shape[:2])} windows x tokens but the"
                f" {grid[0]}x{grid[1]} grid in {size[0]}x{size[1]} windows gives"
                f" {tuple(laid_out.shape)}; check the image size (or grid_size=)"
            )
        return t * laid_out.unsqueeze(-1)

    return weigh


def weigh_nchw(t: torch.Tensor, weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Weights on an NCHW map ``[N, C, h, w]`` (timm MaxViT's channels-first attention blocks).

    Example:
        >>> t = torch.ones(1, 3, 1, 2)
        >>> weigh_nchw(t, torch.tensor([[1.0, 0.5]]), (1, 2))[0, 0]
        tensor([[1.0000, 0.5000]])
    """
    if tuple(t.shape[2:4]) != tuple(grid):
        raise ValueError(
            f"the masking site holds a {t.shape[2]}x{t.shape[3]} map but the {grid[0]}x{grid[1]}"
            " grid was expected; check the image size (or grid_size=)"
        )
    return t * weight.to(t.dtype).view(weight.shape[0], 1, *grid)


def weigh_reordered(order: torch.Tensor, prefix: int = 0) -> Weigh:
    """A :data:`~lightning_vitrcam.adapters.base.Weigh` for ``[N, prefix + h*w, C]`` sequences
    whose spatial tokens are not in row-major order: the token at position ``t`` of the
    sequence is the grid's token ``order[t]`` (Hiera's unrolled order).

    Example:
        >>> weigh = weigh_reordered(torch.tensor([1, 0]))
        >>> weigh(torch.ones(1, 2, 1), torch.tensor([[1.0, 0.5]]), (1, 2))[0, :, 0]
        tensor([0.5000, 1.0000])
    """

    def weigh(t: torch.Tensor, weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        columns = torch.cat([torch.arange(prefix), prefix + order]).to(weight.device)
        return weigh_tokens(t, weight.index_select(1, columns), grid)

    return weigh


class HierarchicalAdapter(ModelAdapter):
    """Shared by the hierarchical families: blocks flattened over stages, no prefix tokens
    (unless the family has a class token), a block's grid from the patch grid and what the
    model does to it before the block's stage, masking sites by block class.

    Subclasses set :attr:`sites` (block class path -> the block's :class:`MaskSite`) and
    :attr:`layout`, and call :meth:`_set_stages` with each stage's blocks and what happens to
    the grid before them; they may override :meth:`patch_grid` and :meth:`tail`.
    """

    #: block class path -> where its copies are masked (subclasses of a listed class use it)
    sites: ClassVar[dict[str, Callable[[nn.Module], MaskSite]]] = {}
    #: how block inputs hold their tokens: ``"nhwc"`` ``[B, H, W, C]`` maps, ``"nchw"``
    #: ``[B, C, H, W]`` maps or ``"tokens"`` ``[B, prefix + H*W, C]`` sequences
    layout: str = "nhwc"
    #: the families' names, for messages
    family: ClassVar[str] = "hierarchical model"

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None = None,
        patch_size: int | Sequence[int] | None = None,
        prefix: int = 0,
    ) -> None:
        super().__init__(model, patch_size)
        if num_prefix_tokens not in (None, prefix):
            raise ValueError(
                f"{type(model).__name__}'s blocks see {prefix} prefix token(s) before the"
                f" tokens of the stage's grid; leave num_prefix_tokens out, got"
                f" {num_prefix_tokens}"
            )
        self.num_prefix_tokens = prefix
        self.blocks: list[nn.Module] = []
        self._place: list[tuple[int, int]] = []  # (stage, block within stage) of each block
        self._shrinks: list[tuple[Shrink, ...]] = []  # patch grid -> each block's grid

    def _set_stages(self, stages: Sequence[tuple[Sequence[nn.Module], Shrink | None]]) -> None:
        """``stages``: each stage's blocks and what the model does to the grid between the
        previous stage's blocks and them (:func:`halve` for a 2x2 merging, None for nothing)."""
        shrinks: tuple[Shrink, ...] = ()
        for s, (blocks, shrink) in enumerate(stages):
            shrinks += () if shrink is None else (shrink,)
            for j, block in enumerate(blocks):
                self.blocks.append(block)
                self._place.append((s, j))
                self._shrinks.append(shrinks)
        if not self.blocks:
            raise ValueError(f"{type(self.model).__name__} has no transformer blocks")

    # ----------------------------------------------------------------- structure
    def mask_site(self, block: nn.Module) -> MaskSite:
        for klass in type(block).__mro__:
            site = self.sites.get(class_path(klass))
            if site is not None:
                return site(block)
        raise ValueError(
            f"{type(block).__name__} is not a block this {self.family} adapter knows"
            f" ({', '.join(p.rsplit('.', 1)[-1] for p in self.sites)}), so where its"
            " attention input is cannot be told; explain a model built from the library's"
            " own blocks"
        )

    def classifiers(self) -> list[nn.Module]:
        """The last linear layer of ``model.head`` (a bare ``Linear``, timm's
        ``ClassifierHead`` or a ``Sequential`` ending in one)."""
        head = getattr(self.model, "head", None)
        if not isinstance(head, nn.Module):
            return []
        return [m for m in head.modules() if isinstance(m, nn.Linear)][-1:]

    def block_name(self, index: int) -> str:
        return module_name(self.model, self.blocks[index], f"blocks.{index % len(self.blocks)}")

    def patch_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The grid of the patch embedding's output (timm's ``patch_embed`` by default)."""
        return self.grid_size(image_size)

    def block_grid(self, image_size: tuple[int, int], block_index: int) -> tuple[int, int]:
        grid = self.patch_grid(image_size)
        for shrink in self._shrinks[block_index]:
            grid = shrink(grid)
        return grid

    def block_tokens(self, x: torch.Tensor) -> int:
        if self.layout == "nhwc" and x.dim() == 4:
            return int(x.shape[1] * x.shape[2])
        if self.layout == "nchw" and x.dim() == 4:
            return int(x.shape[2] * x.shape[3])
        return int(x.shape[1])

    def whole_forward_tail(self, images: torch.Tensor, copies: Copies) -> Any:
        """The copies' logits from a forward of one image row per copy (the masking hook is
        in place): exact for any forward, at the cost of a whole forward per copy. For
        families whose forward holds the batch size it read before the blocks, so that the
        block input cannot grow to one row per copy on the way."""
        return self.forward(images.index_select(0, copies.rows))

    def place(self, block_index: int) -> tuple[int, int]:
        """``(stage, index within the stage)`` of a block."""
        return self._place[block_index]
