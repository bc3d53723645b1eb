"""Every model family users bring, against a literal one-copy-per-forward reference; refusals."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

from lightning_vitrcam import ViTReciproCAM
from lightning_vitrcam.adapters import build_adapter, find_vit, is_explainable
from lightning_vitrcam.explainer import eval_mode
from tests.helpers import make_hf, make_swin, make_torchvision_vit, make_vit, sensitize

GAUSS = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
TINY = dict(img_size=32, patch_size=8, num_classes=5, depth=2, embed_dim=32, num_heads=2)


def literal_weights(h: int, w: int, i: int, j: int) -> torch.Tensor:
    """Gaussian weight of every spatial token in the copy centred on (i, j), by hand."""
    out = torch.zeros(h, w, dtype=torch.float64)
    for u in range(h):
        for v in range(w):
            if abs(u - i) <= 1 and abs(v - j) <= 1:
                out[u, v] = GAUSS[u - i + 1][v - j + 1] / 16
    return out.reshape(-1)


def reference(
    model: nn.Module,
    images: torch.Tensor,
    site: nn.Module,
    on_input: bool,
    prefix: int,
    grid: tuple[int, int],
) -> torch.Tensor:
    """One masked copy per forward of the model itself: the window weights scale the spatial
    rows of ``site``'s output (a pre-norm block's first norm) or of its input (a post-norm
    block's attention); everything else runs as the model's own forward does."""

    def logits_of(out: Any) -> torch.Tensor:
        return getattr(out, "logits", out)

    h, w = grid
    scores = torch.zeros(images.shape[0], h * w, dtype=torch.float64)
    with torch.no_grad():
        targets = logits_of(model(images)).argmax(1)
        for b in range(images.shape[0]):
            for k in range(h * w):
                weight = literal_weights(h, w, k // w, k % w)

                def mask(t: torch.Tensor, weight: torch.Tensor = weight) -> torch.Tensor:
                    t = t.clone()
                    t[:, prefix:] = t[:, prefix:] * weight.to(t.dtype)[None, :, None]
                    return t

                if on_input:
                    handle = site.register_forward_pre_hook(lambda _m, a: (mask(a[0]), *a[1:]))
                else:
                    handle = site.register_forward_hook(lambda _m, _a, out: mask(out))
                try:
                    logits = logits_of(model(images[b : b + 1]))
                finally:
                    handle.remove()
                scores[b, k] = logits.double().softmax(-1)[0, targets[b]]
    return scores


def _timm(name: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **{**TINY, **kwargs})
    return sensitize(model, heads=[m for m in (model.head,) if isinstance(m, nn.Linear)])


def _hf_layers(model: nn.Module) -> Any:
    base = model.base_model
    return base.layers if hasattr(base, "layers") else base.encoder.layer


Case = tuple[Callable[[], nn.Module], Callable[[nn.Module], nn.Module], bool, str, int]
# name: (build, masking site, on the site's input, adapter, prefix tokens)
CASES: dict[str, Case] = {
    "timm_deit3": (
        lambda: _timm("deit3_small_patch16_224"),
        lambda m: m.blocks[-1].norm1,
        False,
        "TimmViTAdapter",
        1,
    ),
    "timm_clip_pre_norm": (
        lambda: _timm("vit_base_patch16_clip_224"),
        lambda m: m.blocks[-1].norm1,
        False,
        "TimmViTAdapter",
        1,
    ),
    "timm_siglip_map": (
        lambda: _timm("vit_base_patch16_siglip_224", class_token=False, global_pool="map"),
        lambda m: m.blocks[-1].norm1,
        False,
        "TimmViTAdapter",
        0,
    ),
    "timm_registers_map": (
        lambda: make_vit(reg_tokens=2, global_pool="map"),
        lambda m: m.blocks[-1].norm1,
        False,
        "TimmViTAdapter",
        3,
    ),
    "timm_res_post_norm": (
        lambda: _timm("vit_base_patch16_rpn_224"),
        lambda m: m.blocks[-1].attn,
        True,
        "TimmViTAdapter",
        0,
    ),
    "timm_eva_rope": (
        lambda: _timm("eva02_tiny_patch14_224"),
        lambda m: m.blocks[-1].norm1,
        False,
        "TimmEvaAdapter",
        1,
    ),
    "timm_eva_post_norm": (
        lambda: _timm("eva02_tiny_patch14_224", use_post_norm=True),
        lambda m: m.blocks[-1].attn,
        True,
        "TimmEvaAdapter",
        1,
    ),
    "timm_beit": (
        lambda: _timm("beit_base_patch16_224"),
        lambda m: m.blocks[-1].norm1,
        False,
        "TimmBeitAdapter",
        1,
    ),
    "timm_cait": (
        lambda: _timm("cait_xxs24_224"),
        lambda m: m.blocks[-1].norm1,
        False,
        "TimmCaitAdapter",
        0,
    ),
    "timm_naflex": (
        lambda: _timm("naflexvit_base_patch16_gap"),
        lambda m: m.blocks[-1].norm1,
        False,
        "TimmNaFlexAdapter",
        4,
    ),
    "torchvision": (
        make_torchvision_vit,
        lambda m: m.encoder.layers[-1].ln_1,
        False,
        "TorchvisionViTAdapter",
        1,
    ),
    "hf_vit": (
        lambda: make_hf("vit"),
        lambda m: _hf_layers(m)[-1].layernorm_before,
        False,
        "HFViTAdapter",
        1,
    ),
    "hf_deit": (
        lambda: make_hf("deit"),
        lambda m: _hf_layers(m)[-1].layernorm_before,
        False,
        "HFViTAdapter",
        2,
    ),
    "hf_deit_teacher": (
        lambda: make_hf("deit_teacher"),
        lambda m: _hf_layers(m)[-1].layernorm_before,
        False,
        "HFViTAdapter",
        2,
    ),
    "hf_dinov2": (
        lambda: make_hf("dinov2"),
        lambda m: _hf_layers(m)[-1].norm1,
        False,
        "HFDinov2Adapter",
        1,
    ),
    "hf_dinov2_registers": (
        lambda: make_hf("dinov2_registers"),
        lambda m: _hf_layers(m)[-1].norm1,
        False,
        "HFDinov2Adapter",
        3,
    ),
}


def _images(batch: int = 2, size: tuple[int, int] = (32, 32), channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(CASES))
def test_family_matches_literal_reference(name: str) -> None:
    build, site, on_input, adapter, prefix = CASES[name]
    model = build()
    images = _images()
    ref = reference(model, images, site(model), on_input, prefix, (4, 4))
    assert ref.std() > 1e-3, "degenerate model: scores would not discriminate"
    for fast in (None, False):
        cam = ViTReciproCAM(model, fast_path=fast, max_batch=7)  # no keywords needed
        assert type(cam.adapter).__name__ == adapter
        assert cam.num_prefix_tokens == prefix
        assert cam.mask_site.module is site(model) and cam.mask_site.on_input == on_input
        out = cam(images)
        assert out.grid_size == (4, 4)
        torch.testing.assert_close(out.scores.double(), ref, atol=2e-6, rtol=0)
        assert float(out.maps.min()) == 0.0 and float(out.maps.max()) == 1.0
        # predict (the shortcut alarm's forward) is the explanation's route, bit for bit
        predicted = cam.predict(images)
        assert torch.equal(predicted, out.logits)
        with torch.no_grad(), eval_mode(model):
            full = cam.adapter.logits(model(images))
        torch.testing.assert_close(predicted, full, atol=1e-5, rtol=0)


def test_other_image_sizes_for_resampling_families() -> None:
    cases = [
        (_timm("naflexvit_base_patch16_gap"), lambda m: m.blocks[-1].norm1, 4),
        (make_hf("dinov2"), lambda m: _hf_layers(m)[-1].norm1, 1),
    ]
    for model, site, prefix in cases:
        images = _images(batch=1, size=(40, 24))
        out = ViTReciproCAM(model)(images)
        assert out.grid_size == (5, 3)
        ref = reference(model, images, site(model), False, prefix, (5, 3))
        torch.testing.assert_close(out.scores.double(), ref, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="config.image_size"):
        ViTReciproCAM(make_hf("vit"))(_images(batch=1, size=(40, 24)))
    with pytest.raises(ValueError, match="takes 32x32 images"):
        ViTReciproCAM(make_torchvision_vit())(_images(batch=1, size=(40, 40)))


def test_post_norm_masks_the_attention_input_with_the_residual_kept() -> None:
    """ResPostBlock written out: y = x + norm1(attn(F_k)), y + norm2(mlp(y)), F_k the window-
    weighted block input; masking norm1's output instead would be another method."""
    model = _timm("vit_base_patch16_rpn_224", class_token=True, global_pool="token")
    images = _images()
    blk = model.blocks[-1]
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        for earlier in model.blocks[:-1]:
            x = earlier(x)
        targets = model(images).argmax(1)
        ref = torch.zeros(2, 16)
        for b in range(2):
            for k in range(16):
                masked = x[b : b + 1].clone()
                masked[:, 1:] *= literal_weights(4, 4, k // 4, k % 4).float()[:, None]
                y = x[b : b + 1] + blk.drop_path1(blk.norm1(blk.attn(masked)))
                y = y + blk.drop_path2(blk.norm2(blk.mlp(y)))
                ref[b, k] = model.forward_head(model.norm(y)).softmax(-1)[0, targets[b]]
    assert ref.std() > 1e-3
    out = ViTReciproCAM(model)(images)
    assert not out.fast_path
    torch.testing.assert_close(out.scores, ref, atol=2e-6, rtol=0)
    wrong = reference(model, images, blk.norm1, False, 1, (4, 4))
    assert float((wrong.float() - ref).abs().max()) > 1e-3  # the test tells the two apart
    with pytest.raises(ValueError, match="post-norm"):
        ViTReciproCAM(model, target_layer=blk.norm1, num_prefix_tokens=1)


class KeywordLayers(nn.Module):
    """HF ViT layers called with ``hidden_states=`` (as transformers 5 may call them)."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = make_hf("vit")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit.vit
        h = vit.embeddings(images)
        for layer in vit.layers:
            h = layer(hidden_states=h)
        return self.vit.classifier(vit.layernorm(h)[:, 0])


def test_hidden_states_passed_by_keyword() -> None:
    model = KeywordLayers().eval()
    images = _images()
    norm = model.vit.vit.layers[-1].layernorm_before
    out = ViTReciproCAM(model, target_layer=norm, num_prefix_tokens=1, patch_size=8)(images)
    ref = reference(model, images, norm, False, 1, (4, 4))
    assert ref.std() > 1e-3
    torch.testing.assert_close(out.scores.double(), ref, atol=2e-6, rtol=0)


def _refused() -> list[tuple[nn.Module, str]]:
    """Families still refused, with what their reason says (the hierarchical families that are
    explained are tested in test_swin.py and test_hierarchical.py)."""
    import transformers as tf
    from timm.models.hieradet_sam2 import HieraDet
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    hieradet = HieraDet(embed_dim=8, stages=(1, 1), q_pool=1, window_spec=(2, 2),
                        global_att_blocks=(), num_classes=3)  # fmt: skip
    return [
        (hieradet, "hierarchical vision"),
        (SwinTransformer3d([2, 4, 4], 8, [1, 1], [1, 1], [2, 2, 2]), "video model"),
        (tf.SwinModel(tf.SwinConfig(image_size=32, embed_dim=8, window_size=2)), "backbone"),
    ]


def test_refused_models_say_why() -> None:
    for model, reason in _refused():
        assert not is_explainable(model)
        with pytest.raises(ValueError, match=reason):
            ViTReciproCAM(model)
        first_norm = next(m for m in model.modules() if isinstance(m, nn.LayerNorm))
        with pytest.raises(ValueError, match=reason):
            ViTReciproCAM(model, target_layer=first_norm, num_prefix_tokens=0)
        holder = nn.ModuleDict({"backbone": model, "extra": nn.Linear(2, 2)})
        with pytest.raises(ValueError, match=f"cannot explain ModuleDict.backbone: .*{reason}"):
            find_vit(holder)


def test_explained_hierarchical_models_choose_their_block_by_target_block() -> None:
    swin = make_swin("timm")
    with pytest.raises(ValueError, match="choose the block with target_block="):
        ViTReciproCAM(swin, target_layer=swin.layers[-1].blocks[-1].norm1, num_prefix_tokens=0)


def test_parallel_blocks_are_refused() -> None:
    from timm.models.vision_transformer import ParallelScalingBlock, ParallelThingsBlock

    for block_fn in (ParallelScalingBlock, ParallelThingsBlock):
        model = timm.create_model("vit_tiny_patch16_224", **TINY, block_fn=block_fn)
        with pytest.raises(ValueError, match="in parallel"):
            ViTReciproCAM(model)


def test_find_vit_finds_every_family_inside_a_module() -> None:
    for model in (
        make_hf("vit"),
        make_hf("dinov2"),
        make_torchvision_vit(),
        _timm("cait_xxs24_224"),
    ):
        holder = nn.ModuleDict({"net": model, "loss": nn.CrossEntropyLoss()})
        name, found = find_vit(holder)
        assert (name, found) == ("net", model)
        assert build_adapter(found).blocks  # and the adapter reaches the blocks


def test_library_never_imports_transformers_at_module_level() -> None:
    """Adapters are registered by class path; HF models are read by duck typing, so
    ``transformers`` stays unimported until a user's model brings it (torchmetrics may still
    import it on its own when it is installed)."""
    root = Path(__file__).resolve().parents[1] / "lightning_vitrcam"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "transformers" for n in names), path
