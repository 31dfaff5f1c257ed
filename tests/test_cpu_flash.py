"""The cpu_flash FFI kernel against reference_attention, its limits, sharding, and auto's choice."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen.nn.kernels import attention, choose_kernel, cpu_flash, reference_attention, shard_attention
from jaxgen.nn.kernels.cpu_flash import cpu_flash_attention, cpu_flash_unusable_reason

_F32 = jax.ShapeDtypeStruct((1, 8, 1, 16), jnp.float32)
UNAVAILABLE = cpu_flash_unusable_reason(_F32, _F32, _F32)
needs_kernel = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

# (B, Tq, Tk, N, K, H, causal, block_q, block_k): tiles that do and do not divide T, GQA/MQA,
# T_q < T_k (decode-like), T_q > T_k (leading rows see no key), head dims 16-128.
CASES = {
    "causal_gqa_tails": (2, 100, 100, 4, 2, 32, True, 32, 64),
    "mqa_fewer_queries": (1, 70, 130, 2, 1, 64, True, 16, 64),
    "more_queries_than_keys": (2, 130, 70, 2, 2, 16, True, 32, 64),
    "non_causal_h48": (2, 77, 200, 4, 4, 48, False, 32, 128),
    "default_tiles": (1, 300, 300, 2, 1, 64, True, 256, 256),
    "h128_odd_tiles": (1, 333, 333, 1, 1, 128, True, 100, 128),
}


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _value_and_grads(fn, q, k, v, do):
    def loss(q, k, v):
        o = fn(q, k, v)
        return jnp.sum(o * do), o
    grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@needs_kernel
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_flash_matches_reference_in_values_and_gradients(case):
    b, t_q, t_k, n, kv, h, causal, block_q, block_k = CASES[case]
    q, do = _random((b, t_q, n, h), 0), _random((b, t_q, n, h), 3)
    k, v = _random((b, t_k, kv, h), 1), _random((b, t_k, kv, h), 2)
    got, got_g = _value_and_grads(functools.partial(
        attention, causal=causal, kernel="cpu_flash", block_q=block_q, block_k=block_k), q, k, v, do)
    want, want_g = _value_and_grads(functools.partial(reference_attention, causal=causal),
                                    q, k, v, do)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    for name, g, w in zip("qkv", got_g, want_g):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")
    if causal and t_q > t_k:  # rows that see no key are zero, with zero gradient
        assert not np.any(np.asarray(got[:, :t_q - t_k]))
        assert not np.any(np.asarray(got_g[0][:, :t_q - t_k]))


@needs_kernel
def test_cpu_flash_under_vmap_shard_map_and_sharded_heads_on_8_devices():
    q, k, v = (_random((4, 64, 4, 16), s) for s in range(3))
    want = reference_attention(q, k, v, causal=True)
    fn = functools.partial(cpu_flash_attention, causal=True, block_q=16, block_k=64)
    vmapped = jax.vmap(lambda q, k, v: fn(q[None], k[None], v[None])[0])(q, k, v)
    np.testing.assert_allclose(vmapped, want, atol=1e-5)
    # vmap folds the mapped axis into the batch; unmapped k, v are broadcast; grads batch too
    shared = jax.jit(jax.vmap(fn, in_axes=(0, None, None)))(q[:, None], k[:1], v[:1])[:, 0]
    np.testing.assert_allclose(shared, reference_attention(q, jnp.repeat(k[:1], 4, 0),
                                                           jnp.repeat(v[:1], 4, 0), causal=True),
                               atol=1e-5)
    per_example = jax.vmap(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)))
    reference = jax.vmap(jax.grad(lambda q, k, v: jnp.sum(
        reference_attention(q, k, v, causal=True) ** 2)))
    np.testing.assert_allclose(per_example(q[:, None], k[:, None], v[:, None]),
                               reference(q[:, None], k[:, None], v[:, None]), atol=5e-5)
    mesh = jax.make_mesh((4, 2), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    sharding = NamedSharding(mesh, P("data", None, "model"))
    sq, sk, sv = (jax.device_put(x, sharding) for x in (q, k, v))
    sharded = shard_attention(fn, mesh, batch_axes="data", head_axes="model")
    got = jax.jit(sharded)(sq, sk, sv)
    assert got.sharding.spec == P("data", None, "model")
    np.testing.assert_allclose(got, want, atol=1e-5)
    # without shard_map, heads sharded over "model" are gathered by the partitioning rule
    plain = jax.jit(fn)(sq, sk, sv)
    np.testing.assert_allclose(plain, want, atol=1e-5)
    grad = lambda f: jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2)))
    for name, g, w in zip("qkv", grad(sharded)(sq, sk, sv),
                          grad(functools.partial(reference_attention, causal=True))(q, k, v)):
        np.testing.assert_allclose(g, w, atol=5e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("kwargs,shape,dtype,message", [
    ({"mask": jnp.ones((1, 1, 8, 8), bool)}, (1, 8, 1, 16), jnp.float32, "cannot take a mask"),
    ({}, (1, 8, 1, 16), jnp.bfloat16, "float32 only, got bfloat16"),
    ({}, (1, 8, 1, 8), jnp.float32, "multiple of 16, got 8"),
])
def test_cpu_flash_refuses_what_it_cannot_compute_in_one_line(kwargs, shape, dtype, message):
    q = jnp.ones(shape, dtype)
    with pytest.raises(ValueError, match=message) as e:
        cpu_flash_attention(q, q, q, **kwargs)
    assert "\n" not in str(e.value)
    if "mask" not in kwargs:  # through the dispatcher too
        with pytest.raises(ValueError, match=message):
            attention(q, q, q, kernel="cpu_flash", **kwargs)


def test_a_masked_call_with_a_maskless_kernel_named_uses_auto():
    """KV-cache decoding passes a mask: cpu_flash named by a model is a preference there."""
    r = np.random.default_rng(3)
    q, k, v = (jnp.asarray(r.normal(size=(1, 8, 2, 16)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(r.random((1, 1, 8, 8)) > 0.3)
    np.testing.assert_allclose(attention(q, k, v, mask=mask, kernel="cpu_flash"),
                               reference_attention(q, k, v, mask=mask), atol=2e-6)


@needs_kernel
@pytest.mark.parametrize("kwargs,message", [
    ({"block_k": 96}, "block_k a positive multiple of 64"),
    ({"block_q": 0}, "block_q >= 1"),
])
def test_cpu_flash_bad_blocks_raise(kwargs, message):
    q = jnp.ones((1, 8, 1, 16))
    with pytest.raises(ValueError, match=message):
        cpu_flash_attention(q, q, q, **kwargs)


def test_cpu_flash_says_why_it_is_unavailable(monkeypatch):
    assert cpu_flash_unusable_reason(_F32, _F32, platform="gpu") == (
        "attention kernel 'cpu_flash' runs on CPU; this platform is gpu")
    monkeypatch.setattr(cpu_flash, "_cpu_flags", lambda: {"avx2"})
    assert cpu_flash._load.__wrapped__()[1] == "attention kernel 'cpu_flash' needs a CPU with AVX-512F"
    monkeypatch.setattr(cpu_flash, "_cpu_flags", lambda: {"avx512f"})
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    ok, why = cpu_flash._load.__wrapped__()
    assert not ok and "needs a C++17 compiler" in why


@needs_kernel
def test_cpu_flash_library_is_built_once_per_source_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXGEN_CACHE", str(tmp_path))
    path = cpu_flash._library_path(cpu_flash._compiler())
    assert path.parent == tmp_path / "kernels" and not path.exists()
    cpu_flash._build(cpu_flash._compiler(), path)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == [path.name]  # no temp left


@needs_kernel
def test_auto_picks_cpu_flash_for_long_float32_attention_without_a_mask():
    q = jax.ShapeDtypeStruct((1, 512, 2, 64), jnp.float32)
    assert choose_kernel(q, q, causal=True, mask=None, platform="cpu") == "cpu_flash"
    assert choose_kernel(q, q, causal=True, mask=jnp.ones((1, 1, 512, 512), bool),
                              platform="cpu") == "chunked"
    bf16 = jax.ShapeDtypeStruct((1, 512, 2, 64), jnp.bfloat16)
    assert choose_kernel(bf16, bf16, causal=True, mask=None, platform="cpu") == "chunked"
    short = jax.ShapeDtypeStruct((1, 64, 2, 64), jnp.float32)
    assert choose_kernel(short, short, causal=True, mask=None, platform="cpu") == "short"


COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


@needs_kernel
@pytest.mark.parametrize("backward", [False, True])
def test_cpu_flash_keeps_a_sharded_batch_sharded_on_8_devices(backward):
    """Its custom_partitioning rule: each device runs the kernel on its own examples."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    q, k, v = (_random((8, 64, 4, 16), s) for s in range(3))
    fn = functools.partial(attention, causal=True, kernel="cpu_flash", block_q=16, block_k=64)
    ref = functools.partial(reference_attention, causal=True)
    if backward:
        fn, ref = (jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2))
                   for f in (fn, ref))
    sharded = tuple(jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (q, k, v))
    compiled = jax.jit(fn).lower(*sharded).compile()
    assert not [c for c in COLLECTIVES if c in compiled.as_text()]  # nothing is gathered
    outs = compiled.output_shardings if backward else (compiled.output_shardings,)
    assert all(o.spec == P("data") for o in outs)
    for got, want in zip(jax.tree.leaves(compiled(*sharded)), jax.tree.leaves(ref(q, k, v))):
        np.testing.assert_allclose(got, want, atol=5e-5)
