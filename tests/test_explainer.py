"""ViT-ReciproCAM engine: against a slow, literal implementation, fast == general, errors."""

import copy

import pytest
import torch

from lightning_vitrcam import ViTReciproCAM
from lightning_vitrcam.adapters import ModelAdapter
from lightning_vitrcam.demo import coloured_squares
from lightning_vitrcam.explainer import unwrap_model
from tests.helpers import make_vit

GAUSS = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]


def literal_weights(h: int, w: int, i: int, j: int, kernel: str) -> torch.Tensor:
    """Weight of every spatial token in the copy centred on (i, j), written out by hand."""
    out = torch.zeros(h, w, dtype=torch.float64)
    for u in range(h):
        for v in range(w):
            if kernel == "point":
                out[u, v] = 1.0 if (u, v) == (i, j) else 0.0
            elif abs(u - i) <= 1 and abs(v - j) <= 1:
                out[u, v] = GAUSS[u - i + 1][v - j + 1] / 16
    return out.reshape(-1)


def reference_timm(model, images, block_index, kernel="gaussian", targets=None):
    """One masked sequence at a time through the model's own modules (obviously correct)."""
    model.eval()
    P = model.num_prefix_tokens
    with torch.no_grad():
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        for blk in model.blocks[:block_index]:
            x = blk(x)
        logits = model(images)
        tgt = logits.argmax(1) if targets is None else targets
        h, w = (
            model.patch_embed.dynamic_feat_size(images.shape[-2:])
            if model.dynamic_img_size
            else model.patch_embed.grid_size
        )
        blk = model.blocks[block_index]
        scores = torch.zeros(images.shape[0], h * w, dtype=logits.dtype)
        for b in range(images.shape[0]):
            feats = blk.norm1(x[b : b + 1])
            for k in range(h * w):
                wt = literal_weights(h, w, k // w, k % w, kernel).to(feats.dtype)
                masked = feats.clone()
                masked[:, P:] = feats[:, P:] * wt[None, :, None]
                y = x[b : b + 1] + blk.drop_path1(blk.ls1(blk.attn(masked)))
                y = y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
                for later in model.blocks[block_index + 1 :]:
                    y = later(y)
                out = model.forward_head(model.norm(y))
                scores[b, k] = out.softmax(-1)[0, tgt[b]]
    return scores, logits


CONFIGS = {
    "cls_token": dict(),
    "avg_pool_no_cls": dict(class_token=False, global_pool="avg"),
    "registers": dict(reg_tokens=2),
    "layer_scale_qkv_bias": dict(init_values=0.5, qkv_bias=True),
    "no_qkv_bias": dict(qkv_bias=False),
    "non_square": dict(img_size=(32, 48)),
    "patch4": dict(img_size=24, patch_size=4),
    "qk_norm": dict(qk_norm=True),
    "distilled": dict(name="deit_tiny_distilled_patch16_224"),
    "avg_pool_with_cls": dict(global_pool="avg"),
}


def _images(model, batch=2, size=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    H, W = size or model.patch_embed.img_size
    return torch.randn(batch, 3, H, W, generator=g)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_literal_implementation(name):
    model = make_vit(**CONFIGS[name])
    images = _images(model)
    ref, ref_logits = reference_timm(model, images, len(model.blocks) - 1)
    assert ref.std() > 1e-3, "degenerate model: scores would not discriminate"
    for fast in (None, False):
        out = ViTReciproCAM(model, fast_path=fast, max_batch=7)(images)
        torch.testing.assert_close(out.scores, ref, atol=2e-6, rtol=0)
        torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=1e-5)
        h, w = out.grid_size
        assert out.maps.shape == (2, h, w) and out.maps.dtype == torch.float32
        assert float(out.maps.min()) == 0.0 and float(out.maps.max()) == 1.0


def test_fast_path_chosen_only_when_exact():
    assert ViTReciproCAM(make_vit()).fast_path
    assert ViTReciproCAM(make_vit(name="deit_tiny_distilled_patch16_224")).fast_path
    assert ViTReciproCAM(make_vit(reg_tokens=2, init_values=0.1)).fast_path
    for kwargs in (
        dict(global_pool="avg"),
        dict(qk_norm=True),
        dict(class_token=False, global_pool="avg"),
    ):
        cam = ViTReciproCAM(make_vit(**kwargs))
        assert not cam.fast_path and cam.fast_path_reason
    assert not ViTReciproCAM(make_vit(), target_block=0).fast_path
    assert not ViTReciproCAM(make_vit(), keep_prefix_tokens=False).fast_path
    with pytest.raises(ValueError, match="not exact"):
        ViTReciproCAM(make_vit(global_pool="avg"), fast_path=True)


@pytest.mark.parametrize("kernel", ["gaussian", "point"])
@pytest.mark.parametrize(
    "name", ["cls_token", "registers", "layer_scale_qkv_bias", "distilled", "non_square"]
)
def test_fast_equals_general(name, kernel):
    model = make_vit(**CONFIGS[name])
    images = _images(model, batch=3)
    fast = ViTReciproCAM(model, kernel=kernel)(images)
    general = ViTReciproCAM(model, kernel=kernel, fast_path=False)(images)
    assert fast.fast_path and not general.fast_path
    assert general.scores.std() > 1e-3
    torch.testing.assert_close(fast.scores, general.scores, atol=1e-5, rtol=0)
    assert torch.equal(fast.targets, general.targets)

    model64 = copy.deepcopy(model).double()
    fast = ViTReciproCAM(model64, kernel=kernel)(images.double())
    general = ViTReciproCAM(model64, kernel=kernel, fast_path=False)(images.double())
    assert fast.scores.dtype == torch.float64
    torch.testing.assert_close(fast.scores, general.scores, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["cls_token", "registers", "avg_pool_no_cls"])
def test_predict_is_the_explanations_own_logits_route(name):
    model = make_vit(**CONFIGS[name]).train()
    images = _images(model, batch=3)
    cam = ViTReciproCAM(model)
    mlp_rows: list[int] = []
    hook = model.blocks[-1].mlp.register_forward_hook(
        lambda _m, args, _out: mlp_rows.append(args[0].shape[-2])
    )
    predicted = cam.predict(images)
    hook.remove()
    assert model.training and not predicted.requires_grad
    # bit for bit the explanation's unmasked logits, and the model's forward up to rounding
    assert torch.equal(predicted, cam(images).logits)
    with torch.no_grad():
        torch.testing.assert_close(predicted, model.eval()(images), atol=1e-5, rtol=0)
    # on the fast path the last block's MLP runs the prefix rows only
    tokens = model.num_prefix_tokens + model.patch_embed.num_patches
    assert mlp_rows == [model.num_prefix_tokens if cam.fast_path else tokens]
    assert cam.fast_path == (name != "avg_pool_no_cls")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cam.predict(images)
        assert torch.equal(low, cam(images).logits) and low.dtype == torch.float32


def test_non_last_block_and_point_kernel_match_literal():
    model = make_vit(depth=3)
    images = _images(model)
    for block in (0, 1):
        ref, _ = reference_timm(model, images, block, kernel="point")
        out = ViTReciproCAM(model, target_block=block, kernel="point")(images)
        torch.testing.assert_close(out.scores, ref, atol=2e-6, rtol=0)


def test_dynamic_img_size_other_resolution():
    model = make_vit(dynamic_img_size=True)
    images = _images(model, size=(40, 24))
    ref, _ = reference_timm(model, images, len(model.blocks) - 1)
    out = ViTReciproCAM(model)(images)
    assert out.grid_size == (5, 3) and out.fast_path
    torch.testing.assert_close(out.scores, ref, atol=2e-6, rtol=0)


def test_chunking_does_not_change_the_answer():
    model = make_vit(global_pool="avg")
    images = _images(model, batch=3)
    a = ViTReciproCAM(model, max_batch=1)(images)
    b = ViTReciproCAM(model, max_batch=10_000)(images)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0)


def test_targets_forms_and_explicit_targets():
    model = make_vit()
    images = _images(model, batch=3)
    cam = ViTReciproCAM(model)
    assert cam(images, targets=4).targets.tolist() == [4, 4, 4]
    assert cam(images, targets=[0, 1, 2]).targets.tolist() == [0, 1, 2]
    out = cam(images, targets=torch.tensor([3, 3, 1]))
    ref, _ = reference_timm(model, images, 1, targets=torch.tensor([3, 3, 1]))
    torch.testing.assert_close(out.scores, ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(out.probs, out.logits.softmax(-1)[torch.arange(3), out.targets])
    with pytest.raises(ValueError, match="class indices"):
        cam(images, targets=5)
    with pytest.raises(ValueError, match="2 targets for 3 images"):
        cam(images, targets=[0, 1])


def test_scores_logit_and_sigmoid():
    model = make_vit()
    images = _images(model)
    lg = ViTReciproCAM(model, score="logit")(images)
    sg = ViTReciproCAM(model, score="sigmoid")(images)
    torch.testing.assert_close(sg.scores, lg.scores.sigmoid(), atol=1e-6, rtol=1e-5)
    gl = ViTReciproCAM(model, score="logit", fast_path=False)(images)
    torch.testing.assert_close(lg.scores, gl.scores, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("fast", [None, False])
def test_saturated_softmax_maps_equal_the_float64_maps(fast):
    # a sharpened head saturates the float32 softmax: every copy's score rounds to 1.0
    model = make_vit(head_scale=100.0)
    images = _images(model, batch=4)
    low = ViTReciproCAM(model, fast_path=fast)(images)
    exact = ViTReciproCAM(copy.deepcopy(model).double(), fast_path=fast)(images.double())
    saturated = (low.scores == 1.0).all(dim=1)
    assert int(saturated.sum()) >= 2
    for a, b in zip(low.maps[saturated], exact.maps[saturated], strict=True):
        assert float(a.max()) == 1.0  # a real map, not the all-zero map of a constant row
        corr = torch.corrcoef(torch.stack([a.flatten(), b.float().flatten()]))[0, 1]
        assert corr >= 0.99, float(corr)
    # the range the normalisation divides by is exact too (relative to the float64 model's)
    torch.testing.assert_close(low.score_range, exact.score_range, rtol=1e-3, atol=0)
    assert bool((low.log_odds_range[saturated] > 1.0).all())


def test_constant_scores_give_zero_maps_not_nan():
    model = make_vit()
    with torch.no_grad():
        model.head.weight.zero_()
    for fast in (None, False):
        out = ViTReciproCAM(model, fast_path=fast)(_images(model))
        assert torch.isfinite(out.maps).all() and float(out.maps.abs().max()) == 0.0


@pytest.mark.parametrize("fast", [None, False])
def test_bf16_autocast_correlates_with_float32(trained_vit, fast):
    images, _, _ = coloured_squares(16, seed=123)
    ref = ViTReciproCAM(trained_vit, fast_path=fast)(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ViTReciproCAM(trained_vit, fast_path=fast)(images)
    assert low.scores.dtype == torch.float32 and low.maps.dtype == torch.float32
    assert torch.equal(low.targets, ref.targets)
    # a saturated softmax (p ~ 1) leaves score differences below bf16's resolution: such maps
    # are rounding noise in any low precision, so only images whose scores move are compared
    informative = ref.scores.std(dim=1) > 5e-3
    assert int(informative.sum()) >= 4
    for a, b in zip(
        ref.maps.flatten(1)[informative], low.maps.flatten(1)[informative], strict=True
    ):
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
        assert corr >= 0.99, float(corr)


def test_no_side_effects():
    model = make_vit(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.1)
    model.train()
    model.blocks[0].eval()  # a mixed state must come back as it was
    flags = {name: m.training for name, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    images = _images(model).requires_grad_(True)
    for fast in (None, False):
        out = ViTReciproCAM(model, fast_path=fast)(images)
        assert not out.maps.requires_grad and not out.logits.requires_grad
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and images.grad is None
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_hooks_removed_after_an_error():
    model = make_vit(global_pool="avg")
    cam = ViTReciproCAM(model, grid_size=(3, 3))  # wrong grid: fails inside the hook
    with pytest.raises(ValueError, match="tokens"):
        cam(_images(model))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_torchvision_vit_generic_path():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=5,
    ).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 3.0)
    images = _images(make_vit(), batch=2)
    cam = ViTReciproCAM(model, target_layer=model.encoder.layers[-1].ln_1, num_prefix_tokens=1)
    assert not cam.fast_path
    out = cam(images)

    # literal: one masked copy at a time through torchvision's own modules
    layer = model.encoder.layers[-1]
    with torch.no_grad():
        x = model._process_input(images)
        x = torch.cat([model.class_token.expand(2, -1, -1), x], dim=1) + model.encoder.pos_embedding
        x = model.encoder.layers[0](x)
        logits = model(images)
        ref = torch.zeros(2, 16)
        for b in range(2):
            feats = layer.ln_1(x[b : b + 1])
            for k in range(16):
                masked = feats.clone()
                masked[:, 1:] *= literal_weights(4, 4, k // 4, k % 4, "gaussian").float()[:, None]
                y = (
                    layer.dropout(
                        layer.self_attention(masked, masked, masked, need_weights=False)[0]
                    )
                    + x[b : b + 1]
                )
                y = y + layer.mlp(layer.ln_2(y))
                z = model.heads(model.encoder.ln(y)[:, 0])
                ref[b, k] = z.softmax(-1)[0, logits[b].argmax()]
    assert ref.std() > 1e-3
    torch.testing.assert_close(out.scores, ref, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        cam(torch.randn(1, 3, 30, 32))


def test_compiled_model_is_unwrapped():
    model = make_vit()
    compiled = torch.compile(model)  # lazy: nothing is compiled until called
    assert ViTReciproCAM(compiled).model is model
    assert unwrap_model(torch.nn.DataParallel(model)) is model


def test_construction_errors():
    with pytest.raises(ValueError, match="target_layer"):
        ViTReciproCAM(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    with pytest.raises(TypeError):
        ViTReciproCAM("vit")
    model = make_vit()
    with pytest.raises(ValueError, match="kernel"):
        ViTReciproCAM(model, kernel="box")
    with pytest.raises(ValueError, match="score"):
        ViTReciproCAM(model, score="probability")
    with pytest.raises(ValueError, match="max_batch"):
        ViTReciproCAM(model, max_batch=0)
    with pytest.raises(ValueError, match="out of range"):
        ViTReciproCAM(model, target_block=5)
    with pytest.raises(ValueError, match="not a submodule"):
        ViTReciproCAM(model, target_layer=torch.nn.LayerNorm(4))
    plain = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        ViTReciproCAM(plain, target_layer=plain[0])
    with pytest.raises(ValueError, match="grid"):
        ViTReciproCAM(plain, target_layer=plain[0], num_prefix_tokens=1)


def test_call_errors():
    model = make_vit()
    cam = ViTReciproCAM(model)
    with pytest.raises(ValueError, match="takes 32x32 images but got 48x32"):
        cam(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        cam(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="empty"):
        cam(torch.randn(0, 3, 32, 32))
    if torch.device("meta") is not None:
        with pytest.raises(ValueError, match="model is on cpu"):
            cam(torch.empty(1, 3, 32, 32, device="meta"))


def test_target_layer_rerun_path_matches_timm_tail():
    model = make_vit(global_pool="avg", depth=3)
    images = _images(model, batch=3)
    generic = ViTReciproCAM(model, target_layer=model.blocks[1].norm1, max_batch=5)
    assert type(generic.adapter).tail is ModelAdapter.tail  # re-runs the model's forward
    a = generic(images)
    timm_cam = ViTReciproCAM(model, target_block=1)
    assert type(timm_cam.adapter).tail is not ModelAdapter.tail  # restarts at the block
    b = timm_cam(images)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0)
