"""ViT-ReciproCAM: gradient-free, attention-free saliency for Vision Transformers.

Byun & Lee, "ViT-ReciproCAM" (arXiv 2310.02588). The output of the first LayerNorm (``norm1``)
of a transformer block is copied once per spatial token; copy ``k`` keeps the prefix tokens
(CLS, distillation, registers) and only a 3x3 Gaussian window of spatial tokens around ``k``.
Every copy runs through the rest of the network (the residual stream into the block is not
masked) and its target-class score becomes the saliency of token ``k``.

Two computation paths give the same answer:

* the general path batches all copies of all images through the rest of the model with two
  hooks, so it works for any pre-norm transformer, in chunks of at most ``max_batch`` sequences;
* the fast path (timm ``VisionTransformer``/``VisionTransformerDistilled``, last block, token
  pooling, no q/k norm) folds the identical all-zero tokens of a copy into one key/value slot
  weighted by their multiplicity, projects every image's tokens once (keys/values are affine
  in the window weight) and computes only the prefix rows that the token-pooled head reads. Its
  cost is about one ordinary forward pass.

Example:
    >>> import timm, torch
    >>> from lightning_vitrcam import ViTReciproCAM
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
    ...                           num_classes=4, depth=2, embed_dim=32, num_heads=2)
    >>> cam = ViTReciproCAM(model)
    >>> out = cam(torch.randn(2, 3, 32, 32))
    >>> tuple(out.maps.shape), tuple(out.scores.shape), out.fast_path
    ((2, 4, 4), (2, 16), True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_vitrcam.masks import KERNELS, window_slots, window_weights

ScoreKind = Literal["softmax", "logit", "sigmoid"]
SCORES: tuple[str, ...] = ("softmax", "logit", "sigmoid")
TargetsLike = None | int | Sequence[int] | torch.Tensor


@dataclass
class ReciproCAMResult:
    """What :class:`ViTReciproCAM` returns for a batch of ``B`` images on an ``h x w`` grid.

    Attributes:
        maps: ``[B, h, w]`` float32 saliency in [0, 1], min-max normalised per image
            (a constant score vector gives an all-zero map).
        scores: ``[B, h*w]`` raw target-class score of every masked copy (float32, or the
            model's own precision when it is higher).
        targets: ``[B]`` long, the class explained.
        logits: ``[B, num_classes]`` logits of the unmasked images.
        probs: ``[B]`` target-class score of the unmasked images (same score function).
        grid_size: ``(h, w)``.
        fast_path: whether the exact fast path computed this result.
    """

    maps: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    grid_size: tuple[int, int]
    fast_path: bool


class _StopForward(Exception):
    """Raised by a hook once the activations it needs are captured."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The eager module behind ``torch.compile`` (and DDP/DataParallel) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each one's own training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _timm_classes() -> tuple[tuple[type, ...], type | None, type | None]:
    try:
        from timm.layers import Attention
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError:  # pragma: no cover - timm is a core dependency
        return (), None, None
    return (VisionTransformer, VisionTransformerDistilled), Block, Attention


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = tuple(v)
    return (int(a), int(b))


class ViTReciproCAM:
    """Explain a Vision Transformer's predictions with ViT-ReciproCAM.

    Args:
        model: a timm ``VisionTransformer`` (any prefix tokens, pooling, patch size, image size,
            ``dynamic_img_size``), a timm ``VisionTransformerDistilled``, or any pre-norm
            transformer classifier when ``target_layer`` is given. ``torch.compile``d modules
            are unwrapped. The model is used as it is: no copy, no parameter touched.
        target_block: index into ``model.blocks`` of the block whose ``norm1`` output is masked
            (timm models; default the last block as in the paper's figure, ``-2`` is the
            authors' code default).
        kernel: ``"gaussian"`` (3x3, the paper's default) or ``"point"`` (1x1).
        keep_prefix_tokens: keep the prefix tokens (CLS, ...) unmasked in every copy (paper).
        score: ``"softmax"`` (paper), ``"logit"`` or ``"sigmoid"`` (multi-label models).
        max_batch: at most this many full-length sequences per pass (memory bound); the fast
            path uses the same token budget.
        target_layer: generic path, the first norm of the block to mask (e.g. torchvision
            ``model.encoder.layers[-1].ln_1``); its parent module is taken as the block.
        num_prefix_tokens: prefix tokens before the spatial tokens (generic path; default
            ``model.num_prefix_tokens`` when present).
        grid_size: fixed ``(h, w)`` token grid (generic path), else derived from the patch size.
        patch_size: patch size for the generic path when the model does not expose one
            (``model.patch_embed.patch_size`` and torchvision's ``model.patch_size`` are read).
        fast_path: ``None`` chooses it whenever it is exact, ``False`` never uses it, ``True``
            requires it (``ValueError`` saying why when it does not apply).

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
        ...                           num_classes=3, depth=1, embed_dim=32, num_heads=2)
        >>> out = ViTReciproCAM(model, kernel="point")(torch.randn(1, 3, 32, 32), targets=2)
        >>> out.targets.tolist(), float(out.maps.max()) <= 1.0
        ([2], True)
    """

    def __init__(
        self,
        model: nn.Module,
        target_block: int = -1,
        kernel: str = "gaussian",
        keep_prefix_tokens: bool = True,
        score: str = "softmax",
        max_batch: int = 128,
        target_layer: nn.Module | None = None,
        num_prefix_tokens: int | None = None,
        grid_size: tuple[int, int] | None = None,
        patch_size: int | tuple[int, int] | None = None,
        fast_path: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        self.model = unwrap_model(model)
        self.kernel = kernel
        self.keep_prefix_tokens = keep_prefix_tokens
        self.score = score
        self.max_batch = max_batch
        self._fixed_grid = None if grid_size is None else _pair(grid_size)
        vit_classes, block_cls, attn_cls = _timm_classes()

        if target_layer is not None:
            self.norm1, self.block, self.block_name = self._block_of(target_layer)
            self.target_block_index: int | None = None
        else:
            blocks = getattr(self.model, "blocks", None)
            has_norm1 = blocks is not None and all(hasattr(b, "norm1") for b in blocks)
            if not (
                isinstance(blocks, nn.Sequential | nn.ModuleList)
                and len(blocks) > 0
                and has_norm1
                and hasattr(self.model, "patch_embed")
            ):
                raise ValueError(
                    f"cannot find transformer blocks with a 'norm1' in {type(self.model).__name__}"
                    " (expected a timm VisionTransformer with .blocks and .patch_embed). For any"
                    " other pre-norm transformer pass target_layer=<the first norm of the block"
                    " to explain> and num_prefix_tokens=..., e.g. for torchvision's vit_b_16:"
                    " ViTReciproCAM(model, target_layer=model.encoder.layers[-1].ln_1,"
                    " num_prefix_tokens=1)"
                )
            n_blocks = len(blocks)
            if not -n_blocks <= target_block < n_blocks:
                raise ValueError(
                    f"target_block={target_block} is out of range for a model with {n_blocks}"
                    f" blocks (valid: {-n_blocks}..{n_blocks - 1})"
                )
            self.target_block_index = target_block % n_blocks
            self.block = blocks[self.target_block_index]
            self.norm1 = self.block.norm1
            self.block_name = f"blocks.{self.target_block_index}"

        if num_prefix_tokens is None:
            num_prefix_tokens = getattr(self.model, "num_prefix_tokens", None)
            if num_prefix_tokens is None:
                raise ValueError(
                    f"{type(self.model).__name__} has no 'num_prefix_tokens' attribute: pass"
                    " num_prefix_tokens= (the CLS/distillation/register tokens before the patch"
                    " tokens, e.g. 1 for torchvision's ViT)"
                )
        if int(num_prefix_tokens) < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.num_prefix_tokens = int(num_prefix_tokens)

        self._patch_size = self._find_patch_size(patch_size)
        if self._fixed_grid is None and self._patch_size is None:
            raise ValueError(
                f"cannot derive the token grid of {type(self.model).__name__}: it exposes no"
                " patch_embed.patch_size or patch_size; pass grid_size=(h, w) or patch_size="
            )

        # timm ViTs end with blocks -> norm -> forward_head, so the general path can restart
        # from the target block instead of re-running the whole forward per chunk
        self._timm_tail = type(self.model) in vit_classes and target_layer is None
        reason = self._fast_path_blocker(vit_classes, block_cls, attn_cls)
        if fast_path and reason:
            raise ValueError(f"fast_path=True but the fast path is not exact here: {reason}")
        self.fast_path = reason is None if fast_path is None else bool(fast_path)
        self.fast_path_reason = reason

    # ------------------------------------------------------------------ setup helpers
    def _block_of(self, target_layer: nn.Module) -> tuple[nn.Module, nn.Module, str]:
        for name, module in self.model.named_modules():
            if module is target_layer:
                if not name:
                    break
                parent_name = name.rsplit(".", 1)[0] if "." in name else ""
                return target_layer, self.model.get_submodule(parent_name), parent_name
        raise ValueError(
            "target_layer is not a submodule of the model: pass the first norm layer of the block"
            " to explain, e.g. model.encoder.layers[-1].ln_1 for torchvision's ViT"
        )

    def _find_patch_size(self, patch_size: int | Sequence[int] | None) -> tuple[int, int] | None:
        if patch_size is not None:
            return _pair(patch_size)
        pe = getattr(self.model, "patch_embed", None)
        if pe is not None and getattr(pe, "patch_size", None) is not None:
            return _pair(pe.patch_size)
        if isinstance(getattr(self.model, "patch_size", None), int | tuple | list):
            return _pair(self.model.patch_size)
        return None

    def _fast_path_blocker(
        self, vit_classes: tuple[type, ...], block_cls: type | None, attn_cls: type | None
    ) -> str | None:
        """Why the fast path would not be exact for this model, or None when it is."""
        m = self.model
        if type(m) not in vit_classes:
            return f"{type(m).__name__} is not a timm VisionTransformer"
        if self.target_block_index != len(m.blocks) - 1:
            return "the target block is not the last block"
        if getattr(m, "attn_pool", None) is not None or getattr(m, "global_pool", "") != "token":
            return f"global_pool={getattr(m, 'global_pool', None)!r} is not token pooling"
        if self.num_prefix_tokens < 1 or not self.keep_prefix_tokens:
            return "token pooling needs the class token kept in every copy"
        if type(self.block) is not block_cls or type(self.block.attn) is not attn_cls:
            return f"custom block {type(self.block).__name__}/{type(self.block.attn).__name__}"
        attn = self.block.attn
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            return "q/k normalisation makes keys non-affine in the window weight"
        if not isinstance(attn.qkv, nn.Linear):
            return "the attention has no fused qkv Linear"
        return None

    # ------------------------------------------------------------------ public API
    def score_fn(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class scores in float32 (or the logits' own precision when higher)."""
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logits = logits.to(dtype)
        if self.score == "softmax":
            return logits.softmax(dim=-1)
        if self.score == "sigmoid":
            return logits.sigmoid()
        return logits

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The ``(h, w)`` token grid for images of ``image_size = (H, W)``; raises when the
        model cannot take that size."""
        H, W = image_size
        if self._fixed_grid is not None:
            return self._fixed_grid
        ph, pw = self._patch_size  # type: ignore[misc]
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

    def __call__(self, images: torch.Tensor, targets: TargetsLike = None) -> ReciproCAMResult:
        """Explain ``images`` (``[B, 3, H, W]``, on the model's device) for ``targets``
        (None: the predicted class; an int, a sequence or a tensor of class indices)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a [B, C, H, W] tensor, got {shape}")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch")
        param = next(self.model.parameters(), None)
        if param is not None and param.device != images.device:
            raise ValueError(
                f"images are on {images.device} but the model is on {param.device}; move them"
                " with images.to(device)"
            )
        h, w = self.grid_size((int(images.shape[-2]), int(images.shape[-1])))
        with torch.no_grad(), eval_mode(self.model):
            if self.fast_path:
                logits, scores, tgt = self._fast(images, targets, h, w)
            else:
                logits, scores, tgt = self._general(images, targets, h, w)
        probs = self.score_fn(logits).gather(1, tgt[:, None]).squeeze(1)
        return ReciproCAMResult(
            maps=normalize_scores(scores).reshape(-1, h, w).float(),
            scores=scores,
            targets=tgt,
            logits=logits,
            probs=probs,
            grid_size=(h, w),
            fast_path=self.fast_path,
        )

    # ------------------------------------------------------------------ shared pieces
    def _targets(self, targets: TargetsLike, logits: torch.Tensor) -> torch.Tensor:
        B, C = logits.shape
        if targets is None:
            return logits.argmax(dim=1)
        if isinstance(targets, int):
            t = torch.full((B,), targets, dtype=torch.long, device=logits.device)
        else:
            t = torch.as_tensor(targets, device=logits.device).long().reshape(-1)
            if t.numel() == 1 and B > 1:
                t = t.expand(B)
            if t.numel() != B:
                raise ValueError(f"got {t.numel()} targets for {B} images")
        if bool(((t < 0) | (t >= C)).any()):
            raise ValueError(f"targets must be class indices in [0, {C}), got {t.tolist()}")
        return t

    def _check_logits(self, logits: Any) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError(
                f"the model must return [B, num_classes] logits, got"
                f" {getattr(logits, 'shape', type(logits))}"
            )
        return logits

    def _check_tokens(self, tokens: int, h: int, w: int) -> None:
        if tokens != self.num_prefix_tokens + h * w:
            raise ValueError(
                f"the block input has {tokens} tokens but {self.num_prefix_tokens} prefix +"
                f" {h}x{w} spatial tokens were expected; check num_prefix_tokens, grid_size"
                " and the image size"
            )

    # ------------------------------------------------------------------ general path
    def _general(
        self, images: torch.Tensor, targets: TargetsLike, h: int, w: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}

        def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
            captured["x"] = args[0]

        handle = self.block.register_forward_pre_hook(grab) if self._timm_tail else None
        try:
            logits = self._check_logits(self.model(images))
        finally:
            if handle is not None:
                handle.remove()
        if self._timm_tail:
            self._check_tokens(captured["x"].shape[1], h, w)
        tgt = self._targets(targets, logits)
        n, P, B = h * w, self.num_prefix_tokens, images.shape[0]
        device = images.device
        prefix_w = 1.0 if self.keep_prefix_tokens else 0.0
        spatial = window_weights(h, w, self.kernel, device=device, dtype=torch.float64)
        weights = torch.cat(
            [torch.full((n, P), prefix_w, device=device, dtype=torch.float64), spatial], dim=1
        )
        state: dict[str, torch.Tensor] = {}

        def expand_input(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            self._check_tokens(x.shape[1], h, w)
            return (x.index_select(0, state["image"]),) + tuple(args[1:])

        def mask_output(_m: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            return out * state["weight"].to(out.dtype).unsqueeze(-1)

        scores = []
        total = B * n
        handles = [self.norm1.register_forward_hook(mask_output)]
        if not self._timm_tail:
            handles.append(self.block.register_forward_pre_hook(expand_input))
        try:
            for start in range(0, total, self.max_batch):
                stop = min(start + self.max_batch, total)
                ids = torch.arange(start, stop, device=device)
                state["weight"] = weights[ids % n]
                if self._timm_tail:
                    # a timm ViT's forward after its blocks is norm + forward_head: run only
                    # the target block onwards on the block input kept from the forward above
                    y = captured["x"].index_select(0, ids // n)
                    for blk in self.model.blocks[self.target_block_index :]:
                        y = blk(y)
                    out = self.model.forward_head(self.model.norm(y))
                else:
                    # any other model: its own forward on the images of this chunk, with the
                    # block input expanded to one row per copy
                    first, last = start // n, (stop - 1) // n
                    state["image"] = ids // n - first
                    out = self.model(images[first : last + 1])
                out = self._check_logits(out)
                target = tgt[ids // n]
                scores.append(self.score_fn(out).gather(1, target[:, None]).squeeze(1))
        finally:
            for handle in handles:
                handle.remove()
        return logits, torch.cat(scores).reshape(B, n), tgt

    # ------------------------------------------------------------------ fast path
    def _block_input(self, images: torch.Tensor) -> torch.Tensor:
        """The last block's input, computed by the model's own forward up to that block."""
        captured: dict[str, torch.Tensor] = {}

        def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
            captured["x"] = args[0]
            raise _StopForward

        handle = self.block.register_forward_pre_hook(grab)
        try:
            self.model(images)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "x" not in captured:
            raise RuntimeError(f"{self.block_name} was not called by the model's forward")
        return captured["x"]

    def _fast(
        self, images: torch.Tensor, targets: TargetsLike, h: int, w: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self._block_input(images)
        B, T, D = x.shape
        self._check_tokens(T, h, w)
        P, n = self.num_prefix_tokens, h * w
        attn = self.block.attn
        H, d = attn.num_heads, attn.head_dim
        feats = self.block.norm1(x)
        # keys/values of a token scaled by a window weight are affine in that weight, so every
        # token is projected once per image (bias-free) and copies only rescale the projections
        proj = F.linear(feats, attn.qkv.weight)
        # under autocast the projections come back in low precision; the per-copy rescaling and
        # the folded attention run in float32 so they add no rounding of their own
        acc = torch.promote_types(proj.dtype, torch.float32)
        proj = proj.to(acc)
        bias = attn.qkv.bias
        zeros = torch.zeros(3 * H * d, device=x.device, dtype=acc)
        bq, bk, bv = (zeros if bias is None else bias.to(acc)).view(3, H, d)
        heads = proj.view(B, T, 3, H, d).permute(2, 0, 3, 1, 4)  # [3, B, H, T, d]
        q = heads[0, :, :, :P] + bq[:, None]  # [B, H, P, d]: prefix queries, same in every copy
        k0, v0 = heads[1], heads[2]
        qk = q @ k0.transpose(-1, -2) * attn.scale  # [B, H, P, T]: q . (bias-free key)
        qb = (q * bk[:, None]).sum(-1) * attn.scale  # [B, H, P]: q . key bias
        vb = bv.reshape(1, H, 1, d)
        gate = (
            attn.gate(feats[:, :P]).sigmoid() if getattr(attn, "gate", None) is not None else None
        )

        # the unmasked prediction: prefix queries over all T tokens; softmax weights sum to 1,
        # so every value's bias adds up to the bias itself
        prob = (qk + qb[..., None]).softmax(dim=-1)
        out = (prob @ v0 + vb)[:, :, None]  # [B, H, 1, P, d]
        logits = self._check_logits(self._prefix_tail(x[:, :P], out, gate)[:, 0])
        tgt = self._targets(targets, logits)

        index, weight, valid = window_slots(h, w, self.kernel, device=x.device, dtype=acc)
        count = valid.sum(dim=1)
        # every masked-out token is the exact zero vector, so all of them share key bk and value
        # bv: one slot whose logit gets +log(multiplicity), -inf when no such token exists
        inf = torch.tensor(-math.inf, device=x.device, dtype=acc)
        zero_bias = torch.where(count < n, (n - count).to(acc).log(), inf)  # [n]
        win_bias = torch.where(valid, torch.zeros((), device=x.device, dtype=acc), inf)
        # same token budget per pass as the general path: max_batch sequences of T tokens
        step = max(1, (self.max_batch * T) // (n * (P + 10) + n * T // 8))
        scores = []
        for s in range(0, B, step):
            sl = slice(s, min(s + step, B))
            b = sl.stop - sl.start
            qk_b, qb_b = qk[sl], qb[sl, :, :, None, None]
            # attention logits over each copy's P + 9 + 1 slots: prefix, window, folded zeros
            pre = (qk_b[..., :P] + qb_b[..., 0]).unsqueeze(-2).expand(b, H, P, n, P)
            win = qk_b[..., P:][..., index] * weight + qb_b + win_bias  # [b, H, P, n, 9]
            zero = qb_b[..., 0] + zero_bias  # [b, H, P, n]
            prob = torch.cat([pre, win, zero.unsqueeze(-1)], dim=-1).softmax(dim=-1)
            p_pre, p_win = prob[..., :P], prob[..., P : P + 9]
            # the window's values are weight * bias-free value (+ bias, folded below): gather
            # the 9 coefficients into a dense copy x token matrix and multiply once
            coef = torch.zeros(b, H, P, n, n, device=x.device, dtype=acc)
            coef.scatter_add_(-1, index.expand(b, H, P, n, 9), p_win * weight)
            out = p_pre @ v0[sl, :, None, :P] + (coef.flatten(2, 3) @ v0[sl, :, P:]).view(
                b, H, P, n, d
            )
            out = (out + vb[..., None, :]).transpose(2, 3)  # [b, H, n, P, d]
            logit = self._prefix_tail(x[sl, :P], out, None if gate is None else gate[sl])
            target = tgt[sl].repeat_interleave(n)
            sc = self.score_fn(logit.reshape(b * n, -1)).gather(1, target[:, None]).squeeze(1)
            scores.append(sc.reshape(b, n))
        return logits, torch.cat(scores), tgt

    def _prefix_tail(
        self, x_pre: torch.Tensor, attn_out: torch.Tensor, gate: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits ``[B, N, C]`` of N copies per image from the prefix rows of the last block.

        ``x_pre`` ``[B, P, D]``: the block input's prefix rows; ``attn_out`` ``[B, H, N, P, d]``:
        each copy's attention output (before the heads are merged) for those rows.
        """
        blk, attn, m = self.block, self.block.attn, self.model
        B, H, N, P, d = attn_out.shape
        out = attn_out.permute(0, 2, 3, 1, 4).reshape(B, N, P, H * d).to(x_pre.dtype)
        out = attn.norm(out)
        if gate is not None:
            out = out * gate[:, None]
        out = attn.proj_drop(attn.proj(out))
        y = x_pre[:, None] + blk.drop_path1(blk.ls1(out))
        y = y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
        y = m.norm(y.reshape(B * N, P, -1))
        return m.forward_head(y).reshape(B, N, -1)


def normalize_scores(scores: torch.Tensor) -> torch.Tensor:
    """Min-max normalise ``[B, n]`` scores per row into [0, 1]; a constant row gives zeros."""
    lo = scores.amin(dim=1, keepdim=True)
    span = scores.amax(dim=1, keepdim=True) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (scores - lo) / safe, torch.zeros_like(scores))


Explainer = Callable[[torch.Tensor, TargetsLike], ReciproCAMResult]
