"""``python -m benchmarks NAME [--quick] [--out DIR]`` (also ``jaxgen bench``).

NAME is attention, denoise, train, input or all. Writes results.json (raw figures, device, versions,
date, command), results.md (tables) and results.png (plots) into DIR (default
bench_results/NAME-YYYYmmdd-HHMMSS/) and prints the tables. Exit status 2 with one line on
stderr for a bad argument (unknown benchmark, kernel, grid or shape).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys

from benchmarks import attention_grid

CAUSAL_MODES = {"both": (True, False), "yes": (True,), "no": (False,)}


# How each benchmark splits a CPU-only host when --cpu-devices is not given: denoise and train time
# what `jaxgen sample` / `jaxgen train` run (one single-threaded device per core, the batch
# sharded over them; see benchmarks/README.md for both layouts on the 2-core CPU); attention
# runs as a plain python process, where the chunked kernel was the same or faster (see
# benchmarks/host.py). `all` runs in one process.
DEFAULT_CPU_DEVICES = {"attention": 1, "denoise": 0, "train": 0, "input": 0, "all": 1}


class UsageError(ValueError):
    """A bad argument: one line, exit status 2."""


def parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("name", metavar="NAME", help="attention | denoise | train | input | all")
    p.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds (for CI)")
    p.add_argument("--out", metavar="DIR", help="output directory "
                   "(default bench_results/NAME-TIMESTAMP)")
    p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="CPU host only: 1 = one multi-threaded device, a plain python process "
                        "(default for attention and all); 0 = one single-threaded device per "
                        "core with the batch sharded over them, as jaxgen train and jaxgen "
                        "sample run (default for denoise and train); N = N devices")
    a = p.add_argument_group("attention")
    a.add_argument("--grid", help=f"one of {', '.join(attention_grid.GRIDS)} "
                   "(default: quick with --quick, else default)")
    a.add_argument("--kernels", help="comma-separated subset of reference,xla,chunked,cudnn,"
                   "cpu_flash,pallas (default: all; those that cannot run here are listed as "
                   "skipped)")
    a.add_argument("--blocks", metavar="BQ,BK", help="tile sizes (block_q, block_k) for the "
                   "tiled kernels chunked, cpu_flash and pallas (default: each kernel's own)")
    a.add_argument("--repeats", type=int, help="timed calls per figure (default 5; 3 quick)")
    a.add_argument("--shapes", help="instead of a grid: ';'-separated B,N,T,H")
    a.add_argument("--causal", choices=sorted(CAUSAL_MODES), default="both",
                   help="with --shapes (default both)")
    a.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="with --shapes (default float32)")
    d = p.add_argument_group("denoise --quality (benchmarks/denoise_quality.py)")
    d.add_argument("--quality", action="store_true", help="fd_lenet against images/s for each "
                   "sampler of a trained workdir, with diffusers' DDIM-50 as the speed peer")
    d.add_argument("--workdir", help="the trained diffusion workdir --quality samples from "
                   "(comma-separated: several, compared on the same points; the first leads)")
    d.add_argument("--samples", type=int, help="samples per point and seed (default 1000)")
    d.add_argument("--seeds", type=int, help="seeds per point (default 3)")
    d.add_argument("--points", help="comma-separated sampler:steps[:key=value...] (extra "
                   "sample.* settings, e.g. dpmpp_2m:20:grid=schedule); the first is the "
                   "baseline (default: ddpm:50 first, then ddpm, ddim, dpmpp_2m, heun and euler "
                   "at 5-100 network evaluations)")
    d.add_argument("--peer-batch", type=int, help="images per timed call of the speed rows "
                   "(default 100)")
    return p


def denoise_options(args: argparse.Namespace) -> dict:
    """Keywords of ``benchmarks.denoise.run`` (ValueError, one line, for a bad one)."""
    quality_only = {"workdir": args.workdir, "samples": args.samples, "seeds": args.seeds,
                    "points": args.points, "peer_batch": args.peer_batch}
    given = [k for k, v in quality_only.items() if v is not None]
    if not args.quality:
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} is an option of denoise --quality")
        return {}
    if args.name != "denoise":
        raise UsageError(f"--quality is an option of the denoise benchmark, not {args.name}")
    if not args.workdir:
        raise UsageError("denoise --quality needs --workdir, a trained diffusion workdir")
    for d in args.workdir.split(","):
        if not os.path.isdir(d):
            raise UsageError(f"--workdir {d} is not a directory")
    for k in ("samples", "seeds", "peer_batch"):
        v = quality_only[k]
        if v is not None and v < (10 if k == "samples" else 1):
            raise UsageError(f"--{k.replace('_', '-')} must be >= {10 if k == 'samples' else 1}")
    from benchmarks.denoise_quality import parse_points
    parse_points(args.points, args.quick)
    return {"quality": True, **{k: v for k, v in quality_only.items() if v is not None}}


def parse_shapes(text: str, causal: str, dtype: str) -> tuple[attention_grid.Case, ...]:
    """'B,N,T,H;...' -> cases; UsageError naming the bad entry."""
    cases = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        parts = [s.strip() for s in item.split(",")]
        if len(parts) != 4 or not all(s.isdigit() and int(s) > 0 for s in parts):
            raise UsageError(f"bad shape {item!r}: want four positive ints B,N,T,H")
        b, n, t, h = (int(s) for s in parts)
        cases += [attention_grid.Case(b, n, t, h, c, dtype) for c in CAUSAL_MODES[causal]]
    if not cases:
        raise UsageError("--shapes gave no shape")
    return tuple(cases)


def attention_options(args: argparse.Namespace) -> dict:
    from jaxgen.nn.kernels import KERNELS
    opts: dict = {}
    if args.grid is not None:
        if args.grid not in attention_grid.GRIDS:
            raise UsageError(f"unknown grid {args.grid!r}; choose from "
                             f"{', '.join(attention_grid.GRIDS)}")
        opts["grid_name"] = args.grid
    if args.kernels:
        names = tuple(k.strip() for k in args.kernels.split(",") if k.strip())
        valid = [k for k in KERNELS if k != "auto"]
        unknown = [k for k in names if k not in valid]
        if unknown or not names:
            raise UsageError(f"unknown kernel(s) {', '.join(unknown) or '(none given)'}; "
                             f"choose from {', '.join(valid)}")
        opts["kernels"] = names
    if args.repeats is not None:
        if args.repeats < 1:
            raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
        opts["repeats"] = args.repeats
    if args.shapes:
        opts["cases"] = parse_shapes(args.shapes, args.causal, args.dtype)
    if args.blocks:
        try:
            blocks = tuple(int(x) for x in args.blocks.split(","))
        except ValueError:
            blocks = ()
        if len(blocks) != 2 or min(blocks) < 1:
            raise UsageError(f"--blocks takes two positive ints BQ,BK, got {args.blocks!r}")
        opts["blocks"] = blocks
    return opts


def cpu_devices_for(name: str, given: int | None) -> int:
    """The host split a benchmark runs on: ``--cpu-devices`` when given, else its default."""
    cpu_devices = DEFAULT_CPU_DEVICES.get(name, 1) if given is None else given
    if cpu_devices < 0:
        raise UsageError(f"--cpu-devices must be >= 0, got {cpu_devices}")
    return cpu_devices


def default_out(name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("bench_results", f"{name}-{stamp}")


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(prog).parse_args(argv)
    try:
        from benchmarks import suite
        suite.resolve(args.name)
        options = {"attention": attention_options(args), "denoise": denoise_options(args)}
        cpu_devices = cpu_devices_for(args.name, args.cpu_devices)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    from benchmarks import host, report
    setup = host.configure_host(cpu_devices)
    out = args.out or default_out(args.name)
    record, paths = suite.run_suite(args.name, args.quick, out, shlex.join([*prog.split(), *argv]),
                                    setup.note, options)
    print(report.markdown(record))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
