"""Every Python snippet of the README runs (each in a fresh interpreter, in order)."""
import os
import re
import subprocess
import sys

import pytest
from envs import host_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snippets() -> list[str]:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)


def test_readme_has_python_snippets():
    assert len(_snippets()) >= 4


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(index, tmp_path):
    env = host_env("JAX_NUM_CPU_DEVICES", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _snippets()[index]], capture_output=True, text=True,
                       cwd=str(tmp_path), env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    if "sample_metrics" in _snippets()[index]:
        _check_evaluation_snippet(r.stdout)


def _check_evaluation_snippet(stdout: str) -> None:
    """The evaluation snippet scores real digits: fd_lenet within 3x of the floor at the same
    count (first 500 training digits, 400 zeros and 100 ones, printed 1200)."""
    m = re.search(r"fd_lenet ([\d.]+) for (\d+) samples, floor ([\d.]+) for (\d+) real digits",
                  stdout)
    assert m, f"the evaluation snippet must print fd_lenet and its floor; it printed {stdout!r}"
    fd, n, floor, n_floor = float(m[1]), int(m[2]), float(m[3]), int(m[4])
    assert n == n_floor, stdout
    assert 0 < floor and fd < 3 * floor, stdout


def test_readme_has_the_evaluation_snippet():
    assert sum("sample_metrics" in s for s in _snippets()) == 1
