"""Test set-up: 8 simulated CPU devices (set before JAX initialises its backends)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

# Head-room in XLA:CPU's thread pools for 8 devices that block in in-process collectives
# (see jaxgen.train.host).
os.environ.setdefault("NPROC", "32")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
