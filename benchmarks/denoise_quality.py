"""Sample quality against speed: every sampler of a trained diffusion workdir at 5-100 network
evaluations, each point scored by fd_lenet, with diffusers' loops as the speed peers.

    python -m benchmarks denoise --quality --workdir workdirs/diffusion_mnist[,workdirs/ldm_mnist]
        [--samples 1000] [--seeds 3] [--points ddpm:50,dpmpp_2m:10,...] [--peer-batch 100]
    # or: jaxgen bench denoise --quality --workdir ...

Several comma-separated workdirs (e.g. a pixel-space and a latent model) are scored on the same
points; the baseline, the best point and the peers' U-Net shape are the first workdir's, and the
speed rows time the first workdir's baseline and best point on every workdir side by side
(``vs_first``: the first workdir's time / this one's).

For each point (sampler, steps) and each seed 0..S-1 it draws ``--samples`` images with the
workdir's own sampling path (``Run.sample``: EMA weights, classes cycled, the recipe's
``sample.*`` settings with the point's sampler and steps) and scores them with the shipped
feature network (:func:`jaxgen.eval.quality.sample_metrics`). A row reports fd_lenet (mean and
standard deviation over the seeds, and each seed), its ratio to the baseline's (the first
point; DDPM-50 by default), the network
evaluations (``num_network_evals``) and images/s: samples / the fastest seed's wall time (the
first seed also compiles). The floor (real training digits) is scored at the same count.

Speed at equal quality: the fastest point whose mean fd_lenet is at most the baseline's is
"best"; it, jaxgen's baseline, diffusers' DDIM with the baseline's steps (DDIM-50) and diffusers'
DPM-Solver++(2M) at the best point's steps (20 if the best is another sampler) are then timed
side by side, round-robin in one process, at ``--peer-batch`` images on the workdir's U-Net
shape (diffusers' ``UNet2DModel`` with the same widths, attention, class embedding and
scale-shift, on the same cosine betas; random weights: speed only). ``vs_peer`` = diffusers'
DDIM time / the row's time at that batch.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np

from jaxgen.nn.unet import UNetConfig

DEFAULT_POINTS = ("ddpm:50", "ddpm:20", "ddim:100", "ddim:50", "ddim:20", "ddim:10",
                  "dpmpp_2m:20", "dpmpp_2m:15", "dpmpp_2m:10", "dpmpp_2m:5", "heun:10", "heun:5",
                  "euler:20")
QUICK_POINTS = ("ddpm:4", "ddim:4", "dpmpp_2m:3")
TABLE_COLUMNS = ["kind", "impl", "model", "point", "nfe", "grid", "clip", ["fd_mean", "fd_lenet"],
                 ["fd_std", "fd std"], ["fd_vs_baseline", "fd / baseline"], "images_per_s",
                 ["vs_peer", "vs diffusers DDIM"], ["vs_first", "vs first workdir"], "seeds",
                 "samples"]
PLOT = {"panels": [{"x": "images_per_s", "y": "fd_mean", "series": "sampler",
                    "where": {"kind": "quality"}, "title": "fd_lenet against images/s",
                    "xlabel": "images/s (fastest seed)", "ylabel": "fd_lenet (mean over seeds)",
                    "logx": True, "logy": True}]}


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_points(text: str | None, quick: bool) -> tuple[tuple[str, dict], ...]:
    """Comma-separated ``sampler:steps[:key=value...]`` items (extra ``sample.*`` settings, e.g.
    ``dpmpp_2m:20:grid=schedule``) as (label, sample options); ValueError, one line, for a bad
    item."""
    from jaxgen.models.diffusion.samplers import SAMPLERS
    from jaxgen.models.diffusion.settings import DiffusionSample

    items = [t.strip() for t in (text.split(",") if text else
                                 (QUICK_POINTS if quick else DEFAULT_POINTS)) if t.strip()]
    points = []
    for item in items:
        name, steps, *extra = item.split(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1 or not all(
                "=" in e for e in extra):
            raise ValueError(f"--points takes sampler:steps[:key=value...] items with a sampler "
                             f"of {', '.join(SAMPLERS)} and steps >= 1, got {item!r}")
        options = {"sampler": name, "steps": int(steps)}
        options.update((k, _value(v)) for k, v in (e.split("=", 1) for e in extra))
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(DiffusionSample)})
        if unknown:
            raise ValueError(f"--points item {item!r}: unknown sample setting(s) "
                             f"{', '.join(unknown)}")
        points.append((item, options))
    return tuple(points)


def _draw(run: Any, n: int, seed: int, opts: Any) -> np.ndarray:
    from jaxgen.train.evaluate import draw_samples
    import jax

    batch = run.config.eval.sample_batch
    return draw_samples(run.built, run.state, jax.random.PRNGKey(seed), n, opts, batch)


def quality_rows(run: Any, points, samples: int, seeds: int, model: str = "") -> list[dict]:
    """One row per point of the workdir ``model`` names: fd_lenet per seed and images/s (see
    the module docstring)."""
    from jaxgen.eval import quality
    from jaxgen.models.diffusion.samplers import num_network_evals

    rows = []
    for label, options in points:
        opts = run.family.sample_options(**options)
        name, steps = opts.sampler, opts.steps
        fds, secs = [], []
        for seed in range(seeds):
            start = time.perf_counter()
            images = _draw(run, samples, seed, opts)
            secs.append(time.perf_counter() - start)
            fds.append(float(quality.sample_metrics(images)["fd_lenet"]))
        fastest = min(secs[1:] or secs)
        row = {"kind": "quality", "impl": "jaxgen", "model": model, "point": label,
               "options": options,
               "sampler": name, "steps": steps,
               "nfe": num_network_evals(opts), "grid": opts.grid_kind,
               "clip": opts.clip_mode if run.family.objective.clip_x0 else "none",
               "fd_mean": float(np.mean(fds)), "fd_std": float(np.std(fds)),
               "fd_per_seed": fds, "seconds_per_seed": secs, "images_per_s": samples / fastest,
               "seeds": seeds, "samples": samples}
        print(f"{model} {label}: fd_lenet {row['fd_mean']:.2f} +- {row['fd_std']:.2f} "
              f"({', '.join(f'{f:.2f}' for f in fds)}), {row['images_per_s']:.1f} images/s",
              file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def best_point(rows: list[dict]) -> dict:
    """The fastest row whose mean fd_lenet is at most the baseline's (the first row's)."""
    return max((r for r in rows if r["fd_mean"] <= rows[0]["fd_mean"]),
               key=lambda r: r["images_per_s"])


def speed_rows(runs: list[tuple[str, Any]], baseline: dict, best: dict, batch: int,
               repeats: int) -> list[dict]:
    """The first workdir's best point and baseline, on every workdir of ``runs`` ((model, Run)
    pairs), against diffusers' DDIM (the baseline's steps) and DPM-Solver++ on the first
    workdir's U-Net shape, at ``batch`` images, interleaved in this process."""
    from benchmarks.common import time_interleaved
    from benchmarks.denoise import diffusers_model, diffusers_sampler, peer_unavailable_reason
    from jaxgen.models.diffusion.samplers import num_network_evals

    calls, meta = {}, {}
    for model, r in runs:
        for row in [baseline] + ([best] if best is not baseline else []):
            opts = r.family.sample_options(**row["options"])
            key = f"{model} {row['point']}"
            calls[key] = (lambda o=opts, r=r: _draw(r, batch, 0, o))
            meta[key] = ("jaxgen", model, row["point"], opts.sampler, opts.steps,
                         num_network_evals(opts))
    run = runs[0][1]
    reason = peer_unavailable_reason()
    if reason is None and not isinstance(run.family.backbone, UNetConfig):
        reason = "the peer is diffusers' UNet2DModel; this workdir's backbone is a DiT"
    if reason is None:
        classes, shape = run.family.num_classes, tuple(run.family.shape)
        model = diffusers_model(run.family.backbone, image=shape, num_classes=classes)

        def peer(name, steps):  # the family's cosine schedule is diffusers' squaredcos_cap_v2
            return diffusers_sampler(model, name, steps, batch, "squaredcos_cap_v2", classes,
                                     shape)[0]
        n = baseline["steps"]
        calls[f"diffusers ddim-{n}"] = peer("ddim", n)
        meta[f"diffusers ddim-{n}"] = ("diffusers", runs[0][0], f"ddim:{n}", "ddim", n, n)
        k = best["steps"] if best["sampler"] == "dpmpp_2m" else 20
        calls[f"diffusers dpmpp_2m-{k}"] = peer("dpmpp_2m", k)
        meta[f"diffusers dpmpp_2m-{k}"] = ("diffusers", runs[0][0], f"dpmpp_2m:{k}",
                                           "dpmpp_2m", k, k)
    times = time_interleaved(calls, repeats)
    rows = []
    for key, (impl, model, label, name, steps, nfe) in meta.items():
        med = float(np.median(times[key]))
        rows.append({"kind": "speed", "impl": impl, "model": model, "point": label,
                     "sampler": name, "steps": steps, "nfe": nfe, "images_per_s": batch / med,
                     "median_s": med, "times_s": times[key], "samples": batch,
                     "best": impl == "jaxgen" and model == runs[0][0]
                     and label == best["point"]})
    peer = next((r for r in rows if r["impl"] == "diffusers" and r["sampler"] == "ddim"), None)
    for r in rows:
        r["vs_peer"] = peer["median_s"] / r["median_s"] if peer else None
        if r["impl"] == "jaxgen":  # the same point on the first workdir / this one, in time
            first = next(x for x in rows if x["impl"] == "jaxgen" and x["model"] == runs[0][0]
                         and x["point"] == r["point"])
            r["vs_first"] = first["median_s"] / r["median_s"]
    if reason:
        rows.append({"kind": "speed", "impl": "diffusers", "skipped": reason})
    return rows


def run(quick: bool, workdir: str | None = None, samples: int | None = None,
        seeds: int | None = None, points: str | None = None, peer_batch: int | None = None,
        repeats: int | None = None) -> dict:
    """The quality benchmark (contract of :mod:`benchmarks.suite`)."""
    from jaxgen import api
    from jaxgen.eval import quality

    if not workdir:
        raise ValueError("denoise --quality needs --workdir, a trained diffusion workdir")
    pts = parse_points(points, quick)
    samples = samples or (20 if quick else 1000)
    seeds = seeds or (2 if quick else 3)
    peer_batch = peer_batch or (4 if quick else 100)
    repeats = repeats or (1 if quick else 3)
    load = os.getloadavg()
    runs = []
    for i, d in enumerate(x for x in workdir.split(",") if x):
        r = api.load(d, need_data=False)
        if r.family.name != "diffusion":
            raise ValueError(f"{d} holds a {r.family.name} model, not a diffusion model")
        name = os.path.basename(os.path.normpath(d))
        runs.append((name if name not in {m for m, _ in runs} else f"{name}#{i}", r))
    rows = []
    for model, r in runs:
        rows += quality_rows(r, pts, samples, seeds, model)
    floor = quality.floor_metrics(num_samples=samples)
    first = [x for x in rows if x["model"] == runs[0][0]]
    base, best = first[0], best_point(first)
    for x in rows:
        x["fd_vs_baseline"] = x["fd_mean"] / base["fd_mean"]
    rows += speed_rows(runs, base, best, peer_batch, repeats)
    r = runs[0][1]
    jbest = next(x for x in rows if x.get("best"))
    summary_models = [m for m, _ in runs]
    summary = {"workdir": workdir, "step": r.step, "samples": samples, "seeds": seeds,
               "floor_fd_lenet": floor["fd_lenet"], "floor_samples": floor["num_samples"],
               "baseline": base["point"], "baseline_fd": base["fd_mean"],
               "best": best["point"], "best_fd": best["fd_mean"],
               "best_vs_diffusers_ddim": jbest.get("vs_peer"),
               "models": summary_models,
               "loadavg_start": load, "loadavg_end": os.getloadavg()}
    notes = [f"workdir {workdir} at step {r.step}; {samples} samples x {seeds} seeds per point",
             f"floor (real training digits, {floor['num_samples']}): fd_lenet "
             f"{floor['fd_lenet']:.2f}",
             f"1-minute load average at start {load[0]:.2f}, at end "
             f"{summary['loadavg_end'][0]:.2f}",
             "images/s of quality rows: samples / the fastest seed (the first seed compiles); "
             f"speed rows: median of {repeats} interleaved calls at batch {peer_batch}"]
    notes.append(f"baseline {summary['baseline']}: fd_lenet {base['fd_mean']:.2f} "
                 f"({base['fd_mean'] / floor['fd_lenet']:.2f}x the floor)")
    notes.append(f"fastest point at the baseline's fd_lenet or better: {summary['best']} "
                 f"(fd_lenet {best['fd_mean']:.2f}), {_fmt(summary['best_vs_diffusers_ddim'])}x "
                 f"diffusers' DDIM-{base['steps']} images/s at batch {peer_batch}")
    return {"rows": rows, "table_columns": TABLE_COLUMNS, "plot": PLOT, "notes": notes,
            "summary": summary, "meta": {"floor": {k: floor[k] for k in ("fd_lenet",
                                                                          "num_samples")}}}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"
