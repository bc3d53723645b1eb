import os

import pytest
import torch

# Two CPU cores on the reference machine: avoid oversubscription when tests run in one process.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def make_vit(seed: int = 0, head_scale: float = 3.0, **kwargs) -> torch.nn.Module:
    """A tiny random timm ViT whose scores depend on the input.

    timm's init (std 0.02) gives near-uniform attention and a flat softmax, so weights are
    re-drawn at unit gain and the head scaled: every token then moves the score measurably
    while the softmax stays far from saturation.
    """
    import timm

    cfg = dict(img_size=32, patch_size=8, num_classes=5, depth=2, embed_dim=32, num_heads=2)
    cfg.update(kwargs)
    name = cfg.pop("name", "vit_tiny_patch16_224")
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **cfg)
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name_ and "token" not in name_:
                p.normal_(0, p.shape[-1] ** -0.5)
            elif "pos_embed" in name_ or "token" in name_:
                p.normal_(0, 0.5)
        for head in ("head", "head_dist"):
            if isinstance(getattr(model, head, None), torch.nn.Linear):
                getattr(model, head).weight.mul_(head_scale)
    return model.eval()


@pytest.fixture
def tiny_vit() -> torch.nn.Module:
    return make_vit()


def blob_batch(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one coloured 8x8 square at a random place; the label is its colour."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g) * 0.3
    rows = torch.randint(0, size - 8, (n,), generator=g)
    cols = torch.randint(0, size - 8, (n,), generator=g)
    yy = torch.arange(size).view(1, size, 1)
    xx = torch.arange(size).view(1, 1, size)
    inside = (
        (yy >= rows.view(-1, 1, 1))
        & (yy < rows.view(-1, 1, 1) + 8)
        & (xx >= cols.view(-1, 1, 1))
        & (xx < cols.view(-1, 1, 1) + 8)
    )
    labels = torch.randint(0, 4, (n,), generator=g)
    colours = torch.tensor([[2.0, -1, -1], [-1, 2.0, -1], [-1, -1, 2.0], [2.0, 2.0, -1]])
    images = images + colours[labels][:, :, None, None] * inside[:, None].float()
    return images, labels


def train_vit(model: torch.nn.Module, steps: int = 40, seed: int = 0) -> torch.nn.Module:
    """A few Adam steps on the blob task so saliency means something (restores the RNG)."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    size = model.patch_embed.img_size[0]
    model.train()
    for step in range(steps):
        images, labels = blob_batch(32, size, seed=seed * 1000 + step)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().zero_grad(set_to_none=True)
    torch.set_rng_state(state)
    return model


@pytest.fixture(scope="session")
def trained_vit() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        num_classes=4,
        depth=2,
        embed_dim=64,
        num_heads=4,
    )
    return train_vit(model)
