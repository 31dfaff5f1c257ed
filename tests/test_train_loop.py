"""The shared trainer, on a toy family: resume exactness, corrupt checkpoints, sharding."""
import json
import logging
import os

import jax
import numpy as np
import pytest

import toy
from jaxgen import models
from jaxgen.train import loop, mesh as mesh_lib


@pytest.fixture(autouse=True)
def _register_toy(monkeypatch):
    monkeypatch.setitem(models.FAMILIES, "toy", "toy")


def _train(config, workdir, **kw):
    return loop.train(config, str(workdir), family=toy.make_family, datasets=toy.toy_datasets(config), progress=False, **kw)


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(
        lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    config = toy.toy_config(steps=6)
    whole = _train(config, tmp_path / "a")
    with pytest.raises(loop.Interrupted):
        _train(config, tmp_path / "b", interrupt_at=4)  # last checkpoint: step 3
    resumed = _train(config, tmp_path / "b")
    assert int(resumed.step) == 6
    assert _max_diff(whole.params, resumed.params) == 0.0
    assert _max_diff(whole.opt_state, resumed.opt_state) == 0.0
    # Metrics were logged, and the workdir records its config.
    records = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4, 6]
    assert {"loss", "grad_norm", "steps_per_s", "examples_per_s"} <= set(records[0])
    assert json.load(open(tmp_path / "a" / "config.json"))["experiment"] == "toy:default"
    assert os.path.exists(tmp_path / "a" / "samples" / "step_0000006.npy")
    assert os.listdir(tmp_path / "a" / "tensorboard")


def test_corrupt_latest_checkpoint_falls_back_with_warning(tmp_path, caplog):
    config = toy.toy_config(steps=6)
    _train(config, tmp_path / "w")
    ckpt_dir = tmp_path / "w" / "checkpoints"
    assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [3, 6]
    # Half-write the latest checkpoint: truncate every file of step 6's state to half its size.
    damaged = 0
    for root, _, files in os.walk(ckpt_dir / "6" / "state"):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "r+b") as fh:
                fh.truncate(os.path.getsize(path) // 2)
            damaged += 1
    assert damaged
    run = loop.build(config, family=toy.make_family, datasets=toy.toy_datasets(config))
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        step, state = loop.restore_latest(run, str(tmp_path / "w"))
    assert step == 3
    assert "step 6" in caplog.text and "damaged" in caplog.text
    assert int(state.step) == 3


def test_workdir_of_another_experiment_is_refused(tmp_path):
    config = toy.toy_config(steps=2)
    _train(config, tmp_path / "w")
    other = toy.with_(toy.toy_config(steps=2), experiment="toy:other")
    with pytest.raises(ValueError, match="belongs to experiment 'toy:default'"):
        _train(other, tmp_path / "w")


@pytest.mark.parametrize("mesh_cfg", [dict(data=8), dict(data=1, fsdp=8), dict(data=2, fsdp=4)])
def test_sharded_training_equals_single_device(tmp_path, mesh_cfg):
    one = toy.with_(toy.toy_config(steps=3), **{"mesh.data": 1})
    ref = _train(one, tmp_path / "one", devices=jax.devices()[:1])
    many = toy.with_(toy.toy_config(steps=3), **{f"mesh.{k}": v for k, v in mesh_cfg.items()})
    out = _train(many, tmp_path / "many")
    assert _max_diff(ref.params, out.params) < 1e-5
    kernel = out.params["params"]["Dense_0"]["kernel"]
    if mesh_cfg.get("fsdp", 1) > 1:  # parameters really are sharded, not replicated
        assert kernel.sharding.spec != mesh_lib.P()
        assert kernel.addressable_shards[0].data.size < kernel.size


def test_gradient_accumulation_equals_big_batch(tmp_path):
    # micro-batches draw their own noise: compare the deterministic model
    big = toy.with_(toy.toy_config(steps=2), **{"model.noise": 0.0})
    acc = toy.with_(big, **{"optim.grad_accum": 4})
    a = _train(big, tmp_path / "a")
    b = _train(acc, tmp_path / "b")
    assert _max_diff(a.params, b.params) < 1e-5


def test_batch_not_divisible_by_devices_is_an_error(tmp_path):
    config = toy.with_(toy.toy_config(steps=1), **{"data.batch_size": 12})
    with pytest.raises(ValueError, match="not divisible by the 8 data-parallel devices"):
        _train(config, tmp_path / "w")


def test_sigterm_saves_and_exits(tmp_path):
    import signal

    config = toy.toy_config(steps=50, ckpt_every=100)
    datasets = toy.signalling_datasets(config, 5, signal.SIGTERM)  # SIGTERM while step 5 runs
    with pytest.raises(loop.Preempted) as info:
        loop.train(config, str(tmp_path / "w"), family=toy.make_family, datasets=datasets, progress=False)
    state = info.value.state
    assert int(state.step) == 5 and info.value.step == 5 and info.value.signal_name == "SIGTERM"
    assert sorted(int(d) for d in os.listdir(tmp_path / "w" / "checkpoints") if d.isdigit()) == [5]


def test_relative_paths_become_absolute_and_urls_and_references_do_not():
    """A workdir's config.json must find its files from anywhere, so relative data and
    latent paths are made absolute; gs:// URLs and recipe: references are not paths."""
    from jaxgen import experiments

    c = experiments.apply_overrides(experiments.get_config("ldm_mnist:smoke"), [
        "data.data_dir=rel/tfds", "data.path=gs://bucket/train.npz",
        "latent.autoencoder=recipe:autoencoder_mnist:smoke"])
    out = loop.absolute_data_paths(c)
    assert out.data.data_dir == os.path.abspath("rel/tfds")
    assert out.data.path == "gs://bucket/train.npz"
    assert out.latent.autoencoder == "recipe:autoencoder_mnist:smoke"
    rel = experiments.apply_overrides(c, ["latent.autoencoder=workdirs/ae"])
    assert loop.absolute_data_paths(rel).latent.autoencoder == os.path.abspath("workdirs/ae")
