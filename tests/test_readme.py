"""Every Python snippet of the README runs (each in a fresh interpreter, in order)."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snippets() -> list[str]:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_python_snippets():
    assert len(_snippets()) >= 4


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(index, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-c", _snippets()[index]], capture_output=True, text=True,
                       cwd=str(tmp_path), env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
