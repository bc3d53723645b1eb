"""The occlusion-confirmed shortcut alarm on models whose answer is known."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lightning_vitrcam import ViTReciproCAMCallback
from lightning_vitrcam.shortcut import (
    ShortcutAlarm,
    Suspect,
    Verdict,
    keep_boxes,
    occlude_boxes,
    shortcut_message,
)
from lightning_vitrcam.shortcut.interventions import CopyCache
from lightning_vitrcam.shortcut.places import is_token
from lightning_vitrcam.shortcut.proposals import map_places, probe_groups, search_path

Model = Callable[[torch.Tensor], torch.Tensor]

GRID = (4, 4)  # 32x32 images, 8x8 cells


def Place(**settings: Any) -> ShortcutAlarm:  # noqa: N802 - reads like the class it makes
    """The alarm with the fixed-place kind of evidence only (its border and sufficiency
    conditions are what these tests pin down)."""
    return ShortcutAlarm(kinds=["place"], **settings)


def unpack(verdict: Verdict) -> tuple[list[Suspect], float]:
    """``(suspects, shortcut_place_drop)`` of a fixed-place check."""
    return verdict.suspects, verdict.scalars["shortcut_place_drop"]


def occlude(
    images: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """:func:`occlude_boxes` of single tokens (row-major indices ``tokens`` on the grid)."""
    r, c = tokens // grid[1], tokens % grid[1]
    return occlude_boxes(images, rows, torch.stack([r, r + 1, c, c + 1], dim=1), grid)


def search_boxes(
    model: Model, images: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Each probe's occlusion-search path, ``[N, levels, 4]``."""
    p0 = softmax(model(images)).gather(1, targets[:, None]).squeeze(1)
    return search_path(p0, CopyCache(model, softmax, images, targets, grid))


def search_tokens(
    model: Model, images: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """``[N]``: each probe's most sensitive token (row-major), the end of its search path."""
    last = search_boxes(model, images, targets, grid)[:, -1]
    return last[:, 0] * grid[1] + last[:, 2]


def corner_model(images: torch.Tensor) -> torch.Tensor:
    """4 classes read from the mean colour of the top-left 8x8 cell only (a planted shortcut)."""
    cue = images[:, :, :8, :8].mean(dim=(2, 3))  # [B, 3]
    return 10.0 * torch.cat([cue, -cue.sum(1, keepdim=True)], dim=1)


def per_class_corner_model(images: torch.Tensor) -> torch.Tensor:
    """Class k's evidence is the brightness of corner k (0: top-left, 1: top-right, ...)."""
    cells = [
        images[:, :, :8, :8],
        images[:, :, :8, -8:],
        images[:, :, -8:, :8],
        images[:, :, -8:, -8:],
    ]
    return 10.0 * torch.stack([c.mean(dim=(1, 2, 3)) for c in cells], dim=1)


def global_model(images: torch.Tensor) -> torch.Tensor:
    """Reads the whole image (a model that looks at the object, not at one place)."""
    m = images.mean(dim=(2, 3))
    return 10.0 * torch.cat([m, -m.sum(1, keepdim=True)], dim=1)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)


def peaked_maps(n: int, token: int | list[int]) -> torch.Tensor:
    tokens = [token] * n if isinstance(token, int) else token
    maps = torch.rand(n, *GRID, generator=torch.Generator().manual_seed(0)) * 0.2
    for i, t in enumerate(tokens):
        maps[i].view(-1)[t] = 1.0
    return maps


def corner_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The class colour fills the whole image (what a model that looks at the object reads)
    and, stronger, the top-left cell (the corner cue)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g) * 0.1
    labels = torch.arange(n) % 3
    colour = torch.eye(3)[labels][:, :, None, None]
    images += 0.5 * colour
    images[:, :, :8, :8] += 2.0 * colour
    return images, labels


def test_occlude_fills_exactly_the_token_cell_with_the_mean_colour() -> None:
    images = torch.arange(2 * 3 * 6 * 9, dtype=torch.float32).view(2, 3, 6, 9)
    out = occlude(images, torch.tensor([1, 0]), torch.tensor([5, 0]), (2, 3))
    mean = images.mean(dim=(0, 2, 3))
    # token 5 = row 1, column 2 of a 2x3 grid: pixel rows 3..5, columns 6..8 of image 1
    assert torch.equal(out[0, :, 3:, 6:], mean.view(3, 1, 1).expand(3, 3, 3))
    untouched = torch.ones(6, 9, dtype=torch.bool)
    untouched[3:, 6:] = False
    assert torch.equal(out[0][:, untouched], images[1][:, untouched])
    assert torch.equal(out[1, :, :3, :3], mean.view(3, 1, 1).expand(3, 3, 3))


def test_corner_shortcut_is_confirmed_with_its_evidence() -> None:
    images, _ = corner_images(12)
    targets = corner_model(images).argmax(1)
    alarm = Place()
    maps = peaked_maps(12, 0)
    suspects, drop = unpack(
        alarm.check(
            corner_model, softmax, images, [maps], targets, torch.ones(12, dtype=torch.bool)
        )
    )
    assert suspects and suspects[0] == Suspect(
        box=(0, 1, 0, 1), grid=GRID, group=None, probes=12, hits=12, mean_drop=suspects[0].mean_drop
    )
    assert 0.5 < suspects[0].mean_drop <= drop  # drop: the strongest group mean of any candidate
    text = suspects[0].describe()
    assert "occluding token row 0, column 0 (on the top-left corner)" in text
    assert "on 12 of 12 probes" in text


def test_model_that_reads_the_whole_image_is_not_flagged() -> None:
    images, _ = corner_images(12)
    targets = global_model(images).argmax(1)
    suspects, drop = unpack(
        Place().check(
            global_model, softmax, images, [peaked_maps(12, 0)], targets, torch.ones(12).bool()
        )
    )
    assert suspects == [] and drop < 0.2


def test_class_specific_corners_are_found_per_class() -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(16, 3, 32, 32, generator=g) * 0.1
    labels = torch.arange(16) % 4
    corners = [(slice(0, 8), slice(0, 8)), (slice(0, 8), slice(24, 32))]
    corners += [(slice(24, 32), slice(0, 8)), (slice(24, 32), slice(24, 32))]
    for i, c in enumerate(labels.tolist()):
        rows, cols = corners[c]
        images[i, :, rows, cols] += 1.0
    targets = per_class_corner_model(images).argmax(1)
    assert torch.equal(targets, labels)
    corner_token = [0, 3, 12, 15]
    maps = peaked_maps(16, [corner_token[c] for c in labels.tolist()])
    suspects, _ = unpack(
        Place().check(
            per_class_corner_model, softmax, images, [maps], targets, torch.ones(16).bool()
        )
    )
    found = {(s.group, s.row * 4 + s.col) for s in suspects}
    # every class's own corner, each on the probes of that class; no global suspect (a corner
    # matters to a quarter of the probes only)
    assert found == {(c, corner_token[c]) for c in range(4)}
    assert all(s.probes == 4 and s.hits == 4 for s in suspects)


def test_remembered_candidate_is_retested_when_the_maps_peak_elsewhere() -> None:
    images, _ = corner_images(12)
    targets = corner_model(images).argmax(1)
    alarm = Place(search=False)
    everyone = torch.ones(12, dtype=torch.bool)
    alarm.check(corner_model, softmax, images, [peaked_maps(12, 0)], targets, everyone)
    state = alarm.state_dict()
    fresh = Place(search=False)
    fresh.load_state_dict(state)  # as after a resume
    suspects, _ = unpack(
        fresh.check(corner_model, softmax, images, [peaked_maps(12, 10)], targets, everyone)
    )
    assert (0, 0) in {(s.row, s.col) for s in suspects}
    assert (
        Place(search=False)
        .check(corner_model, softmax, images, [peaked_maps(12, 10)], targets, everyone)
        .suspects
        == []
    )


def test_flat_maps_propose_nothing_and_small_classes_are_not_tested_alone() -> None:
    targets = torch.tensor([0, 0, 1, 1, 1])
    groups = probe_groups(targets, min_group=3)
    maps = peaked_maps(5, 7)
    assert map_places([maps], groups, torch.zeros(5, dtype=torch.bool), max_box=1) == []
    cands = map_places([maps], groups, torch.ones(5, dtype=torch.bool), max_box=1)
    token_7 = (1, 2, 3, 4)  # row 1, column 3 of the 4x4 grid
    assert cands == [(token_7, None), (token_7, 1)]  # class 0 has 2 probes: tested with all


def test_message_names_the_place_and_class() -> None:
    s = Suspect(box=(0, 1, 3, 4), grid=(4, 4), group=2, probes=5, hits=4, mean_drop=0.73)
    text = shortcut_message({}, torch.zeros(4, 4), 3, 120, suspects=[s], class_names=list("abcd"))
    assert text is not None and "epoch 3 (step 120)" in text
    assert "the prediction of 'c' hangs on token row 0, column 3 (on the top-right corner)" in text
    # the numbers are the finding's own sentence (the report, the logged finding)
    assert "by 0.73 on average and by at least half on 4 of 5 probes predicted as 'c'" in (
        s.describe(list("abcd"))
    )
    assert shortcut_message({"hotspot_ratio": 9.0}, torch.zeros(4, 4), 0, 1) is None


def test_message_is_one_line_about_the_first_finding() -> None:
    corner = dict(box=(0, 1, 0, 1), grid=(4, 4))
    same = [
        Suspect(**corner, group=3, probes=4, hits=4, mean_drop=0.94),
        Suspect(**corner, group=1, probes=3, hits=3, mean_drop=0.85),
    ]
    other = Suspect(box=(3, 4, 3, 4), grid=(4, 4), group=None, probes=8, hits=6, mean_drop=0.6)
    text = shortcut_message({}, torch.zeros(4, 4), 1, 9, suspects=[*same, other],
                            class_names=list("abcd"))  # fmt: skip
    assert text is not None and "\n" not in text and len(text) < 400
    assert text.count("token row 0, column 0") == 1 and "token row 3" not in text
    assert "(place evidence; 2 more findings)" in text and "What to do:" in text
    held = shortcut_message({}, torch.zeros(4, 4), 2, 18, suspects=same[:1], held=True)
    assert held is not None and "held from an earlier check, not confirmed at this one" in held


def test_occlusion_search_finds_the_place_when_every_map_is_flat() -> None:
    images, _ = corner_images(12)
    targets = corner_model(images).argmax(1)
    alarm = Place()
    found = search_tokens(corner_model, images, targets, GRID)
    assert found.tolist() == [0] * 12  # every probe's most sensitive token: the corner
    flat = torch.zeros(12, dtype=torch.bool)  # no map proposes anything
    suspects, _ = unpack(
        alarm.check(corner_model, softmax, images, [peaked_maps(12, 10)], targets, flat)
    )
    assert [(s.row, s.col, s.group, s.hits) for s in suspects] == [(0, 0, None, 12)]
    # without the search, flat maps propose nothing, so nothing is confirmed
    blind = ViTReciproCAMCallback(shortcut_alarm=Place(search=False)).alarm
    assert (
        blind.check(corner_model, softmax, images, [peaked_maps(12, 10)], targets, flat).suspects
        == []
    )
    # a model that reads the whole image has no such place
    targets = global_model(images).argmax(1)
    assert (
        alarm.check(global_model, softmax, images, [peaked_maps(12, 10)], targets, flat).suspects
        == []
    )


def cell_model(images: torch.Tensor) -> torch.Tensor:
    """Reads the 3x3 pixel cell of token (4, 6) on a 5x7 grid of 15x21 images."""
    cue = images[:, :, 12:15, 18:21].mean(dim=(1, 2, 3))
    return 10.0 * torch.stack([cue, -images.mean(dim=(1, 2, 3))], dim=1)


def test_search_on_a_non_square_odd_grid_reaches_single_tokens() -> None:
    images = torch.randn(3, 3, 15, 21, generator=torch.Generator().manual_seed(0)) * 0.1
    images[:, :, 12:15, 18:21] = 3.0
    targets = torch.zeros(3, dtype=torch.long)
    found = search_tokens(cell_model, images, targets, (5, 7))
    assert found.tolist() == [4 * 7 + 6] * 3


def test_share_and_count_of_hit_probes_decide() -> None:
    """Half the probes read the corner, half the whole image: the place is confirmed when
    half of a group suffices and enough probes are hit, not otherwise."""
    images, _ = corner_images(8)
    images[:4, 0, -1, -1] = 10.0  # the flag of the probes that read the corner

    def mixed(x: torch.Tensor) -> torch.Tensor:
        flag = x[:, 0, -1, -1] > 5.0
        return torch.where(flag[:, None], corner_model(x), global_model(x))

    targets = mixed(images).argmax(1)
    everyone = torch.ones(8, dtype=torch.bool)

    def found(alarm: ShortcutAlarm) -> list[Suspect]:
        return alarm.check(mixed, softmax, images, [peaked_maps(8, 0)], targets, everyone).suspects

    hits = Place(search=False, min_share=0.5, min_hits=3)
    assert [(s.row, s.col, s.group, s.hits, s.probes) for s in found(hits)] == [(0, 0, None, 4, 8)]
    assert found(Place(search=False, min_share=0.5, min_hits=5)) == []
    assert found(Place(search=False, min_share=0.7)) == []
    first = hits.last_tests[0]  # the all-probes group at the maps' peak, each probe's drop
    assert (first.box, first.group) == ((0, 1, 0, 1), None)
    drops = torch.tensor(first.drops)
    assert (drops[:4] >= 0.5).all() and (drops[4:] < 0.5).all()


def test_message_states_the_drop_that_counted() -> None:
    """The warning quotes the alarm's own min_drop, not a fixed "half"."""
    images, _ = corner_images(12)
    targets = corner_model(images).argmax(1)
    suspects, _ = unpack(
        Place(min_drop=0.3).check(
            corner_model, softmax, images, [peaked_maps(12, 0)], targets, torch.ones(12).bool()
        )
    )
    assert suspects and suspects[0].min_drop == 0.3
    assert "by at least 30% on 12 of 12 probes" in suspects[0].describe()
    assert (
        "by at least half on"
        in Suspect(
            box=(0, 1, 0, 1), grid=GRID, group=None, probes=4, hits=4, mean_drop=0.9
        ).describe()
    )


def block_cue_model(images: torch.Tensor, top: int = 0, left: int = 0) -> torch.Tensor:
    """Reads a cue over the 2x2 tokens of 8x8 pixels from ``(top, left)`` redundantly: the
    brightest of their four cell means per colour, so occluding any one of them leaves the
    answer unchanged."""
    block = images[:, :, top : top + 16, left : left + 16]
    cells = block.unfold(2, 8, 8).unfold(3, 8, 8).mean(dim=(-1, -2))
    cue = cells.flatten(2).amax(dim=2)  # [B, 3]
    return 10.0 * torch.cat([cue, -cue.sum(1, keepdim=True)], dim=1)


def block_cue_images(n: int, size: int = 32, top: int = 0, left: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    images = torch.randn(n, 3, size, size, generator=g) * 0.1
    colour = torch.eye(3)[torch.arange(n) % 3][:, :, None, None]
    images[:, :, top : top + 16, left : left + 16] += 2.0 * colour
    return images


def test_cue_over_several_tokens_is_confirmed_as_a_box() -> None:
    images = block_cue_images(12)
    targets = block_cue_model(images).argmax(1)
    everyone = torch.ones(12, dtype=torch.bool)
    maps = peaked_maps(12, 0)
    # no single token matters: the tokens-only alarm finds nothing
    tokens_only = Place(max_box=1)
    assert (
        tokens_only.check(block_cue_model, softmax, images, [maps], targets, everyone).suspects
        == []
    )
    alarm = Place()
    suspects, _ = unpack(alarm.check(block_cue_model, softmax, images, [maps], targets, everyone))
    assert [(s.box, s.group, s.hits, s.probes, s.kept) for s in suspects][0] == (
        (0, 2, 0, 2),
        None,
        12,
        12,
        12,
    )
    text = suspects[0].describe()
    assert "occluding the tokens at rows 0-1, columns 0-1 (on the top-left corner)" in text
    assert "and 12 of them kept at least half of it with the box alone" in text
    test = next(t for t in alarm.last_tests if t.box == (0, 2, 0, 2) and t.group is None)
    assert min(test.kept) > 0.9  # the cue alone keeps the prediction


def part_model(
    images: torch.Tensor, top: int, left: int, side: int, needs_rest: bool = True
) -> torch.Tensor:
    """Reads the colour of the ``side`` x ``side`` pixels at ``(top, left)`` of 32x32 images
    against a fourth class 'nothing' at a quarter of a full contrast; with ``needs_rest`` it
    needs the rest of the object too (the weaker of the two colour contrasts decides), so
    occluding the part collapses it and the part alone keeps nothing."""

    def contrast(colour: torch.Tensor) -> torch.Tensor:
        return colour - (colour.sum(1, keepdim=True) - colour) / 2

    area = side * side
    part = images[:, :, top : top + side, left : left + side].mean(dim=(2, 3))
    rest = (images.sum(dim=(2, 3)) - part * area) / (1024 - area)
    evidence = torch.minimum(contrast(part), contrast(rest)) if needs_rest else contrast(part)
    return 20.0 * torch.cat([evidence, torch.full_like(evidence[:, :1], 0.25)], dim=1)


def whole_object_model(images: torch.Tensor) -> torch.Tensor:
    """Needs its top-left 2x2 tokens *and* the rest of the object."""
    return part_model(images, 0, 0, 16)


def test_object_box_whose_occlusion_hurts_but_carries_nothing_is_not_flagged() -> None:
    g = torch.Generator().manual_seed(3)
    images = torch.randn(12, 3, 32, 32, generator=g) * 0.05
    images += torch.eye(3)[torch.arange(12) % 3][:, :, None, None]  # the object fills it all
    targets = whole_object_model(images).argmax(1)
    maps = peaked_maps(12, [5] * 12)
    maps[:, :2, :2] = 1.0  # the maps single out the top-left box
    alarm = Place(search=False)
    suspects, _ = unpack(
        alarm.check(whole_object_model, softmax, images, [maps], targets, torch.ones(12).bool())
    )
    centre = next(t for t in alarm.last_tests if t.box == (0, 2, 0, 2) and t.group is None)
    assert alarm.rule.confirms(torch.tensor(centre.drops))[1]  # necessary ...
    assert max(centre.kept) < 0.5  # ... but not sufficient
    assert suspects == []


def test_search_finds_a_box_cue_straddling_the_midline_when_maps_are_flat() -> None:
    """A 2x2-token cue at the top border, columns 3-4 of an 8x8 grid, straddles the vertical
    midline: no quarter of the grid holds it, the overlapping windows do."""
    images = block_cue_images(12, size=64, top=0, left=24)

    def model(x: torch.Tensor) -> torch.Tensor:
        return block_cue_model(x, top=0, left=24)

    targets = model(images).argmax(1)
    flat = torch.zeros(12, dtype=torch.bool)  # the maps propose nothing
    maps = torch.rand(12, 8, 8, generator=torch.Generator().manual_seed(0))
    alarm = Place()
    path = search_boxes(model, images, targets, (8, 8))
    assert path.shape == (12, 4, 4)  # 8 -> 5 -> 3 -> 2 -> 1 tokens a side
    assert (path[:, 2] == torch.tensor([0, 2, 3, 5])).all()  # the 2x2 level: the cue itself
    suspects, _ = unpack(alarm.check(model, softmax, images, [maps], targets, flat))
    assert [(s.box, s.group, s.hits, s.kept) for s in suspects] == [((0, 2, 3, 5), None, 12, 12)]
    assert "(on the top border)" in suspects[0].describe()


def test_box_cue_inside_the_image_is_not_tested() -> None:
    """The documented blind spot: inside the image a box may be the object itself, so a 2x2
    cue there (tokens 3-4 of 8x8, read redundantly) is neither proposed nor confirmed."""
    images = block_cue_images(12, size=64, top=24, left=24)

    def model(x: torch.Tensor) -> torch.Tensor:
        return block_cue_model(x, top=24, left=24)

    targets = model(images).argmax(1)
    maps = torch.zeros(12, 8, 8)
    maps[:, 3:5, 3:5] = 1.0
    alarm = Place()
    suspects, _ = unpack(
        alarm.check(model, softmax, images, [maps], targets, torch.ones(12).bool())
    )
    assert suspects == []
    assert all(is_token(t.box) for t in alarm.last_tests)


def class_box_corners() -> tuple[Model, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(model, images, targets, maps)``: class k's cue is a bright 2x2-token block in corner
    k of 64x64 images (an 8x8 grid), read redundantly; the maps peak on each probe's own
    corner token."""
    g = torch.Generator().manual_seed(4)
    images = torch.randn(16, 3, 64, 64, generator=g) * 0.1
    labels = torch.arange(16) % 4
    corners = [(0, 0), (0, 48), (48, 0), (48, 48)]  # pixel origins of the 16x16 blocks
    for i, c in enumerate(labels.tolist()):
        top, left = corners[c]
        images[i, :, top : top + 16, left : left + 16] += 1.0

    def model(x: torch.Tensor) -> torch.Tensor:
        evidence = []
        for top, left in corners:
            block = x[:, :, top : top + 16, left : left + 16].mean(dim=1)
            evidence.append(block.unfold(1, 8, 8).unfold(2, 8, 8).mean(dim=(-1, -2)).amax((1, 2)))
        return 10.0 * torch.stack(evidence, dim=1)

    targets = model(images).argmax(1)
    assert torch.equal(targets, labels)
    corner_token = [0, 7, 56, 63]  # the outermost token of each corner block on the 8x8 grid
    maps = torch.rand(16, 8, 8, generator=g) * 0.2
    for i, c in enumerate(labels.tolist()):
        maps[i].view(-1)[corner_token[c]] = 1.0
    return model, images, targets, maps


def test_class_specific_box_cues_are_confirmed_per_class() -> None:
    """Each class's own corner box is confirmed on its probes (kept alone it keeps the
    prediction; pasted into a probe of another class it would compete with that probe's own
    corner)."""
    model, images, targets, maps = class_box_corners()
    everyone = torch.ones(16, dtype=torch.bool)
    assert Place(max_box=1).check(model, softmax, images, [maps], targets, everyone).suspects == []
    suspects, _ = unpack(Place().check(model, softmax, images, [maps], targets, everyone))
    boxes = [(0, 2, 0, 2), (0, 2, 6, 8), (6, 8, 0, 2), (6, 8, 6, 8)]
    assert {(s.group, s.box) for s in suspects} == {(c, boxes[c]) for c in range(4)}
    assert all(s.hits == s.kept == s.probes == 4 for s in suspects)


def test_each_copy_runs_once_and_scores_as_if_run_alone() -> None:
    """The search's copies and the probes the groups share are scored once; every recorded
    drop and kept share equals the one computed from its own copies."""
    model, images, targets, maps = class_box_corners()
    run: list[torch.Tensor] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        run.append(x.flatten(1))
        return model(x)

    alarm = Place(search_always=True)  # the maps' places confirm: search anyway
    alarm.check(counting, softmax, images, [maps], targets, torch.ones(16, dtype=torch.bool))
    assert alarm.searched
    copies = torch.cat(run)
    assert len(copies.unique(dim=0)) == len(copies)  # no image ran twice

    def p(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return softmax(model(x)).gather(1, targets[rows, None])[:, 0]

    p0, asked = p(images, torch.arange(16)), 16 + 16 * 16  # the unoccluded probes, the search
    for test in alarm.last_tests:
        group = test.group
        rows = torch.arange(16) if group is None else (targets == group).nonzero().flatten()
        boxes = torch.tensor(test.box).repeat(len(rows), 1)
        drop = (p0[rows] - p(occlude_boxes(images, rows, boxes, (8, 8)), rows)) / p0[rows]
        torch.testing.assert_close(torch.tensor(test.drops), drop.clamp(-1, 1), atol=1e-6, rtol=0)
        asked += len(rows)
        if test.kept is not None:
            kept = p(keep_boxes(images, rows, boxes, (8, 8)), rows) / p0[rows]
            torch.testing.assert_close(torch.tensor(test.kept), kept.clamp(0, 1), atol=1e-6, rtol=0)
            asked += len(rows)
    assert any(test.kept is not None for test in alarm.last_tests)
    assert len(copies) < asked  # some copies were looked up, not run again


def test_the_search_is_skipped_when_a_proposed_place_is_already_confirmed() -> None:
    """The search only proposes places: where a map's place is confirmed it does not run (and
    the same places are confirmed as with it); where none is, it runs and the result is the
    always-searching alarm's."""
    model, images, targets, maps = class_box_corners()
    everyone = torch.ones(16, dtype=torch.bool)
    ran: list[int] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        ran.append(len(x))
        return model(x)

    lazy, always = Place(), Place(search_always=True)
    found = lazy.check(counting, softmax, images, [maps], targets, everyone).suspects
    full = always.check(model, softmax, images, [maps], targets, everyone).suspects
    assert found and not lazy.searched and always.searched
    assert sum(ran) < 16 * 16  # fewer copies in all than the search's alone
    assert [(s.group, s.box, s.hits, s.kept) for s in found] == [
        (s.group, s.box, s.hits, s.kept) for s in full
    ]
    # the memory holds what was tested: the maps' places, not the search's
    assert set(map(tuple, lazy.state_dict()["place"]["candidates"])) < set(
        map(tuple, always.state_dict()["place"]["candidates"])
    )

    # the maps peak on a token that confirms nothing: the search runs, as it always would
    images, _ = corner_images(12)
    targets = corner_model(images).argmax(1)
    maps = [peaked_maps(12, 10)]
    lazy, always = Place(), Place(search_always=True)
    a = lazy.check(corner_model, softmax, images, maps, targets, torch.ones(12, dtype=torch.bool))
    b = always.check(corner_model, softmax, images, maps, targets, torch.ones(12, dtype=torch.bool))
    assert (
        lazy.searched and a == b and [(s.row, s.col, s.group) for s in a.suspects] == [(0, 0, None)]
    )
    assert lazy.last_tests == always.last_tests and lazy.state_dict() == always.state_dict()


def test_given_logits_replace_the_probes_forward() -> None:
    """Logits passed in (the explanation's) are the unoccluded probes' scores: the probes are
    not run, and every recorded drop and kept share is the one computed without them."""
    model, images, targets, maps = class_box_corners()
    everyone = torch.ones(16, dtype=torch.bool)
    runs: dict[str, list[torch.Tensor]] = {"own": [], "given": []}

    def counting(key: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            runs[key].append(x.flatten(1))
            return model(x)

        return forward

    own, given = Place(), Place()
    found = own.check(counting("own"), softmax, images, [maps], targets, everyone)
    logits = model(images)
    assert (
        given.check(counting("given"), softmax, images, [maps], targets, everyone, logits=logits)
        == found
    )
    assert found.suspects and own.last_tests == given.last_tests
    ran = {k: torch.cat(v) for k, v in runs.items()}
    assert len(ran["own"]) == len(ran["given"]) + 16
    assert not (ran["given"][:, None] == images.flatten(1)[None]).all(-1).any()


def centre_token_check(needs_rest: bool) -> tuple[ShortcutAlarm, list[Suspect]]:
    """The alarm on a model that reads the centre token (row 1, column 1 of the 4x4 grid) of
    objects that fill the image, with or without the rest of the object."""
    g = torch.Generator().manual_seed(5)
    images = torch.randn(12, 3, 32, 32, generator=g) * 0.05
    images += torch.eye(3)[torch.arange(12) % 3][:, :, None, None]

    def model(x: torch.Tensor) -> torch.Tensor:
        return part_model(x, 8, 8, 8, needs_rest=needs_rest)

    alarm = Place(search=False)
    suspects, _ = unpack(
        alarm.check(
            model,
            softmax,
            images,
            [peaked_maps(12, 5)],
            model(images).argmax(1),
            torch.ones(12).bool(),
        )
    )
    return alarm, suspects


def test_interior_token_that_is_necessary_but_not_sufficient_is_not_flagged() -> None:
    """A centred object's decisive part (the clean glyphs run whose 'cross' probes collapsed
    when their central token was occluded): inside the image a token must also keep the
    prediction alone, and this one keeps nothing."""
    alarm, suspects = centre_token_check(needs_rest=True)
    centre = next(t for t in alarm.last_tests if t.box == (1, 2, 1, 2) and t.group is None)
    assert alarm.rule.confirms(torch.tensor(centre.drops))[1]  # necessary ...
    assert max(centre.kept) < 0.5  # ... but not sufficient
    assert suspects == []


def test_interior_token_that_carries_the_class_alone_is_flagged() -> None:
    """A cue inside the image that is the whole answer (a sticker in the middle) is confirmed,
    and the warning says that the token alone keeps the prediction."""
    _, suspects = centre_token_check(needs_rest=False)
    assert [(s.box, s.group) for s in suspects][0] == ((1, 2, 1, 2), None)
    assert suspects[0].kept == 12
    assert "kept at least half of it with the token alone" in suspects[0].describe()
    assert "inside the image" in suspects[0].describe()
