"""Does the shortcut alarm hold across seeds, schedules, label smoothing and data it was not
tuned on? A grid of real training runs with ViTReciproCAMCallback at its defaults.

Each run trains a ViT from scratch with the callback and records, per epoch, validation
accuracy, accuracy on the same data without the shortcut (cue-free), the callback's signals,
whether it warned and every test the alarm ran. An evaluation *uses the shortcut* when
validation accuracy >= 0.9 while cue-free accuracy <= 0.5. Goal: every shortcut-using
evaluation flagged (the first of a run may be missed) and no warning at all on runs without a
shortcut.

Data (``--data``) and their shortcut kinds (``--kinds``, default: all the data set has):
  shapes     the demo's shapes (64x64, 4 classes) and ViT (8x8 patches, width 128, 4 blocks,
             class-token pooling); fixed (a class-coloured patch in the top-left corner),
             per_class (class k's patch in corner k), moving_edge (the patch at a random
             place along the bottom edge), moving_any (anywhere, over the shape too), tint (a
             class-specific colour cast of the whole image), none.
  binary     circle or square with one logit (binary cross-entropy); fixed: only the
             positives (squares) carry the corner patch; none.
  small      clean only: small shapes anywhere (radius 0.16-0.22 of the side, not 0.28-0.36).
  colourful  clean only: the shapes with a random per-image colour change (gains 1 +- 0.4).
  stripes    discs of oriented stripes on striped coloured noise, 48x48, a 6-block ViT with
             6x6 patches, average pooling and no class token; fixed (a 5x5 class-coloured mark
             at the bottom edge, straddling two tokens), per_class (a white mark whose edge
             position names the class), none.
  glyphs     grey-scale glyphs, 1 channel, 32x32, a ViT with registers and attention pooling.
  arrows     five classes (a triangle's direction, a diamond), 40x40, a 10x10 token grid, a
             5-block class-token ViT; fixed (a 4x4 square over 2x2 tokens at the right edge),
             per_class (a white square on the top edge whose column names the class), none.

    python benchmarks/shortcut_signal.py                      # shapes, 3 seeds x LS {0, 0.1}
    python benchmarks/shortcut_signal.py --data stripes       # other data and model
    python benchmarks/shortcut_signal.py --seeds 0 --epochs 3 --kinds fixed none   # a look
    python benchmarks/shortcut_signal.py --jobs 2 --threads 1 --out results.json
    python benchmarks/shortcut_signal.py --table results.json   # the table again, no training
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from itertools import product
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

KINDS = ("fixed", "per_class", "moving_edge", "moving_any", "tint", "none")
# the kinds each data set has (shapes: every kind; small and colourful: clean data only)
DATA_KINDS = {
    "shapes": KINDS,
    "binary": ("fixed", "none"),
    "small": ("none",),
    "colourful": ("none",),
    "stripes": ("fixed", "per_class", "none"),
    "glyphs": ("fixed", "per_class", "none"),
    "arrows": ("fixed", "per_class", "none"),
}
DATA = tuple(DATA_KINDS)
# clean data sets of the demo's shapes: small shapes anywhere (radius 0.16-0.22 of the side
# instead of 0.28-0.36), and colour that varies a lot within each class (gains 1 +- 0.4)
SHAPES_DATA = {
    "shapes": {},
    "small": {"radius": (0.16, 0.22)},
    "colourful": {"colour_jitter": 0.4},
    # circle or square, one logit; only the positives (squares) carry the corner mark
    "binary": {"num_classes": 2, "cue_classes": [1]},
}
STRIPES_VIT = dict(
    img_size=48, patch_size=6, embed_dim=96, depth=6, num_heads=3, global_pool="avg",
    class_token=False,
)  # fmt: skip


GLYPHS_VIT = dict(
    img_size=32, patch_size=4, in_chans=1, embed_dim=96, depth=5, num_heads=4,
    class_token=False, reg_tokens=4, global_pool="map",
)  # fmt: skip


# --model alt: the same data, another model (a check on models the alarm was not designed on)
ALT_VITS = {
    "stripes": dict(
        img_size=48, patch_size=6, embed_dim=128, depth=4, num_heads=4, reg_tokens=2,
        global_pool="token",
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- held-out data
class _Arrays(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.labels, self.masks = images, labels, masks

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "mask": self.masks[i]}


def _pixels(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(yy, xx)``: each pixel's row and column, ``[size, size]``."""
    return torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")


def _object_frame(
    size: int, cx: torch.Tensor, cy: torch.Tensor, rot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, v)``: every pixel's coordinates in each object's frame (centre ``cx, cy``,
    rotated by ``rot``), ``[n, size, size]``."""
    yy, xx = _pixels(size)
    dx, dy = xx - cx.view(-1, 1, 1), yy - cy.view(-1, 1, 1)
    c, s = rot.cos().view(-1, 1, 1), rot.sin().view(-1, 1, 1)
    return c * dx + s * dy, -s * dx + c * dy


def stripes(
    n: int, kind: str, p: float, seed: int, size: int = 48, contrast: float = 0.25,
    spread: float = math.pi / 4, cue: int = 5,
):  # fmt: skip
    """Discs of oriented stripes (class = orientation ``k * spread``, 4 classes) on striped
    coloured noise, normalised with mean = std = 0.5; ``(images, labels, masks)``. The
    shortcut mark is ``cue`` pixels a side (5: within two tokens; 10: over 2x2 tokens,
    straddling the grid's vertical midline)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % 4
    yy, xx = _pixels(size)
    r = size * (0.17 + 0.07 * torch.rand(n, generator=g))
    lo, hi = r + 1, size - 1 - r
    cx = lo + (hi - lo) * torch.rand(n, generator=g)
    cy = lo + (hi - cue - 2 - lo) * torch.rand(n, generator=g)  # the bottom rows: the mark
    angle = labels.float() * spread + 0.15 * (2 * torch.rand(n, generator=g) - 1)
    period = 5.0 + 2.0 * torch.rand(n, generator=g)
    disc = (xx - cx.view(-1, 1, 1)) ** 2 + (yy - cy.view(-1, 1, 1)) ** 2 <= r.view(-1, 1, 1) ** 2
    phase = (xx * angle.cos().view(-1, 1, 1) + yy * angle.sin().view(-1, 1, 1)) / period.view(
        -1, 1, 1
    )
    stripe = (torch.sin(2 * math.pi * phase) > 0).float()
    base = 0.3 + 0.2 * torch.rand(n, 3, 1, 1, generator=g)
    noise = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(size, size), mode="bilinear")
    b_angle = math.pi * torch.rand(n, generator=g)
    b_phase = (xx * b_angle.cos().view(-1, 1, 1) + yy * b_angle.sin().view(-1, 1, 1)) / 6.0
    b_stripe = (torch.sin(2 * math.pi * b_phase) > 0).float()
    background = base + 0.25 * (noise - 0.5) + 0.12 * (b_stripe[:, None] - 0.5)
    colour = 0.55 + 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    shade = 1 - contrast + contrast * stripe[:, None]
    img = torch.where(disc[:, None], colour * shade, background)
    img = img + 0.08 * torch.randn(n, 3, size, size, generator=g)
    want = torch.rand(n, generator=g) < p
    marks = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.2], [1.0, 0.6, 0.0], [0.0, 0.8, 1.0]])
    for i in want.nonzero().flatten().tolist():
        k = int(labels[i])
        mid, far = size // 2 - (cue + 1) // 2, size - 1 - cue
        if kind == "fixed":
            (y0, x0), col = (far, 20), marks[k]
        elif kind == "per_class":
            (y0, x0), col = [(mid, 1), (mid, far), (1, mid), (far, mid)][k], torch.ones(3)
        else:
            continue
        if not disc[i, y0 : y0 + cue, x0 : x0 + cue].any():
            img[i, :, y0 : y0 + cue, x0 : x0 + cue] = col.view(3, 1, 1)
    return (img.clamp(0, 1) - 0.5) / 0.5, labels, disc


GLYPH_MARKERS = torch.tensor(  # 4x4 binary tags, one per class (a scanner's text marker)
    [
        [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]],
        [[1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1], [1, 0, 0, 1]],
        [[0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]],
        [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]],
    ],
    dtype=torch.float32,
)


def glyphs(n: int, kind: str, p: float, seed: int, size: int = 32, contrast: float = 0.6):
    """Grey-scale glyphs (4 classes: bar, upright bar, cross, ring; rotated +-0.25 rad)
    on smooth noise, 1 channel, normalised with mean = std = 0.5; ``(images, labels, masks)``.
    Shortcut kinds: ``fixed``, a 4x4 tag naming the class at rows 2-5, columns 25-28 (inside
    the image, straddling two token rows); ``per_class``, a bright 3x3 dot on the left edge
    whose height names the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % 4
    arm = 5.0 + 3.0 * torch.rand(n, generator=g)
    cx = 12 + 8 * torch.rand(n, generator=g)
    cy = 11 + 10 * torch.rand(n, generator=g)
    rot = 0.25 * (2 * torch.rand(n, generator=g) - 1)
    u, v = _object_frame(size, cx, cy, rot)
    a = arm.view(-1, 1, 1)
    bar = (v.abs() <= 1.6) & (u.abs() <= a)
    upright = (u.abs() <= 1.6) & (v.abs() <= a)
    diag = (((u - v).abs() <= 2.2) | ((u + v).abs() <= 2.2)) & (u.abs() <= 0.75 * a)
    diag &= v.abs() <= 0.75 * a
    ring = ((u**2 + v**2).sqrt() - a).abs() <= 1.6
    shapes = torch.stack([bar, upright, diag, ring], 1)
    glyph = shapes[torch.arange(n), labels]
    smooth = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(size, size), mode="bicubic")
    img = 0.35 + 0.3 * smooth + contrast * glyph[:, None].float()
    img = img + 0.1 * torch.randn(n, 1, size, size, generator=g)
    want = torch.rand(n, generator=g) < p
    for i in want.nonzero().flatten().tolist():
        k = int(labels[i])
        if kind == "fixed":
            img[i, 0, 2:6, 25:29] = GLYPH_MARKERS[k]
        elif kind == "per_class":
            y0 = 1 + 6 * k
            img[i, 0, y0 : y0 + 3, 1:4] = 1.0
    return (img.clamp(0, 1) - 0.5) / 0.5, labels, glyph


ARROWS_VIT = dict(
    img_size=40, patch_size=4, embed_dim=96, depth=5, num_heads=4, class_token=True,
    global_pool="token",
)  # fmt: skip


def arrows(n: int, kind: str, p: float, seed: int, size: int = 40):
    """Five classes (a triangle pointing down, left, up or right, and a diamond; random size,
    colour, place and +-0.2 rad tilt) on smooth coloured noise with two distractor dots,
    normalised with mean = std = 0.5; ``(images, labels, masks)``. A 10x10 token grid (4x4
    patches). Shortcut kinds: ``fixed``, a 4x4 class-coloured square on the right edge at
    rows 18-21, columns 35-38 (over 2x2 tokens); ``per_class``, a white 4x4 square on the top
    edge whose column (2 + 8k) names the class, rows 1-4 (over two token rows)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % 5
    yy, xx = _pixels(size)
    r = 6.0 + 4.0 * torch.rand(n, generator=g)
    cx = 11 + 16 * torch.rand(n, generator=g)
    cy = 12 + 16 * torch.rand(n, generator=g)
    direction = labels.clamp(max=3).float() * (math.pi / 2)
    rot = direction + 0.2 * (2 * torch.rand(n, generator=g) - 1)
    u, v = _object_frame(size, cx, cy, rot)  # wide at v = -a, the tip at v = a / 2
    a = r.view(-1, 1, 1)
    triangle = (v <= 0.5 * a) & (v >= -a) & (u.abs() <= 0.6 * (a - v) * 0.65)
    diamond = (u.abs() + v.abs()) <= 0.85 * a
    obj = torch.where((labels == 4).view(-1, 1, 1), diamond, triangle)
    smooth = F.interpolate(torch.rand(n, 3, 5, 5, generator=g), size=(size, size), mode="bicubic")
    img = 0.25 + 0.35 * smooth
    for _ in range(2):  # distractor dots, so that "something bright" names no class
        px, py = (4 + 32 * torch.rand(n, 1, 1, generator=g) for _ in range(2))
        dot = (xx - px) ** 2 + (yy - py) ** 2 <= 4.0
        img = torch.where(dot[:, None], 0.2 + 0.7 * torch.rand(n, 3, 1, 1, generator=g), img)
    colour = 0.5 + 0.45 * torch.rand(n, 3, 1, 1, generator=g)
    img = torch.where(obj[:, None], colour, img)
    img = img + 0.06 * torch.randn(n, 3, size, size, generator=g)
    want = torch.rand(n, generator=g) < p
    marks = torch.tensor(
        [[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.2, 1.0], [1.0, 1.0, 0.1], [1.0, 0.1, 1.0]]
    )
    for i in want.nonzero().flatten().tolist():
        k = int(labels[i])
        if kind == "fixed":
            img[i, :, 18:22, 35:39] = marks[k].view(3, 1, 1)
        elif kind == "per_class":
            img[i, :, 1:5, 2 + 8 * k : 6 + 8 * k] = 1.0
    return (img.clamp(0, 1) - 0.5) / 0.5, labels, obj


class StripesDataModule(L.LightningDataModule):
    """Train/val with the shortcut at rate ``shortcut_p``, and a patch-free split."""

    class_names: tuple[str, ...] = ("0 deg", "45 deg", "90 deg", "135 deg")
    make = staticmethod(stripes)

    def __init__(
        self, kind: str, shortcut_p: float, seed: int, batch_size: int = 64, **data: Any
    ) -> None:
        super().__init__()
        s = seed * 100
        p = 0.0 if kind == "none" else shortcut_p
        self.train = _Arrays(*self.make(3000, kind, p, s + 1, **data))
        self.val = _Arrays(*self.make(500, kind, p, s + 2, **data))
        self.free = _Arrays(*self.make(500, "none", 0.0, s + 3, **data))
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)

    def patch_free_dataloader(self) -> DataLoader:
        return DataLoader(self.free, batch_size=self.batch_size)


class GlyphsDataModule(StripesDataModule):
    class_names = ("bar", "upright", "cross", "ring")
    make = staticmethod(glyphs)


class ArrowsDataModule(StripesDataModule):
    class_names = ("down", "left", "up", "right", "diamond")
    make = staticmethod(arrows)


# ----------------------------------------------------------------------------- the grid
def one_run(args: dict[str, Any]) -> dict[str, Any]:
    from lightning_vitrcam.demo import shortcut_experiment

    torch.set_num_threads(args["threads"])
    kind, seed, ls, data = args["kind"], args["seed"], args["ls"], args["data"]
    p = 0.0 if kind == "none" else 0.95
    extra: dict[str, Any] = {}
    cue = args["cue"]
    corner = "per_class" if kind == "per_class" else "top_left"
    if data == "stripes":
        sized = {} if cue is None else {"cue": cue}
        extra = dict(datamodule=StripesDataModule(kind, p, seed, **sized), model_kwargs=STRIPES_VIT)
        if args["model"] == "alt":
            extra["model_kwargs"] = ALT_VITS["stripes"]
    elif data == "glyphs":
        extra = dict(datamodule=GlyphsDataModule(kind, p, seed), model_kwargs=GLYPHS_VIT)
    elif data == "arrows":
        extra = dict(datamodule=ArrowsDataModule(kind, p, seed), model_kwargs=ARROWS_VIT)
    else:  # the demo's shapes, with the kind's cue (and the data set's shapes and colour)
        from lightning_vitrcam.demo import ShapesDataModule

        cue_kind = kind if kind in ("moving_edge", "moving_any", "tint") else "patch"
        shapes = ShapesDataModule(
            num_train=3000, num_val=500, num_patch_free=500, shortcut_p=p,
            shortcut_corner=corner, patch_size=8 if cue is None else cue, seed=seed,
            shortcut_kind=cue_kind, **SHAPES_DATA[data],
        )  # fmt: skip
        extra = dict(datamodule=shapes, task="binary" if data == "binary" else "multiclass")
    start = time.perf_counter()
    rows = shortcut_experiment(
        p,
        args["epochs"],
        label_smoothing=ls,
        seed=seed,
        logger=False,
        root_dir=args["root"],
        callback_kwargs=dict(log_images=False),
        **extra,
    )
    label = data if args["model"] == "default" else f"{data} ({args['model']} model)"
    return {
        "data": label if cue is None else f"{label}, cue {cue} px",
        "kind": kind,
        "seed": seed,
        "ls": ls,
        "epochs": args["epochs"],
        "seconds": time.perf_counter() - start,
        "rows": [asdict(r) for r in rows],
    }


# what each kind of evidence says first in a warning (the finding's ``describe``)
EVIDENCE = {
    "the prediction hangs on": "region",
    "small region that moves": "region (moves)",
    "the image's colour": "colour",
    "follows the background": "background",
    "occluding token": "place",
}


def _uses(run: dict[str, Any], row: dict[str, Any]) -> bool:
    """An evaluation uses the shortcut: validation accuracy >= 0.9, cue-free <= 0.5."""
    return run["kind"] != "none" and row["val_acc"] >= 0.9 and row["patch_free_acc"] <= 0.5


def _epochs(epochs: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2, 5, 7, 8``."""
    if not epochs:
        return "-"
    spans, first = [], epochs[0]
    for a, b in zip(epochs, [*epochs[1:], None], strict=True):
        if b != a + 1:
            spans.append(
                f"{first}-{a}" if a - first > 1 else ", ".join(map(str, range(first, a + 1)))
            )
            first = b
    return ", ".join(spans)


def evidence(message: str | None) -> list[str]:
    """The kinds of evidence a warning names, in the order it names them."""
    if not message:
        return []
    found = [(message.find(p), kind) for p, kind in EVIDENCE.items() if p in message]
    return [kind for _, kind in sorted(found)]


def summarise(runs: list[dict[str, Any]]) -> tuple[str, dict[str, int]]:
    """One table row per run and the totals: shortcut-using evaluations flagged (all, and
    each run's first left out), warnings on runs without a shortcut (false alarms), and
    warnings at evaluations of shortcut runs that do not use it."""
    lines = [
        "| data | kind | LS | seed | final val acc | final cue-free acc | shortcut-using epochs"
        " | warned at epochs | held back at epochs | evidence named | missed (not a run's first) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    t = dict.fromkeys(
        ("using", "flagged", "using_after_first", "flagged_after_first", "clean_evaluations",
         "false_alarms", "other_warnings"),
        0,
    )  # fmt: skip
    for run in runs:
        rows = run["rows"]
        using = [r["epoch"] for r in rows if _uses(run, r)]
        warned = [r["epoch"] for r in rows if r["warned"]]
        held = [r["epoch"] for r in rows if r.get("held_back")]
        missed = [e for e in using[1:] if e not in warned]
        t["using"] += len(using)
        t["flagged"] += sum(e in warned for e in using)
        t["using_after_first"] += len(using[1:])
        t["flagged_after_first"] += sum(e in warned for e in using[1:])
        if run["kind"] == "none":
            t["clean_evaluations"] += len(rows)
            t["false_alarms"] += len(warned)
        else:
            t["other_warnings"] += sum(e not in using for e in warned)
        named = sorted({k for r in rows for k in evidence(r.get("message"))})
        last = rows[-1]
        lines.append(
            f"| {run['data']} | {run['kind']} | {run['ls']} | {run['seed']} |"
            f" {last['val_acc']:.2f} | {last['patch_free_acc']:.2f} | {_epochs(using)} |"
            f" {_epochs(warned)} | {_epochs(held)} | {', '.join(named) or '-'} |"
            f" {_epochs(missed)} |"
        )
    ok = t["flagged_after_first"] == t["using_after_first"] and t["false_alarms"] == 0
    lines += [
        "",
        f"shortcut-using evaluations flagged: {t['flagged']}/{t['using']} (all),"
        f" {t['flagged_after_first']}/{t['using_after_first']} (each run's first left out)",
        f"false alarms: {t['false_alarms']} warned evaluations in {t['clean_evaluations']}"
        " evaluations of runs without a shortcut",
        f"warnings at evaluations of shortcut runs that do not use it: {t['other_warnings']}",
        "goal (every shortcut-using evaluation but a run's first flagged, no false alarm):"
        f" {'met' if ok else 'NOT met'}",
    ]
    return "\n".join(lines), t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=DATA, default="shapes")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=None,
        help="shortcut kinds (default: every kind the data set has)",
    )
    parser.add_argument(
        "--model",
        choices=["default", "alt"],
        default="default",
        help="alt: another ViT on the same data (stripes: class token, 2 registers, 4 blocks)",
    )
    parser.add_argument(
        "--cue-size",
        type=int,
        default=None,
        help="side of the shortcut cue in pixels (shapes: 8, one token; stripes: 5); e.g."
        " 14 (shapes) or 10 (stripes) puts it over 2x2 tokens",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ls", nargs="+", type=float, default=[0.0, 0.1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: all)")
    parser.add_argument("--root", default="lightning_logs/shortcut_signal")
    parser.add_argument("--out", default=None, help="write every run's rows as JSON here")
    parser.add_argument(
        "--table",
        nargs="+",
        default=None,
        help="no training: print the table and totals of runs saved by --out",
    )
    args = parser.parse_args()
    if args.model == "alt" and args.data not in ALT_VITS:
        parser.error(f"--model alt exists for --data {' or '.join(ALT_VITS)} only")
    if args.table:
        print(summarise([run for path in args.table for run in json.load(open(path))])[0])
        return
    threads = args.threads or max(1, torch.get_num_threads() // args.jobs)
    kinds = args.kinds or list(DATA_KINDS[args.data])
    if not set(kinds) <= set(DATA_KINDS[args.data]):
        parser.error(f"--data {args.data} has the kinds {DATA_KINDS[args.data]}")
    grid = [
        dict(data=args.data, kind=k, seed=s, ls=ls, epochs=args.epochs, threads=threads,
             root=args.root, model=args.model, cue=args.cue_size)
        for s, ls, k in product(args.seeds, args.ls, kinds)
    ]  # fmt: skip
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for run in pool.map(one_run, grid):
            runs.append(run)
            warned = [r["epoch"] for r in run["rows"] if r["warned"]]
            print(
                f"{run['data']} {run['kind']} ls={run['ls']} seed={run['seed']}:"
                f" {run['seconds']:.0f} s, warned at epochs {warned}",
                flush=True,
            )
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(runs, f, indent=1)
    table, _ = summarise(runs)
    print(table)


if __name__ == "__main__":
    main()
