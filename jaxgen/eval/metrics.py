"""Sample-quality metrics on features of a fixed network: pure NumPy, float64 throughout.

Each takes features ``x`` [N, D] (e.g. generated samples) and ``y`` [M, D] (the reference set),
or classifier logits [N, C], and returns Python floats. They are the standard metrics of the
literature, computed on whatever feature space the caller supplies; jaxgen feeds them the
penultimate layer of its own LeNet (:mod:`jaxgen.eval.feature_net`), hence the ``*_lenet`` names.

References:
  Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium" (Frechet distance of Gaussian fits; FID); Dowson & Landau 1982 (the formula).
  Binkowski et al. 2018, "Demystifying MMD GANs" (KID: unbiased MMD^2, cubic polynomial kernel,
    mean and spread over subsets).
  Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models"
    (k-NN manifolds).
  Salimans et al. 2016, "Improved Techniques for Training GANs" (Inception Score).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.special

_CHUNK = 1024  # rows per block of pairwise distances: memory O(_CHUNK * M), not O(N * M)


def _f64(x: np.ndarray, name: str, ndim: int = 2) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return x


# ----------------------------------------------------------------------------- Frechet distance
def feature_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features ``x`` [N, D], N >= 2."""
    x = _f64(x, "features")
    if len(x) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {len(x)}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2) (Dowson & Landau
    1982; the FID of Heusel et al. 2017 on other features):

        ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^{1/2}).

    Args: mu1, mu2: [D]; cov1, cov2: symmetric PSD [D, D].

    ``tr((cov1 cov2)^{1/2})`` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``s cov2 s`` with ``s = cov1^{1/2}`` (which has the same eigenvalues as
    ``cov1 cov2``), so no complex square root or imaginary residue arises; eigenvalues that
    round-off makes slightly negative are clipped to 0.
    """
    mu1, mu2 = _f64(mu1, "mu1", 1), _f64(mu2, "mu2", 1)
    cov1, cov2 = _f64(cov1, "cov1"), _f64(cov2, "cov2")
    if not (mu1.shape == mu2.shape and cov1.shape == cov2.shape == (mu1.size, mu1.size)):
        raise ValueError(f"moment shapes disagree: mu {mu1.shape}, {mu2.shape}; "
                         f"cov {cov1.shape}, {cov2.shape}")
    w, v = scipy.linalg.eigh((cov1 + cov1.T) / 2)
    s = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = s @ cov2 @ s
    tr_sqrt = np.sqrt(np.clip(scipy.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt, 0.0))


def frechet_distance_features(x: np.ndarray, y: np.ndarray) -> float:
    """:func:`frechet_distance` of Gaussians fitted to features ``x`` [N, D] and ``y`` [M, D]."""
    return frechet_distance(*feature_moments(x), *feature_moments(y))


# ------------------------------------------------------------------------------ kernel distance
def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(a, b) = (a.b / D + 1)^3 (Binkowski et al. 2018): [N, D], [M, D] -> [N, M]."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3) with :func:`polynomial_kernel`:

        sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
        - 2 sum_{i, j} k(x_i, y_j) / (m n),     x: [m, D], y: [n, D], m, n >= 2.

    Its expectation is exactly MMD^2, so it is 0 on average for two samples of one distribution
    (and can then be negative).
    """
    x, y = _f64(x, "x"), _f64(y, "y")
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD^2 needs at least 2 points per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def _mmd2_subsets_precomputed(x: np.ndarray, y: np.ndarray, ix: np.ndarray,
                              iy: np.ndarray) -> np.ndarray:
    """:func:`mmd2_unbiased` of the subset pairs ``(x[ix[s]], y[iy[s]])``, ix [S, m], iy [S, m],
    from the three full kernel matrices: subset sums are ``a^T K b`` with 0/1 indicators a, b."""
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    s, m = ix.shape
    a, b = np.zeros((s, len(x))), np.zeros((s, len(y)))
    np.put_along_axis(a, ix, 1.0, axis=1)
    np.put_along_axis(b, iy, 1.0, axis=1)
    sxx = ((a @ kxx) * a).sum(1) - a @ np.diag(kxx)
    syy = ((b @ kyy) * b).sum(1) - b @ np.diag(kyy)
    sxy = ((a @ kxy) * b).sum(1)
    return sxx / (m * (m - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (m * m)


def kernel_distance(x: np.ndarray, y: np.ndarray, *, num_subsets: int = 100,
                    subset_size: int | None = None, seed: int = 0,
                    max_precomputed: int = 4096) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and standard deviation of :func:`mmd2_unbiased` over
    ``num_subsets`` pairs of random subsets, each drawn without replacement.

    Args:
      x: [N, D]; y: [M, D].
      subset_size: points per subset; default ``min(1000, N // 2, M // 2)``. Half of the smaller
        set rather than all of it: subsets as large as a set would all be that set, giving one
        value repeated and a spread of 0. Every subset estimate is unbiased, so the mean is too.
      seed: seeds ``np.random.default_rng``, which draws the subsets.
      max_precomputed: up to this many points per set the full kernel matrices are computed
        once and every subset reads them (same values, far fewer flops); beyond, each subset
        computes its own (memory O(subset_size^2) rather than O(N^2)).
    Returns:
      (mean, std) over subsets; the std is the spread of one subset's estimate, as reported by
      Binkowski et al. and torch-fidelity.
    """
    x, y = _f64(x, "x"), _f64(y, "y")
    m = subset_size if subset_size is not None else min(1000, len(x) // 2, len(y) // 2)
    if not 2 <= m <= min(len(x), len(y)):
        raise ValueError(f"KID subset size must be in [2, {min(len(x), len(y))}], got {m}")
    rng = np.random.default_rng(seed)
    pairs = [(rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False))
             for _ in range(num_subsets)]
    if max(len(x), len(y)) <= max_precomputed:
        ix, iy = (np.stack(p) for p in zip(*pairs))
        vals = _mmd2_subsets_precomputed(x, y, ix, iy)
    else:
        vals = np.array([mmd2_unbiased(x[i], y[j]) for i, j in pairs])
    return float(vals.mean()), float(vals.std(ddof=1) if num_subsets > 1 else 0.0)


# ------------------------------------------------------------------------ precision and recall
def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)], clipped at 0 against round-off."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance [N] from each point of ``x`` [N, D] to its k-th nearest neighbour in ``x``,
    the point itself excluded (the radius of Kynkaanniemi et al. 2019). Needs N > k."""
    x = _f64(x, "features")
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {len(x)}")
    out = np.empty(len(x))
    for s in range(0, len(x), _CHUNK):
        d = _sq_dists(x[s:s + _CHUNK], x)
        # Index k of the sorted row: index 0 is the point itself (distance 0).
        out[s:s + _CHUNK] = np.partition(d, k, axis=1)[:, k]
    return np.sqrt(out)


def manifold_coverage(query: np.ndarray, ref: np.ndarray, ref_radii: np.ndarray) -> float:
    """Fraction of ``query`` [N, D] inside the k-NN manifold of ``ref`` [M, D]: the union of
    balls of radius ``ref_radii`` [M] around the reference points (Kynkaanniemi et al. 2019)."""
    query, ref = _f64(query, "query"), _f64(ref, "ref")
    r2 = np.asarray(ref_radii, np.float64) ** 2
    inside = [(_sq_dists(query[s:s + _CHUNK], ref) <= r2[None, :]).any(1)
              for s in range(0, len(query), _CHUNK)]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Precision: the fraction of ``fake`` [N, D] inside the k-NN manifold of ``real`` [M, D]
    (are samples realistic?). Recall: the fraction of ``real`` inside the manifold of ``fake``
    (is the real variety covered?). Both sets need more than ``k`` points.
    """
    real, fake = _f64(real, "real"), _f64(fake, "fake")
    precision = manifold_coverage(fake, real, knn_radii(real, k))
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return precision, recall


# ------------------------------------------------------------------------ classifier statistics
def classifier_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the set: the Inception Score of
    Salimans et al. 2016 on another classifier, computed on the whole set (no splits).

    ``logits``: [N, C]. Ranges from 1 (all samples alike or all ambiguous) to C (confident and
    evenly spread over the C classes).
    """
    logp = scipy.special.log_softmax(_f64(logits, "logits"), axis=1)
    log_py = np.log(np.exp(logp).mean(0))
    kl = (np.exp(logp) * (logp - log_py[None, :])).sum(1)
    return float(np.exp(kl.mean()))


def class_fractions(logits: np.ndarray) -> list[float]:
    """Histogram of predicted classes: ``logits`` [N, C] -> C fractions summing to 1."""
    logits = _f64(logits, "logits")
    counts = np.bincount(logits.argmax(1), minlength=logits.shape[1])
    return (counts / counts.sum()).tolist()
