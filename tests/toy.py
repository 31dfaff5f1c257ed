"""A toy family (a tiny linear autoencoder) and toy data, to test the trainer on its own."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import base_config
from jaxgen.models.base import Family
from jaxgen.train.optim import OptimConfig, make_optimizer
from jaxgen.train.state import create_state
from jaxgen.train.step import EMAConfig, make_train_step

DIM = 12


class ToyIterator:
    """Deterministic, checkpointable iterator over shuffled rows of a fixed array."""

    def __init__(self, data: np.ndarray, batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        self.data, self.batch, self.seed, self.pos = data, batch, seed, 0
        per = batch // process_count  # each process: its contiguous slice of the global batch
        self.shard = slice(process_index * per, (process_index + 1) * per)

    def __iter__(self):
        return self

    def __next__(self):
        n = len(self.data)
        idx = []
        for i in range(self.pos, self.pos + self.batch):
            epoch, j = divmod(i, n)
            idx.append(np.random.default_rng((self.seed, epoch)).permutation(n)[j])
        self.pos += self.batch
        return {"x": self.data[np.array(idx)][self.shard]}

    def seek(self, step):
        """The data position is the step: the next batch is global batch ``step``."""
        self.pos = int(step) * self.batch

    def get_state(self):
        return {"pos": self.pos}

    def set_state(self, state):
        self.pos = int(state["pos"])


@dataclasses.dataclass
class ToyDatasets:
    train: ToyIterator
    eval_data: np.ndarray
    eval_batch: int
    info: dict

    def make_eval(self):
        for i in range(0, len(self.eval_data), self.eval_batch):
            x = self.eval_data[i:i + self.eval_batch]
            mask = np.ones(self.eval_batch, np.float32)
            if len(x) < self.eval_batch:
                mask[len(x):] = 0
                x = np.concatenate([x, np.zeros((self.eval_batch - len(x), DIM), np.float32)])
            yield {"x": x, "mask": mask}


def toy_datasets(config, process_index: int = 0, process_count: int = 1) -> ToyDatasets:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(100, DIM)).astype(np.float32)
    it = ToyIterator(data, config.data.batch_size, config.data.seed, process_index, process_count)
    per = config.data.eval_batch_size // process_count
    eval_data = data[:16].reshape(-1, process_count, per, DIM)[:, process_index].reshape(-1, DIM) \
        if process_count > 1 else data[:16]
    return ToyDatasets(it, eval_data, config.data.eval_batch_size // process_count, {"kind": "toy"})


def signalling_datasets(config, batches: int, sig) -> ToyDatasets:
    """Toy datasets whose train iterator sends ``sig`` to this process as it hands out batch
    number ``batches`` (a preemption or Ctrl-C at a known step)."""
    import os

    data = toy_datasets(config)
    original = data.train.__next__

    def next_and_signal():
        batch = original()
        if data.train.pos == batches * config.data.batch_size:
            os.kill(os.getpid(), sig)
        return batch
    data.train.__class__ = type("Signalling", (ToyIterator,),
                                {"__next__": lambda self: next_and_signal()})
    return data


class AE(nn.Module):
    noise: float = 0.01

    @nn.compact
    def __call__(self, x, rng):
        h = nn.Dense(128)(x)  # 12x128 kernel: big enough to be sharded by FSDP
        h = h + self.noise * jax.random.normal(rng, h.shape)
        return nn.Dense(DIM)(nn.tanh(h))


def make_family(config, data_info) -> Family:
    model = AE(noise=config.model.get("noise", 0.01))
    tx = make_optimizer(dataclasses.replace(OptimConfig.from_config(config.optim),
                                            total_steps=int(config.train.steps)))

    def loss_fn(params, batch, rng, step):
        err = model.apply(params, batch["x"], rng) - batch["x"]
        loss = jnp.mean(jnp.sum(err ** 2, -1))
        return loss, {"mse": loss}

    ema = EMAConfig.from_config(config.train)

    def init_state(rng, batch):
        params = model.init(rng, batch["x"], rng)
        return create_state(params, tx, rng, ema=ema is not None)

    def eval_step(state, batch):
        err = model.apply(state.params, batch["x"], jax.random.PRNGKey(0)) - batch["x"]
        return {"mse": jnp.sum(jnp.sum(err ** 2, -1) * batch["mask"]), "count": batch["mask"].sum()}

    def sample(state, rng, n, options=None):
        return jax.random.normal(rng, (n, DIM))

    def save_samples(samples, path):
        np.save(path, samples)
        return [path]

    return Family("toy", init_state, make_train_step(loss_fn, tx, grad_accum=config.optim.grad_accum, ema=ema),
                  eval_step, sample, save_samples, sample_suffix=".npy")


def toy_config(steps=6, **train):
    c = base_config()
    c.experiment = "toy:default"
    c.family = "toy"
    c.data.batch_size = 16
    c.data.eval_batch_size = 8
    c.train.steps = steps
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.ckpt_every = 3
    c.train.num_samples = 4
    c.train.async_ckpt = False
    for k, v in train.items():
        c.train[k] = v
    return c
