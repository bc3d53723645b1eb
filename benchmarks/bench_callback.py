"""Training-time overhead of ViTReciproCAMCallback at its defaults, and the cost of one
evaluation on a ViT-B/16.

Overhead (default): trains the demo (``configs/shortcut_demo.yaml``: its ViT on 3,000 shapes
images, batch 64, 3 epochs, 500 validation images) twice with the same seed, without and with
``ViTReciproCAMCallback()`` at its defaults (16 probes, every epoch, ADCC, the shortcut alarm,
pictures), both with a TensorBoard logger, and prints the ratio of the two ``trainer.fit`` wall
times and the time spent inside the callback. On a shared machine the ratio of two fits is
noisy; the callback's own seconds are the steadier number, but they miss work done outside its
hooks, so each fit also prints: the CPU seconds of TensorBoard's writer thread (it checksums
every event in pure Python; the difference between the fits is what the callback's pictures
and scalars cost it), the process's CPU seconds (all threads; less sensitive than wall time to
other tenants of a shared machine), and the training steps' own seconds (batch start to end,
without the callback's hooks) with the rest of the fit (outside the steps, validation and the
callback's hooks; the callback's seconds plus the growth of that rest is the least noisy
estimate of what it costs, short of any slowing of the steps by TensorBoard's writer thread
running beside them), and at which evaluations the alarm ran its occlusion search (only where
no map peak or remembered place was confirmed). ``--set NAME=VALUE`` measures the callback with
other arguments; ``--clean`` trains on the clean demo's data (``configs/clean_demo.yaml``: no
corner patch, so the alarm confirms nothing and searches at every evaluation).

One evaluation (``--vit-b``): the callback's work for one evaluation of 16 probes (explanation,
ADCC, the alarm on its own 32 probes, pictures) on a timm ViT-B/16 at 224x224 with 1000
classes (random weights: speed does not depend on them; the 64 validation images are labelled
with the model's own predictions, so that the alarm tests as it does on a trained model, and
nothing is confirmed, so every kind runs), against one plain forward of 16 images.

    python benchmarks/bench_callback.py                  # the demo, 3 epochs of 47 steps
    python benchmarks/bench_callback.py --steps 300      # longer epochs
    python benchmarks/bench_callback.py --repeats 4      # 4 pairs, order flipped each time; medians
    python benchmarks/bench_callback.py --vit-b          # one evaluation on ViT-B/16
    python benchmarks/bench_callback.py --set log_images=false   # other than the defaults
    python benchmarks/bench_callback.py --clean          # the clean demo's data
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_vitrcam import ViTReciproCAMCallback
from lightning_vitrcam.demo import ShapesDataModule, ViTClassifier

_SYNC = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None


class WriterSeconds:
    """CPU seconds of TensorBoard's writer threads that ended inside the ``with`` block (the
    logger closes its writer when the fit ends). Instruments TensorBoard's thread class for
    this benchmark only."""

    def __enter__(self) -> WriterSeconds:
        from tensorboard.summary.writer import event_file_writer as efw

        self.seconds, self._cls = 0.0, efw._AsyncWriterThread
        self._run = run = self._cls.run

        def timed(thread: Any) -> None:
            try:
                run(thread)
            finally:
                self.seconds += time.thread_time()

        self._cls.run = timed
        return self

    def __exit__(self, *exc: object) -> None:
        self._cls.run = self._run


class TimedCallback(ViTReciproCAMCallback):
    """The callback with a (CUDA-synchronised) stopwatch around every hook that does work."""

    seconds = 0.0
    evaluations: list[float]

    def _timed(self, name: str, *args: Any) -> None:
        # resolved once: torch.cuda.is_available() alone costs ~40 us, paid at every step
        sync = _SYNC
        sync()
        start = time.perf_counter()
        getattr(super(), name)(*args)
        sync()
        spent = time.perf_counter() - start
        self.seconds += spent
        if name == "on_validation_epoch_end":
            self.evaluations = [*getattr(self, "evaluations", []), spent]
            searched = self.alarm is not None and self.alarm.searched
            self.searched = [*getattr(self, "searched", []), searched]

    def on_fit_start(self, *args: Any) -> None:
        self._timed("on_fit_start", *args)

    def on_validation_epoch_end(self, *args: Any) -> None:
        self._timed("on_validation_epoch_end", *args)

    def on_train_batch_end(self, *args: Any) -> None:
        self._timed("on_train_batch_end", *args)

    def on_train_end(self, *args: Any) -> None:
        self._timed("on_train_end", *args)


class StepClock(L.Callback):
    """Seconds of the training steps (batch start to end) and of validation; placed before the
    callback, so that neither includes its hooks."""

    def __init__(self) -> None:
        self.steps = self.validation = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._step = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps += time.perf_counter() - self._step

    def on_validation_epoch_start(self, *args: Any) -> None:
        self._val = time.perf_counter()

    def on_validation_epoch_end(self, *args: Any) -> None:
        self.validation += time.perf_counter() - self._val


def _trainer(root: str, epochs: int, callback: TimedCallback | None, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[] if callback is None else [callback],
        logger=TensorBoardLogger(root),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        **kwargs,
    )


@dataclass
class _Fit:
    """One ``trainer.fit``: wall and process CPU seconds, TensorBoard's writer CPU seconds, and
    the steps' and validation's seconds."""

    seconds: float
    cpu: float
    writer: float
    clock: StepClock

    def rest(self, callback_seconds: float = 0.0) -> float:
        """Seconds outside the training steps, validation and the callback's hooks."""
        return self.seconds - self.clock.steps - self.clock.validation - callback_seconds

    def cost(self, base: _Fit, callback_seconds: float) -> float:
        """The callback's share of ``base``: its own seconds plus how much longer the rest of
        the fit took (mostly TensorBoard writing its pictures); unlike the wall-time ratio it
        leaves out the training steps and validation, where the callback does nothing (so the
        machine's noise in them does not count, nor would a slowing of the steps by
        TensorBoard's writer thread checksumming the pictures beside them)."""
        return (callback_seconds + self.rest(callback_seconds) - base.rest()) / base.seconds


def overhead(args: argparse.Namespace) -> None:
    dm = ShapesDataModule(
        num_train=args.steps * args.batch_size,
        num_val=args.val,
        num_patch_free=args.batch_size,
        batch_size=args.batch_size,
        **({"shortcut_p": 0.0} if args.clean else {}),
    )
    dm.setup()

    def run(callback: TimedCallback | None) -> _Fit:
        L.seed_everything(0, verbose=False)
        model = ViTClassifier(num_classes=dm.hparams.num_classes, lr=1e-3)
        with tempfile.TemporaryDirectory() as root, WriterSeconds() as writer:
            trainer = _trainer(root, args.epochs, callback)
            clock = StepClock()
            trainer.callbacks.insert(0, clock)
            start, cpu = time.perf_counter(), time.process_time()
            trainer.fit(model, datamodule=dm)
            fit, cpu = time.perf_counter() - start, time.process_time() - cpu
        return _Fit(fit, cpu, writer.seconds, clock)

    pairs: list[tuple[_Fit, _Fit, TimedCallback]] = []
    for i in range(args.repeats):
        # The order flips from pair to pair: on this project's CPU the second fit of a pair
        # ran slower whichever it was, which a fixed order books to the callback.
        callback = TimedCallback(**args.callback_kwargs)
        if i % 2 == 0:
            without = run(None)
            pairs.append((without, run(callback), callback))
        else:
            fit = run(callback)
            pairs.append((run(None), fit, callback))
    print(f"torch threads: {torch.get_num_threads()}")
    print(
        f"{args.epochs} epochs x {args.steps} steps, batch {args.batch_size}, {args.val} val,"
        f" {'clean data (configs/clean_demo.yaml)' if args.clean else 'the shortcut demo'}"
    )
    for i, (base, fit, callback) in enumerate(pairs):
        seconds, evals = callback.seconds, getattr(callback, "evaluations", [])
        print(f"pair {i + 1}: {'without, then with' if i % 2 == 0 else 'with, then without'}")
        print(f"fit without callback: {base.seconds:8.2f} s")
        print(f"fit with callback:    {fit.seconds:8.2f} s  ({len(evals)} evaluations)")
        print(f"time inside callback: {seconds:8.2f} s (per epoch-end evaluation: "
              + ", ".join(f"{s:.2f}" for s in evals) + " s)")  # fmt: skip
        searched = ["yes" if x else "no" for x in getattr(callback, "searched", [])]
        print(f"alarm's occlusion search ran (per evaluation): {', '.join(searched) or '-'}")
        print(f"TensorBoard writer thread, CPU: {fit.writer:.2f} s with the callback,"
              f" {base.writer:.2f} s without")  # fmt: skip
        print(f"process CPU in the fit: {fit.cpu:.2f} s with the callback,"
              f" {base.cpu:.2f} s without")  # fmt: skip
        print(f"training steps: {fit.clock.steps:.2f} s with the callback, {base.clock.steps:.2f} s"
              f" without; the rest of the fit (outside the steps, validation and the callback's"
              f" hooks): {fit.rest(seconds):.2f} s with, {base.rest():.2f} s without")  # fmt: skip
        print(f"overhead (fit-time ratio - 1):        {fit.seconds / base.seconds - 1:+.2%}")
        print(f"overhead (process CPU ratio - 1):     {fit.cpu / base.cpu - 1:+.2%}")
        print(f"overhead (callback time / baseline):  {seconds / base.seconds:+.2%}")
        print(f"overhead (callback + rest growth):    {fit.cost(base, seconds):+.2%}")
    if len(pairs) > 1:
        ratio = statistics.median(f.seconds / b.seconds - 1 for b, f, _ in pairs)
        cpu_ratio = statistics.median(f.cpu / b.cpu - 1 for b, f, _ in pairs)
        share = statistics.median(c.seconds / b.seconds for b, _, c in pairs)
        cost = statistics.median(f.cost(b, c.seconds) for b, f, c in pairs)
        print(f"median of {len(pairs)}: fit-time ratio {ratio:+.2%}, process CPU ratio"
              f" {cpu_ratio:+.2%}, callback time / baseline {share:+.2%}, callback + rest growth"
              f" {cost:+.2%}")  # fmt: skip


class _Module(L.LightningModule):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def one_evaluation(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000)
    # 64 validation images (the alarm draws its own 32 beside the pictures' 16), labelled
    # with the model's own predictions: a model right on every probe, so that the alarm runs
    # its tests (random labels would leave a random model "not learned" and test nothing)
    # (16 noise images, 4 slight variations of each: mostly 4 images per predicted class, as
    # the alarm's per_class asks)
    images = torch.randn(16, 3, 224, 224).repeat_interleave(4, 0)
    images += 0.05 * torch.randn_like(images)
    with torch.no_grad():
        vit.eval()
        labels = torch.cat([vit(chunk).argmax(1) for chunk in images.split(16)])
        vit(images[:16])  # warm-up
        start = time.perf_counter()
        vit(images[:16])
        forward = time.perf_counter() - start
    data = DataLoader(TensorDataset(images, labels), batch_size=16)
    callback = TimedCallback(**args.callback_kwargs)
    with tempfile.TemporaryDirectory() as root:
        trainer = _trainer(root, 1, callback, limit_train_batches=1, limit_val_batches=1)
        trainer.fit(_Module(vit), data, data)
    (evaluation,) = callback.evaluations
    print(f"torch threads: {torch.get_num_threads()}")
    verdict = callback.alarm.last_verdict if callback.alarm is not None else None
    drawn = 0 if verdict is None or verdict.images is None else len(verdict.images)
    tested = "tested" if callback.alarm is not None and callback.alarm.learned else "not tested"
    print(
        f"ViT-B/16, 16 probes of 224x224, 1000 classes, CPU float32; the alarm's own probes:"
        f" {drawn} of {len(labels.unique())} classes ({tested})"
    )
    print(f"plain forward of the 16 probes: {forward:7.2f} s")
    setting = " ".join(args.set) or "defaults"
    print(f"one evaluation ({setting}): {evaluation:7.2f} s = {evaluation / forward:.1f}x")


def _callback_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``["log_images=false", "alarm.search=false", ...]`` as keyword arguments of the callback
    (``alarm.NAME`` of its ``ShortcutAlarm``), each checked against the signatures."""
    import inspect
    import json

    from lightning_vitrcam import ShortcutAlarm

    known = inspect.signature(ViTReciproCAMCallback.__init__).parameters
    alarm_known = inspect.signature(ShortcutAlarm.__init__).parameters
    kwargs: dict[str, Any] = {}
    alarm: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        target, names = (alarm, alarm_known) if name.startswith("alarm.") else (kwargs, known)
        name = name.removeprefix("alarm.")
        if not sep or name not in names or name == "self":
            raise SystemExit(
                f"--set takes NAME=VALUE with a ViTReciproCAMCallback argument, or"
                f" alarm.NAME=VALUE with a ShortcutAlarm argument, got {pair!r}"
            )
        try:  # false, 2, 0.5, [0, 1] as JSON; anything else is a string
            target[name] = json.loads(value)
        except json.JSONDecodeError:
            target[name] = value
    if alarm:
        kwargs["shortcut_alarm"] = ShortcutAlarm(**alarm)
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=47, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--val", type=int, default=500, help="validation images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="pairs of fits; the order within a pair flips from pair to pair",
    )
    parser.add_argument("--vit-b", action="store_true", help="one evaluation on ViT-B/16")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="the clean demo's data (no corner patch): the alarm confirms nothing, so it"
        " searches at every evaluation",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="callback arguments other than the defaults, e.g. --set log_images=false"
        " alarm.search=false shortcut_alarm=null (values read as JSON, else as strings)",
    )
    args = parser.parse_args()
    args.callback_kwargs = _callback_kwargs(args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    (one_evaluation if args.vit_b else overhead)(args)


if __name__ == "__main__":
    main()
