"""Where a mesh's faces and UV charts lie in its texture atlas."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from backend.render.rasterize import rasterize


def atlas_raster(uvs: torch.Tensor, faces: torch.Tensor, size: int) -> torch.Tensor:
    """The rasteriser's output [1, size, size, 4] over UV space (row 0 = v 1): channel 3 is face id + 1."""
    uvs = uvs.float()
    clip = torch.cat([uvs * 2 - 1, torch.zeros_like(uvs[:, :1]), torch.ones_like(uvs[:, :1])], -1)
    return rasterize(clip, faces, (size, size))


def face_components(faces: np.ndarray) -> np.ndarray:
    """[F] a label per face, equal for faces connected through shared vertex indices."""
    f = np.asarray(faces)
    n = int(f.max()) + 1 if f.size else 0
    rows, cols = np.concatenate([f[:, 0], f[:, 1]]), np.concatenate([f[:, 1], f[:, 2]])
    labels = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)), directed=False)[1]
    return labels[f[:, 0]]


def face_charts(uvs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[F] a label per face, equal for faces of one UV chart: connected through corners at the same UV.

    Vertices are joined by their UVs, not their indices, so a mesh whose faces carry their own copies
    of shared corners (flat-shaded exports) still comes out as its charts, not one piece per face.
    """
    _, corner = np.unique(np.round(np.asarray(uvs, np.float64) * 2**20).astype(np.int64), axis=0, return_inverse=True)
    return face_components(corner.reshape(-1)[np.asarray(faces)])


def texel_charts(uvs: torch.Tensor, faces: torch.Tensor, size: int, min_samples: int = 1024) -> np.ndarray:
    """[size, size] the chart each texel of a size² texture mostly covers (row 0 = v 1), −1 where none does.

    Coverage is sampled on a grid of at least `min_samples`² points, so charts thinner than a texel count.
    """
    k = max(1, math.ceil(min_samples / size))
    ids = atlas_raster(uvs, faces, size * k)[0, ..., 3].long().cpu().numpy() - 1
    charts = face_charts(uvs.cpu().numpy(), faces.cpu().numpy())
    label = np.where(ids >= 0, charts[np.maximum(ids, 0)], -1)
    # samples grouped by texel; each texel takes its most frequent chart among the covered samples
    label = label.reshape(size, k, size, k).transpose(0, 2, 1, 3).reshape(size * size, k * k)
    texel = np.repeat(np.arange(size * size), k * k)
    label = label.reshape(-1)
    covered = label >= 0
    n = int(charts.max()) + 1 if charts.size else 1
    keys, counts = np.unique(texel[covered] * n + label[covered], return_counts=True)
    order = np.lexsort((counts, keys // n))  # by texel, then count: each texel's last entry is its majority
    keys = keys[order]
    last = np.flatnonzero(np.r_[keys[1:] // n != keys[:-1] // n, True]) if keys.size else keys
    out = np.full(size * size, -1, np.int64)
    out[keys[last] // n] = keys[last] % n
    return out.reshape(size, size)


def chart_neighbours(charts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks [H, W−1] and [H−1, W]: a texel and its right (lower) neighbour lie in the same chart."""
    c = torch.as_tensor(charts)
    return (c[:, 1:] == c[:, :-1]) & (c[:, 1:] >= 0), (c[1:] == c[:-1]) & (c[1:] >= 0)


def fill_empty(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """`image` with every pixel outside `covered` set to its nearest covered pixel's value."""
    if not covered.any():
        return image
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]
