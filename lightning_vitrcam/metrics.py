"""Explanation quality, localisation and shortcut signals for saliency maps.

Three families, all batched on the maps' device (no Python loop over images):

* ADCC (Poppi et al., CVPR-W 2021) and its parts: :func:`adcc_scores` per image and the
  :class:`ADCC` ``torchmetrics`` metric that accumulates them over a data set.
* Localisation against known object masks: :func:`energy_in_mask`, :func:`pointing_game`.
* Mask-free shortcut signals: :func:`mean_saliency_map`, :func:`hotspot_ratio`,
  :func:`border_energy` and :func:`map_drift` between two explanations of the same images
  (e.g. two training epochs).

``cam`` below is anything called as ``cam(images, targets=None)`` that returns an object with
``maps`` ``[B, h, w]`` in [0, 1], ``logits`` ``[B, C]`` and ``targets`` ``[B]``, and has
``cam.score_fn(logits) -> [B, C]`` (a :class:`~lightning_vitrcam.explainer.ViTReciproCAM`).

Example:
    >>> import torch
    >>> maps = torch.zeros(2, 4, 4); maps[:, 0, 0] = 1.0
    >>> float(hotspot_ratio(maps)), float(border_energy(maps).mean())
    (16.0, 1.0)
    >>> masks = maps > 0
    >>> energy_in_mask(maps, masks).tolist(), pointing_game(maps, masks).tolist()
    ([1.0, 1.0], [1.0, 1.0])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from lightning_vitrcam._ops import as_maps, safe_div

__all__ = [
    "ADCC",
    "ADCC_KEYS",
    "adcc_scores",
    "border_energy",
    "border_fraction",
    "FLAT_LOG_ODDS",
    "energy_in_mask",
    "flat_maps",
    "hotspot_ratio",
    "map_drift",
    "mean_saliency_map",
    "pearson",
    "pointing_game",
]

ADCC_KEYS: tuple[str, ...] = ("average_drop", "increase", "coherency", "complexity", "adcc")

# A map is flat (no signal) when its copies move the target's log-odds by less than this.
FLAT_LOG_ODDS = 1e-3
# Maps live in [0, 1]; anything whose spread is below this is treated as constant so that a
# float32 rounding residue never turns into a meaningless correlation.
_CONST_TOL = 1e-6
_TINY = 1e-12


# --------------------------------------------------------------------------- small helpers
def _check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise ValueError(f"{what} contain {n_nan} NaN and {n_inf} inf values")


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``) upsampling of ``[B, h, w]`` maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _is_constant(x: torch.Tensor) -> torch.Tensor:
    """Per row of ``[B, N]``: spread below ``_CONST_TOL`` (relative for large values)."""
    spread = x.amax(dim=1) - x.amin(dim=1)
    scale = x.abs().amax(dim=1).clamp_min(1.0)
    return spread <= _CONST_TOL * scale


def pearson(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlation of each pair of rows (any trailing shape is flattened).

    Returns ``(r, defined)``: ``r`` ``[B]`` float32 in [-1, 1], set to 0 where undefined, and
    ``defined`` ``[B]`` bool, False where either row is constant (zero variance).

    Example:
        >>> r, ok = pearson(torch.tensor([[0., 1, 2]]), torch.tensor([[0., 2, 4]]))
        >>> round(float(r), 4), ok.tolist()
        (1.0, [True])
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    # float64 keeps the centred sums exact enough for near-constant maps; MPS has no float64
    acc = torch.float32 if a.device.type == "mps" else torch.float64
    a, b = a.to(acc), b.to(acc)
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    denom = (ac.square().sum(dim=1) * bc.square().sum(dim=1)).sqrt()
    defined = ~(_is_constant(a) | _is_constant(b)) & (denom > _TINY)
    r = (ac * bc).sum(dim=1) / torch.where(defined, denom, torch.ones_like(denom))
    r = torch.where(defined, r.clamp(-1.0, 1.0), torch.zeros_like(r))
    return r.float(), defined


def _harmonic(
    coherency: torch.Tensor, complexity: torch.Tensor, drop: torch.Tensor
) -> torch.Tensor:
    """ADCC = 3 / (1/coh + 1/(1-complexity) + 1/(1-AD)); 0 where a part is degenerate.

    A harmonic mean is 0 as soon as one term is 0, so coherency 0, complexity 1 or drop 1 give
    0 (their limit) instead of a division by zero.
    """
    parts = torch.stack([coherency, 1.0 - complexity, 1.0 - drop])
    ok = (parts > _TINY).all(dim=0)
    safe = torch.where(ok, parts, torch.ones_like(parts))
    value = 3.0 / safe.reciprocal().sum(dim=0)
    return torch.where(ok, value, torch.zeros_like(value))


def _target_scores(
    cam: Any, logits: torch.Tensor, targets: torch.Tensor, what: str
) -> torch.Tensor:
    _check_finite(logits, f"the {what} logits")
    scores = cam.score_fn(logits).gather(1, targets.reshape(-1, 1).long()).squeeze(1)
    _check_finite(scores, f"the {what} target-class scores")
    if bool((scores < 0).any()):
        raise ValueError(
            f"the {what} target-class scores must be non-negative probabilities for average"
            f" drop, got min {float(scores.min()):.4g}; explain with score='softmax' or"
            " score='sigmoid' (score='logit' can be negative)"
        )
    return scores.float()


# --------------------------------------------------------------------------- ADCC
def adcc_scores(
    cam: Any, images: torch.Tensor, targets: Any = None, result: Any = None
) -> dict[str, torch.Tensor]:
    """Per-image ADCC and its parts (Poppi et al. 2021).

    With ``Y`` the target-class score (``cam.score_fn``, softmax by default) of each image and
    ``O`` that of its explanation image ``x * S_up`` (the input tensor times the map upsampled
    bilinearly to the input size):

    * ``average_drop`` = max(0, Y - O) / Y (0 when Y == 0: nothing can drop);
    * ``increase`` = 1.0 where O > Y;
    * ``coherency`` = (1 + Pearson(map(x), map(x * S_up))) / 2, the second map explaining the
      same class; 0 when either map is constant (Pearson undefined);
    * ``complexity`` = mean of the [0, 1] map;
    * ``adcc`` = 3 / (1/coherency + 1/(1 - complexity) + 1/(1 - average_drop)), 0 when a part
      is degenerate (coherency 0, complexity 1 or drop 1).

    Cost: exactly one extra explanation call ``cam(x * S_up, targets=result.targets)``. Pass
    ``result`` (an explanation of ``images`` already computed) to reuse its maps, logits and
    targets; without it ``cam(images, targets)`` is called first. ``targets`` is ignored when
    ``result`` is given (its ``targets`` are the classes explained).

    Raises ``ValueError`` when logits or scores contain NaN/inf, or when a target-class score
    is negative (``score="logit"`` explainers: average drop needs probabilities).

    Returns:
        dict of ``[B]`` float32 tensors with the keys in ``ADCC_KEYS``.

    Example:
        >>> import timm, torch
        >>> from lightning_vitrcam.explainer import ViTReciproCAM
        >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
        ...                           num_classes=4, depth=1, embed_dim=32, num_heads=2)
        >>> out = adcc_scores(ViTReciproCAM(model), torch.randn(2, 3, 32, 32))
        >>> sorted(out), tuple(out["adcc"].shape)
        (['adcc', 'average_drop', 'coherency', 'complexity', 'increase'], (2,))
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = getattr(images, "shape", type(images))
        raise ValueError(f"images must be a [B, C, H, W] tensor, got {shape}")
    if result is None:
        result = cam(images, targets=targets)
    maps = as_maps(result.maps, "result.maps")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"result explains {maps.shape[0]} images but {images.shape[0]} were given")
    _check_finite(maps, "the saliency maps")
    tgt = result.targets
    y = _target_scores(cam, result.logits, tgt, "image")

    s_up = _upsample(maps.to(images.device, torch.float32), tuple(images.shape[-2:]))
    explanation = images * s_up[:, None].to(images.dtype)
    masked = cam(explanation, targets=tgt)
    o = _target_scores(cam, masked.logits, tgt, "explanation image").to(y.device)
    masked_maps = as_maps(masked.maps, "explanation maps").to(maps.device)
    _check_finite(masked_maps, "the explanation-image saliency maps")

    drop = safe_div((y - o).clamp_min(0), y).clamp(0.0, 1.0)
    increase = (o > y).float()
    r, defined = pearson(maps, masked_maps)
    # Pearson undefined (a constant map) counts as coherency 0, not 0.5 (r=0), as in the paper
    coherency = torch.where(defined, (1.0 + r) / 2.0, torch.zeros_like(r)).to(y.device)
    complexity = maps.float().mean(dim=(1, 2)).to(y.device)
    return {
        "average_drop": drop,
        "increase": increase,
        "coherency": coherency,
        "complexity": complexity,
        "adcc": _harmonic(coherency, complexity, drop),
    }


class ADCC(Metric):
    """ADCC over a data set as a ``torchmetrics`` metric.

    Every state is a running sum (``dist_reduce_fx="sum"``), so torchmetrics syncs it across
    processes and one ``update`` over all images equals several updates over parts of them.
    Values are fractions in [0, 1] (the paper's tables show percentages).

    ``compute()`` returns a dict:

    * ``adcc``: the paper's Table 1 form, the harmonic mean of the data-set averages,
      ``3 / (1/mean(coherency) + 1/(1 - mean(complexity)) + 1/(1 - mean(average_drop)))``;
    * ``adcc_per_image``: the mean of the per-image ADCC values (smaller: one degenerate image
      counts as 0);
    * ``average_drop``, ``increase``, ``coherency``, ``complexity``: data-set means.

    Before any update every value is 0. The explainer is kept as a plain attribute (not a
    submodule), so the metric's ``state_dict`` never contains the model.

    Example:
        >>> import timm, torch
        >>> from lightning_vitrcam.explainer import ViTReciproCAM
        >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
        ...                           num_classes=4, depth=1, embed_dim=32, num_heads=2)
        >>> metric = ADCC(ViTReciproCAM(model))
        >>> metric.update(torch.randn(2, 3, 32, 32))
        >>> sorted(metric.compute())[:2]
        ['adcc', 'adcc_per_image']
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    _SUM_KEYS: tuple[str, ...] = ADCC_KEYS

    def __init__(self, cam: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # bypass nn.Module.__setattr__ so that an nn.Module explainer is not registered as a
        # child (its model would land in this metric's state_dict and device moves)
        object.__setattr__(self, "cam", cam)
        for key in self._SUM_KEYS:
            self.add_state(f"sum_{key}", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, targets: Any = None, result: Any = None) -> None:
        """Add a batch; ``result`` reuses an explanation of ``images`` already computed."""
        scores = adcc_scores(self.cam, images, targets=targets, result=result)
        for key in self._SUM_KEYS:
            state = getattr(self, f"sum_{key}")
            setattr(self, f"sum_{key}", state + scores[key].sum().to(state))
        self.count = self.count + scores["adcc"].numel()

    def compute(self) -> dict[str, torch.Tensor]:
        """Data-set means of the parts, ``adcc`` (paper form) and ``adcc_per_image``."""
        n = self.count.clamp_min(1.0)
        means = {key: getattr(self, f"sum_{key}") / n for key in self._SUM_KEYS}
        return {
            "adcc": _harmonic(means["coherency"], means["complexity"], means["average_drop"]),
            "adcc_per_image": means["adcc"],
            "average_drop": means["average_drop"],
            "increase": means["increase"],
            "coherency": means["coherency"],
            "complexity": means["complexity"],
        }


# --------------------------------------------------------------------------- localisation
def _as_masks(masks: torch.Tensor, batch: int) -> torch.Tensor:
    """Float ``[B, H, W]`` from bool/float masks ``[B, H, W]``, ``[B, 1, H, W]`` or ``[H, W]``."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() == 2:
        masks = masks.expand(batch, *masks.shape)
    if masks.dim() != 3 or masks.shape[0] != batch:
        raise ValueError(
            f"masks must be [B, H, W], [B, 1, H, W] or [H, W] with B={batch}, got"
            f" {tuple(masks.shape)}"
        )
    return masks.float()


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Energy-based pointing game: share of saliency inside the object mask, per image.

    ``sum(S_up * mask) / sum(S_up)`` with ``S_up`` the map upsampled bilinearly to the mask's
    size (masks at image or at map resolution both work). Float masks act as weights in [0, 1].
    An all-zero map gives 0.

    Example:
        >>> m = torch.tensor([[[0., 1.], [0., 1.]]])
        >>> energy_in_mask(m, m > 0).tolist()
        [1.0]
    """
    maps = as_maps(maps)
    masks = _as_masks(masks, maps.shape[0]).to(maps.device)
    s_up = _upsample(maps.float(), tuple(masks.shape[-2:])).clamp_min(0.0)
    total = s_up.sum(dim=(1, 2))
    inside = (s_up * masks).sum(dim=(1, 2))
    return safe_div(inside, total, _TINY)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1.0 per image where the maximum of the upsampled map lies inside the mask, else 0.0.

    ``S_up`` is the map upsampled bilinearly to the mask's size; ties go to the first maximum
    in row-major order; float masks count as inside where ``>= 0.5``. A constant map points
    nowhere and scores 0.

    Example:
        >>> m = torch.tensor([[[0., 0.], [0., 1.]]])
        >>> pointing_game(m, m > 0).tolist(), pointing_game(m, m == 0).tolist()
        ([1.0], [0.0])
    """
    maps = as_maps(maps)
    masks = _as_masks(masks, maps.shape[0]).to(maps.device)
    s_up = _upsample(maps.float(), tuple(masks.shape[-2:])).flatten(1)
    peak = s_up.argmax(dim=1, keepdim=True)
    hit = masks.flatten(1).gather(1, peak).squeeze(1) >= 0.5
    return (hit & ~_is_constant(s_up)).float()


# --------------------------------------------------------------------------- shortcut signals
def mean_saliency_map(maps: torch.Tensor) -> torch.Tensor:
    """Average where-the-model-looks map ``[h, w]``, summing to 1.

    Each map (negative values clipped to 0) is first normalised to sum 1 so every image weighs
    the same; all-zero maps (a constant score, no information) are skipped. When every map is
    zero the result is uniform.

    Example:
        >>> maps = torch.zeros(3, 2, 2); maps[:2, 0, 0] = 1.0
        >>> mean_saliency_map(maps)[0, 0].item()
        1.0
    """
    maps = as_maps(maps).float().clamp_min(0.0)
    sums = maps.sum(dim=(1, 2))
    normed = safe_div(maps, sums[:, None, None], _TINY)
    n = (sums > _TINY).sum()
    h, w = maps.shape[-2:]
    uniform = torch.full((h, w), 1.0 / (h * w), device=maps.device)
    # torch.where keeps this free of a host sync on the "no valid map" branch
    return torch.where(n > 0, normed.sum(dim=0) / n.clamp_min(1), uniform)


def _mean_map(maps_or_mean: torch.Tensor) -> torch.Tensor:
    """``[h, w]`` map summing to 1 from either a batch of maps or a mean map."""
    if maps_or_mean.dim() == 2:
        return mean_saliency_map(maps_or_mean[None])
    return mean_saliency_map(maps_or_mean)


def hotspot_ratio(maps_or_mean: torch.Tensor) -> torch.Tensor:
    """How concentrated the mean saliency is: ``max(mean map) * number of positions``.

    1.0 for a uniform mean map, up to ``h*w`` when every image peaks at the same single
    position (a watermark or corner cue looks like that). Takes ``[B, h, w]`` maps or an
    ``[h, w]`` mean map (renormalised to sum 1). Returns a scalar tensor.

    Example:
        >>> float(hotspot_ratio(torch.ones(4, 4)))
        1.0
    """
    mean = _mean_map(maps_or_mean)
    return mean.max() * mean.numel()


def _ring(h: int, w: int, width: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    r_edge = (rows < width) | (rows >= h - width)
    c_edge = (cols < width) | (cols >= w - width)
    return r_edge[:, None] | c_edge[None, :]


def border_fraction(h: int, w: int, width: int = 1) -> float:
    """Share of the ``h x w`` positions on the outer ``width`` ring(s): the
    :func:`border_energy` of a uniform map, i.e. the no-shortcut baseline.

    Example:
        >>> border_fraction(4, 4)
        0.75
    """
    return float(_ring(h, w, width, torch.device("cpu")).float().mean())


def border_energy(maps: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Share of each map's mass on the outermost ``width`` ring(s) of token positions.

    ``[B, h, w]`` maps give ``[B]``; an ``[h, w]`` map gives a scalar, so
    ``border_energy(mean_saliency_map(maps))`` is the data-set value (each image weighted
    equally, all-zero maps skipped) and ``border_energy(maps).mean()`` the plain average.
    An all-zero map gives 0. Compare with :func:`border_fraction` (a uniform map's share).

    Example:
        >>> maps = torch.zeros(2, 4, 4); maps[0, 0, 1] = 1.0; maps[1, 1, 1] = 1.0
        >>> border_energy(maps).tolist()
        [1.0, 0.0]
    """
    single = isinstance(maps, torch.Tensor) and maps.dim() == 2
    maps = as_maps(maps[None] if single else maps).float().clamp_min(0.0)
    h, w = maps.shape[-2:]
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    ring = _ring(h, w, width, maps.device)
    total = maps.sum(dim=(1, 2))
    edge = (maps * ring).sum(dim=(1, 2))
    share = safe_div(edge, total, _TINY)
    return share[0] if single else share


def map_drift(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """How much each image's explanation changed: ``1 - Pearson(map_a, map_b)`` per image.

    0 = same pattern (up to scale and offset), 1 = uncorrelated, 2 = inverted. When a map is
    constant (Pearson undefined) the drift is 0 if both maps are constant and equal, else 1.
    ``[B, h, w]`` pairs give ``[B]``; ``[h, w]`` pairs give a scalar.

    Example:
        >>> a = torch.rand(2, 4, 4)
        >>> map_drift(a, a * 0.5 + 0.1).abs().max().item() < 1e-5
        True
    """
    if maps_a.shape != maps_b.shape:
        raise ValueError(
            f"maps_a and maps_b differ in shape: {tuple(maps_a.shape)} vs {tuple(maps_b.shape)}"
        )
    single = maps_a.dim() == 2
    a = as_maps(maps_a[None] if single else maps_a, "maps_a").float()
    b = as_maps(maps_b[None] if single else maps_b, "maps_b").float().to(a.device)
    r, defined = pearson(a, b)
    a_flat, b_flat = a.flatten(1), b.flatten(1)
    scale = torch.maximum(a_flat.abs().amax(dim=1), b_flat.abs().amax(dim=1)).clamp_min(1.0)
    same = (a_flat - b_flat).abs().amax(dim=1) <= _CONST_TOL * scale
    undefined = torch.where(same, torch.zeros_like(r), torch.ones_like(r))
    drift = torch.where(defined, 1.0 - r, undefined)
    return drift[0] if single else drift


def flat_maps(log_odds_range: torch.Tensor, floor: float = FLAT_LOG_ODDS) -> torch.Tensor:
    """``[B]`` bool: maps whose copies move the target's log-odds by less than ``floor``.

    Such a map carries no usable information: the strongest window changes the odds by less
    than ``floor`` (0.1% by default), which is also the size of the general path's rounding
    under bf16 autocast (``docs/performance.md``).

    Example:
        >>> flat_maps(torch.tensor([1e-5, 0.2])).tolist()
        [True, False]
    """
    return log_odds_range < floor
