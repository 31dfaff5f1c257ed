"""Kernels under a sharded jit on 8 simulated devices, Pallas block rules, auto on TPU."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen.nn.kernels import attention, choose_kernel, reference_attention, shard_attention
from jaxgen.nn.kernels.pallas import block_size

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def _mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("backward", [False, True])
def test_chunked_keeps_a_sharded_batch_sharded_with_one_eighth_of_the_work(backward):
    mesh = _mesh((8,), ("data",))
    shape = (8, 64, 4, 16)
    q = jax.device_put(_random(shape, 0), NamedSharding(mesh, P("data")))
    fn = functools.partial(attention, causal=True, kernel="chunked", block_q=16, block_k=16)
    f = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)) if backward else fn
    sharded = jax.jit(f).lower(q, q, q).compile()
    text = sharded.as_text()
    assert not [c for c in COLLECTIVES if c in text]  # q, k, v are never gathered
    outs = sharded.output_shardings if backward else (sharded.output_shardings,)
    assert all(o.spec == P("data") for o in outs)
    single = jax.jit(f).lower(*(jax.ShapeDtypeStruct(shape, jnp.float32),) * 3).compile()
    ratio = sharded.cost_analysis()["flops"] / single.cost_analysis()["flops"]
    assert 0.1 < ratio < 0.15, ratio  # ~1/8 of the work per device


def test_pallas_under_shard_map_on_8_devices_matches_reference():
    mesh = _mesh((4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None, "model"))
    q, k, v = (jax.device_put(_random((4, 32, 4, 16), s), sharding) for s in range(3))
    fn = shard_attention(functools.partial(attention, causal=True, kernel="pallas",
                                           interpret=True, block_q=16, block_k=16),
                         mesh, batch_axes="data", head_axes="model")
    got = jax.jit(fn)(q, k, v)
    assert got.sharding.spec == P("data", None, "model")
    np.testing.assert_allclose(got, reference_attention(q, k, v, causal=True), atol=2e-5)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) ** 2)
    got_g = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(q, k, v)
    want_g = jax.grad(loss(functools.partial(reference_attention, causal=True)),
                      argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got_g, want_g):
        np.testing.assert_allclose(g, w, atol=5e-5, err_msg=f"d{name}")


def test_shard_attention_checks_its_mesh_and_divisibility():
    mesh = _mesh((8,), ("data",))
    fn = functools.partial(attention, kernel="xla")
    with pytest.raises(ValueError, match=r"mesh axes \['model'\] not in"):
        shard_attention(fn, mesh, head_axes="model")
    with pytest.raises(ValueError, match="batch 4 does not divide over mesh axes"):
        jax.jit(shard_attention(fn, mesh))(*(jnp.ones((4, 8, 2, 8)),) * 3)
    with pytest.raises(ValueError, match="needs a mesh"):
        shard_attention(fn)


@pytest.mark.parametrize("size,t,want", [(128, 256, 128), (128, 48, 16), (128, 24, 8),
                                         (32, 96, 32), (64, 64, 64)])
def test_pallas_blocks_are_powers_of_two_that_divide_t(size, t, want):
    got = block_size(size, t, "block_q", interpret=True)
    assert got == want and t % got == 0 and got & (got - 1) == 0


@pytest.mark.parametrize("size,t,interpret,message", [
    (6, 16, True, "16 is not a multiple of block_q=6"),
    (0, 16, True, "block_q must be positive"),
    (128, 24, False, "needs block_q >= 16 on a GPU"),
])
def test_pallas_bad_blocks_raise_one_line(size, t, interpret, message):
    with pytest.raises(ValueError, match=message):
        block_size(size, t, "block_q", interpret=interpret)


def test_pallas_rounded_block_gives_reference_values():
    r = np.random.default_rng(3)
    q, k, v = (jnp.asarray(r.normal(size=(1, 48, 2, 8)), jnp.float32) for _ in range(3))
    got = attention(q, k, v, causal=True, kernel="pallas", interpret=True)  # blocks 128 -> 16
    np.testing.assert_allclose(got, reference_attention(q, k, v, causal=True), atol=2e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_auto_on_tpu_uses_splash_where_it_runs_else_xla_never_a_cpu_kernel(dtype):
    q = jax.ShapeDtypeStruct((2, 4096, 8, 128), dtype)
    assert choose_kernel(q, q, causal=True, mask=None, platform="tpu") == "splash"
    odd = jax.ShapeDtypeStruct((2, 4000, 8, 128), dtype)  # T not a multiple of 128
    assert choose_kernel(odd, odd, causal=True, mask=None, platform="tpu") == "xla"
    mask = jnp.ones((4096, 4096), bool)  # an arbitrary mask: splash takes none
    assert choose_kernel(q, q, causal=False, mask=mask, platform="tpu") == "xla"


def test_auto_on_gpu_rejects_blocks_the_gpu_cannot_tile():
    q = jax.ShapeDtypeStruct((1, 24, 4, 64), jnp.float32)  # 24: power-of-two factor 8 < 16
    assert choose_kernel(q, q, causal=True, mask=None, platform="gpu") == "xla"


def test_chunked_default_split_keeps_whole_shards_per_device():
    from jaxgen.nn.kernels.chunked import default_batch_split
    assert jax.device_count() == 8
    assert [default_batch_split(b) for b in (16, 8, 4, 12, 32)] == [2, 1, 1, 1, 4]


def test_chunked_with_example_slots_stays_sharded_on_8_devices():
    mesh = _mesh((8,), ("data",))
    q = jax.device_put(_random((16, 32, 2, 8), 1), NamedSharding(mesh, P("data")))
    fn = functools.partial(attention, causal=True, kernel="chunked", block_q=8, block_k=8)
    grad = jax.jit(jax.grad(lambda q: jnp.sum(fn(q, q, q) ** 2))).lower(q).compile()
    assert not [c for c in COLLECTIVES if c in grad.as_text()]
    assert grad.output_shardings.spec == P("data")


@pytest.mark.parametrize("split", [2, 4])
def test_chunked_batch_split_matches_reference_with_gqa_and_mask(split):
    from jaxgen.nn.kernels.chunked import chunked_attention
    q = _random((4, 12, 4, 8), 5)
    k, v = _random((4, 12, 2, 8), 6), _random((4, 12, 2, 8), 7)
    lengths = jnp.array([12, 9, 5, 12])
    mask = (jnp.arange(12)[None, :] < lengths[:, None])[:, None, None, :]
    do = _random((4, 12, 4, 8), 8)

    def run(fn):
        def loss(q, k, v):
            out = fn(q, k, v, causal=True, mask=mask)
            return jnp.sum(out * do), out
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    (got_g, got), (want_g, want) = run(functools.partial(
        chunked_attention, block_q=5, block_k=4, batch_split=split)), run(reference_attention)
    np.testing.assert_allclose(got, want, atol=2e-5)
    for name, g, w in zip("qkv", got_g, want_g):
        np.testing.assert_allclose(g, w, atol=2e-5, err_msg=f"d{name}")
