"""How alike two small regions of two images look, wherever the second one sits nearby (beyond
the paper).

A tag, a stamp or a watermark is the same pixels in every image that carries it; the parts of
objects that a model reads vary in colour, shape and place from image to image. So the region
evidence asks whether the decisive regions of probes of one class are found in each other,
against the same place in probes of other classes, compared the same way
(:func:`carrier_likeness`).

Regions are compared at no more than 4x4 pixels per token by default: larger images are
averaged down, which also averages out pixel noise and an object's own fine texture, and a
ViT-B/16 costs what the demo does. ``token_pixels`` raises it: a tag's strokes are a pixel
wide, and averaged down they blur into their background, differently at each sub-pixel
offset (the cost grows with the fourth power of this side). The distance is
read at the region's median pixel at the closest placement: most of the region, a tag's code
(which bits are lit) and not only its colours, must be found (a tag that fills less than half
of its box is not: it is left to the other kinds of evidence). It has no threshold and is
only ever compared with the distance of a control of the same size. The region's pixels can
be weighed by how much they differ from a reference image (``reference``, such as the probes'
per-pixel median): a ruler that crosses a corner box is then read, not the box's background.

Example:
    >>> import torch
    >>> x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> x[0, :, 0:8, 0:8] = 1.0; x[1, :, 10:18, 12:20] = 1.0  # the same tag, moved
    >>> boxes = torch.tensor([[0, 1, 0, 1], [2, 3, 2, 3]])  # the tag; a place of noise
    >>> near = torch.tensor([[1, 2, 1, 2], [3, 4, 3, 4]])
    >>> d = region_distance(x, torch.tensor([0, 0]), boxes, torch.tensor([1, 1]), near, (4, 4))
    >>> [round(float(v), 2) for v in d]  # the tag found where it moved; noise elsewhere
    [0.0, 0.61]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["carrier_likeness", "contrast_along", "orientations", "pair_contrast", "region_distance"]

_TOKEN_PIXELS = 4  # the most pixels a token side is compared at
_CHUNK_VALUES = 1 << 24  # the most differences held at once (64 MB of float32)
_SHARE = 0.5  # the share of a region's pixels the distance is read at: its median
_FAR = 1e30  # a grey difference off the window: further than any bound but an infinite one


def _resized(
    images: torch.Tensor, grid: tuple[int, int], side: int = _TOKEN_PIXELS
) -> tuple[torch.Tensor, int, int]:
    h, w = grid
    H, W = images.shape[-2:]
    th, tw = max(1, min(side, H // h)), max(1, min(side, W // w))
    if (H, W) != (h * th, w * tw):
        images = F.interpolate(images.float(), size=(h * th, w * tw), mode="area")
    return images.float(), th, tw


def _crops(
    padded: torch.Tensor, margin: tuple[int, int], rows: torch.Tensor, boxes: torch.Tensor,
    th: int, tw: int, size: tuple[int, int], before: tuple[int, int] = (0, 0),
) -> torch.Tensor:  # fmt: skip
    """``[P, C, size]`` crops of ``padded[rows]`` (the images, NaN-padded by ``margin`` pixels
    on the top and the left, enough on the bottom and the right), each from ``before`` pixels
    above and left of its box's top-left corner; the pixels outside the box are NaN (they
    never match and are not counted)."""
    ys, keep_r = _span(boxes[:, 0], boxes[:, 1], th, margin[0], before[0], size[0])
    xs, keep_c = _span(boxes[:, 2], boxes[:, 3], tw, margin[1], before[1], size[1])
    crops = padded[rows[:, None, None], :, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)
    keep = keep_r[:, :, None] & keep_c[:, None, :]
    return torch.where(keep[:, None], crops, torch.full_like(crops, float("nan")))


def _span(
    lo: torch.Tensor, hi: torch.Tensor, step: int, margin: int, before: int, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[P, n]`` padded pixel indices from ``before`` pixels ahead of each span's start, and
    whether each lies inside the span (token ``lo`` up to ``hi``)."""
    start, end = (lo * step + margin)[:, None], (hi * step + margin)[:, None]
    at = start - before + torch.arange(n, device=lo.device)[None]
    return at, (at >= start) & (at < end)


def region_distance(
    images: torch.Tensor,
    a_rows: torch.Tensor,
    a_boxes: torch.Tensor,
    b_rows: torch.Tensor,
    b_boxes: torch.Tensor,
    grid: tuple[int, int],
    chunk: int = 32,
    centre: bool = False,
    reference: torch.Tensor | None = None,
    token_pixels: int = _TOKEN_PIXELS,
    detail: bool = False,
) -> torch.Tensor:
    """``[P]``: for each pair, how far the pixels of ``images[a_rows[k]]`` inside the token box
    ``a_boxes[k]`` are from the pixels of ``images[b_rows[k]]`` at the closest placement of that
    region over ``b_boxes[k]`` grown by one token on every side (clipped to the image; the
    region may hang off it on any side, its pixels there never close): the absolute
    difference, averaged over the channels (each in units of the images' standard deviation),
    at the region's median pixel (``inf`` where it fits nowhere).
    ``centre``: each image is compared relative to its own typical colour (its per-channel
    median), so that a mark darker or brighter than its image's background is found in an
    image of another brightness.
    ``reference``: one image ``[C, H, W]`` (such as the probes' per-pixel median): each pixel
    of the region counts as much as it differs from the reference there, so the distance is
    read on what the region has that a typical image does not (a thin ruler, not the
    background around it); all of it alike where it differs nowhere. The reference must not
    be set by either compared image more than by the other (then both distances read the
    same pixels for the same reason and the comparison is fair).
    ``token_pixels``: the most pixels a token side is compared at (the images' own where they
    have fewer).
    ``detail``: each image is read less its local mean (over 3x3 compared pixels), its fine
    structure alone (``centre`` then changes nothing): a mark printed in its own colours (a
    tag's one-pixel strokes, a ruler's ticks) is the same there in every image that carries
    it, whatever the shade of the background it sits on, while a background's shade and the
    smooth inside of an object's strokes leave nothing to match (nor does a flat sticker's
    inside: read its colours without ``detail``)."""
    if not len(a_rows):
        return torch.zeros(0, device=images.device)
    n = len(images)
    if reference is not None:
        images = torch.cat([images, reference[None].to(images)])
    x, th, tw = _resized(images, grid, token_pixels)
    if centre:
        x = x - x.flatten(2).median(dim=2).values[:, :, None, None]
    if detail:
        x = x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = x / x[:n].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    h, w = grid
    side_r = int((a_boxes[:, 1] - a_boxes[:, 0]).max()) * th
    side_c = int((a_boxes[:, 3] - a_boxes[:, 2]).max()) * tw
    grown = torch.stack(
        [(b_boxes[:, 0] - 1).clamp_min(0), (b_boxes[:, 1] + 1).clamp_max(h),
         (b_boxes[:, 2] - 1).clamp_min(0), (b_boxes[:, 3] + 1).clamp_max(w)], dim=1,
    )  # fmt: skip
    # windows as large as the largest grown box, plus room for a region to hang off it on
    # every side by all but one pixel (a strip a pixel nearer the edge than the region's own)
    margin = (side_r - 1, side_c - 1)
    win_r = int((grown[:, 1] - grown[:, 0]).max()) * th + 2 * margin[0]
    win_c = int((grown[:, 3] - grown[:, 2]).max()) * tw + 2 * margin[1]
    padded = F.pad(x, (margin[1], win_c, margin[0], win_r), value=float("nan"))
    per_pair = x.shape[1] * (win_r - side_r + 1) * (win_c - side_c + 1) * side_r * side_c
    chunk = max(1, min(chunk, _CHUNK_VALUES // per_pair))
    out = []
    for s in range(0, len(a_rows), chunk):
        part = slice(s, s + chunk)
        patch = _crops(padded, margin, a_rows[part], a_boxes[part], th, tw, (side_r, side_c))
        window = _crops(padded, margin, b_rows[part], grown[part], th, tw, (win_r, win_c), margin)
        valid = ~patch[:, 0].isnan()  # [p, sr, sc]: the region's own pixels
        weight = valid.flatten(1).float()  # [p, S]: how much each pixel counts
        if reference is not None:
            typical = torch.full_like(a_rows[part], len(x) - 1)
            there = _crops(padded, margin, typical, a_boxes[part], th, tw, (side_r, side_c))
            unusual = torch.nan_to_num((patch - there).abs().mean(dim=1), nan=0.0).flatten(1)
            # a region like the reference everywhere is read whole
            weight = torch.where(unusual.sum(1, keepdim=True) > 0, unusual, weight)
        gap = _distances(_placements(window, patch, weight), patch)
        out.append(_closest_median(gap, weight))
    return torch.cat(out)


def _placements(window: torch.Tensor, patch: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``[p, C, L, S]``: the window's pixels under each of the region's ``S`` pixels at the
    placements that can be the closest, as many for every pair as the pair that has the most
    (the rest of the others', never the closest, fill in). One placement's distance bounds the
    closest; a pixel's grey difference (of the channels' means) is never larger than its
    difference, so a placement whose grey differences reach the bound at less than ``_SHARE``
    of the region's weight is further than that (as is one that mostly hangs off its window)
    and is never compared in colour."""
    p, _, side_r, side_c = patch.shape
    # [p, S, L] (placements last: the sums over a region's pixels are then the fast ones)
    grey = window.mean(1).nan_to_num_(nan=_FAR).unfold(1, side_r, 1).unfold(2, side_c, 1)
    grey = grey.permute(0, 3, 4, 1, 2)  # [p, sr, sc, Lr, Lc], a view
    near = torch.empty(grey.shape, dtype=grey.dtype, device=grey.device)
    torch.sub(grey, patch.mean(1).nan_to_num(0.0)[..., None, None], out=near)
    near = near.abs_().view(p, side_r * side_c, -1)
    across = window.shape[-1] - side_c + 1
    # the bound: the placement nearest in grey on average, compared in colour
    first = torch.bmm(weight[:, None], near)[:, 0].argmin(1, keepdim=True)  # [p, 1]
    bound = _closest_median(_distances(_under(window, first, side_r, side_c, across), patch),
                            weight)  # fmt: skip
    # 1 where the grey difference is within the bound (the means are not added in the order
    # the differences are: margins keep every close one), else 0
    below = near.sub_(bound[:, None, None] * (1 + 1e-4) + 1e-4).neg_().sign_()
    below = below.add_(1).clamp_(max=1)
    within = torch.bmm(weight[:, None], below)[:, 0]  # [p, L]
    enough = within >= _SHARE * weight.sum(1, keepdim=True) * (1 - 1e-4)
    keep = within.topk(int(enough.sum(1).max().clamp_min(1)), dim=1).indices
    return _under(window, keep, side_r, side_c, across)


def _under(
    window: torch.Tensor, at: torch.Tensor, side_r: int, side_c: int, across: int
) -> torch.Tensor:
    """``[p, C, K, S]``: the window's pixels under the region at the placements ``at``
    (``[p, K]``, flat indices over ``across`` placements a row)."""
    device = at.device
    down = torch.arange(side_r, device=device).repeat_interleave(side_c)  # [S]
    right = torch.arange(side_c, device=device).repeat(side_r)
    rows, cols = (at // across)[:, :, None] + down, (at % across)[:, :, None] + right
    pairs = torch.arange(len(at), device=device)[:, None, None]
    return window[pairs, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def _distances(slid: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """``[p, K, S]``: each pixel's difference, averaged over the channels; ``inf`` where the
    region has no pixel or the window none (off it): never close."""
    gap = (slid - patch.flatten(2)[:, :, None]).abs().mean(dim=1)
    return gap.nan_to_num_(nan=float("inf"))


def orientations(images: torch.Tensor) -> torch.Tensor:
    """``[K * N, C, H, W]``: the images ``[N, C, H, W]`` in each orientation that keeps their
    shape, the untouched ones first: the eight quarter turns and mirror images of a square,
    the four of a rectangle (``K``). A strip that lies along another edge in each image (a
    ruler) is the same pixels in the edge's own frame, not in the image's.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> orientations(x).shape, orientations(x[..., :1]).shape
        (torch.Size([8, 1, 2, 2]), torch.Size([4, 1, 2, 1]))
    """
    turns = [images, images.flip(-1), images.flip(-2), images.flip(-2, -1)]
    if images.shape[-1] == images.shape[-2]:
        across = images.transpose(-2, -1)
        turns += [across, across.flip(-1), across.flip(-2), across.flip(-2, -1)]
    return torch.cat(turns)


def _closest_median(gap: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``[p]``: the smallest, over the placements, of the region's weighted median difference
    (``gap`` ``[p, L, S]``: each placement's difference at each of the region's pixels,
    ``weight`` ``[p, S]``): the value at which the weight of the pixels that close reaches
    ``_SHARE`` of the whole; most of the region must be found (a tag's code, which bits are
    lit, and not only its colours). Exact, without sorting every placement: a placement's
    median is at most its weighted mean over ``1 - _SHARE`` (Markov's inequality), so the
    smallest of those bounds ``U`` bounds the answer, and only the placements with that share
    of their weight within ``U`` can reach it (found exactly, a mark leaves a few)."""
    w = weight[:, None]  # [p, 1, S]
    total = weight.sum(1)  # [p]
    need = _SHARE * total * (1 - 1e-5)  # the sums below are not added in the same order
    # a pixel outside the region (no weight, infinitely far) adds nothing; off the window, inf
    spent = (gap * w).nan_to_num(nan=0.0, posinf=float("inf")).sum(2)  # [p, L]
    bound = (spent / total[:, None]).amin(1) / (1 - _SHARE) * (1 + 1e-5)  # [p]
    within = ((gap <= bound[:, None, None]) * w).sum(2)
    keep = int((within >= need[:, None]).sum(1).max().clamp_min(1))
    gap = gap.gather(1, within.topk(keep, dim=1).indices[:, :, None].expand(-1, -1, gap.shape[2]))
    ordered, order = gap.sort(dim=2)
    cum = w.expand_as(gap).gather(2, order).cumsum(2)
    k = (cum < _SHARE * cum[..., -1:]).sum(2, keepdim=True).clamp_max(gap.shape[2] - 1)
    return ordered.gather(2, k).flatten(1).amin(dim=1)


def carrier_likeness(
    images: torch.Tensor,
    targets: torch.Tensor,
    carriers: torch.Tensor,
    regions: torch.Tensor,
    donors: torch.Tensor,
    recipients: torch.Tensor,
    grid: tuple[int, int],
    partners: int = 3,
) -> tuple[int, int]:
    """``(closer, further)``: each carrier's region (``regions[c]`` of a probe ``c`` in
    ``carriers``) looked for near the region of up to ``partners`` other carriers of its class
    (``targets``) and, as the control, near the same place in a probe of another class (one of
    the recipients it was pasted into: ``recipients[k]`` for each ``donors[k] == c``): how many
    of these comparisons find it closer to its class, and how many closer to the control."""
    classes, rows = targets[carriers].tolist(), carriers.tolist()
    pasted = list(zip(donors.tolist(), recipients.tolist(), strict=True))
    a, b, c = [], [], []
    for i, (donor, cls) in enumerate(zip(rows, classes, strict=True)):
        same = [
            d for j, (d, t) in enumerate(zip(rows, classes, strict=True)) if t == cls and j != i
        ]
        others = [r for d, r in pasted if d == donor]
        if not same or not others:
            continue
        for m, partner in enumerate((same[i % len(same) :] + same[: i % len(same)])[:partners]):
            a.append(donor)
            b.append(partner)
            c.append(others[m % len(others)])
    if not a:
        return 0, 0
    a_rows, b_rows, c_rows = (torch.tensor(v, device=regions.device) for v in (a, b, c))
    own = region_distance(images, a_rows, regions[a_rows], b_rows, regions[b_rows], grid)
    other = region_distance(images, a_rows, regions[a_rows], c_rows, regions[a_rows], grid)
    # exact ties (a copy of the region sits in the other probe too) say nothing either way
    return int((own < other).sum()), int((own > other).sum())


def contrast_along(
    images: torch.Tensor,
    donors: torch.Tensor,
    others: torch.Tensor,
    masks: torch.Tensor,
    grid: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(contrast [len(donors), M], spread [M])``: how unlike every probe of ``others`` each
    donor is along the whole of each region ``masks`` (``[M, h, w]``), at the same place: for
    each other probe, the mean squared pixel difference of the region's *least* different
    token; the smallest of these over the other probes. ``spread``, its control of the same
    size: the largest such contrast of one of ``others`` to the rest of them. A donor's region
    is unlike the other class where its contrast exceeds the spread: further from all of them
    than any of them is from the rest, as a stripe that runs the whole height of the image is;
    a region that crosses an object's stroke and the background beside it matches some other
    probe's background somewhere along its length. Each image is compared relative to its own
    typical colour (its per-channel median: a background of another shade is no difference).

    Example:
        >>> x = torch.zeros(4, 1, 8, 8); x[0, :, :, 2] = 1.0  # a full-height line in probe 0
        >>> x[1, :, :4, 6] = 1.0  # half a line in probe 1
        >>> cols = torch.zeros(2, 4, 4, dtype=torch.bool)
        >>> cols[0, :, 1] = True; cols[1, :, 3] = True
        >>> contrast, spread = contrast_along(x, torch.tensor([0, 1]), torch.tensor([2, 3]),
        ...                                   cols, (4, 4))
        >>> contrast > spread
        tensor([[ True, False],
                [False, False]])
    """
    tokens, on = _token_pixels(images, grid), masks.flatten(1).to(images.device)
    contrast = _least(tokens[donors], tokens[others], on).amin(1)
    among = _least(tokens[others], tokens[others], on)
    eye = torch.eye(len(others), dtype=torch.bool, device=among.device)[:, :, None]
    # with a single other probe there is no spread to compare with: inf, nothing exceeds it
    spread = torch.where(eye, torch.tensor(float("inf"), device=among.device), among)
    return contrast, spread.amin(1).amax(0)


def pair_contrast(
    images: torch.Tensor, a: torch.Tensor, b: torch.Tensor, masks: torch.Tensor,
    grid: tuple[int, int],
) -> torch.Tensor:  # fmt: skip
    """``[len(a), len(b), M]``: for each pair of probes and each region ``masks`` (``[M, h,
    w]``), the mean squared pixel difference of the region's *least* different token, each
    image relative to its own typical colour (:func:`contrast_along`'s reading)."""
    tokens = _token_pixels(images, grid)
    return _least(tokens[a], tokens[b], masks.flatten(1).to(images.device))


def _token_pixels(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[N, T, P]``: each token's pixels, each image relative to its own typical colour."""
    x, th, tw = _resized(images, grid)
    x = x - x.flatten(2).median(dim=2).values[:, :, None, None]
    h, w = grid
    n, c = x.shape[:2]
    return x.view(n, c, h, th, w, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, -1)


def _least(ta: torch.Tensor, tb: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """``[A, B, M]``: the mean squared difference of each region's (``on`` ``[M, T]``) least
    different token, for each pair of token pixels ``ta`` ``[A, T, P]`` and ``tb``."""
    cross = torch.einsum("atp,btp->abt", ta, tb)
    gap = (ta.square().sum(-1)[:, None] + tb.square().sum(-1)[None] - 2 * cross) / ta.shape[-1]
    inf = torch.tensor(float("inf"), device=gap.device)
    if not len(on):
        return gap.new_zeros(len(ta), len(tb), 0)
    # regions in chunks: many regions on a large grid would hold A * B * M * T values at once
    step = max(1, _CHUNK_VALUES // max(1, gap.numel()))
    return torch.cat(
        [
            torch.where(part[None, None], gap[:, :, None, :], inf).amin(-1)
            for part in on.split(step)
        ],
        dim=2,
    )
