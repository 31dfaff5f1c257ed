"""What a compiled step needs per chip, and what the compiler estimates it costs.

:func:`compile_report` reads three things of a ``jax.stages.Compiled``:
- ``memory_analysis()``: argument, output, temporary, generated-code and alias bytes per chip,
  the buffer assignment the chip would use. ``total_bytes`` = argument + output + temp +
  generated code - alias (donated inputs that outputs reuse are counted once), as MaxText's
  ``train_compile.py`` prints it. The compiler's own ``peak_memory_in_bytes`` is kept beside it
  (``compiler_peak_bytes``: on v5e 3.0 GiB against a total of 3.5 GiB for a large FSDP MLP step,
  whose buffers' lifetimes do not all overlap, but 34 MiB against 13 MiB for a tiny one). ``fits`` compares the larger of the
  two with the available HBM. On TPU a program that compiled fits by the compiler's own
  accounting; an overflow is an error at compile time (:class:`CompileOOMError`), while XLA:GPU
  compiles programs that cannot fit, so there ``fits`` is the only check.
- ``cost_analysis()``: FLOPs, bytes accessed and transcendentals per chip, as the compiler counts
  them (rematerialised ops included, Pallas/Mosaic custom calls not counted: the compiler cannot
  see into them), and on TPU ``optimal_seconds``, the compiler's ESTIMATE of the step time
  (reported as ``estimated_step_s``). XLA:TPU adds -1 s for each ``ConcatBitcast`` custom call
  (layout glue that training steps contain), so a step with k of them reports -k + t: t is
  taken as the estimate when k matches; any other negative value is reported as None. GPU
  returns no cost analysis. Two blind spots, listed in ``estimate["caveats"]`` when present:
  a ``while`` loop's body (``lax.scan`` over layers) is counted once, not once per iteration,
  and Pallas/Mosaic kernels (``tpu_custom_call``) add neither FLOPs nor time.
- ``as_text()``: the HLO after SPMD partitioning, for the collectives (:mod:`jaxgen.aot.hlo`).

MFU figures are estimates, derived from the estimated step time:
``estimated_mfu = model_flops / (estimated_step_s * peak_bf16_flops * num_devices)`` with
``model_flops`` the caller's count of the model's FLOPs per step over all chips (e.g. 6 x params x
tokens for a Transformer LM), and ``estimated_hfu`` the same with the compiler's FLOPs
(``flops_per_chip * num_devices``, which includes recomputation).
"""
from __future__ import annotations

import math
import re
from typing import Any

import jax

from jaxgen.aot.chips import Chip, available_hbm_bytes, chip_of_device, get_chip, parse_size
from jaxgen.aot.hlo import (
    COLLECTIVE_KINDS,
    collective_summary,
    custom_call_targets,
    loop_trip_counts,
)
from jaxgen.errors import RunError

_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds available HBM",
                "Exceeded hbm capacity")
_REQUIRED = re.compile(r"required for ([^(]+?) \(([0-9.]+[KMGTP]i?B?)\)")
_AVAILABLE = re.compile(r"available HBM \(([0-9.]+[KMGTP]i?B?)\)|of ([0-9.]+[KMGTP]) hbm")
_USED = re.compile(r"Used ([0-9.]+[KMGTP]) of")
_EXCEEDED = re.compile(r"Exceeded hbm capacity by ([0-9.]+[KMGTP])")


class CompileOOMError(RunError):
    """The program does not fit in the chip's memory (XLA's RESOURCE_EXHAUSTED at compile time).

    Attributes (bytes, None when the compiler's message does not give them):
      required_bytes: what the compiler asked for; what: of what ("HLO temporaries").
      available_bytes: the HBM it had. The message (``str(e)``) is one line with the figures.
    """

    def __init__(self, message: str, *, required_bytes: int | None = None,
                 available_bytes: int | None = None, what: str | None = None,
                 compiler_message: str = ""):
        super().__init__(message)
        self.required_bytes = required_bytes
        self.available_bytes = available_bytes
        self.what = what
        self.compiler_message = compiler_message


def is_oom(error: BaseException) -> bool:
    return any(marker in str(error) for marker in _OOM_MARKERS)


def oom_from_error(error: BaseException, *, context: str = "") -> CompileOOMError:
    """The :class:`CompileOOMError` for an XLA out-of-memory error, with the figures it gives."""
    text = str(error)
    first = next((ln.strip() for ln in text.splitlines() if any(m in ln for m in _OOM_MARKERS)),
                 text.strip().splitlines()[0] if text.strip() else type(error).__name__)
    req, avail, what = _REQUIRED.search(text), _AVAILABLE.search(text), None
    required = available = None
    if req:
        what, required = req.group(1).strip(), parse_size(req.group(2))
    elif _USED.search(text):
        required = parse_size(_USED.search(text).group(1))
    if avail:
        available = parse_size(next(g for g in avail.groups() if g))
    where = f"{context}: " if context else ""
    if required is not None and available is not None:
        message = (f"{where}does not fit: needs {required / 2**30:.2f} GiB"
                   f"{f' of {what}' if what else ''} per chip, {available / 2**30:.2f} GiB "
                   f"of HBM available")
    else:
        message = f"{where}does not fit in device memory: {first[:300]}"
    return CompileOOMError(message, required_bytes=required, available_bytes=available, what=what,
                           compiler_message=first)


def aot_compile(lowered: jax.stages.Lowered, *, context: str = "",
                compiler_options: dict | None = None) -> jax.stages.Compiled:
    """``lowered.compile()``, with an out-of-memory raised as :class:`CompileOOMError`."""
    try:
        if compiler_options:
            return lowered.compile(compiler_options)
        return lowered.compile()
    except Exception as e:  # XLA raises JaxRuntimeError (XlaRuntimeError before)
        if is_oom(e):
            raise oom_from_error(e, context=context) from None
        raise


def _devices(compiled: jax.stages.Compiled) -> list:
    for shardings in (compiled.input_shardings, compiled.output_shardings):
        for s in jax.tree.leaves(shardings):
            if isinstance(s, jax.sharding.Sharding):
                return sorted(s.device_set, key=lambda d: d.id)
    return []


def _memory(compiled: jax.stages.Compiled) -> dict[str, int | None]:
    m = compiled.memory_analysis()
    get = (lambda name: int(getattr(m, name, 0) or 0)) if m is not None else (lambda _: 0)
    mem = {"argument_bytes": get("argument_size_in_bytes"),
           "output_bytes": get("output_size_in_bytes"),
           "temp_bytes": get("temp_size_in_bytes"),
           "generated_code_bytes": get("generated_code_size_in_bytes"),
           "alias_bytes": get("alias_size_in_bytes")}
    mem["total_bytes"] = (mem["argument_bytes"] + mem["output_bytes"] + mem["temp_bytes"]
                          + mem["generated_code_bytes"] - mem["alias_bytes"])
    mem["compiler_peak_bytes"] = get("peak_memory_in_bytes") or None
    return mem


# XLA:TPU costs each of these custom calls at -1 s in ``optimal_seconds`` (seen with libtpu
# 0.0.42.1: a step with k ConcatBitcast calls reports -k + t); they are layout glue, ~free.
_MINUS_ONE_SECOND_CALLS = ("ConcatBitcast",)
MOSAIC_CALL = "tpu_custom_call"  # Pallas TPU kernels (Mosaic)


def _step_estimate(seconds: float | None, calls: dict[str, int]) -> tuple[float | None, str]:
    """(estimated step seconds or None, how it was read from ``optimal_seconds``)."""
    if seconds is None:
        return None, "no optimal_seconds from this compiler"
    if seconds > 0:
        return float(seconds), "optimal_seconds"
    k = math.ceil(-seconds)
    glue = sum(calls.get(t, 0) for t in _MINUS_ONE_SECOND_CALLS)
    if k and k == glue and seconds + k > 0:
        return float(seconds + k), f"optimal_seconds + {k} (its -1 s for each ConcatBitcast call)"
    return None, f"optimal_seconds {seconds:.4g} could not be read as a time"


def _cost(compiled: jax.stages.Compiled, hlo_text: str) -> dict[str, Any]:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends raise instead of returning None)
        cost = None
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    cost = cost or {}
    calls = custom_call_targets(hlo_text)
    seconds = cost.get("optimal_seconds")
    step, how = _step_estimate(seconds, calls)
    return {"flops_per_chip": cost.get("flops"),
            "bytes_accessed_per_chip": cost.get("bytes accessed"),
            "transcendentals_per_chip": cost.get("transcendentals"),
            "estimated_step_s": step, "estimated_step_from": how,
            "compiler_optimal_seconds_raw": seconds, "custom_calls": calls}


def _caveats(cost: dict, trips: list[int | None]) -> list[str]:
    out = []
    looped = [t for t in trips if t is None or t > 1]
    if looped and cost["flops_per_chip"] is not None:
        out.append(f"{len(looped)} while loop(s) (trip counts {looped}): the compiler's FLOPs "
                   "and step time count each loop body once (a scan over L layers as 1 layer)")
    mosaic = cost["custom_calls"].get(MOSAIC_CALL, 0)
    if mosaic:
        out.append(f"{mosaic} Pallas/Mosaic kernel call(s) ({MOSAIC_CALL}): their FLOPs and time "
                   "are not in the compiler's figures")
    return out


def compile_report(lowered_or_compiled, *, chip: str | Chip | None = None,
                   num_devices: int | None = None, model_flops: float | None = None) -> dict:
    """A JSON-ready description of a compiled program on its topology.

    Args:
      lowered_or_compiled: a ``jax.stages.Compiled``, or a ``Lowered`` (compiled here;
        an out-of-memory raises :class:`CompileOOMError`).
      chip: chip name or :class:`Chip` (default: from the program's devices).
      num_devices: chips the program runs on (default: from its shardings).
      model_flops: the model's FLOPs per step over all chips, for ``estimated_mfu``.
    Returns:
      ``{"chip", "device_kind", "num_devices", "memory": {..._bytes per chip, "hbm_spec_bytes",
      "hbm_available_bytes", "hbm_source", "fits"}, "cost": {"flops_per_chip", ...,
      "estimated_step_s"}, "estimate": {"model_flops", "estimated_mfu", "estimated_hfu",
      "note", "caveats"}, "collectives": {kind: {"count", "bytes", "count_per_step",
      "bytes_per_step"}, "dcn": {the same, between slices}, "unknown_trip_counts"}}``.
    """
    compiled = lowered_or_compiled
    if isinstance(compiled, jax.stages.Lowered):
        compiled = aot_compile(compiled)
    devices = _devices(compiled)
    if chip is None:
        chip = chip_of_device(devices[0]) if devices else None
        if chip is None:
            raise ValueError("compile_report: pass chip= (the program's devices are of no known "
                             f"chip: {devices[0].device_kind if devices else 'none'})")
    chip = get_chip(chip)
    num_devices = num_devices or len(devices) or 1
    mem = _memory(compiled)
    available, source = available_hbm_bytes(devices[0]) if devices else (None, "none")
    if available is None:
        available, source = chip.hbm_bytes, "spec"
    mem |= {"hbm_spec_bytes": chip.hbm_bytes, "hbm_available_bytes": available,
            "hbm_source": source,
            "fits": max(mem["total_bytes"], mem["compiler_peak_bytes"] or 0) <= available}
    hlo_text = compiled.as_text()
    cost = _cost(compiled, hlo_text)
    step = cost["estimated_step_s"]
    peak = chip.peak_bf16_flops * num_devices
    flops = cost["flops_per_chip"]
    estimate = {
        "model_flops": model_flops,
        "estimated_mfu": model_flops / (step * peak) if step and model_flops else None,
        "estimated_hfu": flops * num_devices / (step * peak) if step and flops else None,
        "peak_bf16_flops_per_chip": chip.peak_bf16_flops,
        "note": "compiler estimates (cost analysis on a host without the accelerator), not "
                "measurements; MFU counts model_flops, HFU the compiler's FLOPs",
        "caveats": _caveats(cost, loop_trip_counts(hlo_text)),
    }
    return {"chip": chip.name, "device_kind": devices[0].device_kind if devices else None,
            "platform": chip.platform, "num_devices": num_devices, "memory": mem, "cost": cost,
            "estimate": estimate, "collectives": collective_summary(hlo_text)}


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.3f} GiB"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_report(report: dict) -> str:
    """A readable table of :func:`compile_report`'s dict."""
    m, c, e = report["memory"], report["cost"], report["estimate"]
    rows = [f"chip {report['chip']} ({report['device_kind']}) x {report['num_devices']}",
            "memory per chip:"]
    for key in ("argument_bytes", "output_bytes", "temp_bytes", "generated_code_bytes",
                "alias_bytes", "total_bytes", "compiler_peak_bytes"):
        rows.append(f"  {key[:-6].replace('_', ' '):<20}{_gib(m[key]):>14}")
    rows.append(f"  {'HBM available':<20}{_gib(m['hbm_available_bytes']):>14}  "
                f"({m['hbm_source']}; spec {_gib(m['hbm_spec_bytes'])})")
    rows.append(f"  {'fits':<20}{'yes' if m['fits'] else 'NO':>14}")
    rows.append("compiler estimates (not measurements):")
    rows.append(f"  {'FLOPs per chip':<20}{_num(c['flops_per_chip'], '.4g'):>14}")
    rows.append(f"  {'bytes accessed':<20}{_num(c['bytes_accessed_per_chip'], '.4g'):>14}")
    rows.append(f"  {'est. step time':<20}{_num(c['estimated_step_s'], '.4g'):>14} s")
    rows.append(f"  {'est. MFU':<20}{_num(e['estimated_mfu'], '.1%'):>14}  (model FLOPs "
                f"{_num(e['model_flops'], '.4g')})")
    rows.append(f"  {'est. HFU':<20}{_num(e['estimated_hfu'], '.1%'):>14}  (compiler FLOPs)")
    rows += [f"  caveat: {line}" for line in e.get("caveats", ())]
    rows.append("collectives per chip:  count  bytes        per step: count  bytes")
    for kind in COLLECTIVE_KINDS:
        r = report["collectives"][kind]
        rows.append(f"  {kind:<20}{r['count']:>5}  {_gib(r['bytes']):>12}"
                    f"  {r['count_per_step']:>14}  {_gib(r['bytes_per_step']):>12}")
    for kind, r in report["collectives"].get("dcn", {}).items():
        if r["count"]:
            rows.append(f"  {'DCN ' + kind:<20}{r['count']:>5}  {_gib(r['bytes']):>12}"
                        f"  {r['count_per_step']:>14}  {_gib(r['bytes_per_step']):>12}")
    if report["collectives"].get("unknown_trip_counts"):
        rows.append(f"  ({report['collectives']['unknown_trip_counts']} loop(s) without a known "
                    "trip count counted once)")
    return "\n".join(rows)


__all__ = ["CompileOOMError", "aot_compile", "compile_report", "format_report", "is_oom",
           "oom_from_error"]
