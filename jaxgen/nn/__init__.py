"""Reusable Flax Linen layers, no training logic: ``layers`` (linear, norms, MLPs, timestep
embeddings, image attention), ``attention`` (multi-head self-attention with RoPE, GQA and a KV
cache, and :func:`attention`), ``kernels`` (the attention kernels), ``unet`` and ``dit`` (the
diffusion backbones). Importing it loads neither the trainer nor Grain nor Orbax."""
