"""`lightning-vitrcam audit`, the evidence picture, the report and how warnings read."""

from __future__ import annotations

import base64
import json
import warnings
from html.parser import HTMLParser
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_vitrcam import ShortcutAlarm, ViTReciproCAM, ViTReciproCAMCallback
from lightning_vitrcam.cli import main
from lightning_vitrcam.demo import SQUARE_COLOURS, ViTClassifier
from lightning_vitrcam.render import Style, save_png
from lightning_vitrcam.render.evidence import evidence_picture
from tests.helpers import Squares, rigged_corner_vit

torch.set_num_threads(1)
NAMES = ["red", "green", "blue", "yellow"]
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
# PNG files hold the squares' normalised values as (x * 0.25 + 0.5): the audit is told so
MEAN, STD = 0.5, 0.25


# --------------------------------------------------------------------------- the picture
def test_the_evidence_picture_shows_the_alarms_own_numbers() -> None:
    model = rigged_corner_vit((SQUARE_COLOURS - SQUARE_COLOURS.mean(1, keepdim=True)) * 3)
    data = Squares(16, seed=3, corner=True)
    cam = ViTReciproCAM(model)
    out = cam(data.x)
    alarm = ShortcutAlarm(kinds=["region"])
    verdict = alarm.check(cam.predict, cam.score_fn, data.x, [out.maps], out.targets,
                          torch.ones(16, dtype=torch.bool), logits=out.logits)  # fmt: skip
    (finding,) = verdict.suspects
    style = Style(mean=(0.5,) * 3, std=(0.25,) * 3)
    pic = evidence_picture(finding, data.x, style, NAMES)
    assert pic.tag == "vitrcam/shortcut_evidence" and len(pic.captions) == len(finding.examples)
    regions = {t.probe: t for t in alarm.last_tests if t.kind == "region"}
    pairs = [t for t in alarm.last_tests if t.kind == "transplant"]
    for e, caption in zip(finding.examples, pic.captions, strict=True):
        # the numbers drawn are the recorded ones: the probe's probability, after occlusion
        record = regions[e.probe]
        assert record.box == e.box == (0, 1, 0, 1) and record.necessary
        assert e.before == pytest.approx(float(out.probs[e.probe]), abs=1e-6)
        assert e.after == pytest.approx(e.before * (1 - record.drop), abs=1e-5)
        assert f"'{NAMES[e.target]}' {e.before:.2f}" in caption
        assert f"occluded {e.before:.2f} -> {e.after:.2f}" in caption
        assert f"pasted into {e.partner} '{NAMES[e.target]}' {e.moved_p:.2f}" in caption
        pair = next(p for p in pairs if (p.donor, p.recipient) == (e.probe, e.partner))
        assert pair.moved == (e.moved_p >= max(0.0, e.moved_p) and e.moved_to == e.target)
    # the place is outlined in red in the first tile of each row: the corner cell's frame
    first = pic.parts[0]
    tile = first[:, 2 : 2 + 128, 2 : 2 + 128].int()  # a 32-px image upscaled to 128 px
    drawn = (tile == torch.tensor([255, 70, 70]).view(3, 1, 1)).all(0)  # the outline's red
    frame = torch.zeros(128, 128, dtype=torch.bool)
    frame[0:32, 0:4] = frame[0:32, 28:32] = frame[0:4, 0:32] = frame[28:32, 0:32] = True
    assert bool(drawn[frame].all()) and not bool(drawn[~frame].any())


# --------------------------------------------------------------------------- checkpoints
def _train(root: Path, corner: bool) -> Path:
    L.seed_everything(0)
    # the shortcut model gets more data and width: a 2-block ViT trained on 512 images reads
    # the one-token corner on about two thirds of the validation images, too few to test on;
    # 6 epochs, not 4: on another machine's arithmetic the 4-epoch model followed a swapped
    # corner on every image yet its other regions moved recipients as often (5-8 epochs pass)
    size = (
        dict(n=2048, epochs=6, width=64, scheduler="cosine")
        if corner
        else dict(n=512, epochs=3, width=32, scheduler="none")
    )
    module = ViTClassifier(model_kwargs={**TINY, "embed_dim": size["width"]}, num_classes=4,
                           lr=3e-3, scheduler=size["scheduler"], label_smoothing=0.0)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=size["epochs"], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)  # fmt: skip
    trainer.fit(
        module, DataLoader(Squares(size["n"], seed=20, corner=corner), batch_size=16, shuffle=True)
    )
    if corner:  # a precondition, so that a model that did not learn the cue fails here
        val = Squares(64, seed=21, corner=True)
        with torch.no_grad():
            accuracy = float((module.eval()(val.x).argmax(1) == val.y).float().mean())
        assert accuracy >= 0.85, f"the shortcut model reached only {accuracy:.2f}"
    path = root / ("shortcut.ckpt" if corner else "clean.ckpt")
    trainer.save_checkpoint(path)
    return path


def _folder(root: Path, corner: bool, n: int = 24) -> Path:
    """Validation squares as PNG files in class sub-folders (the ImageFolder layout)."""
    data = Squares(n, seed=21, corner=corner)
    for i, (x, y) in enumerate(zip(data.x, data.y.tolist(), strict=True)):
        pixels = ((x * STD + MEAN).clamp(0, 1) * 255).round().to(torch.uint8)
        save_png(pixels, root / NAMES[y] / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit")
    return {
        "shortcut": _train(root, corner=True),
        "clean": _train(root, corner=False),
        "shortcut_images": _folder(root / "shortcut_val", corner=True),
        "clean_images": _folder(root / "clean_val", corner=False),
    }


def _audit(ckpt: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["audit", "--ckpt", str(ckpt), "--images", str(images), "--out", str(out),
                 "--class-names", *NAMES, "--mean", str(MEAN), "--std", str(STD),
                 "--no-progress", *extra])  # fmt: skip


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.verdict = ""
        self._in_verdict = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        self._in_verdict = self._in_verdict or attrs.get("id") == "verdict"

    def handle_data(self, data: str) -> None:
        if self._in_verdict:
            self.verdict += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self._in_verdict = False


def test_audit_flags_the_shortcut_checkpoint_with_a_report(checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert _audit(checkpoints["shortcut"], checkpoints["shortcut_images"], out) == 1
    assert "possible shortcut" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["warns"] and report["findings"] and report["facts"]["probes"] == 16
    assert any("top-left corner" in f["text"] for f in report["findings"])
    # labels came from the class sub-folders, and with the right normalisation the model
    # predicts what it learned: the corner's class
    predicted = [p["predicted"] for p in report["facts"]["predictions"]]
    assert set(predicted) <= set(NAMES)
    page = _Images()
    page.feed((out / "report.html").read_text())
    assert page.verdict.startswith("Possible shortcut.") and "top-left corner" in page.verdict
    alts = [img["alt"] for img in page.images]
    assert {"vitrcam/saliency_grid", "vitrcam/mean_saliency", "vitrcam/shortcut_evidence"} <= set(
        alts
    )
    for img in page.images:  # every picture embedded, readable offline
        head, _, data = img["src"].partition(",")
        assert head == "data:image/png;base64" and base64.b64decode(data)[:4] == b"\x89PNG"
    assert (out / "saliency_grid.png").exists() and (out / "shortcut_evidence.png").exists()


def test_audit_passes_the_clean_checkpoint(checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    # the squares' class is their colour, which the colour test would rightly name
    code = _audit(checkpoints["clean"], checkpoints["clean_images"], out, "--kinds", "region",
                  "background")  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert not report["warns"] and report["findings"] == []
    page = _Images()
    page.feed((out / "report.html").read_text())
    assert page.verdict.startswith("No shortcut found.")


def test_audit_rejects_bad_input_before_any_work(checkpoints, tmp_path, capsys) -> None:
    ckpt, images = checkpoints["shortcut"], checkpoints["shortcut_images"]
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    (broken / "red").mkdir(parents=True)
    (broken / "red" / "a.png").write_text("not an image")
    boring = tmp_path / "boring.ckpt"
    from lightning.pytorch.demos.boring_classes import BoringModel

    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(BoringModel())
    trainer.save_checkpoint(boring)
    cases = [
        (["--ckpt", str(ckpt), "--images", str(empty)], "no PNG/JPEG images found"),
        (["--ckpt", str(ckpt), "--images", str(broken)], "cannot read image"),
        (["--ckpt", str(tmp_path / "nope.ckpt"), "--images", str(images)], "checkpoint not found"),
        (["--ckpt", str(boring), "--images", str(images), "--model-class",
          "lightning.pytorch.demos.boring_classes.BoringModel"], "no Vision Transformer found"),
        (["--ckpt", str(ckpt), "--images", str(images), "--class-names", "a", "b", "c"],
         "not among the model's classes"),
        (["--ckpt", str(ckpt), "--images", str(images / "red"), "--class-names", "a", "b", "c"],
         "class_names has 3 names but the model predicts 4 classes"),
        (["--ckpt", str(ckpt), "--images", str(images), "--mean", "0.5", "0.5"], "--mean/--std"),
    ]  # fmt: skip
    for argv, reason in cases:
        out = tmp_path / "out"
        code = main(["audit", *argv, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and reason in err, (argv, err)
        assert not (out / "report.html").exists()  # nothing was written


def test_audit_of_a_lightning_cli_configs_validation_data(checkpoints, tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "data:\n  class_path: tests.test_audit.SquaresData\n  init_args:\n    corner: true\n"
    )
    out = tmp_path / "out"
    code = main(["audit", "--ckpt", str(checkpoints["shortcut"]), "--config", str(config),
                 "--out", str(out), "--no-progress"])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert code == 1 and report["facts"]["config"] == str(config)
    assert report["facts"]["probes"] == 16


class SquaresData(L.LightningDataModule):
    """A LightningDataModule of the squares (for the --config test)."""

    def __init__(self, corner: bool = False) -> None:
        super().__init__()
        self.corner = corner
        self.class_names = NAMES

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Squares(64, seed=21, corner=self.corner), batch_size=16)


# --------------------------------------------------------------------------- warnings
def test_warnings_name_no_line_of_ours_and_each_is_said_once_per_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import CSVLogger

    import lightning_vitrcam.loggers as vlog
    from tests.helpers import Module

    class Broken(CSVLogger):
        def log_metrics(self, metrics, step=None) -> None:
            if any(key.startswith("vitrcam/") for key in metrics):
                raise OSError("disk full (simulated)")
            super().log_metrics(metrics, step)

    def full(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(vlog, "file_pictures", full)  # the pictures fail the same way
    model = rigged_corner_vit((SQUARE_COLOURS - SQUARE_COLOURS.mean(1, keepdim=True)) * 3)
    cb = ViTReciproCAMCallback(num_images=16, report=False)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=1,
                        logger=Broken(tmp_path), enable_checkpointing=False, callbacks=[cb],
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Module(model, lr=0.0), DataLoader(Squares(16, 3, corner=True), batch_size=8),
                    DataLoader(Squares(32, 3, corner=True), batch_size=8))  # fmt: skip
    ours = [w for w in caught if w.filename == "vitrcam"]
    shortcut = [w for w in ours if "possible shortcut" in str(w.message)]
    failed = [w for w in ours if "writing to the loggers" in str(w.message)]
    assert len(shortcut) == 2  # once per evaluation that raises it (epochs 1 and 2)
    assert len(failed) == 3  # the scalars and the pictures failed alike: once per evaluation
    for w in ours:
        text = warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
        assert text.startswith("vitrcam: ") and ".py:" not in text
