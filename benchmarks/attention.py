"""Attention kernel benchmark: forward and forward+backward time of every kernel that runs here.

    python -m benchmarks.attention                 # default shapes, all runnable kernels
    python -m benchmarks.attention --quick         # tiny shapes, a few seconds
    python -m benchmarks.attention --shapes 4,8,2048,64 --causal both --kernels xla,chunked \
        --json attention.json

FLOPs count only unmasked work: forward 4*B*N*Tq*Tk*H (halved when causal), backward 2.5x the
forward, so forward+backward is 3.5x. Throughput is also reported as a fraction of a f32 matmul
peak measured in the same run, and time as a speed-up over the ``xla`` kernel (t_xla / t).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp

from benchmarks.common import device_description, peak_matmul_gflops, time_fn
from jaxgen.nn.kernels import KERNELS, attention
from jaxgen.nn.kernels.pallas import pallas_unusable_reason
from jaxgen.nn.kernels.xla import cudnn_unusable_reason

DEFAULT_SHAPES = "4,8,2048,64;4,8,1024,64;4,8,512,64"
QUICK_SHAPES = "1,2,256,32;1,2,128,32"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Shape(NamedTuple):
    batch: int
    heads: int
    seq: int
    head_dim: int


def parse_shapes(text: str) -> list[Shape]:
    """'B,N,T,H;B,N,T,H' -> [Shape]; ValueError naming the bad entry."""
    shapes = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        parts = item.split(",")
        if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"bad shape {item!r}: want four positive ints B,N,T,H")
        shapes.append(Shape(*(int(p) for p in parts)))
    if not shapes:
        raise ValueError("no shapes given")
    return shapes


def forward_flops(s: Shape, causal: bool) -> float:
    flops = 4.0 * s.batch * s.heads * s.seq * s.seq * s.head_dim
    return flops / 2 if causal else flops


def default_kernels() -> list[str]:
    """Every kernel that runs at full speed on this platform (pallas off GPU only interprets)."""
    names = ["reference", "xla", "chunked"]
    if jax.default_backend() == "gpu":
        names += ["cudnn", "pallas"]
    return names


def skip_reason(kernel: str, q: jax.Array, causal: bool) -> str | None:
    if kernel == "cudnn":
        return cudnn_unusable_reason(q, q)
    if kernel == "pallas":
        return pallas_unusable_reason(q, q, mask=None, interpret=False)
    return None


def bench_one(kernel: str, s: Shape, causal: bool, dtype, repeats: int) -> dict:
    """Times forward and forward+backward of one kernel on one shape."""
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, do = (jax.random.normal(key, (s.batch, s.seq, s.heads, s.head_dim), dtype)
                   for key in keys)
    row = {"kernel": kernel, "B": s.batch, "N": s.heads, "T": s.seq, "H": s.head_dim,
           "causal": causal, "dtype": jnp.dtype(dtype).name}
    reason = skip_reason(kernel, q, causal)
    if reason:
        return {**row, "skipped": reason}

    def fwd(q, k, v):
        return attention(q, k, v, causal=causal, kernel=kernel)

    def loss(q, k, v):
        return jnp.sum(fwd(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))

    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    flops = forward_flops(s, causal)
    for name, fn, work in (("fwd", jax.jit(fwd), flops), ("fwd_bwd", fwd_bwd, 3.5 * flops)):
        t = time_fn(fn, q, k, v, warmup=1, repeats=repeats)
        row[f"{name}_ms"] = 1e3 * t["median_s"]
        row[f"{name}_min_ms"] = 1e3 * t["min_s"]
        row[f"{name}_gflops"] = work / t["median_s"] / 1e9
    return row


def add_ratios(rows: list[dict], peak: float) -> None:
    """Adds fraction of peak and speed-up over xla (same shape/causal/dtype) to each row."""
    xla = {(r["B"], r["N"], r["T"], r["H"], r["causal"], r["dtype"]): r for r in rows
           if r["kernel"] == "xla" and "skipped" not in r}
    for r in rows:
        if "skipped" in r:
            continue
        base = xla.get((r["B"], r["N"], r["T"], r["H"], r["causal"], r["dtype"]))
        for name in ("fwd", "fwd_bwd"):
            r[f"{name}_peak_frac"] = r[f"{name}_gflops"] / peak
            r[f"{name}_vs_xla"] = base[f"{name}_ms"] / r[f"{name}_ms"] if base else None


def format_table(rows: list[dict]) -> str:
    head = (f"{'kernel':<10}{'B':>3}{'N':>4}{'T':>6}{'H':>5} {'causal':<7}"
            f"{'fwd ms':>9}{'GF/s':>7}{'peak':>6}{'vs xla':>7}"
            f"{'f+b ms':>10}{'GF/s':>7}{'peak':>6}{'vs xla':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        left = f"{r['kernel']:<10}{r['B']:>3}{r['N']:>4}{r['T']:>6}{r['H']:>5} {str(r['causal']):<7}"
        if "skipped" in r:
            lines.append(f"{left}skipped: {r['skipped']}")
            continue
        cells = []
        for name in ("fwd", "fwd_bwd"):
            ratio = r[f"{name}_vs_xla"]
            cells.append(f"{r[f'{name}_ms']:>{9 if name == 'fwd' else 10}.1f}"
                         f"{r[f'{name}_gflops']:>7.1f}{r[f'{name}_peak_frac']:>6.2f}"
                         f"{'' if ratio is None else f'{ratio:.2f}x':>7}")
        lines.append(left + "".join(cells))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None,
                   help=f"';'-separated B,N,T,H (self-attention, Tq=Tk=T); default {DEFAULT_SHAPES}")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument("--kernels", default=None,
                   help=f"comma-separated subset of {','.join(KERNELS)}; default: those that run "
                        "at full speed on this platform")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES}, 2 repeats")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
        kernels = args.kernels.split(",") if args.kernels else default_kernels()
        unknown = [k for k in kernels if k not in KERNELS]
        if unknown:
            raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(KERNELS)}")
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    repeats = 2 if args.quick else args.repeats
    peak = peak_matmul_gflops(512 if args.quick else 2048)
    print(f"device {device_description()}; f32 matmul peak {peak:.1f} GFLOP/s", flush=True)
    causal_modes = {"both": (True, False), "yes": (True,), "no": (False,)}[args.causal]
    rows = []
    for s in shapes:
        for causal in causal_modes:
            for kernel in kernels:
                rows.append(bench_one(kernel, s, causal, DTYPES[args.dtype], repeats))
                print(f"  done {kernel} {tuple(s)} causal={causal}", file=sys.stderr, flush=True)
    add_ratios(rows, peak)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_description(), "peak_matmul_gflops": peak,
                       "dtype": args.dtype, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
