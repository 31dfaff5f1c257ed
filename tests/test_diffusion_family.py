"""The diffusion family through the shared trainer: sharded and bfloat16 steps, sampling
options, the CIFAR-10 recipe on mock data, bad input."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxgen import experiments, models
from jaxgen.errors import UsageError
from jaxgen.train import loop, mesh as mesh_lib

MNIST_INFO = {"kind": "image", "shape": (28, 28, 1), "num_classes": 10, "source": "mnist_embedded"}


def _config(spec="diffusion_mnist:smoke", *overrides):
    return experiments.apply_overrides(experiments.get_config(spec), list(overrides))


def _one_step(config, devices):
    run = loop.build(config, devices, family=models.make_family)
    batch = next(run.datasets.train)
    state = loop.init_state(run, batch)
    return run, run.train_step(state, mesh_lib.global_batch(batch, run.batch_sharding))


@pytest.fixture(scope="module")
def one_device():
    """(run, (state, metrics)) of one float32 step of the smoke recipe on one device."""
    return _one_step(_config("diffusion_mnist:smoke", "mesh.data=1"), jax.devices()[:1])


def test_eight_device_step_equals_one_device_step(one_device):
    _, (ref, ref_m) = one_device
    _, (state, m) = _one_step(_config("diffusion_mnist:smoke", "mesh.data=8"), None)
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ref.ema_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_bfloat16_step_runs_with_float32_params_and_a_close_loss(one_device):
    _, (_, ref_m) = one_device
    _, (state, m) = _one_step(_config("diffusion_mnist:smoke", "mesh.data=1", "model.dtype=bfloat16"),
                              jax.devices()[:1])
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    assert np.isfinite(float(m["loss"]))
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=0.05)


def test_sampling_options_reproducible_and_validated(one_device):
    run, (state, _) = one_device
    fam = run.family
    opts = fam.sample_options(sampler="ddim", steps=2, guidance=2.0, label=3)
    a = np.asarray(run.sampler(4)(state, jax.random.PRNGKey(1), 4, opts))
    b = np.asarray(run.sampler(4)(state, jax.random.PRNGKey(1), 4, opts))
    c = np.asarray(run.sampler(4)(state, jax.random.PRNGKey(2), 4, opts))
    assert a.shape == (4, 28, 28, 1) and 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    for bad, match in [(dict(sampler="bogus"), "sampler: Input should be 'ddpm'"),
                       (dict(steps=0), "steps"),
                       (dict(label=10), "out of range"), (dict(weights="best"), "weights"),
                       (dict(temperature=1.0), "unknown sample option")]:
        with pytest.raises(UsageError, match=match):
            fam.sample_options(**bad)


def test_unconditional_model_refuses_guidance_and_labels():
    c = _config("diffusion_mnist:smoke", "model.conditional=false")
    fam = models.make_family(c, MNIST_INFO)
    assert fam.sample_options().label == -1
    with pytest.raises(UsageError, match="guidance needs a class-conditional model"):
        fam.sample_options(guidance=2.0)
    with pytest.raises(UsageError, match="unconditional"):
        fam.sample_options(label=2)


@pytest.mark.parametrize("overrides, match", [
    (("diffusion.schedule=quadratic",), "expected one of linear, scaled_linear, cosine"),
    (("diffusion.parameterization=score",), "expected one of eps, v, x0, edm"),
    (("model.backbone=resnet",), "expected one of unet, dit"),
    (("sample.sampler=rk4",), "expected one of ddpm, ddim, dpmpp_2m, euler, heun"),
    (("sample.steps=-3",), "steps must be an integer >= 1"),
    (("diffusion.sample_sigma_max=-1",), "sample_sigma_max must be >= 0"),
    (("model.head_dim=5",), "not divisible by head_dim=5"),
    (("model.block_channels=(8,8,8,8)", "model.attention_levels=(False,False,False,False)",
      "model.resblock_updown=True"), "divisible by 8; got 28x28"),  # exact 2x2 pooling
    (("model.block_channels=(8,8,8,8,8,8)",
      "model.attention_levels=(False,False,False,False,False,False)"), "at least 32; got 28x28"),
])
def test_bad_config_is_a_usage_error(overrides, match):
    with pytest.raises(UsageError, match=match) as info:
        c = _config("diffusion_mnist:smoke", *overrides)
        fam = models.make_family(c, MNIST_INFO)
        jax.eval_shape(fam.init_state, jax.random.PRNGKey(0), {})
    assert "\n" not in str(info.value)


def test_cifar10_recipe_compiles_one_step_at_tiny_size_on_mock_data():
    c = _config("diffusion_cifar10", "mesh.data=1", "data.batch_size=4", "data.eval_batch_size=4",
                "model.block_channels=(8,16)", "model.attention_levels=(False,True)",
                "model.layers_per_block=1", "model.norm_groups=4", "model.dtype=float32")
    with tfds.testing.mock_data(num_examples=8):
        run, (state, m) = _one_step(c, jax.devices()[:1])
    assert run.datasets.info["shape"] == (32, 32, 3)
    assert np.isfinite(float(m["loss"])) and int(state.step) == 1
