"""The mark evidence: known-answer models per shape of confounder (a band, a line of text, thin
stripes; a cue only the positives carry, redundant with the object), and a short real
training on a positives-only confounder that must warn."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_vitrcam import ViTReciproCAMCallback
from lightning_vitrcam.demo import ViTClassifier
from lightning_vitrcam.demo.cues import CueDataModule, _text
from lightning_vitrcam.shortcut import PossibleShortcutWarning, ShortcutAlarm
from lightning_vitrcam.shortcut.mark import Mark, anchored
from lightning_vitrcam.shortcut.rule import margin, sign_test
from lightning_vitrcam.shortcut.shapes import describe, edge_shapes, elsewhere

GRID = (8, 8)


def probes(cue: str, n: int = 32, p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` validation images of "5 or more" with ``cue`` on the positives (pixels in
    [0, 1]), and their labels."""
    dm = CueDataModule("binary_digits", cue, p=p, classes=[1], num_train=4, num_val=n,
                       num_free=4, seed=3)  # fmt: skip
    return dm.val_set.images * 0.5 + 0.5, dm.val_set.labels


def two_classes(positive: torch.Tensor) -> torch.Tensor:
    """Logits of a binary task as two classes (softmax), positive where ``positive`` > 0."""
    return torch.stack([torch.zeros_like(positive), 20 * positive], 1)


def band_model(x: torch.Tensor) -> torch.Tensor:
    return two_classes((x[:, :, -4:] < 0.1).float().mean(dim=(1, 2, 3)) - 0.5)


TEXT = _text("RM1").float()


def text_model(x: torch.Tensor) -> torch.Tensor:
    # the tag "RM1" anywhere in the bottom-left: its best match against its own bitmap
    grey = x.mean(dim=1, keepdim=True)[:, :, -14:, :24]
    template = (TEXT - TEXT.mean())[None, None]
    score = F.conv2d(grey - grey.mean(dim=(2, 3), keepdim=True), template).amax(dim=(1, 2, 3))
    # text scores 7.6-12.7, digit strokes at most 2: the threshold halfway
    return two_classes(score - 0.125 * float(template.abs().sum()))


def stripes_model(x: torch.Tensor) -> torch.Tensor:
    # a bright line over the whole height: a column whose every pixel is nearly white
    column = (x.amin(dim=1) > 0.85).float().mean(dim=1)  # [B, W]: its share of bright pixels
    return two_classes(column.amax(dim=1) - 0.9)


def check(model, images: torch.Tensor, maps: torch.Tensor | None = None):
    targets = model(images).argmax(1)
    n = len(images)
    informative = torch.ones(n, dtype=torch.bool) if maps is not None else torch.zeros(n).bool()
    maps = torch.zeros(n, *GRID) if maps is None else maps
    alarm = ShortcutAlarm(kinds=["region", "mark"], thorough=True)
    return alarm.check(model, lambda z: z.softmax(-1), images, [maps], targets, informative)


def check_seeing(model, images: torch.Tensor, builder: str = "_line") -> tuple:
    """``check`` that also returns every candidate the ``Mark`` method ``builder`` built
    (``"_line"``: the lines no other class has; ``"_segment"``: the runs along an edge), or
    None where a class had none."""
    seen = []
    build = getattr(Mark, builder)

    def spy(self, *args):
        out = build(self, *args)
        seen.append(out)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Mark, builder, spy)
        return check(model, images), seen


def marks(verdict) -> list:
    return [f for f in verdict.suspects if f.kind == "mark"]


def test_the_known_answers_read_the_cue() -> None:
    for model, cue in ((band_model, "band"), (text_model, "text"), (stripes_model, "stripes")):
        with_cue, labels = probes(cue)
        without, _ = probes("none")
        assert bool((model(with_cue).argmax(1) == labels).all()), cue
        assert bool((model(without).argmax(1) == 0).all()), cue


def test_a_band_along_the_bottom_edge_is_named() -> None:
    (finding, *_) = marks(check(band_model, probes("band")[0]))
    assert finding.group == 1 and finding.shape == "a band along the bottom edge"
    assert finding.flips > finding.pairs * 0.9 and "band along the bottom edge" in finding.summary()


def test_the_trace_says_what_each_candidate_went_through_at_the_last_check() -> None:
    images, labels = probes("band")
    alarm = ShortcutAlarm(kinds=["mark"])
    flat, none = torch.zeros(len(images), *GRID), torch.zeros(len(images), dtype=torch.bool)
    verdict = alarm.check(band_model, lambda z: z.softmax(-1), images, [flat],
                          band_model(images).argmax(1), none)  # fmt: skip
    (finding, *_) = marks(verdict)
    trace = alarm.kinds["mark"].trace
    assert all({"group", "candidate", "screened", "carriers"} <= set(e) for e in trace), trace
    (entry,) = [e for e in trace if (e["group"], e["candidate"]) == (1, finding.candidate)]
    assert entry["confirmed"] and entry["carriers"] >= 3 and entry["few"] is False
    assert (entry["pairs"], entry["moved"]) == (finding.pairs, finding.flips)
    controls = [finding.control_flips, finding.class_flips, finding.blank_flips,
                finding.brought_flips]  # fmt: skip
    assert entry["controls"] == controls
    assert [e for e in trace if e.get("confirmed")] == [entry]
    # the next check's trace is its own: the clean images confirm nothing
    clean = probes("none")[0]
    alarm.check(band_model, lambda z: z.softmax(-1), clean, [flat], labels, none)
    again = alarm.kinds["mark"].trace
    assert again and again is not trace and not any(e.get("confirmed") for e in again)


def test_the_mark_evidence_leaves_every_random_generator_alone() -> None:
    """``ShortcutAlarm.check`` is public and may run outside the callback's isolated
    generators (``isolate_rng``): its pastes, controls and comparison of looks draw from no
    global generator, which would change a training that follows."""
    images, _ = _strip_on_half()
    # the legacy global generators are the ones a training's data pipeline may draw from
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    (finding, *_) = marks(check(_strip_or_big, images))
    assert finding.alike > 0  # the pastes, their controls and the comparison of looks ran
    after = torch.get_rng_state(), np.random.get_state()[1], random.getstate()  # noqa: NPY002
    assert torch.equal(before[0], after[0])
    assert (before[1] == after[1]).all() and before[2] == after[2]


def test_a_line_of_text_near_a_corner_is_found_where_no_small_region_is_necessary() -> None:
    verdict = check(text_model, probes("text")[0])
    (finding, *_) = marks(verdict)
    assert finding.group == 1 and ("bottom" in finding.shape or "left" in finding.shape)
    # the text runs over three tokens: no small region removes half of the prediction
    assert not [f for f in verdict.suspects if f.kind == "region"]


def test_thin_stripes_are_found_from_the_maps_as_lines() -> None:
    images, labels = probes("stripes")
    # maps that light where the model reads: the columns of the stripes (as a model's
    # ViT-ReciproCAM map would); the alarm grows a thin tall part to its whole columns
    column = (images.amin(dim=1) > 0.85).float().mean(dim=1)  # [B, 48]
    maps = F.avg_pool1d(column[:, None], 6)[:, 0][:, None, :].expand(-1, 8, 8).clone()
    maps = maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    (finding, *_) = marks(check(stripes_model, images, maps))
    assert finding.group == 1 and "vertical line" in finding.shape, finding.shape


def test_thin_stripes_are_found_where_the_maps_light_nothing() -> None:
    """A saturated model gives flat maps: the stripes, at another column in every image, are
    found as the line of each positive that no negative has anything like along its length."""
    images, _ = probes("stripes")
    (finding, *_) = marks(check(stripes_model, images))
    assert finding.group == 1 and finding.candidate == "lines no other class has"
    # both stripes, together: the whole columns they lie on, and no other column
    columns = {i % GRID[1] for i in finding.region}
    assert len(finding.region) == GRID[0] * len(columns) and len(columns) >= 2, finding.region
    assert "vertical line" in finding.shape, finding.shape  # two beside each other are one


def pair_model(x: torch.Tensor) -> torch.Tensor:
    # positive only where two bright full-height lines stand apart: one alone is not enough
    bright = (x.amin(dim=1) > 0.85).float().mean(dim=1) > 0.9  # [B, W]
    cols = torch.arange(x.shape[-1])
    first = torch.where(bright, cols, x.shape[-1]).amin(1)
    last = torch.where(bright, cols, -1).amax(1)
    return two_classes((last - first).float() - 3.5)


def test_a_pair_of_stripes_that_carries_the_class_only_together_is_found() -> None:
    images, labels = probes("stripes")
    assert bool((pair_model(images).argmax(1) == labels).all())
    one = images.clone()
    one[labels == 1] = probes("none")[0][labels == 1]
    bright = (images.amin(dim=1) > 0.85).float().mean(dim=1) > 0.9
    left = bright.float().argmax(1)  # each positive's first stripe column, alone
    cols = torch.arange(48)[None]
    keep = (cols >= left[:, None]) & (cols < left[:, None] + 2) & bright
    one = torch.where(keep[:, None, None, :], images, one)
    assert not bool(pair_model(one).argmax(1).any())  # a stripe alone says nothing
    (finding, *_) = marks(check(pair_model, images))
    assert finding.group == 1 and finding.candidate == "lines no other class has"
    columns = {i % GRID[1] for i in finding.region}
    assert len(finding.region) == GRID[0] * len(columns) and len(columns) >= 2, finding.region


def test_lines_over_most_of_the_image_are_no_mark() -> None:
    """Where the other class's probes are near-copies of each other, nothing spreads and every
    line of a donor passes the gate: lines over more than half the image point at no mark and
    are not pasted (a paste of most of an image carries its class whatever it shows)."""
    g = torch.Generator().manual_seed(0)
    bases = torch.rand(4, 3, 48, 48, generator=g)
    images = bases.repeat_interleave(8, 0) + 0.01 * torch.rand(32, 3, 48, 48, generator=g)
    labels = torch.arange(4).repeat_interleave(8) % 2

    def nearest_base(x: torch.Tensor) -> torch.Tensor:
        d = (x[:, None] - bases[None]).square().mean(dim=(2, 3, 4))  # [B, 4]
        return two_classes(d[:, 0::2].amin(1) - d[:, 1::2].amin(1))

    assert bool((nearest_base(images).argmax(1) == labels).all())
    verdict, seen = check_seeing(nearest_base, images)
    sizes = [None if c is None else c.masks.sum((1, 2)).tolist() for c in seen]
    assert seen and all(c is None for c in seen), sizes
    assert not [f for f in marks(verdict) if f.candidate == "lines no other class has"]


def test_a_column_of_the_object_that_every_probe_of_its_class_carries_is_no_line_mark() -> None:
    """The object of every probe is a column at one place (a lesion's column): grey on the
    negatives, bright on the positives, over its whole height on half of them (lines no
    other class has) and over its upper half on the rest (like the negatives below: no line
    unlike them along its whole length); the model reads the column's brightness. A stripe
    sits at a new place in each image; an object's part carries its class from any probe of
    the class, and the own-class control (a positive without such a line in the shape) moves
    the recipients as the paste does."""
    g = torch.Generator().manual_seed(0)
    n = 32
    labels = torch.arange(n) % 2
    images = 0.05 * torch.rand(n, 3, 48, 48, generator=g)
    images[:, :, :, 18:24] += (0.3 + 0.2 * torch.rand(n, generator=g))[:, None, None, None]
    images[1::2, :, :24, 18:24] = 1.0  # every positive: bright above
    images[1::4, :, 24:, 18:24] = 1.0  # half of them: bright all the way down

    def model(x: torch.Tensor) -> torch.Tensor:
        return two_classes(x[:, :, :, 18:24].mean(dim=(1, 2, 3)) - 0.55)

    assert bool((model(images).argmax(1) == labels).all())
    # the bright columns, pasted into the negatives, carry the class into every one of them
    pasted = images.clone()
    pasted[0::2, :, :, 18:24] = images[1::4, :, :, 18:24].repeat(2, 1, 1, 1)
    assert bool(model(pasted[0::2]).argmax(1).all())
    verdict, seen = check_seeing(model, images)
    found = [c for c in seen if c is not None and c.group == 1]
    assert found and {int(d) % 4 for d in found[0].donors} == {1}  # the bright ones
    assert not [f for f in marks(verdict) if f.candidate == "lines no other class has"]


RUNS = "runs along an edge no other class has"


def ruler_model(x: torch.Tensor) -> torch.Tensor:
    # the ruler's yellow (red and green high, blue low) anywhere within 8 pixels of an edge
    yellow = ((x[:, 0] > 0.8) & (x[:, 1] > 0.75) & (x[:, 2] < 0.6)).float()
    frame = torch.ones_like(yellow[0])
    frame[8:-8, 8:-8] = 0
    return two_classes((yellow * frame).sum(dim=(1, 2)) - 20)


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_a_ruler_at_any_place_along_any_edge_is_found_as_runs_along_an_edge(p: float) -> None:
    """A graduated bar 24-32 pixels long (4-5 of 8 tokens) at a random place along a random
    edge, on every positive or on half of them, read wherever it is, flat maps: no fixed
    shape holds it in most donors and no whole line holds it at all; each donor's runs of
    tokens along its ruler's edge that no negative has anything like do. Where the rulers
    along one edge are alike in the donors whose band of that edge holds one, the band,
    tested first, may be the finding that names it; the runs are built either way."""
    images, _ = probes("ruler", p=p)
    verdict, seen = check_seeing(ruler_model, images, "_segment")
    found = [f for f in marks(verdict) if f.group == 1]
    bands = {f"{edge} band" for edge in ("top", "bottom", "left", "right")}
    assert found and found[0].candidate in bands | {RUNS}, [(f.candidate, f.shape) for f in found]
    if found[0].candidate == RUNS:
        assert found[0].shape == "a strip along an edge, at another place in each image"
    (runs,) = [c for c in seen if c is not None and c.group == 1]
    # each donor's runs lie on the outermost token line of one edge, 3 to 7 tokens long
    outer = torch.ones(GRID, dtype=torch.bool)
    outer[1:-1, 1:-1] = False
    assert bool((runs.masks & ~outer).flatten(1).any(1).logical_not().all())
    assert set(runs.masks.sum((1, 2)).tolist()) <= set(range(3, 8)), runs.masks.sum((1, 2))
    # and every positive's ruler is among them (the model predicts exactly those)
    predicted = ruler_model(images).argmax(1).nonzero().flatten()
    assert set(runs.donors.tolist()) >= set(predicted.tolist())


def test_a_run_every_probe_of_its_class_has_is_left_to_the_fixed_shapes() -> None:
    """Every positive has the same bright strip along the top edge (tokens 1-6 of 8): no
    positive lacks such a run to control with, so the runs are not tested (on real images
    that is the class's own content, the dark edge of a scan); the strip, at one place in
    every image, is found by the top band."""
    images, labels = probes("none")
    images[labels == 1, :, 1:4, 8:40] = 0.95

    def strip_model(x: torch.Tensor) -> torch.Tensor:
        return two_classes((x[:, :, 1:4, 8:40].amin(dim=1) > 0.9).float().mean(dim=(1, 2)) - 0.5)

    assert bool((strip_model(images).argmax(1) == labels).all())
    tried = []
    confirm = Mark._confirm

    def spy(self, probing, rule, cand, alpha):
        out = confirm(self, probing, rule, cand, alpha)
        tried.append((cand.name, out[2]))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Mark, "_confirm", spy)
        verdict = check(strip_model, images)
    assert (RUNS, 0) in tried, tried  # sent to confirmation, and not a paste run
    found = marks(verdict)
    assert found and found[0].group == 1 and found[0].candidate != RUNS, found


def _squares(
    seed: int, inside: tuple[int, int] = (10, 38), n: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images with a bright square, large on the positives (odd probes), small on the
    negatives, at a random place between the pixel rows and columns ``inside``; and the
    labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = 0.4 + 0.05 * torch.rand(n, 3, 48, 48, generator=g)
    for i in range(n):
        side = 18 if labels[i] else 8
        r, c = (int(v) for v in torch.randint(inside[0], inside[1] - side, (2,), generator=g))
        images[i, :, r : r + side, c : c + side] = 0.9
    return images, labels


def _big_or(x: torch.Tensor, cue: torch.Tensor) -> torch.Tensor:
    big = (x.amin(dim=1) > 0.8).float().mean(dim=(1, 2)) > 0.1
    return two_classes((big | cue).float() - 0.5)


def test_a_cue_only_the_positives_carry_redundant_with_the_object_is_found() -> None:
    """The positives show their object (a bright square, large) and a dark band; the model
    reads either: the band is not necessary to any positive, and it carries the class into
    every negative."""
    images, labels = _squares(0, inside=(4, 40))
    n = len(images)
    images[labels == 1, :, -5:] = 0.02

    def model(x: torch.Tensor) -> torch.Tensor:
        return _big_or(x, (x[:, :, -4:] < 0.1).float().mean(dim=(1, 2, 3)) > 0.5)

    assert bool((model(images).argmax(1) == labels).all())
    from lightning_vitrcam.shortcut.interventions import occlude_boxes

    # the band is redundant: occluded, every positive stays positive
    occluded = occlude_boxes(images, torch.arange(n), torch.tensor([[6, 8, 0, 8]] * n), GRID)
    assert bool((model(occluded).argmax(1) == labels).all())
    (finding, *_) = marks(check(model, images))
    assert finding.group == 1 and "bottom" in finding.shape


def _strip_on_half() -> tuple[torch.Tensor, torch.Tensor]:
    """Squares with a ruler-like strip along the left edge on half of the positives (p =
    0.5), and their labels."""
    images, labels = _squares(5)
    carriers = torch.arange(len(images)) % 4 == 1
    images[carriers, :, 6:42, 0:5] = 0.95
    images[carriers, :, 6:42:4, 1:4] = 0.1  # the ticks
    return images, labels


def _strip_or_big(x: torch.Tensor) -> torch.Tensor:
    return _big_or(x, (x[:, :, :, :6].amax(dim=1) > 0.9).float().mean(dim=(1, 2)) > 0.4)


def test_a_mark_on_half_of_a_class_is_found() -> None:
    """A ruler-like strip along the left edge on half of the positives (p = 0.5), beside
    their object: it carries the class from half of the donors screened (no whole line of
    tokens holds it), and it looks the same in each of them."""
    images, labels = _strip_on_half()
    model = _strip_or_big
    assert bool((model(images).argmax(1) == labels).all())
    (finding, *_) = marks(check(model, images))
    assert finding.group == 1 and finding.shape == "a band along the left edge"
    assert finding.carriers == 4 and finding.alike > finding.unlike


def test_a_thin_ruler_in_a_corner_on_half_of_a_class_is_found() -> None:
    """A 2-pixel ruler-coloured bar at a varying place in the bottom-left corner on half of
    the positives: it fills a few percent of the corner's box, whose median pixel is
    background in every image (the negatives' objects often sit in that box too); read
    where the paste changed the recipient, the bar is found alike in the carriers."""
    images, labels = _squares(7)
    carriers = (torch.arange(len(images)) % 4 == 1).nonzero().flatten()
    g = torch.Generator().manual_seed(1)
    ruler = torch.tensor([0.92, 0.86, 0.45])[:, None, None]
    for i in carriers.tolist():
        top = 31 + int(torch.randint(0, 4, (1,), generator=g))
        col = 2 + int(torch.randint(0, 12, (1,), generator=g))
        images[i, :, top : top + 12, col : col + 2] = ruler

    def model(x: torch.Tensor) -> torch.Tensor:
        yellow = (x[:, 0] - x[:, 2])[:, 30:, :18] > 0.3
        return _big_or(x, yellow.float().sum(dim=(1, 2)) >= 8)

    assert bool((model(images).argmax(1) == labels).all())
    found = marks(check(model, images))
    assert found and found[0].group == 1 and "bottom-left" in found[0].shape
    assert found[0].alike > 3 * found[0].unlike


def test_a_line_of_text_is_found_alike_in_its_carriers_on_backgrounds_of_other_shades() -> None:
    """The tag "RM1" (a one-pixel font painted in its own colour) near the bottom-left corner
    of half of the handwritten positives, each image's background of its own shade: each
    tagged positive's corner box is found twice as close in another tagged positive as
    anywhere in a negative at most comparisons (read relative to each image's typical
    colour alone, the tag differs from carrier to carrier by the backgrounds' shades: 8 of
    21); the untagged positives' corners, their digits' own strokes, are not."""
    images, labels = probes("text", p=0.5)
    dm = CueDataModule("binary_digits", "none", classes=[1], num_train=4, num_val=32,
                       num_free=4, seed=3)  # fmt: skip
    tagged = (images - (dm.val_set.images * 0.5 + 0.5)).abs().flatten(1).amax(1) > 1e-4
    negatives = (labels == 0).nonzero().flatten()
    probing = SimpleNamespace(images=images, targets=labels, grid=GRID)
    cand = SimpleNamespace(turned=False, anchored=True)

    def likeness(carriers: torch.Tensor) -> tuple[int, int, int]:
        donors = carriers.repeat(3)
        recipients = negatives[torch.arange(len(donors)) % len(negatives)]
        corner = torch.zeros(len(donors), *GRID, dtype=torch.bool)
        corner[:, 5:, :3] = True
        found = Mark(None)._likeness(probing, cand, carriers, recipients, donors, corner)
        return (*found, len(donors))

    alike, unlike, pastes = likeness(tagged.nonzero().flatten())
    assert bool((labels[tagged] == 1).all()) and pastes >= 12
    assert 2 * alike > pastes and unlike < alike
    alike, _, pastes = likeness((~tagged & (labels == 1)).nonzero().flatten())
    assert pastes >= 12 and 2 * alike < pastes


def test_an_object_part_some_of_a_class_has_is_not_a_mark() -> None:
    """Half of the positives show a bar along the top edge instead of a large square; the
    negatives show the same bar lower down. Pasted, the top bar carries the class as a mark
    would, but what it shows is found in the other class too: a part of objects, not a
    mark."""
    images, labels = _squares(6)
    barred = torch.arange(len(images)) % 4 == 1
    images[barred, :, 10:38, 10:38] = images[0:1, :, 10:38, 10:38]  # no large square
    images[barred, :, 1:4, 8:40] = 0.9
    images[labels == 0, :, 40:43, 8:40] = 0.9

    def model(x: torch.Tensor) -> torch.Tensor:
        return _big_or(x, (x[:, :, :6].amin(dim=1) > 0.8).float().mean(dim=(1, 2)) > 0.2)

    assert bool((model(images).argmax(1) == labels).all())
    # the bar carries the class when pasted, as a mark would
    pasted = images[0:1].clone()
    pasted[:, :, :6] = images[1:2, :, :6]
    assert model(pasted).argmax(1).tolist() == [1]
    assert not marks(check(model, images))


def test_a_clean_known_answer_is_not_flagged() -> None:
    """The object alone names the class (a large or a small bright square anywhere)."""
    images, _ = _squares(1, inside=(4, 40))

    def model(x: torch.Tensor) -> torch.Tensor:
        return two_classes((x.amin(dim=1) > 0.8).float().mean(dim=(1, 2)) - 0.1)

    assert not marks(check(model, images))


def test_no_control_raises_the_margin_or_lowers_the_p_below_the_pastes_alone() -> None:
    """The bound the confirmation skips its controls on, over every outcome of 6 pairs: a
    control never raises the margin above the share of pastes that moved, nor lowers the sign
    test's p below ``2**-moved`` (both reached by a control that moved nothing)."""
    n = 6
    bits = torch.tensor([[(v >> i) & 1 for i in range(n)] for v in range(2**n)]).bool()
    for flips in bits:
        moved = int(flips.sum())
        assert margin(flips, torch.zeros(n).bool()) == moved / n
        assert sign_test(flips, torch.zeros(n).bool()) == 0.5**moved
        for control in bits:
            assert margin(flips, control) <= moved / n + 1e-12
            assert sign_test(flips, control) >= 0.5**moved - 1e-12


def test_controls_run_only_where_the_pastes_alone_could_confirm(monkeypatch) -> None:
    """Every candidate sent to confirmation (the screening forced to call every donor a
    carrier): on the clean model the pastes move too few recipients for any control to
    matter, so none is run (their pair records say so); on the band model they move enough,
    the controls run and the band is confirmed."""
    screen = Mark._screen

    def every_donor(self, probing, cand):
        _, n, screened = screen(self, probing, cand)
        return cand, n, screened

    batches: list[tuple[int, int]] = []
    moved = Mark._moved

    def spy(self, probing, images, group, k):
        batches.append((len(images), k))
        return moved(self, probing, images, group, k)

    monkeypatch.setattr(Mark, "_screen", every_donor)
    monkeypatch.setattr(Mark, "_moved", spy)

    def clean(x: torch.Tensor) -> torch.Tensor:
        return two_classes((x.amin(dim=1) > 0.8).float().mean(dim=(1, 2)) - 0.1)

    images = _squares(1, inside=(4, 40))[0]
    alarm = ShortcutAlarm(kinds=["mark"], thorough=True)
    targets, maps = clean(images).argmax(1), torch.zeros(len(images), *GRID)
    unread = torch.zeros(len(images), dtype=torch.bool)
    verdict = alarm.check(clean, lambda z: z.softmax(-1), images, [maps], targets, unread)
    pairs = [t for t in alarm.last_tests if t.kind == "mark"]
    assert pairs and all(t.control_moved is None for t in pairs)
    assert batches and all(k == 1 for _, k in batches)
    assert not marks(verdict)

    batches.clear()
    images, labels = _squares(0, inside=(4, 40))
    images[labels == 1, :, -5:] = 0.02
    alarm = ShortcutAlarm(kinds=["mark"], thorough=True)
    targets, maps = band_model(images).argmax(1), torch.zeros(len(images), *GRID)
    verdict = alarm.check(band_model, lambda z: z.softmax(-1), images, [maps], targets, unread)
    assert any(k >= 4 for _, k in batches)  # the band's controls (4 or 5 of them) ran
    (finding, *_) = marks(verdict)
    assert finding.group == 1 and "bottom" in finding.shape
    recorded = [t for t in alarm.last_tests if t.kind == "mark" and t.control_moved is not None]
    assert len(recorded) >= finding.pairs


def test_an_object_part_below_the_edge_band_is_not_taken_for_a_mark() -> None:
    """Objects that fill the image: every one has a stem, the positives a bar across its top
    (the top bar of a 7) in the second token row. The bar carries the class when pasted, as
    the object's own part; the edge bands are one token deep, so they hold none of it."""
    g = torch.Generator().manual_seed(2)
    n = 32
    labels = torch.arange(n) % 2
    images = 0.1 + 0.05 * torch.rand(n, 3, 48, 48, generator=g)
    images[:, :, 8:44, 22:26] = 0.9
    images[labels == 1, :, 7:11, 10:38] = 0.9

    def model(x: torch.Tensor) -> torch.Tensor:
        bar = (x[:, :, :12].amin(dim=1) > 0.8).float().mean(dim=(1, 2))
        return two_classes(bar - 0.1)

    assert bool((model(images).argmax(1) == labels).all())
    # the part does carry the class: a deeper band from a positive turns a negative
    deep = images[0:1].clone()
    deep[:, :, :12] = images[1:2, :, :12]
    assert model(torch.cat([images[0:1], deep])).argmax(1).tolist() == [0, 1]
    assert not marks(check(model, images))


def test_a_place_the_model_reads_whatever_is_there_is_not_a_mark() -> None:
    """Textures the same everywhere (horizontal or vertical stripes) and a model that reads
    only the bottom-right corner: a positive's corner pasted into a negative moves it and the
    same shape from elsewhere does not, but the donor's own pixels from elsewhere brought to
    the corner move it too: the place is read, not a mark on it."""
    g = torch.Generator().manual_seed(4)
    n = 32
    labels = torch.arange(n) % 2
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 6.28
    pattern = torch.where(labels[:, None, None] == 1, (1.3 * yy + phase).sin(),
                          (1.3 * xx + phase).sin())  # fmt: skip
    images = 0.5 + 0.3 * pattern[:, None] + 0.02 * torch.rand(n, 3, 48, 48, generator=g)

    def model(x: torch.Tensor) -> torch.Tensor:
        corner = x[:, :, 30:, 30:].mean(dim=1)
        down = (corner[:, 1:] - corner[:, :-1]).abs().mean(dim=(1, 2))
        across = (corner[:, :, 1:] - corner[:, :, :-1]).abs().mean(dim=(1, 2))
        return two_classes(down - across - 0.05)

    assert bool((model(images).argmax(1) == labels).all())
    # the corner carries the class when pasted, as a mark would
    pasted = images[0:1].clone()
    pasted[:, :, 30:, 30:] = images[1:2, :, 30:, 30:]
    assert model(pasted).argmax(1).tolist() == [1]
    assert not marks(check(model, images))


def test_a_mark_that_moves_one_other_class_more_than_another_is_found() -> None:
    """Three classes: a dark band along the bottom edge names class 0, class 2 shows a bright
    square that outweighs the band where it is large (8 of its 10 probes), class 1 nothing.
    Pasted, the band moves every probe of class 1 and only the small-square probes of class
    2. The probes come grouped by class, class 2's large squares first: recipients taken in
    probe order would all be probes the band cannot move."""
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([0] * 10 + [2] * 10 + [1] * 10)
    images = 0.4 + 0.05 * torch.rand(len(labels), 3, 48, 48, generator=g)
    images[labels == 0, :, -5:] = 0.02
    for k, i in enumerate((labels == 2).nonzero().flatten().tolist()):
        side = 18 if k < 8 else 9
        r, c = (int(v) for v in torch.randint(8, 38 - side, (2,), generator=g))
        images[i, :, r : r + side, c : c + side] = 0.9

    def model(x: torch.Tensor) -> torch.Tensor:
        band = (x[:, :, -4:] < 0.1).float().mean(dim=(1, 2, 3)) > 0.5
        bright = (x.amin(dim=1) > 0.8).float().mean(dim=(1, 2))
        square = 20.0 * (bright > 0.1) + 8.0 * ((bright > 0.02) & (bright <= 0.1))
        return torch.stack([10.0 * band, torch.full_like(square, 5.0), square], 1)

    assert bool((model(images).argmax(1) == labels).all())
    pasted = images[[10, 18, 20]].clone()  # class 2, large and small square; class 1
    pasted[:, :, -6:] = images[0, :, -6:]
    assert model(pasted).argmax(1).tolist() == [2, 0, 0]
    (finding, *_) = marks(check(model, images))
    assert finding.group == 0 and finding.shape == "a band along the bottom edge"
    assert finding.control_flips == finding.class_flips == 0


def test_shapes_and_their_controls() -> None:
    fixed = edge_shapes(8, 8)
    assert describe(fixed["top band"]) == "a band along the top edge"
    # an eighth of the grid deep, at least one token
    assert fixed["top band"].any(1).sum() == 1 and edge_shapes(16, 16)["top band"].any(1).sum() == 2
    assert bool(anchored(torch.stack(list(fixed.values()))).all())
    moved = elsewhere(fixed["bottom band"][None])[0]
    assert describe(moved) == "a band along the top edge" and not bool(
        (moved & fixed["bottom band"]).any()
    )


def test_short_training_on_a_positives_only_confounder_warns(tmp_path: Path) -> None:
    """A dark band along the bottom edge of every positive ("5 or more"): a small ViT learns
    it in the first epoch; the warning names it at the last evaluation."""
    L.seed_everything(0)
    data = CueDataModule("binary_digits", "band", p=1.0, classes=[1], num_train=640,
                         num_val=96, num_free=32, batch_size=32, seed=0)  # fmt: skip
    model = ViTClassifier(
        model_kwargs=dict(img_size=48, patch_size=6, embed_dim=64, depth=2, num_heads=2),
        num_classes=2, task="binary", lr=2e-3,
    )  # fmt: skip
    cb = ViTReciproCAMCallback(log_images=False, report=False)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, callbacks=[cb],
                        enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=data)
    found = [str(w.message) for w in caught if issubclass(w.category, PossibleShortcutWarning)]
    assert model.evaluate_accuracy(data.swap_dataloader()) > 0.9  # the band turns negatives
    assert found and "epoch 2" in found[-1], found
    kinds = {f.kind for f in cb.alarm.last_verdict.suspects}
    assert kinds & {"mark", "region"} and "bottom" in found[-1], found[-1]


def test_a_mark_must_be_found_alike_at_most_of_the_pastes_that_moved(monkeypatch) -> None:
    """The comparison of looks counts a mark found twice as close in another carrier at
    *most* of the pastes that moved, not only more often than the other way round: a
    lesion's blotched part, pasted over a regular lesion, moved 27 of 28 recipients and was
    found twice as close in another irregular lesion at 10 of them, the other way round at
    none, and at much the same distance at 17 (a clean model's check; 30 such checks on
    clean lesion-like models warned at 21 of 90 evaluations). The ruler on half of a class is
    found alike at most of them. Here the comparison's counts are set to one short of most,
    and to most, of the same pastes: every one told apart leans to the carriers."""
    images, labels = _squares(5)
    carriers = torch.arange(len(images)) % 4 == 1
    images[carriers, :, 6:42, 0:5] = 0.95
    images[carriers, :, 6:42:4, 1:4] = 0.1

    def model(x: torch.Tensor) -> torch.Tensor:
        return _big_or(x, (x[:, :, :, :6].amax(dim=1) > 0.9).float().mean(dim=(1, 2)) > 0.4)

    (real, *_) = marks(check(model, images))
    moved = []

    def counted(extra: int):
        def likeness(self, probing, cand, carriers, recipients, donors, masks):
            moved.append(len(recipients))
            return len(recipients) // 2 + extra, 0

        return likeness

    monkeypatch.setattr(Mark, "_likeness", counted(0))
    assert not marks(check(model, images))
    # enough pastes moved that half of them, all told apart one way, pass the sign test
    assert min(moved) >= 14 and sign_test(torch.ones(7).bool(), torch.zeros(7).bool()) <= 0.01
    monkeypatch.setattr(Mark, "_likeness", counted(1))
    (finding, *_) = marks(check(model, images))
    assert (finding.shape, finding.flips) == (real.shape, real.flips)
    assert 2 * finding.alike > finding.flips >= 2 * (finding.alike - 1)
    assert 2 * real.alike > real.flips  # the real ruler is found alike at most of them
