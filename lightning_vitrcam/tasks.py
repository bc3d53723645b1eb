"""The classification task a model was trained for, and what an explanation reads from it.

A :class:`Task` says how logits become the probability of a class (``scores``), the exact
evidence of a class ViT-ReciproCAM compares between copies (``evidence``: the log-odds of that
probability, which never rounds to a constant), which class is explained by default
(``predicted``) and which classes a prediction holds (``predicts``, for the shortcut alarm):

* ``"multiclass"``: a softmax over the logits (cross-entropy), the arg-max explained;
* ``"binary"``: one logit and a sigmoid (binary cross-entropy); the explained "class" is the
  predicted side (0: negative, 1: positive) and its score the probability of that side;
* ``"multilabel"``: one sigmoid per label (binary cross-entropy on multi-hot labels); each
  label is explained on its own probability; predicted are the labels at or above 1/2;
* ``"logit"``: the raw logit (no probability; ADCC cannot be computed).

:func:`infer_task` picks the task from the head's width and the labels, :meth:`Task.labels`
checks the labels against it. How ADCC reads each task: ``docs/shortcut_alarm.md``.

Example:
    >>> import torch
    >>> binary = TASKS["binary"]
    >>> z = torch.tensor([[2.0], [-1.0]])
    >>> binary.predicted(z).tolist(), (100 * binary.scores(z)).round().int().tolist()
    ([1, 0], [[12, 88], [73, 27]])
    >>> binary.evidence(z, binary.predicted(z)).tolist()  # the log-odds of the side explained
    [2.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

__all__ = ["SCORE_TASKS", "TASKS", "Task", "explained_names", "infer_task", "task_for"]


def _exact(logits: torch.Tensor) -> torch.Tensor:
    # MPS has no float64; everywhere else the copies' evidence is kept in float64
    return logits.to(torch.float32 if logits.device.type == "mps" else torch.float64)


def _float(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class Task:
    """One kind of classification head (subclass, and add it to :data:`TASKS`)."""

    name: ClassVar[str] = ""
    #: scores are probabilities (average drop and the min-max of maps assume so)
    probabilistic: ClassVar[bool] = True

    def num_classes(self, width: int) -> int:
        """The classes an explanation can target for a head of ``width`` logits."""
        return width

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, num_classes]`` score of each class (float32 or the logits' precision)."""
        raise NotImplementedError

    def evidence(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``[B]`` float64 evidence of each row's target: the log-odds of its probability."""
        raise NotImplementedError

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B]`` the class explained by default."""
        return logits.argmax(dim=1)

    def predicts(self, scores: torch.Tensor) -> torch.Tensor:
        """``[B, num_classes]`` bool: the classes each row is predicted as."""
        return F.one_hot(scores.argmax(dim=1), scores.shape[1]).bool()

    def default_names(self) -> list[str] | None:
        return None

    def explained(self, top_k: int, width: int) -> str:
        """What an explanation of this task explains by default, in words."""
        return "the predicted class"

    def right(
        self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """``(right, chance)``: for each checked pair (probe ``rows[k]``, explained class
        ``targets[k]``) whether the model's prediction of that probe agrees with its label
        (``labels`` as :meth:`labels` reads them), and the share of the probes the best
        constant guess (the most frequent label) gets right."""
        right = self.predicted(logits)[rows] == labels[rows]
        chance = float(torch.bincount(labels).max()) / max(1, len(labels))
        return right, chance

    def labels(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        """The labels as this task reads them (class indices ``[N]``, or multi-hot ``[N, K]``
        for multi-label); a ``ValueError`` saying what is wrong when they do not fit."""
        if labels.dim() == 2:
            labels = labels.argmax(dim=1)
        if labels.is_floating_point():
            if not bool((labels == labels.round()).all()):
                raise ValueError(
                    f"task={self.name!r} needs class indices as labels, got fractional values"
                    f" {labels.tolist()[:8]}"
                )
            labels = labels.long()
        classes = self.num_classes(width)
        if bool(((labels < 0) | (labels >= classes)).any()):
            raise ValueError(
                f"the probe labels {labels.tolist()} are not class indices in [0, {classes})"
                f" of the {self.name} task of a {width}-logit head"
            )
        return labels.long()


class Multiclass(Task):
    name = "multiclass"

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return _float(logits).softmax(dim=-1)

    def evidence(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # log(p / (1 - p)) of the softmax: z_t - logsumexp of the other logits
        z = _exact(logits)
        target = z.gather(1, targets[:, None]).squeeze(1)
        others = z.scatter(1, targets[:, None], float("-inf"))
        return target - others.logsumexp(dim=1)


class Logit(Multiclass):
    name = "logit"
    probabilistic = False

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return _float(logits)

    def evidence(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _exact(logits).gather(1, targets[:, None]).squeeze(1)


class Binary(Task):
    name = "binary"

    def num_classes(self, width: int) -> int:
        return 2

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        p = _float(logits[:, :1]).sigmoid()
        return torch.cat([1.0 - p, p], dim=1)

    def evidence(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # the log-odds of the positive side is the logit itself; of the negative side, minus it
        z = _exact(logits[:, 0])
        return torch.where(targets == 1, z, -z)

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 0] > 0).long()

    def default_names(self) -> list[str] | None:
        return ["negative", "positive"]

    def explained(self, top_k: int, width: int) -> str:
        return "the predicted side"

    def labels(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        if labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.dim() == 2:
            raise ValueError(
                f"task='binary' needs one label per image (0/1), got labels of shape"
                f" {tuple(labels.shape)}; multi-hot labels mean task='multilabel'"
            )
        values = sorted(set(labels.float().tolist()))
        if not set(values) <= {0.0, 1.0}:
            raise ValueError(
                f"a 1-logit head (task='binary') needs labels 0 or 1, got {values}: for class"
                " indices above 1 the model needs one logit per class (task='multiclass')"
            )
        return labels.long()


class Multilabel(Task):
    name = "multilabel"

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return _float(logits).sigmoid()

    def evidence(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _exact(logits).gather(1, targets[:, None]).squeeze(1)

    def predicts(self, scores: torch.Tensor) -> torch.Tensor:
        return scores >= 0.5

    def explained(self, top_k: int, width: int) -> str:
        return f"the {min(top_k, width)} most probable labels of each probe"

    def right(
        self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        # the checked pairs are predicted labels: right where the probe has that label; the
        # best constant guess names the most frequent label
        return labels[rows, targets].bool(), float(labels.float().mean(dim=0).max())

    def labels(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        if labels.dim() == 1:  # class indices (one label each): one-hot
            labels = F.one_hot(labels.long().clamp(0, width - 1), width)
        if labels.dim() != 2 or labels.shape[1] != width:
            raise ValueError(
                f"task='multilabel' needs multi-hot labels [N, {width}] (one column per logit),"
                f" got {tuple(labels.shape)}"
            )
        values = set(labels.float().unique().tolist())
        if not values <= {0.0, 1.0}:
            raise ValueError(f"multi-hot labels must be 0 or 1, got {sorted(values)[:8]}")
        return labels.bool()


#: the tasks by name
TASKS: dict[str, Task] = {t.name: t for t in (Multiclass(), Binary(), Multilabel(), Logit())}
#: the explainer's ``score=`` names and the task each one means
SCORE_TASKS: dict[str, str] = {"softmax": "multiclass", "sigmoid": "multilabel", "logit": "logit"}


def task_for(name: str | Task) -> Task:
    """The task of a name (or a :class:`Task` itself)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def infer_task(requested: str, width: int, labels: torch.Tensor | None) -> tuple[Task, str]:
    """``(task, why)``: the requested task checked against the head, or (``"auto"``) the one
    the head's width and the labels say: one logit is binary; multi-hot labels (some image
    with another number of positives than one) are multi-label; anything else multiclass.

    Example:
        >>> infer_task("auto", 1, None)[0].name, infer_task("auto", 4, None)[0].name
        ('binary', 'multiclass')
        >>> infer_task("auto", 3, torch.tensor([[1, 1, 0], [0, 1, 0]]))[0].name
        'multilabel'
    """
    if requested != "auto":
        task = task_for(requested)
        if task.name == "binary" and width != 1:
            raise ValueError(
                f"task='binary' needs a head with one logit, but the model has {width}: use"
                f" task='multiclass' (a softmax over {width} classes) or task='multilabel'"
            )
        if task.name != "binary" and width == 1:
            raise ValueError(
                f"a head with one logit cannot be task={task.name!r} (a softmax over one logit"
                " is 1.0 for every copy, so every map would be empty): use task='binary'"
            )
        return task, f"task={task.name!r} as set"
    if width == 1:
        return TASKS["binary"], "a head with one logit"
    if labels is not None and labels.dim() == 2 and labels.shape[1] == width:
        positives = labels.float().sum(dim=1)
        multi_hot = bool(((labels == 0) | (labels == 1)).all()) and bool((positives != 1).any())
        if multi_hot:
            return TASKS["multilabel"], "multi-hot labels"
    return TASKS["multiclass"], f"a head with {width} logits and class-index labels"


def explained_names(task: Task, class_names: Sequence[str] | None, width: int) -> list[str] | None:
    """The names of the classes an explanation targets: ``class_names`` (for a binary head one
    name is the positive class), else the task's own (binary: negative, positive)."""
    if class_names is None:
        return task.default_names()
    names = [str(c) for c in class_names]
    if task.name == "binary" and len(names) == 1:
        return [f"not {names[0]}", names[0]]
    expected = task.num_classes(width)
    if len(names) != expected:
        raise ValueError(
            f"class_names has {len(names)} names but the model predicts {expected} classes"
            f" (the {task.name} task of a {width}-logit head)"
        )
    return names
