"""UV atlas generation with xatlas."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
import xatlas

from backend.mesh import Mesh
from backend.render.atlas import face_components


@dataclass
class Atlas:
    mesh: Mesh  # the input's positions split along chart seams, with per-vertex UVs in [0, 1]
    vertex_map: np.ndarray  # [V] the input vertex each output vertex copies
    charts: int


def default_padding(texture_size: int) -> int:
    """The gutter between charts, in texels of a `texture_size`² texture: a 256th of it, at least 2."""
    return max(2, texture_size // 256)


def atlas(mesh: Mesh, texture_size: int, smooth_iters: int = 0, padding: int | None = None) -> Atlas:
    """An xatlas atlas of `mesh`; positions and the order of faces are unchanged.

    With `smooth_iters`, charts are cut on a Taubin-smoothed copy of the surface: the small bumps of a
    field's marching-cubes surface otherwise split it into hundreds of charts. The smoothed copy has the
    same vertices and faces, so its UVs apply to the exact surface, which is what is returned.
    `padding` is the gutter between charts in texels (default: `default_padding`).
    """
    vertices = np.asarray(mesh.vertices, np.float64)
    if smooth_iters > 0:
        smoothed = trimesh.Trimesh(vertices.copy(), mesh.faces, process=False)
        trimesh.smoothing.filter_taubin(smoothed, lamb=0.5, nu=0.53, iterations=smooth_iters)
        vertices = np.asarray(smoothed.vertices)
    xa = xatlas.Atlas()
    xa.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(mesh.faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    # gutters between charts, so bilinear filtering and the first mip levels stay inside a chart's colours
    pack.padding = default_padding(texture_size) if padding is None else padding
    charts = xatlas.ChartOptions()
    # twice xatlas' default chart cost: an optimised surface's small bumps otherwise still cut it into hundreds
    # of charts after smoothing (the demo toadstool's refined mesh: 218 charts at 2, 63 at 4, same packing)
    charts.max_cost = 4.0
    xa.generate(chart_options=charts, pack_options=pack)
    vmapping, faces, uvs = xa[0]
    unwrapped = mesh.copy_with(vertices=mesh.vertices[vmapping], faces=faces.astype(np.int64),
                               uvs=uvs.astype(np.float32), vertex_colors=None, texture=None)
    return Atlas(unwrapped, vmapping.astype(np.int64), int(xa.chart_count))


def unwrap(mesh: Mesh, texture_size: int, padding: int | None = None) -> tuple[Mesh, np.ndarray]:
    """`mesh` with per-vertex UVs in [0, 1], and for each of its vertices the input vertex it copies.

    Vertices on chart seams are duplicated; positions and the order of faces are unchanged.
    """
    result = atlas(mesh, texture_size, padding=padding)
    return result.mesh, result.vertex_map


def chart_count(mesh: Mesh) -> int:
    """How many UV charts a per-vertex-UV mesh has: its pieces connected through shared (unsplit) vertices."""
    return len(np.unique(face_components(mesh.faces)))
