"""The GAN family: penalties against hand-computed values, spectral norm, the two phases of the
step, sharded = single-device, resume exactness, checkpoint contents, bad input."""
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import experiments, models
from jaxgen.errors import UsageError
from jaxgen.models.gan import GANModel, NetConfig, losses
from jaxgen.models.gan.family import GANFamily

make_family = GANFamily
from jaxgen.models.gan.step import GANStep
from jaxgen.train import loop
from jaxgen.train import mesh as mesh_lib
from envs import host_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFO = {"kind": "image", "shape": (28, 28, 1), "num_classes": 10, "source": "mnist_embedded"}


def _config(*overrides, spec="gan_mnist:smoke"):
    return experiments.apply_overrides(experiments.get_config(spec), list(overrides))


def _step_of(family) -> GANStep:
    """The GANStep behind a family's train_step."""
    assert isinstance(family.step, GANStep)
    return family.step


def _tree_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


# ----------------------------------------------------------------------------- losses
def test_penalties_equal_hand_computed_values_on_a_linear_discriminator():
    # D(x) = <w, x> + b: grad_x D = w everywhere, so R1 = gamma/2 ||w||^2 and
    # GP = lambda (||w|| - 1)^2 exactly, whatever the inputs and interpolates.
    w = jax.random.normal(jax.random.PRNGKey(0), (28, 28, 1))
    d_fn = lambda x: jnp.sum(x * w, axis=(1, 2, 3)) + 0.3
    x_real = jax.random.uniform(jax.random.PRNGKey(1), (5, 28, 28, 1))
    x_fake = jax.random.uniform(jax.random.PRNGKey(2), (5, 28, 28, 1))
    norm2 = float(jnp.sum(w * w))
    np.testing.assert_allclose(float(losses.r1_penalty(d_fn, x_real, 10.0)), 5.0 * norm2, rtol=1e-5)
    gp = losses.gradient_penalty(d_fn, x_real, x_fake, jax.random.PRNGKey(3), 10.0)
    np.testing.assert_allclose(float(gp), 10.0 * (np.sqrt(norm2) - 1.0) ** 2, rtol=1e-5)
    # A unit-norm critic pays no gradient penalty.
    unit = lambda x: d_fn(x) / np.sqrt(norm2)
    assert float(losses.gradient_penalty(unit, x_real, x_fake, jax.random.PRNGKey(3), 10.0)) < 1e-8


def test_losses_at_known_points():
    z, one = jnp.zeros(4), jnp.ones(4)
    np.testing.assert_allclose(float(losses.d_loss("nonsaturating", z, z)), 2 * np.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(losses.g_loss("nonsaturating", z)), np.log(2), rtol=1e-6)
    assert float(losses.d_loss("hinge", one, -one)) == 0.0          # margins met
    assert float(losses.d_loss("lsgan", one, z)) == 0.0             # real -> 1, fake -> 0
    assert float(losses.d_loss("wgan", 3 * one, one)) == -2.0       # E D(fake) - E D(real)
    assert float(losses.g_loss("hinge", 2 * one)) == -2.0


def test_lazy_penalty_is_computed_every_k_updates_with_weight_k():
    config = _config("gan.penalty=r1", "gan.penalty_every=4", "gan.penalty_weight=2.0")
    family = make_family(config, INFO)
    step = _step_of(family)
    state = jax.jit(family.init_state)(jax.random.PRNGKey(0), {})
    batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1)),
             "label": jnp.arange(8) % 10}
    loss_fn = jax.jit(lambda d, b, k, i: step.disc_loss(d, b, k, i, g_params=state.params["gen"],
                                                         sn=None))
    key = jax.random.PRNGKey(2)
    off, m_off = loss_fn(state.params["disc"], batch, key, jnp.int32(0))
    on, m_on = loss_fn(state.params["disc"], batch, key, jnp.int32(3))   # the 4th update
    assert float(m_off["penalty"]) == 0.0 and float(off) == float(m_off["d_loss"])
    assert float(m_on["penalty"]) > 0
    np.testing.assert_allclose(float(on), float(m_on["d_loss"]) + 4 * float(m_on["penalty"]),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- spectral norm
def test_spectral_norm_bounds_the_largest_singular_value():
    net = NetConfig(image_shape=(28, 28, 1), disc_width=8, conditional=True, num_classes=10,
                    spectral_norm=True)
    model = GANModel(net)
    _, d_params, sn = jax.jit(model.init)(jax.random.PRNGKey(0))
    d_params = nn.meta.unbox(d_params)
    iterate = jax.jit(model.power_iterate)
    for _ in range(60):
        sn = iterate(d_params, sn)
    checked = 0
    for layer, stats in sn.items():
        name = layer.removeprefix("sn_")
        (key,) = [k for k in stats if k.endswith("/sigma")]
        weight = d_params[name][key.split("/")[1]]                  # kernel or embedding
        matrix = np.asarray(weight).reshape(-1, weight.shape[-1])
        top = np.linalg.svd(matrix, compute_uv=False)[0]
        np.testing.assert_allclose(float(stats[key]), top, rtol=1e-3)
        normalised = np.linalg.svd(matrix / float(stats[key]), compute_uv=False)[0]
        assert abs(normalised - 1.0) < 1e-3
        checked += 1
    assert checked == 5  # three convolutions, psi and the projection embedding
    # The forward pass really uses W / sigma(W): scaling every kernel leaves D unchanged.
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1)) * 2 - 1
    y = jnp.arange(4)
    scaled = {k: {n: v * 7.0 if n != "bias" else v for n, v in p.items()} for k, p in d_params.items()}
    discriminate = jax.jit(model.discriminate)
    np.testing.assert_allclose(np.asarray(discriminate(scaled, sn, x, y)),
                               np.asarray(discriminate(d_params, sn, x, y)), rtol=2e-3, atol=2e-4)


def test_cifar10_recipes_build_32x32x3_pairs():
    # No CIFAR-10 here: build each recipe's family for its data shape and trace (not compile)
    # init, a training step and the sampler.
    info = {"kind": "image", "shape": (32, 32, 3), "num_classes": 10, "source": "tfds"}
    for variant in ("default", "r1", "conditional"):
        config = _config("model.gen_width=4", "model.disc_width=4", spec=f"gan_cifar10:{variant}")
        family = make_family(config, info)
        state = jax.eval_shape(family.init_state, jax.random.PRNGKey(0), {})
        batch = {"image": jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32),
                 "label": jax.ShapeDtypeStruct((8,), jnp.int32)}
        new, _ = jax.eval_shape(family.train_step, state, batch)
        assert jax.tree.structure(new) == jax.tree.structure(state)
        sample = functools.partial(family.sample, n=5, options=family.sample_options())
        samples = jax.eval_shape(sample, state, jax.random.PRNGKey(1))
        assert samples.shape == (5, 32, 32, 3)


# ----------------------------------------------------------------------------- the step
def test_each_phase_updates_only_its_own_player():
    config = _config("model.spectral_norm=true", "model.conditional=true")
    family = make_family(config, INFO)
    step = _step_of(family)
    state = jax.jit(family.init_state)(jax.random.PRNGKey(0), {})
    batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1)),
             "label": jnp.arange(16, dtype=jnp.int32) % 10}
    after_d, m_d = jax.jit(step.disc_phase)(state, batch)
    assert _tree_equal(after_d.params["gen"], state.params["gen"])
    assert _tree_equal(after_d.opt_state["gen"], state.opt_state["gen"])
    assert _tree_equal(after_d.ema_params, state.ema_params)
    assert not _tree_equal(after_d.params["disc"], state.params["disc"])
    assert not _tree_equal(after_d.extra["sn"], state.extra["sn"])   # power iteration advanced
    after_g, m_g = jax.jit(step.gen_phase)(state, batch)
    assert _tree_equal(after_g.params["disc"], state.params["disc"])
    assert _tree_equal(after_g.opt_state["disc"], state.opt_state["disc"])
    assert _tree_equal(after_g.extra, state.extra)
    assert not _tree_equal(after_g.params["gen"], state.params["gen"])
    assert not _tree_equal(after_g.ema_params, state.ema_params)
    assert {"d_loss", "d_real", "d_fake", "d_grad_norm", "penalty", "nonfinite"} <= set(m_d)
    assert {"g_loss", "g_grad_norm", "nonfinite"} <= set(m_g)


def _one_step(devices, mesh, overrides):
    config = _config(*[f"mesh.{k}={v}" for k, v in mesh.items()], *overrides)
    run = loop.build(config, devices, family=models.make_family)
    batch = next(run.datasets.train)
    state = loop.init_state(run, batch)
    return run.train_step(state, mesh_lib.global_batch(batch, run.batch_sharding))


def test_sharded_step_equals_single_device_step():
    # Projection D, two D updates on strided slices, a lazy gradient penalty on random
    # interpolates (applied on the second D update), BatchNorm statistics in G.
    overrides = ("model.conditional=true", "gan.n_disc=2", "gan.penalty=gp",
                 "gan.penalty_every=2")
    ref, ref_m = _one_step(jax.devices()[:1], {"data": 1}, overrides)
    state, m = _one_step(None, {"data": 8}, overrides)
    assert set(m) >= {"loss", "d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm",
                      "g_grad_norm", "penalty", "nonfinite"}
    for k in m:
        np.testing.assert_allclose(float(m[k]), float(ref_m[k]), rtol=1e-4, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_killed_run_resumes_bit_identical_and_checkpoints_hold_everything(tmp_path):
    config = _config("train.steps=5", "train.ckpt_every=2", "model.spectral_norm=true",
                     "mesh.data=1")
    train = functools.partial(loop.train, config, family=models.make_family, progress=False,
                              devices=jax.devices()[:1])
    whole = train(str(tmp_path / "a"))
    with pytest.raises(loop.Interrupted):
        train(str(tmp_path / "b"), interrupt_at=3)                 # last checkpoint: step 2
    resumed = train(str(tmp_path / "b"))
    assert int(resumed.step) == 5
    assert _tree_equal(whole, resumed)
    # The checkpoint holds both networks, both optimizer states, the SN state and the EMA.
    run = loop.build(config, jax.devices()[:1], family=models.make_family)
    step, restored = loop.restore_latest(run, str(tmp_path / "b"))
    assert step == 5
    assert set(restored.params) == set(restored.opt_state) == {"gen", "disc"}
    assert set(restored.extra["sn"]) == {"sn_down_0", "sn_down_1", "sn_down_2", "sn_psi"}
    assert jax.tree.structure(restored.ema_params) == jax.tree.structure(restored.params["gen"])
    assert not _tree_equal(restored.ema_params, restored.params["gen"])
    assert _tree_equal(restored, resumed)
    # Samples: EMA by default, raw on request; images in [0, 1].
    ema = np.asarray(run.sampler(4)(restored, jax.random.PRNGKey(0), 4, run.family.sample_options()))
    raw = np.asarray(run.sampler(4)(restored, jax.random.PRNGKey(0), 4,
                                    run.family.sample_options(weights="raw")))
    assert ema.shape == (4, 28, 28, 1) and 0.0 <= ema.min() and ema.max() <= 1.0
    assert not np.array_equal(ema, raw)
    assert dict(run.family.sample_eval_variants) == {"": {}, "raw": {"weights": "raw"}}


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, info, message", [
    (("gan.loss=bogus",), INFO, "gan.loss=bogus: expected one of nonsaturating, hinge"),
    (("gan.penalty=r2",), INFO, "gan.penalty=r2: expected one of none, r1, gp"),
    (("gan.loss=wgan", "gan.penalty=none"), INFO, "needs a Lipschitz constraint"),
    (("gan.loss=wgan", "gan.penalty=r1"), INFO, "needs a Lipschitz constraint"),
    (("model.conditional=true",), {**INFO, "num_classes": 1}, "needs labelled data"),
    (("model.conditional=true",), {"kind": "image", "shape": (28, 28, 1)}, "needs labelled data"),
    ((), {**INFO, "shape": (64, 64, 3)}, "28x28 and 32x32"),
    (("gan.n_disc=3",), INFO, "does not split into gan.n_disc=3"),
])
def test_bad_input_is_a_usage_error(overrides, info, message):
    with pytest.raises(UsageError, match=message):
        make_family(_config(*overrides), info)


def test_bad_sample_options_are_usage_errors():
    family = make_family(_config(), INFO)   # unconditional, with an EMA
    with pytest.raises(UsageError, match="this model is unconditional"):
        family.sample_options(label=3)
    with pytest.raises(UsageError, match="weights: Input should be 'ema' or 'raw'"):
        family.sample_options(weights="best")
    with pytest.raises(UsageError, match="unknown sample option\\(s\\) steps; this gan's sampler "
                                         "takes label, weights"):
        family.sample_options(steps=10)
    no_ema = make_family(_config("train.ema_decay=0.0"), INFO)
    assert no_ema.sample_options().weights == "raw"
    assert dict(no_ema.sample_eval_variants) == {"": {}}
    with pytest.raises(UsageError, match="keeps no EMA"):
        no_ema.sample_options(weights="ema")
    cond = make_family(_config("model.conditional=true"), INFO)
    assert cond.sample_options(label=7).label == 7


def test_cli_bad_loss_exits_2_with_one_line(tmp_path):
    env = host_env(JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "jaxgen.cli", "train", "gan_mnist:smoke",
                        "--workdir", str(tmp_path / "w"), "--set", "gan.loss=bogus"],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
                       check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert "gan.loss=bogus: expected one of" in lines[-1]
    assert not any("Traceback" in line or "File " in line for line in lines)
