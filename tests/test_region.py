"""The region kind of evidence on hand-built models whose answer is known: a tag that moves, a
tag at one place, objects whose parts carry nothing on their own, and a model that reads any
second bright part as one class (the case the second control is there for)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lightning_vitrcam.shortcut import PairTest, RegionTest, ShortcutAlarm, Verdict
from lightning_vitrcam.shortcut.region import RegionFinding, control_boxes
from lightning_vitrcam.shortcut.rule import margin

CELL, SIDE = 8, 32  # 32x32 images, a 4x4 grid of 8-pixel tokens


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)


def cells(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 4, 4]`` mean colour of each token."""
    return F.avg_pool2d(images, CELL)


def check(
    model,
    images: torch.Tensor,
    maps: torch.Tensor | None = None,
    alarm: ShortcutAlarm | None = None,
) -> Verdict:
    """The region kind alone on the probes ``images``, explaining what ``model`` predicts;
    without ``maps`` every map is flat (the occlusion search has to find the places)."""
    n = len(images)
    informative = torch.ones(n, dtype=torch.bool) if maps is not None else torch.zeros(n).bool()
    maps = torch.zeros(n, 4, 4) if maps is None else maps
    targets = model(images).argmax(dim=1)
    # four recipients per donor: the known answers below were worked out for that many pairs
    alarm = alarm or ShortcutAlarm(kinds=["region"], transplants=4)
    return alarm.check(model, softmax, images, [maps], targets, informative)


def pointing_at(places: list[tuple[int, int]]) -> torch.Tensor:
    """Maps whose peak is at each probe's ``places[i]`` (an explanation that found the tag)."""
    maps = torch.rand(len(places), 4, 4, generator=torch.Generator().manual_seed(1)) * 0.3
    for i, (r, c) in enumerate(places):
        maps[i, r, c] = 1.0
    return maps


def paint(images: torch.Tensor, i: int, r: int, c: int, colour: torch.Tensor) -> None:
    images[i, :, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = colour.view(3, 1, 1)


# --------------------------------------------------------------------------- a tag
def tag_model(images: torch.Tensor) -> torch.Tensor:
    """The class is the colour of the brightest token, wherever it is (a moving tag)."""
    c = cells(images)
    best = c.amax(dim=1).flatten(1).argmax(dim=1)
    return 10.0 * c.flatten(2)[torch.arange(len(images)), :, best]


def tagged(n: int, places: list[tuple[int, int]]) -> torch.Tensor:
    """Dim noise with a class-coloured tag (probe i: class i % 3) at ``places[i]``."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, SIDE, SIDE, generator=g) * 0.2
    for i, (r, c) in enumerate(places):
        paint(images, i, r, c, torch.eye(3)[i % 3])
    return images


def test_a_tag_that_moves_is_found_and_said_to_move() -> None:
    g = torch.Generator().manual_seed(3)
    places = [divmod(int(v), 4) for v in torch.randperm(16, generator=g)[:12]]
    verdict = check(tag_model, tagged(12, places), pointing_at(places))
    (finding,) = verdict.suspects
    assert isinstance(finding, RegionFinding) and finding.group is None and finding.moves
    # every probe's decisive region is its own tag, wherever it sits
    assert sorted(finding.boxes) == sorted((r, r + 1, c, c + 1) for r, c in places)
    assert finding.necessary == 12 and finding.flips > finding.pairs * 0.9
    assert max(finding.control_flips, finding.class_flips) < finding.pairs * 0.5
    assert "the prediction follows a small region that moves: on 12 of 12 probes" in (
        finding.describe()
    )
    assert verdict.scalars["shortcut_transplant"] >= 0.5 and verdict.scalars["shortcut_drop"] > 0.5


def test_the_search_finds_tags_that_move_where_every_map_is_flat() -> None:
    g = torch.Generator().manual_seed(4)
    places = [divmod(int(v), 4) for v in torch.randint(0, 16, (12,), generator=g)]
    alarm = ShortcutAlarm(kinds=["region"])
    verdict = check(tag_model, tagged(12, places), alarm=alarm)
    assert alarm.searched and verdict.suspects
    assert {f.group for f in verdict.suspects} == {None} and verdict.suspects[0].moves
    # without the search the alarm is blind here: the flat maps propose nothing
    assert not check(
        tag_model, tagged(12, places), alarm=ShortcutAlarm(kinds=["region"], search=False)
    ).suspects


def test_a_tag_at_one_place_is_named_by_its_place() -> None:
    verdict = check(tag_model, tagged(12, [(0, 0)] * 12))
    (finding,) = verdict.suspects
    assert not finding.moves and finding.place == (0, 1, 0, 1)
    assert "the prediction hangs on token row 0, column 0 (on the top-left corner)" in (
        finding.describe()
    )


def test_a_finding_is_raised_by_two_confirmations_in_a_row_and_dropped_by_two_misses() -> None:
    """One confirmation (a chance one, on a clean model, looks the same) is not raised; the
    next check that confirms a finding again raises it; one check that confirms nothing
    repeats the raised findings (held, on the probes that confirmed them), the second in a
    row drops them; a check whose model has learned nothing counts neither way. The counts
    survive a resume."""
    tag, clean = tagged(12, [(0, 0)] * 12), tagged(12, [(0, 0)] * 12)
    clean[:, :, :CELL, :CELL] = 0.0  # no tag: the model follows the noise, nothing carries
    targets, nothing_right = tag_model(tag).argmax(1), torch.zeros(12).bool()

    def unlearned(alarm: ShortcutAlarm) -> Verdict:
        return alarm.check(tag_model, softmax, tag, [torch.zeros(12, 4, 4)], targets,
                           nothing_right, right=(nothing_right, 0.5))  # fmt: skip

    alarm = ShortcutAlarm(kinds=["region"], transplants=4)
    first = check(tag_model, tag, alarm=alarm)
    assert first.suspects and not first.warns and first.scalars["shortcut_streak"] == 1
    second = check(tag_model, tag, alarm=alarm)
    assert second.warns and second.raised == second.suspects and not second.held
    miss = check(tag_model, clean, alarm=alarm)
    assert not miss.suspects and miss.warns and miss.held and miss.raised == second.raised
    assert miss.images is second.images  # the evidence is drawn on the probes that showed it
    # the class a standing finding names is tested first at the next check
    named = dataclasses.replace(second.raised[0], group=3)
    held_alarm = copy.copy(alarm)
    held_alarm._raised = Verdict(raised=[named])
    assert held_alarm.focus == [3]
    untested = unlearned(alarm)
    assert not alarm.learned and not untested.warns and (alarm.streak, alarm.misses) == (0, 1)
    assert alarm.standing  # an untested check is no evidence that the shortcut went
    held_alarm = copy.copy(alarm)  # ... nor does it drop the class from the next draw
    held_alarm._raised = Verdict(raised=[named])
    assert held_alarm.focus == [3]
    assert not check(tag_model, clean, alarm=alarm).warns and not alarm.standing
    assert not check(tag_model, tag, alarm=alarm).warns  # one confirmation again: not raised
    resumed = ShortcutAlarm(kinds=["region"], transplants=4)
    resumed.load_state_dict(alarm.state_dict())
    assert resumed.streak == 1 and check(tag_model, tag, alarm=resumed).warns
    assert unlearned(resumed).scalars["shortcut_streak"] == 2 and resumed.standing
    # resumed while standing: the findings were not saved, so a miss repeats nothing
    again = ShortcutAlarm(kinds=["region"], transplants=4)
    again.load_state_dict(resumed.state_dict())
    assert again.standing and not check(tag_model, clean, alarm=again).warns
    # a one-off check (the audit) raises at once, and only what it confirmed
    once = ShortcutAlarm(kinds=["region"], confirmations=1)
    assert check(tag_model, tag, alarm=once).warns and not check(tag_model, clean, alarm=once).warns


def test_a_window_raises_on_confirmations_among_the_last_checks_not_only_in_a_row() -> None:
    """``window=3``: two confirmations among the last three tested checks raise (a partial
    cue one check's probes miss between two that find it); the default, two in a row, does
    not; an untested check does not enter the window; the window survives a resume."""
    tag, clean = tagged(12, [(0, 0)] * 12), tagged(12, [(0, 0)] * 12)
    clean[:, :, :CELL, :CELL] = 0.0
    targets, nothing_right = tag_model(tag).argmax(1), torch.zeros(12).bool()
    row = ShortcutAlarm(kinds=["region"], transplants=4)
    window = ShortcutAlarm(kinds=["region"], transplants=4, window=3)
    for alarm in (row, window):
        assert check(tag_model, tag, alarm=alarm).suspects
        assert not check(tag_model, clean, alarm=alarm).suspects
        alarm.check(tag_model, softmax, tag, [torch.zeros(12, 4, 4)], targets, nothing_right,
                    right=(nothing_right, 0.5))  # fmt: skip
    assert window.recent == [True, False]  # the untested check is not in the window
    resumed = ShortcutAlarm(kinds=["region"], transplants=4, window=3)
    resumed.load_state_dict(window.state_dict())
    assert resumed.recent == [True, False]
    assert not check(tag_model, tag, alarm=row).warns
    third = check(tag_model, tag, alarm=resumed)
    assert third.warns and third.raised == third.suspects
    # a miss holds it (one of three is not enough to raise, but two misses in a row drop it)
    assert check(tag_model, clean, alarm=resumed).held
    assert not check(tag_model, clean, alarm=resumed).warns and not resumed.standing
    # state saved before the window: the streak is the row of confirmations
    old = {k: v for k, v in resumed.state_dict().items() if k != "recent"}
    old.update(streak=1, misses=0)
    resumed.load_state_dict(old)
    assert resumed.recent == [True]
    with pytest.raises(ValueError, match="window must be at least confirmations"):
        ShortcutAlarm(confirmations=3, window=2)


def test_the_records_hold_each_probe_and_each_pair() -> None:
    alarm = ShortcutAlarm(kinds=["region"], transplants=4)
    images = tagged(12, [(1, 2)] * 12)
    targets = tag_model(images).argmax(1)
    maps = torch.zeros(12, 4, 4)
    maps[:, 1, 2] = 1.0  # the maps point at the tag: no search needed
    verdict = alarm.check(tag_model, softmax, images, [maps], targets, torch.ones(12).bool())
    assert verdict.suspects and not alarm.searched
    regions = [t for t in alarm.last_tests if isinstance(t, RegionTest)]
    pairs = [t for t in alarm.last_tests if isinstance(t, PairTest)]
    assert [t.box for t in regions] == [(1, 2, 2, 3)] * 12 and all(t.necessary for t in regions)
    assert len(pairs) == 12 * 4  # transplants=4 recipients per donor
    assert all(targets[p.recipient] != p.donor_target for p in pairs)
    assert sum(p.moved for p in pairs) == 48 and not any(p.class_control_moved for p in pairs)
    # the confirmed place is remembered, to be tried on every probe of the next check
    assert alarm.state_dict()["region"]["places"] == [[1, 2, 2, 3]]


# --------------------------------------------------------------------------- objects
def bars_model(images: torch.Tensor) -> torch.Tensor:
    """Objects of two bright tokens: a horizontal bar (class 1), a vertical bar (class 2);
    any other two bright tokens read as class 0 (a diagonal pair). A bright token alone
    means nothing."""
    o = torch.sigmoid(20 * (cells(images).mean(dim=1) - 0.5))  # [B, 4, 4] occupancy
    h = (o[:, :, :-1] * o[:, :, 1:]).flatten(1).amax(dim=1)
    v = (o[:, :-1, :] * o[:, 1:, :]).flatten(1).amax(dim=1)
    two = torch.sigmoid(10 * (o.flatten(1).sum(dim=1) - 1.5))
    return torch.stack([6.0 * two - 1.0, 10.0 * h, 10.0 * v], dim=1)


def bars(n: int, seed: int = 0) -> torch.Tensor:
    """Probe i an object of class i % 3 at a random place (a diagonal pair, a horizontal or a
    vertical bar of two bright tokens) on dim noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIDE, SIDE, generator=g) * 0.1
    white = torch.ones(3)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, 3, (2,), generator=g))
        second = [(r + 1, c + 1), (r, c + 1), (r + 1, c)][i % 3]
        paint(images, i, r, c, white)
        paint(images, i, *second, white)
    return images


def test_parts_of_objects_that_carry_nothing_alone_are_not_flagged() -> None:
    images = bars(12)
    assert torch.equal(bars_model(images).argmax(1), torch.arange(12) % 3)
    verdict = check(bars_model, images)
    assert verdict.suspects == []
    # a part of each object is necessary (occluded, the object is gone) ...
    assert verdict.scalars["shortcut_drop"] >= 0.5


def test_a_model_that_any_second_part_moves_is_not_flagged_because_of_the_class_control() -> None:
    """Pasted into a bar whose own decisive token was occluded, the diagonal pair's token
    makes two bright tokens again: class 0. A reflected box of noise does not, so against that
    control alone the transplants look like a shortcut; but another class's decisive token
    pasted the same way moves the recipient to class 0 as well: any part does it, not the
    donor's content."""
    alarm = ShortcutAlarm(kinds=["region"], transplants=4)
    images = bars(12)
    targets = bars_model(images).argmax(1)
    maps = torch.rand(12, 4, 4, generator=torch.Generator().manual_seed(1))
    verdict = alarm.check(bars_model, softmax, images, [maps], targets, torch.ones(12).bool())
    assert verdict.suspects == [] and verdict.scalars["shortcut_transplant"] < 0.5
    diagonal = [p for p in alarm.last_tests if isinstance(p, PairTest) and p.donor_target == 0]
    assert diagonal, "the diagonal pairs' tokens are necessary, so they are donors"
    moved = torch.tensor([p.moved for p in diagonal])
    noise = torch.tensor([p.control_moved for p in diagonal])
    part = torch.tensor([bool(p.class_control_moved) for p in diagonal])
    # against a paste of noise alone the transplants would pass the margin ...
    assert margin(moved, noise) >= 0.5 and not bool(noise.any())
    # ... but another class's decisive token pasted the same way moves as many recipients
    assert margin(moved, part) < 0.5 and int(part.sum()) >= int(moved.sum()) - 1


def test_a_model_that_reads_the_whole_image_is_not_flagged() -> None:
    def whole(images: torch.Tensor) -> torch.Tensor:
        return 10.0 * images.mean(dim=(2, 3))

    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, SIDE, SIDE, generator=g) * 0.3
    images[torch.arange(12), torch.arange(12) % 3] += 0.5  # each class its colour, everywhere
    verdict = check(whole, images)
    assert verdict.suspects == [] and verdict.scalars["shortcut_drop"] < 0.5


# --------------------------------------------------------------------------- parts
def test_control_boxes_are_the_same_size_and_never_overlap_their_box() -> None:
    g = torch.Generator().manual_seed(0)
    r0 = torch.randint(0, 7, (200,), generator=g)
    c0 = torch.randint(0, 9, (200,), generator=g)
    size = torch.randint(1, 3, (200, 2), generator=g)
    boxes = torch.stack([r0, r0 + size[:, 0], c0, c0 + size[:, 1]], dim=1)
    boxes[:, 1].clamp_(max=8)
    boxes[:, 3].clamp_(max=10)
    controls = control_boxes(boxes, (8, 10))
    assert torch.equal(controls[:, 1] - controls[:, 0], boxes[:, 1] - boxes[:, 0])
    assert torch.equal(controls[:, 3] - controls[:, 2], boxes[:, 3] - boxes[:, 2])
    assert bool((controls[:, [0, 2]] >= 0).all() and (controls[:, 1] <= 8).all())
    assert bool((controls[:, 3] <= 10).all())
    overlap = (controls[:, 0] < boxes[:, 1]) & (boxes[:, 0] < controls[:, 1])
    overlap &= (controls[:, 2] < boxes[:, 3]) & (boxes[:, 2] < controls[:, 3])
    assert not bool(overlap.any())
