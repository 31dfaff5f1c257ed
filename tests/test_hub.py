"""Pretrained weights in and out (jaxgen.hub) against transformers' own GPT-2 and Llama.

Every reference model is built here, randomly initialised by transformers and written with
``save_pretrained`` (no network). A BPE tokenizer of exactly the model's vocabulary is trained
on a few kilobytes of the standard library's source and saved beside it as tokenizer.json.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.errors import DataError, UsageError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxgen import hub  # noqa: E402
from jaxgen.hub import hf_lm  # noqa: E402
from jaxgen.hub.safetensors_io import SafetensorsFiles, save_file  # noqa: E402
from jaxgen.models.lm.decode import generate_long  # noqa: E402
from jaxgen.models.lm.sampling import make_strategy  # noqa: E402

SEQ = 48  # the models' context
LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=SEQ, rms_norm_eps=1e-5)
CASES = {
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=SEQ)),
    "llama_untied": ("llama", dict(LLAMA, tie_word_embeddings=False,
                                   rope_parameters={"rope_type": "default",
                                                    "rope_theta": 10000.0})),
    "llama3_scaled_tied": ("llama", dict(LLAMA, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    from jaxgen.data.tokenizers import BPETokenizer

    import json as json_module
    text = inspect.getsource(json_module) + inspect.getsource(shutil)
    tok = BPETokenizer.train(text, 320)
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    tok.save(path)
    return path, tok


def _hf_model(kind: str, fields: dict, vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, bos_token_id=0, eos_token_id=0,
                                         **fields)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(vocab_size=vocab, bos_token_id=0, eos_token_id=0,
                                          **fields)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # random norms and biases, so no zero or one hides a mapping error
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory, tokenizer_file):
    """{case: (folder, transformers model)}."""
    tok_path, tok = tokenizer_file
    out = {}
    for case, (kind, fields) in CASES.items():
        model = _hf_model(kind, fields, tok.vocab_size)
        folder = str(tmp_path_factory.mktemp(case))
        model.save_pretrained(folder)
        shutil.copyfile(tok_path, os.path.join(folder, "tokenizer.json"))
        out[case] = (folder, model)
    return out


def _tokens(vocab: int, b: int = 2, t: int = SEQ, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (b, t)).astype(np.int32)


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_decoding_match_transformers(hf_folders, case):
    folder, ref = hf_folders[case]
    loaded = hub.load_hf(folder)
    vocab = ref.config.vocab_size
    tokens = _tokens(vocab)
    ours = jax.jit(loaded.model.apply)({"params": loaded.params}, tokens)
    np.testing.assert_allclose(ours, _torch_logits(ref, tokens), atol=1e-4, rtol=1e-4)

    # greedy generation of 32 tokens through jaxgen's KV cache vs transformers' generate
    prompt = tokens[:, :8]
    ours = generate_long(loaded.model.config, loaded.params, jnp.asarray(prompt),
                         jax.random.key(0), make_strategy(greedy=True), max_new_tokens=32)
    with torch.no_grad():
        theirs = ref.generate(torch.from_numpy(prompt.astype(np.int64)), do_sample=False,
                              max_new_tokens=32, min_new_tokens=32, pad_token_id=0).numpy()
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_rope_scaling_changes_the_frequencies_as_transformers_does():
    """jaxgen's llama3 and linear frequencies against transformers' own rope initialisers."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from jaxgen.nn.attention import RopeScaling, rope_frequencies

    for kind, extra in (("llama3", dict(low_freq_factor=1.0, high_freq_factor=4.0,
                                        original_max_position_embeddings=64)),
                        ("linear", {})):
        config = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2,
                                          max_position_embeddings=512, rope_parameters=dict(
                                              rope_type=kind, rope_theta=500000.0, factor=8.0,
                                              **extra))
        theirs, _ = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
        ours = rope_frequencies(128, 500000.0, RopeScaling(kind, 8.0, 1.0, 4.0, 64))
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    base = rope_frequencies(128, 500000.0)
    assert not np.allclose(ours, base)  # the scaling did something


def test_export_round_trip_reloads_in_transformers(hf_folders, tmp_path):
    """import -> export -> AutoModelForCausalLM.from_pretrained: equal logits (Llama, GQA,
    untied; scanned layers, so the stacked layout is covered too)."""
    folder, ref = hf_folders["llama_untied"]
    workdir = str(tmp_path / "wd")
    hub.import_hf(folder, workdir, ["model.scan_layers=true"])
    files = hub.export_hf(workdir, str(tmp_path / "out"))
    assert sorted(os.path.basename(f) for f in files) == ["config.json", "model.safetensors",
                                                           "tokenizer.json"]
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    tokens = _tokens(ref.config.vocab_size, seed=1)
    np.testing.assert_allclose(_torch_logits(back, tokens), _torch_logits(ref, tokens),
                               atol=1e-5, rtol=1e-5)
    assert back.config.num_key_value_heads == 2 and back.config.tie_word_embeddings is False


def test_gpt2_export_writes_transformers_layout(hf_folders):
    """The GPT-2 tensors jaxgen writes are exactly the checkpoint's (fused c_attn included)."""
    folder, ref = hf_folders["gpt2"]
    loaded = hub.load_hf(folder)
    ours = hub.hf_tensors(loaded.model.config, loaded.params)
    theirs = {k: v.numpy() for k, v in ref.state_dict().items()
              if k != "lm_head.weight" and not k.endswith(".attn.bias")}
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_import_is_sharded_and_holds_one_tensor_at_a_time(tmp_path, monkeypatch):
    """fsdp=8 on 8 simulated devices: every large parameter arrives sharded (each device holds
    1/8), and the host's numpy memory never holds much more than the largest parameter while
    a model ~20x larger is placed (tracemalloc counts numpy's buffers, not device buffers)."""
    kind, fields = CASES["llama_untied"]
    big = dict(fields, hidden_size=128, intermediate_size=512, num_hidden_layers=8)
    model = _hf_model(kind, big, 512, seed=3)
    folder = str(tmp_path / "big")
    model.save_pretrained(folder)
    del model
    peaks = []
    real = hub.load_params

    def measured(*args, **kw):  # the host's numpy memory while the weights are read and placed
        tracemalloc.start()
        try:
            return real(*args, **kw)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    monkeypatch.setattr(hub, "load_params", measured)
    loaded = hub.load_hf(folder, overrides=["mesh.fsdp=8", "mesh.data=1"])
    (peak,) = peaks
    sizes = [x.size * x.dtype.itemsize for x in jax.tree.leaves(loaded.params)]
    total, largest = sum(sizes), max(sizes)  # largest: the [D, 2, F] gate/up kernel
    assert total > 15 * largest
    # the Hugging Face tensors a parameter is made of, plus the parameter itself
    assert peak < 2.5 * largest, (peak, largest, total)
    emb = loaded.params["embed"]["embedding"]
    assert emb.shape == (512, 128) and len(emb.sharding.device_set) == 8
    assert {s.data.shape for s in emb.addressable_shards} in ({(64, 128)}, {(512, 16)})
    kernels = [x for x in jax.tree.leaves(loaded.params) if x.size >= 128 * 96]
    assert all(len({str(s.index) for s in x.addressable_shards}) == 8 for x in kernels), \
        [(x.shape, x.sharding.spec) for x in kernels]


def _write_hf(folder, config: dict, tensors: dict):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(tensors, os.path.join(folder, "model.safetensors"))


def test_bad_checkpoints_are_refused_in_one_line(hf_folders, tmp_path):
    folder, ref = hf_folders["gpt2"]
    config = json.load(open(os.path.join(folder, "config.json")))
    weights = SafetensorsFiles(folder)
    tensors = {n: weights.get(n) for n in weights.names()}

    # an unknown architecture, named by its field
    bad = tmp_path / "mistral"
    _write_hf(str(bad), dict(config, model_type="mpt"), tensors)
    with pytest.raises(UsageError, match="model_type='mpt'"):
        hub.load_hf(str(bad))
    # a shape mismatch names the tensor
    bad = tmp_path / "shape"
    _write_hf(str(bad), config, dict(tensors, **{"transformer.h.1.mlp.c_fc.weight":
                                                np.zeros((64, 100), np.float32)}))
    with pytest.raises(DataError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight \[64, 100\]"):
        hub.load_hf(str(bad))
    # a missing tensor
    bad = tmp_path / "missing"
    _write_hf(str(bad), config, {k: v for k, v in tensors.items() if "h.1.ln_2" not in k})
    with pytest.raises(DataError, match=r"no tensor transformer\.h\.1\.ln_2\."):
        hub.load_hf(str(bad))
    # a truncated file names the first tensor it cuts
    bad = tmp_path / "truncated"
    _write_hf(str(bad), config, tensors)
    path = os.path.join(str(bad), "model.safetensors")
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(DataError, match="is truncated: tensor transformer.wte.weight"):
        SafetensorsFiles(str(bad))
    # no weights at all, and no config
    os.remove(path)
    with pytest.raises(DataError, match="has no model.safetensors"):
        hub.load_hf(str(bad))
    with pytest.raises(DataError, match="has no config.json"):
        hub.load_hf(str(tmp_path))

    # the command line: one line, exit 2
    bad = tmp_path / "cli"
    _write_hf(str(bad), dict(config, activation_function="relu"), tensors)
    shutil.copyfile(os.path.join(folder, "tokenizer.json"), os.path.join(str(bad), "tokenizer.json"))
    p = subprocess.run([sys.executable, "-m", "jaxgen.cli", "import", "hf", str(bad), "--workdir",
                        str(tmp_path / "wd")], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "activation_function='relu'" in p.stderr


def test_config_mapping_refuses_what_it_cannot_compute():
    base = transformers.LlamaConfig(**LLAMA).to_dict()
    for field, value, match in (("hidden_act", "gelu", "hidden_act"),
                                ("head_dim", 32, "head_dim"),
                                ("mlp_bias", True, "mlp_bias"),
                                ("rope_parameters", {"rope_type": "yarn", "factor": 2.0},
                                 "rope_type='yarn'")):
        with pytest.raises(UsageError, match=match):
            hf_lm.lm_config_from_hf(dict(base, **{field: value}))
    with pytest.raises(UsageError, match="no Hugging Face architecture"):
        hf_lm.arch_of(hf_lm.lm_config_from_hf(base).__class__(positions="learned"))


def _jaxgen(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "jaxgen.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_fine_tuning_an_imported_workdir_resumes_bit_identically_after_sigkill(hf_folders,
                                                                               tmp_path):
    """jaxgen import hf, then 20 steps of jaxgen train on a text file: killed with SIGKILL once
    a checkpoint is on disk and run again, it ends exactly where an uninterrupted run ends."""
    import signal
    import time

    import jaxgen

    folder, _ = hf_folders["gpt2"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(inspect.getsource(json) * 2)
    killed, ref = str(tmp_path / "killed"), str(tmp_path / "ref")
    assert subprocess.run([sys.executable, "-m", "jaxgen.cli", "import", "hf", folder,
                           "--workdir", killed], capture_output=True).returncode == 0
    shutil.copytree(killed, ref)
    train = ["train", "--no-progress", "--set", f"data.path={corpus}", "--set", "train.steps=20",
             "--set", "train.ckpt_every=5", "--set", "train.num_samples=2", "--workdir"]
    p, uninterrupted = _jaxgen(*train, killed), _jaxgen(*train, ref)
    deadline = time.monotonic() + 240
    while not os.path.exists(os.path.join(killed, "checkpoints", "5")) and p.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    steps = sorted(int(d) for d in os.listdir(os.path.join(killed, "checkpoints")) if d.isdigit())
    assert 0 < max(steps) < 20
    for run in (_jaxgen(*train, killed), uninterrupted):
        out, _ = run.communicate()
        assert "trained hf:gpt2 to step 20" in out, out
    a, b = jaxgen.load(killed), jaxgen.load(ref)
    assert a.step == b.step == 20
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 (a.state.params, a.state.opt_state), (b.state.params, b.state.opt_state))
    before = hub.load_hf(folder).params  # and fine-tuning changed the weights
    assert not np.allclose(np.asarray(a.params["embed"]["embedding"]),
                           np.asarray(before["embed"]["embedding"]))


# ----------------------------------------------------------------------------- diffusers
@pytest.mark.parametrize("scheduler", ["DDPMScheduler", "DDIMScheduler"])
def test_diffusers_pipeline_samples_reproduce_diffusers(tmp_path, monkeypatch, scheduler):
    """A UNet2DModel and a DDPM (clip_sample, leading spacing, steps_offset 1) or DDIM
    (clip_sample with diffusers' default use_clipped_model_output=False, trailing spacing,
    v-prediction, scaled_linear betas) scheduler saved as a pipeline:
    jaxgen's sampler over the scheduler's 50 timesteps and diffusers' own loop, from the same
    initial noise (and, for DDPM, the same step noise), end within 1e-3."""
    diffusers = pytest.importorskip("diffusers")
    from jaxgen.hub import diffusers as hub_diffusers
    from jaxgen.models.diffusion.objectives import sampling_sigmas

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    if scheduler == "DDPMScheduler":
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=True,
                                        steps_offset=1)
        pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    else:
        sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.00085, beta_end=0.012, clip_sample=True,
                                        prediction_type="v_prediction",
                                        timestep_spacing="trailing")
        pipeline = diffusers.DDIMPipeline(unet=unet, scheduler=sched)
    pipeline.save_pretrained(str(tmp_path))
    pipe = hub_diffusers.load_diffusers(str(tmp_path), attention_kernel="reference")
    assert pipe.sampler.sampler == ("ddpm" if scheduler == "DDPMScheduler" else "ddim")
    assert pipe.sampler.clip_mode == "x0" and pipe.diffusion.clip_x0

    n, steps, rng = 2, 50, jax.random.key(7)
    ours = np.asarray(hub_diffusers.sample(pipe, rng, n, steps))
    # jaxgen's randomness (samplers.init_state / sampler_step_fn): x = sigma_0 eps with eps from
    # split(rng)[0], the VP state x / sqrt(1 + sigma_0^2); step i's noise from fold_in(k, i)
    k_init, k_steps = jax.random.split(rng)
    sigma0 = float(sampling_sigmas(pipe.diffusion, steps)[0])
    x = (np.asarray(jax.random.normal(k_init, (n, 8, 8, 1))) * sigma0
         / np.sqrt(1 + sigma0 ** 2)).astype(np.float32)
    step_noise = iter(np.asarray(jax.random.normal(jax.random.fold_in(k_steps, i), (n, 8, 8, 1)))
                      for i in range(steps))
    module = sys.modules[type(sched).__module__]
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: torch.from_numpy(
        next(step_noise).transpose(0, 3, 1, 2).copy()))
    sched = type(sched).from_pretrained(str(tmp_path), subfolder="scheduler")
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(
        sched.timesteps.numpy(),
        __import__("jaxgen.models.diffusion.schedules", fromlist=["x"]).discrete_timesteps(
            pipe.diffusion.noise_schedule, steps, pipe.diffusion.timestep_spacing,
            pipe.diffusion.steps_offset))
    sample = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sample, t).sample
            sample = sched.step(out, t, sample).prev_sample
            if scheduler == "DDIMScheduler":
                next(step_noise)  # keep the iterator aligned (DDIM eta 0 draws nothing)
    theirs = sample.numpy().transpose(0, 2, 3, 1)
    print("max abs difference", np.abs(ours - theirs).max())
    assert np.abs(ours - theirs).max() < 1e-3, np.abs(ours - theirs).max()
    assert np.abs(theirs).max() > 0.1  # not a trivial all-zero match


def test_diffusers_settings_without_a_jaxgen_equivalent_are_refused():
    from jaxgen.hub import diffusers as hub_diffusers

    for cfg, match in (({"_class_name": "EulerDiscreteScheduler"}, "_class_name"),
                       ({"_class_name": "DDPMScheduler", "thresholding": True}, "thresholding"),
                       ({"_class_name": "DDPMScheduler", "variance_type": "learned"},
                        "variance_type"),
                       ({"_class_name": "DDIMScheduler", "set_alpha_to_one": False},
                        "set_alpha_to_one")):
        with pytest.raises(UsageError, match=match):
            hub_diffusers.scheduler_settings(cfg)
    base = {"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
    for change, match in (({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
                          ({"down_block_types": ["SkipDownBlock2D", "DownBlock2D"]}, "SkipDown"),
                          ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D"]}, "mirrors")):
        with pytest.raises(UsageError, match=match):
            hub_diffusers.unet_config_from_diffusers(dict(base, **change))


def test_a_vocabulary_padded_past_the_tokenizer_never_samples_a_padding_id():
    logits = jnp.array([[0.0, 1.0, 2.0, 9.0, 9.0]] * 64)  # ids 3 and 4: padding rows
    for strategy in (make_strategy(greedy=True, vocab_limit=3),
                     make_strategy(temperature=5.0, top_k=4, vocab_limit=3)):
        ids = np.asarray(strategy(logits, jax.random.key(0)))
        assert ids.max() < 3
    assert int(make_strategy(greedy=True)(logits, jax.random.key(0))[0]) == 3  # unlimited


def test_autoencoder_kl_matches_diffusers(tmp_path):
    """diffusers' AutoencoderKL (2 levels, latent 1/2 the size) saved and loaded into jaxgen's
    AutoencoderKL: posterior mean and log-variance, decoded images and the KL term (against
    the closed form diffusers' DiagonalGaussianDistribution.kl computes) agree to 1e-4."""
    diffusers = pytest.importorskip("diffusers")
    from jaxgen.hub import diffusers as hub_diffusers
    from jaxgen.nn.autoencoder import kl_to_standard_normal

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=2, norm_num_groups=8, sample_size=8).eval()
    with torch.no_grad():  # random norms and biases, so no zero or one hides a mapping error
        for p in vae.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    vae.save_pretrained(str(tmp_path))
    model, params = hub_diffusers.load_autoencoder(str(tmp_path), attention_kernel="reference")
    assert model.config.factor == 2 and model.config.latent_channels == 2
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 1)).astype(np.float32)
    mean, logvar = jax.jit(lambda p, x: model.apply(p, x, method=model.encode))(params, x)
    z = np.random.default_rng(1).standard_normal((2, 4, 4, 2)).astype(np.float32)
    decoded = jax.jit(lambda p, z: model.apply(p, z, method=model.decode))(params, z)
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).latent_dist
        theirs = vae.decode(torch.from_numpy(z.transpose(0, 3, 1, 2).copy())).sample.numpy()
    nhwc = (0, 2, 3, 1)
    np.testing.assert_allclose(mean, dist.mean.numpy().transpose(nhwc), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logvar, dist.logvar.numpy().transpose(nhwc), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(decoded, theirs.transpose(nhwc), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(kl_to_standard_normal(mean, logvar), dist.kl().numpy(),
                               rtol=1e-4)
