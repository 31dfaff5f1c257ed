"""Optimizer chain and schedules (jaxgen.train.optim)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen.train.optim import OptimConfig, make_optimizer, make_schedule, muon_dimension_numbers


def test_warmup_cosine_schedule_closed_form():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, end_lr_factor=0.1)
    sched = make_schedule(cfg, 110)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-4)
    for t in (10, 35, 60, 110):
        frac = (t - 10) / 100
        want = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * frac))
        assert float(sched(t)) == pytest.approx(want, rel=1e-5)


def _params():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {"embedding": jax.random.normal(k[0], (10, 8)),
            "block": {"qkv": {"kernel": jax.random.normal(k[1], (8, 24))},
                      "norm": {"scale": jnp.ones(8)}},
            "head": {"kernel": jax.random.normal(k[2], (8, 10))}}


def test_muon_takes_hidden_matrices_and_leaves_the_rest_to_adamw():
    dims = muon_dimension_numbers(_params(), ("embedding", "head"))
    assert dims["embedding"] is None and dims["head"]["kernel"] is None
    assert dims["block"]["norm"]["scale"] is None
    assert dims["block"]["qkv"]["kernel"] == optax.contrib.MuonDimensionNumbers(0, 1)


def test_muon_update_of_a_matrix_is_orthogonalised():
    """Muon's first update of a hidden matrix is ~ -lr * U V^T of the (Nesterov) gradient:
    its singular values are all close to one another, unlike the gradient's."""
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), params)
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    v, _ = np.linalg.qr(rng.normal(size=(24, 8)))
    grads["block"]["qkv"]["kernel"] = jnp.asarray(u @ np.diag(np.geomspace(1, 10, 8)) @ v.T,
                                                  jnp.float32)
    tx = make_optimizer(OptimConfig(name="muon", lr=0.02, adam_lr=1e-3, schedule="constant"), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    s_grad = np.linalg.svd(np.asarray(grads["block"]["qkv"]["kernel"]), compute_uv=False)
    s_upd = np.linalg.svd(np.asarray(updates["block"]["qkv"]["kernel"]), compute_uv=False)
    assert s_grad.max() / s_grad.min() > 9
    assert s_upd.max() / s_upd.min() < 2
    # the embedding went through optax's Nesterov Adam: first step -lr * (1 + b1 (1-b1)/(1-b1^2))
    # for a constant positive gradient (bias-corrected moments, b1 = 0.9)
    emb = np.asarray(updates["embedding"])
    np.testing.assert_allclose(emb, -1e-3 * (1 + 0.9 * 0.1 / (1 - 0.81)), rtol=1e-4)


def test_config_strings_become_typed_fields():
    from jaxgen import settings
    cfg = settings.apply_overrides(OptimConfig(), ["name=muon", "muon_exclude=embedding,head,pos",
                                                   "muon_ns_steps=3"])
    assert cfg.muon_exclude == ("embedding", "head", "pos") and cfg.muon_ns_steps == 3


def test_muon_splits_multi_axis_kernels_by_their_logical_axes():
    """q [D, N, H] is one [D, N*H] matrix; kv [D, 2, K, H] is two (k and v); an attention
    output [N, H, D] reduces over (N, H); scanned layers stack matrices on a batch axis."""
    from jax.sharding import PartitionSpec as P
    params = {"q": jnp.zeros((8, 2, 4)), "kv": jnp.zeros((8, 2, 2, 4)),
              "out": jnp.zeros((2, 4, 8)), "wi": jnp.zeros((3, 8, 2, 16)),
              "embedding": jnp.zeros((10, 8)), "scale": jnp.zeros(8)}
    axes = {"q": P("embed", "heads", "kv"), "kv": P("embed", None, "kv_heads", "kv"),
            "out": P("heads", "kv", "embed"), "wi": P("layers", "embed", None, "mlp"),
            "embedding": P("vocab", "embed"), "scale": P("norm")}
    dims = muon_dimension_numbers(params, ("embedding",), axes)
    m = optax.contrib.MuonDimensionNumbers
    assert dims["q"] == m((0,), (1, 2)) and dims["kv"] == m((0,), (2, 3))
    assert dims["out"] == m((0, 1), (2,)) and dims["wi"] == m((1,), (3,))
    assert dims["embedding"] is None and dims["scale"] is None
