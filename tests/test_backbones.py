"""Diffusion denoiser backbones: jaxgen.nn.unet (ADM/diffusers-style U-Net), jaxgen.nn.dit (DiT).

Tiny widths; parameter counts and structure go through jax.eval_shape (no compute). The diffusers
comparisons run only where torch and diffusers are installed.
"""
import collections
import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn.dit import DiT, DiTConfig, dit_param_count
from jaxgen.nn.layers import timestep_embedding
from jaxgen.nn.unet import ResBlock, UNet, UNetConfig, group_count, unet_param_count

# diffusers' UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(64, 128,
# 128), layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
# up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")): sum(p.numel()), diffusers 0.42.1.
DIFFUSERS_UNET_28_PARAMS = 6_801_409
# DiT-XL/2 at 256x256 (32x32x4 latents, 1000 classes, learn_sigma), as counted by the DiT repo,
# whose count includes its frozen 256 x 1152 pos_embed buffer-parameter.
DIT_XL2_PARAMS = 675_129_632

TINY_UNET = UNetConfig(block_channels=(16, 32), layers_per_block=1, attention_levels=(False, True),
                       num_classes=3, norm_groups=8, out_channels=2, zero_init=False)
TINY_DIT = DiTConfig(patch_size=2, hidden=32, depth=2, num_heads=4, num_classes=3, learn_sigma=True)


def _inputs(b=2, hw=8, c=1, seed=0):
    kx, kt = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (b, hw, hw, c)), jax.random.uniform(kt, (b,), maxval=999.0)


def _with(cfg, **changes):
    return dataclasses.replace(cfg, **changes)


def _perturb(params, seed=1, scale=0.1):
    """Adds noise to every parameter (so zero-initialised layers hide no path under test)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape).astype(p.dtype), params)


def _fake_params(model, *args, seed=0):
    """Parameters of the right shapes drawn with numpy: kernels ~ N(0, 1/fan_in), norm scales
    ~ 1 + N(0, 0.01), biases and embeddings ~ N(0, 0.01) / N(0, 1). Cheaper than a jitted
    ``init``, whose per-parameter threefry draws take XLA:CPU seconds to compile."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        z = rng.standard_normal(shape).astype(np.float32)
        if name == "kernel":
            return jnp.asarray(z / np.sqrt(math.prod(shape[:-1])))
        if name == "embedding":
            return jnp.asarray(z)
        return jnp.asarray((1.0 if name == "scale" else 0.0) + 0.1 * z)

    shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *args)))
    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_timestep_embedding_matches_numpy():
    t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
    dim, half = 6, 3
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    want = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), dim), want, rtol=1e-5, atol=1e-5)
    odd = timestep_embedding(jnp.asarray(t), 7)
    assert odd.shape == (4, 7) and odd.dtype == jnp.float32
    np.testing.assert_array_equal(odd[:, -1], 0.0)


def test_group_count_divides():
    assert [group_count(c, 32) for c in (64, 16, 24, 96, 7)] == [32, 16, 24, 32, 7]
    assert group_count(48, 32) == 24


@pytest.mark.parametrize("shape,groups", [((2, 6, 5, 12), 4), ((3, 7, 8), 8), ((2, 4, 4, 6), 6)])
def test_group_norm_matches_flax(shape, groups):
    """jaxgen's GroupNorm is flax's (same parameters), value and gradient, on data with an
    offset and a per-group spread (groups of one channel included)."""
    import flax.linen as nn

    from jaxgen.nn.layers import GroupNorm
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape) * rng.uniform(0.5, 3, shape[-1]) + 1.5, jnp.float32)
    ours, ref = GroupNorm(groups, epsilon=1e-5), nn.GroupNorm(groups, epsilon=1e-5)
    params = _perturb(ref.init(jax.random.key(0), x), scale=0.5)
    assert jax.tree.structure(nn.meta.unbox(ours.init(jax.random.key(0), x))) == \
        jax.tree.structure(params)
    w = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)) * w)
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=2e-5, rtol=1e-5)
    for g_ours, g_ref in zip(jax.grad(loss(ours), argnums=(0, 1))(params, x),
                             jax.grad(loss(ref), argnums=(0, 1))(params, x)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
                     g_ours, g_ref)
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm(5).init(jax.random.key(0), x)


def test_unet_shapes_and_null_label():
    x, t = _inputs()
    model = UNet(TINY_UNET)
    params = _fake_params(model, x, t, jnp.array([0, 1]))
    assert params["params"]["label_embed"]["embedding"].shape == (4, 64)  # num_classes + 1 rows
    y_null, y_3, y_02 = jax.jit(lambda p: (model.apply(p, x, t, None),
                                           model.apply(p, x, t, jnp.full((2,), 3, jnp.int32)),
                                           model.apply(p, x, t, jnp.array([0, 2]))))(params)
    assert y_null.shape == (2, 8, 8, 2) and y_null.dtype == jnp.float32
    np.testing.assert_array_equal(y_null, y_3)
    assert not np.allclose(y_null, y_02)

    uncond = UNet(UNetConfig(block_channels=(8, 16), layers_per_block=1,
                             attention_levels=(True, False)))
    x3, t3 = _inputs(b=1, hw=4, c=3)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: uncond.init(jax.random.key(0), x3, t3)))
    assert "label_embed" not in shapes["params"]
    assert jax.eval_shape(uncond.apply, shapes, x3, t3).shape == (1, 4, 4, 3)


def test_unet_zero_init():
    """zero_init (the default): each residual block's last conv and conv_out start at zero."""
    x, _ = _inputs(b=1, hw=4, c=3)
    emb = jnp.ones((1, 32))
    block = ResBlock(UNetConfig(block_channels=(8,), attention_levels=(False,)), 8)
    out, params = jax.jit(lambda: block.init_with_output(jax.random.key(0), x, emb))()
    params = nn.meta.unbox(params)
    np.testing.assert_array_equal(params["params"]["conv2"]["kernel"], 0.0)
    skip = params["params"]["skip"]
    want = jnp.einsum("bhwc,cd->bhwd", x, skip["kernel"][0, 0]) + skip["bias"]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_unet_adm_variant_traces():
    """ADM options (scale-shift norm, resblock up/down, fixed head count, dropout in training)."""
    cfg = UNetConfig(block_channels=(8, 16), layers_per_block=1, attention_levels=(False, True),
                     num_heads=2, scale_shift=True, resblock_updown=True, dropout=0.1,
                     num_classes=5)
    x, t = _inputs(b=2, hw=8, c=3)
    labels = jnp.array([0, 4])
    shapes = nn.meta.unbox(jax.eval_shape(lambda: UNet(cfg).init(jax.random.key(0), x, t,
                                                                 labels)))["params"]
    assert shapes["down0_res0"]["emb_proj"]["kernel"].shape == (32, 16)  # 2 C for scale, shift
    assert shapes["down0_downsample"]["res"]["conv1"]["kernel"].shape == (3, 3, 8, 8)
    assert shapes["up1_upsample"]["res"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
    out = jax.eval_shape(lambda p: UNet(cfg).apply({"params": p}, x, t, labels, train=True,
                                                   rngs={"dropout": jax.random.key(1)}), shapes)
    assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32


def test_unet_attention_reference_equals_xla():
    x, t = _inputs()
    labels = jnp.array([1, 2])
    params = _fake_params(UNet(TINY_UNET), x, t, labels)
    ref, xla = jax.jit(lambda p: [UNet(_with(TINY_UNET, attention_kernel=k)).apply(p, x, t, labels)
                                  for k in ("reference", "xla")])(params)
    np.testing.assert_allclose(ref, xla, rtol=1e-4, atol=1e-4)


def test_unet_diffusers_structure_and_param_count():
    cfg = UNetConfig()  # the defaults are the diffusers (64, 128, 128) layout
    assert unet_param_count(cfg, (28, 28, 1)) == DIFFUSERS_UNET_28_PARAMS
    shapes = nn.meta.unbox(jax.eval_shape(lambda: UNet(cfg).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,)))))["params"]
    kinds = collections.Counter(re.sub(r"\d+$", "", k) for k in shapes)
    for i, attn in enumerate(cfg.attention_levels):
        assert sum(bool(re.fullmatch(rf"down{i}_res\d", k)) for k in shapes) == 2
        assert sum(bool(re.fullmatch(rf"up{i}_res\d", k)) for k in shapes) == 3
        assert sum(bool(re.fullmatch(rf"down{i}_attn\d", k)) for k in shapes) == 2 * attn
        assert sum(bool(re.fullmatch(rf"up{i}_attn\d", k)) for k in shapes) == 3 * attn
    assert {"down0_downsample", "down1_downsample", "up1_upsample", "up2_upsample"} <= set(shapes)
    assert "down2_downsample" not in shapes and "up0_upsample" not in shapes
    assert kinds["mid_res"] == 2 and "mid_attn" in shapes
    assert shapes["time_embed"]["linear_1"]["kernel"].shape == (64, 256)  # C0 -> 4 C0
    assert shapes["up2_res0"]["conv1"]["kernel"].shape == (3, 3, 256, 128)  # 128 + 128 skip
    assert shapes["up0_res2"]["conv1"]["kernel"].shape == (3, 3, 128, 64)  # 64 + conv_in's 64
    assert shapes["down1_attn0"]["attn"]["qkv"]["kernel"].shape == (128, 3, 16, 8)  # heads of 8


def test_unet_param_count_matches_diffusers_model():
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    model = diffusers.UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=(64, 128, 128),
        layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    assert sum(p.numel() for p in model.parameters()) == DIFFUSERS_UNET_28_PARAMS
    assert unet_param_count(UNetConfig(), (28, 28, 1)) == DIFFUSERS_UNET_28_PARAMS


def test_unet_matches_diffusers_numerically(tmp_path):
    """A diffusers UNet2DModel saved with save_pretrained, loaded by jaxgen.hub.diffusers (the
    config mapped to a UNetConfig, every tensor to its jaxgen parameter): equal outputs."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from jaxgen.hub.diffusers import load_diffusers

    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=2, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=3).eval()
    model.save_pretrained(str(tmp_path))
    loaded = load_diffusers(str(tmp_path), attention_kernel="reference")
    assert loaded.model.config == UNetConfig(
        block_channels=(32, 64), layers_per_block=1, attention_levels=(False, True),
        num_classes=3, norm_groups=8, out_channels=2, zero_init=False,
        attention_kernel="reference")
    assert loaded.shape == (8, 8, 1)
    x, t = _inputs()
    labels = np.array([2, 0], np.int32)
    ours = jax.jit(loaded.model.apply)(loaded.params, x, t, labels)
    with torch.no_grad():
        theirs = model(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()),
                       torch.from_numpy(np.array(t)), class_labels=torch.from_numpy(labels)).sample
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


def test_dit_shapes_and_null_label():
    x, t = _inputs(hw=8, c=3)
    model = DiT(TINY_DIT)
    params = _fake_params(model, x, t, jnp.array([0, 1]))
    assert params["params"]["y_embedder"]["embedding"].shape == (4, 32)  # num_classes + 1 rows
    y_null, y_3, y_02 = jax.jit(lambda p: (model.apply(p, x, t, None),
                                           model.apply(p, x, t, jnp.full((2,), 3, jnp.int32)),
                                           model.apply(p, x, t, jnp.array([0, 2]))))(params)
    assert y_null.shape == (2, 8, 8, 6) and y_null.dtype == jnp.float32  # learn_sigma: 2 C
    np.testing.assert_array_equal(y_null, y_3)
    assert not np.allclose(y_null, y_02)

    uncond = DiT(_with(TINY_DIT, num_classes=0, learn_sigma=False, depth=1, patch_size=4))
    shapes = nn.meta.unbox(jax.eval_shape(lambda: uncond.init(jax.random.key(0), x, t)))
    assert "y_embedder" not in shapes["params"]
    assert jax.eval_shape(uncond.apply, shapes, x, t).shape == (2, 8, 8, 3)


def test_dit_adaln_zero_at_init():
    """At init the output is exactly 0 (zero final linear), and every adaLN-Zero block is the
    identity: with a non-zero final layer, a depth-2 DiT equals a depth-0 DiT that shares its
    embedders and final layer."""
    x, t = _inputs(hw=8, c=3)
    labels = jnp.array([0, 2])
    shallow_model = DiT(_with(TINY_DIT, depth=0))

    def run():
        out, params = DiT(TINY_DIT).init_with_output(jax.random.key(0), x, t, labels)
        params = nn.meta.unbox(params)
        p = params["params"]
        final = {k: (jax.tree.map(lambda a: a + 0.1, v) if k.startswith("final") else v)
                 for k, v in p.items()}
        deep = DiT(TINY_DIT).apply({"params": final}, x, t, labels)
        shallow = shallow_model.apply(
            {"params": {k: v for k, v in final.items() if not k.startswith("block")}}, x, t, labels)
        return out, deep, shallow

    out, deep, shallow = jax.jit(run)()
    np.testing.assert_array_equal(out, 0.0)
    assert np.abs(np.asarray(deep)).max() > 0
    np.testing.assert_allclose(deep, shallow, rtol=1e-6, atol=1e-6)


def test_dit_xl2_param_count():
    cfg = DiTConfig(hidden=1152, depth=28, num_heads=16, num_classes=1000, learn_sigma=True)
    pos_embed = (32 // 2) ** 2 * 1152  # a fixed buffer here, a (frozen) parameter in DiT's count
    assert dit_param_count(cfg, (32, 32, 4)) + pos_embed == DIT_XL2_PARAMS


@pytest.mark.parametrize("family", ["unet", "dit"])
def test_bfloat16_compute(family):
    x, t = _inputs(hw=8, c=3)
    labels = jnp.array([1, 2])
    cfg, make = (TINY_UNET, UNet) if family == "unet" else (TINY_DIT, DiT)
    low_model = make(_with(cfg, dtype="bfloat16"))
    shapes = nn.meta.unbox(jax.eval_shape(lambda: low_model.init(jax.random.key(0), x, t, labels)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    params = _fake_params(make(cfg), x, t, labels)
    low, high = jax.jit(lambda p: (low_model.apply(p, x, t, labels),
                                   make(cfg).apply(p, x, t, labels)))(params)
    assert low.dtype == jnp.float32 and high.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(low - high)))
    assert 0 < err < 0.05 * float(jnp.max(jnp.abs(high))), err


def test_bad_inputs_raise():
    x28 = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    four_levels = UNetConfig(block_channels=(8, 8, 8, 8), attention_levels=(False,) * 4,
                             resblock_updown=True)  # exact 2x2 pooling: 28 -> 14 -> 7 -> ?
    with pytest.raises(ValueError, match="divisible by 8; got 28x28"):
        jax.eval_shape(lambda x, t: UNet(four_levels).init(jax.random.key(0), x, t), x28, t)
    x4 = jax.ShapeDtypeStruct((1, 4, 4, 1), jnp.float32)
    with pytest.raises(ValueError, match="at least 8; got 4x4"):
        jax.eval_shape(lambda x, t: UNet(dataclasses.replace(four_levels, resblock_updown=False)
                                         ).init(jax.random.key(0), x, t), x4, t)
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(lambda x, t: UNet(UNetConfig()).init(jax.random.key(0), x, t,
                                                            jnp.zeros((1,), jnp.int32)), x28, t)
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(lambda x, t: DiT(_with(TINY_DIT, num_classes=0)).init(
            jax.random.key(0), x, t, jnp.zeros((1,), jnp.int32)), x28, t)
    x10 = jax.ShapeDtypeStruct((1, 10, 10, 1), jnp.float32)
    with pytest.raises(ValueError, match="patch size 4"):
        jax.eval_shape(lambda x, t: DiT(_with(TINY_DIT, patch_size=4)).init(
            jax.random.key(0), x, t), x10, t)
    with pytest.raises(ValueError, match="attention_levels"):
        UNetConfig(block_channels=(8, 16), attention_levels=(True,))
    with pytest.raises(ValueError, match="head_dim"):
        UNetConfig(block_channels=(12,), attention_levels=(True,), head_dim=8)
    # 28x28 with 3 levels is fine: 28 -> 14 -> 7
    jax.eval_shape(lambda x, t: UNet(UNetConfig()).init(jax.random.key(0), x, t), x28, t)


# ------------------------------------------------------------------ cross-attention conditioning
CROSS_UNET = UNetConfig(block_channels=(32, 64), layers_per_block=1,
                        attention_levels=(False, True), num_heads=4, norm_groups=8, num_classes=3,
                        cross_attention_dim=24, transformer_layers=2, context_tokens=2,
                        zero_init=False)
CROSS_DIT = _with(TINY_DIT, cross_attention_dim=24, context_tokens=2, learn_sigma=False)


def _diffusers_cross_unet(diffusers, **changes):
    """A small diffusers UNet2DConditionModel of CROSS_UNET's levels, widths and heads."""
    return diffusers.UNet2DConditionModel(**{
        "sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64),
        "layers_per_block": 1, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 24,
        "attention_head_dim": 4, "norm_num_groups": 8, **changes}).eval()


def _diffusers_output(torch, model, x, t, context):
    with torch.no_grad():
        out = model(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()),
                    torch.from_numpy(np.array(t)),
                    encoder_hidden_states=torch.from_numpy(np.array(context))).sample
    return out.numpy().transpose(0, 2, 3, 1)


def test_unet_cross_attention_matches_diffusers_unet2dconditionmodel(tmp_path):
    """Stable Diffusion's U-Net shape: a diffusers UNet2DConditionModel (cross-attention
    transformer blocks, two per level, conv 1x1 projections) saved with save_pretrained and
    loaded by jaxgen.hub.diffusers gives the same output for the same encoder states."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from jaxgen.hub.diffusers import load_diffusers

    torch.manual_seed(0)
    model = _diffusers_cross_unet(diffusers, transformer_layers_per_block=2)
    model.save_pretrained(str(tmp_path))
    loaded = load_diffusers(str(tmp_path), attention_kernel="reference")
    assert loaded.model.config == _with(CROSS_UNET, num_classes=0, out_channels=4,
                                        context_tokens=1, attention_kernel="reference")
    assert loaded.shape == (8, 8, 4)
    assert sum(p.numel() for p in model.parameters()) == sum(
        int(np.size(v)) for v in jax.tree.leaves(loaded.params))
    x, t = _inputs(c=4)
    context = jax.random.normal(jax.random.key(5), (2, 3, 24))
    ours = jax.jit(lambda p, x, t, c: loaded.model.apply(p, x, t, None, False, c))(
        loaded.params, x, t, context)
    np.testing.assert_allclose(ours, _diffusers_output(torch, model, x, t, context), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_cross_attention_labels_condition_through_their_context(backbone):
    """Labels reach a cross-attention backbone only through their learned context: no label
    is the null label's context; an explicit context equal to a label's table row gives that
    label's output; other labels give other outputs; classifier-free guidance with a null
    context equals the unconditional path at every scale, and guidance 1 is the conditional
    model alone."""
    from jaxgen.models.diffusion.samplers import guided_denoiser

    cfg, net = (CROSS_UNET, UNet) if backbone == "unet" else (CROSS_DIT, DiT)
    model = net(cfg)
    x, t = _inputs(c=2)
    params = _perturb(_fake_params(model, x, t, jnp.array([0, 1])))
    flat = params["params"]
    assert flat["context_embed"]["embedding"].shape == (4, 2 * 24)  # classes + null, S x Dc
    assert "label_embed" not in flat and "y_embedder" not in flat
    f = jax.jit(lambda x, t, y, c=None: model.apply(params, x, t, y, False, c))
    none, null, y02 = f(x, t, None), f(x, t, jnp.full((2,), 3, jnp.int32)), f(x, t,
                                                                              jnp.array([0, 2]))
    np.testing.assert_allclose(none, null, rtol=1e-5, atol=1e-5)  # two programs: float noise
    assert not np.allclose(none, y02, atol=1e-3)
    rows = flat["context_embed"]["embedding"][jnp.array([0, 2])].reshape(2, 2, 24)
    np.testing.assert_allclose(f(x, t, None, rows), y02, rtol=1e-5, atol=1e-5)

    den = lambda x, sigma, labels: f(x, sigma, labels)  # noqa: E731
    labels = jnp.array([0, 2], jnp.int32)
    nulls = jnp.full((2,), 3, jnp.int32)
    np.testing.assert_allclose(guided_denoiser(den, 1.0, labels, 3)(x, t), y02, rtol=1e-5,
                               atol=1e-5)
    for w in (0.0, 2.5):
        np.testing.assert_allclose(guided_denoiser(den, w, nulls, 3)(x, t), none,
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs class labels"):
        net(_with(cfg, num_classes=0)).init(jax.random.key(0), x, t)


def test_unet_on_odd_sizes_matches_diffusers_forward_upsample_size():
    """A 7x7 input (the autoencoder_mnist latent): the stride-2 conv rounds up (7 -> 4) and the
    up path interpolates to the skip's 7x7 as diffusers' UNet2DConditionModel does for sizes
    that are no multiple of its factor (forward_upsample_size); same output as diffusers."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from jaxgen.hub.diffusers import diffusers_name

    torch.manual_seed(0)
    model = _diffusers_cross_unet(diffusers, sample_size=7, use_linear_projection=True)
    cfg = _with(CROSS_UNET, num_classes=0, out_channels=4, transformer_layers=1,
                attention_kernel="reference")
    x, t = _inputs(hw=7, c=4)
    context = jax.random.normal(jax.random.key(5), (2, 1, 24))
    net = UNet(cfg)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: net.init(jax.random.key(0), x, t, None,
                                                           False, context)))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    from flax import traverse_util

    def tensor(path, leaf):
        name = diffusers_name(tuple(path[:-1]), cfg.levels, cross=True)
        w = state[f"{name}.{'bias' if path[-1] == 'bias' else 'weight'}"]
        if path[-1] == "kernel":
            w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
        return w.reshape(leaf.shape)

    flat = traverse_util.flatten_dict(shapes["params"])
    params = {"params": traverse_util.unflatten_dict(
        {p: jnp.asarray(tensor(p, leaf)) for p, leaf in flat.items()})}
    ours = jax.jit(lambda p: net.apply(p, x, t, None, False, context))(params)
    assert ours.shape == (2, 7, 7, 4)
    np.testing.assert_allclose(ours, _diffusers_output(torch, model, x, t, context), rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ValueError, match="resblock_updown needs H and W divisible by 2"):
        UNet(_with(cfg, resblock_updown=True)).init(jax.random.key(0), x, t, None, False,
                                                    context)


# ------------------------------------------------------------------ remat and scanned DiT blocks
# Every block is rematerialised by one helper (layers.rematted), so each policy is checked on
# the U-Nets once (a compile of a U-Net's gradient is ~30 s on 2 cores) and both on the DiT.
@pytest.mark.parametrize("backbone,policies", [("unet", ("full",)), ("unet_cross", ("dots",)),
                                               ("dit", ("full", "dots"))])
def test_remat_keeps_the_gradients(backbone, policies):
    """remat=full and remat=dots recompute activations in the backward pass; the gradients
    equal the stored-activation ones (dropout included: the same mask is replayed)."""
    cfg = {"unet": _with(TINY_UNET, dropout=0.1), "unet_cross": _with(CROSS_UNET, out_channels=2),
           "dit": _with(TINY_DIT, depth=3)}[backbone]
    net = UNet if backbone.startswith("unet") else DiT
    x, t = _inputs(c=2)
    labels = jnp.array([1, 2])
    params = _perturb(_fake_params(net(cfg), x, t, labels))

    def grads(remat):
        def loss(p):
            out = net(_with(cfg, remat=remat)).apply(p, x, t, labels, True,
                                                     rngs={"dropout": jax.random.key(2)})
            return jnp.sum(out ** 2)
        return jax.jit(jax.grad(loss))(params)

    stored = grads("none")
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(stored))
    for remat in policies:
        for a, b in zip(jax.tree.leaves(grads(remat)), jax.tree.leaves(stored)):
            np.testing.assert_allclose(a, b, atol=1e-5 * scale)


def test_scanned_dit_blocks_equal_the_unrolled_ones():
    """scan_layers stacks block i's parameters at index i of a leading "layers" axis; with
    the unrolled model's weights stacked that way the outputs are the same."""
    cfg = _with(TINY_DIT, depth=3)
    x, t = _inputs(hw=8, c=3)
    labels = jnp.array([0, 2])
    params = _perturb(_fake_params(DiT(cfg), x, t, labels))["params"]
    blocks = [params.pop(f"block{i}") for i in range(cfg.depth)]
    scanned = {**params, "blocks": jax.tree.map(lambda *b: jnp.stack(b), *blocks)}
    shapes = nn.meta.unbox(jax.eval_shape(
        lambda: DiT(_with(cfg, scan_layers=True)).init(jax.random.key(0), x, t, labels)))
    assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(jnp.shape, shapes["params"])
    unrolled = {**params, **{f"block{i}": b for i, b in enumerate(blocks)}}
    a = jax.jit(lambda p: DiT(cfg).apply({"params": p}, x, t, labels))(unrolled)
    b = jax.jit(lambda p: DiT(_with(cfg, scan_layers=True)).apply({"params": p}, x, t,
                                                                   labels))(scanned)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    specs = jax.eval_shape(lambda: DiT(_with(cfg, scan_layers=True)).init(
        jax.random.key(0), x, t, labels))["params"]["blocks"]["fc1"]["kernel"]
    assert specs.names == ("layers", "embed", "mlp")  # the stacked axis has a logical name
