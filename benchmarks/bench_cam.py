"""Speed of ViT-ReciproCAM: plain forward vs the general path, the fast path and a literal
implementation of the paper (per image, all h*w masked copies through the tail in one batch).

    python benchmarks/bench_cam.py                      # vit_base_patch16_224, batch 8, CPU fp32
    python benchmarks/bench_cam.py --device cuda --batch 32 --amp bf16

Prints ms/image, ratios and the general path's peak extra memory at the default max_batch.
Random weights: speed does not depend on them (no pretrained weights can be downloaded here).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import time

import timm
import torch

from lightning_vitrcam import ViTReciproCAM
from lightning_vitrcam.masks import window_weights


def literal_reciprocam(
    model: torch.nn.Module, images: torch.Tensor, block: int = -1
) -> torch.Tensor:
    """The paper as written: for each image, capture the target block's input with a full
    forward, build its h*w masked norm1 copies, run them all through the tail in one batch."""
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).to(device).eval()
    images = torch.randn(args.batch, 3, *model.patch_embed.img_size, device=device)
    fast = ViTReciproCAM(model)
    general = ViTReciproCAM(model, fast_path=False)
    assert fast.fast_path and not general.fast_path
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)
        if args.amp != "none"
        else contextlib.nullcontext()
    )

    def run(fn):
        def call():
            with torch.no_grad(), amp:
                fn()

        return call

    results = {
        "plain forward": timed(run(lambda: model(images)), device, args.repeats),
        "fast path": timed(run(lambda: fast(images)), device, args.repeats),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results["general path"] = timed(run(lambda: general(images)), device, args.slow_repeats)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        peak_note = "CUDA max_memory_allocated above the resident model and inputs"
    else:
        # ru_maxrss only grows: the general path ran after the others, so this is its own
        # growth of the process's high-water mark (a lower bound on its peak extra memory)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        peak_note = "growth of the process's peak RSS during the general path"
    results["literal paper"] = timed(
        run(lambda: literal_reciprocam(model, images)), device, args.slow_repeats
    )

    with torch.no_grad(), amp:
        a, b = fast(images), general(images)
        diff = float((a.scores - b.scores).abs().max())

    h, w = a.grid_size
    print(
        f"# {args.model}, batch {args.batch}, {h}x{w} tokens, device {device} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"amp {args.amp}, torch {torch.__version__}"
    )
    plain = results["plain forward"]
    print("| computation | ms/image | x plain forward | literal / this |")
    print("|---|---|---|---|")
    for name, sec in results.items():
        print(
            f"| {name} | {1000 * sec / args.batch:.1f} | {sec / plain:.2f} | "
            f"{results['literal paper'] / sec:.1f} |"
        )
    print(
        f"\ngeneral path peak extra memory at max_batch={general.max_batch}: "
        f"{peak / 2**20:.0f} MiB ({peak_note})"
    )
    print(f"max |fast - general| score difference: {diff:.2e}")


if __name__ == "__main__":
    main()
