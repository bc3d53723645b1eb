"""Tests of the demo data (shapes with a planted corner shortcut) and the ViT classifier."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_vitrcam.demo import (
    CORNERS,
    PATCH_COLORS,
    ShapesDataModule,
    ShapesDataset,
    ViTClassifier,
    corner_slices,
)
from lightning_vitrcam.render import Style, denormalize

TINY_VIT = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _tiny_dm(**kwargs) -> ShapesDataModule:
    args = {"num_train": 64, "num_val": 32, "num_patch_free": 32, "batch_size": 16}
    args.update(kwargs)
    return ShapesDataModule(**args)


def test_batch_format() -> None:
    dm = _tiny_dm()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "mask", "has_patch"}
    assert batch["image"].shape == (16, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == torch.long
    assert batch["mask"].shape == (16, 64, 64) and batch["mask"].dtype == torch.bool
    assert batch["has_patch"].shape == (16,) and batch["has_patch"].dtype == torch.bool
    assert int(batch["label"].min()) >= 0 and int(batch["label"].max()) < 4
    assert dm.class_names == ("circle", "square", "triangle", "cross")
    # Normalised, then denormalised back to the stored uint8 pixels.
    ds = dm.val_set
    item = ds[3]
    back = denormalize(item["image"][None], Style(ds.mean, ds.std))[0]
    assert torch.allclose(back, ds.images[3].float() / 255.0, atol=1e-5)
    assert isinstance(dm.val_dataloader(), torch.utils.data.DataLoader)


def test_deterministic_and_seed_dependent() -> None:
    a = ShapesDataset(40, shortcut_p=0.5, seed=3)
    b = ShapesDataset(40, shortcut_p=0.5, seed=3)
    c = ShapesDataset(40, shortcut_p=0.5, seed=4)
    for name in ("images", "labels", "masks", "has_patch"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.masks, c.masks)
    # The data module's splits are distinct but reproducible.
    d1, d2 = _tiny_dm(seed=1), _tiny_dm(seed=1)
    d1.setup()
    d2.setup()
    assert torch.equal(d1.val_set.images, d2.val_set.images)
    assert torch.equal(d1.patch_free_set.images, d2.patch_free_set.images)
    assert not torch.equal(d1.val_set.images, d1.patch_free_set.images[: len(d1.val_set)])


def test_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    dm = _tiny_dm()
    dm.setup()
    ShapesDataset(16, seed=9)
    assert torch.equal(state, torch.get_rng_state())


def test_masks_cover_objects() -> None:
    ds = ShapesDataset(64, shortcut_p=0.0, seed=2)
    img = ds.images.float() / 255.0
    # Objects are light colours on a darker grey texture: brightness separates them.
    brightness = img.mean(1)
    assert bool(ds.masks.flatten(1).any(1).all())
    inside = (brightness * ds.masks).flatten(1).sum(1) / ds.masks.flatten(1).sum(1)
    outside = (brightness * ~ds.masks).flatten(1).sum(1) / (~ds.masks).flatten(1).sum(1)
    assert bool((inside > outside + 0.25).all())


def test_classes_share_area() -> None:
    # Equal areas keep "how much foreground" from naming the class.
    ds = ShapesDataset(120, num_classes=6, seed=0)
    area = ds.masks.flatten(1).sum(1).float()
    means = torch.stack([area[ds.labels == k].mean() for k in range(6)])
    assert float(means.max() / means.min()) < 1.15


@pytest.mark.parametrize("corner", CORNERS)
def test_patch_corner_colour_and_rate(corner: str) -> None:
    ds = ShapesDataset(200, shortcut_p=0.8, shortcut_corner=corner, patch_size=8, seed=5)
    rows, cols = corner_slices(corner, 64, 8)
    assert abs(ds.has_patch.float().mean().item() - 0.8) < 0.1
    # Shapes stay clear of the corner area whether or not the patch is drawn.
    assert not bool(ds.masks[:, rows, cols].any())
    colors = torch.tensor(PATCH_COLORS[:4], dtype=torch.uint8)
    region = ds.images[:, :, rows, cols]
    want = colors[ds.labels].view(-1, 3, 1, 1).expand_as(region)
    exact = (region == want).flatten(1).all(1)
    assert torch.equal(exact, ds.has_patch)


def test_no_patch_when_p_zero() -> None:
    clean = ShapesDataset(64, shortcut_p=0.0, seed=5)
    patched = ShapesDataset(64, shortcut_p=1.0, seed=5)
    assert not bool(clean.has_patch.any()) and bool(patched.has_patch.all())
    # shortcut_p only adds the patch: shapes and everything outside the corner are the same.
    assert torch.equal(clean.masks, patched.masks)
    assert torch.equal(clean.images[:, :, 8:, :], patched.images[:, :, 8:, :])
    dm = _tiny_dm(shortcut_p=1.0)
    dm.setup()
    assert not bool(dm.patch_free_set.has_patch.any())
    assert bool(dm.val_set.has_patch.all())


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        ShapesDataset(4, shortcut_corner="middle")
    with pytest.raises(ValueError):
        ShapesDataset(4, num_classes=7)
    with pytest.raises(ValueError):
        ShapesDataset(4, image_size=16)
    with pytest.raises(ValueError):
        ViTClassifier(model_kwargs={**TINY_VIT, "pretrained": True})


def test_fit_logs_and_checkpoint_reload(tmp_path) -> None:
    L.seed_everything(0, verbose=False)
    dm = _tiny_dm(num_train=64, num_val=32, num_patch_free=32, batch_size=32)
    model = ViTClassifier(model_kwargs=TINY_VIT)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert "val/acc" in trainer.callback_metrics and "train/loss" in trainer.callback_metrics
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = ViTClassifier.load_from_checkpoint(path)
    assert loaded.hparams.model_kwargs == TINY_VIT
    images = next(iter(dm.val_dataloader()))["image"]
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(images), loaded(images))

    acc = loaded.evaluate_accuracy(dm.patch_free_dataloader())
    assert 0.0 <= acc <= 1.0 and not loaded.training
    pairs = [(b["image"], b["label"]) for b in dm.patch_free_dataloader()]
    assert loaded.evaluate_accuracy(pairs) == acc


def test_shortcut_experiment_tiny_run(tmp_path) -> None:
    from lightning_vitrcam.demo import shortcut_experiment

    rows = shortcut_experiment(
        0.95,
        epochs=1,
        num_train=64,
        num_val=32,
        num_patch_free=32,
        model_kwargs=TINY_VIT,
        callback_kwargs=dict(num_images=4, log_images=False),
        root_dir=str(tmp_path),
    )
    assert len(rows) == 1 and rows[0].epoch == 0 and rows[0].hotspot_ratio >= 1.0


def test_per_class_corners() -> None:
    ds = ShapesDataset(200, shortcut_p=1.0, shortcut_corner="per_class", seed=5)
    colors = torch.tensor(PATCH_COLORS[:4], dtype=torch.uint8)
    for k, corner in enumerate(CORNERS):
        rows, cols = corner_slices(corner, 64, 8)
        mine = ds.labels == k
        region = ds.images[mine][:, :, rows, cols]
        assert bool((region == colors[k].view(1, 3, 1, 1)).all())  # class k: its own corner
        assert not bool(ds.masks[mine][:, rows, cols].any())  # shapes stay clear of it
    # fixed-corner data are unchanged by the per-image corner logic
    fixed = ShapesDataset(40, shortcut_p=0.5, shortcut_corner="bottom_left", seed=3)
    rows, cols = corner_slices("bottom_left", 64, 8)
    assert torch.equal(
        (fixed.images[:, :, rows, cols] != 0).flatten(1).any(1), torch.ones(40).bool()
    )


def test_photo_crops_real_sources_tone_names_no_class() -> None:
    from lightning_vitrcam.demo.cues import CueDataModule
    from lightning_vitrcam.demo.photos import PHOTO_NAMES, photos, scans

    images, labels, masks = photos(90, seed=3)
    again, _, _ = photos(90, seed=3)
    assert torch.equal(images, again) and not torch.equal(images, photos(90, seed=4)[0])
    assert images.shape == (90, 3, 48, 48) and masks.all()
    assert labels.bincount().tolist() == [30, 30, 30] and len(PHOTO_NAMES) == 3
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # every class draws its level and spread from one range: the tone names no class
    means = images.mean(dim=(1, 2, 3))
    per_class = torch.stack([means[labels == k].mean() for k in range(3)])
    assert float(per_class.max() - per_class.min()) < 0.05
    # crops differ within a class (random place, size and flip), not one picture repeated
    assert float((images[labels == 0][0] - images[labels == 0][1]).abs().mean()) > 0.05
    _, binary, _ = scans(40, seed=0)
    assert binary.bincount().tolist() == [20, 20]
    dm = CueDataModule("scans", "text", p=1.0, classes=[1], num_train=8, num_val=8, num_free=8)
    assert dm.class_names == ("not a scan", "scan")
    assert bool((dm.swap_set.labels == 1).all())


def test_lesions_are_ragged_and_blotched_more_often_when_irregular_skin_names_no_class() -> None:
    from lightning_vitrcam.demo.cues import CueDataModule
    from lightning_vitrcam.demo.lesions import LESION_NAMES, lesions

    images, labels, masks = lesions(400, seed=3)
    assert torch.equal(images, lesions(400, seed=3)[0])
    assert not torch.equal(images, lesions(400, seed=4)[0])
    assert images.shape == (400, 3, 48, 48) and labels.bincount().tolist() == [200, 200]
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # the lesion is darker than the skin around it, in every image
    grey = images.mean(1)
    inside = (grey * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
    outside = (grey * ~masks).flatten(1).sum(1) / (~masks).flatten(1).sum(1)
    assert bool((inside < outside).all())
    # a ragged border: more border pixels for the same area (the class's own evidence)
    eroded = -F.max_pool2d(-masks.float()[:, None], 3, 1, 1)[:, 0] > 0.5
    edge = masks & ~eroded
    ragged = edge.flatten(1).sum(1) / masks.flatten(1).sum(1).sqrt()
    assert float(ragged[labels == 1].mean()) > 1.1 * float(ragged[labels == 0].mean())
    # ... but the classes overlap: neither border nor colour alone sorts them
    assert float(ragged[labels == 1].min()) < float(ragged[labels == 0].max())
    skin = (images * ~masks[:, None]).flatten(2).sum(2) / (~masks).flatten(1).sum(1)[:, None]
    assert float((skin[labels == 1].mean(0) - skin[labels == 0].mean(0)).abs().max()) < 0.02
    dm = CueDataModule("lesions", "ruler", p=1.0, classes=[1], num_train=8, num_val=8,
                       num_free=8)  # fmt: skip
    assert dm.class_names == LESION_NAMES == ("regular", "irregular")
