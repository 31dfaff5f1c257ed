"""Pretrained weights in and out: Hugging Face causal LMs as jaxgen workdirs and Linen modules.

    import jaxgen.hub
    model, params, tokenizer = jaxgen.hub.load_hf("path/to/gpt2")   # a local HF folder
    logits = model.apply({"params": params}, tokens)                  # [B, T, V] float32

    jaxgen import hf path/to/llama --workdir workdirs/llama      # then sample / eval / train
    jaxgen export hf --workdir workdirs/llama --out exported/    # transformers loads it

A folder holds ``config.json``, ``model.safetensors`` (or a sharded
``model.safetensors.index.json``) and, for a workdir, ``tokenizer.json``. GPT-2 and Llama
(:mod:`jaxgen.hub.hf_lm`) become settings of jaxgen's one Transformer. Weights are read without
torch, one tensor at a time, and each is placed straight into its sharding on the mesh
(``jax.make_array_from_callback``): no host ever holds more than the tensor being placed, and
a model sharded with ``mesh.fsdp`` never exists whole on one device. Scanned models
(``model.scan_layers``) get each layer placed on its own, then stacked on the devices.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import DataError, UsageError
from jaxgen.hub import hf_lm
from jaxgen.hub.safetensors_io import SafetensorsFiles, read_json, save_file

log = logging.getLogger("jaxgen.hub")
HF_CONFIG_FILE = "hf_config.json"  # the imported checkpoint's own config.json, kept for export
TOKENIZER_FILE = "tokenizer.json"


class HFModel(NamedTuple):
    """What :func:`load_hf` returns: the Linen module, its parameters (placed and sharded on
    the mesh) and the tokenizer (None when the folder has no tokenizer.json)."""

    model: Any
    params: Any
    tokenizer: Any


def read_hf_config(path: str) -> dict:
    """The folder's config.json as a dict; DataError when it is missing or not JSON."""
    if not os.path.isdir(path):
        raise DataError(f"{path} is not a directory (a Hugging Face model folder)")
    return read_json(os.path.join(path, "config.json"),
                     f"{path} has no config.json (not a Hugging Face model folder)")


def experiment_of(path: str, overrides: Sequence[str] = ()) -> Any:
    """The :class:`LMExperiment` of a Hugging Face folder: its model, a BPE from its
    tokenizer.json, a context of up to 1,024 tokens for fine-tuning windows, and the
    ``overrides``. The data is a text file to fine-tune on (``data.path``; none is needed to
    sample or to export)."""
    from jaxgen import experiments
    from jaxgen.config import TextData, TrainConfig
    from jaxgen.models.lm.settings import LMExperiment, LMSample
    from jaxgen.train.optim import OptimConfig

    model = hf_lm.lm_config_from_hf(read_hf_config(path))
    seq_len = min(model.max_len, 1024)
    config = LMExperiment(
        experiment=f"hf:{hf_lm.arch_of(model)}",
        data=TextData(source="text_file", tokenizer="bpe", vocab_size=max(model.vocab_size, 257),
                      seq_len=seq_len, batch_size=8, eval_batch_size=8, eval_batches=4),
        model=model,
        optim=OptimConfig(lr=3e-5, warmup_steps=0, weight_decay=0.0, clip_norm=1.0),
        train=TrainConfig(steps=1000, log_every=10, eval_every=0, ckpt_every=100,
                          num_samples=4),
        sample=LMSample(max_new_tokens=min(64, model.max_len - 1), temperature=1.0))
    return experiments.apply_overrides(config, list(overrides))


def _tokenizer(path: str, vocab_size: int) -> Any:
    from jaxgen.data.tokenizers import load_tokenizer_file

    file = os.path.join(path, TOKENIZER_FILE)
    if not os.path.exists(file):
        return None
    try:
        tok = load_tokenizer_file(file)
    except ValueError as e:
        raise DataError(str(e)) from None
    if tok.vocab_size > vocab_size:
        raise DataError(f"{file} has {tok.vocab_size} tokens, more than the model's "
                        f"vocab_size={vocab_size}")
    return tok


# ----------------------------------------------------------------------------- weights in
def _convert(files: SafetensorsFiles, rule: hf_lm.Load, names: list[str], want: Any
             ) -> np.ndarray:
    """One jaxgen parameter from its Hugging Face tensors, checked against ``want``'s shape
    and cast to its dtype."""
    for name in names:
        if name not in files:
            raise DataError(f"{files.path} has no tensor {name}")
    parts = [files.get(n) for n in names]
    try:
        out = rule.fn(*parts)
    except ValueError:
        out = None
    if out is None or tuple(out.shape) != tuple(want.shape):
        shapes = ", ".join(f"{n} {list(p.shape)}" for n, p in zip(names, parts))
        raise DataError(f"tensor shape mismatch: {shapes} cannot make the "
                        f"{list(want.shape)} parameter config.json describes")
    return np.asarray(out, dtype=want.dtype)


def _place(array: np.ndarray, sharding: Any) -> jax.Array:
    """``array`` on the devices of ``sharding``, each device given only its own slice."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _layer_sharding(sharding: Any) -> Any:
    """The sharding of one layer of a stacked [L, ...] parameter."""
    from jax.sharding import NamedSharding, PartitionSpec

    spec = tuple(sharding.spec) + (None,) * (len(sharding.spec) == 0)
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))


def load_params(files: SafetensorsFiles, config: Any, abstract: Any, prefix: str = "") -> Any:
    """Parameters shaped like ``abstract`` (a pytree of ShapeDtypeStructs with shardings, as
    :func:`jaxgen.train.loop.build` makes them) filled from ``files``, one tensor at a time.

    ``prefix`` is put before every name (GPT-2 files may or may not carry "transformer.").
    DataError naming the tensor when one is missing or misshapen, or when the file holds
    weights the model has no place for (another architecture than config.json says).
    """
    from flax import traverse_util

    top, block, _, _, block_prefix = hf_lm.layout(config)
    flat = traverse_util.flatten_dict(abstract)
    used: set[str] = set()
    out = {}

    def names(rule: hf_lm.Load, i: Optional[int]) -> list[str]:
        top_level = i is None
        full = [(n if n.startswith("lm_head") else prefix + n) if top_level
                else prefix + block_prefix.format(i=i) + n for n in rule.hf]
        used.update(full)
        return full

    for path, want in flat.items():
        if path[0].startswith("block_"):
            i, rule = int(path[0][len("block_"):]), block[path[1:]]
            out[path] = _place(_convert(files, rule, names(rule, i), want), want.sharding)
        elif path[0] == "layers":  # scanned: [L, ...], each layer placed, then stacked
            rule = block[path[1:]]
            one = jax.ShapeDtypeStruct(want.shape[1:], want.dtype)
            layer_sh = _layer_sharding(want.sharding)
            layers = [_place(_convert(files, rule, names(rule, i), one), layer_sh)
                      for i in range(want.shape[0])]
            out[path] = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=want.sharding)(*layers)
            del layers
        else:
            rule = top[path]
            out[path] = _place(_convert(files, rule, names(rule, None), want), want.sharding)
    unused = sorted(n for n in files.names() if n not in used
                    and not n.endswith(hf_lm.IGNORED_SUFFIXES)
                    and not (config.tie_embeddings and n == "lm_head.weight"))
    if unused:
        raise DataError(f"{files.path} holds weights the {hf_lm.arch_of(config)} model of its "
                        f"config.json has no place for: {', '.join(unused[:3])}"
                        f"{' ...' if len(unused) > 3 else ''}")
    return traverse_util.unflatten_dict(out)


def _prefix(files: SafetensorsFiles, config: Any) -> str:
    if hf_lm.arch_of(config) == "gpt2" and "transformer.wte.weight" in files:
        return "transformer."
    return ""


def _built(path: str, overrides: Sequence[str], devices: Optional[list]) -> tuple[Any, Any]:
    """(experiment, jaxgen.train.loop.Run) of a Hugging Face folder, built without data."""
    from jaxgen import models
    from jaxgen.data.pipeline import Datasets
    from jaxgen.train import loop

    config = experiment_of(path, overrides)
    tok_path = os.path.join(path, TOKENIZER_FILE)
    build_config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, tokenizer_path=tok_path if os.path.exists(tok_path) else ""))
    n = int(config.data.eval_batch_size)
    batch = {"tokens": np.zeros((n, int(config.data.seq_len) + 1), np.int32),
             "mask": np.ones(n, np.float32)}
    info = {"kind": "text", "vocab_size": config.model.vocab_size,
            "seq_len": config.data.seq_len, "source": "hf",
            "tokenizer": _tokenizer(path, config.model.vocab_size)}
    datasets = Datasets(None, lambda: iter([batch]), info)
    run = loop.build(build_config, devices, datasets, family=models.make_family)
    return config, run


def load_hf(path: str, *, overrides: Sequence[str] = (), devices: Optional[list] = None
            ) -> HFModel:
    """A local Hugging Face folder's model as (Linen module, params, tokenizer).

    ``overrides`` are ``"key=value"`` settings of the experiment (``model.dtype=bfloat16``,
    ``model.scan_layers=true``, ``mesh.fsdp=8``, ...); the parameters arrive sharded on that
    mesh over ``devices`` (default: all). ``model.apply({"params": params}, tokens)`` gives
    logits float32 [B, T, V].
    """
    from jaxgen.models.lm.model import Transformer

    config, run = _built(path, overrides, devices)
    files = SafetensorsFiles(path)
    with run.active():
        params = load_params(files, run.family.cfg, run.abstract_state.params,
                             _prefix(files, run.family.cfg))
    return HFModel(Transformer(run.family.cfg), params, run.family.tokenizer)


def import_hf(path: str, workdir: str, overrides: Sequence[str] = (),
              devices: Optional[list] = None) -> str:
    """Writes a jaxgen workdir from a Hugging Face folder: config.json, the tokenizer, the
    checkpoint's own config (hf_config.json, for export) and an Orbax checkpoint at step 0
    (the weights, a fresh optimizer state). ``jaxgen sample``/``eval``/``train`` then use it
    as any workdir. Returns the workdir."""
    from jaxgen.data.pipeline import saved_info
    from jaxgen.train import loop
    from jaxgen.train.checkpoint import Checkpointer
    from jaxgen.train.state import create_state
    from jaxgen.train.workdir import RunLock, write_json

    if not os.path.exists(os.path.join(path, TOKENIZER_FILE)):
        raise DataError(f"{path} has no {TOKENIZER_FILE}: a workdir needs the model's "
                        "tokenizer (any Hugging Face tokenizer.json)")
    if os.path.exists(os.path.join(workdir, "checkpoints")) or \
            os.path.exists(os.path.join(workdir, "config.json")):
        raise UsageError(f"{workdir} already holds a run; import into a new --workdir")
    hf_config = read_hf_config(path)
    config, run = _built(path, overrides, devices)
    files = SafetensorsFiles(path)
    os.makedirs(workdir, exist_ok=True)
    with RunLock(workdir):
        with run.active():
            params = load_params(files, run.family.cfg, run.abstract_state.params,
                                 _prefix(files, run.family.cfg))
            k_steps = jax.random.split(jax.random.PRNGKey(config.seed))[1]
            family = run.family
            state = jax.jit(lambda p, k: create_state(p, family.tx, k, ema=family.ema is not None),
                            out_shardings=run.state_sharding, donate_argnums=0)(params, k_steps)
        del params
        shutil.copyfile(os.path.join(path, TOKENIZER_FILE), os.path.join(workdir, TOKENIZER_FILE))
        ckpt = Checkpointer(workdir, keep=int(config.train.keep_ckpts), async_save=False)
        try:
            ckpt.save(0, state, None, loop.config_to_dict(config), force=True)
            ckpt.wait()
        finally:
            ckpt.close()
        if jax.process_index() == 0:
            write_json(os.path.join(workdir, HF_CONFIG_FILE), hf_config)
            write_json(os.path.join(workdir, loop.DATA_INFO_FILE), saved_info(run.datasets.info))
            write_json(os.path.join(workdir, loop.CONFIG_FILE), loop.config_to_dict(config))
    return workdir


# ----------------------------------------------------------------------------- weights out
def hf_tensors(config: Any, params: Any) -> dict[str, np.ndarray]:
    """The Hugging Face state dict (numpy float32, unprefixed names as :mod:`hf_lm` lists
    them, GPT-2's with "transformer.") of jaxgen LM ``params``, one tensor fetched at a time."""
    from flax import traverse_util

    _, _, top, block, block_prefix = hf_lm.layout(config)
    flat = traverse_util.flatten_dict(params)
    gpt2 = hf_lm.arch_of(config) == "gpt2"
    scanned = any(p[0] == "layers" for p in flat)

    def fetch(path, i):
        if i is None:
            return np.asarray(jax.device_get(flat[path]), np.float32)
        leaf = flat[("layers",) + path] if scanned else flat[(f"block_{i}",) + path]
        return np.asarray(jax.device_get(leaf[i] if scanned else leaf), np.float32)

    out = {}
    for name, rule in top.items():
        key = name if name.startswith("lm_head") or not gpt2 else "transformer." + name
        out[key] = np.ascontiguousarray(rule.fn(*(fetch(p, None) for p in rule.ours)))
    for i in range(config.num_layers):
        for name, rule in block.items():
            key = ("transformer." if gpt2 else "") + block_prefix.format(i=i) + name
            out[key] = np.ascontiguousarray(rule.fn(*(fetch(p, i) for p in rule.ours)))
    return out


def export_hf(workdir: str, out: str) -> list[str]:
    """Writes ``workdir``'s newest checkpoint (its EMA weights where it keeps one) as a
    Hugging Face folder: config.json, model.safetensors (float32) and the run's tokenizer.json
    when it is a Hugging Face one; ``transformers.AutoModelForCausalLM.from_pretrained(out)``
    loads it. Returns the files written."""
    from jaxgen import api
    from jaxgen.train import loop
    from jaxgen.train.workdir import write_json

    config = loop.load_config(workdir) if os.path.exists(os.path.join(workdir, "config.json")) \
        else None
    if config is None or config.family != "lm":
        raise UsageError(f"{workdir} is not a jaxgen language-model workdir; jaxgen export hf "
                         "writes causal LMs")
    if os.path.exists(out) and os.listdir(out):
        raise UsageError(f"--out {out} exists and is not empty; choose a new directory")
    run = api.load(workdir, need_data=False)
    model = run.family.cfg
    base = None
    base_file = os.path.join(workdir, HF_CONFIG_FILE)
    if os.path.exists(base_file):
        with open(base_file, encoding="utf-8") as f:
            base = json.load(f)
    hf_config = hf_lm.hf_config_of(model, base)
    tensors = hf_tensors(model, run.params)
    os.makedirs(out, exist_ok=True)
    files = [os.path.join(out, "model.safetensors"), os.path.join(out, "config.json")]
    if jax.process_index() == 0:
        save_file(tensors, files[0], {"format": "pt"})
        write_json(files[1], hf_config)
        tok = os.path.join(workdir, TOKENIZER_FILE)
        if os.path.exists(tok):
            from jaxgen.data.tokenizers import load_tokenizer_file, tokenizer_kind
            if tokenizer_kind(load_tokenizer_file(tok)) == "bpe":
                shutil.copyfile(tok, os.path.join(out, TOKENIZER_FILE))
                files.append(os.path.join(out, TOKENIZER_FILE))
            else:
                log.warning("the run's %s tokenizer is jaxgen's own, not a Hugging Face "
                            "tokenizer.json: none is written", tokenizer_kind(load_tokenizer_file(tok)))
    return files


__all__ = ["HFModel", "export_hf", "hf_tensors", "import_hf", "load_hf", "load_params",
           "read_hf_config"]
