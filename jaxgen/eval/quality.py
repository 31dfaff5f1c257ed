"""Sample quality of a set of generated digits against a reference set, with the real-data floor.

:func:`sample_metrics` embeds the samples with jaxgen's LeNet feature network
(:mod:`jaxgen.eval.feature_net`) and compares them with the reference set (the 1,000 test digits
of the embedded MNIST) by the metrics of :mod:`jaxgen.eval.metrics`. Next to the values it reports
the ``floor``: the same metrics for 1,000 real *training* digits against the same reference, i.e.
what real data scores. A model is judged by its distance to the floor, not to 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxgen.eval import feature_net, metrics
from jaxgen.eval.samples import load_samples_npz, validate_images

REFERENCES = feature_net.DATASETS
METRIC_KEYS = ("fd_lenet", "kid_lenet", "kid_lenet_std", "precision", "recall",
               "classifier_score", "class_fractions")
PR_K = 3              # neighbours of the precision/recall manifolds (Kynkaanniemi et al. 2019)
KID_SUBSETS = 100     # subsets of the KID estimate (Binkowski et al. 2018)
FLOOR_STRIDE = 4      # floor set: every 4th training digit (1,000 of 4,000, 100 per class)

_REF: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
_FLOOR: dict[tuple[str, str, int], dict[str, Any]] = {}


def _check_reference(reference: str) -> None:
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")


def _net_key(reference: str) -> str:
    return str(feature_net.cache_path(reference))


def reference_features(reference: str = "mnist_embedded") -> tuple[np.ndarray, np.ndarray]:
    """(features [M, F], logits [M, C]) of the reference set, cached per process."""
    _check_reference(reference)
    key = (reference, _net_key(reference))
    if key not in _REF:
        net = feature_net.load_feature_net(reference)
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


def floor_metrics(reference: str = "mnist_embedded", seed: int = 0) -> dict[str, Any]:
    """:func:`compare_features` for 1,000 real training digits (every 4th) against the reference:
    the values real data gets. Cached per process."""
    _check_reference(reference)
    key = (reference, _net_key(reference), int(seed))
    if key not in _FLOOR:
        net = feature_net.load_feature_net(reference)
        x_tr, _, _, _ = feature_net.load_dataset(reference)
        feats, logits = net.apply(x_tr[::FLOOR_STRIDE])
        _FLOOR[key] = compare_features(feats, logits, reference_features(reference)[0], seed)
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
      "floor" (the same metric keys for 1,000 real training digits)}: plain Python numbers.
    """
    _check_reference(reference)
    x = validate_images(images)
    net = feature_net.load_feature_net(reference)
    feats, logits = net.apply(x)
    out = compare_features(feats, logits, reference_features(reference)[0], seed)
    out.update(num_samples=len(x), feature_net_test_accuracy=float(net.test_accuracy),
               seed=int(seed), floor=floor_metrics(reference, seed))
    return out


def score_samples_file(path: str, reference: str = "mnist_embedded", seed: int = 0) -> dict[str, Any]:
    """:func:`sample_metrics` of the ``images`` array in the .npz file ``path``."""
    _check_reference(reference)
    return sample_metrics(load_samples_npz(path), reference, seed)


def clear_caches() -> None:
    """Forgets per-process reference features, floors and loaded networks (disk cache stays)."""
    _REF.clear()
    _FLOOR.clear()
    feature_net.clear_memory_cache()
