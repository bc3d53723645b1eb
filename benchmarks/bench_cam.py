"""Speed of ViT-ReciproCAM per model family: plain forward vs the fast path and the general path,
and for timm a literal implementation of the paper (per image, all h*w masked copies through
the tail in one batch).

    python benchmarks/bench_cam.py                     # ViT-B/16: timm, torchvision, HF; CPU fp32
    python benchmarks/bench_cam.py --families timm hf --device cuda --batch 32 --amp bf16
    python benchmarks/bench_cam.py --quick             # tiny models (a smoke run, seconds)
    python benchmarks/bench_cam.py --no-general --no-literal --repeats 7   # fast path vs forward
    python benchmarks/bench_cam.py --swin              # Swin-T: 16 probes, per target stage

The ViT-B/16-sized configurations are timm ``vit_base_patch16_224``, torchvision ``vit_b_16``
and HF ``ViTConfig()`` defaults (1000 classes each), 224x224 images. Prints one table with
ms/image and the ratio to the plain forward for every family (and, for timm, how many times
faster than the literal implementation each row is), the general path's peak extra memory for
the first family and the largest fast/general score difference per family.
Random weights: speed does not depend on them (no pretrained weights can be downloaded here).

``--swin``: timm ``swin_tiny_patch4_window7_224`` (1000 classes), 16 images of 224x224: the plain
forward, the explanation at the last block (7x7 grid, the default), at the first block of the
last stage (7x7) and at the last block of stage 3 (14x14), and one evaluation of the callback at
its defaults (explanation, ADCC, the alarm, pictures) in a real one-step fit.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import timm
import torch

from lightning_vitrcam import ViTReciproCAM
from lightning_vitrcam.masks import window_weights

FAMILIES = ("timm", "torchvision", "hf")
TINY = dict(image=32, patch=8, depth=2, width=32, heads=2, mlp=64, classes=10)


def literal_reciprocam(
    model: torch.nn.Module, images: torch.Tensor, block: int = -1
) -> torch.Tensor:
    """The paper as written for a timm ViT: for each image, capture the target block's input
    with a full forward, build its h*w masked norm1 copies, run them all through the tail in
    one batch."""
    blocks = model.blocks
    idx = block % len(blocks)
    tgt = blocks[idx]
    P = model.num_prefix_tokens
    captured: dict[str, torch.Tensor] = {}
    handle = tgt.register_forward_pre_hook(lambda _m, a: captured.__setitem__("x", a[0]))
    maps = []
    try:
        for b in range(images.shape[0]):
            logits = model(images[b : b + 1])
            x = captured["x"]
            n = x.shape[1] - P
            h, w = model.patch_embed.grid_size
            weights = window_weights(h, w, "gaussian", device=x.device, dtype=x.dtype)
            feats = tgt.norm1(x)
            copies = feats.expand(n, -1, -1).clone()
            copies[:, P:] = feats[:, P:] * weights[:, :, None]
            y = x + tgt.drop_path1(tgt.ls1(tgt.attn(copies)))
            y = y + tgt.drop_path2(tgt.ls2(tgt.mlp(tgt.norm2(y))))
            for later in blocks[idx + 1 :]:
                y = later(y)
            scores = model.forward_head(model.norm(y)).softmax(-1)[:, logits.argmax()]
            maps.append(scores)
    finally:
        handle.remove()
    return torch.stack(maps)


def build(family: str, quick: bool) -> tuple[torch.nn.Module, int, Callable[[Any], Any]]:
    """``(model, image size, logits of an output)`` for a family, ViT-B/16 or tiny."""
    t = TINY
    if family == "timm":
        kw = (
            dict(
                img_size=t["image"],
                patch_size=t["patch"],
                depth=t["depth"],
                embed_dim=t["width"],
                num_heads=t["heads"],
                num_classes=t["classes"],
            )
            if quick
            else {}
        )
        model = timm.create_model("vit_base_patch16_224", pretrained=False, **kw)
        return model, model.patch_embed.img_size[0], lambda out: out
    if family == "torchvision":
        from torchvision.models import VisionTransformer, vit_b_16

        if quick:
            model = VisionTransformer(
                image_size=t["image"],
                patch_size=t["patch"],
                num_layers=t["depth"],
                num_heads=t["heads"],
                hidden_dim=t["width"],
                mlp_dim=t["mlp"],
                num_classes=t["classes"],
            )
        else:
            model = vit_b_16(weights=None)
        # torchvision zero-initialises the head: every score would tie and the fast/general
        # comparison below would be vacuous
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        return model, model.image_size, lambda out: out
    if family == "hf":
        from transformers import ViTConfig, ViTForImageClassification

        kw = (
            dict(
                image_size=t["image"],
                patch_size=t["patch"],
                num_hidden_layers=t["depth"],
                hidden_size=t["width"],
                num_attention_heads=t["heads"],
                intermediate_size=t["mlp"],
                num_labels=t["classes"],
            )
            if quick
            else dict(num_labels=1000)
        )
        model = ViTForImageClassification(ViTConfig(**kw))
        return model, model.config.image_size, lambda out: out.logits
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    family: str, args: argparse.Namespace, batch: int, amp: Any, memory: bool
) -> tuple[list[tuple[str, str, float, float, str]], list[str]]:
    """Rows ``(family, computation, ms/image, x plain forward, literal / this)`` and notes."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, size, logits_of = build(family, args.quick)
    model = model.to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)
    fast = ViTReciproCAM(model)
    general = ViTReciproCAM(model, fast_path=False)
    if not fast.fast_path:
        raise SystemExit(f"{family}: no fast path ({fast.fast_path_reason})")

    def run(fn: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad(), amp:
                fn()

        return call

    notes = []
    plain_call, fast_call = run(lambda: logits_of(model(images))), run(lambda: fast(images))
    plain_call(), fast_call()  # warm-up
    # interleaved, so that a machine whose speed drifts (other jobs, clocks) burdens both
    plain_t, fast_t = [], []
    for _ in range(args.repeats):
        plain_t.append(timed(plain_call, device, 1, warm_up=False))
        fast_t.append(timed(fast_call, device, 1, warm_up=False))
    results = {"plain forward": statistics.median(plain_t), "fast path": statistics.median(fast_t)}
    if args.no_general:
        return _rows(family, results, batch), notes
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _peak(device)
    results["general path"] = timed(run(lambda: general(images)), device, args.slow_repeats)
    if memory:
        # ru_maxrss only grows: measured on the first family, right after its cheaper rows,
        # it is the general path's own growth of the high-water mark (a lower bound)
        kind = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS"
        notes.append(
            f"{family} general path peak extra memory at max_batch={general.max_batch}:"
            f" {(_peak(device) - base) / 2**20:.0f} MiB ({kind})"
        )
    if family == "timm" and not args.no_literal:
        results["literal paper"] = timed(
            run(lambda: literal_reciprocam(model, images)), device, args.slow_repeats
        )
    with torch.no_grad(), amp:
        a, b = fast(images), general(images)
    h, w = a.grid_size
    diff = float((a.scores - b.scores).abs().max())
    notes.append(f"{family}: {h}x{w} tokens, max |fast - general| score difference {diff:.2e}")
    return _rows(family, results, batch), notes


def _rows(
    family: str, results: dict[str, float], batch: int
) -> list[tuple[str, str, float, float, str]]:
    plain, literal = results["plain forward"], results.get("literal paper")
    rows = []
    for name, sec in results.items():
        versus = "-" if literal is None else f"{literal / sec:.1f}"
        rows.append((family, name, 1000 * sec / batch, sec / plain, versus))
    return rows


# (label, target_block) of Swin-T (depths 2, 2, 6, 2): the last block, the first of the last
# stage, the last of stage 3
SWIN_TARGETS = (
    ("last block (default)", -1),
    ("block -2 (stage 4)", -2),
    ("block -3 (stage 3)", -3),
)


def swin_cost(args: argparse.Namespace) -> None:
    """Swin-T at 224 px, 16 probes: the plain forward, the explanation per target block and one
    evaluation of the callback, each against the plain forward."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_vitrcam import ViTReciproCAMCallback

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    images = torch.randn(16, 3, 224, 224)

    def plain() -> None:
        with torch.no_grad():
            model(images)

    forward = timed(plain, torch.device("cpu"), args.repeats)
    print(
        f"# timm swin_tiny_patch4_window7_224, 16 images of 224x224, 1000 classes, CPU float32"
        f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads),"
        f" torch {torch.__version__}"
    )
    print("| computation | grid | seconds | x plain forward |")
    print("|---|---|---|---|")

    def row(name: str, grid: str, sec: float) -> None:
        print(f"| {name} | {grid} | {sec:.2f} | {sec / forward:.1f} |", flush=True)

    row("plain forward", "-", forward)
    for label, target in SWIN_TARGETS:
        cam = ViTReciproCAM(model, target_block=target)
        h, w = cam.grid_size((224, 224))
        seconds = timed(lambda cam=cam: cam(images), torch.device("cpu"), args.slow_repeats)
        row(f"explanation, {label}", f"{h}x{w}", seconds)

    class Timed(ViTReciproCAMCallback):
        evaluation = 0.0

        def on_validation_epoch_end(self, *a: Any) -> None:
            start = time.perf_counter()
            super().on_validation_epoch_end(*a)
            self.evaluation = time.perf_counter() - start

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = DataLoader(TensorDataset(images, torch.randint(0, 1000, (16,))), batch_size=2)
    callback = Timed()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tempfile.mkdtemp(),
    )  # fmt: skip
    trainer.fit(Module(), data, data)
    row("one callback evaluation (defaults)", "7x7", callback.evaluation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--quick", action="store_true", help="tiny models: a smoke run")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (--quick: 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-repeats", type=int, default=1)
    parser.add_argument("--no-literal", action="store_true", help="skip the literal timm row")
    parser.add_argument(
        "--no-general",
        action="store_true",
        help="plain forward and fast path only (and no fast/general comparison): minutes less",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: default; --quick: 1)"
    )
    parser.add_argument(
        "--swin", action="store_true", help="Swin-T at 224 px: 16 probes per target stage"
    )
    args = parser.parse_args()
    if args.swin:
        if args.threads:
            torch.set_num_threads(args.threads)
        swin_cost(args)
        return
    # tiny models are dominated by thread synchronisation on a busy machine: one thread
    threads = args.threads or (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    batch = args.batch or (4 if args.quick else 8)
    device = torch.device(args.device)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)
        if args.amp != "none"
        else contextlib.nullcontext()
    )
    rows, notes = [], []
    for i, family in enumerate(args.families):
        r, n = measure(family, args, batch, amp, memory=i == 0)
        rows += r
        notes += n

    size_note = "tiny (32x32, patch 8, depth 2, width 32)" if args.quick else "ViT-B/16, 224x224"
    print(
        f"# {size_note}, batch {batch}, device {device} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"amp {args.amp}, torch {torch.__version__}"
    )
    print("| family | computation | ms/image | x plain forward | literal / this |")
    print("|---|---|---|---|---|")
    for family, name, ms, ratio, versus in rows:
        shown = f"{ms:.1f}" if ms >= 10 else f"{ms:.3f}"
        print(f"| {family} | {name} | {shown} | {ratio:.2f} | {versus} |")
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
