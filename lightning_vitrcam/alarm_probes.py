"""The shortcut alarm's own probes: validation images stratified by label, rotated over checks.

The pictures keep their fixed probes; the alarm needs others. Its tests compare probes of one
class with probes of others, so each check takes ``per_class`` or more images of each class
it tests: with 16 probes over 10 classes most classes would have one probe and no test. A
check tests ``size // per_class`` classes; the classes rotate over the checks in a seeded
order (every class of the pool is tested within :attr:`AlarmProbes.cover` checks), a class
the alarm has just found something on is tested again at the next check (``focus``), and the
images of a class rotate too, so that a finding is re-tested on fresh images.

Labels come from the dataset's own metadata where it has it (``targets``, ``labels``, a
``TensorDataset``'s second tensor, a ``Subset`` of those): then every image of the validation
set is in the pool and only the chosen ones are read. Otherwise ``pool`` images, drawn with a
seeded generator, are read once for their labels (an iterable dataset: its first ``pool``
images, kept). Without labels the checks take the pool's images in a seeded rotation.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.randn(40, 3, 8, 8), torch.arange(40) % 10)
    >>> probes = AlarmProbes(DataLoader(data, batch_size=8), size=8, per_class=4)
    >>> first = probes.draw()
    >>> len(first), sorted(set(first.labels.tolist())) != sorted(set(probes.draw().labels.tolist()))
    (8, True)
    >>> probes.cover
    5
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import IterableDataset, Subset, TensorDataset

from lightning_vitrcam.probes import Probes, read_first, read_items

__all__ = ["AlarmProbes", "dataset_labels"]


def _as_labels(values: Any, n: int) -> torch.Tensor | None:
    """``[n]`` long class indices from label metadata, or None where it is not that."""
    try:
        t = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        return None
    if t.dim() == 2 and t.shape[0] == n and t.shape[1] > 1:  # one-hot or multi-hot rows
        t = t.float().argmax(dim=1)
    if t.dim() != 1 or t.shape[0] != n or t.is_complex():
        return None
    if t.is_floating_point() and not bool((t == t.round()).all()):
        return None
    return t.long()


def dataset_labels(dataset: Any) -> torch.Tensor | None:
    """The class index of every item of ``dataset`` from its metadata, without reading its
    images (``targets`` and ``labels`` attributes, a ``TensorDataset``'s second tensor, a
    ``Subset`` of those); None when it has none.

    Example:
        >>> data = TensorDataset(torch.zeros(4, 1), torch.tensor([2, 0, 1, 2]))
        >>> dataset_labels(Subset(data, [3, 1])).tolist()
        [2, 0]
    """
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(dataset.indices)]
    try:
        n = len(dataset)
    except TypeError:
        return None
    if isinstance(dataset, TensorDataset):
        return _as_labels(dataset.tensors[1], n) if len(dataset.tensors) > 1 else None
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None and not callable(values):
            found = _as_labels(values, n)
            if found is not None:
                return found
    return None


class AlarmProbes:
    """The alarm's probes of one validation loader (see the module docstring).

    Args:
        loader: the validation loader the probes come from.
        size: probes per check.
        per_class: fewest probes of each class a check tests (the classes tested per check:
            ``size // per_class``).
        seed: seed of the pool and of the rotations.
        pool: images read for their labels when the dataset has no label metadata.
        reader: the callback's ``batch_reader``.
    """

    @isolate_rng()
    def __init__(
        self,
        loader: Any,
        size: int = 32,
        per_class: int = 4,
        seed: int = 0,
        pool: int = 256,
        reader: Callable[[Any], Any] | None = None,
    ) -> None:
        if size < 1 or per_class < 1 or pool < 1:
            raise ValueError(
                f"size, per_class and pool must be positive, got {size}, {per_class}, {pool}"
            )
        self.size, self.per_class, self.seed = size, per_class, seed
        self._loader, self._reader = loader, reader
        self._kept: Probes | None = None  # an iterable dataset's images, read once
        dataset = getattr(loader, "dataset", None)
        indexable = (
            dataset is not None
            and not isinstance(dataset, IterableDataset)
            and hasattr(dataset, "__len__")
            and getattr(loader, "batch_sampler", None) is not None
        )
        g = torch.Generator().manual_seed(seed + 7919)
        if indexable:
            labels = dataset_labels(dataset)
            if labels is not None:
                self.indices = torch.arange(len(labels))
            else:
                self.indices = torch.randperm(len(dataset), generator=g)[:pool].sort().values
                labels = self._read(self.indices).labels
        else:
            self._kept = read_first(self._loader, pool, self._reader)
            self.indices = torch.arange(len(self._kept))
            labels = self._kept.labels
        if not len(self.indices):
            raise ValueError("the validation dataset is empty")
        self.labels = None if labels is None else _as_labels(labels, len(self.indices))
        self._order = torch.randperm(len(self.indices), generator=g)
        self.checks = 0
        if self.labels is not None:
            present = self.labels.unique()
            self.classes = present[torch.randperm(len(present), generator=g)].tolist()
            self._members = {
                c: (self.labels == c)
                .nonzero()
                .flatten()[torch.randperm(int((self.labels == c).sum()), generator=g)]
                for c in self.classes
            }
        else:
            self.classes, self._members = [], {}

    @property
    def classes_per_check(self) -> int:
        """How many classes one check tests."""
        return max(1, min(len(self.classes), self.size // self.per_class))

    @property
    def cover(self) -> int:
        """Checks it takes to test every class of the pool once (1 without labels)."""
        return max(1, math.ceil(len(self.classes) / self.classes_per_check))

    @isolate_rng()  # a dataset's random transforms must not move the run's RNG
    def draw(self, focus: Sequence[int] = ()) -> Probes:
        """The next check's probes: the ``focus`` classes (those with a finding at the last
        check) first, then the next classes of the rotation; ``size // classes`` images of
        each, the next ones of the class's own rotation, on the CPU."""
        check, self.checks = self.checks, self.checks + 1
        if self.labels is None:
            n = len(self._order)
            rows = self._order[(torch.arange(self.size) + check * self.size) % n].unique()
            return self._probes(rows)
        k = self.classes_per_check
        chosen = [c for c in dict.fromkeys(int(f) for f in focus) if c in self._members][:k]
        start = (check * k) % len(self.classes)
        for c in self.classes[start:] + self.classes[:start]:
            if len(chosen) == k:
                break
            if c not in chosen:
                chosen.append(c)
        per = max(1, self.size // len(chosen))
        rows: list[int] = []
        for c in chosen:
            members = self._members[c]
            take = min(per, len(members))
            offset = (check * take) % len(members)
            rows += members[(torch.arange(take) + offset) % len(members)].tolist()
        # slots a small class left free go to the chosen classes' next images
        spare = [
            int(m) for c in chosen for m in self._members[c].tolist() if int(m) not in set(rows)
        ]
        rows += spare[: max(0, self.size - len(rows))]
        return self._probes(torch.tensor(rows, dtype=torch.long))

    def _probes(self, rows: torch.Tensor) -> Probes:
        if self._kept is not None:
            k = self._kept
            pick = lambda t: None if t is None else t[rows]
            return Probes(k.images[rows], pick(k.labels), pick(k.masks), None)
        return self._read(self.indices[rows])

    def _read(self, indices: torch.Tensor) -> Probes:
        return read_items(self._loader, indices.tolist(), self._reader)

    def state_dict(self) -> dict[str, Any]:
        return {"checks": self.checks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.checks = int(state.get("checks", 0))
