"""UV atlas generation with xatlas."""

from __future__ import annotations

import numpy as np
import xatlas
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from backend.mesh import Mesh


def unwrap(mesh: Mesh, texture_size: int) -> tuple[Mesh, np.ndarray]:
    """`mesh` with per-vertex UVs in [0, 1], and for each of its vertices the input vertex it copies.

    Vertices on chart seams are duplicated; positions and the order of faces are unchanged.
    """
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(mesh.vertices, np.float32),
                   np.ascontiguousarray(mesh.faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    # gutters between charts, so bilinear filtering and the first mip levels stay inside a chart's colours
    pack.padding = max(2, texture_size // 256)
    atlas.generate(pack_options=pack)
    vmapping, faces, uvs = atlas[0]
    unwrapped = mesh.copy_with(vertices=mesh.vertices[vmapping], faces=faces.astype(np.int64),
                               uvs=uvs.astype(np.float32), vertex_colors=None, texture=None)
    return unwrapped, vmapping.astype(np.int64)


def chart_count(mesh: Mesh) -> int:
    """How many UV charts a per-vertex-UV mesh has: its pieces connected through shared (unsplit) vertices."""
    f = np.asarray(mesh.faces)
    n = len(mesh.vertices)
    rows, cols = np.concatenate([f[:, 0], f[:, 1]]), np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    return len(np.unique(labels[np.unique(f)]))
