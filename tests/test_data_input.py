"""Input that scales: prepared ArrayRecord images and memory-mapped token files, read lazily
through Grain (worker processes, per-process shards, exact resume), and their bad inputs."""
import json
import os

import jax
import numpy as np
import pytest

from jaxgen import cli, experiments, models, settings
from jaxgen.config import Experiment, ImageData, TextData
from jaxgen.data import arrayrecord, make_datasets, tokenfile
from jaxgen.data import images as images_lib
from jaxgen.data.pipeline import FlipCrop
from jaxgen.data.tokenizers import load_tokenizer_file
from jaxgen.errors import DataError
from jaxgen.train import loop
from envs import shared_data

SHAKESPEARE = shared_data("tinyshakespeare.txt")


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """256 real MNIST digits (uint8 [256, 28, 28, 1]) and their labels, as an .npz."""
    s = images_lib.mnist_embedded()
    ids = np.random.default_rng(0).permutation(len(s.train_images))[:256]
    path = str(tmp_path_factory.mktemp("npz") / "digits.npz")
    np.savez(path, image=s.train_images[ids], label=s.train_labels[ids])
    return path


@pytest.fixture(scope="module")
def prepared(digits_npz, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ar") / "digits")
    arrayrecord.prepare_images(digits_npz, out, eval_fraction=0.25, shard_mb=0)
    return out


def _image_config(path, **data):
    d = {"source": "arrayrecord", "path": path, "batch_size": 32, "eval_batch_size": 48}
    d.update(data)
    return Experiment(data=settings.from_dict(ImageData, d, what="data"))


def _text_config(path, **data):
    d = {"source": "token_file", "path": path, "batch_size": 8, "eval_batch_size": 8,
         "seq_len": 32, "eval_batches": 2}
    d.update(data)
    return Experiment(data=settings.from_dict(TextData, d, what="data"))


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _records(path, split):
    return list(arrayrecord.ArrayRecordImages(path, split).records())


def test_prepare_images_round_trips_an_npz_exactly(digits_npz, prepared):
    with np.load(digits_npz) as f:
        images, labels = f["image"], f["label"]
    info = arrayrecord.read_info(prepared)
    # shard_mb=0: one record per shard, so the round trip crosses many files
    assert info["shape"] == [28, 28, 1] and len(info["splits"]["train"]["files"]) == 192
    got = _records(prepared, "train") + _records(prepared, "test")
    assert sorted(i for i, _, _ in got) == list(range(256))  # every example, once
    for i, label, image in got:
        assert label == labels[i]
        np.testing.assert_array_equal(image, images[i])
    assert [i for i, _, _ in _records(prepared, "train")] == \
        sorted(i for i, _, _ in _records(prepared, "train"))  # the source order is kept


def test_prepare_images_from_class_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    want = {}
    for label, cls in enumerate(["ant", "bee", "cat"]):  # sorted names are the labels
        os.makedirs(tmp_path / "src" / cls)
        for k in range(4):
            a = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / "src" / cls / f"{k}.png")
            want[a.tobytes()] = label
    code = cli.main(["prepare", "images", "--from", str(tmp_path / "src"), "--out",
                     str(tmp_path / "out"), "--eval-fraction", "0.25"])
    assert code == 0
    info = arrayrecord.read_info(str(tmp_path / "out"))
    assert info["classes"] == ["ant", "bee", "cat"] and info["num_classes"] == 3
    got = _records(str(tmp_path / "out"), "train") + _records(str(tmp_path / "out"), "test")
    assert len(got) == 12 and {im.tobytes(): lb for _, lb, im in got} == want


def test_arrayrecord_batches_resume_exactly_and_workers_change_nothing(prepared):
    ds = make_datasets(_image_config(prepared))
    assert ds.info["num_train"] == 192 and ds.info["num_classes"] == 10
    ref = _batches(ds.train, 9)  # past the end of the first epoch (6 batches)
    images = np.concatenate([b["image"] for b in ref[:6]])
    assert len({x.tobytes() for x in images}) == 192  # an epoch holds every example once
    assert not np.array_equal(ref[0]["label"], ref[6]["label"])  # the next is reshuffled
    resumed = make_datasets(_image_config(prepared))
    resumed.train.seek(5)
    # two Grain worker processes and 2 reader threads: the same batches, in order
    workers = make_datasets(_image_config(prepared, workers=2, threads=2))
    workers.train.seek(5)
    for a, b, c in zip(ref[5:], _batches(resumed.train, 4), _batches(workers.train, 4)):
        for k in ("image", "label"):
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a[k], c[k])
    workers.train.close()


@pytest.mark.parametrize("kind", ["arrayrecord", "token_file"])
def test_process_shards_are_disjoint_and_make_the_global_batch(prepared, token_dir, kind):
    config = _image_config(prepared) if kind == "arrayrecord" else _text_config(token_dir)
    key = "image" if kind == "arrayrecord" else "tokens"
    whole = _batches(make_datasets(config).train, 3)
    parts = [_batches(make_datasets(config, process_index=p, process_count=2).train, 3)
             for p in range(2)]
    for b, (p0, p1) in enumerate(zip(*parts)):
        assert p0[key].shape[0] == whole[b][key].shape[0] // 2
        np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), whole[b][key])
        assert not {x.tobytes() for x in p0[key]} & {x.tobytes() for x in p1[key]}


def test_flip_crop_is_a_mirror_and_a_window_of_the_padded_image():
    x = np.random.default_rng(0).random((20, 6, 7, 2)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    rng = np.random.default_rng(3)
    y = FlipCrop(True, 0).random_map({"image": x}, rng)["image"]
    mirrored = [np.array_equal(a, b[:, ::-1]) for a, b in zip(y, x)]
    assert all(m or np.array_equal(a, b) for m, a, b in zip(mirrored, y, x))
    assert 0 < sum(mirrored) < 20  # each example draws its own flip
    z = FlipCrop(False, 2).random_map({"image": x}, rng)["image"]
    assert z.shape == x.shape
    for a, p in zip(z, padded):
        assert any(np.array_equal(a, p[i:i + 6, j:j + 7]) for i in range(5) for j in range(5))


def test_augmented_batches_resume_exactly(prepared):
    config = _image_config(prepared, random_flip=True, random_crop=2)
    ref = _batches(make_datasets(config).train, 8)
    plain = _batches(make_datasets(_image_config(prepared)).train, 1)[0]["image"]
    assert not np.array_equal(ref[0]["image"], plain)  # augmented
    resumed = make_datasets(config)
    resumed.train.seek(6)  # in the second epoch: its flips and crops are drawn afresh
    for a, b in zip(ref[6:], _batches(resumed.train, 2)):
        np.testing.assert_array_equal(a["image"], b["image"])


# --- token files

def _gpt2_style_tokenizer(path, text):
    """A byte-level BPE saved as a Hugging Face tokenizer.json, built as GPT-2's is."""
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers

    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=400, show_progress=False, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    with open(SHAKESPEARE, encoding="utf-8") as f:
        text = f.read()[:120_000]
    d = tmp_path_factory.mktemp("corpus")
    # two files, cut at a newline: the corpus is their concatenation
    cut = text.index("\n", 70_000) + 1
    (d / "a.txt").write_text(text[:cut], encoding="utf-8")
    (d / "b.txt").write_text(text[cut:], encoding="utf-8")
    return d, text


@pytest.fixture(scope="module")
def token_dir(corpus):
    d, _ = corpus
    out = str(d / "tokens")
    tokenfile.prepare_text([str(d / "a.txt"), str(d / "b.txt")], "char", out, workers=1)
    return out


def test_gpt2_style_tokenizer_json_encodes_and_decodes_through_the_token_file(corpus):
    d, text = corpus
    _gpt2_style_tokenizer(str(d / "tokenizer.json"), text)
    out = str(d / "bpe")
    # two encoding processes and 16 KiB chunks: the parallel path, over many chunks
    info = tokenfile.prepare_text([str(d / "a.txt"), str(d / "b.txt")],
                                  str(d / "tokenizer.json"), out, workers=2, chunk_bytes=1 << 14)
    assert info["dtype"] == "uint16" and info["vocab_size"] == 400 and info["tokenizer"] == "bpe"
    corpus_file = tokenfile.TokenFile(out)
    tok = corpus_file.tokenizer()
    train, val = corpus_file.tokens("train"), corpus_file.tokens("val")
    assert isinstance(train.array, np.memmap) and train.array.dtype == np.uint16
    import pickle
    assert len(pickle.dumps(train)) < 1000  # workers get the path, not a copy of the corpus
    train, val = np.asarray(train), np.asarray(val)
    assert tok.decode(train) + tok.decode(val) == text
    n_val = len(tok.decode(val))
    assert abs(n_val - 0.1 * len(text)) < 200  # the last tenth, cut at a newline
    assert len(train) < 0.7 * len(text)  # BPE: fewer tokens than characters


def test_char_token_file_matches_the_in_memory_tokenizer(corpus, token_dir):
    _, text = corpus
    corpus_file = tokenfile.TokenFile(token_dir)
    tok = corpus_file.tokenizer()
    assert tok.vocab_size == len(set(text))
    np.testing.assert_array_equal(
        np.concatenate([corpus_file.tokens("train"), corpus_file.tokens("val")]),
        tok.encode(text))


def test_token_file_windows_resume_exactly_and_keep_the_tokenizer(token_dir, tmp_path):
    config = _text_config(token_dir, tokenizer_path=str(tmp_path / "tok.json"))
    ds = make_datasets(config)
    assert ds.info["vocab_size"] == tokenfile.TokenFile(token_dir).vocab_size
    assert open(tmp_path / "tok.json").read() == open(os.path.join(token_dir,
                                                                    "tokenizer.json")).read()
    ref = _batches(ds.train, 6)
    train = np.asarray(tokenfile.TokenFile(token_dir).tokens("train"))
    for b in ref:  # every window is a run of the corpus
        assert b["tokens"].shape == (8, 33) and b["tokens"].dtype == np.int32
        for w in b["tokens"]:
            starts = np.flatnonzero(train[:len(train) - 32] == w[0])
            assert any(np.array_equal(train[s:s + 33], w) for s in starts)
    resumed = make_datasets(config)
    resumed.train.seek(4)
    for a, b in zip(ref[4:], _batches(resumed.train, 2)):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    evals = list(ds.make_eval())
    assert len(evals) == 2 and evals[0]["tokens"].shape == (8, 33)


# --- trainer: a resumed run is bit-identical, a corrupt record mid-run loses nothing

def _vae(path, steps):
    return experiments.apply_overrides(experiments.get_config("vae_mnist:smoke"), [
        f"train.steps={steps}", "train.ckpt_every=3", "data.source=arrayrecord",
        f"data.path={path}", "data.batch_size=32", "data.eval_batch_size=64",
        "mesh.cpu_devices=2"])


def _lm(path, steps):
    return experiments.apply_overrides(experiments.get_config("lm_shakespeare_char:smoke"), [
        f"train.steps={steps}", "train.ckpt_every=3", "data.source=token_file",
        f"data.path={path}", "mesh.cpu_devices=2"])


@pytest.mark.parametrize("kind", ["arrayrecord", "token_file"])
def test_resumed_run_is_bit_identical(prepared, token_dir, tmp_path, kind):
    make = (lambda steps: _vae(prepared, steps)) if kind == "arrayrecord" else \
        (lambda steps: _lm(token_dir, steps))
    whole = loop.train(make(8), str(tmp_path / "a"), family=models.make_family, progress=False)
    with pytest.raises(loop.Interrupted):
        loop.train(make(8), str(tmp_path / "b"), family=models.make_family, progress=False,
                   interrupt_at=5)
    resumed = loop.train(make(8), str(tmp_path / "b"), family=models.make_family,
                         progress=False)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _corrupt_one_record(path):
    """Overwrites the middle of the first train shard with bytes no chunk hash accepts; returns
    the indices (within that shard) of the records that no longer read."""
    shard = os.path.join(path, arrayrecord.read_info(path)["splits"]["train"]["files"][0])
    data = bytearray(open(shard, "rb").read())
    at = len(data) // 3
    if not 1000 < at % 65536 < 64000:  # not a Riegeli block header (every 64 KiB): a chunk
        at += 2000
    data[at:at + 64] = bytes(64)
    open(shard, "wb").write(bytes(data))
    src = arrayrecord.ArrayRecordImages(path, "train")  # the footer still reads: it opens
    bad = []
    for i in range(src.counts[0]):
        try:
            src[i]
        except DataError:
            bad.append(i)
    return shard, bad


def test_corrupt_record_mid_run_names_it_and_keeps_the_checkpoint(digits_npz, tmp_path, capsys):
    path = str(tmp_path / "ar")
    arrayrecord.prepare_images(digits_npz, path, eval_fraction=0.25)  # one 192-record shard
    w = str(tmp_path / "w")
    args = ["train", "vae_mnist:smoke", "--workdir", w, "--no-progress", "--set",
            "data.source=arrayrecord", "--set", f"data.path={path}", "--set",
            "data.batch_size=32", "--set", "data.eval_batch_size=64", "--set",
            "mesh.cpu_devices=2", "--set", "data.workers=1"]
    assert cli.main(args + ["--set", "train.steps=6"]) == 0  # one epoch: a checkpoint at 6
    shard, bad = _corrupt_one_record(path)
    assert bad
    capsys.readouterr()
    assert cli.main(args + ["--set", "train.steps=12"]) == 2  # the next epoch reads it
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [line for line in err.strip().splitlines() if not line.startswith("jaxgen: INFO")]
    assert len(err) == 1 and err[0].startswith("jaxgen train: error: ") and shard in err[0]
    assert any(f"record {i} " in err[0] for i in bad) and "corrupt" in err[0]
    assert 6 in [int(d) for d in os.listdir(os.path.join(w, "checkpoints")) if d.isdigit()]
    import jaxgen
    assert jaxgen.load(w).step == 6  # what was checkpointed still loads


# --- bad input: one line, exit 2

def _fails(capsys, argv, *needles):
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [line for line in err.strip().splitlines() if not line.startswith("jaxgen: INFO")]
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_bad_image_input_is_one_line_and_exit_2(tmp_path, capsys, prepared):
    os.makedirs(tmp_path / "empty" / "cls")
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no image here")
    _fails(capsys, ["prepare", "images", "--from", str(tmp_path / "empty"), "--out",
                    str(tmp_path / "o1")], "holds no images")
    import shutil
    broken = str(tmp_path / "broken")
    shutil.copytree(prepared, broken)
    shard = os.path.join(broken, arrayrecord.read_info(broken)["splits"]["train"]["files"][0])
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    config = ["train", "vae_mnist:smoke", "--workdir", str(tmp_path / "w"), "--set",
              "data.source=arrayrecord"]
    _fails(capsys, config + ["--set", f"data.path={broken}"], shard, "not a readable ArrayRecord")
    _fails(capsys, config + ["--set", f"data.path={tmp_path / 'nowhere'}"], "is not a directory")
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_bad_token_input_is_one_line_and_exit_2(tmp_path, capsys, token_dir):
    import shutil

    def copy(name):
        shutil.copytree(token_dir, tmp_path / name)
        return str(tmp_path / name)

    wrong_dtype = copy("dtype")  # a uint32 file where info.json says uint16
    tokens = np.fromfile(os.path.join(wrong_dtype, "train.bin"), np.uint16)
    tokens.astype(np.uint32).tofile(os.path.join(wrong_dtype, "train.bin"))
    wrong_tok = copy("tok")
    with open(os.path.join(wrong_tok, "tokenizer.json"), "w") as f:
        json.dump({"type": "byte"}, f)
    train = ["train", "lm_shakespeare_char:smoke", "--workdir", str(tmp_path / "w"), "--set",
             "data.source=token_file"]
    _fails(capsys, train + ["--set", f"data.path={wrong_dtype}"], "train.bin", "another dtype")
    _fails(capsys, train + ["--set", f"data.path={wrong_tok}"], "is not the tokenizer")
    _fails(capsys, train + ["--set", f"data.path={token_dir}", "--set", "data.seq_len=200000"],
           "fewer than one window")
    _fails(capsys, ["prepare", "text", "--from", str(tmp_path / "none.txt"), "--out",
                    str(tmp_path / "o")], "does not exist")
    _fails(capsys, ["prepare", "text", "--from", SHAKESPEARE, "--tokenizer", str(tmp_path),
                    "--out", str(tmp_path / "o2")], "not char, byte, bpe or a tokenizer file")
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_token_ids_outside_the_vocabulary_stop_with_the_file_and_position(token_dir, tmp_path):
    import shutil
    path = str(tmp_path / "t")
    shutil.copytree(token_dir, path)
    mm = np.memmap(os.path.join(path, "train.bin"), np.uint16, mode="r+")
    mm[:] = 60000  # far outside the 65-symbol vocabulary
    mm.flush()
    ds = make_datasets(_text_config(path))
    with pytest.raises(DataError, match=r"train.bin: token [\d,]+ is 60000, outside"):
        next(ds.train)


def test_loaded_tokenizer_kinds(tmp_path, corpus):
    d, text = corpus
    _gpt2_style_tokenizer(str(tmp_path / "gpt2.json"), text[:20000])
    assert load_tokenizer_file(str(tmp_path / "gpt2.json")).vocab_size == 400
    (tmp_path / "junk.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither a jaxgen tokenizer file"):
        load_tokenizer_file(str(tmp_path / "junk.json"))


def test_compiling_ahead_of_time_reads_only_the_prepared_info(prepared, token_dir):
    """``jaxgen compile`` needs shapes, not data: the info files give them."""
    from jaxgen.data.abstract import abstract_info

    images = abstract_info(_image_config(prepared))
    assert images["shape"] == (28, 28, 1) and images["num_classes"] == 10
    text = abstract_info(_text_config(token_dir))
    assert text["vocab_size"] == tokenfile.TokenFile(token_dir).vocab_size
