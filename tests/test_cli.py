"""The CLI's contract for bad input: one line on stderr, exit status 2, no traceback."""
import os
import subprocess
import sys

import pytest

import toy
from jaxgen import cli, models

RECIPE = '''
import sys, os
sys.path.insert(0, {tests!r})
import toy
VARIANTS = ("default",)
def get_config(variant="default"):
    return toy.with_(toy.toy_config(steps=4), experiment="")
'''


@pytest.fixture
def toy_recipes(tmp_path, monkeypatch):
    d = tmp_path / "exps"
    d.mkdir()
    src = RECIPE.format(tests=os.path.dirname(os.path.abspath(__file__)))
    (d / "toyexp.py").write_text(src)
    (d / "otherexp.py").write_text(src)
    monkeypatch.setenv("JAXGEN_EXPERIMENTS", str(d))
    monkeypatch.setitem(models.FAMILIES, "toy", "toy")
    import jaxgen.data
    monkeypatch.setattr(jaxgen.data, "make_datasets", lambda config, **kw: toy.toy_datasets(config),
                        raising=False)
    return tmp_path


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.mark.parametrize("args, message", [
    (["train", "nosuchexp"], "unknown experiment 'nosuchexp'"),
    (["train", "toyexp:huge"], "has no variant 'huge'"),
    (["train", "toyexp", "--set", "train.stpes=3"], "unknown config key (did you mean 'train.steps'?)"),
    (["train", "toyexp", "--set", "train.steps=three"], "expected a value of type int"),
    (["eval", "--workdir", "/nonexistent/dir"], "is not a jaxgen workdir"),
])
def test_bad_input_is_one_line_and_exit_2(toy_recipes, capsys, args, message):
    if args[0] == "train":
        args = args + ["--workdir", str(toy_recipes / "w")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_train_eval_sample_and_foreign_workdir(toy_recipes, capsys):
    w = str(toy_recipes / "w")
    assert cli.main(["train", "toyexp", "--workdir", w, "--no-progress"]) == 0
    assert cli.main(["eval", "--workdir", w]) == 0
    out = capsys.readouterr().out
    assert '"mse"' in out and os.path.exists(os.path.join(w, "eval.json"))
    assert cli.main(["sample", "--workdir", w, "--num", "3", "--out", str(toy_recipes / "s.npy")]) == 0
    assert os.path.exists(toy_recipes / "s.npy")
    # Resuming a finished run with more steps continues from its checkpoint.
    assert cli.main(["train", "toyexp", "--workdir", w, "--no-progress", "--set", "train.steps=6"]) == 0
    assert "to step 6" in capsys.readouterr().out
    assert cli.main(["train", "otherexp", "--workdir", w]) == 2
    assert "belongs to experiment 'toyexp:default'" in _err(capsys)


def test_help_runs_as_a_program():
    for args in ([], ["train"], ["eval"], ["sample"]):
        r = subprocess.run([sys.executable, "-m", "jaxgen.cli", *args, "--help"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "usage: jaxgen" in r.stdout


def test_unreachable_coordinator_is_a_one_line_error_not_a_hang(tmp_path):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "jaxgen.cli", "train", "vae_mnist:smoke",
                        "--workdir", str(tmp_path / "w"), "--coordinator", f"127.0.0.1:{port}",
                        "--num-processes", "2", "--process-id", "1", "--distributed-timeout", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("jaxgen train: error: the coordinator")
    assert "Traceback" not in p.stderr and not os.path.exists(tmp_path / "w")
