"""The benchmark suite: one entry point, three well-formed output files, failures contained."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from benchmarks import report, suite
from benchmarks.__main__ import main as bench_main
from envs import host_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env():
    return host_env("NPROC", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


def _run(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                          env={**_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _check_outputs(out_dir, names):
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
        record = json.load(f)
    for key in ("command", "date", "device", "versions", "host", "benchmarks"):
        assert key in record, key
    assert {"jax", "jaxlib", "flax", "torch"} <= set(record["versions"])
    assert [s["name"] for s in record["benchmarks"]] == names
    with open(os.path.join(out_dir, "results.md"), encoding="utf-8") as f:
        md = f.read()
    with open(os.path.join(out_dir, "results.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    return record, md


@pytest.mark.slow  # every benchmark's quick run in one process: about 4 minutes of CPU
def test_all_quick_runs_every_benchmark_and_writes_each_section(tmp_path):
    """``all --quick``: each benchmark runs (or says why not) and its section has the rows,
    columns and ratios a reader needs. Timings are never asserted, only the record's shape."""
    out = tmp_path / "all"
    proc = _run("all", "--quick", "--out", str(out), env={"JAXGEN_BENCH_DATA": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record, md = _check_outputs(out, ["attention", "denoise", "train", "input"])
    assert "python -m benchmarks all --quick --out" in record["command"]
    assert "attention" in proc.stdout and "wrote png" in proc.stdout
    sections = {s["name"]: s for s in record["benchmarks"]}
    for section in sections.values():
        assert section["status"] in ("ok", "skipped")
        if section["status"] == "skipped":
            assert section["reason"] and "\n" not in section["reason"]
            assert f"skipped: {section['reason']}" in md
    _check_attention(sections["attention"])
    _check_denoise(sections["denoise"], record)
    _check_train(sections["train"], record)
    _check_input(sections["input"], tmp_path)


def _check_input(section, data_root):
    """Both sources at two sizes, the worker sweep at the larger, the step they feed."""
    assert section["status"] == "ok", section["reason"]
    rows = section["rows"]
    assert not [r for r in rows if "skipped" in r], rows
    assert {r["source"] for r in rows} == {"tokens", "images"}
    for source in ("tokens", "images"):
        mine = [r for r in rows if r["source"] == source]
        sizes = sorted({r["size"] for r in mine})
        assert len(sizes) == 2 and sizes[1] == 10 * sizes[0]
        assert {r["workers"] for r in mine if r["size"] == sizes[1]} == {0, 1}
        for r in mine:
            assert r["batches_per_s"] > 0 and r["step_per_s"] > 0 and r["RssAnon"] > 0
            assert r["headroom"] == pytest.approx(r["batches_per_s"] / r["step_per_s"])
        assert all(r["workers_anon"] > 0 for r in mine if r["workers"] == 1)
    assert len(os.listdir(data_root)) >= 4  # the synthetic sets were written where told


def _section_table(section):
    return [ln for ln in report.section_markdown(section) if ln.startswith("| ")]


def _check_attention(section):
    assert section["status"] == "ok", section["reason"]
    rows = section["rows"]
    kernels = {r["kernel"] for r in rows}
    assert {"reference", "xla", "chunked", "cudnn", "pallas", "torch_sdpa"} <= kernels
    timed = [r for r in rows if "median_ms" in r]
    for r in timed:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["gflops"] > 0 and r["max_err"] < 0.1 and r["pass"] in ("fwd", "fwd_bwd")
    assert all("skipped" in r for r in rows if r["kernel"] == "cudnn")  # no GPU here
    assert any(r["kernel"] == "chunked" and r.get("mem_mib") for r in timed)
    table = _section_table(section)
    assert "torch/jaxgen time (>1: jaxgen faster)" in table[0]
    assert len(table) == 1 + len(rows)  # the header, then one line per row
    assert any(ln.startswith("| chunked | 2 | 2 | 128 | 64 | yes | float32 | fwd |")
               for ln in table)


def _check_denoise(section, record):
    """The tiny UNet, 2 steps, batch 2: every sampler against diffusers, forward rows, the
    Python-loop comparison; the latent rows (ldm_mnist against diffusion_mnist, smoke)."""
    assert section["status"] == "ok", section["reason"]
    rows = _timed_rows(section, "median_ms")
    samplers = {r["sampler"] for r in rows if r["kind"] == "sample" and r["impl"] == "jaxgen"}
    assert samplers == {"ddpm", "ddim", "dpmpp_2m", "euler", "heun"}
    assert any(r["kind"] == "forward" and r["gflops"] > 0 for r in rows)
    assert any(r["kind"] == "python_loop" and r["vs_scan"] > 0 for r in rows)
    heun = [r for r in rows if r["kind"] == "sample" and r["sampler"] == "heun"]
    assert {r["evals"] for r in heun} == {3}  # 2 steps - 1 corrections, as diffusers counts
    if record["versions"]["diffusers"]:
        assert all(r.get("vs_peer", 0) > 0 for r in rows
                   if r["impl"] == "jaxgen" and r["kind"] != "latent")
    latent = {r["model"]: r for r in rows if r["kind"] == "latent"}  # the recipes' smoke shapes
    assert set(latent) == {"pixel", "latent"} and latent["latent"]["vs_pixel"] > 0
    assert latent["latent"]["sampler"] == latent["pixel"]["sampler"]
    assert latent["latent"]["steps"] == latent["pixel"]["steps"]
    assert section["summary"]["latent_vs_pixel"] == latent["latent"]["vs_pixel"]
    assert section["meta"]["peak_matmul_gflops"] > 0 and len(section["meta"]["loadavg_start"]) == 3
    assert "diffusers/jaxgen time (>1: jaxgen faster)" in _section_table(section)[0]


def _check_train(section, record):
    """Smoke recipes of every family, 3 timed steps; the LM beside nanoGPT's torch step."""
    assert section["status"] == "ok", section["reason"]
    by = {r["family"]: r for r in section["rows"] if r["impl"] == "jaxgen"}
    assert set(by) == {"vae", "gan", "diffusion", "lm"}
    for r in by.values():
        assert "skipped" in r or (r["step_ms"] > 0 and r["mfu"] > 0 and r["throughput"] > 0), r
    if record["versions"]["torch"] and "skipped" not in by["lm"]:
        assert by["lm"]["vs_nanogpt"] > 0 and by["lm"]["data"] in ("text_file", "stdlib")
    assert "jaxgen/nanoGPT step time (<1: jaxgen faster)" in _section_table(section)[0]


@pytest.mark.parametrize("argv,message", [
    (["flash"], "unknown benchmark 'flash'; choose from attention, denoise, train, input, all"),
    (["attention", "--kernels", "xla,flash"], "unknown kernel(s) flash; choose from"),
    (["attention", "--grid", "huge"], "unknown grid 'huge'"),
    (["attention", "--shapes", "4,8,x,64"], "bad shape '4,8,x,64'"),
    (["denoise", "--cpu-devices", "-1"], "--cpu-devices must be >= 0, got -1"),
    (["attention", "--blocks", "256"], "--blocks takes two positive ints BQ,BK, got '256'"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert bench_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_host_split_defaults_follow_the_cli_and_yield_to_the_flag():
    from benchmarks.__main__ import cpu_devices_for
    # denoise/train time what `jaxgen sample`/`jaxgen train` run (one device per core);
    # attention runs as a plain python process
    assert [cpu_devices_for(n, None) for n in ("attention", "denoise", "train", "all")] == \
        [1, 0, 0, 1]
    assert cpu_devices_for("denoise", 1) == 1 and cpu_devices_for("attention", 0) == 0


def test_jaxgen_bench_subcommand_reaches_the_suite(capsys):
    from jaxgen import cli
    assert cli.main(["bench", "nope"]) == 2
    assert "jaxgen bench: error: unknown benchmark 'nope'" in capsys.readouterr().err


def _fake(name, run):
    module = types.ModuleType(name)
    if run is not None:
        module.run = run
    sys.modules[name] = module
    return suite.Benchmark(name.split(".")[-1], name, "a test double")


GOOD = {"rows": [{"x": 1, "y": 2.0, "k": "a"}, {"x": 2, "y": 3.0, "k": "a"}],
        "table_columns": ["k", ["x", "X"], "y"],
        "plot": {"x": "x", "y": "y", "series": "k", "title": "t"}}


def _boom(quick):
    raise RuntimeError("no data\nsecond line")


@pytest.mark.parametrize("run,reason", [
    (_boom, "RuntimeError: no data"),
    (lambda quick: [1, 2], "run() returned list, not a dict"),
    (lambda quick: {"rows": []}, "result lacks table_columns, plot"),
])
def test_a_failing_benchmark_is_skipped_with_one_line(run, reason):
    section = suite.run_one(_fake("fake_bench_bad", run), True, None, {})
    assert section["status"] == "skipped" and section["reason"] == reason


def test_a_missing_module_is_skipped():
    bench = suite.Benchmark("ghost", "benchmarks.no_such_benchmark", "missing")
    section = suite.run_one(bench, True, None, {})
    assert section == {**section, "status": "skipped",
                       "reason": "module benchmarks.no_such_benchmark is not there"}


def test_runner_passes_only_the_options_run_accepts(tmp_path):
    seen = {}

    def run(quick, out=None):
        seen.update(quick=quick, out=out)
        return GOOD
    section = suite.run_one(_fake("fake_bench_opts", run), True, str(tmp_path), {"grid": "x"})
    assert section["status"] == "ok" and seen == {"quick": True, "out": str(tmp_path)}


def test_report_writes_table_with_skips_and_noise_marks_and_a_png(tmp_path):
    ok = {**GOOD, "name": "toy", "status": "ok", "reason": None, "notes": ["a note"],
          "rows": GOOD["rows"] + [{"k": "b", "x": 3, "skipped": "cannot | run"},
                                  {"k": "c", "x": 1, "y": 1.0, "spread": 0.5}],
          "table_columns": GOOD["table_columns"] + ["spread"]}
    gone = {"name": "gone", "status": "skipped", "reason": "module x is not there", "rows": [],
            "table_columns": [], "plot": {}}
    record = {"command": "python -m benchmarks all", "date": "today", "device": "cpu",
              "host": "one device", "versions": {"jax": "0", "torch": None},
              "benchmarks": [ok, gone]}
    paths = report.write_all(str(tmp_path), record)
    with open(paths["markdown"], encoding="utf-8") as f:
        md = f.read()
    assert "| k | X | y | spread |" in md and "| a | 1 | 2.00 |  |" in md
    assert "skipped: cannot / run" in md and "0.50 (!)" in md
    assert "skipped: module x is not there" in md and "torch not installed" in md
    with open(paths["png"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with open(paths["json"], encoding="utf-8") as f:
        assert json.load(f)["benchmarks"][1]["status"] == "skipped"


def test_a_quick_run_of_one_size_is_drawn_as_labelled_bars():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel = {"x": "T", "y": "ms", "series": "k", "logy": True, "xlabel": "T"}
    rows = [{"k": "xla", "T": 256, "ms": 2.0}, {"k": "torch", "T": 256, "ms": 3.0}]
    series = report._series(rows, panel)
    assert report._one_point_each(series)
    assert not report._one_point_each(report._series(rows + [{"k": "xla", "T": 512, "ms": 5.0}],
                                                     panel))
    fig, ax = plt.subplots()
    suffix = report._draw_bars(ax, series, panel)
    assert [p.get_height() for p in ax.patches] == [3.0, 2.0]  # sorted labels: torch, xla
    assert [t.get_text() for t in ax.get_xticklabels()] == ["torch", "xla"]
    assert suffix == " (T = 256)" and ax.get_yscale() == "log"
    plt.close(fig)


def _tiny_case():
    from benchmarks.attention_grid import Case
    return Case(2, 2, 32, 16, True, "float32")


def test_attention_runs_without_torch_and_says_so(monkeypatch):
    from benchmarks import attention, peers
    monkeypatch.setattr(peers, "torch_unavailable_reason",
                        lambda: "peer torch not installed (ImportError); pip install -e .[peers]")
    rows = attention.bench_case(_tiny_case(), "fwd", ("xla",), True,
                                attention.Options(repeats=1), {"float32": 1.0})
    by = {r["kernel"]: r for r in rows}
    assert by["torch_sdpa"]["skipped"].startswith("peer torch not installed")
    assert by["xla"]["median_ms"] > 0 and "vs_torch" not in by["xla"]


def test_a_shape_a_kernel_cannot_take_is_a_skipped_row(monkeypatch):
    from benchmarks import attention
    real = attention.attention

    def picky(q, k, v, *, kernel, **kw):
        if kernel == "chunked":
            raise ValueError("attention kernel 'chunked' cannot take this shape\nmore")
        return real(q, k, v, kernel=kernel, **kw)
    monkeypatch.setattr(attention, "attention", picky)
    rows = attention.bench_case(_tiny_case(), "fwd_bwd", ("chunked", "xla"), True,
                                attention.Options(repeats=1), {"float32": 1.0})
    by = {r["kernel"]: r for r in rows}
    assert by["chunked"]["skipped"] == "attention kernel 'chunked' cannot take this shape"
    assert by["xla"]["median_ms"] > 0 and by["xla"]["max_err"] < 1e-4


def test_blocks_reach_the_tiled_kernels_only():
    """--blocks 16,32: chunked runs with them, cpu_flash refuses a block_k that is not a multiple
    of 64 (a skipped row, so the tiles did reach it), xla ignores them."""
    import jax
    import jax.numpy as jnp

    from benchmarks import attention
    from jaxgen.nn.kernels.cpu_flash import cpu_flash_unusable_reason
    rows = attention.bench_case(_tiny_case(), "fwd", ("chunked", "cpu_flash", "xla"), True,
                                attention.Options(repeats=1, blocks=(16, 32)), {"float32": 1.0})
    by = {r["kernel"]: r for r in rows}
    assert by["chunked"]["median_ms"] > 0 and by["chunked"]["max_err"] < 1e-5
    assert by["xla"]["median_ms"] > 0
    probe = jax.ShapeDtypeStruct((2, 32, 2, 16), jnp.float32)
    unavailable = cpu_flash_unusable_reason(probe, probe, probe)
    assert by["cpu_flash"]["skipped"] == (
        unavailable or "attention kernel 'cpu_flash' needs block_q >= 1 and block_k a positive "
                       "multiple of 64, got block_q=16, block_k=32")


def _timed_rows(section, key):
    rows = [r for r in section["rows"] if key in r]
    for r in rows:
        assert r[key] > 0 and r["spread"] >= 0
    return rows


def test_unet_short_attention_path_equals_the_xla_kernel():
    """The U-Net's CPU attention path ("auto" at short sequences: "short") computes what "xla"
    does, and "auto" on the U-Net's shapes is "short" on CPU and "xla" when the program is
    traced under a TPU mesh's devices (the dispatcher asks the mesh, not the backend)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgen.nn.kernels import choose_kernel
    from jaxgen.nn.unet import UNet, UNetConfig
    cfg = UNetConfig(block_channels=(8, 16), layers_per_block=1, attention_levels=(False, True),
                     norm_groups=4, zero_init=False)
    q = jax.ShapeDtypeStruct((2, 14 * 14, 2, 8), jnp.float32)
    assert choose_kernel(q, q, causal=False, mask=None) == "short"
    assert choose_kernel(q, q, causal=False, mask=None, platform="tpu") == "xla"
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    t = jnp.array([3.0, 700.0])
    params = UNet(cfg).init(jax.random.key(1), x, t)
    got, want = (UNet(dataclasses.replace(cfg, attention_kernel=k)).apply(params, x, t)
                 for k in ("auto", "xla"))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)


def test_unet_parts_rows_agree_with_their_references():
    """benchmarks.unet_parts times layouts that compute the same thing: every row's output is
    within float32 rounding of its reference row."""
    from benchmarks import unet_parts
    rows = unet_parts.attention_rows(batch=1, repeats=1) + unet_parts.group_norm_rows(1, 1)
    names = [name for name, _, _ in rows]
    assert any("short_attention" in n for n in names) and any("flax GroupNorm" in n for n in names)
    for name, ms, err in rows:
        assert ms > 0 and err < 1e-4, (name, ms, err)


def test_nanogpt_peer_matches_nanogpt_shapes_and_trains():
    torch = pytest.importorskip("torch")
    from benchmarks import nanogpt_torch as ng
    c = ng.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4)
    model, step = ng.make_step(c)
    # nanoGPT: tied head, no biases with bias=False, 12 d^2 weights per layer
    assert model.lm_head.weight is model.wte.weight
    assert ng.num_params(model) == c.vocab_size * 16 + 12 * 16 * 16 + 3 * 16
    data = ng.batches(torch.arange(200) % c.vocab_size, c, 3)
    losses = [step(x, y) for x, y in data]
    assert all(0 < loss < 10 for loss in losses)  # ln(65) = 4.2 at init


def test_lm_step_profile_breakdown_sums_op_kinds_and_skips_enclosing_events(tmp_path, capsys):
    import gzip
    import json

    from benchmarks.lm_step import print_breakdown
    events = [{"ph": "X", "name": "ynn_fusion.3", "dur": 3000},
              {"ph": "X", "name": "ynn_fusion.7", "dur": 1000},
              {"ph": "X", "name": "all-reduce.28", "dur": 2000},
              {"ph": "X", "name": "Rendezvous", "dur": 1900},          # nested in the all-reduce
              {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9000},
              {"ph": "i", "name": "ynn_fusion.9", "dur": 5000}]         # not a duration event
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    print_breakdown(str(path), steps=2)
    lines = capsys.readouterr().out.splitlines()
    rows = {ln.split()[0]: ln.split()[1:3] for ln in lines[2:4]}
    assert rows == {"ynn_fusion": ["2.00", "1.0"], "all-reduce": ["1.00", "0.5"]}
    assert lines[4].split()[:3] == ["all", "ops", "3.00"]


@pytest.mark.parametrize("argv,message", [
    (["denoise", "--workdir", "w"], "--workdir is an option of denoise --quality"),
    (["denoise", "--quality"], "denoise --quality needs --workdir"),
    (["attention", "--quality", "--workdir", "."], "--quality is an option of the denoise"),
    (["denoise", "--quality", "--workdir", "/nonexistent"], "is not a directory"),
    (["denoise", "--quality", "--workdir", ".", "--points", "ddim:0"], "--points takes"),
    (["denoise", "--quality", "--workdir", ".", "--points", "plms:10"], "--points takes"),
    (["denoise", "--quality", "--workdir", ".", "--points", "ddim:5:tau=1"],
     "unknown sample setting(s) tau"),
    (["denoise", "--quality", "--workdir", ".", "--samples", "3"], "--samples must be >= 10"),
])
def test_quality_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert bench_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_denoise_quality_quick_scores_every_point_of_a_trained_workdir(tmp_path):
    """``denoise --quality --quick`` on a two-step smoke workdir: a quality row per point with
    fd_lenet per seed, the floor at the same count, the ratio to the baseline (the first point),
    and the speed rows with diffusers' DDIM at the baseline's steps as the peer (vs_peer 1 for
    the peer itself)."""
    w = str(tmp_path / "w")
    proc = subprocess.run([sys.executable, "-m", "jaxgen.cli", "train", "diffusion_mnist:smoke",
                           "--workdir", w, "--no-progress", "--set", "train.steps=2"],
                          cwd=ROOT,
                          env=host_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "q"
    proc = _run("denoise", "--quality", "--quick", "--workdir", w, "--out", str(out),
                "--points", "ddpm:4,dpmpp_2m:3", "--samples", "12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record, md = _check_outputs(out, ["denoise"])
    section = record["benchmarks"][0]
    assert section["status"] == "ok", section["reason"]
    quality = [r for r in section["rows"] if r["kind"] == "quality"]
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in quality] == [("ddpm", 4, 4),
                                                                        ("dpmpp_2m", 3, 3)]
    for r in quality:
        assert len(r["fd_per_seed"]) == r["seeds"] == 2 and r["samples"] == 12
        assert r["fd_mean"] == pytest.approx(np.mean(r["fd_per_seed"])) and r["fd_mean"] > 0
        assert r["images_per_s"] > 0
    assert quality[0]["fd_vs_baseline"] == 1.0
    assert quality[1]["grid"] == "karras" and quality[0]["clip"] == "x0"
    assert section["summary"]["floor_samples"] == 12
    speed = {(r["impl"], r["sampler"], r["steps"]): r for r in section["rows"]
             if r["kind"] == "speed" and "skipped" not in r}
    assert speed[("diffusers", "ddim", 4)]["vs_peer"] == 1.0
    assert ("jaxgen", "ddpm", 4) in speed
    assert [k for k in speed if k[:2] == ("diffusers", "dpmpp_2m")]
    assert sum(r.get("best", False) for r in speed.values()) == 1
    assert "fd / baseline" in md and "vs diffusers DDIM" in md
