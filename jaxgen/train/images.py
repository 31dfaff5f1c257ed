"""PNG grids of images, written with Pillow."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1, scale: int = 1
               ) -> np.ndarray:
    """Tiles images [N, H, W, C] (values in [0, 1]) into one uint8 array [rows*(H+pad)+pad, ...],
    then enlarges it ``scale`` times in each direction (nearest neighbour: every pixel stays a
    sharp block, so a 28x28 digit is legible at scale 4)."""
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"the grid scale must be a positive integer, got {scale!r}")
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    grid = (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return grid if scale == 1 else np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def save_image_grid(images: np.ndarray, path: str, ncols: int | None = None, scale: int = 1
                    ) -> str:
    """Writes a PNG grid of images [N, H, W, C] in [0, 1], enlarged ``scale`` times; returns
    ``path``."""
    grid = image_grid(images, ncols, scale=scale)
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    import io

    from jaxgen.train.workdir import write_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    png = io.BytesIO()
    Image.fromarray(grid).save(png, format="PNG")
    write_atomic(path, png.getvalue())  # never a half-written grid
    return path
