"""The exact fast path of ViT-ReciproCAM for token-pooled ViTs at their last block.

Three facts make it cost about one forward:

1. every masked-out spatial token of a copy is the exact zero vector, so all of them share one
   key and one value (the projection biases): they fold into a single slot whose attention
   logit gets ``+log(multiplicity)`` (``-inf`` where there is none);
2. a token-pooled head reads only the prefix rows of the last block, so only those rows'
   attention, projection and MLP are computed per copy;
3. keys and values of a weighted token are affine in the window weight, so each image's tokens
   are projected once and copies only rescale the projections.

The folded attention (:class:`FastPath`) is written once; what differs between model families
is a small :class:`~lightning_vitrcam.adapters.fast_spec.FamilySpec` that each family's
adapter carries (``fast_path_spec``): where the q/k/v projections are, and the prefix rows'
tail from the attention output to the logits (timm's ``VisionTransformer`` and DeiT's
distilled variant, torchvision's ``VisionTransformer``, HF's ``ViTForImageClassification`` /
``DeiTForImageClassification(WithTeacher)``). :func:`fast_path_blocker` accepts only the exact
classes the adapter is registered for; any other model (or a subclass that may change the
maths) takes the general path, so adding a model family never touches this module.

Example:
    >>> from torchvision.models import VisionTransformer
    >>> from lightning_vitrcam.adapters import build_adapter
    >>> tv = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
    ...                        hidden_dim=32, mlp_dim=64, num_classes=3)
    >>> fast_path_blocker(build_adapter(tv), 1, 1, True) is None
    True
    >>> fast_path_blocker(build_adapter(tv), 0, 1, True)
    'the target block is not the last block'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_vitrcam.adapters.base import (
    ModelAdapter,
    adapter_class_for,
    on_input,
    registered_adapter,
)
from lightning_vitrcam.adapters.fast_spec import FamilySpec
from lightning_vitrcam.masks import WINDOW_SLOTS, window_slots

__all__ = ["FOLDED_SLOTS", "FastPath", "fast_path_blocker", "images_per_chunk", "spec_for"]

# per copy and prefix query: the window's slots plus the one slot all zero tokens fold into
FOLDED_SLOTS = WINDOW_SLOTS + 1


def spec_for(model: nn.Module) -> FamilySpec | None:
    """The fast-path spec of the adapter registered for exactly ``type(model)`` (a subclass
    may change the maths, so it has none), or None.

    Example:
        >>> from torch import nn
        >>> spec_for(nn.Linear(2, 2)) is None
        True
    """
    adapter = registered_adapter(type(model))
    return None if adapter is None else adapter.fast_path_spec


def fast_path_blocker(
    adapter: ModelAdapter, block_index: int, num_prefix_tokens: int, keep_prefix_tokens: bool
) -> str | None:
    """Why the fast path would not be exact for this explanation, or None when it is."""
    m = adapter.model
    spec = spec_for(m)
    if spec is None:
        return (
            f"{type(m).__name__} is not a timm VisionTransformer, torchvision VisionTransformer"
            " or HF ViT/DeiT image classifier"
        )
    if type(adapter) is not adapter_class_for(m):
        # e.g. target_layer=: the block and the masked norm are the user's choice
        return f"{type(adapter).__name__} is not the adapter the fast path was derived with"
    if block_index != len(adapter.blocks) - 1:
        return "the target block is not the last block"
    block = adapter.blocks[block_index]
    reason = spec.blocker(m, block)
    if reason is not None:
        return reason
    if num_prefix_tokens < 1 or not keep_prefix_tokens:
        return "token pooling needs the class token kept in every copy"
    return None


def images_per_chunk(max_batch: int, tokens: int, prefix: int, spatial: int) -> int:
    """Images whose copies are scored in one pass: the same memory as the general path's
    ``max_batch`` sequences of ``tokens`` rows. Per image the pass holds ``spatial`` copies x
    ``prefix + FOLDED_SLOTS`` attention logits per head and a dense ``spatial x spatial``
    coefficient matrix per head and prefix row, counted at an eighth because it is sparse
    (at most 9 non-zeros per row) and short-lived."""
    per_image = spatial * (prefix + FOLDED_SLOTS) + spatial * tokens // 8
    return max(1, (max_batch * tokens) // per_image)


# ----------------------------------------------------------------------------- folded maths
@dataclass
class _Shared:
    """What every copy of a batch shares: the block input, the prefix queries' logits against
    the bias-free keys (``qk`` ``[B, H, P, T]``) and against the key bias (``qb``), the
    bias-free values ``v0`` ``[B, H, T, d]``, the value bias and the family's prefix context."""

    x: torch.Tensor
    qk: torch.Tensor
    qb: torch.Tensor
    v0: torch.Tensor
    vb: torch.Tensor
    context: Any
    num_prefix_tokens: int
    acc: torch.dtype  # float32 or higher: the per-copy maths never runs in autocast's precision


class _StopForward(Exception):
    """Raised by a hook once the activations it needs are captured."""


class FastPath:
    """Scores of all masked copies of a batch at the last block of a token-pooled ViT.

    Call :meth:`prepare` (one forward up to the block, projections, the unmasked logits), pick
    the targets from those logits, then :meth:`scores`.
    """

    def __init__(self, adapter: ModelAdapter, block_index: int, max_batch: int) -> None:
        spec = spec_for(adapter.model)
        self.adapter = adapter
        if spec is None:
            raise ValueError(f"no fast path for {type(adapter.model).__name__}")
        self.spec = spec
        self.model = adapter.model
        self.block = adapter.blocks[block_index]
        self.block_name = adapter.block_name(block_index)
        self.max_batch = max_batch

    def _block_input(self, images: torch.Tensor) -> torch.Tensor:
        """The last block's input, computed by the model's own forward up to that block."""
        captured: dict[str, torch.Tensor] = {}

        def grab(x: torch.Tensor) -> None:
            captured["x"] = x
            raise _StopForward

        try:
            with on_input(self.block, grab):
                self.model(images)
        except _StopForward:
            pass
        if "x" not in captured:
            raise RuntimeError(f"{self.block_name} was not called by the model's forward")
        return captured["x"]

    def prepare(self, images: torch.Tensor, num_prefix_tokens: int) -> tuple[_Shared, Any]:
        """``(state, logits)``: everything the copies share, and the unmasked logits."""
        x = self._block_input(images)
        B, T, _ = x.shape
        P = num_prefix_tokens
        pr = self.spec.projections(self.block)
        H, d = pr.heads, pr.head_dim
        feats = self.adapter.first_norm(self.block)(x)
        # keys/values of a token scaled by a window weight are affine in that weight, so every
        # token is projected once per image (bias-free) and copies only rescale the projections;
        # queries are needed for the prefix rows only
        kv = F.linear(feats, pr.wkv)
        q = F.linear(feats[:, :P], pr.wq)
        # under autocast the projections come back in low precision; the per-copy rescaling and
        # the folded attention run in float32 so they add no rounding of their own
        acc = torch.promote_types(kv.dtype, torch.float32)
        kv, q = kv.to(acc), q.to(acc)
        zeros = torch.zeros(H * d, device=x.device, dtype=acc)
        bq, bk, bv = ((zeros if b is None else b.to(acc)).view(H, d) for b in (pr.bq, pr.bk, pr.bv))
        k0, v0 = kv.view(B, T, 2, H, d).permute(2, 0, 3, 1, 4)  # [B, H, T, d] each
        q = q.view(B, P, H, d).transpose(1, 2) + bq[:, None]  # [B, H, P, d]: same in every copy
        qk = q @ k0.transpose(-1, -2) * pr.scale  # [B, H, P, T]: q . (bias-free key)
        qb = (q * bk[:, None]).sum(-1) * pr.scale  # [B, H, P]: q . key bias
        vb = bv.reshape(1, H, 1, d)
        context = self.spec.context(self.block, feats[:, :P])
        # the unmasked prediction: prefix queries over all T tokens; softmax weights sum to 1,
        # so every value's bias adds up to the bias itself
        prob = (qk + qb[..., None]).softmax(dim=-1)
        out = (prob @ v0 + vb)[:, :, None]  # [B, H, 1, P, d]
        logits = self._prefix_tail(x[:, :P], out, context)[:, 0]
        return _Shared(x, qk, qb, v0, vb, context, P, acc), logits

    def scores(
        self,
        shared: _Shared,
        tgt: torch.Tensor,
        h: int,
        w: int,
        kernel: str,
        target_scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``[B, h*w]`` target scores of every copy; ``target_scores(logits, targets)`` reads
        the score (or the explainer's evidence) of each row's target class."""
        x, qk, qb, v0, vb = shared.x, shared.qk, shared.qb, shared.v0, shared.vb
        P, acc = shared.num_prefix_tokens, shared.acc
        B, T, _ = x.shape
        H, d = v0.shape[1], v0.shape[-1]
        n = h * w
        index, weight, valid = window_slots(h, w, kernel, device=x.device, dtype=acc)
        count = valid.sum(dim=1)
        # every masked-out token is the exact zero vector, so all of them share key bk and value
        # bv: one slot whose logit gets +log(multiplicity), -inf when no such token exists
        inf = torch.tensor(-math.inf, device=x.device, dtype=acc)
        zero_bias = torch.where(count < n, (n - count).to(acc).log(), inf)  # [n]
        win_bias = torch.where(valid, torch.zeros((), device=x.device, dtype=acc), inf)
        step = images_per_chunk(self.max_batch, T, P, n)
        scores = []
        for s in range(0, B, step):
            sl = slice(s, min(s + step, B))
            b = sl.stop - sl.start
            qk_b, qb_b = qk[sl], qb[sl, :, :, None, None]
            # attention logits over each copy's prefix, window and folded-zero slots
            pre = (qk_b[..., :P] + qb_b[..., 0]).unsqueeze(-2).expand(b, H, P, n, P)
            win = qk_b[..., P:][..., index] * weight + qb_b + win_bias  # [b, H, P, n, 9]
            zero = qb_b[..., 0] + zero_bias  # [b, H, P, n]
            prob = torch.cat([pre, win, zero.unsqueeze(-1)], dim=-1).softmax(dim=-1)
            p_pre, p_win = prob[..., :P], prob[..., P : P + WINDOW_SLOTS]
            # the window's values are weight * bias-free value (+ bias, folded below): gather
            # the 9 coefficients into a dense copy x token matrix and multiply once
            coef = torch.zeros(b, H, P, n, n, device=x.device, dtype=acc)
            coef.scatter_add_(-1, index.expand(b, H, P, n, WINDOW_SLOTS), p_win * weight)
            out = p_pre @ v0[sl, :, None, :P] + (coef.flatten(2, 3) @ v0[sl, :, P:]).view(
                b, H, P, n, d
            )
            out = (out + vb[..., None, :]).transpose(2, 3)  # [b, H, n, P, d]
            context = _slice_context(shared.context, sl)
            logit = self._prefix_tail(x[sl, :P], out, context)
            target = tgt[sl].repeat_interleave(n)
            scores.append(target_scores(logit.reshape(b * n, -1), target).reshape(b, n))
        return torch.cat(scores)

    def _prefix_tail(
        self, x_pre: torch.Tensor, attn_out: torch.Tensor, context: Any
    ) -> torch.Tensor:
        """Logits ``[B, N, C]`` of N copies per image from the prefix rows of the last block.

        ``x_pre`` ``[B, P, D]``: the block input's prefix rows; ``attn_out`` ``[B, H, N, P, d]``:
        each copy's attention output (before the heads are merged) for those rows.
        """
        B, H, N, P, d = attn_out.shape
        # the few prefix rows per copy run in the parameters' own precision, outside autocast:
        # low-precision logits would round away the copies' score differences
        dtype = next(self.block.parameters()).dtype
        with torch.autocast(x_pre.device.type, enabled=False):
            out = attn_out.permute(0, 2, 3, 1, 4).reshape(B, N, P, H * d).to(dtype)
            return self.spec.prefix_tail(self.model, self.block, x_pre.to(dtype), out, context)


def _slice_context(context: Any, sl: slice) -> Any:
    return context[sl] if isinstance(context, torch.Tensor) else context
