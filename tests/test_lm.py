"""The Transformer LM: KV-cache decoding, causality, scan vs unrolled, sampling, family."""
import dataclasses
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen import settings
from jaxgen.models.lm import (Greedy, LMConfig, LMFamily, Sample, Temperature, TopK, TopP,
                              Transformer, generate, make_cache, make_strategy, token_losses)
from jaxgen.train import mesh as mesh_lib

make_family = LMFamily

V = 13
TINY = LMConfig(vocab_size=V, max_len=16, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32,
                attention_kernel="reference")


def _params(cfg, seed=0):
    init = jax.jit(Transformer(cfg).init)
    return nn.meta.unbox(init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"])


# stop_token and pad_token traced: every call below with the same shapes shares one compile
_generate = jax.jit(generate, static_argnums=(0, 4), static_argnames=("max_new_tokens",))


def _tokens(b, t, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, t)), jnp.int32)


@pytest.mark.parametrize("scan,positions", [(False, "rope"), (True, "learned")])
def test_kv_cache_logits_equal_full_forward(scan, positions):
    cfg = dataclasses.replace(TINY, scan_layers=scan, positions=positions)
    model, params, tok = Transformer(cfg), _params(cfg), _tokens(2, 11)
    full = jax.jit(model.apply)({"params": params}, tok)
    np.testing.assert_allclose(_cached_logits(cfg, params, tok), np.asarray(full), atol=1e-5)


def _cached_logits(cfg, params, tok, prompt=5):
    """Logits of ``tok`` [B, T] from a prefill of ``prompt`` tokens, then one token at a time."""
    model = Transformer(cfg)
    cached = jax.jit(lambda p, t, c, i: model.apply({"params": p}, t, cache=c, cache_index=i))
    logits, cache = cached(params, tok[:, :prompt], make_cache(cfg, tok.shape[0], 12),
                           jnp.int32(0))
    steps = [logits]
    for i in range(prompt, tok.shape[1]):
        logits, cache = cached(params, tok[:, i:i + 1], cache, jnp.int32(i))
        steps.append(logits)
    return np.asarray(jnp.concatenate(steps, 1))


def test_a_maskless_kernel_trains_and_decodes_with_a_kv_cache():
    """cpu_flash takes no mask: the full forward uses it, KV-cache decoding falls back to auto."""
    from jaxgen.nn.kernels.cpu_flash import cpu_flash_unusable_reason
    cfg = dataclasses.replace(TINY, d_model=64, attention_kernel="cpu_flash")  # head dim 16
    probe = jax.ShapeDtypeStruct((1, 8, 1, 16), jnp.float32)
    if (reason := cpu_flash_unusable_reason(probe, probe, probe)) is not None:
        pytest.skip(reason)
    model, params, tok = Transformer(cfg), _params(cfg), _tokens(2, 11)
    full = jax.jit(model.apply)({"params": params}, tok)
    ref_model = Transformer(dataclasses.replace(cfg, attention_kernel="reference"))
    np.testing.assert_allclose(np.asarray(full),
                               np.asarray(ref_model.apply({"params": params}, tok)), atol=1e-5)
    np.testing.assert_allclose(_cached_logits(cfg, params, tok), np.asarray(full), atol=1e-5)


def test_model_is_causal():
    apply, params, tok = jax.jit(Transformer(TINY).apply), _params(TINY), _tokens(2, 10)
    base = apply({"params": params}, tok)
    changed = apply({"params": params}, tok.at[:, 6].set((tok[:, 6] + 1) % V))
    np.testing.assert_allclose(np.asarray(base[:, :6]), np.asarray(changed[:, :6]), atol=1e-6)
    assert float(jnp.abs(base[:, 6:] - changed[:, 6:]).min(axis=-1).max()) > 0


def test_scan_equals_unrolled_and_remat_is_transparent():
    unrolled = _params(TINY)
    stacked = {k: v for k, v in unrolled.items() if not k.startswith("block_")}
    stacked["layers"] = jax.tree.map(lambda *a: jnp.stack(a), unrolled["block_0"], unrolled["block_1"])
    tok = _tokens(2, 9)
    scanned = dataclasses.replace(TINY, scan_layers=True)
    assert jax.tree.structure(stacked) == jax.tree.structure(_params(scanned))

    def grads(cfg, p):  # gradients of a function of all the logits: checks the forward too
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(Transformer(cfg).apply({"params": p}, tok)))))(p)

    ref = grads(TINY, unrolled)
    ref = {**{k: v for k, v in ref.items() if not k.startswith("block_")},
           "layers": jax.tree.map(lambda *a: jnp.stack(a), ref["block_0"], ref["block_1"])}
    # scanned and rematerialised ("dots" policy) layers give the unrolled model's gradients
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 grads(dataclasses.replace(scanned, remat="dots"), stacked), ref)


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="num_kv_heads"):
        LMConfig(vocab_size=V, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="multiple of model.num_heads"):
        LMConfig(vocab_size=V, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="remat: Input should be 'none', 'full' or 'dots'"):
        settings.replace(LMConfig(vocab_size=V), remat="some")


# ----------------------------------------------------------------------------- sampling
def _draws(strategy, logits, n=4000):
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    return np.asarray(jax.vmap(lambda k: strategy(logits, k))(keys))  # [n, B]


def test_greedy_is_argmax():
    logits = jax.random.normal(jax.random.PRNGKey(1), (5, V))
    np.testing.assert_array_equal(np.asarray(Greedy()(logits, jax.random.PRNGKey(0))),
                                  np.argmax(np.asarray(logits), -1))
    assert isinstance(make_strategy(temperature=0.0), Greedy)


def test_top_k_and_top_p_stay_in_their_sets():
    logits = jax.random.normal(jax.random.PRNGKey(2), (3, V)) * 2
    lg = np.asarray(logits, np.float64)
    topk = {b: set(np.argsort(-lg[b])[:4]) for b in range(3)}
    probs = np.exp(lg - lg.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    nucleus = {}
    for b in range(3):  # smallest prefix of the sorted tokens with mass >= 0.6
        order = np.argsort(-probs[b])
        n = int(np.searchsorted(np.cumsum(probs[b][order]), 0.6) + 1)
        nucleus[b] = set(order[:n])
    for strategy, sets in [(Sample((TopK(4),)), topk), (Sample((TopP(0.6),)), nucleus),
                           (make_strategy(temperature=0.7, top_k=4, top_p=0.6), None)]:
        draws = _draws(strategy, logits)
        for b in range(3):
            allowed = sets[b] if sets is not None else topk[b] & _nucleus_at(lg[b] / 0.7, 0.6)
            seen = set(draws[:, b].tolist())
            assert seen <= allowed, (strategy, b, seen - allowed)
            assert len(seen) == len(allowed)  # and every allowed token does get drawn


def _nucleus_at(logits, p):
    """The top-p set of the top-4-filtered distribution."""
    keep = np.argsort(-logits)[:4]
    z = np.exp(logits[keep] - logits[keep].max())
    z /= z.sum()
    n = int(np.searchsorted(np.cumsum(z), p) + 1)
    return set(keep[:n])


def test_temperature_scales_logits_and_sampling_matches_softmax():
    logits = jnp.array([[0.0, 1.0, 2.0]])
    np.testing.assert_allclose(np.asarray(Temperature(0.5)(logits)), [[0.0, 2.0, 4.0]])
    freq = np.bincount(_draws(Sample(), logits, 8000)[:, 0], minlength=3) / 8000
    np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(logits[0])), atol=0.02)
    with pytest.raises(ValueError):
        TopP(0.0)


# ----------------------------------------------------------------------------- decoding
def test_generate_greedy_matches_argmax_of_full_forward():
    params, prompt = _params(TINY), _tokens(2, 3)
    out = _generate(TINY, params, prompt, jax.random.PRNGKey(0), Greedy(), max_new_tokens=6, stop_token=-1)
    assert out.shape == (2, 9)
    np.testing.assert_array_equal(np.asarray(out[:, :3]), np.asarray(prompt))
    logits = Transformer(TINY).apply({"params": params}, out[:, :-1])
    np.testing.assert_array_equal(np.asarray(out[:, 3:]), np.argmax(np.asarray(logits[:, 2:]), -1))


def test_stop_token_stops_and_pads():
    prompt = _tokens(2, 3, seed=5)
    for seed in range(3, 20):  # weights whose first row emits a token new to it after step one
        params = _params(TINY, seed=seed)
        free = np.asarray(_generate(TINY, params, prompt, jax.random.PRNGKey(0), Greedy(),
                                    max_new_tokens=6, stop_token=-1))
        j = next((j for j in range(4, 9) if free[0, j] not in free[0, 3:j]), None)
        if j is not None:
            break
    stop = int(free[0, j])
    pad = V - 1 if stop != V - 1 else 0
    out = np.asarray(_generate(TINY, params, prompt, jax.random.PRNGKey(0), Greedy(), max_new_tokens=6,
                               stop_token=stop, pad_token=pad))
    for row_free, row in zip(free, out):
        gen_free, gen = list(row_free[3:]), list(row[3:])
        if stop in gen_free:
            cut = gen_free.index(stop) + 1
            assert gen[:cut] == gen_free[:cut]
            assert all(t == pad for t in gen[cut:])
        else:
            assert gen == gen_free
    assert out[0, j] == stop and all(t == pad for t in out[0, j + 1:])


def test_bad_prompts_raise_value_error():
    params = _params(TINY)
    with pytest.raises(ValueError, match="exceeds the model context"):
        generate(TINY, params, _tokens(1, 10), jax.random.PRNGKey(0), Greedy(), max_new_tokens=7)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(TINY, params, jnp.array([[1, V]]), jax.random.PRNGKey(0), Greedy(), max_new_tokens=2)


# ----------------------------------------------------------------------------- family
class CharTok:
    vocab_size = V
    def encode(self, s):
        return [ord(ch) - ord("a") for ch in s]
    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


def _recipe():
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "lm_shakespeare_char.py")
    spec = importlib.util.spec_from_file_location("lm_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fam_cfg(c):
    return dataclasses.replace(c.model, vocab_size=V, max_len=c.model.max_len or 8)


def _smoke_family(**model):
    c = settings.update(_recipe().get_config("smoke"),
                        {"model.attention_kernel": "reference", "sample.prompt": "ab",
                         "train.steps": 30, **{f"model.{k}": v for k, v in model.items()}})
    return c, make_family(c, {"kind": "text", "vocab_size": V, "tokenizer": CharTok(), "seq_len": 8})


def test_recipe_variants_build():
    recipe = _recipe()
    for variant in recipe.VARIANTS:
        c = recipe.get_config(variant)
        assert c.family == "lm" and c.data.tokenizer == "char"
        dataclasses.replace(c.model, vocab_size=65, max_len=c.data.seq_len)
    cpu = recipe.get_config("cpu")
    assert (cpu.model.num_layers, cpu.model.num_heads, cpu.model.d_model, cpu.data.seq_len,
            cpu.data.batch_size, cpu.train.steps) == (4, 4, 128, 64, 12, 2000)
    with pytest.raises(ValueError, match="variant"):
        recipe.get_config("tpu_v9")


def test_train_step_lowers_loss_and_eval_masks_padding(tmp_path):
    c, fam = _smoke_family()
    batch = {"tokens": np.asarray(_tokens(8, 9, seed=4))}
    state = jax.jit(fam.init_state)(jax.random.PRNGKey(0), batch)
    step = jax.jit(fam.train_step)
    first = None
    for _ in range(30):
        state, metrics = step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first - 0.5

    mask = np.array([1, 1, 1, 0, 0, 1, 0, 1], np.float32)
    eval_step = jax.jit(fam.eval_step)
    sums = eval_step(state, {**batch, "mask": mask})
    assert float(sums["count"]) == 5 * 8
    other = np.where(mask[:, None] > 0, batch["tokens"], (batch["tokens"] + 3) % V)  # new padding
    np.testing.assert_allclose(float(eval_step(state, {"tokens": other, "mask": mask})["val_loss"]),
                               float(sums["val_loss"]), rtol=1e-6)
    losses = np.asarray(jax.jit(lambda p, t: token_losses(fam_cfg(c), p, t))(state.params, batch["tokens"]))
    np.testing.assert_allclose(float(sums["val_loss"]), losses[mask > 0].sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["bpc"]), float(sums["val_loss"]) / np.log(2), rtol=1e-6)

    samples = jax.jit(fam.sample, static_argnums=2)(state, jax.random.PRNGKey(1), 3)
    assert samples.shape == (3, 8) and np.all(np.asarray(samples[:, :2]) == [0, 1])
    files = fam.save_samples(samples, str(tmp_path / "s.txt"))
    assert open(files[0]).read().count("ab") >= 3


def test_param_specs_follow_logical_axes():
    from jaxgen.nn.partitioning import mesh_specs

    cfg = dataclasses.replace(TINY, scan_layers=True)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2))
    boxed = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0),
                           jnp.zeros((1, 4), jnp.int32))["params"]
    specs = mesh_specs(boxed, mesh)
    assert jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(_params(cfg))
    attn = specs["layers"]["attn"]
    assert attn["q"]["kernel"] == P(None, "fsdp", "tensor", None)  # [L, D, N, H]
    assert attn["kv"]["kernel"] == P(None, "fsdp", None, "tensor", None)  # [L, D, 2, K, H]
    assert attn["out"]["kernel"] == P(None, "tensor", None, "fsdp")  # [L, N, H, D]
    assert specs["layers"]["mlp"]["wi"]["kernel"] == P(None, "fsdp", None, "tensor")
    assert specs["layers"]["mlp"]["wo"]["kernel"] == P(None, "tensor", "fsdp")
    assert specs["embed"]["embedding"] == P(None, "fsdp")  # vocab 13 does not split over tensor=2
    c, fam = _smoke_family()
    abstract = jax.eval_shape(fam.init_state, jax.random.PRNGKey(0), {"tokens": np.zeros((2, 9), np.int32)})
    assert jax.tree.structure(fam.param_specs(abstract.params, mesh),
                              is_leaf=lambda x: isinstance(x, P)) \
        == jax.tree.structure(abstract.params)


def test_family_rejects_bad_sampling_config():
    with pytest.raises(ValueError, match="no room in the model context"):
        _smoke_family(max_len=2)


def test_sampling_three_contexts_long_slides_the_window():
    from jaxgen.models.lm import generate_long
    params, prompt = _params(TINY, seed=1), _tokens(2, 3, seed=2)
    long_gen = jax.jit(generate_long, static_argnums=(0, 4), static_argnames=("max_new_tokens",))
    n = 3 * TINY.max_len - 3
    out = np.asarray(long_gen(TINY, params, prompt, jax.random.PRNGKey(7), make_strategy(temperature=1.0),
                              max_new_tokens=n, stop_token=-1))
    assert out.shape == (2, 3 * TINY.max_len)
    ordinary = np.asarray(_generate(TINY, params, prompt, jax.random.PRNGKey(7), make_strategy(temperature=1.0),
                                    max_new_tokens=TINY.max_len - 3, stop_token=-1))
    np.testing.assert_array_equal(out[:, :TINY.max_len], ordinary)
    assert (out >= 0).all() and (out < V).all()
    # Greedy: a token after the first window is the argmax given the last half-context window.
    greedy = np.asarray(long_gen(TINY, params, prompt, jax.random.PRNGKey(0), Greedy(),
                                 max_new_tokens=n, stop_token=-1))
    keep, t = TINY.max_len // 2, TINY.max_len + 3
    window = greedy[:, t - keep:t]
    logits = Transformer(TINY).apply({"params": params}, jnp.asarray(window))
    np.testing.assert_array_equal(greedy[:, t], np.argmax(np.asarray(logits[:, -1]), -1))
