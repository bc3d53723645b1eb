"""The alarm with many classes: known-answer models over a run of checks on the alarm's own,
stratified and rotating probes (issue: stable verdicts and the alarm with many classes).

Ten classes of oriented gratings (the object: its orientation names the class) on which a
model reads either the gratings (clean) or a cue: a ten-way colour code, a class-coded tag in
a fixed corner, or one class's tag. Each model must be flagged at every check of the run,
the clean one at none.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_vitrcam.alarm_probes import AlarmProbes
from lightning_vitrcam.shortcut import ShortcutAlarm

K, SIZE, GRID = 10, 48, (8, 8)
HUES = torch.tensor([[math.cos(2 * math.pi * (k / K + c / 3)) for c in range(3)] for k in range(K)])
_yy, _xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
_ANGLES = torch.arange(K) * math.pi / K
_WAVES = 2 * math.pi * (_xx[None] * _ANGLES.cos()[:, None, None]
                        + _yy[None] * _ANGLES.sin()[:, None, None]) / 8.0  # fmt: skip
FILTERS = torch.stack([_WAVES.cos(), _WAVES.sin()], 1) / SIZE  # [K, 2, H, W]


def gratings(n: int, cue: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` grey gratings (class = orientation, random phase and contrast) with the ``cue``:
    ``"colour"`` a cast of the class's hue, ``"tag"`` a 6x6 patch of the class's hue in the
    top-left corner, ``"one"`` a white tag on class 0 only, ``"none"``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % K
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    contrast = 0.5 + 0.5 * torch.rand(n, 1, 1, generator=g)
    wave = contrast * (_WAVES[labels] + phase).cos()
    images = wave[:, None].expand(n, 3, SIZE, SIZE).clone()
    images += 0.2 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    if cue == "colour":
        images += 0.5 * HUES[labels][:, :, None, None]
    elif cue == "tag":
        images[:, :, :6, :6] = 2 * HUES[labels][:, :, None, None]
    elif cue == "one":
        images[labels == 0, :, :6, :6] = 2.0
    return images, labels


def model_for(cue: str):
    """The known answer: the gratings' orientation energy, or the cue, names the class."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1)  # [B, H, W]
        response = torch.einsum("bhw,kchw->bkc", grey, FILTERS)  # about 12 for the class
        return 0.2 * response.pow(2).sum(-1)

    def read(x: torch.Tensor) -> torch.Tensor:
        if cue == "colour":
            return 8 * x.mean(dim=(2, 3)) @ HUES.T
        if cue == "tag":
            return 8 * x[:, :, :6, :6].mean(dim=(2, 3)) @ HUES.T
        logits = energy(x)
        if cue == "one":  # a white tag says class 0, whatever the gratings say
            white = (x[:, :, :6, :6].mean(dim=(1, 2, 3)) > 1.5).float()
            logits = logits + torch.zeros_like(logits).index_fill(1, torch.tensor([0]), 1) * (
                1000 * white[:, None]
            )
        return logits

    return read


def run(cue: str, checks: int = 4, drawn: list | None = None) -> list[set[str]]:
    """The kinds the alarm warned with at each check of a run (a fresh draw of the alarm's
    stratified probes each time; maps that point nowhere, so the search must find places);
    ``drawn`` collects each check's classes."""
    images, labels = gratings(400, cue, seed=1)
    probes = AlarmProbes(DataLoader(TensorDataset(images, labels), batch_size=64), seed=1)
    alarm = ShortcutAlarm(kinds=["region", "mark", "colour"])
    model = model_for(cue)
    out = []
    for _ in range(checks):
        batch = probes.draw(alarm.focus)
        assert len(batch) == 32 and len(set(batch.labels.tolist())) == 8  # 8 classes x 4
        if drawn is not None:
            drawn.append(set(batch.labels.tolist()))
        logits = model(batch.images)
        targets = logits.argmax(1)
        n = len(targets)
        verdict = alarm.check(
            model, lambda z: z.softmax(-1), batch.images, [torch.zeros(n, *GRID)], targets,
            torch.zeros(n, dtype=torch.bool), logits=logits,
            right=(targets == batch.labels, 1 / 8),
        )  # fmt: skip
        out.append({f.kind for f in verdict.suspects})
    return out


def test_the_known_answers_are_what_the_models_read() -> None:
    for cue in ("none", "colour", "tag", "one"):
        images, labels = gratings(200, cue, seed=2)
        right = model_for(cue)(images).argmax(1) == labels
        assert float(right.float().mean()) > 0.95, cue


def test_a_ten_class_colour_code_is_flagged_at_every_check() -> None:
    assert all("colour" in kinds for kinds in run("colour"))


def test_a_class_coded_tag_in_a_fixed_corner_is_flagged_at_every_check() -> None:
    assert all(kinds & {"region", "mark"} for kinds in run("tag"))


def test_one_class_s_tag_is_flagged_whenever_its_class_is_drawn_and_then_kept() -> None:
    """Eight of the ten classes are drawn per check: a tag on class 0 is tested when class 0
    is drawn; once found, class 0 is in every later check (the alarm's focus)."""
    drawn: list[set[int]] = []
    found = run("one", checks=5, drawn=drawn)
    first = next(i for i, kinds in enumerate(found) if kinds)
    assert all(0 not in classes for classes in drawn[:first])
    assert all(0 in classes and kinds & {"region", "mark"}
               for classes, kinds in zip(drawn[first:], found[first:], strict=True))  # fmt: skip


def test_a_model_that_reads_the_objects_is_never_flagged() -> None:
    assert all(not kinds for kinds in run("none"))


def test_every_class_is_tested_within_the_rotation() -> None:
    images, labels = gratings(400, "none", seed=1)
    probes = AlarmProbes(DataLoader(TensorDataset(images, labels), batch_size=64), seed=1)
    assert probes.classes_per_check == 8 and probes.cover == 2
    seen: set[int] = set()
    for _ in range(probes.cover):
        seen |= set(probes.draw().labels.tolist())
    assert seen == set(range(K))
