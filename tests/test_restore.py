"""Restore never silently starts over (issue: reliability at scale), and the non-finite guard."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import toy
from jaxgen.errors import RunError
from jaxgen.train import checkpoint as ckpt_lib
from jaxgen.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(config, workdir, datasets=None, **kw):
    datasets = datasets or toy.toy_datasets(config)
    return loop.train(config, str(workdir), family=toy.make_family, datasets=datasets,
                      progress=False, **kw)


def _ckpt_steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _rows(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_ema_added_on_resume_starts_from_restored_params(tmp_path, caplog):
    w = tmp_path / "w"
    first = _train(toy.toy_config(steps=3), w)
    config = toy.toy_config(steps=3, ema_decay=0.9)
    resumed = _train(config, w)  # nothing left to train: the state is the restored one
    for a, b in zip(jax.tree.leaves(resumed.ema_params), jax.tree.leaves(first.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    more = toy.toy_config(steps=6, ema_decay=0.9)
    state = _train(more, w)
    assert int(state.step) == 6 and _ckpt_steps(w) == [3, 6]


def test_structure_change_is_a_usage_error_and_changes_nothing(tmp_path):
    w = tmp_path / "w"
    _train(toy.toy_config(steps=3), w)
    before = (open(w / "config.json").read(), open(w / "metrics.jsonl").read())
    # one more optax transform: another opt_state structure
    changed = toy.with_(toy.toy_config(steps=6), **{"optim.clip_norm": 1.0})
    with pytest.raises(ckpt_lib.StateMismatch, match=r"opt_state.*optim\.clip_norm: 0\.0 -> 1\.0"):
        _train(changed, w)
    assert (open(w / "config.json").read(), open(w / "metrics.jsonl").read()) == before
    assert _ckpt_steps(w) == [3]


def _damage(workdir, step):
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "r+b") as fh:
                fh.truncate(os.path.getsize(path) // 2)


def test_all_checkpoints_damaged_stops_without_training(tmp_path):
    w = tmp_path / "w"
    _train(toy.toy_config(steps=6), w)
    for step in (3, 6):
        _damage(w, step)
    before = open(w / "metrics.jsonl").read()
    with pytest.raises(RunError, match="every checkpoint .* is damaged"):
        _train(toy.toy_config(steps=9), w)
    assert _ckpt_steps(w) == [3, 6] and open(w / "metrics.jsonl").read() == before


def test_a_failure_that_is_not_damage_is_raised_not_skipped(tmp_path, monkeypatch):
    w = tmp_path / "w"
    _train(toy.toy_config(steps=6), w)

    def flaky(self, step, *args, **kw):
        raise OSError("[Errno 11] Resource temporarily unavailable")
    monkeypatch.setattr(ckpt_lib.Checkpointer, "_restore_step", flaky)
    with pytest.raises(OSError, match="temporarily unavailable"):
        _train(toy.toy_config(steps=9), w)
    assert _ckpt_steps(w) == [3, 6]


def test_resumed_run_logs_each_step_once(tmp_path):
    config = toy.toy_config(steps=6, log_every=1)
    w = tmp_path / "w"
    with pytest.raises(loop.Interrupted):
        _train(config, w, interrupt_at=5)  # logged steps 1-4, last checkpoint at 3
    _train(config, w)
    steps = [r["step"] for r in _rows(w) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


class _NaNAt:
    """Wraps a toy iterator: batch ``at`` (0-based) is all NaN."""

    def __init__(self, it, at):
        self.it, self.at, self.i = it, at, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        if self.i == self.at:
            batch = {"x": np.full_like(batch["x"], np.nan)}
        self.i += 1
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, s):
        self.it.set_state(s)


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    config = toy.toy_config(steps=6, log_every=1, nonfinite="skip")
    data = toy.toy_datasets(config)
    data.train = _NaNAt(data.train, at=2)
    state = _train(config, tmp_path / "w", datasets=data)
    assert int(state.step) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    rows = [r for r in _rows(tmp_path / "w") if r["split"] == "train"]
    assert [r["nonfinite"] for r in rows] == [0, 0, 1, 0, 0, 0]
    assert rows[-1]["skipped_steps"] == 1


def test_nonfinite_step_stops_with_the_last_finite_state_saved(tmp_path):
    config = toy.toy_config(steps=6, nonfinite="stop", ckpt_every=100)
    data = toy.toy_datasets(config)
    data.train = _NaNAt(data.train, at=2)
    with pytest.raises(loop.NonFiniteLoss, match="step 3 were not finite"):
        _train(config, tmp_path / "w", datasets=data)
    saved = _ckpt_steps(tmp_path / "w")
    assert len(saved) == 1
    run = loop.build(config, family=toy.make_family, datasets=toy.toy_datasets(config))
    step, state = loop.restore_latest(run, str(tmp_path / "w"))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxgen.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)


def test_issue_bug_command_resumes_instead_of_starting_over(tmp_path):
    w = str(tmp_path / "r1")
    first = _cli("train", "vae_mnist:smoke", "--workdir", w, "--no-progress",
                 "--set", "train.steps=4", "--set", "train.ckpt_every=2", "--set", "mesh.cpu_devices=1")
    assert first.returncode == 0, first.stderr
    second = _cli("train", "vae_mnist:smoke", "--workdir", w, "--no-progress",
                  "--set", "train.steps=6", "--set", "train.ema_decay=0.999")
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stderr and "from step 4" in second.stderr
    assert "corrupt" not in second.stderr and "damaged" not in second.stderr
    assert json.load(open(os.path.join(w, "config.json")))["train"]["ema_decay"] == 0.999
    bad = _cli("eval", "--workdir", w, "--set", "model.latent_dim=8")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "only takes evaluation and sampling settings" in bad.stderr
    changed = _cli("train", "vae_mnist:smoke", "--workdir", w, "--no-progress",
                   "--set", "train.steps=8", "--set", "model.latent_dim=8")
    assert changed.returncode == 2, changed.stderr
    last = changed.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxgen train: error:") and "model.latent_dim: 4 -> 8" in last
    assert json.load(open(os.path.join(w, "config.json")))["train"]["steps"] == 6


@pytest.mark.parametrize("saved_mesh, resumed_mesh", [
    (dict(data=1, fsdp=8), dict(data=2)), (dict(data=2), dict(data=1, fsdp=8))])
def test_resume_onto_another_mesh(tmp_path, saved_mesh, resumed_mesh):
    def config(steps, mesh):
        return toy.with_(toy.toy_config(steps=steps), **{"optim.schedule": "constant"},
                         **{f"mesh.{k}": v for k, v in mesh.items()})
    n_saved = 8 if saved_mesh.get("fsdp", 1) == 8 else 2
    n_resumed = 8 if resumed_mesh.get("fsdp", 1) == 8 else 2
    _train(config(3, saved_mesh), tmp_path / "w", devices=jax.devices()[:n_saved])
    resumed = _train(config(6, resumed_mesh), tmp_path / "w", devices=jax.devices()[:n_resumed])
    # The reference: the same checkpoint continued by a run that was on the new mesh throughout.
    _train(config(3, resumed_mesh), tmp_path / "ref", devices=jax.devices()[:n_resumed])
    ref = _train(config(6, resumed_mesh), tmp_path / "ref", devices=jax.devices()[:n_resumed])
    kernel = resumed.params["params"]["Dense_0"]["kernel"]
    assert len(kernel.sharding.device_set) == n_resumed
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_ctrl_c_saves_the_current_step(tmp_path):
    import signal

    config = toy.toy_config(steps=50, ckpt_every=100)
    data = toy.signalling_datasets(config, 4, signal.SIGINT)
    with pytest.raises(loop.Preempted) as info:
        _train(config, tmp_path / "w", datasets=data)
    assert info.value.signal_name == "SIGINT" and info.value.step == 4
    assert _ckpt_steps(tmp_path / "w") == [4]


def test_second_signal_during_the_preemption_save_corrupts_nothing(tmp_path, monkeypatch):
    """SIGTERM at step 4, then SIGTERM and SIGINT again while that step is being saved: the run
    still stops at step 4 with one intact checkpoint, and resuming it reaches the state of an
    uninterrupted run bit for bit."""
    import signal

    config = toy.toy_config(steps=12, ckpt_every=100)
    ref = _train(config, tmp_path / "ref")
    data = toy.signalling_datasets(config, 4, signal.SIGTERM)
    real_save, saves = ckpt_lib.Checkpointer.save, []

    def save_under_fire(self, step, *args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # while the save starts ...
        result = real_save(self, step, *args, **kw)
        os.kill(os.getpid(), signal.SIGINT)  # ... and while it is written asynchronously
        saves.append(step)
        return result
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_under_fire)
    with pytest.raises(loop.Preempted) as info:
        _train(config, tmp_path / "w", datasets=data)
    assert info.value.step == 4 and saves == [4] and _ckpt_steps(tmp_path / "w") == [4]
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", real_save)
    resumed = _train(config, tmp_path / "w")
    assert int(resumed.step) == 12
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 resumed.params, ref.params)


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """SIGKILL at 5 random moments (async checkpoints in flight), then resume to the end."""
    import random
    import time

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
    steps = 400

    def start(workdir, out):
        return subprocess.Popen([sys.executable, worker, str(workdir), str(steps), str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    ref = start(tmp_path / "ref", tmp_path / "ref.npz")
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-2000:]
    rnd = random.Random(1234)
    kills = 0
    for _ in range(5):
        p = start(tmp_path / "w", tmp_path / "w.npz")
        time.sleep(rnd.uniform(3.0, 7.0))
        if p.poll() is None:
            p.kill()
            kills += 1
        p.wait()
    assert kills >= 3  # most attempts really died mid-run
    last = start(tmp_path / "w", tmp_path / "w.npz")
    assert last.wait(timeout=600) == 0, last.stderr.read().decode()[-2000:]
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "w.npz")
    assert len(a.files) == len(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
    rows = [r["step"] for r in _rows(tmp_path / "w") if r["split"] == "train"]
    assert rows == sorted(set(rows)) and rows[-1] == steps


def test_bpe_run_samples_the_same_text_after_its_training_file_is_deleted(tmp_path):
    corpus = tmp_path / "corpus.txt"
    with open(os.path.join(REPO, "jaxgen", "train", "loop.py"), encoding="utf-8") as f:
        corpus.write_text(f.read() * 3)  # any local text: the package's own source
    w = str(tmp_path / "w")
    trained = _cli("train", "lm_shakespeare_char:smoke", "--workdir", w, "--no-progress",
                   "--set", "data.source=text_file", "--set", f"data.path={corpus}",
                   "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=300",
                   "--set", "train.steps=2", "--set", "mesh.cpu_devices=1")
    assert trained.returncode == 0, trained.stderr
    assert os.path.exists(os.path.join(w, "tokenizer.json"))
    before = _cli("sample", "--workdir", w, "--num", "2", "--out", str(tmp_path / "a.txt"))
    assert before.returncode == 0, before.stderr
    corpus.unlink()
    after = _cli("sample", "--workdir", w, "--num", "2", "--out", str(tmp_path / "b.txt"))
    assert after.returncode == 0, after.stderr
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()
    wrong = _cli("sample", "--workdir", w, "--num", "2", "--out", str(tmp_path / "c.png"))
    assert wrong.returncode == 2 and "name a .txt or .npz file" in wrong.stderr


def test_extending_a_run_follows_the_new_lengths_schedule_from_the_restored_step(tmp_path):
    """--set train.steps=N on resume: the LR schedule is the one of an N-step run, continued from
    the restored optimizer step (the documented behaviour)."""
    import shutil

    from jaxgen.train import mesh as mesh_lib
    _train(toy.toy_config(steps=3), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    extended = _train(toy.toy_config(steps=6), tmp_path / "a")
    config = toy.toy_config(steps=6)
    data = toy.toy_datasets(config)
    run = loop.build(config, family=toy.make_family, datasets=data)
    step, state = loop.restore_latest(run, str(tmp_path / "b"))
    assert step == 3
    data.train.seek(step)
    for _ in range(3):
        state, _ = run.train_step(state, mesh_lib.global_batch(next(data.train), run.batch_sharding))
    for a, b in zip(jax.tree.leaves(extended.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # ... and that schedule is not the 3-step one continued: those parameters differ.
    short = loop.build(toy.toy_config(steps=3), family=toy.make_family, datasets=toy.toy_datasets(config))
    _, s3 = loop.restore_latest(short, str(tmp_path / "b"))
    data.train.seek(3)
    for _ in range(3):
        s3, _ = short.train_step(s3, mesh_lib.global_batch(next(data.train), short.batch_sharding))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(s3.params), jax.tree.leaves(state.params))) > 1e-6


def test_a_restore_onto_a_sharding_or_shape_it_cannot_take_is_raised_not_a_fallback(tmp_path,
                                                                                   caplog):
    """Errors that are not damage (a sharding the mesh cannot split the saved array into, a
    shape the config builds differently) stop the restore: no checkpoint is taken for damaged
    and nothing falls back to an older step."""
    import logging

    from jax.sharding import NamedSharding, PartitionSpec as P

    w = tmp_path / "w"
    config = toy.toy_config(steps=6)
    _train(config, w)
    run = loop.build(config, family=toy.make_family, datasets=toy.toy_datasets(config))
    ckpt = ckpt_lib.Checkpointer(str(w), async_save=False)
    # the bias [12] of the output layer split 8 ways over "data": 12 is not divisible by 8
    bias = lambda s: s.params["params"]["Dense_1"]["bias"]  # noqa: E731
    leaf = bias(run.abstract_state)
    bad = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(run.mesh, P("data")))
    target = jax.tree.map(lambda x: bad if x is leaf else x, run.abstract_state)
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        with pytest.raises(ValueError, match="divisible|partitioned"):
            ckpt.restore(target)
        shape = jax.ShapeDtypeStruct((13,), leaf.dtype, sharding=leaf.sharding)
        with pytest.raises(ckpt_lib.StateMismatch, match="changed shape"):
            ckpt.restore(jax.tree.map(lambda x: shape if x is leaf else x, run.abstract_state))
    ckpt.close()
    assert "damaged" not in caplog.text
    assert _ckpt_steps(w) == [3, 6]
    assert loop.restore_latest(run, str(w))[0] == 6  # the right target still restores step 6


def test_a_missing_or_resized_file_is_damage_named_in_the_warning(tmp_path, caplog):
    import logging

    w = tmp_path / "w"
    config = toy.toy_config(steps=6)
    _train(config, w)
    record = json.load(open(w / "checkpoints" / "6" / ckpt_lib.FILES))
    victim = max(record, key=record.get)  # the largest file: array data
    os.remove(w / "checkpoints" / "6" / victim)
    run = loop.build(config, family=toy.make_family, datasets=toy.toy_datasets(config))
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        assert loop.restore_latest(run, str(w))[0] == 3
    assert f"its file {victim} is missing" in caplog.text
