import torch

from lightning_vitrcam.history import History


def test_history_round_trips_through_its_state_and_keeps_maps_compact() -> None:
    history = History()
    history.add(0, 5, torch.rand(3, 4, 4, dtype=torch.float64), {"adcc": 0.25, "map_drift": 0.1})
    history.add(1, 10, torch.rand(3, 4, 4), {"map_drift": 0.2})
    assert history.last is not None and history.last.maps.dtype == torch.float16
    assert history.last.adcc is None and history.records[0].adcc == 0.25
    assert history.done(10) and not history.done(5)
    assert history.scalars() == [
        {"step": 5, "adcc": 0.25, "map_drift": 0.1},
        {"step": 10, "map_drift": 0.2},
    ]
    assert history.frames(per_step=True)[1] == ["step 5", "step 10"]
    assert history.frames(per_step=False)[1] == ["ep 0", "ep 1"]

    restored = History()
    restored.load_state_dict(history.state_dict())
    assert [r.step for r in restored.records] == [5, 10]
    assert torch.equal(restored.records[1].maps, history.records[1].maps)
    assert restored.fits((3, 4, 4)) and not restored.fits((2, 4, 4))
    restored.clear()
    assert len(restored) == 0 and restored.last is None and restored.fits((2, 4, 4))
