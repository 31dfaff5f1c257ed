"""The splash (Pallas TPU) attention kernel: numerics in the Pallas interpreter on CPU against
reference_attention (unsharded and under shard_map on simulated CPU devices), the one-line reasons
it cannot run, and compiled for a v5e:2x2 topology. Skipped, with one line, without libtpu."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen import aot
from jaxgen.nn.kernels.reference import reference_attention
from jaxgen.nn.kernels.splash import kernel_platform, splash_attention, splash_unusable_reason

pytest.importorskip(
    "libtpu", reason="libtpu is not installed (pip install 'jax[tpu]'): TPU compile tests skipped")


def _qkv(b, t_q, t_k, n, kv, h, seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, t_q, n, h)), dtype)
    k, v = (jnp.asarray(r.normal(size=(b, t_k, kv, h)), dtype) for _ in range(2))
    return q, k, v


def _values_and_grads(fn, q, k, v):
    do = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def loss(q, k, v):
        o = fn(q, k, v)
        return jnp.sum(o.astype(jnp.float32) * do), o

    grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize("causal, t_q", [(True, 256), (False, 256), (True, 128)])
def test_interpret_matches_reference_values_and_grads_gqa(causal, t_q):
    q, k, v = _qkv(2, t_q, 256, 4, 2, 64)  # GQA: 2 query heads per key/value head
    got, got_g = _values_and_grads(
        lambda q, k, v: splash_attention(q, k, v, causal=causal, interpret=True, block_q=128,
                                         block_k=128), q, k, v)
    want, want_g = _values_and_grads(
        lambda q, k, v: reference_attention(q, k, v, causal=causal), q, k, v)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    for name, g, w in zip("qkv", got_g, want_g):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


def test_interpret_under_shard_map_over_batch_and_heads_matches_reference():
    mesh = jax.make_mesh((2, 2), ("data", "tensor"), devices=jax.devices()[:4],
                         axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    q, k, v = _qkv(4, 128, 128, 4, 2, 32, seed=2)
    spec = NamedSharding(mesh, P("data", None, "tensor", None))
    q, k, v = (jax.device_put(x, spec) for x in (q, k, v))
    with jax.set_mesh(mesh):
        got = jax.jit(lambda q, k, v: splash_attention(q, k, v, causal=True, scale=0.3,
                                                       interpret=True))(q, k, v)
    assert got.sharding.spec == spec.spec
    np.testing.assert_allclose(got, reference_attention(q, k, v, causal=True, scale=0.3),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("shapes, kwargs, reason", [
    ((128, 128), {"platform": "cpu"}, "needs a TPU (or interpret=True); the devices are cpu"),
    ((128, 128), {"mask": jnp.ones((128, 128), bool)}, "cannot take a mask"),
    ((128, 100), {}, "needs T_k a multiple of 128, got 100"),
    ((12, 128), {}, "needs T_q a multiple of 8, got 12"),
    ((256, 128), {"causal": True}, "needs T_q <= T_k when causal"),
    ((128, 128), {"dtype": jnp.float16}, "needs float32 or bfloat16, got float16"),
])
def test_unusable_reason_is_one_line(shapes, kwargs, reason):
    kwargs = dict(kwargs)
    q, k, v = _qkv(1, shapes[0], shapes[1], 2, 2, 8, dtype=kwargs.pop("dtype", jnp.float32))
    platform = kwargs.pop("platform", "tpu")
    got = splash_unusable_reason(q, k, kwargs.get("mask"), platform,
                                 causal=kwargs.get("causal", False))
    assert got is not None and reason in got and "\n" not in got
    if platform == "tpu":  # the wrapper raises the same line (interpret lifts only the platform)
        with pytest.raises(ValueError, match=reason.split(",")[0]):
            splash_attention(q, k, v, interpret=True, **kwargs)


def test_usable_inputs_have_no_reason():
    q, k, _ = _qkv(1, 64, 256, 4, 1, 96, dtype=jnp.bfloat16)  # MQA, T_q < T_k, odd head dim
    assert splash_unusable_reason(q, k, None, "tpu", causal=True) is None


# ---------------------------------------------------------------- compiled for TPU

B, T, N, K, H = 4, 512, 8, 4, 128



@pytest.fixture(scope="module")
def v5e_mesh():
    return aot.make_topology_mesh(aot.topology_devices("v5e:2x2"), {"data": 2, "tensor": 2})


def _compiled(mesh, fn, batch_axes=("data",), head_axes=("tensor",)):
    spec = NamedSharding(mesh, P(batch_axes, None, head_axes, None))
    q = jax.ShapeDtypeStruct((B, T, N, H), jnp.bfloat16, sharding=spec)
    kv = jax.ShapeDtypeStruct((B, T, K, H), jnp.bfloat16, sharding=spec)
    with jax.set_mesh(mesh):
        assert kernel_platform() == "tpu" and jax.default_backend() == "cpu"
        return aot.aot_compile(jax.jit(fn).lower(q, kv, kv)), spec


def _fwd(q, k, v):
    return splash_attention(q, k, v, causal=True)


def _grad(q, k, v):
    return jax.grad(lambda q, k, v: _fwd(q, k, v).astype(jnp.float32).sum(),
                    argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("fn, kernels", [(_fwd, 1), (_grad, 3)])  # fwd; fwd + dq + dkv
def test_compiles_for_v5e_as_mosaic_calls_with_no_collective(v5e_mesh, fn, kernels):
    compiled, spec = _compiled(v5e_mesh, fn)
    text = compiled.as_text()
    assert aot.custom_call_targets(text).get("tpu_custom_call") == kernels
    summary = aot.collective_summary(text)
    moved = {kind: summary[kind]["count"] for kind in aot.COLLECTIVE_KINDS
             if summary[kind]["count"] or summary["dcn"][kind]["count"]}
    assert moved == {}  # no all-gather of q/k/v over batch or heads, nothing else either
    assert all(s.spec == spec.spec for s in jax.tree.leaves(compiled.output_shardings))


def test_batch_that_does_not_divide_the_batch_axes_is_one_line_error(v5e_mesh):
    q = jax.ShapeDtypeStruct((3, T, N, H), jnp.bfloat16)
    with jax.set_mesh(v5e_mesh), pytest.raises(ValueError, match="batch 3 does not divide"):
        jax.jit(_fwd).lower(q, q, q)
