"""Text corpora as one token stream, split into train/val, cut into fixed-length windows.

Sources: a local UTF-8 file, a TFDS text dataset (``tiny_shakespeare``, ``lm1b``: every split's
texts joined by newlines, in split order) or the Python standard library's own source, the
embedded offline corpus. The split follows nanoGPT's shakespeare_char/prepare.py: the first
``1 - val_fraction`` of the characters train, the rest validate.
"""
from __future__ import annotations

import os
import sysconfig
from typing import Any

import numpy as np

from jaxgen.data import tfds_source

from jaxgen.config import TEXT_SOURCES  # noqa: E402  (re-exported)


def read_text_file(path: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f"text file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {path} is not UTF-8 ({e.reason} at byte {e.start})") from None


TEXT_FILE_HINT = ("train on a local text file: --set data.source=text_file --set "
                  "data.path=FILE (e.g. tinyshakespeare's input.txt)")


def tfds_text(name: str, data_dir: str = "", max_chars: int = 0) -> str:
    """All splits of a TFDS text dataset, in the order train, validation, test."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=tfds_source.default_data_dir(data_dir), try_gcs=False)
        splits = [s for s in ("train", "validation", "test") if s in builder.info.splits]
    except Exception:  # noqa: BLE001 - let open_split produce the one-line message
        splits = []
    splits = splits or ["train"]
    parts, total = [], 0
    for split in splits:
        src = tfds_source.open_split(name, split, data_dir, alternative=TEXT_FILE_HINT)
        for i in range(len(src)):
            t = src[i]["text"]
            t = t.decode("utf-8") if isinstance(t, bytes) else str(t)
            parts.append(t)
            total += len(t) + 1
            if max_chars and total >= max_chars:
                return "\n".join(parts)[:max_chars]
    return "\n".join(parts)


def stdlib_text(max_chars: int = 5_000_000) -> str:
    """The standard library's .py files (sorted paths, tests excluded), up to ``max_chars``."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "site-packages",
                                                               "idle_test", "__pycache__"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    parts.append(f.read())
            except (UnicodeDecodeError, OSError):
                continue
            total += len(parts[-1])
            if total >= max_chars:
                return "".join(parts)[:max_chars]
    return "".join(parts)


def load_text(data: Any) -> str:
    """Dispatches on ``data.source`` (one of :data:`TEXT_SOURCES`)."""
    src = data.source
    max_chars = int(data.max_chars)
    if src == "text_file" or (src == "tfds_text" and data.path):
        # A local file named by data.path wins over TFDS (same text, no preparation needed).
        if not data.path:
            raise ValueError("data.source='text_file' needs data.path=FILE")
        text = read_text_file(data.path)
    elif src == "tfds_text":
        text = tfds_text(data.name, data.data_dir, max_chars)
    elif src == "stdlib":
        text = stdlib_text(max_chars or 5_000_000)
    else:
        raise ValueError(f"unknown text data source {src!r}; choose one of {', '.join(TEXT_SOURCES)}")
    if max_chars:
        text = text[:max_chars]
    return text


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """First ``1 - val_fraction`` of the characters train, the rest val (nanoGPT's split)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    n = int(len(text) * (1.0 - val_fraction))
    return text[:n], text[n:]


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014): a fast, well-mixed hash of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def window_offsets(n_tokens: int, example_ids: np.ndarray, length: int, seed: int) -> np.ndarray:
    """int64 offsets of the windows of ``example_ids``: SplitMix64 of (seed, id) modulo the
    number of windows of ``length`` in ``n_tokens``."""
    n_offsets = n_tokens - length + 1
    if n_offsets < 1:
        raise ValueError(f"the training text has {n_tokens} tokens, fewer than one window of "
                         f"{length}; use a shorter data.seq_len or more text")
    with np.errstate(over="ignore"):
        h = _mix64(np.asarray(example_ids, np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
    return (h % np.uint64(n_offsets)).astype(np.int64)


def random_windows(tokens: np.ndarray, example_ids: np.ndarray, length: int, seed: int) -> np.ndarray:
    """[len(example_ids), length] of ``tokens``' dtype: windows at offsets hashed from (seed,
    example id).

    Like nanoGPT's ``get_batch`` (uniformly random offsets), but a pure function of the example
    index, so an iterator over examples can be checkpointed and resumed exactly. ``tokens`` may
    be a memory map: only the windows drawn are read.
    """
    offsets = window_offsets(len(tokens), example_ids, length, seed)
    return tokens[offsets[:, None] + np.arange(length)[None, :]]


def num_eval_windows(n_tokens: int, length: int) -> int:
    """How many windows :func:`eval_windows` cuts from ``n_tokens`` (ValueError if none)."""
    n = (n_tokens - 1) // (length - 1) if length > 1 else n_tokens
    if n < 1:
        raise ValueError(f"the validation text has {n_tokens} tokens, fewer than one window "
                         f"of {length}; use a shorter data.seq_len or a larger data.val_fraction")
    return n


def eval_windows(tokens: np.ndarray, length: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Non-overlapping windows [N, length] with stride ``length - 1``: every token after the
    first is a target exactly once. ``ids`` picks windows (default: all of them)."""
    stride = max(length - 1, 1)
    if ids is None:
        ids = np.arange(num_eval_windows(len(tokens), length))
    return tokens[np.asarray(ids)[:, None] * stride + np.arange(length)[None, :]]
