"""One process of a 2-process CPU run (jax.distributed over 127.0.0.1, gloo collectives).

Usage: python multihost_worker.py PORT PROCESS_ID WORKDIR OUT.npy [STEPS [MARKER]]
With MARKER, the process creates that file once it has trained 20 steps (the SIGTERM test
waits for it) and exits with the trainer's requeue status when preempted.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid, workdir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toy  # noqa: E402
from jaxgen.train import loop  # noqa: E402

config = toy.with_(toy.toy_config(steps=int(sys.argv[5]) if len(sys.argv) > 5 else 4),
                   **{"mesh.data": 2, "mesh.fsdp": 2,
                      "optim.schedule": "constant"})  # runs of different lengths share one schedule
assert jax.device_count() == 4 and jax.process_count() == 2
datasets = toy.toy_datasets(config, pid, 2)
if len(sys.argv) > 6:
    marker, it, next_batch = sys.argv[6], datasets.train, datasets.train.__next__

    def counting_next():
        if it.pos == 20 * config.data.batch_size:
            open(f"{marker}.{pid}", "w").close()
        return next_batch()
    datasets.train.__class__ = type("Marked", (toy.ToyIterator,), {"__next__": lambda self: counting_next()})
    try:
        loop.train(config, workdir, family=toy.make_family, datasets=datasets, progress=False)
    except loop.Preempted as e:
        print(f"preempted at step {e.step}", flush=True)
        jax.distributed.shutdown()
        sys.exit(loop.PREEMPTED_EXIT_STATUS)
    sys.exit(0)
state = loop.train(config, workdir, family=toy.make_family, datasets=datasets, progress=False)
kernel = state.params["params"]["Dense_0"]["kernel"]
gathered = jax.jit(lambda x: x, out_shardings=jax.sharding.NamedSharding(
    kernel.sharding.mesh, jax.sharding.PartitionSpec()))(kernel)
if pid == 0:
    np.save(out, np.asarray(gathered))
jax.distributed.shutdown()
