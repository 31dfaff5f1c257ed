"""Grain pipelines: checkpointable, per-process train iterators and padded eval iterators.

Train: a Grain ``MapDataset`` indexed by global batch number; batch ``b`` holds the examples at
positions ``b*B ... b*B+B-1`` of a sequence of per-epoch permutations (a fresh one every epoch),
and each process keeps its contiguous slice of every global batch. The
global batch a step sees is therefore the same for any number of processes, and the iterator's
state (``get_state``/``set_state``) is a position in that sequence: a restored iterator yields
exactly the batches the uninterrupted one would have. Batches are gathered and converted with
vectorised numpy, one call per batch.

Eval: sequential and finite; the last global batch is padded, with ``mask`` 0 on padding.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Iterator

import grain
import jax
import numpy as np

from jaxgen.data import images as images_lib
from jaxgen.data import text as text_lib
from jaxgen.data.tokenizers import make_tokenizer

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class Datasets:
    """``train``: infinite checkpointable iterator of per-process batches;
    ``make_eval()``: a fresh finite iterator of padded per-process eval batches (with "mask");
    ``info``: what the model needs to know about the data (see :func:`make_datasets`)."""

    train: Any
    make_eval: Callable[[], Iterator[Batch]]
    info: dict


def per_process(global_batch: int, process_count: int, what: str) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(f"data.{what}={global_batch} must be a positive multiple of the "
                         f"{process_count} processes")
    return global_batch // process_count


class _EpochPermutations:
    """Example ids of global batch ``b``: positions ``b*B ... b*B+B-1`` of the concatenation of
    per-epoch permutations of ``range(n)``, permutation ``e`` drawn from (seed, e). Vectorised:
    one permutation per epoch (cached), one gather per batch."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = np.random.default_rng((self.seed, epoch)).permutation(self.n)
        return self._cache[epoch]

    def __call__(self, b: int) -> np.ndarray:
        pos = b * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, within = np.divmod(pos, self.n)
        out = np.empty(self.batch_size, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[within[sel]]
        return out


def train_iterator(num_examples: int, make_batch: Callable[[np.ndarray], Batch], batch_size: int,
                   seed: int, process_index: int, process_count: int, shuffle: bool = True):
    """Grain iterator over per-process slices of global batches of example ids.

    With ``shuffle`` the ids run through a fresh permutation of ``range(num_examples)`` every
    epoch; without, they are ``0, 1, 2, ...`` (for sources that derive a random example from its
    id). The Grain dataset is indexed by global batch number, so the iterator state is one
    integer and restoring it resumes exactly.
    """
    per = per_process(batch_size, process_count, "batch_size")
    lo = process_index * per
    if shuffle:
        if num_examples < batch_size:
            raise ValueError(f"the training split has {num_examples} examples, fewer than one "
                             f"batch of data.batch_size={batch_size}")
        ids_of = _EpochPermutations(num_examples, batch_size, seed)
    else:
        ids_of = lambda b: b * batch_size + np.arange(batch_size, dtype=np.int64)  # noqa: E731
    ds = grain.MapDataset.range(sys.maxsize // (2 * batch_size))
    ds = ds.map(lambda b: make_batch(ids_of(int(b))[lo:lo + per]))
    return StepIndexedIterator(ds)


class StepIndexedIterator:
    """The train iterator: batch ``b`` of a Grain ``MapDataset`` indexed by global batch number.

    Its position is the number of batches drawn, which is the training step, so a restored run
    calls ``seek(step)`` and the checkpoint needs no per-process data state (it resumes on any
    number of processes). ``get_state``/``set_state`` give the same position as a dict.
    """

    def __init__(self, dataset: Any, position: int = 0):
        self._dataset = dataset
        self.seek(position)

    def seek(self, position: int) -> None:
        """Makes the next batch global batch number ``position``."""
        if position < 0:
            raise ValueError(f"data position must be >= 0, got {position}")
        self.position = int(position)
        options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
        self._it = iter(self._dataset[self.position:].to_iter_dataset(options))

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = next(self._it)
        self.position += 1
        return batch

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.seek(int(state["position"]))


def eval_iterator(num_examples: int, make_batch: Callable[[np.ndarray], Batch], batch_size: int,
                  process_index: int, process_count: int) -> Iterator[Batch]:
    """Sequential eval batches; every example appears exactly once with mask 1."""
    per = per_process(batch_size, process_count, "eval_batch_size")
    for start in range(0, num_examples, batch_size):
        ids = start + process_index * per + np.arange(per)
        mask = (ids < num_examples).astype(np.float32)
        batch = make_batch(np.minimum(ids, num_examples - 1))
        batch["mask"] = mask
        yield batch


def _image_batcher(images: np.ndarray, labels: np.ndarray, scale: float, binarize: str):
    if binarize not in ("none", "threshold"):
        raise ValueError(f"unknown data.binarize {binarize!r}; choose 'none' or 'threshold'")

    def make(ids: np.ndarray) -> Batch:
        x = images[ids].astype(np.float32) / np.float32(scale)
        if binarize == "threshold":
            x = (x > 0.5).astype(np.float32)
        return {"image": x, "label": labels[ids]}
    return make


def image_datasets(data: Any, process_index: int, process_count: int) -> Datasets:
    splits = images_lib.load_image_splits(data)
    binarize = data.binarize
    train_make = _image_batcher(splits.train_images, splits.train_labels, splits.scale, binarize)
    eval_make = _image_batcher(splits.eval_images, splits.eval_labels, splits.scale, binarize)
    train = train_iterator(len(splits.train_images), train_make, int(data.batch_size),
                           int(data.seed), process_index, process_count)
    info = {"kind": "image", "shape": tuple(int(s) for s in splits.train_images.shape[1:]),
            "num_train": len(splits.train_images), "num_eval": len(splits.eval_images),
            "num_classes": int(max(splits.train_labels.max(initial=-1),
                                   splits.eval_labels.max(initial=-1)) + 1),
            "source": str(data.source)}
    return Datasets(train, lambda: eval_iterator(len(splits.eval_images), eval_make,
                                                 int(data.eval_batch_size), process_index,
                                                 process_count), info)


def text_datasets(data: Any, process_index: int, process_count: int) -> Datasets:
    text = text_lib.load_text(data)
    tok = make_tokenizer(data.tokenizer, text, data.vocab_size, data.tokenizer_path)
    train_text, val_text = text_lib.split_text(text, data.val_fraction)
    train_tokens, val_tokens = tok.encode(train_text), tok.encode(val_text)
    seq_len = int(data.seq_len)
    if seq_len < 1:
        raise ValueError(f"data.seq_len must be positive, got {seq_len}")
    seed = int(data.seed)
    windows = text_lib.eval_windows(val_tokens, seq_len + 1)
    n_eval_batches = int(data.eval_batches)
    if n_eval_batches > 0:
        windows = windows[:n_eval_batches * int(data.eval_batch_size)]
    train = train_iterator(
        0, lambda ids: {"tokens": text_lib.random_windows(train_tokens, ids, seq_len + 1, seed)},
        int(data.batch_size), seed, process_index, process_count, shuffle=False)
    info = {"kind": "text", "vocab_size": int(tok.vocab_size), "tokenizer": tok,
            "seq_len": seq_len, "num_train_tokens": len(train_tokens),
            "num_eval_tokens": int(windows.shape[0] * seq_len)}
    return Datasets(train, lambda: eval_iterator(len(windows), lambda ids: {"tokens": windows[ids]},
                                                 int(data.eval_batch_size), process_index,
                                                 process_count), info)


def make_datasets(config: Any, *, process_index: int | None = None,
                  process_count: int | None = None) -> Datasets:
    """The train and eval pipelines of ``config.data`` for this process.

    Images (``data.source`` in mnist_embedded, digits, tfds, npz): batches
    ``{"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}``; info has ``kind="image"``,
    ``shape``, ``num_train``, ``num_eval``. Text (text_file, tfds_text, stdlib): batches
    ``{"tokens": int32 [B, seq_len + 1]}``; info has ``kind="text"``, ``vocab_size``,
    ``tokenizer``, ``seq_len``. Eval batches also carry ``mask`` float32 [B].
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    source = config.data.source
    if source in images_lib.IMAGE_SOURCES:
        return image_datasets(config.data, pi, pc)
    if source in text_lib.TEXT_SOURCES:
        return text_datasets(config.data, pi, pc)
    raise ValueError(f"unknown data.source {source!r}; choose one of "
                     f"{', '.join(images_lib.IMAGE_SOURCES + text_lib.TEXT_SOURCES)}")


def saved_info(info: dict) -> dict:
    """The JSON-able part of a ``Datasets.info`` (what :func:`info_datasets` needs)."""
    keep = ("kind", "shape", "num_classes", "source", "vocab_size", "seq_len")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in info.items() if k in keep}


def info_datasets(config: Any, info: dict) -> Datasets:
    """Datasets with no data, for sampling from a trained run without its data files.

    ``info`` is :func:`saved_info` of the training data (the trainer keeps it in the workdir);
    text runs load their tokenizer from ``data.tokenizer_path``. ``make_eval()`` yields one
    all-zero batch with the training batch's shapes (models read shapes from it, never values).
    """
    info = dict(info)
    n = int(config.data.eval_batch_size)
    if info.get("kind") == "text":
        path = str(config.data.tokenizer_path)
        if config.data.tokenizer != "byte":
            if not path or not os.path.exists(path):
                raise ValueError(f"the run's tokenizer file {path!r} is missing; it is needed to "
                                 "sample without the training text")
        info["tokenizer"] = make_tokenizer(config.data.tokenizer, "", config.data.vocab_size, path)
        batch = {"tokens": np.zeros((n, int(info["seq_len"]) + 1), np.int32)}
    else:
        info["shape"] = tuple(info["shape"])
        batch = {"image": np.zeros((n, *info["shape"]), np.float32), "label": np.zeros(n, np.int32)}

    def make_eval():
        yield {**batch, "mask": np.ones(n, np.float32)}
    return Datasets(None, make_eval, info)
