"""Every attention kernel that runs on CPU matches reference_attention in values and gradients."""
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn import kernels
from jaxgen.nn.kernels import attention, choose_kernel, dispatch, reference_attention
from jaxgen.nn.kernels.chunked import block_plan, chunked_attention

# (B, Tq, Tk, N, K, H, causal, mask kind)
CASES = {
    "causal_mha": (2, 12, 12, 2, 2, 8, True, None),
    "gqa_padding_mask": (2, 10, 10, 4, 2, 8, False, "keys"),
    "mqa_causal_decode": (1, 5, 11, 4, 1, 8, True, None),       # Tq < Tk, bottom-right causal
    "causal_more_queries": (1, 9, 6, 2, 1, 8, True, None),      # first rows see no key -> zeros
    "gqa_causal_full_mask": (2, 8, 8, 4, 2, 8, True, "full"),   # includes a fully masked row
}


def _inputs(case, seed=0, dtype=jnp.float32):
    b, t_q, t_k, n, kv, h, causal, mask_kind = CASES[case]
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, t_q, n, h)), dtype)
    k = jnp.asarray(r.normal(size=(b, t_k, kv, h)), dtype)
    v = jnp.asarray(r.normal(size=(b, t_k, kv, h)), dtype)
    do = jnp.asarray(r.normal(size=(b, t_q, n, h)), jnp.float32)
    mask = None
    if mask_kind == "keys":  # key padding, [B, 1, 1, Tk]
        lengths = np.array([t_k, t_k - 3])[:b]
        mask = jnp.asarray(np.arange(t_k)[None, :] < lengths[:, None])[:, None, None, :]
    elif mask_kind == "full":  # arbitrary [B, N, Tq, Tk] with one query row hidden from all keys
        m = r.random((b, n, t_q, t_k)) > 0.3
        m[0, 1, 3, :] = False
        mask = jnp.asarray(m)
    return q, k, v, do, causal, mask


def _value_and_grads(fn, q, k, v, do):
    def loss(q, k, v):
        o = fn(q, k, v)
        return jnp.sum(o.astype(jnp.float32) * do), o
    grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@functools.lru_cache(maxsize=None)
def _reference(case):
    q, k, v, do, causal, mask = _inputs(case)
    return _value_and_grads(
        lambda q, k, v: reference_attention(q, k, v, causal=causal, mask=mask), q, k, v, do)


def _assert_matches(kernel_fn, case, atol=2e-5, **kw):
    q, k, v, do, causal, mask = _inputs(case)
    got, got_grads = _value_and_grads(
        lambda q, k, v: kernel_fn(q, k, v, causal=causal, mask=mask, **kw), q, k, v, do)
    want, want_grads = _reference(case)
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-5)
    for name, g, w in zip("qkv", got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=atol, rtol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kernel", ["xla", "short", "chunked"])
def test_kernel_matches_reference(kernel, case):
    _assert_matches(lambda *a, **kw: attention(*a, kernel=kernel, **kw), case)


@pytest.mark.parametrize("case,block_q,block_k,heads_per_step", [
    ("gqa_causal_full_mask", 3, 5, 1), ("mqa_causal_decode", 2, 4, None),
    ("gqa_padding_mask", 64, 3, -1)])
def test_chunked_blocks_that_do_not_divide_t(case, block_q, block_k, heads_per_step):
    _assert_matches(chunked_attention, case, block_q=block_q, block_k=block_k,
                    heads_per_step=heads_per_step)


def test_chunked_bfloat16_close_to_float32_reference():
    q, k, v, _, causal, mask = _inputs("gqa_causal_full_mask", dtype=jnp.bfloat16)
    got = jax.jit(lambda q, k, v: chunked_attention(q, k, v, causal=causal, mask=mask,
                                                    block_q=4, block_k=4))(q, k, v)
    assert got.dtype == jnp.bfloat16
    want = reference_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                               v.astype(jnp.float32), causal=causal, mask=mask)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)


def _shapes_in(jaxpr):
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield getattr(var.aval, "shape", ())
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _shapes_in(inner)


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_never_materialises_the_score_matrix(causal):
    t = 64
    q = jnp.ones((1, t, 2, 8))
    loss = lambda fn: lambda q: jnp.sum(fn(q, q, q, causal=causal))  # noqa: E731
    square = lambda jaxpr: any(s[-2:] == (t, t) for s in _shapes_in(jaxpr.jaxpr))  # noqa: E731
    assert square(jax.make_jaxpr(jax.grad(loss(reference_attention)))(q))  # the check can fail
    chunked = lambda *a, **kw: chunked_attention(*a, block_q=16, block_k=16, **kw)  # noqa: E731
    assert not square(jax.make_jaxpr(jax.grad(loss(chunked)))(q))


def test_causal_plan_skips_hidden_blocks_and_covers_visible_pairs():
    t, blk = 64, 16
    plan = block_plan(t, t, blk, blk, causal=True)
    tiles = [(qb, kb) for qb in plan for kb in qb.keys]
    assert len(tiles) == 4 * 5 // 2  # lower triangle of a 4x4 tiling, not 16 tiles
    covered = np.zeros((t, t), bool)
    for qb, kb in tiles:
        covered[qb.start:qb.stop, kb.start:kb.stop] = True
        assert kb.diagonal == (kb.stop - 1 > qb.start)
    assert (covered >= np.tril(np.ones((t, t), bool))).all()
    assert covered.sum() < 0.65 * t * t


@pytest.mark.parametrize("kwargs,message", [
    ({"block_q": 0}, "block sizes must be positive"),
    ({"heads_per_step": 3}, "heads_per_step=3 must be a positive divisor"),
    ({"mask": jnp.ones((2, 5, 5), bool)}, "does not broadcast to"),
])
def test_chunked_bad_arguments_raise(kwargs, message):
    q = jnp.ones((2, 6, 2, 4))
    with pytest.raises(ValueError, match=message):
        chunked_attention(q, q, q, **kwargs)


def test_cudnn_on_cpu_raises_one_line():
    q = jnp.ones((1, 8, 2, 8), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"^attention kernel 'cudnn' needs a CUDA GPU; "
                                         r"this platform is cpu$"):
        attention(q, q, q, kernel="cudnn")


def test_unknown_kernel_lists_valid_names():
    q = jnp.ones((1, 4, 1, 4))
    with pytest.raises(ValueError, match="unknown attention kernel 'flash'.*chunked, cpu_flash, pallas"):
        attention(q, q, q, kernel="flash")


@pytest.mark.parametrize("t,causal,expected", [(16, False, "short"), (16, True, "short"),
                                               (512, True, "chunked")])
def test_auto_on_cpu_returns_reference_values(t, causal, expected):
    r = np.random.default_rng(1)
    q, k, v = (jnp.asarray(r.normal(size=(1, t, 2, 8)), jnp.float32) for _ in range(3))
    assert choose_kernel(q, k, causal=causal, mask=None) == expected
    got = jax.jit(lambda q, k, v: attention(q, k, v, causal=causal))(q, k, v)
    want = jax.jit(lambda q, k, v: reference_attention(q, k, v, causal=causal))(q, k, v)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_auto_on_gpu_prefers_cudnn_and_logs_each_fallback_once(caplog):
    bf16 = jax.ShapeDtypeStruct((1, 256, 4, 64), jnp.bfloat16)
    f32 = jax.ShapeDtypeStruct((1, 256, 4, 64), jnp.float32)
    odd = jax.ShapeDtypeStruct((1, 100, 4, 64), jnp.float32)
    choose = lambda q, **kw: choose_kernel(q, q, causal=True, platform="gpu", **kw)  # noqa
    dispatch._logged.clear()
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        assert choose(bf16, mask=None) == "cudnn"
        assert choose(f32, mask=None) == "pallas"
        assert choose(f32, mask=None) == "pallas"
        assert choose(f32, mask=jnp.ones((1, 1, 256, 256), bool)) == "xla"
        assert choose(odd, mask=None) == "xla"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "uses 'pallas'" in messages[0] and "float16 or bfloat16" in messages[0]
    assert "cannot take a mask" in messages[1]
    assert "multiple of block_backward=32, got 100" in messages[2]


def test_kernel_names_are_public():
    assert set(kernels.KERNELS) == {"auto", "reference", "xla", "cudnn", "short", "chunked",
                                    "cpu_flash", "pallas", "splash"}


@pytest.mark.parametrize("kernel", ["reference", "xla", "short", "chunked", "cpu_flash"])
@pytest.mark.parametrize("k_shape,v_shape,message", [
    ((1, 8, 2, 16), (1, 8, 2, 32), r"needs q \[B,Tq,N,H\] and k, v \[B,Tk,K,H\]"),
    ((1, 8, 3, 16), (1, 8, 3, 16), r"query heads \(4\) must be a multiple of key/value heads \(3\)"),
])
def test_every_kernel_checks_qkv_shapes_in_one_line(kernel, k_shape, v_shape, message):
    q = jnp.ones((1, 8, 4, 16))
    with pytest.raises(ValueError, match=message) as e:
        attention(q, jnp.ones(k_shape), jnp.ones(v_shape), kernel=kernel)
    assert "\n" not in str(e.value)
