"""Attention kernels behind one function, :func:`attention` (see
:mod:`jaxgen.nn.kernels.dispatch` for the kernels and the ``auto`` rule).
:func:`shard_attention` runs any of them per batch/head shard under a sharded ``jit``."""
from __future__ import annotations

from jaxgen.nn.kernels.chunked import chunked_attention
from jaxgen.nn.kernels.cpu_flash import cpu_flash_attention
from jaxgen.nn.kernels.dispatch import (
    KERNELS,
    MASK_KERNELS,
    KernelName,
    attention,
    choose_kernel,
    current_platform,
)
from jaxgen.nn.kernels.pallas import pallas_attention
from jaxgen.nn.kernels.reference import causal_mask, reference_attention
from jaxgen.nn.kernels.sharding import shard_attention
from jaxgen.nn.kernels.short import short_attention
from jaxgen.nn.kernels.splash import splash_attention
from jaxgen.nn.kernels.xla import dot_product_attention

__all__ = ["KERNELS", "MASK_KERNELS", "KernelName", "attention", "causal_mask", "choose_kernel",
           "chunked_attention", "cpu_flash_attention", "current_platform",
           "dot_product_attention", "pallas_attention", "reference_attention",
           "shard_attention", "short_attention", "splash_attention"]
