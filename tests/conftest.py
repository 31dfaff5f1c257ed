"""Test set-up: 8 simulated CPU devices (set before JAX initialises its backends), and one
persistent XLA compilation cache for the session's processes.

The cache: many tests compile the same programs (the smoke recipes are trained by several
tests, in-process and through the CLI in subprocesses, which inherit these variables). JAX keys
each entry by the program, its devices and the compiler's flags, so a hit is the program a
fresh compile would build; only the compile time changes. With a size limit JAX guards the
cache with a file lock, so the two pytest-xdist workers and their subprocesses never read an
entry another is still writing. ``JAXGEN_TEST_NO_CACHE=1`` turns it off.
"""
import getpass
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests compile hundreds of tiny programs and run each a few times: their time is XLA:CPU's
# compile time, most of it LLVM's optimisation of the generated code. These flags turn that
# off (the HLO passes, fusion and sharding, are the same); a test's program then runs slower
# but compiles faster: test_remat_keeps_the_gradients[unet], cold, took 55 s instead of 81 s (2 cores,
# each run beside another compile).
# No test asserts a timing. JAXGEN_TEST_FULL_OPT=1 keeps XLA's default optimisation.
TEST_FLAGS = {"xla_force_host_platform_device_count": "8"}
if not os.environ.get("JAXGEN_TEST_FULL_OPT"):
    TEST_FLAGS.update(xla_backend_optimization_level="0", xla_llvm_disable_expensive_passes="true")
flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [flags] + [f"--{k}={v}" for k, v in TEST_FLAGS.items() if k not in flags]).strip()

if not os.environ.get("JAXGEN_TEST_NO_CACHE"):
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
        tempfile.gettempdir(), f"jaxgen-tests-xla-cache-{getpass.getuser()}"))
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))  # 8 GiB: enables the lock
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from jaxgen.train.host import reserve_pool_threads  # noqa: E402  (imports no JAX backend)

reserve_pool_threads(8)  # head-room for 8 devices blocking in in-process collectives

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
