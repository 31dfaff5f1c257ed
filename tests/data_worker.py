"""One process of a 2-process CPU job (jax.distributed over 127.0.0.1) that only reads data.

Usage: python data_worker.py PORT PROCESS_ID KIND PATH OUT_PREFIX
Builds the train pipeline of a prepared ``arrayrecord`` or ``token_file`` directory the way the
trainer does (process index and count from jax.distributed) and saves its first 3 batches and
the process's read position to OUT_PREFIX.PROCESS_ID.npz.
"""
import os
import sys


def main():
    """(A function under ``__main__``: Grain's worker processes re-import this module.)"""
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    port, pid, kind, path, out = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid)

    import numpy as np

    from jaxgen import settings
    from jaxgen.config import Experiment, ImageData, TextData
    from jaxgen.data import make_datasets

    assert jax.process_count() == 2
    if kind == "arrayrecord":
        data = settings.from_dict(ImageData, {"source": kind, "path": path, "batch_size": 32,
                                              "eval_batch_size": 48, "workers": 1}, what="data")
    else:
        data = settings.from_dict(TextData, {"source": kind, "path": path, "batch_size": 8,
                                             "eval_batch_size": 8, "seq_len": 32,
                                             "eval_batches": 2}, what="data")
    ds = make_datasets(Experiment(data=data))
    key = "image" if kind == "arrayrecord" else "tokens"
    batches = [next(ds.train)[key] for _ in range(3)]
    ds.train.close()
    np.savez(f"{out}.{pid}.npz", *batches)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
