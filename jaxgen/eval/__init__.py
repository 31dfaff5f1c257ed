"""Offline sample-quality evaluation: a self-trained LeNet feature network and the metrics on it.

Public API (re-exports only):
  sample_metrics(images, reference="mnist_embedded", seed=0) -> dict
  score_samples_file(path, reference="mnist_embedded", seed=0) -> dict
  load_samples_npz(path) -> float32 [N, 28, 28, 1]
  validate_images(images) -> float32 [N, 28, 28, 1]
  floor_metrics(reference="mnist_embedded", seed=0) -> dict
  load_feature_net(dataset="mnist_embedded") -> FeatureNet
  metrics: frechet_distance, kernel_distance, precision_recall, classifier_score, ...
"""
from jaxgen.eval import metrics
from jaxgen.eval.feature_net import FeatureNet, load_feature_net
from jaxgen.eval.quality import (
    METRIC_KEYS,
    REFERENCES,
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
    "floor_metrics",
    "load_feature_net",
    "load_samples_npz",
    "metrics",
    "sample_metrics",
    "score_samples_file",
    "validate_images",
]
