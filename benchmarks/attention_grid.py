"""The shapes the attention benchmark sweeps, and the work each one counts.

Grids (``--grid``):
- ``quick``: tiny shapes for CI, a few seconds per kernel.
- ``default``: on CPU, the headline series (B=4, N=8, H=64, float32, causal, T=256..8192) and
  head dim 128 / bfloat16 / non-causal at B=2, N=4, T=1024; picked so
  the run takes about ten minutes on a busy 2-core CPU (a row whose one call would take longer
  than ``call_limit_s`` -- for forward+backward, estimated as 3.5x its forward -- reports
  compile time and memory but is not timed, except the chunked kernel's and the peer's headline
  rows up to T=4096, which the performance target is about). On accelerators, T=512..32768 for both head dims, masks and
  dtypes.
- ``full``: every combination of T (256..8192 on CPU, 512..32768 elsewhere), head dim {64, 128},
  causal {yes, no} and dtype {float32, bfloat16} at B=4, N=8, with no time limit per call.
"""
from __future__ import annotations

import dataclasses
import itertools

GRIDS = ("quick", "default", "full")
PASSES = ("fwd", "fwd_bwd")
# Backward recomputes the scores and does 4 more matmuls of the same size: 2.5x the forward.
BACKWARD_FACTOR = 2.5


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention problem: q, k, v of shape [batch, seq, heads, head_dim], self-attention."""
    batch: int
    heads: int
    seq: int
    head_dim: int
    causal: bool
    dtype: str  # "float32" | "bfloat16"

    def label(self) -> dict:
        return {"B": self.batch, "N": self.heads, "T": self.seq, "H": self.head_dim,
                "causal": self.causal, "dtype": self.dtype}


def forward_flops(c: Case) -> float:
    """FLOPs of the forward pass counting only unmasked (query, key) pairs: 4 * H per pair
    (one multiply-add in Q K^T and one in P V), T (T + 1) / 2 pairs per head when causal."""
    pairs = c.seq * (c.seq + 1) / 2 if c.causal else float(c.seq) ** 2
    return 4.0 * c.batch * c.heads * c.head_dim * pairs


def pass_flops(c: Case, pass_name: str) -> float:
    if pass_name not in PASSES:
        raise ValueError(f"unknown pass {pass_name!r}; choose from {', '.join(PASSES)}")
    return forward_flops(c) * (1.0 if pass_name == "fwd" else 1.0 + BACKWARD_FACTOR)


def headline(c: Case) -> bool:
    """The series the performance target and the plot are about."""
    return (c.batch, c.heads, c.head_dim, c.causal, c.dtype) == (4, 8, 64, True, "float32")


def grid(name: str, platform: str) -> list[Case]:
    """The cases of grid ``name`` on ``platform`` ("cpu", "gpu", "tpu"); ValueError if unknown."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}")
    cpu = platform == "cpu"
    if name == "quick":
        return [Case(2, 2, 128, 64, True, "float32"), Case(2, 2, 128, 64, False, "bfloat16")]
    seqs = (256, 512, 1024, 2048, 4096, 8192) if cpu else (512, 1024, 2048, 4096, 8192, 16384,
                                                            32768)
    if name == "full":
        return [Case(4, 8, t, h, causal, dtype) for t, h, causal, dtype in itertools.product(
            seqs, (64, 128), (True, False), ("float32", "bfloat16"))]
    cases = [Case(4, 8, t, 64, True, "float32") for t in seqs]
    if cpu:
        cases += [Case(2, 4, 1024, 64, False, "float32"), Case(2, 4, 1024, 128, True, "float32"),
                  Case(2, 4, 1024, 64, True, "bfloat16"), Case(2, 4, 1024, 128, False, "bfloat16")]
    else:
        cases += [Case(4, 8, t, h, causal, dtype) for t, h, causal, dtype in itertools.product(
            (2048, 8192), (64, 128), (True, False), ("float32", "bfloat16"))
                  if (h, causal, dtype) != (64, True, "float32")]
    return cases
