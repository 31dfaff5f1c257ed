"""Test set-up: 8 simulated CPU devices (set before JAX initialises its backends)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

from jaxgen.train.host import reserve_pool_threads  # noqa: E402  (imports no JAX backend)

reserve_pool_threads(8)  # head-room for 8 devices blocking in in-process collectives

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
