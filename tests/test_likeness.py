"""The likeness of regions: where a paste changed the image is read, not the background
around it."""

from __future__ import annotations

import torch

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


def test_where_the_paste_changed_the_image_is_read_not_the_background_around_it() -> None:
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
    # where the paste changed the recipient (the line): found in the carrier, not in it
    own, other = distances(against=recipient)
    assert own < 0.1 * other


def test_a_paste_that_changes_nothing_is_read_whole() -> None:
    x = _line_images()
    x[2] = x[0]  # the recipient is the donor: the paste changes nothing
    box = torch.tensor([[0, 3, 0, 3]])
    whole = torch.tensor([[0, 8, 0, 8]])
    rows = torch.tensor([0]), box, torch.tensor([1]), whole, (8, 8)
    read_whole = region_distance(x, *rows, centre=True)
    read_changed = region_distance(x, *rows, centre=True, against=torch.tensor([2]))
    assert torch.equal(read_changed, read_whole)


def test_each_carrier_is_compared_with_the_others_never_itself(monkeypatch) -> None:
    """The comparison of looks pairs each paste's donor with the other carriers in turn."""
    from types import SimpleNamespace

    from lightning_vitrcam.shortcut import mark

    seen: list[tuple[list[int], list[int]]] = []

    def record(images, a_rows, a_boxes, b_rows, *args, **kwargs):
        seen.append((a_rows.tolist(), b_rows.tolist()))
        return torch.zeros(len(a_rows))

    monkeypatch.setattr(mark, "region_distance", record)
    probing = SimpleNamespace(images=torch.zeros(8, 3, 32, 32), targets=torch.zeros(8).long(),
                              grid=(8, 8))  # fmt: skip
    donors = torch.tensor([1, 1, 1, 1, 5, 5, 5, 9, 9])
    masks = torch.zeros(len(donors), 8, 8, dtype=torch.bool)
    masks[:, 5:, :3] = True
    carriers = torch.tensor([1, 5, 9])
    mark.Mark._likeness(None, probing, None, carriers, torch.arange(9) % 2, donors, masks)
    rows, partners = seen[0]
    assert all(p != d and p in (1, 5, 9) for d, p in zip(rows, partners, strict=True))
    # every donor meets every other carrier
    assert {(d, p) for d, p in zip(rows, partners, strict=True)} >= {(1, 5), (1, 9), (5, 1), (5, 9)}
