"""``jaxgen compile``: an experiment's programs compiled for an accelerator topology, here.

:func:`compile_experiment` builds the experiment as ``jaxgen train`` would, but over the
compile-only devices of a topology (:func:`jaxgen.aot.topology_devices`) and with data-free
datasets (:mod:`jaxgen.data.abstract`): no accelerator and no dataset are needed. It lowers and
compiles the train step, the sampler and the eval step under the topology's mesh (so the model
picks the kernels of that platform), and returns :func:`jaxgen.aot.compile_report`'s figures
for each, with the parameter count, the precision and the attention kernels chosen. Every
time and MFU in it is the compiler's estimate, not a measurement.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Optional, Sequence

import jax
from jax.sharding import AxisType

from jaxgen.aot.report import aot_compile, compile_report
from jaxgen.aot.topology import make_topology_mesh, topology_devices
from jaxgen.config import Experiment
from jaxgen.train.state import param_count

log = logging.getLogger("jaxgen")
PROGRAMS = ("train", "sample", "eval")


def _config(spec: str | Experiment, overrides: Sequence[str]) -> Experiment:
    from jaxgen import experiments

    config = experiments.get_config(spec) if isinstance(spec, str) else spec
    return experiments.apply_overrides(config, list(overrides))


def untrained_latent(config: Experiment) -> Experiment:
    """A latent diffusion config whose ``latent.autoencoder`` workdir is not on this host, with
    the untrained autoencoder of ``latent.recipe`` instead (``recipe:NAME``): its programs have
    the trained model's shapes and cost, which is all a compile needs."""
    latent = getattr(config, "latent", None)
    path = getattr(latent, "autoencoder", "")
    if not path or path.startswith("recipe:") or os.path.isdir(path) or not latent.recipe:
        return config  # pixels, already a recipe, a real workdir, or load_codec's own error
    log.info("latent.autoencoder=%s is not here: compiling with an untrained %s", path,
             latent.recipe)
    return dataclasses.replace(config, latent=dataclasses.replace(
        latent, autoencoder=f"recipe:{latent.recipe}"))


def _abstract_batch(run: Any, batch_size: int) -> dict:
    """The global train batch as ShapeDtypeStructs with the run's batch sharding."""
    sample = next(iter(run.datasets.make_eval()))
    return {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype,
                                    sharding=run.batch_sharding)
            for k, v in sample.items() if k != "mask"}


def _compile(name: str, run: Any, lowering, context: str, model_flops: Optional[float],
             keep_hlo: bool = False) -> dict:
    """Lowers and compiles one program under the run's mesh, then reports on it (outside the
    mesh: the report's HBM probe compiles a program of its own)."""
    from jaxgen.nn.kernels import dispatch

    dispatch.chosen.clear()
    t0 = time.perf_counter()
    with run.active():
        compiled = aot_compile(lowering(), context=context)
    seconds = time.perf_counter() - t0
    report = compile_report(compiled, model_flops=model_flops)
    report["attention"] = [{"kernel": k, "dtype": d} for k, d in sorted(dispatch.chosen)]
    report["compile_seconds"] = seconds
    if keep_hlo:
        report["hlo_text"] = compiled.as_text()
    log.info("compiled the %s program in %.1f s", name, seconds)
    return report


def _unrolled_estimate(config: Experiment, mesh: Any, what: str,
                       model_flops: Optional[float]) -> dict:
    """The compiler's estimate for the train step with its layers unrolled: XLA costs a
    ``while`` loop's body once, so the scanned program's step time misses all layers but one.
    The scanned program stays the one whose memory is reported (it is the one that runs)."""
    import dataclasses

    from jaxgen.data.abstract import abstract_datasets
    from jaxgen.models import make_family
    from jaxgen.train import loop

    flat = dataclasses.replace(config, model=dataclasses.replace(config.model, scan_layers=False))
    run = loop.build(flat, datasets=abstract_datasets(flat), family=make_family, mesh=mesh)
    batch = _abstract_batch(run, flat.data.batch_size)
    report = _compile("train (layers unrolled, for the estimate)", run,
                      lambda: run.train_step.lower(run.abstract_state, batch),
                      f"{what}: the unrolled train step", model_flops)
    return {"cost": report["cost"], "estimate": report["estimate"],
            "compile_seconds": report["compile_seconds"],
            "note": "the same step with model.scan_layers=false, compiled for the compiler's "
                    "step-time estimate only (a scanned loop's body is costed once)"}


def compile_experiment(spec: str | Experiment, topology: str, *, slices: int = 1,
                       overrides: Sequence[str] = (), programs: Sequence[str] = PROGRAMS,
                       num_samples: Optional[int] = None, unrolled_estimate: bool = True,
                       keep_hlo: bool = False) -> dict:
    """Compiles ``spec``'s programs (``programs`` of train, sample, eval) for ``topology``.

    Args:
      spec: "recipe[:variant]" or an :class:`Experiment`.
      topology: a name :func:`jaxgen.aot.parse_topology` accepts ("v5e:16x16", "v5p:4x4x4",
        "h100:8", ...); ``slices`` > 1: that many slices joined over DCN (the data axis spans
        them).
      overrides: ``--set`` strings applied first (e.g. ``mesh.fsdp=256``).
      num_samples: the sampler's batch (default: ``train.num_samples``).
      unrolled_estimate: for a model with scanned layers, also compile the train step with
        them unrolled, for the compiler's step-time estimate (``estimate_unrolled``).
      keep_hlo: also keep each program's compiled (partitioned, per-chip) HLO text under
        ``"hlo_text"``, for :func:`jaxgen.aot.hlo.find_collectives` and friends.
    Returns:
      ``{"experiment", "topology", "slices", "mesh", "parameters", "precision", "programs":
      {name: compile_report(...) + "attention", "compile_seconds"}}``.
    Raises:
      UsageError: a bad topology, slice count or mesh; CompileOOMError: a program does not
      fit in the chips' memory (the figures in one line).
    """
    from jaxgen.data.abstract import abstract_datasets
    from jaxgen.errors import UsageError
    from jaxgen.models import make_family
    from jaxgen.train import loop
    from jaxgen.train.mesh import AXES

    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise UsageError(f"unknown program(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(PROGRAMS)}")
    config = untrained_latent(_config(spec, overrides))
    devices = topology_devices(topology, slices)
    m = config.mesh
    mesh = make_topology_mesh(devices, {"data": m.data, "fsdp": m.fsdp, "tensor": m.tensor},
                              AXES, axis_types=(AxisType.Auto,) * 3)
    run = loop.build(config, datasets=abstract_datasets(config), family=make_family, mesh=mesh)
    batch = _abstract_batch(run, config.data.batch_size)
    family = run.family
    out = {"experiment": config.experiment or str(spec), "topology": topology, "slices": slices,
           "num_devices": len(devices), "mesh": dict(mesh.shape),
           "parameters": param_count(run.abstract_state.params),
           "precision": {"compute": getattr(config.model, "dtype", None),
                         "params": getattr(config.model, "param_dtype", None)},
           "programs": {}}
    what = f"{out['experiment']} on {topology}"
    if "train" in programs:
        flops = family.model_flops(config.data.batch_size)
        report = _compile("train", run, lambda: run.train_step.lower(run.abstract_state, batch),
                          f"{what}: the train step", flops, keep_hlo)
        if getattr(config.model, "scan_layers", False) and unrolled_estimate:
            report["estimate_unrolled"] = _unrolled_estimate(config, mesh, f"{what}", flops)
            # the scanned program's own step time costs one layer: no MFU is derived from it
            scanned = report["estimate"]
            report["estimate_scanned_loop_once"] = {k: scanned[k] for k in
                                                    ("estimated_mfu", "estimated_hfu")}
            scanned.update(estimated_mfu=None, estimated_hfu=None)
        out["programs"]["train"] = report
    if "sample" in programs:
        n = run.padded(num_samples or config.train.num_samples)
        key = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
        options = family.sample_options()
        out["programs"]["sample"] = _compile(
            "sample", run, lambda: run.sampler(n).lower(run.abstract_state, key, n, options),
            f"{what}: the sampler ({n} samples)", None, keep_hlo)
    if "eval" in programs and run.eval_step is not None:
        eval_batch = _abstract_batch(run, config.data.eval_batch_size)
        eval_batch["mask"] = jax.ShapeDtypeStruct((config.data.eval_batch_size,),
                                                  jax.numpy.float32, sharding=run.batch_sharding)
        out["programs"]["eval"] = _compile(
            "eval", run, lambda: run.eval_step.lower(run.abstract_state, eval_batch),
            f"{what}: the eval step", None, keep_hlo)
    return out


def format_summary(result: dict) -> str:
    """The compile result as text: a header, then each program's report."""
    from jaxgen.aot.report import format_report

    head = (f"{result['experiment']} on {result['topology']}"
            f"{' x ' + str(result['slices']) + ' slices' if result['slices'] > 1 else ''}: "
            f"{result['num_devices']} chips, mesh {result['mesh']}, "
            f"{result['parameters']:,} parameters, compute {result['precision']['compute']}, "
            f"parameters {result['precision']['params']}")
    parts = [head]
    for name, report in result["programs"].items():
        kernels = ", ".join(f"{a['kernel']} ({a['dtype']})" for a in report["attention"]) or "none"
        parts.append(f"\n== {name} (compiled in {report['compile_seconds']:.1f} s; attention: "
                     f"{kernels})\n{format_report(report)}")
        flat = report.get("estimate_unrolled")
        if flat:
            c, e = flat["cost"], flat["estimate"]
            mfu = e["estimated_mfu"]
            parts.append(f"  with the layers unrolled (for the estimate; compiled in "
                         f"{flat['compile_seconds']:.1f} s): est. step time "
                         f"{c['estimated_step_s'] or float('nan'):.4g} s, est. MFU "
                         f"{'-' if mfu is None else f'{mfu:.1%}'}, est. HFU "
                         f"{'-' if e['estimated_hfu'] is None else format(e['estimated_hfu'], '.1%')}"
                         " (compiler estimates, not measurements)")
            parts += [f"  caveat: {line}" for line in e.get("caveats", ())]
    return "\n".join(parts)


__all__ = ["PROGRAMS", "compile_experiment", "format_summary"]
