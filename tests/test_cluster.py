"""The accelerator path, checked from a CPU host (issue 18).

Two halves:
- compiled for a TPU topology without a TPU (libtpu, deviceless AOT): every family's train step
  and sampler for v5e:2x2 in bfloat16, the LM on the Pallas TPU (splash) kernel, the
  collectives of tensor-parallel and FSDP LM steps counted in the partitioned HLO, and the
  ``jaxgen compile`` command's bad input;
- run on 8 simulated CPU devices: tensor-parallel steps equal the 1-device step, bfloat16 has
  float32 logits, sampling is sharded and equals the 1-device samples, cached decoding equals
  uncached decoding with a sharded cache.

The compile half needs libtpu and is skipped, with one line, without it (CI installs it).
"""
import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import cli, experiments, models
from jaxgen.train import loop
from jaxgen.train import mesh as mesh_lib
from envs import shared_data

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu is not installed (pip install 'jax[tpu]'): TPU compile "
    "tests skipped")
SHAKESPEARE = shared_data("tinyshakespeare.txt")

# Tiny versions of the accelerator recipes: their choices (bfloat16 compute, native
# convolutions, heads of 64, scanned layers), at sizes that compile in seconds.
TINY_TPU = {
    "vae": ("vae_mnist:tpu", ["data.batch_size=16", "data.eval_batch_size=16",
                              "train.num_samples=8"]),
    "gan": ("gan_mnist:tpu", ["data.batch_size=16", "model.gen_width=8", "model.disc_width=8",
                              "train.num_samples=8"]),
    # 32x32 images: attention at 16x16 = 256 tokens, which the splash kernel takes
    "diffusion": ("diffusion_cifar10:tpu", [
        "data.batch_size=8", "model.block_channels=[64,64]", "model.layers_per_block=1",
        "model.attention_levels=[false,true]", "model.head_dim=64", "model.dropout=0",
        "train.num_samples=8", "sample.steps=2"]),
    "autoencoder": ("autoencoder_mnist:tpu", [
        "data.batch_size=8", "model.block_channels=[16,16,32]", "model.norm_groups=8",
        "train.num_samples=8"]),
    # the latent model compiles with an untrained autoencoder of latent.recipe (no workdir
    # here): its encoder in the train step, its decoder after the sampler
    "ldm": ("ldm_cifar10:smoke", ["model.dtype=bfloat16", "sample.steps=2"]),
    "lm": ("lm_shakespeare_char:tpu", [
        "data.batch_size=8", "data.eval_batch_size=8", "data.seq_len=128", "model.num_layers=2",
        "model.d_model=128", "model.num_heads=2", "train.num_samples=4",
        "sample.max_new_tokens=8"]),
}


def _compile(spec, overrides, programs=("train", "sample"), **kw):
    from jaxgen.aot.experiment import compile_experiment

    return compile_experiment(spec, "v5e:2x2", overrides=overrides, programs=programs,
                              unrolled_estimate=False, **kw)


# ---------------------------------------------------------------- every family, for a TPU

@needs_libtpu
@pytest.mark.parametrize("family", sorted(TINY_TPU))
def test_every_family_compiles_train_step_and_sampler_for_v5e_in_bfloat16(family):
    spec, overrides = TINY_TPU[family]
    r = _compile(spec, overrides)
    assert r["num_devices"] == 4 and r["mesh"]["data"] * r["mesh"]["fsdp"] == 4
    assert r["precision"] == {"compute": "bfloat16", "params": "float32"}
    assert set(r["programs"]) == {"train", "sample"}
    for name, report in r["programs"].items():
        assert report["chip"] == "v5e" and report["memory"]["fits"], name
        assert report["memory"]["total_bytes"] > 0 and report["cost"]["flops_per_chip"] > 0
        # the batch is split over the 4 chips: gradients are summed over them
    assert r["programs"]["train"]["collectives"]["all-reduce"]["count"] > 0
    kernels = {a["kernel"] for a in r["programs"]["train"]["attention"]}
    dtypes = {a["dtype"] for a in r["programs"]["train"]["attention"]}
    if family in ("lm", "diffusion"):
        # the Pallas TPU kernel, as Mosaic custom calls in the compiled step
        assert kernels == {"splash"} and dtypes == {"bfloat16"}
        assert r["programs"]["train"]["cost"]["custom_calls"].get("tpu_custom_call", 0) >= 2
    elif family in ("autoencoder", "ldm"):  # attention over 4x4 / 7x7 tokens: XLA's, bf16
        assert kernels == {"xla"} and dtypes == {"bfloat16"}
    else:
        assert kernels == set()


# ---------------------------------------------------------------- collectives of LM steps

# lm_llama's architecture (GQA, SwiGLU, RoPE, scanned layers) at a size whose kernels and
# activations differ in bytes: D 128, 8 heads of 16, 4 key/value heads, hidden 384, T 256.
L, B, T, D, N, K, H, F, VOCAB = 2, 8, 256, 128, 8, 4, 16, 384, 512
LLAMA_TINY = ["model.dtype=bfloat16", f"model.num_layers={L}", f"model.d_model={D}",
              f"model.num_heads={N}", f"model.num_kv_heads={K}", f"model.mlp_hidden={F}",
              f"model.max_len={T}", f"data.seq_len={T}", f"data.batch_size={B}",
              f"data.eval_batch_size={B}", f"model.vocab_size={VOCAB}",
              f"data.vocab_size={VOCAB}", "train.num_samples=8"]
# every kernel of one layer, [shape]: q [D, N, H], kv [D, 2, K, H], out [N, H, D],
# gate/up [D, 2, F], down [F, D]
LAYER_KERNELS = {"q": D * N * H, "kv": D * 2 * K * H, "out": N * H * D, "gate_up": D * 2 * F,
                 "down": F * D}
ACTIVATION = B * T * D * 2  # one bfloat16 residual-stream activation [B, T, D], whole


def _llama_collectives(mesh):
    from jaxgen.aot.hlo import find_collectives

    r = _compile("lm_llama:smoke", LLAMA_TINY + [f"mesh.{k}={v}" for k, v in mesh.items()],
                 programs=("train",), keep_hlo=True)
    report = r["programs"]["train"]
    ops, unknown = find_collectives(report["hlo_text"])
    assert unknown == 0
    return r, report, ops


@needs_libtpu
def test_tensor_parallel_lm_step_gathers_no_activation_and_no_projection_kernel():
    r, report, ops = _llama_collectives({"data": 1, "fsdp": 1, "tensor": 4})
    assert r["mesh"] == {"data": 1, "fsdp": 1, "tensor": 4}
    assert {a["kernel"] for a in report["attention"]} == {"splash"}
    gathers = [op for op in ops if op.kind == "all-gather"]
    smallest_whole = min(ACTIVATION, *(2 * n for n in LAYER_KERNELS.values()))
    # q/k/v and gate/up split on their head and hidden axes: nothing is reassembled
    assert all(op.bytes < smallest_whole for op in gathers), [(o.name, o.bytes) for o in gathers]
    # the Megatron pattern instead: the attention and MLP outputs are all-reduced partial sums
    # of [B, T, D], in the forward pass and (for their inputs) in the backward pass
    sums = [op for op in ops if op.kind == "all-reduce" and op.bytes >= ACTIVATION]
    assert sum(op.times for op in sums) >= 2 * L


@needs_libtpu
def test_fsdp_lm_step_gathers_each_layer_kernel_and_reduce_scatters_its_gradient():
    r, report, ops = _llama_collectives({"data": 1, "fsdp": 4, "tensor": 1})
    c = report["collectives"]
    layer_kernels_bf16 = 2 * L * sum(LAYER_KERNELS.values())  # gathered in the compute dtype
    layer_kernels_f32 = 2 * layer_kernels_bf16
    # Forward and backward each gather every layer kernel (remat "dots" may keep the forward's
    # gathered copies alive for the backward: between one and two gathers of each)
    big = [op for op in ops if op.kind == "all-gather" and op.bytes >= 2 * min(LAYER_KERNELS.values())]
    assert sum(op.times for op in big) >= len(LAYER_KERNELS) * L
    gathered = c["all-gather"]["bytes_per_step"]
    assert layer_kernels_bf16 <= gathered <= 2 * layer_kernels_f32 + 2 * VOCAB * D * 4
    # no gather of a whole activation: the batch stays split over the 4 chips
    assert all(op.bytes < ACTIVATION for op in ops if op.kind == "all-gather")
    # Gradients leave sharded: reduce-scattered (XLA:TPU all-reduces some small ones), about
    # one f32 or bf16 copy of the parameters in all, never a replicated Adam update
    synced = c["reduce-scatter"]["bytes_per_step"] + c["all-reduce"]["bytes_per_step"]
    assert c["reduce-scatter"]["count_per_step"] >= L
    params = r["parameters"]
    assert 2 * params * 0.5 <= synced <= 4 * params * 2


def _sampler_gathers(spec, overrides):
    """(all-gathers, those inside a loop) of ``spec``'s compiled sampler on v5e:2x2."""
    from jaxgen.aot.hlo import _entry_name, find_collectives

    r = _compile(spec, overrides, programs=("sample",), keep_hlo=True)
    text = r["programs"]["sample"]["hlo_text"]
    ops, unknown = find_collectives(text)
    assert unknown == 0
    entry = _entry_name(text)
    gathers = [op for op in ops if op.kind == "all-gather"]
    return gathers, [op for op in gathers if op.computation != entry]


@needs_libtpu
@pytest.mark.parametrize("gather", [True, False])
def test_fsdp_decoding_gathers_the_weights_once_not_per_token(gather):
    """With sample.gather_fsdp (the default) every all-gather of the FSDP-sharded sampler is in
    the entry computation, before the decoding loop; without it the same weights are gathered
    inside the loop, once per token (and per scanned layer)."""
    gathers, in_loops = _sampler_gathers("lm_llama:smoke", LLAMA_TINY + [
        "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=1", "sample.max_new_tokens=8",
        f"sample.gather_fsdp={str(gather).lower()}"])
    layer_kernels_bf16 = 2 * L * sum(LAYER_KERNELS.values())  # whole, in the compute dtype
    if gather:
        assert not in_loops, [(o.name, o.computation) for o in in_loops]
        # once: every layer kernel and the embedding (XLA gathers them after the bf16 cast)
        assert sum(op.bytes for op in gathers) == layer_kernels_bf16 + 2 * VOCAB * D
    else:
        # every layer kernel for each of the 8 new tokens
        assert sum(op.bytes * op.times for op in in_loops) >= 8 * layer_kernels_bf16


@needs_libtpu
def test_fsdp_diffusion_sampler_gathers_the_weights_once_not_per_step():
    """The same for the diffusion sampler's loop of denoising steps (sample.gather_fsdp, on by
    default). Off, every step re-gathers (measured: 100 all-gathers, 9.29 MB in the loop,
    against 2.79 MB once); that case is tested for the LM above, not here, for the suite's
    time."""
    spec, overrides = TINY_TPU["diffusion"]
    gathers, in_loops = _sampler_gathers(spec, overrides + ["mesh.data=1", "mesh.fsdp=4",
                                                            "sample.steps=4"])
    assert gathers  # the weights are FSDP-sharded: there is something to gather
    assert not in_loops, [(o.name, o.computation) for o in in_loops]


# ---------------------------------------------------------------- jaxgen compile's bad input

@needs_libtpu
@pytest.mark.parametrize("argv, code, message", [
    (["--topology", "v9x:2x2"], 2, "topology"),
    (["--topology", "v5e:2x2", "--slices", "0"], 2, "slices"),
    (["--topology", "v5e:2x2", "--set", "mesh.tensor=3"], 2, "mesh"),
    (["--topology", "v5e:2x2", "--programs", "train,bogus"], 2, "bogus"),
    # a replicated 500,000 x 4096 float32 embedding (8 GiB) and its Adam moments on every chip
    (["--topology", "v5e:2x2", "--set", "model.vocab_size=500000", "--set",
      "data.vocab_size=500000", "--set", "model.d_model=4096", "--set", "mesh.data=4",
      "--programs", "train"], 1, "does not fit"),
])
def test_compile_bad_input_is_one_line_and_exit_code(argv, code, message, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert cli.main(["compile", "lm_llama:smoke", *argv, "--out", out]) == code
    err = capsys.readouterr().err.strip().splitlines()
    lines = [x for x in err if x.startswith("jaxgen") and ": INFO:" not in x]
    assert len(lines) == 1 and message in lines[0], err
    assert not os.path.exists(out)


@needs_libtpu
def test_compile_cli_prints_the_report_and_writes_json(tmp_path, capsys):
    import json

    out = str(tmp_path / "r.json")
    assert cli.main(["compile", "lm_llama:smoke", "--topology", "v5e:2x2", "--programs",
                     "train", "--set", "model.dtype=bfloat16", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "v5e" in text and "estimate" in text and out in text
    result = json.load(open(out))
    train = result["programs"]["train"]
    assert result["parameters"] > 0 and train["memory"]["fits"]
    # scanned layers: the step-time estimate comes from the unrolled compile, and the scanned
    # program's own (one layer costed) implies no MFU
    assert train["estimate"]["estimated_mfu"] is None
    assert 0 < train["estimate_unrolled"]["cost"]["estimated_step_s"]


# ---------------------------------------------------------------- 8 simulated CPU devices

def _lm_config(*overrides):
    base = experiments.get_config("lm_shakespeare_char:smoke")
    return experiments.apply_overrides(base, [
        "data.source=text_file", f"data.path={SHAKESPEARE}", "data.max_chars=20000",
        "model.num_heads=4", "model.num_kv_heads=4", "model.d_model=32",
        "model.attention_kernel=reference", *overrides])


def _lm_step(devices, mesh, *overrides):
    config = _lm_config(*[f"mesh.{k}={v}" for k, v in mesh.items()], *overrides)
    run = loop.build(config, devices, family=models.make_family)
    batch = next(run.datasets.train)
    state = loop.init_state(run, batch)
    with run.active():
        new_state, metrics = run.train_step(state, mesh_lib.global_batch(batch, run.batch_sharding))
    return run, batch, new_state, metrics


@pytest.fixture(scope="module")
def lm_one_device():
    return _lm_step(jax.devices()[:1], {"data": 1})


@pytest.mark.parametrize("tensor", [2, 4])
def test_tensor_parallel_lm_step_equals_one_device_step(tensor, lm_one_device):
    _, _, ref, ref_m = lm_one_device
    run, _, state, m = _lm_step(jax.devices()[:tensor], {"data": 1, "tensor": tensor})
    q = run.state_sharding.params["layers"]["attn"]["q"]["kernel"] \
        if "layers" in run.state_sharding.params else \
        run.state_sharding.params["block_0"]["attn"]["q"]["kernel"]
    assert "tensor" in tuple(q.spec)  # the heads really are split
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_bfloat16_lm_has_float32_logits_and_loss_within_1_percent(lm_one_device):
    from jaxgen.models.lm import Transformer

    run, batch, _, ref_m = lm_one_device
    _, _, _, m = _lm_step(jax.devices()[:1], {"data": 1}, "model.dtype=bfloat16")
    assert abs(float(m["loss"]) - float(ref_m["loss"])) <= 0.01 * float(ref_m["loss"])
    cfg = dataclasses.replace(run.family.cfg, dtype="bfloat16")
    params = loop.init_state(run, batch).params
    logits = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))(params,
                                                                            batch["tokens"])
    assert logits.dtype == jnp.float32
    # not bfloat16 values stored in float32: the head accumulated in float32
    assert not np.array_equal(np.asarray(logits),
                              np.asarray(logits.astype(jnp.bfloat16).astype(jnp.float32)))


def _vae_run(devices):
    config = experiments.apply_overrides(experiments.get_config("vae_mnist:smoke"), [])
    run = loop.build(config, devices, family=models.make_family)
    return run, loop.init_state(run, next(run.datasets.train))


def test_sixty_samples_on_eight_devices_are_sharded_and_equal_one_device():
    run8, state8 = _vae_run(None)
    run1, state1 = _vae_run(jax.devices()[:1])
    key, options = jax.random.PRNGKey(3), run8.family.sample_options()
    padded = run8.padded(60)
    assert padded == 64 and run8.mesh.shape["data"] == 8
    with run8.active():
        raw = run8.sampler(padded)(state8, key, padded, options)
    assert raw.sharding.spec[0] is not None  # split over the batch, not replicated
    assert len({s.device for s in raw.addressable_shards}) == 8
    assert raw.addressable_shards[0].data.shape[0] == 8
    sharded = run8.draw(state8, key, 60, options)
    single = run1.draw(state1, key, 60, options)
    assert sharded.shape[0] == 60
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_equals_uncached_with_the_cache_sharded(scan):
    from jaxgen.models.lm import LMConfig, Transformer, make_cache

    cfg = LMConfig(vocab_size=17, max_len=16, num_layers=2, num_heads=4, num_kv_heads=2,
                   d_model=32, attention_kernel="reference", scan_layers=scan)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=4, tensor=2))
    model = Transformer(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 17, (4, 12)), jnp.int32)
    import flax.linen as nn
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens[:, :4])["params"])
    full = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)

    @jax.jit
    def decode(p, t):
        cache = make_cache(cfg, t.shape[0], cfg.max_len)
        logits, cache = model.apply({"params": p}, t[:, :5], cache=cache, cache_index=0)
        outs = [logits]
        for i in range(5, t.shape[1]):  # one token at a time
            logits, cache = model.apply({"params": p}, t[:, i:i + 1], cache=cache,
                                        cache_index=jnp.int32(i))
            outs.append(logits)
        return jnp.concatenate(outs, axis=1), cache

    with jax.set_mesh(mesh):
        cached, cache = decode(params, tokens)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-4, atol=1e-5)
    assert (np.asarray(cached).argmax(-1) == np.asarray(full).argmax(-1)).all()
    leaf = jax.tree.leaves(cache)[0]
    spec = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
    lead = 1 if scan else 0  # [L, B, S, K, H] or per layer [B, S, K, H]
    assert spec[lead] in ("data", ("data",), ("data", "fsdp")) and spec[lead + 2] == "tensor"
    assert len(jax.tree.leaves(cache)) == 2 * (1 if scan else cfg.num_layers)


def test_float16_training_is_refused_in_one_line(capsys, tmp_path):
    code = cli.main(["train", "vae_mnist:smoke", "--workdir", str(tmp_path / "w"),
                     "--set", "model.dtype=float16"])
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert code == 2 and len(err) == 1 and "float16" in err[0] and "bfloat16" in err[0]


def test_fsdp_samples_with_gathered_weights_equal_the_one_device_samples(lm_one_device):
    """The FSDP sampler's gather-once (sample.gather_fsdp) runs on 4 CPU devices and changes
    nothing: greedy tokens equal the 1-device run's, with and without it."""
    run1, batch, _, _ = lm_one_device
    state1 = loop.init_state(run1, batch)
    key = jax.random.PRNGKey(5)
    opts = dict(greedy=True, max_new_tokens=6)
    ref = np.asarray(run1.draw(state1, key, 4, run1.family.sample_options(**opts)))
    config = _lm_config("mesh.data=1", "mesh.fsdp=4")
    run = loop.build(config, jax.devices()[:4], family=models.make_family)
    state = loop.init_state(run, batch)
    assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(run.state_sharding.params))
    for gather in (True, False):
        out = run.draw(state, key, 4, run.family.sample_options(gather_fsdp=gather, **opts))
        np.testing.assert_array_equal(np.asarray(out), ref)
