"""Text pipelines and tokenizers on the real tinyshakespeare text."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxgen import settings
from jaxgen.config import Experiment, TextData
from jaxgen.data import make_datasets, make_tokenizer
from jaxgen.data import text as text_lib
from envs import shared_data

SHAKESPEARE = shared_data("tinyshakespeare.txt")


def _config(**data):
    d = {"source": "text_file", "path": SHAKESPEARE, "name": "", "data_dir": "",
         "tokenizer": "char", "vocab_size": 512, "tokenizer_path": "", "seq_len": 64,
         "val_fraction": 0.1, "eval_batches": 0, "batch_size": 12, "eval_batch_size": 64, "seed": 0}
    d.update(data)
    return Experiment(data=settings.from_dict(TextData, d, what="data"))


@pytest.fixture(scope="module")
def shakespeare():
    with open(SHAKESPEARE, encoding="utf-8") as f:
        return f.read()


def test_char_tokenizer_matches_nanogpt(shakespeare):
    tok = make_tokenizer("char", shakespeare)
    assert tok.vocab_size == 65 and tok.chars[:2] == ["\n", " "]
    ids = tok.encode(shakespeare[:1000])
    assert tok.decode(ids) == shakespeare[:1000]
    with pytest.raises(ValueError, match="not in the 65-symbol vocabulary"):
        tok.encode("naïve")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([70])


def test_byte_and_bpe_tokenizers_round_trip(shakespeare, tmp_path):
    byte = make_tokenizer("byte", "")
    assert byte.decode(byte.encode("naïve ✓")) == "naïve ✓"
    path = str(tmp_path / "bpe.json")
    bpe = make_tokenizer("bpe", shakespeare[:200_000], vocab_size=400, path=path)
    assert bpe.vocab_size == 400 and os.path.exists(path)
    text = shakespeare[500_000:501_000]
    ids = bpe.encode(text)
    assert len(ids) < len(text) * 0.8 and bpe.decode(ids) == text
    again = make_tokenizer("bpe", "ignored: loaded from the file", vocab_size=400, path=path)
    np.testing.assert_array_equal(again.encode(text), ids)


def test_split_windows_and_targets(shakespeare):
    ds = make_datasets(_config())
    info = ds.info
    n_train = int(len(shakespeare) * 0.9)
    assert info["vocab_size"] == 65 and info["num_train_tokens"] == n_train  # nanoGPT: 1,003,854
    tok = info["tokenizer"]
    batch = next(ds.train)["tokens"]
    assert batch.shape == (12, 65) and batch.dtype == np.int32
    train_text = shakespeare[:n_train]
    for row in batch:  # every window is a real contiguous piece of the train text
        assert tok.decode(row) in train_text
    val_text = shakespeare[n_train:]
    evals = list(ds.make_eval())
    windows = np.concatenate([b["tokens"][b["mask"] == 1] for b in evals])
    # Windows overlap by one token, so targets (window[1:]) cover the val text exactly once.
    assert tok.decode(np.concatenate([windows[0][:1]] + [w[1:] for w in windows])) == \
        val_text[:1 + 64 * len(windows)]
    assert len(val_text) - (1 + 64 * len(windows)) < 64


def test_text_iterator_resumes_and_shards():
    ds = make_datasets(_config())
    next(ds.train)
    state = ds.train.get_state()
    want = next(ds.train)["tokens"]
    again = make_datasets(_config())
    again.train.set_state(state)
    np.testing.assert_array_equal(next(again.train)["tokens"], want)
    halves = [next(make_datasets(_config(), process_index=i, process_count=2).train)["tokens"]
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), next(make_datasets(_config()).train)["tokens"])


def test_random_windows_are_uniform_and_in_range():
    tokens = np.arange(1000, dtype=np.int32)
    w = text_lib.random_windows(tokens, np.arange(20000), 10, seed=3)
    assert w.min() >= 0 and w.max() <= 999
    np.testing.assert_array_equal(w[:, 1:] - w[:, :-1], 1)
    counts = np.bincount(w[:, 0], minlength=991)
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()


def test_stdlib_corpus_and_bad_inputs(tmp_path):
    ds = make_datasets(_config(source="stdlib", path="", tokenizer="byte", max_chars=300_000))
    assert ds.info["vocab_size"] == 256 and ds.info["num_train_tokens"] >= 270_000
    text = text_lib.stdlib_text(200_000)
    assert len(text) == 200_000 and "import" in text
    with pytest.raises(ValueError, match="does not exist"):
        make_datasets(_config(path=str(tmp_path / "none.txt")))
    (tmp_path / "tiny.txt").write_text("abc" * 10)
    with pytest.raises(ValueError, match="fewer than one window"):
        make_datasets(_config(path=str(tmp_path / "tiny.txt")))
    with pytest.raises(ValueError, match="tokenizer: Input should be 'char', 'byte' or 'bpe'"):
        make_datasets(_config(tokenizer="word"))


def test_tfds_text_with_mock_data():
    with tfds.testing.mock_data(num_examples=40):
        ds = make_datasets(_config(source="tfds_text", name="tiny_shakespeare", path="",
                                   tokenizer="byte", seq_len=4, batch_size=4, eval_batch_size=4))
    assert next(ds.train)["tokens"].shape == (4, 5)
    assert ds.info["num_train_tokens"] > 100
