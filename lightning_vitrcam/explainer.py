"""ViT-ReciproCAM: gradient-free, attention-free saliency for Vision Transformers.

Byun & Lee, "ViT-ReciproCAM" (arXiv 2310.02588). The output of the first LayerNorm (``norm1``)
of a transformer block is copied once per spatial token; copy ``k`` keeps the prefix tokens
(CLS, distillation, registers) and only a 3x3 Gaussian window of spatial tokens around ``k``.
Every copy runs through the rest of the network (the residual stream into the block is not
masked) and its target-class score becomes the saliency of token ``k``.

Hierarchical models (Swin and its kin) get the same treatment at one block of one stage, on
that stage's grid (:mod:`lightning_vitrcam.adapters.hierarchical`).

This module is the family-independent core: targets, the score function, the chunked masked
copies and the normalisation. What a model family looks like inside lives in
:mod:`lightning_vitrcam.adapters`; the exact fast path for token-pooled timm ViTs (about the cost
of one forward) in :mod:`lightning_vitrcam.fast_path`. Both paths give the same answer.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_vitrcam._ops import minmax, safe_div
from lightning_vitrcam.adapters import Copies, MaskSite, build_adapter, unwrap_model
from lightning_vitrcam.adapters.base import _pair, hooked, on_input
from lightning_vitrcam.fast_path import FastPath, fast_path_blocker
from lightning_vitrcam.masks import KERNELS, window_weights
from lightning_vitrcam.tasks import SCORE_TASKS, Task, task_for

__all__ = [
    "SCORES",
    "ReciproCAMResult",
    "TargetsLike",
    "ViTReciproCAM",
    "eval_mode",
    "normalize_scores",
    "unwrap_model",
]

SCORES: tuple[str, ...] = ("softmax", "logit", "sigmoid")
TargetsLike = None | int | Sequence[int] | torch.Tensor


@dataclass
class ReciproCAMResult:
    """What :class:`ViTReciproCAM` returns for a batch of ``B`` images on an ``h x w`` grid.

    The maps are min-max normalised from the copies' log-odds in float64, not from the rounded
    probabilities, so they stay exact where a confident model's float32 softmax rounds to 1.0
    for every copy (``scores`` then shows 1.0 everywhere while ``maps`` and ``score_range`` keep
    the exact differences).

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
        score_range: ``[B]`` max minus min of each image's raw copy scores, computed exactly
            (what min-max normalisation divides by), in float64 (float32 on MPS) so that the
            tiny ranges of a saturated softmax do not underflow.
        log_odds_range: ``[B]`` max minus min over the copies of the target's log-odds
            ``log(p / (1 - p))`` (the logit itself for ``score="logit"``): how much masking
            moves the model's evidence, whatever the saturation of the probability.
    """

    maps: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    grid_size: tuple[int, int]
    fast_path: bool
    score_range: torch.Tensor
    log_odds_range: torch.Tensor


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


def normalize_scores(scores: torch.Tensor) -> torch.Tensor:
    """Min-max normalise ``[B, n]`` scores per row into [0, 1]; a constant row gives zeros."""
    return minmax(scores, dim=1)


def _spread_of_probabilities(log_odds: torch.Tensor) -> torch.Tensor:
    """``p - min(p)`` per row for ``p = sigmoid(log_odds)``, without cancellation: rows that
    reach above 1/2 are measured from the top (``1 - p`` is exact there, ``p`` is not)."""
    p, q = log_odds.sigmoid(), (-log_odds).sigmoid()
    upper = log_odds.amax(dim=1, keepdim=True) > 0
    return torch.where(upper, q.amax(dim=1, keepdim=True) - q, p - p.amin(dim=1, keepdim=True))


@contextlib.contextmanager
def _float32_heads(heads: Sequence[nn.Module], device_type: str) -> Iterator[None]:
    """Under autocast, recompute the classifier(s) in float32: bf16/fp16 logits (8-11 bit
    mantissas) would round away the copies' score differences."""
    if not heads or not torch.is_autocast_enabled(device_type):
        yield
        return

    def full_precision(m: nn.Module, args: tuple[Any, ...], _out: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, enabled=False):
            bias = None if m.bias is None else m.bias.float()
            return F.linear(args[0].float(), m.weight.float(), bias)

    with contextlib.ExitStack() as stack:
        for head in heads:
            stack.enter_context(hooked(head, post=full_precision))
        yield


class ViTReciproCAM:
    """Explain a Vision Transformer's predictions with ViT-ReciproCAM.

    Args:
        model: a timm ``VisionTransformer`` (any prefix tokens, pooling, patch size, image size,
            ``dynamic_img_size``) or ``VisionTransformerDistilled``, timm ``Eva``, ``Beit``,
            ``Cait``, ``NaFlexVit``, an HF ``ViT``/``DeiT``/``Dinov2`` image classifier,
            torchvision's ``VisionTransformer`` (the table in ``docs/models.md``), any model
            laid out like timm's (``.blocks`` with ``norm1``, ``.patch_embed``), or any
            pre-norm transformer classifier when ``target_layer`` is given; hierarchical
            models (Swin in timm, torchvision and HF; Hiera in timm and HF; timm PVT v2,
            Twins, MViT v2, MaxViT, PiT) at one block of one stage, the library's extension
            beyond the paper
            (:mod:`~lightning_vitrcam.adapters.hierarchical`). ``torch.compile``d modules
            are unwrapped. The model is used as it is: no copy, no parameter touched.
        target_block: index into the model's blocks of the block whose first norm output is
            masked (the attention input for post-norm blocks; default the last block as in the
            paper's figure, ``-2`` is the authors' code default). Hierarchical models count
            their blocks over all stages, and the map has the target block's stage grid.
        kernel: ``"gaussian"`` (3x3, the paper's default) or ``"point"`` (1x1).
        keep_prefix_tokens: keep the prefix tokens (CLS, ...) unmasked in every copy (paper).
        score: ``"softmax"`` (paper), ``"logit"`` or ``"sigmoid"`` (multi-label models): the
            task's short names (``"multiclass"``, ``"logit"``, ``"multilabel"``).
        task: the classification task instead of ``score``: ``"multiclass"``,
            ``"binary"`` (one logit: the predicted side is explained on its probability),
            ``"multilabel"`` or ``"logit"``, or a :class:`~lightning_vitrcam.tasks.Task`.
        max_batch: at most this many full-length sequences per pass (memory bound); the fast
            path uses the same token budget.
        target_layer: generic path, the first norm of the block to mask (e.g. torchvision
            ``model.encoder.layers[-1].ln_1``); its parent module is taken as the block.
        num_prefix_tokens: prefix tokens before the spatial tokens (default
            ``model.num_prefix_tokens`` when present).
        grid_size: fixed ``(h, w)`` token grid, else derived from the patch size.
        patch_size: patch size when the model does not expose one
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
        task: str | Task | None = None,
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
        self.task = task_for(SCORE_TASKS[score] if task is None else task)
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        self.model = unwrap_model(model)
        self.kernel = kernel
        self.keep_prefix_tokens = keep_prefix_tokens
        self.score = score
        self.max_batch = max_batch
        self._fixed_grid = None if grid_size is None else _pair(grid_size)

        self.adapter = build_adapter(self.model, target_layer, num_prefix_tokens, patch_size)
        n_blocks = len(self.adapter.blocks)
        if target_layer is not None:
            target_block = 0
        elif not -n_blocks <= target_block < n_blocks:
            raise ValueError(
                f"target_block={target_block} is out of range for a model with {n_blocks}"
                f" blocks (valid: {-n_blocks}..{n_blocks - 1})"
            )
        self.target_block_index = target_block % n_blocks
        self.block = self.adapter.blocks[self.target_block_index]
        self.mask_site: MaskSite = self.adapter.mask_site(self.block)
        self.norm1 = self.mask_site.module
        self.block_name = self.adapter.block_name(self.target_block_index)
        self.num_prefix_tokens = self.adapter.num_prefix_tokens
        if self._fixed_grid is None and self.adapter.patch_size is None:
            raise ValueError(
                f"cannot derive the token grid of {type(self.model).__name__}: it exposes no"
                " patch_embed.patch_size or patch_size; pass grid_size=(h, w) or patch_size="
            )

        reason = fast_path_blocker(
            self.adapter, self.target_block_index, self.num_prefix_tokens, keep_prefix_tokens
        )
        if fast_path and reason:
            raise ValueError(f"fast_path=True but the fast path is not exact here: {reason}")
        self.fast_path = reason is None if fast_path is None else bool(fast_path)
        self.fast_path_reason = reason
        self._fast = (
            FastPath(self.adapter, self.target_block_index, max_batch) if self.fast_path else None
        )

    # ------------------------------------------------------------------ public API
    def score_fn(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class scores in float32 (or the logits' own precision when higher): the task's
        probabilities (a binary head's two sides, negative and positive)."""
        return self.task.scores(logits)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The model's logits on ``images``, computed the way an explanation computes its
        unmasked logits (:attr:`ReciproCAMResult.logits`): in eval mode, heads in float32 under
        autocast and, on the fast path, the last block run for the prefix rows only (the rest
        of its rows never reach a token-pooled head). Equal to the model's forward up to float
        rounding, and cheaper on the fast path. The shortcut alarm scores its occluded copies
        with it, so that their scores and the explanation's compare the same computation.

        Example:
            >>> import timm, torch
            >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
            ...                           num_classes=3, depth=2, embed_dim=32, num_heads=2)
            >>> x = torch.randn(2, 3, 32, 32)
            >>> cam = ViTReciproCAM(model.eval())
            >>> torch.allclose(cam.predict(x), cam(x).logits), cam.fast_path
            (True, True)
        """
        with self._route(images):
            if self._fast is not None:
                return self._fast.prepare(images, self.num_prefix_tokens)[1]
            return self._check_logits(self.adapter.forward(images))

    @contextlib.contextmanager
    def _route(self, images: torch.Tensor) -> Iterator[None]:
        """How an explanation and :meth:`predict` run the model: without gradients, in eval
        mode, its heads in float32 under autocast."""
        heads = self.adapter.classifiers()
        with torch.no_grad(), eval_mode(self.model), _float32_heads(heads, images.device.type):
            yield

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The ``(h, w)`` token grid for images of ``image_size = (H, W)``; raises when the
        model cannot take that size."""
        if self._fixed_grid is not None:
            return self._fixed_grid
        return self.adapter.block_grid(image_size, self.target_block_index)

    def __call__(self, images: torch.Tensor, targets: TargetsLike = None) -> ReciproCAMResult:
        """Explain ``images`` (``[B, C, H, W]``, on the model's device) for ``targets``
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
        with self._route(images):
            if self._fast is not None:
                shared, logits = self._fast.prepare(images, self.num_prefix_tokens)
                self._check_tokens(shared.x, h, w)
                tgt = self._targets(targets, self._check_logits(logits))
                evidence = self._fast.scores(shared, tgt, h, w, self.kernel, self._evidence)
            else:
                logits, evidence, tgt = self._general(images, targets, h, w)
        return self._result(logits, evidence, tgt, (h, w))

    def _result(
        self,
        logits: torch.Tensor,
        evidence: torch.Tensor,
        tgt: torch.Tensor,
        grid: tuple[int, int],
    ) -> ReciproCAMResult:
        """Scores, exact maps and ranges from the copies' evidence (see :meth:`_evidence`)."""
        out_dtype = torch.promote_types(logits.dtype, torch.float32)
        unmasked = self._evidence(logits, tgt)
        log_odds_range = evidence.amax(dim=1) - evidence.amin(dim=1)
        if not self.task.probabilistic:
            spread = evidence - evidence.amin(dim=1, keepdim=True)
            scores, probs = evidence, unmasked
        else:
            spread = _spread_of_probabilities(evidence)
            scores, probs = evidence.sigmoid(), unmasked.sigmoid()
        score_range = spread.amax(dim=1)
        maps = safe_div(spread, score_range[:, None])
        return ReciproCAMResult(
            maps=maps.reshape(-1, *grid).float(),
            scores=scores.to(out_dtype),
            targets=tgt,
            logits=logits,
            probs=probs.to(out_dtype),
            grid_size=grid,
            fast_path=self.fast_path,
            score_range=score_range,
            log_odds_range=log_odds_range.to(out_dtype),
        )

    # ------------------------------------------------------------------ shared pieces
    def _evidence(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each row's evidence for its target class, in float64: the log-odds
        ``log(p/(1-p))`` of the task's probability (the logit itself for a sigmoid), or the
        logit for ``score="logit"``. The probability is ``sigmoid`` of it; unlike the
        probability it never rounds to a constant."""
        return self.task.evidence(logits, targets)

    def _targets(self, targets: TargetsLike, logits: torch.Tensor) -> torch.Tensor:
        B, C = logits.shape[0], self.task.num_classes(logits.shape[1])
        if targets is None:
            return self.task.predicted(logits)
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

    def _check_tokens(self, x: torch.Tensor, h: int, w: int) -> None:
        tokens = self.adapter.block_tokens(x)
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
        """All copies of all images through the rest of the network, ``max_batch`` at a time."""
        captured: dict[str, torch.Tensor] = {}

        def grab(x: torch.Tensor) -> None:
            captured["x"] = x

        # the block may get its hidden states positionally or by keyword (HF layers)
        with on_input(self.block, grab):
            logits = self._check_logits(self.adapter.forward(images))
        if "x" not in captured:
            raise RuntimeError(f"{self.block_name} was not called by the model's forward")
        x = captured["x"]
        self._check_tokens(x, h, w)
        tgt = self._targets(targets, logits)
        n, P, B = h * w, self.num_prefix_tokens, images.shape[0]
        device = images.device
        prefix_w = 1.0 if self.keep_prefix_tokens else 0.0
        spatial = window_weights(h, w, self.kernel, device=device, dtype=torch.float64)
        weights = torch.cat(
            [torch.full((n, P), prefix_w, device=device, dtype=torch.float64), spatial], dim=1
        )
        chunk: dict[str, torch.Tensor] = {}

        site = self.mask_site

        def mask(t: torch.Tensor) -> torch.Tensor:
            return site.weigh(t, chunk["weight"], (h, w))

        def mask_output(_m: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            return mask(out)

        # a post-norm block's attention input (on_input) or a pre-norm block's first norm output
        masking = (
            on_input(site.module, mask) if site.on_input else hooked(site.module, post=mask_output)
        )
        evidence = []
        total = B * n
        with masking:
            for start in range(0, total, self.max_batch):
                stop = min(start + self.max_batch, total)
                ids = torch.arange(start, stop, device=device)
                chunk["weight"] = weights[ids % n]
                copies = Copies(rows=ids // n, first=start // n, stop=(stop - 1) // n + 1)
                out = self.adapter.tail(self.target_block_index, self.block, x, images, copies)
                evidence.append(self._evidence(self._check_logits(out), tgt[copies.rows]))
        return logits, torch.cat(evidence).reshape(B, n), tgt
