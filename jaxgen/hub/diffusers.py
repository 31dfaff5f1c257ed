"""diffusers checkpoints into jaxgen: ``UNet2DModel`` and ``UNet2DConditionModel`` weights and
DDPM/DDIM scheduler settings.

    from jaxgen.hub import diffusers as hub_diffusers
    pipe = hub_diffusers.load_diffusers("path/to/ddpm-pipeline")   # a local folder
    images = hub_diffusers.sample(pipe, jax.random.key(0), 16)        # [16, H, W, C] in [-1, 1]

A folder is either one model (``config.json`` + ``diffusion_pytorch_model.safetensors``) or a
pipeline (``model_index.json``, ``unet/``, ``scheduler/scheduler_config.json``), as
``save_pretrained`` writes them. jaxgen's :class:`jaxgen.nn.unet.UNet` is laid out like
``UNet2DModel``, and with ``cross_attention_dim`` like ``UNet2DConditionModel``
(tests/test_backbones.py counts and compares them), so each diffusers tensor
maps to one jaxgen parameter by a name and a transpose (NCHW conv kernels [O, I, kh, kw] to
[kh, kw, I, O]; q/k/v concatenated on jaxgen's fused [C, 3, heads, head_dim] kernel). The
scheduler's betas, prediction type, clipping, timestep spacing and variance map onto
:class:`jaxgen.models.diffusion.DiffusionConfig` and the ddpm/ddim samplers; a setting with no
jaxgen equivalent is refused in one line naming it.

Clipping differs in one case: with ``clip_sample`` jaxgen's DDIM builds both the x0 term and the
direction from the clipped x0 (diffusers' ``use_clipped_model_output=True``); diffusers' default
DDIM keeps the raw prediction in the direction. DDPM's clipping is the same in both.
``AutoencoderKL`` folders load into :class:`jaxgen.nn.autoencoder.AutoencoderKL`
(:func:`load_autoencoder`); the family that trains one comes with latent diffusion.
"""
from __future__ import annotations

import os
import re
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from jaxgen.errors import DataError, UsageError
from jaxgen.hub.safetensors_io import SafetensorsFiles
from jaxgen.hub.safetensors_io import read_json as _read_json

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# UNet2DModel settings jaxgen's UNet computes only at these values (diffusers' defaults)
FIXED = {"time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0,
         "act_fn": "silu", "resnet_time_scale_shift": "default", "add_attention": True,
         "center_input_sample": False, "class_embed_type": None, "downsample_type": "conv",
         "upsample_type": "conv", "downsample_padding": 1, "attn_norm_num_groups": None,
         "mid_block_scale_factor": 1, "time_embedding_dim": None, "num_train_timesteps": None}
DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}
# UNet2DConditionModel (Stable Diffusion's U-Net): its levels, and the settings jaxgen's
# cross-attention U-Net computes only at these values (diffusers' defaults)
CROSS_DOWN_BLOCKS = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}
CROSS_FIXED = {"mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False,
               "dual_cross_attention": False, "encoder_hid_dim": None,
               "addition_embed_type": None, "time_cond_proj_dim": None, "conv_in_kernel": 3,
               "conv_out_kernel": 3, "attention_type": "default", "num_class_embeds": None,
               "class_embeddings_concat": False, "cross_attention_norm": None,
               "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
               "timestep_post_act": None, "mid_block_only_cross_attention": None,
               "reverse_transformer_layers_per_block": None}
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


class DiffusersModel(NamedTuple):
    """What :func:`load_diffusers` returns. ``diffusion`` and ``sampler`` are None for a bare
    model folder (no scheduler); ``shape`` is one sample's [H, W, C]."""

    model: Any
    params: Any
    shape: tuple[int, int, int]
    diffusion: Any = None
    sampler: Any = None


def _refuse(field: str, value: Any, why: str) -> UsageError:
    return UsageError(f"config {field}={value!r}: {why}")


def _one(cfg: dict, key: str, default: Any) -> Any:
    """A per-block diffusers setting that jaxgen holds as one value: refused unless equal."""
    value = cfg.get(key)
    value = default if value is None else value
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise _refuse(key, value, "jaxgen's U-Net uses one value at every level")
        value = value[0]
    return value


def unet_config_from_diffusers(cfg: dict) -> tuple[Any, tuple[int, int, int]]:
    """(:class:`UNetConfig`, sample shape [H, W, C]) of a ``UNet2DModel`` or
    ``UNet2DConditionModel`` config dict (the latter: cross-attention to a context of width
    ``cross_attention_dim``, ``attention_head_dim`` read as the head count, as diffusers
    does for it)."""
    from jaxgen.nn.unet import UNetConfig

    kind = cfg.get("_class_name", "UNet2DModel")
    if kind not in UNET_CLASSES:
        raise _refuse("_class_name", kind, f"jaxgen imports {' and '.join(UNET_CLASSES)} as a "
                      "U-Net (AutoencoderKL through load_autoencoder)")
    cross = kind == "UNet2DConditionModel"
    fixed = {**FIXED, **CROSS_FIXED} if cross else FIXED
    if cross:
        fixed.pop("num_train_timesteps")
    for key, want in fixed.items():
        if key in cfg and cfg[key] != want:
            raise _refuse(key, cfg[key], f"jaxgen's UNet computes {key}={want!r} only")
    blocks = CROSS_DOWN_BLOCKS if cross else DOWN_BLOCKS
    down = list(cfg.get("down_block_types", ()))
    if any(b not in blocks for b in down):
        bad = next(b for b in down if b not in blocks)
        raise _refuse("down_block_types", bad, f"jaxgen's UNet levels are {', '.join(blocks)}")
    mirrored = [b.replace("Down", "Up") for b in reversed(down)]
    if list(cfg.get("up_block_types", ())) != mirrored:
        raise _refuse("up_block_types", cfg.get("up_block_types"), f"jaxgen's up path mirrors "
                      f"the down path: {mirrored}")
    size = cfg.get("sample_size") or 32
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if cross:  # attention_head_dim is the number of heads here (diffusers' legacy naming)
        heads = {"num_heads": int(_one(cfg, "num_attention_heads",
                                       _one(cfg, "attention_head_dim", 8))),
                 "cross_attention_dim": int(_one(cfg, "cross_attention_dim", 1280)),
                 "transformer_layers": int(_one(cfg, "transformer_layers_per_block", 1))}
    else:
        heads = {"head_dim": int(cfg.get("attention_head_dim") or 8),
                 "num_classes": int(cfg.get("num_class_embeds") or 0)}
    unet = UNetConfig(block_channels=tuple(cfg["block_out_channels"]),
                      layers_per_block=int(_one(cfg, "layers_per_block", 2)),
                      attention_levels=tuple(blocks[b] for b in down), mid_attention=True,
                      norm_groups=int(cfg.get("norm_num_groups", 32)),
                      norm_eps=float(cfg.get("norm_eps", 1e-5)),
                      out_channels=int(cfg.get("out_channels", 4 if cross else 3)),
                      zero_init=False, dropout=float(cfg.get("dropout", 0.0)), **heads)
    return unet, (int(size[0]), int(size[1]), int(cfg.get("in_channels", 4 if cross else 3)))


INNER = {"emb_proj": "time_emb_proj", "skip": "conv_shortcut", "norm": "group_norm",
         "out": "to_out.0"}
MIDDLE = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out",
          "mid_res0": "mid_block.resnets.0", "mid_res1": "mid_block.resnets.1",
          "mid_attn": "mid_block.attentions.0"}
BLOCK = re.compile(r"(down|up)(\d+)_([a-z]+?)(\d*)")


def _block_name(part: str, up_index) -> str:
    """``down1_res0`` -> ``down_blocks.1.resnets.0`` (``up_index`` maps an up level to
    diffusers' up_blocks index)."""
    if part in MIDDLE:
        return MIDDLE[part]
    way, lvl, kind, j = BLOCK.fullmatch(part).groups()
    block = int(lvl) if way == "down" else up_index(int(lvl))
    sub = {"res": f"resnets.{j}", "attn": f"attentions.{j}", "downsample": "downsamplers.0",
           "upsample": "upsamplers.0"}[kind]
    return f"{way}_blocks.{block}.{sub}"


# inside a SpatialTransformer (diffusers' Transformer2DModel and its BasicTransformerBlocks)
TRANSFORMER = {"norm": "norm", "to_out": "to_out.0", "wi": "net.0.proj", "wo": "net.2"}
TRANSFORMER_BLOCK = re.compile(r"block(\d+)")


def diffusers_name(path: tuple[str, ...], levels: int, cross: bool = False) -> str:
    """A jaxgen UNet parameter's module path -> the diffusers ``UNet2DModel`` (or, with
    ``cross``, ``UNet2DConditionModel``) state-dict name (without ".weight"/".bias")."""
    top, rest = path[0], list(path[1:])
    fixed = {"time_embed": "time_embedding", "label_embed": "class_embedding"}
    head = fixed.get(top) or _block_name(top, lambda lvl: levels - 1 - lvl)
    if cross and "_attn" in top:
        inner = [f"transformer_blocks.{m.group(1)}" if (m := TRANSFORMER_BLOCK.fullmatch(r))
                 else TRANSFORMER.get(r, r) for r in rest]
        return ".".join([head] + inner)
    return ".".join([head] + [INNER.get(r, r) for r in rest if r != "attn"])


def autoencoder_name(path: tuple[str, ...]) -> str:
    """A jaxgen :class:`AutoencoderKL` module path -> the diffusers ``AutoencoderKL`` name
    (its decoder's up blocks are numbered as diffusers' already)."""
    if path[0] in ("quant_conv", "post_quant_conv"):
        return path[0]
    head = _block_name(path[1], lambda b: b)
    return ".".join([path[0], head] + [INNER.get(r, r) for r in path[2:] if r != "attn"])


def diffusers_param(files: SafetensorsFiles, name: str, kind: str,
                    shape: tuple[int, ...]) -> np.ndarray:
    """The jaxgen parameter ``kind`` (kernel, bias, scale, embedding) of the diffusers module
    ``name`` from its tensors, float32 of ``shape``; DataError naming the tensor on a
    mismatch. A fused ``qkv`` is built from ``to_q``/``to_k``/``to_v``; convolution kernels go
    from [O, I, kh, kw] to [kh, kw, I, O], dense ones from [O, I] to [I, O]."""
    suffix = "bias" if kind == "bias" else "weight"
    if name.endswith("qkv"):
        base = name[:-3]
        sources = [f"{base}to_{n}.{suffix}" for n in "qkv"]
        w = np.concatenate([_get(files, s) for s in sources], axis=0)
        w = w.T if kind == "kernel" else w
    else:
        sources = [f"{name}.{suffix}"]
        w = _get(files, sources[0])
        if name.endswith("to_out.0") and kind == "kernel":  # [D, D] -> [heads, head_dim, D]
            w = w.T
        elif kind == "embedding":  # diffusers has no null-label row: a zero one is appended
            w = np.concatenate([w, np.zeros((1, w.shape[1]), w.dtype)])
        elif kind == "kernel":
            w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
    if w.size != int(np.prod(shape)):
        raise DataError(f"tensor shape mismatch: {', '.join(sources)} cannot make the "
                        f"{list(shape)} parameter the config describes")
    return np.asarray(w.reshape(shape), np.float32)


def _load(files: SafetensorsFiles, abstract: dict, name_of) -> dict:
    """Every parameter of ``abstract`` (a Flax params tree of shapes) from ``files``, each read
    and placed on the default device one at a time."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(abstract)
    return traverse_util.unflatten_dict({
        p: jax.device_put(diffusers_param(files, name_of(p[:-1]), p[-1], a.shape))
        for p, a in flat.items()})


def _get(files: SafetensorsFiles, name: str) -> np.ndarray:
    if name not in files:
        raise DataError(f"{files.path} has no tensor {name}")
    return files.get(name).astype(np.float32)


def load_unet(path: str, attention_kernel: str = "auto") -> tuple[Any, Any, tuple[int, int, int]]:
    """(UNet module, params, sample shape) of a ``UNet2DModel`` or ``UNet2DConditionModel``
    folder (the latter's module is called with ``context=`` the encoder states [B, S, Dc]);
    each tensor is read and placed on the default device one at a time."""
    import flax.linen as nn

    from jaxgen.nn.unet import UNet

    import dataclasses

    cfg, shape = unet_config_from_diffusers(_read_json(os.path.join(path, "config.json")))
    cfg = dataclasses.replace(cfg, attention_kernel=attention_kernel)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.exists(weights):
        raise DataError(f"{path} has no {WEIGHTS_FILE}")
    files = SafetensorsFiles(weights)
    model = UNet(cfg)
    x = jax.ShapeDtypeStruct((1, *shape), np.float32)
    t = jax.ShapeDtypeStruct((1,), np.float32)
    labels = None if not cfg.num_classes else jax.ShapeDtypeStruct((1,), np.int32)
    context = (jax.ShapeDtypeStruct((1, 1, cfg.cross_attention_dim), np.float32)
               if cfg.cross_attention_dim else None)
    abstract = nn.meta.unbox(jax.eval_shape(
        lambda x, t, y, c: model.init(jax.random.key(0), x, t, y, False, c), x, t, labels,
        context))
    cross = bool(cfg.cross_attention_dim)
    params = _load(files, abstract["params"], lambda p: diffusers_name(p, cfg.levels, cross))
    return model, {"params": params}, shape


def autoencoder_config_from_diffusers(cfg: dict) -> Any:
    """The :class:`AutoencoderConfig` of an ``AutoencoderKL`` config dict."""
    from jaxgen.nn.autoencoder import AutoencoderConfig

    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise _refuse("_class_name", cfg.get("_class_name"), "not an AutoencoderKL")
    if cfg.get("act_fn", "silu") != "silu":
        raise _refuse("act_fn", cfg.get("act_fn"), "jaxgen's autoencoder uses silu")
    down = list(cfg.get("down_block_types", ["DownEncoderBlock2D"]))
    up = list(cfg.get("up_block_types", ["UpDecoderBlock2D"]))
    if set(down) != {"DownEncoderBlock2D"}:
        raise _refuse("down_block_types", down, "jaxgen's encoder levels are DownEncoderBlock2D")
    if set(up) != {"UpDecoderBlock2D"} or len(up) != len(down):
        raise _refuse("up_block_types", up, "jaxgen's decoder mirrors the encoder with "
                      "UpDecoderBlock2D")
    if cfg.get("use_quant_conv", True) != cfg.get("use_post_quant_conv", True):
        raise _refuse("use_post_quant_conv", cfg.get("use_post_quant_conv"),
                      "jaxgen has both 1x1 latent convolutions or neither")
    return AutoencoderConfig(
        block_channels=tuple(cfg.get("block_out_channels", (64,))),
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg.get("latent_channels", 4)),
        in_channels=int(cfg.get("in_channels", 3)), out_channels=int(cfg.get("out_channels", 3)),
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        mid_attention=bool(cfg.get("mid_block_add_attention", True)),
        quant_conv=bool(cfg.get("use_quant_conv", True)),
        scaling_factor=float(cfg.get("scaling_factor", 0.18215)))


def load_autoencoder(path: str, attention_kernel: str = "auto") -> tuple[Any, Any]:
    """(AutoencoderKL module, params) of a diffusers ``AutoencoderKL`` folder (or a pipeline
    folder's ``vae/``)."""
    import dataclasses

    import flax.linen as nn

    from jaxgen.nn.autoencoder import AutoencoderKL

    if os.path.isdir(os.path.join(path, "vae")):
        path = os.path.join(path, "vae")
    cfg = dataclasses.replace(
        autoencoder_config_from_diffusers(_read_json(os.path.join(path, "config.json"))),
        attention_kernel=attention_kernel)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.exists(weights):
        raise DataError(f"{path} has no {WEIGHTS_FILE}")
    files = SafetensorsFiles(weights)
    model = AutoencoderKL(cfg)
    f = cfg.factor
    x = jax.ShapeDtypeStruct((1, 2 * f, 2 * f, cfg.in_channels), np.float32)
    abstract = nn.meta.unbox(jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x))
    return model, {"params": _load(files, abstract["params"], autoencoder_name)}


def scheduler_settings(cfg: dict) -> tuple[Any, Any]:
    """(DiffusionConfig, SamplerConfig) of a DDPMScheduler or DDIMScheduler config dict."""
    from jaxgen.models.diffusion.objectives import DiffusionConfig
    from jaxgen.models.diffusion.samplers import SamplerConfig

    kind = cfg.get("_class_name")
    if kind not in ("DDPMScheduler", "DDIMScheduler"):
        raise _refuse("_class_name", kind, "jaxgen maps DDPMScheduler and DDIMScheduler")
    for key, ok in (("thresholding", False), ("rescale_betas_zero_snr", False),
                    ("trained_betas", None), ("clip_sample_range", 1.0)):
        if cfg.get(key, ok) != ok:
            raise _refuse(key, cfg.get(key), f"jaxgen's samplers need {key}={ok!r}")
    if kind == "DDIMScheduler" and not cfg.get("set_alpha_to_one", True):
        raise _refuse("set_alpha_to_one", False, "jaxgen's last DDIM step goes to abar = 1")
    betas = cfg.get("beta_schedule", "linear")
    if betas not in BETAS:
        raise _refuse("beta_schedule", betas, f"jaxgen has {', '.join(BETAS)}")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise _refuse("prediction_type", prediction, f"jaxgen has {', '.join(PREDICTIONS)}")
    variance = cfg.get("variance_type", "fixed_small")
    if kind == "DDPMScheduler" and variance not in ("fixed_small", "fixed_large"):
        raise _refuse("variance_type", variance, "jaxgen's DDPM has fixed_small (posterior) "
                      "and fixed_large (beta)")
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing", "linspace"):
        raise _refuse("timestep_spacing", spacing, "jaxgen has leading, trailing, linspace")
    diffusion = DiffusionConfig(
        parameterization=PREDICTIONS[prediction], schedule=BETAS[betas],
        timesteps=int(cfg.get("num_train_timesteps", 1000)),
        beta_start=float(cfg.get("beta_start", 1e-4)), beta_end=float(cfg.get("beta_end", 0.02)),
        timestep_spacing=spacing, steps_offset=int(cfg.get("steps_offset", 0)),
        clip_x0=bool(cfg.get("clip_sample", True)), sample_sigma_max=0.0)
    # diffusers clips the x0 term only (DDPM's posterior mean; DDIM's step with its default
    # use_clipped_model_output=False keeps the raw eps as the direction): jaxgen's clip "x0".
    sampler = SamplerConfig(sampler="ddpm" if kind == "DDPMScheduler" else "ddim", steps=50,
                            ddpm_variance="posterior" if variance == "fixed_small" else "beta",
                            clip="x0" if cfg.get("clip_sample", True) else "none",
                            grid="schedule")
    return diffusion, sampler


def load_diffusers(path: str, attention_kernel: str = "auto") -> DiffusersModel:
    """A diffusers model or pipeline folder (see the module docstring)."""
    index = os.path.join(path, "model_index.json")
    if not os.path.exists(index):
        model, params, shape = load_unet(path, attention_kernel)
        return DiffusersModel(model, params, shape)
    parts = _read_json(index)
    unet = parts.get("unet")
    if not unet or unet[-1] != "UNet2DModel":
        raise _refuse("unet", unet, "jaxgen imports pipelines whose unet is a UNet2DModel")
    model, params, shape = load_unet(os.path.join(path, "unet"), attention_kernel)
    diffusion = sampler = None
    if parts.get("scheduler"):
        diffusion, sampler = scheduler_settings(
            _read_json(os.path.join(path, "scheduler", "scheduler_config.json")))
    return DiffusersModel(model, params, shape, diffusion, sampler)


def sample(pipe: DiffusersModel, rng: jax.Array, n: int, steps: Optional[int] = None,
           labels: Optional[jax.Array] = None, **sampler_options: Any) -> jax.Array:
    """``n`` samples [n, H, W, C] (the data range, [-1, 1]) with the pipeline's scheduler, as
    jaxgen's sampler over the scheduler's timesteps (``steps`` or 50)."""
    import dataclasses

    from jaxgen.models.diffusion import samplers

    if pipe.diffusion is None:
        raise UsageError("this folder has no scheduler; load a pipeline folder to sample")
    cfg = dataclasses.replace(pipe.sampler, **({"steps": steps} if steps else {}),
                              **sampler_options)
    fn = jax.jit(lambda key: samplers.sample_model(
        lambda x, t, y: pipe.model.apply(pipe.params, x, t, y), pipe.diffusion, cfg,
        (n, *pipe.shape), key, labels))
    return fn(rng)
