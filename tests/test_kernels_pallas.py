"""The Pallas flash-attention kernel (interpret mode on CPU) against reference_attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn.kernels import attention, reference_attention


def test_pallas_interpret_matches_reference_values_and_grads_causal_gqa():
    r = np.random.default_rng(0)
    q = jnp.asarray(r.normal(size=(1, 16, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(r.normal(size=(1, 16, 2, 8)), jnp.float32) for _ in range(2))
    do = jnp.asarray(r.normal(size=q.shape), jnp.float32)

    def value_and_grads(fn):
        def loss(q, k, v):
            o = fn(q, k, v)
            return jnp.sum(o * do), o
        grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
        return out, grads

    got, got_grads = value_and_grads(lambda q, k, v: attention(
        q, k, v, causal=True, kernel="pallas", interpret=True, block_q=16, block_k=16))
    want, want_grads = value_and_grads(lambda q, k, v: reference_attention(q, k, v, causal=True))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    for name, g, w in zip("qkv", got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("shape_k,kwargs,message", [
    ((1, 16, 2, 8), {}, r"^attention kernel 'pallas' needs a GPU \(or interpret=True\); "
                        r"this platform is cpu$"),
    ((1, 16, 2, 8), {"interpret": True, "mask": jnp.ones((16, 16), bool)}, "cannot take a mask"),
    ((1, 8, 2, 8), {"interpret": True}, "needs T_q == T_k"),
    ((1, 16, 2, 8), {"interpret": True, "block_q": 6}, "16 is not a multiple of block_q=6"),
])
def test_pallas_unsupported_inputs_raise(shape_k, kwargs, message):
    from jaxgen.nn.kernels import pallas_attention

    q, k = jnp.ones((1, 16, 4, 8)), jnp.ones(shape_k)
    with pytest.raises(ValueError, match=message):
        pallas_attention(q, k, k, **kwargs)
    if "mask" not in kwargs:  # the dispatcher passes the kernel's refusal on
        with pytest.raises(ValueError, match=message):
            attention(q, k, k, kernel="pallas", **kwargs)
