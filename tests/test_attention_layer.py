"""The Linen attention layer: RoPE, grouped-query heads and the KV cache, against naive references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn.attention import SelfAttention, apply_rope, init_cache, rope_tables
from jaxgen.nn.layers import MLP, norm


def _naive_mha(x, p, n, h):
    """Causal multi-head attention in numpy (float64), weights as the layer stores them: q
    [D, N, H], kv [D, 2, K, H] (here K = N), out [N, H, D]."""
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    q = np.einsum("btd,dnh->btnh", x, np.asarray(p["q"]["kernel"], np.float64))
    kv = np.einsum("btd,dsnh->btsnh", x, np.asarray(p["kv"]["kernel"], np.float64))
    k, v = kv[:, :, 0], kv[:, :, 1]
    s = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(h)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bnqk,bknh->bqnh", w, v)
    return np.einsum("btnh,nhd->btd", o, np.asarray(p["out"]["kernel"], np.float64))


def _init(layer, x):
    return nn.meta.unbox(jax.jit(layer.init)(jax.random.PRNGKey(0), x)["params"])


def test_mha_matches_naive_attention():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 16))
    layer = SelfAttention(num_heads=4, num_kv_heads=4, head_dim=4, kernel="reference")
    p = _init(layer, x)
    y, cache = jax.jit(layer.apply)({"params": p}, x)
    assert cache is None and y.shape == x.shape
    assert p["q"]["kernel"].shape == (16, 4, 4) and p["kv"]["kernel"].shape == (16, 2, 4, 4)
    assert p["out"]["kernel"].shape == (4, 4, 16)
    ref = _naive_mha(x, p, 4, 4)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights():
    """K=2 kv heads for N=4 query heads == MHA whose k/v heads copy each kv head for its group."""
    n, k, h, d = 4, 2, 4, 16
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 6, d))
    gqa = SelfAttention(num_heads=n, num_kv_heads=k, head_dim=h, kernel="reference")
    p = _init(gqa, x)
    kv = np.repeat(np.asarray(p["kv"]["kernel"]), n // k, axis=2)  # [D, 2, K, H] -> [D, 2, N, H]
    mha = SelfAttention(num_heads=n, num_kv_heads=n, head_dim=h, kernel="reference")
    p_mha = {"q": p["q"], "kv": {"kernel": jnp.asarray(kv)}, "out": p["out"]}
    y_gqa, _ = jax.jit(gqa.apply)({"params": p}, x)
    y_mha, _ = jax.jit(mha.apply)({"params": p_mha}, x)
    np.testing.assert_allclose(np.asarray(y_gqa), np.asarray(y_mha), atol=1e-5)


def test_rope_depends_on_relative_position_only():
    h = 8
    q = jax.random.normal(jax.random.PRNGKey(3), (1, 1, 1, h))
    k = jax.random.normal(jax.random.PRNGKey(4), (1, 1, 1, h))

    def score(m, n):
        sm, cm = rope_tables(jnp.array([m]), h)
        sn, cn = rope_tables(jnp.array([n]), h)
        return float(jnp.sum(apply_rope(q, sm, cm) * apply_rope(k, sn, cn)))

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    s0, c0 = rope_tables(jnp.array([0]), h)
    np.testing.assert_allclose(np.asarray(apply_rope(q, s0, c0)), np.asarray(q), atol=1e-7)
    # a rotation keeps the norm
    s, c = rope_tables(jnp.array([7]), h)
    assert float(jnp.linalg.norm(apply_rope(q, s, c))) == pytest.approx(float(jnp.linalg.norm(q)), rel=1e-5)


def test_cached_steps_equal_full_pass():
    layer = SelfAttention(num_heads=4, num_kv_heads=2, head_dim=4, kernel="reference")
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 6, 16))
    p = _init(layer, x)
    full, _ = jax.jit(layer.apply)({"params": p}, x)
    step = jax.jit(lambda p, x, c, i: layer.apply({"params": p}, x, None, c, jnp.arange(8)[None, :] <= i, i))
    cache = init_cache(2, 8, 2, 4)
    outs = []
    for i in range(6):
        y, cache = step(p, x[:, i:i + 1], cache, jnp.int32(i))
        outs.append(y)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), atol=1e-5)
    assert float(jnp.abs(cache["k"][:, 6:]).max()) == 0.0  # nothing written past the last step


def test_norms_and_mlp_against_closed_forms():
    x = jax.random.normal(jax.random.PRNGKey(6), (3, 10)) * 3 + 1
    y = norm("rmsnorm").apply({"params": {"scale": jnp.ones(10)}}, x)
    ref = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5)
    y = norm("layernorm", use_bias=True).apply(
        {"params": {"scale": jnp.ones(10), "bias": jnp.zeros(10)}}, x)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
    mlp = MLP(hidden=6, kind="swiglu")
    p = _init(mlp, x)
    wi, wo = np.asarray(p["wi"]["kernel"]), np.asarray(p["wo"]["kernel"])
    assert wi.shape == (10, 2, 6)  # gate and up on their own axis
    g, u = np.einsum("bd,dsf->sbf", np.asarray(x), wi)
    ref = (g / (1 + np.exp(-g)) * u) @ wo
    np.testing.assert_allclose(np.asarray(mlp.apply({"params": p}, x)), ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown MLP"):
        MLP(hidden=4, kind="relu").init(jax.random.PRNGKey(0), x)
