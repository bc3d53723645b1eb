"""``lightning-vitrcam audit``: the callback's explanation and shortcut alarm on a checkpoint,
with a report and an exit status a CI job can gate a model on.

The probes are a folder of images (labels from class sub-folders when present) or the
validation data of a LightningCLI config; the checkpoint is explained as the callback explains
it during fit (same explainer, ADCC, alarm), and ``--out`` gets ``report.html`` (one
self-contained file: the verdict, the scalars, the grid, the mean map and every evidence
picture), ``report.json`` and the pictures as PNG files. Exit status: 0 when the alarm found
nothing, 1 when it warns, 2 on bad input (with the reason, before any work).

Example:
    >>> args = build_audit_parser().parse_args(["--ckpt", "m.ckpt", "--images", "val/"])
    >>> args.num_images, args.out, args.task
    (16, 'vitrcam_audit', 'auto')
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_model_arguments", "audit", "audit_main", "build_audit_parser"]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``explain`` and ``audit`` share."""
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    p.add_argument(
        "--model-class",
        default=None,
        help="LightningModule class path used to load the checkpoint (default: the class path"
        " LightningCLI stored in the checkpoint, else lightning_vitrcam.demo.ViTClassifier)",
    )
    p.add_argument("--model-attr", default=None, help="attribute path of the ViT in the module")
    p.add_argument(
        "--class-names",
        nargs="*",
        default=None,
        help="one name per class (default: the checkpoint's class_names hyperparameter, the"
        " demo datamodule's shape names, or the class sub-folders' names)",
    )
    p.add_argument(
        "--mean",
        nargs="+",
        type=float,
        default=None,
        help="the normalisation mean the model was trained with, one value or one per channel"
        " (default: the model's config, else ImageNet's)",
    )
    p.add_argument("--std", nargs="+", type=float, default=None, help="the normalisation std")
    p.add_argument("--target-block", type=int, default=-1)
    p.add_argument("--kernel", choices=["gaussian", "point"], default="gaussian")
    p.add_argument("--cmap", default="inferno")
    p.add_argument("--device", default="cpu")


def build_audit_parser() -> argparse.ArgumentParser:
    """Arguments of ``lightning-vitrcam audit``."""
    p = argparse.ArgumentParser(
        prog="lightning-vitrcam audit",
        description="The shortcut alarm and explanations of a checkpoint: report.html,"
        " report.json and pictures; exit status 0 (nothing found), 1 (possible shortcut),"
        " 2 (bad input).",
    )
    add_model_arguments(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images",
        nargs="+",
        help="image files or folders (a folder of class sub-folders gives the labels)",
    )
    source.add_argument("--config", help="a LightningCLI config: its data's validation images")
    p.add_argument("--out", default="vitrcam_audit", help="output folder")
    p.add_argument("--num-images", type=int, default=16, help="probe images (a seeded sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe sample")
    p.add_argument("--task", choices=["auto", "multiclass", "binary", "multilabel"], default="auto")
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument(
        "--kinds",
        nargs="+",
        default=None,
        help="the alarm's kinds of evidence (default: region colour background)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _probes(
    args: argparse.Namespace,
    vit: torch.nn.Module,
    class_names: list[str] | None,
    style_mean: Any,
    style_std: Any,
) -> tuple[Any, list[str] | None, dict[str, Any]]:
    """The probes (with labels where known), the class names, and what was read."""
    from lightning_vitrcam.adapters import build_adapter
    from lightning_vitrcam.normalization import input_channels
    from lightning_vitrcam.offline import folder_labels, image_files, load_images
    from lightning_vitrcam.probes import Probes

    if args.config:
        from lightning_vitrcam.offline import probes_from_config

        probe, data_names = probes_from_config(args.config, args.num_images, args.seed)
        names = class_names or (None if data_names is None else [str(n) for n in data_names])
        return probe, names, {"config": args.config, "probes": len(probe)}
    found = image_files(args.images)
    g = torch.Generator().manual_seed(args.seed)
    if len(found) > args.num_images:
        keep = torch.randperm(len(found), generator=g)[: args.num_images].sort().values.tolist()
        found = [found[i] for i in keep]
    files = [f for f, _ in found]
    size = build_adapter(vit).input_size() or (224, 224)
    channels = input_channels(vit) or 3
    images = load_images(files, size, style_mean(channels), style_std(channels), channels)
    labels, names = folder_labels([label for _, label in found], class_names)
    facts = {"images": ", ".join(map(str, args.images)), "probes": len(files)}
    return Probes(images, labels, None, None), names, facts


def audit(args: argparse.Namespace) -> int:
    """Run the audit of ``args`` (see :func:`build_audit_parser`); returns the exit status."""
    from tqdm import tqdm

    from lightning_vitrcam.evaluation import Evaluation
    from lightning_vitrcam.hosts import ProcessHost
    from lightning_vitrcam.normalization import resolve_mean_std
    from lightning_vitrcam.offline import BadInput, checkpoint_class_names, load_module
    from lightning_vitrcam.render import Style, save_png
    from lightning_vitrcam.report import write_report
    from lightning_vitrcam.reporting import Reporter
    from lightning_vitrcam.shortcut import ShortcutAlarm, shortcut_message
    from lightning_vitrcam.tasks import explained_names

    if args.num_images < 1 or args.max_batch < 1:
        raise BadInput("--num-images and --max-batch must be positive")
    steps = tqdm(total=4, desc="loading", unit="step", disable=args.no_progress)
    _, vit, checkpoint = load_module(args.ckpt, args.model_class, args.model_attr, args.device)
    class_names = args.class_names or checkpoint_class_names(checkpoint)

    def stats(which: str) -> Any:
        def fitted(channels: int) -> tuple[float, ...]:
            try:
                mean, std = resolve_mean_std(vit, args.mean, args.std, channels=channels)
            except ValueError as err:
                raise BadInput(f"--mean/--std: {err}") from err
            return mean if which == "mean" else std

        return fitted

    probe, class_names, facts = _probes(args, vit, class_names, stats("mean"), stats("std"))
    probe = probe.to(args.device)
    channels = probe.images.shape[1]
    mean, std = stats("mean")(channels), stats("std")(channels)
    try:
        # one checkpoint is one check: there is no next check to confirm a finding again
        alarm = ShortcutAlarm(kinds=args.kinds, confirmations=1)
    except ValueError as err:
        raise BadInput(f"--kinds: {err}") from err
    host = ProcessHost()  # one process, full precision
    explain = "both" if probe.labels is not None else "predicted"
    try:
        evaluation = Evaluation(vit, target_block=args.target_block, kernel=args.kernel,
                                explain=explain, max_batch=args.max_batch, alarm=alarm,
                                device=args.device)  # fmt: skip
        task, why, width = evaluation.resolve_task(host, probe, args.task)
        names = explained_names(task, class_names, width)
        evaluation.check_setup(host, probe, names)
    except ValueError as err:
        raise BadInput(str(err)) from err
    steps.update()
    steps.set_description("explaining and testing")
    outcome = evaluation.run(host, probe)
    steps.update()
    steps.set_description("pictures")
    reporter = Reporter(class_names=names, style=Style(mean=mean, std=std, cmap=args.cmap),
                        task=task)  # fmt: skip
    pictures = reporter.explanation_pictures(outcome, probe) + reporter.evidence_pictures(
        outcome, probe, most=len(outcome.verdict.raised)
    )
    out = Path(args.out)
    seen: dict[str, int] = {}
    for pic in pictures:
        name = pic.tag.split("/", 1)[-1]
        seen[name] = seen.get(name, -1) + 1
        save_png(pic.image, out / (f"{name}_{seen[name]}.png" if seen[name] else f"{name}.png"))
    steps.update()
    steps.set_description("report")
    where = f"in {Path(args.ckpt).name}"
    message = shortcut_message(outcome.values, outcome.mean_map, 0, 0,
                               suspects=outcome.verdict.raised, class_names=names,
                               where=where)  # fmt: skip
    findings = [
        {**dataclasses.asdict(f), "text": f.describe(names), "remedy": f.remedy()}
        for f in outcome.verdict.raised
    ]
    predictions = [
        {"probe": i, "predicted": names[t] if names else t, "probability": round(p, 6)}
        for i, (t, p) in enumerate(
            zip(outcome.primary.targets.tolist(), outcome.primary.probs.tolist(), strict=True)
        )
    ]
    facts = {"checkpoint": args.ckpt, "model": type(vit).__name__, "task": f"{task.name} ({why})",
             **facts, "predictions": predictions}  # fmt: skip
    report = write_report(out, title=f"lightning-vitrcam audit: {Path(args.ckpt).name}",
                          verdict=message, scalars=outcome.values, pictures=pictures,
                          findings=findings, facts=facts)  # fmt: skip
    steps.update()
    steps.close()
    verdict = "possible shortcut" if message else "no shortcut found"
    print(f"lightning-vitrcam audit: {verdict}; report: {report.resolve()}")
    if message:
        print(message)
    return 1 if message else 0


def audit_main(argv: Sequence[str]) -> int:
    """``lightning-vitrcam audit``: see :func:`build_audit_parser`."""
    return audit(build_audit_parser().parse_args(list(argv)))
