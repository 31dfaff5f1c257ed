"""jaxgen.aot: topology names, compile-only devices and meshes, compile reports, OOM, collectives.

The module needs libtpu and is skipped, with one line, without it (CI installs it).
"""

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen import aot
from jaxgen.errors import RunError, UsageError

pytest.importorskip(
    "libtpu", reason="libtpu is not installed (pip install 'jax[tpu]'): TPU compile tests skipped")

GiB = 2**30


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("name, chip, shape", [
    ("v5e:2x2", "v5e", (2, 2)), ("v5litepod:4x8", "v5e", (4, 8)), ("v5e-256", "v5e", (16, 16)),
    ("v5litepod-16", "v5e", (4, 4)), ("v6e:4x4", "v6e", (4, 4)), ("v6e-8", "v6e", (2, 4)),
    ("v4:2x2x1", "v4", (2, 2, 1)), ("v4-8", "v4", (2, 2, 1)), ("v5p:4x4x4", "v5p", (4, 4, 4)),
    ("v5p-128", "v5p", (4, 4, 4)), ("h100", "h100", (1, 8)), ("h200:2x8", "h200", (2, 8)),
    ("h100:4", "h100", (1, 4)),
])
def test_parse_topology(name, chip, shape):
    spec = aot.parse_topology(name)
    assert (spec.chip.name, spec.shape) == (chip, shape)


@pytest.mark.parametrize("name", ["v7:2x2", "v5e:2x2x2", "v4:2x2", "v5e:axb", "v5e", "v5e-3",
                                  "v4-7", "v5p-6", "h100:0x8", "h100:2x2x2", "", "v5e:0x4"])
def test_bad_topology_is_one_line_usage_error_listing_what_is_accepted(name):
    with pytest.raises(UsageError) as e:
        aot.parse_topology(name)
    assert "\n" not in str(e.value) and "accepted: v5e:AxB" in str(e.value)


def test_resolve_axis_sizes_fills_one_minus_one_and_refuses_the_rest():
    assert aot.resolve_axis_sizes({"data": -1, "fsdp": 4}, 16) == {"data": 4, "fsdp": 4}
    for sizes in ({"data": 3, "fsdp": -1}, {"data": -1, "fsdp": -1}, {"data": 2, "fsdp": 4},
                  {"data": 0}):
        with pytest.raises(UsageError):
            aot.resolve_axis_sizes(sizes, 16)


# ---------------------------------------------------------------- HLO parser

HLO = """HloModule m, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%all-reduce-scatter (input: f32[512,256]) -> f32[128,256] {
  %input = f32[512,256]{1,0} parameter(0)
  %all-reduce.1 = f32[512,256]{1,0} all-reduce(%input), channel_id=7, replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %sl = f32[128,256]{1,0} slice(%all-reduce.1), slice={[0:128], [0:256]}
}

%cond (p: (s32[], bf16[64,64])) -> pred[] {
  %p = (s32[], bf16[64,64]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%clone (q: bf16[16,64]) -> bf16[64,64] {
  %q = bf16[16,64]{1,0} parameter(0)
  ROOT %ag.clone = bf16[64,64]{1,0} all-gather(%q), channel_id=3, dimensions={0}
}

%body (p.1: (s32[], bf16[64,64])) -> (s32[], bf16[64,64]) {
  %p.1 = (s32[], bf16[64,64]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %x = bf16[64,64]{1,0} get-tuple-element(%p.1), index=1
  %xs = bf16[16,64]{1,0} slice(%x), slice={[0:16], [0:64]}
  %ag-start = (bf16[16,64]{1,0}, bf16[64,64]{1,0}) all-gather-start(bf16[16,64]{1,0} %xs), channel_id=3, dimensions={0}
  %ag-done = bf16[64,64]{1,0} all-gather-done(%ag-start)
  %one = s32[] constant(1)
  %next = s32[] add(%i.1, %one)
  ROOT %t = (s32[], bf16[64,64]{1,0}) tuple(%next, %ag-done)
}

ENTRY %main (w: f32[512,256], x.0: bf16[64,64]) -> f32[128,256] {
  %w = f32[512,256]{1,0} parameter(0)
  %x.0 = bf16[64,64]{1,0} parameter(1)
  %fusion = f32[128,256]{1,0} fusion(%w), kind=kCustom, calls=%all-reduce-scatter
  %c = f32[] constant(0)
  %v = f32[8]{0} broadcast(%c), dimensions={}
  %u = f32[4]{0} broadcast(%c), dimensions={}
  %ar = (f32[8]{0}, f32[4]{0}) all-reduce(%v, %u), channel_id=9, to_apply=%add
  %cp-start = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%v), channel_id=11, source_target_pairs={{0,1},{1,0}}
  %cp-done = f32[8]{0} collective-permute-done(%cp-start)
  %tok = token[] after-all()
  %snd = (f32[8]{0}, u32[], token[]) send(%v, %tok), channel_id=13, is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
  %snd-done = token[] send-done(%snd), channel_id=13, is_host_transfer=true
  %zero = s32[] constant(0)
  %init = (s32[], bf16[64,64]{1,0}) tuple(%zero, %x.0)
  %loop = (s32[], bf16[64,64]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[128,256]{1,0} copy(%fusion)
}
"""


def test_collective_summary_counts_kinds_bytes_async_pairs_clones_loops_and_dcn():
    s = aot.collective_summary(HLO)
    # all-reduce inside the TPU "all-reduce-scatter" fusion is a reduce-scatter of the full input
    assert s["reduce-scatter"] == {"count": 1, "bytes": 512 * 256 * 4, "count_per_step": 1,
                                   "bytes_per_step": 512 * 256 * 4}
    assert s["all-reduce"]["count"] == 1 and s["all-reduce"]["bytes"] == (8 + 4) * 4  # a tuple
    # start/done counted once; the start tuple's operand copy and u32 context are not bytes
    assert s["collective-permute"]["count"] == 1 and s["collective-permute"]["bytes"] == 32
    # the clone in %clone shares channel 3 with the loop's all-gather: one op, run 4 times
    assert s["all-gather"] == {"count": 1, "bytes": 64 * 64 * 2, "count_per_step": 4,
                               "bytes_per_step": 4 * 64 * 64 * 2}
    assert s["all-to-all"]["count"] == 0 and s["unknown_trip_counts"] == 0
    # a megascale send is a collective between slices, of its payload's bytes
    assert s["dcn"]["all-reduce"] == {"count": 1, "bytes": 32, "count_per_step": 1,
                                      "bytes_per_step": 32}
    assert s["all-reduce"]["count"] == 1  # the DCN one is not counted again on ICI
    assert aot.loop_trip_counts(HLO) == [4]


# ---------------------------------------------------------------- TPU topologies


@pytest.mark.parametrize("name, n, kind", [
    ("v5e:2x2", 4, "TPU v5 lite"), ("v4:2x2x1", 4, "TPU v4"), ("v5p:4x4x4", 64, "TPU v5"),
    ("v6e:4x4", 16, "TPU v6 lite"), ("v5e-256", 256, "TPU v5 lite"), ("v5e:1x1", 1, "TPU v5 lite"),
])
def test_topology_devices_one_device_per_chip(name, n, kind):
    devices = aot.topology_devices(name)
    assert len(devices) == n and {d.device_kind for d in devices} == {kind}
    assert {d.platform for d in devices} == {"tpu"}


@pytest.mark.parametrize("slices", [0, -1, 1.5, True])
def test_bad_slices_is_usage_error(slices):
    with pytest.raises(UsageError, match="slices must be an integer >= 1"):
        aot.topology_devices("v5e:2x2", slices=slices)


def test_libtpu_refusal_is_one_line_usage_error():
    with pytest.raises(UsageError, match="libtpu refused topology 'v5e:3x3'") as e:
        aot.topology_devices("v5e:3x3")
    assert "\n" not in str(e.value)


def test_multislice_mesh_puts_slices_on_the_dcn_axis():
    devices = aot.topology_devices("v5e:2x2", slices=2)
    assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}
    mesh = aot.make_topology_mesh(devices, {"data": -1, "fsdp": 4})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    for row in mesh.devices:  # each data row is one slice: fsdp collectives stay on ICI
        assert len({d.slice_index for d in row}) == 1
    with pytest.raises(UsageError, match="cannot span 2 slices"):
        aot.make_topology_mesh(devices, {"data": 1, "fsdp": 8})


def test_mesh_that_does_not_divide_the_topology_is_usage_error():
    devices = aot.topology_devices("v5e:2x2")
    assert aot.make_topology_mesh(devices, {"data": 2, "tensor": -1}).shape["tensor"] == 2
    with pytest.raises(UsageError, match="does not divide the 4 devices"):
        aot.make_topology_mesh(devices, {"data": 3, "tensor": -1})


def test_available_hbm_is_the_compilers_figure():
    hbm, source = aot.available_hbm_bytes(aot.topology_devices("v5e:2x2")[0])
    assert source == "compiler" and hbm == int(15.75 * GiB) < aot.CHIPS["v5e"].hbm_bytes


# ---------------------------------------------------------------- compiled steps

D, F, B = 512, 2048, 64
OPT = optax.adam(1e-3)


def _loss(p, x):
    return jnp.mean((jax.nn.relu(x @ p["w1"]) @ p["w2"] - x) ** 2)


def _step(p, o, x):
    loss, g = jax.value_and_grad(_loss)(p, x)
    u, o = OPT.update(g, o, p)
    return optax.apply_updates(p, u), o, loss


def _compile_mlp_step(mesh, w1_spec, w2_spec, *, d=D, f=F, batch=B):
    """Abstract params/Adam state/batch with shardings -> the compiled donated step."""
    specs = {(d, f): w1_spec, (f, d): w2_spec}

    def abstract(shape, dtype):
        spec = specs.get(tuple(shape), P())
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

    params = {"w1": abstract((d, f), jnp.float32), "w2": abstract((f, d), jnp.float32)}
    opt = jax.tree.map(lambda s: abstract(s.shape, s.dtype), jax.eval_shape(OPT.init, params))
    x = jax.ShapeDtypeStruct((batch, d), jnp.float32,
                             sharding=NamedSharding(mesh, P(tuple(mesh.axis_names), None)))
    with jax.set_mesh(mesh):
        return aot.aot_compile(jax.jit(_step, donate_argnums=(0, 1)).lower(params, opt, x))


@pytest.fixture(scope="module")
def v5e_mesh():
    return aot.make_topology_mesh(aot.topology_devices("v5e:2x2"), {"data": 2, "fsdp": 2})


def test_fsdp_step_report_memory_cost_and_collectives(v5e_mesh):
    compiled = _compile_mlp_step(v5e_mesh, P("fsdp", None), P(None, "fsdp"))
    model_flops = 6 * (2 * D * F) * B
    r = aot.compile_report(compiled, model_flops=model_flops)
    m = r["memory"]
    assert (r["chip"], r["num_devices"], m["hbm_source"]) == ("v5e", 4, "compiler")
    parts = ("argument_bytes", "output_bytes", "temp_bytes", "generated_code_bytes")
    assert all(m[k] >= 0 for k in parts) and m["argument_bytes"] > 0
    assert m["total_bytes"] == sum(m[k] for k in parts) - m["alias_bytes"]
    # params + Adam moments sharded 2-way over fsdp, donated: 3 x 2 x D x F x 4 / 2 bytes aliased
    assert m["alias_bytes"] >= 3 * 2 * D * F * 4 // 2 and m["fits"]
    c = r["collectives"]
    # FSDP: each weight gathered once (forward, kept for backward); each gradient reduce-
    # scattered over fsdp (full f32 gradient in) and its shard all-reduced over data.
    assert c["all-gather"]["count"] == 2
    assert c["reduce-scatter"]["count"] == 2 and c["reduce-scatter"]["bytes"] == 2 * D * F * 4
    assert c["all-reduce"]["bytes"] >= 2 * D * F * 4 // 2
    cost = r["cost"]
    assert cost["flops_per_chip"] > 0 and cost["estimated_step_s"] > 0
    assert 0 < r["estimate"]["estimated_mfu"] < 1
    text = aot.format_report(r)
    assert "not measurements" in text and "reduce-scatter" in text and "15.750 GiB" in text


def test_data_parallel_step_has_no_gathers_and_all_reduces_whole_gradients(v5e_mesh):
    c = aot.compile_report(_compile_mlp_step(v5e_mesh, P(), P()))["collectives"]
    assert c["all-gather"]["count"] == 0 and c["reduce-scatter"]["count"] == 0
    assert c["all-reduce"]["bytes"] >= 2 * D * F * 4  # both full f32 gradients


def test_multislice_step_reduces_gradient_shards_over_dcn_only():
    devices = aot.topology_devices("v5e:2x2", slices=2)
    mesh = aot.make_topology_mesh(devices, {"data": 2, "fsdp": 4})  # data spans the slices
    r = aot.compile_report(_compile_mlp_step(mesh, P("fsdp", None), P(None, "fsdp")))
    ici, dcn = r["collectives"], r["collectives"]["dcn"]
    # gradients: reduce-scattered over fsdp inside each slice (full f32 gradients in), then
    # their 1/4 shards all-reduced between the two slices over DCN
    assert ici["reduce-scatter"]["bytes"] == 2 * D * F * 4
    assert dcn["all-reduce"]["bytes"] >= 2 * D * F * 4 // 4 > ici["all-reduce"]["bytes"]
    assert dcn["all-gather"]["count"] == 0 and "DCN all-reduce" in aot.format_report(r)


def test_scanned_layers_count_collectives_per_step_and_flag_the_loop(v5e_mesh):
    layers = 4
    w = jax.ShapeDtypeStruct((layers, D, D), jnp.bfloat16,
                             sharding=NamedSharding(v5e_mesh, P(None, "fsdp")))
    x = jax.ShapeDtypeStruct((B, D), jnp.bfloat16,
                             sharding=NamedSharding(v5e_mesh, P(("data", "fsdp"))))

    def loss(w, x):
        def body(h, wi):
            return jax.checkpoint(lambda h, wi: jnp.tanh(h @ wi))(h, wi), None
        return jax.lax.scan(body, x, w)[0].astype(jnp.float32).sum()

    r = aot.compile_report(aot.aot_compile(jax.jit(jax.grad(loss)).lower(w, x)))
    assert r["collectives"]["unknown_trip_counts"] == 0
    assert r["collectives"]["all-gather"]["count_per_step"] >= layers
    assert any("while loop" in line for line in r["estimate"]["caveats"])


def test_step_that_cannot_fit_one_chip_raises_compile_oom_error_with_figures():
    mesh = aot.make_topology_mesh(aot.topology_devices("v5e:1x1"), {"data": 1})
    d = f = 32768  # 4 GiB per f32 weight: params and Adam moments alone are 24 GiB
    with pytest.raises(aot.CompileOOMError) as e:
        _compile_mlp_step(mesh, P(), P(), d=d, f=f, batch=8)
    err = e.value
    assert isinstance(err, RunError) and "\n" not in str(err)
    assert err.available_bytes == int(15.75 * GiB) and err.required_bytes > err.available_bytes
    assert "does not fit" in str(err) and "GiB" in str(err)


# ---------------------------------------------------------------- GPU (deviceless CUDA)

def test_h100_topology_compiles_without_a_gpu_or_says_why():
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="jax-cuda12-plugin") as e:
            aot.topology_devices("h100:1x8")
        assert "\n" not in str(e.value)
        return
    devices = aot.topology_devices("h100:1x8")
    assert len(devices) == 8 and devices[0].device_kind == "NVIDIA H100 80GB HBM3"
    mesh = aot.make_topology_mesh(devices, {"fsdp": 8})
    r = aot.compile_report(_compile_mlp_step(mesh, P("fsdp", None), P(None, "fsdp")))
    assert r["chip"] == "h100" and r["memory"]["hbm_source"].startswith("target_config")
    c = r["collectives"]  # XLA:GPU combines the two weights' collectives into tuple ops
    assert c["all-gather"]["bytes"] == c["reduce-scatter"]["bytes"] == 2 * D * F * 4
    assert r["cost"]["estimated_step_s"] is None  # XLA:GPU gives no cost analysis
    with pytest.raises(UsageError, match="slices apply to TPU"):
        aot.topology_devices("h100", slices=2)
