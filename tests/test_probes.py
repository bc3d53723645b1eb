"""Probe reading: batch layouts and seeded sampling that leaves every RNG alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from lightning_vitrcam.demo import coloured_squares
from lightning_vitrcam.probes import default_batch_reader, read_batch, sample_probes
from tests.helpers import Squares


def squares(n: int, seed: int):
    return coloured_squares(n, seed, side=16)


def test_batch_reader_layouts() -> None:
    x, y, m = squares(2, 0)
    for batch in ({"images": x, "targets": y, "masks": m}, (x, y, m), [x, y, m]):
        images, labels, masks = read_batch(batch, None)
        assert images is x and torch.equal(labels, y) and masks is m
    images, labels, masks = read_batch((x, y, ["a.png", "b.png"]), None)
    assert labels is not None and masks is None
    assert read_batch(x, None)[1] is None
    assert torch.equal(read_batch((x, F.one_hot(y, 4).float()), None)[1], y)
    assert default_batch_reader({"input": x})["image"] is x
    with pytest.raises(ValueError, match="batch_reader="):
        read_batch({"pixels": x}, None)
    with pytest.raises(ValueError, match="class indices"):
        read_batch((x, torch.zeros(3)), None)


class Stream(IterableDataset):
    def __iter__(self):
        x, y, _ = squares(10, 5)
        return iter(zip(x, y, strict=True))


def test_probe_sampling_is_seeded_and_leaves_rngs_alone() -> None:
    loader = DataLoader(Squares(50), batch_size=8, shuffle=True)
    state = torch.get_rng_state()
    a = sample_probes(loader, 6, seed=1, indices=None, reader=None).indices
    b = sample_probes(loader, 6, seed=1, indices=None, reader=None).indices
    c = sample_probes(loader, 6, seed=2, indices=None, reader=None).indices
    assert a == b != c and len(a) == 6 and a == sorted(a)
    kept = sample_probes(loader, 6, seed=9, indices=a, reader=None)
    assert kept.indices == a and torch.equal(kept.labels, Squares(50).y[a])
    assert torch.equal(torch.get_rng_state(), state)

    stream = sample_probes(DataLoader(Stream(), batch_size=4), 6, 0, None, None)
    assert stream.indices is None and stream.images.shape[0] == 6
    assert torch.equal(stream.labels, squares(10, 5)[1][:6])
    assert torch.equal(torch.get_rng_state(), state)
