"""A toy family (a tiny linear autoencoder) and toy data, to test the trainer on its own."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import settings
from jaxgen.config import DataConfig, Experiment, TrainConfig, field
from jaxgen.models.base import LossFamily
from jaxgen.train.state import create_state

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
    number ``batches + 1`` (a preemption or Ctrl-C at step ``batches``: the trainer reads each
    batch while the step before it runs)."""
    import os

    data = toy_datasets(config)
    original = data.train.__next__

    def next_and_signal():
        batch = original()
        if data.train.pos == (batches + 1) * config.data.batch_size:
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


@dataclasses.dataclass(frozen=True)
class ToyModel:
    """Attributes:
      noise: the hidden layer's noise.
    """

    noise: float = 0.01


@dataclasses.dataclass(frozen=True)
class ToyExperiment(Experiment):
    family: str = "toy:ToyFamily"
    model: ToyModel = field(ToyModel)


class ToyFamily(LossFamily):
    """A tiny noisy autoencoder (no logical axes: the trainer's FSDP size rule shards it)."""

    name = "toy"
    settings = ToyExperiment
    sample_suffix = ".npy"

    @property
    def model(self):
        return AE(noise=self.config.model.noise)

    def init_params(self, rng):
        raise NotImplementedError  # no logical axes: state_specs' size rule applies

    def init_state(self, rng, batch):
        params = self.model.init(rng, batch["x"], rng)
        return create_state(params, self.tx, rng, ema=self.ema is not None)

    def loss_fn(self, params, batch, rng, step):
        err = self.model.apply(params, batch["x"], rng) - batch["x"]
        loss = jnp.mean(jnp.sum(err ** 2, -1))
        return loss, {"mse": loss}

    def eval_step(self, state, batch):
        err = self.model.apply(state.params, batch["x"], jax.random.PRNGKey(0)) - batch["x"]
        return {"mse": jnp.sum(jnp.sum(err ** 2, -1) * batch["mask"]), "count": batch["mask"].sum()}

    def sample(self, state, rng, n, options=None):
        return jax.random.normal(rng, (n, DIM))

    def save_samples(self, samples, path):
        np.save(path, samples)
        return [path]


make_family = ToyFamily


def toy_config(steps=6, **train) -> ToyExperiment:
    c = ToyExperiment(experiment="toy:default", data=DataConfig(batch_size=16, eval_batch_size=8),
                      train=TrainConfig(steps=steps, log_every=2, eval_every=0, ckpt_every=3,
                                        num_samples=4, async_ckpt=False))
    return with_(c, **{f"train.{k}": v for k, v in train.items()})


def with_(config, **changes):
    """``config`` with {"dotted.key": value} changes (the frozen settings' update)."""
    return settings.update(config, changes)
