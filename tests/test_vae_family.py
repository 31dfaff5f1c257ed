"""The VAE family end to end on tiny configs: shapes, training, evaluation sums, figures, recipe."""
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxgen import settings
from jaxgen.errors import UsageError
from jaxgen.models.vae import VAE, VAEConfig, VAEFamily, VAEExperiment

make_family = VAEFamily

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
import vae_mnist  # noqa: E402


def _config(**model):
    changes = {"model.latent_dim": 3, "model.hidden": (16,), "model.channels": (4, 8),
               "model.dense": 8, "model.shift": 0, "optim.lr": 1e-2,
               "optim.schedule": "constant", "train.steps": 20, "eval.iwae_k": 10,
               "eval.iwae_chunk": 4, **{f"model.{k}": v for k, v in model.items()}}
    return settings.update(VAEExperiment(), changes)


def _images(n, shape=(8, 8, 1), seed=0):
    """Binary images: noisy copies of 3 random templates (structure a VAE can learn)."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(size=(3, *shape)) > 0.5
    flips = rng.uniform(size=(n, *shape)) < 0.05
    return (templates[rng.integers(0, 3, n)] ^ flips).astype(np.float32)


@pytest.mark.parametrize("arch, shape, likelihood, p", [
    ("mlp", (28, 28, 1), "bernoulli", 1), ("mlp", (7, 5, 3), "logistic", 2),
    ("conv", (28, 28, 1), "bernoulli", 1), ("conv", (8, 8, 1), "logistic", 2)])
def test_variants_init_and_apply_on_any_image_shape(arch, shape, likelihood, p):
    cfg = VAEConfig(image_shape=shape, latent_dim=3, encoder=arch, decoder=arch, hidden=(16,),
                    channels=(4, 8), dense=8, likelihood=likelihood)
    model = VAE(cfg)
    x = jnp.asarray(_images(2, shape))

    @jax.jit
    def run(x):
        params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), x))
        return (model.apply(params, x, method=VAE.encode),
                model.apply(params, jnp.zeros((5, 3)), method=VAE.decode))

    (mu, logvar), out = run(x)
    assert mu.shape == logvar.shape == (2, 3)
    assert out.shape == (5, *shape, p)
    assert np.all(np.isfinite(np.asarray(out)))


def test_bad_model_config_is_a_clear_error():
    with pytest.raises(UsageError, match="model.encoder: Input should be 'mlp' or 'conv'"):
        settings.update(VAEExperiment(), {"model.encoder": "rnn"})
    with pytest.raises(UsageError, match="did you mean 'model.hidden'"):
        settings.update(VAEExperiment(), {"model.hiden": (3,)})
    with pytest.raises(UsageError, match="needs image data"):
        make_family(_config(), {"kind": "text", "vocab_size": 5})
    with pytest.raises(UsageError, match="model.image_shape=\\(8, 8, 1\\) disagrees"):
        make_family(settings.update(_config(), {"model.image_shape": (8, 8, 1)}),
                    {"kind": "image", "shape": (28, 28, 1)})


@pytest.mark.parametrize("arch, objective, samples", [("mlp", "iwae", 3), ("conv", "elbo", 1)])
def test_training_lowers_the_loss_on_a_fixed_batch(arch, objective, samples):
    c = _config(encoder=arch, decoder=arch, objective=objective, train_samples=samples,
                kl_warmup_steps=5)
    fam = make_family(c, {"kind": "image", "shape": (8, 8, 1)})
    batch = {"image": _images(16), "label": np.zeros(16, np.int32)}
    state = jax.jit(fam.init_state)(jax.random.PRNGKey(0), batch)
    step = jax.jit(fam.train_step)
    losses = []
    for _ in range(20):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 20
    assert float(metrics["kl_weight"]) == 1.0
    assert np.mean(losses[-3:]) < losses[0] - 2.0, losses   # flat (~44 nats) if nothing learns


def test_eval_sums_ignore_padding_and_use_the_ema():
    c = settings.update(_config(), {"train.ema_decay": 0.5})
    fam = make_family(c, {"kind": "image", "shape": (8, 8, 1)})
    x = _images(6)
    state = jax.jit(fam.init_state)(jax.random.PRNGKey(0), {"image": x})
    state, _ = jax.jit(fam.train_step)(state, {"image": x})
    eval_step = jax.jit(fam.eval_step)
    full = eval_step(state, {"image": x[:4], "mask": np.ones(4, np.float32)})
    padded = np.concatenate([x[:4], np.ones_like(x[:2])])
    masked = eval_step(state, {"image": padded, "mask": np.array([1, 1, 1, 1, 0, 0], np.float32)})
    assert float(masked["count"]) == 4.0
    for k in ("neg_elbo_nats", "recon_nats", "kl_nats"):
        np.testing.assert_allclose(float(masked[k]), float(full[k]), rtol=1e-5)
    np.testing.assert_allclose(float(full["neg_elbo_nats"]),
                               float(full["recon_nats"] + full["kl_nats"]), rtol=1e-5)
    # The evaluation reads the EMA parameters, not the raw ones.
    raw = jax.jit(fam.eval_step)(state.replace(ema_params=None),
                                 {"image": x[:4], "mask": np.ones(4, np.float32)})
    assert not np.isclose(float(raw["kl_nats"]), float(full["kl_nats"]))


def test_final_eval_iwae_is_tighter_than_the_elbo():
    fam = make_family(_config(), {"kind": "image", "shape": (8, 8, 1)})
    x = _images(12)
    state = jax.jit(fam.init_state)(jax.random.PRNGKey(0), {"image": x})
    batches = [{"image": x[:8], "mask": np.ones(8, np.float32)},
               {"image": np.concatenate([x[8:], np.zeros_like(x[:4])]),
                "mask": np.array([1] * 4 + [0] * 4, np.float32)}]
    res = fam.final_eval(state, batches)
    assert res["iwae_k"] == 10 and res["num_examples"] == 12
    elbo = sum(float(jax.jit(fam.eval_step)(state, b)["neg_elbo_nats"]) for b in batches) / 12
    assert 0 < res["nll_iwae_nats"] < elbo


def test_sample_and_figures(tmp_path):
    fam = make_family(_config(), {"kind": "image", "shape": (8, 8, 1)})
    x = _images(20)
    state = jax.jit(fam.init_state)(jax.random.PRNGKey(0), {"image": x})
    samples = jax.jit(fam.sample, static_argnums=2)(state, jax.random.PRNGKey(1), 6)
    assert samples.shape == (6, 8, 8, 1)
    assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
    (path,) = fam.save_samples(samples, str(tmp_path / "s.png"))
    assert Image.open(path).size == (3 * 9 + 1, 2 * 9 + 1)
    mask = np.ones(20, np.float32)
    mask[-4:] = 0
    files = fam.visualize(state, jax.random.PRNGKey(0), {"image": x, "mask": mask}, str(tmp_path / "ev"))
    recon, interp = (Image.open(f) for f in files)
    assert files[0].endswith("ev_reconstructions.png") and recon.size == (16 * 9 + 1, 2 * 9 + 1)
    assert interp.size == (10 * 9 + 1, 8 * 9 + 1)


def test_recipe_variants_build():
    assert vae_mnist.VARIANTS[0] == "default"
    for variant in vae_mnist.VARIANTS:
        c = vae_mnist.get_config(variant)
        assert c.family == "vae" and c.data.source == "mnist_embedded"
        assert c.data.binarize == "threshold"
        make_family(c, {"kind": "image", "shape": (28, 28, 1)})
    smoke = vae_mnist.get_config("smoke")
    assert smoke.train.steps <= 50 and smoke.eval.iwae_k == 16
    with pytest.raises(ValueError, match="variants: default, baseline, smoke"):
        vae_mnist.get_config("huge")
