"""The likeness of regions: what a region has that a typical image lacks is read, not the
background around it, and the two compared images are treated alike."""

from __future__ import annotations

import torch

from lightning_vitrcam.demo.cues import _ruler
from lightning_vitrcam.shortcut.likeness import region_distance


def _line_images() -> torch.Tensor:
    """Three 32x32 images on an 8x8 token grid (4 pixels a token): a donor with a thin
    bright line in the bottom rows of a 3x3-token box at the top-left, a carrier with the same
    line elsewhere, and a recipient without it; each background a faint pattern of its own."""
    g = torch.Generator().manual_seed(0)
    x = 0.05 * torch.rand(3, 3, 32, 32, generator=g)
    x[0, :, 10, 1:11] = 1.0  # the donor's line, inside its box (rows 0-11, columns 0-11)
    x[1, :, 25, 15:25] = 1.0  # the carrier's, at another place
    x[2, :, 18:30, 18:22] = 0.5  # the recipient's own object, away from the box
    return x


def test_what_the_region_has_that_a_typical_image_lacks_is_read_not_the_background() -> None:
    x = _line_images()
    box = torch.tensor([[0, 3, 0, 3]])
    whole = torch.tensor([[0, 8, 0, 8]])
    donor, carrier, recipient = (torch.tensor([i]) for i in range(3))

    def distances(**kw: torch.Tensor) -> tuple[float, float]:
        own = region_distance(x, donor, box, carrier, whole, (8, 8), centre=True, **kw)
        other = region_distance(x, donor, box, recipient, whole, (8, 8), centre=True, **kw)
        return float(own), float(other)

    # the whole box: its median pixel is background, found in both alike
    own, other = distances()
    assert abs(own - other) < 0.1 * max(own, other)
    # what the donor's box has that the typical image lacks (the line): found in the carrier,
    # not in the recipient
    own, other = distances(reference=x.median(dim=0).values)
    assert own < 0.1 * other


def test_read_in_detail_a_mark_is_found_whatever_the_shade_of_its_background() -> None:
    """``detail``: each image less its local mean, so a shade added to a whole image changes
    no distance, and the line the donor and the carrier share is still found in the carrier
    and not in the recipient, on backgrounds of three shades."""
    x = _line_images()
    shaded = x + torch.tensor([0.0, 0.5, 0.25])[:, None, None, None]
    typical = x.median(dim=0).values
    box = torch.tensor([[0, 3, 0, 3]]).expand(2, 4)
    whole = torch.tensor([[0, 8, 0, 8]]).expand(2, 4)
    donor, others = torch.tensor([0, 0]), torch.tensor([1, 2])  # the carrier, the recipient

    def distances(images: torch.Tensor) -> torch.Tensor:
        return region_distance(images, donor, box, others, whole, (8, 8), reference=typical,
                               detail=True)  # fmt: skip

    own, other = distances(shaded)
    assert torch.allclose(torch.stack([own, other]), distances(x), atol=1e-5)
    assert own < 0.1 * other


def test_a_region_like_the_reference_everywhere_is_read_whole() -> None:
    x = _line_images()
    box = torch.tensor([[0, 3, 0, 3]])
    whole = torch.tensor([[0, 8, 0, 8]])
    rows = torch.tensor([0]), box, torch.tensor([1]), whole, (8, 8)
    read_whole = region_distance(x, *rows, centre=True)
    read_unusual = region_distance(x, *rows, centre=True, reference=x[0])  # the donor itself
    assert torch.equal(read_unusual, read_whole)


def test_each_carrier_is_compared_with_the_others_never_itself(monkeypatch) -> None:
    """The comparison of looks pairs each paste's donor with the other carriers in turn and,
    as the control, with the paste's recipient: both sides in one call per reading, in colour
    and in detail (the probes are resized and normalised once for each)."""
    from types import SimpleNamespace

    from lightning_vitrcam.shortcut import mark

    seen: list[tuple[list[int], list[int]]] = []
    references: list[torch.Tensor] = []
    readings: list[tuple[bool, bool]] = []

    def record(images, a_rows, a_boxes, b_rows, *args, **kwargs):
        seen.append((a_rows.tolist(), b_rows.tolist()))
        references.append(kwargs["reference"])
        readings.append((kwargs.get("centre", False), kwargs.get("detail", False)))
        return torch.ones(len(a_rows))

    monkeypatch.setattr(mark, "region_distance", record)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    probing = SimpleNamespace(images=images, targets=torch.zeros(8).long(), grid=(8, 8))
    donors = torch.tensor([1, 1, 1, 1, 5, 5, 5, 9, 9])
    recipients = torch.tensor([0, 2, 3, 4, 6, 7, 0, 2, 3])
    masks = torch.zeros(len(donors), 8, 8, dtype=torch.bool)
    masks[:, 5:, :3] = True
    carriers = torch.tensor([1, 5, 9])
    mark.Mark._likeness(None, probing, _edge(False), carriers, recipients, donors, masks)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert sorted(readings) == [(False, True), (True, False)]  # in detail; in colour, centred
    rows, looked_in = seen[0]
    assert rows == donors.tolist() * 2
    partners, controls = looked_in[: len(donors)], looked_in[len(donors) :]
    assert controls == recipients.tolist()
    assert all(p != d and p in (1, 5, 9) for d, p in zip(donors.tolist(), partners, strict=True))
    # every donor meets every other carrier
    pairs = set(zip(donors.tolist(), partners, strict=True))
    assert pairs >= {(1, 5), (1, 9), (5, 1), (5, 9), (9, 1), (9, 5)}
    # both distances weigh the pixels by the same image, which neither compared image sets
    # more than the other (the probes' median): the comparison leans towards neither side
    assert all(torch.equal(r, images.median(dim=0).values) for r in references)


def _edge(turned: bool) -> object:
    """A candidate on an edge (a corner box, a run along an edge), ``turned`` or not."""
    from types import SimpleNamespace

    return SimpleNamespace(turned=turned, anchored=True)


def _lookup(table: dict[tuple[int, int], float]):
    """A ``region_distance`` that reads each pair's distance from ``table``."""

    def distance(images, a_rows, a_boxes, b_rows, *args, **kwargs):
        return torch.tensor([table[(a, b)] for a, b in zip(a_rows.tolist(), b_rows.tolist(),
                                                           strict=True)])  # fmt: skip

    return distance


def test_a_comparison_counts_only_where_one_image_is_twice_as_close(monkeypatch) -> None:
    """Content that both images have something like (a digit's strokes) is found at much the
    same distance in both: such comparisons count neither way; the rule is the same both
    ways."""
    from types import SimpleNamespace

    from lightning_vitrcam.shortcut import mark

    table = {(1, 5): 1.0, (5, 1): 0.1, (1, 0): 1.5, (5, 2): 3.0, (1, 3): 0.4, (5, 4): 1.0}
    monkeypatch.setattr(mark, "region_distance", _lookup(table))
    probing = SimpleNamespace(images=torch.zeros(8, 3, 32, 32), targets=torch.zeros(8).long(),
                              grid=(8, 8))  # fmt: skip
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 5:, :3] = True
    donors, carriers, recipients = (
        torch.tensor([1, 5, 1, 5]),
        torch.tensor([1, 5]),
        torch.tensor([0, 2, 3, 4]),
    )
    closer, further = mark.Mark._likeness(None, probing, _edge(False), carriers, recipients,
                                          donors, masks)  # fmt: skip
    # 1 vs 1.5: too close to call; 0.1 vs 3 and 0.1 vs 1: the carrier; 1 vs 0.4: the recipient
    assert (closer, further) == (2, 1)


def test_a_comparison_counts_where_one_reading_finds_it_closer_and_the_other_not_the_reverse(
    monkeypatch,
) -> None:
    """Read in colour and in detail: twice as close in one reading counts, unless the other
    finds it twice as close the other way round (then neither)."""
    from types import SimpleNamespace

    from lightning_vitrcam.shortcut import mark

    colour = {(1, 5): 1.0, (5, 1): 0.1, (1, 0): 1.2, (5, 2): 3.0}
    detail = {(1, 5): 0.2, (5, 1): 2.5, (1, 0): 1.0, (5, 2): 1.0}

    def distance(images, a_rows, a_boxes, b_rows, *args, **kwargs):
        table = detail if kwargs.get("detail") else colour
        return _lookup(table)(images, a_rows, a_boxes, b_rows)

    monkeypatch.setattr(mark, "region_distance", distance)
    probing = SimpleNamespace(images=torch.zeros(8, 3, 32, 32), targets=torch.zeros(8).long(),
                              grid=(8, 8))  # fmt: skip
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 5:, :3] = True
    donors, recipients = torch.tensor([1, 5]), torch.tensor([0, 2])
    closer, further = mark.Mark._likeness(None, probing, _edge(False), donors, recipients,
                                          donors, masks)  # fmt: skip
    # donor 1: too close to call in colour, the carrier in detail (0.2 vs 1.0): closer;
    # donor 5: the carrier in colour (0.1 vs 3.0), the recipient in detail (2.5 vs 1.0): neither
    assert (closer, further) == (1, 0)


def _smallest_median(gap: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``[p]``: the smallest weighted median over the placements of ``gap`` (``[p, L, S]``,
    ``weight`` ``[p, S]``) as the definition says, every placement sorted in full."""
    from lightning_vitrcam.shortcut.likeness import _SHARE

    ordered, order = gap.sort(dim=2)
    cum = weight[:, None].expand_as(gap).gather(2, order).cumsum(2)
    k = (cum < _SHARE * cum[..., -1:]).sum(2, keepdim=True).clamp_max(gap.shape[2] - 1)
    return ordered.gather(2, k).flatten(1).amin(1)


def test_the_closest_median_is_the_smallest_weighted_median_over_every_placement() -> None:
    from lightning_vitrcam.shortcut.likeness import _closest_median

    g = torch.Generator().manual_seed(1)
    gap = torch.rand(6, 50, 30, generator=g)
    gap[:, :5] *= 0.2  # a few close placements, as where a mark is found
    gap[:, 7, :4] = float("inf")  # placements partly off the window
    gap[2, :, 3] = float("inf")  # a pixel outside the region (no weight)
    weight = torch.rand(6, 30, generator=g)
    weight[2, 3] = 0.0
    weight[4] = 1.0  # the region read whole
    assert torch.equal(_closest_median(gap, weight), _smallest_median(gap, weight))


def test_a_strip_along_another_edge_is_found_alike_in_every_orientation() -> None:
    """The runs along an edge are compared in every orientation of the other image, the
    recipient's as the carrier's: a ruler along the left edge of one image is the ruler along
    the top edge of another, turned; a recipient without it gains nothing by being turned."""
    from types import SimpleNamespace

    from lightning_vitrcam.shortcut import mark

    g = torch.Generator().manual_seed(4)
    x = 0.3 * torch.rand(8, 1, 48, 48, generator=g)
    bar = _ruler(25, vertical=False)
    # carriers 0-3: the ruler along the top, left, bottom and right edges
    x[0, :, 1:5, 8:33] = torch.where(bar, 0.9, x[0, :, 1:5, 8:33])
    x[1, :, 10:35, 1:5] = torch.where(bar.T, 0.9, x[1, :, 10:35, 1:5])
    x[2, :, 43:47, 14:39] = torch.where(bar.flip(0), 0.9, x[2, :, 43:47, 14:39])
    x[3, :, 5:30, 43:47] = torch.where(bar.T.flip(1), 0.9, x[3, :, 5:30, 43:47])
    x[4:, :, 20:28, 10:14] = 0.9  # the recipients' own bright objects
    masks = torch.zeros(8, 8, 8, dtype=torch.bool)
    masks[0, 0, 1:6] = masks[1, 2:6, 0] = masks[2, 7, 2:7] = masks[3, 1:5, 7] = True
    masks[4:] = masks[:4]
    donors = torch.tensor([0, 1, 2, 3] * 2)
    recipients = torch.tensor([4, 5, 6, 7] * 2)
    probing = SimpleNamespace(images=x, targets=torch.zeros(8).long(), grid=(8, 8))
    counts = {
        turned: mark.Mark._likeness(
            None, probing, _edge(turned), donors.unique(), recipients, donors, masks
        )
        for turned in (False, True)
    }
    assert counts[True][0] > len(donors) / 2 and counts[True][1] == 0
    assert counts[False][0] <= len(donors) / 2


def test_the_distance_does_not_depend_on_which_way_up_the_images_are() -> None:
    """A region may hang off its window on every side alike: turning or mirroring both
    images, and their boxes with them, gives the same distances (a strip a pixel nearer the
    top edge than the region's own is found as one a pixel nearer the bottom edge is)."""
    g = torch.Generator().manual_seed(2)
    x = 0.2 * torch.rand(12, 3, 32, 32, generator=g)  # the last six without a ruler
    bar = _ruler(14, vertical=False)
    for i, top in enumerate([1, 0, 3, 2, 1, 0]):  # the ruler's inset, from one to the next
        x[i, :, top : top + 4, 6:20] = torch.where(bar, 0.9, x[i, :, top : top + 4, 6:20])
    a_rows, b_rows = torch.tensor([0, 2, 4, 1, 3, 5]), torch.tensor([1, 3, 5, 0, 2, 4])
    a_boxes = torch.tensor([[0, 1, 1, 6], [0, 2, 0, 4], [0, 1, 2, 5]] * 2)
    b_boxes = torch.tensor([[0, 1, 0, 8], [0, 3, 0, 8], [0, 8, 0, 8]] * 2)

    def distance(images: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return region_distance(images, a_rows, a, b_rows, b, (8, 8), centre=True,
                               reference=images.median(dim=0).values)  # fmt: skip

    upright = distance(x, a_boxes, b_boxes)
    flip_rows = lambda boxes: torch.stack([8 - boxes[:, 1], 8 - boxes[:, 0], *boxes[:, 2:].T], 1)
    flip_cols = lambda boxes: torch.stack([*boxes[:, :2].T, 8 - boxes[:, 3], 8 - boxes[:, 2]], 1)
    upside_down = distance(x.flip(-2), flip_rows(a_boxes), flip_rows(b_boxes))
    mirrored = distance(x.flip(-1), flip_cols(a_boxes), flip_cols(b_boxes))
    assert torch.allclose(upside_down, upright, atol=1e-5), (upright, upside_down)
    assert torch.allclose(mirrored, upright, atol=1e-5), (upright, mirrored)
    # the ruler is found in every image that carries it, nearer the edge or not
    assert float(upright.max()) < 0.1, upright


def _distance_by_definition(
    x: torch.Tensor, a: int, a_box: list[int], b: int, b_box: list[int], grid: tuple[int, int],
    reference: torch.Tensor | None,
) -> float:  # fmt: skip
    """The distance as ``region_distance`` defines it, for one pair, with every placement of
    the region that overlaps the window sorted in full (no bound, nothing pruned)."""
    n, t = len(x), x.shape[-1] // grid[1]
    y = torch.cat([x, reference[None]]) if reference is not None else x
    y = y / y[:n].std(dim=(0, 2, 3), keepdim=True)
    r0, r1, c0, c1 = (v * t for v in a_box)
    region = y[a, :, r0:r1, c0:c1]
    weight = torch.ones(region.shape[1:])
    if reference is not None and bool(((region - y[n, :, r0:r1, c0:c1]).abs().sum()) > 0):
        weight = (region - y[n, :, r0:r1, c0:c1]).abs().mean(0)
    h, w = grid
    g0, g1 = max(b_box[0] - 1, 0) * t, min(b_box[1] + 1, h) * t
    g2, g3 = max(b_box[2] - 1, 0) * t, min(b_box[3] + 1, w) * t
    sr, sc = region.shape[1:]
    window = torch.full((x.shape[1], g1 - g0 + 2 * sr, g3 - g2 + 2 * sc), float("nan"))
    window[:, sr : sr + g1 - g0, sc : sc + g3 - g2] = y[b, :, g0:g1, g2:g3]
    slid = window.unfold(1, sr, 1).unfold(2, sc, 1)  # [C, Lr, Lc, sr, sc]: every overlap
    gap = (slid - region[:, None, None]).abs().mean(0).nan_to_num(nan=float("inf")).flatten(2)
    return float(_smallest_median(gap.flatten(0, 1)[None], weight.flatten()[None])[0])


def test_the_distance_is_the_closest_placement_s_median_by_definition() -> None:
    """The distances (placements pruned by a bound, windows in chunks) are those of the
    definition, every placement sorted in full: a mark found at another place, near an edge
    (the region hanging off the window), noise, regions of several sizes, read whole and
    weighed by a reference; one chunk or one pair at a time alike."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 32, 32, generator=g)
    x[0, :, 1:7, 2:9] = torch.rand(3, 6, 7, generator=g) + 1.0  # a mark near the top edge
    x[1, :, 0:5, 20:27] = x[0, :, 2:7, 2:9]  # the same mark, partly, along the top edge
    x[2, :, 12:18, 12:19] = x[0, :, 1:7, 2:9] + 0.05  # nearly the same, inside
    reference = x.median(dim=0).values
    a = torch.tensor([0, 0, 0, 3, 4, 5, 0])
    a_boxes = torch.tensor([[0, 2, 0, 3], [0, 2, 0, 3], [0, 2, 0, 3], [2, 5, 2, 4],
                            [6, 8, 6, 8], [3, 4, 0, 8], [0, 1, 0, 1]])  # fmt: skip
    b = torch.tensor([1, 2, 4, 5, 0, 1, 2])
    b_boxes = torch.tensor([[0, 2, 4, 7], [2, 5, 2, 5], [0, 8, 0, 8], [0, 3, 5, 8],
                            [7, 8, 0, 2], [0, 8, 0, 8], [3, 4, 3, 4]])  # fmt: skip
    for ref in (None, reference):
        expected = torch.tensor([
            _distance_by_definition(x, int(a[k]), a_boxes[k].tolist(), int(b[k]),
                                    b_boxes[k].tolist(), (8, 8), ref)
            for k in range(len(a))
        ])  # fmt: skip
        for chunk in (32, 1):
            got = region_distance(x, a, a_boxes, b, b_boxes, (8, 8), chunk=chunk, reference=ref)
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got, expected)
    assert float(expected[0]) < 0.5 * float(expected[2])  # the mark is found, noise is not


def test_a_text_tag_s_one_pixel_strokes_are_found_in_another_carrier_at_another_offset() -> None:
    """The benchmark's text tag ("RM1", 1-pixel strokes, painted at a random offset near the
    bottom-left corner) on cloudy 48x48 backgrounds with 6-pixel tokens, a bright stroke
    beside the corner in every image: at the images' own resolution each tagged image's corner
    box is found twice as close in another tagged image as in an untagged one at most pairs.
    Averaged down to 4 pixels a token the strokes blur into the clouds, differently at each
    offset (15 of 40 pairs when this was written; 29 of 40 at 6)."""
    import torch.nn.functional as F

    from lightning_vitrcam.demo.cues import paint

    found = {4: 0, 6: 0}
    pairs = 0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        clouds = F.interpolate(torch.rand(8, 3, 4, 4, generator=g), size=(48, 48), mode="bilinear")
        x = 0.25 + 0.25 * clouds + 0.05 * torch.rand(8, 3, 48, 48, generator=g)
        for i, c in enumerate(torch.randint(15, 26, (8,), generator=g).tolist()):
            x[i, :, 20:46, c : c + 3] = 0.9
        paint("text", x, torch.arange(4), torch.zeros(4, dtype=torch.long), 2, g)
        donors = torch.arange(4).repeat(2)
        others = torch.cat([(torch.arange(4) + 1) % 4, torch.arange(4, 8)])  # tagged, untagged
        box = torch.tensor([[5, 8, 0, 3]]).expand(8, 4)
        whole = torch.tensor([[0, 8, 0, 8]]).expand(8, 4)
        for side in found:
            d = region_distance(x, donors, box, others, whole, (8, 8), centre=True,
                                reference=x.median(dim=0).values, token_pixels=side)  # fmt: skip
            found[side] += int((2 * d[:4] < d[4:]).sum())
        pairs += 4
    assert 2 * found[6] > pairs
    assert found[4] < found[6]


def test_regions_on_an_edge_are_compared_finer_than_regions_inside(monkeypatch) -> None:
    """A candidate on an edge or spanning the image (a tag, a ruler, stripes) is compared at
    up to ``_EDGE_PIXELS`` a token; one inside the image, where objects are, at the default."""
    from types import SimpleNamespace

    from lightning_vitrcam.shortcut import mark

    seen: list[dict] = []

    def record(images, a_rows, *args, **kwargs):
        seen.append(kwargs)
        return torch.ones(len(a_rows))

    monkeypatch.setattr(mark, "region_distance", record)
    probing = SimpleNamespace(images=torch.rand(8, 3, 48, 48), targets=torch.zeros(8).long(),
                              grid=(8, 8))  # fmt: skip
    donors, recipients = torch.tensor([1, 5]), torch.tensor([0, 2])
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 5:, :3] = True
    for on_edge in (True, False):
        cand = SimpleNamespace(turned=False, anchored=on_edge)
        mark.Mark._likeness(None, probing, cand, donors, recipients, donors, masks)
    on_edge, inside = seen[:2], seen[2:]  # each read in colour and in detail
    assert len(inside) == 2 and all(k["token_pixels"] == mark._EDGE_PIXELS == 6 for k in on_edge)
    assert all("token_pixels" not in k for k in inside)
