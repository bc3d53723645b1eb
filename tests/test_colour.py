"""The colour kind of evidence on hand-built models whose answer is known: one that reads the
image's colour cast, one that reads the layout whatever the colour, and one that any colour
change confuses (the case the same-size control is there for)."""

from __future__ import annotations

import torch

from lightning_vitrcam.shortcut import PairTest, ShortcutAlarm, Verdict
from lightning_vitrcam.shortcut.colour import ColourFinding
from lightning_vitrcam.shortcut.interventions import colour_shift, colour_swap
from lightning_vitrcam.shortcut.rule import margin


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)


def check(model, images: torch.Tensor, alarm: ShortcutAlarm | None = None) -> Verdict:
    n = len(images)
    alarm = alarm or ShortcutAlarm(kinds=["colour"])
    maps = torch.rand(n, 4, 4, generator=torch.Generator().manual_seed(1))
    targets = model(images).argmax(dim=1)
    return alarm.check(model, softmax, images, [maps], targets, torch.ones(n, dtype=torch.bool))


def cast_images(n: int = 12, seed: int = 0) -> torch.Tensor:
    """Probe i: a bright square at a place that names class i % 3 (its layout) on noise, the
    whole image cast in the colour of the same class."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    for i in range(n):
        k = i % 3
        images[i, :, 4:12, 4 + 8 * k : 12 + 8 * k] += 0.6
        images[i, k] += 0.3  # the cast
    return images


def tint_model(images: torch.Tensor) -> torch.Tensor:
    """The class is the dominant channel of the whole image (a scanner's tint)."""
    return 20.0 * images.mean(dim=(2, 3))


def layout_model(images: torch.Tensor) -> torch.Tensor:
    """The class is where the bright square is, read after each channel is standardised, so
    colour statistics change nothing."""
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.std(dim=(2, 3), keepdim=True)
    z = ((images - mean) / std).mean(dim=1)  # [B, 32, 32]
    return torch.stack([z[:, 4:12, 4 + 8 * k : 12 + 8 * k].mean(dim=(1, 2)) for k in range(3)], 1)


def brightness_model(images: torch.Tensor) -> torch.Tensor:
    """Two classes by the square's side (left or right), read the other way round when the
    image is dark: its prediction moves with the brightness, which names no class."""
    z = images.mean(dim=1)
    side = z[:, 4:12, 4:12].mean(dim=(1, 2)) - z[:, 4:12, 20:28].mean(dim=(1, 2))
    sign = torch.tanh(40.0 * (images.mean(dim=(1, 2, 3)) - 0.23))
    return 10.0 * torch.stack([side * sign, -side * sign], dim=1)


def two_sides(n: int = 16, seed: int = 0) -> torch.Tensor:
    """Probe i: a bright square on the left (i even) or the right, each image at its own
    brightness (a gain of 0.6-1.4, whatever its side)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g) * 0.4
    for i in range(n):
        left = 4 if i % 2 == 0 else 20
        images[i, :, 4:12, left : left + 8] += 0.5
    gains = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    return images * gains


def test_a_model_that_reads_the_colour_cast_is_flagged_with_what_to_do() -> None:
    verdict = check(tint_model, cast_images())
    (finding,) = verdict.suspects
    assert isinstance(finding, ColourFinding) and finding.group is None
    assert finding.pairs == 12 and finding.flips == 12 and finding.control_flips <= 4
    assert "the prediction follows the image's colour" in finding.describe()
    assert "ShortcutAlarm(kinds=['region', 'mark', 'background'])" in finding.remedy()
    assert verdict.scalars["shortcut_colour"] >= 0.5


def test_a_model_that_reads_the_layout_is_not_flagged() -> None:
    images = cast_images()
    assert torch.equal(layout_model(images).argmax(1), torch.arange(12) % 3)
    verdict = check(layout_model, images)
    assert verdict.suspects == [] and verdict.scalars["shortcut_colour"] == 0.0


def test_a_brightness_sensitive_model_is_not_flagged_because_of_the_own_class_control() -> None:
    """With two classes any change of prediction lands on the donor's class: the swaps move
    half the recipients there, and a random change of the same size, spread over the six
    statistics, hardly changes the brightness, so against it alone the swaps look like a
    colour shortcut. The colours of another probe of the recipient's own class are as natural
    a change as the swap and move as many recipients: brightness names no class."""
    alarm = ShortcutAlarm(kinds=["colour"])
    verdict = check(brightness_model, two_sides(), alarm)
    pairs = [t for t in alarm.last_tests if isinstance(t, PairTest)]
    moved = torch.tensor([p.moved for p in pairs])
    shift = torch.tensor([p.control_moved for p in pairs])
    own = torch.tensor([bool(p.class_control_moved) for p in pairs])
    assert int(moved.sum()) >= len(pairs) // 4  # the swaps do move recipients ...
    assert margin(moved, shift) >= 0.5  # ... far more than the random shift does ...
    assert margin(moved, own) < 0.5  # ... but not more than their own class's colours do
    assert verdict.suspects == [] and verdict.scalars["shortcut_colour"] < 0.5


def test_the_swap_takes_the_donors_statistics_and_the_control_moves_as_far() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 16, 16, generator=g) + 0.2 * torch.randn(6, 3, 1, 1, generator=g)
    recipients, donors = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    swapped = colour_swap(images, recipients, donors)
    torch.testing.assert_close(swapped.mean(dim=(2, 3)), images[donors].mean(dim=(2, 3)))
    torch.testing.assert_close(swapped.std(dim=(2, 3)), images[donors].std(dim=(2, 3)))
    shifted = colour_shift(images, recipients, donors)

    def stats(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    own = stats(images[recipients])
    distance = (stats(swapped) - own).norm(dim=1)
    # the same distance (the std is never near its floor of a tenth here), another direction
    torch.testing.assert_close((stats(shifted) - own).norm(dim=1), distance, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(stats(shifted), stats(swapped), atol=1e-2)

    # content untouched: the standardised image is the recipient's own
    def standard(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)

    torch.testing.assert_close(standard(shifted), standard(images[recipients]))


def test_a_model_whose_predictions_do_not_agree_with_the_labels_is_not_warned_about() -> None:
    # the tint model follows the cast, but where the labels say the cast names no class (an
    # untrained model follows whatever varies), the finding is held back, not warned about
    images = cast_images()
    n = len(images)
    predicted = tint_model(images).argmax(dim=1)
    maps = torch.rand(n, 4, 4, generator=torch.Generator().manual_seed(1))
    everyone = torch.ones(n, dtype=torch.bool)

    def run(labels: torch.Tensor) -> tuple[Verdict, ShortcutAlarm]:
        alarm = ShortcutAlarm(kinds=["colour"])
        chance = float(torch.bincount(labels).max()) / n
        verdict = alarm.check(tint_model, softmax, images, [maps], predicted, everyone,
                              right=(predicted == labels, chance))  # fmt: skip
        return verdict, alarm

    agreed, _ = run(predicted.clone())
    assert agreed.suspects and isinstance(agreed.suspects[0], ColourFinding)
    shuffled = predicted[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    assert int((shuffled == predicted).sum()) <= n // 2  # about chance (3 classes: 1/3)
    held, alarm = run(shuffled)
    # a model that learned nothing is not tested at all (no forward is spent on it)
    assert not held.suspects and not alarm.learned and not alarm.last_tests
    assert held.scalars == {"shortcut_learned": 0.0, "shortcut_streak": 0.0}
    assert agreed.scalars["shortcut_learned"] == 1
