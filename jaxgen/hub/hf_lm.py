"""Hugging Face causal LMs (GPT-2, Llama) <-> jaxgen's Transformer: configs and tensor layouts.

GPT-2 (Radford et al. 2019; ``GPT2LMHeadModel``): learned positions, LayerNorm with bias, GELU
(tanh) MLP, biases everywhere, tied embeddings; its ``Conv1D`` weights are stored [in, out] and
q/k/v are one [D, 3D] ``c_attn``. Llama (Touvron et al. 2023; ``LlamaForCausalLM``): RoPE
(with Llama 3.1's or linear frequency scaling), grouped-query attention, SwiGLU, RMSNorm, no
biases, tied or untied head; ``nn.Linear`` weights stored [out, in]. Both map onto the
head-axis layouts of :class:`jaxgen.nn.attention.SelfAttention` (q [D, N, H], k/v together
[D, 2, K, H], out [N, H, D]) and :class:`jaxgen.nn.layers.MLP` (gate/up [D, 2, F]), so
loading never crosses a tensor-parallel shard: each jaxgen parameter is built from whole Hugging
Face tensors by a transpose, a reshape, a slice or a stack.

``LOAD[arch]`` says, for each jaxgen parameter (its path inside a block, or at the top), which
Hugging Face tensors it is made of and how; ``SAVE[arch]`` says the reverse, for each Hugging
Face tensor. Both are checked against each other and against ``transformers`` in
tests/test_hub.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from jaxgen.errors import UsageError
from jaxgen.models.lm.model import LMConfig

Path = tuple[str, ...]
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are the tanh GELU jaxgen computes


@dataclasses.dataclass(frozen=True)
class Load:
    """A jaxgen parameter built from Hugging Face tensors ``hf`` (names, ``{i}`` = layer)."""

    hf: tuple[str, ...]
    fn: Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class Save:
    """A Hugging Face tensor built from jaxgen parameters ``ours`` (paths)."""

    ours: tuple[Path, ...]
    fn: Callable[..., np.ndarray]


def _same(x):
    return x


def _refuse(field: str, value: Any, why: str) -> UsageError:
    return UsageError(f"config.json {field}={value!r}: {why}")


# ----------------------------------------------------------------------------- configs
def _rope(hf: dict) -> tuple[float, dict]:
    """(rope base, scaling dict) from transformers v5's ``rope_parameters`` or v4's
    ``rope_theta`` + ``rope_scaling``."""
    params = hf.get("rope_parameters") or {}
    base = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = dict(hf.get("rope_scaling") or {})
    scaling.update({k: v for k, v in params.items() if k != "rope_theta"})
    return base, scaling


def lm_config_from_hf(hf: dict) -> LMConfig:
    """The :class:`LMConfig` of a Hugging Face ``config.json`` (dict); UsageError naming the
    field when the checkpoint's architecture is not one jaxgen's LM computes exactly."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in GPT2_ACTIVATIONS:
            raise _refuse("activation_function", act, f"jaxgen's GPT-2 MLP is the tanh GELU "
                          f"({', '.join(GPT2_ACTIVATIONS)})")
        for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True),
                        ("add_cross_attention", False)):
            if bool(hf.get(key, ok)) != ok:
                raise _refuse(key, hf.get(key), f"jaxgen's GPT-2 needs {key}={ok}")
        d = int(hf["n_embd"])
        return LMConfig(vocab_size=int(hf["vocab_size"]), max_len=int(hf["n_positions"]),
                        num_layers=int(hf["n_layer"]), num_heads=int(hf["n_head"]), d_model=d,
                        mlp="gelu", mlp_hidden=int(hf.get("n_inner") or 4 * d), norm="layernorm",
                        positions="learned", tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                        use_bias=True, norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                        init_std=float(hf.get("initializer_range", 0.02)))
    if kind == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise _refuse("hidden_act", hf.get("hidden_act"), "Llama's MLP is SwiGLU (silu)")
        bias = bool(hf.get("attention_bias", False))
        if bool(hf.get("mlp_bias", False)) != bias:
            raise _refuse("mlp_bias", hf.get("mlp_bias"), "jaxgen's use_bias covers attention "
                          "and MLP together (attention_bias must equal mlp_bias)")
        d, n = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        if int(hf.get("head_dim") or d // n) * n != d:
            raise _refuse("head_dim", hf.get("head_dim"), f"jaxgen's heads are hidden_size / "
                          f"num_attention_heads = {d // n} wide")
        base, scaling = _rope(hf)
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise _refuse("rope_type", rope_type, "jaxgen computes default, linear and llama3 "
                          "rotary scaling")
        rope = {} if rope_type == "default" else dict(
            rope_scaling=rope_type, rope_factor=float(scaling.get("factor", 1.0)))
        if rope_type == "llama3":
            rope.update(rope_low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
                        rope_high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
                        rope_original_len=int(scaling["original_max_position_embeddings"]))
        return LMConfig(vocab_size=int(hf["vocab_size"]),
                        max_len=int(hf["max_position_embeddings"]),
                        num_layers=int(hf["num_hidden_layers"]), num_heads=n,
                        num_kv_heads=int(hf.get("num_key_value_heads") or n), d_model=d,
                        mlp="swiglu", mlp_hidden=int(hf["intermediate_size"]), norm="rmsnorm",
                        positions="rope", rope_base=base,
                        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                        use_bias=bias, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                        init_std=float(hf.get("initializer_range", 0.02)), **rope)
    raise _refuse("model_type", kind, f"not an architecture jaxgen imports ("
                  f"{', '.join(ARCHITECTURES)})")


def arch_of(c: LMConfig) -> str:
    """"gpt2" or "llama": the Hugging Face architecture that computes exactly what ``c`` does;
    UsageError when none does."""
    if (c.positions, c.norm, c.mlp) == ("learned", "layernorm", "gelu") and c.use_bias:
        return "gpt2"
    if (c.positions, c.norm, c.mlp) == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    raise UsageError(f"model.positions={c.positions}, model.norm={c.norm}, model.mlp={c.mlp}, "
                     f"model.use_bias={c.use_bias} has no Hugging Face architecture (GPT-2: "
                     "learned, layernorm, gelu, biases; Llama: rope, rmsnorm, swiglu)")


def hf_config_of(c: LMConfig, base: dict | None = None) -> dict:
    """The Hugging Face ``config.json`` (dict) of ``c``: ``base`` (the imported checkpoint's
    own config, whose token ids and other fields are kept) with the shape fields set."""
    arch = arch_of(c)
    out = dict(base or {})
    out.update(model_type=arch, architectures=[ARCHITECTURES[arch]], vocab_size=c.vocab_size,
               tie_word_embeddings=c.tie_embeddings, initializer_range=c.init_std,
               dtype="float32")
    out.pop("torch_dtype", None)
    if arch == "gpt2":
        out.update(n_embd=c.d_model, n_layer=c.num_layers, n_head=c.num_heads,
                   n_positions=c.max_len, n_inner=c.hidden, activation_function="gelu_new",
                   layer_norm_epsilon=c.norm_eps or 1e-5)
        return out
    rope: dict[str, Any] = {"rope_type": "default" if c.rope_scaling == "none" else c.rope_scaling,
                            "rope_theta": c.rope_base}
    if c.rope_scaling != "none":
        rope["factor"] = c.rope_factor
    if c.rope_scaling == "llama3":
        rope.update(low_freq_factor=c.rope_low_freq_factor,
                    high_freq_factor=c.rope_high_freq_factor,
                    original_max_position_embeddings=c.rope_original_len)
    for key in ("rope_scaling", "rope_theta"):
        out.pop(key, None)
    out.update(hidden_size=c.d_model, intermediate_size=c.hidden, num_hidden_layers=c.num_layers,
               num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads,
               head_dim=c.head_dim, max_position_embeddings=c.max_len, hidden_act="silu",
               rms_norm_eps=c.norm_eps or 1e-6, attention_bias=c.use_bias, mlp_bias=c.use_bias,
               rope_parameters=rope)
    return out


# ----------------------------------------------------------------------------- tensor layouts
def _gpt2(c: LMConfig) -> tuple[dict, dict, dict, dict, str]:
    d, n, h = c.d_model, c.num_heads, c.head_dim
    top_load = {("embed", "embedding"): Load(("wte.weight",), _same),
                ("pos_embed", "embedding"): Load(("wpe.weight",), _same),
                ("final_norm", "scale"): Load(("ln_f.weight",), _same),
                ("final_norm", "bias"): Load(("ln_f.bias",), _same)}
    block_load = {
        ("attn_norm", "scale"): Load(("ln_1.weight",), _same),
        ("attn_norm", "bias"): Load(("ln_1.bias",), _same),
        ("attn", "q", "kernel"): Load(("attn.c_attn.weight",), lambda w: w[:, :d].reshape(d, n, h)),
        ("attn", "q", "bias"): Load(("attn.c_attn.bias",), lambda b: b[:d].reshape(n, h)),
        ("attn", "kv", "kernel"): Load(("attn.c_attn.weight",),
                                       lambda w: w[:, d:].reshape(d, 2, n, h)),
        ("attn", "kv", "bias"): Load(("attn.c_attn.bias",), lambda b: b[d:].reshape(2, n, h)),
        ("attn", "out", "kernel"): Load(("attn.c_proj.weight",), lambda w: w.reshape(n, h, d)),
        ("attn", "out", "bias"): Load(("attn.c_proj.bias",), _same),
        ("mlp_norm", "scale"): Load(("ln_2.weight",), _same),
        ("mlp_norm", "bias"): Load(("ln_2.bias",), _same),
        ("mlp", "wi", "kernel"): Load(("mlp.c_fc.weight",), _same),
        ("mlp", "wi", "bias"): Load(("mlp.c_fc.bias",), _same),
        ("mlp", "wo", "kernel"): Load(("mlp.c_proj.weight",), _same),
        ("mlp", "wo", "bias"): Load(("mlp.c_proj.bias",), _same),
    }
    top_save = {hf: Save((path,), _same) for path, (hf,) in
                ((p, r.hf) for p, r in top_load.items())}
    block_save = {r.hf[0]: Save((p,), _same) for p, r in block_load.items()
                  if r.fn is _same}
    q, kv = ("attn", "q"), ("attn", "kv")
    block_save["attn.c_attn.weight"] = Save(
        (q + ("kernel",), kv + ("kernel",)),
        lambda wq, wkv: np.concatenate([wq.reshape(d, d), wkv.reshape(d, 2 * d)], axis=1))
    block_save["attn.c_attn.bias"] = Save(
        (q + ("bias",), kv + ("bias",)),
        lambda bq, bkv: np.concatenate([bq.reshape(d), bkv.reshape(2 * d)]))
    block_save["attn.c_proj.weight"] = Save((("attn", "out", "kernel"),),
                                            lambda w: w.reshape(d, d))
    if not c.tie_embeddings:
        top_load[("head", "kernel")] = Load(("lm_head.weight",), lambda w: w.T)
        top_save["lm_head.weight"] = Save((("head", "kernel"),), lambda w: w.T)
    return top_load, block_load, top_save, block_save, "h.{i}."


def _llama(c: LMConfig) -> tuple[dict, dict, dict, dict, str]:
    d, n, k, h = c.d_model, c.num_heads, c.kv_heads, c.head_dim
    a, m = "self_attn.", "mlp."
    top_load = {("embed", "embedding"): Load(("model.embed_tokens.weight",), _same),
                ("final_norm", "scale"): Load(("model.norm.weight",), _same)}
    top_save = {"model.embed_tokens.weight": Save((("embed", "embedding"),), _same),
                "model.norm.weight": Save((("final_norm", "scale"),), _same)}
    if not c.tie_embeddings:
        top_load[("head", "kernel")] = Load(("lm_head.weight",), lambda w: w.T)
        top_save["lm_head.weight"] = Save((("head", "kernel"),), lambda w: w.T)
    block_load = {
        ("attn_norm", "scale"): Load(("input_layernorm.weight",), _same),
        ("mlp_norm", "scale"): Load(("post_attention_layernorm.weight",), _same),
        ("attn", "q", "kernel"): Load((a + "q_proj.weight",), lambda w: w.T.reshape(d, n, h)),
        ("attn", "kv", "kernel"): Load((a + "k_proj.weight", a + "v_proj.weight"),
                                       lambda wk, wv: np.stack([wk.T.reshape(d, k, h),
                                                                wv.T.reshape(d, k, h)], axis=1)),
        ("attn", "out", "kernel"): Load((a + "o_proj.weight",), lambda w: w.T.reshape(n, h, d)),
        ("mlp", "wi", "kernel"): Load((m + "gate_proj.weight", m + "up_proj.weight"),
                                      lambda wg, wu: np.stack([wg.T, wu.T], axis=1)),
        ("mlp", "wo", "kernel"): Load((m + "down_proj.weight",), lambda w: w.T),
    }
    attn, mlp = ("attn",), ("mlp",)
    block_save = {
        "input_layernorm.weight": Save((("attn_norm", "scale"),), _same),
        "post_attention_layernorm.weight": Save((("mlp_norm", "scale"),), _same),
        a + "q_proj.weight": Save((attn + ("q", "kernel"),), lambda w: w.reshape(d, n * h).T),
        a + "k_proj.weight": Save((attn + ("kv", "kernel"),), lambda w: w[:, 0].reshape(d, k * h).T),
        a + "v_proj.weight": Save((attn + ("kv", "kernel"),), lambda w: w[:, 1].reshape(d, k * h).T),
        a + "o_proj.weight": Save((attn + ("out", "kernel"),), lambda w: w.reshape(n * h, d).T),
        m + "gate_proj.weight": Save((mlp + ("wi", "kernel"),), lambda w: w[:, 0].T),
        m + "up_proj.weight": Save((mlp + ("wi", "kernel"),), lambda w: w[:, 1].T),
        m + "down_proj.weight": Save((mlp + ("wo", "kernel"),), lambda w: w.T),
    }
    if c.use_bias:
        block_load.update({
            ("attn", "q", "bias"): Load((a + "q_proj.bias",), lambda b: b.reshape(n, h)),
            ("attn", "kv", "bias"): Load((a + "k_proj.bias", a + "v_proj.bias"),
                                         lambda bk, bv: np.stack([bk.reshape(k, h),
                                                                  bv.reshape(k, h)])),
            ("attn", "out", "bias"): Load((a + "o_proj.bias",), _same),
            ("mlp", "wi", "bias"): Load((m + "gate_proj.bias", m + "up_proj.bias"),
                                        lambda bg, bu: np.stack([bg, bu])),
            ("mlp", "wo", "bias"): Load((m + "down_proj.bias",), _same),
        })
        block_save.update({
            a + "q_proj.bias": Save((attn + ("q", "bias"),), lambda b: b.reshape(n * h)),
            a + "k_proj.bias": Save((attn + ("kv", "bias"),), lambda b: b[0].reshape(k * h)),
            a + "v_proj.bias": Save((attn + ("kv", "bias"),), lambda b: b[1].reshape(k * h)),
            a + "o_proj.bias": Save((attn + ("out", "bias"),), _same),
            m + "gate_proj.bias": Save((mlp + ("wi", "bias"),), lambda b: b[0]),
            m + "up_proj.bias": Save((mlp + ("wi", "bias"),), lambda b: b[1]),
            m + "down_proj.bias": Save((mlp + ("wo", "bias"),), _same),
        })
    return top_load, block_load, top_save, block_save, "model.layers.{i}."


LAYOUTS = {"gpt2": _gpt2, "llama": _llama}
# Buffers some checkpoints carry that are not weights (GPT-2's causal-mask buffers, rotary
# inverse frequencies): skipped on import.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def layout(c: LMConfig) -> tuple[dict, dict, dict, dict, str]:
    """(top load, block load, top save, block save, block prefix) of ``c``'s architecture."""
    return LAYOUTS[arch_of(c)](c)
