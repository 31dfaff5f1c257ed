"""Tokenizers: character-level, byte-level, and BPE trained offline on the user's corpus.

All expose ``encode(str) -> np.ndarray[int32]``, ``decode(ids) -> str`` and ``vocab_size``.
BPE (Sennrich et al. 2016) is trained with the Hugging Face ``tokenizers`` library (byte-level
pre-tokenization as in GPT-2, Radford et al. 2019), no download.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np


class CharTokenizer:
    """One id per character of a fixed alphabet (nanoGPT's shakespeare_char: sorted unique chars)."""

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.vocab_size = len(self.chars)
        codes = np.asarray([ord(c) for c in self.chars], np.uint32)
        order = np.argsort(codes)
        self._sorted, self._ids = codes[order], order.astype(np.int32)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> np.ndarray:
        """int32 [len(text)]: vectorised over the text's code points (UTF-32)."""
        if not text:
            return np.zeros(0, np.int32)
        points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        pos = np.minimum(np.searchsorted(self._sorted, points), len(self._sorted) - 1)
        bad = self._sorted[pos] != points
        if bad.any():
            c = chr(int(points[np.argmax(bad)]))
            raise ValueError(f"character {c!r} is not in the {self.vocab_size}-symbol "
                             "vocabulary of this character tokenizer")
        return self._ids[pos]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str) -> None:
        from jaxgen.train.workdir import write_atomic
        write_atomic(path, json.dumps({"type": "char", "chars": self.chars}))


class ByteTokenizer:
    """UTF-8 bytes: 256 ids, any text."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the byte vocabulary [0, 256)")
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: str) -> None:
        from jaxgen.train.workdir import write_atomic
        write_atomic(path, json.dumps({"type": "byte"}))


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` library."""

    def __init__(self, tok):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        chunk = 1 << 16
        return cls.train_from_chunks((text[i:i + chunk] for i in range(0, len(text), chunk)),
                                     vocab_size)

    @classmethod
    def train_from_chunks(cls, chunks: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Trains on an iterator of text pieces (a corpus never held whole)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(chunks, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str) -> "BPETokenizer":
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_file(path))

    def save(self, path: str) -> None:
        from jaxgen.train.workdir import write_atomic
        write_atomic(path, self._tok.to_str())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self._tok.decode(ids)


TOKENIZERS = ("char", "byte", "bpe")


def tokenizer_kind(tok) -> str:
    """char, byte or bpe (any Hugging Face tokenizer)."""
    return {CharTokenizer: "char", ByteTokenizer: "byte"}.get(type(tok), "bpe")


def load_tokenizer_file(path: str):
    """A tokenizer from a file that says what it is: jaxgen's char or byte file, or a Hugging
    Face ``tokenizer.json`` (GPT-2's BPE, a SentencePiece conversion, ...)."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer file {path} cannot be read ({e})") from None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if not isinstance(spec, dict) or "model" not in spec:
        raise ValueError(f"{path} is neither a jaxgen tokenizer file nor a Hugging Face "
                         "tokenizer.json")
    try:
        return BPETokenizer.load(path)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own Exception
        raise ValueError(f"{path}: the tokenizers library cannot load it ({e})") from None


def make_tokenizer(kind: str, text: str, vocab_size: int = 0, path: str = ""):
    """Builds (or loads from ``path``, when it exists) the tokenizer ``kind`` for ``text``.

    A tokenizer built here is saved to ``path`` when one is given, so eval and sampling later
    use exactly the vocabulary training used.
    """
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZERS)}")
    if kind == "byte":
        return ByteTokenizer()
    if path and os.path.exists(path):
        tok = load_tokenizer_file(path)
        if tokenizer_kind(tok) != kind:
            raise ValueError(f"the tokenizer file {path} holds a {tokenizer_kind(tok)} "
                             f"tokenizer, not the data.tokenizer={kind} of this run")
        return tok
    if kind == "char":
        tok = CharTokenizer.from_text(text)
    else:
        if vocab_size < 257:
            raise ValueError(f"data.vocab_size={vocab_size}: a BPE vocabulary needs more than "
                             "the 256 byte symbols")
        tok = BPETokenizer.train(text, vocab_size)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tok.save(path)
    return tok
