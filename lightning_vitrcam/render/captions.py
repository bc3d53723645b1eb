"""Captions: what each probe row says (prediction, probability, true class, notes).

Example:
    >>> import torch
    >>> row_captions(torch.tensor([1]), torch.tensor([0.9]), torch.tensor([0]), ["cat", "dog"])
    ['pred: dog (0.90) | true: cat ✗ MISMATCH']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["caption_parts", "class_name", "row_captions"]


def class_name(index: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if class_names is not None:
        try:
            return str(class_names[index])
        except (IndexError, KeyError):
            pass
    return str(index)


def _as_list(values: Any, n: int, what: str) -> list[Any]:
    if isinstance(values, torch.Tensor):
        values = values.detach().reshape(-1).cpu().tolist()
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} images")
    return values


def caption_parts(
    preds: Any, probs: Any, labels: Any, class_names: Any, notes: Any = None
) -> list[tuple[str, str | None, bool]]:
    p = (
        preds.detach().reshape(-1).cpu().tolist()
        if isinstance(preds, torch.Tensor)
        else list(preds)
    )
    n = len(p)
    q = _as_list(probs, n, "probs")
    y = _as_list(labels, n, "labels") if labels is not None else [None] * n
    extra = _as_list(notes, n, "notes") if notes is not None else [None] * n
    rows = []
    for pi, qi, yi, note in zip(p, q, y, extra, strict=True):
        pred = f"pred: {class_name(int(pi), class_names)} ({float(qi):.2f})"
        pred = f"{pred}, {note}" if note else pred
        true = None if yi is None else f"true: {class_name(int(yi), class_names)}"
        rows.append((pred, true, yi is not None and int(yi) != int(pi)))
    return rows


def row_captions(
    preds: Any,
    probs: Any,
    labels: Any = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    notes: Sequence[str | None] | None = None,
) -> list[str]:
    """One caption per image, e.g. ``"pred: cat (0.93) | true: dog ✗ MISMATCH"``; ``notes``
    (one per image, or None) follow the prediction, e.g. ``"pred: cat (0.93), flat map"``.

    Example:
        >>> row_captions(torch.tensor([1, 0]), torch.tensor([0.9, 0.5]), torch.tensor([1, 1]),
        ...              ["cat", "dog"])
        ['pred: dog (0.90) | true: dog', 'pred: cat (0.50) | true: dog ✗ MISMATCH']
    """
    out = []
    for pred, true, wrong in caption_parts(preds, probs, labels, class_names, notes):
        text = pred if true is None else f"{pred} | {true}"
        out.append(text + (" ✗ MISMATCH" if wrong else ""))
    return out
