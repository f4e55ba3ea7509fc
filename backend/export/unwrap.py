"""UV atlas generation with xatlas."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
import xatlas

from backend.mesh import Mesh
from backend.render.atlas import face_components

# xatlas' weight for cutting charts along polygon edges (its default is 4): on quad meshes from Instant Meshes
# of a bumpy sphere and the toadstool at 1,000-2,000 faces, seams across quad diagonals leave 93-96 % quads at 8
# (16-25 charts), against 89-93 % from the triangles alone (8-11 charts); 20 gives 94-97 % with 26-54 charts
POLYGON_SEAM_WEIGHT = 8.0


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


def polygon_atlas(vertices: np.ndarray, triangles: np.ndarray, owner: np.ndarray, texture_size: int,
                  seam_weight: float = POLYGON_SEAM_WEIGHT) -> Atlas:
    """An xatlas atlas of the triangles [T, 3] of polygons (`owner` [T]: each triangle's polygon) that cuts
    charts along polygon edges rather than across a polygon, which would leave it as its triangles.

    Each polygon gets its own copy of its corners, carrying the polygon's normal, so that xatlas sees every
    polygon edge as a normal seam and weighs cutting there by `seam_weight`; copies of a vertex that land in
    one chart at one UV are one vertex again. Triangle order is kept; `vertex_map` names input vertices.
    """
    v = np.asarray(vertices, np.float64)
    corners = np.stack([np.repeat(owner, 3), np.asarray(triangles).reshape(-1)], 1)
    copies, copy_of = np.unique(corners, axis=0, return_inverse=True)
    normals = np.cross(v[triangles[:, 1]] - v[triangles[:, 0]], v[triangles[:, 2]] - v[triangles[:, 0]])
    polygon_normals = np.zeros((int(owner.max()) + 1, 3))
    np.add.at(polygon_normals, owner, normals)
    polygon_normals /= np.maximum(np.linalg.norm(polygon_normals, axis=1, keepdims=True), 1e-20)
    xa = xatlas.Atlas()
    xa.add_mesh(np.ascontiguousarray(v[copies[:, 1]], np.float32),
                np.ascontiguousarray(copy_of.reshape(-1, 3), np.uint32),
                np.ascontiguousarray(polygon_normals[copies[:, 0]], np.float32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding = texture_size, default_padding(texture_size)
    charts = xatlas.ChartOptions()
    charts.max_cost, charts.normal_seam_weight = 4.0, seam_weight
    xa.generate(chart_options=charts, pack_options=pack)
    vmapping, faces, uvs = xa[0]
    original = copies[vmapping, 1]
    _, first, welded = np.unique(np.concatenate([original[:, None], uvs.astype(np.float64)], 1), axis=0,
                                 return_index=True, return_inverse=True)
    mesh = Mesh(v[original[first]].astype(np.float32), welded.reshape(-1)[faces].astype(np.int64),
                uvs=uvs[first].astype(np.float32))
    return Atlas(mesh, original[first].astype(np.int64), int(xa.chart_count))


def unwrap(mesh: Mesh, texture_size: int, padding: int | None = None) -> tuple[Mesh, np.ndarray]:
    """`mesh` with per-vertex UVs in [0, 1], and for each of its vertices the input vertex it copies.

    Vertices on chart seams are duplicated; positions and the order of faces are unchanged.
    """
    result = atlas(mesh, texture_size, padding=padding)
    return result.mesh, result.vertex_map


def chart_count(mesh: Mesh) -> int:
    """How many UV charts a per-vertex-UV mesh has: its pieces connected through shared (unsplit) vertices."""
    return len(np.unique(face_components(mesh.faces)))
