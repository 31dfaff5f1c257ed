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
        self._lut = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self._lut[c] for c in text), np.int32, len(text))
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the {self.vocab_size}-symbol "
                             "vocabulary of this character tokenizer") from None

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


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` library."""

    def __init__(self, tok):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        chunk = 1 << 16
        tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer)
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
        if kind == "char":
            with open(path, encoding="utf-8") as f:
                return CharTokenizer(json.load(f)["chars"])
        return BPETokenizer.load(path)
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
