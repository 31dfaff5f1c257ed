"""Offline sample-quality evaluation: jaxgen's LeNet feature network (shipped weights) and the
metrics on it.

Public API (re-exports only):
  sample_metrics(images, reference="mnist_embedded", seed=0) -> dict
  score_samples_file(path, reference="mnist_embedded", seed=0) -> dict
  load_samples_npz(path) -> float32 [N, 28, 28, 1]
  validate_images(images) -> float32 [N, 28, 28, 1]
  floor_metrics(reference="mnist_embedded", seed=0, num_samples=1000) -> dict
  floor_digits(reference="mnist_embedded", num_samples=1000) -> float32 [N, 28, 28, 1]
  class_balanced_indices(labels, n, seed=None) -> int64 [n]
  load_feature_net(dataset="mnist_embedded") -> FeatureNet (checksum-verified shipped weights)
  WeightsError: the shipped weights are missing or altered
  metrics: frechet_distance, kernel_distance, precision_recall, classifier_score, ...

``python -m jaxgen.eval --retrain OUT.msgpack`` retrains the feature network's weights.
"""
from jaxgen.eval import metrics
from jaxgen.eval.feature_net import FeatureNet
from jaxgen.eval.lenet_weights import WeightsError, load_feature_net
from jaxgen.eval.quality import (
    METRIC_KEYS,
    REFERENCES,
    class_balanced_indices,
    floor_digits,
    floor_metrics,
    sample_metrics,
    score_samples_file,
)
from jaxgen.eval.samples import MIN_SAMPLES, load_samples_npz, validate_images

__all__ = [
    "METRIC_KEYS",
    "MIN_SAMPLES",
    "REFERENCES",
    "FeatureNet",
    "WeightsError",
    "class_balanced_indices",
    "floor_digits",
    "floor_metrics",
    "load_feature_net",
    "load_samples_npz",
    "metrics",
    "sample_metrics",
    "score_samples_file",
    "validate_images",
]
