"""The ``jaxgen`` command: train, sample and evaluate the experiments in ``experiments/``.

Exit statuses: 0 done (also: a run already trained to ``train.steps``, which says so); 2 a
mistake the user can fix (an unknown experiment or config key, a value of the wrong type, a
missing dataset, a workdir of another experiment or in use by another run, a path that cannot
be written, a config change a checkpoint cannot take), one line on stderr; 1 the run cannot go
on (every checkpoint damaged, a non-finite loss), one line, or a bug, with its traceback.
Signals (see :mod:`jaxgen.signals`): ``jaxgen train`` exits 75 (EX_TEMPFAIL) after SIGTERM at
any moment and after a SIGINT (Ctrl-C) that made it save its current step: run the same
command again to resume (a scheduler should requeue it); 130 after a SIGINT when there was
nothing to save (start-up, compilation, or the final evaluation once the last step is saved).
Other commands exit 130 on SIGINT and 143 on SIGTERM, having written nothing.
Set ``JAXGEN_DEBUG=1`` to see the traceback of a one-line error.
"""
from __future__ import annotations

import argparse
import json
import re
import logging
import os
import sys
import warnings

USAGE_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)

EPILOG = """examples:
  jaxgen train vae_mnist                        train the default VAE recipe (workdirs/vae_mnist)
  jaxgen train vae_mnist:smoke --workdir /tmp/w --set train.steps=20
  jaxgen eval --workdir workdirs/vae_mnist      metrics as JSON, also written to WORKDIR/eval.json
  jaxgen sample --workdir workdirs/vae_mnist --num 64 --out samples.png
"""


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    logging.basicConfig(level=logging.WARNING, format="jaxgen: %(levelname)s: %(message)s", force=True)
    logging.getLogger("jaxgen").setLevel(logging.INFO)


def _add_distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (jax.distributed)")
    g.add_argument("--distributed", choices=("off", "auto"), default="off",
                   help="auto: jax.distributed.initialize() detects the cluster (SLURM, TPU pods, "
                   "GKE, Open MPI) and this process's place in it")
    g.add_argument("--coordinator", help="coordinator address host:port (process 0)")
    g.add_argument("--num-processes", type=int, help="total number of processes")
    g.add_argument("--process-id", type=int, help="this process's index")
    g.add_argument("--distributed-timeout", type=int, default=300, metavar="SECONDS",
                   help="give up when the coordinator cannot be reached in this time (default 300)")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("jaxgen")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0.1.0 (source)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxgen", description="Train, sample and evaluate generative models in JAX.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jaxgen {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train an experiment (resumes an existing workdir)",
                       description="Train EXPERIMENT[:VARIANT] into WORKDIR. Running it again on "
                       "the same workdir resumes from the newest checkpoint.")
    t.add_argument("experiment", metavar="EXPERIMENT[:VARIANT]", nargs="?",
                   help="a recipe in experiments/ (e.g. vae_mnist, vae_mnist:smoke) or a .py file")
    t.add_argument("--workdir", help="run directory (default: workdirs/EXPERIMENT_VARIANT)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_distributed(t)

    e = sub.add_parser("eval", help="evaluate a workdir's newest checkpoint, or a file of samples",
                       description="Evaluate the newest checkpoint of WORKDIR (its likelihood on "
                       "the eval split and, for image families, sample-quality metrics); prints "
                       "JSON and writes WORKDIR/eval.json. With --samples FILE.npz, scores images "
                       "that did not come from jaxgen (npz key 'images': [N,28,28] or "
                       "[N,28,28,1], uint8 0..255 or float in [0,1]).")
    e.add_argument("--workdir")
    e.add_argument("--samples", metavar="FILE.npz", help="score these images instead of a workdir")
    e.add_argument("--reference", default="mnist_embedded",
                   help="reference set for --samples (default mnist_embedded)")
    e.add_argument("--out", metavar="FILE.json", help="also write the JSON here")
    e.add_argument("--seed", type=int, default=0, help="metric seed for --samples (KID subsets)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an eval setting, e.g. --set eval.iwae_k=100")
    _add_distributed(e)

    sub.add_parser("list", help="list the experiments, their variants and what each is",
                   description="List every recipe on the experiment search path "
                   "($JAXGEN_EXPERIMENTS, ./experiments, the checkout's experiments/).")
    c = sub.add_parser("config", help="print an experiment's resolved config, key by key",
                       description="Print every key of EXPERIMENT[:VARIANT] with its type and "
                       "value: each line's key=value can be passed back with --set.")
    c.add_argument("experiment", metavar="EXPERIMENT[:VARIANT]")
    c.add_argument("--short", action="store_true", help="key, type and value only")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value first (repeatable)")

    s = sub.add_parser("sample", help="draw samples from a trained model",
                       description="Draw NUM samples from the newest checkpoint of WORKDIR and "
                       "write them to OUT (a PNG grid for images, text for language models).")
    s.add_argument("--workdir", required=True)
    s.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", required=True, help="output file, e.g. samples.png")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--scale", type=int, default=1,
                   help="enlarge a PNG grid N times, nearest neighbour (default 1)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sampling setting, e.g. --set sample.temperature=0.8")

    k = sub.add_parser("compile", help="compile an experiment for a TPU/GPU topology, here",
                       description="Compile EXPERIMENT[:VARIANT]'s train step, sampler and eval "
                       "step for an accelerator topology on this host (no accelerator and no "
                       "data needed; TPU needs libtpu: pip install 'jaxgen[tpu]'). Prints "
                       "per-chip memory against HBM, FLOPs, the compiler's ESTIMATED step time "
                       "and MFU, the collectives and the attention kernels, and writes them as "
                       "JSON. Exit 1 when a program does not fit, with the figures.")
    k.add_argument("experiment", metavar="EXPERIMENT[:VARIANT]")
    k.add_argument("--topology", required=True, metavar="NAME",
                   help="v5e:2x2, v5e:16x16, v4:2x2x1, v5p:4x4x4, v6e:4x4, v5e-256, h100:8, ...")
    k.add_argument("--slices", type=int, default=1, help="slices joined over DCN (default 1)")
    k.add_argument("--programs", default="train,sample,eval",
                   help="which programs to compile (default train,sample,eval)")
    k.add_argument("--out", metavar="FILE.json", help="write the report here (default: "
                   "compile/EXPERIMENT_VARIANT_TOPOLOGY.json)")
    k.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value first, e.g. --set mesh.fsdp=256 (repeatable)")

    p = sub.add_parser("prepare", help="write a dataset in the formats training reads lazily",
                       description="jaxgen prepare images: a folder of images (class "
                       "sub-folders are labels, like torchvision's ImageFolder) or an .npz "
                       "('image' uint8 [N,H,W(,C)], optional 'label') -> sharded ArrayRecord "
                       "files; train with --set data.source=arrayrecord --set data.path=OUT. "
                       "jaxgen prepare text: text files -> memory-mapped token files (train.bin, "
                       "val.bin) and their tokenizer; train with --set data.source=token_file "
                       "--set data.path=OUT.")
    p.add_argument("kind", choices=("images", "text"))
    p.add_argument("--from", dest="source", nargs="+", required=True, metavar="PATH",
                   help="images: one folder or .npz; text: one or more UTF-8 files")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write (new)")
    p.add_argument("--tokenizer", default="char", metavar="char|byte|bpe|FILE",
                   help="text: char, byte, bpe (trained on the corpus) or a tokenizer file such "
                   "as a Hugging Face tokenizer.json (default char)")
    p.add_argument("--vocab-size", type=int, default=512, help="text: the BPE vocabulary size")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="text: the last share of the input that is the val split (default 0.1)")
    p.add_argument("--eval-fraction", type=float, default=0.1,
                   help="images: the share held out as the test split (default 0.1; 0: none)")
    p.add_argument("--size", metavar="HxW", help="images: resize every image to HxW")
    p.add_argument("--workers", type=int, default=0,
                   help="text: encoding processes (default: one per CPU)")

    for verb, what in (("import", "a Hugging Face causal LM folder (GPT-2, Llama) -> a jaxgen "
                        "workdir that sample, eval and train (fine-tuning) use"),
                       ("export", "a jaxgen LM workdir -> a Hugging Face folder that "
                        "transformers.AutoModelForCausalLM.from_pretrained loads")):
        x = sub.add_parser(verb, help=what.split(" -> ")[0].replace("a ", "", 1) + " " + verb,
                           description=f"jaxgen {verb} hf: {what}.")
        x.add_argument("format", choices=("hf",))
        if verb == "import":
            x.add_argument("path", metavar="PATH", help="folder with config.json, "
                           "model.safetensors (or a sharded index) and tokenizer.json")
            x.add_argument("--set", dest="overrides", action="append", default=[],
                           metavar="KEY=VALUE", help="settings of the workdir's run, e.g. "
                           "--set model.scan_layers=true --set mesh.fsdp=8 (repeatable)")
        x.add_argument("--workdir", required=True, help="the workdir to write (import: new)")
        if verb == "export":
            x.add_argument("--out", required=True, metavar="DIR", help="the folder to write")

    b = sub.add_parser("bench", add_help=False, help="benchmark suite: attention | denoise | "
                       "train | input | all (jaxgen bench NAME --help)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="NAME [options]")
    return parser


def _distributed(args) -> bool:
    return bool(getattr(args, "coordinator", None)) or getattr(args, "distributed", "off") == "auto"


def _wait_for_coordinator(address: str, timeout_s: int) -> None:
    """Waits until ``host:port`` accepts a TCP connection; RunError after ``timeout_s``."""
    import socket
    import time

    from jaxgen.errors import RunError, UsageError
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--coordinator {address!r}: expected host:port")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RunError(f"the coordinator {address} could not be reached within "
                               f"{timeout_s} s ({e.strerror or e}); is process 0 running?") from e
            time.sleep(0.5)


def _init_distributed(args) -> None:
    """jax.distributed.initialize from the flags: explicit coordinator flags, or auto-detection.

    An unreachable coordinator ends with a one-line RunError after --distributed-timeout."""
    if not _distributed(args):
        return
    import jax

    from jaxgen.errors import RunError, UsageError
    explicit = dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
                    process_id=args.process_id)
    if args.coordinator and (args.num_processes is None or args.process_id is None):
        raise UsageError("--coordinator needs --num-processes and --process-id (or use "
                         "--distributed auto on a cluster that sets them)")
    if args.distributed_timeout <= 0:
        raise UsageError(f"--distributed-timeout must be positive, got {args.distributed_timeout}")
    kwargs = explicit if args.coordinator else {}
    if args.coordinator and args.process_id != 0:
        # XLA aborts the process (no Python exception) when the coordinator cannot be reached,
        # so the other processes first check that it accepts connections.
        _wait_for_coordinator(args.coordinator, args.distributed_timeout)
    try:
        jax.distributed.initialize(initialization_timeout=args.distributed_timeout, **kwargs)
    except (RuntimeError, ValueError) as e:
        where = args.coordinator or "the auto-detected coordinator"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"jax.distributed could not start with {where} within "
                       f"{args.distributed_timeout} s: {first[:300]}") from e


def cmd_train(args) -> int:
    from jaxgen import experiments, models
    from jaxgen.errors import UsageError
    from jaxgen.train import host, loop

    if args.experiment is None:  # resume (or fine-tune) a workdir as it is
        if not args.workdir or not os.path.exists(os.path.join(args.workdir, "config.json")):
            raise UsageError("give an EXPERIMENT, or a --workdir that already holds a run "
                             "(jaxgen import hf writes one)")
        config = loop.load_config(args.workdir)
        workdir = args.workdir
    else:
        config = experiments.get_config(args.experiment)
        workdir = args.workdir or os.path.join("workdirs", config.experiment.replace(":", "_")
                                               .removesuffix("_default"))
    loop.check_workdir(workdir, config)
    if os.path.exists(os.path.join(workdir, "config.json")):
        # Resuming: the workdir's own config is the base, so a resumed run continues exactly.
        config = loop.load_config(workdir)
    config = loop.absolute_data_paths(experiments.apply_overrides(config, args.overrides))
    host.configure_cpu_host(config, distributed=_distributed(args))
    _init_distributed(args)
    finished = loop.finished_step(workdir, config)
    try:
        state = loop.train(config, workdir, family=models.make_family,
                           progress=not args.no_progress)
    except loop.Preempted as e:
        print(f"jaxgen train: {e}", file=sys.stderr)
        return loop.PREEMPTED_EXIT_STATUS
    if finished is not None and int(state.step) == finished:
        print(f"{workdir} was already trained to step {finished} (train.steps="
              f"{config.train.steps}): nothing was done; --set train.steps=N to train on")
    else:
        print(f"trained {config.experiment} to step {int(state.step)} in {workdir}")
    return 0


def _restored_run(args, need_data: bool = True):
    """``jaxgen.load`` of ``--workdir`` with the ``--set`` overrides, after the CPU host split
    (which must happen before JAX starts)."""
    from jaxgen import api, experiments
    from jaxgen.train import host, loop

    config = loop.load_config(args.workdir)
    try:
        config = experiments.apply_overrides(config, args.overrides)
    except ValueError:
        pass  # api.load reports it with the right message
    host.configure_cpu_host(config, distributed=_distributed(args))
    return api.load(args.workdir, args.overrides, need_data=need_data)


def _write_json(path: str, results: dict) -> None:
    from jaxgen.train.workdir import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, results)


def cmd_eval(args) -> int:
    from jaxgen.errors import UsageError
    from jaxgen.train.workdir import check_output_file

    if bool(args.workdir) == bool(args.samples):
        raise UsageError("give exactly one of --workdir DIR (a trained run) or --samples FILE.npz")
    if args.out:
        check_output_file(args.out, "--out")
    if args.samples:
        if args.overrides:
            raise UsageError("--set applies to --workdir runs, not to --samples")
        from jaxgen import eval as eval_lib
        results = eval_lib.score_samples_file(args.samples, reference=args.reference,
                                              seed=args.seed)
        print(json.dumps(results, indent=2))
        if args.out:
            _write_json(args.out, results)
        return 0

    import jax

    from jaxgen import api

    _init_distributed(args)
    run = _restored_run(args)
    results = api.full_evaluation(run.built, run.state, run.step,
                                  figures_prefix=os.path.join(args.workdir, "eval"))
    if jax.process_index() == 0:
        _write_json(os.path.join(args.workdir, "eval.json"), results)
        if args.out:
            _write_json(args.out, results)
        print(json.dumps(results, indent=2))
    return 0


def cmd_sample(args) -> int:
    import jax

    from jaxgen.errors import UsageError
    from jaxgen.train import loop

    from jaxgen.models import family_class
    from jaxgen.train.workdir import check_output_file

    if args.num <= 0:
        raise UsageError(f"--num must be positive, got {args.num}")
    if args.scale < 1:
        raise UsageError(f"--scale must be a positive integer, got {args.scale}")
    suffix = family_class(loop.load_config(args.workdir).family).sample_suffix
    check_output_file(args.out, "--out", (suffix, ".npz"))
    if args.scale != 1 and not args.out.endswith(".png"):
        raise UsageError(f"--scale enlarges PNG grids; {args.out} is not one")
    restored = _restored_run(args, need_data=False)
    run, state = restored.built, restored.state
    files = loop.write_samples(run, state, jax.random.PRNGKey(args.seed), args.num, args.out,
                               scale=args.scale)
    for f in files:
        print(f)
    return 0


def cmd_import(args) -> int:
    from jaxgen import hub

    workdir = hub.import_hf(args.path, args.workdir, args.overrides)
    print(f"imported {args.path} into {workdir} (step 0): jaxgen sample --workdir {workdir} "
          "--out samples.txt")
    return 0


def cmd_export(args) -> int:
    from jaxgen import hub

    for f in hub.export_hf(args.workdir, args.out):
        print(f)
    return 0


def cmd_bench(args) -> int:
    """``jaxgen bench NAME ...`` runs ``python -m benchmarks NAME ...``: the suite lives in the
    source checkout's ``benchmarks/`` folder, next to ``jaxgen/``."""
    from jaxgen.errors import UsageError

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "benchmarks", "suite.py")) and root not in sys.path:
        sys.path.insert(0, root)
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError as e:
        raise UsageError(f"jaxgen bench needs a source checkout with benchmarks/ next to "
                         f"jaxgen/ (looked in {root}): {e}") from e
    return bench_main(args.bench_args, prog="jaxgen bench")


def cmd_prepare(args) -> int:
    from jaxgen.errors import UsageError

    if args.kind == "images":
        from jaxgen.data import arrayrecord
        if len(args.source) != 1:
            raise UsageError("jaxgen prepare images takes one --from folder or .npz")
        size = arrayrecord.parse_size(args.size) if args.size else None
        info = arrayrecord.prepare_images(args.source[0], args.out, size=size,
                                          eval_fraction=args.eval_fraction)
        counts = {k: sum(v["counts"]) for k, v in info["splits"].items()}
        print(f"wrote {args.out}: " + ", ".join(f"{k} {n:,}" for k, n in counts.items())
              + f" images {'x'.join(map(str, info['shape']))}, {info['num_classes']} classes; "
              f"train with --set data.source=arrayrecord --set data.path={args.out}")
        return 0
    from jaxgen.data import tokenfile
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    info = tokenfile.prepare_text(args.source, args.tokenizer, args.out,
                                  vocab_size=args.vocab_size, val_fraction=args.val_fraction,
                                  workers=args.workers)
    print(f"wrote {args.out}: train {info['splits']['train']:,} and val "
          f"{info['splits']['val']:,} {info['dtype']} tokens, vocabulary {info['vocab_size']:,} "
          f"({info['tokenizer']}); train with --set data.source=token_file --set "
          f"data.path={args.out}")
    return 0


def cmd_compile(args) -> int:
    from jaxgen.train.workdir import check_output_file

    name = f"{args.experiment.replace(':', '_')}_{args.topology.replace(':', '_')}"
    out = args.out or os.path.join("compile", name + (f"_x{args.slices}" if args.slices > 1
                                                      else "") + ".json")
    check_output_file(out, "--out", (".json",))
    from jaxgen.aot.experiment import compile_experiment, format_summary
    from jaxgen.train.workdir import write_json

    result = compile_experiment(args.experiment, args.topology, slices=args.slices,
                                overrides=args.overrides,
                                programs=[p.strip() for p in args.programs.split(",") if p.strip()])
    print(format_summary(result))
    write_json(out, result)
    print(f"\nwritten to {out} (times and MFU are the compiler's estimates, not measurements)")
    return 0


def cmd_list(args) -> int:
    from jaxgen import experiments

    rows = experiments.describe_all()
    if not rows:
        raise ValueError("no experiments found; set JAXGEN_EXPERIMENTS or run from a checkout")
    width = max(len(f"{n}:{v}") for n, v, _ in rows)
    for name, variant, text in rows:
        print(f"{name + ':' + variant:<{width}}  {text}")
    return 0


def cmd_config(args) -> int:
    from jaxgen import experiments

    config = experiments.apply_overrides(experiments.get_config(args.experiment), args.overrides)
    reasons = experiments.recipe_reasons(args.experiment)
    items = experiments.flat_items(config)
    rows = [(key, info.type, experiments.format_value(value), info, key in reasons)
            for key, value, info in items]
    kw, tw = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    vw = min(max(len(r[2]) for r in rows), 24)
    for key, kind, text, info, why in rows:
        doc = re.sub(r":\w+:`([^`]*)`", r"\1", info.doc).replace("``", "")
        if info.choices:
            doc += f" [one of: {', '.join(map(str, info.choices))}]"
        if why:
            doc += f" [the recipe: {reasons[key]}]"
        line = f"{key:<{kw}}  {kind:<{tw}}  {text:<{vw}}"
        print(f"{line}  # {doc}" if doc and not args.short else line.rstrip())
    if not args.short:
        print(f"# every line's key=value can be given back with --set; {len(rows)} settings")
        print(f"# parameters: {_param_count_line(config)}")
    return 0


def _param_count_line(config) -> str:
    """The model's parameter count from the settings' shapes (no data read, nothing run)."""
    from jaxgen import models
    from jaxgen.errors import UsageError
    from jaxgen.train import loop
    from jaxgen.train.state import format_count

    try:
        n = loop.shape_param_count(config, models.make_family)
    except UsageError as e:
        return f"known once the data is read ({e})"
    return f"{n:,} ({format_count(n)})"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    commands = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "bench": cmd_bench,
                "list": cmd_list, "config": cmd_config, "compile": cmd_compile,
                "prepare": cmd_prepare, "import": cmd_import, "export": cmd_export}
    if args.command in ("compile", "config"):
        # compile-only devices, or shapes only: never initialise a local accelerator or probe
        # for a TPU VM
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        from jaxgen.aot.topology import deviceless_env

        deviceless_env()
    from jaxgen.errors import RunError
    try:
        return commands[args.command](args)
    except RunError as e:
        if os.environ.get("JAXGEN_DEBUG"):
            raise
        print(f"jaxgen {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except USAGE_ERRORS as e:
        if os.environ.get("JAXGEN_DEBUG"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"jaxgen {args.command}: error: {msg.splitlines()[0] if msg else type(e).__name__}",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `jaxgen config ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"jaxgen {args.command}: interrupted", file=sys.stderr)
        return 130


def _signal_status(command: str, name: str) -> int:
    if command == "train":
        return 130 if name == "SIGINT" else PREEMPTED_EXIT_STATUS
    return 130 if name == "SIGINT" else 143


def _signal_message(command: str, name: str) -> str:
    if command == "train":
        return (f"jaxgen train: {name} received: stopped; the workdir holds every step saved so "
                "far and nothing was half-written: run the same command again to resume")
    return f"jaxgen {command}: {name} received: stopped; nothing was written"


def console_main(argv: list[str] | None = None) -> int:
    """The ``jaxgen`` program: :func:`main` with the signal handling of a command-line process
    (:func:`jaxgen.signals.install_immediate`); ``main`` alone is what tests call in-process."""
    from jaxgen import signals

    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), "jaxgen")
    signals.install_immediate(lambda name: _signal_status(command, name),
                              lambda name: _signal_message(command, name))
    return main(args)


PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL: jaxgen.train.loop.PREEMPTED_EXIT_STATUS


if __name__ == "__main__":
    sys.exit(console_main())
