"""Environments for the subprocesses tests start (the CLI, the benchmarks, README snippets)."""
from __future__ import annotations

import os
import re


def host_env(*drop: str, **extra: str) -> dict[str, str]:
    """This process's environment without the variables in ``drop`` and without the simulated
    device count in ``XLA_FLAGS`` (the subprocess splits its host as a user's would), keeping
    the test session's other XLA flags (conftest.py: compile faster); ``extra`` is set on top."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   env.pop("XLA_FLAGS", "")).split()
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    env.update(extra)
    return env


def shared_data(name: str) -> str:
    """Path of a file of the workplace's shared data (``../shared/data`` beside the checkout,
    else /work/shared/data, for a checkout copied elsewhere)."""
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                          "data", name)
    return beside if os.path.exists(beside) else os.path.join("/work/shared/data", name)
