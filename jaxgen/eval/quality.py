"""Sample quality of a set of generated digits against a reference set, with the real-data floor.

:func:`sample_metrics` embeds the samples with jaxgen's LeNet feature network
(:mod:`jaxgen.eval.feature_net`) and compares them with the reference set (the 1,000 test digits
of the embedded MNIST) by the metrics of :mod:`jaxgen.eval.metrics`. Next to the values it reports
the ``floor``: the same metrics for as many real *training* digits as there are samples (all
4,000 at most; ``floor["num_samples"]`` says how many) against the same reference, i.e. what
real data scores at that sample count. A model is judged by its distance to the floor, not to 0;
the count matters, since the Frechet distance's bias and the k-NN radii of precision/recall both
shrink as the set grows.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxgen.eval import feature_net, lenet_weights, metrics
from jaxgen.eval.samples import MIN_SAMPLES, load_samples_npz, validate_images

REFERENCES = feature_net.DATASETS
METRIC_KEYS = ("fd_lenet", "kid_lenet", "kid_lenet_std", "precision", "recall",
               "classifier_score", "class_fractions")
PR_K = 3              # neighbours of the precision/recall manifolds (Kynkaanniemi et al. 2019)
KID_SUBSETS = 100     # subsets of the KID estimate (Binkowski et al. 2018)

_REF: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
_FLOOR: dict[tuple[str, str, int], dict[str, Any]] = {}


def _check_reference(reference: str) -> None:
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")


def _net_key(reference: str) -> str:
    return lenet_weights.load_feature_net(reference).sha256


def class_balanced_indices(labels: Any, n: int, seed: int | None = None) -> np.ndarray:
    """Indices of ``n`` items spread as evenly as the classes allow: ``n // C`` of each of the C
    classes, one more for the first ``n % C`` (in class order), each class capped at its size.

    Args:
      labels: int [M], the class of each item (any order; the embedded MNIST is sorted by class,
        so ``images[:n]`` is a few classes only).
      n: how many to pick, 0 <= n <= M.
      seed: None picks evenly spaced items within each class (deterministic: with 400 per class
        and n = 1,000, every 4th); an int picks them at random with ``np.random.default_rng(seed)``.
    Returns:
      int64 [min(n, what the caps allow)], grouped by class, ascending within each class.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {list(labels.shape)}")
    if not 0 <= n <= len(labels):
        raise ValueError(f"cannot pick {n} of {len(labels)} items")
    classes = np.unique(labels)
    rng = None if seed is None else np.random.default_rng(seed)
    out = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        k = min(n // len(classes) + (i < n % len(classes)), len(members))
        if rng is None:
            pick = members[(np.arange(k) * len(members)) // k] if k else members[:0]
        else:
            pick = np.sort(rng.choice(members, k, replace=False))
        out.append(pick)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def reference_features(reference: str = "mnist_embedded") -> tuple[np.ndarray, np.ndarray]:
    """(features [M, F], logits [M, C]) of the reference set, cached per process."""
    _check_reference(reference)
    key = (reference, _net_key(reference))
    if key not in _REF:
        net = lenet_weights.load_feature_net(reference)
        _, _, x_te, _ = feature_net.load_dataset(reference)
        _REF[key] = net.apply(x_te)
    return _REF[key]


def compare_features(feats: np.ndarray, logits: np.ndarray, ref_feats: np.ndarray,
                     seed: int = 0) -> dict[str, Any]:
    """The metrics of :data:`METRIC_KEYS` for samples (``feats`` [N, F], ``logits`` [N, C])
    against reference features ``ref_feats`` [M, F]. KID subsets come from ``default_rng(seed)``."""
    kid, kid_std = metrics.kernel_distance(feats, ref_feats, num_subsets=KID_SUBSETS, seed=seed)
    precision, recall = metrics.precision_recall(ref_feats, feats, k=PR_K)
    return {
        "fd_lenet": metrics.frechet_distance_features(feats, ref_feats),
        "kid_lenet": kid,
        "kid_lenet_std": kid_std,
        "precision": precision,
        "recall": recall,
        "classifier_score": metrics.classifier_score(logits),
        "class_fractions": metrics.class_fractions(logits),
    }


def floor_digits(reference: str = "mnist_embedded", num_samples: int = 1000) -> np.ndarray:
    """The real training digits :func:`floor_metrics` scores at ``num_samples``: float32
    [min(num_samples, 4000), 28, 28, 1] in [0, 1], class-balanced and evenly spaced."""
    _check_reference(reference)
    x_tr, y_tr, _, _ = feature_net.load_dataset(reference)
    return np.asarray(x_tr[class_balanced_indices(y_tr, min(int(num_samples), len(x_tr)))],
                      np.float32)


def floor_metrics(reference: str = "mnist_embedded", seed: int = 0,
                  num_samples: int = 1000) -> dict[str, Any]:
    """What real data scores at ``num_samples``: :func:`compare_features` of
    ``min(num_samples, 4000)`` real training digits, class-balanced and evenly spaced within each
    class (:func:`class_balanced_indices`; for 1,000, every 4th), against the reference.

    Returns the metric keys of :data:`METRIC_KEYS` plus ``num_samples``, the count of real digits
    used (less than asked only past the 4,000 training digits). Cached per process.
    """
    _check_reference(reference)
    if num_samples < MIN_SAMPLES:
        raise ValueError(f"the floor needs at least {MIN_SAMPLES} digits, got {num_samples}")
    digits = floor_digits(reference, num_samples)
    key = (reference, _net_key(reference), int(seed), len(digits))
    if key not in _FLOOR:
        net = lenet_weights.load_feature_net(reference)
        feats, logits = net.apply(digits)
        _FLOOR[key] = {**compare_features(feats, logits, reference_features(reference)[0], seed),
                       "num_samples": len(feats)}
    return dict(_FLOOR[key])


def sample_metrics(images: Any, reference: str = "mnist_embedded", seed: int = 0) -> dict[str, Any]:
    """Sample-quality metrics of generated digits against ``reference``.

    Args:
      images: [N, 28, 28] or [N, 28, 28, 1]; uint8 0..255, bool, or float in [0, 1]; N >= 10
        (see :func:`jaxgen.eval.samples.validate_images`). Any problem raises a one-line
        ValueError.
      reference: the reference set; "mnist_embedded" (its 1,000 test digits).
      seed: seeds the KID subsets.
    Returns:
      {"fd_lenet", "kid_lenet", "kid_lenet_std", "precision", "recall", "classifier_score",
      "class_fractions" (list of 10), "num_samples", "feature_net_test_accuracy", "seed",
      "floor" (the same metric keys, plus "num_samples", for as many real training digits as
      there are samples, up to 4,000: :func:`floor_metrics`)}: plain Python numbers.
    """
    _check_reference(reference)
    x = validate_images(images)
    net = lenet_weights.load_feature_net(reference)
    feats, logits = net.apply(x)
    out = compare_features(feats, logits, reference_features(reference)[0], seed)
    out.update(num_samples=len(x), feature_net_test_accuracy=float(net.test_accuracy),
               seed=int(seed), floor=floor_metrics(reference, seed, len(x)))
    return out


def score_samples_file(path: str, reference: str = "mnist_embedded", seed: int = 0) -> dict[str, Any]:
    """:func:`sample_metrics` of the ``images`` array in the .npz file ``path``."""
    _check_reference(reference)
    return sample_metrics(load_samples_npz(path), reference, seed)


def clear_caches() -> None:
    """Forgets per-process reference features, floors and loaded networks."""
    _REF.clear()
    _FLOOR.clear()
    lenet_weights.clear_memory_cache()
