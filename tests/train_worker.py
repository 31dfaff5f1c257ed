"""Trains the toy family into WORKDIR for STEPS steps (resuming), then saves its params.

Usage: python train_worker.py WORKDIR STEPS OUT.npz   (used by the SIGKILL test)
"""
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toy  # noqa: E402
from jaxgen.train import loop  # noqa: E402

workdir, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = toy.toy_config(steps=steps, ckpt_every=7, log_every=5, async_ckpt=True)
state = loop.train(config, workdir, family=toy.make_family, datasets=toy.toy_datasets(config),
                   progress=False)
leaves = jax.tree.leaves((state.params, state.opt_state))
np.savez(out, *[np.asarray(x) for x in leaves])
