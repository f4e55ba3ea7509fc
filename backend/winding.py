"""Inside/outside and distance queries against a triangle soup (libigl's BVH-accelerated versions).

The generalised winding number (Jacobson et al. 2013) sums each triangle's signed solid angle seen from
a point: ≈ 1 inside a closed mesh, ≈ 0 outside, and it degrades gracefully for overlapping, open or
self-intersecting primitives, which is what an artist's blockout is.
"""

from __future__ import annotations

import igl
import numpy as np


def winding_number(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Generalised winding numbers [N] of points [N, 3] with respect to the triangles."""
    return igl.fast_winding_number(np.asarray(vertices, np.float64), np.asarray(faces, np.int64),
                                   np.asarray(points, np.float64))


def surface_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Exact unsigned distance [N] from points [N, 3] to the nearest triangle."""
    sq, _, _ = igl.point_mesh_squared_distance(np.asarray(points, np.float64), np.asarray(vertices, np.float64),
                                               np.asarray(faces, np.int64))
    return np.sqrt(sq)
