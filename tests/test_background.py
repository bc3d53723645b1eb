"""The background kind of evidence on hand-built models whose answer is known: one that reads
the scenery around the object, one that reads the object, and probes without masks."""

from __future__ import annotations

import torch

from lightning_vitrcam.shortcut import PairTest, ShortcutAlarm
from lightning_vitrcam.shortcut.background import BackgroundFinding
from lightning_vitrcam.shortcut.interventions import move_object

MASKS = torch.zeros(12, 16, 16, dtype=torch.bool)
MASKS[:, 4:12, 4:12] = True  # the object: the central 8x8 square


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)


def scene(seed: int = 0) -> torch.Tensor:
    """Probe i: its class's colour (i % 3) in the background and, brighter, in the object."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(12, 3, 16, 16, generator=g) * 0.2
    images[torch.arange(12), torch.arange(12) % 3] += 0.4
    images[torch.arange(12), torch.arange(12) % 3, 4:12, 4:12] += 0.4
    return images


def scenery_model(images: torch.Tensor) -> torch.Tensor:
    """Reads the colour around the centre, where the objects are not."""
    return 20 * (images * ~MASKS[:1, None]).mean(dim=(2, 3))


def object_model(images: torch.Tensor) -> torch.Tensor:
    """Reads the colour of the central square: the object."""
    return 20 * images[:, :, 4:12, 4:12].mean(dim=(2, 3))


def check(model, images: torch.Tensor, masks: torch.Tensor | None, alarm: ShortcutAlarm):
    targets = model(images).argmax(dim=1)
    maps = torch.rand(12, 4, 4, generator=torch.Generator().manual_seed(1))
    return alarm.check(model, softmax, images, [maps], targets, torch.ones(12).bool(), masks=masks)


def test_a_model_that_reads_the_background_is_flagged() -> None:
    alarm = ShortcutAlarm(kinds=["background"])
    verdict = check(scenery_model, scene(), MASKS, alarm)
    (finding,) = verdict.suspects
    assert isinstance(finding, BackgroundFinding) and finding.group is None
    assert finding.flips == finding.pairs == 12 and finding.control_flips == 0
    assert "the prediction follows the background" in finding.describe()
    assert verdict.scalars["shortcut_background"] == 1.0
    pairs = [t for t in alarm.last_tests if isinstance(t, PairTest)]
    assert all(p.kind == "background" for p in pairs) and len(pairs) == 12


def test_a_model_that_reads_the_object_is_not_flagged() -> None:
    verdict = check(object_model, scene(), MASKS, ShortcutAlarm(kinds=["background"]))
    assert verdict.suspects == [] and verdict.scalars["shortcut_background"] <= 0.0


def test_without_masks_the_background_is_not_tested() -> None:
    alarm = ShortcutAlarm(kinds=["background"])
    verdict = check(scenery_model, scene(), None, alarm)
    assert verdict.suspects == [] and alarm.last_tests == []


def test_moving_an_object_keeps_it_and_fills_the_old_one() -> None:
    images = scene()
    moved = move_object(images, MASKS, torch.tensor([0]), torch.tensor([1]))[0]
    assert torch.equal(moved[:, 4:12, 4:12], images[0, :, 4:12, 4:12])  # the object of 0 ...
    outside = ~MASKS[0]
    assert torch.equal(moved[:, outside], images[1][:, outside])  # ... on the background of 1
