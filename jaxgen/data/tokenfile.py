"""Text corpora too large for RAM: tokenised once into memory-mapped token files per split.

``jaxgen prepare text --from FILES --tokenizer char|byte|bpe|PATH --out DIR`` writes

- ``DIR/train.bin``, ``DIR/val.bin``: the token ids, uint16 (vocabularies up to 65,536) or
  uint32, one flat stream per split, as nanoGPT's ``prepare.py`` writes ``train.bin``;
- ``DIR/tokenizer.json``: the tokenizer (a jaxgen char/byte file, or a Hugging Face
  ``tokenizer.json`` such as GPT-2's byte-level BPE);
- ``DIR/info.json``: ``{"format": "jaxgen-tokens-v1", "dtype", "vocab_size", "tokenizer",
  "tokenizer_sha256", "splits": {"train": N, "val": M}}``.

The input files are read in chunks that end at a newline, so no file is ever held whole; the
last ``val_fraction`` of the input bytes (cut at a newline) is the validation split, like
nanoGPT's split of shakespeare_char. Chunks are encoded in parallel worker processes.
Training maps the files (``np.memmap``) and reads only the windows it draws.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, Sequence

import numpy as np

from jaxgen.data.arrayrecord import load_info
from jaxgen.data.tokenizers import (BPETokenizer, ByteTokenizer, CharTokenizer,
                                    load_tokenizer_file, tokenizer_kind)
from jaxgen.errors import DataError, UsageError

FORMAT = "jaxgen-tokens-v1"
INFO_FILE = "info.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")
CHUNK_BYTES = 1 << 22


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _chunks(files: Sequence[str], val_fraction: float,
            chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, str]]:
    """(split, text) chunks of the concatenated files, each ending at a newline (or a file's
    end); the split changes at the first newline after ``1 - val_fraction`` of the bytes."""
    total = sum(os.path.getsize(f) for f in files)
    split_at = int(total * (1.0 - val_fraction))
    seen = 0
    for file in files:
        with open(file, "rb") as f:
            carry = b""
            while True:
                block = f.read(chunk_bytes)
                data = carry + block
                if not data:
                    break
                cut = len(data) if not block else data.rfind(b"\n") + 1
                if block and cut == 0:
                    carry = data  # no newline yet: read on
                    continue
                piece, carry = data[:cut], data[cut:]
                start = seen
                seen += len(piece)
                if start < split_at < seen:  # the split falls in this piece: cut at a newline
                    nl = piece.find(b"\n", split_at - start)
                    k = len(piece) if nl < 0 else nl + 1
                    head, piece = piece[:k], piece[k:]
                    yield "train", _decode(head, file, start)
                    start += k
                if piece:
                    yield ("train" if start < split_at else "val"), _decode(piece, file, start)
                if not block:
                    break


def _decode(data: bytes, file: str, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{file} is not UTF-8 ({e.reason} near byte {offset + e.start} of the "
                         "input)") from None


_WORKER_TOKENIZER = None


def _init_worker(path: str) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer_file(path)


def _encode_chunk(item: tuple[str, str]) -> tuple[str, np.ndarray]:
    split, text = item
    return split, np.asarray(_WORKER_TOKENIZER.encode(text))


def _build_tokenizer(tokenizer: str, files: Sequence[str], vocab_size: int):
    if tokenizer == "byte":
        return ByteTokenizer()
    if tokenizer == "char":
        chars: set[str] = set()
        for _, text in _chunks(files, 0.5):
            chars.update(text)
        return CharTokenizer(sorted(chars))
    if tokenizer == "bpe":
        if vocab_size < 257:
            raise UsageError(f"--vocab-size {vocab_size}: a BPE vocabulary needs more than the "
                             "256 byte symbols")
        return BPETokenizer.train_from_chunks((t for _, t in _chunks(files, 0.5)), vocab_size)
    if not os.path.isfile(tokenizer):
        raise UsageError(f"--tokenizer {tokenizer!r} is not char, byte, bpe or a tokenizer file")
    return load_tokenizer_file(tokenizer)


def prepare_text(files: Sequence[str], tokenizer: str, out: str, *, vocab_size: int = 512,
                 val_fraction: float = 0.1, workers: int = 0,
                 chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Tokenises ``files`` into ``out`` (see the module docstring); returns the info written.

    ``tokenizer``: char (the corpus's characters), byte, bpe (byte-level BPE of ``vocab_size``
    trained on the corpus) or the path of a tokenizer file (a Hugging Face ``tokenizer.json``).
    ``workers``: encoding processes (0: one per CPU). Raises UsageError on bad input.
    """
    if not files:
        raise UsageError("--from needs at least one text file")
    for f in files:
        if not os.path.isfile(f):
            raise UsageError(f"text file {f} does not exist")
    if sum(os.path.getsize(f) for f in files) == 0:
        raise UsageError(f"the text files ({', '.join(files)}) are empty")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, INFO_FILE)):
        raise UsageError(f"{out} already holds a prepared corpus; choose another --out")
    tok = _build_tokenizer(tokenizer, files, vocab_size)
    tok_path = os.path.join(out, TOKENIZER_FILE)
    tok.save(tok_path)
    dtype = dtype_for(tok.vocab_size)
    counts = dict.fromkeys(SPLITS, 0)
    outs = {s: open(os.path.join(out, f"{s}.bin.tmp"), "wb") for s in SPLITS}
    workers = workers or os.cpu_count() or 1
    chunks = _chunks(files, val_fraction, chunk_bytes)
    try:
        if workers > 1:
            import multiprocessing
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(tok_path,))
            with pool:
                encoded = pool.map(_encode_chunk, chunks, chunksize=1)
                _write_tokens(encoded, outs, counts, dtype, tok.vocab_size)
        else:
            _init_worker(tok_path)
            _write_tokens(map(_encode_chunk, chunks), outs, counts, dtype, tok.vocab_size)
    finally:
        for f in outs.values():
            f.close()
    for s in SPLITS:
        if counts[s] == 0:
            raise UsageError(f"the {s} split of {', '.join(files)} is empty; use more text or "
                             "another --val-fraction")
        os.replace(os.path.join(out, f"{s}.bin.tmp"), os.path.join(out, f"{s}.bin"))
    info = {"format": FORMAT, "dtype": dtype.name, "vocab_size": int(tok.vocab_size),
            "tokenizer": tokenizer_kind(tok), "tokenizer_sha256": file_sha256(tok_path),
            "splits": counts, "sources": [os.path.abspath(f) for f in files]}
    from jaxgen.train.workdir import write_atomic
    write_atomic(os.path.join(out, INFO_FILE), json.dumps(info, indent=1))
    return info


def _write_tokens(encoded, outs, counts, dtype, vocab_size) -> None:
    for split, ids in encoded:
        if ids.size and int(ids.max()) >= vocab_size:
            raise UsageError(f"the tokenizer produced id {int(ids.max())} outside its vocabulary "
                             f"of {vocab_size}")
        outs[split].write(ids.astype(dtype).tobytes())
        counts[split] += int(ids.size)


def synthetic(out: str, tokens: int, vocab_size: int = 65, seed: int = 0) -> dict:
    """A benchmark's corpus: ``tokens`` random ids (train) and a tenth as many (val) of a
    ``vocab_size``-symbol character tokenizer (newline, printable ASCII, then code points from
    U+0100, below the surrogates)."""
    base = "\n" + "".join(chr(c) for c in range(32, 127))
    chars = list(base[:vocab_size]) + [chr(0x100 + k) for k in range(vocab_size - len(base))]
    if not 0 < vocab_size <= len(base) + 0xD800 - 0x100:
        raise UsageError(f"a synthetic vocabulary has 1 to {len(base) + 0xD800 - 0x100} symbols")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    dtype = dtype_for(vocab_size)
    counts = {}
    for split, n in (("train", tokens), ("val", max(1, tokens // 10))):
        with open(os.path.join(out, f"{split}.bin"), "wb") as f:
            for start in range(0, n, 1 << 24):
                f.write(rng.integers(0, vocab_size, min(1 << 24, n - start)).astype(dtype)
                        .tobytes())
        counts[split] = n
    tok_path = os.path.join(out, TOKENIZER_FILE)
    CharTokenizer(chars).save(tok_path)
    info = {"format": FORMAT, "dtype": dtype.name, "vocab_size": vocab_size,
            "tokenizer": "char", "tokenizer_sha256": file_sha256(tok_path),
            "splits": counts, "sources": []}
    with open(os.path.join(out, INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f)
    return info


class TokenFile:
    """The prepared corpus at ``path``: ``tokens(split)`` memory-maps a split's ids.

    Opening checks the info file, that each split's size is its token count times the dtype's
    width (a file of another dtype or a truncated one is refused) and that the tokenizer file
    is the one the corpus was encoded with (its SHA-256).
    """

    def __init__(self, path: str):
        info, file = load_info(path, FORMAT, "jaxgen prepare text --from FILES --tokenizer "
                               "char --out DIR")
        try:
            self.dtype = np.dtype(info["dtype"])
            self.vocab_size = int(info["vocab_size"])
            self.counts = {s: int(info["splits"][s]) for s in SPLITS}
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{file} is malformed ({type(e).__name__}: {e})") from None
        if self.dtype not in (np.uint16, np.uint32):
            raise DataError(f"{file}: dtype {self.dtype.name}; token files are uint16 or uint32")
        if self.vocab_size > np.iinfo(self.dtype).max + 1:
            raise DataError(f"{file}: a vocabulary of {self.vocab_size} does not fit "
                            f"{self.dtype.name}")
        self.path, self.info = path, info
        self.tokenizer_path = os.path.join(path, TOKENIZER_FILE)
        if not os.path.isfile(self.tokenizer_path):
            raise DataError(f"{path} has no {TOKENIZER_FILE}")
        if file_sha256(self.tokenizer_path) != info.get("tokenizer_sha256"):
            raise DataError(f"{self.tokenizer_path} is not the tokenizer {path} was encoded with "
                            "(its SHA-256 differs from info.json's); prepare the corpus again")
        for s in SPLITS:
            bin_path = os.path.join(path, f"{s}.bin")
            if not os.path.isfile(bin_path):
                raise DataError(f"{bin_path} is missing")
            size, want = os.path.getsize(bin_path), self.counts[s] * self.dtype.itemsize
            if size != want:
                raise DataError(f"{bin_path} has {size:,} bytes, not the {want:,} of "
                                f"{self.counts[s]:,} {self.dtype.name} tokens in info.json "
                                "(another dtype, or a truncated file)")

    def tokens(self, split: str) -> "MappedTokens":
        """The ids of ``split``: a read-only memory map [N] of the file's dtype."""
        return MappedTokens(os.path.join(self.path, f"{split}.bin"), self.dtype,
                            self.counts[split])

    def tokenizer(self):
        return load_tokenizer_file(self.tokenizer_path)


class MappedTokens:
    """A token file as an array [N] that maps the file on first use and pickles as its path,
    so Grain worker processes map it too instead of each receiving a copy of the corpus.

    The map is advised ``MADV_RANDOM``: training reads scattered windows, and the kernel's
    read-ahead around each would fault in (and keep resident) pages no window needs.
    """

    def __init__(self, path: str, dtype: np.dtype, count: int):
        self.path, self.dtype, self.count = path, np.dtype(dtype), int(count)
        self._array = None

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            import mmap
            self._array = np.memmap(self.path, self.dtype, mode="r", shape=(self.count,))
            raw = getattr(self._array, "_mmap", None)
            if raw is not None and hasattr(mmap, "MADV_RANDOM"):
                raw.madvise(mmap.MADV_RANDOM)
        return self._array

    def __getstate__(self):
        return {"path": self.path, "dtype": self.dtype, "count": self.count, "_array": None}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        return self.array[index]

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self.array)
        return a if dtype is None else a.astype(dtype)
