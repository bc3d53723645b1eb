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
is a small :class:`FamilySpec`: where the first norm and the q/k/v projections are, and the
prefix rows' tail from the attention output to the logits. Specs exist for timm's
``VisionTransformer`` (and DeiT's distilled variant), torchvision's ``VisionTransformer`` and
HF's ``ViTForImageClassification`` / ``DeiTForImageClassification(WithTeacher)``.
:func:`fast_path_blocker` accepts only the exact classes each spec was derived for; any other
family (or a subclass that may change the maths) takes the general path, so adding a model
family never touches this module.

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

from lightning_vitrcam.adapters import ModelAdapter
from lightning_vitrcam.adapters.base import adapter_class_for, class_path, on_input
from lightning_vitrcam.masks import WINDOW_SLOTS, window_slots

__all__ = [
    "FOLDED_SLOTS",
    "FamilySpec",
    "FastPath",
    "Projections",
    "fast_path_blocker",
    "images_per_chunk",
    "spec_for",
]

# per copy and prefix query: the window's slots plus the one slot all zero tokens fold into
FOLDED_SLOTS = WINDOW_SLOTS + 1


# ----------------------------------------------------------------------------- family specs
@dataclass(frozen=True)
class Projections:
    """The last block's attention projections: ``wq`` ``[H*d, D]``, ``wkv`` ``[2*H*d, D]`` (keys
    then values), biases ``[H*d]`` or None, ``heads`` H, ``head_dim`` d and the logit scale."""

    wq: torch.Tensor
    wkv: torch.Tensor
    bq: torch.Tensor | None
    bk: torch.Tensor | None
    bv: torch.Tensor | None
    heads: int
    head_dim: int
    scale: float


class FamilySpec:
    """What the folded attention needs from one model family (exact classes only).

    ``models`` are the class paths of the models the maths was derived for; :meth:`blocker`
    checks the rest (block and attention classes, pooling). :meth:`prefix_tail` maps each
    copy's merged attention output of the prefix rows, ``[B, N, P, H*d]`` in the parameters'
    dtype, to ``[B, N, C]`` logits, exactly as the block's remainder and the model's head do.
    """

    models: frozenset[str] = frozenset()

    def blocker(self, model: nn.Module, block: nn.Module) -> str | None:
        return None

    def norm1(self, block: nn.Module) -> nn.Module:
        raise NotImplementedError

    def projections(self, block: nn.Module) -> Projections:
        raise NotImplementedError

    def context(self, block: nn.Module, feats_pre: torch.Tensor) -> Any:
        """Per-image state of the prefix rows that every copy shares (e.g. an output gate)."""
        return None

    def prefix_tail(
        self,
        model: nn.Module,
        block: nn.Module,
        x_pre: torch.Tensor,
        out: torch.Tensor,
        context: Any,
    ) -> torch.Tensor:
        raise NotImplementedError


def _split_fused(
    weight: torch.Tensor, bias: torch.Tensor | None, width: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """``(wq, wkv, (bq, bk, bv))`` of a fused ``[3*width, D]`` q/k/v projection (views)."""
    biases = (None, None, None) if bias is None else tuple(bias.split(width))
    return weight[:width], weight[width:], biases


class _TimmSpec(FamilySpec):
    """timm ``Block``/``Attention`` (fused ``qkv``) in a token-pooled ``VisionTransformer``."""

    models = frozenset(
        {
            "timm.models.vision_transformer.VisionTransformer",
            "timm.models.deit.VisionTransformerDistilled",
        }
    )

    def blocker(self, model: nn.Module, block: nn.Module) -> str | None:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        if getattr(model, "attn_pool", None) is not None or model.global_pool != "token":
            return f"global_pool={getattr(model, 'global_pool', None)!r} is not token pooling"
        if type(block) is not Block or type(block.attn) is not Attention:
            return f"custom block {type(block).__name__}/{type(block.attn).__name__}"
        attn = block.attn
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            return "q/k normalisation makes keys non-affine in the window weight"
        if not isinstance(attn.qkv, nn.Linear):
            return "the attention has no fused qkv Linear"
        return None

    def norm1(self, block: nn.Module) -> nn.Module:
        return block.norm1

    def projections(self, block: nn.Module) -> Projections:
        attn = block.attn
        width = attn.num_heads * attn.head_dim
        wq, wkv, (bq, bk, bv) = _split_fused(attn.qkv.weight, attn.qkv.bias, width)
        return Projections(wq, wkv, bq, bk, bv, attn.num_heads, attn.head_dim, attn.scale)

    def context(self, block: nn.Module, feats_pre: torch.Tensor) -> Any:
        gate = getattr(block.attn, "gate", None)
        return None if gate is None else gate(feats_pre).sigmoid()

    def prefix_tail(
        self,
        model: nn.Module,
        block: nn.Module,
        x_pre: torch.Tensor,
        out: torch.Tensor,
        context: Any,
    ) -> torch.Tensor:
        B, N, P, _ = out.shape
        attn = block.attn
        out = attn.norm(out)
        if context is not None:
            out = out * context[:, None].to(out.dtype)
        out = attn.proj_drop(attn.proj(out))
        y = x_pre[:, None] + block.drop_path1(block.ls1(out))
        y = y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))
        y = model.norm(y.reshape(B * N, P, -1))
        return model.forward_head(y).reshape(B, N, -1)


class _TorchvisionSpec(FamilySpec):
    """torchvision ``EncoderBlock`` with ``nn.MultiheadAttention`` (fused ``in_proj_weight``)
    in ``VisionTransformer``: ``encoder.ln`` and ``heads`` on the class token."""

    models = frozenset({"torchvision.models.vision_transformer.VisionTransformer"})

    def blocker(self, model: nn.Module, block: nn.Module) -> str | None:
        if class_path(type(block)) != "torchvision.models.vision_transformer.EncoderBlock":
            return f"custom block {type(block).__name__}"
        attn = block.self_attention
        if type(attn) is not nn.MultiheadAttention:
            return f"custom attention {type(attn).__name__}"
        if not attn._qkv_same_embed_dim or not attn.batch_first:
            return "the attention has no fused batch-first in_proj_weight"
        if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
            return "extra key/value slots (add_bias_kv / add_zero_attn)"
        return None

    def norm1(self, block: nn.Module) -> nn.Module:
        return block.ln_1

    def projections(self, block: nn.Module) -> Projections:
        attn = block.self_attention
        E, H = attn.embed_dim, attn.num_heads
        wq, wkv, (bq, bk, bv) = _split_fused(attn.in_proj_weight, attn.in_proj_bias, E)
        d = E // H
        return Projections(wq, wkv, bq, bk, bv, H, d, d**-0.5)

    def prefix_tail(
        self,
        model: nn.Module,
        block: nn.Module,
        x_pre: torch.Tensor,
        out: torch.Tensor,
        context: Any,
    ) -> torch.Tensor:
        B, N, P, _ = out.shape
        y = block.dropout(block.self_attention.out_proj(out)) + x_pre[:, None]
        y = y + block.mlp(block.ln_2(y))
        y = model.encoder.ln(y.reshape(B * N, P, -1))
        return model.heads(y[:, 0]).reshape(B, N, -1)


_HF_LAYERS = {
    "transformers.models.vit.modeling_vit.ViTLayer": "ViTAttention",
    "transformers.models.deit.modeling_deit.DeiTLayer": "DeiTAttention",
}
_HF_TEACHER = "transformers.models.deit.modeling_deit.DeiTForImageClassificationWithTeacher"


class _HFViTSpec(FamilySpec):
    """HF ``ViTLayer``/``DeiTLayer`` (separate ``q_proj``/``k_proj``/``v_proj``, ``o_proj``,
    ``layernorm_before``/``layernorm_after``, ``mlp``) in ``ViTForImageClassification`` and
    ``DeiTForImageClassification(WithTeacher)``: the backbone's ``layernorm``, then the
    classifier on the class token (with teacher: the mean of the class and distillation
    heads)."""

    models = frozenset(
        {
            "transformers.models.vit.modeling_vit.ViTForImageClassification",
            "transformers.models.deit.modeling_deit.DeiTForImageClassification",
            _HF_TEACHER,
        }
    )

    def blocker(self, model: nn.Module, block: nn.Module) -> str | None:
        attention = _HF_LAYERS.get(class_path(type(block)))
        attn = getattr(block, "attention", None)
        if attention is None or type(attn).__name__ != attention:
            return f"custom layer {type(block).__name__}/{type(attn).__name__}"
        # the layout of transformers 5; other versions take the general path
        parts = ("q_proj", "k_proj", "v_proj", "o_proj")
        if not all(isinstance(getattr(attn, p, None), nn.Linear) for p in parts):
            return f"{type(attn).__name__} has no q_proj/k_proj/v_proj/o_proj (other layout)"
        if not all(hasattr(block, p) for p in ("layernorm_before", "layernorm_after", "mlp")):
            return f"{type(block).__name__} has an unknown layout"
        return None

    def norm1(self, block: nn.Module) -> nn.Module:
        return block.layernorm_before

    def projections(self, block: nn.Module) -> Projections:
        attn = block.attention
        wkv = torch.cat([attn.k_proj.weight, attn.v_proj.weight])
        return Projections(
            attn.q_proj.weight,
            wkv,
            attn.q_proj.bias,
            attn.k_proj.bias,
            attn.v_proj.bias,
            attn.num_attention_heads,
            attn.head_dim,
            attn.scaling,
        )

    def prefix_tail(
        self,
        model: nn.Module,
        block: nn.Module,
        x_pre: torch.Tensor,
        out: torch.Tensor,
        context: Any,
    ) -> torch.Tensor:
        B, N, P, _ = out.shape
        y = block.dropout(block.attention.o_proj(out)) + x_pre[:, None]
        y = y + block.dropout(block.mlp(block.layernorm_after(y)))
        backbone = getattr(model, model.base_model_prefix)
        y = backbone.layernorm(y.reshape(B * N, P, -1))
        if class_path(type(model)) == _HF_TEACHER:
            logits = (model.cls_classifier(y[:, 0]) + model.distillation_classifier(y[:, 1])) / 2
        else:
            logits = model.classifier(y[:, 0])
        return logits.reshape(B, N, -1)


_SPECS: tuple[FamilySpec, ...] = (_TimmSpec(), _TorchvisionSpec(), _HFViTSpec())


def spec_for(model: nn.Module) -> FamilySpec | None:
    """The spec derived for exactly ``type(model)`` (subclasses excluded), or None."""
    path = class_path(type(model))
    return next((s for s in _SPECS if path in s.models), None)


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
        feats = self.spec.norm1(self.block)(x)
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
