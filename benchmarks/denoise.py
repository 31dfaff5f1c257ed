"""Diffusion denoising benchmark: the U-Net's forward pass and whole sampler loops, against
diffusers' ``UNet2DModel`` and schedulers of the same shape, sampler and step count.

    python -m benchmarks denoise [--quick]        # or: jaxgen bench denoise

Rows (every jaxgen figure timed interleaved, round-robin, with its peer in the same process):
  - ``forward``: one network evaluation per batch size (jaxgen f32, diffusers f32; at the
    headline batch also bfloat16 compute for both, an extra row, never the headline);
  - ``sample``: each sampler's whole loop (ddpm, ddim, dpmpp_2m, euler, heun) in images/s, with
    its network evaluations (``num_network_evals``) and diffusers' scheduler with the same steps;
  - ``python_loop``: the headline sampler as a Python loop of jitted steps
    (``python_loop_sampler``) against the compiled ``lax.scan`` program;
  - ``latent``: latent against pixel diffusion at the recipes' shapes: ``ldm_mnist``'s backbone
    on ``autoencoder_mnist``'s latent plus that autoencoder's decoder, against
    ``diffusion_mnist``'s U-Net on the 28x28 digits, with the recipes' sampler and steps and the
    same batch (random weights: speed only; ``vs_pixel`` = pixel time / latent time).

``vs_peer`` = diffusers time / jaxgen time (> 1: jaxgen faster). FLOP/s come from XLA's cost
analysis of the unsharded forward at batch 1 (per image) times images times network
evaluations, over a matmul peak measured in the same run on the same devices. jaxgen shards the
batch over the host's CPU devices (:mod:`benchmarks.host`); torch runs with
``torch.set_num_threads(<available cores>)`` under ``torch.inference_mode()``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.common import WIDE_SPREAD, peak_matmul_gflops, spread_stats, time_interleaved
from jaxgen.models.diffusion import objectives, samplers
from jaxgen.nn.unet import UNet, UNetConfig
from jaxgen.train.host import available_cores

IMAGE = (28, 28, 1)
PEER = "diffusers"
# jaxgen sampler -> (diffusers scheduler class, its keyword arguments); same linear betas.
SCHEDULERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                 "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}


@dataclasses.dataclass(frozen=True)
class Options:
    """What one run measures."""
    unet: UNetConfig
    batches: tuple[int, ...]  # forward-pass batch sizes
    batch: int  # the sampling batch (the headline)
    steps: dict  # sampler -> steps
    headline: str = "ddim"
    repeats: int = 3  # timed calls per figure (the headline sampler and the forward rows)
    sampler_repeats: int = 2  # timed calls of the other samplers' whole loops
    bf16: bool = True
    torch_threads: int = 0  # 0: every available core


def options(quick: bool) -> Options:
    """The full run (the diffusers (64, 128, 128) shape, batch 16, DDIM 50) or a tiny one."""
    if quick:
        tiny = UNetConfig(block_channels=(8, 16), layers_per_block=1,
                          attention_levels=(False, True), norm_groups=4, zero_init=False)
        # one torch thread: a smoke run must not stall on a busy CI host (OpenMP barriers)
        return Options(tiny, (2,), 2, {s: 2 for s in samplers.SAMPLERS}, repeats=2,
                       sampler_repeats=1, bf16=False, torch_threads=1)
    return Options(UNetConfig(zero_init=False), (1, 4, 16, 64), 16,
                   {"ddim": 50, "ddpm": 10, "dpmpp_2m": 10, "euler": 10, "heun": 5})


# ---------------------------------------------------------------- jaxgen side

def _mesh_sharding(batch: int) -> NamedSharding:
    """Batch sharding over the largest number of host devices that divides ``batch``."""
    n = len(jax.devices())
    d = max(k for k in range(1, n + 1) if batch % k == 0)
    return NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:d]), ("data",)), P("data"))


def init_params(cfg: UNetConfig, seed: int = 0):
    x, t = jnp.zeros((1, *IMAGE)), jnp.zeros((1,))
    return UNet(cfg).init(jax.random.key(seed), x, t)


def flops_per_image(cfg: UNetConfig, params) -> float:
    """XLA's cost-analysis FLOPs of the unsharded forward pass at batch 1."""
    model = UNet(cfg)
    x, t = jnp.zeros((1, *IMAGE)), jnp.zeros((1,))
    compiled = jax.jit(lambda p, x, t: model.apply(p, x, t)).lower(params, x, t).compile()
    return float(compiled.cost_analysis()["flops"])


def jax_forward(cfg: UNetConfig, params, batch: int):
    """(compile seconds, zero-argument blocking call) of the sharded forward at ``batch``."""
    model, sh = UNet(cfg), _mesh_sharding(batch)
    rep = NamedSharding(sh.mesh, P())
    p = jax.device_put(params, rep)
    x = jax.device_put(jax.random.normal(jax.random.key(1), (batch, *IMAGE)), sh)
    t = jax.device_put(jnp.full((batch,), 500.0), sh)
    start = time.perf_counter()
    fn = jax.jit(lambda p, x, t: model.apply(p, x, t), in_shardings=(rep, sh, sh),
                 out_shardings=sh).lower(p, x, t).compile()
    jax.block_until_ready(fn(p, x, t))
    return time.perf_counter() - start, lambda: jax.block_until_ready(fn(p, x, t))


def _denoiser(cfg: UNetConfig, params, sh: NamedSharding) -> objectives.DenoiseFn:
    """The eps-model x0-predictor on the linear 1000-step schedule (diffusers' default betas),
    its input constrained to the batch sharding."""
    model = UNet(cfg)

    def model_fn(x, t, labels):
        x = jax.lax.with_sharding_constraint(x, sh)
        return model.apply(params, x, t, labels)

    return objectives.denoiser(model_fn, objectives.DiffusionConfig(schedule="linear"))


def jax_sampler(cfg: UNetConfig, params, scfg: samplers.SamplerConfig, batch: int,
                python_loop: bool = False):
    """(compile seconds, blocking call) of a whole sampling loop: one compiled ``lax.scan``
    program, or with ``python_loop`` a Python loop of jitted steps."""
    sh = _mesh_sharding(batch)
    p = jax.device_put(params, NamedSharding(sh.mesh, P()))
    sigmas = objectives.sampling_sigmas(objectives.DiffusionConfig(schedule="linear"), scfg.steps)
    shape, rng = (batch, *IMAGE), jax.random.key(2)
    start = time.perf_counter()
    if python_loop:
        run = samplers.python_loop_sampler(_denoiser(cfg, p, sh), shape, scfg, sigmas)
        jax.block_until_ready(run(rng))
        return time.perf_counter() - start, lambda: jax.block_until_ready(run(rng))

    def sample(p, rng):
        return samplers.sample(_denoiser(cfg, p, sh), shape, rng, scfg, sigmas)

    fn = jax.jit(sample, out_shardings=sh).lower(p, rng).compile()
    jax.block_until_ready(fn(p, rng))
    return time.perf_counter() - start, lambda: jax.block_until_ready(fn(p, rng))


# ---------------------------------------------------------------- diffusers side

def peer_unavailable_reason() -> str | None:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        return f"peer {e.name or 'diffusers'} not installed; pip install -e .[peers]"
    return None


def diffusers_model(cfg: UNetConfig, dtype_name: str = "float32", threads: int = 0,
                    image: tuple[int, int, int] = IMAGE, num_classes: int = 0):
    """diffusers' ``UNet2DModel`` with the shape of ``cfg`` (attention, scale-shift and a class
    embedding of ``num_classes`` where cfg has them) for images of ``image``; torch runs
    ``threads`` intra-op threads (0: every available core)."""
    import diffusers
    import torch
    torch.set_num_threads(threads or available_cores())
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=image[0], in_channels=image[2], out_channels=image[2],
        block_out_channels=cfg.block_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=cfg.norm_groups,
        attention_head_dim=cfg.head_dim, add_attention=cfg.mid_attention,
        num_class_embeds=num_classes or None,
        resnet_time_scale_shift="scale_shift" if cfg.scale_shift else "default")
    if dtype_name != "float32":
        model = model.to(getattr(torch, dtype_name))
    return model.eval()


def torch_forward(model, batch: int):
    import torch
    dtype = next(model.parameters()).dtype
    x = torch.randn(batch, IMAGE[2], *IMAGE[:2], generator=torch.Generator().manual_seed(1))
    x, t = x.to(dtype), torch.full((batch,), 500)

    def call():
        with torch.inference_mode():
            return model(x, t).sample
    return call


def diffusers_sampler(model, sampler: str, steps: int, batch: int,
                      beta_schedule: str = "linear", num_classes: int = 0,
                      image: tuple[int, int, int] = IMAGE):
    """(blocking call, network evaluations) of diffusers' loop with the mapped scheduler on
    ``beta_schedule``; a class-conditional model gets the classes cycled."""
    import diffusers
    import torch
    name, kwargs = SCHEDULERS[sampler]
    scheduler = getattr(diffusers, name)(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                         **kwargs)
    scheduler.set_timesteps(steps)
    evals = len(scheduler.timesteps)
    noise = torch.randn(batch, image[2], *image[:2], generator=torch.Generator().manual_seed(2))
    labels = torch.arange(batch) % num_classes if num_classes else None

    def call():
        scheduler.set_timesteps(steps)
        x = noise * scheduler.init_noise_sigma
        with torch.inference_mode():
            for t in scheduler.timesteps:
                eps = model(scheduler.scale_model_input(x, t), t, class_labels=labels).sample
                x = scheduler.step(eps, t, x).prev_sample
        return x
    return call, evals


# ---------------------------------------------------------------- rows

def _timed(times: list[float] | None) -> dict:
    if not times:
        return {}
    s = spread_stats(times)
    return {"median_ms": 1e3 * s["median_s"], "q1_ms": 1e3 * s["q1_s"],
            "q3_ms": 1e3 * s["q3_s"], "min_ms": 1e3 * s["min_s"], "max_ms": 1e3 * s["max_s"],
            "spread": s["spread"], "repeats": len(times),
            "times_ms": [1e3 * t for t in times]}


def _row(base: dict, impl: str, times, images: int, flops: float | None, peak: float,
         compile_s: float | None = None, first_s: float | None = None) -> dict:
    row = {**base, "impl": impl, "compile_s": compile_s, "first_call_s": first_s, **_timed(times)}
    if "median_ms" in row:
        seconds = row["median_ms"] / 1e3
        row["images_per_s"] = images / seconds
        if flops:
            row["gflops"] = flops / seconds / 1e9
            row["peak_frac"] = row["gflops"] / peak if peak else None
        print(f"  {impl} {base['kind']} {base.get('model') or ''} {base.get('sampler') or ''} "
              f"batch {base['batch']} "
              f"{base['dtype']}: {row['median_ms']:.1f} ms, {row['images_per_s']:.2f} images/s",
              file=sys.stderr, flush=True)
        if row["spread"] > WIDE_SPREAD:
            print(f"warning: wide spread {row['spread']:.2f} for {impl} {base}",
                  file=sys.stderr, flush=True)
    return row


def _ratios(rows: list[dict]) -> None:
    """vs_peer = diffusers median / jaxgen median on each jaxgen row whose pair was timed."""
    peers = {(r["kind"], r["batch"], r.get("sampler"), r["dtype"]): r for r in rows
             if r["impl"] == PEER and "median_ms" in r}
    for r in rows:
        peer = peers.get((r["kind"] if r["kind"] != "python_loop" else "sample", r["batch"],
                          r.get("sampler"), r["dtype"]))
        if r["impl"] != PEER and peer and "median_ms" in r:
            r["vs_peer"] = peer["median_ms"] / r["median_ms"]


def _measure(calls: dict, repeats: int) -> dict[str, list[float]]:
    return time_interleaved(calls, repeats) if calls else {}


def forward_rows(opts: Options, params, per_image: float, peak: float, reason: str | None
                 ) -> list[dict]:
    """jaxgen and diffusers forward passes per batch size (and bfloat16 at the headline)."""
    rows = []
    cases = [(b, "float32") for b in opts.batches]
    cases += [(opts.batch, "bfloat16")] if opts.bf16 else []
    torch_models = {}
    for b, dtype in cases:
        cfg = dataclasses.replace(opts.unet, dtype=jnp.dtype(dtype))
        compile_s, call = jax_forward(cfg, params, b)
        calls = {"jaxgen": call}
        if not reason:
            if dtype not in torch_models:
                torch_models[dtype] = diffusers_model(opts.unet, dtype, opts.torch_threads)
            calls[PEER] = torch_forward(torch_models[dtype], b)
        times = _measure(calls, opts.repeats)
        base = {"kind": "forward", "batch": b, "dtype": dtype, "sampler": None, "steps": None,
                "evals": 1}
        rows.append(_row(base, "jaxgen", times["jaxgen"], b, per_image * b, peak, compile_s))
        rows.append(_row(base, PEER, times.get(PEER), b, per_image * b, peak)
                    if not reason else {**base, "impl": PEER, "skipped": reason})
        print(f"  forward batch {b} {dtype} done", file=sys.stderr, flush=True)
    return rows


def sampler_rows(opts: Options, params, per_image: float, peak: float, reason: str | None
                 ) -> list[dict]:
    """Each sampler's whole loop, jaxgen against diffusers; the headline also as a Python loop."""
    rows, b = [], opts.batch
    model = None if reason else diffusers_model(opts.unet, threads=opts.torch_threads)
    order = [opts.headline] + [s for s in samplers.SAMPLERS if s != opts.headline]
    for name in order:
        scfg = samplers.SamplerConfig(sampler=name, steps=opts.steps[name])
        evals = samplers.num_network_evals(scfg)
        compile_s, call = jax_sampler(opts.unet, params, scfg, b)
        calls, compiles = {"jaxgen": call}, {"jaxgen": compile_s}
        if name == opts.headline:
            compiles["python_loop"], calls["python_loop"] = jax_sampler(
                opts.unet, params, scfg, b, python_loop=True)
        peer_evals = None
        if model is not None:
            calls[PEER], peer_evals = diffusers_sampler(model, name, scfg.steps, b)
        times = _measure(calls, opts.repeats if name == opts.headline else opts.sampler_repeats)
        base = {"batch": b, "dtype": "float32", "sampler": name, "steps": scfg.steps}
        for impl in calls:
            kind = "python_loop" if impl == "python_loop" else "sample"
            n = peer_evals if impl == PEER else evals
            rows.append(_row({**base, "kind": kind, "evals": n},
                             "jaxgen" if impl == "python_loop" else impl, times[impl], b,
                             per_image * b * n, peak, compiles.get(impl)))
        if reason:
            rows.append({**base, "kind": "sample", "evals": None, "impl": PEER,
                         "skipped": reason})
        print(f"  sampler {name} done", file=sys.stderr, flush=True)
    for r in rows:
        if r["kind"] == "python_loop" and "median_ms" in r:
            scan = next(s for s in rows if s["kind"] == "sample" and s["impl"] == "jaxgen"
                        and s["sampler"] == r["sampler"])
            r["vs_scan"] = r["median_ms"] / scan["median_ms"]
    return rows


def _recipe_sampler(spec: str, quick: bool, overrides: tuple[str, ...] = ()):
    """(blocking call, config) of the trainer's own sampling path (``Run.draw``: the family's
    sampler, sharded over the batch) for recipe ``spec`` at random weights, no data read."""
    from jaxgen import experiments, models
    from jaxgen.data.abstract import abstract_datasets
    from jaxgen.train import loop

    config = experiments.apply_overrides(
        experiments.get_config(spec + (":smoke" if quick else "")), list(overrides))
    run = loop.build(config, datasets=abstract_datasets(config), family=models.make_family)
    state = loop.init_state(run, next(iter(run.datasets.make_eval())))
    options, b, key = run.family.sample_options(), LATENT_BATCH[quick], jax.random.key(1)
    jax.block_until_ready(run.draw(state, key, b, options))  # compiles
    return (lambda: jax.block_until_ready(run.draw(state, key, b, options))), config


LATENT_BATCH = {False: 100, True: 4}


def latent_rows(quick: bool, repeats: int) -> list[dict]:
    """The ``latent`` rows (see the module docstring), timed interleaved; the latent model's
    autoencoder is an untrained ``autoencoder_mnist`` of the same variant (``recipe:``)."""
    ae = "autoencoder_mnist" + (":smoke" if quick else "")
    pixel, pc = _recipe_sampler("diffusion_mnist", quick)
    latent, lc = _recipe_sampler("ldm_mnist", quick, (f"latent.autoencoder=recipe:{ae}",))
    times = _measure({"pixel": pixel, "latent": latent}, repeats)
    b, rows = LATENT_BATCH[quick], []
    for model, c in (("pixel", pc), ("latent", lc)):
        base = {"kind": "latent", "model": model, "batch": b, "dtype": str(c.model.dtype),
                "sampler": c.sample.sampler, "steps": c.sample.steps,
                "evals": samplers.num_network_evals(c.sample)}
        rows.append(_row(base, "jaxgen", times[model], b, None, 0.0))
    rows[1]["vs_pixel"] = rows[0]["median_ms"] / rows[1]["median_ms"]
    return rows


def measure_peak(quick: bool) -> float:
    """f32 matmul GFLOP/s on all host devices at once."""
    devices = len(jax.devices())
    sharding = None
    if devices > 1:
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
        sharding = NamedSharding(mesh, P("data"))
    return peak_matmul_gflops(512 if quick else 2048, repeats=3 if quick else 5,
                              sharding=sharding)


TABLE_COLUMNS = [
    ["kind", "kind"], ["impl", "impl"], ["sampler", "sampler"], ["steps", "steps"],
    ["evals", "net evals"], ["batch", "batch"], ["dtype", "dtype"], ["median_ms", "median ms"],
    ["q1_ms", "q1 ms"], ["q3_ms", "q3 ms"], ["spread", "(max-min)/med"],
    ["compile_s", "compile s"], ["images_per_s", "images/s"], ["gflops", "GFLOP/s"],
    ["peak_frac", "of peak"],
    ["vs_peer", "diffusers/jaxgen time (>1: jaxgen faster)"],
    ["vs_scan", "python loop/scan time"], ["model", "model"],
    ["vs_pixel", "pixel/latent time (>1: latent faster)"]]

PLOT = {"panels": [
    {"title": "forward pass, float32", "x": "batch", "y": "images_per_s", "series": "impl",
     "where": {"kind": "forward", "dtype": "float32"}, "xlabel": "batch",
     "ylabel": "images/s (one network evaluation)", "logx": True, "logy": True},
    {"title": "sampling loops (x = network evaluations)", "x": "evals", "y": "images_per_s",
     "series": "impl", "where": {"kind": "sample", "dtype": "float32"},
     "xlabel": "network evaluations per image", "ylabel": "images/s", "logy": True}]}


def summarize(rows: list[dict], opts: Options) -> dict:
    """The speed target's figures: headline sampler images/s of both and their ratio."""
    def find(kind, impl, **kw):
        return next((r for r in rows if r["kind"] == kind and r["impl"] == impl
                     and all(r.get(k) == v for k, v in kw.items()) and "median_ms" in r), None)
    head = {"sampler": opts.headline, "batch": opts.batch, "dtype": "float32"}
    ours, theirs = find("sample", "jaxgen", **head), find("sample", PEER, **head)
    fwd = find("forward", "jaxgen", batch=opts.batch, dtype="float32")
    fwd_peer = find("forward", PEER, batch=opts.batch, dtype="float32")
    loop = find("python_loop", "jaxgen", **head)
    return {
        "headline": f"{opts.headline} {opts.steps[opts.headline]} steps, batch {opts.batch}, f32",
        "jaxgen_images_per_s": ours and ours["images_per_s"],
        "diffusers_images_per_s": theirs and theirs["images_per_s"],
        "sample_ratio": ours and ours.get("vs_peer"),
        "forward_ms": fwd and fwd["median_ms"],
        "diffusers_forward_ms": fwd_peer and fwd_peer["median_ms"],
        "forward_ratio": fwd and fwd.get("vs_peer"),
        "python_loop_over_scan": loop and loop.get("vs_scan"),
        "target_2x_met": bool(ours and ours.get("vs_peer") and ours["vs_peer"] >= 2.0)}


def run(quick: bool, out: str | None = None, quality: bool = False, **quality_options) -> dict:
    """The benchmark (contract of :mod:`benchmarks.suite`); ``quality``: the quality-vs-speed
    benchmark of :mod:`benchmarks.denoise_quality` with ``quality_options`` instead (``out``,
    the output directory, is not used)."""
    del out
    if quality:
        from benchmarks import denoise_quality
        return denoise_quality.run(quick, **quality_options)
    opts = options(quick)
    load = os.getloadavg()
    reason = peer_unavailable_reason()
    peak = measure_peak(quick)
    print(f"matmul peak {peak:.1f} GFLOP/s on {len(jax.devices())} device(s); load {load}",
          file=sys.stderr, flush=True)
    params = init_params(opts.unet)
    per_image = flops_per_image(opts.unet, params)
    rows = forward_rows(opts, params, per_image, peak, reason)
    rows += sampler_rows(opts, params, per_image, peak, reason)
    rows += latent_rows(quick, opts.repeats)
    _ratios(rows)
    summary = summarize(rows, opts)
    summary["latent_vs_pixel"] = rows[-1]["vs_pixel"]
    summary["loadavg_end"] = os.getloadavg()
    threads = None
    if not reason:
        import torch
        threads = torch.get_num_threads()
    notes = [f"matmul peak (f32, all {len(jax.devices())} devices, this run): {peak:.1f} GFLOP/s",
             f"1-minute load average at start {load[0]:.2f}, at end {summary['loadavg_end'][0]:.2f}",
             f"forward FLOPs per image (XLA cost analysis, batch 1): {per_image / 1e9:.3f} G",
             "vs peer = diffusers time / jaxgen time: > 1 means jaxgen is faster",
             (f"diffusers: torch.set_num_threads({threads}), torch.inference_mode(); "
              f"jaxgen: batch sharded over {len(jax.devices())} device(s) "
              "(--cpu-devices 0: one single-threaded device per core)"),
             (f"headline {summary['headline']}: jaxgen {_fmt(summary['jaxgen_images_per_s'])} "
              f"images/s, diffusers {_fmt(summary['diffusers_images_per_s'])} images/s, ratio "
              f"{_fmt(summary['sample_ratio'])} (target >= 2: "
              f"{'met' if summary['target_2x_met'] else 'not met'})"),
             (f"latent ({rows[-1]['sampler']} {rows[-1]['steps']} steps, batch "
              f"{rows[-1]['batch']}, decoder included): {_fmt(summary['latent_vs_pixel'])}x "
              "the pixel model's images/s (ldm_mnist vs diffusion_mnist shapes, random weights)")]
    return {"rows": rows, "table_columns": TABLE_COLUMNS, "plot": PLOT, "notes": notes,
            "summary": summary,
            "meta": {"peak_matmul_gflops": peak, "loadavg_start": load, "torch_threads": threads,
                     "flops_per_image": per_image, "devices": len(jax.devices()),
                     "unet": {k: str(v) for k, v in dataclasses.asdict(opts.unet).items()}}}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"
