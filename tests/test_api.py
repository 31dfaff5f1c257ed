"""Discoverable CLI and Python API: list, config round trip, import hygiene, jaxgen.load."""
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxgen
from jaxgen import cli, experiments
from jaxgen.errors import UsageError
from envs import host_env

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
    env = host_env(JAX_PLATFORMS="cpu")
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


def _cli(*args, cwd):
    env = host_env(JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "jaxgen.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def test_lm_workdir_is_self_contained_logs_lr_and_params_and_decodes_from_python(tmp_path):
    """Issue 23 items 5, 6, 12 and 14: a workdir trained with a relative data path loads from
    anywhere after it is moved and its text is deleted; the run logs its parameter count and
    learning rate; Run samples with sampler options and decodes; re-running says it did
    nothing."""
    import json
    import re
    import shutil

    from jaxgen.train.optim import learning_rates

    data = tmp_path / "data"
    data.mkdir()
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        (data / "corpus.txt").write_text(f.read())
    cmd = ("train", "lm_shakespeare_char:smoke", "--workdir", "w", "--no-progress",
           "--set", "data.source=text_file", "--set", "data.path=corpus.txt",
           "--set", "mesh.cpu_devices=1")
    r = _cli(*cmd, cwd=data)  # relative workdir and data path
    assert r.returncode == 0, r.stderr[-2000:]
    logged = int(re.search(r"([\d,]+) parameters \(", r.stderr).group(1).replace(",", ""))
    metrics = (data / "w" / "metrics.jsonl").read_text()
    config = experiments.get_config("lm_shakespeare_char:smoke")
    rows = [json.loads(line) for line in metrics.splitlines()]
    train_rows = [row for row in rows if row["split"] == "train"]
    assert [row["step"] for row in train_rows] == [2, 4]
    for row in train_rows:  # the warm-up then cosine rate of the update that made the step
        want = learning_rates(config.optim, config.train.steps, row["step"] - 1)["lr"]
        assert row["lr"] == pytest.approx(want, rel=1e-6) and row["lr"] > 0

    again = _cli(*cmd, cwd=data)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already trained to step 4" in again.stdout and "nothing was done" in again.stdout
    assert (data / "w" / "metrics.jsonl").read_text() == metrics

    moved = str(tmp_path / "elsewhere" / "w")
    shutil.move(str(data / "w"), moved)
    (data / "corpus.txt").unlink()
    run = jaxgen.load(moved)  # from the tests' directory, without the training text
    assert run.num_params == logged and not run.has_data
    with pytest.raises(UsageError, match="needs its data \\(data.path=.* was not found\\)"):
        run.evaluate()
    tokens = run.sample(2, seed=1, max_new_tokens=5, temperature=0.5)
    prompt = run.encode(run.config.sample.prompt)
    assert tokens.shape == (2, len(prompt) + 5)
    np.testing.assert_array_equal(tokens[:, :len(prompt)], np.broadcast_to(prompt, (2, len(prompt))))
    texts = run.decode(tokens)
    assert [run.encode(t).tolist() for t in texts] == tokens.tolist()  # characters: a bijection
    with pytest.raises(UsageError, match="unknown sample option"):
        run.sample(1, max_new_tokenz=5)

    wrong = _cli("sample", "--workdir", moved, "--scale", "2", "--out", "x.txt", cwd=tmp_path)
    assert wrong.returncode == 2 and "--scale enlarges PNG grids" in wrong.stderr


def test_config_prints_the_parameter_count_of_the_built_model(capsys):
    import jax

    from jaxgen.train import loop
    from jaxgen.train.state import format_count, param_count

    assert cli.main(["config", "gan_mnist:smoke"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    config = experiments.get_config("gan_mnist:smoke")
    run = loop.build(config, jax.devices()[:1], family=jaxgen.make_family)
    state = loop.init_state(run, next(iter(run.datasets.make_eval())))  # real arrays
    n = param_count(state.params)
    assert n > 0 and line == f"# parameters: {n:,} ({format_count(n)})"


def test_image_grid_scale_is_nearest_neighbour_and_checked():
    from jaxgen.train.images import image_grid

    images = np.random.default_rng(0).random((5, 3, 4, 1)).astype(np.float32)
    one = image_grid(images, ncols=3)
    three = image_grid(images, ncols=3, scale=3)
    assert three.shape == (one.shape[0] * 3, one.shape[1] * 3, 1)
    np.testing.assert_array_equal(three[::3, ::3], one)
    np.testing.assert_array_equal(three[2::3, 1::3], one)
    with pytest.raises(ValueError, match="positive integer"):
        image_grid(images, scale=0)


def test_gan_logs_each_networks_scheduled_rate():
    from jaxgen.models.gan.family import GANFamily

    config = experiments.apply_overrides(experiments.get_config("gan_mnist:smoke"), [
        "optim.lr=1e-3", "optim.disc_lr=4e-3", "optim.schedule=cosine", "optim.warmup_steps=0",
        "optim.end_lr_factor=0.1", "train.steps=10", "gan.n_disc=2", "data.batch_size=8"])
    fam = GANFamily(config, {"kind": "image", "shape": (28, 28, 1), "num_classes": 10})
    start, end = fam.learning_rates(0), fam.learning_rates(10)
    assert start == pytest.approx({"lr_gen": 1e-3, "lr_disc": 4e-3})
    assert end == pytest.approx({"lr_gen": 1e-4, "lr_disc": 4e-4})
    # halfway through the generator's 10 updates the discriminator is halfway through its 20
    half = fam.learning_rates(5)
    assert half["lr_gen"] / 1e-3 == pytest.approx(half["lr_disc"] / 4e-3)
    assert half["lr_gen"] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))

