"""Peers: the same computation in another project, run in the same process on the same inputs.

PyTorch's ``scaled_dot_product_attention`` (installed through the ``peers`` extra:
``pip install -e .[peers]``; on a CPU-only machine ``pip install torch`` may pull a multi-GB CUDA
build, the CPU wheel is enough). When torch is missing, :func:`torch_unavailable_reason` says so
in one line and the benchmark runs without it.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

PEER_NAME = "torch_sdpa"


@functools.lru_cache(maxsize=1)
def torch_unavailable_reason() -> str | None:
    """None when torch imports, else one line saying how to install it."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return f"peer torch not installed ({e.__class__.__name__}); pip install -e .[peers]"
    return None


def torch_info() -> dict:
    """torch version and intra-op thread count (empty when torch is missing)."""
    if torch_unavailable_reason():
        return {}
    import torch
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _tensor(x: np.ndarray, dtype_name: str, grad: bool):
    """BTNH numpy array -> contiguous BNTH torch tensor (SDPA's layout) of ``dtype_name``."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 1, 3)))
    return t.to(getattr(torch, dtype_name)).contiguous().requires_grad_(grad)


def torch_sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, do: np.ndarray, *, causal: bool,
               dtype_name: str, backward: bool) -> tuple[Callable[[], None],
                                                         Callable[[], list[np.ndarray]]]:
    """A zero-argument call of torch SDPA (forward, or forward+backward w.r.t. q, k, v with
    output cotangent ``do``) on BTNH inputs, and a function returning its results as BTNH float32
    numpy arrays ([o] or [dq, dk, dv]) for error checks."""
    import torch
    import torch.nn.functional as F

    tq, tk, tv = (_tensor(x, dtype_name, backward) for x in (q, k, v))
    tdo = _tensor(do, dtype_name, False)

    def forward():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

    def forward_backward():
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        return torch.autograd.grad(out, (tq, tk, tv), tdo)

    call = forward_backward if backward else forward

    def results() -> list[np.ndarray]:
        got = call()
        got = list(got) if backward else [got]
        return [g.detach().float().numpy().transpose(0, 2, 1, 3) for g in got]

    def timed() -> None:
        call()

    return timed, results
