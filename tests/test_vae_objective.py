"""ELBO / IWAE objectives: closed-form KL, exact k=1 identity, chunking, tightening with k."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxgen.models.vae import objective as obj
from jaxgen.models.vae.augment import random_shift

B, D, H = 3, 2, 4   # batch, latent size, image side (H x 1 x 1 "pixels")


def _linear_gaussian():
    """p(z) = N(0, I), p(x|z) = N(W z + b, 0.5^2 I): log p(x) is known in closed form."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(D, H)).astype(np.float32)
    b = rng.normal(size=(H,)).astype(np.float32)
    log_sigma = math.log(0.5)

    def decode(z):
        mean = (z @ w + b).reshape(-1, H, 1, 1)
        return jnp.stack([mean, jnp.full_like(mean, log_sigma)], axis=-1)

    x = rng.normal(size=(B, H, 1, 1)).astype(np.float32)
    cov = w.T @ w + 0.25 * np.eye(H)
    log_px = stats.multivariate_normal(b, cov).logpdf(x.reshape(B, H))
    # q(z|x): the exact posterior N(m, S) of this model, made imperfect (shifted mean, diagonal,
    # wider), so the bounds are strict but the importance weights stay well behaved.
    s_post = np.linalg.inv(np.eye(D) + 4.0 * w @ w.T)
    m_post = 4.0 * (x.reshape(B, H) - b) @ w.T @ s_post
    mu = (m_post + 0.3 * rng.normal(size=(B, D))).astype(np.float32)
    logvar = np.tile(np.log(np.diag(s_post)) + 0.5, (B, 1)).astype(np.float32)
    return decode, x, mu, logvar, log_px


def test_gaussian_kl_closed_form():
    rng = np.random.default_rng(1)
    mu, logvar = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    sigma = np.exp(0.5 * logvar)
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, per dimension.
    ref = np.sum(-np.log(sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5, axis=-1)
    got = obj.gaussian_kl(jnp.asarray(mu, jnp.float32), jnp.asarray(logvar, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
    assert np.allclose(np.asarray(obj.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)))), 0.0)


def test_kl_warmup_is_linear_then_flat():
    assert float(obj.kl_weight(0, 2.0, 100)) == 0.0
    assert np.isclose(float(obj.kl_weight(25, 2.0, 100)), 0.5)
    assert float(obj.kl_weight(100, 2.0, 100)) == 2.0 == float(obj.kl_weight(5000, 2.0, 100))
    assert float(obj.kl_weight(0, 0.7, 0)) == np.float32(0.7)


def test_iwae_with_one_sample_is_the_single_sample_elbo():
    decode, x, mu, logvar, _ = _linear_gaussian()
    iwae_fn = jax.jit(lambda key: obj.iwae_bound(decode, "gaussian", x, mu, logvar, key, k=1, chunk=1))
    elbo_fn = jax.jit(lambda key: obj.elbo_estimate(decode, "gaussian", x, mu, logvar, key, 1))
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        iwae, elbo = iwae_fn(key), elbo_fn(key)
        np.testing.assert_allclose(np.asarray(iwae), np.asarray(elbo), rtol=1e-6, atol=1e-5)


def test_iwae_of_one_chunk_is_log_mean_weight_and_beats_its_elbo():
    decode, x, mu, logvar, _ = _linear_gaussian()
    key = jax.random.PRNGKey(7)
    eps = obj.draw_eps(jax.random.fold_in(key, 0), 6, jnp.asarray(mu))
    lw, _ = obj.log_weights(decode, "gaussian", x, mu, logvar, eps)
    lw = np.asarray(lw, np.float64)
    naive = np.log(np.mean(np.exp(lw), axis=0))
    iwae = np.asarray(jax.jit(obj.iwae_bound, static_argnums=(0, 1, 6, 7))(
        decode, "gaussian", x, mu, logvar, key, 6, 6))
    np.testing.assert_allclose(iwae, naive, rtol=1e-5)
    elbo = np.asarray(obj.elbo_estimate(decode, "gaussian", x, mu, logvar, key, num_samples=6))
    assert np.all(iwae >= elbo - 1e-5)   # Jensen, for the very same samples


def test_chunked_iwae_equals_naive_logmeanexp_with_masked_tail():
    decode, x, mu, logvar, _ = _linear_gaussian()
    key = jax.random.PRNGKey(3)
    k, chunk = 7, 3   # 3 chunks, the last one holds a single real sample
    lws = []
    for j in range(3):
        eps = obj.draw_eps(jax.random.fold_in(key, j), chunk, jnp.asarray(mu))
        lws.append(np.asarray(obj.log_weights(decode, "gaussian", x, mu, logvar, eps)[0], np.float64))
    lw = np.concatenate(lws)[:k]
    naive = np.log(np.mean(np.exp(lw), axis=0))
    got = jax.jit(obj.iwae_bound, static_argnums=(0, 1, 6, 7))(decode, "gaussian", x, mu, logvar,
                                                                key, k, chunk)
    np.testing.assert_allclose(np.asarray(got), naive, rtol=1e-5)


def test_iwae_tightens_with_k_towards_the_true_log_likelihood():
    decode, x, mu, logvar, log_px = _linear_gaussian()

    bound = jax.jit(jax.vmap(lambda key, k: obj.iwae_bound(decode, "gaussian", x, mu, logvar, key,
                                                           k, chunk=50), in_axes=(0, None)),
                    static_argnums=1)

    def mean_bound(k):
        return np.mean(np.asarray(bound(jax.random.split(jax.random.PRNGKey(0), 16), k)), axis=0)

    b1, b10, b1000 = mean_bound(1), mean_bound(10), mean_bound(1000)
    assert np.all(b1 < b10) and np.all(b10 < b1000)
    assert np.all(b1000 <= log_px + 0.05)
    np.testing.assert_allclose(b1000, log_px, atol=0.3)
    # With analytic KL the single-sample ELBO has the same expectation as the k=1 bound.
    recon, kl = obj.elbo_terms(decode, "gaussian", x, mu, logvar, jax.random.PRNGKey(0), 4000)
    np.testing.assert_allclose(np.asarray(recon - kl), b1, atol=1.0)


def test_training_objectives():
    decode, x, mu, logvar, _ = _linear_gaussian()
    key = jax.random.PRNGKey(0)
    elbo, diag = obj.training_objective(decode, "gaussian", x, mu, logvar, key, objective="elbo",
                                        num_samples=3, kl_scale=1.0)
    np.testing.assert_allclose(np.asarray(elbo), -np.asarray(diag["neg_elbo_nats"]), rtol=1e-6)
    half, _ = obj.training_objective(decode, "gaussian", x, mu, logvar, key, objective="elbo",
                                     num_samples=3, kl_scale=0.5)
    np.testing.assert_allclose(np.asarray(half - elbo), 0.5 * np.asarray(diag["kl_nats"]), rtol=1e-5)
    iw, _ = obj.training_objective(decode, "gaussian", x, mu, logvar, key, objective="iwae",
                                   num_samples=3, kl_scale=1.0)
    eps = obj.draw_eps(key, 3, jnp.asarray(mu))
    lw = np.asarray(obj.log_weights(decode, "gaussian", x, mu, logvar, eps)[0], np.float64)
    np.testing.assert_allclose(np.asarray(iw), np.log(np.mean(np.exp(lw), 0)), rtol=1e-5)


def test_random_shift_translates_and_keeps_binary_images():
    x = np.zeros((64, 8, 8, 1), np.float32)
    x[:, 3:5, 2:5] = 1.0
    assert random_shift(jax.random.PRNGKey(0), x, 0) is x
    y = np.asarray(random_shift(jax.random.PRNGKey(0), jnp.asarray(x), 2))
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert np.all(y.sum(axis=(1, 2, 3)) == 6)   # the blob never leaves the 8x8 frame
    seen = set()
    for img in y:
        rows, cols = np.nonzero(img[..., 0])
        dr, dc = rows.min() - 3, cols.min() - 2
        assert -2 <= dr <= 2 and -2 <= dc <= 2
        np.testing.assert_array_equal(img, np.roll(x[0], (dr, dc), axis=(0, 1)))
        seen.add((dr, dc))
    assert len(seen) > 10   # offsets vary over the batch
