"""One evaluation of the probes: explain, gather, combine the signals, run the alarm.

:class:`Evaluation` owns the explainer, the ADCC metric and the one batch bound they and the
alarm share (``max_batch``). :meth:`Evaluation.run` takes the probes through four stages:

1. *the explanation*: each rank explains its share of the probes (no collective);
2. *ADCC*: each rank scores its share's explanation images (no collective);
3. *gathering*: the shares are gathered and the map signals and ADCC computed;
4. *the shortcut alarm*: its occlusion forwards are split over the ranks.

A failure in any stage is agreed on by every rank before the next collective, so no rank waits
for one that left. Out of memory anywhere halves the shared bound, rebuilds the explainer and
ADCC, and runs that stage again, once per evaluation; anything else, or out of memory again,
raises :class:`EvaluationSkipped` with what went wrong and what to change.

Example:
    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
    ...                         num_classes=3, depth=1, embed_dim=32, num_heads=2)
    >>> evaluation = Evaluation(vit, compute_adcc=False, alarm=None)
    >>> evaluation.max_batch, evaluation.cam.fast_path
    (128, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from lightning_vitrcam.explainer import ReciproCAMResult, ViTReciproCAM
from lightning_vitrcam.metrics import (
    ADCC,
    ADCC_KEYS,
    FLAT_LOG_ODDS,
    border_energy,
    energy_in_mask,
    flat_maps,
    hotspot_ratio,
    map_drift,
    mean_saliency_map,
    pointing_game,
)
from lightning_vitrcam.probes import HOW_TO_READ, Probes
from lightning_vitrcam.sharding import (
    PeerFailed,
    agree,
    agree_flag,
    chunked,
    gather_result,
    probe_shard,
    sharded_forward,
    take,
)
from lightning_vitrcam.shortcut import ShortcutAlarm, Verdict
from lightning_vitrcam.tasks import TASKS, Task, infer_task

__all__ = ["Evaluation", "EvaluationSkipped", "Outcome", "explaining", "probe_signals"]

T = TypeVar("T")
Explain = Literal["predicted", "label", "both"]


class EvaluationSkipped(Exception):
    """Why an evaluation is skipped, and what the user can do about it."""

    def __init__(self, cause: str, remedy: str) -> None:
        super().__init__(cause)
        self.cause, self.remedy = cause, remedy

    @classmethod
    def of(cls, err: BaseException, stage: str) -> EvaluationSkipped:
        if isinstance(err, EvaluationSkipped):
            return err
        if isinstance(err, PeerFailed):
            return cls(f"another process failed in {stage}", "see that process's warning")
        return cls(
            f"{type(err).__name__} in {stage}: {err}",
            "this is a bug or an unsupported setup; please report it with the traceback above"
            " the warning (run the callback's evaluation outside fit to see it)",
        )

    def message(self, epoch: int | None, step: int, name: str = "ViTReciproCAMCallback") -> str:
        """The warning ``name`` (the entry point) issues; without an epoch it names the step."""
        when = f"at epoch {epoch} (step {step})" if epoch is not None else f"at step {step}"
        return (
            f"{name}: the evaluation {when} was skipped: {self.cause}."
            f" {self.remedy[0].upper()}{self.remedy[1:]}. Training continues."
        )


@dataclass
class Outcome:
    """What one evaluation computed (tensors on the training device, the same on every
    rank): the probe images as explained, the result the signals use (``primary``), the
    predicted-class and true-class results where explained, the scalars, the mean map of the
    informative maps, which maps are flat, and the alarm's verdict."""

    images: torch.Tensor
    primary: ReciproCAMResult
    pred: ReciproCAMResult | None
    true: ReciproCAMResult | None
    values: dict[str, float]
    mean_map: torch.Tensor
    flat: torch.Tensor
    verdict: Verdict
    #: multi-label: the explanations of each probe's next most probable labels
    ranks: list[ReciproCAMResult] = field(default_factory=list)


@contextmanager
def explaining(host: Any) -> Iterator[None]:
    """No gradients, the global RNGs restored (a custom model may draw random numbers even in
    eval mode), and the host's precision (autocast for ``*-mixed``)."""
    with torch.no_grad(), isolate_rng(), host.precision_plugin.forward_context():
        yield


def probe_signals(
    maps: torch.Tensor,
    masks: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    informative: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The mask-free signals of one explanation of the probes, the localisation signals when
    ``masks`` are given and the drift against ``previous`` maps of the same probes; returns
    ``(scalar tensors by name, mean saliency map)``, all on the maps' device.

    ``informative`` ``[B]`` bool keeps flat maps (see
    :func:`~lightning_vitrcam.metrics.flat_maps`) out of every signal; when no map is
    informative the dict is empty and the mean map uniform.

    Example:
        >>> maps = torch.zeros(2, 4, 4); maps[:, 0, 0] = 1.0
        >>> values, mean_map = probe_signals(maps, previous=maps)
        >>> {k: round(float(v), 2) for k, v in values.items()}
        {'hotspot_ratio': 16.0, 'border_energy': 1.0, 'map_drift': 0.0}
    """
    if informative is None:
        informative = torch.ones(maps.shape[0], dtype=torch.bool, device=maps.device)
    count = informative.sum()
    if not bool(count > 0):
        h, w = maps.shape[-2:]
        return {}, torch.full((h, w), 1.0 / (h * w), device=maps.device)
    weight = informative.float()
    # all-zero maps are skipped by the mean map, so zeroing the flat ones leaves them out
    mean_map = mean_saliency_map(maps * weight[:, None, None])

    def average(per_image: torch.Tensor) -> torch.Tensor:
        return (per_image * weight).sum() / count

    values = {"hotspot_ratio": hotspot_ratio(mean_map), "border_energy": border_energy(mean_map)}
    if masks is not None:
        values["energy_in_mask"] = average(energy_in_mask(maps, masks))
        values["pointing_game"] = average(pointing_game(maps, masks))
    if previous is not None:
        values["map_drift"] = average(map_drift(previous.to(maps.device, torch.float32), maps))
    return values, mean_map


# (result the signals use, predicted-class result, true-class result, further labels)
_Explained = tuple[
    ReciproCAMResult, ReciproCAMResult | None, ReciproCAMResult | None, list[ReciproCAMResult]
]


class Evaluation:
    """The explainer, ADCC and the alarm of one callback, and how an evaluation runs them.

    Args:
        vit: the eager ViT to explain.
        target_block, kernel: see :class:`~lightning_vitrcam.ViTReciproCAM`.
        explain: ``"predicted"``, ``"label"`` or ``"both"`` (which classes are explained;
            the signals use the true class in ``"label"`` mode).
        draw_predicted: explain the predicted class in ``"label"`` mode too (for pictures).
        compute_adcc: compute ADCC (one more explanation of the probes).
        max_batch: the batch bound the explainer, ADCC and the alarm share.
        flat_threshold: see :func:`~lightning_vitrcam.metrics.flat_maps`.
        alarm: the shortcut alarm, or None.
        device: where the ADCC metric's states live.
        task: the classification task (see :mod:`~lightning_vitrcam.tasks`).
        top_k: multi-label: labels explained per probe (the most probable, or with
            ``explain="label"`` the true ones first); the signals use the first.
    """

    def __init__(
        self,
        vit: nn.Module,
        *,
        target_block: int = -1,
        kernel: str = "gaussian",
        explain: Explain = "predicted",
        draw_predicted: bool = True,
        compute_adcc: bool = True,
        max_batch: int = 128,
        flat_threshold: float = FLAT_LOG_ODDS,
        alarm: ShortcutAlarm | None = None,
        device: torch.device | str = "cpu",
        task: Task = TASKS["multiclass"],
        top_k: int = 3,
    ) -> None:
        self.vit, self.target_block, self.kernel = vit, target_block, kernel
        self.explain, self.draw_predicted = explain, draw_predicted
        self.compute_adcc, self.flat_threshold = compute_adcc, flat_threshold
        self.alarm, self.device = alarm, torch.device(device)
        self.task, self.top_k = task, top_k
        self.max_batch = max_batch
        self.cam: ViTReciproCAM
        self.adcc: ADCC | None
        self._build()
        self._lowered: tuple[str, int] | None = None
        self._dry: ReciproCAMResult | None = None
        #: the head's number of logits, once :meth:`resolve_task` read it
        self.width: int | None = None

    def _build(self) -> None:
        """The explainer (and the ADCC metric that calls it) at the current ``max_batch``."""
        self.cam = ViTReciproCAM(
            self.vit, self.target_block, self.kernel, task=self.task, max_batch=self.max_batch
        )
        self.adcc = ADCC(self.cam).to(self.device) if self.compute_adcc else None

    def set_task(self, task: Task) -> None:
        """Explain ``task`` from now on (the explainer and ADCC are rebuilt)."""
        self.task = task
        self._build()

    def resolve_task(self, host: Any, probe: Probes, requested: str) -> tuple[Task, str, int]:
        """``(task, why, width)``: the task ``requested`` (or, for ``"auto"``, the one the
        head and the probe labels say), explained from now on; the probe labels converted to
        it (a ``ValueError`` where they do not fit); ``width`` the head's number of logits."""
        width = self.head_width(host, probe.images)
        task, why = infer_task(requested, width, probe.labels)
        self.set_task(task)
        self.width = width
        if probe.labels is not None:
            probe.labels = task.labels(probe.labels, width)
        return task, why, width

    def head_width(self, host: Any, images: torch.Tensor) -> int:
        """One probe explained as an evaluation would (every model/image mismatch surfaces
        here, at setup); returns the number of logits the model returns."""
        with explaining(host):
            self._dry = self.cam(host.precision_plugin.convert_input(images[:1]))
        return int(self._dry.logits.shape[1])

    def check_setup(
        self, host: Any, probe: Probes, class_names: Sequence[str] | None
    ) -> tuple[int, int]:
        """The probes and the class names checked against the model (after
        :meth:`head_width`'s dry run): every mismatch surfaces at setup, before the first
        epoch. Returns the token grid."""
        dry = self._dry if self._dry is not None else None
        if dry is None:
            self.head_width(host, probe.images)
            dry = self._dry
        assert dry is not None
        num_classes = self.task.num_classes(dry.logits.shape[1])
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but the model predicts"
                f" {num_classes} classes"
            )
        if self.explain != "predicted" and probe.labels is None:
            raise ValueError(
                f"explain={self.explain!r} needs labels but the validation batches have"
                f" none; use explain='predicted' or {HOW_TO_READ}"
            )
        return dry.grid_size

    # ------------------------------------------------------------------ the stages
    def run(
        self,
        host: Any,
        probe: Probes,
        previous_maps: torch.Tensor | None = None,
        previous_adcc: float | None = None,
        alarm_probe: Callable[[], Probes] | None = None,
    ) -> Outcome:
        """Evaluate the probes on every rank of ``host`` (a Lightning ``Trainer`` or a
        :class:`~lightning_vitrcam.hosts.ProcessHost`); raises :class:`EvaluationSkipped`.
        The alarm checks the probes ``alarm_probe()`` returns (its own, drawn inside the
        alarm's stage so that a failure to read them skips like any other), else the
        pictures' probes."""
        self._lowered = None
        with explaining(host):
            images = host.precision_plugin.convert_input(probe.images)
            shard = probe_shard(len(probe), host.global_rank, host.world_size, images.device)
            labels = None if probe.labels is None else probe.labels[shard.rows]
            own = self._stage(
                "the explanation", host, lambda: self._explain(images[shard.rows], labels)
            )
            if self.compute_adcc:
                self._stage("ADCC", host, lambda: self._score_adcc(images, own[0], shard))
            primary, pred, true, ranks, stats, mean_map, flat = self._stage(
                "gathering", host, lambda: self._combine(host, probe, own, previous_maps)
            )
            verdict = Verdict()
            if self.alarm is not None:
                verdict = self._stage(
                    "the shortcut alarm",
                    host,
                    lambda: self._alarm_check(host, images, probe, [primary, *ranks], alarm_probe),
                )
        # one host transfer for all scalars
        values = dict(zip(stats, torch.stack(list(stats.values())).float().tolist(), strict=True))
        values.update(verdict.scalars)
        if "adcc" in values and previous_adcc is not None:
            values["adcc_delta"] = values["adcc"] - previous_adcc
        return Outcome(images, primary, pred, true, values, mean_map, flat, verdict, ranks)

    def _stage(self, name: str, host: Any, work: Callable[[], T]) -> T:
        """``work()`` on every rank, its failures agreed on by all; out of memory on any rank
        halves ``max_batch`` everywhere and runs it again, once per evaluation."""
        strategy = host.strategy
        while True:
            error: BaseException | None = None
            try:
                result = work()
            except Exception as err:  # noqa: BLE001 - a monitor never ends a run
                error = err
            try:
                agree(strategy, error)
                return result
            except Exception:  # noqa: BLE001 - every rank is here: decide together
                pass
            memory = isinstance(error, torch.OutOfMemoryError | PeerFailed)
            all_memory = agree_flag(strategy, memory)
            if not all_memory:
                raise EvaluationSkipped.of(error, name) from error
            self._release_memory()
            if self._lowered is not None or self.max_batch == 1:
                raise EvaluationSkipped(self._out_of_memory(name), _LOWER) from error
            self._lowered = (name, self.max_batch)
            self.max_batch = max(1, self.max_batch // 2)
            self._build()

    def _out_of_memory(self, name: str) -> str:
        if self._lowered is None:
            return f"{name} ran out of memory with max_batch={self.max_batch}"
        stage, before = self._lowered
        if stage == name:
            again = self.max_batch
            return f"{name} ran out of memory with max_batch={before} and again with {again}"
        return (
            f"{name} ran out of memory with max_batch={self.max_batch}, lowered from {before}"
            f" after {stage} ran out of memory with max_batch={before}"
        )

    def _release_memory(self) -> None:
        if self.adcc is not None:
            self.adcc.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _explain(
        self, images: torch.Tensor, labels: torch.Tensor | None, predicted_only: bool = False
    ) -> _Explained:
        """This rank's share explained: (result the signals use, predicted, true class,
        further labels of a multi-label task); ``predicted_only``: the predicted classes
        whatever ``explain`` says (the alarm tests what the model predicts)."""
        cam = self.cam
        if self.task.name == "multilabel":
            ranks = [cam(images, t) for t in self._label_ranks(images, labels)]
            primary, pred, true = ranks[0], ranks[0], None
            rest = ranks[1:]
        elif predicted_only:
            primary = pred = cam(images)
            true, rest = None, []
        else:
            # in "label" mode the predicted maps are only drawn
            pred = cam(images) if self.explain != "label" or self.draw_predicted else None
            true = cam(images, labels) if self.explain != "predicted" else None
            primary = true if self.explain == "label" else pred
            rest = []
        assert primary is not None
        bad = ~torch.isfinite(primary.logits)
        if bool(bad.any()):
            nan = int(torch.isnan(primary.logits).sum())
            raise EvaluationSkipped(
                f"the model's logits on the probe images contain {nan} NaN and"
                f" {int(bad.sum()) - nan} inf values",
                "the model has probably diverged: lower the learning rate, clip gradients or"
                " check the loss",
            )
        return primary, pred, true, rest

    def _label_ranks(self, images: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """Multi-label: the labels explained per probe, ``top_k`` of them: the most probable
        ones (with ``explain="label"``: the true ones first, most probable first)."""
        logits = self.cam.predict(images).float()
        key = logits
        if self.explain == "label" and labels is not None:
            key = logits + labels.float() * (logits.abs().amax() + 1.0) * 2
        order = key.argsort(dim=1, descending=True)
        return list(order[:, : min(self.top_k, order.shape[1])].T)

    def _score_adcc(self, images: torch.Tensor, own: ReciproCAMResult, shard: Any) -> None:
        """ADCC of this rank's own probes; the metric sums its states across ranks."""
        assert self.adcc is not None
        self.adcc.reset()
        if shard.valid:
            mine = slice(0, shard.valid)
            self.adcc.update(images[shard.rows[mine]], result=take(own, mine))

    def _combine(
        self, host: Any, probe: Probes, own: _Explained, previous: torch.Tensor | None
    ) -> tuple[Any, ...]:
        """All ranks' shares gathered, then the map signals and ADCC, the same everywhere."""
        n = len(probe)
        primary, pred, true = (
            None if r is None else gather_result(host.strategy, r, n) for r in own[:3]
        )
        ranks = [gather_result(host.strategy, r, n) for r in own[3]]
        assert primary is not None
        flat = flat_maps(primary.log_odds_range, self.flat_threshold)
        stats, mean_map = probe_signals(primary.maps, probe.masks, previous, ~flat)
        stats["score_range"] = primary.score_range.median().to(mean_map.dtype)
        stats["flat_maps"] = flat.float().mean()
        if self.adcc is not None:
            parts = self.adcc.compute()
            self.adcc.reset()
            stats.update({k: parts[k] for k in ADCC_KEYS})
        return primary, pred, true, ranks, stats, mean_map, flat

    def _alarm_check(
        self,
        host: Any,
        images: torch.Tensor,
        probe: Probes,
        results: list[ReciproCAMResult],
        draw: Callable[[], Probes] | None,
    ) -> Verdict:
        """The alarm on its own probes (explained here, each rank its share) or, without
        them, on the pictures' probes and their explanation."""
        if draw is None:
            return self._check(host, images, probe.masks, results, probe.labels)
        alarm_probe = draw().to(images.device)
        if alarm_probe.labels is not None and self.width is not None:
            # the labels as the task reads them (0/1 floats of a binary head: class indices)
            alarm_probe.labels = self.task.labels(alarm_probe.labels, self.width)
        alarm_images = host.precision_plugin.convert_input(alarm_probe.images)
        n = len(alarm_probe)
        shard = probe_shard(n, host.global_rank, host.world_size, alarm_images.device)
        labels = None if alarm_probe.labels is None else alarm_probe.labels[shard.rows]
        own = self._explain(alarm_images[shard.rows], labels, predicted_only=True)
        gathered = [gather_result(host.strategy, own[0], n)]
        gathered += [gather_result(host.strategy, r, n) for r in own[3]]
        return self._check(host, alarm_images, alarm_probe.masks, gathered, alarm_probe.labels)

    def _check(
        self,
        host: Any,
        images: torch.Tensor,
        masks: torch.Tensor | None,
        results: list[ReciproCAMResult],
        labels: torch.Tensor | None = None,
    ) -> Verdict:
        """The alarm on the explained (probe, class) pairs: one per probe, or for a
        multi-label task every explained label the probe is predicted to have (and its most
        probable one)."""
        assert self.alarm is not None
        cam, primary = self.cam, results[0]
        rows = torch.arange(len(primary.targets), device=images.device)
        targets, maps, flat = primary.targets, primary.maps, self._flat(primary)
        if len(results) > 1:
            scores = cam.score_fn(primary.logits)
            keep = [rows] + [
                rows[scores.gather(1, r.targets[:, None])[:, 0] >= 0.5] for r in results[1:]
            ]
            rows = torch.cat(keep)
            targets = torch.cat([r.targets[k] for r, k in zip(results, keep, strict=True)])
            maps = torch.cat([r.maps[k] for r, k in zip(results, keep, strict=True)])
            flat = torch.cat([self._flat(r)[k] for r, k in zip(results, keep, strict=True)])
        # the copies take the explanation's route (cam.predict), so its unmasked logits are
        # the probes' own scores and save one forward; each rank runs its share of a batch
        forward = chunked(sharded_forward(host.strategy, cam.predict), lambda: self.max_batch)
        return self.alarm.check(
            forward,
            cam.score_fn,
            images[rows],
            [maps],
            targets,
            ~flat,
            logits=primary.logits[rows],
            masks=None if masks is None else masks[rows],
            predicts=self.task.predicts,
            right=None
            if labels is None
            else self.task.right(primary.logits, labels.to(rows.device), rows, targets),
        )

    def _flat(self, result: ReciproCAMResult) -> torch.Tensor:
        return flat_maps(result.log_odds_range, self.flat_threshold)


_LOWER = "lower max_batch or num_images, or explain less often"
