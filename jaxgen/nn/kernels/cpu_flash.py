"""``cpu_flash``: FlashAttention for x86-64 CPUs with AVX-512, a C++ kernel behind ``jax.ffi``.

Forward: online softmax over key tiles (Rabe & Staats 2021; Dao et al. 2022, "FlashAttention");
backward: FlashAttention-2 (Dao 2023), recomputing each score tile from the saved log-sum-exp.
Both are XLA FFI custom calls (``cpu/flash_attention.cc``) that split the work over (example,
key/value head) on XLA's intra-op thread pool and run every tile product through a
register-blocked AVX-512 micro-kernel that reads q, k, v and the cotangent in place (layout BTNH,
no transposed copies). Semantics are those of :func:`~jaxgen.nn.kernels.reference.reference_attention`
for ``mask=None``: bottom-right causal mask, GQA/MQA, zeros for rows with no visible key.

Limits (each gives a one-line reason from :func:`cpu_flash_unusable_reason`): float32, head dim
a multiple of 16, no arbitrary mask, a CPU with AVX-512F, and a C++17 compiler (``$CXX``, else
``c++``) the first time: the library is compiled for this CPU (``-march=native``) on first use
and cached under ``$JAXGEN_CACHE/kernels`` (see :mod:`jaxgen.cache`), keyed by the source, the
compiler and the jaxlib version, so later processes only load it.

Under a sharded ``jit`` both custom calls carry ``custom_partitioning`` rules (Shardy sharding
rules): a batch sharded over any mesh axes stays sharded, each device running the kernel on its
own examples with no collective; time, heads and head dim are gathered whole (heads sharded
over a mesh axis are gathered, then the result is resharded).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform as _platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.cache import cache_dir
from jaxgen.nn.kernels.masks import check_qkv

SOURCE = Path(__file__).with_name("cpu") / "flash_attention.cc"
FORWARD_TARGET = "jaxgen_cpu_flash_forward"
BACKWARD_TARGET = "jaxgen_cpu_flash_backward"
# Swept on a 2-core Xeon (AVX-512) with `python -m benchmarks attention --shapes
# "4,8,2048,64;4,8,4096,64" --causal yes --kernels cpu_flash --blocks BQ,BK`: torch/cpu_flash time
# (T=2048 fwd, fwd+bwd; T=4096 fwd, fwd+bwd) 256x512: 1.14 1.17 1.13 1.08; 256x256: 1.15 1.18 1.08
# 1.13 (level within the run-to-run noise); 128x256: 1.04 1.19 1.10 1.09; 512x512: 1.13 1.09 1.10
# 1.03. A 256 x 512 score tile (512 KiB per thread) stays in L2 next to one head's packed K^T/V^T.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 512
CXXFLAGS = ("-O3", "-std=c++17", "-march=native", "-fPIC", "-shared", "-fno-math-errno",
            "-Wno-attributes", "-Wno-return-type")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _compiler() -> str | None:
    cxx = os.environ.get("CXX") or "c++"
    return shutil.which(cxx)


def _library_path(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), *version, " ".join(CXXFLAGS),
                                    jax.__version__, " ".join(sorted(_cpu_flags()))]).encode())
    return cache_dir() / "kernels" / f"flash_attention-{key.hexdigest()[:16]}.so"


def _build(cxx: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cxx, *CXXFLAGS, f"-I{jax.ffi.include_dir()}", "-o", tmp, str(SOURCE)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            err = [ln for ln in res.stderr.splitlines() if "error" in ln][:1] or ["no output"]
            raise RuntimeError(f"compiling {SOURCE.name} failed: {err[0]}")
        os.replace(tmp, out)  # atomic: concurrent processes never load a half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> tuple[bool, str]:
    """Build (once per machine) and register the FFI targets: (ok, why not)."""
    if _platform.machine().lower() not in ("x86_64", "amd64"):
        return False, f"attention kernel 'cpu_flash' needs an x86-64 CPU, not {_platform.machine()}"
    if "avx512f" not in _cpu_flags():
        return False, "attention kernel 'cpu_flash' needs a CPU with AVX-512F"
    cxx = _compiler()
    if cxx is None:
        return False, ("attention kernel 'cpu_flash' needs a C++17 compiler to build it once "
                       "(set $CXX or install c++)")
    path = _library_path(cxx)
    try:
        if not path.exists():
            _build(cxx, path)
        lib = ctypes.CDLL(str(path))
        for name, symbol in ((FORWARD_TARGET, lib.JaxgenFlashForward),
                             (BACKWARD_TARGET, lib.JaxgenFlashBackward)):
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as e:
        return False, f"attention kernel 'cpu_flash' is unavailable: {str(e).splitlines()[0]}"
    return True, ""


def cpu_flash_unusable_reason(q: jax.Array, k: jax.Array, v: jax.Array | None = None, *,
                              mask: jax.Array | None = None,
                              platform: str | None = None) -> str | None:
    """One line saying why ``cpu_flash`` cannot run these inputs here, or None if it can."""
    platform = jax.default_backend() if platform is None else platform
    if platform != "cpu":
        return f"attention kernel 'cpu_flash' runs on CPU; this platform is {platform}"
    if mask is not None:
        return "attention kernel 'cpu_flash' cannot take a mask (only causal or none)"
    dtypes = {jnp.dtype(x.dtype) for x in (q, k, v) if x is not None}
    if dtypes != {jnp.dtype(jnp.float32)}:
        return (f"attention kernel 'cpu_flash' takes float32 only, got "
                f"{', '.join(sorted(d.name for d in dtypes))}")
    if q.shape[-1] % 16:
        return f"attention kernel 'cpu_flash' needs a head dim that is a multiple of 16, got {q.shape[-1]}"
    ok, why = _load()
    return None if ok else why


def scratch_bytes(q_shape: tuple[int, ...], k_shape: tuple[int, ...], *, backward: bool,
                  block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K,
                  threads: int | None = None) -> int:
    """Bytes the C++ kernel allocates outside XLA's buffers (so outside the compiled program's
    memory analysis), at most, for q [B,Tq,N,H] and k [B,Tk,K,H]: per worker thread, the packed
    K^T (and V^T) of one head, one score tile (two in the backward) and the running rows; the
    backward also keeps dK and dV of one head in float32. ``threads`` defaults to the CPU count.
    """
    b, _, _, h = q_shape
    t_k, kv = k_shape[1], k_shape[2]
    pad = lambda n: -(-max(n, 1) // 64) * 64  # noqa: E731
    tile = block_q * pad(block_k)
    if backward:
        floats = 2 * pad(t_k) * h + 2 * t_k * h + 2 * tile + block_q * h + block_q
    else:
        floats = pad(t_k) * h + tile + block_q * h + 2 * block_q
    workers = min(threads or os.cpu_count() or 1, b * kv)
    return 4 * floats * workers


def _attrs(scale: float, causal: bool, block_q: int, block_k: int) -> dict:
    return dict(scale=np.float32(scale), causal=np.int32(causal), block_q=np.int64(block_q),
                block_k=np.int64(block_k))


def _forward_call(q, k, v, attrs_key):
    """(q, k, v) -> (o [B,Tq,N,H], lse [B,N,Tq]) on whatever shard it is given."""
    b, t_q, n, _ = q.shape
    call = jax.ffi.ffi_call(FORWARD_TARGET, (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                             jax.ShapeDtypeStruct((b, n, t_q), jnp.float32)))
    return call(q, k, v, **dict(attrs_key))


def _backward_call(q, k, v, o, lse, do, attrs_key):
    """-> (dq, dk, dv) on whatever shard it is given."""
    call = jax.ffi.ffi_call(BACKWARD_TARGET, (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                              jax.ShapeDtypeStruct(k.shape, jnp.float32),
                                              jax.ShapeDtypeStruct(v.shape, jnp.float32)))
    return call(q, k, v, o, lse, do, **dict(attrs_key))


# The custom calls are opaque to XLA's SPMD partitioner; these rules tell it that examples are
# independent: each device runs the kernel on its own batch shard, and every other dimension
# (time, heads, head dim) is gathered whole (sharded heads would need whole GQA groups).
def _batch_axes(sharding) -> object:
    spec = getattr(sharding, "spec", None)
    return spec[0] if spec else None


def _shardings(mesh, batch, ranks: tuple[int, ...]):
    from jax.sharding import NamedSharding, PartitionSpec
    return tuple(NamedSharding(mesh, PartitionSpec(batch, *(None,) * (r - 1))) for r in ranks)


def _partitioned(call, arg_ranks: tuple[int, ...], out_ranks: tuple[int, ...], rule: str):
    from jax.experimental.custom_partitioning import custom_partitioning
    wrapped = custom_partitioning(call, static_argnums=(len(arg_ranks),))

    def infer(attrs_key, mesh, arg_shapes, result_shape):
        return _shardings(mesh, _batch_axes(arg_shapes[0].sharding), out_ranks)

    def partition(attrs_key, mesh, arg_shapes, result_shape):
        batch = _batch_axes(arg_shapes[0].sharding)
        lower = lambda *args: call(*args, attrs_key)  # noqa: E731  (per-shard shapes)
        return (mesh, lower, _shardings(mesh, batch, out_ranks),
                _shardings(mesh, batch, arg_ranks))

    # every factor but the batch, in order of first appearance (the rule's factor order)
    factors = tuple(dict.fromkeys(f for f in rule.replace(",", " ").replace("->", " ").split()
                                  if f != "b"))
    wrapped.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                          need_replication_factors=factors)
    return wrapped


_forward_sharded = _partitioned(_forward_call, (4, 4, 4), (4, 3),
                                "b q n h, b k m h, b k m h -> b q n h, b n q")
_backward_sharded = _partitioned(_backward_call, (4, 4, 4, 4, 3, 4), (4, 4, 4),
                                 "b q n h, b k m h, b k m h, b q n h, b n q, b q n h "
                                 "-> b q n h, b k m h, b k m h")


@functools.cache
def _folding(call, attrs_key):
    """``call`` with these attributes, batched under ``jax.vmap`` by folding the mapped axis into
    the batch axis (examples are independent, so a vmapped call is one call on a larger batch;
    ``custom_partitioning`` has no batching rule of its own)."""
    @jax.custom_batching.custom_vmap
    def folded(*args):
        return call(*args, attrs_key)

    @folded.def_vmap
    def rule(axis_size, in_batched, *args):
        args = [x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
                for x, batched in zip(args, in_batched)]
        outs = folded(*(x.reshape(-1, *x.shape[2:]) for x in args))
        return (tuple(o.reshape(axis_size, -1, *o.shape[1:]) for o in outs),
                (True,) * len(outs))
    return folded


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, attrs_key):
    return _folding(_forward_sharded, attrs_key)(q, k, v)[0]


def _flash_fwd(q, k, v, attrs_key):
    o, lse = _folding(_forward_sharded, attrs_key)(q, k, v)
    return o, (q, k, v, o, lse)


def _flash_bwd(attrs_key, res, do):
    q, k, v, o, lse = res
    return _folding(_backward_sharded, attrs_key)(q, k, v, o, lse, do.astype(jnp.float32))


_flash.defvjp(_flash_fwd, _flash_bwd)


def cpu_flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                        mask: jax.Array | None = None, scale: float | None = None,
                        block_q: int = DEFAULT_BLOCK_Q,
                        block_k: int = DEFAULT_BLOCK_K) -> jax.Array:
    """FlashAttention on the CPU, with the semantics of ``reference_attention``.

    Args:
      q: [B, T_q, N, H] float32; k, v: [B, T_k, K, H] float32 with N a multiple of K.
      causal: bottom-right aligned causal mask; fully hidden key tiles are skipped.
      mask: must be None (see :func:`cpu_flash_unusable_reason`).
      scale: score scale, default 1 / sqrt(H).
      block_q: query rows per tile (any positive int); block_k: keys per tile, a multiple of 64.
    Returns:
      [B, T_q, N, H] float32.
    Raises:
      ValueError (one line) when the kernel cannot run these inputs here.
    """
    check_qkv(q, k, v)
    reason = cpu_flash_unusable_reason(q, k, v, mask=mask)
    if reason is not None:
        raise ValueError(reason)
    if block_q < 1 or block_k < 64 or block_k % 64:
        raise ValueError(f"attention kernel 'cpu_flash' needs block_q >= 1 and block_k a positive "
                         f"multiple of 64, got block_q={block_q}, block_k={block_k}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    attrs = tuple(sorted(_attrs(scale, bool(causal), int(block_q), int(block_k)).items()))
    return _flash(q, k, v, attrs)
