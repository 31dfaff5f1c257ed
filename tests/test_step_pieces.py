"""The composable step pieces: EMA (with warm-up), the guarded Optax update, finiteness."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen.config import TrainConfig
from jaxgen.errors import UsageError
from jaxgen.train.step import EMAConfig, all_finite, apply_gradients, ema_update, global_norm


def test_ema_update_matches_closed_form():
    ema = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    params = {"w": jnp.array([5.0, -2.0]), "b": jnp.array(0.0)}
    out = ema_update(ema, params, 0.9)
    np.testing.assert_allclose(out["w"], [0.9 * 1 + 0.1 * 5, 0.9 * 2 + 0.1 * -2], rtol=1e-6)
    np.testing.assert_allclose(out["b"], 2.7, rtol=1e-6)
    # n updates towards a constant: ema_n = p + decay^n (ema_0 - p)
    e = {"x": jnp.array(0.0)}
    for _ in range(20):
        e = ema_update(e, {"x": jnp.array(1.0)}, 0.8)
    np.testing.assert_allclose(e["x"], 1.0 - 0.8 ** 20, rtol=1e-5)


def test_ema_warmup_schedule():
    cfg = EMAConfig(0.999, warmup=True)
    for t in (0, 1, 10, 100, 100_000):
        assert float(cfg.decay_at(jnp.asarray(t))) == pytest.approx(min(0.999, (1 + t) / (10 + t)),
                                                                    rel=1e-6)
    assert float(EMAConfig(0.99).decay_at(jnp.asarray(0))) == pytest.approx(0.99)
    assert EMAConfig.from_train(TrainConfig(ema_decay=0.0)) is None
    with pytest.raises(UsageError, match="ema_decay"):
        EMAConfig(1.5)


def test_apply_gradients_skips_when_not_ok():
    tx = optax.adam(0.1)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    grads = {"w": jnp.array([1.0, jnp.nan, 0.0])}
    ok = all_finite(grads)
    assert not bool(ok)
    p, s = apply_gradients(tx, params, state, grads, ok)
    np.testing.assert_array_equal(p["w"], params["w"])
    assert int(s[0].count) == 0
    p, s = apply_gradients(tx, params, state, {"w": jnp.ones(3)}, all_finite({"w": jnp.ones(3)}))
    np.testing.assert_allclose(p["w"], 1.0 - 0.1, rtol=1e-5)
    assert int(s[0].count) == 1
    assert bool(all_finite({"i": jnp.array([1, 2])}, jnp.array(1.0)))
    assert not bool(jax.jit(all_finite)(jnp.array([jnp.inf])))


def test_global_norm_and_finiteness_in_float16():
    """The norm sums squares in float32: a float16 tree of norm 300 (its squares overflow
    float16) is finite and its norm exact; NaN, -Inf and Inf in any leaf are caught."""
    tree = {"a": jnp.full((9,), 100.0, jnp.float16), "b": jnp.array([0.0], jnp.float16),
            "i": jnp.array([7])}
    assert global_norm(tree).dtype == jnp.float32
    np.testing.assert_allclose(float(global_norm(tree)), 300.0, rtol=1e-6)
    assert bool(all_finite(tree))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        t = {**tree, "b": jnp.array([bad], jnp.float16)}
        assert not bool(jax.jit(all_finite)(t)), bad
    assert bool(all_finite({}, {"i": jnp.array([1])}))


def test_guarded_update_compiles_linearly_in_leaves():
    """The finiteness guard is computed once, not copied into every guarded update: with 96
    leaves the compiled step holds far fewer than leaves x leaves scalar ops (the per-leaf
    all(isfinite) it replaces compiled into ~2 x 96 x 96 of them)."""
    n = 96
    params = {f"w{i}": jnp.ones((3,)) for i in range(n)}
    tx = optax.adam(0.1)

    def step(params, opt_state):
        grads = jax.tree.map(lambda p: p * 2.0, params)
        return apply_gradients(tx, params, opt_state, grads, all_finite(grads))

    text = jax.jit(step).lower(params, tx.init(params)).compile().as_text()
    ops = len(re.findall(r"= \S+ (?:and|add|or)\(", text))
    assert ops < 10 * n, ops
