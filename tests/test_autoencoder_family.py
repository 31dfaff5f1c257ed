"""The autoencoder family (the first stage of latent diffusion) through the shared trainer: the
latent's shape, the KL term against a Monte-Carlo estimate, learning, the latent's scale, and
the CLI from training to the reconstructions figure (written by ``jaxgen eval``)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import experiments, models
from jaxgen.errors import UsageError
from jaxgen.nn.autoencoder import kl_to_standard_normal
from jaxgen.train import loop, mesh as mesh_lib
from envs import host_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(*overrides):
    return experiments.apply_overrides(experiments.get_config("autoencoder_mnist:smoke"),
                                       ["mesh.data=1", *overrides])


@pytest.fixture(scope="module")
def trained():
    """(run, state, batch) after 25 steps of the smoke recipe on one device, all on one batch."""
    run = loop.build(_config("train.steps=25"), jax.devices()[:1], family=models.make_family)
    batch = next(run.datasets.train)
    state = loop.init_state(run, batch)
    gb = mesh_lib.global_batch(batch, run.batch_sharding)
    losses = []
    for _ in range(25):
        state, m = run.train_step(state, gb)
        losses.append(float(m["reconstruction"]))
    return run, state, batch, losses


def test_latent_shape_and_a_decoder_that_inverts_it(trained):
    run, state, batch, _ = trained
    fam = run.family
    x = jnp.asarray(batch["image"][:3], jnp.float32)
    mean, logvar = fam.encode(state.params, x)
    assert mean.shape == logvar.shape == (3, 7, 7, 4) == (3, *fam.latent_shape)
    assert fam.decode(state.params, mean).shape == (3, 28, 28, 1)
    assert fam.sample(state, jax.random.PRNGKey(0), 5).shape == (5, 28, 28, 1)


def test_kl_term_equals_a_monte_carlo_estimate():
    """KL(N(m, s^2) || N(0, 1)) summed over the latent, against the mean over 200k posterior
    draws of log q(z) - log p(z)."""
    key = jax.random.PRNGKey(0)
    mean = jax.random.normal(key, (2, 2, 2, 3)) * 0.7
    logvar = jax.random.normal(jax.random.fold_in(key, 1), (2, 2, 2, 3)) * 0.5
    eps = np.random.default_rng(0).standard_normal((200_000, *mean.shape))
    m, s = np.asarray(mean, np.float64), np.exp(0.5 * np.asarray(logvar, np.float64))
    z = m + s * eps
    log_q = -0.5 * (eps**2 + np.log(2 * np.pi * s**2))
    log_p = -0.5 * (z**2 + np.log(2 * np.pi))
    mc = (log_q - log_p).reshape(len(eps), 2, -1).sum(-1).mean(0)
    np.testing.assert_allclose(np.asarray(kl_to_standard_normal(mean, logvar)), mc, rtol=0.02)


def test_training_lowers_the_reconstruction_error(trained):
    _, _, _, losses = trained
    assert losses[-1] < 0.7 * losses[0], losses


def test_final_eval_scaling_factor_is_one_over_the_latent_std(trained):
    run, state, batch, _ = trained
    out = run.family.final_eval(state, [batch])
    keep = np.asarray(batch["mask"]) > 0 if "mask" in batch else slice(None)
    means = np.asarray(run.family.encode(state.params, jnp.asarray(batch["image"][keep]))[0])
    assert out["latent_shape"] == [7, 7, 4] and out["compression"] == pytest.approx(4.0)
    np.testing.assert_allclose(out["latent_std"], means.std(), rtol=1e-4)
    np.testing.assert_allclose(out["scaling_factor"], 1.0 / means.std(), rtol=1e-4)
    np.testing.assert_allclose(out["latent_channel_mean"], means.mean((0, 1, 2)), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(out["latent_channel_std"], means.std((0, 1, 2)), rtol=1e-4)
    assert out["recon_fd_samples"] == 1000


def test_recon_fd_lenet_scores_the_reconstructions_of_the_floor_digits(trained):
    """recon_fd_lenet is jaxgen.eval's fd_lenet of the reconstructions of the floor's 1,000
    real training digits, beside those digits' own score (the floor)."""
    from jaxgen import eval as eval_lib
    run, state, batch, _ = trained
    out = run.family.final_eval(state, [batch])
    digits = eval_lib.floor_digits("mnist_embedded", 1000)
    assert digits.shape == (1000, 28, 28, 1)
    recon = np.asarray(run.family.reconstruct(state.params, jnp.asarray(digits)))
    assert out["recon_fd_lenet"] == pytest.approx(
        eval_lib.sample_metrics(recon)["fd_lenet"], rel=1e-4)
    floor = eval_lib.floor_metrics("mnist_embedded", 0, 1000)["fd_lenet"]
    assert out["recon_fd_floor"] == pytest.approx(floor, rel=1e-9)
    assert eval_lib.sample_metrics(digits)["fd_lenet"] == pytest.approx(floor, rel=1e-9)
    assert out["recon_fd_lenet"] > floor  # 25 smoke steps reconstruct worse than the digits


def test_an_image_size_the_levels_do_not_divide_is_a_usage_error():
    cfg = _config()
    with pytest.raises(UsageError, match="shrink images by 4, which does not divide 30x30"):
        models.make_family(cfg, {"kind": "image", "shape": (30, 30, 1), "num_classes": 10})


def _jaxgen(*args):
    env = host_env(JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "jaxgen.cli", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def ae_workdir(tmp_path_factory):
    """A smoke autoencoder trained and evaluated through the CLI: (workdir, eval result)."""
    w = str(tmp_path_factory.mktemp("ae") / "w")
    _jaxgen("train", "autoencoder_mnist:smoke", "--workdir", w, "--no-progress")
    return w, json.loads(_jaxgen("eval", "--workdir", w).stdout)


def test_cli_train_eval_sample_writes_reconstructions(ae_workdir, tmp_path):
    w, result = ae_workdir
    for key in ("recon_mse", "rate_nats", "scaling_factor", "latent_std", "recon_fd_lenet"):
        assert np.isfinite(result[key]), key
    assert 0 < result["recon_mse"] < 1 and "fd_lenet" not in result
    assert result["latent_shape"] == [7, 7, 4]
    assert json.load(open(os.path.join(w, "eval.json")))["scaling_factor"] == \
        result["scaling_factor"]  # where a latent diffusion model reads it
    figure = os.path.join(w, "eval_reconstructions.png")  # test digits over their reconstructions
    assert os.path.getsize(figure) > 100
    _jaxgen("sample", "--workdir", w, "--num", "8", "--out", str(tmp_path / "s.png"))
    assert os.path.getsize(tmp_path / "s.png") > 100


# ------------------------------------------------------------------------- latent diffusion
MNIST_INFO = {"kind": "image", "shape": (28, 28, 1), "num_classes": 10, "source": "mnist_embedded"}


def _ldm(ae, *overrides):
    return experiments.apply_overrides(experiments.get_config("ldm_mnist:smoke"),
                                       [f"latent.autoencoder={ae}", *overrides])


def _ldm_step(config, devices):
    run = loop.build(config, devices, family=models.make_family)
    batch = next(run.datasets.train)
    state = loop.init_state(run, batch)
    return run, run.train_step(state, mesh_lib.global_batch(batch, run.batch_sharding))


def test_latent_diffusion_step_on_8_devices_equals_1_and_keeps_the_autoencoder_frozen(ae_workdir):
    """One latent-diffusion step: the same loss and parameters on 8 simulated devices as on 1;
    the state holds only the DiT's parameters (the autoencoder's are constants of the step),
    and the autoencoder's weights are the workdir's, unchanged by training; samples decode to
    28x28 digits in [0, 1]."""
    w, result = ae_workdir
    run1, (s1, m1) = _ldm_step(_ldm(w, "mesh.data=1"), jax.devices()[:1])
    run8, (s8, m8) = _ldm_step(_ldm(w, "mesh.data=8"), None)
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    fam = run1.family
    assert fam.shape == (7, 7, 4) and fam.image_shape == (28, 28, 1)
    np.testing.assert_allclose(fam.codec.shift, result["latent_channel_mean"], rtol=1e-6)
    np.testing.assert_allclose(fam.codec.scale, 1 / np.asarray(result["latent_channel_std"]),
                               rtol=1e-6)
    assert not fam.objective.clip_x0  # latents have no data range to clip to
    assert set(s1.params) == set(fam.init_params(jax.random.PRNGKey(0)))  # the DiT's only
    from jaxgen import api
    saved = api.load(w, need_data=False).params
    for a, b in zip(jax.tree.leaves(fam.codec.params), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    images = np.asarray(run1.sampler(4)(s1, jax.random.PRNGKey(1), 4, fam.sample_options()))
    assert images.shape == (4, 28, 28, 1) and 0.0 <= images.min() and images.max() <= 1.0


def test_cached_latents_are_the_encoders_and_give_the_same_loss(ae_workdir):
    """latent.cache=true: the train batches carry the posterior moments
    of the same examples, in the same order, as the encoding pipeline's images (also after a
    seek, as on resumption), without the images; the loss equals the in-step encoder's for the
    same key; and random flips, which a per-image cache cannot follow, are one line."""
    from flax.core import meta

    w, _ = ae_workdir
    cached = loop.build(_ldm(w, "mesh.data=1", "latent.cache=true"), jax.devices()[:1],
                        family=models.make_family)
    plain = loop.build(_ldm(w, "mesh.data=1"), jax.devices()[:1], family=models.make_family)
    for run in (cached, plain):
        run.datasets.train.seek(3)
    bc, bp = next(cached.datasets.train), next(plain.datasets.train)
    assert set(bc) == {"latent_moments", "label"} and set(bp) == {"image", "label"}
    np.testing.assert_array_equal(bc["label"], bp["label"])
    fam = cached.family
    assert bc["latent_moments"].shape == (len(bp["image"]), 7, 7, 8)
    np.testing.assert_allclose(bc["latent_moments"], np.asarray(fam.codec.moments(bp["image"])),
                               rtol=1e-5, atol=1e-6)
    params = meta.unbox(fam.init_params(jax.random.PRNGKey(0)))
    loss = jax.jit(lambda b: fam.loss_fn(params, b, jax.random.PRNGKey(5), 0)[0])
    np.testing.assert_allclose(float(loss(bc)), float(loss(bp)), rtol=1e-5)
    with pytest.raises(UsageError, match=r"^latent.cache=true: .*random flips.*cache=false$"):
        loop.build(_ldm(w, "mesh.data=1", "latent.cache=true", "data.random_flip=true"),
                   jax.devices()[:1],
                   family=models.make_family)
    with pytest.raises(UsageError, match="set latent.autoencoder too"):
        experiments.apply_overrides(experiments.get_config("diffusion_mnist:smoke"),
                                    ["latent.cache=true"])


@pytest.mark.parametrize("normalize", ["channel", "scalar"])
def test_latent_codec_round_trip_and_the_normalised_latent(ae_workdir, tmp_path, normalize):
    """encode (posterior mean) then decode equals the autoencoder's own reconstruction; the
    encoded latents are the posterior means standardised per channel (or times the one scaling
    factor), with the statistics ``jaxgen eval`` wrote, and the same numbers when a copy of the
    workdir has no eval.json; a fixed latent.scaling_factor is used as given."""
    import shutil

    from jaxgen import api
    from jaxgen.models.diffusion.latent import STATISTICS, latent_statistics

    w, result = ae_workdir
    copy = shutil.copytree(w, tmp_path / "copy")
    os.remove(copy / "eval.json")
    computed = latent_statistics(api.load(str(copy)), "here")
    for key in STATISTICS:
        np.testing.assert_allclose(computed[key], result[key], rtol=1e-6)
    fam = models.make_family(_ldm(w, f"latent.normalize={normalize}"), MNIST_INFO)
    codec = fam.codec
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 28, 28, 1)), jnp.float32)
    z = codec.encode(x)
    mean = np.asarray(codec.family.encode(codec.params, x)[0])
    if normalize == "channel":
        expected = (mean - np.asarray(result["latent_channel_mean"])) / np.asarray(
            result["latent_channel_std"])
    else:
        expected = mean * result["scaling_factor"]
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(codec.decode(z), codec.family.reconstruct(codec.params, x),
                               atol=1e-5)
    fixed = models.make_family(_ldm(w, "latent.normalize=scalar", "latent.scaling_factor=0.25"),
                               MNIST_INFO).codec
    np.testing.assert_allclose(fixed.encode(x), mean * 0.25, rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="set latent.normalize=scalar with it"):
        _ldm(w, "latent.scaling_factor=0.25")


def test_latent_autoencoder_bad_input_is_one_line(ae_workdir, tmp_path):
    w, _ = ae_workdir
    with pytest.raises(UsageError, match="not a jaxgen workdir .*; train one with jaxgen "
                                         "train autoencoder_mnist --workdir"):
        models.make_family(_ldm(str(tmp_path / "missing")), MNIST_INFO)
    other = tmp_path / "vae"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"family": "vae"}))
    with pytest.raises(UsageError, match="holds a vae run, not an autoencoder"):
        models.make_family(_ldm(str(other)), MNIST_INFO)
    with pytest.raises(UsageError, match=r"encodes images of shape \(28, 28, 1\), this data's "
                                         r"are \(32, 32, 1\)"):
        models.make_family(_ldm(w), {**MNIST_INFO, "shape": (32, 32, 1)})
    r = subprocess.run([sys.executable, "-m", "jaxgen.cli", "train", "ldm_mnist:smoke",
                        "--workdir", str(tmp_path / "ldm"), "--set",
                        f"latent.autoencoder={other}"], cwd=REPO, capture_output=True,
                       text=True, timeout=600, check=False,
                       env=host_env(JAX_PLATFORMS="cpu"))
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("jaxgen: INFO")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-1000:]
    assert "holds a vae run, not an autoencoder" in errors[0] and "Traceback" not in r.stderr


def test_an_untrained_recipe_codec_stands_in_where_no_workdir_is_here(ae_workdir, tmp_path):
    """latent.autoencoder=recipe:NAME builds that recipe's autoencoder untrained (shift 0,
    scale 1; for jaxgen compile and speed rows); jaxgen compile swaps it in for a missing
    workdir when latent.recipe names one, and keeps a real workdir; the trainer does not
    take the recipe name for a path; a recipe of another family is one line."""
    from jaxgen.aot.experiment import untrained_latent
    from jaxgen.models.diffusion.latent import load_codec

    codec = load_codec("recipe:autoencoder_mnist:smoke", (28, 28, 1))
    assert codec.latent_shape == (7, 7, 4) and codec.shift == (0.0,) * 4
    assert codec.scale == (1.0,) * 4
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28, 1)), jnp.float32)
    assert codec.decode(codec.encode(x)).shape == (2, 28, 28, 1)
    with pytest.raises(UsageError, match="is a vae recipe, not an autoencoder"):
        load_codec("recipe:vae_mnist", (28, 28, 1))
    missing = _ldm(str(tmp_path / "nowhere"), "latent.recipe=autoencoder_mnist:smoke")
    assert untrained_latent(missing).latent.autoencoder == "recipe:autoencoder_mnist:smoke"
    here = _ldm(ae_workdir[0], "latent.recipe=autoencoder_mnist:smoke")
    assert untrained_latent(here) == here
    no_recipe = _ldm(str(tmp_path / "nowhere"), "latent.recipe=")
    assert untrained_latent(no_recipe) == no_recipe  # load_codec's own one-line error follows
    assert loop.absolute_data_paths(untrained_latent(missing)).latent.autoencoder == \
        "recipe:autoencoder_mnist:smoke"
