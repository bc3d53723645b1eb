"""Models, data and Lightning modules shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lightning_vitrcam.demo import SQUARE_COLOURS, coloured_squares


def make_vit(seed: int = 0, head_scale: float = 3.0, **kwargs: Any) -> nn.Module:
    """A tiny random timm ViT whose scores depend on the input.

    timm's init (std 0.02) gives near-uniform attention and a flat softmax, so weights are
    re-drawn at unit gain and the head scaled: every token then moves the score measurably
    while the softmax stays far from saturation.
    """
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
            if isinstance(getattr(model, head, None), nn.Linear):
                getattr(model, head).weight.mul_(head_scale)
    return model.eval()


def train_vit(model: nn.Module, steps: int = 40, seed: int = 0) -> nn.Module:
    """A few Adam steps on the coloured-squares task so saliency means something (restores
    the RNG)."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    size = model.patch_embed.img_size[0]
    model.train()
    for step in range(steps):
        images, labels, _ = coloured_squares(32, seed=seed * 1000 + step, size=size)
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().zero_grad(set_to_none=True)
    torch.set_rng_state(state)
    return model


class Squares(Dataset):
    """:func:`coloured_squares` (16-pixel squares by default) as a dataset of several layouts."""

    def __init__(self, n: int, seed: int = 0, layout: str = "dict", **kwargs: Any) -> None:
        kwargs.setdefault("side", 16)
        self.x, self.y, self.m = coloured_squares(n, seed, **kwargs)
        self.layout = layout

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Any:
        if self.layout == "dict":
            return {"image": self.x[i], "label": self.y[i], "mask": self.m[i]}
        if self.layout == "tuple":
            return self.x[i], self.y[i]
        if self.layout == "odd":
            return {"pixels": self.x[i], "cls": self.y[i]}
        return self.x[i]  # "image": images only


class TrainOnly(L.LightningModule):
    """A classifier around ``self.model`` (a tiny timm ViT by default, dropout on)."""

    def __init__(self, model: nn.Module | None = None, lr: float = 1e-3, **vit: Any) -> None:
        super().__init__()
        cfg = dict(num_classes=4, depth=1, embed_dim=32, num_heads=2, drop_rate=0.2)
        cfg.update(vit)
        self.model = (model if model is not None else make_vit(**cfg)).train()
        self.lr = lr
        self.steps = 0

    @staticmethod
    def _xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, dict):
            return batch.get("image", batch.get("pixels")), batch.get("label", batch.get("cls"))
        return batch[0], batch[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        x, y = self._xy(batch)
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class Module(TrainOnly):
    """:class:`TrainOnly` with a validation step."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, torch.Tensor):
            return
        x, y = self._xy(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))


# --------------------------------------------------------------------------- other families
def sensitize(
    model: nn.Module, seed: int = 0, heads: Any = (), head_scale: float = 3.0
) -> nn.Module:
    """Re-draw any model's weights so its scores depend on the input (cf. :func:`make_vit`):
    matrices at unit gain, tokens and position embeddings at 0.5, norm weights and layer
    scales around 1 (post-norm blocks start with 1e-5), biases small; ``heads`` scaled."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.dim() == 2:
                p.copy_(noise * p.shape[-1] ** -0.5)
            elif p.dim() == 3:  # class/register tokens, position embeddings, latents
                p.copy_(noise * 0.5)
            elif p.dim() == 1 and name.endswith("bias"):
                p.copy_(noise * 0.1)
            elif p.dim() == 1:  # norm weights, layer scales
                p.copy_(1.0 + 0.3 * noise)
        for head in heads:
            head.weight.mul_(head_scale)
    return model.eval()


HF_TINY = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=5,
)


def make_hf(kind: str = "vit", seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny sensitive HF image classifier: ``vit``, ``deit``, ``deit_teacher``, ``dinov2``,
    ``dinov2_registers``."""
    import transformers as tf

    cfg = {**HF_TINY, **overrides}
    torch.manual_seed(seed)
    if kind == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(**cfg))
    elif kind in ("deit", "deit_teacher"):
        klass = (
            tf.DeiTForImageClassificationWithTeacher
            if kind == "deit_teacher"
            else tf.DeiTForImageClassification
        )
        model = klass(tf.DeiTConfig(**cfg))
    elif kind == "dinov2":
        cfg.pop("intermediate_size")
        model = tf.Dinov2ForImageClassification(tf.Dinov2Config(mlp_ratio=2, **cfg))
    elif kind == "dinov2_registers":
        cfg.pop("intermediate_size")
        model = tf.Dinov2WithRegistersForImageClassification(
            tf.Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=2, **cfg)
        )
    else:
        raise ValueError(kind)
    heads = [
        getattr(model, n, None) for n in ("classifier", "cls_classifier", "distillation_classifier")
    ]
    return sensitize(model, seed, [h for h in heads if isinstance(h, nn.Linear)])


def make_torchvision_vit(seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny sensitive torchvision ``VisionTransformer`` (32x32 images, 8x8 patches)."""
    from torchvision.models import VisionTransformer

    cfg = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = VisionTransformer(num_classes=5, **cfg)
    return sensitize(model, seed, [model.heads.head])


class HFModule(TrainOnly):
    """:class:`TrainOnly` around a tiny HF ViT (its forward returns the logits)."""

    def __init__(self, lr: float = 1e-3, class_names: Any = None, num_channels: int = 3) -> None:
        super().__init__(model=make_hf("vit", num_channels=num_channels), lr=lr)
        self.save_hyperparameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def rigged_corner_vit(head: torch.Tensor) -> nn.Module:
    """A ViT whose prediction reads only the colour of the top-left token of 32x32 images
    (8x8 patches): ``head`` ``[C, 3]`` maps that colour to the C logits.

    Every weight is zero except: patch embedding copies the mean colour into dims 0-2, the
    top-left position carries a marker (dim 3) and the class token another (dim 4); the class
    token's query matches the marker's key (and, weaker, its own, so that without the corner
    it attends to itself), values and projection pass the colour on, the head reads it.
    """
    d = 16
    m = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=head.shape[0], depth=1,
        embed_dim=d, num_heads=1, mlp_ratio=1.0,
    )  # fmt: skip
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.fill_(1.0)
        qkv, proj = m.blocks[0].attn.qkv.weight, m.blocks[0].attn.proj.weight
        for ch in range(3):
            m.patch_embed.proj.weight[ch, ch] = 1 / 64
            qkv[2 * d + ch, ch] = 1.0
            proj[ch, ch] = 1.0
        m.pos_embed[0, 1, 3] = 10.0
        m.cls_token[0, 0, 4] = 10.0
        qkv[0, 4], qkv[d, 3], qkv[d, 4] = 16.0, 1.0, 0.2
        m.head.weight[:, :3] = head
    return m.eval()


class CuedSquares(Squares):
    """Squares of a random grey (the object names no class) with a class cue that is not at
    one place: ``cue="moving"`` a class-coloured 8x8 tag at a random place of each image,
    ``cue="tint"`` a cast of the class colour over the whole image, ``cue="background"`` the
    cast on the background only (the masks say where the object is)."""

    def __init__(self, n: int, seed: int = 0, cue: str = "moving") -> None:
        super().__init__(n, seed, corner=True)
        g = torch.Generator().manual_seed(seed + 1000)
        colour = SQUARE_COLOURS[self.y][:, :, None, None]
        self.x[:, :, :8, :8] = torch.randn(n, 3, 8, 8, generator=g) * 0.3  # no corner patch
        grey = torch.rand(n, 1, 1, 1, generator=g) * 2 - 1  # squares of any grey: no class
        self.x = torch.where(self.m[:, None], grey.expand(n, 3, 1, 1), self.x)
        if cue == "tint":
            self.x += 0.4 * colour
        elif cue == "background":
            self.x = torch.where(self.m[:, None], self.x, self.x + 0.4 * colour)
        else:
            r = torch.randint(0, 25, (n,), generator=g)
            c = torch.randint(0, 25, (n,), generator=g)
            for i in range(n):
                self.x[i, :, r[i] : r[i] + 8, c[i] : c[i] + 8] = colour[i]


# --------------------------------------------------------------------------- hierarchical
SWIN_KINDS = ("timm", "timm_v2", "timm_v2_cr", "torchvision", "torchvision_v2", "hf", "hf_v2")


def make_swin(
    kind: str = "timm",
    seed: int = 0,
    img_size: int = 32,
    num_classes: int = 5,
    sensitive: bool = True,
    **overrides: Any,
) -> nn.Module:
    """A tiny Swin of one of :data:`SWIN_KINDS`: 4-pixel patches, windows of 2, two stages of
    two blocks (the second of each shifted), widths 16 and 32; at 32 px the stages' grids are
    8x8 (16 windows) and 4x4 (4 windows). ``sensitive`` re-draws the weights with
    :func:`sensitize` (for reference tests), else the library's init (for training)."""
    import transformers as tf
    from torchvision.models import SwinTransformer
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    cfg: dict[str, Any] = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=2)
    cfg.update(overrides)
    torch.manual_seed(seed)
    if kind in ("timm", "timm_v2", "timm_v2_cr"):
        name = {
            "timm": "swin_tiny_patch4_window7_224",
            "timm_v2": "swinv2_tiny_window8_256",
            "timm_v2_cr": "swinv2_cr_tiny_224",
        }[kind]
        model = timm.create_model(name, img_size=img_size, num_classes=num_classes, **cfg)
        heads = [model.head.fc]
    elif kind in ("torchvision", "torchvision_v2"):
        v2 = kind == "torchvision_v2"
        model = SwinTransformer(
            [4, 4], cfg["embed_dim"], list(cfg["depths"]), list(cfg["num_heads"]),
            [cfg["window_size"]] * 2, num_classes=num_classes,
            **(dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}),
        )  # fmt: skip
        heads = [model.head]
    elif kind in ("hf", "hf_v2"):
        config = (tf.SwinConfig if kind == "hf" else tf.Swinv2Config)(
            image_size=img_size, patch_size=4, num_labels=num_classes,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        )  # fmt: skip
        klass = tf.SwinForImageClassification if kind == "hf" else tf.Swinv2ForImageClassification
        model = klass(config)
        heads = [model.classifier]
    else:
        raise ValueError(kind)
    return sensitize(model, seed, heads) if sensitive else model.eval()


class SwinModule(TrainOnly):
    """:class:`TrainOnly` around a tiny timm Swin of :func:`make_swin` (library init, no
    stochastic depth), with its hyperparameters saved so that a checkpoint rebuilds it
    (``--model-class tests.helpers.SwinModule``)."""

    def __init__(self, lr: float = 1e-3, num_classes: int = 4, embed_dim: int = 32) -> None:
        swin = make_swin(
            "timm", sensitive=False, num_classes=num_classes, embed_dim=embed_dim,
            drop_path_rate=0.0,
        )  # fmt: skip
        super().__init__(model=swin, lr=lr)
        self.save_hyperparameters()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self._xy(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))
