"""Grain pipelines: checkpointable, per-process train iterators and padded eval iterators.

Train (images): a Grain ``MapDataset`` over a random-access source (:mod:`jaxgen.data.images`),
``shuffle`` (a fresh global permutation every epoch, Grain's index shuffle), ``repeat``, the
per-example decode and augmentation, ``batch`` into per-process slices of the global batch, and
``[process_index::process_count]``: global batch ``b`` holds positions ``b*B ... b*B+B-1`` of the
shuffled stream whatever the number of processes, and each process reads only the records of
its own slice. Text: the same, over example ids whose windows are hashed from (seed, id).

The iterator's state is its position, the training step: a restored run calls ``seek(step)``
(Grain's ``ds[step:]``) and sees exactly the batches an uninterrupted one would, on any number
of processes. With ``data.workers > 0`` decoding runs in that many Grain worker processes
(``mp_prefetch``); ``data.threads`` and ``data.prefetch`` set Grain's ``ReadOptions``.

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


@dataclasses.dataclass(frozen=True)
class ReadSettings:
    """How a train iterator reads: Grain worker processes (0: in this process), reader threads
    and the prefetch buffer (batches per worker, elements per thread pool)."""

    workers: int = 0
    threads: int = 1
    prefetch: int = 4

    @classmethod
    def of(cls, data: Any) -> "ReadSettings":
        return cls(int(getattr(data, "workers", 0)), int(getattr(data, "threads", 1)),
                   int(getattr(data, "prefetch", 4)))


def train_iterator(examples: grain.MapDataset, batch_size: int, process_index: int,
                   process_count: int, read: ReadSettings = ReadSettings()):
    """Per-process slices of global batches of an infinite ``examples`` dataset.

    Global batch ``b`` is examples ``b*B ... b*B+B-1``; this process gets the ``process_index``-th
    contiguous share of it (``batch(per)[process_index::process_count]``).
    """
    per = per_process(batch_size, process_count, "batch_size")
    batches = examples.batch(per, drop_remainder=True)[process_index::process_count]
    return StepIndexedIterator(batches, read=read)


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; a program without ``absl.app`` has not parsed
    them (Grain then fails with UnparsedFlagAccessError)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class StepIndexedIterator:
    """The train iterator: batch ``b`` of a Grain ``MapDataset`` indexed by global batch number.

    Its position is the number of batches drawn, which is the training step, so a restored run
    calls ``seek(step)`` and the checkpoint needs no per-process data state (it resumes on any
    number of processes). ``get_state``/``set_state`` give the same position as a dict. Grain's
    reader (and its worker processes) start on the first ``next``.
    """

    def __init__(self, dataset: Any, position: int = 0, read: ReadSettings = ReadSettings()):
        self._dataset, self.read = dataset, read
        self._it = None
        self.seek(position)

    def seek(self, position: int) -> None:
        """Makes the next batch global batch number ``position``."""
        if position < 0:
            raise ValueError(f"data position must be >= 0, got {position}")
        self.close()
        self.position = int(position)

    def _start(self):
        options = grain.ReadOptions(num_threads=max(1, self.read.threads),
                                    prefetch_buffer_size=max(1, self.read.prefetch))
        ds = self._dataset[self.position:].to_iter_dataset(options)
        if self.read.workers > 0:
            _absl_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.read.workers, per_worker_buffer_size=max(1, self.read.prefetch)))
        return iter(ds)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = self._start()
        batch = next(self._it)
        self.position += 1
        return batch

    def close(self) -> None:
        """Stops the reader (and its worker processes); the next ``next`` restarts it."""
        it, self._it = getattr(self, "_it", None), None
        if it is not None and hasattr(it, "close"):
            it.close()

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


class ToFloat(grain.transforms.Map):
    """An image example -> ``{"image": float32 [H, W, C] in [0, 1], "label": int32}``."""

    def __init__(self, scale: float, binarize: str):
        if binarize not in ("none", "threshold"):
            raise ValueError(f"unknown data.binarize {binarize!r}; choose 'none' or 'threshold'")
        self.scale, self.binarize = np.float32(scale), binarize

    def map(self, example: dict) -> dict:
        x = np.asarray(example["image"], np.float32) / self.scale
        if self.binarize == "threshold":
            x = (x > 0.5).astype(np.float32)
        return {"image": x, "label": np.int32(example["label"])}


class FlipCrop(grain.transforms.RandomMap):
    """Random horizontal flips and pad-and-crop translations (``pad`` pixels, reflected), the
    CIFAR augmentation of He et al. 2016; deterministic per example index and epoch (Grain
    seeds the generator)."""

    def __init__(self, flip: bool, pad: int):
        self.flip, self.pad = bool(flip), int(pad)

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        x = example["image"]
        if self.pad:
            h, w = x.shape[:2]
            x = np.pad(x, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)), mode="reflect")
            i, j = rng.integers(0, 2 * self.pad + 1, 2)
            x = x[i:i + h, j:j + w]
        if self.flip and rng.random() < 0.5:
            x = x[:, ::-1]
        return {**example, "image": np.ascontiguousarray(x)}


def _stacked(source: Any, to_float: ToFloat) -> Callable[[np.ndarray], Batch]:
    def make(ids: np.ndarray) -> Batch:
        items = [to_float.map(source[int(i)]) for i in ids]
        return {k: np.stack([it[k] for it in items]) for k in items[0]}
    return make


def image_datasets(data: Any, process_index: int, process_count: int) -> Datasets:
    train_src, eval_src = images_lib.image_sources(data)
    to_float = ToFloat(train_src.scale, data.binarize)
    if len(train_src) < int(data.batch_size):
        raise ValueError(f"the training split has {len(train_src)} examples, fewer than one "
                         f"batch of data.batch_size={data.batch_size}")
    examples = grain.MapDataset.source(train_src).shuffle(seed=int(data.seed) % 2 ** 32)
    examples = examples.repeat().map(to_float)
    flip, pad = bool(getattr(data, "random_flip", False)), int(getattr(data, "random_crop", 0))
    if flip or pad:
        examples = examples.random_map(FlipCrop(flip, pad), seed=int(data.seed) % 2 ** 32)
    train = train_iterator(examples, int(data.batch_size), process_index, process_count,
                           ReadSettings.of(data))
    info = {"kind": "image", "shape": tuple(train_src.shape),
            "num_train": len(train_src), "num_eval": len(eval_src),
            "num_classes": max(int(train_src.num_classes), int(eval_src.num_classes)),
            "source": str(data.source)}
    return Datasets(train, lambda: eval_iterator(len(eval_src), _stacked(eval_src, to_float),
                                                 int(data.eval_batch_size), process_index,
                                                 process_count), info)


class Windows(grain.transforms.Map):
    """Example id -> ``{"tokens": int32 [length]}``, the window at the offset hashed from (seed,
    id) (:func:`jaxgen.data.text.random_windows`); ids outside the vocabulary are an error
    naming the file and the token's position."""

    def __init__(self, tokens: np.ndarray, length: int, seed: int, vocab_size: int, where: str):
        self.tokens, self.length, self.seed = tokens, length, seed
        self.vocab_size, self.where = vocab_size, where

    def map(self, example_id: int) -> dict:
        w = text_lib.random_windows(self.tokens, np.asarray([example_id]), self.length,
                                    self.seed)[0]
        return {"tokens": _checked(w, self.vocab_size, self.where, self.tokens, self.length,
                                   example_id, self.seed)}


def _checked(window: np.ndarray, vocab_size: int, where: str, tokens: np.ndarray, length: int,
             example_id: int, seed: int) -> np.ndarray:
    window = window.astype(np.int32)
    if window.size and int(window.max()) >= vocab_size:
        from jaxgen.errors import DataError
        off = int(text_lib.window_offsets(len(tokens), np.asarray([example_id]), length, seed)[0])
        k = int(np.argmax(window >= vocab_size))
        raise DataError(f"{where}: token {off + k:,} is {int(window[k])}, outside the "
                        f"vocabulary of {vocab_size} (a corrupt file, or another tokenizer's)")
    return window


def _token_streams(data: Any) -> tuple[np.ndarray, np.ndarray, Any, str]:
    """(train tokens, val tokens, tokenizer, where) of a text source; token files are memory
    maps, the other sources are read and tokenised here."""
    if data.source == "token_file":
        from jaxgen.data.tokenfile import TokenFile
        if not data.path:
            raise ValueError("data.source='token_file' needs data.path=DIR (written by jaxgen "
                             "prepare text)")
        corpus = TokenFile(data.path)
        tok = corpus.tokenizer()
        _keep_tokenizer(corpus.tokenizer_path, str(data.tokenizer_path))
        return corpus.tokens("train"), corpus.tokens("val"), tok, \
            os.path.join(data.path, "train.bin")
    text = text_lib.load_text(data)
    tok = make_tokenizer(data.tokenizer, text, data.vocab_size, data.tokenizer_path)
    train_text, val_text = text_lib.split_text(text, data.val_fraction)
    return tok.encode(train_text), tok.encode(val_text), tok, f"data.source={data.source}"


def _keep_tokenizer(src: str, dst: str) -> None:
    """Copies a corpus's tokenizer to the run's ``data.tokenizer_path`` (so sampling needs no
    corpus); a different tokenizer already there is an error (a resumed run on another corpus)."""
    if not dst:
        return
    with open(src, "rb") as f:
        new = f.read()
    if os.path.exists(dst):
        with open(dst, "rb") as f:
            if f.read() != new:
                from jaxgen.errors import DataError
                raise DataError(f"the run's tokenizer {dst} is not the one of {src}: this "
                                "workdir was trained on a corpus tokenised differently")
        return
    from jaxgen.train.workdir import write_atomic
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    write_atomic(dst, new.decode("utf-8"))


def text_datasets(data: Any, process_index: int, process_count: int) -> Datasets:
    seq_len = int(data.seq_len)
    if seq_len < 1:
        raise ValueError(f"data.seq_len must be positive, got {seq_len}")
    train_tokens, val_tokens, tok, where = _token_streams(data)
    seed = int(data.seed)
    n_windows = text_lib.num_eval_windows(len(val_tokens), seq_len + 1)
    if len(train_tokens) < seq_len + 1:
        raise ValueError(f"the training text has {len(train_tokens)} tokens, fewer than one "
                         f"window of data.seq_len + 1 = {seq_len + 1}; use a shorter "
                         "data.seq_len or more text")
    n_eval_batches = int(data.eval_batches)
    if n_eval_batches > 0:
        n_windows = min(n_windows, n_eval_batches * int(data.eval_batch_size))
    examples = grain.MapDataset.range(sys.maxsize // 2).map(
        Windows(train_tokens, seq_len + 1, seed, int(tok.vocab_size), where))
    train = train_iterator(examples, int(data.batch_size), process_index, process_count,
                           ReadSettings.of(data))
    info = {"kind": "text", "vocab_size": int(tok.vocab_size), "tokenizer": tok,
            "seq_len": seq_len, "num_train_tokens": len(train_tokens),
            "num_eval_tokens": int(n_windows * seq_len)}

    def eval_batch(ids):
        return {"tokens": text_lib.eval_windows(val_tokens, seq_len + 1, ids).astype(np.int32)}
    return Datasets(train, lambda: eval_iterator(n_windows, eval_batch, int(data.eval_batch_size),
                                                 process_index, process_count), info)


def make_datasets(config: Any, *, process_index: int | None = None,
                  process_count: int | None = None) -> Datasets:
    """The train and eval pipelines of ``config.data`` for this process.

    Images (``data.source`` in mnist_embedded, digits, tfds, npz, arrayrecord): batches
    ``{"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}``; info has ``kind="image"``,
    ``shape``, ``num_train``, ``num_eval``. Text (text_file, tfds_text, stdlib, token_file): batches
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
        if config.data.tokenizer != "byte" or config.data.source == "token_file":
            if not path or not os.path.exists(path):
                raise ValueError(f"the run's tokenizer file {path!r} is missing; it is needed to "
                                 "sample without the training text")
        if config.data.source == "token_file":  # the corpus's own tokenizer, whatever its kind
            from jaxgen.data.tokenizers import load_tokenizer_file
            info["tokenizer"] = load_tokenizer_file(path)
        else:
            info["tokenizer"] = make_tokenizer(config.data.tokenizer, "", config.data.vocab_size,
                                               path)
        batch = {"tokens": np.zeros((n, int(info["seq_len"]) + 1), np.int32)}
    else:
        info["shape"] = tuple(info["shape"])
        batch = {"image": np.zeros((n, *info["shape"]), np.float32), "label": np.zeros(n, np.int32)}

    def make_eval():
        yield {**batch, "mask": np.ones(n, np.float32)}
    return Datasets(None, make_eval, info)
