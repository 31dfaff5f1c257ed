"""What a model needs to know of its data, without the data: for compiling ahead of time.

``jaxgen compile`` builds an experiment for an accelerator topology on a host that has neither
the accelerator nor the dataset. :func:`abstract_info` gives the ``Datasets.info`` the family
would see (image shape and classes, or vocabulary and context), from the settings and a table
of known datasets, or from a prepared dataset's own metadata when it is on this host;
:func:`abstract_datasets` wraps it as data-free :class:`jaxgen.data.Datasets`.
"""
from __future__ import annotations

import os
from typing import Any

from jaxgen.errors import UsageError

# (source, name) -> (image shape, classes) of datasets whose shape is known without reading them
KNOWN_IMAGES = {
    ("mnist_embedded", ""): ((28, 28, 1), 10),
    ("digits", ""): ((8, 8, 1), 10),
    ("tfds", "mnist"): ((28, 28, 1), 10),
    ("tfds", "fashion_mnist"): ((28, 28, 1), 10),
    ("tfds", "binarized_mnist"): ((28, 28, 1), 0),
    ("tfds", "cifar10"): ((32, 32, 3), 10),
    ("tfds", "cifar100"): ((32, 32, 3), 100),
    ("tfds", "svhn_cropped"): ((32, 32, 3), 10),
}
KNOWN_VOCAB = {("tfds_text", "tiny_shakespeare", "char"): 65}


class AbstractTokenizer:
    """A tokenizer of ``vocab_size`` ids that maps every character to id 0 (shapes only)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [0] * max(len(text), 1)

    def decode(self, ids: Any) -> str:
        return "?" * len(list(ids))


def _tfds_image_info(name: str, data_dir: str) -> tuple[tuple[int, ...], int] | None:
    """Shape and classes from a prepared TFDS dataset's metadata (no records read)."""
    try:
        import tensorflow_datasets as tfds

        from jaxgen.data import tfds_source
        info = tfds.builder(name, data_dir=tfds_source.default_data_dir(data_dir),
                            try_gcs=False).info
        shape = tuple(int(s) for s in info.features["image"].shape)
        label = info.features.get("label") if hasattr(info.features, "get") else None
        return shape, int(getattr(label, "num_classes", 0) or 0)
    except Exception:  # noqa: BLE001 - not prepared here: fall through to the table
        return None


def _prepared_info(path: str) -> dict:
    """The info.json of a directory written by ``jaxgen prepare`` ({} when not on this host)."""
    import json
    try:
        with open(os.path.join(path, "info.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def abstract_info(config: Any) -> dict:
    """The data info of ``config.data`` without reading its examples (UsageError if unknown)."""
    data = config.data
    source = data.source
    if hasattr(data, "seq_len"):  # text
        vocab = int(getattr(config.model, "vocab_size", 0) or 0)
        if not vocab:
            vocab = {"byte": 256, "bpe": int(data.vocab_size)}.get(data.tokenizer, 0)
        vocab = vocab or KNOWN_VOCAB.get((source, data.name, data.tokenizer), 0)
        if not vocab and source == "token_file":
            vocab = _prepared_info(data.path).get("vocab_size", 0)
        if not vocab:
            raise UsageError(f"the vocabulary of data.source={source!r} with data.tokenizer="
                             f"{data.tokenizer!r} is only known from its text: set "
                             "model.vocab_size to compile without the data")
        return {"kind": "text", "vocab_size": vocab, "seq_len": int(data.seq_len),
                "tokenizer": AbstractTokenizer(vocab)}
    known = KNOWN_IMAGES.get((source, "" if source in ("mnist_embedded", "digits") else data.name))
    if known is None and source == "tfds":
        known = _tfds_image_info(data.name, data.data_dir)
    if known is None and source == "arrayrecord":
        info = _prepared_info(data.path)
        if "shape" in info:
            known = (tuple(info["shape"]), int(info.get("num_classes", 0)))
    if known is None and source == "npz" and os.path.isfile(data.path):
        import numpy as np
        with np.load(data.path, mmap_mode="r") as f:
            shape = tuple(f["image"].shape[1:])
            classes = int(f["label"].max()) + 1 if "label" in f else 0
        known = (shape + (1,) if len(shape) == 2 else shape, classes)
    if known is None:
        raise UsageError(f"the image shape of data.source={source!r} data.name={data.name!r} "
                         "is not known without the data; prepare it on this host, or use a "
                         f"dataset jaxgen knows ({', '.join(n or s for s, n in KNOWN_IMAGES)})")
    shape, classes = known
    return {"kind": "image", "shape": tuple(shape), "num_classes": classes, "source": source}


def abstract_datasets(config: Any, info: dict | None = None):
    """Data-free datasets with the shapes of ``config.data`` (see :func:`abstract_info`)."""
    import numpy as np

    from jaxgen.data.pipeline import Datasets

    info = abstract_info(config) if info is None else info
    n = int(config.data.eval_batch_size)
    if info["kind"] == "text":
        batch = {"tokens": np.zeros((n, info["seq_len"] + 1), np.int32)}
    else:
        batch = {"image": np.zeros((n, *info["shape"]), np.float32),
                 "label": np.zeros(n, np.int32)}

    def make_eval():
        yield {**batch, "mask": np.ones(n, np.float32)}
    return Datasets(None, make_eval, info)
