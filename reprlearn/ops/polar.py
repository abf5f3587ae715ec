"""The polar transform's sampling (SAFA, Shi et al. NeurIPS 2019): where each strip pixel reads the overhead image.

Output pixel (i, j) of a `height × width` strip samples an `A_h × A_w` overhead image bilinearly at

    x = A_h/2 − (A_h/2)·((height − i)/height)·cos(2πj/width)     (source row)
    y = A_w/2 + (A_w/2)·((height − i)/height)·sin(2πj/width)     (source column)

with pixel k of the source at coordinate k and coordinates clamped to the image. `reprlearn.layers.PolarTransform`
gathers with these indices and weights inside a model; `polar_transform` applies them to NumPy arrays.

Example:
    strips = polar_transform(overhead_images, 16, 64)     # [N, A, A, C] → [N, 16, 64, C]
"""

from __future__ import annotations

import numpy as np


def polar_sampling(source_height: int, source_width: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """`(indices int32 [4, height·width], weights float32 [4, height·width])`: each strip pixel's four neighbours as
    flat pixel indices of the source (row-major), and their bilinear weights."""
    i = np.arange(height, dtype=np.float64)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    radius, angle = (height - i) / height, 2.0 * np.pi * j / width
    x = np.clip(source_height / 2.0 - source_height / 2.0 * radius * np.cos(angle), 0, source_height - 1)
    y = np.clip(source_width / 2.0 + source_width / 2.0 * radius * np.sin(angle), 0, source_width - 1)
    top, left = np.floor(x), np.floor(y)
    bottom, right = np.minimum(top + 1, source_height - 1), np.minimum(left + 1, source_width - 1)
    fx, fy = x - top, y - left
    corners = [(top, left, (1 - fx) * (1 - fy)), (top, right, (1 - fx) * fy),
               (bottom, left, fx * (1 - fy)), (bottom, right, fx * fy)]
    indices = np.stack([(r * source_width + c).reshape(-1) for r, c, _ in corners]).astype(np.int32)
    weights = np.stack([w.reshape(-1) for _, _, w in corners]).astype(np.float32)
    return indices, weights


def polar_transform(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Overhead images `[N, A_h, A_w, C]` → strips `[N, height, width, C]` float32 (NumPy, outside a model)."""
    images = np.asarray(images, np.float32)
    n, source_height, source_width, channels = images.shape
    indices, weights = polar_sampling(source_height, source_width, height, width)
    flat = images.reshape(n, -1, channels)
    strips = sum(flat[:, indices[k]] * weights[k][None, :, None] for k in range(4))
    return strips.reshape(n, height, width, channels)
