"""Discoverable CLI and Python API: list, config round trip, import hygiene, jaxgen.load."""
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxgen
from jaxgen import cli, experiments
from jaxgen.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_list_names_every_recipe(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    recipes = [f[:-3] for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith(".py")
               and not f.startswith("_")]
    assert recipes
    for name in recipes:
        for variant in experiments.load_recipe(name).VARIANTS:
            line = next(line for line in out.splitlines() if line.startswith(f"{name}:{variant} "))
            assert len(line.split(None, 1)[1]) > 10  # a description, not just the name


@pytest.mark.parametrize("spec", ["vae_mnist:smoke", "lm_shakespeare_char:cpu",
                                  "diffusion_mnist", "gan_mnist:smoke"])
def test_config_output_round_trips_through_set(spec, capsys):
    assert cli.main(["config", spec, "--short"]) == 0
    lines = capsys.readouterr().out.splitlines()
    overrides = []
    for line in lines:
        key, kind, text = line.split(None, 2) if len(line.split(None, 2)) == 3 else (*line.split(None, 1), "")
        overrides.append(f"{key}={text}")
    original = experiments.get_config(spec)
    again = experiments.apply_overrides(experiments.get_config(spec), overrides)
    assert experiments.flat_items(again) == experiments.flat_items(original)
    assert len(overrides) == len(experiments.flat_items(original))


def test_config_of_unknown_experiment_is_one_line_exit_2(capsys):
    assert cli.main(["config", "nope_mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown experiment 'nope_mnist'" in err[0]


def test_python_names_without_traps():
    code = ("import sys, jaxgen.nn, jaxgen.nn.attention, jaxgen.nn.unet\n"
            "from jaxgen.nn.attention import attention\n"
            "assert callable(attention)\n"
            "bad = [m for m in ('grain', 'orbax', 'orbax.checkpoint', 'tensorflow_datasets') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "import jaxgen.train.mesh\n"
            "assert jaxgen.train.mesh.make_mesh\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("jaxgen ")


def test_load_of_a_directory_that_is_not_a_workdir(tmp_path):
    with pytest.raises(UsageError, match="is not a jaxgen workdir"):
        jaxgen.load(str(tmp_path))


def test_load_samples_equal_cli_samples(tmp_path):
    w = str(tmp_path / "w")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    run = lambda *a: subprocess.run([sys.executable, "-m", "jaxgen.cli", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    r = run("train", "vae_mnist:smoke", "--workdir", w, "--no-progress", "--set", "train.steps=4",
            "--set", "mesh.cpu_devices=1")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("sample", "--workdir", w, "--num", "8", "--seed", "3", "--out", str(tmp_path / "s.png"))
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = jaxgen.load(w)
    assert loaded.step == 4
    images = loaded.sample(8, seed=3)
    loaded.save_samples(images, str(tmp_path / "t.png"))
    from PIL import Image
    a = np.asarray(Image.open(tmp_path / "s.png"))
    b = np.asarray(Image.open(tmp_path / "t.png"))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_class_balanced_batch_cycles_through_sorted_classes():
    from jaxgen.api import class_balanced_batch
    labels = np.repeat(np.arange(10), 20)  # sorted by class, like the embedded MNIST test split
    images = labels[:, None, None, None].astype(np.float32) * np.ones((1, 2, 2, 1), np.float32)
    batches = [{"image": images[i:i + 50], "label": labels[i:i + 50],
                "mask": np.ones(50, np.float32)} for i in range(0, 200, 50)]
    batch = class_balanced_batch(iter(batches), n=25)
    assert batch["label"].tolist() == list(range(10)) * 2 + list(range(5))
    assert "mask" not in batch and batch["image"].shape == (25, 2, 2, 1)
