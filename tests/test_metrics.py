"""Tests of lightning_vitrcam.metrics: known answers, batched-vs-loop, metric accumulation."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_vitrcam.metrics import (
    ADCC,
    adcc_scores,
    border_energy,
    border_fraction,
    energy_in_mask,
    hotspot_ratio,
    map_drift,
    mean_saliency_map,
    pearson,
    pointing_game,
)
from lightning_vitrcam.shortcut.places import hotspot_location

torch.set_num_threads(1)


# --------------------------------------------------------------------------- a fake explainer
@dataclass
class FakeResult:
    maps: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor


class FakeCam:
    """Same call signature as ViTReciproCAM. The model is linear in the channel means of the
    image; the map is the min-max normalised 8x8-pooled channel mean (or a fixed constant)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        constant_map: float | None = None,
        patch: int = 8,
    ):
        self.weight, self.bias = weight, bias
        self.constant_map = constant_map
        self.patch = patch
        self.calls: list[torch.Tensor] = []
        self.model = nn.Identity()

    def score_fn(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=-1)

    def logits_of(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)) @ self.weight.T + self.bias

    def __call__(self, images: torch.Tensor, targets=None) -> FakeResult:
        self.calls.append(images.clone())
        logits = self.logits_of(images)
        tgt = logits.argmax(1) if targets is None else torch.as_tensor(targets).long()
        raw = F.avg_pool2d(images, self.patch).mean(1)
        if self.constant_map is not None:
            maps = torch.full_like(raw, self.constant_map)
        else:
            flat = raw.flatten(1)
            lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
            maps = ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(raw)
        probs = self.score_fn(logits).gather(1, tgt[:, None]).squeeze(1)
        return FakeResult(maps, raw.flatten(1), tgt, logits, probs)


def make_cam(seed: int = 0, classes: int = 4, cls: type = FakeCam, **kwargs) -> FakeCam:
    g = torch.Generator().manual_seed(seed)
    return cls(
        torch.randn(classes, 3, generator=g) * 3, torch.randn(classes, generator=g), **kwargs
    )


def make_images(n: int = 5, seed: int = 1, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def loop_adcc(cam: FakeCam, images: torch.Tensor) -> dict[str, list[float]]:
    """Plain per-image ADCC written from the definitions, one image at a time."""
    out: dict[str, list[float]] = {
        k: [] for k in ("average_drop", "increase", "coherency", "complexity", "adcc")
    }
    for x in images:
        res = cam(x[None])
        c = int(res.targets[0])
        y = float(cam.score_fn(res.logits)[0, c])
        s_up = F.interpolate(
            res.maps[None], size=x.shape[-2:], mode="bilinear", align_corners=False
        )[0, 0]
        res2 = cam((x * s_up)[None], targets=[c])
        o = float(cam.score_fn(res2.logits)[0, c])
        a, b = res.maps[0].flatten().double().numpy(), res2.maps[0].flatten().double().numpy()
        if a.std() < 1e-9 or b.std() < 1e-9:
            coh = 0.0
        else:
            coh = (1.0 + float(np.corrcoef(a, b)[0, 1])) / 2.0
        ad = max(0.0, y - o) / y
        cx = float(res.maps[0].mean())
        parts = (coh, 1.0 - cx, 1.0 - ad)
        value = 0.0 if min(parts) <= 0 else 3.0 / sum(1.0 / p for p in parts)
        for k, v in zip(out, (ad, float(o > y), coh, cx, value), strict=True):
            out[k].append(v)
    return out


# --------------------------------------------------------------------------- ADCC
def test_adcc_batched_matches_per_image_loop():
    cam, images = make_cam(), make_images(6)
    batched = adcc_scores(cam, images)
    expected = loop_adcc(make_cam(), images)
    for key, values in expected.items():
        assert batched[key].shape == (6,)
        assert batched[key].dtype == torch.float32
        np.testing.assert_allclose(batched[key].numpy(), values, atol=1e-5, err_msg=key)
    # the fixture must exercise both sides of the formulas, or the comparison proves little
    assert 0 < batched["coherency"].min() and batched["adcc"].max() > 0
    assert (batched["average_drop"] > 0).any()


def test_adcc_reuses_result_with_exactly_one_extra_call():
    images = make_images(4)
    cam = make_cam()
    fresh = adcc_scores(cam, images)
    assert len(cam.calls) == 2
    cam2 = make_cam()
    result = cam2(images)
    cam2.calls.clear()
    reused = adcc_scores(cam2, images, result=result)
    assert len(cam2.calls) == 1
    # the one call explains x * S_up for the result's classes
    s_up = F.interpolate(result.maps[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam2.calls[0], images * s_up)
    for key in fresh:
        torch.testing.assert_close(fresh[key], reused[key])


def test_adcc_result_targets_are_used_for_both_scores():
    class SpyCam(FakeCam):
        def __call__(self, images, targets=None):
            self.seen_targets = targets
            return super().__call__(images, targets)

    images = make_images(3)
    cam = make_cam(cls=SpyCam)
    result = cam(images, targets=torch.tensor([3, 3, 3]))
    out = adcc_scores(cam, images, result=result)
    assert torch.as_tensor(cam.seen_targets).tolist() == [3, 3, 3]
    y = cam.score_fn(result.logits)[:, 3]
    o = cam.score_fn(cam.logits_of(cam.calls[-1]))[:, 3]
    torch.testing.assert_close(out["average_drop"], (y - o).clamp_min(0) / y)
    torch.testing.assert_close(out["increase"], (o > y).float())


def test_input_independent_model_has_zero_drop():
    # weight 0: the logits ignore the image, so the explanation image scores exactly the same
    cam = FakeCam(torch.zeros(4, 3), torch.tensor([0.1, 2.0, -1.0, 0.5]))
    out = adcc_scores(cam, make_images(5))
    assert torch.equal(out["average_drop"], torch.zeros(5))
    assert torch.equal(out["increase"], torch.zeros(5))
    assert torch.isfinite(out["adcc"]).all()


def test_constant_map_gives_zero_coherency_and_its_value_as_complexity():
    cam = make_cam(constant_map=0.3)
    out = adcc_scores(cam, make_images(4))
    assert torch.equal(out["coherency"], torch.zeros(4))
    torch.testing.assert_close(out["complexity"], torch.full((4,), 0.3))
    assert torch.equal(out["adcc"], torch.zeros(4))  # degenerate, defined as 0, never NaN


def test_all_zero_map_explanation_is_defined():
    cam = make_cam(constant_map=0.0)
    out = adcc_scores(cam, make_images(3))
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    assert torch.equal(out["complexity"], torch.zeros(3))
    assert torch.equal(out["adcc"], torch.zeros(3))


def test_zero_scores_give_zero_drop_not_nan():
    class ZeroScoreCam(FakeCam):
        def score_fn(self, logits):
            return torch.zeros_like(logits, dtype=torch.float32)

    cam = ZeroScoreCam(torch.randn(4, 3), torch.zeros(4))
    out = adcc_scores(cam, make_images(3))
    assert torch.equal(out["average_drop"], torch.zeros(3))
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_raise(bad):
    cam = make_cam()
    images = make_images(2)
    result = cam(images)
    result.logits[1, 0] = bad
    with pytest.raises(ValueError, match="1 NaN" if bad != bad else "1 inf"):
        adcc_scores(cam, images, result=result)


def test_negative_scores_raise_clear_error():
    class LogitCam(FakeCam):
        def score_fn(self, logits):
            return logits.float()

    cam = LogitCam(torch.zeros(2, 3), torch.tensor([-1.0, -2.0]))
    with pytest.raises(ValueError, match="non-negative"):
        adcc_scores(cam, make_images(2))


def test_adcc_metric_one_update_equals_several_and_matches_formulas():
    images = make_images(7)
    one = ADCC(make_cam())
    one.update(images)
    several = ADCC(make_cam())
    for chunk in images.split([3, 1, 3]):
        several.update(chunk)
    a, b = one.compute(), several.compute()
    assert set(a) == {
        "adcc",
        "adcc_per_image",
        "average_drop",
        "increase",
        "coherency",
        "complexity",
    }
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)

    per = adcc_scores(make_cam(), images)
    means = {k: v.mean() for k, v in per.items()}
    paper = 3 / (
        1 / means["coherency"] + 1 / (1 - means["complexity"]) + 1 / (1 - means["average_drop"])
    )
    torch.testing.assert_close(a["adcc"], paper)
    torch.testing.assert_close(a["adcc_per_image"], means["adcc"])
    torch.testing.assert_close(a["coherency"], means["coherency"])
    # the two aggregations differ in general (harmonic mean of means >= mean of harmonic means)
    assert float(a["adcc"]) > float(a["adcc_per_image"])


def test_adcc_metric_states_merge_and_reset():
    images = make_images(6)
    whole, left, right = ADCC(make_cam()), ADCC(make_cam()), ADCC(make_cam())
    whole.update(images)
    left.update(images[:2])
    right.update(images[2:])
    left.merge_state(right)  # what the "sum" reduction does across processes
    for key, value in whole.compute().items():
        torch.testing.assert_close(left.compute()[key], value, msg=key)
    whole.reset()
    assert float(whole.count) == 0


def test_adcc_metric_result_reuse_and_no_submodule():
    class ModuleCam(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.inner = make_cam()

        def score_fn(self, logits):
            return self.inner.score_fn(logits)

        def forward(self, images, targets=None):
            return self.inner(images, targets)

    cam = ModuleCam()
    metric = ADCC(cam)
    assert list(metric.children()) == []  # the explainer's model never becomes metric state
    images = make_images(3)
    result = cam(images)
    cam.inner.calls.clear()
    metric.update(images, result=result)
    assert len(cam.inner.calls) == 1
    expected = adcc_scores(make_cam(), images)
    torch.testing.assert_close(metric.compute()["adcc_per_image"], expected["adcc"].mean())


def test_adcc_metric_compute_before_update_is_zero_not_nan():
    metric = ADCC(make_cam())
    with pytest.warns(UserWarning):
        out = metric.compute()
    assert all(float(v) == 0.0 for v in out.values())


# --------------------------------------------------------------------------- real explainer
def tiny_vit_cam():
    timm = pytest.importorskip("timm")
    if importlib.util.find_spec("lightning_vitrcam.explainer") is None:
        pytest.skip("lightning_vitrcam.explainer is not written yet")
    from lightning_vitrcam.explainer import ViTReciproCAM

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=4,
    )
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # otherwise the softmax is flat and every map constant
    return ViTReciproCAM(model)


class CountingCam:
    def __init__(self, cam):
        self.cam, self.calls = cam, 0
        self.score_fn = cam.score_fn

    def __call__(self, images, targets=None):
        self.calls += 1
        return self.cam(images, targets=targets)


def test_real_vit_reciprocam_adcc():
    cam = CountingCam(tiny_vit_cam())
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = cam(images)
    assert float(result.maps.flatten(1).std(1).min()) > 0  # informative maps
    fresh = adcc_scores(cam, images)
    assert cam.calls == 3
    reused = adcc_scores(cam, images, result=result)
    assert cam.calls == 4
    for key, value in fresh.items():
        torch.testing.assert_close(value, reused[key], msg=key)
        assert torch.isfinite(value).all() and (value >= 0).all() and (value <= 1).all(), key
    assert (fresh["coherency"] > 0).all()
    metric = ADCC(cam)
    metric.update(images, result=result)
    assert cam.calls == 5
    torch.testing.assert_close(metric.compute()["adcc_per_image"], fresh["adcc"].mean())


# --------------------------------------------------------------------------- localisation
def test_map_equal_to_mask_scores_one():
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    mask[1, 0, :] = True
    maps = mask.float()
    assert energy_in_mask(maps, mask).tolist() == [1.0, 1.0]
    assert pointing_game(maps, mask).tolist() == [1.0, 1.0]
    # the opposite mask gets none of the energy and misses the peak
    assert energy_in_mask(maps, ~mask).tolist() == [0.0, 0.0]
    assert pointing_game(maps, ~mask).tolist() == [0.0, 0.0]
    # [B, 1, H, W] and float masks are the same thing
    assert energy_in_mask(maps, mask[:, None].float()).tolist() == [1.0, 1.0]


def test_mask_at_image_resolution():
    small = torch.zeros(1, 4, 4)
    small[0, 1:3, 1:3] = 1.0
    big_mask = small.repeat_interleave(8, 1).repeat_interleave(8, 2) > 0  # [1, 32, 32]
    e = float(energy_in_mask(small, big_mask))
    # bilinear upsampling spreads a little energy past the block edges
    assert 0.75 < e < 1.0
    assert pointing_game(small, big_mask).tolist() == [1.0]


def test_zero_map_localisation_is_zero():
    maps = torch.zeros(2, 4, 4)
    masks = torch.ones(2, 4, 4)
    assert energy_in_mask(maps, masks).tolist() == [0.0, 0.0]
    assert pointing_game(maps, masks).tolist() == [0.0, 0.0]


def test_localisation_batched_matches_loop():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(5, 4, 4, generator=g)
    masks = torch.rand(5, 16, 16, generator=g) > 0.6
    energy, points = energy_in_mask(maps, masks), pointing_game(maps, masks)
    for i in range(5):
        up = F.interpolate(
            maps[i][None, None], size=(16, 16), mode="bilinear", align_corners=False
        )[0, 0]
        assert float(energy[i]) == pytest.approx(float((up * masks[i]).sum() / up.sum()), abs=1e-6)
        r, c = divmod(int(up.argmax()), 16)
        assert float(points[i]) == float(masks[i, r, c])


# --------------------------------------------------------------------------- shortcut signals
def corner_maps(n: int = 6, h: int = 5, w: int = 5, row: int = 0, col: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(n, h, w, generator=g) * 0.001
    maps[:, row, col] = 1.0
    return maps


def test_hotspot_same_corner():
    maps = corner_maps()
    ratio = float(hotspot_ratio(maps))
    assert 23.0 < ratio <= 25.0
    assert hotspot_location(maps) == (0, 0, "top-left corner")
    assert hotspot_location(corner_maps(row=4, col=4)) == (4, 4, "bottom-right corner")
    assert hotspot_location(corner_maps(row=0, col=4)) == (0, 4, "top-right corner")
    assert hotspot_location(corner_maps(row=2, col=0)) == (2, 0, "left border")
    assert hotspot_location(corner_maps(row=4, col=2)) == (4, 2, "bottom border")
    assert hotspot_location(corner_maps(row=2, col=2)) == (2, 2, None)
    # a mean map works as input too
    assert float(hotspot_ratio(mean_saliency_map(maps))) == pytest.approx(ratio)


def test_hotspot_uniform_and_scattered():
    assert float(hotspot_ratio(torch.ones(3, 4, 4))) == pytest.approx(1.0)
    eye = torch.eye(16).view(16, 4, 4)  # each image peaks somewhere else
    assert float(hotspot_ratio(eye)) == pytest.approx(1.0)


def test_mean_saliency_map_normalises_and_skips_zero_maps():
    a = torch.zeros(4, 4)
    a[0, 0] = 2.0
    b = torch.zeros(4, 4)
    b[3, 3] = 1.0
    mean = mean_saliency_map(torch.stack([a, b, torch.zeros(4, 4)]))
    assert mean.shape == (4, 4)
    assert float(mean.sum()) == pytest.approx(1.0)
    # each valid map weighs the same whatever its scale; the zero map is skipped
    assert float(mean[0, 0]) == pytest.approx(0.5) and float(mean[3, 3]) == pytest.approx(0.5)
    uniform = mean_saliency_map(torch.zeros(2, 4, 4))
    torch.testing.assert_close(uniform, torch.full((4, 4), 1 / 16))


def test_border_energy_known_values_and_loop():
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 2] = 1.0  # border
    maps[1, 1:3, 1:3] = 1.0  # interior only
    maps[2] = 1.0  # uniform
    be = border_energy(maps)
    torch.testing.assert_close(be, torch.tensor([1.0, 0.0, border_fraction(4, 4)]))
    assert border_fraction(4, 4) == 0.75
    assert float(border_energy(torch.zeros(1, 4, 4))) == 0.0
    g = torch.Generator().manual_seed(5)
    rand = torch.rand(4, 5, 6, generator=g)
    got = border_energy(rand)
    for i in range(4):
        m = rand[i]
        interior = m[1:-1, 1:-1].sum()
        assert float(got[i]) == pytest.approx(float(1 - interior / m.sum()), abs=1e-6)
    # a single [h, w] map gives a scalar (e.g. the mean saliency map)
    assert border_energy(mean_saliency_map(maps)).dim() == 0


def test_map_drift_known_values():
    g = torch.Generator().manual_seed(6)
    a = torch.rand(4, 4, 4, generator=g)
    assert map_drift(a, a).abs().max() < 1e-6
    assert map_drift(a, 2 * a + 0.3).abs().max() < 1e-6
    torch.testing.assert_close(map_drift(a, -a), torch.full((4,), 2.0))
    const = torch.full((2, 4, 4), 0.5)
    assert map_drift(const, const).tolist() == [0.0, 0.0]
    assert map_drift(const, a[:2]).tolist() == [1.0, 1.0]
    assert map_drift(const, torch.zeros(2, 4, 4)).tolist() == [1.0, 1.0]
    b = torch.rand(4, 4, 4, generator=g)
    got = map_drift(a, b)
    for i in range(4):
        r = np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1]
        assert float(got[i]) == pytest.approx(1 - r, abs=1e-5)
    with pytest.raises(ValueError):
        map_drift(a, b[:, :3])


def test_pearson_constant_rows_are_undefined_not_nan():
    r, ok = pearson(torch.ones(2, 9), torch.rand(2, 9))
    assert ok.tolist() == [False, False] and r.tolist() == [0.0, 0.0]
