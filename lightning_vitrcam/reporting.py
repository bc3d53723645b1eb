"""What rank zero does with an evaluation: warnings, scalars, pictures, the timeline.

:class:`Reporter` is the last stage of the monitor's flow: it turns an
:class:`~lightning_vitrcam.evaluation.Outcome` into the ``possible shortcut`` warning, the
logged scalars and the pictures, and writes them through :mod:`~lightning_vitrcam.loggers` to
the host's loggers (a Lightning ``Trainer``'s or a :class:`~lightning_vitrcam.hosts.
ProcessHost`'s). A logger that fails costs one warning, never the run.

Example:
    >>> reporter = Reporter(class_names=["cat", "dog"])
    >>> reporter.class_names, reporter.log_images
    (['cat', 'dog'], True)
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from lightning_vitrcam._warnings import warn
from lightning_vitrcam.evaluation import Outcome
from lightning_vitrcam.loggers import flush, log_files, log_pictures, log_scalars
from lightning_vitrcam.metrics import FLAT_LOG_ODDS
from lightning_vitrcam.probes import Probes
from lightning_vitrcam.render import (
    Picture,
    Style,
    evaluation_pictures,
    evenly_spaced,
    probe_timelines,
)
from lightning_vitrcam.render.captions import caption_parts
from lightning_vitrcam.render.evidence import evidence_picture
from lightning_vitrcam.report import write_report
from lightning_vitrcam.shortcut import PossibleShortcutWarning, shortcut_message
from lightning_vitrcam.tasks import TASKS, Task

__all__ = ["ExplanationSkippedWarning", "Reporter"]

T = TypeVar("T")


class ExplanationSkippedWarning(UserWarning):
    """An evaluation failed after setup and was skipped; training went on."""


#: who the messages of the Lightning callback come from
CALLBACK = "ViTReciproCAMCallback"


@dataclass
class Reporter:
    """Rank zero's output for one monitor (see the callback's arguments of the same names);
    ``name``: the entry point the messages name."""

    class_names: list[str] | None = None
    style: Style = field(default_factory=Style)
    hotspot_threshold: float | None = None
    energy_threshold: float | None = None
    log_images: bool = True
    flat_threshold: float = FLAT_LOG_ODDS
    target_block: int = -1
    task: Task = field(default_factory=lambda: TASKS["multiclass"])
    name: str = CALLBACK
    _flat_hinted: bool = field(default=False, repr=False)
    _said: set[str] = field(default_factory=set, repr=False)
    #: the last evaluation's outcome, probes and warning (for the report)
    last: tuple[Outcome, Probes, str | None, list[Picture]] | None = field(default=None, repr=False)

    def message(self, outcome: Outcome, epoch: int | None, step: int) -> str | None:
        """The ``possible shortcut`` warning of an evaluation, or None (the same on every
        rank; nothing is issued here). Without an epoch (a plain loop) it says the step only."""
        message = shortcut_message(
            outcome.values, outcome.mean_map, epoch or 0, step, self.hotspot_threshold,
            self.energy_threshold, outcome.verdict.raised, self.class_names,
            where=None if epoch is not None else f"at step {step}", held=outcome.verdict.held,
        )  # fmt: skip
        if message is not None and self.name != CALLBACK and message.startswith(CALLBACK):
            message = self.name + message[len(CALLBACK) :]
        return message

    def evaluation(
        self,
        host: Any,
        outcome: Outcome,
        probe: Probes,
        scalars: dict[str, float],
        epoch: int | None,
        step: int,
        message: str | None,
    ) -> None:
        """The warnings, the scalars and the pictures of one evaluation (each distinct
        warning once); ``message``: :meth:`message`'s."""
        self._said.clear()
        self._hint_flat(outcome.flat)
        self.last = (outcome, probe, message, [])
        if message is not None:
            self._warn(message, PossibleShortcutWarning)
        self.write(host, lambda: log_scalars(host, scalars, step, epoch))
        if self.log_images:
            pictures = self.pictures(outcome, probe)
            self.last[3].extend(pictures)  # the report reuses them
            self.write(host, lambda: log_pictures(host, pictures, step))
        self.write(host, lambda: flush(host))

    def pictures(self, outcome: Outcome, probe: Probes) -> list[Picture]:
        """The evaluation's grid and mean map and, when the alarm found something, the
        evidence picture of its strongest finding."""
        return self.explanation_pictures(outcome, probe) + self.evidence_pictures(
            outcome, probe, most=1
        )

    def evidence_pictures(self, outcome: Outcome, probe: Probes, most: int = 1) -> list[Picture]:
        """The evidence pictures of the ``most`` strongest findings."""
        return [
            self._evidence(finding, outcome, probe) for finding in outcome.verdict.raised[:most]
        ]

    def _evidence(self, finding: Any, outcome: Outcome, probe: Probes) -> Picture:
        """A finding's picture, on the probes it was found on (the alarm's own, where it has
        them)."""
        verdict = outcome.verdict
        images = outcome.images if verdict.images is None else verdict.images
        masks = probe.masks if verdict.images is None else verdict.masks
        grid = outcome.primary.grid_size
        return evidence_picture(
            finding, images, self.style, self.class_names, masks=masks, grid=grid
        )

    def explanation_pictures(self, outcome: Outcome, probe: Probes) -> list[Picture]:
        """The evaluation's grid and mean map."""
        pred, true, ranks = outcome.pred, outcome.true, outcome.ranks
        assert pred is not None
        preds, probs = pred.targets, pred.probs
        if ranks:  # multi-label: each probe's explained labels, most probable first
            preds = torch.stack([pred.targets, *(r.targets for r in ranks)], dim=1)
            probs = torch.stack([pred.probs, *(r.probs for r in ranks)], dim=1)
        return evaluation_pictures(
            outcome.images,
            pred.maps,
            preds=preds,
            probs=probs,
            labels=probe.labels,
            true_maps=None if true is None else true.maps,
            flat=outcome.flat,
            mean_map=outcome.mean_map,
            hotspot_ratio=outcome.values.get("hotspot_ratio"),
            class_names=self.class_names,
            style=self.style,
            extra_maps=[r.maps for r in ranks],
        )

    def timeline_images(
        self, probe: Probes, frames: Sequence[torch.Tensor], labels: Sequence[str], columns: int
    ) -> list[torch.Tensor]:
        """One picture per probe: its overlays with each evaluation's maps in ``frames``."""
        keep = evenly_spaced(len(frames), columns)
        kept_frames, kept_labels = [frames[i] for i in keep], [labels[i] for i in keep]
        return probe_timelines(probe.images, kept_frames, kept_labels, self.style, columns)

    def timeline(self, host: Any, probe: Probes, rows: Sequence[torch.Tensor], step: int) -> None:
        """``vitrcam/timeline``: the rows stacked, each captioned with its probe and class."""
        if not rows:
            return
        captions = [f"probe {i}" for i in range(len(rows))]
        if probe.labels is not None:
            zeros = torch.zeros(len(rows))
            truth = caption_parts(zeros, zeros, probe.labels, self.class_names)
            captions = [
                f"{c}: {t.removeprefix('true: ')}"
                for c, (_, t, _) in zip(captions, truth, strict=True)
            ]
        picture = Picture("vitrcam/timeline", torch.cat(list(rows), dim=1), list(rows), captions)
        self.write(host, lambda: log_pictures(host, [picture], step))

    def report(self, host: Any, history: Sequence[dict[str, Any]]) -> list[Path]:
        """``vitrcam/report.html`` (and ``report.json``) of the last evaluation, with every
        evaluation's scalars plotted over the steps, for every logger (MLflow: run
        artifacts; the others: their log directory, or the host's ``default_root_dir``);
        returns the local copies."""
        if self.last is None:
            return []
        outcome, probe, message, logged = self.last
        # the pictures logged at the last evaluation (the strongest finding's evidence among
        # them), and the evidence of every other finding
        found = outcome.verdict.raised
        pictures = logged or self.pictures(outcome, probe)
        pictures = pictures + [self._evidence(f, outcome, probe) for f in found[1:]]
        findings = [
            {**dataclasses.asdict(f), "text": f.describe(self.class_names), "remedy": f.remedy()}
            for f in found
        ]
        with tempfile.TemporaryDirectory(prefix="vitrcam-report-") as tmp:
            html = write_report(
                tmp,
                title="lightning-vitrcam: the last evaluation of this run",
                verdict=message,
                scalars=outcome.values,
                pictures=pictures,
                history=history,
                findings=findings,
                facts={"task": self.task.name, "probes": len(probe), "evaluations": len(history)},
            )
            return log_files(host, [html, html.with_name("report.json")])

    def write(self, host: Any, write: Callable[[], T]) -> T | None:
        """Run a logger call and return what it returns; a logger that fails costs one
        warning (and returns None), never the run."""
        try:
            return write()
        except Exception as err:  # noqa: BLE001 - a monitor never ends a run
            names = ", ".join(type(lg).__name__ for lg in host.loggers) or "no logger"
            self._warn(
                f"{self.name}: writing to the loggers ({names}) failed:"
                f" {type(err).__name__}: {err}; check the logger's configuration (its"
                " directory, credentials, connection). Training continues.",
                ExplanationSkippedWarning,
            )
            return None

    def _warn(self, message: str, category: type[Warning] = UserWarning) -> None:
        if message not in self._said:
            self._said.add(message)
            warn(message, category)

    def _hint_flat(self, flat: torch.Tensor) -> None:
        """Once per run: say what to try when most probe maps carry no signal."""
        share = float(flat.float().mean())
        if self._flat_hinted or share <= 0.5:
            return
        self._flat_hinted = True
        warn(
            f"{self.name}: {share:.0%} of the probe maps are flat: masking any window"
            f" of block {self.target_block} moves the predicted class's log-odds by less than"
            f" {self.flat_threshold:g}, so those maps are marked 'flat' and left out of the"
            " mean-map signals. This is normal for an untrained model; if it persists, explain"
            " an earlier block (target_block=-2 is the authors' default) or check that the"
            " model's prediction depends on the image at all.",
        )
