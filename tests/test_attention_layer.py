"""The Linen attention layer: RoPE, grouped-query heads and the KV cache, against naive references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn.attention import SelfAttention, apply_rope, init_cache, rope_tables
from jaxgen.nn.layers import MLP, LayerNorm, RMSNorm


def _naive_mha(x, w_qkv, w_out, n, h):
    """Causal multi-head attention in numpy (float64), weights as the layer stores them."""
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    qkv = x @ np.asarray(w_qkv, np.float64)
    q, k, v = (qkv[..., i * n * h:(i + 1) * n * h].reshape(b, t, n, h) for i in range(3))
    s = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(h)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bnqk,bknh->bqnh", p, v).reshape(b, t, n * h)
    return o @ np.asarray(w_out, np.float64)


def _init(layer, x):
    return nn.meta.unbox(jax.jit(layer.init)(jax.random.PRNGKey(0), x)["params"])


def test_mha_matches_naive_attention():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 16))
    layer = SelfAttention(num_heads=4, num_kv_heads=4, head_dim=4, kernel="reference")
    p = _init(layer, x)
    y, cache = jax.jit(layer.apply)({"params": p}, x)
    assert cache is None and y.shape == x.shape
    ref = _naive_mha(x, p["qkv"]["kernel"], p["out"]["kernel"], 4, 4)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights():
    """K=2 kv heads for N=4 query heads == MHA whose k/v heads copy each kv head for its group."""
    n, k, h, d = 4, 2, 4, 16
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 6, d))
    gqa = SelfAttention(num_heads=n, num_kv_heads=k, head_dim=h, kernel="reference")
    p = _init(gqa, x)
    w = np.asarray(p["qkv"]["kernel"])
    wq, wk, wv = w[:, :n * h], w[:, n * h:(n + k) * h], w[:, (n + k) * h:]
    rep = lambda m: np.repeat(m.reshape(d, k, h), n // k, axis=1).reshape(d, n * h)
    mha = SelfAttention(num_heads=n, num_kv_heads=n, head_dim=h, kernel="reference")
    p_mha = {"qkv": {"kernel": jnp.asarray(np.concatenate([wq, rep(wk), rep(wv)], 1))}, "out": p["out"]}
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
    y = RMSNorm().apply({"params": {"scale": jnp.ones(10)}}, x)
    ref = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5)
    y = LayerNorm().apply({"params": {"scale": jnp.ones(10), "bias": jnp.zeros(10)}}, x)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
    mlp = MLP(hidden=6, kind="swiglu")
    p = _init(mlp, x)
    wi, wo = np.asarray(p["wi"]["kernel"]), np.asarray(p["wo"]["kernel"])
    g, u = np.split(np.asarray(x) @ wi, 2, axis=-1)
    ref = (g / (1 + np.exp(-g)) * u) @ wo
    np.testing.assert_allclose(np.asarray(mlp.apply({"params": p}, x)), ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown MLP"):
        MLP(hidden=4, kind="relu").init(jax.random.PRNGKey(0), x)
