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


def _rows(values: Any, n: int | None, what: str) -> list[Any]:
    """One entry per image: a scalar, or a list for ``[N, k]`` tensors (several labels)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = values.tolist() if values.dim() > 1 else values.reshape(-1).tolist()
    values = list(values)
    if n is not None and len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} images")
    return values


def caption_parts(
    preds: Any, probs: Any, labels: Any, class_names: Any, notes: Any = None
) -> list[tuple[str, str | None, bool]]:
    """``(prediction, truth, mismatch)`` per image. ``preds``/``probs`` are ``[N]``, or
    ``[N, k]`` for several explained labels each; ``labels`` are ``[N]`` class indices or
    ``[N, K]`` multi-hot (a multi-label image is a mismatch when its first label is not
    among its true ones)."""
    p = _rows(preds, None, "preds")
    n = len(p)
    q = _rows(probs, n, "probs")
    y = _rows(labels, n, "labels") if labels is not None else [None] * n
    extra = _rows(notes, n, "notes") if notes is not None else [None] * n
    rows = []
    for pi, qi, yi, note in zip(p, q, y, extra, strict=True):
        ps, qs = (pi, qi) if isinstance(pi, list) else ([pi], [qi])
        pred = "pred: " + ", ".join(
            f"{class_name(int(c), class_names)} ({float(v):.2f})"
            for c, v in zip(ps, qs, strict=True)
        )
        pred = f"{pred}, {note}" if note else pred
        if yi is None:
            rows.append((pred, None, False))
        elif isinstance(yi, list):  # multi-hot
            true = [c for c, on in enumerate(yi) if on]
            names = ", ".join(class_name(c, class_names) for c in true) or "none"
            rows.append((pred, f"true: {names}", int(ps[0]) not in true))
        else:
            rows.append((pred, f"true: {class_name(int(yi), class_names)}", int(yi) != int(ps[0])))
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
