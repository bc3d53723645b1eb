"""The lightning-vitrcam command: every config in configs/ (very short runs) and `explain`."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_vitrcam.cli import build_explain_parser, explain_main, main
from lightning_vitrcam.render import save_png

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_VIT = '{"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}'
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.num_train=64",
    "--data.init_args.num_val=32",
    "--data.init_args.num_patch_free=16",
    "--data.init_args.batch_size=32",
    f"--model.init_args.model_kwargs={TINY_VIT}",
]


def _tags(root: Path) -> tuple[set[str], set[str]]:
    events = sorted(root.rglob("events.out.tfevents*"))
    assert events, f"no TensorBoard events under {root}"
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0}).Reload()
    return set(acc.Tags()["images"]), set(acc.Tags()["scalars"])


@pytest.mark.parametrize("config", ["shortcut_demo.yaml", "clean_demo.yaml", "binary_demo.yaml"])
def test_demo_configs_fit(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONFIGS / config), *TINY])
    images, scalars = _tags(tmp_path / "lightning_logs")
    assert {"vitrcam/saliency_grid", "vitrcam/mean_saliency", "vitrcam/timeline"} <= images
    assert {"vitrcam/adcc", "vitrcam/hotspot_ratio", "vitrcam/energy_in_mask"} <= scalars
    out = capsys.readouterr().out
    assert "tensorboard --logdir" in out and str(tmp_path) in out


def test_wandb_config_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(["fit", "--config", str(CONFIGS / "shortcut_demo_wandb.yaml"), *TINY])
    media = [p for p in (tmp_path / "lightning_logs").rglob("*.png") if "media" in p.parts]
    names = {p.name.rsplit("_", 2)[0] for p in media}
    assert {"saliency_grid", "mean_saliency", "timeline"} <= names, names


def test_callback_yaml_pastes_into_any_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "callback.yaml"),
            "--model=lightning_vitrcam.demo.ViTClassifier",
            "--data=lightning_vitrcam.demo.ShapesDataModule",
            f"--trainer.default_root_dir={tmp_path}",
            *TINY,
        ]
    )
    images, scalars = _tags(tmp_path / "lightning_logs")
    assert "vitrcam/saliency_grid" in images and "vitrcam/coherency" in scalars


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "clean_demo.yaml"),
            *TINY,
            f"--trainer.logger.init_args.save_dir={root}",
        ]
    )
    ckpts = sorted(root.rglob("*.ckpt"))
    assert ckpts
    return ckpts[0]


def _pngs(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        save_png(
            torch.randint(0, 256, (3, 50, 70), generator=g, dtype=torch.uint8),
            folder / f"img{i}.png",
        )
    return folder


def test_explain_writes_overlays_grid_and_predictions(demo_checkpoint, tmp_path, capsys):
    images = _pngs(tmp_path / "in")
    out = tmp_path / "out"
    assert (
        explain_main(
            [
                "--ckpt",
                str(demo_checkpoint),
                "--images",
                str(images),
                "--out",
                str(out),
                "--class-names",
                "circle",
                "square",
                "triangle",
                "cross",
            ]
        )
        == 0
    )
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["img0.png", "img1.png", "img2.png"]
    assert (out / "grid.png").stat().st_size > 0
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 3
    assert {r["predicted"] for r in records} <= {"circle", "square", "triangle", "cross"}
    assert "wrote 3 overlays" in capsys.readouterr().out


def test_explain_errors(demo_checkpoint, tmp_path):
    images = _pngs(tmp_path / "in", 1)
    with pytest.raises(SystemExit, match="checkpoint not found"):
        explain_main(["--ckpt", str(tmp_path / "missing.ckpt"), "--images", str(images)])
    with pytest.raises(SystemExit, match="image path not found"):
        explain_main(["--ckpt", str(demo_checkpoint), "--images", str(tmp_path / "nope.png")])
    (images / "broken.png").write_text("not an image")
    with pytest.raises(SystemExit, match="cannot read image .*broken.png"):
        explain_main(
            ["--ckpt", str(demo_checkpoint), "--images", str(images), "--out", str(tmp_path / "o")]
        )

    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    boring = tmp_path / "boring.ckpt"
    trainer.save_checkpoint(boring)
    with pytest.raises(SystemExit, match="ViT"):
        explain_main(
            [
                "--ckpt",
                str(boring),
                "--images",
                str(images / "img0.png"),
                "--model-class",
                "lightning.pytorch.demos.boring_classes.BoringModel",
            ]
        )
    with pytest.raises(SystemExit, match="cannot import"):
        explain_main(
            [
                "--ckpt",
                str(boring),
                "--images",
                str(images / "img0.png"),
                "--model-class",
                "no.such.Module",
            ]
        )


def test_explain_parser_defaults():
    args = build_explain_parser().parse_args(["--ckpt", "a.ckpt", "--images", "x"])
    assert (args.kernel, args.target_block, args.out) == ("gaussian", -1, "vitrcam_out")


def test_explain_takes_demo_class_names_from_the_checkpoint(demo_checkpoint, tmp_path):
    # LightningCLI stored the module's and the datamodule's class paths in the checkpoint
    out, images = tmp_path / "out", _pngs(tmp_path / "in", 2)
    explain_main(["--ckpt", str(demo_checkpoint), "--images", str(images), "--out", str(out)])
    records = json.loads((out / "predictions.json").read_text())
    assert {r["predicted"] for r in records} <= {"circle", "square", "triangle", "cross"}


def _hf_checkpoint(tmp_path: Path, **hparams) -> Path:
    from torch.utils.data import DataLoader

    from tests.helpers import HFModule, Squares

    module = HFModule(**hparams)
    channels = module.hparams.num_channels
    data = Squares(8, size=32)
    data.x = data.x[:, :channels]
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    path = tmp_path / "hf.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("channels", [3, 1])
def test_explain_a_checkpoint_of_an_hf_module(tmp_path, channels):
    names = ["red", "green", "blue", "grey", "black"]
    ckpt = _hf_checkpoint(tmp_path, class_names=names, num_channels=channels)
    images, out = _pngs(tmp_path / "in", 2), tmp_path / "out"
    argv = ["--ckpt", str(ckpt), "--images", str(images), "--out", str(out)]
    explain_main([*argv, "--model-class", "tests.helpers.HFModule"])
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 2 and {r["predicted"] for r in records} <= set(names)
    with Image.open(out / "overlays" / "img0.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"  # the model's image size

    # with the class path in the checkpoint (as LightningCLI stores it) no --model-class is
    # needed, and --class-names still wins over the checkpoint's names
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["hyper_parameters"]["_class_path"] = "tests.helpers.HFModule"
    torch.save(checkpoint, ckpt)
    explain_main([*argv, "--class-names", *[n.upper() for n in names]])
    records = json.loads((out / "predictions.json").read_text())
    assert {r["predicted"] for r in records} <= {n.upper() for n in names}
