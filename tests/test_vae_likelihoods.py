"""VAE likelihoods against naive references (scipy, closed forms, normalisation)."""
import jax
import numpy as np
import pytest
from scipy import stats

from jaxgen.models.vae import likelihoods as lk


def _rand(seed, shape, lo=-3.0, hi=3.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def test_bernoulli_matches_scipy():
    logits = _rand(0, (3, 4, 5, 2))
    x = (np.random.default_rng(1).uniform(size=logits.shape) > 0.5).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    ref = stats.bernoulli.logpmf(x, p).sum(axis=(1, 2, 3))
    got = lk.log_prob("bernoulli", logits[..., None], x)
    assert got.shape == (3,)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
    # Extreme logits stay finite and exact (no log(0)).
    big = np.full((1, 1, 1, 1), 60.0, np.float32)
    np.testing.assert_allclose(np.asarray(lk.bernoulli_log_prob(big, np.zeros_like(big))), [-60.0])


def test_gaussian_matches_scipy():
    mean, log_scale = _rand(2, (2, 3, 3, 1)), _rand(3, (2, 3, 3, 1), -2, 1)
    x = _rand(4, (2, 3, 3, 1), 0, 1)
    ref = stats.norm.logpdf(x, mean, np.exp(log_scale.astype(np.float64))).sum(axis=(1, 2, 3))
    got = lk.log_prob("gaussian", np.stack([mean, log_scale], -1), x)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.3, -1.0), (-0.9, -4.5), (1.2, 0.5),
                                             (0.0, -6.5)])
def test_discretized_logistic_sums_to_one_over_256_bins(mean, log_scale):
    x = (np.arange(256, dtype=np.float32) / 255.0).reshape(256, 1, 1, 1)
    logp = lk.discretized_logistic_log_prob(np.full_like(x, mean), np.full_like(x, log_scale), x)
    probs = np.exp(np.asarray(logp, np.float64))
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(), 1.0, atol=2e-4)


def test_discretized_logistic_matches_cdf_differences():
    rng = np.random.default_rng(5)
    n = 64
    mean = rng.uniform(-1, 1, n)
    scale = np.exp(rng.uniform(-3, -1, n))
    bins = rng.integers(0, 256, n)
    bins[:2] = (0, 255)   # both edge bins
    xs = 2.0 * bins / 255.0 - 1.0

    def cdf(v, sign):   # sign=-1: the cdf; sign=+1: the survival function 1 - cdf, exactly
        return 1.0 / (1.0 + np.exp(sign * (v - mean) / scale))

    upper = np.where(bins == 255, 1.0, cdf(xs + 1 / 255, -1.0))
    lower = np.where(bins == 0, 0.0, cdf(xs - 1 / 255, -1.0))
    upper_sf = np.where(bins == 255, 0.0, cdf(xs + 1 / 255, 1.0))
    lower_sf = np.where(bins == 0, 1.0, cdf(xs - 1 / 255, 1.0))
    ref = np.log(np.where(xs > mean, lower_sf - upper_sf, upper - lower))
    x = (bins / 255.0).astype(np.float32).reshape(n, 1, 1, 1)
    got = lk.discretized_logistic_log_prob(mean.astype(np.float32).reshape(n, 1, 1, 1),
                                           np.log(scale).astype(np.float32).reshape(n, 1, 1, 1), x)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


def test_means_are_images_in_unit_interval():
    params = _rand(6, (4, 5, 5, 3, 2), -5, 5)
    for name in lk.LIKELIHOODS:
        m = np.asarray(lk.mean(name, params[..., :lk.NUM_PARAMS[name]]))
        assert m.shape == (4, 5, 5, 3)
        assert m.min() >= 0.0 and m.max() <= 1.0
    np.testing.assert_allclose(np.asarray(lk.mean("bernoulli", params[..., :1])),
                               np.asarray(jax.nn.sigmoid(params[..., 0])))
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        lk.check_likelihood("poisson")
